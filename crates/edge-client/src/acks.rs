//! Acknowledgement bookkeeping, both ways.
//!
//! - [`SendTracker`]: which of our QoS 1 publishes edgeHub has accepted. rumqttc picks packet
//!   ids itself and reports them as `Outgoing::Publish(pkid)` in request order, so a FIFO of
//!   waiters is matched to packet ids as they appear; a packet id already waiting is a
//!   retransmission after a reconnect, not a new publish.
//! - [`AckSequencer`]: PUBACKs for messages we received, released in arrival order (MQTT
//!   3.1.1 §4.6) once each message is handled, and only on the connection it arrived on: a
//!   message from an earlier connection is redelivered by edgeHub instead.

use bytes::Bytes;
use rumqttc::{AsyncClient, Publish, QoS};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// A publish waiting for its PUBACK, kept whole so it can be sent again.
pub(crate) struct PendingSend {
    seq: u64,
    /// Topic of the publish.
    pub(crate) topic: String,
    /// Its payload.
    pub(crate) payload: Bytes,
    /// Fired on PUBACK.
    pub(crate) tx: oneshot::Sender<()>,
}

/// Waiters for PUBACKs of our own publishes.
#[derive(Default)]
pub(crate) struct SendTracker {
    next_seq: u64,
    queued: VecDeque<PendingSend>,
    in_flight: HashMap<u16, PendingSend>,
}

impl SendTracker {
    /// A publish was queued; its waiter fires when it is acknowledged.
    pub(crate) fn register(&mut self, topic: String, payload: Bytes, tx: oneshot::Sender<()>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queued.push_back(PendingSend {
            seq,
            topic,
            payload,
            tx,
        });
    }

    /// The last registered publish could not be queued after all.
    pub(crate) fn unregister_last(&mut self) {
        self.queued.pop_back();
    }

    /// The event loop wrote a publish with packet id `pkid`.
    pub(crate) fn sent(&mut self, pkid: u16) {
        if pkid == 0 || self.in_flight.contains_key(&pkid) {
            return; // QoS 0, or a retransmission of a publish we already track
        }
        if let Some(p) = self.queued.pop_front() {
            self.in_flight.insert(pkid, p);
        }
    }

    /// edgeHub acknowledged `pkid`.
    pub(crate) fn acked(&mut self, pkid: u16) {
        if let Some(p) = self.in_flight.remove(&pkid) {
            let _ = p.tx.send(());
        }
    }

    /// Publishes not yet acknowledged.
    pub(crate) fn outstanding(&self) -> usize {
        self.queued.len() + self.in_flight.len()
    }

    /// A mark separating the publishes registered so far from later ones.
    pub(crate) fn mark(&self) -> u64 {
        self.next_seq
    }

    /// Takes every unacknowledged publish registered before `mark`, in the order they were
    /// first sent: after a reconnection without a session the MQTT client has dropped them, so
    /// they must be sent again (edgeHub may see a duplicate: at-least-once). Later ones are
    /// the new connection's and stay.
    pub(crate) fn take_before(&mut self, mark: u64) -> Vec<PendingSend> {
        let pkids: Vec<u16> = self
            .in_flight
            .iter()
            .filter(|(_, p)| p.seq < mark)
            .map(|(k, _)| *k)
            .collect();
        let mut taken: Vec<PendingSend> = pkids
            .into_iter()
            .filter_map(|k| self.in_flight.remove(&k))
            .collect();
        let (old, new): (Vec<PendingSend>, Vec<PendingSend>) =
            self.queued.drain(..).partition(|p| p.seq < mark);
        self.queued.extend(new);
        taken.extend(old);
        taken.sort_by_key(|p| p.seq);
        taken
    }

    /// The connection is gone for good: every waiter gets an error.
    pub(crate) fn fail_all(&mut self) {
        self.queued.clear();
        self.in_flight.clear();
    }
}

/// A PUBACK to send.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Release {
    epoch: u64,
    pkid: u16,
    qos: QoS,
}

#[derive(Default)]
struct SeqState {
    next_seq: u64,
    next_release: u64,
    done: BTreeMap<u64, Option<Release>>,
}

/// Releases PUBACKs in arrival order.
pub(crate) struct AckSequencer {
    state: Mutex<SeqState>,
    tx: mpsc::UnboundedSender<Release>,
    epoch: AtomicU64,
    /// Released PUBACKs not yet handed to the MQTT client.
    in_transit: AtomicU64,
}

impl AckSequencer {
    pub(crate) fn new(tx: mpsc::UnboundedSender<Release>) -> Self {
        AckSequencer {
            state: Mutex::new(SeqState::default()),
            tx,
            epoch: AtomicU64::new(0),
            in_transit: AtomicU64::new(0),
        }
    }

    /// The connection number now current.
    pub(crate) fn set_epoch(&self, epoch: u64) {
        self.epoch.store(epoch, Ordering::SeqCst);
    }

    /// A token for a message that just arrived.
    pub(crate) fn token(self: &Arc<Self>, epoch: u64, pkid: u16, qos: QoS) -> AckToken {
        let mut st = lock(&self.state);
        let seq = st.next_seq;
        st.next_seq += 1;
        AckToken {
            seq,
            release: (qos != QoS::AtMostOnce).then_some(Release { epoch, pkid, qos }),
            sequencer: Some(self.clone()),
        }
    }

    /// Messages received whose PUBACK (or abandonment) has not yet reached the MQTT client.
    pub(crate) fn pending(&self) -> u64 {
        let st = lock(&self.state);
        st.next_seq - st.next_release + self.in_transit.load(Ordering::SeqCst)
    }

    fn finish(&self, seq: u64, release: Option<Release>) {
        let mut st = lock(&self.state);
        st.done.insert(seq, release);
        loop {
            let next = st.next_release;
            let Some(r) = st.done.remove(&next) else {
                break;
            };
            st.next_release += 1;
            if let Some(r) = r {
                self.in_transit.fetch_add(1, Ordering::SeqCst);
                if self.tx.send(r).is_err() {
                    self.in_transit.fetch_sub(1, Ordering::SeqCst);
                }
            }
        }
    }
}

/// The right to acknowledge one received message. Dropping it without [`AckToken::ack`]
/// abandons the message: edgeHub keeps it and delivers it again on the next connection.
pub struct AckToken {
    seq: u64,
    release: Option<Release>,
    sequencer: Option<Arc<AckSequencer>>,
}

impl std::fmt::Debug for AckToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckToken").field("seq", &self.seq).finish()
    }
}

impl AckToken {
    /// Acknowledges the message.
    pub fn ack(mut self) {
        if let Some(s) = self.sequencer.take() {
            s.finish(self.seq, self.release);
        }
    }
}

impl Drop for AckToken {
    fn drop(&mut self) {
        if let Some(s) = self.sequencer.take() {
            s.finish(self.seq, None);
        }
    }
}

/// Sends released PUBACKs, skipping those of an earlier connection.
pub(crate) async fn release_acks(
    mqtt: AsyncClient,
    mut rx: mpsc::UnboundedReceiver<Release>,
    sequencer: Arc<AckSequencer>,
) {
    while let Some(r) = rx.recv().await {
        let sent = if r.epoch == sequencer.epoch.load(Ordering::SeqCst) {
            let mut p = Publish::new("", r.qos, Vec::<u8>::new());
            p.pkid = r.pkid;
            mqtt.ack(&p).await.is_ok()
        } else {
            true // from an earlier connection: edgeHub redelivers it instead
        };
        sequencer.in_transit.fetch_sub(1, Ordering::SeqCst);
        if !sent {
            break;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_waiters_follow_packet_ids_and_skip_retransmissions() {
        let mut t = SendTracker::default();
        let (a_tx, mut a) = oneshot::channel();
        let (b_tx, mut b) = oneshot::channel();
        t.register("a".into(), Bytes::new(), a_tx);
        t.register("b".into(), Bytes::new(), b_tx);
        t.sent(7);
        t.sent(7); // retransmission of 7 after a reconnect
        t.sent(8);
        assert_eq!(t.outstanding(), 2);
        t.acked(8);
        assert!(b.try_recv().is_ok());
        assert!(a.try_recv().is_err());
        t.acked(7);
        assert!(a.try_recv().is_ok());
        assert_eq!(t.outstanding(), 0);
    }

    #[test]
    fn unacknowledged_sends_are_taken_back_in_their_first_order() {
        let mut t = SendTracker::default();
        let mut rx = Vec::new();
        for name in ["first", "second", "third"] {
            let (tx, r) = oneshot::channel();
            t.register(name.into(), Bytes::from(name), tx);
            rx.push(r);
        }
        t.sent(9);
        t.sent(3); // in flight under packet ids that do not follow the order
        let mark = t.mark();
        let (tx, _later) = oneshot::channel();
        t.register("after the reconnection".into(), Bytes::new(), tx);
        let back: Vec<String> = t.take_before(mark).into_iter().map(|p| p.topic).collect();
        assert_eq!(back, vec!["first", "second", "third"]);
        assert_eq!(t.outstanding(), 1, "the new connection's send stays");
    }

    #[test]
    fn acks_are_released_in_arrival_order_and_abandoned_ones_skipped() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let s = Arc::new(AckSequencer::new(tx));
        s.set_epoch(1);
        let t1 = s.token(1, 10, QoS::AtLeastOnce);
        let t2 = s.token(1, 11, QoS::AtLeastOnce);
        let t3 = s.token(1, 12, QoS::AtLeastOnce);
        t3.ack();
        assert!(rx.try_recv().is_err(), "12 must wait for 10 and 11");
        drop(t1); // abandoned: not acknowledged, but does not block the others
        assert!(rx.try_recv().is_err());
        assert_eq!(s.pending(), 2);
        t2.ack();
        assert_eq!(rx.try_recv().unwrap().pkid, 11);
        assert_eq!(rx.try_recv().unwrap().pkid, 12);
        assert!(rx.try_recv().is_err());
        assert_eq!(
            s.pending(),
            2,
            "released but not yet handed to the MQTT client"
        );
    }
}
