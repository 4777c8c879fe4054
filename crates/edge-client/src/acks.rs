//! Acknowledgement bookkeeping, both ways.
//!
//! - [`SendTracker`]: our QoS 1 publishes until edgeHub accepts them. Each gets a packet id
//!   when it is taken in; after a reconnection everything not yet accepted is sent again, in
//!   the order it was first taken in (MQTT 3.1.1 §4.4), whether edgeHub kept the session or
//!   not: at-least-once, a send never hangs.
//! - [`AckSequencer`]: PUBACKs for messages we received, released in arrival order (MQTT
//!   3.1.1 §4.6) once each message is handled, and only on the connection it arrived on: a
//!   message from an earlier connection is redelivered by edgeHub instead.

use bytes::Bytes;
use rumqttc::QoS;
use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};

/// A publish handed to the connection, kept whole until edgeHub accepts it.
pub(crate) struct Outbound {
    /// Topic of the publish.
    pub(crate) topic: String,
    /// Its payload.
    pub(crate) payload: Bytes,
    /// What its PUBACK completes.
    pub(crate) done: Done,
    /// A place in the send window, given back on PUBACK.
    pub(crate) _permit: Option<OwnedSemaphorePermit>,
}

/// What a publish's PUBACK completes. Dropped without it (the client closed first), it
/// completes nothing: the waiting sender gets an error, the forwarded input is abandoned.
pub(crate) enum Done {
    /// A sender waiting for it.
    Waiter(oneshot::Sender<()>),
    /// One of the outputs of a forwarded input.
    Output(OutputOf),
    /// A callback.
    Then(Then),
}

impl Done {
    fn accepted(self) {
        match self {
            Done::Waiter(tx) => {
                let _ = tx.send(());
            }
            Done::Output(o) => o.accepted(),
            Done::Then(t) => t.call(true),
        }
    }
}

/// A callback told whether its publish was accepted: `true` on PUBACK, `false` if it is
/// dropped without one.
pub(crate) struct Then(Option<Box<dyn FnOnce(bool) + Send + Sync>>);

impl Then {
    pub(crate) fn new(f: impl FnOnce(bool) + Send + Sync + 'static) -> Then {
        Then(Some(Box::new(f)))
    }

    fn call(mut self, accepted: bool) {
        if let Some(f) = self.0.take() {
            f(accepted);
        }
    }
}

impl Drop for Then {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f(false);
        }
    }
}

/// An input whose outputs are in flight ([`crate::ModuleClient::forward`]): acknowledged
/// when the last of them is accepted, that is, when the last [`OutputOf`] is done with it;
/// abandoned (edgeHub delivers it again) if any of them was dropped unaccepted.
pub(crate) struct Forwarded {
    input: Option<AckToken>,
    abandoned: AtomicBool,
}

impl Forwarded {
    pub(crate) fn new(input: AckToken) -> Arc<Forwarded> {
        Arc::new(Forwarded {
            input: Some(input),
            abandoned: AtomicBool::new(false),
        })
    }

    /// Leaves the input unacknowledged, whatever happens to its outputs.
    pub(crate) fn abandon(&self) {
        self.abandoned.store(true, Ordering::Relaxed);
    }
}

impl Drop for Forwarded {
    fn drop(&mut self) {
        // Dropping the token instead of acknowledging it abandons the input.
        if let Some(t) = self.input.take() {
            if !*self.abandoned.get_mut() {
                t.ack();
            }
        }
    }
}

/// One output's share of a [`Forwarded`] input.
pub(crate) struct OutputOf(Option<Arc<Forwarded>>);

impl OutputOf {
    pub(crate) fn new(input: &Arc<Forwarded>) -> OutputOf {
        OutputOf(Some(input.clone()))
    }

    /// edgeHub accepted the output.
    fn accepted(mut self) {
        self.0.take();
    }
}

impl Drop for OutputOf {
    fn drop(&mut self) {
        if let Some(input) = self.0.take() {
            input.abandon();
        }
    }
}

/// Publishes not yet acknowledged by edgeHub, by packet id, each with its place in the
/// order they were taken in.
#[derive(Default)]
pub(crate) struct SendTracker {
    next_seq: u64,
    next_pkid: u16,
    unacked: FxHashMap<u16, (u64, Outbound)>,
}

impl SendTracker {
    /// A packet id not used by any unacknowledged publish (nor by `reserved`).
    pub(crate) fn free_pkid(&mut self, reserved: Option<u16>) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
            if !self.unacked.contains_key(&self.next_pkid) && Some(self.next_pkid) != reserved {
                return self.next_pkid;
            }
        }
    }

    /// Takes a publish in; returns the packet id it is sent under, and the publish.
    pub(crate) fn add(&mut self, o: Outbound, reserved: Option<u16>) -> (u16, &Outbound) {
        let pkid = self.free_pkid(reserved);
        let seq = self.next_seq;
        self.next_seq += 1;
        let entry = self.unacked.entry(pkid).insert_entry((seq, o));
        (pkid, &entry.into_mut().1)
    }

    /// edgeHub acknowledged `pkid`: its sender is told, or its share of a forwarded input
    /// done.
    pub(crate) fn acked(&mut self, pkid: u16) {
        if let Some((_, o)) = self.unacked.remove(&pkid) {
            o.done.accepted();
        }
    }

    /// Every unacknowledged publish with its packet id, in the order they were taken in
    /// (sorted here: this is asked only when a connection starts).
    pub(crate) fn unacked(&self) -> Vec<(u16, &Outbound)> {
        let mut all: Vec<(u64, u16, &Outbound)> = self
            .unacked
            .iter()
            .map(|(pkid, (seq, o))| (*seq, *pkid, o))
            .collect();
        all.sort_unstable_by_key(|(seq, ..)| *seq);
        all.into_iter().map(|(_, pkid, o)| (pkid, o)).collect()
    }

    /// Publishes not yet acknowledged.
    pub(crate) fn len(&self) -> usize {
        self.unacked.len()
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
    /// Messages `next_release..next_seq`, at `seq - next_release`: `None` while handled,
    /// then what to release (a PUBACK, or nothing).
    done: VecDeque<Option<Option<Release>>>,
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
        // A token finishes once, and releases stop at the first message not finished, so
        // `seq` is at or after `next_release`, by at most the messages in flight.
        let Some(at) = seq.checked_sub(st.next_release) else {
            return;
        };
        let at = at as usize;
        if at >= st.done.len() {
            st.done.resize(at + 1, None);
        }
        st.done[at] = Some(release);
        while let Some(Some(_)) = st.done.front() {
            let r = st.done.pop_front().flatten().flatten();
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

impl Release {
    /// The packet id to acknowledge, if the message came on connection `epoch` (one from
    /// an earlier connection is redelivered by edgeHub instead).
    pub(crate) fn pkid_on(&self, epoch: u64) -> Option<u16> {
        (self.epoch == epoch && self.qos != QoS::AtMostOnce).then_some(self.pkid)
    }
}

impl AckSequencer {
    /// A released PUBACK was taken by the connection (written or skipped).
    pub(crate) fn taken(&self) {
        self.in_transit.fetch_sub(1, Ordering::SeqCst);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A publish on `topic` whose PUBACK completes `done`.
    fn outbound_to(topic: &str, done: Done) -> Outbound {
        Outbound {
            topic: topic.into(),
            payload: Bytes::from(topic.to_owned()),
            done,
            _permit: None,
        }
    }

    fn outbound(topic: &str) -> (Outbound, oneshot::Receiver<()>) {
        let (done, rx) = oneshot::channel();
        (outbound_to(topic, Done::Waiter(done)), rx)
    }

    #[test]
    fn each_send_is_told_when_its_own_packet_id_is_acknowledged() {
        let mut t = SendTracker::default();
        let (a, mut a_rx) = outbound("a");
        let (b, mut b_rx) = outbound("b");
        let pa = t.add(a, None).0;
        let pb = t.add(b, None).0;
        assert_ne!(pa, pb);
        t.acked(pb);
        assert!(b_rx.try_recv().is_ok());
        assert!(a_rx.try_recv().is_err());
        t.acked(pb); // a duplicate PUBACK changes nothing
        assert_eq!(t.len(), 1);
        t.acked(pa);
        assert!(a_rx.try_recv().is_ok());
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn unacknowledged_sends_are_listed_in_first_order_and_ids_are_not_reused() {
        let mut t = SendTracker::default();
        let mut ids = Vec::new();
        for name in ["first", "second", "third"] {
            ids.push(t.add(outbound(name).0, None).0);
        }
        t.acked(ids[1]);
        let left: Vec<(u16, String)> = t
            .unacked()
            .into_iter()
            .map(|(p, o)| (p, o.topic.clone()))
            .collect();
        assert_eq!(
            left,
            vec![(ids[0], "first".to_owned()), (ids[2], "third".to_owned())]
        );
        // Around the wrap of the 16-bit id space, ids in use and the reserved one are skipped.
        t.next_pkid = u16::MAX - 1;
        let reserved = Some(1);
        let a = t.add(outbound("a").0, reserved).0;
        let b = t.add(outbound("b").0, reserved).0;
        assert_eq!((a, b), (u16::MAX, 2));
        let c = t.add(outbound("c").0, reserved).0;
        assert!(!ids.contains(&c) && c != 1 && c != a && c != b, "{c}");
    }

    /// A forwarded input's outputs in the tracker, under their packet ids.
    fn forwarded(
        t: &mut SendTracker,
        s: &Arc<AckSequencer>,
        pkid: u16,
        outputs: usize,
    ) -> Vec<u16> {
        let input = Forwarded::new(s.token(1, pkid, QoS::AtLeastOnce));
        (0..outputs)
            .map(|i| {
                let o = outbound_to(&format!("out{i}"), Done::Output(OutputOf::new(&input)));
                t.add(o, None).0
            })
            .collect()
    }

    #[test]
    fn a_forwarded_input_is_acknowledged_when_the_last_of_its_outputs_is_accepted() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let s = Arc::new(AckSequencer::new(tx));
        let mut t = SendTracker::default();
        let outs = forwarded(&mut t, &s, 7, 3);
        t.acked(outs[2]);
        t.acked(outs[0]);
        assert!(rx.try_recv().is_err(), "one output is not accepted yet");
        t.acked(outs[1]);
        assert_eq!(rx.try_recv().unwrap().pkid, 7);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn a_forwarded_input_whose_output_was_not_accepted_is_left_for_redelivery() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let s = Arc::new(AckSequencer::new(tx));
        let mut t = SendTracker::default();
        let outs = forwarded(&mut t, &s, 7, 2);
        let next = forwarded(&mut t, &s, 8, 1);
        t.acked(outs[0]);
        // The client closes: what edgeHub has not accepted is dropped.
        t = SendTracker::default();
        assert!(rx.try_recv().is_err(), "input 7 must not be acknowledged");
        assert_eq!(s.pending(), 0, "both inputs are finished (abandoned)");
        drop((outs, next, t));
        // The abandoned inputs do not hold back later ones.
        s.token(1, 9, QoS::AtLeastOnce).ack();
        assert_eq!(rx.try_recv().unwrap().pkid, 9);
    }

    #[test]
    fn a_callback_is_told_once_whether_its_publish_was_accepted() {
        let told = Arc::new(Mutex::new(Vec::new()));
        let mut t = SendTracker::default();
        let mut send = |topic: &str| {
            let told = told.clone();
            let name = topic.to_owned();
            let then = Then::new(move |accepted| lock(&told).push((name, accepted)));
            t.add(outbound_to(topic, Done::Then(then)), None).0
        };
        let a = send("a");
        send("b");
        t.acked(a);
        t.acked(a);
        assert_eq!(*lock(&told), vec![("a".to_owned(), true)]);
        // The client closes: "b" was not accepted.
        drop(t);
        assert_eq!(
            *lock(&told),
            vec![("a".to_owned(), true), ("b".to_owned(), false)]
        );
    }

    #[test]
    fn acks_finished_in_reverse_are_released_in_arrival_order() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let s = Arc::new(AckSequencer::new(tx));
        let tokens: Vec<AckToken> = (1..=50).map(|p| s.token(1, p, QoS::AtLeastOnce)).collect();
        for t in tokens.into_iter().rev() {
            t.ack();
        }
        let released: Vec<u16> =
            std::iter::from_fn(|| rx.try_recv().ok().map(|r| r.pkid)).collect();
        assert_eq!(released, (1..=50).collect::<Vec<u16>>());
        // Later messages start a fresh run.
        s.token(1, 51, QoS::AtLeastOnce).ack();
        assert_eq!(rx.try_recv().unwrap().pkid, 51);
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
        s.taken();
        s.taken();
        assert_eq!(s.pending(), 0);
    }
}
