//! Store-and-forward for one module: messages routed to any of its inputs wait here, in
//! order, until the module is connected and subscribed; at most `window` are in flight
//! (unacknowledged) at once; messages older than the time-to-live are dropped and counted.
//! Every message is also in the [`Journal`], which learns when it is delivered or dropped,
//! so a restarted runtime starts with the same queue.
//!
//! Only the head of the queue is kept in memory, up to a budget in bytes. Once it is full,
//! new messages are only in the journal ("spilled") until the head has drained; then they
//! are read back from it in order, a budget's worth at a time. So a module that is stopped
//! for hours costs edgeHub disk, not memory; a restarted runtime starts the same way, with
//! its whole backlog on disk.

use crate::edgehub::durable::{Appended, Stored};
use crate::edgehub::hub_message::HubMessage;
use crate::edgehub::journal::{Journal, JournalReader, Next, Pending, Restored};
use crate::edgehub::metrics::HubMetrics;
use bytes::BytesMut;
use edge_process::prometheus_client::metrics::histogram::Histogram;
use edge_protocol::mqtt;
use edge_protocol::{properties, topic};
use rumqttc::{Packet, QoS};
use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, Notify};

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A message for a module input, made into its PUBLISH by the connection's writer (so the
/// topic with its property bag is built there, not by whoever released the message).
#[derive(Debug, Clone)]
pub struct Delivery {
    device: Arc<str>,
    module: Arc<str>,
    queued: Pending,
    pkid: u16,
    qos: QoS,
}

impl Delivery {
    /// The pieces of the delivery's topic, `devices/{d}/modules/{m}/inputs/{input}/{bag}`.
    fn topic(&self) -> [&str; 8] {
        topic::module_input_parts(
            &self.device,
            &self.module,
            &self.queued.input,
            self.queued.bag(),
        )
    }

    /// The size of the delivery's PUBLISH packet, as [`Delivery::encode`] writes it, if it
    /// fits in `max_packet` bytes; else why not.
    pub fn check_size(&self, max_packet: usize) -> Result<usize, String> {
        let topic_len = self.topic().iter().map(|p| p.len()).sum();
        mqtt::check_publish(
            topic_len,
            self.qos,
            self.queued.message.body().len(),
            max_packet,
        )
    }

    /// Appends the delivery's PUBLISH packet to `out`, its topic written in place. A packet
    /// over `max_packet` bytes is not written.
    pub fn encode(&self, out: &mut BytesMut, max_packet: usize) -> Result<(), String> {
        let topic = self.topic();
        mqtt::write_publish(
            out,
            &topic,
            self.qos,
            self.pkid,
            false,
            self.queued.message.body(),
            max_packet,
        )
    }
}

/// Whether `message` can be delivered to `module`'s `input` at all: its PUBLISH, with the
/// delivery topic and the bag edgeHub stamped, must fit in what a module client reads.
/// Asked before the sender is acknowledged (without the queue's lock: it needs only names),
/// so that nothing acknowledged is dropped later for its size.
pub fn check_delivery(
    device: &str,
    module: &str,
    input: &str,
    message: &HubMessage,
) -> Result<(), String> {
    let topic: usize = topic::module_input_parts(device, module, input, message.bag())
        .iter()
        .map(|p| p.len())
        .sum();
    mqtt::check_publish(
        topic,
        QoS::AtLeastOnce,
        message.body().len(),
        mqtt::MAX_DELIVERY,
    )
    .map(|_| ())
    .map_err(|why| format!("its delivery to {module}/{input}: {why}"))
}

/// What a connection's writer sends.
#[derive(Debug)]
pub enum Outgoing {
    /// A packet as it is.
    Packet(Packet),
    /// A message for a module input.
    Delivery(Delivery),
    /// The PUBACK for the client's message `pkid`, to send once every sink has stored it
    /// (the receivers resolve then). PUBACKs leave in the order they were queued.
    PubAckWhenStored(u16, Stored),
    /// A reply or request for the client (a twin response, a method call, a desired
    /// patch), counted in the connection's backlog by its size until written.
    Reply(Packet, usize),
}

impl From<Packet> for Outgoing {
    fn from(p: Packet) -> Self {
        Outgoing::Packet(p)
    }
}

/// The sending side of one client connection.
#[derive(Clone, Debug)]
pub struct Conn {
    /// Unique id of the connection.
    pub id: u64,
    /// Packets to write to the client.
    pub tx: mpsc::UnboundedSender<Outgoing>,
    /// Notified to close the connection (session takeover).
    pub close: Arc<Notify>,
    /// Bytes of [`Outgoing::Reply`] packets queued and not yet written.
    pub backlog: Arc<std::sync::atomic::AtomicUsize>,
}

/// Bytes of replies a client may leave unread (queued for it, not yet written to its
/// socket) before edgeHub closes its connection: a client that sends requests and never
/// reads the answers holds this much of edgeHub's memory at most.
pub const MAX_CLIENT_BACKLOG: usize = 8 * 1024 * 1024;

/// What a PUBACK waiting to be sent is counted as in a connection's backlog (its place in
/// the queue and its store receipts).
pub const PUBACK_SIZE: usize = 128;

/// What a reply is counted as in a connection's backlog.
pub fn reply_size(p: &Packet) -> usize {
    match p {
        Packet::Publish(p) => p.topic.len() + p.payload.len() + 128,
        Packet::SubAck(s) => s.return_codes.len() + 128,
        _ => 128,
    }
}

impl Conn {
    /// A connection's sending side over `tx`.
    pub fn new(id: u64, tx: mpsc::UnboundedSender<Outgoing>, close: Arc<Notify>) -> Conn {
        Conn {
            id,
            tx,
            close,
            backlog: Arc::default(),
        }
    }

    /// Queues a reply or request for the client. If the client has left more than
    /// [`MAX_CLIENT_BACKLOG`] unread, the packet is not queued and the connection is closed;
    /// returns false then.
    pub fn send_reply(&self, p: Packet) -> bool {
        let size = reply_size(&p);
        self.send_counted(Outgoing::Reply(p, size), size)
    }

    /// Queues the PUBACK of message `pkid`, sent once `stored` resolves; counted in the
    /// backlog as [`Conn::send_reply`] counts replies.
    pub fn send_puback(&self, pkid: u16, stored: Stored) -> bool {
        self.send_counted(Outgoing::PubAckWhenStored(pkid, stored), PUBACK_SIZE)
    }

    fn send_counted(&self, out: Outgoing, size: usize) -> bool {
        use std::sync::atomic::Ordering;
        let queued = self.backlog.fetch_add(size, Ordering::Relaxed) + size;
        if queued > MAX_CLIENT_BACKLOG {
            self.backlog.fetch_sub(size, Ordering::Relaxed);
            tracing::warn!(
                conn = self.id,
                backlog_bytes = queued - size,
                "the client does not read what edgeHub sends it; closing its connection"
            );
            self.close.notify_one();
            return false;
        }
        if self.tx.send(out).is_err() {
            self.backlog.fetch_sub(size, Ordering::Relaxed);
            return false;
        }
        true
    }
}

type Queued = Pending;

/// Memory a module queue's head may take by default, in bytes.
pub const QUEUE_MEMORY: usize = 8 * 1024 * 1024;

/// What a queued message is counted as against the memory budget: its bag and body, and
/// about what holding them costs besides.
fn held_bytes(q: &Queued) -> usize {
    q.bag().len() + q.message.body().len() + 192
}

/// The part of a queue that is only in the journal, behind the head.
#[derive(Debug)]
struct Spill {
    reader: JournalReader,
    /// How many messages it holds.
    left: u64,
    /// The number of the last one.
    last_seq: u64,
}

/// Counters of an endpoint, as the control API's `status` shows them.
pub type EndpointStats = runtime_state::control::QueueStats;

/// One module's queue.
#[derive(Debug)]
pub struct Endpoint {
    device: Arc<str>,
    module: Arc<str>,
    journal: Journal,
    inputs: Vec<Arc<str>>,
    /// The head of the queue, in memory.
    queue: VecDeque<Queued>,
    /// What the head holds, counted by [`held_bytes`].
    queue_bytes: usize,
    /// The budget for `queue_bytes`.
    memory: usize,
    /// The rest of the queue, if any.
    spill: Option<Spill>,
    /// Delivered and not yet acknowledged, by packet id.
    in_flight: FxHashMap<u16, Queued>,
    conn: Option<(Conn, QoS)>,
    next_pkid: u16,
    window: usize,
    ttl: Duration,
    delivered: u64,
    expired: u64,
    undeliverable: u64,
    metrics: Option<EndpointMetrics>,
}

/// What an endpoint counts into edgeHub's metrics.
#[derive(Debug, Clone)]
pub struct EndpointMetrics {
    /// The hub's metrics (drops).
    pub hub: Arc<HubMetrics>,
    /// This module's time from acceptance to acknowledgement.
    pub process: Histogram,
}

impl Endpoint {
    /// An empty endpoint for `device/module`, storing its messages in `journal`.
    pub fn new(device: &str, module: &str, window: usize, ttl: Duration, journal: Journal) -> Self {
        Endpoint {
            device: Arc::from(device),
            module: Arc::from(module),
            journal,
            inputs: Vec::new(),
            queue: VecDeque::new(),
            queue_bytes: 0,
            memory: QUEUE_MEMORY,
            spill: None,
            in_flight: FxHashMap::default(),
            conn: None,
            next_pkid: 0,
            window: window.max(1),
            ttl,
            delivered: 0,
            expired: 0,
            undeliverable: 0,
            metrics: None,
        }
    }

    /// Sets how many bytes of queued messages the endpoint keeps in memory.
    pub fn set_memory(&mut self, bytes: usize) {
        self.memory = bytes;
    }

    /// Queues a message for `input` and sends what the window allows. The receiver resolves
    /// once the message is in the journal on disk.
    pub fn enqueue(&mut self, input: &str, message: Arc<HubMessage>) -> Appended {
        let input = self.input_name(input);
        let size = input.len() + message.bag().len() + message.body().len() + 192;
        if self.spill.is_none() && self.queue_bytes + size <= self.memory {
            let (queued, stored) = self.journal.enqueue(&self.module, input, message, now_ms());
            self.queue_bytes += held_bytes(&queued);
            self.queue.push_back(queued);
            self.pump();
            return stored;
        }
        // The head is full (or messages already wait on disk behind it): this one waits in
        // the journal only. A reader started before it was handed over finds it.
        let from = self.journal.position();
        let (queued, stored) = self.journal.enqueue(&self.module, input, message, now_ms());
        match &mut self.spill {
            Some(spill) => {
                spill.left += 1;
                spill.last_seq = queued.seq;
            }
            None => {
                tracing::info!(module = %self.module, memory_bytes = self.memory,
                    "store-and-forward: the queue's memory is full; later messages wait on disk");
                self.spill = Some(Spill {
                    reader: self.journal.reader(&self.module, from, queued.seq),
                    left: 1,
                    last_seq: queued.seq,
                });
            }
        }
        self.pump();
        stored
    }

    /// Takes the messages the journal held for this module at start, ahead of new ones.
    /// They stay on disk until the queue's head has room for them.
    pub fn restore(&mut self, restored: Restored) {
        if restored.count == 0 {
            return;
        }
        if self.spill.is_some() || !self.queue.is_empty() {
            tracing::error!(module = %self.module, "restored messages given to a queue already in use; ignored");
            return;
        }
        self.spill = Some(Spill {
            reader: restored.reader,
            left: restored.count,
            last_seq: restored.last_seq,
        });
        self.pump();
    }

    /// Moves messages from the journal into the head while it has room.
    fn refill(&mut self) {
        let Some(spill) = &mut self.spill else {
            return;
        };
        // At least one message, whatever the budget.
        while self.queue.is_empty() || self.queue_bytes < self.memory {
            match spill.reader.read_next() {
                Ok(Next::Message(q)) => {
                    self.queue_bytes += held_bytes(&q);
                    self.queue.push_back(q);
                    spill.left = spill.left.saturating_sub(1);
                    if spill.left == 0 {
                        self.spill = None;
                        tracing::info!(module = %self.module,
                            "store-and-forward: the queue is back in memory");
                        return;
                    }
                }
                Ok(Next::End { through_seq }) => {
                    if through_seq < spill.last_seq {
                        // The rest is on its way to disk: look again once it is written.
                        self.journal.wake_when_written(through_seq);
                    } else {
                        // Everything was written that will be: what is missing could not be
                        // stored, and its senders were told so.
                        tracing::warn!(module = %self.module, missing = spill.left,
                            "store-and-forward: messages that could not be stored are not in the queue");
                        self.spill = None;
                    }
                    return;
                }
                Err(e) => {
                    tracing::error!(module = %self.module, error = %e,
                        "store-and-forward: reading queued messages back from the message store failed; trying again");
                    return;
                }
            }
        }
    }

    /// Takes the message at the head of the queue.
    fn pop(&mut self) -> Option<Queued> {
        if self.queue.is_empty() || self.queue_bytes < self.memory / 2 {
            self.refill();
        }
        let q = self.queue.pop_front()?;
        self.queue_bytes = self.queue_bytes.saturating_sub(held_bytes(&q));
        Some(q)
    }

    /// Puts a message back at the head of the queue.
    fn push_front(&mut self, q: Queued) {
        self.queue_bytes += held_bytes(&q);
        self.queue.push_front(q);
    }

    /// The oldest queued message, read back from the journal if the head is empty.
    fn front(&mut self) -> Option<&Queued> {
        if self.queue.is_empty() {
            self.refill();
        }
        self.queue.front()
    }

    /// The shared name of `input` (a module has a few inputs and each queued message names
    /// one, so each name is allocated once).
    fn input_name(&mut self, input: &str) -> Arc<str> {
        if let Some(known) = self.inputs.iter().find(|i| ***i == *input) {
            return known.clone();
        }
        let new: Arc<str> = Arc::from(input);
        self.inputs.push(new.clone());
        new
    }

    /// The next free packet id after `last`. Packet ids keep increasing across
    /// connections, so a late PUBACK from an earlier connection cannot acknowledge a
    /// different message.
    fn next_pkid(last: &mut u16, in_flight: &FxHashMap<u16, Queued>) -> u16 {
        loop {
            *last = last.wrapping_add(1).max(1);
            if !in_flight.contains_key(last) {
                return *last;
            }
        }
    }

    /// Counts into `metrics` from now on.
    pub fn set_metrics(&mut self, metrics: EndpointMetrics) {
        self.metrics = Some(metrics);
    }

    /// Observes the time `q` took from acceptance to acknowledgement.
    fn observe_done(&self, q: &Queued) {
        if let Some(m) = &self.metrics {
            let ms = now_ms().saturating_sub(q.at_ms);
            m.process.observe(ms as f64 / 1000.0);
        }
    }

    /// Runs the endpoint's timer: drops expired messages, and sends what is due (such as
    /// messages that were not yet written to the journal when the head last looked for
    /// them there).
    pub fn tick(&mut self) {
        if self.conn.is_some() {
            self.pump();
        } else {
            self.expire();
        }
    }

    /// Drops expired messages from the head of the queue; returns how many.
    pub fn expire(&mut self) -> u64 {
        let mut n = 0;
        let ttl = self.ttl.as_millis() as u64;
        let now = now_ms();
        while self
            .front()
            .is_some_and(|q| now.saturating_sub(q.at_ms) > ttl)
        {
            if let Some(q) = self.pop() {
                self.journal.done(q.seq);
                if let Some(m) = &self.metrics {
                    m.hub.dropped("ttl_expiry", q.message.message());
                }
            }
            n += 1;
        }
        if n > 0 {
            self.expired += n;
            tracing::warn!(module = %self.module, dropped = n, ttl_secs = self.ttl.as_secs(),
                "store-and-forward: messages older than the time-to-live dropped");
        }
        n
    }

    fn pump(&mut self) {
        if self.conn.is_none() {
            return;
        }
        self.expire();
        while self.in_flight.len() < self.window {
            let Some(qos) = self.conn.as_ref().map(|(_, qos)| *qos) else {
                break;
            };
            let Some(q) = self.pop() else {
                break;
            };
            let pkid = if qos == QoS::AtMostOnce {
                0
            } else {
                Self::next_pkid(&mut self.next_pkid, &self.in_flight)
            };
            let delivery = Delivery {
                device: self.device.clone(),
                module: self.module.clone(),
                queued: q.clone(),
                pkid,
                qos,
            };
            // A message edgeHub took in a packet of up to MAX_PACKET fits in what a module
            // client reads, unless its property bag is near MQTT's 64 KiB topic limit,
            // edgeHub's re-encoding of a bag it did not get in plain form made it longer by
            // more than the headroom, or the input's name is very long.
            if let Err(why) = delivery.check_size(mqtt::MAX_DELIVERY) {
                // It could never be written: waiting, it would hold a place in the window
                // for good (and its journal segment on disk).
                self.undeliverable += 1;
                self.journal.done(q.seq);
                if let Some(m) = &self.metrics {
                    m.hub.dropped("too_large", q.message.message());
                }
                tracing::error!(
                    module = %self.module,
                    input = %q.input,
                    correlation_id = properties::decode(q.bag()).correlation_id.as_deref().unwrap_or(""),
                    "message dropped for this module (its delivery: {why}). Its sender was acknowledged \
                     and it is not sent again; send a smaller body or fewer, shorter properties"
                );
                continue;
            }
            let sent = self
                .conn
                .as_ref()
                .is_some_and(|(conn, _)| conn.tx.send(Outgoing::Delivery(delivery)).is_ok());
            if !sent {
                self.push_front(q);
                self.conn = None;
                break;
            }
            if qos == QoS::AtMostOnce {
                self.delivered += 1;
                self.journal.done(q.seq);
                self.observe_done(&q);
            } else {
                self.in_flight.insert(pkid, q);
            }
        }
    }

    /// The module acknowledged `pkids` on connection `conn_id` (the PUBACKs one read
    /// brought: the window is refilled once for all of them).
    pub fn acked(&mut self, conn_id: u64, pkids: &[u16]) {
        if self.conn.as_ref().is_none_or(|(c, _)| c.id != conn_id) {
            return;
        }
        let before = self.delivered;
        for pkid in pkids {
            if let Some(q) = self.in_flight.remove(pkid) {
                self.journal.done(q.seq);
                self.delivered += 1;
                self.observe_done(&q);
            }
        }
        if self.delivered != before {
            self.pump();
        }
    }

    /// The module subscribed to its inputs on `conn`.
    pub fn attach(&mut self, conn: Conn, qos: QoS) {
        // A repeated SUBSCRIBE on the same connection keeps what is in flight; a new
        // connection gets it again.
        if self.conn.as_ref().is_none_or(|(c, _)| c.id != conn.id) {
            self.requeue_in_flight();
        }
        self.conn = Some((conn, qos));
        self.pump();
    }

    /// Connection `conn_id` is gone: what it had in flight is sent again on the next one.
    pub fn detach(&mut self, conn_id: u64) {
        if self.conn.as_ref().is_some_and(|(c, _)| c.id == conn_id) {
            self.conn = None;
            self.requeue_in_flight();
        }
    }

    fn requeue_in_flight(&mut self) {
        let in_flight = std::mem::take(&mut self.in_flight);
        let mut items: Vec<Queued> = in_flight.into_values().collect();
        items.sort_by_key(|q| q.seq);
        for q in items.into_iter().rev() {
            self.push_front(q);
        }
    }

    /// Current counters.
    pub fn stats(&self) -> EndpointStats {
        EndpointStats {
            queued: self.queue.len() as u64 + self.spill.as_ref().map_or(0, |s| s.left),
            on_disk: self.spill.as_ref().map_or(0, |s| s.left),
            in_flight: self.in_flight.len() as u64,
            delivered: self.delivered,
            expired: self.expired,
            undeliverable: self.undeliverable,
            connected: self.conn.is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edgehub::journal::SEGMENT_BYTES;
    use bytes::Bytes;
    use rumqttc::Publish;

    fn endpoint(window: usize, ttl: Duration) -> (Endpoint, Journal, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(dir.path(), SEGMENT_BYTES).unwrap();
        let e = Endpoint::new("edge", "m", window, ttl, journal.clone());
        (e, journal, dir)
    }

    fn conn(id: u64) -> (Conn, mpsc::UnboundedReceiver<Outgoing>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Conn::new(id, tx, Arc::new(Notify::new())), rx)
    }

    fn msg(n: u32) -> Arc<HubMessage> {
        Arc::new(edge_protocol::Message::json(format!("{{\"n\":{n}}}")).into())
    }

    /// The deliveries queued for a connection, as its writer encodes them, read back with
    /// rumqttc's codec.
    fn drain(rx: &mut mpsc::UnboundedReceiver<Outgoing>) -> Vec<Publish> {
        let mut v = Vec::new();
        while let Ok(Outgoing::Delivery(d)) = rx.try_recv() {
            let mut wire = BytesMut::new();
            d.encode(&mut wire, 1 << 20).unwrap();
            match Packet::read(&mut wire, 1 << 20) {
                Ok(Packet::Publish(p)) => v.push(p),
                other => panic!("not a PUBLISH: {other:?}"),
            }
            assert!(wire.is_empty(), "one packet, nothing after it");
        }
        v
    }

    #[test]
    fn a_delivery_encodes_as_rumqttc_encodes_its_publish() {
        // The framing's cases (lengths, packet ids, the limit) are edge_protocol::mqtt's
        // tests; here, the delivery's topic, packet id and payload.
        let mut m = edge_protocol::Message::new("x".repeat(300));
        m.correlation_id = Some("c/1 &".into());
        let queued = Pending {
            seq: 1,
            input: Arc::from("in"),
            message: Arc::new(m.into()),
            at_ms: 0,
        };
        for (qos, pkid) in [(QoS::AtLeastOnce, 258), (QoS::AtMostOnce, 0)] {
            let d = Delivery {
                device: Arc::from("edge"),
                module: Arc::from("m"),
                queued: queued.clone(),
                pkid,
                qos,
            };
            let mut publish = Publish::new(
                topic::module_input_with_bag("edge", "m", "in", queued.bag()),
                qos,
                queued.message.body().clone(),
            );
            publish.pkid = pkid;
            let mut expected = BytesMut::new();
            Packet::Publish(publish)
                .write(&mut expected, 1 << 20)
                .unwrap();
            let mut wire = BytesMut::new();
            d.encode(&mut wire, 1 << 20).unwrap();
            assert_eq!(wire, expected, "{qos:?}");
        }
    }

    #[test]
    fn keeps_messages_until_the_module_connects_then_delivers_in_order_within_the_window() {
        let (mut e, _j, _dir) = endpoint(2, Duration::from_secs(60));
        for n in 0..3 {
            e.enqueue("in", msg(n));
        }
        assert_eq!(e.stats().queued, 3);
        let (c, mut rx) = conn(1);
        e.attach(c, QoS::AtLeastOnce);
        let sent = drain(&mut rx);
        assert_eq!(sent.len(), 2, "window of 2");
        assert_eq!(sent[0].payload, Bytes::from("{\"n\":0}"));
        assert!(sent[0]
            .topic
            .starts_with("devices/edge/modules/m/inputs/in/"));
        e.acked(1, &[sent[0].pkid]);
        let more = drain(&mut rx);
        assert_eq!(more.len(), 1);
        assert_eq!(more[0].payload, Bytes::from("{\"n\":2}"));
        assert_eq!(e.stats().delivered, 1);
    }

    #[test]
    fn acknowledgements_taken_together_refill_the_window_for_all_of_them() {
        let (mut e, _j, _dir) = endpoint(3, Duration::from_secs(60));
        let (c, mut rx) = conn(1);
        e.attach(c, QoS::AtLeastOnce);
        for n in 0..8 {
            e.enqueue("in", msg(n));
        }
        let first = drain(&mut rx);
        assert_eq!(first.len(), 3, "window of 3");
        // Two of the three, one of them twice, and an id that is not in flight.
        e.acked(1, &[first[2].pkid, 999, first[0].pkid, first[2].pkid]);
        assert_eq!(e.stats().delivered, 2);
        let next: Vec<Bytes> = drain(&mut rx).into_iter().map(|p| p.payload).collect();
        assert_eq!(
            next,
            vec![Bytes::from("{\"n\":3}"), Bytes::from("{\"n\":4}")]
        );
        assert_eq!(e.stats().in_flight, 3);
        // Nothing acknowledged: nothing more is sent.
        e.acked(1, &[999]);
        assert!(drain(&mut rx).is_empty());
        assert_eq!(e.stats().queued, 3);
    }

    #[test]
    fn unacknowledged_messages_are_redelivered_first_on_the_next_connection() {
        let (mut e, _j, _dir) = endpoint(10, Duration::from_secs(60));
        let (c1, mut rx1) = conn(1);
        e.attach(c1, QoS::AtLeastOnce);
        for n in 0..3 {
            e.enqueue("in", msg(n));
        }
        let first = drain(&mut rx1);
        e.acked(1, &[first[1].pkid]); // only the middle one is acknowledged
        e.detach(1);
        e.enqueue("in", msg(3));
        let (c2, mut rx2) = conn(2);
        e.attach(c2, QoS::AtLeastOnce);
        let bodies: Vec<Bytes> = drain(&mut rx2).into_iter().map(|p| p.payload).collect();
        assert_eq!(
            bodies,
            vec![
                Bytes::from("{\"n\":0}"),
                Bytes::from("{\"n\":2}"),
                Bytes::from("{\"n\":3}")
            ]
        );
        // A late ack from connection 1 changes nothing.
        e.acked(1, &[first[0].pkid]);
        assert_eq!(e.stats().in_flight, 3);
        // Subscribing again on the same connection does not send anything twice.
        let (same_id, _rx) = conn(2);
        e.attach(same_id, QoS::AtLeastOnce);
        assert!(drain(&mut rx2).is_empty());
        assert_eq!(e.stats().in_flight, 3);
    }

    #[test]
    fn a_delivery_s_packet_size_is_what_it_encodes() {
        let mut m = edge_protocol::Message::new("x".repeat(20_000));
        m.correlation_id = Some("c/1 &".into());
        m.properties = vec![("ü".into(), "a b".into())];
        let queued = Pending {
            seq: 1,
            input: Arc::from("input"),
            message: Arc::new(m.into()),
            at_ms: 0,
        };
        for qos in [QoS::AtLeastOnce, QoS::AtMostOnce] {
            let d = Delivery {
                device: Arc::from("edge-device"),
                module: Arc::from("module"),
                queued: queued.clone(),
                pkid: 7,
                qos,
            };
            let mut out = BytesMut::new();
            d.encode(&mut out, mqtt::MAX_DELIVERY).unwrap();
            assert_eq!(d.check_size(mqtt::MAX_DELIVERY), Ok(out.len()), "{qos:?}");
        }
    }

    #[test]
    fn a_message_whose_delivery_could_never_be_written_is_dropped_not_left_in_the_window() {
        let (mut e, j, dir) = endpoint(2, Duration::from_secs(60));
        // Over MAX_DELIVERY by its body; over MQTT's topic limit by its bag.
        let large: Arc<HubMessage> =
            Arc::new(edge_protocol::Message::new(vec![b' '; mqtt::MAX_DELIVERY]).into());
        let mut long_bag = edge_protocol::Message::json("{}");
        long_bag.properties = vec![("k".into(), "v".repeat(65_535).into())];
        e.enqueue("in", msg(0));
        e.enqueue("in", large);
        e.enqueue("in", Arc::new(long_bag.into()));
        e.enqueue("in", msg(1));
        let (c, mut rx) = conn(1);
        e.attach(c, QoS::AtLeastOnce);
        let sent = drain(&mut rx);
        let bodies: Vec<&[u8]> = sent.iter().map(|p| &p.payload[..]).collect();
        assert_eq!(bodies, [&b"{\"n\":0}"[..], b"{\"n\":1}"]);
        let stats = e.stats();
        assert_eq!(
            (stats.undeliverable, stats.in_flight, stats.queued),
            (2, 2, 0)
        );
        // Nor are they restored after a restart.
        j.flush().blocking_recv().unwrap().unwrap();
        drop(j);
        let (_, replayed) = Journal::open(dir.path(), SEGMENT_BYTES).unwrap();
        assert_eq!(replayed["m"].count, 2, "the two in flight");

        // Restored ones are checked too.
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path(), SEGMENT_BYTES).unwrap();
        let module: Arc<str> = Arc::from("m");
        let oversize = Arc::new(edge_protocol::Message::new(vec![b' '; mqtt::MAX_DELIVERY]).into());
        j.enqueue(&module, Arc::from("in"), oversize, now_ms());
        j.enqueue(&module, Arc::from("in"), msg(5), now_ms());
        j.flush().blocking_recv().unwrap().unwrap();
        drop(j);
        let (j2, mut replayed) = Journal::open(dir.path(), SEGMENT_BYTES).unwrap();
        let mut e = Endpoint::new("edge", "m", 10, Duration::from_secs(60), j2);
        e.restore(replayed.remove("m").unwrap());
        let (c, mut rx) = conn(2);
        e.attach(c, QoS::AtLeastOnce);
        assert_eq!(drain(&mut rx).len(), 1);
        assert_eq!(e.stats().undeliverable, 1);
    }

    #[test]
    fn messages_older_than_the_ttl_are_dropped_and_counted() {
        let (mut e, j, dir) = endpoint(10, Duration::from_millis(20));
        e.enqueue("in", msg(0));
        std::thread::sleep(Duration::from_millis(40));
        e.enqueue("in", msg(1));
        let (c, mut rx) = conn(1);
        e.attach(c, QoS::AtLeastOnce);
        let sent = drain(&mut rx);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].payload, Bytes::from("{\"n\":1}"));
        assert_eq!(e.stats().expired, 1);
        // The dropped message is not restored after a restart; the one in flight is.
        j.flush().blocking_recv().unwrap().unwrap();
        drop((e, j));
        let (_, mut replayed) = Journal::open(dir.path(), SEGMENT_BYTES).unwrap();
        let left: Vec<Bytes> = replayed
            .remove("m")
            .unwrap()
            .read_all()
            .iter()
            .map(|p| p.message.body().clone())
            .collect();
        assert_eq!(left, vec![Bytes::from("{\"n\":1}")]);
    }

    #[test]
    fn after_a_restart_unacknowledged_messages_are_delivered_and_acknowledged_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path(), SEGMENT_BYTES).unwrap();
        let mut e = Endpoint::new("edge", "m", 10, Duration::from_secs(60), j.clone());
        let (c, mut rx) = conn(1);
        e.attach(c, QoS::AtLeastOnce);
        let stored: Vec<Appended> = (0..4).map(|n| e.enqueue("in", msg(n))).collect();
        for s in stored {
            s.blocking_recv().unwrap().unwrap();
        }
        let sent = drain(&mut rx);
        e.acked(1, &[sent[0].pkid, sent[2].pkid]);
        j.flush().blocking_recv().unwrap().unwrap();
        drop((e, j));

        let (j, mut replayed) = Journal::open(dir.path(), SEGMENT_BYTES).unwrap();
        let mut e = Endpoint::new("edge", "m", 10, Duration::from_secs(60), j.clone());
        e.restore(replayed.remove("m").unwrap());
        e.enqueue("in", msg(4));
        j.flush().blocking_recv().unwrap().unwrap();
        let (c, mut rx) = conn(7);
        e.attach(c, QoS::AtLeastOnce);
        let again: Vec<Publish> = drain(&mut rx);
        let bodies: Vec<Bytes> = again.iter().map(|p| p.payload.clone()).collect();
        assert_eq!(
            bodies,
            vec![
                Bytes::from("{\"n\":1}"),
                Bytes::from("{\"n\":3}"),
                Bytes::from("{\"n\":4}")
            ]
        );
        // The restored message keeps its properties (here the content type), so the topic
        // carries them.
        assert!(
            again[0].topic.contains("$.ct=application%2Fjson"),
            "{}",
            again[0].topic
        );
    }

    /// Receives everything the endpoint sends on `rx`, acknowledging as it goes, until
    /// nothing more comes; returns the bodies' numbers.
    fn receive_all(
        e: &mut Endpoint,
        conn_id: u64,
        rx: &mut mpsc::UnboundedReceiver<Outgoing>,
    ) -> Vec<u64> {
        let mut got = Vec::new();
        loop {
            let sent = drain(rx);
            if sent.is_empty() {
                return got;
            }
            for p in &sent {
                let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                got.push(v["n"].as_u64().unwrap());
            }
            let pkids: Vec<u16> = sent.iter().map(|p| p.pkid).collect();
            e.acked(conn_id, &pkids);
        }
    }

    #[test]
    fn a_long_queue_keeps_its_budget_in_memory_and_the_rest_on_disk_and_loses_no_order() {
        let (mut e, j, _dir) = endpoint(50, Duration::from_secs(600));
        e.set_memory(16 * 1024);
        for n in 0..3_000 {
            e.enqueue("in", msg(n));
            assert!(
                e.queue_bytes <= 16 * 1024,
                "the head stays within its budget"
            );
        }
        let stats = e.stats();
        assert_eq!(stats.queued, 3_000);
        assert!(stats.on_disk > 2_800, "{stats:?}");
        j.flush().blocking_recv().unwrap().unwrap();
        let (c, mut rx) = conn(1);
        e.attach(c, QoS::AtLeastOnce);
        // Half of it, then more arrive behind the backlog while it drains.
        let mut got = Vec::new();
        while got.len() < 1_500 {
            let sent = drain(&mut rx);
            assert!(!sent.is_empty());
            for p in &sent {
                let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                got.push(v["n"].as_u64().unwrap());
            }
            e.acked(1, &sent.iter().map(|p| p.pkid).collect::<Vec<_>>());
        }
        for n in 3_000..3_100 {
            e.enqueue("in", msg(n));
        }
        j.flush().blocking_recv().unwrap().unwrap();
        got.extend(receive_all(&mut e, 1, &mut rx));
        assert_eq!(got, (0..3_100).collect::<Vec<u64>>(), "each once, in order");
        let stats = e.stats();
        assert_eq!(
            (stats.queued, stats.on_disk, stats.delivered),
            (0, 0, 3_100)
        );
        // Back in memory: the next message is sent at once.
        e.enqueue("in", msg(7));
        assert_eq!(drain(&mut rx).len(), 1);
    }

    #[test]
    fn a_message_not_yet_written_when_the_head_drains_is_sent_at_the_next_tick() {
        let (mut e, j, _dir) = endpoint(10, Duration::from_secs(600));
        e.set_memory(1);
        let (c, mut rx) = conn(1);
        e.attach(c, QoS::AtLeastOnce);
        // Every message goes to disk; the first may not be written when the endpoint
        // looks for it.
        for n in 0..5 {
            e.enqueue("in", msg(n));
        }
        j.flush().blocking_recv().unwrap().unwrap();
        e.tick();
        assert_eq!(receive_all(&mut e, 1, &mut rx), vec![0, 1, 2, 3, 4]);
        assert_eq!(e.stats().on_disk, 0);
    }

    #[test]
    fn messages_on_disk_expire_too_while_the_module_is_away() {
        let (mut e, j, dir) = endpoint(10, Duration::from_millis(30));
        e.set_memory(4 * 1024);
        for n in 0..500 {
            e.enqueue("in", msg(n));
        }
        assert!(e.stats().on_disk > 400);
        j.flush().blocking_recv().unwrap().unwrap();
        std::thread::sleep(Duration::from_millis(60));
        e.tick();
        let stats = e.stats();
        assert_eq!((stats.expired, stats.queued, stats.on_disk), (500, 0, 0));
        j.flush().blocking_recv().unwrap().unwrap();
        drop((e, j));
        let (_, replayed) = Journal::open(dir.path(), SEGMENT_BYTES).unwrap();
        assert!(replayed.is_empty(), "nothing left to restore");
    }

    #[test]
    fn a_restarted_backlog_larger_than_the_budget_is_delivered_whole_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path(), 64 * 1024).unwrap();
        let mut e = Endpoint::new("edge", "m", 20, Duration::from_secs(600), j.clone());
        e.set_memory(8 * 1024);
        let (c, mut rx) = conn(1);
        e.attach(c, QoS::AtLeastOnce);
        for n in 0..2_000 {
            e.enqueue("in", msg(n));
        }
        // The first 20 are in flight; 10 of them are acknowledged before the crash.
        let first = drain(&mut rx);
        e.acked(1, &first[..10].iter().map(|p| p.pkid).collect::<Vec<_>>());
        j.flush().blocking_recv().unwrap().unwrap();
        drop((e, j));

        let (j, mut replayed) = Journal::open(dir.path(), 64 * 1024).unwrap();
        let mut e = Endpoint::new("edge", "m", 20, Duration::from_secs(600), j.clone());
        e.set_memory(8 * 1024);
        e.restore(replayed.remove("m").unwrap());
        assert_eq!(e.stats().queued, 1_990);
        assert!(e.queue_bytes <= 8 * 1024);
        e.enqueue("in", msg(2_000));
        j.flush().blocking_recv().unwrap().unwrap();
        let (c, mut rx) = conn(2);
        e.attach(c, QoS::AtLeastOnce);
        assert_eq!(
            receive_all(&mut e, 2, &mut rx),
            (10..=2_000).collect::<Vec<u64>>()
        );
    }

    #[test]
    fn a_queue_with_no_memory_still_delivers_one_message_at_a_time_from_disk() {
        let (mut e, j, _dir) = endpoint(10, Duration::from_secs(600));
        e.set_memory(0);
        for n in 0..20 {
            e.enqueue("in", msg(n));
        }
        j.flush().blocking_recv().unwrap().unwrap();
        let (c, mut rx) = conn(1);
        e.attach(c, QoS::AtLeastOnce);
        assert_eq!(
            receive_all(&mut e, 1, &mut rx),
            (0..20).collect::<Vec<u64>>()
        );
    }
}
