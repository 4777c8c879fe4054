//! Module and device twins: desired properties from the manifest (patched at run time by the
//! operator), reported properties from the modules, each with a version.
//!
//! Twins persist in the state folder as IoT Hub keeps them: a restart keeps the operator's
//! desired patches, the reported properties and both versions. A manifest whose desired
//! properties for a module differ from those the saved twin started from is a new
//! deployment: its properties replace the saved ones (as a deployment does on IoT Hub), and
//! the version goes on counting up.

use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
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
    /// The manifest's desired properties per twin, as the deployment set them.
    manifest: HashMap<String, Map<String, Value>>,
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

/// Writes `bytes` to `path` so that a crash leaves the old or the new content, never a mix.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

fn read_object(path: &Path) -> Option<Map<String, Value>> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// `$version` taken out of a saved map (1 when absent).
fn take_version(map: &mut Map<String, Value>) -> u64 {
    map.remove("$version").and_then(|v| v.as_u64()).unwrap_or(1)
}

impl Twins {
    /// Twins with the manifest's desired properties. With `dir`, twins persist there across
    /// restarts (see the module's documentation for what a changed manifest does).
    pub fn new(desired: HashMap<String, Map<String, Value>>, dir: Option<PathBuf>) -> Self {
        let mut docs = HashMap::new();
        for (id, d) in desired {
            let mut doc = TwinDoc {
                desired: d,
                desired_version: 1,
                reported_version: 1,
                ..TwinDoc::default()
            };
            if let Some(dir) = &dir {
                if let Some(mut reported) = read_object(&dir.join(file_name(&id))) {
                    doc.reported_version = take_version(&mut reported);
                    doc.reported = reported;
                }
                if let Some(mut saved) = read_object(&dir.join(desired_file_name(&id))) {
                    let version = saved.get("version").and_then(Value::as_u64).unwrap_or(1);
                    let base = saved.remove("manifest");
                    let current = saved.remove("desired");
                    match (base, current) {
                        (Some(Value::Object(base)), Some(Value::Object(current)))
                            if base == doc.desired =>
                        {
                            doc.desired = current;
                            doc.desired_version = version;
                        }
                        _ => {
                            tracing::info!(twin = %id, "the manifest's desired properties changed: they replace the saved twin's");
                            doc.desired_version = version + 1;
                            let saved = serde_json::json!({
                                "manifest": doc.desired,
                                "desired": doc.desired,
                                "version": doc.desired_version,
                            });
                            let path = dir.join(desired_file_name(&id));
                            if let Err(e) = write_atomically(&path, saved.to_string().as_bytes()) {
                                tracing::warn!(twin = %id, error = %e, "could not persist desired properties");
                            }
                        }
                    }
                }
            }
            docs.insert(id, doc);
        }
        Twins {
            manifest: docs
                .iter()
                .map(|(k, d)| (k.clone(), d.desired.clone()))
                .collect(),
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
        let twin = self.twin(id);
        serde_json::json!({ "desired": twin.desired, "reported": twin.reported })
    }

    /// [`Twins::get`] as the control API's type.
    pub fn twin(&self, id: &str) -> runtime_state::control::Twin {
        let mut docs = self.lock();
        let doc = docs.entry(id.to_owned()).or_insert_with(|| TwinDoc {
            desired_version: 1,
            reported_version: 1,
            ..TwinDoc::default()
        });
        runtime_state::control::Twin {
            desired: with_version(&doc.desired, doc.desired_version),
            reported: with_version(&doc.reported, doc.reported_version),
        }
    }

    /// Applies a reported-properties patch; returns the new reported version.
    pub fn patch_reported(&self, id: &str, patch: &Map<String, Value>) -> Result<u64, TwinError> {
        let (version, snapshot) = {
            let mut docs = self.lock();
            let doc = docs.entry(id.to_owned()).or_default();
            let mut reported = doc.reported.clone();
            merge_patch(&mut reported, patch);
            check_size("reported", &reported)?;
            doc.reported = reported;
            doc.reported_version += 1;
            (
                doc.reported_version,
                with_version(&doc.reported, doc.reported_version),
            )
        };
        if let Some(dir) = &self.dir {
            if let Err(e) =
                write_atomically(&dir.join(file_name(id)), snapshot.to_string().as_bytes())
            {
                tracing::warn!(twin = id, error = %e, "could not persist reported properties");
            }
        }
        Ok(version)
    }

    /// Applies a desired-properties patch; returns the new `$version` and the patch to push
    /// to the module with it. With `dir`, the new desired properties are on disk before the
    /// twin changes: an error leaves the twin as it was.
    pub fn patch_desired(
        &self,
        id: &str,
        patch: &Map<String, Value>,
    ) -> Result<(u64, Value), TwinError> {
        let mut docs = self.lock();
        let doc = docs.entry(id.to_owned()).or_default();
        let mut desired = doc.desired.clone();
        merge_patch(&mut desired, patch);
        check_size("desired", &desired)?;
        let version = doc.desired_version.max(1) + 1;
        if let Some(dir) = &self.dir {
            let saved = serde_json::json!({
                "manifest": self.manifest.get(id).cloned().unwrap_or_default(),
                "desired": desired,
                "version": version,
            });
            write_atomically(
                &dir.join(desired_file_name(id)),
                saved.to_string().as_bytes(),
            )?;
        }
        doc.desired = desired;
        doc.desired_version = version;
        Ok((version, with_version(patch, version)))
    }
}

/// IoT Hub's limit on each of a twin's sections (desired, reported), in bytes of JSON.
pub const MAX_SECTION_BYTES: usize = 32 * 1024;

/// Why a twin patch was not applied.
#[derive(Debug, thiserror::Error)]
pub enum TwinError {
    /// The section would be over [`MAX_SECTION_BYTES`].
    #[error("the {section} properties would take {bytes} bytes, over IoT Hub's limit of {MAX_SECTION_BYTES} per section: the patch was not applied")]
    TooLarge {
        /// `desired` or `reported`.
        section: &'static str,
        /// Their size with the patch.
        bytes: usize,
    },
    /// The twin could not be saved.
    #[error("the twin could not be saved, so the patch was not applied: {0}; check the state folder's disk and permissions")]
    Io(#[from] std::io::Error),
}

fn check_size(section: &'static str, props: &Map<String, Value>) -> Result<(), TwinError> {
    let bytes = serde_json::to_vec(props).map_or(usize::MAX, |v| v.len());
    if bytes > MAX_SECTION_BYTES {
        return Err(TwinError::TooLarge { section, bytes });
    }
    Ok(())
}

/// `device~module` for `device/module`: `~` is in no IoT Hub id, so no device's file name
/// can be a module's (`__` could: `_` is allowed in device ids).
fn file_stem(id: &str) -> String {
    id.replace('/', "~")
}

fn file_name(id: &str) -> String {
    format!("{}.reported.json", file_stem(id))
}

fn desired_file_name(id: &str) -> String {
    format!("{}.desired.json", file_stem(id))
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
        let (v, patch) = t
            .patch_desired("edge/router", &obj(json!({"RulThreshold": 50})))
            .unwrap();
        assert_eq!((v, patch), (2, json!({"RulThreshold": 50, "$version": 2})));
        assert_eq!(
            t.patch_reported("edge/router", &obj(json!({"model": "x"})))
                .unwrap(),
            2
        );
        let again = Twins::new(desired, Some(dir.path().to_path_buf()));
        assert_eq!(again.get("edge/router")["reported"]["model"], json!("x"));
    }

    #[test]
    fn desired_patches_survive_a_restart_until_a_new_deployment_replaces_them() {
        let dir = tempfile::tempdir().unwrap();
        let d = Some(dir.path().to_path_buf());
        let manifest = |v: Value| HashMap::from([("edge/router".to_owned(), obj(v))]);
        let t = Twins::new(
            manifest(json!({"RulThreshold": 80, "LoggingLevel": "info"})),
            d.clone(),
        );
        t.patch_desired("edge/router", &obj(json!({"RulThreshold": 50})))
            .unwrap();
        t.patch_desired("edge/router", &obj(json!({"LoggingLevel": null})))
            .unwrap();
        t.patch_reported("edge/router", &obj(json!({"x": 1})))
            .unwrap();
        t.patch_reported("edge/router", &obj(json!({"x": 2})))
            .unwrap();
        let before = t.get("edge/router");
        assert_eq!(
            before["desired"],
            json!({"RulThreshold": 50, "$version": 3})
        );
        drop(t);

        // Restarted with the same manifest: the twin as it was.
        let t = Twins::new(
            manifest(json!({"RulThreshold": 80, "LoggingLevel": "info"})),
            d.clone(),
        );
        assert_eq!(t.get("edge/router"), before);
        let (v, _) = t
            .patch_desired("edge/router", &obj(json!({"RulThreshold": 40})))
            .unwrap();
        assert_eq!(v, 4, "versions go on");
        drop(t);

        // A new deployment: its properties replace the saved ones; the version goes up.
        let t = Twins::new(manifest(json!({"RulThreshold": 70})), d.clone());
        assert_eq!(
            t.get("edge/router")["desired"],
            json!({"RulThreshold": 70, "$version": 5})
        );
        drop(t);
        let t = Twins::new(manifest(json!({"RulThreshold": 70})), d);
        assert_eq!(
            t.get("edge/router")["desired"],
            json!({"RulThreshold": 70, "$version": 5}),
            "the new deployment is the saved twin's base now"
        );
        assert_eq!(t.get("edge/router")["reported"]["x"], json!(2));
        assert_eq!(t.get("edge/router")["reported"]["$version"], json!(3));
    }

    #[test]
    fn a_patch_that_cannot_be_saved_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let blocked = dir.path().join("twins");
        std::fs::write(&blocked, b"a file where the folder should be").unwrap();
        let manifest =
            HashMap::from([("edge/router".to_owned(), obj(json!({"RulThreshold": 80})))]);
        let t = Twins::new(manifest, Some(blocked));
        let before = t.get("edge/router");
        assert!(t
            .patch_desired("edge/router", &obj(json!({"RulThreshold": 50})))
            .is_err());
        assert_eq!(t.get("edge/router"), before, "not applied");
    }

    #[test]
    fn a_device_named_like_a_module_has_its_own_files() {
        assert_ne!(file_name("edge__router"), file_name("edge/router"));
        assert_eq!(file_name("edge/router"), "edge~router.reported.json");
    }

    #[test]
    fn a_section_cannot_grow_past_iot_hubs_32_kb_and_a_refused_patch_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let t = Twins::new(HashMap::new(), Some(dir.path().to_path_buf()));
        let chunk = "x".repeat(10_000);
        for k in 0..3 {
            t.patch_reported("edge/m", &obj(json!({ format!("k{k}"): chunk })))
                .unwrap();
        }
        let err = t
            .patch_reported("edge/m", &obj(json!({"k3": chunk})))
            .unwrap_err();
        assert!(
            matches!(
                err,
                TwinError::TooLarge {
                    section: "reported",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("32768"), "{err}");
        let twin = t.get("edge/m");
        assert_eq!(twin["reported"]["$version"], json!(3), "unchanged");
        assert!(twin["reported"].get("k3").is_none());
        // A patch that removes properties makes room again.
        t.patch_reported("edge/m", &obj(json!({"k0": null, "k3": chunk})))
            .unwrap();
        let err = t
            .patch_desired("edge/m", &obj(json!({"big": "y".repeat(40_000)})))
            .unwrap_err();
        assert!(
            matches!(
                err,
                TwinError::TooLarge {
                    section: "desired",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            t.get("edge/m")["desired"]["$version"],
            json!(0),
            "unchanged"
        );
    }
}
