//! What the client counts for every module: messages in per input, out per output (a
//! module's dead letters are its messages out on its dead-letter output), and its
//! connections to edgeHub. [`crate::start_module`] registers them in the module's
//! [`Exporter`](edge_process::observe::Exporter).

use edge_process::observe::Exporter;
use edge_process::prometheus_client::metrics::counter::Counter;
use edge_process::prometheus_client::metrics::family::Family;
use edge_process::prometheus_client::metrics::gauge::Gauge;
use edge_protocol::CompactString;
use std::sync::Mutex;

/// Label pairs of a per-name counter.
type Labels = Vec<(&'static str, String)>;

/// Counters labelled by one name (an input, an output). The counter of each name is looked
/// up once and then kept: counting a message costs a short scan and an atomic add, not an
/// allocation.
#[derive(Debug)]
pub struct PerName {
    label: &'static str,
    family: Family<Labels, Counter>,
    seen: Mutex<Vec<(CompactString, Counter)>>,
}

impl PerName {
    fn new(label: &'static str) -> PerName {
        PerName {
            label,
            family: Family::default(),
            seen: Mutex::new(Vec::new()),
        }
    }

    /// Counts one for `name`.
    pub fn inc(&self, name: &str) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, c)) = seen.iter().find(|(n, _)| n == name) {
            c.inc();
            return;
        }
        let c = self
            .family
            .get_or_create(&vec![(self.label, name.to_owned())])
            .clone();
        c.inc();
        seen.push((name.into(), c));
    }

    /// Every name counted so far, with its count.
    pub fn snapshot(&self) -> serde_json::Map<String, serde_json::Value> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.iter()
            .map(|(n, c)| (n.to_string(), c.get().into()))
            .collect()
    }

    /// The count for `name` (0 if never counted).
    pub fn get(&self, name: &str) -> u64 {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, c)| c.get())
    }
}

/// The client's metrics.
#[derive(Debug)]
pub struct ClientMetrics {
    /// Messages received, by input.
    pub received: PerName,
    /// Messages handed to edgeHub, by output.
    pub sent: PerName,
    /// Successful connections to edgeHub (the first and every reconnection).
    pub connections: Counter,
    /// 1 while connected to edgeHub.
    pub connected: Gauge,
}

impl Default for ClientMetrics {
    fn default() -> Self {
        ClientMetrics {
            received: PerName::new("input"),
            sent: PerName::new("output"),
            connections: Counter::default(),
            connected: Gauge::default(),
        }
    }
}

impl ClientMetrics {
    /// Registers the metrics in `exporter` as `edge_module_*`.
    pub fn register(&self, exporter: &Exporter) {
        exporter.register(
            "edge_module_messages_received",
            "Messages the module received from edgeHub, by input.",
            self.received.family.clone(),
        );
        exporter.register(
            "edge_module_messages_sent",
            "Messages the module handed to edgeHub, by output (dead letters are those on the dead-letter output).",
            self.sent.family.clone(),
        );
        exporter.register(
            "edge_module_connections",
            "Connections to edgeHub made (the first and each reconnection).",
            self.connections.clone(),
        );
        exporter.register(
            "edge_module_connected",
            "1 while the module is connected to edgeHub.",
            self.connected.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_name_and_encodes_with_the_label() {
        let m = ClientMetrics::default();
        m.sent.inc("hubOutput");
        m.sent.inc("hubOutput");
        m.sent.inc("deadMessages");
        assert_eq!(m.sent.get("hubOutput"), 2);
        assert_eq!(m.sent.get("deadMessages"), 1);
        assert_eq!(m.sent.get("other"), 0);
        let exporter = Exporter::new();
        m.register(&exporter);
        let text = exporter.encode();
        assert!(
            text.contains("edge_module_messages_sent_total{output=\"hubOutput\"} 2"),
            "{text}"
        );
    }
}
