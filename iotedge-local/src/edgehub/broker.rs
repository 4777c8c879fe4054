//! edgeHub's MQTT 3.1.1 server over TLS: authenticates each client, enforces what it may
//! publish and subscribe to, and hands messages to the [`Hub`].
//!
//! A QoS 1 message is acknowledged (PUBACK) only once every sink has it on disk: the module
//! queues' journal and the `$upstream` store. PUBACKs leave in the order the messages
//! arrived.

use crate::edgehub::durable::Stored;
use crate::edgehub::endpoint::{Conn, Outgoing, PUBACK_SIZE};
use crate::edgehub::hub::{Hub, Identity};
use bytes::{Bytes, BytesMut};
pub use edge_protocol::mqtt::MAX_PACKET;
use edge_protocol::mqtt::{read_packet, Incoming, PacketReader, PublishIn, MAX_DELIVERY};
use edge_protocol::properties;
use edge_protocol::topic::{self, Topic};
use rumqttc::{
    ConnAck, ConnectReturnCode, Packet, PubAck, Publish, QoS, SubAck, SubscribeReasonCode, UnsubAck,
};
use serde_json::Value;
use smallvec::SmallVec;
use std::collections::VecDeque;
use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn, Instrument};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections, at most `max_connections` open at once (more are closed as soon
/// as they are accepted, and counted as refused).
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    hub: Arc<Hub>,
    max_connections: usize,
) {
    let places = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let mut full_logged = false;
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let Ok(place) = places.clone().try_acquire_owned() else {
                    hub.prometheus.refused("connection_limit", "");
                    if !full_logged {
                        warn!(max_connections, "MQTT connection limit reached; new connections are closed until some end");
                        full_logged = true;
                    }
                    drop(tcp);
                    continue;
                };
                full_logged = false;
                let _ = tcp.set_nodelay(true);
                let span = tracing::info_span!("mqtt", %peer);
                let hub = hub.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(
                    async move {
                        handle(tcp, acceptor, hub).await;
                        drop(place);
                    }
                    .instrument(span),
                );
            }
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(tcp: TcpStream, acceptor: TlsAcceptor, hub: Arc<Hub>) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(error = %e, "TLS handshake failed (plain TCP or untrusted client)");
            return;
        }
        Err(_) => {
            debug!("TLS handshake timed out");
            return;
        }
    };
    let (mut rd, wr) = tokio::io::split(tls);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let connect =
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, read_packet(&mut rd, &mut buf)).await {
            Ok(Ok(Some(Packet::Connect(c)))) => c,
            Ok(Ok(Some(other))) => {
                debug!(packet = ?other, "first packet is not CONNECT");
                return;
            }
            _ => return,
        };
    let (tx, rx) = mpsc::unbounded_channel();
    let close = Arc::new(Notify::new());
    let backlog = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = tokio::spawn(write_loop(wr, rx, close.clone(), backlog.clone()));
    let login = connect
        .login
        .clone()
        .unwrap_or_else(|| rumqttc::Login::new("", ""));
    let (identity, expiry) =
        match hub.authenticate(&connect.client_id, &login.username, &login.password) {
            Ok(ok) => ok,
            Err(code) => {
                let _ = tx.send(Packet::ConnAck(ConnAck::new(code, false)).into());
                drop(tx);
                let _ = writer.await;
                return;
            }
        };
    let conn = Conn {
        backlog,
        ..Conn::new(hub.next_conn_id(), tx.clone(), close.clone())
    };
    let clean = connect.clean_session;
    // CONNACK goes first: queue it before the session can deliver anything.
    let _ = tx.send(Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false)).into());
    let present = hub.connect(&identity, clean, conn.clone());
    info!(client = %connect.client_id, conn = conn.id, clean, session_present = present, "client connected");

    let keep_alive = match connect.keep_alive {
        0 => Duration::from_secs(24 * 3600),
        k => Duration::from_millis(u64::from(k) * 1500),
    };
    let session = Session {
        hub: hub.clone(),
        identity: identity.clone(),
        conn: conn.clone(),
    };
    // Like IoT Hub, close the connection when its SAS token expires: clients renew by
    // reconnecting with a fresh token.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // A token may say it expires in 500 billion years (`se` = u64::MAX): the timer then
    // waits a year, as far as an Instant safely reaches.
    let token_expires = tokio::time::Instant::now()
        + Duration::from_secs(expiry.saturating_sub(now)).min(Duration::from_secs(365 * 24 * 3600));
    let mut stopping = hub.stopping();
    // The futures that end the connection are made once, not for every packet (a timer
    // made per packet costs a registration in tokio's timer wheel each time). Keep-alive
    // is checked lazily: the timer fires at the last packet's time plus the keep-alive, as
    // it was when the timer was set, and is moved on if a packet came since.
    let closed = close.notified();
    let token_expired = tokio::time::sleep_until(token_expires);
    let stop = stopping.changed();
    let mut heard = tokio::time::Instant::now();
    let silent = tokio::time::sleep_until(heard + keep_alive);
    tokio::pin!(closed, token_expired, stop, silent);
    // A packet from the client other than PUBLISH and PUBACK (which the read loop takes);
    // `Break` ends the connection, saying why.
    let on_packet = |packet: Packet| -> ControlFlow<&'static str> {
        match packet {
            Packet::Subscribe(s) => {
                let codes = s
                    .filters
                    .iter()
                    .map(|f| {
                        if hub.may_subscribe(&identity, &f.path) {
                            let qos = if f.qos == QoS::AtMostOnce { QoS::AtMostOnce } else { QoS::AtLeastOnce };
                            hub.subscribe(&identity, &conn, &f.path, qos);
                            SubscribeReasonCode::Success(qos)
                        } else {
                            warn!(client = %connect.client_id, filter = %f.path, "subscription refused");
                            SubscribeReasonCode::Failure
                        }
                    })
                    .collect();
                conn.send_reply(Packet::SubAck(SubAck::new(s.pkid, codes)));
            }
            Packet::Unsubscribe(u) => {
                for f in &u.topics {
                    hub.unsubscribe(&identity, &conn, f);
                }
                conn.send_reply(Packet::UnsubAck(UnsubAck::new(u.pkid)));
            }
            Packet::PingReq => {
                conn.send_reply(Packet::PingResp);
            }
            Packet::Disconnect => return ControlFlow::Break("client disconnected"),
            Packet::Connect(_) => return ControlFlow::Break("second CONNECT (protocol violation)"),
            other => debug!(packet = ?other, "ignored packet"),
        }
        ControlFlow::Continue(())
    };
    let mut reader = PacketReader::from_buf(buf);
    // Leaf devices are shaped to their rate; modules are the deployment's own code.
    let shaped = match &identity {
        Identity::Device { device } if hub.throttle.is_on() => Some(device.as_str()),
        _ => None,
    };
    // PUBACKs from a module, handed to the hub together before any other packet and once
    // the read's packets are handled (one look-up of its queue, its window refilled once).
    let mut acked: SmallVec<[u16; 32]> = SmallVec::new();
    let deliver = |acked: &mut SmallVec<[u16; 32]>| {
        if !acked.is_empty() {
            hub.delivered(&identity, conn.id, acked);
            acked.clear();
        }
    };
    let reason = loop {
        // Every packet already read, then wait for more.
        let ended = loop {
            match reader.next_packet() {
                Ok(Some(Incoming::PubAck(pkid))) => acked.push(pkid),
                // Publishes do not depend on acknowledgements: they need not wait for them.
                Ok(Some(Incoming::Publish(p))) => {
                    // A leaf device past its rate: its connection is read again once the
                    // rate allows this message (at most one message's worth of waiting).
                    if let Some(device) = shaped {
                        let bytes = p.topic.len() + p.payload.len();
                        let wait = hub.throttle.take(device, bytes, std::time::Instant::now());
                        if !wait.is_zero() {
                            deliver(&mut acked);
                            hub.prometheus.throttled(device);
                            // What ends the connection ends the wait too (a message taken
                            // after a takeover would be acknowledged to no one).
                            let ended = tokio::select! {
                                _ = &mut closed => Some(CLOSED_BY_HUB),
                                _ = &mut token_expired => Some(TOKEN_EXPIRED),
                                _ = &mut stop => Some(STOPPING),
                                () = tokio::time::sleep(wait) => None,
                            };
                            if ended.is_some() {
                                break ended;
                            }
                            // The device was sending all along: its keep-alive holds.
                            heard = tokio::time::Instant::now();
                        }
                    }
                    if let Err(why) = session.publish(p) {
                        warn!(client = %connect.client_id, reason = why, "closing connection");
                        break Some(why);
                    }
                }
                // Anything else may change the session (an UNSUBSCRIBE would put the
                // acknowledged messages back in the queue): acknowledgements count first.
                Ok(Some(Incoming::Other(packet))) => {
                    deliver(&mut acked);
                    if let ControlFlow::Break(why) = on_packet(packet) {
                        break Some(why);
                    }
                }
                Ok(None) => break None,
                Err(e) => {
                    debug!(error = %e, "read failed");
                    break Some("connection error");
                }
            }
        };
        deliver(&mut acked);
        if let Some(why) = ended {
            break why;
        }
        tokio::select! {
            _ = &mut closed => break CLOSED_BY_HUB,
            _ = &mut token_expired => break TOKEN_EXPIRED,
            _ = &mut stop => break STOPPING,
            _ = &mut silent => {
                if heard.elapsed() >= keep_alive {
                    break "keep-alive expired";
                }
                silent.as_mut().reset(heard + keep_alive);
            }
            r = reader.fill(&mut rd) => match r {
                Err(e) => { debug!(error = %e, "read failed"); break "connection error" }
                Ok(false) => break "connection closed by the client",
                Ok(true) => heard = tokio::time::Instant::now(),
            },
        }
    };
    info!(client = %connect.client_id, conn = conn.id, reason, "client gone");
    hub.disconnect(&identity, conn.id, clean);
    drop(session);
    drop(conn);
    drop(tx);
    // A client that does not read keeps the writer stuck in a write: it gets a few seconds
    // to take what is queued, then the connection goes (its socket, its place, its memory).
    let mut writer = writer;
    if tokio::time::timeout(WRITER_GRACE, &mut writer)
        .await
        .is_err()
    {
        debug!("the client does not read; its connection is dropped");
        writer.abort();
    }
}

/// Why a connection ended, as logged.
const CLOSED_BY_HUB: &str = "closed by the hub (session taken over or protocol error)";
/// See [`CLOSED_BY_HUB`].
const TOKEN_EXPIRED: &str = "SAS token expired";
/// See [`CLOSED_BY_HUB`].
const STOPPING: &str = "runtime stopping";

/// How long a closing connection's writer may take to flush what is queued.
const WRITER_GRACE: Duration = Duration::from_secs(5);

/// What one connection needs to handle publishes.
struct Session {
    hub: Arc<Hub>,
    identity: Identity,
    conn: Conn,
}

impl Session {
    /// Handles a PUBLISH from the client; `Err` closes the connection.
    fn publish(&self, p: PublishIn<'_>) -> Result<(), &'static str> {
        if p.qos == QoS::ExactlyOnce {
            return Err("QoS 2 is not supported by IoT Hub");
        }
        let parsed =
            Topic::parse(p.topic).map_err(|_| "publish to a topic outside the IoT Hub scheme")?;
        let wait = match (&self.identity, parsed) {
            (
                Identity::Module { device, module },
                Topic::ModuleEvents {
                    device: d,
                    module: m,
                    bag,
                },
            ) if d == device && m == module => self.ingest(bag, p.payload),
            (Identity::Device { device }, Topic::DeviceEvents { device: d, bag })
                if d == device =>
            {
                self.ingest(bag, p.payload)
            }
            (_, Topic::TwinGet { rid }) => {
                let twin = self.hub.twins.get(&self.identity.client_id());
                self.reply(topic::twin_response(200, &rid, None), twin.to_string());
                Stored::new()
            }
            (_, Topic::TwinPatchReported { rid }) => {
                match serde_json::from_slice::<Value>(&p.payload) {
                    Ok(Value::Object(patch)) => {
                        let client = self.identity.client_id();
                        match self.hub.twins.patch_reported(&client, &patch) {
                            Ok(v) => {
                                self.reply(topic::twin_response(204, &rid, Some(v)), String::new())
                            }
                            Err(e) => {
                                self.hub.prometheus.refused("twin_too_large", &client);
                                warn!(client = %client, "reported properties refused: {e}");
                                let body = serde_json::json!({ "message": e.to_string() });
                                self.reply(topic::twin_response(413, &rid, None), body.to_string());
                            }
                        }
                    }
                    _ => self.reply(
                        topic::twin_response(400, &rid, None),
                        r#"{"message":"reported properties must be a JSON object"}"#.into(),
                    ),
                }
                Stored::new()
            }
            (_, Topic::MethodResponse { status, rid }) => {
                self.hub
                    .method_answered(&self.identity, &rid, status, p.payload);
                Stored::new()
            }
            _ => return Err("publish not allowed for this identity"),
        };
        if p.qos == QoS::AtLeastOnce && !self.conn.send_puback(p.pkid, wait) {
            return Err("the client does not read what edgeHub sends it");
        }
        Ok(())
    }

    fn ingest(&self, bag: &str, body: Bytes) -> Stored {
        // The bag is decoded for the span only when debug logging is on.
        let span = tracing::debug_span!(
            "ingest",
            correlation_id = properties::decode(bag)
                .correlation_id
                .as_deref()
                .unwrap_or("")
        );
        span.in_scope(|| self.hub.ingest(&self.identity, bag, body))
    }

    fn reply(&self, topic: String, body: String) {
        let p = Packet::Publish(Publish::new(topic, QoS::AtMostOnce, body));
        if !self.conn.send_reply(p) {
            self.hub
                .prometheus
                .refused("slow_client", &self.identity.client_id());
        }
    }
}

/// PUBACKs waiting for their messages to be stored, in the order the messages arrived.
#[derive(Default)]
struct PendingAcks {
    queue: VecDeque<(u16, Stored)>,
    /// A store failed or stopped: nothing more is acknowledged on this connection.
    stopped: bool,
}

impl PendingAcks {
    fn push(&mut self, pkid: u16, waits: Stored) {
        if !self.stopped {
            self.queue.push_back((pkid, waits));
        }
    }

    fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Encodes into `out` the PUBACKs, from the front, whose messages are stored; ready
    /// with how many, pending (woken when the front one's store completes) if none.
    /// A failed store is an error: the client should send its message again.
    fn poll_stored(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut BytesMut,
    ) -> Poll<Result<usize, String>> {
        let mut n = 0;
        while let Some((pkid, waits)) = self.queue.front_mut() {
            while let Some(w) = waits.last_mut() {
                match Pin::new(w).poll(cx) {
                    Poll::Pending if n == 0 => return Poll::Pending,
                    Poll::Pending => return Poll::Ready(Ok(n)),
                    Poll::Ready(Ok(Ok(()))) => {
                        waits.pop();
                    }
                    Poll::Ready(Ok(Err(e))) => {
                        self.stop();
                        return Poll::Ready(Err(e));
                    }
                    // The store is gone (the runtime is stopping): nothing more to acknowledge.
                    Poll::Ready(Err(_)) => {
                        self.stop();
                        return Poll::Ready(Ok(n));
                    }
                }
            }
            let pkid = *pkid;
            self.queue.pop_front();
            if let Err(e) = Packet::PubAck(PubAck::new(pkid)).write(out, MAX_PACKET) {
                warn!(error = %e, "PUBACK not written");
            }
            n += 1;
        }
        if n == 0 {
            Poll::Pending
        } else {
            Poll::Ready(Ok(n))
        }
    }

    fn stop(&mut self) {
        self.stopped = true;
        self.queue.clear();
    }
}

/// Writes a connection's packets, coalescing whatever is queued into one TLS write. A
/// PUBACK waits here, in order, until its message is stored (so a publish costs no task
/// of its own); a failed store closes the connection through `close`, so that the client
/// sends the message again.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    close: Arc<Notify>,
    backlog: Arc<std::sync::atomic::AtomicUsize>,
) {
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut acks = PendingAcks::default();
    let mut open = true;
    let stored_failed = |e: String| {
        warn!(error = %e, "message not stored; closing so the client sends it again");
        close.notify_one();
    };
    loop {
        if !open && acks.is_empty() {
            break;
        }
        // Wait for a packet to send, or for stored messages to acknowledge.
        let mut next = None;
        tokio::select! {
            p = rx.recv(), if open => match p {
                Some(p) => next = Some(p),
                None => open = false,
            },
            r = std::future::poll_fn(|cx| acks.poll_stored(cx, &mut out)) => {
                if let Err(e) = r {
                    stored_failed(e);
                }
            }
        }
        let mut yielded = false;
        while let Some(p) = next.take() {
            let written = match p {
                Outgoing::PubAckWhenStored(pkid, waits) => {
                    backlog.fetch_sub(PUBACK_SIZE, std::sync::atomic::Ordering::Relaxed);
                    acks.push(pkid, waits);
                    Ok(())
                }
                Outgoing::Packet(p) => p
                    .write(&mut out, MAX_PACKET)
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Outgoing::Reply(p, size) => {
                    // Counted out once in the write buffer: what fills memory from here on
                    // is the socket's slowness, bounded by the buffer's size.
                    backlog.fetch_sub(size, std::sync::atomic::Ordering::Relaxed);
                    p.write(&mut out, MAX_PACKET)
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
                Outgoing::Delivery(d) => d.encode(&mut out, MAX_DELIVERY),
            };
            if let Err(e) = written {
                warn!(error = %e, "packet not written");
            }
            if out.len() < 256 * 1024 && open {
                next = rx.try_recv().ok();
                if next.is_none() && !yielded {
                    // Once, let the hub's other tasks run: what they queue for this
                    // client meanwhile joins this write.
                    yielded = true;
                    tokio::task::yield_now().await;
                    next = rx.try_recv().ok();
                }
            }
        }
        // PUBACKs whose messages are stored by now join the same write.
        let ready = std::future::poll_fn(|cx| Poll::Ready(acks.poll_stored(cx, &mut out))).await;
        if let Poll::Ready(Err(e)) = ready {
            stored_failed(e);
        }
        if !out.is_empty() {
            if wr.write_all(&out).await.is_err() || wr.flush().await.is_err() {
                return;
            }
            out.clear();
        }
    }
    let _ = wr.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    fn pubacks(out: &mut BytesMut) -> Vec<u16> {
        let mut ids = Vec::new();
        while let Ok(p) = Packet::read(out, MAX_PACKET) {
            match p {
                Packet::PubAck(a) => ids.push(a.pkid),
                other => panic!("expected PUBACKs only, got {other:?}"),
            }
        }
        ids
    }

    fn poll(acks: &mut PendingAcks, out: &mut BytesMut) -> Poll<Result<usize, String>> {
        acks.poll_stored(&mut Context::from_waker(std::task::Waker::noop()), out)
    }

    #[test]
    fn pubacks_leave_in_arrival_order_once_every_sink_has_stored_the_message() {
        let mut acks = PendingAcks::default();
        let mut out = BytesMut::new();
        let (journal_1, stored_1) = oneshot::channel();
        let (upstream_1, stored_1b) = oneshot::channel();
        let (journal_3, stored_3) = oneshot::channel();
        acks.push(1, smallvec::smallvec![stored_1, stored_1b]);
        acks.push(2, Stored::new()); // a twin request: nothing to store
        acks.push(3, smallvec::smallvec![stored_3]);

        // Message 3 is stored first, message 1 only in one of its two sinks: nothing leaves.
        journal_3.send(Ok(())).unwrap();
        journal_1.send(Ok(())).unwrap();
        assert!(poll(&mut acks, &mut out).is_pending());
        assert!(out.is_empty());

        upstream_1.send(Ok(())).unwrap();
        assert_eq!(poll(&mut acks, &mut out), Poll::Ready(Ok(3)));
        assert_eq!(pubacks(&mut out), vec![1, 2, 3]);
        assert!(acks.is_empty());
        assert!(poll(&mut acks, &mut out).is_pending());
    }

    #[test]
    fn a_failed_store_is_reported_and_nothing_after_it_is_acknowledged() {
        let mut acks = PendingAcks::default();
        let mut out = BytesMut::new();
        let (ok, stored_1) = oneshot::channel();
        let (failing, stored_2) = oneshot::channel::<Result<(), String>>();
        acks.push(1, smallvec::smallvec![stored_1]);
        acks.push(2, smallvec::smallvec![stored_2]);
        acks.push(3, Stored::new());
        ok.send(Ok(())).unwrap();
        failing.send(Err("disk full".into())).unwrap();
        assert_eq!(
            poll(&mut acks, &mut out),
            Poll::Ready(Err("disk full".into()))
        );
        // The message stored before the failure is acknowledged; 2 and 3 are not.
        assert_eq!(pubacks(&mut out), vec![1]);
        acks.push(4, Stored::new());
        assert!(acks.is_empty());
        assert!(poll(&mut acks, &mut out).is_pending());
    }

    #[test]
    fn a_store_that_went_away_ends_acknowledgements_without_an_error() {
        let mut acks = PendingAcks::default();
        let mut out = BytesMut::new();
        let (gone, stored) = oneshot::channel::<Result<(), String>>();
        acks.push(1, smallvec::smallvec![stored]);
        drop(gone);
        assert_eq!(poll(&mut acks, &mut out), Poll::Ready(Ok(0)));
        assert!(out.is_empty());
        assert!(acks.is_empty());
    }
}
