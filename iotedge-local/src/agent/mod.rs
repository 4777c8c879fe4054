//! edgeAgent: starts each module of the manifest as a local process with the environment a
//! real runtime gives it, restarts it per its `restartPolicy` with exponential backoff, and
//! stops it with SIGTERM (then SIGKILL after a grace period). [`manifest`] reads the
//! deployment manifest it runs.
//!
//! A module never outlives its runtime unnoticed: each process is started with the
//! parent-death signal SIGTERM (it stops as on `iotedge-local` stop when the runtime dies,
//! even by `kill -9`), and its pid and start time are written to `<workdir>/pid`; a runtime
//! started on the same state stops any process an earlier one left there before it starts
//! its own ([`stop_leftovers`]), so two copies of a module never run on one state.

pub mod container;
pub mod manifest;

use manifest::RestartPolicy;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

/// What to run for a module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Program {
    /// A workspace binary.
    Binary(PathBuf),
    /// A shell command (`--exec`), run as `sh -c 'exec …'`.
    Shell(String),
    /// A container of the module's image (container mode).
    Container(Arc<container::ContainerSpec>),
}

/// Everything needed to start one module.
#[derive(Debug, Clone)]
pub struct Launch {
    /// Module name.
    pub name: String,
    /// Program to run.
    pub program: Program,
    /// Complete environment of the process.
    pub env: Vec<(String, String)>,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// File receiving stdout and stderr.
    pub log: PathBuf,
    /// Working directory.
    pub workdir: PathBuf,
}

pub use runtime_state::control::ProcessStatus;

/// The running supervisor.
pub struct Agent {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Status per module.
    pub status: Arc<Mutex<HashMap<String, ProcessStatus>>>,
    restarts: Arc<HashMap<String, Arc<Notify>>>,
}

/// What the control socket may ask of the supervisor: process status, and restarts.
#[derive(Clone)]
pub struct AgentHandle {
    status: Arc<Mutex<HashMap<String, ProcessStatus>>>,
    restarts: Arc<HashMap<String, Arc<Notify>>>,
}

impl AgentHandle {
    /// Restarts `module`'s process now (SIGTERM, then SIGKILL after [`STOP_GRACE`], then
    /// started again at once, whatever its restart policy), as `iotedge restart` does.
    pub fn restart(&self, module: &str) -> Result<(), String> {
        match self.restarts.get(module) {
            Some(n) => {
                n.notify_one();
                Ok(())
            }
            None => {
                let mut known: Vec<&str> = self.restarts.keys().map(String::as_str).collect();
                known.sort_unstable();
                Err(format!(
                    "no module process '{module}' (running here: {})",
                    known.join(", ")
                ))
            }
        }
    }

    /// Status of every module process.
    pub fn status(&self) -> HashMap<String, ProcessStatus> {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// How long a module gets to stop after SIGTERM.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// The binary name an image stands for: `${MODULES.x}` / `${MODULES.x.debug}` → `x`;
/// otherwise the image's last path segment without tag or digest.
pub fn image_binary_name(image: &str) -> String {
    if let Some(rest) = image.trim().strip_prefix("${MODULES.") {
        let inner = rest.trim_end_matches('}');
        return inner.strip_suffix(".debug").unwrap_or(inner).to_owned();
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    let last = last.split('@').next().unwrap_or(last);
    last.split(':').next().unwrap_or(last).to_owned()
}

/// The file in a module's working folder that names its running process: `<pid> <start
/// time in clock ticks since boot>` (the start time tells a reused pid apart).
pub const PID_FILE: &str = "pid";

/// The start time of process `pid` (field 22 of `/proc/<pid>/stat`), if it exists.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

fn write_pid_file(workdir: &Path, pid: u32) {
    let Some(started) = start_time(pid) else {
        return; // already gone
    };
    if let Err(e) = std::fs::write(workdir.join(PID_FILE), format!("{pid} {started}\n")) {
        warn!(dir = %workdir.display(), error = %e, "cannot record the module's pid; a crash of the runtime could leave it running");
    }
}

/// The process a pid file names, if it is still that process.
fn recorded_process(workdir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(workdir.join(PID_FILE)).ok()?;
    let mut parts = text.split_whitespace();
    let pid: u32 = parts.next()?.parse().ok()?;
    let started: u64 = parts.next()?.parse().ok()?;
    (pid != std::process::id() && start_time(pid) == Some(started)).then_some(pid)
}

/// Stops every module process an earlier runtime on this state left running (named by the
/// pid files of `launches`' working folders): SIGTERM, then SIGKILL after [`STOP_GRACE`].
/// Returns the modules whose processes were stopped.
pub async fn stop_leftovers(launches: &[Launch]) -> Vec<String> {
    let mut stopped = Vec::new();
    for l in launches {
        let Some(pid) = recorded_process(&l.workdir) else {
            continue;
        };
        warn!(module = %l.name, pid, "a process of this module from an earlier runtime is still running; stopping it before starting a new one");
        let target = Pid::from_raw(pid as i32);
        let _ = kill(target, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while recorded_process(&l.workdir) == Some(pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if recorded_process(&l.workdir) == Some(pid) {
            warn!(module = %l.name, pid, "it did not stop within the grace period; killing it");
            let _ = kill(target, Signal::SIGKILL);
            while recorded_process(&l.workdir) == Some(pid) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let _ = std::fs::remove_file(l.workdir.join(PID_FILE));
        stopped.push(l.name.clone());
    }
    stopped
}

/// Why the health check turned unhealthy; pending without a check, or while healthy.
async fn unhealthy(rx: &mut Option<tokio::sync::mpsc::Receiver<String>>) -> String {
    match rx {
        Some(r) => match r.recv().await {
            Some(why) => why,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// A started module: a process of its own, or a container.
enum Instance {
    Process(Child),
    Container(container::Running),
}

impl Instance {
    /// Where its health check says it turned unhealthy (a container with a check).
    fn take_unhealthy(&mut self) -> Option<tokio::sync::mpsc::Receiver<String>> {
        match self {
            Instance::Process(_) => None,
            Instance::Container(r) => r.take_unhealthy(),
        }
    }

    fn pid(&self) -> Option<u32> {
        match self {
            Instance::Process(c) => c.id(),
            Instance::Container(r) => r.pid,
        }
    }

    /// Waits for it to end: its exit as text, and whether it failed.
    async fn wait(&mut self) -> (String, bool) {
        match self {
            Instance::Process(c) => match c.wait().await {
                Ok(s) => (s.to_string(), !s.success()),
                Err(e) => (e.to_string(), true),
            },
            Instance::Container(r) => r.wait().await,
        }
    }

    /// Stops it (SIGTERM, then SIGKILL after [`STOP_GRACE`]); a container stays, to be
    /// started again.
    async fn stop(&mut self, name: &str) {
        match self {
            Instance::Process(c) => stop_child(name, c).await,
            Instance::Container(r) => r.stop().await,
        }
    }
}

async fn start(l: &Launch, health: container::HealthSink) -> Result<Instance, String> {
    match &l.program {
        Program::Container(spec) => container::Running::start(spec.clone(), &l.log, health)
            .await
            .map(Instance::Container),
        _ => spawn(l).map(Instance::Process).map_err(|e| e.to_string()),
    }
}

fn spawn(l: &Launch) -> std::io::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&l.log)?;
    let mut cmd = match &l.program {
        Program::Binary(p) => Command::new(p),
        Program::Shell(s) => {
            let mut c = Command::new("sh");
            c.arg("-c").arg(format!("exec {s}"));
            c
        }
        Program::Container(_) => {
            return Err(std::io::Error::other("a container is not a process"));
        }
    };
    cmd.env_clear()
        .envs(l.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&l.workdir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    let runtime = std::process::id();
    // SAFETY: the closure runs in the child between fork and exec and only makes two
    // async-signal-safe system calls (prctl, getppid).
    unsafe {
        cmd.pre_exec(move || {
            // Die with the runtime: SIGTERM when the thread that started us ends (the
            // runtime's worker threads live as long as the runtime).
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)?;
            if nix::unistd::getppid().as_raw() as u32 != runtime {
                return Err(std::io::Error::other(
                    "the runtime ended while starting the module",
                ));
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    if let Some(pid) = child.id() {
        write_pid_file(&l.workdir, pid);
    }
    Ok(child)
}

async fn stop_child(name: &str, child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        match tokio::time::timeout(STOP_GRACE, child.wait()).await {
            Ok(status) => info!(module = name, ?status, "module stopped"),
            Err(_) => {
                warn!(
                    module = name,
                    "module did not stop within the grace period; killing it"
                );
                let _ = child.kill().await;
            }
        }
    }
}

/// Runs the module until the runtime stops; then a container of it is removed.
async fn supervise(
    l: Launch,
    stop: watch::Receiver<bool>,
    status: Arc<Mutex<HashMap<String, ProcessStatus>>>,
    restart_now: Arc<Notify>,
) {
    let spec = match &l.program {
        Program::Container(spec) => Some(spec.clone()),
        _ => None,
    };
    // In a task of its own: a panic in it still removes the container.
    let name = l.name.clone();
    if let Err(e) = tokio::spawn(run_module(l, stop, status, restart_now)).await {
        error!(module = %name, error = %e, "the module's supervisor failed");
    }
    if let Some(spec) = spec {
        if let Err(e) = spec.engine.remove(&spec.name).await {
            warn!(container = %spec.name, error = %e, "the container could not be removed");
        }
    }
}

async fn run_module(
    l: Launch,
    mut stop: watch::Receiver<bool>,
    status: Arc<Mutex<HashMap<String, ProcessStatus>>>,
    restart_now: Arc<Notify>,
) {
    let mut backoff = Duration::from_secs(1);
    let set = |f: &dyn Fn(&mut ProcessStatus)| {
        let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
        f(s.entry(l.name.clone()).or_default());
    };
    if let Program::Container(spec) = &l.program {
        set(&|s| s.container = Some(spec.name.clone()));
    }
    let health: container::HealthSink = {
        let (status, name) = (status.clone(), l.name.clone());
        Arc::new(move |h: String| {
            let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
            s.entry(name.clone()).or_default().health = Some(h);
        })
    };
    let on_unhealthy = l.restart == RestartPolicy::OnUnhealthy;
    loop {
        let mut child = match start(&l, health.clone()).await {
            Ok(c) => c,
            Err(e) => {
                error!(module = %l.name, error = %e, program = ?l.program, "cannot start module");
                set(&|s| s.last_exit = Some(format!("failed to start: {e}")));
                if !matches!(l.program, Program::Container(_)) {
                    return;
                }
                // The engine may be restarting or busy: try again, as edgeAgent does.
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(60));
                continue;
            }
        };
        let pid = child.pid();
        info!(module = %l.name, pid, "module started");
        set(&|s| s.pid = pid);
        let started = Instant::now();
        let mut unhealthy_rx = child.take_unhealthy();
        let exit = tokio::select! {
            r = child.wait() => r,
            why = unhealthy(&mut unhealthy_rx), if on_unhealthy => {
                warn!(module = %l.name, reason = %why, "unhealthy: restarting it (restartPolicy on-unhealthy)");
                child.stop(&l.name).await;
                set(&|s| {
                    s.pid = None;
                    s.last_exit = Some(format!("unhealthy: {why}"));
                    s.restarts += 1;
                });
                continue;
            }
            _ = stop.changed() => {
                child.stop(&l.name).await;
                let _ = std::fs::remove_file(l.workdir.join(PID_FILE));
                set(&|s| s.pid = None);
                return;
            }
            _ = restart_now.notified() => {
                info!(module = %l.name, "restart asked for: stopping the module");
                child.stop(&l.name).await;
                set(&|s| {
                    s.pid = None;
                    s.last_exit = Some("restarted on request".into());
                    s.restarts += 1;
                });
                backoff = Duration::from_secs(1);
                continue;
            }
        };
        let (text, failed) = exit;
        set(&|s| {
            s.pid = None;
            s.last_exit = Some(text.clone());
        });
        let restart = match l.restart {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure | RestartPolicy::OnUnhealthy => failed,
            RestartPolicy::Never => false,
        };
        if !restart {
            info!(module = %l.name, exit = %text, "module exited; not restarted (restartPolicy)");
            // Stopped until the operator restarts it.
            tokio::select! {
                _ = restart_now.notified() => {
                    info!(module = %l.name, "restart asked for: starting the module");
                    set(&|s| s.restarts += 1);
                    continue;
                }
                _ = stop.changed() => return,
            }
        }
        if started.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_secs(1);
        }
        warn!(module = %l.name, exit = %text, retry_in_s = backoff.as_secs(), "module exited; restarting");
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(60));
        set(&|s| s.restarts += 1);
    }
}

impl Agent {
    /// Starts every module.
    pub fn start(launches: Vec<Launch>) -> Agent {
        let (stop, rx) = watch::channel(false);
        let status = Arc::new(Mutex::new(HashMap::new()));
        let restarts: HashMap<String, Arc<Notify>> = launches
            .iter()
            .map(|l| (l.name.clone(), Arc::new(Notify::new())))
            .collect();
        let tasks = launches
            .into_iter()
            .map(|l| {
                let now = restarts[&l.name].clone();
                tokio::spawn(supervise(l, rx.clone(), status.clone(), now))
            })
            .collect();
        Agent {
            stop,
            tasks,
            status,
            restarts: Arc::new(restarts),
        }
    }

    /// A handle for the control socket.
    pub fn handle(&self) -> AgentHandle {
        AgentHandle {
            status: self.status.clone(),
            restarts: self.restarts.clone(),
        }
    }

    /// Stops every module (SIGTERM, then SIGKILL after [`STOP_GRACE`]).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Finds the program for a module: an `--exec` override, else the workspace binary named
/// after its image in `bin_dir`.
pub fn resolve_program(
    name: &str,
    image: &str,
    exec: Option<&String>,
    bin_dir: &Path,
) -> Result<Program, String> {
    if let Some(cmd) = exec {
        return Ok(Program::Shell(cmd.clone()));
    }
    let bin = image_binary_name(image);
    let path = bin_dir.join(&bin);
    if path.is_file() {
        Ok(Program::Binary(path))
    } else {
        Err(format!(
            "module '{name}': image '{image}' maps to program {}, which does not exist; build it (cargo build -p {bin}), or run the module some other way with --exec {name}=COMMAND, or leave it out with --skip {name}",
            path.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_map_to_binary_names() {
        assert_eq!(
            image_binary_name("${MODULES.turbofanRouter}"),
            "turbofanRouter"
        );
        assert_eq!(
            image_binary_name("${MODULES.avroFileWriter.debug}"),
            "avroFileWriter"
        );
        assert_eq!(
            image_binary_name("myreg.azurecr.io/turbofanrouter:0.0.1-amd64"),
            "turbofanrouter"
        );
        assert_eq!(image_binary_name("x/y@sha256:abc"), "y");
    }

    #[test]
    fn missing_programs_say_what_to_do() {
        let e = resolve_program(
            "router",
            "${MODULES.turbofanRouter}",
            None,
            Path::new("/nonexistent"),
        )
        .unwrap_err();
        assert!(
            e.contains("cargo build -p turbofanRouter") && e.contains("--exec router="),
            "{e}"
        );
        let p = resolve_program(
            "router",
            "img",
            Some(&"python3 m.py".to_owned()),
            Path::new("/x"),
        )
        .unwrap();
        assert_eq!(p, Program::Shell("python3 m.py".into()));
    }

    #[tokio::test]
    async fn restarts_on_failure_and_stops_with_sigterm() {
        let dir = tempfile::tempdir().unwrap();
        let counter = dir.path().join("starts");
        let script = format!(
            "sh -c 'echo x >> {c}; n=$(wc -l < {c}); if [ $n -lt 2 ]; then exit 3; fi; trap \"exit 0\" TERM; while :; do sleep 0.1; done'",
            c = counter.display()
        );
        let agent = Agent::start(vec![Launch {
            name: "m".into(),
            program: Program::Shell(script),
            env: vec![("PATH".into(), std::env::var("PATH").unwrap_or_default())],
            restart: RestartPolicy::OnFailure,
            log: dir.path().join("m.log"),
            workdir: dir.path().to_path_buf(),
        }]);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let st = agent
                .status
                .lock()
                .unwrap()
                .get("m")
                .cloned()
                .unwrap_or_default();
            if st.restarts == 1 && st.pid.is_some() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "module was not restarted: {st:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let t = Instant::now();
        agent.stop().await;
        assert!(t.elapsed() < STOP_GRACE, "SIGTERM should stop it at once");
        assert_eq!(
            std::fs::read_to_string(&counter).unwrap().lines().count(),
            2
        );
    }
}
