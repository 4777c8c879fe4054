//! The module client: one MQTT/TLS connection to edgeHub, shared by every task of a module.

use crate::acks::{AckSequencer, AckToken, SendTracker};
use crate::error::Error;
use crate::settings::{Credentials, Settings, TrustSource};
use crate::workload::WorkloadClient;
use bytes::Bytes;
use edge_protocol::topic::{self, Topic};
use edge_protocol::{properties, sas, Message};
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Outgoing,
    Packet, Publish, QoS, TlsConfiguration, Transport,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// Largest MQTT packet accepted or sent (IoT Hub's message limit is 256 KiB, plus topic).
const MAX_PACKET: usize = 512 * 1024;
/// Deadline for a twin request.
const TWIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A message that arrived on one of the module's inputs.
///
/// Acknowledge it with [`InputMessage::ack`] once it has been handled (and whatever was sent
/// for it was accepted). Dropping it unacknowledged leaves it with edgeHub, which delivers
/// it again on the next connection.
#[derive(Debug)]
pub struct InputMessage {
    /// The input it arrived on.
    pub input: String,
    /// The message (its `input_name` is set too).
    pub message: Message,
    token: AckToken,
}

impl InputMessage {
    /// Acknowledges the message to edgeHub (PUBACKs are released in arrival order).
    pub fn ack(self) {
        self.token.ack();
    }

    /// Splits off the acknowledgement, e.g. to ack after the message was moved elsewhere.
    pub fn into_parts(self) -> (String, Message, AckToken) {
        (self.input, self.message, self.token)
    }
}

/// A module's connection to edgeHub. Cheap to clone; all clones share one connection.
#[derive(Clone)]
pub struct ModuleClient {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    trust_pem: String,
    mqtt: AsyncClient,
    /// Serialises "register a send" + "queue the publish" so registration order is publish order.
    send_order: tokio::sync::Mutex<()>,
    sends: Mutex<SendTracker>,
    acks: Arc<AckSequencer>,
    twin_waiters: Mutex<HashMap<String, oneshot::Sender<(u16, Bytes)>>>,
    inputs: Mutex<Option<mpsc::UnboundedReceiver<InputMessage>>>,
    desired: Mutex<Option<mpsc::UnboundedReceiver<Value>>>,
    desired_version: AtomicU64,
    closing: AtomicBool,
    stop: Notify,
    driver: Mutex<Option<JoinHandle<()>>>,
}

/// Signs tokens for the module's identity.
#[derive(Clone)]
struct TokenSource {
    settings: Settings,
    workload: Option<WorkloadClient>,
}

impl TokenSource {
    fn new(settings: &Settings) -> Self {
        let workload = match &settings.credentials {
            Credentials::Workload {
                uri, api_version, ..
            } => Some(WorkloadClient::new(uri.clone(), api_version.clone())),
            Credentials::SharedKey(_) => None,
        };
        TokenSource {
            settings: settings.clone(),
            workload,
        }
    }

    /// A fresh token and its expiry (seconds since the epoch).
    async fn token(&self) -> Result<(String, u64), Error> {
        let s = &self.settings;
        let expiry = now_secs() + s.token_ttl_secs;
        let resource = s.resource_uri();
        let to_sign = sas::string_to_sign(&resource, expiry);
        let sig = match (&s.credentials, &self.workload) {
            (Credentials::Workload { generation_id, .. }, Some(w)) => {
                w.sign(&s.module_id, generation_id, to_sign.as_bytes())
                    .await?
            }
            (Credentials::SharedKey(key), _) => {
                sas::sign(key, to_sign.as_bytes()).map_err(|e| Error::Config(e.to_string()))?
            }
            (Credentials::Workload { .. }, None) => unreachable!("workload client made in new()"),
        };
        Ok((sas::token_from_signature(&resource, &sig, expiry), expiry))
    }

    async fn trust_pem(&self) -> Result<String, Error> {
        match (&self.settings.trust, &self.workload) {
            (TrustSource::Pem(p), _) => Ok(p.clone()),
            (TrustSource::File(path), _) => std::fs::read_to_string(path).map_err(|e| {
                Error::Tls(format!(
                    "cannot read CA certificate file {}: {e}",
                    path.display()
                ))
            }),
            (TrustSource::Workload, Some(w)) => w.trust_bundle().await,
            (TrustSource::Workload, None) => Err(Error::Config(
                "no trust bundle: in connection-string mode set EdgeModuleCACertificateFile".into(),
            )),
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn tls_config(pem: &str) -> Result<Arc<rustls::ClientConfig>, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|e| Error::Tls(format!("trust bundle is not valid PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| Error::Tls(format!("trust bundle certificate rejected: {e}")))?;
    }
    if roots.is_empty() {
        return Err(Error::Tls("the trust bundle holds no certificate".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Capped exponential backoff: 100 ms, 200 ms, … up to 30 s.
struct Backoff {
    attempt: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let ms = 100u64.saturating_mul(1 << self.attempt.min(9));
        self.attempt += 1;
        Duration::from_millis(ms.min(30_000))
    }
}

impl ModuleClient {
    /// Connects with settings from the environment (see [`Settings::from_env`]).
    pub async fn from_env() -> Result<ModuleClient, Error> {
        ModuleClient::connect(Settings::from_env()?).await
    }

    /// Connects to edgeHub and waits for the first successful connection. Transient failures
    /// (edgeHub not up yet) are retried with backoff for up to a minute; a refused identity
    /// fails at once.
    pub async fn connect(settings: Settings) -> Result<ModuleClient, Error> {
        let tokens = TokenSource::new(&settings);
        let pem = tokens.trust_pem().await?;
        let tls = tls_config(&pem)?;
        let (token, expiry) = tokens.token().await?;

        let mut opts = MqttOptions::new(
            settings.client_id(),
            settings.gateway_hostname.clone(),
            settings.port,
        );
        opts.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls)))
            .set_credentials(settings.username(), token)
            .set_keep_alive(Duration::from_secs(60))
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_inflight(1000)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET);
        let (mqtt, eventloop) = AsyncClient::new(opts, 4096);

        let (inputs_tx, inputs_rx) = mpsc::unbounded_channel();
        let (desired_tx, desired_rx) = mpsc::unbounded_channel();
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            settings,
            trust_pem: pem,
            mqtt: mqtt.clone(),
            send_order: tokio::sync::Mutex::new(()),
            sends: Mutex::new(SendTracker::default()),
            acks: Arc::new(AckSequencer::new(ack_tx)),
            twin_waiters: Mutex::new(HashMap::new()),
            inputs: Mutex::new(Some(inputs_rx)),
            desired: Mutex::new(Some(desired_rx)),
            desired_version: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            stop: Notify::new(),
            driver: Mutex::new(None),
        });
        tokio::spawn(crate::acks::release_acks(mqtt, ack_rx, inner.acks.clone()));

        let (first_tx, first_rx) = oneshot::channel();
        let driver = Driver {
            inner: inner.clone(),
            tokens,
            expiry,
            inputs_tx,
            desired_tx,
            first: Some(first_tx),
        };
        let handle = tokio::spawn(driver.run(eventloop));
        *lock(&inner.driver) = Some(handle);
        let client = ModuleClient { inner };
        match tokio::time::timeout(Duration::from_secs(60), first_rx).await {
            Ok(Ok(Ok(()))) => Ok(client),
            Ok(Ok(Err(e))) => {
                client.abort();
                Err(e)
            }
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => {
                client.abort();
                Err(Error::Timeout(
                    "the first connection to edgeHub (is the runtime running?)",
                ))
            }
        }
    }

    fn abort(&self) {
        self.inner.closing.store(true, Ordering::SeqCst);
        self.inner.stop.notify_one();
    }

    /// The PEM certificates the gateway was verified against (the edge trust bundle).
    pub fn trust_bundle(&self) -> &str {
        &self.inner.trust_pem
    }

    /// The settings this client was made with.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// Takes the stream of input messages (once; later calls fail).
    pub fn inputs(&self) -> Result<mpsc::UnboundedReceiver<InputMessage>, Error> {
        lock(&self.inner.inputs)
            .take()
            .ok_or_else(|| Error::Config("the input stream was already taken".into()))
    }

    /// Takes the stream of desired-property patches (once). After a reconnection in which a
    /// patch may have been missed, the full desired document arrives as a patch.
    pub fn desired_updates(&self) -> Result<mpsc::UnboundedReceiver<Value>, Error> {
        lock(&self.inner.desired)
            .take()
            .ok_or_else(|| Error::Config("the desired-properties stream was already taken".into()))
    }

    /// Sends `message` to `output`; returns once edgeHub has accepted it (PUBACK).
    pub async fn send_output(&self, output: &str, mut message: Message) -> Result<(), Error> {
        message.output_name = Some(output.to_owned());
        let s = &self.inner.settings;
        let topic = topic::module_output(&s.device_id, &s.module_id, &message);
        self.publish_tracked(topic, message.body).await
    }

    /// Sends device telemetry (`devices/{d}/messages/events`); for a device identity.
    pub async fn send_event(&self, message: Message) -> Result<(), Error> {
        let topic = topic::device_events(&self.inner.settings.device_id, &message);
        self.publish_tracked(topic, message.body).await
    }

    async fn publish_tracked(&self, topic: String, payload: Bytes) -> Result<(), Error> {
        if self.inner.closing.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        let (tx, rx) = oneshot::channel();
        {
            let _order = self.inner.send_order.lock().await;
            lock(&self.inner.sends).register(topic.clone(), payload.clone(), tx);
            if self
                .inner
                .mqtt
                .publish_bytes(topic, QoS::AtLeastOnce, false, payload)
                .await
                .is_err()
            {
                lock(&self.inner.sends).unregister_last();
                return Err(Error::Closed);
            }
        }
        rx.await.map_err(|_| Error::Closed)
    }

    async fn twin_request(
        &self,
        topic: String,
        rid: String,
        body: Bytes,
    ) -> Result<(u16, Bytes), Error> {
        let (tx, rx) = oneshot::channel();
        lock(&self.inner.twin_waiters).insert(rid.clone(), tx);
        let result = async {
            self.publish_tracked(topic, body).await?;
            tokio::time::timeout(TWIN_TIMEOUT, rx)
                .await
                .map_err(|_| Error::Timeout("a twin response"))?
                .map_err(|_| Error::Closed)
        }
        .await;
        lock(&self.inner.twin_waiters).remove(&rid);
        result
    }

    /// Reads the module twin: `{"desired": {…, "$version": n}, "reported": {…}}`.
    pub async fn twin(&self) -> Result<Value, Error> {
        let rid = uuid::Uuid::new_v4().to_string();
        let (status, body) = self
            .twin_request(topic::twin_get(&rid), rid, Bytes::from_static(b" "))
            .await?;
        if status != 200 {
            return Err(Error::Twin {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        let twin: Value = serde_json::from_slice(&body)?;
        if let Some(v) = twin.pointer("/desired/$version").and_then(Value::as_u64) {
            self.inner.desired_version.fetch_max(v, Ordering::SeqCst);
        }
        Ok(twin)
    }

    /// Patches the module's reported properties.
    pub async fn update_reported(&self, patch: &Value) -> Result<(), Error> {
        let rid = uuid::Uuid::new_v4().to_string();
        let body = Bytes::from(serde_json::to_vec(patch)?);
        let (status, body) = self
            .twin_request(topic::twin_patch_reported(&rid), rid, body)
            .await?;
        if !(200..300).contains(&status) {
            return Err(Error::Twin {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        Ok(())
    }

    /// Follows the module's desired properties: applies the twin's desired document now and
    /// every patch later with `apply`, and reports what `apply` returns (a JSON object;
    /// anything else reports nothing). `initial` is merged into the first report. Twin
    /// failures are logged; the module goes on with its defaults.
    pub async fn follow_desired<F>(&self, initial: Value, apply: F)
    where
        F: Fn(&Value) -> Value + Send + Sync + 'static,
    {
        let mut first = initial;
        match self.twin().await {
            Ok(twin) => {
                if let (Value::Object(r), Value::Object(applied)) =
                    (&mut first, apply(&twin["desired"]))
                {
                    r.extend(applied);
                }
            }
            Err(e) => warn!("could not read the module twin; using defaults: {e}"),
        }
        self.report(&first).await;
        if let Ok(mut patches) = self.desired_updates() {
            let client = self.clone();
            tokio::spawn(async move {
                while let Some(patch) = patches.recv().await {
                    client.report(&apply(&patch)).await;
                }
            });
        }
    }

    async fn report(&self, reported: &Value) {
        if reported.as_object().is_some_and(|o| !o.is_empty()) {
            if let Err(e) = self.update_reported(reported).await {
                warn!("could not report properties: {e}");
            }
        }
    }

    /// Stops cleanly: waits (up to `grace`) for every sent message to be accepted and every
    /// handled input to be acknowledged, then disconnects.
    pub async fn close(&self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline
            && (lock(&self.inner.sends).outstanding() > 0 || self.inner.acks.pending() > 0)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.inner.closing.store(true, Ordering::SeqCst);
        let _ = self.inner.mqtt.disconnect().await;
        let handle = lock(&self.inner.driver).take();
        if let Some(h) = handle {
            if tokio::time::timeout(Duration::from_secs(2), h)
                .await
                .is_err()
            {
                self.inner.stop.notify_one();
            }
        }
        debug!("module client closed");
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Owns the MQTT event loop: dispatches what arrives, tracks PUBACKs, reconnects.
struct Driver {
    inner: Arc<Inner>,
    tokens: TokenSource,
    expiry: u64,
    inputs_tx: mpsc::UnboundedSender<InputMessage>,
    desired_tx: mpsc::UnboundedSender<Value>,
    first: Option<oneshot::Sender<Result<(), Error>>>,
}

impl Driver {
    fn renew_at(&self) -> tokio::time::Instant {
        let ttl = self.tokens.settings.token_ttl_secs;
        let left = self.expiry.saturating_sub(now_secs());
        // Renew when a fifth of the lifetime is left.
        tokio::time::Instant::now() + Duration::from_secs(left.saturating_sub(ttl / 5))
    }

    async fn renew(&mut self, eventloop: &mut EventLoop) {
        match self.tokens.token().await {
            Ok((token, expiry)) => {
                self.expiry = expiry;
                eventloop
                    .mqtt_options
                    .set_credentials(self.tokens.settings.username(), token);
            }
            Err(e) => {
                warn!(error = %e, "could not renew the SAS token; retrying on the next attempt")
            }
        }
    }

    async fn run(mut self, mut eventloop: EventLoop) {
        let mut backoff = Backoff { attempt: 0 };
        let mut epoch: u64 = 0;
        loop {
            let renew_at = self.renew_at();
            let event = tokio::select! {
                ev = eventloop.poll() => ev,
                _ = tokio::time::sleep_until(renew_at) => {
                    info!("SAS token near expiry: reconnecting with a fresh one");
                    self.renew(&mut eventloop).await;
                    eventloop.clean();
                    continue;
                }
                _ = self.inner.stop.notified() => break,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    epoch += 1;
                    self.inner.acks.set_epoch(epoch);
                    backoff.attempt = 0;
                    info!(
                        epoch,
                        session_present = ack.session_present,
                        "connected to edgeHub"
                    );
                    if !ack.session_present && epoch > 1 {
                        // rumqttc drops its unacknowledged publishes when the session is gone
                        // (a restarted edgeHub): send them again, in their order.
                        let mark = lock(&self.inner.sends).mark();
                        self.republish(mark);
                    }
                    self.subscribe();
                    if let Some(first) = self.first.take() {
                        let _ = first.send(Ok(()));
                    } else {
                        self.resync_desired();
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => self.dispatch(p, epoch),
                Ok(Event::Incoming(Packet::PubAck(a))) => lock(&self.inner.sends).acked(a.pkid),
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => lock(&self.inner.sends).sent(pkid),
                Ok(_) => {}
                Err(e) => {
                    if self.inner.closing.load(Ordering::SeqCst) {
                        break;
                    }
                    if let ConnectionError::ConnectionRefused(code) = &e {
                        let refused = matches!(
                            code,
                            ConnectReturnCode::BadUserNamePassword
                                | ConnectReturnCode::NotAuthorized
                        );
                        if refused {
                            if let Some(first) = self.first.take() {
                                let _ = first.send(Err(Error::Config(format!(
                                    "edgeHub refused the module's identity ({code:?}): check the module's key or the runtime's registry"
                                ))));
                                break;
                            }
                        }
                    }
                    let wait = backoff.next();
                    warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "connection to edgeHub lost");
                    tokio::time::sleep(wait).await;
                    if self.expiry <= now_secs() + self.tokens.settings.token_ttl_secs / 5 {
                        self.renew(&mut eventloop).await;
                    }
                }
            }
        }
        lock(&self.inner.sends).fail_all();
        debug!("edgeHub connection driver stopped");
    }

    fn republish(&self, mark: u64) {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let _order = inner.send_order.lock().await;
            let pending = lock(&inner.sends).take_before(mark);
            if !pending.is_empty() {
                warn!(
                    count = pending.len(),
                    "edgeHub had no session: sending unacknowledged messages again"
                );
            }
            for p in pending {
                let (topic, payload) = (p.topic.clone(), p.payload.clone());
                lock(&inner.sends).register(p.topic, p.payload, p.tx);
                if inner
                    .mqtt
                    .publish_bytes(topic, QoS::AtLeastOnce, false, payload)
                    .await
                    .is_err()
                {
                    lock(&inner.sends).unregister_last();
                    break;
                }
            }
        });
    }

    fn subscribe(&self) {
        let s = &self.tokens.settings;
        let mut filters = vec![
            topic::TWIN_RESPONSES_FILTER.to_owned(),
            topic::TWIN_DESIRED_FILTER.to_owned(),
        ];
        if !s.is_device() {
            filters.push(topic::module_inputs_filter(&s.device_id, &s.module_id));
        }
        for f in filters {
            if let Err(e) = self.inner.mqtt.try_subscribe(f.clone(), QoS::AtLeastOnce) {
                warn!(filter = %f, error = %e, "could not queue a subscription");
            }
        }
    }

    /// After a reconnection, desired patches may have been missed: compare versions and
    /// hand the full desired document on if it changed.
    fn resync_desired(&self) {
        let client = ModuleClient {
            inner: self.inner.clone(),
        };
        let tx = self.desired_tx.clone();
        tokio::spawn(async move {
            let before = client.inner.desired_version.load(Ordering::SeqCst);
            match client.twin().await {
                Ok(twin) => {
                    let now = twin
                        .pointer("/desired/$version")
                        .and_then(Value::as_u64)
                        .unwrap_or(0);
                    if now != before {
                        if let Some(desired) = twin.get("desired") {
                            let _ = tx.send(desired.clone());
                        }
                    }
                }
                Err(e) => warn!(error = %e, "could not re-read the twin after reconnecting"),
            }
        });
    }

    fn dispatch(&self, p: Publish, epoch: u64) {
        let token = self.inner.acks.token(epoch, p.pkid, p.qos);
        match Topic::parse(&p.topic) {
            Ok(Topic::ModuleInput { input, bag, .. }) => {
                let mut message = properties::decode(bag);
                message.body = p.payload;
                message.input_name = Some(input.to_owned());
                let m = InputMessage {
                    input: input.to_owned(),
                    message,
                    token,
                };
                if self.inputs_tx.send(m).is_err() {
                    debug!("input arrived while nobody reads inputs; left unacknowledged");
                }
            }
            Ok(Topic::TwinResponse { status, rid, .. }) => {
                if let Some(w) = lock(&self.inner.twin_waiters).remove(&rid) {
                    let _ = w.send((status, p.payload));
                }
                token.ack();
            }
            Ok(Topic::TwinDesiredPatch { version }) => {
                match serde_json::from_slice::<Value>(&p.payload) {
                    Ok(patch) => {
                        let v = version.or_else(|| patch.get("$version").and_then(Value::as_u64));
                        if let Some(v) = v {
                            self.inner.desired_version.fetch_max(v, Ordering::SeqCst);
                        }
                        let _ = self.desired_tx.send(patch);
                    }
                    Err(e) => warn!(error = %e, "desired-properties patch is not JSON; ignored"),
                }
                token.ack();
            }
            _ => {
                warn!(topic = %p.topic, "message on an unexpected topic; acknowledged and ignored");
                token.ack();
            }
        }
    }
}
