//! What a module client's handles ([`crate::ModuleClient`]) and its connection's driver
//! ([`crate::driver`]) share: the connection's state ([`Inner`]) and the sends both make
//! (publishes that wait for edgeHub, twin requests, method answers). The client uses the
//! driver and both use this, so neither uses the other.

use crate::acks::{AckSequencer, AckToken, Done, Outbound};
use crate::error::Error;
use crate::metrics::ClientMetrics;
use crate::settings::Settings;
use bytes::Bytes;
use edge_protocol::mqtt::MAX_PACKET;
use edge_protocol::topic;
use edge_protocol::{CompactString, Message};
use rumqttc::QoS;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tracing::warn;

/// Deadline for a twin request.
pub(crate) const TWIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Publishes sent but not yet acknowledged, at most; further sends wait for room.
pub(crate) const SEND_WINDOW: usize = 1000;

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
    pub(crate) token: AckToken,
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

/// The state of one connection, shared by every clone of its client and by its driver.
pub(crate) struct Inner {
    pub(crate) settings: Settings,
    pub(crate) trust_pem: String,
    /// Publishes for the driver, in the order they are sent.
    pub(crate) out: mpsc::UnboundedSender<Outbound>,
    /// Room for unacknowledged publishes.
    pub(crate) window: Arc<Semaphore>,
    pub(crate) acks: Arc<AckSequencer>,
    pub(crate) twin_waiters: Mutex<HashMap<String, oneshot::Sender<(u16, Bytes)>>>,
    pub(crate) inputs: Mutex<Option<mpsc::UnboundedReceiver<InputMessage>>>,
    pub(crate) desired: Mutex<Option<mpsc::UnboundedReceiver<Value>>>,
    pub(crate) desired_version: AtomicU64,
    pub(crate) closing: AtomicBool,
    pub(crate) stop: Notify,
    pub(crate) driver: Mutex<Option<JoinHandle<()>>>,
    pub(crate) metrics: ClientMetrics,
    pub(crate) methods: std::sync::RwLock<Option<MethodHandler>>,
}

/// Answers a direct method: given the method's name and its JSON payload (`Null` if none),
/// the status (200 for success; IoT Hub passes it to the caller) and the JSON answer. Called
/// on the connection's task: it must be quick.
pub type MethodHandler = Arc<dyn Fn(&str, &Value) -> (u16, Value) + Send + Sync>;

/// Whether a QoS 1 publish of `payload` on `topic` fits in [`MAX_PACKET`], with a topic
/// short enough for edgeHub to deliver it; the reason if not.
pub(crate) fn fits(topic: &str, payload: &[u8]) -> Result<(), String> {
    use edge_protocol::mqtt::MAX_SEND_TOPIC;
    if topic.len() > MAX_SEND_TOPIC {
        return Err(format!(
            "a topic of {} bytes leaves edgeHub no room for its delivery topic (at most {MAX_SEND_TOPIC} bytes): send fewer or shorter properties",
            topic.len()
        ));
    }
    edge_protocol::mqtt::check_publish(topic.len(), QoS::AtLeastOnce, payload.len(), MAX_PACKET)
        .map(|_| ())
}

impl Inner {
    /// Sends the answer to method call `rid`.
    pub(crate) async fn answer_method(&self, status: u16, rid: &str, body: &Value) {
        let topic = topic::method_response(status, rid);
        if let Err(e) = self
            .publish_tracked(topic, Bytes::from(body.to_string()))
            .await
        {
            warn!(error = %e, rid, "method answer not sent");
        }
    }

    /// Publishes and waits until edgeHub accepts it.
    pub(crate) async fn publish_tracked(&self, topic: String, payload: Bytes) -> Result<(), Error> {
        fits(&topic, &payload).map_err(Error::TooLarge)?;
        let permit = self.room().await?;
        let (done, rx) = oneshot::channel();
        self.queue(topic, payload, Done::Waiter(done), permit)?;
        rx.await.map_err(|_| Error::Closed)
    }

    /// A place in the send window, once there is room.
    pub(crate) async fn room(&self) -> Result<OwnedSemaphorePermit, Error> {
        if self.closing.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        // Room is there nearly always: take it without a waiting future.
        match self.window.clone().try_acquire_owned() {
            Ok(permit) => Ok(permit),
            Err(_) => self
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
    pub(crate) fn queue(
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
        self.out.send(o).map_err(|_| Error::Closed)
    }

    /// Sends a twin request `rid` and waits for its answer: the status and the body.
    pub(crate) async fn twin_request(
        &self,
        topic: String,
        rid: String,
        body: Bytes,
    ) -> Result<(u16, Bytes), Error> {
        let (tx, rx) = oneshot::channel();
        lock(&self.twin_waiters).insert(rid.clone(), tx);
        let result = async {
            self.publish_tracked(topic, body).await?;
            tokio::time::timeout(TWIN_TIMEOUT, rx)
                .await
                .map_err(|_| Error::Timeout("a twin response"))?
                .map_err(|_| Error::Closed)
        }
        .await;
        lock(&self.twin_waiters).remove(&rid);
        result
    }

    /// Reads the module twin: `{"desired": {…, "$version": n}, "reported": {…}}`.
    pub(crate) async fn twin(&self) -> Result<Value, Error> {
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
            self.desired_version.fetch_max(v, Ordering::SeqCst);
        }
        Ok(twin)
    }
}

/// Locks `m`, whether or not a panic poisoned it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
