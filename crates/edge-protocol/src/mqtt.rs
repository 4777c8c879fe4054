//! MQTT 3.1.1 on the wire, shared by the module client and the local edgeHub. A
//! connection reads with [`PacketReader`]: PUBLISH and PUBACK packets, nearly all of the
//! traffic, are parsed in place (the topic borrowed from the read buffer, the payload copied
//! out once); the rare others, and the handshakes ([`read_packet`]), with rumqttc's codec
//! (`rumqttc::mqttbytes::v4`). [`write_publish`] writes a PUBLISH with its topic in place.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use rumqttc::{Packet, QoS};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest MQTT packet accepted or sent (IoT Hub's message limit is 256 KiB, plus topic).
pub const MAX_PACKET: usize = 512 * 1024;

/// Largest packet edgeHub delivers to a module, and so the most a module client reads: a
/// message edgeHub took in a packet of up to [`MAX_PACKET`], under its delivery topic with
/// edgeHub's stamps (connection ids, enqueued time), which can make it longer than the
/// packet it came in. edgeHub refuses (does not acknowledge) a message whose delivery would
/// still be larger, or whose delivery topic would be over MQTT's 65,535 bytes, rather than
/// take a message a module could never read.
pub const MAX_DELIVERY: usize = MAX_PACKET + 4 * 1024;

/// Room a sender's topic leaves for edgeHub's delivery topic: the delivery topic names the
/// receiving module and input and carries edgeHub's stamps (connection ids, enqueued time)
/// besides the sender's property bag, and must stay within MQTT's 65,535 bytes.
pub const DELIVERY_TOPIC_HEADROOM: usize = 1024;

/// The longest topic a client sends a message on, so that edgeHub can deliver it.
pub const MAX_SEND_TOPIC: usize = u16::MAX as usize - DELIVERY_TOPIC_HEADROOM;

/// Read-buffer growth step.
const READ_CHUNK: usize = 64 * 1024;

/// Reads one packet into `buf` with rumqttc's codec, reading more from `rd` as needed;
/// `Ok(None)` at end of stream. For handshakes (CONNECT, CONNACK): afterwards the
/// connection reads with [`PacketReader::from_buf`]`(buf)`, which keeps what this read
/// brought beyond the packet. Cancel-safe.
pub async fn read_packet<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
) -> std::io::Result<Option<Packet>> {
    loop {
        match Packet::read(buf, MAX_PACKET) {
            Ok(p) => return Ok(Some(p)),
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(n)) => {
                buf.reserve(n.max(READ_CHUNK));
            }
            Err(e) => return Err(malformed(e)),
        }
        if rd.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

fn malformed(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("malformed MQTT packet: {e}"),
    )
}

/// A PUBLISH as read: its topic borrowed from the read buffer, its payload its own (so a
/// message held in a queue does not pin the buffer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishIn<'a> {
    /// The topic name (UTF-8, checked).
    pub topic: &'a str,
    /// Quality of service (0 or 1 or 2).
    pub qos: QoS,
    /// Packet id; 0 at QoS 0.
    pub pkid: u16,
    /// The DUP flag: the sender may have sent it before.
    pub dup: bool,
    /// The RETAIN flag.
    pub retain: bool,
    /// The application message.
    pub payload: Bytes,
}

/// A packet from the peer.
#[derive(Debug)]
pub enum Incoming<'a> {
    /// A PUBLISH, parsed in place.
    Publish(PublishIn<'a>),
    /// A PUBACK, with its packet id.
    PubAck(u16),
    /// Any other packet (never a PUBLISH or PUBACK), read with rumqttc's codec.
    Other(Packet),
}

/// The read side of an MQTT connection: a buffer that reads from the socket and hands out
/// the packets in it one by one, without allocating for PUBACKs or for a PUBLISH's topic.
#[derive(Debug)]
pub struct PacketReader {
    buf: BytesMut,
    /// Bytes at the front of `buf` that belong to the packet handed out last.
    taken: usize,
    /// The largest packet accepted: larger is an error.
    max: usize,
}

impl Default for PacketReader {
    fn default() -> PacketReader {
        PacketReader::from_buf(BytesMut::new())
    }
}

/// PUBLISH and PUBACK, the packet types parsed in place (MQTT 3.1.1 §2.2.1).
const PUBLISH: u8 = 3;
const PUBACK: u8 = 4;

impl PacketReader {
    /// A reader that goes on from `buf`, which may already hold packets, and takes packets
    /// of up to [`MAX_PACKET`] bytes.
    pub fn from_buf(buf: BytesMut) -> PacketReader {
        PacketReader {
            buf,
            taken: 0,
            max: MAX_PACKET,
        }
    }

    /// The same reader, taking packets of up to `max` bytes (a module client reads up to
    /// [`MAX_DELIVERY`]).
    pub fn with_limit(mut self, max: usize) -> PacketReader {
        self.max = max;
        self
    }

    /// Reads more from `rd`; `Ok(false)` at end of stream. Cancel-safe.
    pub async fn fill<R: AsyncRead + Unpin>(&mut self, rd: &mut R) -> std::io::Result<bool> {
        self.release();
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 8 {
            // Moves what is left to the front when most of the buffer has been read (no
            // allocation), or grows it.
            self.buf.reserve(READ_CHUNK);
        }
        Ok(rd.read_buf(&mut self.buf).await? > 0)
    }

    fn release(&mut self) {
        self.buf.advance(std::mem::take(&mut self.taken));
    }

    /// The next whole packet already read, without reading: `Ok(None)` if the buffer holds
    /// only part of one (room for the rest is reserved) or nothing. A malformed packet is
    /// an error, and the connection should end: where the next packet starts is unknown.
    pub fn next_packet(&mut self) -> std::io::Result<Option<Incoming<'_>>> {
        self.release();
        let Some((header, remaining)) = fixed_header(&self.buf)? else {
            return Ok(None);
        };
        let total = header + remaining;
        if total > self.max {
            return Err(malformed(format!(
                "a packet of {total} bytes is over the limit of {}",
                self.max
            )));
        }
        if self.buf.len() < total {
            self.buf.reserve((total - self.buf.len()).max(READ_CHUNK));
            return Ok(None);
        }
        let first = self.buf[0];
        match first >> 4 {
            PUBLISH => {
                self.taken = total;
                let p = publish(first, &self.buf[header..total])?;
                Ok(Some(Incoming::Publish(p)))
            }
            PUBACK => {
                if first != 0x40 || remaining != 2 {
                    return Err(malformed("PUBACK with flags, or not 2 bytes long"));
                }
                self.taken = total;
                Ok(Some(Incoming::PubAck(u16::from_be_bytes([
                    self.buf[header],
                    self.buf[header + 1],
                ]))))
            }
            // Splits exactly this packet off the buffer.
            _ => match Packet::read(&mut self.buf, self.max) {
                Ok(p) => Ok(Some(Incoming::Other(p))),
                Err(e) => Err(malformed(e)),
            },
        }
    }
}

/// The fixed header at the start of `b`: its length and the remaining length it gives;
/// `None` if `b` ends inside it.
fn fixed_header(b: &[u8]) -> std::io::Result<Option<(usize, usize)>> {
    let mut remaining = 0usize;
    // The remaining length: 7 bits per byte, least significant first, at most 4 bytes.
    for i in 0..4 {
        let Some(&byte) = b.get(1 + i) else {
            return Ok(None);
        };
        remaining |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((2 + i, remaining)));
        }
    }
    Err(malformed("the remaining length is longer than 4 bytes"))
}

/// Parses a PUBLISH's variable header and payload (`body`, after the fixed header whose
/// first byte is `first`).
fn publish(first: u8, body: &[u8]) -> std::io::Result<PublishIn<'_>> {
    let qos = match (first >> 1) & 0b11 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        _ => return Err(malformed("PUBLISH with QoS 3")),
    };
    let topic_len = match body {
        [hi, lo, ..] => usize::from(u16::from_be_bytes([*hi, *lo])),
        _ => return Err(malformed("PUBLISH too short for its topic length")),
    };
    let topic = body
        .get(2..2 + topic_len)
        .ok_or_else(|| malformed("PUBLISH topic runs past the packet"))?;
    let topic = std::str::from_utf8(topic).map_err(|_| malformed("PUBLISH topic is not UTF-8"))?;
    let mut rest = &body[2 + topic_len..];
    let pkid = if qos == QoS::AtMostOnce {
        0
    } else {
        if rest.len() < 2 {
            return Err(malformed("PUBLISH too short for its packet id"));
        }
        let pkid = rest.get_u16();
        if pkid == 0 {
            return Err(malformed("PUBLISH at QoS 1 or 2 with packet id 0"));
        }
        pkid
    };
    Ok(PublishIn {
        topic,
        qos,
        pkid,
        dup: first & 0b1000 != 0,
        retain: first & 0b1 != 0,
        payload: Bytes::copy_from_slice(rest),
    })
}

/// A PUBLISH's remaining length (after the fixed header's first byte and the length
/// itself).
fn remaining_length(topic_len: usize, qos: QoS, payload_len: usize) -> usize {
    let pkid_len = if qos == QoS::AtMostOnce { 0 } else { 2 };
    2 + topic_len + pkid_len + payload_len
}

/// The size of a PUBLISH packet whose topic is `topic_len` bytes and payload
/// `payload_len`; an error if MQTT cannot carry a topic that long.
pub fn publish_size(topic_len: usize, qos: QoS, payload_len: usize) -> Result<usize, String> {
    if topic_len > usize::from(u16::MAX) {
        return Err(format!("topic of {topic_len} bytes is too long for MQTT"));
    }
    let remaining = remaining_length(topic_len, qos, payload_len);
    let length_bytes = match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    Ok(1 + length_bytes + remaining)
}

/// The size of a PUBLISH packet whose topic is `topic_len` bytes and payload
/// `payload_len`, if it fits in `max_packet` bytes; else why not. Every size check of a
/// PUBLISH goes through here: before a send, before a delivery, and when one is written.
pub fn check_publish(
    topic_len: usize,
    qos: QoS,
    payload_len: usize,
    max_packet: usize,
) -> Result<usize, String> {
    match publish_size(topic_len, qos, payload_len)? {
        size if size <= max_packet => Ok(size),
        size => Err(format!(
            "a publish of {size} bytes is over the MQTT packet limit of {max_packet}"
        )),
    }
}

/// Appends a PUBLISH packet to `out`, its topic the concatenation of `topic` (written in
/// place, without building the topic first), with the DUP flag if `dup` (a publish sent
/// again), never RETAIN. A packet over `max_packet` bytes (rumqttc's limit: the whole
/// packet) is not written.
pub fn write_publish(
    out: &mut BytesMut,
    topic: &[&str],
    qos: QoS,
    pkid: u16,
    dup: bool,
    payload: &[u8],
    max_packet: usize,
) -> Result<(), String> {
    let topic_len: usize = topic.iter().map(|p| p.len()).sum();
    let size = check_publish(topic_len, qos, payload.len(), max_packet)?;
    out.reserve(size);
    // Fixed header: PUBLISH, DUP and QoS; then the remaining length as a variable-length
    // integer (7 bits per byte, least significant first).
    out.put_u8(0x30 | u8::from(dup) << 3 | (qos as u8) << 1);
    let mut n = remaining_length(topic_len, qos, payload.len());
    loop {
        let byte = (n % 128) as u8;
        n /= 128;
        if n == 0 {
            out.put_u8(byte);
            break;
        }
        out.put_u8(byte | 0x80);
    }
    // `check_publish` checked that the length fits.
    out.put_u16(topic_len as u16);
    for part in topic {
        out.put_slice(part.as_bytes());
    }
    if qos != QoS::AtMostOnce {
        out.put_u16(pkid);
    }
    out.put_slice(payload);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::{PubAck, Publish, QoS};

    /// Every packet `wire` holds, read by a [`PacketReader`] from a reader that returns
    /// `wire` in reads cut at `cut`; publishes as rumqttc's `Publish`, PUBACKs as `PubAck`.
    async fn read_all(wire: &[u8], cut: usize) -> std::io::Result<Vec<Packet>> {
        let (a, b) = wire.split_at(cut);
        let mut rd = AsyncReadExt::chain(a, b);
        let mut reader = PacketReader::default();
        let mut packets = Vec::new();
        loop {
            while let Some(p) = reader.next_packet()? {
                packets.push(match p {
                    Incoming::Publish(p) => {
                        let mut owned = Publish::from_bytes(p.topic, p.qos, p.payload);
                        owned.pkid = p.pkid;
                        owned.dup = p.dup;
                        owned.retain = p.retain;
                        Packet::Publish(owned)
                    }
                    Incoming::PubAck(pkid) => Packet::PubAck(PubAck::new(pkid)),
                    Incoming::Other(p) => p,
                });
            }
            if !reader.fill(&mut rd).await? {
                return Ok(packets);
            }
        }
    }

    fn encoded(packets: &[Packet]) -> BytesMut {
        let mut wire = BytesMut::new();
        for p in packets {
            p.clone().write(&mut wire, MAX_PACKET).unwrap();
        }
        wire
    }

    #[tokio::test]
    async fn reads_what_rumqttc_writes_split_anywhere() {
        let mut packets = Vec::new();
        // Payloads whose remaining lengths take one, two and three bytes; every QoS and
        // flag; a topic with escaped and non-ASCII characters.
        for (i, size) in [0usize, 100, 200, 20_000].into_iter().enumerate() {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                let mut p = Publish::new(
                    format!("devices/d{i}/messages/events/$.cid=c%2F1&Bé={size}"),
                    qos,
                    vec![b'x' + i as u8; size],
                );
                p.pkid = if qos == QoS::AtMostOnce {
                    0
                } else {
                    300 + i as u16
                };
                p.dup = qos != QoS::AtMostOnce && i % 2 == 0;
                p.retain = i == 1;
                packets.push(Packet::Publish(p));
            }
        }
        packets.push(Packet::PubAck(PubAck::new(1)));
        packets.push(Packet::PingResp);
        packets.push(Packet::PubAck(PubAck::new(65_535)));
        packets.push(Packet::Publish(Publish::new("", QoS::AtMostOnce, "")));
        let wire = encoded(&packets);
        for cut in (0..wire.len()).step_by(97).chain([1, 2, 3, wire.len()]) {
            assert_eq!(read_all(&wire, cut).await.unwrap(), packets, "cut at {cut}");
        }
    }

    #[tokio::test]
    async fn a_reader_takes_packets_up_to_its_limit() {
        let mut wire = BytesMut::new();
        let payload = vec![b'x'; MAX_PACKET];
        write_publish(
            &mut wire,
            &["t"],
            QoS::AtLeastOnce,
            1,
            false,
            &payload,
            MAX_DELIVERY,
        )
        .unwrap();
        assert!(wire.len() > MAX_PACKET && wire.len() <= MAX_DELIVERY);
        let over = PacketReader::from_buf(wire.clone())
            .next_packet()
            .unwrap_err();
        assert!(
            over.to_string().contains("over the limit of 524288"),
            "{over}"
        );
        let mut reader = PacketReader::from_buf(wire).with_limit(MAX_DELIVERY);
        match reader.next_packet().unwrap() {
            Some(Incoming::Publish(p)) => assert_eq!(p.payload.len(), MAX_PACKET),
            other => panic!("a publish: {other:?}"),
        }
    }

    #[tokio::test]
    async fn malformed_packets_are_errors_that_say_what_is_wrong() {
        let publish = |topic: &[u8], flags: u8, tail: &[u8]| {
            let mut b = vec![0x30 | flags, (2 + topic.len() + tail.len()) as u8];
            b.extend_from_slice(&(topic.len() as u16).to_be_bytes());
            b.extend_from_slice(topic);
            b.extend_from_slice(tail);
            b
        };
        let mut topic_past_end = publish(b"abc", 0, b"");
        topic_past_end[3] = 9;
        let mut oversize = vec![0x30];
        let mut n = MAX_PACKET;
        while n > 0 {
            oversize.push((n % 128) as u8 | if n >= 128 { 0x80 } else { 0 });
            n /= 128;
        }
        for (wire, says) in [
            (publish(b"t", 0b110, b"\x00\x01"), "QoS 3"),
            (publish(b"t", 0b010, b"\x00\x00body"), "packet id 0"),
            (publish(b"t", 0b010, b"\x01"), "too short for its packet id"),
            (publish(b"\xff\xfe", 0, b""), "not UTF-8"),
            (topic_past_end, "runs past the packet"),
            (vec![0x30, 0x01, 0x00], "too short for its topic length"),
            (
                vec![0x30, 0xff, 0xff, 0xff, 0xff, 0x01],
                "longer than 4 bytes",
            ),
            (oversize, "over the limit"),
            (vec![0x40, 0x03, 0x00, 0x01, 0x00], "PUBACK with flags"),
            (vec![0x42, 0x02, 0x00, 0x01], "PUBACK with flags"),
            (vec![0xf0, 0x00], "malformed MQTT packet"),
        ] {
            let err = read_all(&wire, 0).await.unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
            assert!(err.to_string().contains(says), "{err} should say {says}");
        }
    }

    #[tokio::test]
    async fn payloads_read_do_not_pin_the_read_buffer() {
        for size in [1_000, 100_000] {
            let mut p = Publish::new("t", QoS::AtLeastOnce, vec![7u8; size]);
            p.pkid = 1;
            let wire = encoded(&[Packet::Publish(p.clone()), Packet::Publish(p)]);
            let mut rd: &[u8] = &wire;
            let mut reader = PacketReader::default();
            let mut held = Vec::new();
            while held.len() < 2 {
                match reader.next_packet().unwrap() {
                    Some(Incoming::Publish(p)) => held.push(p.payload),
                    Some(other) => panic!("unexpected {other:?}"),
                    None => assert!(reader.fill(&mut rd).await.unwrap()),
                }
            }
            assert!(held.iter().all(|b| b.len() == size));
            // The buffer takes the next reads in place only if nothing else holds it.
            reader.release();
            assert!(reader.buf.is_empty());
            assert!(
                reader.buf.try_reclaim(READ_CHUNK),
                "payload of {size} bytes"
            );
        }
    }

    #[test]
    fn next_takes_whole_packets_and_leaves_a_partial_one() {
        let mut wire = encoded(&[
            Packet::PubAck(PubAck::new(1)),
            Packet::PubAck(PubAck::new(2)),
        ]);
        let mut p = Publish::new("t", QoS::AtLeastOnce, vec![1u8; 100]);
        p.pkid = 3;
        let publish = encoded(&[Packet::Publish(p)]);
        wire.extend_from_slice(&publish[..50]);
        let mut reader = PacketReader::from_buf(wire);
        assert!(matches!(
            reader.next_packet(),
            Ok(Some(Incoming::PubAck(1)))
        ));
        assert!(matches!(
            reader.next_packet(),
            Ok(Some(Incoming::PubAck(2)))
        ));
        assert!(matches!(reader.next_packet(), Ok(None)));
        // The partial PUBLISH stays, with room reserved for its rest.
        assert_eq!(&reader.buf[..], &publish[..50]);
        assert!(reader.buf.capacity() - reader.buf.len() >= publish.len() - 50);
        reader.buf.extend_from_slice(&publish[50..]);
        assert!(
            matches!(reader.next_packet(), Ok(Some(Incoming::Publish(p))) if p.pkid == 3 && p.topic == "t")
        );
        assert!(matches!(reader.next_packet(), Ok(None)));
    }

    #[tokio::test]
    async fn read_packet_reads_handshakes_and_leaves_the_rest_for_the_reader() {
        let wire = encoded(&[
            Packet::ConnAck(rumqttc::ConnAck::new(
                rumqttc::ConnectReturnCode::Success,
                false,
            )),
            Packet::PubAck(PubAck::new(5)),
        ]);
        let mut rd: &[u8] = &wire;
        let mut buf = BytesMut::new();
        let first = read_packet(&mut rd, &mut buf).await.unwrap();
        assert!(matches!(first, Some(Packet::ConnAck(_))));
        let mut reader = PacketReader::from_buf(buf);
        assert!(matches!(
            reader.next_packet(),
            Ok(Some(Incoming::PubAck(5)))
        ));
        let mut garbage: &[u8] = &[0xf0, 0x00];
        let err = read_packet(&mut garbage, &mut BytesMut::new()).await;
        assert!(err
            .unwrap_err()
            .to_string()
            .contains("malformed MQTT packet"));
    }

    #[test]
    fn write_publish_writes_what_rumqttc_writes() {
        // Remaining lengths of one, two and three bytes; with and without a packet id; sent
        // again (DUP) or not.
        for (body, qos, pkid, dup) in [
            (10, QoS::AtLeastOnce, 258, false),
            (300, QoS::AtLeastOnce, 1, true),
            (300, QoS::AtMostOnce, 0, false),
            (20_000, QoS::AtLeastOnce, 65_535, false),
        ] {
            let topic = ["devices/edge/modules/m/inputs/in/", "$.cid=c%2F1%20%26"];
            let payload = vec![b'x'; body];
            let mut publish = Publish::new(topic.concat(), qos, payload.clone());
            publish.pkid = pkid;
            publish.dup = dup;
            let mut expected = BytesMut::new();
            Packet::Publish(publish)
                .write(&mut expected, 1 << 20)
                .unwrap();
            let write =
                |out: &mut BytesMut, max| write_publish(out, &topic, qos, pkid, dup, &payload, max);
            let mut wire = BytesMut::new();
            write(&mut wire, 1 << 20).unwrap();
            assert_eq!(wire, expected, "{body} bytes, {qos:?}, dup {dup}");
            // The limit counts the whole packet; over it, nothing is written.
            let mut exact = BytesMut::new();
            assert!(write(&mut exact, expected.len()).is_ok());
            let mut small = BytesMut::new();
            assert!(write(&mut small, expected.len() - 1).is_err());
            assert!(small.is_empty());
        }
    }
}
