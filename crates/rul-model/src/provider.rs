//! Where ONNX Runtime runs a model: the CPU (the default) or, opted into by configuration,
//! the CUDA execution provider.
//!
//! CUDA needs three things the CPU image does not have: the `onnxruntime-gpu` build of
//! `libonnxruntime.so` with its `libonnxruntime_providers_cuda.so` beside it, the CUDA and
//! cuDNN runtime libraries it links, and the NVIDIA driver (`libcuda.so.1`, which the NVIDIA
//! container toolkit mounts into a container given a GPU). When any of them is missing the
//! model falls back to the CPU, and [`ProviderUse::fallback`] says why, in words an operator
//! can act on: the classifier logs it and reports it in its twin.

use std::fmt;
use std::str::FromStr;

/// Environment variable choosing the execution provider: `cpu` (default), `cuda` or
/// `cuda:<device id>`.
pub const PROVIDER_VAR: &str = "ORT_EXECUTION_PROVIDER";

/// An execution provider the models can be asked to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Provider {
    /// ONNX Runtime's CPU provider.
    #[default]
    Cpu,
    /// ONNX Runtime's CUDA provider on this GPU (0 is the first one the container sees).
    Cuda {
        /// CUDA device id.
        device: i32,
    },
}

impl Provider {
    /// Reads [`PROVIDER_VAR`]; unset or empty is [`Provider::Cpu`].
    pub fn from_env() -> Result<Provider, BadProvider> {
        match std::env::var(PROVIDER_VAR) {
            Ok(v) if !v.trim().is_empty() => v.parse(),
            _ => Ok(Provider::Cpu),
        }
    }

    /// ONNX Runtime's name for it, as in its Python API.
    pub fn ort_name(&self) -> &'static str {
        match self {
            Provider::Cpu => "CPUExecutionProvider",
            Provider::Cuda { .. } => "CUDAExecutionProvider",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Provider::Cpu => f.write_str("cpu"),
            Provider::Cuda { device: 0 } => f.write_str("cuda"),
            Provider::Cuda { device } => write!(f, "cuda:{device}"),
        }
    }
}

/// A value of [`PROVIDER_VAR`] that names no provider.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{PROVIDER_VAR}={0:?} is not an execution provider: use cpu, cuda or cuda:<device id>")]
pub struct BadProvider(pub String);

impl FromStr for Provider {
    type Err = BadProvider;

    fn from_str(s: &str) -> Result<Provider, BadProvider> {
        let bad = || BadProvider(s.to_owned());
        let v = s.trim().to_ascii_lowercase();
        match v.split_once(':') {
            None if v == "cpu" => Ok(Provider::Cpu),
            None if v == "cuda" => Ok(Provider::Cuda { device: 0 }),
            Some(("cuda", id)) => match id.parse::<i32>() {
                Ok(device) if device >= 0 => Ok(Provider::Cuda { device }),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }
}

/// What a model was asked to run on, and what it runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderUse {
    /// What the configuration asked for.
    pub requested: Provider,
    /// What the session was built with.
    pub used: Provider,
    /// Why `used` differs from `requested`, and what to do about it.
    pub fallback: Option<String>,
}

impl ProviderUse {
    /// The CPU, as asked.
    pub fn cpu() -> ProviderUse {
        ProviderUse {
            requested: Provider::Cpu,
            used: Provider::Cpu,
            fallback: None,
        }
    }
}

/// The NVIDIA driver's user-space library.
const DRIVER: &str = "libcuda.so.1";
/// The CUDA runtime library the CUDA provider of the pinned ONNX Runtime links.
const CUDA_RUNTIME: &str = "libcudart.so.13";

/// Checks that the NVIDIA driver is there, then loads the CUDA and cuDNN libraries from the
/// folder of `library` when they are there (the GPU image puts them beside
/// `libonnxruntime.so`, from NVIDIA's wheels), so that no `LD_LIBRARY_PATH` is needed;
/// elsewhere the system's loader finds them. Once per process; the error is the whole message
/// for the operator.
pub(crate) fn preload_cuda_beside(library: &std::path::Path) -> Result<(), String> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        // The driver comes from the host; without it nothing below can load, and the loader
        // would only say so about whichever library needs it first.
        // SAFETY: libcuda.so.1's initialisers only register the driver API; it stays loaded.
        match unsafe { libloading::Library::new(DRIVER) } {
            Ok(driver) => std::mem::forget(driver),
            Err(_) => {
                return Err(format!(
                    "the CUDA execution provider cannot start: the NVIDIA driver ({DRIVER}) is not \
                     there, so this container was given no GPU (NVIDIA container toolkit, \
                     nvidia.com/gpu) or the host has no NVIDIA driver; scoring on the CPU"
                ))
            }
        }
        let Some(dir) = library.parent() else {
            return Ok(());
        };
        if !dir.join(CUDA_RUNTIME).is_file() {
            return Ok(());
        }
        ort::ep::cuda::preload_dylibs(Some(dir), Some(dir))
            .map_err(|e| cuda_failed(library, &e.to_string()))
    })
    .clone()
}

/// What to tell the operator when the CUDA provider could not be registered on a session.
pub(crate) fn cuda_failed(library: &std::path::Path, error: &str) -> String {
    // ONNX Runtime's messages start with its source location and end with a newline.
    let error = error.trim();
    let error = error
        .split_once("] : ")
        .map(|(_, rest)| rest)
        .unwrap_or(error);
    format!(
        "the CUDA execution provider did not start ({error}); scoring on the CPU. CUDA needs \
         the NVIDIA driver (libcuda.so.1, given to the container by the NVIDIA container \
         toolkit with a GPU), the CUDA 13 and cuDNN 9 runtime libraries and \
         libonnxruntime_providers_cuda.so beside {}",
        library.display()
    )
}

/// What to tell the operator when the loaded ONNX Runtime has no CUDA provider at all.
pub(crate) fn cuda_not_built(library: &std::path::Path) -> String {
    format!(
        "{} has no CUDA execution provider (it is the CPU build of ONNX Runtime); scoring on \
         the CPU. Use the GPU image, which carries libonnxruntime.so of the onnxruntime-gpu=={} \
         wheel, or set ORT_DYLIB_PATH to it",
        library.display(),
        crate::ONNXRUNTIME_VERSION
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_values() {
        assert_eq!("cpu".parse(), Ok(Provider::Cpu));
        assert_eq!(" CUDA ".parse(), Ok(Provider::Cuda { device: 0 }));
        assert_eq!("cuda:1".parse(), Ok(Provider::Cuda { device: 1 }));
        for bad in ["gpu", "cuda:", "cuda:-1", "cuda:x", "cpu:0", "tensorrt", ""] {
            let e = bad.parse::<Provider>().unwrap_err();
            assert!(
                e.to_string().contains("use cpu, cuda or cuda:<device id>"),
                "{e}"
            );
        }
    }

    #[test]
    fn display_round_trips() {
        for p in [
            Provider::Cpu,
            Provider::Cuda { device: 0 },
            Provider::Cuda { device: 3 },
        ] {
            assert_eq!(p.to_string().parse(), Ok(p));
        }
        assert_eq!(
            Provider::Cuda { device: 2 }.ort_name(),
            "CUDAExecutionProvider"
        );
    }
}
