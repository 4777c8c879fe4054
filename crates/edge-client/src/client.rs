//! The module client's API ([`ModuleClient`]): one MQTT/TLS connection to edgeHub, shared by
//! every task of a module. Sends go to the connection's driver ([`crate::driver`]), which
//! owns the connection; what arrives comes back on channels (inputs, desired properties,
//! twin answers). What the two share is in [`crate::session`].

use crate::acks::{AckSequencer, AckToken, Done, Forwarded, OutputOf, SendTracker, Then};
use crate::driver::Driver;
use crate::error::Error;
use crate::metrics::ClientMetrics;
use crate::session::{fits, lock, Inner, SEND_WINDOW};
pub use crate::session::{InputMessage, MethodHandler};
use crate::settings::Settings;
use crate::tls::tls_config;
use crate::token::TokenSource;
use bytes::Bytes;
use edge_protocol::topic::{self};
use edge_protocol::Message;
use rustls_pki_types::ServerName;
use serde_json::Value;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};
use tokio_rustls::TlsConnector;
use tracing::debug;

/// A module's connection to edgeHub. Cheap to clone; all clones share one connection.
#[derive(Clone)]
pub struct ModuleClient {
    pub(crate) inner: Arc<Inner>,
}

/// A message ready to send ([`ModuleClient::prepare_output`]): its topic, with the property
/// bag, and its body.
#[derive(Debug)]
pub struct Prepared {
    pub(crate) topic: String,
    pub(crate) payload: Bytes,
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
            metrics: ClientMetrics::default(),
            methods: std::sync::RwLock::new(None),
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

    /// What the client counted (messages per input and output, connections).
    pub fn metrics(&self) -> &ClientMetrics {
        &self.inner.metrics
    }

    /// Answers direct methods with `handler` from now on (replacing any earlier one). A
    /// method called while there is none is answered 501.
    pub fn on_methods(
        &self,
        handler: impl Fn(&str, &Value) -> (u16, Value) + Send + Sync + 'static,
    ) {
        *self
            .inner
            .methods
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(handler));
    }

    /// Whether the client is connected to edgeHub now.
    pub fn is_connected(&self) -> bool {
        self.inner.metrics.connected.get() == 1
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
        if fits(&topic, &message.body).is_ok() {
            self.inner.metrics.sent.inc(output);
        }
        self.inner.publish_tracked(topic, message.body)
    }

    /// The topic of `message` sent to `output` (named in the message too).
    fn output_topic(&self, output: &str, message: &mut Message) -> String {
        message.output_name = Some(output.into());
        let s = &self.inner.settings;
        topic::module_output(&s.device_id, &s.module_id, message)
    }

    /// `message` made ready to send to `output` with [`ModuleClient::forward`]; or, if
    /// MQTT cannot carry it (a packet over
    /// [`MAX_PACKET`](edge_protocol::mqtt::MAX_PACKET), or a topic with its property bag
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
            Ok(()) => {
                self.inner.metrics.sent.inc(output);
                Ok(Prepared {
                    topic,
                    payload: message.body,
                })
            }
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
        self.inner.publish_tracked(topic, message.body)
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
        let permit = self.inner.room().await?;
        self.inner.queue(topic, message.body, then, permit)
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
            let queued = match self.inner.room().await {
                Ok(permit) => {
                    let done = Done::Output(OutputOf::new(&forwarded));
                    self.inner.queue(p.topic, p.payload, done, permit)
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

    /// Reads the module twin: `{"desired": {…, "$version": n}, "reported": {…}}`.
    pub async fn twin(&self) -> Result<Value, Error> {
        self.inner.twin().await
    }

    /// Patches the module's reported properties.
    pub async fn update_reported(&self, patch: &Value) -> Result<(), Error> {
        let rid = uuid::Uuid::new_v4().to_string();
        let body = Bytes::from(serde_json::to_vec(patch)?);
        let (status, body) = self
            .inner
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
