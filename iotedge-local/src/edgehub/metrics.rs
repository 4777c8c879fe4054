//! edgeHub's Prometheus metrics, under the names and labels IoT Edge's own edgeHub uses
//! (its "built-in metrics"), so that dashboards and Azure Monitor's metrics-collector module
//! read them alike:
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `edgehub_messages_received_total` | `id`, `route_output` | messages received from clients |
//! | `edgehub_messages_sent_total` | `from`, `to`, `from_route_output`, `to_route_input`, `priority` | messages routed to a module input or `$upstream` (when edgeHub took them for the sink) |
//! | `edgehub_messages_dropped_total` | `reason` (`no_route`, `ttl_expiry`, `too_large`: its delivery would be over MQTT's limit), `from`, `from_route_output` | messages dropped |
//! | `edgehub_message_size_bytes` | `id` | size of the messages from clients |
//! | `edgehub_message_process_duration_seconds` | `from`, `to`, `priority` | time from edgeHub taking a message to the module acknowledging it (time in queue and delivery) |
//! | `edgehub_queue_length` | `endpoint`, `priority` | messages waiting or in flight for a module |
//!
//! Every series also carries `iothub`, `edge_device` and `instance_number`, as IoT Edge's do.
//! Where IoT Edge's edgeHub has a summary (sizes, durations), this one has a histogram: the
//! `_sum` and `_count` series are the same, the quantiles come from the buckets.

use edge_process::observe::Exporter;
use edge_process::prometheus_client::metrics::counter::Counter;
use edge_process::prometheus_client::metrics::family::Family;
use edge_process::prometheus_client::metrics::gauge::Gauge;
use edge_process::prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use rustc_hash::FxHashMap;
use std::sync::Mutex;

type Labels = Vec<(&'static str, String)>;

/// The priority label of every series: routes here have the default priority, as IoT
/// Edge's default (`2000000000`) is written.
const PRIORITY: &str = "2000000000";

/// Where a route sends messages, as labels.
#[derive(Debug, Clone)]
pub struct SinkLabels {
    /// The module, or `upstream`.
    pub to: String,
    /// The module input; empty for `$upstream`.
    pub to_route_input: String,
}

/// The counters of one message source (a module output, or a leaf device's events), looked
/// up once per source: counting a message then costs a map lookup and atomic adds.
struct Source {
    received: Counter,
    size: Histogram,
    no_route: Counter,
    /// Per route (by the route's index), the counter of messages sent through it.
    sent: Vec<Option<Counter>>,
    from: String,
    output: String,
}

/// edgeHub's metrics.
pub struct HubMetrics {
    received: Family<Labels, Counter>,
    sent: Family<Labels, Counter>,
    dropped: Family<Labels, Counter>,
    refused: Family<Labels, Counter>,
    throttled: Family<Labels, Counter>,
    size: Family<Labels, Histogram, fn() -> Histogram>,
    process: Family<Labels, Histogram, fn() -> Histogram>,
    queue_length: Family<Labels, Gauge>,
    sources: Mutex<FxHashMap<String, Source>>,
}

impl std::fmt::Debug for HubMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubMetrics")
            .field("sources", &lock(&self.sources).len())
            .finish_non_exhaustive()
    }
}

fn size_histogram() -> Histogram {
    Histogram::new(exponential_buckets(64.0, 4.0, 9))
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

impl Default for HubMetrics {
    fn default() -> Self {
        HubMetrics {
            received: Family::default(),
            sent: Family::default(),
            dropped: Family::default(),
            refused: Family::default(),
            throttled: Family::default(),
            size: Family::new_with_constructor(size_histogram),
            process: Family::new_with_constructor(duration_histogram),
            queue_length: Family::default(),
            sources: Mutex::new(FxHashMap::default()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl HubMetrics {
    /// Counts a message from `id` (a module or a leaf device) on `output` (`""` for device
    /// events), whose route source is `source`, of `size` bytes, sent through the routes
    /// `routes` (indices, with their sinks' labels); no routes: dropped, `no_route`.
    pub fn message<'a>(
        &self,
        source: &str,
        id: &str,
        output: &str,
        size: usize,
        routes: impl Iterator<Item = (usize, &'a SinkLabels)>,
    ) {
        let mut sources = lock(&self.sources);
        let s = match sources.get_mut(source) {
            Some(s) => s,
            None => sources
                .entry(source.to_owned())
                .or_insert_with(|| self.source(id, output)),
        };
        s.received.inc();
        s.size.observe(size as f64);
        let mut any = false;
        for (i, sink) in routes {
            any = true;
            if s.sent.len() <= i {
                s.sent.resize(i + 1, None);
            }
            let counter = s.sent[i].get_or_insert_with(|| {
                self.sent
                    .get_or_create(&vec![
                        ("from", s.from.clone()),
                        ("to", sink.to.clone()),
                        ("from_route_output", s.output.clone()),
                        ("to_route_input", sink.to_route_input.clone()),
                        ("priority", PRIORITY.to_owned()),
                    ])
                    .clone()
            });
            counter.inc();
        }
        if !any {
            s.no_route.inc();
        }
    }

    fn source(&self, id: &str, output: &str) -> Source {
        let by_output = vec![("id", id.to_owned()), ("route_output", output.to_owned())];
        Source {
            received: self.received.get_or_create(&by_output).clone(),
            size: self
                .size
                .get_or_create(&vec![("id", id.to_owned())])
                .clone(),
            no_route: self
                .dropped
                .get_or_create(&dropped_labels("no_route", id, output))
                .clone(),
            sent: Vec::new(),
            from: id.to_owned(),
            output: output.to_owned(),
        }
    }

    /// The histogram of time from acceptance to acknowledgement of messages to `module`.
    pub fn process_duration(&self, module: &str) -> Histogram {
        self.process
            .get_or_create(&vec![
                ("from", String::new()),
                ("to", module.to_owned()),
                ("priority", PRIORITY.to_owned()),
            ])
            .clone()
    }

    /// Counts `m` dropped from a module's queue for `reason` (`ttl_expiry`, `too_large`).
    pub fn dropped(&self, reason: &str, m: &edge_protocol::Message) {
        let from = m
            .connection_module_id
            .as_deref()
            .or(m.connection_device_id.as_deref())
            .unwrap_or("");
        let output = m.output_name.as_deref().unwrap_or("");
        self.dropped
            .get_or_create(&dropped_labels(reason, from, output))
            .inc();
    }

    /// Counts a publish, request or connection of client `from` that edgeHub refused for
    /// `reason` (`undeliverable`, `connection_limit`, `twin_too_large`, `slow_client`).
    pub fn refused(&self, reason: &str, from: &str) {
        self.refused
            .get_or_create(&vec![
                ("reason", reason.to_owned()),
                ("from", from.to_owned()),
            ])
            .inc();
    }

    /// How many of client `from`'s publishes, requests or connections were refused for
    /// `reason`.
    pub fn refused_count(&self, reason: &str, from: &str) -> u64 {
        self.refused
            .get_or_create(&vec![
                ("reason", reason.to_owned()),
                ("from", from.to_owned()),
            ])
            .get()
    }

    /// Counts a publish of leaf device `from` that waited for its rate (traffic shaping).
    pub fn throttled(&self, from: &str) {
        self.throttled
            .get_or_create(&vec![("from", from.to_owned())])
            .inc();
    }

    /// How many of leaf device `from`'s publishes waited for its rate.
    pub fn throttled_count(&self, from: &str) -> u64 {
        self.throttled
            .get_or_create(&vec![("from", from.to_owned())])
            .get()
    }

    /// Sets the queue gauge of `module` (called at each scrape).
    pub fn queue(&self, module: &str, length: u64) {
        self.queue_length
            .get_or_create(&vec![
                ("endpoint", module.to_owned()),
                ("priority", PRIORITY.to_owned()),
            ])
            .set(i64::try_from(length).unwrap_or(i64::MAX));
    }

    /// Registers every family in `exporter`.
    pub fn register(&self, exporter: &Exporter) {
        exporter.register(
            "edgehub_messages_received",
            "Total number of messages received from clients.",
            self.received.clone(),
        );
        exporter.register(
            "edgehub_messages_sent",
            "Total number of messages sent to module inputs or upstream (when edgeHub took them for the sink).",
            self.sent.clone(),
        );
        exporter.register(
            "edgehub_messages_dropped",
            "Total number of messages dropped, by reason.",
            self.dropped.clone(),
        );
        exporter.register(
            "edgehub_messages_refused",
            "Total number of publishes, requests and connections refused, by reason and client (not acknowledged; the client may try again).",
            self.refused.clone(),
        );
        exporter.register(
            "edgehub_messages_throttled",
            "Total number of a leaf device's publishes taken late because it sent past its rate (--device-send-limit).",
            self.throttled.clone(),
        );
        exporter.register(
            "edgehub_message_size_bytes",
            "Size of the messages from clients.",
            self.size.clone(),
        );
        exporter.register(
            "edgehub_message_process_duration_seconds",
            "Time from edgeHub taking a message to the module acknowledging it.",
            self.process.clone(),
        );
        exporter.register(
            "edgehub_queue_length",
            "Messages waiting or in flight for a module.",
            self.queue_length.clone(),
        );
    }
}

fn dropped_labels(reason: &str, from: &str, output: &str) -> Labels {
    vec![
        ("reason", reason.to_owned()),
        ("from", from.to_owned()),
        ("from_route_output", output.to_owned()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_counted_per_source_and_route() {
        let m = HubMetrics::default();
        let classifier = SinkLabels {
            to: "turbofanRulClassifier".into(),
            to_route_input: "amlInput".into(),
        };
        let to_classifier = || std::iter::once((1, &classifier));
        let source = "/messages/modules/turbofanRouter/outputs/classOutput";
        m.message(
            source,
            "turbofanRouter",
            "classOutput",
            600,
            to_classifier(),
        );
        m.message(
            source,
            "turbofanRouter",
            "classOutput",
            600,
            to_classifier(),
        );
        m.message(
            "/messages/events",
            "Client_001",
            "",
            100,
            std::iter::empty(),
        );
        m.queue("turbofanRulClassifier", 3);
        m.queue("turbofanRulClassifier", 0);
        let mut expired = edge_protocol::Message::new(b"{}".to_vec());
        expired.connection_device_id = Some("edge".into());
        expired.connection_module_id = Some("turbofanRouter".into());
        expired.output_name = Some("classOutput".into());
        m.dropped("ttl_expiry", &expired);
        let exporter = Exporter::new();
        m.register(&exporter);
        let text = exporter.encode();
        for line in [
            "edgehub_messages_received_total{id=\"turbofanRouter\",route_output=\"classOutput\"} 2",
            "edgehub_messages_sent_total{from=\"turbofanRouter\",to=\"turbofanRulClassifier\",from_route_output=\"classOutput\",to_route_input=\"amlInput\",priority=\"2000000000\"} 2",
            "edgehub_messages_dropped_total{reason=\"no_route\",from=\"Client_001\",from_route_output=\"\"} 1",
            "edgehub_messages_dropped_total{reason=\"ttl_expiry\",from=\"turbofanRouter\",from_route_output=\"classOutput\"} 1",
            "edgehub_queue_length{endpoint=\"turbofanRulClassifier\",priority=\"2000000000\"} 0",
            "edgehub_message_size_bytes_sum{id=\"turbofanRouter\"} 1200.0",
        ] {
            assert!(text.contains(line), "{line}\nnot in\n{text}");
        }
    }
}
