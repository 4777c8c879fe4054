//! Which device sends what: engine unit N of the file is device `Client_{N:03}`, sending that
//! engine's rows in cycle order.

use bytes::Bytes;
use edge_protocol::{CompactString, Message};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use turbofan_domain::cmapss::Row;

/// The device id of engine unit `unit`: `Client_001`, `Client_002`, … (`Client_1000` past 999).
pub fn device_id(unit: u32) -> String {
    format!("Client_{unit:03}")
}

/// The engine unit of a device id made by [`device_id`].
pub fn unit_of(device: &str) -> Option<u32> {
    device.strip_prefix("Client_")?.parse().ok()
}

/// One device's share of the run.
#[derive(Debug, Clone, PartialEq)]
pub struct DevicePlan {
    /// Device id (`Client_{unit:03}`).
    pub device_id: String,
    /// The engine unit it replays.
    pub unit: u32,
    /// Its rows, in cycle order.
    pub rows: Vec<Row>,
}

/// Splits a file's rows among devices: the first `devices` engine units (all when `None`),
/// each sending at most `max_messages` rows (its first cycles; all when `None`).
pub fn plan(rows: Vec<Row>, devices: Option<usize>, max_messages: Option<u64>) -> Vec<DevicePlan> {
    let mut by_unit: BTreeMap<u32, Vec<Row>> = BTreeMap::new();
    for r in rows {
        by_unit.entry(r.unit).or_default().push(r);
    }
    by_unit
        .into_iter()
        .take(devices.unwrap_or(usize::MAX))
        .map(|(unit, mut rows)| {
            rows.sort_by_key(|r| r.cycle);
            if let Some(max) = max_messages {
                rows.truncate(usize::try_from(max).unwrap_or(usize::MAX));
            }
            DevicePlan {
                device_id: device_id(unit),
                unit,
                rows,
            }
        })
        .filter(|p| !p.rows.is_empty())
        .collect()
}

/// The telemetry message of one row (docs/architecture.md §2): the row as JSON, content type
/// `application/json`, encoding `utf-8`, message id `{device}-{cycle}`, and the given
/// correlation id.
pub fn telemetry(device: &str, row: &Row, correlation_id: impl Into<CompactString>) -> Message {
    telemetry_with_body(device, row, row.to_json(), correlation_id)
}

/// [`telemetry`] with the row's JSON already rendered (`row.to_json()`), for a load
/// generator that sends the same rows many times.
pub fn telemetry_with_body(
    device: &str,
    row: &Row,
    body: impl Into<Bytes>,
    correlation_id: impl Into<CompactString>,
) -> Message {
    let mut m = Message::json(body);
    let mut id = CompactString::default();
    // Writing to a string cannot fail.
    let _ = write!(id, "{device}-{}", row.cycle);
    m.message_id = Some(id);
    m.correlation_id = Some(correlation_id.into());
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(unit: u32, cycle: u32) -> Row {
        Row {
            unit,
            cycle,
            settings: [0.0; 3],
            sensors: [1.0; 21],
        }
    }

    #[test]
    fn engines_become_devices_with_rows_in_cycle_order() {
        let rows = vec![
            row(2, 2),
            row(1, 1),
            row(2, 1),
            row(3, 1),
            row(1, 2),
            row(1, 3),
        ];
        let p = plan(rows.clone(), None, None);
        let ids: Vec<_> = p.iter().map(|d| d.device_id.as_str()).collect();
        assert_eq!(ids, ["Client_001", "Client_002", "Client_003"]);
        let cycles: Vec<_> = p[1].rows.iter().map(|r| r.cycle).collect();
        assert_eq!(cycles, [1, 2]);

        let p = plan(rows, Some(2), Some(2));
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].rows.len(), 2, "capped per device");
        assert_eq!(p[0].rows[1].cycle, 2, "first cycles kept");
        assert_eq!(device_id(7), "Client_007");
        assert_eq!(device_id(1234), "Client_1234");
        assert_eq!(unit_of("Client_042"), Some(42));
        assert_eq!(unit_of("edge-device"), None);
    }

    #[test]
    fn telemetry_is_the_row_as_json_with_ids() {
        let m = telemetry("Client_001", &row(1, 42), "cid");
        assert!(m.is_json_utf8());
        assert_eq!(m.message_id.as_deref(), Some("Client_001-42"));
        assert_eq!(m.correlation_id.as_deref(), Some("cid"));
        let v: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
        assert_eq!(v["CycleTime"], 42);
        assert_eq!(v["Sensor21"], 1.0);
    }
}
