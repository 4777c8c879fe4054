//! The `iotedge-local` command: clear errors for a bad manifest, a port in use and a missing
//! module program; leaf-device registration.

use std::process::{Command, Output};

fn run(args: &[&str], state: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_iotedge-local"))
        .arg("--state")
        .arg(state)
        .args(args)
        .output()
        .expect("iotedge-local runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const EMPTY: &str = r#"{"modulesContent": {"$edgeAgent": {"properties.desired": {"modules": {}}},
    "$edgeHub": {"properties.desired": {"routes": {}}}}}"#;

#[test]
fn a_missing_or_malformed_manifest_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(
        &[
            "run",
            "--manifest",
            "/nonexistent/deployment.json",
            "--mqtt-port",
            "0",
        ],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("cannot read manifest /nonexistent/deployment.json"),
        "{}",
        stderr(&o)
    );

    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"modulesContent\": ").unwrap();
    let o = run(
        &[
            "run",
            "--manifest",
            bad.to_str().unwrap(),
            "--mqtt-port",
            "0",
        ],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("is not valid JSON"), "{}", stderr(&o));
}

#[test]
fn a_port_in_use_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let manifest = dir.path().join("m.json");
    std::fs::write(&manifest, EMPTY).unwrap();
    let o = run(
        &[
            "run",
            "--manifest",
            manifest.to_str().unwrap(),
            "--mqtt-port",
            &port,
        ],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains(&format!("cannot listen on 127.0.0.1:{port}")) && e.contains("--mqtt-port"),
        "{e}"
    );
}

#[test]
fn a_missing_module_program_says_how_to_build_or_replace_it() {
    let dir = tempfile::tempdir().unwrap();
    let template = concat!(env!("CARGO_MANIFEST_DIR"), "/../deployment.template.json");
    let o = run(
        &[
            "run",
            "--manifest",
            template,
            "--mqtt-port",
            "0",
            "--bin-dir",
            "/nonexistent",
        ],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    for m in ["turbofanRouter", "turbofanRulClassifier", "avroFileWriter"] {
        assert!(e.contains(&format!("cargo build -p {m}")), "{e}");
    }
    assert!(e.contains("--exec turbofanRouter=COMMAND"), "{e}");
}

#[test]
fn device_add_registers_once_and_prints_a_gateway_connection_string() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(&["device", "add", "Client_001"], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let cs = String::from_utf8(o.stdout).unwrap();
    let parsed = edge_protocol::ConnectionString::parse(cs.trim()).unwrap();
    assert_eq!(parsed.device_id, "Client_001");
    assert_eq!(parsed.gateway_host_name.as_deref(), Some("localhost"));
    let again = run(&["device", "add", "Client_001"], dir.path());
    assert_eq!(
        String::from_utf8(again.stdout).unwrap(),
        cs,
        "same key on a second add"
    );
    let list = run(&["device", "list"], dir.path());
    assert_eq!(String::from_utf8(list.stdout).unwrap(), "Client_001\n");
    // IoT Hub's rules for ids: no '/', no white space or control characters, ≤ 128.
    let long = "x".repeat(129);
    for id in ["a/b", "a b", "a\nforged log line", "", long.as_str()] {
        let bad = run(&["device", "add", id], dir.path());
        assert_eq!(bad.status.code(), Some(1), "{id:?}");
        let err = String::from_utf8(bad.stderr).unwrap();
        assert!(err.contains("the device id is refused"), "{err}");
    }
    let list = run(&["device", "list"], dir.path());
    assert_eq!(String::from_utf8(list.stdout).unwrap(), "Client_001\n");
}
