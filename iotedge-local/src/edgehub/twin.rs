//! Module and device twins: desired properties from the manifest (patched at run time by the
//! operator), reported properties from the modules, each with a version.

use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

#[derive(Debug, Clone, Default)]
struct TwinDoc {
    desired: Map<String, Value>,
    desired_version: u64,
    reported: Map<String, Value>,
    reported_version: u64,
}

/// All twins of the runtime, keyed by identity (`device` or `device/module`).
#[derive(Debug)]
pub struct Twins {
    docs: Mutex<HashMap<String, TwinDoc>>,
    dir: Option<PathBuf>,
}

/// JSON merge patch (RFC 7386): `null` removes a key, objects merge, anything else replaces.
pub fn merge_patch(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (k, v) in patch {
        if k.starts_with('$') {
            continue; // $version and other metadata are the hub's
        }
        match v {
            Value::Null => {
                target.remove(k);
            }
            Value::Object(p) => {
                let slot = target
                    .entry(k.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !slot.is_object() {
                    *slot = Value::Object(Map::new());
                }
                if let Value::Object(t) = slot {
                    merge_patch(t, p);
                }
            }
            other => {
                target.insert(k.clone(), other.clone());
            }
        }
    }
}

fn with_version(map: &Map<String, Value>, version: u64) -> Value {
    let mut m = map.clone();
    m.insert("$version".into(), Value::from(version));
    Value::Object(m)
}

impl Twins {
    /// Twins with the manifest's desired properties (version 1 each). Reported properties
    /// persist in `dir` across restarts when given.
    pub fn new(desired: HashMap<String, Map<String, Value>>, dir: Option<PathBuf>) -> Self {
        let mut docs = HashMap::new();
        for (id, d) in desired {
            let reported = dir
                .as_ref()
                .and_then(|dir| std::fs::read(dir.join(file_name(&id))).ok())
                .and_then(|b| serde_json::from_slice::<Map<String, Value>>(&b).ok())
                .unwrap_or_default();
            docs.insert(
                id,
                TwinDoc {
                    desired: d,
                    desired_version: 1,
                    reported,
                    reported_version: 1,
                },
            );
        }
        Twins {
            docs: Mutex::new(docs),
            dir,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, TwinDoc>> {
        self.docs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The twin document as the hub returns it:
    /// `{"desired": {…, "$version": n}, "reported": {…, "$version": m}}`.
    pub fn get(&self, id: &str) -> Value {
        let mut docs = self.lock();
        let doc = docs.entry(id.to_owned()).or_insert_with(|| TwinDoc {
            desired_version: 1,
            reported_version: 1,
            ..TwinDoc::default()
        });
        serde_json::json!({
            "desired": with_version(&doc.desired, doc.desired_version),
            "reported": with_version(&doc.reported, doc.reported_version),
        })
    }

    /// Applies a reported-properties patch; returns the new reported version.
    pub fn patch_reported(&self, id: &str, patch: &Map<String, Value>) -> u64 {
        let (version, snapshot) = {
            let mut docs = self.lock();
            let doc = docs.entry(id.to_owned()).or_default();
            merge_patch(&mut doc.reported, patch);
            doc.reported_version += 1;
            (doc.reported_version, doc.reported.clone())
        };
        if let Some(dir) = &self.dir {
            let _ = std::fs::create_dir_all(dir);
            if let Err(e) =
                std::fs::write(dir.join(file_name(id)), Value::Object(snapshot).to_string())
            {
                tracing::warn!(twin = id, error = %e, "could not persist reported properties");
            }
        }
        version
    }

    /// Applies a desired-properties patch; returns the patch to push to the module, with
    /// its new `$version`.
    pub fn patch_desired(&self, id: &str, patch: &Map<String, Value>) -> (u64, Value) {
        let mut docs = self.lock();
        let doc = docs.entry(id.to_owned()).or_default();
        merge_patch(&mut doc.desired, patch);
        doc.desired_version += 1;
        (
            doc.desired_version,
            with_version(patch, doc.desired_version),
        )
    }
}

fn file_name(id: &str) -> String {
    format!("{}.reported.json", id.replace('/', "__"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut t = obj(json!({"a": 1, "b": {"c": 2, "d": 3}, "e": 4}));
        merge_patch(
            &mut t,
            &obj(json!({"a": null, "b": {"c": 9, "d": null}, "f": [1], "$version": 7})),
        );
        assert_eq!(Value::Object(t), json!({"b": {"c": 9}, "e": 4, "f": [1]}));
    }

    #[test]
    fn versions_advance_and_reported_persists() {
        let dir = tempfile::tempdir().unwrap();
        let mut desired = HashMap::new();
        desired.insert("edge/router".to_owned(), obj(json!({"RulThreshold": 80})));
        let t = Twins::new(desired.clone(), Some(dir.path().to_path_buf()));
        assert_eq!(
            t.get("edge/router"),
            json!({"desired": {"RulThreshold": 80, "$version": 1}, "reported": {"$version": 1}})
        );
        let (v, patch) = t.patch_desired("edge/router", &obj(json!({"RulThreshold": 50})));
        assert_eq!((v, patch), (2, json!({"RulThreshold": 50, "$version": 2})));
        assert_eq!(
            t.patch_reported("edge/router", &obj(json!({"model": "x"}))),
            2
        );
        let again = Twins::new(desired, Some(dir.path().to_path_buf()));
        assert_eq!(again.get("edge/router")["reported"]["model"], json!("x"));
    }
}
