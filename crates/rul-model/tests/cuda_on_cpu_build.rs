//! Asking for CUDA from the CPU build of ONNX Runtime (the one the tests and the CPU image
//! use) falls back to the CPU with a message that says what to use instead, and the model
//! predicts exactly what it predicts on the CPU.

use rul_model::{HistoryModel, Provider, RulModel};
use std::path::{Path, PathBuf};
use turbofan_domain::{cmapss, history};

fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models")
}

#[test]
fn cuda_falls_back_to_the_cpu_and_says_why() {
    let path = models_dir().join("rul.onnx");
    let mut cpu = RulModel::load(&path, 1).expect("model loads");
    let mut asked = RulModel::load_on(&path, 1, Provider::Cuda { device: 0 })
        .expect("asking for CUDA is not an error");
    let used = &asked.info().provider;
    assert_eq!(used.requested, Provider::Cuda { device: 0 });
    assert_eq!(used.used, Provider::Cpu);
    let why = used.fallback.as_deref().expect("a reason for the fallback");
    assert!(
        why.contains("has no CUDA execution provider") && why.contains("onnxruntime-gpu==1.31.1"),
        "{why}"
    );
    assert_eq!(cpu.info().provider.fallback, None);
    assert_eq!(cpu.info().provider.used, Provider::Cpu);

    let rows = cmapss::read_rows(&cmapss::data_dir().join("test_FD001.txt"))
        .expect("C-MAPSS data (set CMAPSS_DIR)");
    let features: Vec<f32> = rows.iter().take(500).flat_map(|r| r.features()).collect();
    assert_eq!(
        asked.predict(&features).unwrap(),
        cpu.predict(&features).unwrap()
    );

    let h = HistoryModel::load_on(
        &models_dir().join("rul_history.onnx"),
        1,
        Provider::Cuda { device: 1 },
        history::N_FEATURES,
        history::FEATURE_SET,
    )
    .expect("history model loads");
    assert_eq!(h.info().provider.used, Provider::Cpu);
    assert!(h.info().provider.fallback.is_some());
}
