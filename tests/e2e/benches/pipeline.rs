//! Load benchmark of the whole pipeline on this machine: `deployment.template.json` on the
//! local runtime (in this process), the three real module processes (release builds, started
//! by edgeAgent), and leaf devices generating load in this process (on a thread of their
//! own), each with its own identity and TLS connection through edgeHub.
//!
//! ```sh
//! cargo build --release --workspace
//! cargo bench -p e2e-tests --bench pipeline -- [--runs 3] [--devices 100] [--messages 200000]
//!     [--window 4000] [--rate 2000] [--paced-secs 15] [--hub-window N] [--row-mode 1]
//!     [--sample-secs S] [--hub-routes 1]
//! ```
//!
//! A soak: `--paced-secs 1800 --sample-secs 60` prints, every minute of the paced phase, the
//! resident memory of each module and of this process (edgeHub, its stores and the load),
//! and the size of the runtime's state folder.
//!
//! Per run (a fresh runtime each):
//! 1. paced: `--rate` leaf messages/s for `--paced-secs`; latency leaf → RUL message
//!    upstream, and CPU per module at that rate;
//! 2. sustained: `--messages` as fast as the pipeline takes them, with at most `--window`
//!    messages sent but not yet out as RUL messages (so the rate measured is what the
//!    whole pipeline sustains, not what edgeHub's queues absorb); messages/s from the first
//!    send to the last RUL message, CPU per process over the phase.
//!
//! Every message must come out as exactly one RUL message (none lost, none duplicated, no
//! dead letter) and be archived by the Avro writer. Latency is measured two ways: to the RUL
//! message's `enqueuedTimeUtc` (edgeHub took it for IoT Hub; millisecond resolution,
//! truncated), and to the moment this process saw it in the durable `$upstream` store
//! (after the store's fsync; polled every millisecond).

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use e2e::pipeline::{self, wait_for, Pipeline};
use e2e::procfs::{self, Sample};
use e2e::upstream::Tail;
use e2e::{CLASSIFIER, MODULES, ROUTER, WRITER};
use edge_client::{CompactString, Message, ModuleClient};
use iotedge_local::testing::bench::{arg, percentile};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Semaphore};
use turbofan_domain::cmapss::Row;

fn now_us() -> u64 {
    let t = chrono::Utc::now();
    u64::try_from(t.timestamp_micros()).unwrap_or(0)
}

/// What is known of every message of a run, by message number.
struct Ledger {
    sent_us: Vec<AtomicU64>,
    enqueued_us: Vec<AtomicU64>,
    observed_us: Vec<AtomicU64>,
    ruls: Vec<AtomicU32>,
    dead: AtomicU64,
    unknown: AtomicU64,
}

impl Ledger {
    fn new(n: usize) -> Ledger {
        let zeros = |n| (0..n).map(|_| AtomicU64::new(0)).collect();
        Ledger {
            sent_us: zeros(n),
            enqueued_us: zeros(n),
            observed_us: zeros(n),
            ruls: (0..n).map(|_| AtomicU32::new(0)).collect(),
            dead: AtomicU64::new(0),
            unknown: AtomicU64::new(0),
        }
    }
}

fn find<'a>(line: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let at = memchr::memmem::find(line, key)? + key.len();
    let rest = &line[at..];
    let end = memchr::memchr(b'"', rest)?;
    Some(&rest[..end])
}

fn contains(line: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(line, needle).is_some()
}

/// `2026-11-21T06:57:41.017Z` → microseconds since the epoch.
fn parse_time_us(t: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(t).ok()?;
    let t = chrono::DateTime::parse_from_rfc3339(s).ok()?;
    u64::try_from(t.timestamp_micros()).ok()
}

/// Sorts one upstream line into the ledger without parsing all of its JSON: RUL messages
/// carry `"module":"turbofanRouter"`, `PredictedRul` and our correlation id `b<n>`.
fn account(line: &[u8], ledger: &Ledger, seen_at: u64) -> bool {
    if contains(line, br#""DeadLetter":"true""#) {
        ledger.dead.fetch_add(1, Ordering::Relaxed);
        return false;
    }
    let rul = contains(line, br#""module":"turbofanRouter""#) && contains(line, b"PredictedRul");
    let n = find(line, br#""CorrelationId":"b"#)
        .and_then(|d| std::str::from_utf8(d).ok())
        .and_then(|d| d.parse::<usize>().ok())
        .filter(|n| *n < ledger.ruls.len());
    match (rul, n) {
        (true, Some(n)) => {
            if ledger.ruls[n].fetch_add(1, Ordering::Relaxed) == 0 {
                let enq = find(line, br#""enqueuedTimeUtc":""#)
                    .and_then(parse_time_us)
                    .unwrap_or(0);
                ledger.enqueued_us[n].store(enq, Ordering::Relaxed);
                ledger.observed_us[n].store(seen_at, Ordering::Relaxed);
            }
            true
        }
        _ => {
            ledger.unknown.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

/// Follows the upstream store, accounting RUL messages and handing back window permits.
fn follow(
    mut tail: Tail,
    ledger: Arc<Ledger>,
    window: Arc<Semaphore>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<()>> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let seen_at = now_us();
            let mut done = 0;
            tail.poll_lines(|l| {
                if account(l, &ledger, seen_at) {
                    done += 1;
                }
            })?;
            window.add_permits(done);
            if done == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(())
    })
}

/// The leaf devices of the load: their clients, and the C-MAPSS rows they send, rendered
/// once as the simulator renders them (the load generator shares the CPU it measures, so it
/// should spend as little of it as it can).
struct Leaves {
    clients: Vec<ModuleClient>,
    ids: Vec<String>,
    rows: Vec<Row>,
    bodies: Vec<Bytes>,
    /// Per device, the rows of its engine in cycle order (device `d` is engine
    /// `d % engines`): the classifier sees each device's history as a real engine sends it.
    engine_rows: Vec<Vec<usize>>,
    sends: mpsc::UnboundedSender<(usize, Message)>,
}

impl Leaves {
    /// Connected `clients`, named `ids`, sending `rows`; `failures` counts sends edgeHub did
    /// not accept.
    fn new(
        on: &tokio::runtime::Handle,
        clients: Vec<ModuleClient>,
        ids: Vec<String>,
        rows: Vec<Row>,
        failures: Arc<AtomicU64>,
    ) -> Leaves {
        let bodies = rows.iter().map(|r| Bytes::from(r.to_json())).collect();
        let mut units: Vec<u32> = rows.iter().map(|r| r.unit).collect();
        units.sort_unstable();
        units.dedup();
        let engine_rows = (0..clients.len())
            .map(|d| {
                let unit = units[d % units.len().max(1)];
                let mut idx: Vec<usize> =
                    (0..rows.len()).filter(|&i| rows[i].unit == unit).collect();
                idx.sort_by_key(|&i| rows[i].cycle);
                idx
            })
            .collect();
        let (sends, mut queued) = mpsc::unbounded_channel::<(usize, Message)>();
        let senders = clients.clone();
        // One task sends everything; nothing waits per message (a future each, or a task
        // each, would cost more than the send): edgeHub's answer is counted by a callback.
        on.spawn(async move {
            while let Some((d, message)) = queued.recv().await {
                let failures = failures.clone();
                // On an error the callback is told too.
                let _ = senders[d]
                    .send_event_then(message, move |accepted| {
                        if !accepted {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    })
                    .await;
            }
        });
        Leaves {
            clients,
            ids,
            rows,
            bodies,
            engine_rows,
            sends,
        }
    }

    /// Sends message number `n` from device `d = n % devices`, with [`correlation_id`]`(n)`:
    /// the next cycle of the device's engine (from its first cycle again after its last).
    /// The message is the simulator's, with the body rendered in advance.
    fn send(&self, n: usize, ledger: &Ledger) {
        let d = n % self.clients.len();
        let own = &self.engine_rows[d];
        let r = own[(n / self.clients.len()) % own.len()];
        let message = leaf_simulator::plan::telemetry_with_body(
            &self.ids[d],
            &self.rows[r],
            self.bodies[r].clone(),
            correlation_id(n),
        );
        ledger.sent_us[n].store(now_us(), Ordering::Relaxed);
        let _ = self.sends.send((d, message));
    }
}

/// The correlation id of message number `n`: `b` and `n` in 35 digits, as long as the
/// UUIDs the leaf simulator sends (36 characters, too long to be kept inline by
/// `CompactString`: the load costs what real traffic costs).
fn correlation_id(n: usize) -> CompactString {
    let mut id = CompactString::with_capacity(36);
    // Writing to a string cannot fail.
    let _ = write!(id, "b{n:035}");
    id
}

/// What happened to messages `range` of a run.
struct Outcome {
    messages: usize,
    lost: usize,
    duplicates: u64,
    elapsed: Duration,
    to_enqueued: Vec<u64>,
    to_observed: Vec<u64>,
}

impl Outcome {
    fn of(ledger: &Ledger, range: std::ops::Range<usize>) -> Outcome {
        let mut o = Outcome {
            messages: range.len(),
            lost: 0,
            duplicates: 0,
            elapsed: Duration::ZERO,
            to_enqueued: Vec::with_capacity(range.len()),
            to_observed: Vec::with_capacity(range.len()),
        };
        let (mut first, mut last) = (u64::MAX, 0);
        for n in range {
            let sent = ledger.sent_us[n].load(Ordering::Relaxed);
            first = first.min(sent);
            match ledger.ruls[n].load(Ordering::Relaxed) {
                0 => o.lost += 1,
                k => {
                    o.duplicates += u64::from(k - 1);
                    let enq = ledger.enqueued_us[n].load(Ordering::Relaxed);
                    let seen = ledger.observed_us[n].load(Ordering::Relaxed);
                    last = last.max(enq.max(seen));
                    o.to_enqueued.push(enq.saturating_sub(sent));
                    o.to_observed.push(seen.saturating_sub(sent));
                }
            }
        }
        o.elapsed = Duration::from_micros(last.saturating_sub(first));
        o.to_enqueued.sort_unstable();
        o.to_observed.sort_unstable();
        o
    }

    fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn latency(&self) -> String {
        format!(
            "to enqueued p50 {:.2} / p99 {:.2} / max {:.2} ms; seen in the store p50 {:.2} / p99 {:.2} ms",
            percentile(&self.to_enqueued, 0.5) / 1000.0,
            percentile(&self.to_enqueued, 0.99) / 1000.0,
            percentile(&self.to_enqueued, 1.0) / 1000.0,
            percentile(&self.to_observed, 0.5) / 1000.0,
            percentile(&self.to_observed, 0.99) / 1000.0,
        )
    }
}

async fn wait_all(ledger: &Ledger, range: std::ops::Range<usize>, timeout: Duration) {
    let _ = wait_for("every RUL message", timeout, || {
        Ok(range
            .clone()
            .all(|n| ledger.ruls[n].load(Ordering::Relaxed) > 0)
            .then_some(()))
    })
    .await;
}

/// CPU and memory of the module processes, this process, and its journal, upstream-writer
/// and leaf-device threads.
#[derive(Clone)]
struct Usage {
    at: Instant,
    modules: HashMap<&'static str, Sample>,
    me: Sample,
    upstream_thread: u64,
    journal_thread: u64,
    leaf_thread: u64,
}

/// The name of the leaf devices' thread.
const LEAF_THREAD: &str = "leaf-devices";

/// The leaf devices' runtime. Dropped (at the end of a run, or when it fails), it is shut
/// down in the background: dropping a runtime waits for its threads, which a task must not.
struct LeafRuntime {
    rt: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
}

impl LeafRuntime {
    fn start() -> Result<LeafRuntime> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(LEAF_THREAD)
            .enable_all()
            .build()
            .context("starting the leaf devices' runtime")?;
        Ok(LeafRuntime {
            handle: rt.handle().clone(),
            rt: Some(rt),
        })
    }
}

impl Drop for LeafRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn thread_ticks(name: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .filter_map(|s| {
            let after = &s[s.rfind(')')? + 1..];
            let f: Vec<&str> = after.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}

fn usage(p: &Pipeline) -> Result<Usage> {
    let mut modules = HashMap::new();
    for m in MODULES {
        let pid = p.pid(m).ok_or_else(|| anyhow!("{m} is not running"))?;
        modules.insert(m, procfs::sample(pid)?);
    }
    Ok(Usage {
        at: Instant::now(),
        modules,
        me: procfs::sample(std::process::id())?,
        upstream_thread: thread_ticks("upstream-writer"),
        journal_thread: thread_ticks("message-store"),
        leaf_thread: thread_ticks(LEAF_THREAD),
    })
}

/// CPU used between two readings, in cores (1.0 = one core busy).
fn cores(before: &Usage, after: &Usage) -> Vec<(String, f64)> {
    let secs = (after.at - before.at).as_secs_f64().max(1e-9);
    let hz = procfs::ticks_per_second() as f64;
    let c = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / hz / secs;
    let mut out: Vec<(String, f64)> = MODULES
        .iter()
        .map(|m| {
            (
                (*m).to_owned(),
                c(before.modules[m].cpu_ticks, after.modules[m].cpu_ticks),
            )
        })
        .collect();
    let up = c(before.upstream_thread, after.upstream_thread);
    let journal = c(before.journal_thread, after.journal_thread);
    let leaves = c(before.leaf_thread, after.leaf_thread);
    let me = c(before.me.cpu_ticks, after.me.cpu_ticks);
    out.push((
        "bench process: runtime + tail".into(),
        me - up - journal - leaves,
    ));
    out.push(("bench process: edgeHub's journal thread".into(), journal));
    out.push(("bench process: $upstream writer thread".into(), up));
    out.push(("bench process: leaf devices (the load)".into(), leaves));
    out
}

fn print_cores(title: &str, c: &[(String, f64)]) {
    let total: f64 = c.iter().map(|(_, v)| v).sum();
    println!("  CPU {title} (cores; 2 available), total {total:.2}:");
    for (name, v) in c {
        println!("    {name:<48} {v:.2}");
    }
}

/// One line of a soak: seconds into the paced phase, messages sent, resident MB of each
/// module and of this process, MB of the runtime's state folder.
fn print_sample(p: &Pipeline, secs: u64, sent: usize) -> Result<()> {
    let u = usage(p)?;
    let mb = |kib: u64| kib as f64 / 1024.0;
    let modules: Vec<String> = MODULES
        .iter()
        .map(|m| format!("{m} {:.1}", mb(u.modules[m].rss_kib)))
        .collect();
    println!(
        "  soak {secs:>5} s {sent:>8} sent: VmRSS MB {}, bench process (edgeHub + load) {:.1}; state {:.1} MB",
        modules.join(", "),
        mb(u.me.rss_kib),
        dir_bytes(p.state()) as f64 / 1e6
    );
    Ok(())
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

fn print_memory(u: &Usage) {
    for m in MODULES {
        let s = u.modules[m];
        println!(
            "    {m:<24} VmRSS {:>6.1} MB  VmHWM {:>6.1} MB",
            s.rss_kib as f64 / 1024.0,
            s.hwm_kib as f64 / 1024.0
        );
    }
}

struct RunResult {
    sustained: f64,
    paced_p50: f64,
    paced_p99: f64,
    paced_seen_p99: f64,
    hwm: HashMap<&'static str, u64>,
    sustained_cpu: Vec<(String, f64)>,
}

async fn run(k: u64) -> Result<RunResult> {
    let devices = arg("--devices", 100) as usize;
    let sustained_n = arg("--messages", 200_000) as usize;
    let window_n = arg("--window", 4000) as usize;
    let rate = arg("--rate", 2000);
    let paced_secs = arg("--paced-secs", 15);
    let warmup = 2000usize;
    let paced_n = (rate * paced_secs) as usize;
    let total = warmup + paced_n + sustained_n;

    let mut manifest = pipeline::deployment_manifest(&[])?;
    // `--row-mode 1`: the classifier's per-row model instead of the manifest's history mode.
    if arg("--row-mode", 0) == 1 {
        manifest["modulesContent"][CLASSIFIER]["properties.desired"]["ScoringMode"] =
            serde_json::json!("row");
    }
    // edgeHub's window (messages in flight per module): the runtime's default unless told.
    let hub_window = arg("--hub-window", 0) as usize;
    // `--hub-routes 1`: IoT Hub's message routing with the tutorial's routes and storage
    // endpoints (deploy/iothub-routing.json) instead of the default (everything to events).
    let hub_config = (arg("--hub-routes", 0) == 1)
        .then(|| pipeline::repo_root().join("deploy/iothub-routing.json"));
    let p = Pipeline::start_with(&manifest, false, |o| {
        if hub_window > 0 {
            o.window = hub_window;
        }
        o.hub_config = hub_config;
    })
    .await?;
    p.wait_connected(Duration::from_secs(60)).await?;
    wait_for(
        "the classifier's model loaded",
        Duration::from_secs(60),
        || Ok((p.reported(CLASSIFIER)["ModelStatus"] == "loaded").then_some(())),
    )
    .await?;

    let rows = turbofan_domain::cmapss::read_rows(&pipeline::data_file("test_FD003.txt"))?;
    // The leaf devices run on a runtime of their own, off edgeHub's workers (as they would
    // be on other machines), and their thread's CPU is reported apart: it is the load's.
    let leaf_rt = LeafRuntime::start()?;
    let mut clients = Vec::with_capacity(devices);
    let mut ids = Vec::with_capacity(devices);
    for d in 0..devices {
        let id = format!("Load_{:03}", d + 1);
        let settings = p.leaf_settings(&id)?;
        let client = leaf_rt
            .handle
            .spawn(ModuleClient::connect(settings))
            .await?;
        clients.push(client.with_context(|| id.clone())?);
        ids.push(id);
    }
    let failures = Arc::new(AtomicU64::new(0));
    let leaves = Leaves::new(&leaf_rt.handle, clients, ids, rows, failures.clone());
    let ledger = Arc::new(Ledger::new(total));
    let window = Arc::new(Semaphore::new(window_n));
    let stop = Arc::new(AtomicBool::new(false));
    let follower = follow(
        Tail::of_state(p.state()),
        ledger.clone(),
        window.clone(),
        stop.clone(),
    );

    // Warm-up, then the paced phase.
    for n in 0..warmup {
        window.acquire().await?.forget();
        leaves.send(n, &ledger);
    }
    wait_all(&ledger, 0..warmup, Duration::from_secs(60)).await;
    let paced = warmup..warmup + paced_n;
    let before = usage(&p)?;
    let t0 = tokio::time::Instant::now();
    let sample_every = Duration::from_secs(arg("--sample-secs", 0));
    let mut next_sample = t0;
    for (i, n) in paced.clone().enumerate() {
        let due = t0 + Duration::from_secs_f64(i as f64 / rate as f64);
        if !sample_every.is_zero() && due >= next_sample {
            print_sample(&p, (due - t0).as_secs(), n - warmup)?;
            next_sample += sample_every;
        }
        tokio::time::sleep_until(due).await;
        window.acquire().await?.forget();
        leaves.send(n, &ledger);
    }
    let after = usage(&p)?;
    wait_all(&ledger, paced.clone(), Duration::from_secs(60)).await;
    let po = Outcome::of(&ledger, paced.clone());
    println!("run {k}:");
    println!(
        "  paced at {rate}/s: {} messages, {} lost, {} duplicated; {}",
        po.messages,
        po.lost,
        po.duplicates,
        po.latency()
    );
    print_cores(&format!("at {rate}/s"), &cores(&before, &after));

    // Sustained: as fast as the whole pipeline goes, at most `window` messages outstanding.
    let sustained = paced.end..total;
    let before = usage(&p)?;
    for n in sustained.clone() {
        window.acquire().await?.forget();
        leaves.send(n, &ledger);
    }
    wait_all(&ledger, sustained.clone(), Duration::from_secs(120)).await;
    let after = usage(&p)?;
    let so = Outcome::of(&ledger, sustained.clone());
    println!(
        "  sustained: {} messages in {:.1} s = {:.0} messages/s end to end; {} lost, {} duplicated; {}",
        so.messages,
        so.elapsed.as_secs_f64(),
        so.rate(),
        so.lost,
        so.duplicates,
        so.latency()
    );
    let sustained_cpu = cores(&before, &after);
    print_cores("sustained", &sustained_cpu);
    println!("  memory after the sustained phase:");
    print_memory(&after);

    // Nothing else came out, and the Avro writer archived every record.
    let archived = wait_for(
        "the Avro writer's RecordsWritten",
        Duration::from_secs(30),
        || {
            let n = p.writer_counter("RecordsWritten");
            Ok((n >= total as u64).then_some(n))
        },
    )
    .await
    .unwrap_or_else(|_| p.writer_counter("RecordsWritten"));
    stop.store(true, Ordering::Relaxed);
    follower
        .join()
        .map_err(|_| anyhow!("the upstream follower panicked"))??;
    let (dead, unknown) = (
        ledger.dead.load(Ordering::Relaxed),
        ledger.unknown.load(Ordering::Relaxed),
    );
    let send_failures = failures.load(Ordering::Relaxed);
    let queues = p.rt.hub.endpoint_stats();
    println!(
        "  checks: {archived} of {total} records archived; {dead} dead letters; {unknown} other upstream records; {send_failures} leaf sends failed; queues left: {}",
        [ROUTER, CLASSIFIER, WRITER]
            .iter()
            .map(|m| format!("{m} {}", queues.get(*m).map_or(0, |s| s.queued + s.in_flight)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let restarts: u32 = MODULES.iter().map(|m| p.restarts(m)).sum();
    if po.lost + so.lost > 0
        || po.duplicates + so.duplicates > 0
        || dead + unknown + send_failures > 0
        || archived < total as u64
        || restarts > 0
    {
        bail!("run {k} lost, duplicated or dead-lettered messages, or a module restarted");
    }
    let hwm = MODULES
        .iter()
        .map(|m| (*m, after.modules[m].hwm_kib))
        .collect();
    for c in &leaves.clients {
        c.close(Duration::from_secs(1)).await;
    }
    drop(leaves);
    drop(leaf_rt);
    p.shutdown().await;
    Ok(RunResult {
        sustained: so.rate(),
        paced_p50: percentile(&po.to_enqueued, 0.5) / 1000.0,
        paced_p99: percentile(&po.to_enqueued, 0.99) / 1000.0,
        paced_seen_p99: percentile(&po.to_observed, 0.99) / 1000.0,
        hwm,
        sustained_cpu,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

#[global_allocator]
static ALLOC: edge_client::Allocator = edge_client::Allocator;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let runs = arg("--runs", 1).max(1);
    let mut results = Vec::new();
    for k in 1..=runs {
        results.push(run(k).await?);
    }
    println!("\nmedian of {runs} run(s):");
    println!(
        "  sustained {:.0} messages/s; at {}/s: p50 {:.2} ms, p99 {:.2} ms to enqueued, p99 {:.2} ms seen in the store",
        median(results.iter().map(|r| r.sustained).collect()),
        arg("--rate", 2000),
        median(results.iter().map(|r| r.paced_p50).collect()),
        median(results.iter().map(|r| r.paced_p99).collect()),
        median(results.iter().map(|r| r.paced_seen_p99).collect()),
    );
    for m in MODULES {
        println!(
            "  {m:<24} VmHWM {:.1} MB (median)",
            median(results.iter().map(|r| r.hwm[m] as f64 / 1024.0).collect())
        );
    }
    if let Some(first) = results.first() {
        for (i, (name, _)) in first.sustained_cpu.iter().enumerate() {
            let v = median(results.iter().map(|r| r.sustained_cpu[i].1).collect());
            println!("  CPU sustained {name:<48} {v:.2} cores (median)");
        }
    }
    Ok(())
}
