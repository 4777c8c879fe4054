//! The classifier's own metrics (beside the client's messages in and out): batch sizes,
//! model-run latency, rows scored by mode, answers that could not be scored, and devices with
//! a history.

use edge_client::observe::Exporter;
use edge_client::prometheus_client::metrics::counter::Counter;
use edge_client::prometheus_client::metrics::family::Family;
use edge_client::prometheus_client::metrics::gauge::Gauge;
use edge_client::prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

/// The classifier's metrics.
#[derive(Debug)]
pub struct ClassifierMetrics {
    /// Messages per model run.
    pub batch_size: Histogram,
    /// Seconds per model run (features, ONNX Runtime, answers).
    pub scoring_seconds: Histogram,
    /// Messages scored, by scoring mode.
    pub scored: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// Answers sent with `ClassifierError` (not scored).
    pub unscored: Counter,
    /// Devices with a history (set at each scrape).
    pub history_devices: Gauge,
}

impl Default for ClassifierMetrics {
    fn default() -> Self {
        ClassifierMetrics {
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            scoring_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 14)),
            scored: Family::default(),
            unscored: Counter::default(),
            history_devices: Gauge::default(),
        }
    }
}

impl ClassifierMetrics {
    /// Counts one model run over `batch` messages, `scored` of them scored, in `seconds`.
    pub fn batch(&self, mode: &'static str, batch: usize, scored: usize, seconds: f64) {
        self.batch_size.observe(batch as f64);
        self.scoring_seconds.observe(seconds);
        self.scored
            .get_or_create(&vec![("mode", mode)])
            .inc_by(scored as u64);
        self.unscored.inc_by(batch.saturating_sub(scored) as u64);
    }

    /// Registers the metrics as `turbofan_classifier_*`.
    pub fn register(&self, exporter: &Exporter) {
        exporter.register(
            "turbofan_classifier_batch_size",
            "Messages scored together in one model run.",
            self.batch_size.clone(),
        );
        exporter.register(
            "turbofan_classifier_scoring_seconds",
            "Time of one model run over a batch: features, ONNX Runtime, answers.",
            self.scoring_seconds.clone(),
        );
        exporter.register(
            "turbofan_classifier_messages_scored",
            "Messages scored, by scoring mode (history or row).",
            self.scored.clone(),
        );
        exporter.register(
            "turbofan_classifier_messages_unscored",
            "Answers sent unscored, with a ClassifierError property.",
            self.unscored.clone(),
        );
        exporter.register(
            "turbofan_classifier_history_devices",
            "Leaf devices with a history in memory.",
            self.history_devices.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_counts_scored_and_unscored_messages() {
        let m = ClassifierMetrics::default();
        m.batch("history", 5, 4, 0.001);
        m.batch("row", 2, 2, 0.0005);
        let exporter = Exporter::new();
        m.register(&exporter);
        let text = exporter.encode();
        for line in [
            "turbofan_classifier_messages_scored_total{mode=\"history\"} 4",
            "turbofan_classifier_messages_scored_total{mode=\"row\"} 2",
            "turbofan_classifier_messages_unscored_total 1",
            "turbofan_classifier_batch_size_count 2",
            "turbofan_classifier_batch_size_sum 7.0",
        ] {
            assert!(text.contains(line), "{line} not in {text}");
        }
    }
}
