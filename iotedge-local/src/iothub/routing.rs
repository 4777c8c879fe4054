//! IoT Hub's message routing: which endpoints each message that reaches the hub goes to.
//!
//! The configuration has the shape of an IoT hub's `properties.routing` (what
//! `az iot hub show --query properties.routing` prints), plus the hub's name and partition
//! count used in blob names:
//!
//! ```json
//! { "name": "turbofan-hub", "partitionCount": 4,
//!   "routing": {
//!     "endpoints": { "storageContainers": [
//!       { "name": "ruldata", "containerName": "ruldata", "encoding": "avro",
//!         "batchFrequencyInSeconds": 60 } ] },
//!     "routes": [
//!       { "name": "RulMessageRoute", "source": "DeviceMessages", "endpointNames": ["ruldata"],
//!         "condition": "IS_DEFINED($body.PredictedRul) AND NOT IS_DEFINED($body.OperationalSetting1)",
//!         "isEnabled": true } ],
//!     "fallbackRoute": { "name": "$fallback", "source": "DeviceMessages", "condition": "true",
//!                        "endpointNames": ["events"], "isEnabled": true } } }
//! ```
//!
//! As IoT Hub does: a message goes to the union of the endpoints of every enabled route it
//! matches, each endpoint once; only a message that matches no route goes to the fallback
//! route's endpoint (the built-in `events`); with the fallback disabled it is dropped, and
//! counted. A hub with no configuration has only the fallback route.

use edge_protocol::{Message, SystemProperty};
use edge_routes::{evaluate, Expr, MessageView};
use hub_records::routed::Encoding;
pub use runtime_state::control::HubRoutingCounts;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::borrow::Cow;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The built-in endpoint (what `az iot hub monitor-events` reads).
pub const EVENTS: &str = "events";
/// Endpoint names IoT Hub reserves for itself.
const RESERVED: [&str; 3] = [EVENTS, "fileNotifications", "$default"];
/// The one route source this hub has messages of.
const DEVICE_MESSAGES: &str = "DeviceMessages";
/// IoT Hub's default blob name format.
pub const DEFAULT_FILE_NAME_FORMAT: &str = "{iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm}";

/// Why a hub configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the hub configuration {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a hub configuration.
    #[error("the hub configuration {path} does not read: {source}")]
    Json {
        /// The file.
        path: String,
        /// Why.
        source: serde_json::Error,
    },
    /// A route's condition does not parse.
    #[error("route '{route}': its condition does not parse at {error}")]
    Condition {
        /// The route.
        route: String,
        /// Where and why.
        error: edge_routes::ParseError,
    },
    /// Anything else that is wrong, said plainly.
    #[error("hub configuration: {0}")]
    Invalid(String),
}

/// A hub's routing configuration, as written (see the module documentation).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HubConfig {
    /// The hub's name: `{iothub}` in blob names.
    #[serde(default = "default_hub_name")]
    pub name: String,
    /// Device-to-cloud partitions: `{partition}` in blob names (a device's messages always
    /// land in the same one).
    #[serde(default = "default_partitions")]
    pub partition_count: u32,
    /// Routes, endpoints and the fallback route.
    #[serde(default)]
    pub routing: RoutingConfig,
}

fn default_hub_name() -> String {
    "iotedge-local".into()
}

fn default_partitions() -> u32 {
    4
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            name: default_hub_name(),
            partition_count: default_partitions(),
            routing: RoutingConfig::default(),
        }
    }
}

/// `properties.routing` of an IoT hub.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoutingConfig {
    /// Custom endpoints.
    #[serde(default)]
    pub endpoints: EndpointsConfig,
    /// Custom routes.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// The fallback route (IoT Hub's default when absent: enabled, to `events`).
    #[serde(default)]
    pub fallback_route: Option<RouteConfig>,
    /// Message enrichments (not available here: refused rather than ignored).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub enrichments: Vec<Value>,
}

/// Custom endpoints by kind. Only storage containers exist here; other kinds are refused.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointsConfig {
    /// Blob storage containers.
    #[serde(default)]
    pub storage_containers: Vec<StorageEndpoint>,
    /// Event Hubs (not available here).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub event_hubs: Vec<Value>,
    /// Service Bus queues (not available here).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_bus_queues: Vec<Value>,
    /// Service Bus topics (not available here).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_bus_topics: Vec<Value>,
    /// Cosmos DB containers (not available here).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cosmos_db_sql_containers: Vec<Value>,
}

/// A storage container endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StorageEndpoint {
    /// The endpoint's name, as routes name it.
    pub name: String,
    /// The blob container it writes to (created when missing).
    pub container_name: String,
    /// `avro` (default), `avroDeflate` or `json`.
    #[serde(default)]
    pub encoding: Encoding,
    /// Blob names; must hold `{iothub}`, `{partition}`, `{YYYY}`, `{MM}`, `{DD}`, `{HH}`,
    /// `{mm}`, in any order.
    #[serde(default = "default_file_name_format")]
    pub file_name_format: String,
    /// A blob is written at least this often while messages arrive. IoT Hub allows 60–720
    /// (default 300); shorter is allowed here, for demos and tests, with a warning.
    #[serde(default = "default_batch_secs")]
    pub batch_frequency_in_seconds: u64,
    /// A blob is written as soon as its messages reach this size (IoT Hub: 10–500 MB,
    /// default 300 MB).
    #[serde(default = "default_chunk")]
    pub max_chunk_size_in_bytes: u64,
}

fn default_file_name_format() -> String {
    DEFAULT_FILE_NAME_FORMAT.into()
}

fn default_batch_secs() -> u64 {
    300
}

fn default_chunk() -> u64 {
    314_572_800
}

/// A route.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteConfig {
    /// Its name.
    pub name: String,
    /// What it routes; only `DeviceMessages` exist here (other sources never match).
    #[serde(default = "default_source")]
    pub source: String,
    /// The query (IoT Hub's routing query language); `true` when absent.
    #[serde(default = "default_condition")]
    pub condition: String,
    /// Where matching messages go (one endpoint, as IoT Hub allows).
    pub endpoint_names: Vec<String>,
    /// Whether it applies.
    #[serde(default = "default_enabled")]
    pub is_enabled: bool,
}

fn default_source() -> String {
    DEVICE_MESSAGES.into()
}

fn default_condition() -> String {
    "true".into()
}

fn default_enabled() -> bool {
    true
}

impl HubConfig {
    /// Reads a configuration file.
    pub fn read(path: &Path) -> Result<HubConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| ConfigError::Json {
            path: path.display().to_string(),
            source,
        })
    }

    /// The fallback route as it applies (IoT Hub's default when none is written).
    pub fn fallback(&self) -> RouteConfig {
        self.routing
            .fallback_route
            .clone()
            .unwrap_or_else(|| RouteConfig {
                name: "$fallback".into(),
                source: default_source(),
                condition: default_condition(),
                endpoint_names: vec![EVENTS.into()],
                is_enabled: true,
            })
    }
}

/// A set of endpoints, by their index in [`HubRouting::endpoint_names`].
pub type EndpointSet = u64;

struct CompiledRoute {
    name: String,
    enabled: bool,
    condition: Option<Expr>,
    endpoints: EndpointSet,
    matched: AtomicU64,
}

impl CompiledRoute {
    fn compile(r: &RouteConfig, names: &[String]) -> Result<CompiledRoute, ConfigError> {
        let condition = match r.condition.trim() {
            "" | "true" | "TRUE" | "True" => None,
            text => Some(edge_routes::parse_condition(text).map_err(|error| {
                ConfigError::Condition {
                    route: r.name.clone(),
                    error,
                }
            })?),
        };
        if r.endpoint_names.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "route '{}' names no endpoint",
                r.name
            )));
        }
        let mut endpoints = 0;
        for e in &r.endpoint_names {
            let Some(i) = names.iter().position(|n| n == e) else {
                return Err(ConfigError::Invalid(format!(
                    "route '{}' names endpoint '{e}', which is not defined (endpoints: {})",
                    r.name,
                    names.join(", ")
                )));
            };
            endpoints |= 1 << i;
        }
        if !r.source.eq_ignore_ascii_case(DEVICE_MESSAGES) {
            tracing::warn!(route = %r.name, source = %r.source, "route source has no messages on this hub (only DeviceMessages); it never matches");
        }
        Ok(CompiledRoute {
            name: r.name.clone(),
            enabled: r.is_enabled && r.source.eq_ignore_ascii_case(DEVICE_MESSAGES),
            condition,
            endpoints,
            matched: AtomicU64::new(0),
        })
    }

    fn matches(&self, view: &dyn MessageView) -> bool {
        self.enabled
            && self
                .condition
                .as_ref()
                .is_none_or(|c| evaluate(c, view).is_true())
    }
}

/// Where one message goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routed {
    /// The routes it matched (the fallback route's name when only it took the message).
    pub routes: Vec<usize>,
    /// The endpoints it reaches.
    pub endpoints: EndpointSet,
    /// Whether the fallback route took it.
    pub fallback: bool,
}

/// A configuration checked and compiled: routes with parsed conditions, endpoints by index.
pub struct HubRouting {
    config: HubConfig,
    endpoint_names: Vec<String>,
    routes: Vec<CompiledRoute>,
    fallback: CompiledRoute,
    delivered: Vec<AtomicU64>,
    dropped: AtomicU64,
}

impl std::fmt::Debug for HubRouting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubRouting")
            .field("endpoints", &self.endpoint_names)
            .field("routes", &self.routes.len())
            .finish()
    }
}

impl HubRouting {
    /// Checks and compiles `config`: names unique and not reserved, every route's endpoint
    /// defined, every condition parsed (an error names the route and the position).
    pub fn new(config: HubConfig) -> Result<HubRouting, ConfigError> {
        let invalid = |s: String| Err(ConfigError::Invalid(s));
        if config.name.is_empty()
            || !config
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return invalid(format!(
                "the hub name '{}' must be letters, digits and '-'",
                config.name
            ));
        }
        if !(1..=128).contains(&config.partition_count) {
            return invalid("partitionCount must be between 1 and 128".into());
        }
        let e = &config.routing.endpoints;
        for (kind, list) in [
            ("eventHubs", &e.event_hubs),
            ("serviceBusQueues", &e.service_bus_queues),
            ("serviceBusTopics", &e.service_bus_topics),
            ("cosmosDBSqlContainers", &e.cosmos_db_sql_containers),
        ] {
            if !list.is_empty() {
                return invalid(format!(
                    "{kind} endpoints are not available on the local hub (storage containers are)"
                ));
            }
        }
        if !config.routing.enrichments.is_empty() {
            return invalid(
                "message enrichments are not available on the local hub; remove them to run here"
                    .into(),
            );
        }
        let mut endpoint_names = vec![EVENTS.to_owned()];
        for s in &e.storage_containers {
            if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(&s.name)) {
                return invalid(format!("endpoint name '{}' is reserved", s.name));
            }
            if s.name.is_empty()
                || s.name.len() > 64
                || !s
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                return invalid(format!(
                    "endpoint name '{}' must be 1–64 letters, digits, '.', '_' or '-'",
                    s.name
                ));
            }
            if endpoint_names.contains(&s.name) {
                return invalid(format!("endpoint '{}' is defined twice", s.name));
            }
            check_container(&s.container_name)?;
            check_file_name_format(&s.name, &s.file_name_format)?;
            if s.batch_frequency_in_seconds == 0 {
                return invalid(format!(
                    "endpoint '{}': batchFrequencyInSeconds must be at least 1",
                    s.name
                ));
            }
            if !(60..=720).contains(&s.batch_frequency_in_seconds) {
                tracing::warn!(endpoint = %s.name, secs = s.batch_frequency_in_seconds, "batchFrequencyInSeconds is outside IoT Hub's 60–720: allowed here, refused by IoT Hub");
            }
            endpoint_names.push(s.name.clone());
        }
        if endpoint_names.len() > 64 {
            return invalid("at most 63 custom endpoints".into());
        }
        let mut routes = Vec::new();
        for r in &config.routing.routes {
            if routes.iter().any(|c: &CompiledRoute| c.name == r.name) {
                return invalid(format!("route '{}' is defined twice", r.name));
            }
            routes.push(CompiledRoute::compile(r, &endpoint_names)?);
        }
        let fallback = CompiledRoute::compile(&config.fallback(), &endpoint_names)?;
        if fallback.endpoints != 1 {
            return invalid("the fallback route can only lead to 'events'".into());
        }
        let delivered = endpoint_names.iter().map(|_| AtomicU64::new(0)).collect();
        Ok(HubRouting {
            config,
            endpoint_names,
            routes,
            fallback,
            delivered,
            dropped: AtomicU64::new(0),
        })
    }

    /// IoT Hub's default: no custom route, the fallback route to `events`.
    pub fn builtin() -> HubRouting {
        match HubRouting::new(HubConfig::default()) {
            Ok(r) => r,
            Err(e) => unreachable!("the default hub configuration is valid: {e}"),
        }
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// Endpoint names, `events` first.
    pub fn endpoint_names(&self) -> &[String] {
        &self.endpoint_names
    }

    /// Route names, in configuration order.
    pub fn route_names(&self) -> impl Iterator<Item = &str> {
        self.routes.iter().map(|r| r.name.as_str())
    }

    /// The fallback route's name.
    pub fn fallback_name(&self) -> &str {
        &self.fallback.name
    }

    /// Routes `view` without counting it (the route tester).
    pub fn evaluate(&self, view: &dyn MessageView) -> Routed {
        let mut out = Routed::default();
        for (i, r) in self.routes.iter().enumerate() {
            if r.matches(view) {
                out.routes.push(i);
                out.endpoints |= r.endpoints;
            }
        }
        if out.routes.is_empty() && self.fallback.matches(view) {
            out.fallback = true;
            out.endpoints = self.fallback.endpoints;
        }
        out
    }

    /// Routes `view` and counts where it went.
    pub fn route(&self, view: &dyn MessageView) -> Routed {
        let routed = self.evaluate(view);
        for &i in &routed.routes {
            self.routes[i].matched.fetch_add(1, Ordering::Relaxed);
        }
        if routed.fallback {
            self.fallback.matched.fetch_add(1, Ordering::Relaxed);
        }
        if routed.endpoints == 0 {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        for (i, d) in self.delivered.iter().enumerate() {
            if routed.endpoints & (1 << i) != 0 {
                d.fetch_add(1, Ordering::Relaxed);
            }
        }
        routed
    }

    /// The names of `set`'s endpoints.
    pub fn names(&self, set: EndpointSet) -> impl Iterator<Item = &str> {
        self.endpoint_names
            .iter()
            .enumerate()
            .filter(move |(i, _)| set & (1 << i) != 0)
            .map(|(_, n)| n.as_str())
    }

    /// The names of the routes that took a message.
    pub fn route_names_of<'a>(&'a self, routed: &'a Routed) -> impl Iterator<Item = &'a str> {
        routed
            .routes
            .iter()
            .map(|&i| self.routes[i].name.as_str())
            .chain(routed.fallback.then_some(self.fallback.name.as_str()))
    }

    /// Counters so far: messages each route took, each endpoint got, and those dropped.
    pub fn counts(&self) -> HubRoutingCounts {
        HubRoutingCounts {
            routes: self
                .routes
                .iter()
                .chain(std::iter::once(&self.fallback))
                .map(|r| (r.name.clone(), r.matched.load(Ordering::Relaxed)))
                .collect(),
            endpoints: self
                .endpoint_names
                .iter()
                .zip(&self.delivered)
                .map(|(n, d)| (n.clone(), d.load(Ordering::Relaxed)))
                .collect(),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }

    /// The storage endpoints.
    pub fn storage_endpoints(&self) -> &[StorageEndpoint] {
        &self.config.routing.endpoints.storage_containers
    }
}

/// Azure's container name rule: 3–63 lowercase letters, digits and single hyphens.
fn check_container(name: &str) -> Result<(), ConfigError> {
    let ok = (3..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid(format!(
            "container name '{name}' must be 3–63 lowercase letters, digits and single hyphens"
        )))
    }
}

const FORMAT_FIELDS: [&str; 7] = [
    "{iothub}",
    "{partition}",
    "{YYYY}",
    "{MM}",
    "{DD}",
    "{HH}",
    "{mm}",
];

fn check_file_name_format(endpoint: &str, format: &str) -> Result<(), ConfigError> {
    for f in FORMAT_FIELDS {
        if !format.contains(f) {
            return Err(ConfigError::Invalid(format!(
                "endpoint '{endpoint}': fileNameFormat '{format}' lacks {f} (all of {} are required)",
                FORMAT_FIELDS.join(" ")
            )));
        }
    }
    if format.contains("..") || format.starts_with('/') {
        return Err(ConfigError::Invalid(format!(
            "endpoint '{endpoint}': fileNameFormat '{format}' must be a relative name"
        )));
    }
    Ok(())
}

/// The blob name `format` gives for a batch of `partition` started at `at`.
pub fn blob_name(
    format: &str,
    hub: &str,
    partition: u32,
    at: chrono::DateTime<chrono::Utc>,
) -> String {
    format
        .replace("{iothub}", hub)
        .replace("{partition}", &partition.to_string())
        .replace("{YYYY}", &at.format("%Y").to_string())
        .replace("{MM}", &at.format("%m").to_string())
        .replace("{DD}", &at.format("%d").to_string())
        .replace("{HH}", &at.format("%H").to_string())
        .replace("{mm}", &at.format("%M").to_string())
}

/// The partition a device's messages land in (stable across runs: FNV-1a of its id).
pub fn partition_of(device: &str, partitions: u32) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in device.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % partitions.max(1)
}

/// A message as hub routes see it: its system and application properties and, when it is
/// UTF-8 JSON, its body (parsed once, when a condition first asks).
pub struct MessageRef<'a> {
    message: &'a Message,
    body: OnceLock<Option<Value>>,
}

impl<'a> MessageRef<'a> {
    /// Views `message`.
    pub fn new(message: &'a Message) -> Self {
        MessageRef {
            message,
            body: OnceLock::new(),
        }
    }
}

impl MessageView for MessageRef<'_> {
    fn system_property(&self, name: &str) -> Option<Cow<'_, str>> {
        let p = SystemProperty::from_query_name(name)?;
        self.message.system(p).map(Cow::Borrowed)
    }

    fn application_property(&self, name: &str) -> Option<Cow<'_, str>> {
        self.message.property(name).map(Cow::Borrowed)
    }

    fn body(&self) -> Option<&Value> {
        self.body
            .get_or_init(|| {
                if self.message.is_json_utf8() {
                    serde_json::from_slice(&self.message.body).ok()
                } else {
                    None
                }
            })
            .as_ref()
    }
}

/// A stored record as hub routes see it (the route tester's view of the store).
pub struct RecordRef<'a>(pub &'a hub_records::Record);

impl MessageView for RecordRef<'_> {
    fn system_property(&self, name: &str) -> Option<Cow<'_, str>> {
        let s = &self.0.properties.system;
        let v = match SystemProperty::from_query_name(name)? {
            SystemProperty::MessageId => &s.message_id,
            SystemProperty::CorrelationId => &s.correlation_id,
            SystemProperty::ContentType => &s.content_type,
            SystemProperty::ContentEncoding => &s.content_encoding,
            SystemProperty::UserId => &s.user_id,
            SystemProperty::ConnectionDeviceId => &s.connection_device_id,
            SystemProperty::ConnectionModuleId => &s.connection_module_id,
            SystemProperty::OutputName => &s.output_name,
            SystemProperty::EnqueuedTime => &self.0.enqueued_time_utc,
            _ => return None,
        };
        v.as_deref().map(Cow::Borrowed)
    }

    fn application_property(&self, name: &str) -> Option<Cow<'_, str>> {
        self.0
            .properties
            .application
            .get(name)
            .map(|v| Cow::Borrowed(v.as_str()))
    }

    fn body(&self) -> Option<&Value> {
        (self.0.payload_encoding == "json").then_some(&self.0.payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tutorial's routes: RUL messages to storage endpoint `ruldata`, telemetry rows to
    /// `turbofanDeviceStorage` (its `turbofanDeviceDataToStorage` route).
    pub(crate) fn tutorial() -> HubConfig {
        serde_json::from_value(serde_json::json!({
            "name": "turbofan-hub",
            "routing": {
                "endpoints": {"storageContainers": [
                    {"name": "ruldata", "containerName": "ruldata", "batchFrequencyInSeconds": 60},
                    {"name": "turbofanDeviceStorage", "containerName": "devicedata"}
                ]},
                "routes": [
                    {"name": "RulMessageRoute", "source": "DeviceMessages", "endpointNames": ["ruldata"],
                     "condition": "IS_DEFINED($body.PredictedRul) AND NOT IS_DEFINED($body.OperationalSetting1)"},
                    {"name": "turbofanDeviceDataToStorage", "source": "DeviceMessages",
                     "endpointNames": ["turbofanDeviceStorage"],
                     "condition": "IS_DEFINED($body.OperationalSetting1)"}
                ]
            }
        }))
        .unwrap()
    }

    /// The tutorial's RUL message, as its router sends it to `hubOutput`.
    const RUL_MESSAGE: &str = r#"{"ConnectionDeviceId":"Client_001","CorrelationId":"3d0bc256-b996-455c-8930-99d89d351987","CycleTime":1.0,"PredictedRul":132.62721409309165}"#;
    /// The tutorial's telemetry row.
    const TELEMETRY: &str = r#"{"Sensor13":2387.96,"OperationalSetting1":-0.0008,"Sensor6":21.61,"Sensor11":47.2,"Sensor10":1.3,"Sensor7":554.36,"Sensor3":1583.23,"OperationalSetting3":100.0,"Sensor18":2388.0,"Sensor1":518.67,"Sensor20":39.03,"Sensor21":23.4177,"Sensor12":521.72,"Sensor14":8138.62,"Sensor16":0.03,"Sensor2":641.82,"Sensor5":14.62,"OperationalSetting2":0.0001,"Sensor17":392.0,"Sensor8":2388.02,"Sensor9":9046.19,"Sensor19":100.0,"Sensor15":8.4195,"Sensor4":1400.6,"CycleTime":1}"#;

    fn names(r: &HubRouting, routed: &Routed) -> (Vec<String>, Vec<String>) {
        (
            r.route_names_of(routed).map(str::to_owned).collect(),
            r.names(routed.endpoints).map(str::to_owned).collect(),
        )
    }

    #[test]
    fn the_tutorial_s_samples_take_the_tutorial_s_routes() {
        let r = HubRouting::new(tutorial()).unwrap();
        let rul = Message::json(RUL_MESSAGE);
        let routed = r.route(&MessageRef::new(&rul));
        assert_eq!(
            names(&r, &routed),
            (vec!["RulMessageRoute".into()], vec!["ruldata".into()])
        );
        let row = Message::json(TELEMETRY);
        let routed = r.route(&MessageRef::new(&row));
        assert_eq!(
            names(&r, &routed),
            (
                vec!["turbofanDeviceDataToStorage".into()],
                vec!["turbofanDeviceStorage".into()]
            )
        );
        // Neither: the fallback route takes it to the built-in endpoint.
        let other = Message::json(r#"{"status":"ok"}"#);
        let routed = r.route(&MessageRef::new(&other));
        assert_eq!(
            names(&r, &routed),
            (vec!["$fallback".into()], vec!["events".into()])
        );
        let c = r.counts();
        assert_eq!(c.routes["RulMessageRoute"], 1);
        assert_eq!(c.routes["$fallback"], 1);
        assert_eq!(c.dropped, 0);
    }

    #[test]
    fn body_queries_need_json_in_utf8_as_iot_hub_s_do() {
        let r = HubRouting::new(tutorial()).unwrap();
        let mut rul = Message::json(RUL_MESSAGE);
        rul.content_type = None;
        let routed = r.route(&MessageRef::new(&rul));
        assert!(
            routed.fallback,
            "without its content type the body is not queried"
        );
    }

    #[test]
    fn a_message_matching_a_custom_route_leaves_the_built_in_endpoint_unless_routed_there() {
        let mut config = tutorial();
        config.routing.routes.push(RouteConfig {
            name: "everything".into(),
            source: "DeviceMessages".into(),
            condition: "true".into(),
            endpoint_names: vec!["events".into()],
            is_enabled: true,
        });
        config.routing.routes.push(RouteConfig {
            name: "again".into(),
            source: "DeviceMessages".into(),
            condition: "$body.PredictedRul > 100".into(),
            endpoint_names: vec!["ruldata".into()],
            is_enabled: true,
        });
        let r = HubRouting::new(config).unwrap();
        let rul = Message::json(RUL_MESSAGE);
        let routed = r.route(&MessageRef::new(&rul));
        // Three routes match; each endpoint gets the message once.
        assert_eq!(routed.routes.len(), 3);
        assert_eq!(
            r.names(routed.endpoints).collect::<Vec<_>>(),
            ["events", "ruldata"]
        );
        assert!(!routed.fallback);
    }

    #[test]
    fn with_the_fallback_off_an_unmatched_message_is_dropped_and_counted() {
        let mut config = tutorial();
        config.routing.fallback_route = Some(RouteConfig {
            is_enabled: false,
            ..config.fallback()
        });
        let r = HubRouting::new(config).unwrap();
        let routed = r.route(&MessageRef::new(&Message::json("{}")));
        assert_eq!(routed.endpoints, 0);
        assert_eq!(r.counts().dropped, 1);
    }

    #[test]
    fn an_invalid_query_is_refused_with_the_route_s_name_and_the_position() {
        let mut config = tutorial();
        config.routing.routes[1].condition = "IS_DEFINED($body.OperationalSetting1) AND".into();
        let e = HubRouting::new(config).unwrap_err().to_string();
        assert!(e.contains("route 'turbofanDeviceDataToStorage'"), "{e}");
        assert!(e.contains("line 1, column 42"), "{e}");
    }

    #[test]
    fn configurations_iot_hub_would_refuse_are_refused_here_too() {
        type Change = fn(&mut HubConfig);
        let cases: [(Change, &str); 5] = [
            (
                |c| c.routing.routes[0].endpoint_names = vec!["nowhere".into()],
                "not defined",
            ),
            (
                |c| c.routing.endpoints.storage_containers[0].name = "events".into(),
                "reserved",
            ),
            (
                |c| c.routing.endpoints.storage_containers[0].container_name = "Rul_Data".into(),
                "container name",
            ),
            (
                |c| {
                    c.routing.endpoints.storage_containers[0].file_name_format =
                        "{iothub}/{YYYY}".into()
                },
                "lacks {partition}",
            ),
            (
                |c| c.routing.routes.push(c.routing.routes[0].clone()),
                "defined twice",
            ),
        ];
        for (change, says) in cases {
            let mut config = tutorial();
            change(&mut config);
            let e = HubRouting::new(config).unwrap_err().to_string();
            assert!(e.contains(says), "{e} should say {says}");
        }
    }

    #[test]
    fn blob_names_follow_the_format_and_a_device_keeps_its_partition() {
        let at = chrono::DateTime::parse_from_rfc3339("2026-12-07T09:05:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(
            blob_name(DEFAULT_FILE_NAME_FORMAT, "hub", 3, at),
            "hub/3/2026/12/07/09/05"
        );
        let p = partition_of("Client_001", 4);
        assert!(p < 4);
        assert_eq!(p, partition_of("Client_001", 4));
    }

    #[test]
    fn the_default_hub_sends_everything_to_events() {
        let r = HubRouting::builtin();
        let routed = r.route(&MessageRef::new(&Message::json(RUL_MESSAGE)));
        assert!(routed.fallback);
        assert_eq!(r.names(routed.endpoints).collect::<Vec<_>>(), ["events"]);
    }
}
