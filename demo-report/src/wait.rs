//! Waiting for a run to settle: every sent message has its RUL message or a dead letter in
//! IoT Hub, and (when asked) the Avro writer has archived the RUL records and uploaded its
//! files.

use crate::analysis;
use crate::error::ReportError;
use crate::inputs::{AvroStats, Snapshot, Sources};
use crate::report::WaitResult;
use std::time::Duration;
use tokio::time::Instant;

/// What to wait for, and how long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WaitGoal {
    /// Give up after this long.
    pub timeout: Duration,
    /// Give up when nothing changed for this long.
    pub stall: Duration,
    /// Also wait for the Avro writer's uploads.
    pub uploads: bool,
}

/// Where the run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitState {
    /// Messages in the sent log.
    pub sent: usize,
    /// Of them, classified.
    pub classified: usize,
    /// Of them, with a RUL message or a dead letter.
    pub done: usize,
    /// Avro records written or quarantined, when the writer reports them.
    pub archived: Option<u64>,
    /// Successful uploads.
    pub uploaded: usize,
    /// Avro files not uploaded yet.
    pub files_left: usize,
    /// Whether the writer can upload at all (see [`AvroStats::uploads_configured`]).
    pub uploads_configured: bool,
}

impl WaitState {
    /// The state a snapshot shows.
    pub fn of(s: &Snapshot) -> WaitState {
        let o = analysis::match_outcomes(&s.sent, &s.upstream.ruls, &s.upstream.dead);
        let avro = s.avro_reported.as_ref().and_then(AvroStats::from_reported);
        WaitState {
            sent: o.sent,
            classified: o.classified,
            done: o.done(),
            archived: avro
                .as_ref()
                .map(|a| a.records_written + a.records_quarantined),
            uploads_configured: avro.as_ref().is_none_or(|a| a.uploads_configured),
            uploaded: s.uploads.iter().filter(|u| u.is_success).count(),
            files_left: s.avro_files_left,
        }
    }

    /// Every sent message has an outcome.
    pub fn outcomes_done(&self) -> bool {
        self.done >= self.sent
    }

    /// Every classified message is archived and every Avro file uploaded (when the writer
    /// has somewhere to upload to).
    pub fn uploads_done(&self) -> bool {
        if self.classified == 0 {
            return true;
        }
        let archived = self.archived.is_some_and(|a| a >= self.classified as u64);
        archived && (!self.uploads_configured || (self.files_left == 0 && self.uploaded > 0))
    }

    /// Whether the goal is reached.
    pub fn finished(&self, uploads: bool) -> bool {
        self.outcomes_done() && (!uploads || self.uploads_done())
    }
}

/// Refreshes `snapshot` until the goal is reached, the timeout passes, or nothing changes
/// for the stall time; `on_tick` sees each state.
pub async fn wait(
    sources: &Sources,
    snapshot: &mut Snapshot,
    goal: WaitGoal,
    mut on_tick: impl FnMut(&WaitState),
) -> Result<WaitResult, ReportError> {
    let started = Instant::now();
    let mut last = WaitState::of(snapshot);
    let mut last_change = started;
    loop {
        on_tick(&last);
        let result = |complete: bool, reason: String| WaitResult {
            waited_secs: started.elapsed().as_secs_f64(),
            complete,
            reason,
        };
        if last.finished(goal.uploads) {
            let reason = if goal.uploads {
                "every sent message has an outcome and the Avro files are uploaded"
            } else {
                "every sent message has an outcome"
            };
            return Ok(result(true, reason.into()));
        }
        if started.elapsed() >= goal.timeout {
            return Ok(result(
                false,
                format!("the {} s timeout passed", goal.timeout.as_secs()),
            ));
        }
        if last_change.elapsed() >= goal.stall {
            return Ok(result(
                false,
                format!("nothing changed for {} s", goal.stall.as_secs()),
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        snapshot.refresh(sources).await?;
        let now = WaitState::of(snapshot);
        if now != last {
            last_change = Instant::now();
            last = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(done: usize, archived: Option<u64>, uploaded: usize, files_left: usize) -> WaitState {
        WaitState {
            sent: 10,
            classified: 9,
            done,
            archived,
            uploaded,
            files_left,
            uploads_configured: true,
        }
    }

    #[test]
    fn finished_means_every_outcome_and_when_asked_every_upload() {
        assert!(!state(9, None, 0, 0).finished(false));
        assert!(state(10, None, 0, 0).finished(false));
        assert!(!state(10, None, 1, 0).finished(true), "counters unknown");
        assert!(!state(10, Some(8), 1, 0).finished(true), "not all archived");
        assert!(!state(10, Some(9), 1, 1).finished(true), "a file left");
        assert!(!state(10, Some(9), 0, 0).finished(true), "nothing uploaded");
        assert!(state(10, Some(9), 2, 0).finished(true));
        let nothing_classified = WaitState {
            classified: 0,
            ..state(10, None, 0, 0)
        };
        assert!(nothing_classified.finished(true));
        let no_target = WaitState {
            uploads_configured: false,
            ..state(10, Some(9), 0, 1)
        };
        assert!(
            no_target.finished(true),
            "archived is all there is to wait for"
        );
    }
}
