//! The Rust side gives the model's own reference predictions (written by models/train.py with
//! ONNX Runtime in Python) on every row of the FD001 and FD003 test sets, and refuses models it
//! cannot serve with errors that say why.

use rul_model::{ModelError, RulModel};
use std::path::{Path, PathBuf};
use turbofan_domain::cmapss;

fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models")
}

fn reference(name: &str) -> Vec<f32> {
    let path = models_dir().join("reference").join(format!("{name}.pred"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run models/train.py)", path.display()))
        .lines()
        .map(|l| l.trim().parse::<f32>().expect("reference line is a number"))
        .collect()
}

#[test]
fn predictions_equal_the_reference_on_every_test_row() {
    let mut model = RulModel::load(&models_dir().join("rul.onnx"), 1).expect("model loads");
    for name in ["test_FD001", "test_FD003"] {
        let rows = cmapss::read_rows(&cmapss::data_dir().join(format!("{name}.txt")))
            .expect("C-MAPSS data (set CMAPSS_DIR)");
        let want = reference(name);
        assert_eq!(
            rows.len(),
            want.len(),
            "{name}: one reference prediction per row"
        );
        let features: Vec<f32> = rows.iter().flat_map(|r| r.features()).collect();
        let mut got = Vec::with_capacity(rows.len());
        for chunk in features.chunks(4096 * 21) {
            got.extend(model.predict(chunk).expect("prediction"));
        }
        let (mut worst, mut at) = (0f32, 0usize);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let d = (g - w).abs();
            if d > worst {
                (worst, at) = (d, i);
            }
        }
        assert!(
            worst <= 1e-4,
            "{name}: row {at} differs by {worst} (got {}, reference {})",
            got[at],
            want[at]
        );
        // One row at a time gives the same as in a batch.
        assert_eq!(model.predict(&features[..21]).unwrap()[0], got[0]);
    }
}

#[test]
fn a_missing_or_broken_model_file_is_a_clear_error() {
    let missing = RulModel::load(Path::new("/nonexistent/rul.onnx"), 1)
        .err()
        .expect("missing file refused");
    let text = missing.to_string();
    assert!(
        matches!(missing, ModelError::File { .. }) && text.contains("MODEL_PATH"),
        "{text}"
    );
    let dir = std::env::temp_dir().join(format!("rul-model-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let garbage = dir.join("garbage.onnx");
    std::fs::write(&garbage, b"this is not an ONNX model").unwrap();
    let text = RulModel::load(&garbage, 1)
        .err()
        .expect("garbage refused")
        .to_string();
    assert!(text.contains("not a loadable ONNX model"), "{text}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_model_with_another_signature_is_refused_with_expected_and_found() {
    let path = models_dir().join("testdata/wrong_signature.onnx");
    let e = RulModel::load(&path, 1)
        .err()
        .expect("wrong signature refused");
    let text = e.to_string();
    assert!(matches!(e, ModelError::Signature { .. }), "{text}");
    assert!(
        text.contains("expected input float32[batch,21]") && text.contains("found"),
        "{text}"
    );
}

#[test]
fn feature_buffers_must_hold_whole_rows() {
    let mut model = RulModel::load(&models_dir().join("rul.onnx"), 1).expect("model loads");
    assert!(matches!(
        model.predict(&[0.0; 20]),
        Err(ModelError::Shape(20))
    ));
    assert_eq!(model.predict(&[]).unwrap(), Vec::<f32>::new());
}
