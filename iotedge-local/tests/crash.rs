//! The runtime itself crashes (`kill -9` of `iotedge-local`): its module processes must not
//! live on unnoticed. They get SIGTERM when the runtime dies; one that ignores it is found
//! and stopped by the next runtime started on the same state, before it starts its own copy.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn alive(pid: u32) -> bool {
    // A zombie (dead, not yet reaped by its parent) counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(')').next().map(|r| r.trim_start().chars().next()))
        .flatten()
        .is_some_and(|state| state != 'Z' && state != 'X')
}

fn wait(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let until = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run(state: &Path, manifest: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(state.with_extension("log"))
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_iotedge-local"))
        .arg("--state")
        .arg(state)
        .args(["run", "--mqtt-port", "0", "--metrics", "off", "--manifest"])
        .arg(manifest)
        .args([
            "--exec",
            "sleeper=sh -c 'echo started; exec sleep 600'",
            "--exec",
            // ignores SIGTERM: only SIGKILL stops it
            "stubborn=sh -c 'trap \"\" TERM; echo started; while :; do sleep 0.2; done'",
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("iotedge-local starts")
}

/// The pid the runtime recorded for `module`, once its process runs.
fn module_pid(state: &Path, module: &str) -> u32 {
    let file = state.join("modules").join(module).join("pid");
    let mut pid = 0;
    wait(
        &format!("{module}'s pid file"),
        Duration::from_secs(30),
        || {
            pid = std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| t.split_whitespace().next()?.parse().ok())
                .unwrap_or(0);
            pid != 0 && alive(pid)
        },
    );
    pid
}

fn started(state: &Path, module: &str) -> usize {
    std::fs::read_to_string(runtime_state::layout::module_log(state, module))
        .unwrap_or_default()
        .lines()
        .filter(|l| *l == "started")
        .count()
}

#[test]
fn modules_never_outlive_a_crashed_runtime_unnoticed() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("deployment.json");
    let module = |_| json!({"settings": {"image": "local/x"}, "restartPolicy": "always"});
    std::fs::write(
        &manifest,
        json!({"modulesContent": {
            "$edgeAgent": {"properties.desired": {"modules": {
                "sleeper": module(()), "stubborn": module(())}}},
            "$edgeHub": {"properties.desired": {"routes": {}}}}})
        .to_string(),
    )
    .unwrap();
    let state = dir.path().join("state");

    let mut first = run(&state, &manifest);
    let sleeper = module_pid(&state, "sleeper");
    let stubborn = module_pid(&state, "stubborn");
    kill(Pid::from_raw(first.id() as i32), Signal::SIGKILL).unwrap();
    first.wait().unwrap();
    wait(
        "the module to die with its runtime",
        Duration::from_secs(10),
        || !alive(sleeper),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        alive(stubborn),
        "a module ignoring SIGTERM outlives the runtime"
    );

    // A new runtime on the same state stops the leftover before starting its own copy.
    let mut second = run(&state, &manifest);
    let new_sleeper = module_pid(&state, "sleeper");
    let new_stubborn = module_pid(&state, "stubborn");
    assert!(!alive(stubborn), "the leftover was stopped");
    assert_ne!(new_stubborn, stubborn);
    assert_ne!(new_sleeper, sleeper);
    // The new copy writes its line once it runs: give it the time to.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while started(&state, "stubborn") < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(started(&state, "stubborn"), 2, "one copy at a time");
    let runtime_log = std::fs::read_to_string(state.with_extension("log")).unwrap();
    assert!(
        runtime_log.contains("from an earlier runtime is still running"),
        "{runtime_log}"
    );

    kill(Pid::from_raw(second.id() as i32), Signal::SIGKILL).unwrap();
    second.wait().unwrap();
    let _ = kill(Pid::from_raw(new_stubborn as i32), Signal::SIGKILL);
    wait("the modules to end", Duration::from_secs(10), || {
        !alive(new_sleeper) && !alive(new_stubborn)
    });
}
