//! `iotedge-local check`: what `iotedge check` asks of a device, asked of this machine
//! before (or while) the runtime runs: the configuration, the certificates, the ports, the
//! models, the disk and the clock, each with a verdict and, when it is not fine, what to do.

use crate::agent::{self, manifest::Manifest};
use runtime_state::layout;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How a check came out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Fine.
    Ok(String),
    /// Works, but worth a look.
    Warning(String),
    /// Will not work as it is.
    Error(String),
}

/// One check and its verdict.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// What was checked.
    pub name: &'static str,
    /// How it came out.
    pub verdict: Verdict,
}

/// What the checks look at: the options `run` would be given.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The deployment manifest.
    pub manifest: PathBuf,
    /// The state folder.
    pub state: PathBuf,
    /// Where module programs are.
    pub bin_dir: PathBuf,
    /// Where the models are when not next to the programs.
    pub models_dir: PathBuf,
    /// The address edgeHub listens on, and its MQTT port.
    pub bind: IpAddr,
    /// edgeHub's MQTT port.
    pub mqtt_port: u16,
    /// edgeHub's metrics address, if any.
    pub metrics: Option<SocketAddr>,
    /// The gateway host name modules and devices connect to.
    pub gateway_hostname: String,
    /// Modules run another way (`--exec`) or not at all (`--skip`): no program needed.
    pub no_program: Vec<String>,
    /// Container mode: the modules run from images in this engine, not from programs.
    pub containers: Option<crate::agent::container::ContainerMode>,
}

/// Every check, and in container mode the engine's: it answers, has each module's image,
/// and a GPU runtime where a module asks for one.
pub async fn run_all(i: &Inputs) -> Vec<Outcome> {
    let mut outcomes = run(i);
    if let Some(mode) = &i.containers {
        outcomes.insert(
            1,
            Outcome {
                name: "containers",
                verdict: containers(i, mode).await,
            },
        );
    }
    outcomes
}

async fn containers(i: &Inputs, mode: &crate::agent::container::ContainerMode) -> Verdict {
    let Ok(m) = Manifest::load(&i.manifest) else {
        return Verdict::Error("no manifest to check the images of".into());
    };
    let engine = match crate::agent::container::Engine::connect(&mode.engine).await {
        Ok(e) => e,
        Err(e) => return Verdict::Error(e),
    };
    let wanted = m
        .modules
        .iter()
        .filter(|s| !i.no_program.contains(&s.name) && s.status == "running");
    let (images, problems) = engine.images_for(mode, wanted).await;
    if !problems.is_empty() {
        return Verdict::Error(problems.join("; "));
    }
    let mut found: Vec<String> = images
        .iter()
        .map(|(module, (image, facts))| {
            format!(
                "{module} {image} (user {})",
                facts.user.as_deref().unwrap_or("root")
            )
        })
        .collect();
    found.sort();
    Verdict::Ok(format!("{}: {}", engine.description, found.join(", ")))
}

/// Runs every check.
pub fn run(i: &Inputs) -> Vec<Outcome> {
    let running = runtime_state::running_runtime(&i.state);
    vec![
        Outcome {
            name: "configuration",
            verdict: configuration(i),
        },
        Outcome {
            name: "certificates",
            verdict: certificates(&i.state, &i.gateway_hostname),
        },
        Outcome {
            name: "ports",
            verdict: ports(i, running.as_ref()),
        },
        Outcome {
            name: "model",
            verdict: models(i),
        },
        Outcome {
            name: "disk",
            verdict: disk(&i.state),
        },
        Outcome {
            name: "time",
            verdict: time(),
        },
    ]
}

fn configuration(i: &Inputs) -> Verdict {
    let m = match Manifest::load(&i.manifest) {
        Ok(m) => m,
        Err(e) => return Verdict::Error(e.to_string()),
    };
    let bad_routes: Vec<String> = m
        .routes
        .iter()
        .filter_map(|r| {
            edge_routes::parse_route(&r.text)
                .err()
                .map(|e| format!("route '{}': {e}", r.name))
        })
        .collect();
    if !bad_routes.is_empty() {
        return Verdict::Error(bad_routes.join("; "));
    }
    let missing: Vec<String> = m
        .modules
        .iter()
        .filter(|s| !i.no_program.contains(&s.name) && i.containers.is_none())
        .filter(|s| s.status == "running")
        .filter_map(|s| agent::resolve_program(&s.name, &s.image, None, &i.bin_dir).err())
        .collect();
    if !missing.is_empty() {
        return Verdict::Error(missing.join("; "));
    }
    let programs = match &i.containers {
        Some(_) => "modules from their images".to_owned(),
        None => format!("every module program found in {}", i.bin_dir.display()),
    };
    Verdict::Ok(format!(
        "{}: {} modules, {} routes, {programs}",
        i.manifest.display(),
        m.modules.len(),
        m.routes.len(),
    ))
}

fn certificates(state: &Path, gateway: &str) -> Verdict {
    use rustls::client::danger::ServerCertVerifier;
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
    let dir = layout::certs(state);
    let (ca, chain) = (dir.join("ca.pem"), dir.join("server.pem"));
    if !ca.exists() {
        return Verdict::Warning(format!(
            "none yet in {}: `iotedge-local run` creates the CA and edgeHub's certificate",
            dir.display()
        ));
    }
    let read = |p: &Path| -> Result<Vec<CertificateDer<'static>>, String> {
        let pem = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
        edge_protocol::trust::certificates(&pem)
            .map_err(|e| format!("{} is not PEM certificates: {e}", p.display()))
    };
    let checked = (|| -> Result<(), String> {
        let pem = std::fs::read(&ca).map_err(|e| format!("{}: {e}", ca.display()))?;
        let roots = edge_protocol::trust::root_store(&pem)
            .map_err(|e| format!("the CA ({}): {e}", ca.display()))?;
        let chain = read(&chain)?;
        let (leaf, rest) = chain
            .split_first()
            .ok_or_else(|| format!("{} holds no certificate", dir.join("server.pem").display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| e.to_string())?;
        let name = ServerName::try_from(gateway.to_owned()).map_err(|e| e.to_string())?;
        verifier
            .verify_server_cert(leaf, rest, &name, &[], UnixTime::now())
            .map_err(|e| format!("edgeHub's certificate does not verify for '{gateway}': {e}"))?;
        Ok(())
    })();
    if let Err(e) = checked {
        return Verdict::Error(format!(
            "{e}; remove {} and `run` again to issue new ones",
            dir.display()
        ));
    }
    use std::os::unix::fs::PermissionsExt;
    let key = dir.join("server.key");
    match std::fs::metadata(&key).map(|m| m.permissions().mode() & 0o077) {
        Ok(0) => Verdict::Ok(format!(
            "edgeHub's certificate chains to the CA in {}, names '{gateway}' and is valid now; its key is private",
            ca.display()
        )),
        Ok(_) => Verdict::Warning(format!(
            "{} is readable by others: chmod 600 it",
            key.display()
        )),
        Err(e) => Verdict::Error(format!("{}: {e}", key.display())),
    }
}

fn ports(i: &Inputs, running: Option<&runtime_state::Ready>) -> Verdict {
    let mut wanted = vec![("edgeHub MQTT/TLS", SocketAddr::new(i.bind, i.mqtt_port))];
    if let Some(m) = i.metrics.filter(|m| m.port() != 0) {
        wanted.push(("edgeHub metrics", m));
    }
    let mut taken = Vec::new();
    let mut ours = Vec::new();
    for (what, addr) in wanted {
        if TcpListener::bind(addr).is_ok() {
            continue;
        }
        match running {
            Some(r) => ours.push(format!("{what} {addr} (the runtime, pid {})", r.pid)),
            None => taken.push(format!("{what} {addr}")),
        }
    }
    if !taken.is_empty() {
        return Verdict::Error(format!(
            "in use by another program: {}; stop it or choose other ports (--mqtt-port, --metrics)",
            taken.join(", ")
        ));
    }
    match ours.is_empty() {
        true => Verdict::Ok(format!(
            "port {} and the metrics port are free",
            i.mqtt_port
        )),
        false => Verdict::Ok(format!(
            "in use by this state's runtime: {}",
            ours.join(", ")
        )),
    }
}

fn models(i: &Inputs) -> Verdict {
    let find = |f: &str| {
        [i.bin_dir.join(f), i.models_dir.join(f)]
            .into_iter()
            .find(|p| p.is_file())
    };
    let Some(row) = find("rul.onnx") else {
        return Verdict::Error(format!(
            "no rul.onnx next to the programs or in {}: the classifier cannot start",
            i.models_dir.display()
        ));
    };
    let history = find("rul_history.onnx");
    let ort = match std::env::var_os("ORT_DYLIB_PATH") {
        Some(p) if Path::new(&p).is_file() => Ok(PathBuf::from(p)),
        Some(p) => Err(format!(
            "ORT_DYLIB_PATH names {}, which does not exist (scripts/setup-python.sh installs it)",
            Path::new(&p).display()
        )),
        None => Err("ORT_DYLIB_PATH is not set: the classifier looks for libonnxruntime.so on the library path".into()),
    };
    let found = format!(
        "{}{}",
        row.display(),
        history.map_or(" (no history model: row scoring only)".into(), |h| format!(
            ", {}",
            h.display()
        ))
    );
    match ort {
        Ok(lib) => Verdict::Ok(format!("{found}; ONNX Runtime {}", lib.display())),
        Err(e) => Verdict::Warning(format!("{found}; {e}")),
    }
}

fn disk(state: &Path) -> Verdict {
    // The folder itself may not exist yet: look at the nearest one that does.
    let mut at = state.to_path_buf();
    while !at.exists() {
        match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => at = p.to_path_buf(),
            _ => {
                at = PathBuf::from(".");
                break;
            }
        }
    }
    match nix::sys::statvfs::statvfs(&at) {
        Ok(s) => {
            let free = s.blocks_available().saturating_mul(s.fragment_size());
            let mb = free / (1024 * 1024);
            let text = format!("{mb} MB free under {}", at.display());
            if mb < 100 {
                Verdict::Error(format!(
                    "{text}: edgeHub's queues and the Avro archive need room"
                ))
            } else if mb < 1024 {
                Verdict::Warning(format!("{text}: under 1 GB"))
            } else {
                Verdict::Ok(text)
            }
        }
        Err(e) => Verdict::Warning(format!("free space under {} unknown: {e}", at.display())),
    }
}

fn time() -> Verdict {
    let now = chrono::Utc::now();
    // Nothing before this project's first release can be right.
    if now.timestamp() < 1_767_225_600 {
        return Verdict::Error(format!(
            "the clock says {now}: SAS tokens and certificates will be refused; set the time"
        ));
    }
    Verdict::Ok(format!(
        "{}; the local IoT Hub shares this clock (on a device, `iotedge check` also compares it with a time server)",
        now.format("%Y-%m-%d %H:%M:%S UTC")
    ))
}

/// Prints the outcomes as `iotedge check` does, one line each; true if none is an error.
pub fn print(outcomes: &[Outcome]) -> bool {
    let mut ok = true;
    for o in outcomes {
        let (mark, text) = match &o.verdict {
            Verdict::Ok(t) => ("√", t),
            Verdict::Warning(t) => ("‼", t),
            Verdict::Error(t) => {
                ok = false;
                ("×", t)
            }
        };
        println!("{mark} {}: {text}", o.name);
    }
    let errors = outcomes
        .iter()
        .filter(|o| matches!(o.verdict, Verdict::Error(_)))
        .count();
    let warnings = outcomes
        .iter()
        .filter(|o| matches!(o.verdict, Verdict::Warning(_)))
        .count();
    println!(
        "{} checks: {} fine, {warnings} warning(s), {errors} error(s)",
        outcomes.len(),
        outcomes.len() - warnings - errors
    );
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(dir: &Path) -> Inputs {
        Inputs {
            manifest: dir.join("deployment.json"),
            state: dir.join("state"),
            bin_dir: dir.join("bin"),
            models_dir: dir.join("models"),
            bind: IpAddr::from([127, 0, 0, 1]),
            mqtt_port: 0,
            metrics: None,
            gateway_hostname: "localhost".into(),
            no_program: Vec::new(),
            containers: None,
        }
    }

    #[test]
    fn a_bad_setup_gets_an_error_per_problem_and_a_good_one_passes() {
        let dir = tempfile::tempdir().unwrap();
        let i = inputs(dir.path());
        let v = |name: &str, outs: &[Outcome]| {
            outs.iter()
                .find(|o| o.name == name)
                .unwrap()
                .verdict
                .clone()
        };
        let outs = run(&i);
        assert!(
            matches!(v("configuration", &outs), Verdict::Error(e) if e.contains("deployment.json"))
        );
        assert!(matches!(v("certificates", &outs), Verdict::Warning(_)));
        assert!(matches!(v("model", &outs), Verdict::Error(e) if e.contains("rul.onnx")));
        assert!(matches!(v("time", &outs), Verdict::Ok(_)));

        std::fs::write(
            &i.manifest,
            r#"{"modulesContent": {"$edgeAgent": {"properties.desired": {"modules": {
                "m": {"settings": {"image": "local/m"}}}}},
                "$edgeHub": {"properties.desired": {"routes": {"r": "FROM /messages/* INTO $upstream"}}}}}"#,
        )
        .unwrap();
        let outs = run(&i);
        assert!(
            matches!(v("configuration", &outs), Verdict::Error(e) if e.contains("--exec m=COMMAND"))
        );
        std::fs::create_dir_all(&i.bin_dir).unwrap();
        std::fs::write(i.bin_dir.join("m"), "").unwrap();
        std::fs::create_dir_all(&i.models_dir).unwrap();
        std::fs::write(i.models_dir.join("rul.onnx"), "x").unwrap();
        let outs = run(&i);
        assert!(
            matches!(v("configuration", &outs), Verdict::Ok(_)),
            "{outs:?}"
        );
        assert!(!matches!(v("model", &outs), Verdict::Error(_)), "{outs:?}");

        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut busy = i.clone();
        busy.mqtt_port = taken.local_addr().unwrap().port();
        assert!(
            matches!(v("ports", &run(&busy)), Verdict::Error(e) if e.contains("another program"))
        );

        // Certificates the runtime made verify; a gateway name they do not carry does not.
        let certs = layout::certs(&i.state);
        crate::workload::certs::load_or_create(&certs, &["localhost".into()]).unwrap();
        assert!(matches!(
            certificates(&i.state, "localhost"),
            Verdict::Ok(_)
        ));
        assert!(
            matches!(certificates(&i.state, "other.example"), Verdict::Error(e) if e.contains("does not verify"))
        );
    }
}
