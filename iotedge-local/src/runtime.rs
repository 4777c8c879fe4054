//! Assembles the runtime from a manifest: state folder, identities, TLS, edgeHub, workload
//! sockets, edgeAgent, management API.

use crate::agent::container::{self, ContainerMode, ContainerSpec, Engine, ImageFacts};
use crate::agent::manifest::{Manifest, ModuleSpec};
use crate::agent::{self, Agent, Launch, Program};
use crate::control;
use crate::edgehub::broker;
use crate::edgehub::endpoint;
use crate::edgehub::hub::{Hub, HubConfig, RouteError};
use crate::edgehub::journal::{self, Journal};
use crate::edgehub::twin::Twins;
use crate::iothub::upstream::Upstream;
use crate::workload::{self, certs};
use anyhow::{bail, Context, Result};
use edge_process::observe::{self, Exporter};
use edge_protocol::env::ModuleEnv;
use runtime_state::{layout, KeyStore};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

/// How to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Deployment manifest.
    pub manifest: PathBuf,
    /// Folder for all state.
    pub state_dir: PathBuf,
    /// edgeHub's MQTT/TLS port (0: any free port).
    pub mqtt_port: u16,
    /// Address to listen on.
    pub bind: IpAddr,
    /// IoT Hub host name the identities belong to.
    pub hub_hostname: String,
    /// The edge device id.
    pub device_id: String,
    /// Host name modules and leaf devices connect to.
    pub gateway_hostname: String,
    /// Where module binaries are (default: next to this program).
    pub bin_dir: Option<PathBuf>,
    /// Module → shell command replacing its program.
    pub exec: HashMap<String, String>,
    /// Modules not to start.
    pub skip: Vec<String>,
    /// Start module processes at all.
    pub start_modules: bool,
    /// Messages in flight per module (sent, not yet acknowledged). 1,024 keeps a module
    /// that acknowledges after its own outputs are stored (the router) busy while edgeHub
    /// syncs its journal; docs/decisions.md has the trade-off with the module's memory.
    pub window: usize,
    /// Bytes of queued messages each module queue keeps in memory; the rest of a backlog
    /// waits on disk in the message store.
    pub queue_memory: usize,
    /// Each leaf device's publishes in IoT Hub's 4 KB units per second before edgeHub takes
    /// them more slowly (traffic shaping, as IoT Hub does); 0: not shaped.
    pub device_units_per_sec: u32,
    /// IoT Hub's HTTPS port for file upload (0: any free port).
    pub hub_https_port: u16,
    /// Azurite's `azurite-blob` launcher; without it blobs go to a folder of the state.
    pub azurite: Option<PathBuf>,
    /// Blob container of file uploads.
    pub upload_container: String,
    /// Where edgeHub serves its Prometheus metrics (`None`: nowhere, and modules get
    /// `METRICS_ADDR=off`). Each module gets the next port (port 0: a free one each), unless
    /// its manifest `env` sets `METRICS_ADDR`.
    pub metrics: Option<SocketAddr>,
    /// Run each module from its image in a container engine, as edgeAgent does, instead of
    /// as a local process.
    pub containers: Option<ContainerMode>,
    /// IoT Hub's message routing: routes, storage endpoints, fallback route
    /// (`iothub::routing`). None: IoT Hub's default, everything to the built-in endpoint.
    pub hub_config: Option<PathBuf>,
}

impl Options {
    /// Defaults for a manifest and a state folder.
    pub fn new(manifest: impl Into<PathBuf>, state_dir: impl Into<PathBuf>) -> Options {
        Options {
            manifest: manifest.into(),
            state_dir: state_dir.into(),
            mqtt_port: 8883,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            hub_hostname: "local-hub.azure-devices.net".into(),
            device_id: "edge-device".into(),
            gateway_hostname: "localhost".into(),
            bin_dir: None,
            exec: HashMap::new(),
            skip: Vec::new(),
            start_modules: true,
            window: 1024,
            queue_memory: endpoint::QUEUE_MEMORY,
            device_units_per_sec: crate::edgehub::throttle::DEFAULT_UNITS_PER_SEC,
            hub_https_port: 0,
            azurite: None,
            upload_container: "avrofiles".into(),
            metrics: None,
            containers: None,
            hub_config: None,
        }
    }
}

/// How the modules of a manifest run: processes from binaries here, or containers.
enum Modules {
    Processes(HashMap<String, Program>),
    Containers {
        engine: Arc<Engine>,
        images: HashMap<String, (String, ImageFacts)>,
    },
}

/// Finds what each module to start runs, before anything starts: its program, or (container
/// mode) its image in the engine; every problem at once.
async fn resolve_modules(opts: &Options, manifest: &Manifest) -> Result<Modules> {
    let wanted = manifest
        .modules
        .iter()
        .filter(|m| !opts.skip.contains(&m.name) && m.status == "running" && opts.start_modules);
    let mut problems = Vec::new();
    let modules = match &opts.containers {
        None => {
            let bin_dir = match &opts.bin_dir {
                Some(d) => d.clone(),
                None => std::env::current_exe()?
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_default(),
            };
            let mut programs = HashMap::new();
            for m in wanted {
                match agent::resolve_program(&m.name, &m.image, opts.exec.get(&m.name), &bin_dir) {
                    Ok(p) => {
                        programs.insert(m.name.clone(), p);
                    }
                    Err(e) => problems.push(e),
                }
            }
            Modules::Processes(programs)
        }
        Some(mode) => {
            let engine = Arc::new(
                Engine::connect(&mode.engine)
                    .await
                    .map_err(anyhow::Error::msg)?,
            );
            info!(engine = %engine.description, gpu = engine.gpu, "container mode");
            for m in wanted.clone().filter(|m| opts.exec.contains_key(&m.name)) {
                problems.push(format!("module '{}': --exec runs a process; in container mode a module runs its image (--image {}=IMAGE)", m.name, m.name));
            }
            let (images, wrong) = engine
                .images_for(mode, wanted.filter(|m| !opts.exec.contains_key(&m.name)))
                .await;
            problems.extend(wrong);
            Modules::Containers { engine, images }
        }
    };
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    Ok(modules)
}

/// The file naming the engine a runtime in container mode runs its containers in, while it
/// runs: a runtime started later on the same state, in either mode, removes what a crashed
/// one left there.
const CONTAINERS_MARKER: &str = "containers.json";

async fn remove_earlier_containers(
    state: &Path,
    modules: &Modules,
    mode: Option<&ContainerMode>,
) -> Result<()> {
    let marker = state.join(CONTAINERS_MARKER);
    let earlier = std::fs::read(&marker)
        .ok()
        .and_then(|t| serde_json::from_slice::<Value>(&t).ok())
        .and_then(|v| Some(v.get("engine")?.as_str()?.to_owned()));
    let mut unreachable = false;
    if let Some(uri) = earlier.filter(|u| mode.is_none_or(|m| m.engine != *u)) {
        match Engine::connect(&uri).await {
            Ok(e) => {
                e.remove_leftovers(state)
                    .await
                    .map_err(anyhow::Error::msg)?;
            }
            Err(e) => {
                warn!(engine = %uri, error = %e, "an earlier runtime on this state ran containers in an engine that does not answer now; they may still run (the next start tries again)");
                unreachable = true;
            }
        }
    }
    match (modules, mode) {
        (Modules::Containers { engine, .. }, Some(mode)) => {
            engine
                .remove_leftovers(state)
                .await
                .map_err(anyhow::Error::msg)?;
            std::fs::write(
                &marker,
                serde_json::json!({"engine": mode.engine}).to_string(),
            )
            .with_context(|| format!("writing {}", marker.display()))?;
        }
        _ if !unreachable => {
            let _ = std::fs::remove_file(&marker);
        }
        _ => {}
    }
    Ok(())
}

/// A module's container: its create body from the manifest's createOptions, binds mapped
/// into the state folder and given to the module's user, as preparing a device does.
fn container_spec(
    state: &Path,
    m: &ModuleSpec,
    engine: &Arc<Engine>,
    image: String,
    env: &[(String, String)],
    owner: Option<workload::SocketOwner>,
    gateway_hostname: &str,
) -> Result<ContainerSpec> {
    let mut binds = Vec::new();
    for b in &m.binds {
        let local = bind_dir(state, &b.host, &b.container)?;
        if let Some(o) = owner {
            if let Err(e) = container::give_to(&local, o.uid, o.gid) {
                warn!(module = %m.name, path = %local.display(), error = %e, "cannot give the bind to the module's user; it may not be able to use it");
            }
        }
        binds.push(match &b.options {
            Some(o) => format!("{}:{}:{o}", local.display(), b.container),
            None => format!("{}:{}", local.display(), b.container),
        });
    }
    let name = container::container_name(state, &m.name);
    let labels = BTreeMap::from([
        (
            container::STATE_LABEL.to_owned(),
            state.display().to_string(),
        ),
        (container::MODULE_LABEL.to_owned(), m.name.clone()),
    ]);
    let extra_hosts = if gateway_hostname == "localhost" {
        vec![]
    } else {
        vec![format!("{gateway_hostname}:127.0.0.1")]
    };
    let (body, notes) = container::create_body(
        &m.create_options,
        container::Additions {
            image: &image,
            env,
            binds,
            workload_socket: &layout::workload_socket(state, &m.name),
            labels,
            ulimits: container::host_ulimits(),
            extra_hosts,
        },
    )
    .map_err(|e| anyhow::anyhow!("module '{}': {e}", m.name))?;
    for n in notes {
        info!(module = %m.name, "{n}");
    }
    Ok(ContainerSpec::new(engine.clone(), name, image, body))
}

/// A running runtime.
pub struct Runtime {
    /// edgeHub's state.
    pub hub: Arc<Hub>,
    /// The MQTT/TLS port edgeHub listens on.
    pub mqtt_port: u16,
    /// Routes of the manifest that did not parse.
    pub route_errors: Vec<RouteError>,
    /// PEM of the CA that edgeHub's certificate chains to.
    pub ca_pem: String,
    /// IoT Hub's file-upload service.
    pub files: Arc<crate::iothub::files::FileService>,
    /// Where uploaded files are stored.
    pub blob_store: crate::iothub::files::BlobStore,
    /// Where edgeHub (`edgeHub`) and each module serve metrics and health checks.
    pub metrics: BTreeMap<String, SocketAddr>,
    azurite: Option<crate::iothub::files::Azurite>,
    /// Storage endpoints' writers, and what tells them to write what waits and stop.
    endpoints: (watch::Sender<bool>, Vec<JoinHandle<()>>),
    envs: HashMap<String, Vec<(String, String)>>,
    agent: Option<Agent>,
    tasks: Vec<JoinHandle<()>>,
    state_dir: PathBuf,
}

/// Environment variables a module process inherits from the runtime's own environment
/// (a container would have its image's; these keep local tools working).
const PASS_THROUGH: [&str; 9] = [
    "PATH",
    "HOME",
    "LANG",
    "TMPDIR",
    "RUST_LOG",
    "RUST_BACKTRACE",
    "LD_LIBRARY_PATH",
    "ORT_DYLIB_PATH",
    "PYTHONPATH",
];

/// What a container's environment takes from the runtime's: the log settings.
const LOG_SETTINGS: [&str; 2] = ["RUST_LOG", "RUST_BACKTRACE"];

/// Writes the edge device's identity where IoT Edge keeps it (1.2+ `config.toml`, 1.1
/// `config.yaml`), under the bind folders, so a module that bind-mounts the file finds it.
/// They hold the device key: readable by their owner only (0600), as on a device.
fn write_device_config(state: &Path, hub: &str, device: &str, key: &str) -> Result<()> {
    let cs = format!("HostName={hub};DeviceId={device};SharedAccessKey={key}");
    let toml_path = state.join("binds/etc/aziot/config.toml");
    let yaml_path = state.join("binds/etc/iotedge/config.yaml");
    for p in [&toml_path, &yaml_path] {
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d)?;
        }
    }
    runtime_state::write_private(
        &toml_path,
        format!("# Written by iotedge-local: this edge device's identity.\nhostname = \"{device}\"\n\n[provisioning]\nsource = \"manual\"\nconnection_string = \"{cs}\"\n").as_bytes(),
    )?;
    runtime_state::write_private(
        &yaml_path,
        format!("# Written by iotedge-local: this edge device's identity.\nprovisioning:\n  source: \"manual\"\n  device_connection_string: \"{cs}\"\nhostname: \"{device}\"\n").as_bytes(),
    )?;
    Ok(())
}

fn bind_dir(state: &Path, host: &str, container: &str) -> Result<PathBuf> {
    use std::path::Component;
    let inside = Path::new(host.trim_start_matches('/'));
    if inside.as_os_str().is_empty()
        || inside
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
    {
        bail!("bind '{host}:{container}': the host path must name a folder or file below / without '..' (it is mapped into the state folder)");
    }
    let local = state.join("binds").join(inside);
    // A bind of a file (e.g. a config file) gets its folder; a directory is created.
    let is_file = Path::new(container).extension().is_some();
    let dir = if is_file {
        local.parent().unwrap_or(&local).to_path_buf()
    } else {
        local.clone()
    };
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating bind folder {}", dir.display()))?;
    Ok(local)
}

/// Where module number `i` of the manifest serves its metrics: the port after edgeHub's and
/// the modules before it, or a free port if edgeHub's is 0.
fn module_metrics_addr(base: SocketAddr, i: usize) -> Result<SocketAddr> {
    let port = if base.port() == 0 {
        std::net::TcpListener::bind(SocketAddr::new(base.ip(), 0))
            .and_then(|l| l.local_addr())
            .context("finding a free port for a module's metrics")?
            .port()
    } else {
        u16::try_from(usize::from(base.port()) + 1 + i)
            .context("the modules' metrics ports run past 65535: pick a lower --metrics port")?
    };
    Ok(SocketAddr::new(base.ip(), port))
}

/// Makes the state folder (and its `logs`), removes a ready file a stopped runtime left, and
/// gives the folder's absolute path.
fn prepare_state(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir.join("logs"))
        .with_context(|| format!("creating the state folder {}", dir.display()))?;
    let _ = std::fs::remove_file(layout::ready_file(dir));
    Ok(std::fs::canonicalize(dir)?)
}

/// edgeHub's state from the manifest and the state folder: twins, the `$upstream` store, the
/// message store, the routes (with the ones it could not read, each logged).
fn open_hub(
    opts: &Options,
    manifest: &Manifest,
    state: &Path,
    routing: Arc<crate::iothub::routing::HubRouting>,
) -> Result<(Arc<Hub>, Vec<RouteError>)> {
    let desired = manifest
        .desired
        .iter()
        .map(|(m, d)| (format!("{}/{}", opts.device_id, m), d.clone()))
        .collect();
    let twins = Twins::new(desired, Some(state.join("twins")));
    let upstream = Upstream::open(state, routing).context("opening the upstream store")?;
    let journal = Journal::open(&journal::journal_dir(state), journal::SEGMENT_BYTES)
        .context("opening edgeHub's message store")?;
    let cfg = HubConfig {
        hub_hostname: opts.hub_hostname.clone(),
        device_id: opts.device_id.clone(),
        ttl: Duration::from_secs(manifest.ttl_secs),
        window: opts.window,
        queue_memory: opts.queue_memory,
        device_units_per_sec: opts.device_units_per_sec,
    };
    let (hub, route_errors) = Hub::new(
        cfg,
        manifest,
        twins,
        upstream,
        journal,
        KeyStore::new(layout::module_keys(state)),
        KeyStore::new(layout::registry(state)),
    );
    for e in &route_errors {
        error!("{e}");
    }
    Ok((Arc::new(hub), route_errors))
}

/// edgeHub's MQTT/TLS listener and its sweeper (expiry, queues), for `modules` modules: the
/// port it listens on and the tasks.
async fn serve_edgehub(
    opts: &Options,
    hub: &Arc<Hub>,
    tls: &certs::TlsMaterial,
    modules: usize,
) -> Result<(u16, Vec<JoinHandle<()>>)> {
    let addr = SocketAddr::new(opts.bind, opts.mqtt_port);
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!(
            "edgeHub cannot listen on {addr}: {e}{}",
            if e.kind() == std::io::ErrorKind::AddrInUse {
                " (another runtime or MQTT broker is using the port: stop it or pass --mqtt-port)"
            } else {
                ""
            }
        )
    })?;
    let mqtt_port = listener.local_addr()?.port();
    let open_files = open_file_budget();
    let mqtt_connections = mqtt_connection_budget(open_files, modules);
    info!(open_files, mqtt_connections, "open-file budget");
    let mut tasks = vec![tokio::spawn(broker::serve(
        listener,
        tokio_rustls::TlsAcceptor::from(certs::server_config(tls)?),
        hub.clone(),
        mqtt_connections,
    ))];
    let sweeper = hub.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = sweeper.store_written() => {}
            }
            sweeper.tick();
        }
    }));
    Ok((mqtt_port, tasks))
}

/// edgeHub's Prometheus endpoint (`--metrics`), if asked for: where it listens, its task.
async fn serve_edgehub_metrics(
    opts: &Options,
    hub: &Arc<Hub>,
) -> Result<Option<(SocketAddr, JoinHandle<()>)>> {
    let Some(addr) = opts.metrics else {
        return Ok(None);
    };
    let exporter = Arc::new(Exporter::with_labels(vec![
        ("iothub".into(), opts.hub_hostname.clone()),
        ("edge_device".into(), opts.device_id.clone()),
        ("instance_number".into(), uuid::Uuid::new_v4().to_string()),
    ]));
    hub.prometheus.register(&exporter);
    let h = hub.clone();
    exporter.on_scrape(move || h.refresh_metrics());
    let (bound, task) = observe::serve(addr, exporter)
        .await
        .context("edgeHub's metrics endpoint (--metrics)")?;
    Ok(Some((bound, task)))
}

/// What every module's setting up shares.
struct ModuleSetup<'a> {
    opts: &'a Options,
    state: &'a Path,
    mqtt_port: u16,
    keys: &'a Arc<KeyStore>,
    trust_bundle: &'a str,
}

/// One module, set up: its workload API serving, its environment, and what the agent starts
/// (none for a module not started here).
struct PreparedModule {
    workload: JoinHandle<()>,
    env: Vec<(String, String)>,
    launch: Option<Launch>,
}

impl ModuleSetup<'_> {
    /// Sets up module `m`, the `i`th of the manifest: a new generation, its workload socket,
    /// its environment, and its program (taken from `modules`); its metrics address goes in
    /// `metrics`.
    async fn module(
        &self,
        i: usize,
        m: &ModuleSpec,
        modules: &mut Modules,
        metrics: &mut BTreeMap<String, SocketAddr>,
    ) -> Result<PreparedModule> {
        let (opts, state) = (self.opts, self.state);
        let generation_id = uuid::Uuid::new_v4().simple().to_string();
        let socket = layout::workload_socket(state, &m.name);
        let image_user = match &*modules {
            Modules::Containers { images, .. } => {
                images.get(&m.name).and_then(|(_, f)| f.user.clone())
            }
            Modules::Processes(_) => None,
        };
        let owner = m.user.clone().or(image_user).and_then(|u| {
            let owner = workload::SocketOwner::parse(&u);
            if owner.is_none() {
                warn!(module = %m.name, user = u, "the module's user is not numeric: its workload socket stays the runtime user's");
            }
            owner
        });
        let workload = workload::serve(
            socket.clone(),
            workload::ModuleWorkload {
                module: m.name.clone(),
                generation_id: generation_id.clone(),
                keys: self.keys.clone(),
                trust_bundle: self.trust_bundle.to_owned(),
            },
            owner,
        )
        .await
        .with_context(|| format!("workload socket {}", socket.display()))?;
        let in_container = matches!(modules, Modules::Containers { .. });
        let mut env = passed_env(m, in_container);
        match m.env.get(observe::METRICS_ADDR_VAR) {
            Some(v) => {
                if let Ok(Some(a)) = observe::parse_addr(Some(v)) {
                    metrics.insert(m.name.clone(), a);
                }
            }
            None => {
                let value = match opts.metrics {
                    Some(base) => {
                        let a = module_metrics_addr(base, i)?;
                        metrics.insert(m.name.clone(), a);
                        a.to_string()
                    }
                    None => "off".to_owned(),
                };
                env.push((observe::METRICS_ADDR_VAR.to_owned(), value));
            }
        }
        let mut binds = Vec::new();
        for b in m.binds.iter().filter(|_| !in_container) {
            let host = bind_dir(state, &b.host, &b.container)?;
            binds.push((b.container.clone(), host.display().to_string()));
        }
        let workload_uri = if in_container {
            format!("unix://{}", container::WORKLOAD_SOCKET)
        } else {
            format!("unix://{}", socket.display())
        };
        env.extend(
            ModuleEnv {
                iothub_hostname: opts.hub_hostname.clone(),
                gateway_hostname: opts.gateway_hostname.clone(),
                device_id: opts.device_id.clone(),
                module_id: m.name.clone(),
                generation_id,
                workload_uri,
                api_version: edge_protocol::env::DEFAULT_API_VERSION.to_owned(),
                gateway_port: self.mqtt_port,
                binds,
            }
            .to_vars(),
        );
        let program = match modules {
            Modules::Processes(programs) => programs.remove(&m.name),
            Modules::Containers { engine, images } => match images.remove(&m.name) {
                Some((image, _)) => Some(Program::Container(Arc::new(container_spec(
                    state,
                    m,
                    engine,
                    image,
                    &env,
                    owner,
                    &opts.gateway_hostname,
                )?))),
                None => None,
            },
        };
        let launch = match program {
            Some(program) => {
                let workdir = state.join("modules").join(&m.name);
                std::fs::create_dir_all(&workdir)?;
                Some(Launch {
                    name: m.name.clone(),
                    program,
                    env: env.clone(),
                    restart: m.restart_policy,
                    log: layout::module_log(state, &m.name),
                    workdir,
                })
            }
            None => None,
        };
        Ok(PreparedModule {
            workload,
            env,
            launch,
        })
    }
}

/// The environment a module starts with before the runtime's own variables: what passes
/// through from the runtime's (the log settings only, for a container, which has its image's),
/// then the manifest's `env`. The manifest's env and `createOptions.Env` win over what would
/// pass through.
fn passed_env(m: &ModuleSpec, in_container: bool) -> Vec<(String, String)> {
    let pass: &[&str] = if in_container {
        &LOG_SETTINGS
    } else {
        &PASS_THROUGH
    };
    let written: Vec<&str> = m
        .create_options
        .get("Env")
        .and_then(Value::as_array)
        .map(|e| {
            e.iter()
                .filter_map(Value::as_str)
                .map(|e| e.split('=').next().unwrap_or(e))
                .collect()
        })
        .unwrap_or_default();
    let mut env: Vec<(String, String)> = pass
        .iter()
        .filter(|k| !m.env.contains_key(**k) && !written.contains(k))
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
        .collect();
    env.extend(m.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// The ready file's contents for the runtime that has just started.
fn ready_file(
    opts: &Options,
    state: &Path,
    mqtt_port: u16,
    hub_https: String,
    blob_store: &crate::iothub::files::BlobStore,
    route_errors: &[RouteError],
    metrics: &BTreeMap<String, SocketAddr>,
) -> runtime_state::Ready {
    runtime_state::Ready {
        pid: std::process::id(),
        mqtt_port,
        hub_hostname: opts.hub_hostname.clone(),
        device_id: opts.device_id.clone(),
        gateway_hostname: opts.gateway_hostname.clone(),
        ca_cert: layout::certs(state).join("ca.pem"),
        upstream: layout::upstream_store(state),
        hub_https,
        blob_store: match blob_store {
            crate::iothub::files::BlobStore::Azurite { host } => format!("https://{host}"),
            crate::iothub::files::BlobStore::Directory(d) => d.display().to_string(),
        },
        file_notifications: layout::file_notifications(state),
        route_errors: route_errors.iter().map(|e| e.to_string()).collect(),
        metrics: metrics
            .iter()
            .map(|(k, a)| (k.clone(), format!("http://{a}/metrics")))
            .collect(),
    }
}

impl Runtime {
    /// Starts everything; fails with a clear message on a bad manifest, a port in use or a
    /// missing module program.
    pub async fn start(opts: Options) -> Result<Runtime> {
        let manifest = Manifest::load(&opts.manifest)?;
        let state = prepare_state(&opts.state_dir)?;
        let module_keys = Arc::new(KeyStore::new(layout::module_keys(&state)));
        for m in &manifest.modules {
            module_keys
                .ensure(&m.name)
                .context("creating module keys")?;
        }
        let mut names = vec![opts.gateway_hostname.clone()];
        if opts.gateway_hostname != "localhost" {
            names.push("localhost".into());
        }
        let tls = certs::load_or_create(&layout::certs(&state), &names)?;
        let routing = Arc::new(hub_routing(opts.hub_config.as_deref(), &state)?);
        let (hub, route_errors) = open_hub(&opts, &manifest, &state, routing.clone())?;

        // Check every program (or image) before starting anything.
        let mut modules = resolve_modules(&opts, &manifest).await?;
        // Containers an earlier runtime on this state left go first, as its processes do.
        remove_earlier_containers(&state, &modules, opts.containers.as_ref()).await?;

        let (mqtt_port, mut tasks) =
            serve_edgehub(&opts, &hub, &tls, manifest.modules.len()).await?;
        let agent_slot = control::AgentSlot::default();
        tasks.push(
            control::serve(
                layout::control_socket(&state),
                hub.clone(),
                agent_slot.clone(),
            )
            .await?,
        );

        // IoT Hub's HTTPS side (file upload), reached with the edge device's own identity,
        // whose connection string the IoT Edge config files hold, as on a device.
        let https = tokio::net::TcpListener::bind(SocketAddr::new(opts.bind, opts.hub_https_port))
            .await
            .with_context(|| {
                format!(
                    "IoT Hub's HTTPS endpoint cannot listen on port {}",
                    opts.hub_https_port
                )
            })?;
        let authority = format!("localhost:{}", https.local_addr()?.port());
        let registry = KeyStore::new(layout::registry(&state));
        let edge_key = registry.ensure(&opts.device_id)?;
        write_device_config(&state, &authority, &opts.device_id, &edge_key)?;
        let certs_dir = layout::certs(&state);
        let (blob_store, azurite) = match &opts.azurite {
            Some(bin) => {
                let az = crate::iothub::files::Azurite::start(
                    bin,
                    &state.join("azurite"),
                    &certs_dir.join("server.pem"),
                    &certs_dir.join("server.key"),
                    &state.join("logs").join("azurite.log"),
                    &opts.upload_container,
                    &tls.ca_pem,
                )
                .await?;
                (
                    crate::iothub::files::BlobStore::Azurite {
                        host: az.host.clone(),
                    },
                    Some(az),
                )
            }
            None => (
                crate::iothub::files::BlobStore::Directory(state.join("blobs")),
                None,
            ),
        };
        let (stop_endpoints, stopped) = watch::channel(false);
        let endpoint_tasks = routing
            .storage_endpoints()
            .iter()
            .map(|e| {
                let writer = crate::iothub::storage::EndpointWriter {
                    endpoint: e.clone(),
                    hub: routing.config().name.clone(),
                    partitions: routing.config().partition_count,
                    store: blob_store.clone(),
                    ca_pem: tls.ca_pem.clone(),
                    state: state.clone(),
                };
                tokio::spawn(writer.run(stopped.clone()))
            })
            .collect();
        let files = Arc::new(crate::iothub::files::FileService::new(
            authority.clone(),
            registry,
            &opts.upload_container,
            blob_store.clone(),
            layout::file_notifications(&state),
        )?);
        tasks.push(tokio::spawn(crate::iothub::files::serve_https(
            https,
            certs::server_config(&tls)?,
            crate::iothub::files::router(files.clone()),
        )));

        let mut metrics = BTreeMap::new();
        if let Some((bound, task)) = serve_edgehub_metrics(&opts, &hub).await? {
            tasks.push(task);
            metrics.insert("edgeHub".to_owned(), bound);
        }
        let setup = ModuleSetup {
            opts: &opts,
            state: &state,
            mqtt_port,
            keys: &module_keys,
            trust_bundle: &tls.ca_pem,
        };
        let mut envs = HashMap::new();
        let mut launches = Vec::new();
        for (i, m) in manifest.modules.iter().enumerate() {
            let prepared = setup.module(i, m, &mut modules, &mut metrics).await?;
            tasks.push(prepared.workload);
            launches.extend(prepared.launch);
            envs.insert(m.name.clone(), prepared.env);
        }
        // Processes a crashed runtime left on this state go first: never two of one module.
        agent::stop_leftovers(&launches).await;
        let agent = (!launches.is_empty()).then(|| Agent::start(launches));
        if let Some(a) = &agent {
            let _ = agent_slot.set(a.handle());
        }

        let ready = ready_file(
            &opts,
            &state,
            mqtt_port,
            authority,
            &blob_store,
            &route_errors,
            &metrics,
        );
        if let Err(e) = ready.write(&state) {
            // Nothing started here outlives a failed start.
            if let Some(a) = agent {
                a.stop().await;
            }
            return Err(anyhow::Error::from(e).context("writing the ready file"));
        }
        info!(port = mqtt_port, state = %state.display(), routes = manifest.routes.len() - route_errors.len(), "runtime ready");
        Ok(Runtime {
            hub,
            mqtt_port,
            route_errors,
            ca_pem: tls.ca_pem,
            files,
            blob_store,
            metrics,
            azurite,
            endpoints: (stop_endpoints, endpoint_tasks),
            envs,
            agent,
            tasks,
            state_dir: state,
        })
    }

    /// Azurite's process id, when it runs.
    pub fn azurite_pid(&self) -> Option<u32> {
        self.azurite.as_ref().and_then(|a| a.pid())
    }

    /// Starts Azurite again (stopping it first if it still runs) on the same port and data;
    /// fails when this runtime has no Azurite.
    pub async fn restart_azurite(&mut self) -> Result<()> {
        match &mut self.azurite {
            Some(a) => a.restart().await,
            None => bail!("this runtime stores blobs in a folder, not in Azurite"),
        }
    }

    /// The environment the runtime gives `module` (what its process sees).
    pub fn module_env(&self, module: &str) -> Option<HashMap<String, String>> {
        self.envs.get(module).map(|e| e.iter().cloned().collect())
    }

    /// Status of module processes.
    pub fn process_status(&self) -> HashMap<String, agent::ProcessStatus> {
        self.agent
            .as_ref()
            .map(|a| a.status.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .unwrap_or_default()
    }

    /// The state folder.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Stops the modules (SIGTERM), then the servers.
    pub async fn shutdown(self) {
        if let Some(a) = self.agent {
            a.stop().await;
        }
        self.hub.stop();
        for t in self.tasks {
            t.abort();
        }
        // What the modules acknowledged last is not delivered again after a restart.
        if let Ok(Err(e)) = self.hub.flush().await {
            warn!(error = %e, "message store not synced at shutdown");
        }
        // Storage endpoints write what waits (before Azurite stops); what they cannot write
        // in time is written after the next start.
        let (stop, writers) = self.endpoints;
        let _ = stop.send(true);
        for w in writers {
            if tokio::time::timeout(Duration::from_secs(10), w)
                .await
                .is_err()
            {
                warn!("a storage endpoint did not finish writing within 10 s; it resumes at the next start");
            }
        }
        if let Some(az) = self.azurite {
            az.stop().await;
        }
        let _ = std::fs::remove_file(layout::ready_file(&self.state_dir));
        // Every container is removed by now.
        let _ = std::fs::remove_file(self.state_dir.join(CONTAINERS_MARKER));
        info!("runtime stopped");
    }
}

/// The hub's routing: the configuration file's, checked (an invalid route stops the start,
/// naming it), or IoT Hub's default. What applies is kept in the state for the route tester.
fn hub_routing(config: Option<&Path>, state: &Path) -> Result<crate::iothub::routing::HubRouting> {
    use crate::iothub::routing::{HubConfig, HubRouting};
    let config = match config {
        Some(path) => HubConfig::read(path)?,
        None => HubConfig::default(),
    };
    let routing = HubRouting::new(config)?;
    let path = layout::hub_config(state);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, serde_json::to_vec_pretty(routing.config())?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(routing)
}

/// Raises this process's soft open-file limit to its hard limit (modules inherit it);
/// returns the soft limit then.
fn open_file_budget() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(_) => soft,
        },
        Ok((soft, _)) => soft,
        Err(_) => 1024,
    }
}

/// How many MQTT connections edgeHub takes with `open_files` descriptors: what is left
/// after the HTTP servers' caps (file upload, metrics, management, one workload socket per
/// module) and a reserve for the stores, logs and module pipes, so that no flood of HTTP
/// connections can take the descriptors MQTT clients need, nor MQTT those of the stores.
pub fn mqtt_connection_budget(open_files: u64, modules: usize) -> usize {
    const RESERVE: u64 = 256;
    let http = crate::iothub::files::HTTPS_CONNECTIONS
        + edge_process::observe::METRICS_CONNECTIONS
        + crate::control::CONNECTIONS
        + crate::workload::CONNECTIONS * modules;
    let left = open_files.saturating_sub(RESERVE + http as u64);
    usize::try_from(left)
        .unwrap_or(usize::MAX)
        .clamp(64, tokio::sync::Semaphore::MAX_PERMITS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_stay_inside_the_state_folder() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["/", "/data/../../etc", "/./x", ""] {
            let e = bind_dir(dir.path(), bad, "/x").unwrap_err().to_string();
            assert!(e.contains("without '..'"), "{bad}: {e}");
        }
        let ok = bind_dir(dir.path(), "/data/avrofiles", "/avrofiles").unwrap();
        assert_eq!(ok, dir.path().join("binds/data/avrofiles"));
        assert!(ok.is_dir());
        let file = bind_dir(
            dir.path(),
            "/etc/aziot/config.toml",
            "/etc/aziot/config.toml",
        )
        .unwrap();
        assert!(file.parent().unwrap().is_dir() && !file.exists());
    }
}
