//! The Rust side gives the model's own reference predictions (written by models/train.py with
//! ONNX Runtime in Python) on every row of the FD001 and FD003 test sets, and refuses models it
//! cannot serve with errors that say why.

use rul_model::{HistoryModel, ModelError, RulModel};
use std::path::{Path, PathBuf};
use turbofan_domain::{cmapss, history};

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

fn history_reference(name: &str) -> Vec<[f32; 3]> {
    let path = models_dir()
        .join("reference")
        .join(format!("history_{name}.pred"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run models/train_history.py)", path.display()))
        .lines()
        .map(|l| {
            let v: Vec<f32> = l
                .split_whitespace()
                .map(|t| t.parse().expect("reference value is a number"))
                .collect();
            [v[0], v[1], v[2]]
        })
        .collect()
}

fn history_model() -> HistoryModel {
    HistoryModel::load(
        &models_dir().join("rul_history.onnx"),
        1,
        history::N_FEATURES,
        history::FEATURE_SET,
    )
    .expect("history model loads")
}

fn rmse(pred: &[f64], truth: &[f64]) -> f64 {
    let se: f64 = pred.iter().zip(truth).map(|(p, t)| (p - t) * (p - t)).sum();
    (se / pred.len() as f64).sqrt()
}

/// Every row of each test engine, scored through the classifier's history store (each engine
/// one device, its rows in cycle order), gives the training script's reference prediction,
/// interval included; and the last cycles meet the accuracy targets of the model card.
#[test]
fn history_predictions_equal_the_reference_on_every_window_of_the_test_sets() {
    let mut model = history_model();
    for (name, target) in [("test_FD001", 12.5), ("test_FD003", 20.0)] {
        let mut rows = cmapss::read_rows(&cmapss::data_dir().join(format!("{name}.txt")))
            .expect("C-MAPSS data (set CMAPSS_DIR)");
        rows.sort_by_key(|r| (r.unit, r.cycle));
        let want = history_reference(name);
        assert_eq!(rows.len(), want.len(), "{name}: one reference line per row");
        let mut store = history::HistoryStore::new(1000, u64::MAX);
        let mut features = Vec::with_capacity(rows.len() * history::N_FEATURES);
        for r in &rows {
            let obs = store.observe(
                &r.unit.to_string(),
                r.cycle,
                &history::model_sensors(&r.features()),
                0,
            );
            assert_eq!(
                obs.history_cycles, r.cycle,
                "{name}: unit {} cycle {}",
                r.unit, r.cycle
            );
            match obs.answer {
                history::Answer::Score(f) => features.extend_from_slice(&f[..]),
                other => panic!("{name}: a first delivery answered {other:?}"),
            }
        }
        let mut got = Vec::with_capacity(rows.len());
        for chunk in features.chunks(4096 * history::N_FEATURES) {
            got.extend(model.predict(chunk).expect("prediction"));
        }
        let (mut worst, mut at) = (0f32, 0usize);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let d = (g.rul - w[0])
                .abs()
                .max((g.low - w[1]).abs())
                .max((g.high - w[2]).abs());
            if d > worst {
                (worst, at) = (d, i);
            }
        }
        assert!(
            worst <= 1e-4,
            "{name}: row {at} (unit {} cycle {}) differs by {worst}: got {:?}, reference {:?}",
            rows[at].unit,
            rows[at].cycle,
            got[at],
            want[at]
        );
        let truth = cmapss::read_rul(&cmapss::data_dir().join(format!("RUL_{}.txt", &name[5..])))
            .expect("RUL file");
        let last: Vec<f64> = (0..rows.len())
            .filter(|&i| rows.get(i + 1).is_none_or(|n| n.unit != rows[i].unit))
            .map(|i| got[i].rul as f64)
            .collect();
        let e = rmse(&last, &truth);
        assert!(
            e <= target,
            "{name}: last-cycle RMSE {e:.2} over the target {target}"
        );
    }
}

#[test]
fn the_history_model_checks_its_signature_and_feature_set() {
    let row = models_dir().join("rul.onnx");
    let e = HistoryModel::load(&row, 1, history::N_FEATURES, history::FEATURE_SET)
        .err()
        .expect("the per-row model is not a history model");
    let text = e.to_string();
    assert!(
        text.contains("expected one input float32[batch,64]")
            && text.contains("found inputs [input"),
        "{text}"
    );
    let h = models_dir().join("rul_history.onnx");
    let e = HistoryModel::load(&h, 1, history::N_FEATURES, "turbofan-history-v0")
        .err()
        .expect("another feature set is refused");
    assert!(
        e.to_string()
            .contains("trained on features 'turbofan-history-v1'"),
        "{e}"
    );
    let m = history_model();
    assert_eq!(m.info().name, "rul-history-hgb");
    assert!(
        RulModel::load(&h, 1).is_err(),
        "and the row model refuses it"
    );
}
