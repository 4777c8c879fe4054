//! The report: built from what was read, rendered as Markdown (report.md), JSON (report.json)
//! and a short text for the terminal.

use crate::analysis::{self, EngineResult, Outcomes, Truth};
use crate::inputs::{self, AvroStats, ModuleStatus, Snapshot, Sources, Upload};
use hub_records::RulMessage;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

/// The modules a telemetry message passes before its RUL message reaches IoT Hub.
const PIPELINE: [&str; 2] = [
    turbofan_domain::ports::router::MODULE,
    turbofan_domain::ports::classifier::MODULE,
];

/// How waiting for the pipeline ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WaitResult {
    /// Seconds waited.
    pub waited_secs: f64,
    /// Whether everything waited for happened.
    pub complete: bool,
    /// What ended the wait, in words.
    pub reason: String,
}

/// A dead-letter reason and how often it occurred.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReasonCount {
    /// `DeadLetterReason`.
    pub reason: String,
    /// Dead letters with it.
    pub count: usize,
}

/// Prediction quality over the engines.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Accuracy {
    /// Engines judged.
    pub engines: usize,
    /// Of them, judged at their last test cycle (the standard evaluation).
    pub engines_at_last_cycle: usize,
    /// Root mean square error, cycles.
    pub rmse: f64,
    /// PHM08 score (lower is better).
    pub phm08_score: f64,
    /// The model named in the RUL messages (`ModelName`), if one.
    pub model: Option<String>,
    /// Fraction of engines whose true RUL lies in the interval of their prediction, and how
    /// many engines had an interval.
    pub interval_coverage: Option<(f64, usize)>,
}

/// What the per-row model says at the same engines and cycles, for comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RowComparison {
    /// The per-row model (file name).
    pub model: String,
    /// Engines scored.
    pub engines: usize,
    /// RMSE, cycles.
    pub rmse: f64,
    /// PHM08 score.
    pub phm08_score: f64,
    /// Its prediction per engine unit, in the order of the report's engines.
    pub predicted: Vec<f64>,
}

/// Everything the report says.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// When it was made (RFC 3339, UTC).
    pub generated_at: String,
    /// The runtime's state folder.
    pub state_dir: String,
    /// The replayed file.
    pub data_file: String,
    /// The truth's RUL file.
    pub rul_file: String,
    /// Leaf devices that sent.
    pub devices: usize,
    /// What became of the sent messages.
    pub outcomes: Outcomes,
    /// Dead letters by reason (those of this run's messages and any others).
    pub dead_letter_reasons: Vec<ReasonCount>,
    /// The Avro writer's counters, when it reported them.
    pub avro: Option<AvroStats>,
    /// Avro files written but not uploaded yet.
    pub avro_files_left: usize,
    /// Files IoT Hub was notified of.
    pub uploads: Vec<Upload>,
    /// Per engine, the last prediction against the truth.
    pub engines: Vec<EngineResult>,
    /// RMSE and PHM08 score over the engines.
    pub accuracy: Option<Accuracy>,
    /// The per-row model at the same engines and cycles (set by the caller, which runs it).
    pub row_model: Option<RowComparison>,
    /// IoT Hub's message routing: each route's count, and the RUL figures read from the
    /// `ruldata` storage endpoint beside the hub's own (set by the caller, which reads it).
    pub hub_routing: Option<crate::endpoint::HubRouting>,
    /// edgeHub's module queues when the report was made.
    pub modules: Vec<ModuleStatus>,
    /// Engines drawn in rul.svg.
    pub plotted_engines: Vec<u32>,
    /// How waiting ended, when the report waited.
    pub wait: Option<WaitResult>,
    /// What the reader should know.
    pub notes: Vec<String>,
}

/// One engine's curves for the picture.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineSeries {
    /// Engine unit.
    pub unit: u32,
    /// Its device.
    pub device: String,
    /// Predicted RUL per cycle.
    pub predicted: Vec<(u32, f64)>,
    /// The prediction interval per cycle (history model).
    pub band: Vec<(u32, f64, f64)>,
    /// True RUL per cycle, over the same cycles.
    pub actual: Vec<(u32, f64)>,
}

/// What rul.svg shows.
#[derive(Debug, Clone, PartialEq)]
pub struct PlotData {
    /// The picture's title.
    pub title: String,
    /// A few engines over their cycles.
    pub engines: Vec<EngineSeries>,
    /// Every judged engine: (true, predicted) at its last prediction.
    pub last: Vec<(f64, f64)>,
    /// Every judged engine with an interval: (true, low, high).
    pub last_band: Vec<(f64, f64, f64)>,
    /// The per-row model at the same engines: (true, predicted).
    pub last_row: Vec<(f64, f64)>,
}

/// Builds the report from a snapshot of the run and the truth. `plot_units` chooses the
/// engines to draw (else a spread of up to five); `now` is the report's time.
pub fn build(
    snapshot: &Snapshot,
    truth: &Truth,
    sources: &Sources,
    plot_units: Option<&[u32]>,
    wait: Option<WaitResult>,
    now: &str,
) -> (Report, PlotData) {
    let sent = &snapshot.sent;
    let up = &snapshot.upstream;
    let outcomes = analysis::match_outcomes(sent, &up.ruls, &up.dead);
    let sent_ids: HashSet<&str> = sent.iter().map(|s| s.correlation_id.as_str()).collect();
    // Only this run's RUL messages count (the store may hold earlier runs').
    let ruls: Vec<&RulMessage> = up
        .ruls
        .iter()
        .filter(|r| sent_ids.contains(r.correlation_id.as_str()))
        .collect();
    let units = analysis::units_of_devices(sent);
    let engines = analysis::engine_results(&ruls, &units, truth);
    let errors: Vec<f64> = engines.iter().map(|e| e.error).collect();
    let accuracy = match (analysis::rmse(&errors), analysis::phm08_score(&errors)) {
        (Some(rmse), Some(phm08_score)) => Some(Accuracy {
            engines: engines.len(),
            engines_at_last_cycle: engines.iter().filter(|e| e.cycle == e.last_cycle).count(),
            rmse,
            phm08_score,
            model: {
                let mut names: Vec<&str> = ruls.iter().filter_map(|r| r.model.as_deref()).collect();
                names.sort_unstable();
                names.dedup();
                (!names.is_empty()).then(|| names.join(", "))
            },
            interval_coverage: analysis::interval_coverage(&engines),
        }),
        _ => None,
    };

    let mut per_unit: BTreeMap<u32, usize> = BTreeMap::new();
    let device_of_unit: BTreeMap<u32, String> =
        engines.iter().map(|e| (e.unit, e.device.clone())).collect();
    let unit_of_device: HashMap<&str, u32> = engines
        .iter()
        .map(|e| (e.device.as_str(), e.unit))
        .collect();
    for r in &ruls {
        if let Some(&u) = unit_of_device.get(r.device.as_str()) {
            *per_unit.entry(u).or_default() += 1;
        }
    }
    let plotted: Vec<u32> = match plot_units {
        Some(u) => u
            .iter()
            .copied()
            .filter(|u| device_of_unit.contains_key(u))
            .collect(),
        None => analysis::pick_engines(&per_unit, 5),
    };
    let series = plotted
        .iter()
        .filter_map(|u| {
            let device = device_of_unit.get(u)?;
            let predicted = analysis::prediction_series(&ruls, device);
            let actual = predicted
                .iter()
                .filter_map(|&(c, _)| truth.rul_at(*u, c).map(|t| (c, t)))
                .collect();
            Some(EngineSeries {
                unit: *u,
                device: device.clone(),
                band: analysis::interval_series(&ruls, device),
                predicted,
                actual,
            })
        })
        .collect();
    let file_name = sources
        .data_file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let plot = PlotData {
        title: format!("Predicted vs true RUL ({file_name})"),
        engines: series,
        last: engines.iter().map(|e| (e.actual, e.predicted)).collect(),
        last_band: engines
            .iter()
            .filter_map(|e| e.interval.map(|(l, h)| (e.actual, l, h)))
            .collect(),
        last_row: Vec::new(),
    };

    let avro = snapshot
        .avro_reported
        .as_ref()
        .and_then(AvroStats::from_reported);
    let modules = snapshot
        .status
        .as_ref()
        .map(inputs::module_statuses)
        .unwrap_or_default();
    let mut report = Report {
        generated_at: now.to_owned(),
        state_dir: sources.state_dir.display().to_string(),
        data_file: sources.data_file.display().to_string(),
        rul_file: sources.rul_file.display().to_string(),
        devices: units.len(),
        dead_letter_reasons: analysis::group_reasons(&up.dead)
            .into_iter()
            .map(|(reason, count)| ReasonCount { reason, count })
            .collect(),
        outcomes,
        avro,
        avro_files_left: snapshot.avro_files_left,
        uploads: snapshot.uploads.clone(),
        engines,
        accuracy,
        row_model: None,
        hub_routing: None,
        modules,
        plotted_engines: plotted,
        wait,
        notes: Vec::new(),
    };
    report.notes = notes(&report, snapshot.status.is_some());
    (report, plot)
}

fn notes(r: &Report, runtime_answered: bool) -> Vec<String> {
    let mut notes = Vec::new();
    let o = &r.outcomes;
    if let Some(w) = &r.wait {
        if !w.complete {
            notes.push(format!(
                "Stopped waiting after {:.0} s: {}.",
                w.waited_secs, w.reason
            ));
        }
    }
    if o.pending > 0 {
        notes.push(format!(
            "{} sent messages have neither a RUL message nor a dead letter in IoT Hub (e.g. correlation id {}).",
            o.pending,
            o.pending_examples.first().map(String::as_str).unwrap_or("?")
        ));
        for m in PIPELINE {
            match r.modules.iter().find(|s| s.module == m) {
                Some(s) if !s.connected => notes.push(format!(
                    "{m} is not connected to edgeHub (not started, or failing: see logs/ in the state folder); {} messages wait for it.",
                    s.queued
                )),
                Some(s) if s.queued > 0 => {
                    notes.push(format!("{m} still has {} messages to handle.", s.queued))
                }
                Some(_) => {}
                None if runtime_answered => notes.push(format!(
                    "{m} never connected and no message was routed to it."
                )),
                None => {}
            }
        }
    }
    if !runtime_answered {
        notes.push(
            "The runtime was not running: module queues and the Avro writer's counters are unknown."
                .into(),
        );
    } else if r.avro.is_none() {
        notes.push(format!(
            "{} has not reported counters (not running, or not started yet).",
            inputs::AVRO_WRITER
        ));
    }
    if !r.uploads_configured() {
        notes.push(format!(
            "{} reports no UploadTarget: it has nowhere to upload to, so its Avro files ({} now) stay in its archive under the state folder's binds/.",
            inputs::AVRO_WRITER,
            r.avro_files_left
        ));
    } else if r.avro_files_left > 0 {
        let quiet = r
            .avro
            .as_ref()
            .and_then(|a| a.quiet_period_secs)
            .map(|q| format!(" (QuietPeriodSecs = {q} s)"))
            .unwrap_or_default();
        notes.push(format!(
            "{} Avro files are not uploaded yet: the writer uploads a file once it has been left alone for its quiet period{quiet}.",
            r.avro_files_left
        ));
    }
    let failed_uploads = r.uploads.iter().filter(|u| !u.is_success).count();
    if failed_uploads > 0 {
        notes.push(format!(
            "{failed_uploads} uploads were notified as failed (the writer retries them)."
        ));
    }
    if o.duplicates > 0 {
        notes.push(format!(
            "{} RUL messages are duplicates of others (at-least-once delivery after a reconnection).",
            o.duplicates
        ));
    }
    if o.unmatched > 0 {
        notes.push(format!(
            "{} RUL messages or dead letters in IoT Hub are not from this run's sent log (an earlier run, or another sender).",
            o.unmatched
        ));
    }
    if let Some(a) = &r.accuracy {
        if a.engines_at_last_cycle < a.engines {
            notes.push(format!(
                "{} engines were judged before their last test cycle (the run sent only their first cycles); their true RUL there is counted back from the RUL file.",
                a.engines - a.engines_at_last_cycle
            ));
        }
    }
    notes
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

impl Report {
    /// Whether the Avro writer can upload (unknown counts as yes).
    pub fn uploads_configured(&self) -> bool {
        self.avro.as_ref().is_none_or(|a| a.uploads_configured)
    }

    /// The number of successful uploads.
    pub fn files_uploaded(&self) -> usize {
        self.uploads.iter().filter(|u| u.is_success).count()
    }

    /// The report as Markdown; `picture` is the picture's file name beside it.
    pub fn markdown(&self, picture: &str) -> String {
        let o = &self.outcomes;
        let mut s = String::new();
        let _ = writeln!(s, "# Turbofan RUL at the edge: demo report\n");
        let _ = writeln!(
            s,
            "Generated {} from the runtime state `{}`; leaf devices replayed `{}`.\n",
            self.generated_at, self.state_dir, self.data_file
        );
        let _ = writeln!(s, "## Pipeline\n");
        let _ = writeln!(s, "| what | count |\n|---|---:|");
        let _ = writeln!(
            s,
            "| telemetry messages sent by {} leaf devices (acknowledged by edgeHub) | {} |",
            self.devices, o.sent
        );
        let _ = writeln!(
            s,
            "| classified: RUL messages in IoT Hub from turbofanRouter | {} |",
            o.classified
        );
        let _ = writeln!(s, "| dead letters | {} |", o.dead_letters);
        let _ = writeln!(s, "| no outcome yet | {} |", o.pending);
        match &self.avro {
            Some(a) => {
                let _ = writeln!(
                    s,
                    "| Avro records written (avroFileWriter) | {} |",
                    a.records_written
                );
                if a.records_quarantined > 0 {
                    let _ = writeln!(
                        s,
                        "| Avro records quarantined | {} |",
                        a.records_quarantined
                    );
                }
            }
            None => {
                let _ = writeln!(s, "| Avro records written (avroFileWriter) | unknown |");
            }
        }
        let _ = writeln!(s, "| Avro files uploaded | {} |", self.files_uploaded());
        if self.avro_files_left > 0 {
            let what = if self.uploads_configured() {
                "waiting for upload"
            } else {
                "kept (no upload target)"
            };
            let _ = writeln!(s, "| Avro files {what} | {} |", self.avro_files_left);
        }
        let _ = writeln!(s, "\n## Dead letters\n");
        if self.dead_letter_reasons.is_empty() {
            let _ = writeln!(s, "None.");
        } else {
            let _ = writeln!(s, "| reason | count |\n|---|---:|");
            for r in &self.dead_letter_reasons {
                let _ = writeln!(s, "| {} | {} |", md_escape(&r.reason), r.count);
            }
        }
        let _ = writeln!(s, "\n## Uploaded files\n");
        if self.uploads.is_empty() {
            let _ = writeln!(s, "None.");
        } else {
            let _ = writeln!(s, "| time | blob | result | where |\n|---|---|---|---|");
            for u in &self.uploads {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} |",
                    u.time,
                    md_escape(&u.blob_name),
                    if u.is_success { "uploaded" } else { "failed" },
                    md_escape(&u.url)
                );
            }
        }
        if let Some(h) = &self.hub_routing {
            let _ = writeln!(s, "\n## IoT Hub message routing\n");
            let _ = writeln!(s, "| hub route | messages |\n|---|---:|");
            for (route, n) in &h.routes {
                let _ = writeln!(s, "| {} | {n} |", md_escape(route));
            }
            let fmt = |v: Option<f64>| v.map_or_else(|| "–".to_owned(), |v| format!("{v:.2}"));
            let cov = |c: Option<(f64, usize)>| {
                c.map_or_else(
                    || "–".to_owned(),
                    |(f, n)| format!("{:.0} % of {n}", f * 100.0),
                )
            };
            let _ = writeln!(
                s,
                "\nThe operator's view, as in the tutorial: the RUL messages read back from storage endpoint `{}` (container `{}`, {} blobs of IoT Hub's Avro records, {} messages), beside the same figures from everything that reached the hub.\n",
                h.endpoint, h.container, h.blobs, h.messages
            );
            let _ = writeln!(
                s,
                "| source | RUL messages | engines | RMSE | PHM08 | interval coverage |\n|---|---:|---:|---:|---:|---:|"
            );
            for (name, f) in [
                (h.endpoint.as_str(), &h.from_endpoint),
                ("IoT Hub (all received)", &h.from_hub),
            ] {
                let _ = writeln!(
                    s,
                    "| {name} | {} | {} | {} | {} | {} |",
                    f.rul_messages,
                    f.engines,
                    fmt(f.rmse),
                    fmt(f.phm08_score),
                    cov(f.interval_coverage)
                );
            }
            let _ = writeln!(
                s,
                "\n{}",
                if h.agrees() {
                    "The endpoint gives the same figures as the hub."
                } else {
                    "**The endpoint's figures differ from the hub's**: some RUL messages are not (yet) in its blobs."
                }
            );
        }
        let _ = writeln!(s, "\n## Predicted vs true RUL\n");
        match &self.accuracy {
            Some(a) => {
                let _ = writeln!(
                    s,
                    "RMSE over {} engines: **{:.2} cycles**; PHM08 score: **{:.1}** (lower is better; late predictions cost more than early ones).\n",
                    a.engines, a.rmse, a.phm08_score
                );
                let _ = writeln!(
                    s,
                    "Each engine is judged on its last prediction (the RUL message with the highest CycleTime from its device). The true RUL at cycle c is the engine's RUL in `{}` plus its last test cycle minus c; {} of {} engines were judged at their last test cycle.\n",
                    self.rul_file, a.engines_at_last_cycle, a.engines
                );
                let model = a.model.as_deref().unwrap_or("(not named in the messages)");
                let _ = writeln!(
                    s,
                    "| predictions | engines | RMSE | PHM08 |\n|---|---:|---:|---:|"
                );
                let _ = writeln!(
                    s,
                    "| what reached IoT Hub (`{}`) | {} | {:.2} | {:.1} |",
                    md_escape(model),
                    a.engines,
                    a.rmse,
                    a.phm08_score
                );
                if let Some(r) = &self.row_model {
                    let _ = writeln!(
                        s,
                        "| the per-row model `{}` on the same rows (this run's telemetry, scored by the report) | {} | {:.2} | {:.1} |",
                        md_escape(&r.model),
                        r.engines,
                        r.rmse,
                        r.phm08_score
                    );
                }
                s.push('\n');
                if let Some((share, n)) = a.interval_coverage {
                    let _ = writeln!(
                        s,
                        "The true RUL lies inside the interval [PredictedRulLow, PredictedRulHigh] for **{:.0} %** of the {n} engines with one (the model's nominal coverage is 80 %; see models/MODEL_CARD.md).\n",
                        share * 100.0
                    );
                }
            }
            None => {
                let _ = writeln!(s, "No RUL message of this run reached IoT Hub.\n");
            }
        }
        if !self.plotted_engines.is_empty() || !self.engines.is_empty() {
            let _ = writeln!(s, "![Predicted vs true RUL]({picture})\n");
        }
        if !self.engines.is_empty() {
            let _ = writeln!(
                s,
                "| engine | device | judged at cycle | last test cycle | history cycles | predicted RUL | interval | true RUL | error | per-row model |\n|---:|---|---:|---:|---:|---:|---|---:|---:|---:|"
            );
            let row = |i: usize| {
                self.row_model
                    .as_ref()
                    .and_then(|r| r.predicted.get(i))
                    .map_or_else(|| "–".to_owned(), |p| format!("{p:.1}"))
            };
            for (i, e) in self.engines.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {:.1} | {} | {:.0} | {:+.1} | {} |",
                    e.unit,
                    e.device,
                    e.cycle,
                    e.last_cycle,
                    e.history_cycles
                        .map_or_else(|| "–".to_owned(), |n| n.to_string()),
                    e.predicted,
                    e.interval
                        .map_or_else(|| "–".to_owned(), |(l, h)| format!("{l:.0}–{h:.0}")),
                    e.actual,
                    e.error,
                    row(i)
                );
            }
        }
        if !self.modules.is_empty() {
            let _ = writeln!(
                s,
                "\n## Modules\n\nedgeHub's queues when the report was made.\n"
            );
            let _ = writeln!(
                s,
                "| module | connected | waiting | delivered |\n|---|---|---:|---:|"
            );
            for m in &self.modules {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} |",
                    m.module,
                    if m.connected { "yes" } else { "no" },
                    m.queued,
                    m.delivered
                );
            }
        }
        if !self.notes.is_empty() {
            let _ = writeln!(s, "\n## Notes\n");
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        s
    }

    /// The summary printed on the terminal.
    pub fn summary(&self) -> String {
        let o = &self.outcomes;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "  sent          {} messages from {} leaf devices",
            o.sent, self.devices
        );
        let _ = writeln!(
            s,
            "  classified    {} RUL messages in IoT Hub (from turbofanRouter)",
            o.classified
        );
        let _ = writeln!(s, "  dead letters  {}", o.dead_letters);
        for r in self.dead_letter_reasons.iter().take(5) {
            let _ = writeln!(s, "                {} × {}", r.count, r.reason);
        }
        if o.pending > 0 {
            let _ = writeln!(s, "  no outcome    {}", o.pending);
        }
        let written = self
            .avro
            .as_ref()
            .map(|a| a.records_written.to_string())
            .unwrap_or_else(|| "unknown".into());
        let _ = writeln!(
            s,
            "  Avro          {written} records written, {} files uploaded{}",
            self.files_uploaded(),
            match (self.avro_files_left, self.uploads_configured()) {
                (0, _) => String::new(),
                (n, true) => format!(", {n} waiting"),
                (n, false) => format!(", {n} kept (no upload target)"),
            }
        );
        for u in self.uploads.iter().filter(|u| u.is_success).take(5) {
            let _ = writeln!(s, "                {}", u.url);
        }
        if let Some(h) = &self.hub_routing {
            let routes: Vec<String> = h.routes.iter().map(|(r, n)| format!("{r} {n}")).collect();
            let _ = writeln!(s, "  hub routes    {}", routes.join(", "));
            let _ = writeln!(
                s,
                "  {:<13} {} RUL messages in {} blobs; {}",
                h.endpoint,
                h.from_endpoint.rul_messages,
                h.blobs,
                if h.agrees() {
                    "same figures as the hub's"
                } else {
                    "figures DIFFER from the hub's"
                }
            );
        }
        match &self.accuracy {
            Some(a) => {
                let _ = writeln!(
                    s,
                    "  accuracy      RMSE {:.2} cycles over {} engines; PHM08 score {:.1}{}",
                    a.rmse,
                    a.engines,
                    a.phm08_score,
                    a.model
                        .as_ref()
                        .map(|m| format!(" ({m})"))
                        .unwrap_or_default()
                );
                if let Some((share, n)) = a.interval_coverage {
                    let _ = writeln!(
                        s,
                        "                true RUL inside the 80 % interval for {:.0} % of {n} engines",
                        share * 100.0
                    );
                }
                if let Some(r) = &self.row_model {
                    let _ = writeln!(
                        s,
                        "                per-row model {} on the same rows: RMSE {:.2}; PHM08 score {:.1}",
                        r.model, r.rmse, r.phm08_score
                    );
                }
            }
            None => {
                let _ = writeln!(s, "  accuracy      no predictions to judge");
            }
        }
        for n in &self.notes {
            let _ = writeln!(s, "  note: {n}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use leaf_simulator::SentRecord;
    use std::path::Path;
    use turbofan_domain::cmapss::Row;

    fn snapshot() -> Snapshot {
        let sent = (1..=3)
            .map(|c| SentRecord {
                device: "Client_001".into(),
                unit: 1,
                cycle: c,
                correlation_id: format!("c{c}"),
                sent_at: String::new(),
            })
            .collect();
        let mut upstream = hub_records::Reader::new(Path::new("/nonexistent"));
        upstream.ruls = vec![
            RulMessage {
                correlation_id: "c1".into(),
                device: "Client_001".into(),
                cycle: 1,
                predicted_rul: 120.0,
                ..Default::default()
            },
            RulMessage {
                correlation_id: "c2".into(),
                device: "Client_001".into(),
                cycle: 2,
                predicted_rul: 110.0,
                interval: Some((95.0, 150.0)),
                history_cycles: Some(2),
                model: Some("rul-history-hgb".into()),
                ..Default::default()
            },
        ];
        Snapshot {
            sent,
            upstream,
            uploads: Vec::new(),
            status: Some(runtime_state::control::Status {
                modules: BTreeMap::from([(
                    "turbofanRulClassifier".to_owned(),
                    runtime_state::control::QueueStats {
                        queued: 1,
                        delivered: 2,
                        ..Default::default()
                    },
                )]),
                ..Default::default()
            }),
            avro_reported: Some(
                serde_json::json!({"RecordsWritten": 2, "QuietPeriodSecs": 600.0, "UploadTarget": "iothub"}),
            ),
            avro_files_left: 1,
        }
    }

    #[test]
    fn a_partial_run_is_reported_with_what_is_missing() {
        let rows: Vec<Row> = (1..=5)
            .map(|c| Row {
                unit: 1,
                cycle: c,
                settings: [0.0; 3],
                sensors: [0.0; 21],
            })
            .collect();
        let truth = Truth::new(&rows, &[100.0]);
        let sources = Sources::new(Path::new("/state"), Path::new("/d/test_FD003.txt"));
        let (r, plot) = build(&snapshot(), &truth, &sources, None, None, "now");
        assert_eq!((r.outcomes.classified, r.outcomes.pending), (2, 1));
        let a = r.accuracy.as_ref().unwrap();
        assert_eq!((a.engines, a.engines_at_last_cycle), (1, 0));
        assert_eq!(r.engines[0].actual, 103.0, "true RUL at cycle 2");
        assert!((a.rmse - 7.0).abs() < 1e-9);
        assert_eq!(r.plotted_engines, vec![1]);
        assert_eq!(plot.engines[0].actual, vec![(1, 104.0), (2, 103.0)]);
        assert_eq!(plot.last, vec![(103.0, 110.0)]);
        let notes = r.notes.join("\n");
        for want in [
            "1 sent messages have neither",
            "turbofanRulClassifier is not connected",
            "QuietPeriodSecs = 600 s",
            "judged before their last test cycle",
        ] {
            assert!(notes.contains(want), "{want} in\n{notes}");
        }
        let md = r.markdown("rul.svg");
        assert!(md.contains("| classified: RUL messages in IoT Hub from turbofanRouter | 2 |"));
        assert!(md.contains("RMSE over 1 engines: **7.00 cycles**"), "{md}");
        assert!(md.contains("![Predicted vs true RUL](rul.svg)"));
        // The history model's interval and name reach the report; 103 is inside 95–150.
        assert_eq!(a.interval_coverage, Some((1.0, 1)));
        assert_eq!(a.model.as_deref(), Some("rul-history-hgb"));
        assert!(
            md.contains("for **100 %** of the 1 engines with one"),
            "{md}"
        );
        assert!(
            md.contains("| 1 | Client_001 | 2 | 5 | 2 | 110.0 | 95–150 | 103 | +7.0 | – |"),
            "{md}"
        );
        assert_eq!(plot.last_band, vec![(103.0, 95.0, 150.0)]);
        assert_eq!(plot.engines[0].band, vec![(2, 95.0, 150.0)]);
        let text = r.summary();
        assert!(text.contains("RMSE 7.00 cycles over 1 engines"), "{text}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["outcomes"]["classified"], 2);
        assert_eq!(json["avro"]["recordsWritten"], 2);

        let mut no_target = snapshot();
        no_target.avro_reported = Some(serde_json::json!({"RecordsWritten": 2}));
        let (r, _) = build(&no_target, &truth, &sources, Some(&[1, 9]), None, "now");
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("reports no UploadTarget")),
            "{:?}",
            r.notes
        );
        assert!(
            r.summary().contains("1 kept (no upload target)"),
            "{}",
            r.summary()
        );
        assert_eq!(r.plotted_engines, vec![1], "engine 9 has no predictions");
    }
}
