//! The module client: one MQTT/TLS connection to edgeHub, shared by every task of a module.
//!
//! One task (the driver) owns the connection. Everything the module's tasks send (publishes,
//! PUBACKs for handled inputs) is queued for it, and whatever is queued when it gets to
//! write goes out as one TLS write: under load many packets share a record and a syscall.

use crate::acks::{
    AckSequencer, AckToken, Done, Forwarded, Outbound, OutputOf, Release, SendTracker, Then,
};
use crate::error::Error;
use crate::settings::{Credentials, Settings, TrustSource};
use crate::wire::{
    self, read_packet, write_publish, Incoming, PacketReader, PublishIn, MAX_DELIVERY, MAX_PACKET,
};
use crate::workload::WorkloadClient;
use bytes::{Bytes, BytesMut};
use edge_protocol::topic::{self, Topic};
use edge_protocol::{properties, sas, CompactString, Message};
use rumqttc::{
    ConnectReturnCode, Login, Packet, PubAck, QoS, Subscribe, SubscribeFilter, SubscribeReasonCode,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tracing::{debug, info, warn};

/// Deadline for a twin request.
const TWIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Publishes sent but not yet acknowledged, at most; further sends wait for room.
const SEND_WINDOW: usize = 1000;
/// MQTT keep-alive announced to edgeHub; a PINGREQ goes out at half of it.
const KEEP_ALIVE: Duration = Duration::from_secs(60);
/// Deadline for TCP connect, TLS handshake and CONNACK, each.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for sends in flight before reconnecting to renew the token.
const DRAIN: Duration = Duration::from_secs(5);
/// Most bytes gathered into one TLS write.
const WRITE_BATCH: usize = 256 * 1024;

/// A message that arrived on one of the module's inputs.
///
/// Acknowledge it with [`InputMessage::ack`] once it has been handled (and whatever was sent
/// for it was accepted). Dropping it unacknowledged leaves it with edgeHub, which delivers
/// it again on the next connection.
#[derive(Debug)]
pub struct InputMessage {
    /// The input it arrived on.
    pub input: CompactString,
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
    pub fn into_parts(self) -> (CompactString, Message, AckToken) {
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
    /// Publishes for the driver, in the order they are sent.
    out: mpsc::UnboundedSender<Outbound>,
    /// Room for unacknowledged publishes.
    window: Arc<Semaphore>,
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
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(crypto_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// ring's provider, offering TLS 1.3's AES-128-GCM first (rustls offers AES-256-GCM
/// first). Every message crosses edgeHub's TLS connections twice, and AES-128 takes 10
/// rounds per block where AES-256 takes 14; 128-bit keys are the strength the key exchange
/// (X25519, P-256) gives anyway, and the suite is the one TLS 1.3 requires of every peer.
fn crypto_provider() -> rustls::crypto::CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    // A stable sort: the other suites keep their order.
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    provider
}

/// Capped exponential backoff with jitter: attempt n waits a random time between half and all
/// of min(100 ms × 2ⁿ, 30 s), so modules that lost edgeHub together do not reconnect together.
struct Backoff {
    attempt: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff::with_rng(fastrand::Rng::new())
    }

    fn with_rng(rng: fastrand::Rng) -> Backoff {
        Backoff { attempt: 0, rng }
    }

    /// After a successful connection: the next failure waits the shortest time again.
    fn reset(&mut self) {
        self.attempt = 0;
    }

    fn next(&mut self) -> Duration {
        let ceiling = 100u64.saturating_mul(1 << self.attempt.min(9)).min(30_000);
        self.attempt = self.attempt.saturating_add(1);
        Duration::from_millis(self.rng.u64(ceiling / 2..=ceiling))
    }
}

/// A message ready to send ([`ModuleClient::prepare_output`]): its topic, with the property
/// bag, and its body.
#[derive(Debug)]
pub struct Prepared {
    topic: String,
    payload: Bytes,
}

/// A message [`ModuleClient::prepare_output`] did not make ready because MQTT cannot carry
/// it.
#[derive(Debug)]
pub struct Unsendable {
    /// The message, as it was given (with its output name set).
    pub message: Box<Message>,
    /// Why it cannot be sent: its size against the limit.
    pub reason: String,
}

/// Whether a QoS 1 publish of `payload` on `topic` fits in [`MAX_PACKET`]; the reason if not.
fn fits(topic: &str, payload: &[u8]) -> Result<(), String> {
    wire::check_publish(topic.len(), QoS::AtLeastOnce, payload.len(), MAX_PACKET).map(|_| ())
}

/// Appends the PUBLISH of send `o` under `pkid` to `out`, with the DUP flag if it is sent
/// `again`.
fn write_send(out: &mut BytesMut, pkid: u16, o: &Outbound, again: bool) {
    // Checked before it was queued: by `fits`, or when its `Prepared` was made.
    let topic = [o.topic.as_str()];
    let written = write_publish(
        out,
        &topic,
        QoS::AtLeastOnce,
        pkid,
        again,
        &o.payload,
        MAX_PACKET,
    );
    if let Err(e) = written {
        warn!(error = %e, "packet not sent: it cannot be encoded");
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
        let tls = TlsConnector::from(tls_config(&pem)?);
        let server_name = ServerName::try_from(settings.gateway_hostname.clone()).map_err(|e| {
            Error::Config(format!(
                "gateway host name '{}' is not a valid TLS server name: {e}",
                settings.gateway_hostname
            ))
        })?;
        let (token, expiry) = tokens.token().await?;

        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let (inputs_tx, inputs_rx) = mpsc::unbounded_channel();
        let (desired_tx, desired_rx) = mpsc::unbounded_channel();
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            settings,
            trust_pem: pem,
            out: out_tx,
            window: Arc::new(Semaphore::new(SEND_WINDOW)),
            acks: Arc::new(AckSequencer::new(ack_tx)),
            twin_waiters: Mutex::new(HashMap::new()),
            inputs: Mutex::new(Some(inputs_rx)),
            desired: Mutex::new(Some(desired_rx)),
            desired_version: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            stop: Notify::new(),
            driver: Mutex::new(None),
        });

        let (first_tx, first_rx) = oneshot::channel();
        let driver = Driver {
            inner: inner.clone(),
            tokens,
            token,
            expiry,
            tls,
            server_name,
            inputs_tx,
            desired_tx,
            first: Some(first_tx),
            sends: SendTracker::default(),
            out_rx,
            ack_rx,
            epoch: 0,
        };
        let handle = tokio::spawn(driver.run());
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

    /// Sends `message` to `output`; returns once edgeHub has accepted it (PUBACK). A
    /// message too large for MQTT fails at once with [`Error::TooLarge`]; to send something
    /// else in its place, use [`ModuleClient::prepare_output`].
    pub fn send_output(
        &self,
        output: &str,
        mut message: Message,
    ) -> impl Future<Output = Result<(), Error>> + '_ {
        // The topic is made here, not in the future: waiting for edgeHub, a send holds its
        // topic and body only, not the whole message (a module has hundreds waiting).
        let topic = self.output_topic(output, &mut message);
        self.publish_tracked(topic, message.body)
    }

    /// The topic of `message` sent to `output` (named in the message too).
    fn output_topic(&self, output: &str, message: &mut Message) -> String {
        message.output_name = Some(output.into());
        let s = &self.inner.settings;
        topic::module_output(&s.device_id, &s.module_id, message)
    }

    /// `message` made ready to send to `output` with [`ModuleClient::forward`]; or, if
    /// MQTT cannot carry it (a packet over [`MAX_PACKET`], or a topic with its property bag
    /// over 64 KiB), the message back unsent, with the reason, so that the caller can send
    /// something in its place (a dead letter without the body, say) and need not leave its
    /// input for a redelivery that would fail the same way.
    pub fn prepare_output(
        &self,
        output: &str,
        mut message: Message,
    ) -> Result<Prepared, Unsendable> {
        let topic = self.output_topic(output, &mut message);
        match fits(&topic, &message.body) {
            Ok(()) => Ok(Prepared {
                topic,
                payload: message.body,
            }),
            Err(reason) => Err(Unsendable {
                message: Box::new(message),
                reason,
            }),
        }
    }

    /// The ladder every module needs for an answer MQTT may not carry: `message` made ready
    /// for `output`; else what `instead` makes of it (given the message and why it did not
    /// fit: usually the message without its body, saying so, and the output it goes to);
    /// else nothing, logged as an error with the message's ids. Sent again, a message that
    /// does not fit would fail again, so the caller acknowledges its input either way.
    pub fn prepare_or_instead<'o>(
        &self,
        output: &'o str,
        message: Message,
        instead: impl FnOnce(Message, &str) -> (&'o str, Message),
    ) -> Option<Prepared> {
        let u = match self.prepare_output(output, message) {
            Ok(p) => return Some(p),
            Err(u) => u,
        };
        let (output, message) = instead(*u.message, &u.reason);
        match self.prepare_output(output, message) {
            Ok(p) => Some(p),
            Err(u) => {
                tracing::error!(
                    output,
                    correlation_id = u.message.correlation_id.as_deref().unwrap_or(""),
                    message_id = u.message.message_id.as_deref().unwrap_or(""),
                    "message dropped: what stands in for it cannot be sent either ({}); its \
                     properties are over MQTT's limits",
                    u.reason
                );
                None
            }
        }
    }

    /// Sends device telemetry (`devices/{d}/messages/events`); for a device identity.
    pub fn send_event(&self, message: Message) -> impl Future<Output = Result<(), Error>> + '_ {
        let topic = topic::device_events(&self.inner.settings.device_id, &message);
        self.publish_tracked(topic, message.body)
    }

    /// Sends device telemetry, as [`ModuleClient::send_event`] does, without a future that
    /// waits for edgeHub: `then` is called once, with whether edgeHub accepted the message
    /// (`false` if the client closed first, and on `Err`), on the connection's task, so it
    /// must be quick. Returns once the message is queued, waiting only for room in the
    /// send window. For a device with many messages in flight (a load generator), where a
    /// waiting future each would cost more than the sending.
    pub async fn send_event_then(
        &self,
        message: Message,
        then: impl FnOnce(bool) + Send + Sync + 'static,
    ) -> Result<(), Error> {
        // Dropped on an error, it is called with `false`.
        let then = Done::Then(Then::new(then));
        let topic = topic::device_events(&self.inner.settings.device_id, &message);
        fits(&topic, &message.body).map_err(Error::TooLarge)?;
        let permit = self.room().await?;
        self.queue(topic, message.body, then, permit)
    }

    async fn publish_tracked(&self, topic: String, payload: Bytes) -> Result<(), Error> {
        fits(&topic, &payload).map_err(Error::TooLarge)?;
        let permit = self.room().await?;
        let (done, rx) = oneshot::channel();
        self.queue(topic, payload, Done::Waiter(done), permit)?;
        rx.await.map_err(|_| Error::Closed)
    }

    /// A place in the send window, once there is room.
    async fn room(&self) -> Result<OwnedSemaphorePermit, Error> {
        if self.inner.closing.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        // Room is there nearly always: take it without a waiting future.
        match self.inner.window.clone().try_acquire_owned() {
            Ok(permit) => Ok(permit),
            Err(_) => self
                .inner
                .window
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| Error::Closed),
        }
    }

    /// Hands a publish to the connection; `done` completes when edgeHub accepts it (it is
    /// dropped unfired on `Err`). The topic and the payload are moved in here, not into
    /// the futures that wait for room: a larger future costs copies of it.
    fn queue(
        &self,
        topic: String,
        payload: Bytes,
        done: Done,
        permit: OwnedSemaphorePermit,
    ) -> Result<(), Error> {
        let o = Outbound {
            topic,
            payload,
            done,
            _permit: Some(permit),
        };
        self.inner.out.send(o).map_err(|_| Error::Closed)
    }

    /// Sends `outputs` (each made ready with [`ModuleClient::prepare_output`]) and
    /// acknowledges `input` once edgeHub has accepted every one of them (at once if there
    /// are none). Returns as soon as they are queued for the connection, waiting only for
    /// room in the send window: nothing waits per message for edgeHub, so a module that
    /// turns each input into outputs (a router) needs no future per message in flight.
    ///
    /// If the client closes before edgeHub accepted them all, `input` is left
    /// unacknowledged and edgeHub delivers it again (at-least-once); so it is on `Err`.
    pub async fn forward(
        &self,
        input: AckToken,
        outputs: impl IntoIterator<Item = Prepared>,
    ) -> Result<(), Error> {
        let mut outputs = outputs.into_iter().peekable();
        if outputs.peek().is_none() {
            input.ack();
            return Ok(());
        }
        let forwarded = Forwarded::new(input);
        for p in outputs {
            // `Prepared` was checked against MQTT's limits when it was made.
            let queued = match self.room().await {
                Ok(permit) => {
                    let done = Done::Output(OutputOf::new(&forwarded));
                    self.queue(p.topic, p.payload, done, permit)
                }
                Err(e) => Err(e),
            };
            if let Err(e) = queued {
                forwarded.abandon();
                return Err(e);
            }
        }
        Ok(())
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
            && (self.inner.window.available_permits() < SEND_WINDOW
                || self.inner.acks.pending() > 0)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.abort();
        let handle = lock(&self.inner.driver).take();
        if let Some(h) = handle {
            let _ = tokio::time::timeout(Duration::from_secs(2), h).await;
        }
        debug!("module client closed");
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Owns the connection: connects, writes what is queued, dispatches what arrives,
/// tracks PUBACKs, reconnects with backoff and renews the SAS token.
struct Driver {
    inner: Arc<Inner>,
    tokens: TokenSource,
    token: String,
    expiry: u64,
    tls: TlsConnector,
    server_name: ServerName<'static>,
    inputs_tx: mpsc::UnboundedSender<InputMessage>,
    desired_tx: mpsc::UnboundedSender<Value>,
    first: Option<oneshot::Sender<Result<(), Error>>>,
    sends: SendTracker,
    out_rx: mpsc::UnboundedReceiver<Outbound>,
    ack_rx: mpsc::UnboundedReceiver<Release>,
    epoch: u64,
}

/// Why a connection attempt failed.
enum ConnectFailure {
    Refused(ConnectReturnCode),
    Other(String),
}

/// How a connection ended.
enum Ended {
    /// The client is closing.
    Stop,
    /// The SAS token is near expiry: reconnect with a fresh one.
    Renew,
    /// Lost; reconnect after a backoff.
    Lost(String),
}

type Stream = TlsStream<TcpStream>;

fn encode(packet: Packet, out: &mut BytesMut) {
    if let Err(e) = packet.write(out, MAX_PACKET) {
        warn!(error = %e, "packet not sent: it cannot be encoded");
    }
}

impl Driver {
    fn renew_at(&self) -> tokio::time::Instant {
        let ttl = self.tokens.settings.token_ttl_secs;
        let left = self.expiry.saturating_sub(now_secs());
        // Renew when a fifth of the lifetime is left.
        tokio::time::Instant::now() + Duration::from_secs(left.saturating_sub(ttl / 5))
    }

    async fn renew(&mut self) {
        match self.tokens.token().await {
            Ok((token, expiry)) => {
                self.token = token;
                self.expiry = expiry;
            }
            Err(e) => {
                warn!(error = %e, "could not renew the SAS token; retrying on the next attempt")
            }
        }
    }

    /// TCP, TLS, CONNECT and CONNACK; returns the stream, what was read after the CONNACK
    /// and whether edgeHub kept the session.
    async fn connect(&self) -> Result<(Stream, BytesMut, bool), ConnectFailure> {
        let s = &self.tokens.settings;
        let other =
            |what: &str, e: &dyn std::fmt::Display| ConnectFailure::Other(format!("{what}: {e}"));
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((s.gateway_hostname.as_str(), s.port)),
        )
        .await
        .map_err(|e| other("connecting", &e))?
        .map_err(|e| {
            other(
                &format!("connecting to {}:{}", s.gateway_hostname, s.port),
                &e,
            )
        })?;
        let _ = tcp.set_nodelay(true);
        let mut tls = tokio::time::timeout(
            CONNECT_TIMEOUT,
            self.tls.connect(self.server_name.clone(), tcp),
        )
        .await
        .map_err(|e| other("TLS handshake", &e))?
        .map_err(|e| other("TLS handshake with edgeHub", &e))?;
        let mut connect = rumqttc::Connect::new(s.client_id());
        connect.keep_alive = KEEP_ALIVE.as_secs() as u16;
        connect.clean_session = false;
        connect.login = Some(Login::new(s.username(), self.token.clone()));
        let mut out = BytesMut::new();
        encode(Packet::Connect(connect), &mut out);
        tls.write_all(&out)
            .await
            .map_err(|e| other("sending CONNECT", &e))?;
        tls.flush()
            .await
            .map_err(|e| other("sending CONNECT", &e))?;
        let mut buf = BytesMut::with_capacity(16 * 1024);
        match tokio::time::timeout(CONNECT_TIMEOUT, read_packet(&mut tls, &mut buf)).await {
            Ok(Ok(Some(Packet::ConnAck(ack)))) => match ack.code {
                ConnectReturnCode::Success => Ok((tls, buf, ack.session_present)),
                code => Err(ConnectFailure::Refused(code)),
            },
            Ok(Ok(Some(p))) => Err(ConnectFailure::Other(format!(
                "edgeHub answered CONNECT with {p:?}"
            ))),
            Ok(Ok(None)) => Err(ConnectFailure::Other(
                "edgeHub closed the connection before CONNACK".into(),
            )),
            Ok(Err(e)) => Err(other("reading CONNACK", &e)),
            Err(e) => Err(other("waiting for CONNACK", &e)),
        }
    }

    async fn run(mut self) {
        let mut backoff = Backoff::new();
        loop {
            if self.inner.closing.load(Ordering::SeqCst) {
                break;
            }
            let attempt = tokio::select! {
                r = self.connect() => r,
                _ = self.inner.stop.notified() => break,
            };
            let why = match attempt {
                Ok((stream, buf, session_present)) => {
                    self.epoch += 1;
                    self.inner.acks.set_epoch(self.epoch);
                    backoff.reset();
                    info!(epoch = self.epoch, session_present, "connected to edgeHub");
                    match self.session(stream, buf).await {
                        Ended::Stop => break,
                        Ended::Renew => {
                            info!("SAS token near expiry: reconnecting with a fresh one");
                            self.renew().await;
                            continue;
                        }
                        Ended::Lost(why) => why,
                    }
                }
                Err(ConnectFailure::Refused(code)) => {
                    let refused = matches!(
                        code,
                        ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized
                    );
                    if refused {
                        if let Some(first) = self.first.take() {
                            let _ = first.send(Err(Error::Config(format!(
                                "edgeHub refused the module's identity ({code:?}): check the module's key or the runtime's registry"
                            ))));
                            break;
                        }
                    }
                    format!("edgeHub refused the connection ({code:?})")
                }
                Err(ConnectFailure::Other(why)) => why,
            };
            if self.inner.closing.load(Ordering::SeqCst) {
                break;
            }
            let wait = backoff.next();
            warn!(error = %why, retry_in_ms = wait.as_millis() as u64, "connection to edgeHub lost");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.inner.stop.notified() => break,
            }
            if self.expiry <= now_secs() + self.tokens.settings.token_ttl_secs / 5 {
                self.renew().await;
            }
        }
        // Whatever is still unacknowledged fails: its senders get `Error::Closed`.
        self.sends = SendTracker::default();
        self.out_rx.close();
        while self.out_rx.try_recv().is_ok() {}
        debug!("edgeHub connection driver stopped");
    }

    /// Takes a publish in and encodes it.
    fn take_send(&mut self, o: Outbound, out: &mut BytesMut, reserved: Option<u16>) {
        let (pkid, o) = self.sends.add(o, reserved);
        write_send(out, pkid, o, false);
    }

    /// Encodes a released PUBACK (if its message came on this connection).
    fn take_ack(&self, r: Release, out: &mut BytesMut) {
        if let Some(pkid) = r.pkid_on(self.epoch) {
            encode(Packet::PubAck(PubAck::new(pkid)), out);
        }
        self.inner.acks.taken();
    }

    /// One connection, from CONNACK until it ends.
    async fn session(&mut self, stream: Stream, rbuf: BytesMut) -> Ended {
        let (mut rd, mut wr) = tokio::io::split(stream);
        // edgeHub's deliveries may be a little over the packet limit of what it takes.
        let mut reader = PacketReader::from_buf(rbuf).with_limit(MAX_DELIVERY);
        let mut out = BytesMut::with_capacity(64 * 1024);
        // Subscriptions first, then every publish edgeHub has not acknowledged, again.
        let sub_pkid = self.sends.free_pkid(None);
        let filters = self
            .filters()
            .into_iter()
            .map(|f| SubscribeFilter::new(f, QoS::AtLeastOnce))
            .collect::<Vec<_>>();
        let mut sub = Subscribe::new_many(filters);
        sub.pkid = sub_pkid;
        encode(Packet::Subscribe(sub), &mut out);
        let resend = self.sends.len();
        for (pkid, o) in self.sends.unacked() {
            write_send(&mut out, pkid, o, true);
        }
        if resend > 0 && self.epoch > 1 {
            warn!(count = resend, "sending unacknowledged messages again");
        }
        if let Some(first) = self.first.take() {
            let _ = first.send(Ok(()));
        } else {
            self.resync_desired();
        }
        // Whatever came with the CONNACK.
        if let Err(e) = self.incoming_all(&mut reader, sub_pkid) {
            return e;
        }
        let renew_at = self.renew_at();
        let ping_every = KEEP_ALIVE / 2;
        let mut next_ping = tokio::time::Instant::now() + ping_every;
        let silence = KEEP_ALIVE * 3 / 2;
        let mut heard = tokio::time::Instant::now();
        // Before renewing, new sends wait while those in flight are acknowledged (a few
        // seconds at most), so the new connection does not have to send them again.
        let mut draining: Option<tokio::time::Instant> = None;
        // One timer for every deadline (renewal, end of draining, ping, silence), set to
        // the earliest and moved on when it fires; and one stop signal. Made per loop turn,
        // they would cost timer-wheel registrations for every wakeup.
        let deadline = |draining: Option<tokio::time::Instant>,
                        next_ping: tokio::time::Instant,
                        heard: tokio::time::Instant| {
            draining
                .map_or(renew_at, |d| d + DRAIN)
                .min(next_ping)
                .min(heard + silence)
        };
        let tick = tokio::time::sleep_until(deadline(draining, next_ping, heard));
        let inner = self.inner.clone();
        let stop = inner.stop.notified();
        tokio::pin!(tick, stop);
        loop {
            if draining.is_some_and(|since| self.sends.len() == 0 || since.elapsed() > DRAIN) {
                encode(Packet::Disconnect, &mut out);
                let _ = wr.write_all(&out).await;
                let _ = wr.flush().await;
                return Ended::Renew;
            }
            if !out.is_empty() {
                if let Err(e) = async {
                    wr.write_all(&out).await?;
                    wr.flush().await
                }
                .await
                {
                    return Ended::Lost(format!("writing to edgeHub: {e}"));
                }
                out.clear();
            }
            tokio::select! {
                biased;
                _ = &mut stop => {
                    encode(Packet::Disconnect, &mut out);
                    let _ = wr.write_all(&out).await;
                    let _ = wr.flush().await;
                    return Ended::Stop;
                }
                _ = &mut tick => {
                    let now = tokio::time::Instant::now();
                    if now >= heard + silence {
                        return Ended::Lost(format!("nothing from edgeHub for {} s", silence.as_secs()));
                    }
                    if draining.is_none() && now >= renew_at {
                        draining = Some(now);
                    }
                    if now >= next_ping {
                        encode(Packet::PingReq, &mut out);
                        next_ping = now + ping_every;
                    }
                    tick.as_mut().reset(deadline(draining, next_ping, heard));
                    // The loop's top ends a finished drain and writes the ping.
                    continue;
                }
                r = reader.fill(&mut rd) => {
                    match r {
                        Ok(true) => heard = tokio::time::Instant::now(),
                        Ok(false) => return Ended::Lost("edgeHub closed the connection".into()),
                        Err(e) => return Ended::Lost(format!("reading from edgeHub: {e}")),
                    }
                    // Every packet this read completed, without waiting for more.
                    if let Err(e) = self.incoming_all(&mut reader, sub_pkid) {
                        return e;
                    }
                }
                Some(o) = self.out_rx.recv(), if draining.is_none() => {
                    self.take_send(o, &mut out, Some(sub_pkid));
                }
                Some(r) = self.ack_rx.recv() => self.take_ack(r, &mut out),
            }
            // Gather whatever else is queued into the same write; once, let the module's
            // other tasks run first, so what they are about to send joins this write.
            let mut yielded = false;
            while out.len() < WRITE_BATCH {
                if let Ok(r) = self.ack_rx.try_recv() {
                    self.take_ack(r, &mut out);
                } else if draining.is_some() {
                    break;
                } else if let Ok(o) = self.out_rx.try_recv() {
                    self.take_send(o, &mut out, Some(sub_pkid));
                } else if !yielded && !out.is_empty() {
                    yielded = true;
                    tokio::task::yield_now().await;
                } else {
                    break;
                }
            }
        }
    }

    /// Handles every whole packet `reader` holds; `Err` ends the connection.
    fn incoming_all(&mut self, reader: &mut PacketReader, sub_pkid: u16) -> Result<(), Ended> {
        loop {
            match reader.next_packet() {
                Ok(Some(p)) => self.incoming(p, sub_pkid),
                Ok(None) => return Ok(()),
                Err(e) => return Err(Ended::Lost(format!("reading from edgeHub: {e}"))),
            }
        }
    }

    fn incoming(&mut self, p: Incoming<'_>, sub_pkid: u16) {
        match p {
            Incoming::Publish(p) => self.dispatch(p),
            Incoming::PubAck(pkid) => self.sends.acked(pkid),
            Incoming::Other(Packet::SubAck(a)) if a.pkid == sub_pkid => {
                if a.return_codes.contains(&SubscribeReasonCode::Failure) {
                    warn!(codes = ?a.return_codes, "edgeHub refused a subscription");
                }
            }
            Incoming::Other(Packet::PingResp) => {}
            Incoming::Other(other) => debug!(packet = ?other, "ignored packet from edgeHub"),
        }
    }

    fn filters(&self) -> Vec<String> {
        let s = &self.tokens.settings;
        let mut filters = vec![
            topic::TWIN_RESPONSES_FILTER.to_owned(),
            topic::TWIN_DESIRED_FILTER.to_owned(),
        ];
        if !s.is_device() {
            filters.push(topic::module_inputs_filter(&s.device_id, &s.module_id));
        }
        filters
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

    fn dispatch(&self, p: PublishIn<'_>) {
        let token = self.inner.acks.token(self.epoch, p.pkid, p.qos);
        match Topic::parse(p.topic) {
            Ok(Topic::ModuleInput { input, bag, .. }) => {
                let mut message = properties::decode(bag);
                message.body = p.payload;
                message.input_name = Some(input.into());
                let m = InputMessage {
                    input: input.into(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_offers_aes_128_gcm_first_and_keeps_the_other_suites() {
        let default = rustls::crypto::ring::default_provider();
        let ours = crypto_provider();
        assert_eq!(
            ours.cipher_suites[0].suite(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        );
        let mut a: Vec<_> = default.cipher_suites.iter().map(|s| s.suite()).collect();
        let mut b: Vec<_> = ours.cipher_suites.iter().map(|s| s.suite()).collect();
        a.sort_by_key(|s| u16::from(*s));
        b.sort_by_key(|s| u16::from(*s));
        assert_eq!(a, b);
    }

    #[test]
    fn backoff_doubles_to_30_s_with_jitter_and_restarts_after_a_connection() {
        let mut b = Backoff::with_rng(fastrand::Rng::with_seed(7));
        for n in 0..14u32 {
            let ceiling = (100u64 << n.min(9)).min(30_000);
            let wait = b.next().as_millis() as u64;
            assert!(
                (ceiling / 2..=ceiling).contains(&wait),
                "attempt {n}: {wait} ms outside {}..={ceiling}",
                ceiling / 2
            );
        }
        b.reset();
        assert!(b.next() <= Duration::from_millis(100));
    }

    #[test]
    fn clients_failing_together_spread_their_retries() {
        // 100 clients at the same attempt (the fleet after an outage): their waits differ.
        let waits: std::collections::HashSet<u128> = (0..100u64)
            .map(|seed| {
                let mut b = Backoff::with_rng(fastrand::Rng::with_seed(seed));
                for _ in 0..5 {
                    b.next();
                }
                b.next().as_millis()
            })
            .collect();
        assert!(
            waits.len() > 50,
            "only {} distinct waits of 100",
            waits.len()
        );
        assert!(waits.iter().all(|w| (1600..=3200).contains(w)));
    }
}
