//! What edgeHub's durable stores (its [`journal`](super::journal) of module queues and the
//! `$upstream` store) have in common: the receipt of an append, and how often they sync.

use tokio::sync::oneshot;

/// Result of a durable append: resolves once what was appended is on disk (or why not).
pub type Appended = oneshot::Receiver<Result<(), String>>;

/// The stores a message was handed to, one receipt each (kept inline for up to two sinks,
/// so taking a message allocates no list).
pub type Stored = smallvec::SmallVec<[Appended; 2]>;

/// Shortest time between two syncs. A sync costs about the same however much it carries,
/// so under load waiting this long gathers a larger group for one `fdatasync` (less CPU),
/// while a lone message waits at most this long.
pub const SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_millis(1);

/// Blocks a store's writer thread until [`SYNC_INTERVAL`] has passed since `last_sync`, so
/// that what arrives meanwhile joins the next sync.
pub fn pace(last_sync: std::time::Instant) {
    if let Some(rest) = SYNC_INTERVAL.checked_sub(last_sync.elapsed()) {
        std::thread::sleep(rest);
    }
}
