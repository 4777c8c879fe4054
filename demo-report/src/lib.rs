//! The demo report: what a run of the turbofan solution on the local runtime did, read from
//! the traces it left.
//!
//! | source | what it tells |
//! |---|---|
//! | the leaf simulator's sent log | every telemetry message edgeHub acknowledged |
//! | IoT Hub's upstream store | RUL messages from `turbofanRouter`, dead letters |
//! | IoT Hub's file-upload notifications | the Avro files uploaded, and where |
//! | the runtime's management API | module queues, the Avro writer's reported counters |
//! | `test_FDxxx.txt` and `RUL_FDxxx.txt` | the true RUL of every engine at every cycle |
//!
//! - [`upstream`]: sorting upstream records;
//! - [`analysis`]: matching by correlation id, each engine's last prediction, RMSE, PHM08
//!   score (pure, no I/O);
//! - [`inputs`]: reading the traces;
//! - [`endpoint`]: the RUL messages in IoT Hub's `ruldata` storage endpoint, and the hub
//!   routes' counts;
//! - [`wait`]: waiting for a run to settle;
//! - [`report`]: the report (Markdown, JSON, terminal summary) and [`plot`] its picture.

pub mod analysis;
pub mod endpoint;
mod error;
pub mod inputs;
pub mod plot;
pub mod report;
pub mod wait;

pub use error::ReportError;
pub use report::Report;

use std::path::{Path, PathBuf};

/// The files a report is written to.
#[derive(Debug, Clone)]
pub struct Written {
    /// report.md
    pub markdown: PathBuf,
    /// report.json
    pub json: PathBuf,
    /// rul.svg
    pub picture: PathBuf,
}

/// Writes `report.md`, `report.json` and `rul.svg` into `dir` (created if needed).
pub fn write(report: &Report, plot: &report::PlotData, dir: &Path) -> Result<Written, ReportError> {
    std::fs::create_dir_all(dir).map_err(ReportError::io(dir))?;
    let w = Written {
        markdown: dir.join("report.md"),
        json: dir.join("report.json"),
        picture: dir.join("rul.svg"),
    };
    plot::draw(plot, &w.picture)?;
    std::fs::write(&w.markdown, report.markdown("rul.svg"))
        .map_err(ReportError::io(&w.markdown))?;
    let json = serde_json::to_vec_pretty(report)?;
    std::fs::write(&w.json, json).map_err(ReportError::io(&w.json))?;
    Ok(w)
}
