//! The connection's driver: the one task that owns the MQTT/TLS connection to edgeHub. It
//! connects, writes what the module's tasks queued (whatever is queued when it gets to write
//! goes out as one TLS write: under load many packets share a record and a syscall),
//! dispatches what arrives, tracks PUBACKs, reconnects with [`Backoff`] and renews the SAS
//! token before it expires.

use crate::acks::{Outbound, Release, SendTracker};
use crate::backoff::Backoff;
use crate::error::Error;
use crate::session::{lock, Inner, InputMessage};
use crate::token::{now_secs, TokenSource};
use bytes::BytesMut;
use edge_protocol::mqtt::{
    read_packet, write_publish, Incoming, PacketReader, PublishIn, MAX_DELIVERY, MAX_PACKET,
};
use edge_protocol::properties;
use edge_protocol::topic::{self, Topic};
use rumqttc::{
    ConnectReturnCode, Login, Packet, PubAck, QoS, Subscribe, SubscribeFilter, SubscribeReasonCode,
};
use rustls_pki_types::ServerName;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tracing::{debug, info, warn};

/// MQTT keep-alive announced to edgeHub; a PINGREQ goes out at half of it.
const KEEP_ALIVE: Duration = Duration::from_secs(60);
/// Deadline for TCP connect, TLS handshake and CONNACK, each.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for sends in flight before reconnecting to renew the token.
const DRAIN: Duration = Duration::from_secs(5);
/// Most bytes gathered into one TLS write.
const WRITE_BATCH: usize = 256 * 1024;

/// Appends the PUBLISH of send `o` under `pkid` to `out`, with the DUP flag if it is sent
/// `again`.
fn write_send(out: &mut BytesMut, pkid: u16, o: &Outbound, again: bool) {
    // Checked before it was queued: by `fits`, or when its `Prepared` was made.
    let topic = [o.topic.as_str()];
    let written = write_publish(
        out,
        &topic,
        QoS::AtLeastOnce,
        pkid,
        again,
        &o.payload,
        MAX_PACKET,
    );
    if let Err(e) = written {
        warn!(error = %e, "packet not sent: it cannot be encoded");
    }
}

/// Owns the connection: connects, writes what is queued, dispatches what arrives,
/// tracks PUBACKs, reconnects with backoff and renews the SAS token.
pub(crate) struct Driver {
    pub(crate) inner: Arc<Inner>,
    pub(crate) tokens: TokenSource,
    pub(crate) token: String,
    pub(crate) expiry: u64,
    pub(crate) tls: TlsConnector,
    pub(crate) server_name: ServerName<'static>,
    pub(crate) inputs_tx: mpsc::UnboundedSender<InputMessage>,
    pub(crate) desired_tx: mpsc::UnboundedSender<Value>,
    pub(crate) first: Option<oneshot::Sender<Result<(), Error>>>,
    pub(crate) sends: SendTracker,
    pub(crate) out_rx: mpsc::UnboundedReceiver<Outbound>,
    pub(crate) ack_rx: mpsc::UnboundedReceiver<Release>,
    pub(crate) epoch: u64,
}

/// Why a connection attempt failed.
enum ConnectFailure {
    Refused(ConnectReturnCode),
    Other(String),
}

/// How a connection ended.
enum Ended {
    /// The client is closing.
    Stop,
    /// The SAS token is near expiry: reconnect with a fresh one.
    Renew,
    /// Lost; reconnect after a backoff.
    Lost(String),
}

type Stream = TlsStream<TcpStream>;

fn encode(packet: Packet, out: &mut BytesMut) {
    if let Err(e) = packet.write(out, MAX_PACKET) {
        warn!(error = %e, "packet not sent: it cannot be encoded");
    }
}

impl Driver {
    fn renew_at(&self) -> tokio::time::Instant {
        let ttl = self.tokens.settings.token_ttl_secs;
        let left = self.expiry.saturating_sub(now_secs());
        // Renew when a fifth of the lifetime is left.
        tokio::time::Instant::now() + Duration::from_secs(left.saturating_sub(ttl / 5))
    }

    async fn renew(&mut self) {
        match self.tokens.token().await {
            Ok((token, expiry)) => {
                self.token = token;
                self.expiry = expiry;
            }
            Err(e) => {
                warn!(error = %e, "could not renew the SAS token; retrying on the next attempt")
            }
        }
    }

    /// TCP, TLS, CONNECT and CONNACK; returns the stream, what was read after the CONNACK
    /// and whether edgeHub kept the session.
    async fn connect(&self) -> Result<(Stream, BytesMut, bool), ConnectFailure> {
        let s = &self.tokens.settings;
        let other =
            |what: &str, e: &dyn std::fmt::Display| ConnectFailure::Other(format!("{what}: {e}"));
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((s.gateway_hostname.as_str(), s.port)),
        )
        .await
        .map_err(|e| other("connecting", &e))?
        .map_err(|e| {
            other(
                &format!("connecting to {}:{}", s.gateway_hostname, s.port),
                &e,
            )
        })?;
        let _ = tcp.set_nodelay(true);
        let mut tls = tokio::time::timeout(
            CONNECT_TIMEOUT,
            self.tls.connect(self.server_name.clone(), tcp),
        )
        .await
        .map_err(|e| other("TLS handshake", &e))?
        .map_err(|e| other("TLS handshake with edgeHub", &e))?;
        let mut connect = rumqttc::Connect::new(s.client_id());
        connect.keep_alive = KEEP_ALIVE.as_secs() as u16;
        connect.clean_session = false;
        connect.login = Some(Login::new(s.username(), self.token.clone()));
        let mut out = BytesMut::new();
        encode(Packet::Connect(connect), &mut out);
        tls.write_all(&out)
            .await
            .map_err(|e| other("sending CONNECT", &e))?;
        tls.flush()
            .await
            .map_err(|e| other("sending CONNECT", &e))?;
        let mut buf = BytesMut::with_capacity(16 * 1024);
        match tokio::time::timeout(CONNECT_TIMEOUT, read_packet(&mut tls, &mut buf)).await {
            Ok(Ok(Some(Packet::ConnAck(ack)))) => match ack.code {
                ConnectReturnCode::Success => Ok((tls, buf, ack.session_present)),
                code => Err(ConnectFailure::Refused(code)),
            },
            Ok(Ok(Some(p))) => Err(ConnectFailure::Other(format!(
                "edgeHub answered CONNECT with {p:?}"
            ))),
            Ok(Ok(None)) => Err(ConnectFailure::Other(
                "edgeHub closed the connection before CONNACK".into(),
            )),
            Ok(Err(e)) => Err(other("reading CONNACK", &e)),
            Err(e) => Err(other("waiting for CONNACK", &e)),
        }
    }

    pub(crate) async fn run(mut self) {
        let mut backoff = Backoff::new();
        loop {
            if self.inner.closing.load(Ordering::SeqCst) {
                break;
            }
            let attempt = tokio::select! {
                r = self.connect() => r,
                _ = self.inner.stop.notified() => break,
            };
            let why = match attempt {
                Ok((stream, buf, session_present)) => {
                    self.epoch += 1;
                    self.inner.acks.set_epoch(self.epoch);
                    backoff.reset();
                    info!(epoch = self.epoch, session_present, "connected to edgeHub");
                    self.inner.metrics.connections.inc();
                    self.inner.metrics.connected.set(1);
                    let ended = self.session(stream, buf).await;
                    self.inner.metrics.connected.set(0);
                    match ended {
                        Ended::Stop => break,
                        Ended::Renew => {
                            info!("SAS token near expiry: reconnecting with a fresh one");
                            self.renew().await;
                            continue;
                        }
                        Ended::Lost(why) => why,
                    }
                }
                Err(ConnectFailure::Refused(code)) => {
                    let refused = matches!(
                        code,
                        ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized
                    );
                    if refused {
                        if let Some(first) = self.first.take() {
                            let _ = first.send(Err(Error::Config(format!(
                                "edgeHub refused the module's identity ({code:?}): check the module's key or the runtime's registry"
                            ))));
                            break;
                        }
                    }
                    format!("edgeHub refused the connection ({code:?})")
                }
                Err(ConnectFailure::Other(why)) => why,
            };
            if self.inner.closing.load(Ordering::SeqCst) {
                break;
            }
            let wait = backoff.next();
            warn!(error = %why, retry_in_ms = wait.as_millis() as u64, "connection to edgeHub lost");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.inner.stop.notified() => break,
            }
            if self.expiry <= now_secs() + self.tokens.settings.token_ttl_secs / 5 {
                self.renew().await;
            }
        }
        // Whatever is still unacknowledged fails: its senders get `Error::Closed`.
        self.sends = SendTracker::default();
        self.out_rx.close();
        while self.out_rx.try_recv().is_ok() {}
        debug!("edgeHub connection driver stopped");
    }

    /// Takes a publish in and encodes it.
    fn take_send(&mut self, o: Outbound, out: &mut BytesMut, reserved: Option<u16>) {
        let (pkid, o) = self.sends.add(o, reserved);
        write_send(out, pkid, o, false);
    }

    /// Encodes a released PUBACK (if its message came on this connection).
    fn take_ack(&self, r: Release, out: &mut BytesMut) {
        if let Some(pkid) = r.pkid_on(self.epoch) {
            encode(Packet::PubAck(PubAck::new(pkid)), out);
        }
        self.inner.acks.taken();
    }

    /// One connection, from CONNACK until it ends.
    async fn session(&mut self, stream: Stream, rbuf: BytesMut) -> Ended {
        let (mut rd, mut wr) = tokio::io::split(stream);
        // edgeHub's deliveries may be a little over the packet limit of what it takes.
        let mut reader = PacketReader::from_buf(rbuf).with_limit(MAX_DELIVERY);
        let mut out = BytesMut::with_capacity(64 * 1024);
        // Subscriptions first, then every publish edgeHub has not acknowledged, again.
        let sub_pkid = self.sends.free_pkid(None);
        let filters = self
            .filters()
            .into_iter()
            .map(|f| SubscribeFilter::new(f, QoS::AtLeastOnce))
            .collect::<Vec<_>>();
        let mut sub = Subscribe::new_many(filters);
        sub.pkid = sub_pkid;
        encode(Packet::Subscribe(sub), &mut out);
        let resend = self.sends.len();
        for (pkid, o) in self.sends.unacked() {
            write_send(&mut out, pkid, o, true);
        }
        if resend > 0 && self.epoch > 1 {
            warn!(count = resend, "sending unacknowledged messages again");
        }
        if let Some(first) = self.first.take() {
            let _ = first.send(Ok(()));
        } else {
            self.resync_desired();
        }
        // Whatever came with the CONNACK.
        if let Err(e) = self.incoming_all(&mut reader, sub_pkid) {
            return e;
        }
        let renew_at = self.renew_at();
        let ping_every = KEEP_ALIVE / 2;
        let mut next_ping = tokio::time::Instant::now() + ping_every;
        let silence = KEEP_ALIVE * 3 / 2;
        let mut heard = tokio::time::Instant::now();
        // Before renewing, new sends wait while those in flight are acknowledged (a few
        // seconds at most), so the new connection does not have to send them again.
        let mut draining: Option<tokio::time::Instant> = None;
        // One timer for every deadline (renewal, end of draining, ping, silence), set to
        // the earliest and moved on when it fires; and one stop signal. Made per loop turn,
        // they would cost timer-wheel registrations for every wakeup.
        let deadline = |draining: Option<tokio::time::Instant>,
                        next_ping: tokio::time::Instant,
                        heard: tokio::time::Instant| {
            draining
                .map_or(renew_at, |d| d + DRAIN)
                .min(next_ping)
                .min(heard + silence)
        };
        let tick = tokio::time::sleep_until(deadline(draining, next_ping, heard));
        let inner = self.inner.clone();
        let stop = inner.stop.notified();
        tokio::pin!(tick, stop);
        loop {
            if draining.is_some_and(|since| self.sends.len() == 0 || since.elapsed() > DRAIN) {
                encode(Packet::Disconnect, &mut out);
                let _ = wr.write_all(&out).await;
                let _ = wr.flush().await;
                return Ended::Renew;
            }
            if !out.is_empty() {
                if let Err(e) = async {
                    wr.write_all(&out).await?;
                    wr.flush().await
                }
                .await
                {
                    return Ended::Lost(format!("writing to edgeHub: {e}"));
                }
                out.clear();
            }
            tokio::select! {
                biased;
                _ = &mut stop => {
                    encode(Packet::Disconnect, &mut out);
                    let _ = wr.write_all(&out).await;
                    let _ = wr.flush().await;
                    return Ended::Stop;
                }
                _ = &mut tick => {
                    let now = tokio::time::Instant::now();
                    if now >= heard + silence {
                        return Ended::Lost(format!("nothing from edgeHub for {} s", silence.as_secs()));
                    }
                    if draining.is_none() && now >= renew_at {
                        draining = Some(now);
                    }
                    if now >= next_ping {
                        encode(Packet::PingReq, &mut out);
                        next_ping = now + ping_every;
                    }
                    tick.as_mut().reset(deadline(draining, next_ping, heard));
                    // The loop's top ends a finished drain and writes the ping.
                    continue;
                }
                r = reader.fill(&mut rd) => {
                    match r {
                        Ok(true) => heard = tokio::time::Instant::now(),
                        Ok(false) => return Ended::Lost("edgeHub closed the connection".into()),
                        Err(e) => return Ended::Lost(format!("reading from edgeHub: {e}")),
                    }
                    // Every packet this read completed, without waiting for more.
                    if let Err(e) = self.incoming_all(&mut reader, sub_pkid) {
                        return e;
                    }
                }
                Some(o) = self.out_rx.recv(), if draining.is_none() => {
                    self.take_send(o, &mut out, Some(sub_pkid));
                }
                Some(r) = self.ack_rx.recv() => self.take_ack(r, &mut out),
            }
            // Gather whatever else is queued into the same write; once, let the module's
            // other tasks run first, so what they are about to send joins this write.
            let mut yielded = false;
            while out.len() < WRITE_BATCH {
                if let Ok(r) = self.ack_rx.try_recv() {
                    self.take_ack(r, &mut out);
                } else if draining.is_some() {
                    break;
                } else if let Ok(o) = self.out_rx.try_recv() {
                    self.take_send(o, &mut out, Some(sub_pkid));
                } else if !yielded && !out.is_empty() {
                    yielded = true;
                    tokio::task::yield_now().await;
                } else {
                    break;
                }
            }
        }
    }

    /// Handles every whole packet `reader` holds; `Err` ends the connection.
    fn incoming_all(&mut self, reader: &mut PacketReader, sub_pkid: u16) -> Result<(), Ended> {
        loop {
            match reader.next_packet() {
                Ok(Some(p)) => self.incoming(p, sub_pkid),
                Ok(None) => return Ok(()),
                Err(e) => return Err(Ended::Lost(format!("reading from edgeHub: {e}"))),
            }
        }
    }

    fn incoming(&mut self, p: Incoming<'_>, sub_pkid: u16) {
        match p {
            Incoming::Publish(p) => self.dispatch(p),
            Incoming::PubAck(pkid) => self.sends.acked(pkid),
            Incoming::Other(Packet::SubAck(a)) if a.pkid == sub_pkid => {
                if a.return_codes.contains(&SubscribeReasonCode::Failure) {
                    warn!(codes = ?a.return_codes, "edgeHub refused a subscription");
                }
            }
            Incoming::Other(Packet::PingResp) => {}
            Incoming::Other(other) => debug!(packet = ?other, "ignored packet from edgeHub"),
        }
    }

    fn filters(&self) -> Vec<String> {
        let s = &self.tokens.settings;
        let mut filters = vec![
            topic::TWIN_RESPONSES_FILTER.to_owned(),
            topic::TWIN_DESIRED_FILTER.to_owned(),
            topic::METHODS_FILTER.to_owned(),
        ];
        if !s.is_device() {
            filters.push(topic::module_inputs_filter(&s.device_id, &s.module_id));
        }
        filters
    }

    /// After a reconnection, desired patches may have been missed: compare versions and
    /// hand the full desired document on if it changed.
    fn resync_desired(&self) {
        let inner = self.inner.clone();
        let tx = self.desired_tx.clone();
        tokio::spawn(async move {
            let before = inner.desired_version.load(Ordering::SeqCst);
            match inner.twin().await {
                Ok(twin) => {
                    let now = twin
                        .pointer("/desired/$version")
                        .and_then(Value::as_u64)
                        .unwrap_or(0);
                    if now != before {
                        if let Some(desired) = twin.get("desired") {
                            let _ = tx.send(desired.clone());
                        }
                    }
                }
                Err(e) => warn!(error = %e, "could not re-read the twin after reconnecting"),
            }
        });
    }

    fn dispatch(&self, p: PublishIn<'_>) {
        let token = self.inner.acks.token(self.epoch, p.pkid, p.qos);
        match Topic::parse(p.topic) {
            Ok(Topic::ModuleInput { input, bag, .. }) => {
                let mut message = properties::decode(bag);
                message.body = p.payload;
                message.input_name = Some(input.into());
                self.inner.metrics.received.inc(input);
                let m = InputMessage {
                    input: input.into(),
                    message,
                    token,
                };
                if self.inputs_tx.send(m).is_err() {
                    debug!("input arrived while nobody reads inputs; left unacknowledged");
                }
            }
            Ok(Topic::TwinResponse { status, rid, .. }) => {
                if let Some(w) = lock(&self.inner.twin_waiters).remove(&rid) {
                    let _ = w.send((status, p.payload));
                }
                token.ack();
            }
            Ok(Topic::MethodRequest { method, rid }) => {
                token.ack();
                let payload = match p.payload.as_ref() {
                    b"" => Ok(Value::Null),
                    bytes => serde_json::from_slice::<Value>(bytes),
                };
                let handler = self
                    .inner
                    .methods
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                let (status, answer) = match (payload, handler) {
                    (Err(e), _) => (
                        400,
                        json!({"message": format!("the payload is not JSON: {e}")}),
                    ),
                    (Ok(_), None) => (
                        501,
                        json!({"message": format!("this module answers no direct methods ('{method}' called)")}),
                    ),
                    (Ok(v), Some(h)) => h(method, &v),
                };
                debug!(method, status, "direct method answered");
                let inner = self.inner.clone();
                tokio::spawn(async move { inner.answer_method(status, &rid, &answer).await });
            }
            Ok(Topic::TwinDesiredPatch { version }) => {
                match serde_json::from_slice::<Value>(&p.payload) {
                    Ok(patch) => {
                        let v = version.or_else(|| patch.get("$version").and_then(Value::as_u64));
                        if let Some(v) = v {
                            self.inner.desired_version.fetch_max(v, Ordering::SeqCst);
                        }
                        let _ = self.desired_tx.send(patch);
                    }
                    Err(e) => warn!(error = %e, "desired-properties patch is not JSON; ignored"),
                }
                token.ack();
            }
            _ => {
                warn!(topic = %p.topic, "message on an unexpected topic; acknowledged and ignored");
                token.ack();
            }
        }
    }
}
