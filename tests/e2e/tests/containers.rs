//! The pipeline on the module images: `iotedge-local` in container mode runs each module of
//! the manifest from the image `docker/build-images.sh` built, through the container
//! engine's API, as edgeAgent does on a device.
//!
//! Needs the images: `TURBOFAN_IMAGES` names the file `docker/build-images.sh` writes
//! (`out/images.json`) and `DOCKER_HOST` the engine (`scripts/setup-container-engine.sh`
//! prints both); `scripts/test.sh` sets them. Without `TURBOFAN_IMAGES` the tests say so and
//! pass; with it, an engine that does not answer fails them.
//!
//! A runtime killed with `kill -9` leaves its containers running; the next one started on the
//! same state finds them by their labels and removes them before it creates its own.

use e2e::pipeline::{self, wait_for};
use e2e::run::{avro_records, leaf_run, quiet_period, rul_messages, sent_by, wait_sent, DEVICES};
use e2e::{Pipeline, Uploads, CLASSIFIER, MODULES, WRITER};
use iotedge_local::agent::container::{ContainerMode, Engine};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Container mode with the images of `TURBOFAN_IMAGES`, or `None` (and why) without it.
fn container_mode() -> Option<ContainerMode> {
    let Some(file) = std::env::var_os("TURBOFAN_IMAGES") else {
        println!("skipped: TURBOFAN_IMAGES is not set; build the images (docker/build-images.sh) and set TURBOFAN_IMAGES=out/images.json and DOCKER_HOST (scripts/setup-container-engine.sh prints it)");
        return None;
    };
    let mut mode = ContainerMode {
        engine: ContainerMode::default_engine(),
        ..Default::default()
    };
    mode.read_images_file(Path::new(&file))
        .expect("the images file");
    Some(mode)
}

fn manifest_file(name: &str) -> Value {
    let path = pipeline::repo_root().join(name);
    serde_json::from_slice(&std::fs::read(&path).expect("the manifest")).expect("JSON")
}

async fn start(manifest: &Value, mode: &ContainerMode) -> anyhow::Result<Pipeline> {
    let mode = mode.clone();
    Pipeline::start_with(manifest, true, move |o| o.containers = Some(mode)).await
}

/// The user id a process runs as (`Uid:` of `/proc/<pid>/status`).
fn uid_of(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the process");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .expect("a Uid line")
        .to_owned()
}

/// Waits until every module's container runs as uid 65532 and its image's health check
/// passed.
async fn healthy_as_nonroot(p: &Pipeline) {
    wait_for(
        "every module's HEALTHCHECK healthy",
        Duration::from_secs(90),
        || {
            let status = p.rt.process_status();
            Ok(MODULES
                .iter()
                .all(|m| status.get(*m).and_then(|s| s.health.as_deref()) == Some("healthy"))
                .then_some(()))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}: {:?}", p.rt.process_status()));
    for m in MODULES {
        let pid = p.pid(m).expect("a running container");
        assert_eq!(uid_of(pid), "65532", "{m} runs as the image's nonroot user");
    }
}

/// After a stop, no container of the run is left in the engine.
async fn no_container_left(mode: &ContainerMode, state: &Path) {
    let engine = Engine::connect(&mode.engine).await.expect("the engine");
    let left = engine
        .containers_of(state)
        .await
        .expect("listing containers");
    assert!(left.is_empty(), "containers left after the stop: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_images_run_the_pipeline_and_a_killed_container_loses_nothing() {
    let Some(mode) = container_mode() else {
        return;
    };
    let started = Instant::now();
    let manifest = pipeline::deployment_manifest(&[]).expect("the deployment manifest");
    let p = start(&manifest, &mode)
        .await
        .expect("the runtime starts the manifest's images");
    p.patch_desired(WRITER, quiet_period()).unwrap();
    p.wait_connected(Duration::from_secs(90))
        .await
        .expect("every container connected to edgeHub");
    healthy_as_nonroot(&p).await;
    // Each module's metrics and health checks, on the port the runtime gave it.
    for m in MODULES {
        p.scrape(m, "/health/ready").await.expect("ready");
        let metrics = p.scrape(m, "/metrics").await.expect("metrics");
        assert!(metrics.contains("# TYPE"), "{m}: {metrics}");
    }

    // Ten engines of test_FD003; the classifier's container is killed mid-stream.
    let log = p.dir().join("sent.jsonl");
    let (progress, run) = leaf_run(&p, &log, 60, 10.0);
    wait_sent(&progress, 0.4).await;
    let old = p.pid(CLASSIFIER).expect("the classifier runs");
    let new = p
        .kill_module(CLASSIFIER, Duration::from_secs(60))
        .await
        .expect("the runtime restarts the killed container");
    assert_ne!(old, new);
    assert!(p.restarts(CLASSIFIER) >= 1);
    let sent = sent_by(run, &log).await;
    assert_eq!(sent.len(), DEVICES * 60);

    let ruls = rul_messages(&p, &sent, Duration::from_secs(90)).await;
    assert!(ruls.missing.is_empty(), "RUL messages: {ruls}");
    let mut uploads = Uploads::default();
    let avro = avro_records(&p, &mut uploads, &sent, true, Duration::from_secs(90)).await;
    assert!(avro.missing.is_empty(), "Avro records: {avro}");
    assert!(
        uploads.blobs() > 0,
        "the Avro files were uploaded to Azurite"
    );
    // The container's output is in the module's log, each run's once: its start line as
    // many times as it started.
    let log = std::fs::read_to_string(p.state().join("logs").join(format!("{CLASSIFIER}.log")))
        .expect("the classifier's log");
    assert_eq!(
        log.matches("models loaded").count(),
        p.restarts(CLASSIFIER) as usize + 1,
        "{log}"
    );
    println!(
        "containers: {} messages; RUL messages {ruls}; Avro records {avro} in {} blob(s); {:.1} s",
        sent.len(),
        uploads.blobs(),
        started.elapsed().as_secs_f64()
    );
    let state = p.state().to_path_buf();
    p.shutdown().await;
    no_container_left(&mode, &state).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_derived_manifests_run_or_are_refused_clearly() {
    let Some(mode) = container_mode() else {
        return;
    };
    // The debug variant: the same images, with backtraces and the classifier's scoring port.
    let p = start(&manifest_file("deployment.debug.template.json"), &mode)
        .await
        .expect("the debug manifest starts");
    p.wait_connected(Duration::from_secs(90))
        .await
        .expect("every container connected to edgeHub");
    healthy_as_nonroot(&p).await;
    // `iotedge-local restart` (the control socket) restarts a container as it does a process.
    let socket = runtime_state::layout::control_socket(p.state());
    let old = p.pid(WRITER).expect("the writer runs");
    runtime_state::control::restart(&socket, WRITER)
        .await
        .expect("restart");
    wait_for("the writer restarted", Duration::from_secs(60), || {
        Ok(p.pid(WRITER).filter(|p| *p != old).map(|_| ()))
    })
    .await
    .unwrap();
    p.wait_connected(Duration::from_secs(60))
        .await
        .expect("connected again");
    let log = p.dir().join("sent.jsonl");
    let (_, run) = leaf_run(&p, &log, 5, 20.0);
    let sent = sent_by(run, &log).await;
    let ruls = rul_messages(&p, &sent, Duration::from_secs(60)).await;
    assert!(ruls.missing.is_empty(), "RUL messages: {ruls}");
    let state = p.state().to_path_buf();
    p.shutdown().await;
    no_container_left(&mode, &state).await;

    // The blob storage variant needs Microsoft's blob module image, which no registry here
    // serves: refused, naming it.
    let e = start(
        &manifest_file("deployment.blobstorage.template.json"),
        &mode,
    )
    .await
    .err()
    .expect("refused without the blob module's image")
    .to_string();
    assert!(
        e.contains("mcr.microsoft.com/azure-blob-storage")
            && e.contains("not in the container engine"),
        "{e}"
    );

    // The GPU variant asks for a GPU: refused where the engine has no GPU runtime.
    let engine = Engine::connect(&mode.engine).await.expect("the engine");
    if !engine.gpu {
        let e = start(&manifest_file("deployment.gpu.template.json"), &mode)
            .await
            .err()
            .expect("refused without a GPU runtime")
            .to_string();
        assert!(
            e.contains("asks for a GPU") && e.contains("no GPU runtime"),
            "{e}"
        );
    }
}

/// The ids of the containers a runtime on `state` created, once there are `n`, none of them
/// in `not`.
async fn containers_once(
    mode: &ContainerMode,
    state: &Path,
    n: usize,
    not: &BTreeSet<String>,
) -> BTreeSet<String> {
    let engine = Engine::connect(&mode.engine).await.expect("the engine");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ids: BTreeSet<String> = engine
            .containers_of(state)
            .await
            .expect("listing containers")
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        if ids.len() == n && ids.is_disjoint(not) {
            return ids;
        }
        assert!(
            Instant::now() < deadline,
            "containers of {}: {ids:?}, expected {n} new ones",
            state.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_started_after_a_crash_removes_the_containers_the_crashed_one_left() {
    let Some(mode) = container_mode() else {
        return;
    };
    let images = std::env::var_os("TURBOFAN_IMAGES").expect("TURBOFAN_IMAGES");
    let bin = pipeline::module_bin_dir().expect("the binaries");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let state = state.canonicalize().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let start = || {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("runtime.log"))
            .unwrap();
        Command::new(bin.join("iotedge-local"))
            .arg("--state")
            .arg(&state)
            .args(["run", "--metrics", "off", "--mqtt-port", &port.to_string()])
            .arg("--manifest")
            .arg(pipeline::repo_root().join("deployment.template.json"))
            .args(["--containers", "--engine", &mode.engine, "--images"])
            .arg(&images)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("iotedge-local starts")
    };
    let mut first = start();
    let before = containers_once(&mode, &state, MODULES.len(), &BTreeSet::new()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    first.kill().unwrap();
    first.wait().unwrap();
    let engine = Engine::connect(&mode.engine).await.expect("the engine");
    let left: BTreeSet<String> = engine
        .containers_of(&state)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(
        left, before,
        "a crashed runtime's containers stay until the next one"
    );

    let mut second = start();
    let after = containers_once(&mode, &state, MODULES.len(), &before).await;
    assert!(after.is_disjoint(&before));
    pipeline::terminate(second.id()).unwrap();
    let status = second.wait().unwrap();
    assert!(
        status.success(),
        "the runtime stops cleanly on SIGTERM: {status}"
    );
    no_container_left(&mode, &state).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_container_is_restarted_once_per_episode_under_on_unhealthy() {
    let Some(mode) = container_mode() else {
        return;
    };
    // The router's check fails (an argument the module refuses) every second; two failures
    // make it unhealthy.
    let mut manifest = pipeline::deployment_manifest(&[]).expect("the deployment manifest");
    let router = manifest
        .pointer_mut("/modulesContent/$edgeAgent/properties.desired/modules/turbofanRouter")
        .expect("the router");
    router["restartPolicy"] = "on-unhealthy".into();
    router["settings"]["createOptions"] = serde_json::json!({"Healthcheck": {
        "Test": ["CMD", "/app/module", "--no-such-flag"],
        "Interval": 1_000_000_000u64, "Timeout": 5_000_000_000u64, "Retries": 2, "StartPeriod": 0}});
    let p = start(&manifest, &mode).await.expect("the runtime starts");
    let started = Instant::now();
    wait_for(
        "the router restarted twice",
        Duration::from_secs(60),
        || Ok((p.restarts(e2e::ROUTER) >= 2).then_some(())),
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}: {:?}", p.rt.process_status()));
    let status = p.rt.process_status()[e2e::ROUTER].clone();
    let elapsed = started.elapsed().as_secs_f64();
    // An episode takes at least two failed checks a second apart: no more than one restart
    // for each, however long the container takes to stop.
    assert!(
        f64::from(status.restarts) <= elapsed / 2.0 + 1.0,
        "{} restarts in {elapsed:.1} s: {status:?}",
        status.restarts
    );
    assert!(
        status
            .last_exit
            .as_deref()
            .is_some_and(|e| e.starts_with("unhealthy")),
        "{status:?}"
    );
    let state = p.state().to_path_buf();
    p.shutdown().await;
    no_container_left(&mode, &state).await;
}
