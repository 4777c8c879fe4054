//! NASA C-MAPSS files (A. Saxena et al., PHM08): space-separated rows of unit, cycle, three
//! operational settings and 21 sensors. Also the RUL files (one true RUL per test unit).

use std::path::{Path, PathBuf};

/// One row: one engine cycle.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Engine unit number.
    pub unit: u32,
    /// Cycle number.
    pub cycle: u32,
    /// OperationalSetting1..3.
    pub settings: [f64; 3],
    /// Sensor1..Sensor21.
    pub sensors: [f64; 21],
}

/// A file that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum CmapssError {
    /// I/O error.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Error.
        source: std::io::Error,
    },
    /// A malformed line.
    #[error("{path}:{line}: {problem}")]
    Line {
        /// File.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        problem: String,
    },
}

/// The data folder: `CMAPSS_DIR`, else `../shared/data/cmapss` next to the workspace.
pub fn data_dir() -> PathBuf {
    match std::env::var_os("CMAPSS_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/cmapss"),
    }
}

fn read(path: &Path) -> Result<String, CmapssError> {
    std::fs::read_to_string(path).map_err(|source| CmapssError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a train/test file.
pub fn read_rows(path: &Path) -> Result<Vec<Row>, CmapssError> {
    let text = read(path)?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |problem: String| CmapssError::Line {
            path: path.to_path_buf(),
            line: i + 1,
            problem,
        };
        let v: Vec<f64> = line
            .split_ascii_whitespace()
            .map(|t| {
                t.parse::<f64>()
                    .map_err(|_| bad(format!("'{t}' is not a number")))
            })
            .collect::<Result<_, _>>()?;
        if v.len() != 26 {
            return Err(bad(format!("expected 26 columns, found {}", v.len())));
        }
        let mut sensors = [0.0; 21];
        sensors.copy_from_slice(&v[5..26]);
        rows.push(Row {
            unit: v[0] as u32,
            cycle: v[1] as u32,
            settings: [v[2], v[3], v[4]],
            sensors,
        });
    }
    Ok(rows)
}

/// Reads a RUL file: the true RUL of each test unit, in unit order.
pub fn read_rul(path: &Path) -> Result<Vec<f64>, CmapssError> {
    let text = read(path)?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            l.trim().parse::<f64>().map_err(|_| CmapssError::Line {
                path: path.to_path_buf(),
                line: i + 1,
                problem: format!("'{}' is not a number", l.trim()),
            })
        })
        .collect()
}

impl Row {
    /// The row as a leaf device's telemetry body (docs/architecture.md §2).
    pub fn to_json(&self) -> String {
        use std::fmt::Write;
        // Written in place (`write!` into a `String` cannot fail): the simulator renders a
        // row for every message it sends.
        let mut s = String::with_capacity(640);
        let _ = write!(s, "{{\"CycleTime\":{}", self.cycle);
        for (i, v) in self.settings.iter().enumerate() {
            let _ = write!(s, ",\"OperationalSetting{}\":{v}", i + 1);
        }
        for (i, v) in self.sensors.iter().enumerate() {
            let _ = write!(s, ",\"Sensor{}\":{v}", i + 1);
        }
        s.push('}');
        s
    }

    /// The model's features (Sensor1..Sensor21) as f32.
    pub fn features(&self) -> [f32; 21] {
        self.sensors.map(|v| v as f32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rows_and_reports_bad_lines() {
        let dir = std::env::temp_dir().join(format!("cmapss-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.txt");
        let line = "1 2 -0.0007 -0.0004 100.0 518.67 641.82 1589.70 1400.60 14.62 21.61 554.36 2388.06 9046.19 1.30 47.47 521.66 2388.02 8138.62 8.4195 0.03 392 2388 100.00 39.06 23.4190 \n";
        std::fs::write(&good, format!("{line}{line}")).unwrap();
        let rows = read_rows(&good).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].unit, rows[0].cycle), (1, 2));
        assert_eq!(rows[0].sensors[0], 518.67);
        assert_eq!(rows[0].sensors[20], 23.419);
        let v: serde_json::Value = serde_json::from_str(&rows[0].to_json()).unwrap();
        assert_eq!(v["Sensor21"], serde_json::json!(23.419));
        assert_eq!(v["CycleTime"], serde_json::json!(2));
        let bad = dir.join("bad.txt");
        std::fs::write(&bad, "1 2 x\n").unwrap();
        let e = read_rows(&bad).unwrap_err().to_string();
        assert!(e.contains("bad.txt:1: 'x' is not a number"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn reads_the_shared_data_when_present() {
        let d = data_dir();
        let rul =
            read_rul(&d.join("RUL_FD001.txt")).unwrap_or_else(|e| panic!("{e} (set CMAPSS_DIR)"));
        assert_eq!(rul.len(), 100);
        let test = read_rows(&d.join("test_FD001.txt")).unwrap();
        assert_eq!(test.iter().map(|r| r.unit).max(), Some(100));
    }
}
