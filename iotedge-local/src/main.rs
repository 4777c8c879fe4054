//! `iotedge-local`: run a deployment manifest locally, manage leaf devices and twins, and
//! watch what reaches IoT Hub.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use edge_protocol::ConnectionString;
use iotedge_local::{Options, Runtime};
use runtime_state::KeyStore;
use runtime_state::{control, layout};
use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead, Seek, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "iotedge-local",
    version,
    about = "A local IoT Edge runtime: edgeHub, workload API, edgeAgent and the IoT Hub side, for one deployment manifest, without Docker or Azure."
)]
struct Cli {
    #[command(flatten)]
    state: runtime_state::StateArg,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the manifest: edgeHub, workload API, and every module as a local process.
    Run {
        /// Deployment manifest (placeholders are tolerated).
        #[arg(long, default_value = "deployment.template.json")]
        manifest: PathBuf,
        /// edgeHub's MQTT/TLS port (the Azure IoT SDKs only use 8883).
        #[arg(long, default_value_t = 8883)]
        mqtt_port: u16,
        /// IoT Hub host name of the identities.
        #[arg(long, default_value = "local-hub.azure-devices.net")]
        hub_hostname: String,
        /// Edge device id.
        #[arg(long, default_value = "edge-device")]
        device_id: String,
        /// Gateway host name given to modules and leaf devices.
        #[arg(long, default_value = "localhost")]
        gateway_hostname: String,
        /// Folder with the module binaries (default: next to this program).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Run MODULE with a shell command instead of its binary: MODULE=COMMAND.
        #[arg(long, value_name = "MODULE=COMMAND")]
        exec: Vec<String>,
        /// Do not start MODULE (its identity, queue and workload socket still exist).
        #[arg(long, value_name = "MODULE")]
        skip: Vec<String>,
        /// Store uploaded files in Azurite, started from this `azurite-blob` launcher
        /// (scripts/setup-node.sh prints it); default: a folder of the state.
        #[arg(long, value_name = "PATH")]
        azurite: Option<PathBuf>,
        /// Where edgeHub serves Prometheus metrics (`/metrics`), or `off`; each module
        /// serves its own metrics and health checks on the ports after it, in manifest order
        /// (port 0: free ports). `iotedge-local status` and the state's runtime.json list them.
        #[arg(long, default_value = "127.0.0.1:9600", value_name = "ADDR")]
        metrics: String,
        /// MiB of queued messages each module queue keeps in memory; the rest of a backlog
        /// waits on disk, in the message store.
        #[arg(long, default_value_t = 8, value_name = "MIB")]
        queue_memory_mb: usize,
        /// What each leaf device may publish, in IoT Hub's 4 KB message units per second
        /// (a 0.7 KB row is one unit), with a burst of 2 s; past it edgeHub reads the
        /// device's connection more slowly (traffic shaping, as IoT Hub does). 0: no limit.
        #[arg(long, default_value_t = iotedge_local::edgehub::throttle::DEFAULT_UNITS_PER_SEC, value_name = "UNITS")]
        device_send_limit: u32,
        #[command(flatten)]
        containers: ContainerArgs,
        /// IoT Hub's message routing: routes, storage endpoints and fallback route, in the
        /// shape of a hub's `properties.routing` (docs/deploy.md). Default: IoT Hub's,
        /// everything to the built-in `events` endpoint.
        #[arg(long, value_name = "FILE")]
        hub_config: Option<PathBuf>,
    },
    /// Leaf devices in the registry.
    Device {
        #[command(subcommand)]
        command: DeviceCommand,
    },
    /// Module twins on the running runtime.
    Twin {
        #[command(subcommand)]
        command: TwinCommand,
    },
    /// Stream messages arriving in IoT Hub ($upstream), as JSON lines.
    Monitor {
        /// Only messages from this device (connection device id).
        #[arg(long)]
        device: Option<String>,
        /// Only messages from this module.
        #[arg(long)]
        module: Option<String>,
        /// Only messages whose body has PredictedRul below this value.
        #[arg(long)]
        rul_below: Option<f64>,
        /// Start with the messages already stored.
        #[arg(long)]
        from_start: bool,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// Exit after this many seconds.
        #[arg(long)]
        timeout: Option<f64>,
        /// Only messages IoT Hub's routing sent to this endpoint (`events`, the built-in
        /// one, or a storage endpoint of the hub configuration).
        #[arg(long)]
        endpoint: Option<String>,
    },
    /// IoT Hub's message routing: test routes on a message or on the stored messages.
    Route {
        #[command(subcommand)]
        command: RouteCommand,
    },
    /// Counters and queues of the running runtime, and each module process.
    Status,
    /// Check this machine for `run`, as `iotedge check` does a device: configuration,
    /// certificates, ports, models, disk, clock; a verdict each. Exits 1 on an error.
    Check {
        /// Deployment manifest.
        #[arg(long, default_value = "deployment.template.json")]
        manifest: PathBuf,
        /// edgeHub's MQTT/TLS port.
        #[arg(long, default_value_t = 8883)]
        mqtt_port: u16,
        /// edgeHub's metrics address, or `off`.
        #[arg(long, default_value = "127.0.0.1:9600", value_name = "ADDR")]
        metrics: String,
        /// Gateway host name edgeHub's certificate must carry.
        #[arg(long, default_value = "localhost")]
        gateway_hostname: String,
        /// Folder with the module binaries (default: next to this program).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Modules that need no program here (run with --exec, or --skip).
        #[arg(long, value_name = "MODULE")]
        skip: Vec<String>,
        #[command(flatten)]
        containers: ContainerArgs,
    },
    /// Print a module's log (its stdout and stderr, `logs/<module>.log` in the state).
    Logs {
        /// The module.
        module: String,
        /// Only the last N lines.
        #[arg(long, value_name = "N")]
        tail: Option<usize>,
        /// Keep printing what the module writes (Ctrl-C to stop).
        #[arg(short, long)]
        follow: bool,
    },
    /// Restart a module's process now (SIGTERM, then started again), whatever its
    /// restartPolicy.
    Restart {
        /// The module.
        module: String,
    },
    /// Call a module's direct method and print its answer (`{"status", "payload"}`); every
    /// module answers `ping` and `status`. Exits 1 if the status is not 2xx.
    Invoke {
        /// The module.
        module: String,
        /// The method's name.
        method: String,
        /// The JSON payload.
        #[arg(default_value = "null")]
        payload: String,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
    },
}

#[derive(Subcommand)]
enum RouteCommand {
    /// Which routes and endpoints a message reaches (as the portal's "Test route"), or, with
    /// --store, where every message already in IoT Hub would go. Exits 1 on an invalid
    /// configuration or query, naming the route and the position.
    Test {
        /// Hub configuration (default: the one the runtime of --state applies).
        #[arg(long, value_name = "FILE")]
        hub_config: Option<PathBuf>,
        /// Test this query alone instead of the configuration's routes.
        #[arg(long)]
        query: Option<String>,
        /// The message body (JSON text, sent as UTF-8 JSON unless --system says otherwise).
        #[arg(long, default_value = "{}")]
        body: String,
        /// Application property NAME=VALUE (repeatable).
        #[arg(long = "property", value_name = "NAME=VALUE")]
        properties: Vec<String>,
        /// System property NAME=VALUE, e.g. connectionDeviceId=Client_001 (repeatable).
        #[arg(long = "system", value_name = "NAME=VALUE")]
        system: Vec<String>,
        /// Route every message of the store instead, and count.
        #[arg(long)]
        store: bool,
        /// With --store: print each message's routes and endpoints, one JSON line each.
        #[arg(long)]
        each: bool,
    },
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// Register a leaf device (if new) and print its connection string.
    Add {
        /// Device id.
        id: String,
        /// IoT Hub host name.
        #[arg(long, default_value = "local-hub.azure-devices.net")]
        hub_hostname: String,
        /// Gateway host name for the connection string.
        #[arg(long, default_value = "localhost")]
        gateway_hostname: String,
    },
    /// List registered leaf devices.
    List,
}

#[derive(Subcommand)]
enum TwinCommand {
    /// Merge a JSON patch into a module's desired properties; the module receives it.
    Set {
        /// Module name.
        module: String,
        /// JSON object (null removes a property).
        patch: String,
    },
    /// Print a module's twin.
    Get {
        /// Module name.
        module: String,
    },
}

/// Container mode's options.
#[derive(clap::Args)]
struct ContainerArgs {
    /// Run each module from its image in a container engine (Docker, or Podman's API), as
    /// edgeAgent does, instead of as a local process.
    #[arg(long)]
    containers: bool,
    /// The engine's API socket (default: DOCKER_HOST, else unix:///var/run/docker.sock).
    #[arg(long, value_name = "URI", requires = "containers")]
    engine: Option<String>,
    /// The images docker/build-images.sh built (out/images.json), for the manifest's
    /// ${MODULES.x} placeholders.
    #[arg(long, value_name = "FILE", requires = "containers")]
    images: Option<PathBuf>,
    /// The image to run for MODULE (over --images and the manifest).
    #[arg(long, value_name = "MODULE=IMAGE", requires = "containers")]
    image: Vec<String>,
}

impl ContainerArgs {
    fn mode(self) -> Result<Option<iotedge_local::agent::container::ContainerMode>> {
        use iotedge_local::agent::container::ContainerMode;
        if !self.containers {
            return Ok(None);
        }
        let mut mode = ContainerMode {
            engine: self.engine.unwrap_or_else(ContainerMode::default_engine),
            ..Default::default()
        };
        if let Some(f) = &self.images {
            mode.read_images_file(f).map_err(anyhow::Error::msg)?;
        }
        for (module, image) in parse_pairs(&self.image, "--image", "MODULE=IMAGE")? {
            mode.images.insert(module, image);
        }
        Ok(Some(mode))
    }
}

fn parse_pairs(items: &[String], flag: &str, form: &str) -> Result<HashMap<String, String>> {
    items
        .iter()
        .map(|s| {
            s.split_once('=')
                .map(|(m, c)| (m.to_owned(), c.to_owned()))
                .with_context(|| format!("{flag} '{s}' must be {form}"))
        })
        .collect()
}

#[global_allocator]
static ALLOC: edge_process::Allocator = edge_process::Allocator;

/// Exits 0 on success; 1 on an error (printed on stderr), when `check` finds an error, or when
/// the method `invoke` calls answers with a status that is not 2xx.
#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    edge_process::logging::init_or("info");
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints `answer` as indented JSON, its keys in order.
fn print_pretty(answer: &impl serde::Serialize) -> Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::to_value(answer)?)?
    );
    Ok(())
}

/// Runs the command; the exit code when it did its job but the result is a failure.
async fn run(cli: Cli) -> Result<ExitCode> {
    let state = cli.state.dir;
    match cli.command {
        Command::Run {
            manifest,
            mqtt_port,
            hub_hostname,
            device_id,
            gateway_hostname,
            bin_dir,
            exec,
            skip,
            azurite,
            metrics,
            queue_memory_mb,
            device_send_limit,
            containers,
            hub_config,
        } => {
            let mut opts = Options::new(manifest, &state);
            opts.queue_memory = queue_memory_mb.saturating_mul(1024 * 1024);
            opts.device_units_per_sec = device_send_limit;
            opts.mqtt_port = mqtt_port;
            opts.hub_hostname = hub_hostname;
            opts.device_id = device_id;
            opts.gateway_hostname = gateway_hostname;
            opts.bin_dir = bin_dir;
            opts.exec = parse_pairs(&exec, "--exec", "MODULE=COMMAND")?;
            opts.skip = skip;
            opts.azurite = azurite;
            opts.metrics = edge_process::observe::parse_addr(Some(&metrics))?;
            opts.containers = containers.mode()?;
            opts.hub_config = hub_config;
            let rt = Runtime::start(opts).await?;
            for (name, addr) in &rt.metrics {
                eprintln!("iotedge-local: {name} metrics on http://{addr}/metrics");
            }
            eprintln!(
                "iotedge-local: edgeHub on mqtts://localhost:{}, state in {}; Ctrl-C to stop",
                rt.mqtt_port,
                rt.state_dir().display()
            );
            shutdown_signal().await;
            rt.shutdown().await;
        }
        Command::Device {
            command:
                DeviceCommand::Add {
                    id,
                    hub_hostname,
                    gateway_hostname,
                },
        } => {
            edge_protocol::identity::check_id(&id)
                .with_context(|| "the device id is refused".to_string())?;
            let key = KeyStore::new(layout::registry(&state)).ensure(&id)?;
            let cs = ConnectionString {
                host_name: hub_hostname,
                device_id: id,
                module_id: None,
                shared_access_key: key,
                gateway_host_name: Some(gateway_hostname),
            };
            println!("{cs}");
        }
        Command::Device {
            command: DeviceCommand::List,
        } => {
            for id in KeyStore::new(layout::registry(&state)).ids() {
                println!("{id}");
            }
        }
        Command::Twin {
            command: TwinCommand::Set { module, patch },
        } => {
            let patch: Value = serde_json::from_str(&patch).context("the patch is not JSON")?;
            let Value::Object(patch) = patch else {
                bail!("the patch must be a JSON object");
            };
            let r =
                control::patch_desired(&layout::control_socket(&state), &module, &patch).await?;
            println!("{}", serde_json::to_value(r)?);
        }
        Command::Twin {
            command: TwinCommand::Get { module },
        } => {
            let r = control::twin(&layout::control_socket(&state), &module).await?;
            print_pretty(&r)?;
        }
        Command::Invoke {
            module,
            method,
            payload,
            timeout,
        } => {
            let payload: Value = serde_json::from_str(&payload)
                .with_context(|| format!("the payload '{payload}' is not JSON"))?;
            let call = control::MethodCall {
                method_name: method,
                payload,
                response_timeout_in_seconds: Some(timeout),
            };
            let r = control::invoke(&layout::control_socket(&state), &module, &call).await?;
            print_pretty(&r)?;
            if !r.is_success() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Status => {
            let socket = layout::control_socket(&state);
            let mut r = serde_json::to_value(control::status(&socket).await?)?;
            r["processes"] = serde_json::to_value(control::processes(&socket).await?)?;
            print_pretty(&r)?;
        }
        Command::Check {
            manifest,
            mqtt_port,
            metrics,
            gateway_hostname,
            bin_dir,
            skip,
            containers,
        } => {
            let bin_dir = match bin_dir {
                Some(d) => d,
                None => std::env::current_exe()?
                    .parent()
                    .map(PathBuf::from)
                    .unwrap_or_default(),
            };
            let inputs = iotedge_local::check::Inputs {
                manifest,
                state: state.clone(),
                bin_dir,
                models_dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"),
                bind: std::net::IpAddr::from([127, 0, 0, 1]),
                mqtt_port,
                metrics: edge_process::observe::parse_addr(Some(&metrics))?,
                gateway_hostname,
                no_program: skip,
                containers: containers.mode()?,
            };
            if !iotedge_local::check::print(&iotedge_local::check::run_all(&inputs).await) {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Logs {
            module,
            tail,
            follow,
        } => {
            let path = layout::module_log(&state, &module);
            iotedge_local::logs::print(&path, &module, tail, follow).await?;
        }
        Command::Restart { module } => {
            let r = control::restart(&layout::control_socket(&state), &module).await?;
            print_pretty(&r)?;
        }
        Command::Monitor {
            device,
            module,
            rul_below,
            from_start,
            count,
            timeout,
            endpoint,
        } => {
            let filter = MonitorFilter {
                device,
                module,
                rul_below,
                endpoint,
            };
            monitor(
                &layout::upstream_store(&state),
                &filter,
                from_start,
                count,
                timeout,
            )
            .await?;
        }
        Command::Route {
            command:
                RouteCommand::Test {
                    hub_config,
                    query,
                    body,
                    properties,
                    system,
                    store,
                    each,
                },
        } => route_test(
            &state,
            hub_config,
            query,
            &body,
            &properties,
            &system,
            store,
            each,
        )?,
    }
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::too_many_arguments)]
fn route_test(
    state: &std::path::Path,
    hub_config: Option<PathBuf>,
    query: Option<String>,
    body: &str,
    properties: &[String],
    system: &[String],
    store: bool,
    each: bool,
) -> Result<()> {
    use iotedge_local::iothub::route_test;
    use iotedge_local::iothub::routing::{HubConfig, HubRouting, MessageRef};
    if let Some(q) = query {
        let m = route_test::message(body, properties, system)?;
        println!("{}", route_test::test_query(&q, &m)?);
        return Ok(());
    }
    let path = hub_config.unwrap_or_else(|| layout::hub_config(state));
    let config = if path.exists() {
        HubConfig::read(&path)?
    } else {
        eprintln!(
            "route test: no hub configuration at {}: IoT Hub's default (everything to events)",
            path.display()
        );
        HubConfig::default()
    };
    let routing = HubRouting::new(config)?;
    if !store {
        let m = route_test::message(body, properties, system)?;
        print!("{}", route_test::explain(&routing, &MessageRef::new(&m)));
        return Ok(());
    }
    let s = route_test::test_store(&routing, &layout::upstream_store(state), |seq, r, e| {
        if each {
            println!(
                "{}",
                serde_json::json!({"seq": seq, "routes": r, "endpoints": e})
            );
        }
    })?;
    println!("{} messages in the store", s.messages);
    for (name, n) in &s.routes {
        println!("  route {name}: {n}");
    }
    for (name, n) in &s.endpoints {
        println!("  endpoint {name}: {n}");
    }
    println!("  dropped (no route, no fallback): {}", s.dropped);
    if s.unreadable > 0 {
        println!("  lines that are not records: {}", s.unreadable);
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

struct MonitorFilter {
    device: Option<String>,
    module: Option<String>,
    rul_below: Option<f64>,
    endpoint: Option<String>,
}

impl MonitorFilter {
    fn accepts(&self, r: &Value) -> bool {
        let is = |field: &str, want: &Option<String>| {
            want.as_ref()
                .is_none_or(|w| r.get(field).and_then(Value::as_str) == Some(w.as_str()))
        };
        let rul_ok = self.rul_below.is_none_or(|limit| {
            r.pointer("/payload/PredictedRul")
                .and_then(Value::as_f64)
                .is_some_and(|v| v < limit)
        });
        // A record from before routing went to the built-in endpoint.
        let endpoint_ok = self.endpoint.as_ref().is_none_or(|want| {
            match r.get("endpoints").and_then(Value::as_array) {
                Some(e) => e.iter().any(|e| e.as_str() == Some(want.as_str())),
                None => want == "events",
            }
        });
        is("origin", &self.device) && is("module", &self.module) && rul_ok && endpoint_ok
    }

    /// What to print for a store line, if the filter takes it. A record is never skipped
    /// for not reading back as a JSON value (a payload nested deeper than the parser goes,
    /// a number out of range): it is printed as stored, if its origin and module pass the
    /// filter, with a note on stderr.
    fn show(&self, line: &str) -> Option<String> {
        match serde_json::from_str::<Value>(line) {
            Ok(record) => self.accepts(&record).then(|| record.to_string()),
            Err(e) => {
                #[derive(serde::Deserialize)]
                struct Outline {
                    origin: Option<String>,
                    module: Option<String>,
                }
                let outline = serde_json::from_str::<Outline>(line).ok();
                let is = |want: &Option<String>, got: Option<&String>| {
                    want.as_ref().is_none_or(|w| got == Some(w))
                };
                let (origin, module) = match &outline {
                    Some(o) => (o.origin.as_ref(), o.module.as_ref()),
                    None => (None, None),
                };
                if !(is(&self.device, origin) && is(&self.module, module)) {
                    return None;
                }
                eprintln!(
                    "monitor: the next record does not read as a JSON value ({e}); shown as stored"
                );
                Some(line.to_owned())
            }
        }
    }
}

/// Follows the upstream store like `tail -f`, printing matching records.
async fn monitor(
    path: &std::path::Path,
    filter: &MonitorFilter,
    from_start: bool,
    count: Option<u64>,
    timeout: Option<f64>,
) -> Result<()> {
    let deadline = timeout.map(|t| tokio::time::Instant::now() + Duration::from_secs_f64(t));
    let mut printed = 0u64;
    let mut pos = 0u64;
    let mut first = true;
    let mut partial = String::new();
    let stdout = std::io::stdout();
    loop {
        if let Ok(mut f) = std::fs::File::open(path) {
            let len = f.metadata()?.len();
            if first && !from_start {
                pos = len;
            }
            if len < pos {
                pos = 0; // store was recreated
            }
            f.seek(std::io::SeekFrom::Start(pos))?;
            let mut reader = std::io::BufReader::new(f);
            let mut line = String::new();
            while reader.read_line(&mut line)? > 0 {
                pos += line.len() as u64;
                if !line.ends_with('\n') {
                    partial.push_str(&line);
                    line.clear();
                    continue;
                }
                let full = std::mem::take(&mut partial) + line.trim_end();
                line.clear();
                let shown = filter.show(&full);
                if let Some(text) = shown {
                    let mut out = stdout.lock();
                    writeln!(out, "{text}")?;
                    out.flush()?;
                    printed += 1;
                    if count.is_some_and(|c| printed >= c) {
                        return Ok(());
                    }
                }
            }
        }
        first = false;
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod monitor_tests {
    use super::*;

    fn filter(device: Option<&str>) -> MonitorFilter {
        MonitorFilter {
            device: device.map(str::to_owned),
            module: None,
            rul_below: None,
            endpoint: None,
        }
    }

    #[test]
    fn an_endpoint_filter_takes_what_routing_sent_there() {
        let f = MonitorFilter {
            endpoint: Some("ruldata".into()),
            ..filter(None)
        };
        assert!(f.show(r#"{"seq":1,"endpoints":["ruldata"]}"#).is_some());
        assert!(f.show(r#"{"seq":1,"endpoints":["events"]}"#).is_none());
        let events = MonitorFilter {
            endpoint: Some("events".into()),
            ..filter(None)
        };
        assert!(
            events.show(r#"{"seq":1}"#).is_some(),
            "stored before routing"
        );
        assert!(events.show(r#"{"seq":1,"endpoints":[]}"#).is_none());
    }

    #[test]
    fn records_that_do_not_read_as_json_values_are_shown_as_stored_not_skipped() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        for payload in [deep.as_str(), "1e400"] {
            let line = format!(
                r#"{{"seq":1,"origin":"Client_001","payload":{payload},"payloadEncoding":"json"}}"#
            );
            assert!(serde_json::from_str::<Value>(&line).is_err());
            assert_eq!(filter(None).show(&line).as_deref(), Some(line.as_str()));
            assert_eq!(
                filter(Some("Client_001")).show(&line).as_deref(),
                Some(line.as_str())
            );
            assert_eq!(
                filter(Some("Client_002")).show(&line),
                None,
                "filtered by origin"
            );
        }
        let plain = r#"{"seq":2,"origin":"Client_001","payload":{"PredictedRul":5}}"#;
        assert!(filter(None).show(plain).is_some());
        assert!(filter(Some("x")).show(plain).is_none());
    }
}
