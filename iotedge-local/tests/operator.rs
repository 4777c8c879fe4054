//! The operator's commands against a running runtime: `restart`, `logs`, `invoke`, `status`.

use iotedge_local::{Options, Runtime};
use serde_json::{json, Value};
use std::time::Duration;

async fn cli(state: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let o = tokio::process::Command::new(env!("CARGO_BIN_EXE_iotedge-local"))
        .arg("--state")
        .arg(state)
        .args(args)
        .output()
        .await
        .expect("iotedge-local runs");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn started_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.starts_with("started ")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_logs_and_status_of_a_module_process() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = json!({"modulesContent": {
        "$edgeAgent": {"properties.desired": {"modules": {
            "sleeper": {"settings": {"image": "local/sleeper"}, "restartPolicy": "never"}}}},
        "$edgeHub": {"properties.desired": {"routes": {}}}}});
    let path = dir.path().join("deployment.json");
    std::fs::write(&path, manifest.to_string()).unwrap();
    let mut opts = Options::new(&path, dir.path().join("state"));
    opts.mqtt_port = 0;
    opts.exec.insert(
        "sleeper".into(),
        "sh -c 'echo started $$; exec sleep 600'".into(),
    );
    let rt = Runtime::start(opts).await.unwrap();
    let state = rt.state_dir().to_path_buf();
    let log = runtime_state::layout::module_log(&state, "sleeper");
    let wait_started = |n: usize| {
        let log = log.clone();
        async move {
            for _ in 0..200 {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if started_lines(&text).len() >= n {
                    return text;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("the module did not start {n} time(s)");
        }
    };
    let first = wait_started(1).await;

    // Restarted on request, although its restartPolicy is never.
    let (ok, out, err) = cli(&state, &["restart", "sleeper"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("restarting"), "{out}");
    let text = wait_started(2).await;
    let starts = started_lines(&text);
    assert_ne!(starts[0], starts[1], "a new process: {text}");
    assert_eq!(started_lines(&first)[0], starts[0]);

    let (ok, out, err) = cli(&state, &["logs", "sleeper", "--tail", "1"]).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim_end(), *starts.last().unwrap());

    let (ok, out, err) = cli(&state, &["status"]).await;
    assert!(ok, "{err}");
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["processes"]["sleeper"]["restarts"], 1, "{status}");

    let (ok, _, err) = cli(&state, &["restart", "nosuch"]).await;
    assert!(!ok && err.contains("no module process 'nosuch'"), "{err}");
    let (ok, _, err) = cli(&state, &["logs", "nosuch"]).await;
    assert!(!ok && err.contains("no log for module 'nosuch'"), "{err}");
    // The sleeper is no module client: a direct method to it is refused, clearly.
    let (ok, _, err) = cli(&state, &["invoke", "sleeper", "ping"]).await;
    assert!(
        !ok && err.contains("does not listen for direct methods"),
        "{err}"
    );
    rt.shutdown().await;
}
