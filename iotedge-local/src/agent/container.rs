//! Container mode: edgeAgent's work done through the Docker Engine API (Docker/moby on a
//! device-like machine, `podman system service` here), with `bollard` as the client.
//!
//! Each module of the manifest runs from its image, created from the manifest's
//! `createOptions` as edgeAgent creates it (they are the Engine API's create body), with what
//! the runtime adds: the `IOTEDGE_*` environment, the module's own workload socket bound at
//! [`WORKLOAD_SOCKET`], its binds mapped into the state folder, the host's network (edgeHub
//! is a process of this runtime, not a container: see `docs/decisions.md`), explicit
//! `nofile`/`nproc` limits, and labels naming the state folder, by which a later runtime on
//! the same state finds the containers an earlier one left and removes them before it
//! creates its own. The runtime enforces `restartPolicy` itself (the engine's is `no`), runs
//! the image's `HEALTHCHECK` itself (an engine without systemd, as Podman here, cannot time
//! it), copies each container's output into the module's log file, and removes every
//! container on stop.

use super::manifest::ModuleSpec;
use bollard::exec::StartExecResults;
use bollard::models::{ContainerCreateBody, ExecConfig, HealthConfig};
use bollard::query_parameters::{
    CreateContainerOptions, LogsOptions, RemoveContainerOptions, StartContainerOptions,
    StopContainerOptions, WaitContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Where a module finds its workload socket inside its container (as IoT Edge 1.2+ binds
/// each module's own socket); `IOTEDGE_WORKLOADURI` names it.
pub const WORKLOAD_SOCKET: &str = "/var/run/iotedge/workload.sock";

/// The label naming the (canonical) state folder of the runtime that created a container.
pub const STATE_LABEL: &str = "net.iotedge-local.state";
/// The label naming the module a container runs.
pub const MODULE_LABEL: &str = "net.iotedge-local.module";

/// What container mode needs besides the manifest.
#[derive(Debug, Clone, Default)]
pub struct ContainerMode {
    /// The engine's API socket, `unix:///path` (Docker's `DOCKER_HOST` form).
    pub engine: String,
    /// Image per module, or per `${MODULES.x}` name `x`, for the manifest's placeholders
    /// (`docker/build-images.sh` writes them to `out/images.json`).
    pub images: BTreeMap<String, String>,
}

impl ContainerMode {
    /// The engine named by `DOCKER_HOST`, else Docker's default socket.
    pub fn default_engine() -> String {
        std::env::var("DOCKER_HOST")
            .ok()
            .filter(|h| !h.trim().is_empty())
            .unwrap_or_else(|| "unix:///var/run/docker.sock".to_owned())
    }

    /// Reads the images `docker/build-images.sh` built (`{"module": {"image": "…"}, …}`)
    /// into `images`.
    pub fn read_images_file(&mut self, path: &Path) -> Result<(), String> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!("cannot read the images file {}: {e} (docker/build-images.sh writes out/images.json)", path.display())
        })?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| format!("the images file {} is not JSON: {e}", path.display()))?;
        let modules = json
            .as_object()
            .ok_or_else(|| format!("the images file {} is not an object", path.display()))?;
        for (module, v) in modules {
            let image = v.get("image").and_then(Value::as_str).ok_or_else(|| {
                format!(
                    "the images file {}: {module} has no \"image\"",
                    path.display()
                )
            })?;
            self.images.insert(module.clone(), image.to_owned());
        }
        Ok(())
    }

    /// The image to run for module `name` of image `written` in the manifest: one given
    /// for the module, else one given for the placeholder's name, else the image as written
    /// when it is not a placeholder.
    pub fn image_for(&self, name: &str, written: &str) -> Result<String, String> {
        if let Some(i) = self.images.get(name) {
            return Ok(i.clone());
        }
        if written.contains("${") || written.starts_with('$') {
            let key = super::image_binary_name(written);
            return self.images.get(&key).cloned().ok_or_else(|| {
                format!(
                    "module '{name}': image '{written}' is a placeholder and no image is given for it; build the images (docker/build-images.sh writes out/images.json) and pass --images out/images.json, or --image {name}=IMAGE"
                )
            });
        }
        Ok(written.to_owned())
    }
}

/// A container engine that answered.
pub struct Engine {
    docker: Docker,
    socket: PathBuf,
    /// What it is (`Podman Engine 4.3.1, API 1.41`).
    pub description: String,
    /// Whether it has the NVIDIA runtime (GPU requests can be met).
    pub gpu: bool,
}

/// What the runtime takes from a module's image.
#[derive(Debug, Clone, Default)]
pub struct ImageFacts {
    /// Its `USER`, if any.
    pub user: Option<String>,
}

/// An image's `HEALTHCHECK`, as the runtime runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    /// The command run in the container (`CMD`: argv; `CMD-SHELL`: `/bin/sh -c`).
    pub command: Vec<String>,
    /// Time between checks.
    pub interval: Duration,
    /// Time a check may take.
    pub timeout: Duration,
    /// While starting, failures do not count (and checks run every 2 s until one passes).
    pub start_period: Duration,
    /// Failures in a row that make the module unhealthy.
    pub retries: u32,
}

impl HealthCheck {
    /// The check an image's `Healthcheck` config describes, with Docker's defaults (30 s,
    /// 30 s, 0 s, 3); `None` without a test or for `NONE`.
    pub fn from_config(c: &HealthConfig) -> Option<HealthCheck> {
        let test = c.test.as_ref()?;
        let command = match test.first().map(String::as_str)? {
            "CMD" => test[1..].to_vec(),
            "CMD-SHELL" => vec!["/bin/sh".into(), "-c".into(), test[1..].join(" ")],
            _ => return None,
        };
        if command.is_empty() {
            return None;
        }
        let dur = |ns: Option<i64>, default: u64| match ns {
            Some(n) if n > 0 => Duration::from_nanos(n as u64),
            _ => Duration::from_secs(default),
        };
        Some(HealthCheck {
            command,
            interval: dur(c.interval, 30),
            timeout: dur(c.timeout, 30),
            start_period: dur(c.start_period, 0),
            retries: c.retries.filter(|r| *r > 0).map_or(3, |r| r as u32),
        })
    }
}

/// `GET path` on the engine's socket: the status and the JSON answer. For the answers read
/// as plain JSON rather than through bollard's types (see [`Engine::containers_of`]).
async fn get_json(socket: &Path, path: &str) -> Result<(u16, Value), String> {
    use runtime_state::control::{exchange, ControlError};
    exchange(socket, "GET", path, None)
        .await
        .map_err(|e| match e {
            ControlError::Unreachable { socket, source } => {
                format!("cannot reach {}: {source}", socket.display())
            }
            other => other.to_string(),
        })
}

/// An engine call that failed, with what the runtime was doing.
fn engine_error(doing: &str, e: bollard::errors::Error) -> String {
    format!("container engine: {doing}: {e}")
}

fn not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

impl Engine {
    /// Connects to the engine at `uri` (`unix:///…`) and asks what it is.
    pub async fn connect(uri: &str) -> Result<Engine, String> {
        let path = uri.strip_prefix("unix://").ok_or_else(|| {
            format!("container engine '{uri}': only unix:///path sockets are supported (DOCKER_HOST=unix:///run/…/podman.sock)")
        })?;
        let hint = "start one (scripts/setup-container-engine.sh installs Podman and starts its API) or run without --containers";
        let docker = Docker::connect_with_unix(path, 120, bollard::API_DEFAULT_VERSION)
            .map_err(|e| format!("no container engine at {uri}: {e}; {hint}"))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| format!("no container engine answers at {uri}: {e}; {hint}"))?;
        let version = docker
            .version()
            .await
            .map_err(|e| format!("no container engine answers at {uri}: {e}; {hint}"))?;
        // Plain JSON: only the runtimes' names are needed, whatever else the engine says.
        let info = get_json(Path::new(path), "/info")
            .await
            .map_err(|e| format!("container engine: asking for its runtimes: {e}"))?
            .1;
        let name = version
            .platform
            .as_ref()
            .map(|p| p.name.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "engine".into());
        let description = format!(
            "{name} {}, API {}",
            version.version.unwrap_or_default(),
            version.api_version.unwrap_or_default()
        );
        let gpu = info
            .get("Runtimes")
            .and_then(Value::as_object)
            .is_some_and(|r| r.contains_key("nvidia"));
        Ok(Engine {
            docker,
            socket: PathBuf::from(path),
            description,
            gpu,
        })
    }

    /// The image's user; a clear error when the engine does not have it.
    pub async fn image(&self, image: &str) -> Result<ImageFacts, String> {
        let inspect = self.docker.inspect_image(image).await.map_err(|e| {
            if not_found(&e) {
                format!("image '{image}' is not in the container engine: build it (docker/build-images.sh) or pull it")
            } else {
                engine_error(&format!("inspecting image {image}"), e)
            }
        })?;
        let config = inspect.config.unwrap_or_default();
        Ok(ImageFacts {
            user: config.user.filter(|u| !u.trim().is_empty()),
        })
    }

    /// The image of each module (by name) with its facts, and a problem for each module
    /// that cannot run here: an image the engine lacks, or a GPU it has no runtime for.
    pub async fn images_for(
        &self,
        mode: &ContainerMode,
        modules: impl Iterator<Item = &ModuleSpec>,
    ) -> (HashMap<String, (String, ImageFacts)>, Vec<String>) {
        let mut images = HashMap::new();
        let mut problems = Vec::new();
        for m in modules {
            let gpu = m
                .create_options
                .pointer("/HostConfig/DeviceRequests")
                .and_then(Value::as_array)
                .is_some_and(|r| !r.is_empty());
            if gpu && !self.gpu {
                problems.push(format!("module '{}' asks for a GPU (createOptions.HostConfig.DeviceRequests) and the container engine ({}) has no GPU runtime (nvidia): run the CPU manifest (deployment.template.json) here, or this one on a machine with the NVIDIA container toolkit", m.name, self.description));
                continue;
            }
            let facts = match mode.image_for(&m.name, &m.image) {
                Ok(image) => self.image(&image).await.map(|f| (image, f)),
                Err(e) => Err(e),
            };
            match facts {
                Ok(f) => {
                    images.insert(m.name.clone(), f);
                }
                Err(e) => problems.push(format!("module '{}': {e}", m.name)),
            }
        }
        (images, problems)
    }

    /// A container's inspection, as plain JSON (see [`Engine::containers_of`]); `None` if
    /// there is no such container.
    async fn inspect(&self, name: &str) -> Result<Option<Value>, String> {
        match get_json(&self.socket, &format!("/containers/{name}/json")).await {
            Ok((200, v)) => Ok(Some(v)),
            Ok((404, _)) => Ok(None),
            Ok((status, v)) => Err(format!("container engine: inspecting {name}: {status} {v}")),
            Err(e) => Err(format!("container engine: inspecting {name}: {e}")),
        }
    }

    /// The containers (id, name) a runtime on `state` created, found by [`STATE_LABEL`],
    /// running or not.
    pub async fn containers_of(&self, state: &Path) -> Result<Vec<(String, String)>, String> {
        // Read as plain JSON: Podman gives a container between its exit and its clean-up the
        // state `stopped`, which bollard's typed answers refuse.
        let filters = json!({"label": [format!("{STATE_LABEL}={}", state.display())]});
        let filters = filters.to_string();
        let query =
            percent_encoding::utf8_percent_encode(&filters, percent_encoding::NON_ALPHANUMERIC);
        let list = match get_json(
            &self.socket,
            &format!("/containers/json?all=1&filters={query}"),
        )
        .await
        {
            Ok((200, list)) => list,
            Ok((status, v)) => {
                return Err(format!(
                    "container engine: listing containers: {status} {v}"
                ))
            }
            Err(e) => return Err(format!("container engine: listing containers: {e}")),
        };
        Ok(list
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|c| {
                let id = c.get("Id")?.as_str()?.to_owned();
                let name = c
                    .pointer("/Names/0")
                    .and_then(Value::as_str)
                    .unwrap_or(&id)
                    .trim_start_matches('/')
                    .to_owned();
                Some((id, name))
            })
            .collect())
    }

    /// Stops and removes every container a runtime on `state` created; returns their names.
    pub async fn remove_leftovers(&self, state: &Path) -> Result<Vec<String>, String> {
        let mut removed = Vec::new();
        for (id, name) in self.containers_of(state).await? {
            warn!(container = %name, "a container of an earlier runtime on this state is still there; removing it before starting a new one");
            self.remove(&id).await?;
            removed.push(name);
        }
        Ok(removed)
    }

    /// Stops (SIGTERM, SIGKILL after [`super::STOP_GRACE`]) and removes a container; one
    /// that is already gone is no error.
    pub async fn remove(&self, name: &str) -> Result<(), String> {
        let grace = super::STOP_GRACE.as_secs() as i32;
        match self
            .docker
            .stop_container(
                name,
                Some(StopContainerOptions {
                    signal: None,
                    t: Some(grace),
                }),
            )
            .await
        {
            Ok(()) => {}
            Err(e) if not_found(&e) => return Ok(()),
            Err(e) => {
                warn!(container = name, error = %e, "stopping the container failed; removing it by force")
            }
        }
        match self
            .docker
            .remove_container(
                name,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(engine_error(&format!("removing container {name}"), e)),
        }
    }
}

/// One module's container: how to create it, and what to do with it while it runs.
pub struct ContainerSpec {
    /// The engine.
    pub engine: Arc<Engine>,
    /// Container name.
    pub name: String,
    /// The image.
    pub image: String,
    /// The create body (the manifest's createOptions plus the runtime's additions).
    pub body: ContainerCreateBody,
    /// The time of the last line of output copied to the module's log, and how many lines
    /// with that time were copied (Podman's times are whole seconds).
    log_mark: std::sync::Mutex<Option<(chrono::DateTime<chrono::FixedOffset>, usize)>>,
}

impl ContainerSpec {
    /// A container to create from `body`.
    pub fn new(
        engine: Arc<Engine>,
        name: String,
        image: String,
        body: ContainerCreateBody,
    ) -> ContainerSpec {
        ContainerSpec {
            engine,
            name,
            image,
            body,
            log_mark: std::sync::Mutex::new(None),
        }
    }
}

impl std::fmt::Debug for ContainerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerSpec")
            .field("name", &self.name)
            .field("image", &self.image)
            .finish_non_exhaustive()
    }
}

impl PartialEq for ContainerSpec {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.image == other.image
    }
}

impl Eq for ContainerSpec {}

/// The container name of `module` for the runtime on `state`: unique per state folder, so
/// that runtimes on two states (parallel tests) never meet.
pub fn container_name(state: &Path, module: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    state.hash(&mut h);
    format!("iotedge-local-{:08x}-{module}", h.finish() as u32)
}

/// What the runtime adds to a module's `createOptions`.
pub struct Additions<'a> {
    /// The image.
    pub image: &'a str,
    /// The environment (after the manifest's `env`, which wins over `createOptions.Env`).
    pub env: &'a [(String, String)],
    /// The binds, host sides already mapped into the state folder.
    pub binds: Vec<String>,
    /// The module's workload socket on the host.
    pub workload_socket: &'a Path,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// `nofile` and `nproc` limits, when `createOptions` gives none.
    pub ulimits: (u64, u64),
    /// `name:address` entries for `/etc/hosts` (the gateway host name).
    pub extra_hosts: Vec<String>,
}

/// The Engine API create body for a module: its `createOptions` as written (edgeAgent's
/// contract) with the runtime's additions; what cannot apply here is reported in the notes
/// returned beside it.
pub fn create_body(
    create_options: &Value,
    add: Additions<'_>,
) -> Result<(ContainerCreateBody, Vec<String>), String> {
    let mut notes = Vec::new();
    let mut body = match create_options {
        Value::Object(o) => o.clone(),
        Value::Null => Map::new(),
        _ => return Err("createOptions is not an object".into()),
    };
    body.insert("Image".into(), json!(add.image));
    // Env: createOptions' entries, then the runtime's (which win, as edgeAgent's do).
    let mut env: Vec<String> = body
        .get("Env")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let ours: std::collections::HashSet<&str> = add.env.iter().map(|(k, _)| k.as_str()).collect();
    env.retain(|e| !ours.contains(e.split('=').next().unwrap_or(e)));
    env.extend(add.env.iter().map(|(k, v)| format!("{k}={v}")));
    body.insert("Env".into(), json!(env));
    let labels = body
        .entry("Labels")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or("createOptions.Labels is not an object")?;
    for (k, v) in add.labels {
        labels.insert(k, json!(v));
    }
    let host = body
        .entry("HostConfig")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or("createOptions.HostConfig is not an object")?;
    let mut binds = add.binds;
    binds.push(format!(
        "{}:{WORKLOAD_SOCKET}",
        add.workload_socket.display()
    ));
    host.insert("Binds".into(), json!(binds));
    if let Some(mode) = host.get("NetworkMode").and_then(Value::as_str) {
        if mode != "host" {
            notes.push(format!(
                "NetworkMode '{mode}' is replaced by the host's network, where edgeHub listens"
            ));
        }
    }
    host.insert("NetworkMode".into(), json!("host"));
    if let Some(ports) = host.remove("PortBindings") {
        if ports.as_object().is_some_and(|p| !p.is_empty()) {
            notes.push(format!(
                "PortBindings {ports} need no mapping: the module listens on the host's network"
            ));
        }
    }
    // The runtime enforces restartPolicy; the engine must not restart behind its back.
    host.insert("RestartPolicy".into(), json!({"Name": "no"}));
    if !host.contains_key("Ulimits") {
        let (nofile, nproc) = add.ulimits;
        host.insert(
            "Ulimits".into(),
            json!([
                {"Name": "nofile", "Soft": nofile, "Hard": nofile},
                {"Name": "nproc", "Soft": nproc, "Hard": nproc},
            ]),
        );
    }
    if !add.extra_hosts.is_empty() {
        let hosts = host.entry("ExtraHosts").or_insert_with(|| json!([]));
        if let Some(a) = hosts.as_array_mut() {
            a.extend(add.extra_hosts.into_iter().map(Value::String));
        }
    }
    let bind_mounts = host
        .get("Mounts")
        .and_then(Value::as_array)
        .is_some_and(|m| {
            m.iter()
                .any(|m| m.get("Type").and_then(Value::as_str) == Some("bind"))
        });
    if bind_mounts {
        return Err("HostConfig.Mounts of type bind would mount host paths as they are: write them as HostConfig.Binds, which the runtime maps into its state folder".into());
    }
    // A network of the manifest's (azure-iot-edge) does not exist here.
    body.remove("NetworkingConfig");
    let body = serde_json::from_value(Value::Object(body))
        .map_err(|e| format!("createOptions is not a valid container create body: {e}"))?;
    Ok((body, notes))
}

/// The host's hard `nofile` and `nproc` limits, capped at 65,536 and 4,096: a container
/// may not ask for more than the host allows (`setrlimit` fails in it).
pub fn host_ulimits() -> (u64, u64) {
    use nix::sys::resource::{getrlimit, Resource};
    let hard = |r, cap: u64| getrlimit(r).map_or(1024, |(_, h)| h.min(cap));
    (
        hard(Resource::RLIMIT_NOFILE, 65_536),
        hard(Resource::RLIMIT_NPROC, 4_096),
    )
}

/// Gives `path` (and, for a folder, everything in it) to `uid:gid`, as preparing a device
/// for a module that runs as another user does (`chown 65532:65532 /data/…`). Symbolic
/// links are not followed, and a file with other hard links is left alone: a module cannot
/// make the runtime give it a file from outside its bind.
pub fn give_to(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_file() && meta.nlink() > 1 {
        warn!(path = %path.display(), "a file with other hard links in a bind is not given to the module's user");
        return Ok(());
    }
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            give_to(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Reports health changes (`starting`, `healthy`, `unhealthy: …`).
pub type HealthSink = Arc<dyn Fn(String) + Send + Sync>;

/// How long the log copier gets, once its container stopped, to copy the last lines.
const LOG_DRAIN: Duration = Duration::from_secs(2);

/// A started container.
pub struct Running {
    spec: Arc<ContainerSpec>,
    /// The host pid of its main process.
    pub pid: Option<u32>,
    logs: Option<JoinHandle<()>>,
    health: Option<JoinHandle<()>>,
    unhealthy: Option<tokio::sync::mpsc::Receiver<String>>,
}

impl Running {
    /// Creates the container if it does not exist, starts it, and starts copying its output
    /// to `log` and running its health check.
    pub async fn start(
        spec: Arc<ContainerSpec>,
        log: &Path,
        health: HealthSink,
    ) -> Result<Running, String> {
        let docker = &spec.engine.docker;
        // Created once; a restart starts the same container again.
        if spec.engine.inspect(&spec.name).await?.is_none() {
            docker
                .create_container(
                    Some(CreateContainerOptions {
                        name: Some(spec.name.clone()),
                        ..Default::default()
                    }),
                    spec.body.clone(),
                )
                .await
                .map_err(|e| engine_error(&format!("creating {}", spec.name), e))?;
            info!(container = %spec.name, image = %spec.image, "container created");
        }
        docker
            .start_container(&spec.name, None::<StartContainerOptions>)
            .await
            .map_err(|e| engine_error(&format!("starting {}", spec.name), e))?;
        let inspect = spec
            .engine
            .inspect(&spec.name)
            .await?
            .ok_or_else(|| format!("container {} is gone", spec.name))?;
        // The container's own check: the image's HEALTHCHECK, or createOptions' Healthcheck
        // (Podman's image inspection leaves it out; the container's never does).
        let healthcheck = inspect
            .pointer("/Config/Healthcheck")
            .and_then(|h| serde_json::from_value::<HealthConfig>(h.clone()).ok())
            .as_ref()
            .and_then(HealthCheck::from_config);
        let pid = inspect
            .pointer("/State/Pid")
            .and_then(Value::as_u64)
            .filter(|p| *p > 0)
            .and_then(|p| u32::try_from(p).ok());
        let logs = Some(tokio::spawn(copy_logs(spec.clone(), log.to_path_buf())));
        let (health_task, unhealthy) = match healthcheck {
            Some(check) => {
                health("starting".into());
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                let task = tokio::spawn(run_health_checks(spec.clone(), check, health, tx));
                (Some(task), Some(rx))
            }
            None => (None, None),
        };
        Ok(Running {
            spec,
            pid,
            logs,
            health: health_task,
            unhealthy,
        })
    }

    /// Waits until the container stops; its exit as text, and whether it failed.
    pub async fn wait(&mut self) -> (String, bool) {
        let mut stream = self
            .spec
            .engine
            .docker
            .wait_container(&self.spec.name, None::<WaitContainerOptions>);
        let exit = match stream.next().await {
            Some(Ok(r)) => (
                format!("exit status: {}", r.status_code),
                r.status_code != 0,
            ),
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, error })) => (
                format!(
                    "exit status: {code}{}",
                    if error.is_empty() {
                        String::new()
                    } else {
                        format!(" ({error})")
                    }
                ),
                true,
            ),
            Some(Err(e)) => (format!("lost track of the container: {e}"), true),
            None => ("lost track of the container".into(), true),
        };
        self.end_health();
        self.drain_logs().await;
        exit
    }

    /// Where the health check says why it turned unhealthy (once per episode), for the
    /// supervisor; `None` without a check, or once taken.
    pub fn take_unhealthy(&mut self) -> Option<tokio::sync::mpsc::Receiver<String>> {
        self.unhealthy.take()
    }

    /// Stops the container (SIGTERM, then SIGKILL after [`super::STOP_GRACE`]); it stays,
    /// to be started again. Its health check ends first: a check of a stopping container
    /// says nothing of the next one.
    pub async fn stop(&mut self) {
        self.end_health();
        let grace = super::STOP_GRACE.as_secs() as i32;
        if let Err(e) = self
            .spec
            .engine
            .docker
            .stop_container(
                &self.spec.name,
                Some(StopContainerOptions {
                    signal: None,
                    t: Some(grace),
                }),
            )
            .await
        {
            if !not_found(&e) {
                warn!(container = %self.spec.name, error = %e, "stopping the container failed");
            }
        }
        self.drain_logs().await;
    }

    fn end_health(&mut self) {
        if let Some(t) = self.health.take() {
            t.abort();
        }
        self.unhealthy = None;
    }

    /// Lets the log copier write the stopped container's last lines (its stream ends with
    /// the container), for at most [`LOG_DRAIN`].
    async fn drain_logs(&mut self) {
        if let Some(mut t) = self.logs.take() {
            if tokio::time::timeout(LOG_DRAIN, &mut t).await.is_err() {
                t.abort();
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.end_health();
        if let Some(t) = self.logs.take() {
            t.abort();
        }
    }
}

/// A line of a container's output read with timestamps: its time and its text, or `None`
/// for a line without a time.
fn split_timestamp(line: &[u8]) -> Option<(chrono::DateTime<chrono::FixedOffset>, &[u8])> {
    let space = line.iter().position(|b| *b == b' ')?;
    let time = std::str::from_utf8(&line[..space]).ok()?;
    let time = chrono::DateTime::parse_from_rfc3339(time).ok()?;
    Some((time, &line[space + 1..]))
}

/// Appends the container's output to the module's log file until it stops. Lines are read
/// with their times, and only those after the last line copied from an earlier run of the
/// same container are written (the engine's `since`, and Podman's times, count whole
/// seconds: lines of the same second are told apart by their place in it).
async fn copy_logs(spec: Arc<ContainerSpec>, log: PathBuf) {
    let mut file = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
    {
        Ok(f) => f,
        Err(e) => {
            warn!(container = %spec.name, log = %log.display(), error = %e, "cannot open the module's log file");
            return;
        }
    };
    let since = spec
        .log_mark
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .map_or(0, |(t, _)| t.timestamp() as i32);
    let mut stream = spec.engine.docker.logs(
        &spec.name,
        Some(LogsOptions {
            follow: true,
            stdout: true,
            stderr: true,
            timestamps: true,
            since,
            ..Default::default()
        }),
    );
    // This stream's lines with the time of the last one: the first as many as were copied
    // with that time from an earlier stream are copies.
    let mut at: Option<(chrono::DateTime<chrono::FixedOffset>, usize)> = None;
    while let Some(item) = stream.next().await {
        let bytes = match item {
            Ok(out) => out.into_bytes(),
            Err(e) => {
                warn!(container = %spec.name, error = %e, "reading the container's output failed");
                return;
            }
        };
        for line in bytes.split_inclusive(|b| *b == b'\n') {
            let text = match split_timestamp(line) {
                Some((time, text)) => {
                    let seen = match at {
                        Some((t, n)) if t == time => n + 1,
                        _ => 1,
                    };
                    at = Some((time, seen));
                    let mut mark = spec.log_mark.lock().unwrap_or_else(|p| p.into_inner());
                    let copied = match *mark {
                        Some((m, n)) if m == time => n,
                        Some((m, _)) if m > time => usize::MAX,
                        _ => 0,
                    };
                    if seen <= copied {
                        continue;
                    }
                    *mark = Some((time, seen));
                    text
                }
                None => line,
            };
            if file.write_all(text).is_err() {
                return;
            }
        }
    }
}

/// Runs the check once in the container: `Ok` if it exits 0, else what it said.
async fn check_once(spec: &ContainerSpec, check: &HealthCheck) -> Result<(), String> {
    let docker = &spec.engine.docker;
    let exec = docker
        .create_exec(
            &spec.name,
            ExecConfig {
                cmd: Some(check.command.clone()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("cannot run the check: {e}"))?;
    let mut said = Vec::new();
    let run = async {
        if let StartExecResults::Attached { mut output, .. } = docker
            .start_exec(&exec.id, None)
            .await
            .map_err(|e| format!("cannot run the check: {e}"))?
        {
            while let Some(Ok(o)) = output.next().await {
                said.extend_from_slice(&o.into_bytes());
            }
        }
        Ok::<(), String>(())
    };
    tokio::time::timeout(check.timeout, run)
        .await
        .map_err(|_| format!("the check took longer than {:?}", check.timeout))??;
    let code = docker
        .inspect_exec(&exec.id)
        .await
        .map_err(|e| format!("cannot read the check's exit: {e}"))?
        .exit_code;
    match code {
        Some(0) => Ok(()),
        other => Err(format!(
            "exit {}: {}",
            other.map_or("?".into(), |c| c.to_string()),
            String::from_utf8_lossy(&said).trim()
        )),
    }
}

/// Runs the image's health check as the engine would: every `interval`, failures counting
/// only after `start_period`, unhealthy after `retries` in a row; while starting, every 2 s
/// until one passes (Docker's start interval).
async fn run_health_checks(
    spec: Arc<ContainerSpec>,
    check: HealthCheck,
    sink: HealthSink,
    unhealthy: tokio::sync::mpsc::Sender<String>,
) {
    let started = tokio::time::Instant::now();
    let mut failures = 0;
    let mut healthy_once = false;
    loop {
        let starting = !healthy_once && started.elapsed() < check.start_period;
        let pause = if starting {
            Duration::from_secs(2).min(check.interval)
        } else {
            check.interval
        };
        tokio::time::sleep(pause).await;
        match check_once(&spec, &check).await {
            Ok(()) => {
                if !healthy_once || failures > 0 {
                    info!(container = %spec.name, "health check passed: healthy");
                }
                healthy_once = true;
                failures = 0;
                sink("healthy".into());
            }
            Err(why) => {
                if !healthy_once && started.elapsed() < check.start_period {
                    continue;
                }
                failures += 1;
                if failures >= check.retries {
                    warn!(container = %spec.name, failures, reason = %why, "health check failed: unhealthy");
                    sink(format!("unhealthy: {why}"));
                    let _ = unhealthy.try_send(why);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn additions(socket: &Path) -> Additions<'_> {
        Additions {
            image: "localhost/turbofanrouter:0.1.0-amd64",
            env: &[],
            binds: vec!["/state/binds/data/avrofiles:/avrofiles".into()],
            workload_socket: socket,
            labels: BTreeMap::from([(MODULE_LABEL.to_owned(), "avroFileWriter".to_owned())]),
            ulimits: (1024, 512),
            extra_hosts: vec![],
        }
    }

    #[test]
    fn create_options_are_kept_and_the_runtime_adds_its_parts() {
        let socket = PathBuf::from("/state/workload/avroFileWriter.sock");
        let env = [
            ("IOTEDGE_MODULEID".to_owned(), "avroFileWriter".to_owned()),
            ("A".to_owned(), "2".to_owned()),
        ];
        let opts = json!({
            "User": "65532:65532",
            "Env": ["A=1", "B=1"],
            "Labels": {"x": "y"},
            "HostConfig": {"PortBindings": {"9600/tcp": [{"HostPort": "9600"}]}, "Memory": 1_000_000,
                "DeviceRequests": [{"Driver": "nvidia", "Count": -1, "Capabilities": [["gpu"]]}]}
        });
        let mut add = additions(&socket);
        add.env = &env;
        add.extra_hosts = vec!["edgehub.local:127.0.0.1".into()];
        let (body, notes) = create_body(&opts, add).unwrap();
        assert_eq!(body.user.as_deref(), Some("65532:65532"));
        assert_eq!(
            body.env.unwrap(),
            ["B=1", "IOTEDGE_MODULEID=avroFileWriter", "A=2"]
        );
        let labels = body.labels.unwrap();
        assert_eq!(labels["x"], "y");
        assert_eq!(labels[MODULE_LABEL], "avroFileWriter");
        let host = body.host_config.unwrap();
        assert_eq!(
            host.binds.unwrap(),
            [
                "/state/binds/data/avrofiles:/avrofiles",
                "/state/workload/avroFileWriter.sock:/var/run/iotedge/workload.sock"
            ]
        );
        assert_eq!(host.network_mode.as_deref(), Some("host"));
        assert_eq!(host.memory, Some(1_000_000));
        assert!(host.port_bindings.is_none());
        assert_eq!(
            host.device_requests.unwrap().len(),
            1,
            "kept for the engine"
        );
        assert_eq!(host.ulimits.unwrap().len(), 2);
        assert_eq!(host.extra_hosts.unwrap(), ["edgehub.local:127.0.0.1"]);
        assert!(
            notes.iter().any(|n| n.contains("PortBindings")),
            "{notes:?}"
        );
    }

    #[test]
    fn a_create_body_that_is_not_one_is_refused() {
        let socket = PathBuf::from("/s");
        let e = create_body(
            &json!({"HostConfig": {"Memory": "lots"}}),
            additions(&socket),
        )
        .unwrap_err();
        assert!(e.contains("not a valid container create body"), "{e}");
        let e = create_body(&json!([1]), additions(&socket)).unwrap_err();
        assert!(e.contains("not an object"), "{e}");
    }

    #[test]
    fn images_resolve_from_the_images_file_or_as_written() {
        let mut mode = ContainerMode::default();
        mode.images.insert(
            "turbofanRouter".into(),
            "localhost/turbofanrouter:0.1.0-amd64".into(),
        );
        assert_eq!(
            mode.image_for("router", "${MODULES.turbofanRouter}")
                .unwrap(),
            "localhost/turbofanrouter:0.1.0-amd64"
        );
        assert_eq!(
            mode.image_for("x", "myreg.azurecr.io/x:1").unwrap(),
            "myreg.azurecr.io/x:1"
        );
        let e = mode
            .image_for("w", "${MODULES.avroFileWriter.debug}")
            .unwrap_err();
        assert!(
            e.contains("--images out/images.json") && e.contains("--image w="),
            "{e}"
        );
    }

    #[test]
    fn health_checks_read_docker_defaults() {
        let c = HealthConfig {
            test: Some(vec!["CMD".into(), "/app/module".into(), "--health".into()]),
            interval: Some(30_000_000_000),
            start_period: Some(60_000_000_000),
            ..Default::default()
        };
        let h = HealthCheck::from_config(&c).unwrap();
        assert_eq!(h.command, ["/app/module", "--health"]);
        assert_eq!(
            (h.interval, h.timeout, h.start_period, h.retries),
            (
                Duration::from_secs(30),
                Duration::from_secs(30),
                Duration::from_secs(60),
                3
            )
        );
        let none = HealthConfig {
            test: Some(vec!["NONE".into()]),
            ..Default::default()
        };
        assert!(HealthCheck::from_config(&none).is_none());
    }

    #[test]
    fn bind_mounts_are_refused_and_log_lines_split_off_their_time() {
        let socket = PathBuf::from("/s");
        let e = create_body(
            &json!({"HostConfig": {"Mounts": [{"Type": "bind", "Source": "/etc", "Target": "/x"}]}}),
            additions(&socket),
        )
        .unwrap_err();
        assert!(e.contains("HostConfig.Binds"), "{e}");
        let (t, text) = split_timestamp(b"2026-12-07T19:48:28.396650123Z models loaded\n").unwrap();
        assert_eq!(text, b"models loaded\n");
        assert_eq!(t.timestamp_subsec_nanos(), 396_650_123);
        assert!(split_timestamp(b"no time here\n").is_none());
    }

    #[test]
    fn binds_are_given_without_following_links_out_of_them() {
        use std::os::unix::fs::MetadataExt;
        if std::fs::metadata("/proc/self").map_or(true, |m| m.uid() != 0) {
            println!("skipped: giving files to another user needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, "secret").unwrap();
        let bind = dir.path().join("bind");
        std::fs::create_dir_all(bind.join("sub")).unwrap();
        std::fs::write(bind.join("sub/own"), "x").unwrap();
        std::fs::hard_link(&outside, bind.join("hard")).unwrap();
        std::os::unix::fs::symlink(&outside, bind.join("soft")).unwrap();
        give_to(&bind, 54321, 54321).unwrap();
        let uid = |p: &Path| std::fs::symlink_metadata(p).unwrap().uid();
        assert_eq!(uid(&bind.join("sub/own")), 54321);
        assert_eq!(uid(&bind.join("soft")), 54321, "the link itself");
        assert_eq!(uid(&outside), 0, "neither link gives the file they name");
    }

    #[test]
    fn names_differ_per_state_and_binds_split() {
        assert_ne!(
            container_name(Path::new("/a"), "m"),
            container_name(Path::new("/b"), "m")
        );
        use super::super::manifest::Bind;
        let ro = Bind::parse("/etc/x:/etc/x:ro").unwrap();
        assert_eq!(
            (
                ro.host.as_str(),
                ro.container.as_str(),
                ro.options.as_deref()
            ),
            ("/etc/x", "/etc/x", Some("ro"))
        );
        let rw = Bind::parse("/d:/e").unwrap();
        assert_eq!(
            (
                rw.host.as_str(),
                rw.container.as_str(),
                rw.options.as_deref()
            ),
            ("/d", "/e", None)
        );
        assert_eq!(Bind::parse("vol:/e"), None);
    }
}
