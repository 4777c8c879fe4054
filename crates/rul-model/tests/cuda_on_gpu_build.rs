//! Asking for CUDA from the GPU build of ONNX Runtime (`onnxruntime-gpu`, what the GPU image
//! carries) on a machine without the NVIDIA driver — a GPU image scheduled on a node or in a
//! container without a GPU — falls back to the CPU and says so, and the model predicts what it
//! predicts on the CPU build.
//!
//! Needs `ORT_GPU_DYLIB_PATH`: `libonnxruntime.so` of the onnxruntime-gpu wheel, which
//! `scripts/setup-onnxruntime-gpu.sh` unpacks into `.tools/onnxruntime-gpu/` and `scripts/test.sh`
//! sets. Without it the test says so and passes; `REQUIRE_ORT_GPU=1` (set by
//! `scripts/test.sh`) makes its absence a failure.

use rul_model::{Provider, RulModel};
use std::path::{Path, PathBuf};
use turbofan_domain::cmapss;

fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models")
}

#[test]
fn on_the_gpu_build_without_a_driver_cuda_falls_back_and_names_the_driver() {
    let Some(gpu) = std::env::var_os("ORT_GPU_DYLIB_PATH") else {
        assert!(
            std::env::var_os("REQUIRE_ORT_GPU").is_none(),
            "REQUIRE_ORT_GPU is set but ORT_GPU_DYLIB_PATH is not"
        );
        eprintln!("ORT_GPU_DYLIB_PATH is not set: skipped (scripts/setup-onnxruntime-gpu.sh)");
        return;
    };
    let gpu = PathBuf::from(gpu);
    assert!(
        gpu.is_file(),
        "ORT_GPU_DYLIB_PATH={} is not a file",
        gpu.display()
    );
    if Path::new("/dev/nvidia0").exists() {
        eprintln!("this machine has an NVIDIA GPU: the fallback cannot be shown here; skipped");
        return;
    }
    // This test is alone in its process, and nothing has loaded ONNX Runtime yet.
    std::env::set_var("ORT_DYLIB_PATH", &gpu);
    let (library, _) = rul_model::init().expect("the GPU build of ONNX Runtime loads");
    assert_eq!(library, gpu);

    let path = models_dir().join("rul.onnx");
    let mut asked = RulModel::load_on(&path, 1, Provider::Cuda { device: 0 })
        .expect("asking for CUDA is not an error");
    let used = &asked.info().provider;
    assert_eq!(used.used, Provider::Cpu);
    let why = used.fallback.as_deref().expect("a reason for the fallback");
    assert!(
        why.contains("NVIDIA driver (libcuda.so.1) is not there") && why.contains("CPU"),
        "{why}"
    );

    // The GPU build scores on its CPU provider like the CPU build did for the reference.
    let want: Vec<f32> = std::fs::read_to_string(models_dir().join("reference/test_FD001.pred"))
        .expect("reference predictions (models/train.py)")
        .lines()
        .take(300)
        .map(|l| l.trim().parse().expect("a number"))
        .collect();
    let rows = cmapss::read_rows(&cmapss::data_dir().join("test_FD001.txt"))
        .expect("C-MAPSS data (set CMAPSS_DIR)");
    let features: Vec<f32> = rows.iter().take(300).flat_map(|r| r.features()).collect();
    let got = asked.predict(&features).unwrap();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!((g - w).abs() <= 1e-4, "row {i}: {g} vs reference {w}");
    }
}
