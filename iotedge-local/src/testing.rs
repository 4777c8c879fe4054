//! Test support for this workspace's integration tests: an in-process runtime on a free port
//! with a test manifest, and module clients made from exactly the environment the runtime
//! gives each module.

use crate::{Options, Runtime};
use edge_client::{ModuleClient, Settings};
use serde_json::{json, Value};
use std::time::Duration;

/// A runtime in a temporary folder.
pub struct TestRuntime {
    /// The runtime.
    pub rt: Runtime,
    /// Its folder (manifest and state); removed when dropped.
    pub dir: tempfile::TempDir,
}

/// A manifest with the given modules (no processes are started) and routes.
pub fn manifest(modules: &[&str], routes: &[(&str, &str)], ttl_secs: u64, desired: Value) -> Value {
    let mods: serde_json::Map<String, Value> = modules
        .iter()
        .map(|m| {
            (
                m.to_string(),
                json!({"type": "docker", "status": "running", "restartPolicy": "always",
                       "settings": {"image": format!("local/{m}:1"), "createOptions": {}}}),
            )
        })
        .collect();
    let routes: serde_json::Map<String, Value> = routes
        .iter()
        .map(|(n, r)| (n.to_string(), json!(r)))
        .collect();
    let mut content = json!({
        "$edgeAgent": {"properties.desired": {"schemaVersion": "1.1", "modules": mods}},
        "$edgeHub": {"properties.desired": {"schemaVersion": "1.1", "routes": routes,
            "storeAndForwardConfiguration": {"timeToLiveSecs": ttl_secs}}},
    });
    if let Value::Object(d) = desired {
        for (m, props) in d {
            content[m] = json!({"properties.desired": props});
        }
    }
    json!({"modulesContent": content})
}

/// Starts a runtime for `manifest` on a free port; no module processes are started.
pub async fn start(manifest: Value) -> TestRuntime {
    start_with(manifest, |_| {}).await
}

/// Like [`start`], with the options adjusted by `adjust` (e.g. to start module processes).
pub async fn start_with(manifest: Value, adjust: impl FnOnce(&mut Options)) -> TestRuntime {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("deployment.json");
    std::fs::write(&path, manifest.to_string()).expect("write manifest");
    let mut opts = Options::new(&path, dir.path().join("state"));
    opts.mqtt_port = 0;
    opts.start_modules = false;
    adjust(&mut opts);
    let rt = Runtime::start(opts).await.expect("runtime starts");
    TestRuntime { rt, dir }
}

impl TestRuntime {
    /// Stops the runtime, waits `pause`, and starts it again on the same manifest, state
    /// folder and port (clients reconnect to it).
    pub async fn restart(self, pause: Duration) -> TestRuntime {
        self.restart_with(pause, |_| {}).await
    }

    /// Like [`TestRuntime::restart`], with the new options adjusted by `adjust`.
    pub async fn restart_with(
        self,
        pause: Duration,
        adjust: impl FnOnce(&mut Options),
    ) -> TestRuntime {
        let TestRuntime { rt, dir } = self;
        let port = rt.mqtt_port;
        rt.shutdown().await;
        tokio::time::sleep(pause).await;
        let mut opts = Options::new(dir.path().join("deployment.json"), dir.path().join("state"));
        opts.mqtt_port = port;
        opts.start_modules = false;
        adjust(&mut opts);
        let rt = Runtime::start(opts)
            .await
            .expect("runtime restarts on the same port and state");
        TestRuntime { rt, dir }
    }

    /// Client settings from the module's environment.
    pub fn settings(&self, module: &str) -> Settings {
        let env = self.rt.module_env(module).expect("module in manifest");
        Settings::from_vars(&env).expect("settings from the runtime's environment")
    }

    /// A connected client for `module`.
    pub async fn client(&self, module: &str) -> ModuleClient {
        ModuleClient::connect(self.settings(module))
            .await
            .expect("module connects")
    }

    /// Upstream records stored so far.
    pub fn upstream(&self) -> Vec<Value> {
        let path = runtime_state::layout::upstream_store(self.rt.state_dir());
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("upstream line is JSON"))
            .collect()
    }

    /// Waits until at least `n` upstream records are stored.
    pub async fn wait_upstream(&self, n: usize) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let u = self.upstream();
            if u.len() >= n || tokio::time::Instant::now() > deadline {
                return u;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Receives the next input message within 10 s.
pub async fn next_input(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<edge_client::InputMessage>,
) -> edge_client::InputMessage {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an input message within 10 s")
        .expect("input stream open")
}

/// The largest `n` in `lo..hi` for which `client` would send `make(n)` to `output` (its
/// publish fits in an MQTT packet), found without sending anything. `make(lo)` must fit and
/// `make(hi)` must not.
pub fn largest_sendable(
    client: &ModuleClient,
    output: &str,
    (lo, hi): (usize, usize),
    make: impl Fn(usize) -> edge_client::Message,
) -> usize {
    let fits = |n| client.prepare_output(output, make(n)).is_ok();
    assert!(fits(lo) && !fits(hi), "{lo} must fit and {hi} must not");
    let (mut ok, mut too_large) = (lo, hi);
    while too_large - ok > 1 {
        let n = ok + (too_large - ok) / 2;
        if fits(n) {
            ok = n;
        } else {
            too_large = n;
        }
    }
    ok
}

/// Benchmark helpers shared by the runtime's and the pipeline's load benchmarks.
/// TLS client settings that trust the runtime's CA (`ca_pem`), for raw MQTT and HTTPS
/// clients in tests.
pub fn tls_client_config(ca_pem: &str) -> std::sync::Arc<rustls::ClientConfig> {
    use edge_protocol::trust;
    let roots =
        trust::root_store(ca_pem.as_bytes()).expect("the runtime's CA is a PEM certificate");
    let cfg = trust::client_config(roots).expect("ring supports the default TLS versions");
    std::sync::Arc::new(cfg)
}

pub mod bench {
    /// The number after `name` on the command line, else `default`.
    pub fn arg(name: &str, default: u64) -> u64 {
        let args: Vec<String> = std::env::args().collect();
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    /// The `p` quantile (0 to 1, nearest rank) of `sorted`, NaN when empty.
    pub fn percentile(sorted: &[u64], p: f64) -> f64 {
        if sorted.is_empty() {
            return f64::NAN;
        }
        let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted[i] as f64
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn percentiles_take_the_nearest_rank() {
            let v: Vec<u64> = (1..=101).collect();
            assert_eq!(super::percentile(&v, 0.5), 51.0);
            assert_eq!(super::percentile(&v, 0.99), 100.0);
            assert_eq!(super::percentile(&v, 1.0), 101.0);
            assert!(super::percentile(&[], 0.5).is_nan());
        }
    }
}
