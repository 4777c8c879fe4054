//! edgeHub's core, independent of the network: who may connect, where each message goes
//! (routes), the module queues, client sessions and twin delivery.

use crate::agent::manifest::Manifest;
use crate::edgehub::durable::{Appended, Stored};
use crate::edgehub::endpoint::{self, Conn, Endpoint, EndpointMetrics, EndpointStats};
use crate::edgehub::hub_message::HubMessage;
use crate::edgehub::journal::{Journal, Replayed};
use crate::edgehub::metrics::{HubMetrics, SinkLabels};
use crate::edgehub::throttle::DeviceThrottle;
use crate::edgehub::twin::Twins;
use crate::iothub::upstream::Upstream;
use bytes::Bytes;
use edge_protocol::properties::{self, Restamped};
use edge_protocol::{sas, topic, CompactString, SasToken, SystemProperty};
use edge_routes::{MessageView, Route, Sink};
use rumqttc::{ConnectReturnCode, Packet, Publish, QoS};
use runtime_state::KeyStore;
use rustc_hash::FxHashMap;
use serde_json::Value;
use smallvec::SmallVec;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::{debug, info, warn};

/// Who is connected.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// A module of the edge device.
    Module {
        /// Edge device id.
        device: String,
        /// Module id.
        module: String,
    },
    /// A (leaf) device.
    Device {
        /// Device id.
        device: String,
    },
}

impl Identity {
    /// The MQTT client id of this identity.
    pub fn client_id(&self) -> String {
        match self {
            Identity::Module { device, module } => format!("{device}/{module}"),
            Identity::Device { device } => device.clone(),
        }
    }
}

/// A route of the manifest that could not be parsed.
#[derive(Debug, Clone)]
pub struct RouteError {
    /// Route name.
    pub name: String,
    /// Route text.
    pub text: String,
    /// Parser message with line and column.
    pub error: String,
}

impl std::fmt::Display for RouteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "route '{}' does not parse: {} (route: {})",
            self.name, self.error, self.text
        )
    }
}

/// Counters of the hub.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Messages received from clients.
    pub received: AtomicU64,
    /// Messages that matched no route (dropped, as edgeHub does).
    pub unrouted: AtomicU64,
    /// Copies routed to module inputs.
    pub to_modules: AtomicU64,
    /// Copies routed to `$upstream`.
    pub to_upstream: AtomicU64,
    /// Refused connection attempts.
    pub auth_failures: AtomicU64,
    /// Accepted connections.
    pub connections: AtomicU64,
}

/// Settings of the hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// IoT Hub host name (SAS audience).
    pub hub_hostname: String,
    /// The edge device id.
    pub device_id: String,
    /// Store-and-forward time-to-live.
    pub ttl: Duration,
    /// Messages in flight per module.
    pub window: usize,
    /// Bytes of queued messages each module queue keeps in memory (the rest wait on disk).
    pub queue_memory: usize,
    /// Each leaf device's publishes in IoT Hub's 4 KB units per second, past which they are
    /// taken more slowly ([`throttle`](super::throttle)); 0: not shaped.
    pub device_units_per_sec: u32,
}

#[derive(Default)]
struct Session {
    subscriptions: Vec<(String, QoS)>,
    conn: Option<Conn>,
}

/// A direct method call waiting for its answer: the client called, and where the answer
/// (status, body) goes.
type MethodCall = (String, tokio::sync::oneshot::Sender<(u16, Bytes)>);

/// Why a direct method call got no answer.
#[derive(Debug, thiserror::Error)]
pub enum MethodError {
    /// The module is not connected, or not subscribed to methods.
    #[error("module '{0}' is not connected or does not listen for direct methods")]
    NotListening(String),
    /// No answer within the timeout.
    #[error("module '{0}' did not answer within {1:?}")]
    Timeout(String, std::time::Duration),
    /// The runtime stopped waiting (shutting down).
    #[error("the call to '{0}' was abandoned")]
    Gone(String),
}

/// edgeHub's state.
pub struct Hub {
    cfg: HubConfig,
    routes: Vec<RouteEntry>,
    endpoints: Mutex<FxHashMap<String, Arc<Mutex<Endpoint>>>>,
    journal: Journal,
    sessions: Mutex<HashMap<String, Session>>,
    /// Module and device twins.
    pub twins: Twins,
    /// The `$upstream` store.
    pub upstream: Upstream,
    module_keys: KeyStore,
    device_keys: KeyStore,
    /// Counters (the control socket's `status`).
    pub metrics: Metrics,
    /// The Prometheus metrics, under IoT Edge's edgeHub names.
    pub prometheus: Arc<HubMetrics>,
    /// Traffic shaping of leaf devices' publishes.
    pub throttle: DeviceThrottle,
    next_conn: AtomicU64,
    /// Direct method calls waiting for their answer, by request id: the client asked, and
    /// where the answer goes.
    method_calls: Mutex<HashMap<String, MethodCall>>,
    next_rid: AtomicU64,
    stopping: tokio::sync::watch::Sender<bool>,
}

/// A route of the manifest, with where it stores what it matches: its sink's module queue
/// is looked up once, not for every message it routes.
struct RouteEntry {
    route: Route,
    target: Target,
    /// Its index among the routes, and its sink as metric labels.
    index: usize,
    labels: SinkLabels,
}

/// Where a route's messages go.
enum Target {
    /// The `$upstream` store.
    Upstream,
    /// A module's queue, for one of its inputs.
    Queue {
        queue: Arc<Mutex<Endpoint>>,
        input: String,
    },
}

/// A message as route conditions see it. The sender's identity and output, known from the
/// connection and the topic, are answered directly; other properties and the body are
/// decoded at most once, and only if a condition reads them.
struct View<'a> {
    m: &'a HubMessage,
    device: &'a str,
    module: Option<&'a str>,
    output: Option<&'a str>,
    body: OnceLock<Option<Value>>,
}

impl MessageView for View<'_> {
    fn system_property(&self, name: &str) -> Option<Cow<'_, str>> {
        let value = match SystemProperty::from_query_name(name)? {
            SystemProperty::ConnectionDeviceId => Some(self.device),
            SystemProperty::ConnectionModuleId => self.module,
            SystemProperty::OutputName => self.output,
            other => self.m.message().system(other),
        };
        value.map(Cow::Borrowed)
    }
    fn application_property(&self, name: &str) -> Option<Cow<'_, str>> {
        self.m.message().property(name).map(Cow::Borrowed)
    }
    fn body(&self) -> Option<&Value> {
        self.body
            .get_or_init(|| {
                if self.m.message().is_json_utf8() {
                    serde_json::from_slice(self.m.body()).ok()
                } else {
                    None
                }
            })
            .as_ref()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Now as IoT Hub writes `iothub-enqueuedtime` (RFC 3339, milliseconds, `Z`). Formatted once
/// per millisecond per thread: the hub stamps every message it takes.
fn enqueued_time_now() -> CompactString {
    thread_local! {
        static LAST: std::cell::RefCell<(i64, CompactString)> = const { std::cell::RefCell::new((i64::MIN, CompactString::const_new(""))) };
    }
    let now = chrono::Utc::now();
    let ms = now.timestamp_millis();
    LAST.with_borrow_mut(|(at, text)| {
        if *at != ms {
            *at = ms;
            *text = now
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                .into();
        }
        text.clone()
    })
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Hub {
    /// A hub for the manifest's routes, with the module queues that `journal` held at start
    /// (`replayed`). Routes that do not parse are returned (and left out); the others work.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: HubConfig,
        manifest: &Manifest,
        twins: Twins,
        upstream: Upstream,
        (journal, replayed): (Journal, Replayed),
        module_keys: KeyStore,
        device_keys: KeyStore,
    ) -> (Hub, Vec<RouteError>) {
        let mut parsed = Vec::new();
        let mut errors = Vec::new();
        for r in &manifest.routes {
            match edge_routes::parse_route(&r.text) {
                Ok(route) => parsed.push(route),
                Err(e) => errors.push(RouteError {
                    name: r.name.clone(),
                    text: r.text.clone(),
                    error: e.to_string(),
                }),
            }
        }
        let throttle = DeviceThrottle::new(cfg.device_units_per_sec);
        let mut hub = Hub {
            cfg,
            routes: Vec::new(),
            endpoints: Mutex::new(FxHashMap::default()),
            journal,
            sessions: Mutex::new(HashMap::new()),
            twins,
            upstream,
            module_keys,
            device_keys,
            metrics: Metrics::default(),
            prometheus: Arc::new(HubMetrics::default()),
            throttle,
            next_conn: AtomicU64::new(1),
            method_calls: Mutex::new(HashMap::new()),
            next_rid: AtomicU64::new(1),
            stopping: tokio::sync::watch::channel(false).0,
        };
        for m in &manifest.modules {
            hub.endpoint(&m.name);
        }
        hub.routes = parsed
            .into_iter()
            .enumerate()
            .map(|(index, route)| {
                let (target, labels) = match &route.sink {
                    Sink::Upstream => (
                        Target::Upstream,
                        SinkLabels {
                            to: "upstream".into(),
                            to_route_input: String::new(),
                        },
                    ),
                    Sink::Module { module, input } => (
                        Target::Queue {
                            queue: hub.endpoint(module),
                            input: input.clone(),
                        },
                        SinkLabels {
                            to: module.clone(),
                            to_route_input: input.clone(),
                        },
                    ),
                };
                RouteEntry {
                    route,
                    target,
                    index,
                    labels,
                }
            })
            .collect();
        for (module, restored) in replayed {
            lock(&hub.endpoint(&module)).restore(restored);
        }
        (hub, errors)
    }

    /// The hub's settings.
    pub fn config(&self) -> &HubConfig {
        &self.cfg
    }

    /// Resolves (changes) when the runtime stops; connections close then.
    pub fn stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    /// Closes every client connection.
    pub fn stop(&self) {
        self.stopping.send_replace(true);
    }

    /// A new connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    fn endpoint(&self, module: &str) -> Arc<Mutex<Endpoint>> {
        let mut endpoints = lock(&self.endpoints);
        // Looked up by `&str` first: routing asks for an endpoint for every message.
        if let Some(e) = endpoints.get(module) {
            return e.clone();
        }
        endpoints
            .entry(module.to_owned())
            .or_insert_with(|| {
                let mut e = Endpoint::new(
                    &self.cfg.device_id,
                    module,
                    self.cfg.window,
                    self.cfg.ttl,
                    self.journal.clone(),
                );
                e.set_memory(self.cfg.queue_memory);
                e.set_metrics(EndpointMetrics {
                    hub: self.prometheus.clone(),
                    process: self.prometheus.process_duration(module),
                });
                Arc::new(Mutex::new(e))
            })
            .clone()
    }

    /// Checks a CONNECT: client id, user name and SAS token against the identity's key.
    /// Returns the identity and when its token expires (seconds since the epoch).
    pub fn authenticate(
        &self,
        client_id: &str,
        username: &str,
        password: &str,
    ) -> Result<(Identity, u64), ConnectReturnCode> {
        let refuse = |code, why: String| {
            self.metrics.auth_failures.fetch_add(1, Ordering::Relaxed);
            // Escaped: the reason may quote what the client sent (a newline would forge a line).
            warn!(client_id, reason = %why.escape_debug(), "connection refused");
            Err(code)
        };
        let identity = match client_id.split_once('/') {
            Some((d, m)) if !d.is_empty() && !m.is_empty() => Identity::Module {
                device: d.to_owned(),
                module: m.to_owned(),
            },
            None if !client_id.is_empty() => Identity::Device {
                device: client_id.to_owned(),
            },
            _ => return refuse(ConnectReturnCode::BadClientId, "malformed client id".into()),
        };
        let expected_user = format!("{}/{}/", self.cfg.hub_hostname, client_id);
        if !username
            .to_ascii_lowercase()
            .starts_with(&expected_user.to_ascii_lowercase())
        {
            return refuse(
                ConnectReturnCode::BadUserNamePassword,
                format!("user name must start with '{expected_user}'"),
            );
        }
        let (key, resource) = match &identity {
            Identity::Module { device, module } => {
                if *device != self.cfg.device_id {
                    return refuse(
                        ConnectReturnCode::NotAuthorized,
                        format!("device '{device}' is not this edge device"),
                    );
                }
                (
                    self.module_keys.key(module),
                    sas::resource_uri(&self.cfg.hub_hostname, device, Some(module)),
                )
            }
            Identity::Device { device } => (
                self.device_keys.key(device),
                sas::resource_uri(&self.cfg.hub_hostname, device, None),
            ),
        };
        let Some(key) = key else {
            return refuse(ConnectReturnCode::NotAuthorized, "unknown identity".into());
        };
        let token = match SasToken::parse(password) {
            Ok(t) => t,
            Err(e) => return refuse(ConnectReturnCode::BadUserNamePassword, e.to_string()),
        };
        if let Err(e) = token.verify(&resource, &key, now_secs()) {
            return refuse(ConnectReturnCode::NotAuthorized, e.to_string());
        }
        self.metrics.connections.fetch_add(1, Ordering::Relaxed);
        Ok((identity, token.expiry))
    }

    /// May `identity` subscribe to `filter`?
    pub fn may_subscribe(&self, identity: &Identity, filter: &str) -> bool {
        let twin = filter == topic::TWIN_RESPONSES_FILTER
            || filter == topic::TWIN_DESIRED_FILTER
            || filter == topic::METHODS_FILTER;
        twin || match identity {
            Identity::Module { device, module } => {
                filter == topic::module_inputs_filter(device, module)
            }
            Identity::Device { device } => {
                filter == format!("devices/{device}/messages/devicebound/#")
            }
        }
    }

    /// Whether a CONNECT of `identity` finds its session (kept for `clean_session = 0`).
    pub fn session_present(&self, identity: &Identity, clean: bool) -> bool {
        !clean && lock(&self.sessions).contains_key(&identity.client_id())
    }

    /// Registers a connection for `identity`; an earlier connection of the same client is
    /// closed (session takeover). Returns whether a session was present.
    pub fn connect(&self, identity: &Identity, clean: bool, conn: Conn) -> bool {
        let client_id = identity.client_id();
        let (present, restore) = {
            let mut sessions = lock(&self.sessions);
            let present = sessions.contains_key(&client_id) && !clean;
            let s = sessions.entry(client_id).or_default();
            if let Some(old) = s.conn.take() {
                old.close.notify_one();
            }
            if clean {
                s.subscriptions.clear();
            }
            s.conn = Some(conn.clone());
            (present, s.subscriptions.clone())
        };
        for (filter, qos) in restore {
            self.on_subscribed(identity, &conn, &filter, qos);
        }
        present
    }

    /// Records a granted subscription.
    pub fn subscribe(&self, identity: &Identity, conn: &Conn, filter: &str, qos: QoS) {
        {
            let mut sessions = lock(&self.sessions);
            let s = sessions.entry(identity.client_id()).or_default();
            s.subscriptions.retain(|(f, _)| f != filter);
            s.subscriptions.push((filter.to_owned(), qos));
        }
        self.on_subscribed(identity, conn, filter, qos);
    }

    fn on_subscribed(&self, identity: &Identity, conn: &Conn, filter: &str, qos: QoS) {
        if let Identity::Module { device, module } = identity {
            if filter == topic::module_inputs_filter(device, module) {
                lock(&self.endpoint(module)).attach(conn.clone(), qos);
            }
        }
    }

    /// Removes a subscription.
    pub fn unsubscribe(&self, identity: &Identity, conn: &Conn, filter: &str) {
        if let Some(s) = lock(&self.sessions).get_mut(&identity.client_id()) {
            s.subscriptions.retain(|(f, _)| f != filter);
        }
        if let Identity::Module { device, module } = identity {
            if filter == topic::module_inputs_filter(device, module) {
                lock(&self.endpoint(module)).detach(conn.id);
            }
        }
    }

    /// Connection `conn_id` of `identity` has ended.
    pub fn disconnect(&self, identity: &Identity, conn_id: u64, clean: bool) {
        {
            let mut sessions = lock(&self.sessions);
            let client_id = identity.client_id();
            if let Some(s) = sessions.get_mut(&client_id) {
                if s.conn.as_ref().is_some_and(|c| c.id == conn_id) {
                    s.conn = None;
                    if clean {
                        sessions.remove(&client_id);
                    }
                }
            }
        }
        if let Identity::Module { module, .. } = identity {
            lock(&self.endpoint(module)).detach(conn_id);
        }
    }

    /// A module acknowledged delivered messages (`pkids`, on connection `conn_id`).
    pub fn delivered(&self, identity: &Identity, conn_id: u64, pkids: &[u16]) {
        if let Identity::Module { module, .. } = identity {
            lock(&self.endpoint(module)).acked(conn_id, pkids);
        }
    }

    /// Routes a message that `identity` sent with property bag `bag` (stamping the
    /// connection ids and enqueued time). Module queues take it at once (and may deliver it
    /// at once); the returned receivers resolve when every sink has it on disk (module
    /// journal, `$upstream` store), which is when the sender may be acknowledged.
    pub fn ingest(&self, identity: &Identity, bag: &str, body: Bytes) -> Stored {
        self.metrics.received.fetch_add(1, Ordering::Relaxed);
        thread_local! {
            /// The route source of the message being ingested (reused: one per message).
            static SOURCE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        let (device, module) = match identity {
            Identity::Module { device, module } => (device.as_str(), Some(module.as_str())),
            Identity::Device { device } => (device.as_str(), None),
        };
        let enqueued_time = enqueued_time_now();
        let stamps = properties::Stamps {
            connection_device_id: device,
            connection_module_id: module,
            enqueued_time: &enqueued_time,
        };
        let Restamped { bag, output_name } = properties::restamp(bag, &stamps);
        let m = HubMessage::new(bag, body);
        SOURCE.with_borrow_mut(|source| {
            source.clear();
            match module {
                Some(module) => {
                    source.push_str("/messages/modules/");
                    source.push_str(module);
                    if let Some(o) = &output_name {
                        source.push_str("/outputs/");
                        source.push_str(o);
                    }
                }
                None => source.push_str("/messages/events"),
            }
            let sinks = self.sinks(
                source,
                &View {
                    m: &m,
                    device,
                    module,
                    output: output_name.as_deref(),
                    body: OnceLock::new(),
                },
            );
            self.prometheus.message(
                source,
                module.unwrap_or(device),
                output_name.as_deref().unwrap_or(""),
                m.body().len(),
                sinks.iter().map(|r| (r.index, &r.labels)),
            );
            self.store(sinks, m)
        })
    }

    /// The sinks of the routes that `view`, from `source`, matches (each sink once).
    fn sinks(&self, source: &str, view: &View<'_>) -> SmallVec<[&RouteEntry; 2]> {
        let mut sinks = SmallVec::<[&RouteEntry; 2]>::new();
        for r in &self.routes {
            if !sinks.iter().any(|s| s.route.sink == r.route.sink) && r.route.matches(source, view)
            {
                sinks.push(r);
            }
        }
        if sinks.is_empty() {
            self.metrics.unrouted.fetch_add(1, Ordering::Relaxed);
            debug!(source, "message matches no route");
        }
        sinks
    }

    /// Hands `m` to `sinks`; the receivers resolve once each has it on disk. A message one
    /// of its module sinks could never be delivered to is refused: no sink takes it, and the
    /// receiver says why (so the sender is not acknowledged).
    fn store(&self, sinks: SmallVec<[&RouteEntry; 2]>, m: HubMessage) -> Stored {
        if sinks.is_empty() {
            return Stored::new();
        }
        for r in &sinks {
            if let Target::Queue { input, .. } = &r.target {
                let module = &r.labels.to;
                if let Err(why) = endpoint::check_delivery(&self.cfg.device_id, module, input, &m) {
                    let from = m.message();
                    let from = from
                        .connection_module_id
                        .as_deref()
                        .or(from.connection_device_id.as_deref())
                        .unwrap_or("");
                    self.prometheus.refused("undeliverable", from);
                    warn!(client = %from.escape_debug(), "message refused, not acknowledged: {why}");
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    let _ = tx.send(Err(format!("message refused: {why}")));
                    return Stored::from_iter([rx]);
                }
            }
        }
        let m = Arc::new(m);
        let mut stored = Stored::with_capacity(sinks.len());
        for r in sinks {
            match &r.target {
                Target::Upstream => {
                    self.metrics.to_upstream.fetch_add(1, Ordering::Relaxed);
                    stored.push(self.upstream.append(m.clone()));
                }
                Target::Queue { queue, input } => {
                    self.metrics.to_modules.fetch_add(1, Ordering::Relaxed);
                    stored.push(lock(queue).enqueue(input, m.clone()));
                }
            }
        }
        stored
    }

    /// Applies a desired-properties patch to a module's twin and pushes it to the module if
    /// it listens for patches. Returns the new desired version, or why the twin could not be
    /// saved (then nothing changed).
    pub fn patch_desired(
        &self,
        module: &str,
        patch: &serde_json::Map<String, Value>,
    ) -> Result<u64, crate::edgehub::twin::TwinError> {
        let identity = Identity::Module {
            device: self.cfg.device_id.clone(),
            module: module.to_owned(),
        };
        let client_id = identity.client_id();
        let (version, body) = self.twins.patch_desired(&client_id, patch)?;
        let sessions = lock(&self.sessions);
        if let Some(s) = sessions.get(&client_id) {
            let listening = s
                .subscriptions
                .iter()
                .any(|(f, _)| f == topic::TWIN_DESIRED_FILTER);
            if let (true, Some(conn)) = (listening, &s.conn) {
                let p = Publish::new(
                    topic::twin_desired_patch(version),
                    QoS::AtMostOnce,
                    body.to_string(),
                );
                conn.send_reply(Packet::Publish(p));
            }
        }
        info!(module, version, "desired properties patched");
        Ok(version)
    }

    /// Calls direct method `method` of `module` with `payload` and waits up to `timeout` for
    /// its answer: `(status, answer)` as the module gave them, as IoT Hub's "invoke module
    /// method" does.
    pub async fn invoke_method(
        &self,
        module: &str,
        method: &str,
        payload: &Value,
        timeout: std::time::Duration,
    ) -> Result<(u16, Value), MethodError> {
        let identity = Identity::Module {
            device: self.cfg.device_id.clone(),
            module: module.to_owned(),
        };
        let client_id = identity.client_id();
        let rid = self.next_rid.fetch_add(1, Ordering::Relaxed).to_string();
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let sessions = lock(&self.sessions);
            let conn = sessions.get(&client_id).and_then(|s| {
                let listening = s
                    .subscriptions
                    .iter()
                    .any(|(f, _)| f == topic::METHODS_FILTER);
                s.conn.as_ref().filter(|_| listening)
            });
            let Some(conn) = conn else {
                return Err(MethodError::NotListening(module.to_owned()));
            };
            lock(&self.method_calls).insert(rid.clone(), (client_id.clone(), tx));
            let p = Publish::new(
                topic::method_request(method, &rid),
                QoS::AtMostOnce,
                payload.to_string(),
            );
            conn.send_reply(Packet::Publish(p));
        }
        let answer = tokio::time::timeout(timeout, rx).await;
        lock(&self.method_calls).remove(&rid);
        match answer {
            Ok(Ok((status, body))) => {
                let value = match body.as_ref() {
                    b"" => Value::Null,
                    b => serde_json::from_slice(b)
                        .unwrap_or_else(|_| Value::from(String::from_utf8_lossy(b).into_owned())),
                };
                Ok((status, value))
            }
            Ok(Err(_)) => Err(MethodError::Gone(module.to_owned())),
            Err(_) => Err(MethodError::Timeout(module.to_owned(), timeout)),
        }
    }

    /// The answer `identity` gave to method call `rid`; ignored unless the call went to it.
    pub fn method_answered(&self, identity: &Identity, rid: &str, status: u16, body: Bytes) {
        let mut calls = lock(&self.method_calls);
        if calls
            .get(rid)
            .is_some_and(|(client, _)| *client == identity.client_id())
        {
            if let Some((_, tx)) = calls.remove(rid) {
                let _ = tx.send((status, body));
            }
        } else {
            debug!(rid, client = %identity.client_id(), "method answer for no call of this client; ignored");
        }
    }

    /// Resolves once the message store has written and synced everything sent to it.
    pub fn flush(&self) -> Appended {
        self.journal.flush()
    }

    /// Resolves when a module queue asked to look at the message store again (it waits for
    /// messages not yet written); then call [`Hub::tick`].
    pub async fn store_written(&self) {
        self.journal.written().await;
    }

    /// Runs every module queue's timer (expiry, messages read back from disk).
    pub fn tick(&self) {
        let endpoints: Vec<_> = lock(&self.endpoints).values().cloned().collect();
        for e in endpoints {
            lock(&e).tick();
        }
    }

    /// Sets the queue-length gauges (before a scrape).
    pub fn refresh_metrics(&self) {
        for (module, s) in self.endpoint_stats() {
            self.prometheus.queue(&module, s.queued + s.in_flight);
        }
    }

    /// Counters per module queue.
    pub fn endpoint_stats(&self) -> HashMap<String, EndpointStats> {
        let endpoints: Vec<_> = lock(&self.endpoints)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        endpoints
            .into_iter()
            .map(|(k, e)| (k, lock(&e).stats()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enqueued_time_is_now_in_iot_hub_format() {
        for _ in 0..3 {
            let before = chrono::Utc::now().timestamp_millis();
            let t = enqueued_time_now();
            let after = chrono::Utc::now().timestamp_millis();
            // e.g. 2026-11-21T11:58:03.123Z
            assert_eq!(t.len(), 24, "{t}");
            assert!(t.ends_with('Z'), "{t}");
            let ms = chrono::DateTime::parse_from_rfc3339(&t)
                .unwrap()
                .timestamp_millis();
            assert!((before..=after).contains(&ms), "{before} {ms} {after}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}
