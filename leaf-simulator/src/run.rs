//! The run: register every device, connect each through the gateway, and replay its rows at a
//! steady rate, counting a message as sent only once edgeHub acknowledged it.

use crate::error::SimError;
use crate::gateway::Gateway;
use crate::plan::{self, DevicePlan};
use crate::sent_log::{SentLog, SentRecord};
use edge_client::{ModuleClient, Settings};
use futures_util::stream::{FuturesUnordered, StreamExt};
use runtime_state::layout;
use runtime_state::KeyStore;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Messages per second per device when not told otherwise: the longest engine of
/// `test_FD003` (475 cycles) is replayed in about 48 s.
pub const DEFAULT_RATE: f64 = 10.0;

/// How long a message may wait for edgeHub's acknowledgement before it counts as failed.
const ACK_TIMEOUT: Duration = Duration::from_secs(60);

/// Errors kept for the summary (the counters hold the rest).
const MAX_ERRORS: usize = 10;

/// What to replay, and how.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The running runtime's state folder.
    pub state_dir: PathBuf,
    /// The C-MAPSS file to replay (e.g. `…/test_FD003.txt`).
    pub data_file: PathBuf,
    /// Only the first N engine units (all when `None`).
    pub devices: Option<usize>,
    /// Messages per second per device.
    pub rate: f64,
    /// At most this many messages per device (all rows when `None`).
    pub max_messages: Option<u64>,
    /// Where to write the sent log (none when `None`).
    pub sent_log: Option<PathBuf>,
    /// Messages a device may have waiting for their acknowledgement.
    pub max_in_flight: usize,
}

impl SimConfig {
    /// Every engine of `data_file` at [`DEFAULT_RATE`], through the runtime of `state_dir`,
    /// with no sent log.
    pub fn new(state_dir: impl Into<PathBuf>, data_file: impl Into<PathBuf>) -> SimConfig {
        SimConfig {
            state_dir: state_dir.into(),
            data_file: data_file.into(),
            devices: None,
            rate: DEFAULT_RATE,
            max_messages: None,
            sent_log: None,
            max_in_flight: 32,
        }
    }
}

/// Live counters of a run, and the way to stop it early. Share it with whatever shows
/// progress.
#[derive(Debug)]
pub struct Progress {
    planned: AtomicU64,
    devices: AtomicUsize,
    connected: AtomicUsize,
    sent: AtomicU64,
    failed: AtomicU64,
    stop: watch::Sender<bool>,
}

impl Progress {
    /// Fresh counters.
    pub fn new() -> Arc<Progress> {
        Arc::new(Progress {
            planned: AtomicU64::new(0),
            devices: AtomicUsize::new(0),
            connected: AtomicUsize::new(0),
            sent: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            stop: watch::channel(false).0,
        })
    }

    /// Messages the run will send (known once the data is read).
    pub fn planned(&self) -> u64 {
        self.planned.load(Ordering::Relaxed)
    }

    /// Devices of the run.
    pub fn devices(&self) -> usize {
        self.devices.load(Ordering::Relaxed)
    }

    /// Devices connected so far.
    pub fn connected(&self) -> usize {
        self.connected.load(Ordering::Relaxed)
    }

    /// Messages acknowledged so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Messages that failed so far (not acknowledged, or their device could not connect).
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Asks every device to stop sending; messages already published are still waited for.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }
}

/// How a run went.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Devices of the run.
    pub devices: usize,
    /// Devices that connected.
    pub devices_connected: usize,
    /// Messages the run was to send.
    pub planned: u64,
    /// Messages edgeHub acknowledged.
    pub sent: u64,
    /// Messages that were not acknowledged, or whose device could not connect.
    pub failed: u64,
    /// Messages not sent because the run was stopped.
    pub not_sent: u64,
    /// From the first connection attempt to the last acknowledgement.
    pub elapsed: Duration,
    /// The first errors, as `device: error`.
    pub errors: Vec<String>,
    /// The sent log written, if any.
    pub sent_log: Option<PathBuf>,
}

impl Summary {
    /// Acknowledged messages per second over the run.
    pub fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.sent as f64 / secs
        } else {
            0.0
        }
    }

    /// Whether every planned message was acknowledged.
    pub fn is_complete(&self) -> bool {
        self.sent == self.planned
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "devices        {} ({} connected)",
            self.devices, self.devices_connected
        )?;
        writeln!(
            f,
            "messages sent  {} of {} (acknowledged by edgeHub)",
            self.sent, self.planned
        )?;
        writeln!(f, "failed         {}", self.failed)?;
        if self.not_sent > 0 {
            writeln!(f, "not sent       {} (stopped early)", self.not_sent)?;
        }
        writeln!(f, "elapsed        {:.1} s", self.elapsed.as_secs_f64())?;
        write!(f, "rate           {:.1} messages/s", self.rate())?;
        if let Some(p) = &self.sent_log {
            write!(f, "\nsent log       {}", p.display())?;
        }
        for e in &self.errors {
            write!(f, "\nerror          {e}")?;
        }
        Ok(())
    }
}

/// What one device did.
#[derive(Debug, Default)]
struct DeviceOutcome {
    connected: bool,
    sent: u64,
    failed: u64,
    not_sent: u64,
    errors: Vec<String>,
}

impl DeviceOutcome {
    fn error(&mut self, device: &str, e: impl fmt::Display) {
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(format!("{device}: {e}"));
        }
    }
}

fn now_utc() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Replays the engines of `cfg.data_file` as leaf devices through the runtime of
/// `cfg.state_dir`, reporting as it goes in `progress`. Fails before sending anything when the
/// runtime is not running, the data cannot be read or a setting is out of range; failures of
/// single devices or messages are counted in the [`Summary`].
pub async fn simulate(cfg: &SimConfig, progress: Arc<Progress>) -> Result<Summary, SimError> {
    if !(cfg.rate.is_finite() && cfg.rate > 0.0) {
        return Err(SimError::Config(format!(
            "the rate must be a positive number of messages per second, not {}",
            cfg.rate
        )));
    }
    if cfg.max_in_flight == 0 {
        return Err(SimError::Config("max_in_flight must be at least 1".into()));
    }
    let gateway = Gateway::from_state(&cfg.state_dir)?;
    let rows = turbofan_domain::cmapss::read_rows(&cfg.data_file)?;
    let plans = plan::plan(rows, cfg.devices, cfg.max_messages);
    if plans.is_empty() {
        return Err(SimError::NoRows(cfg.data_file.clone()));
    }
    let registry_path = layout::registry(&cfg.state_dir);
    let registry = KeyStore::new(registry_path.clone());
    let mut devices = Vec::with_capacity(plans.len());
    for p in plans {
        let key = registry
            .ensure(&p.device_id)
            .map_err(|source| SimError::Registry {
                path: registry_path.clone(),
                source,
            })?;
        let settings = gateway.device_settings(&p.device_id, &key)?;
        devices.push((p, settings));
    }
    let log = match &cfg.sent_log {
        Some(path) => Some(Arc::new(SentLog::create(path).map_err(|source| {
            SimError::SentLog {
                path: path.clone(),
                source,
            }
        })?)),
        None => None,
    };
    let planned: u64 = devices.iter().map(|(p, _)| p.rows.len() as u64).sum();
    progress.planned.store(planned, Ordering::Relaxed);
    progress.devices.store(devices.len(), Ordering::Relaxed);

    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / cfg.rate);
    let n = devices.len() as u32;
    let tasks: Vec<_> = devices
        .into_iter()
        .zip(0u32..)
        .map(|((plan, settings), k)| {
            // Spread the devices' sends evenly over one interval.
            let device = Device {
                plan,
                settings,
                interval,
                offset: interval * k / n,
                max_in_flight: cfg.max_in_flight,
                log: log.clone(),
                progress: progress.clone(),
            };
            tokio::spawn(device.run())
        })
        .collect();

    let mut summary = Summary {
        devices: tasks.len(),
        devices_connected: 0,
        planned,
        sent: 0,
        failed: 0,
        not_sent: 0,
        elapsed: Duration::ZERO,
        errors: Vec::new(),
        sent_log: cfg.sent_log.clone(),
    };
    for t in tasks {
        let o = t.await.unwrap_or_else(|e| DeviceOutcome {
            errors: vec![format!("a device task failed: {e}")],
            ..DeviceOutcome::default()
        });
        summary.devices_connected += usize::from(o.connected);
        summary.sent += o.sent;
        summary.failed += o.failed;
        summary.not_sent += o.not_sent;
        let room = MAX_ERRORS.saturating_sub(summary.errors.len());
        summary.errors.extend(o.errors.into_iter().take(room));
    }
    summary.elapsed = started.elapsed();
    if let Some(log) = &log {
        if let Err(e) = log.flush() {
            summary
                .errors
                .push(format!("sent log {}: {e}", log.path().display()));
        }
    }
    Ok(summary)
}

/// One leaf device's task.
struct Device {
    plan: DevicePlan,
    settings: Settings,
    interval: Duration,
    offset: Duration,
    max_in_flight: usize,
    log: Option<Arc<SentLog>>,
    progress: Arc<Progress>,
}

/// A send's result with what the sent log needs.
type Sent = (u32, String, String, Result<(), String>);

impl Device {
    async fn run(self) -> DeviceOutcome {
        let id = self.plan.device_id.clone();
        let total = self.plan.rows.len() as u64;
        let mut out = DeviceOutcome::default();
        let mut stop = self.progress.stop.subscribe();
        let client = tokio::select! {
            r = ModuleClient::connect(self.settings.clone()) => match r {
                Ok(c) => c,
                Err(e) => {
                    out.error(&id, format_args!("cannot connect: {e}"));
                    out.failed = total;
                    self.progress.failed.fetch_add(total, Ordering::Relaxed);
                    return out;
                }
            },
            _ = stop.wait_for(|s| *s) => {
                out.not_sent = total;
                return out;
            }
        };
        out.connected = true;
        self.progress.connected.fetch_add(1, Ordering::Relaxed);

        let start = Instant::now() + self.offset;
        let mut inflight = FuturesUnordered::new();
        let mut stopped = false;
        for (i, row) in self.plan.rows.iter().enumerate() {
            let due = start + self.interval.mul_f64(i as f64);
            // Wait for the row's time, handling acknowledgements meanwhile. A send pushed in
            // the previous round is first polled here, in push order, so messages are
            // published in cycle order.
            loop {
                tokio::select! {
                    biased;
                    _ = stop.wait_for(|s| *s) => { stopped = true; break; }
                    Some(done) = inflight.next(), if !inflight.is_empty() => self.record(&mut out, done),
                    _ = tokio::time::sleep_until(due) => break,
                }
            }
            if stopped {
                out.not_sent = total - i as u64;
                break;
            }
            while inflight.len() >= self.max_in_flight {
                if let Some(done) = inflight.next().await {
                    self.record(&mut out, done);
                }
            }
            let cid = uuid::Uuid::new_v4().to_string();
            let message = plan::telemetry(&id, row, cid.clone());
            let sent_at = now_utc();
            let (c, cycle) = (client.clone(), row.cycle);
            inflight.push(async move {
                let r = match tokio::time::timeout(ACK_TIMEOUT, c.send_event(message)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!(
                        "no acknowledgement from edgeHub within {} s",
                        ACK_TIMEOUT.as_secs()
                    )),
                };
                (cycle, cid, sent_at, r)
            });
        }
        while let Some(done) = inflight.next().await {
            self.record(&mut out, done);
        }
        client.close(Duration::from_secs(5)).await;
        out
    }

    fn record(&self, out: &mut DeviceOutcome, (cycle, cid, sent_at, result): Sent) {
        let id = &self.plan.device_id;
        match result {
            Ok(()) => {
                out.sent += 1;
                self.progress.sent.fetch_add(1, Ordering::Relaxed);
                if let Some(log) = &self.log {
                    let r = SentRecord {
                        device: id.clone(),
                        unit: self.plan.unit,
                        cycle,
                        correlation_id: cid,
                        sent_at,
                    };
                    if let Err(e) = log.append(&r) {
                        out.error(id, format_args!("sent log: {e}"));
                    }
                }
            }
            Err(e) => {
                out.failed += 1;
                self.progress.failed.fetch_add(1, Ordering::Relaxed);
                out.error(id, format_args!("cycle {cycle}: {e}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_says_what_happened() {
        let s = Summary {
            devices: 3,
            devices_connected: 2,
            planned: 30,
            sent: 20,
            failed: 10,
            not_sent: 0,
            elapsed: Duration::from_secs(4),
            errors: vec!["Client_003: cannot connect: refused".into()],
            sent_log: Some("sent.jsonl".into()),
        };
        assert_eq!(s.rate(), 5.0);
        assert!(!s.is_complete());
        let text = s.to_string();
        for want in [
            "3 (2 connected)",
            "20 of 30",
            "failed         10",
            "4.0 s",
            "5.0 messages/s",
            "sent.jsonl",
            "Client_003: cannot connect",
        ] {
            assert!(text.contains(want), "{want} in\n{text}");
        }
    }

    #[tokio::test]
    async fn refuses_a_bad_rate_and_a_missing_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = SimConfig::new(dir.path(), dir.path().join("test_FD003.txt"));
        cfg.rate = 0.0;
        let e = simulate(&cfg, Progress::new()).await.unwrap_err();
        assert!(e.to_string().contains("rate"), "{e}");
        cfg.rate = DEFAULT_RATE;
        let e = simulate(&cfg, Progress::new()).await.unwrap_err();
        assert!(
            matches!(
                e,
                SimError::NotReady(runtime_state::ReadyError::NotRunning { .. })
            ),
            "{e}"
        );
    }
}
