//! The deployment manifest (`deployment.template.json` as written): modules for edgeAgent,
//! routes and store-and-forward for edgeHub, desired properties per module.
//!
//! Placeholders (`${MODULES.x}`, `$VAR`, `${VAR}`) are kept as text: images are mapped to
//! local programs by [`crate::agent`], and nothing else needs them resolved.

use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// A manifest that cannot be used, with the JSON path of the problem.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read manifest {path}: {source}")]
    Read {
        /// File path.
        path: String,
        /// I/O error.
        source: std::io::Error,
    },
    /// The file is not JSON.
    #[error("manifest {path} is not valid JSON: {source}")]
    Json {
        /// File path.
        path: String,
        /// Parse error (with line and column).
        source: serde_json::Error,
    },
    /// A required part is missing or has the wrong type.
    #[error("manifest: {at}: {problem}")]
    Shape {
        /// JSON path, e.g. `modulesContent.$edgeAgent.properties.desired.modules.x.settings.image`.
        at: String,
        /// What is wrong.
        problem: String,
    },
}

/// A module of `$edgeAgent.properties.desired.modules`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleSpec {
    /// Module name (its identity).
    pub name: String,
    /// `settings.image`, as written.
    pub image: String,
    /// `status`: `running` or `stopped`.
    pub status: String,
    /// `restartPolicy`: `always`, `on-failure`, `on-unhealthy` or `never`.
    pub restart_policy: RestartPolicy,
    /// `env`, name → value.
    pub env: BTreeMap<String, String>,
    /// `createOptions.HostConfig.Binds`.
    pub binds: Vec<Bind>,
    /// `startupOrder`, lower first.
    pub startup_order: u32,
    /// `createOptions.User` (`uid`, `uid:gid`, or a name), as written; the image's `USER`
    /// applies when it is absent.
    pub user: Option<String>,
    /// `settings.createOptions` as a JSON object (`Null` when absent): the container create
    /// body edgeAgent starts from, used as such in container mode.
    pub create_options: Value,
}

/// A bind of `createOptions.HostConfig.Binds`: `host:container[:options]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// The host path (absolute).
    pub host: String,
    /// The path inside the container (absolute).
    pub container: String,
    /// Its options (`ro`, `z`, …), as written.
    pub options: Option<String>,
}

impl Bind {
    /// Reads `host:container[:options]`; `None` unless both paths are absolute.
    pub fn parse(bind: &str) -> Option<Bind> {
        let mut parts = bind.splitn(3, ':');
        let host = parts.next()?;
        let container = parts.next()?;
        (host.starts_with('/') && container.starts_with('/')).then(|| Bind {
            host: host.to_owned(),
            container: container.to_owned(),
            options: parts.next().map(str::to_owned),
        })
    }
}

/// When edgeAgent restarts a module that exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Whenever it exits.
    Always,
    /// When it exits with failure.
    OnFailure,
    /// When it is unhealthy; an exit with failure counts as unhealthy here.
    OnUnhealthy,
    /// Never.
    Never,
}

/// A route of `$edgeHub.properties.desired.routes`.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteSpec {
    /// Route name.
    pub name: String,
    /// Route statement text.
    pub text: String,
}

/// What the runtime takes from a manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// Custom modules, in start order.
    pub modules: Vec<ModuleSpec>,
    /// Routes, in manifest order.
    pub routes: Vec<RouteSpec>,
    /// `storeAndForwardConfiguration.timeToLiveSecs` (edgeHub's default is 7200).
    pub ttl_secs: u64,
    /// Desired properties per module (from `modulesContent.{module}.properties.desired`).
    pub desired: BTreeMap<String, Map<String, Value>>,
}

fn shape(at: impl Into<String>, problem: impl Into<String>) -> ManifestError {
    ManifestError::Shape {
        at: at.into(),
        problem: problem.into(),
    }
}

fn desired<'a>(content: &'a Map<String, Value>, module: &str) -> Option<&'a Map<String, Value>> {
    let m = content.get(module)?;
    // Both `"properties.desired": {…}` and `"properties": {"desired": {…}}` occur in the wild.
    m.get("properties.desired")
        .or_else(|| m.get("properties").and_then(|p| p.get("desired")))
        .and_then(Value::as_object)
}

impl Manifest {
    /// Reads and checks a manifest file.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: p.clone(),
            source,
        })?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|source| ManifestError::Json { path: p, source })?;
        Manifest::from_json(&json)
    }

    /// Checks a parsed manifest.
    pub fn from_json(json: &Value) -> Result<Manifest, ManifestError> {
        let content = json
            .get("modulesContent")
            .and_then(Value::as_object)
            .ok_or_else(|| shape("modulesContent", "missing or not an object"))?;
        let agent = desired(content, "$edgeAgent")
            .ok_or_else(|| shape("modulesContent.$edgeAgent.properties.desired", "missing"))?;
        let hub = desired(content, "$edgeHub")
            .ok_or_else(|| shape("modulesContent.$edgeHub.properties.desired", "missing"))?;

        let mut modules = Vec::new();
        if let Some(mods) = agent.get("modules") {
            let mods = mods.as_object().ok_or_else(|| {
                shape(
                    "modulesContent.$edgeAgent.properties.desired.modules",
                    "not an object",
                )
            })?;
            for (name, spec) in mods {
                modules.push(module_spec(name, spec)?);
            }
        }
        modules.sort_by_key(|m| m.startup_order);

        let mut routes = Vec::new();
        if let Some(rs) = hub.get("routes") {
            let at = "modulesContent.$edgeHub.properties.desired.routes";
            let rs = rs.as_object().ok_or_else(|| shape(at, "not an object"))?;
            for (name, r) in rs {
                // schemaVersion 1.0: a string; 1.1+: {"route": "...", "priority": n, "timeToLiveSecs": n}
                let text = match r {
                    Value::String(s) => s.clone(),
                    Value::Object(o) => o
                        .get("route")
                        .and_then(Value::as_str)
                        .ok_or_else(|| {
                            shape(format!("{at}.{name}"), "object without a \"route\" string")
                        })?
                        .to_owned(),
                    _ => return Err(shape(format!("{at}.{name}"), "not a string or an object")),
                };
                routes.push(RouteSpec {
                    name: name.clone(),
                    text,
                });
            }
        }
        let ttl_secs = hub
            .get("storeAndForwardConfiguration")
            .and_then(|s| s.get("timeToLiveSecs"))
            .and_then(Value::as_u64)
            .unwrap_or(7200);
        let desired_props = content
            .keys()
            .filter(|k| !k.starts_with('$'))
            .filter_map(|k| desired(content, k).map(|d| (k.clone(), d.clone())))
            .collect();
        Ok(Manifest {
            modules,
            routes,
            ttl_secs,
            desired: desired_props,
        })
    }
}

fn module_spec(name: &str, spec: &Value) -> Result<ModuleSpec, ManifestError> {
    let at = format!("modulesContent.$edgeAgent.properties.desired.modules.{name}");
    let image = spec
        .pointer("/settings/image")
        .and_then(Value::as_str)
        .ok_or_else(|| shape(format!("{at}.settings.image"), "missing"))?
        .to_owned();
    let status = spec
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("running")
        .to_owned();
    let restart_policy = match spec
        .get("restartPolicy")
        .and_then(Value::as_str)
        .unwrap_or("always")
    {
        "always" => RestartPolicy::Always,
        "on-failure" => RestartPolicy::OnFailure,
        "on-unhealthy" => RestartPolicy::OnUnhealthy,
        "never" => RestartPolicy::Never,
        other => {
            return Err(shape(
                format!("{at}.restartPolicy"),
                format!("'{other}' is not one of always, on-failure, on-unhealthy, never"),
            ))
        }
    };
    let mut env = BTreeMap::new();
    if let Some(e) = spec.get("env").and_then(Value::as_object) {
        for (k, v) in e {
            let value = match v.get("value").unwrap_or(v) {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            env.insert(k.clone(), value);
        }
    }
    // createOptions is an object in templates and a JSON string in generated manifests.
    let create = match spec.pointer("/settings/createOptions") {
        Some(Value::String(s)) if !s.trim().is_empty() => serde_json::from_str(s).map_err(|e| {
            shape(
                format!("{at}.settings.createOptions"),
                format!("string is not JSON: {e}"),
            )
        })?,
        Some(v) => v.clone(),
        None => Value::Null,
    };
    let mut binds = Vec::new();
    if let Some(bs) = create
        .pointer("/HostConfig/Binds")
        .and_then(Value::as_array)
    {
        for b in bs {
            let b = b.as_str().ok_or_else(|| {
                shape(
                    format!("{at}.settings.createOptions.HostConfig.Binds"),
                    "entry is not a string",
                )
            })?;
            match Bind::parse(b) {
                Some(bind) => binds.push(bind),
                None => {
                    return Err(shape(
                        format!("{at}.settings.createOptions.HostConfig.Binds"),
                        format!("'{b}' is not /host/path:/container/path[:options]"),
                    ))
                }
            }
        }
    }
    let user = create
        .get("User")
        .and_then(Value::as_str)
        .filter(|u| !u.trim().is_empty())
        .map(str::to_owned);
    let startup_order = spec
        .get("startupOrder")
        .and_then(Value::as_u64)
        .unwrap_or(u32::MAX as u64) as u32;
    Ok(ModuleSpec {
        name: name.to_owned(),
        image,
        status,
        restart_policy,
        env,
        binds,
        startup_order,
        user,
        create_options: create,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn manifest() -> Value {
        json!({"modulesContent": {
            "$edgeAgent": {"properties.desired": {"schemaVersion": "1.1", "modules": {
                "writer": {"type": "docker", "status": "running", "restartPolicy": "on-failure",
                    "env": {"A": {"value": "1"}, "B": {"value": 2}},
                    "settings": {"image": "${MODULES.avroFileWriter}",
                        "createOptions": "{\"HostConfig\":{\"Binds\":[\"/data/avrofiles:/avrofiles\",\"/etc/aziot/config.toml:/etc/aziot/config.toml:ro\"]}}"}},
                "router": {"settings": {"image": "${MODULES.turbofanRouter}", "createOptions": {"User": "65532:65532"}}}
            }}},
            "$edgeHub": {"properties.desired": {"schemaVersion": "1.1",
                "routes": {"a": "FROM /* INTO $upstream", "b": {"route": "FROM /messages/* INTO $upstream", "priority": 0}},
                "storeAndForwardConfiguration": {"timeToLiveSecs": 60}}},
            "router": {"properties.desired": {"RulThreshold": 80}}
        }})
    }

    #[test]
    fn reads_modules_routes_ttl_and_desired() {
        let m = Manifest::from_json(&manifest()).unwrap();
        assert_eq!(m.ttl_secs, 60);
        assert_eq!(m.routes.len(), 2);
        assert_eq!(m.routes[1].text, "FROM /messages/* INTO $upstream");
        let w = m.modules.iter().find(|m| m.name == "writer").unwrap();
        assert_eq!(w.restart_policy, RestartPolicy::OnFailure);
        assert_eq!(w.env.get("B").map(String::as_str), Some("2"));
        assert_eq!(
            w.binds,
            vec![
                Bind {
                    host: "/data/avrofiles".to_owned(),
                    container: "/avrofiles".to_owned(),
                    options: None
                },
                Bind {
                    host: "/etc/aziot/config.toml".to_owned(),
                    container: "/etc/aziot/config.toml".to_owned(),
                    options: Some("ro".to_owned())
                }
            ]
        );
        assert_eq!(Bind::parse("vol:/e"), None);
        assert_eq!(m.desired["router"]["RulThreshold"], json!(80));
        assert_eq!(w.user, None);
        let r = m.modules.iter().find(|m| m.name == "router").unwrap();
        assert_eq!(r.user.as_deref(), Some("65532:65532"));
    }

    #[test]
    fn errors_name_the_json_path() {
        let mut j = manifest();
        j["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["router"]
            ["restartPolicy"] = json!("sometimes");
        let e = Manifest::from_json(&j).unwrap_err().to_string();
        assert!(
            e.contains("modules.router.restartPolicy") && e.contains("sometimes"),
            "{e}"
        );
        let e = Manifest::from_json(&json!({"modulesContent": {}}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("$edgeAgent"), "{e}");
    }
}
