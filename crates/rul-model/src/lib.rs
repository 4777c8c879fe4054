//! The RUL model in ONNX Runtime.
//!
//! ONNX Runtime is loaded at run time from `libonnxruntime.so` of the pinned `onnxruntime`
//! wheel ([`ONNXRUNTIME_VERSION`]); [`init`] finds it. [`RulModel::load`] checks the model's
//! signature — one float32 input `[batch, 21]`, one float32 output `[batch, 1]` (or `[batch]`)
//! — and fails with an error that says what was expected and what was found, so a wrong or
//! missing model stops the module at start-up instead of crash-looping on the first message.

mod provider;

pub use provider::{BadProvider, Provider, ProviderUse, PROVIDER_VAR};

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The ONNX Runtime release `ort` 2.0.0-rc.15 is built for; the wheel is pinned to it.
pub const ONNXRUNTIME_VERSION: &str = "1.31.1";
/// Features per row.
pub const N_FEATURES: usize = 21;

/// What can go wrong, worded for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// ONNX Runtime's shared library was not found or did not load.
    #[error("ONNX Runtime: {0}")]
    Runtime(String),
    /// The model file is missing or unreadable.
    #[error("model file {path}: {reason}")]
    File {
        /// Path tried.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The model does not have the expected signature.
    #[error("model {path} has the wrong signature: {problem}")]
    Signature {
        /// Model path.
        path: PathBuf,
        /// Expected vs found.
        problem: String,
    },
    /// The configured execution provider is not one there is.
    #[error(transparent)]
    Provider(#[from] BadProvider),
    /// Running the model failed.
    #[error("model run failed: {0}")]
    Run(String),
    /// The feature buffer is not a whole number of rows.
    #[error("{0} values are not a whole number of rows of {N_FEATURES} features")]
    Shape(usize),
}

static INIT: OnceLock<Result<(PathBuf, ort::environment::Environment), String>> = OnceLock::new();

/// Where to look for `libonnxruntime.so`: `ORT_DYLIB_PATH`, then next to the executable
/// (the container image), then the repo's `.venv` wheel (a development checkout).
pub fn dylib_candidates() -> Vec<PathBuf> {
    let mut c = Vec::new();
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        c.push(PathBuf::from(p));
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        c.push(dir.join("libonnxruntime.so"));
        c.push(dir.join(format!("libonnxruntime.so.{ONNXRUNTIME_VERSION}")));
        for up in [dir.join("../.."), dir.join("../../..")] {
            c.push(up.join(format!(
                ".venv/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.{ONNXRUNTIME_VERSION}"
            )));
        }
    }
    c
}

/// Loads ONNX Runtime once per process; returns the library's path and the environment.
pub fn init() -> Result<(PathBuf, ort::environment::Environment), ModelError> {
    INIT.get_or_init(|| {
        let candidates = dylib_candidates();
        let Some(path) = candidates.iter().find(|p| p.is_file()) else {
            return Err(format!(
                "libonnxruntime.so not found (tried {}); set ORT_DYLIB_PATH to the library from the onnxruntime=={ONNXRUNTIME_VERSION} wheel (scripts/setup-python.sh installs it into .venv)",
                candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            ));
        };
        let builder = ort::init_from(path).map_err(|e| format!("cannot load {}: {e}", path.display()))?;
        let env = builder
            .with_name("rul-model")
            .build()
            .map_err(|e| format!("cannot start ONNX Runtime from {}: {e}", path.display()))?;
        tracing::info!(library = %path.display(), "ONNX Runtime loaded");
        Ok((path.clone(), env))
    })
    .clone()
    .map_err(ModelError::Runtime)
}

/// What the model is, for reported properties and the health endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// The model's name: its `model_name` metadata, else its file name.
    pub name: String,
    /// File it was loaded from.
    pub path: PathBuf,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// Producer recorded in the model (e.g. `skl2onnx`).
    pub producer: String,
    /// Model version recorded in the model.
    pub version: i64,
    /// Input name and signature, e.g. `input: float32[?,21]`.
    pub input: String,
    /// Output name and signature.
    pub output: String,
    /// The execution provider asked for and the one in use.
    pub provider: ProviderUse,
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A loaded model. `predict` takes `&mut self` (ONNX Runtime sessions run one call at a time
/// here; share it behind a mutex or give each thread its own).
pub struct RulModel {
    session: ort::session::Session,
    input: String,
    output: String,
    info: ModelInfo,
}

fn dims(shape: Option<&ort::value::Shape>) -> Vec<i64> {
    shape
        .map(|s| s.iter().copied().collect())
        .unwrap_or_default()
}

fn describe(name: &str, ty: &ort::value::ValueType) -> String {
    match (ty.tensor_type(), ty.tensor_shape()) {
        (Some(t), Some(s)) => {
            let d: Vec<String> = s
                .iter()
                .map(|d| if *d < 0 { "?".into() } else { d.to_string() })
                .collect();
            format!("{name}: {t:?}[{}]", d.join(","))
        }
        _ => format!("{name}: {ty:?}"),
    }
}

/// Reads, hashes and opens a model file on `provider`, falling back to the CPU when the CUDA
/// provider is asked for and cannot run (see [`ProviderUse::fallback`]).
fn open(
    path: &Path,
    threads: usize,
    provider: Provider,
) -> Result<(ort::session::Session, String, ProviderUse), ModelError> {
    let (library, env) = init()?;
    let file_err = |reason: String| ModelError::File {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| {
        file_err(format!(
            "{e}; set MODEL_PATH / HISTORY_MODEL_PATH to the models produced by models/train.py and models/train_history.py"
        ))
    })?;
    let sha256 = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let build = |cuda: Option<i32>| -> Result<ort::session::Session, ort::Error> {
        let mut b = ort::session::Session::builder(&env)?
            .with_intra_threads(threads.max(1))?
            .with_inter_threads(1)?;
        if let Some(device) = cuda {
            b = b.with_execution_providers([ort::ep::CUDA::default()
                .with_device_id(device)
                .build()
                .error_on_failure()])?;
        }
        b.commit_from_memory(&bytes)
    };
    let cpu = |fallback: Option<String>| -> Result<_, ModelError> {
        let session =
            build(None).map_err(|e| file_err(format!("not a loadable ONNX model: {e}")))?;
        let used = ProviderUse {
            requested: provider,
            used: Provider::Cpu,
            fallback,
        };
        Ok((session, sha256.clone(), used))
    };
    let Provider::Cuda { device } = provider else {
        return cpu(None);
    };
    match <ort::ep::CUDA as ort::ep::ExecutionProvider>::is_available() {
        Ok(true) => {}
        Ok(false) => return cpu(Some(provider::cuda_not_built(&library))),
        Err(e) => return cpu(Some(provider::cuda_failed(&library, &e.to_string()))),
    }
    if let Err(why) = provider::preload_cuda_beside(&library) {
        return cpu(Some(why));
    }
    match build(Some(device)) {
        Ok(session) => Ok((
            session,
            sha256.clone(),
            ProviderUse {
                requested: provider,
                used: provider,
                fallback: None,
            },
        )),
        Err(e) => cpu(Some(provider::cuda_failed(&library, &e.to_string()))),
    }
}

/// Producer, version and the custom metadata entry `key` of a session.
fn metadata(session: &ort::session::Session, key: &str) -> (String, i64, Option<String>) {
    match session.metadata() {
        Ok(m) => (
            m.producer().unwrap_or_default(),
            m.version().unwrap_or(0),
            m.custom(key),
        ),
        Err(_) => (String::new(), 0, None),
    }
}

fn is_f32_matrix(ty: &ort::value::ValueType, columns: Option<i64>) -> bool {
    let d = dims(ty.tensor_shape());
    ty.tensor_type() == Some(ort::value::TensorElementType::Float32)
        && match columns {
            Some(c) => d.len() == 2 && d[1] == c,
            None => d.len() == 1 || (d.len() == 2 && d[1] == 1),
        }
}

impl RulModel {
    /// Loads and checks the model at `path` on the CPU, with `threads` intra-op threads (1 for
    /// a module on a small device).
    pub fn load(path: &Path, threads: usize) -> Result<RulModel, ModelError> {
        RulModel::load_on(path, threads, Provider::Cpu)
    }

    /// [`RulModel::load`] on `provider`; when CUDA cannot run, the model runs on the CPU and
    /// [`ModelInfo::provider`] says why.
    pub fn load_on(
        path: &Path,
        threads: usize,
        provider: Provider,
    ) -> Result<RulModel, ModelError> {
        let (session, sha256, provider) = open(path, threads, provider)?;
        let sig = |problem: String| ModelError::Signature {
            path: path.to_path_buf(),
            problem,
        };
        let (inputs, outputs) = (session.inputs(), session.outputs());
        if inputs.len() != 1 || outputs.len() != 1 {
            return Err(sig(format!(
                "expected 1 input and 1 output, found {} inputs and {} outputs",
                inputs.len(),
                outputs.len()
            )));
        }
        let (i, o) = (&inputs[0], &outputs[0]);
        if !is_f32_matrix(i.dtype(), Some(N_FEATURES as i64)) {
            return Err(sig(format!(
                "expected input float32[batch,{N_FEATURES}] (Sensor1..Sensor21), found {}",
                describe(i.name(), i.dtype())
            )));
        }
        if !is_f32_matrix(o.dtype(), None) {
            return Err(sig(format!(
                "expected output float32[batch,1] (the RUL), found {}",
                describe(o.name(), o.dtype())
            )));
        }
        let (producer, version, _) = metadata(&session, "model_name");
        let info = ModelInfo {
            name: file_name(path),
            path: path.to_path_buf(),
            sha256,
            producer,
            version,
            input: describe(i.name(), i.dtype()),
            output: describe(o.name(), o.dtype()),
            provider,
        };
        Ok(RulModel {
            input: i.name().to_owned(),
            output: o.name().to_owned(),
            session,
            info,
        })
    }

    /// What was loaded.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Predicts the RUL of each row of `features` (row-major, 21 per row).
    pub fn predict(&mut self, features: &[f32]) -> Result<Vec<f32>, ModelError> {
        if !features.len().is_multiple_of(N_FEATURES) {
            return Err(ModelError::Shape(features.len()));
        }
        let rows = features.len() / N_FEATURES;
        if rows == 0 {
            return Ok(Vec::new());
        }
        let tensor = ort::value::TensorRef::from_array_view(([rows, N_FEATURES], features))
            .map_err(|e| ModelError::Run(e.to_string()))?;
        let outputs = self
            .session
            .run(ort::inputs![self.input.as_str() => tensor])
            .map_err(|e| ModelError::Run(e.to_string()))?;
        let (_, values) = outputs[self.output.as_str()]
            .try_extract_tensor::<f32>()
            .map_err(|e| ModelError::Run(e.to_string()))?;
        if values.len() != rows {
            return Err(ModelError::Run(format!(
                "model returned {} values for {rows} rows",
                values.len()
            )));
        }
        Ok(values.to_vec())
    }
}

/// The outputs of the history model, in order.
pub const HISTORY_OUTPUTS: [&str; 3] = ["PredictedRul", "PredictedRulLow", "PredictedRulHigh"];

/// What the history model said for one row: the RUL and its interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    /// `PredictedRul`.
    pub rul: f32,
    /// `PredictedRulLow`.
    pub low: f32,
    /// `PredictedRulHigh`.
    pub high: f32,
}

/// The engine-history model (`models/rul_history.onnx`): one float32 input
/// `[batch, features]`, three float32 outputs `[batch, 1]` named as [`HISTORY_OUTPUTS`], and
/// metadata `feature_set` naming the features it was trained on.
pub struct HistoryModel {
    session: ort::session::Session,
    input: String,
    features: usize,
    info: ModelInfo,
}

impl HistoryModel {
    /// Loads and checks the model at `path`: `features` inputs per row, computed as
    /// `feature_set` says (the model's metadata must name the same).
    pub fn load(
        path: &Path,
        threads: usize,
        features: usize,
        feature_set: &str,
    ) -> Result<HistoryModel, ModelError> {
        HistoryModel::load_on(path, threads, Provider::Cpu, features, feature_set)
    }

    /// [`HistoryModel::load`] on `provider` (see [`RulModel::load_on`]).
    pub fn load_on(
        path: &Path,
        threads: usize,
        provider: Provider,
        features: usize,
        feature_set: &str,
    ) -> Result<HistoryModel, ModelError> {
        let (session, sha256, provider) = open(path, threads, provider)?;
        let sig = |problem: String| ModelError::Signature {
            path: path.to_path_buf(),
            problem,
        };
        let (inputs, outputs) = (session.inputs(), session.outputs());
        let expected = format!(
            "one input float32[batch,{features}] and outputs {} float32[batch,1]",
            HISTORY_OUTPUTS.join(", ")
        );
        let found = || {
            let i: Vec<String> = inputs
                .iter()
                .map(|i| describe(i.name(), i.dtype()))
                .collect();
            let o: Vec<String> = outputs
                .iter()
                .map(|o| describe(o.name(), o.dtype()))
                .collect();
            format!("inputs [{}], outputs [{}]", i.join(", "), o.join(", "))
        };
        let outputs_ok = outputs.len() == HISTORY_OUTPUTS.len()
            && outputs
                .iter()
                .zip(HISTORY_OUTPUTS)
                .all(|(o, name)| o.name() == name && is_f32_matrix(o.dtype(), None));
        if inputs.len() != 1
            || !is_f32_matrix(inputs[0].dtype(), Some(features as i64))
            || !outputs_ok
        {
            return Err(sig(format!("expected {expected}, found {}", found())));
        }
        let (producer, version, set) = metadata(&session, "feature_set");
        if set.as_deref() != Some(feature_set) {
            return Err(sig(format!(
                "it was trained on features '{}', this classifier computes '{feature_set}' (retrain with models/train_history.py)",
                set.as_deref().unwrap_or("(no feature_set metadata)")
            )));
        }
        let (_, _, name) = metadata(&session, "model_name");
        let info = ModelInfo {
            name: name.unwrap_or_else(|| file_name(path)),
            path: path.to_path_buf(),
            sha256,
            producer,
            version,
            input: describe(inputs[0].name(), inputs[0].dtype()),
            output: outputs
                .iter()
                .map(|o| describe(o.name(), o.dtype()))
                .collect::<Vec<_>>()
                .join(", "),
            provider,
        };
        Ok(HistoryModel {
            input: inputs[0].name().to_owned(),
            features,
            session,
            info,
        })
    }

    /// What was loaded.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Predicts each row of `features` (row-major, the model's feature count per row).
    pub fn predict(&mut self, features: &[f32]) -> Result<Vec<Interval>, ModelError> {
        if !features.len().is_multiple_of(self.features) {
            return Err(ModelError::Run(format!(
                "{} values are not a whole number of rows of {} features",
                features.len(),
                self.features
            )));
        }
        let rows = features.len() / self.features;
        if rows == 0 {
            return Ok(Vec::new());
        }
        let tensor = ort::value::TensorRef::from_array_view(([rows, self.features], features))
            .map_err(|e| ModelError::Run(e.to_string()))?;
        let outputs = self
            .session
            .run(ort::inputs![self.input.as_str() => tensor])
            .map_err(|e| ModelError::Run(e.to_string()))?;
        let mut columns = Vec::with_capacity(3);
        for name in HISTORY_OUTPUTS {
            let (_, v) = outputs[name]
                .try_extract_tensor::<f32>()
                .map_err(|e| ModelError::Run(e.to_string()))?;
            if v.len() != rows {
                return Err(ModelError::Run(format!(
                    "model returned {} values of {name} for {rows} rows",
                    v.len()
                )));
            }
            columns.push(v);
        }
        Ok((0..rows)
            .map(|r| Interval {
                rul: columns[0][r],
                low: columns[1][r],
                high: columns[2][r],
            })
            .collect())
    }
}
