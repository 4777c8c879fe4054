//! The disk budget (`MaxDiskMB`): when the Avro tree reaches it the writer stops taking
//! input — handlers wait, so edgeHub keeps the messages, for its time-to-live only — until
//! uploads free space.
//!
//! Each record taken is reserved against the budget until its block is written, so records
//! in flight (a group not yet written) count too: the tree passes the budget by at most one
//! record, its block's framing and the header of a new file.

use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::watch;
use tracing::{info, warn};

/// Bytes in a MiB (`MaxDiskMB` counts MiB).
pub const MIB: f64 = 1024.0 * 1024.0;

/// Bytes of Avro files in the tree against the budget, and the gate input waits at.
#[derive(Debug)]
pub struct DiskBudget {
    used: AtomicU64,
    /// Bytes of records taken and not yet written.
    reserved: AtomicU64,
    max: AtomicU64,
    full: watch::Sender<bool>,
}

impl DiskBudget {
    /// A budget of `max_bytes`, with `used` bytes already in the tree.
    pub fn new(max_bytes: u64, used: u64) -> DiskBudget {
        let b = DiskBudget {
            used: AtomicU64::new(used),
            reserved: AtomicU64::new(0),
            max: AtomicU64::new(max_bytes),
            full: watch::channel(false).0,
        };
        b.evaluate();
        b
    }

    /// Bytes written to the tree.
    pub fn add(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::SeqCst);
        self.evaluate();
    }

    /// A record of `bytes` was taken: it counts until [`DiskBudget::release`].
    pub fn reserve(&self, bytes: u64) {
        self.reserved.fetch_add(bytes, Ordering::SeqCst);
        self.evaluate();
    }

    /// Records of `bytes` reserved failed: they no longer count.
    pub fn release(&self, bytes: u64) {
        self.commit(bytes, 0);
    }

    /// Records of `reserved` bytes were written as `written` bytes of the tree (or, for 0,
    /// failed): one change, so the gate does not flap.
    pub fn commit(&self, reserved: u64, written: u64) {
        self.used.fetch_add(written, Ordering::SeqCst);
        let _ = self
            .reserved
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |r| {
                Some(r.saturating_sub(reserved))
            });
        self.evaluate();
    }

    /// The tree was measured (or files removed): it holds `bytes`.
    pub fn set_used(&self, bytes: u64) {
        self.used.store(bytes, Ordering::SeqCst);
        self.evaluate();
    }

    /// A new budget.
    pub fn set_max(&self, bytes: u64) {
        self.max.store(bytes, Ordering::SeqCst);
        self.evaluate();
    }

    /// Bytes in the tree.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    /// The budget, bytes.
    pub fn max(&self) -> u64 {
        self.max.load(Ordering::SeqCst)
    }

    /// Whether input is stopped.
    pub fn is_full(&self) -> bool {
        *self.full.borrow()
    }

    /// Changes of [`DiskBudget::is_full`].
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.full.subscribe()
    }

    /// Waits until there is room (returns `true`) or `stopping` becomes true (`false`).
    pub async fn wait_for_room(&self, stopping: &mut watch::Receiver<bool>) -> bool {
        let mut full = self.full.subscribe();
        loop {
            if *stopping.borrow_and_update() {
                return false;
            }
            if !*full.borrow_and_update() {
                return true;
            }
            tokio::select! {
                r = full.changed() => if r.is_err() { return false },
                r = stopping.changed() => if r.is_err() { return false },
            }
        }
    }

    fn evaluate(&self) {
        let (used, max) = (self.used(), self.max());
        let now_full = used.saturating_add(self.reserved.load(Ordering::SeqCst)) >= max;
        self.full.send_if_modified(|full| {
            if *full == now_full {
                return false;
            }
            *full = now_full;
            if now_full {
                warn!(
                    used_mb = used as f64 / MIB,
                    max_mb = max as f64 / MIB,
                    "the Avro tree reached MaxDiskMB: not taking input until uploads free space; edgeHub keeps the messages for the deployment's timeToLiveSecs and then drops them (counted in its metrics and status as expired): raise MaxDiskMB or fix the upload target before then"
                );
            } else {
                info!(
                    used_mb = used as f64 / MIB,
                    max_mb = max as f64 / MIB,
                    "the Avro tree is below MaxDiskMB again: taking input"
                );
            }
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn input_waits_while_full_and_resumes_when_space_is_freed() {
        let b = std::sync::Arc::new(DiskBudget::new(100, 0));
        let (_stop_tx, stop) = watch::channel(false);
        assert!(!b.is_full());
        b.add(100);
        assert!(b.is_full());
        let waiter = {
            let (b, mut stop) = (b.clone(), stop.clone());
            tokio::spawn(async move { b.wait_for_room(&mut stop).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "must wait while full");
        b.set_used(40);
        assert!(waiter.await.unwrap());
        b.set_max(40);
        assert!(b.is_full(), "a lower budget can make it full");
    }

    #[test]
    fn records_taken_and_not_yet_written_count_against_the_budget() {
        let b = DiskBudget::new(100, 40);
        b.reserve(59);
        assert!(!b.is_full());
        b.reserve(1);
        assert!(b.is_full(), "40 written and 60 in flight");
        b.commit(60, 70);
        assert_eq!(b.used(), 110);
        assert!(b.is_full());
        b.set_used(0);
        assert!(!b.is_full());
        b.release(5);
        b.reserve(99);
        assert!(!b.is_full(), "a release past zero does not go negative");
    }

    #[tokio::test]
    async fn stopping_releases_waiters() {
        let b = DiskBudget::new(1, 1);
        let (stop_tx, mut stop) = watch::channel(false);
        let t = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = stop_tx.send(true);
        });
        assert!(!b.wait_for_room(&mut stop).await);
        t.await.unwrap();
    }
}
