//! Traffic shaping of what each leaf device publishes, as IoT Hub shapes device-to-cloud
//! traffic: past its rate, a device's messages are not refused but taken more slowly. Here
//! edgeHub stops reading the device's connection until its budget allows the next message,
//! so its PUBACKs come later and TCP holds the device back; other clients are not slowed.
//!
//! Sizes are counted as IoT Hub meters messages: in units of [`UNIT`] bytes (a 0.7 KB
//! telemetry row is one unit, a 500 KB message 125). Each device has a bucket of
//! [`BURST_SECS`] of its rate; a message larger than what is left waits until the bucket
//! has refilled what it lacks. Modules are not shaped: they are the deployment's own code.

use rustc_hash::FxHashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bytes per metered unit (IoT Hub counts messages in 4 KB blocks).
pub const UNIT: usize = 4096;
/// The default rate: units per second per leaf device (8 MiB/s, or 2,048 small messages).
pub const DEFAULT_UNITS_PER_SEC: u32 = 2048;
/// Seconds of its rate a device may send at once after being quiet.
pub const BURST_SECS: f64 = 2.0;

/// The shaping state of every leaf device that has published.
#[derive(Debug)]
pub struct DeviceThrottle {
    rate: f64,
    devices: Mutex<FxHashMap<Box<str>, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    units: f64,
    at: Instant,
}

impl DeviceThrottle {
    /// Shaping at `units_per_sec` per device; 0 turns it off.
    pub fn new(units_per_sec: u32) -> DeviceThrottle {
        DeviceThrottle {
            rate: f64::from(units_per_sec),
            devices: Mutex::new(FxHashMap::default()),
        }
    }

    /// Whether devices are shaped at all.
    pub fn is_on(&self) -> bool {
        self.rate > 0.0
    }

    /// Takes a message of `bytes` from `device` at `now`; returns how long the device's
    /// connection must wait before the message is taken (zero within its rate).
    pub fn take(&self, device: &str, bytes: usize, now: Instant) -> Duration {
        if !self.is_on() {
            return Duration::ZERO;
        }
        let units = bytes.div_ceil(UNIT).max(1) as f64;
        let burst = self.rate * BURST_SECS;
        let mut devices = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        let b = match devices.get_mut(device) {
            Some(b) => b,
            None => devices.entry(device.into()).or_insert(Bucket {
                units: burst,
                at: now,
            }),
        };
        let refilled = now.saturating_duration_since(b.at).as_secs_f64() * self.rate;
        b.units = (b.units + refilled).min(burst) - units;
        b.at = now;
        if b.units >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-b.units / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_within_its_rate_never_waits_and_one_past_it_waits_for_what_it_lacks() {
        let t = DeviceThrottle::new(100);
        let t0 = Instant::now();
        // The burst: 200 units at once.
        for _ in 0..200 {
            assert_eq!(t.take("a", 700, t0), Duration::ZERO);
        }
        // The next unit waits 1/100 s; another device is not affected.
        assert_eq!(t.take("a", 1, t0), Duration::from_millis(10));
        assert_eq!(t.take("b", 4096 * 10, t0), Duration::ZERO);
        // A 500 KB message is 123 units: from an empty bucket, 1.23 s.
        let later = t0 + Duration::from_millis(10);
        let wait = t.take("a", 500_000, later);
        assert!((wait.as_secs_f64() - 1.23).abs() < 1e-6, "{wait:?}");
        // Sending at the rate from then on never waits longer than one message.
        let mut at = later + wait;
        for _ in 0..100 {
            at += Duration::from_millis(10);
            assert!(t.take("a", 4096, at) <= Duration::from_millis(10));
        }
    }

    #[test]
    fn zero_turns_shaping_off() {
        let t = DeviceThrottle::new(0);
        let now = Instant::now();
        for _ in 0..10_000 {
            assert_eq!(t.take("a", 512 * 1024, now), Duration::ZERO);
        }
    }
}
