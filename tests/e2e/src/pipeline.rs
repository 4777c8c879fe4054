//! A run of the project's deployment manifest on an in-process local runtime, with the three
//! real module processes started by its edgeAgent, and what can be observed of it.

use crate::upstream::{self, Outcomes};
use anyhow::{anyhow, bail, Context, Result};
use avro_file_writer::record::{read_file, ArchivedRecord};
use edge_client::{ModuleClient, Settings};
use iotedge_local::{Options, Runtime};
use runtime_state::layout;
use runtime_state::KeyStore;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;

/// The router module, as the manifest names it.
pub const ROUTER: &str = turbofan_domain::ports::router::MODULE;
/// The classifier module.
pub const CLASSIFIER: &str = turbofan_domain::ports::classifier::MODULE;
/// The Avro writer module.
pub const WRITER: &str = turbofan_domain::ports::writer::MODULE;
/// The manifest's modules.
pub const MODULES: [&str; 3] = [ROUTER, CLASSIFIER, WRITER];

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The C-MAPSS file `name` (in `CMAPSS_DIR`, default `../shared/data/cmapss`).
pub fn data_file(name: &str) -> PathBuf {
    turbofan_domain::cmapss::data_dir().join(name)
}

/// The folder of the module binaries: the profile folder of the running test or bench
/// executable (`target/<profile>/deps/x` → `target/<profile>`), which `cargo build
/// --workspace` fills. Fails, saying so, when a module binary is not there.
pub fn module_bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let mut dir = exe
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("{} has no folder", exe.display()))?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        if let Some(up) = dir.parent() {
            dir = up.to_path_buf();
        }
    }
    let missing: Vec<&str> = MODULES
        .iter()
        .copied()
        .filter(|m| !dir.join(m).is_file())
        .collect();
    if !missing.is_empty() {
        let profile = if dir.ends_with("release") {
            " --release"
        } else {
            ""
        };
        bail!(
            "module binaries missing from {}: {}; build them first with `cargo build{profile} --workspace` (scripts/test.sh does)",
            dir.display(),
            missing.join(", ")
        );
    }
    Ok(dir)
}

/// Azurite's launcher installed by `scripts/setup-node.sh`.
pub fn azurite_launcher() -> Result<PathBuf> {
    let p = repo_root().join(".tools/azurite/node_modules/.bin/azurite-blob");
    if p.is_file() {
        Ok(p)
    } else {
        bail!(
            "Azurite is not installed ({} is missing): run scripts/setup-node.sh",
            p.display()
        )
    }
}

/// The project's `deployment.template.json`, with environment variables added to modules:
/// `(module, name, value)`.
pub fn deployment_manifest(env: &[(&str, &str, String)]) -> Result<Value> {
    let path = repo_root().join("deployment.template.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut manifest: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    for (module, name, value) in env {
        let pointer = format!("/modulesContent/$edgeAgent/properties.desired/modules/{module}");
        let spec = manifest
            .pointer_mut(&pointer)
            .and_then(Value::as_object_mut)
            .ok_or_else(|| anyhow!("{} has no module {module}", path.display()))?;
        let vars = spec
            .entry("env")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or_else(|| anyhow!("module {module}'s env is not an object"))?;
        vars.insert((*name).to_owned(), json!({ "value": value }));
    }
    Ok(manifest)
}

/// Waits until `check` returns `Ok(Some(_))`, polling every 50 ms; an `Err` from `check`
/// counts as "not yet". Fails after `timeout`, with the last error if any.
pub async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => None,
            Err(e) => Some(e),
        };
        if Instant::now() >= deadline {
            return Err(match last {
                Some(e) => e.context(format!("timed out after {timeout:?} waiting for {what}")),
                None => anyhow!("timed out after {timeout:?} waiting for {what}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What is in the blob store: the records of every uploaded blob, read back as soon as its
/// upload is notified (so that a later fault of the blob store cannot hide what was
/// uploaded), and read again when the same blob name is uploaded again (the newest upload
/// of a name is what the cloud keeps).
#[derive(Debug, Default)]
pub struct Uploads {
    /// Blob name → (successful uploads notified, records of the newest one).
    blobs: BTreeMap<String, (usize, Vec<ArchivedRecord>)>,
}

impl Uploads {
    /// The records of every blob, newest upload of each.
    pub fn records(&self) -> impl Iterator<Item = &ArchivedRecord> {
        self.blobs.values().flat_map(|(_, r)| r)
    }

    /// Blobs uploaded.
    pub fn blobs(&self) -> usize {
        self.blobs.len()
    }

    /// Uploads that replaced an earlier upload of the same blob name.
    pub fn reuploads(&self) -> usize {
        self.blobs.values().map(|(n, _)| n.saturating_sub(1)).sum()
    }
}

/// A running pipeline: the runtime (edgeHub, workload API, edgeAgent with the module
/// processes, IoT Hub's side) in a temporary folder.
pub struct Pipeline {
    /// The runtime.
    pub rt: Runtime,
    dir: tempfile::TempDir,
    opts: Options,
}

impl Pipeline {
    /// Starts `manifest` on a free port in a new temporary folder, with every module it
    /// names started from [`module_bin_dir`], and Azurite as the blob store if `azurite`.
    pub async fn start(manifest: &Value, azurite: bool) -> Result<Pipeline> {
        Pipeline::start_with(manifest, azurite, |_| {}).await
    }

    /// Like [`start`](Pipeline::start), with the runtime's options adjusted by `adjust`.
    pub async fn start_with(
        manifest: &Value,
        azurite: bool,
        adjust: impl FnOnce(&mut Options),
    ) -> Result<Pipeline> {
        let dir = tempfile::tempdir().context("creating a temporary folder")?;
        let path = dir.path().join("deployment.json");
        std::fs::write(&path, serde_json::to_vec_pretty(manifest)?)
            .with_context(|| format!("writing {}", path.display()))?;
        let mut opts = Options::new(&path, dir.path().join("state"));
        opts.mqtt_port = 0;
        opts.bin_dir = Some(module_bin_dir()?);
        if azurite {
            opts.azurite = Some(azurite_launcher()?);
        }
        // edgeHub's metrics and each module's on free ports.
        opts.metrics = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        adjust(&mut opts);
        let rt = Runtime::start(opts.clone()).await?;
        // A restart keeps the port, as a device's edgeHub does.
        opts.mqtt_port = rt.mqtt_port;
        Ok(Pipeline { rt, dir, opts })
    }

    /// What `name` (`edgeHub` or a module) serves on `path` of its metrics endpoint
    /// (`/metrics`, `/health/live`, `/health/ready`); an error for anything but a 200.
    pub async fn scrape(&self, name: &str, path: &str) -> Result<String> {
        let addr = self
            .rt
            .metrics
            .get(name)
            .with_context(|| format!("{name} has no metrics endpoint"))?;
        edge_client::observe::get(*addr, path, Duration::from_secs(5))
            .await
            .map_err(|e| anyhow!("{name} {path}: {e}"))
    }

    /// Stops the runtime (modules with SIGTERM, then the servers and Azurite) and starts it
    /// again on the same state folder and port.
    pub async fn restart(self) -> Result<Pipeline> {
        let Pipeline { rt, dir, opts } = self;
        rt.shutdown().await;
        let deadline = Instant::now() + Duration::from_secs(10);
        let rt = loop {
            match Runtime::start(opts.clone()).await {
                Ok(rt) => break rt,
                // The old listener may take a moment to close.
                Err(e) if Instant::now() < deadline && e.to_string().contains("cannot listen") => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e.context("restarting the runtime")),
            }
        };
        Ok(Pipeline { rt, dir, opts })
    }

    /// Stops everything.
    pub async fn shutdown(self) {
        self.rt.shutdown().await;
    }

    /// The temporary folder (manifest, state, anything a test writes).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The runtime's state folder.
    pub fn state(&self) -> &Path {
        self.rt.state_dir()
    }

    /// Waits until every module of the manifest is connected and subscribed to its inputs.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<()> {
        wait_for("every module connected to edgeHub", timeout, || {
            let stats = self.rt.hub.endpoint_stats();
            Ok(MODULES
                .iter()
                .all(|m| stats.get(*m).is_some_and(|s| s.connected))
                .then_some(()))
        })
        .await
    }

    /// The module's current process id.
    pub fn pid(&self, module: &str) -> Option<u32> {
        self.rt.process_status().get(module).and_then(|s| s.pid)
    }

    /// Times edgeAgent restarted the module.
    pub fn restarts(&self, module: &str) -> u32 {
        self.rt
            .process_status()
            .get(module)
            .map_or(0, |s| s.restarts)
    }

    /// Kills the module's process with SIGKILL and waits until edgeAgent has started a new
    /// one and it is connected again; returns the new process id.
    pub async fn kill_module(&self, module: &str, timeout: Duration) -> Result<u32> {
        let old = self
            .pid(module)
            .ok_or_else(|| anyhow!("module {module} is not running"))?;
        kill(old)?;
        let pid = wait_for(&format!("{module} restarted"), timeout, || {
            Ok(self.pid(module).filter(|p| *p != old))
        })
        .await?;
        wait_for(&format!("{module} connected again"), timeout, || {
            Ok(self
                .rt
                .hub
                .endpoint_stats()
                .get(module)
                .is_some_and(|s| s.connected)
                .then_some(()))
        })
        .await?;
        Ok(pid)
    }

    /// Patches a module's desired properties, as an operator does.
    pub fn patch_desired(&self, module: &str, patch: Value) -> Result<u64> {
        let map = patch
            .as_object()
            .ok_or_else(|| anyhow!("a desired-properties patch is a JSON object"))?;
        Ok(self.rt.hub.patch_desired(module, map)?)
    }

    /// The module's reported properties.
    pub fn reported(&self, module: &str) -> Value {
        let id = format!("{}/{module}", self.rt.hub.config().device_id);
        self.rt.hub.twins.get(&id)["reported"].clone()
    }

    /// A reported counter of the Avro writer (`RecordsWritten`, `UploadFailures`, …); 0
    /// until reported.
    pub fn writer_counter(&self, name: &str) -> u64 {
        self.reported(WRITER)[name].as_u64().unwrap_or(0)
    }

    /// Messages the module acknowledged since the runtime started.
    pub fn delivered(&self, module: &str) -> u64 {
        self.rt
            .hub
            .endpoint_stats()
            .get(module)
            .map_or(0, |s| s.delivered)
    }

    /// Registers leaf device `id` in the runtime's registry and connects it through edgeHub
    /// with its own key, trusting the runtime's CA.
    pub async fn leaf_device(&self, id: &str) -> Result<ModuleClient> {
        Ok(ModuleClient::connect(self.leaf_settings(id)?).await?)
    }

    /// Registers leaf device `id` (if it is not yet) and returns the settings its client
    /// connects with through the gateway.
    pub fn leaf_settings(&self, id: &str) -> Result<Settings> {
        let key = KeyStore::new(layout::registry(self.state()))
            .ensure(id)
            .with_context(|| format!("registering {id}"))?;
        Ok(leaf_simulator::Gateway::from_state(self.state())?.device_settings(id, &key)?)
    }

    /// What reached IoT Hub so far.
    pub fn upstream(&self) -> Result<Outcomes> {
        Ok(upstream::read(self.state())?)
    }

    /// The Avro writer's archive (`/avrofiles` as the manifest binds it).
    pub fn archive_root(&self) -> PathBuf {
        self.state().join("binds/data/avrofiles")
    }

    /// The Avro files in the archive.
    pub fn archive_files(&self) -> Result<Vec<PathBuf>> {
        let root = self.archive_root();
        if !root.exists() {
            return Ok(Vec::new());
        }
        Ok(avro_file_writer::tree::list_avro_files(&root)
            .with_context(|| format!("listing {}", root.display()))?
            .into_iter()
            .map(|f| f.path)
            .collect())
    }

    /// Every record of the Avro files in the archive, read with `apache-avro`'s reader.
    pub fn archived_records(&self) -> Result<Vec<ArchivedRecord>> {
        let mut out = Vec::new();
        for f in self.archive_files()? {
            out.extend(read_file(&f).map_err(anyhow::Error::msg)?);
        }
        Ok(out)
    }

    /// The file-upload notifications IoT Hub received.
    pub fn notifications(&self) -> Result<Vec<Value>> {
        let path = layout::file_notifications(self.state());
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).with_context(|| format!("{}: {l}", path.display())))
            .collect()
    }

    /// The blobs of successful uploads, as notified.
    pub fn uploaded_blobs(&self) -> Result<Vec<String>> {
        Ok(self
            .notifications()?
            .iter()
            .filter(|n| n["isSuccess"] == true)
            .filter_map(|n| n["blobName"].as_str().map(str::to_owned))
            .collect())
    }

    /// Reads blob `blob` back from the blob store (Azurite or the folder) and parses it as
    /// an Avro container file of the tutorial's schema.
    pub async fn read_uploaded(&self, blob: &str) -> Result<Vec<ArchivedRecord>> {
        let bytes = iotedge_local::iothub::files::read_blob(
            &self.rt.blob_store,
            &self.opts.upload_container,
            blob,
            &self.rt.ca_pem,
        )
        .await
        .with_context(|| format!("reading blob {blob} back"))?;
        let copy = self
            .dir()
            .join(format!("downloaded-{}.avro", uuid::Uuid::new_v4().simple()));
        std::fs::write(&copy, &bytes)?;
        let records = match read_file(&copy) {
            Ok(records) => same_with_fastavro(&copy, &records)
                .await
                .with_context(|| format!("blob {blob}"))
                .map(|()| records),
            Err(e) => Err(anyhow!("blob {blob}: {e}")),
        };
        let _ = std::fs::remove_file(&copy);
        records
    }

    /// Reads back into `into` the blobs uploaded (or uploaded again) since the last call;
    /// returns how many were read.
    pub async fn collect_uploads(&self, into: &mut Uploads) -> Result<usize> {
        let mut notified: BTreeMap<String, usize> = BTreeMap::new();
        for blob in self.uploaded_blobs()? {
            *notified.entry(blob).or_default() += 1;
        }
        let mut read = 0;
        for (blob, n) in notified {
            if into.blobs.get(&blob).is_some_and(|(seen, _)| *seen >= n) {
                continue;
            }
            let records = self.read_uploaded(&blob).await?;
            into.blobs.insert(blob, (n, records));
            read += 1;
        }
        Ok(read)
    }
}

/// The correlation ids of each Avro file in `files`, in order, as fastavro reads them
/// (`tests/avro/read_back.py`): a reader independent of the writer's, which fails on a
/// torn or damaged block anywhere in a file. Needs the Python environment of
/// `scripts/setup-python.sh`.
pub async fn fastavro_correlation_ids(files: &[PathBuf]) -> Result<BTreeMap<PathBuf, Vec<String>>> {
    if files.is_empty() {
        return Ok(BTreeMap::new());
    }
    let root = repo_root();
    let python = root.join(".venv/bin/python");
    if !python.is_file() {
        bail!(
            "{} is missing: run scripts/setup-python.sh (fastavro reads the Avro files back)",
            python.display()
        );
    }
    let out = tokio::process::Command::new(&python)
        .arg(root.join("tests/avro/read_back.py"))
        .args(files)
        .output()
        .await
        .with_context(|| format!("running {}", python.display()))?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let read: BTreeMap<String, Vec<String>> =
        serde_json::from_slice(&out.stdout).context("read_back.py printed no JSON")?;
    Ok(read
        .into_iter()
        .map(|(f, ids)| (PathBuf::from(f), ids))
        .collect())
}

/// Fails unless fastavro reads `file` whole and finds the records `records` in the same
/// order.
pub async fn same_with_fastavro(file: &Path, records: &[ArchivedRecord]) -> Result<()> {
    let read = fastavro_correlation_ids(&[file.to_path_buf()]).await?;
    let theirs = read.into_values().next().unwrap_or_default();
    let ours: Vec<&str> = records.iter().map(|r| r.correlation_id()).collect();
    if theirs != ours {
        bail!(
            "{}: fastavro reads {} records, apache-avro {} (or in another order)",
            file.display(),
            theirs.len(),
            ours.len()
        );
    }
    Ok(())
}

/// Sends SIGKILL to process `pid`.
pub fn kill(pid: u32) -> Result<()> {
    signal(pid, nix::sys::signal::Signal::SIGKILL).with_context(|| format!("killing process {pid}"))
}

/// Sends SIGTERM to process `pid`.
pub fn terminate(pid: u32) -> Result<()> {
    signal(pid, nix::sys::signal::Signal::SIGTERM)
        .with_context(|| format!("stopping process {pid}"))
}

fn signal(pid: u32, signal: nix::sys::signal::Signal) -> Result<()> {
    let raw = i32::try_from(pid).map_err(|_| anyhow!("process id {pid} out of range"))?;
    Ok(nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(raw),
        signal,
    )?)
}

/// Whether process `pid` has exited (gone, or a zombie its parent has not reaped yet).
pub fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

/// Index of `field` in an archived record's `Body` (schema order).
pub fn body_index(field: &str) -> Option<usize> {
    turbofan_domain::record::BODY_FIELDS
        .iter()
        .position(|f| *f == field)
}
