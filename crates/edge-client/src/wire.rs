//! MQTT 3.1.1 on the wire, shared by the module client and the local edgeHub: packets are
//! read and written with rumqttc's codec (`rumqttc::mqttbytes::v4`), except the PUBLISH
//! packets edgeHub delivers, which [`write_publish`] writes with their topic in place.

use bytes::{BufMut, BytesMut};
use rumqttc::{Packet, QoS};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest MQTT packet accepted or sent (IoT Hub's message limit is 256 KiB, plus topic).
pub const MAX_PACKET: usize = 512 * 1024;

/// Read-buffer growth step.
const READ_CHUNK: usize = 64 * 1024;

/// Payloads up to this size are copied out of the read buffer, so that the buffer is
/// reused in place instead of being pinned by the messages read from it (a message held in
/// a queue would otherwise keep a whole 64 KiB chunk alive); larger ones share it.
const COPY_PAYLOAD_UP_TO: usize = 16 * 1024;

/// Reads one packet into `buf`, reading more from `rd` as needed; `Ok(None)` at end of
/// stream. Packets already in `buf` are returned without reading. Cancel-safe.
pub async fn read_packet<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
) -> std::io::Result<Option<Packet>> {
    loop {
        if let Some(p) = next_packet(buf)? {
            return Ok(Some(p));
        }
        if rd.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// Takes the next whole packet out of `buf`, without reading: `Ok(None)` if `buf` holds
/// only part of one (room for the rest is reserved). A connection handles every packet
/// that one read brought this way before it waits again.
pub fn next_packet(buf: &mut BytesMut) -> std::io::Result<Option<Packet>> {
    match Packet::read(buf, MAX_PACKET) {
        Ok(Packet::Publish(mut p)) => {
            if p.payload.len() <= COPY_PAYLOAD_UP_TO {
                p.payload = bytes::Bytes::copy_from_slice(&p.payload);
            }
            Ok(Some(Packet::Publish(p)))
        }
        Ok(p) => Ok(Some(p)),
        Err(rumqttc::mqttbytes::Error::InsufficientBytes(n)) => {
            buf.reserve(n.max(READ_CHUNK));
            Ok(None)
        }
        Err(e) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("malformed MQTT packet: {e}"),
        )),
    }
}

/// Appends a PUBLISH packet to `out`, its topic the concatenation of `topic` (written in
/// place, without building the topic first), without DUP or RETAIN. A packet over
/// `max_packet` bytes (rumqttc's limit: the whole packet) is not written.
pub fn write_publish(
    out: &mut BytesMut,
    topic: &[&str],
    qos: QoS,
    pkid: u16,
    payload: &[u8],
    max_packet: usize,
) -> Result<(), String> {
    let topic_len: usize = topic.iter().map(|p| p.len()).sum();
    let topic_len16 = u16::try_from(topic_len)
        .map_err(|_| format!("topic of {topic_len} bytes is too long for MQTT"))?;
    let pkid_len = if qos == QoS::AtMostOnce { 0 } else { 2 };
    let remaining = 2 + topic_len + pkid_len + payload.len();
    let length_bytes = match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    let size = 1 + length_bytes + remaining;
    if size > max_packet {
        return Err(format!(
            "PUBLISH of {size} bytes is over the packet limit of {max_packet}"
        ));
    }
    out.reserve(size);
    // Fixed header: PUBLISH and its QoS; then the remaining length as a variable-length
    // integer (7 bits per byte, least significant first).
    out.put_u8(0x30 | (qos as u8) << 1);
    let mut n = remaining;
    loop {
        let byte = (n % 128) as u8;
        n /= 128;
        if n == 0 {
            out.put_u8(byte);
            break;
        }
        out.put_u8(byte | 0x80);
    }
    out.put_u16(topic_len16);
    for part in topic {
        out.put_slice(part.as_bytes());
    }
    if pkid_len > 0 {
        out.put_u16(pkid);
    }
    out.put_slice(payload);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::{PubAck, Publish, QoS};

    #[tokio::test]
    async fn reads_packets_split_anywhere_and_reports_the_end() {
        let mut wire = BytesMut::new();
        let mut p = Publish::new("devices/d/messages/events/", QoS::AtLeastOnce, "{}");
        p.pkid = 7;
        Packet::Publish(p).write(&mut wire, MAX_PACKET).unwrap();
        Packet::PubAck(PubAck::new(9))
            .write(&mut wire, MAX_PACKET)
            .unwrap();
        for cut in 0..wire.len() {
            let (a, b) = wire.split_at(cut);
            let mut rd = tokio_test_reader(a, b);
            let mut buf = BytesMut::new();
            let first = read_packet(&mut rd, &mut buf).await.unwrap();
            assert!(
                matches!(first, Some(Packet::Publish(p)) if p.pkid == 7),
                "cut {cut}"
            );
            let second = read_packet(&mut rd, &mut buf).await.unwrap();
            assert!(
                matches!(second, Some(Packet::PubAck(a)) if a.pkid == 9),
                "cut {cut}"
            );
            assert!(read_packet(&mut rd, &mut buf).await.unwrap().is_none());
        }
        let mut garbage: &[u8] = &[0xf0, 0x00];
        let err = read_packet(&mut garbage, &mut BytesMut::new()).await;
        assert!(err
            .unwrap_err()
            .to_string()
            .contains("malformed MQTT packet"));
    }

    #[tokio::test]
    async fn small_payloads_do_not_pin_the_read_buffer_and_large_ones_share_it() {
        for (size, pins) in [(1_000, false), (COPY_PAYLOAD_UP_TO + 1, true)] {
            let mut wire = BytesMut::new();
            let mut p = Publish::new("t", QoS::AtLeastOnce, vec![7u8; size]);
            p.pkid = 1;
            Packet::Publish(p).write(&mut wire, MAX_PACKET).unwrap();
            let mut rd: &[u8] = &wire;
            let mut buf = BytesMut::new();
            let Some(Packet::Publish(p)) = read_packet(&mut rd, &mut buf).await.unwrap() else {
                panic!("expected a PUBLISH");
            };
            assert_eq!(p.payload.len(), size);
            // The buffer can take the next reads in place only if nothing else holds it.
            assert_eq!(
                !buf.try_reclaim(READ_CHUNK),
                pins,
                "payload of {size} bytes"
            );
        }
    }

    #[test]
    fn next_packet_takes_whole_packets_and_leaves_a_partial_one() {
        let mut wire = BytesMut::new();
        for pkid in [1, 2] {
            Packet::PubAck(PubAck::new(pkid))
                .write(&mut wire, MAX_PACKET)
                .unwrap();
        }
        let mut p = Publish::new("t", QoS::AtLeastOnce, vec![1u8; 100]);
        p.pkid = 3;
        let mut publish = BytesMut::new();
        Packet::Publish(p).write(&mut publish, MAX_PACKET).unwrap();
        wire.extend_from_slice(&publish[..50]);
        let mut buf = wire.clone();
        let ids: Vec<u16> = std::iter::from_fn(|| match next_packet(&mut buf).unwrap() {
            Some(Packet::PubAck(a)) => Some(a.pkid),
            Some(other) => panic!("unexpected {other:?}"),
            None => None,
        })
        .collect();
        assert_eq!(ids, vec![1, 2]);
        // The partial PUBLISH stays, with room reserved for its rest.
        assert_eq!(&buf[..], &publish[..50]);
        assert!(buf.capacity() - buf.len() >= publish.len() - 50);
        buf.extend_from_slice(&publish[50..]);
        assert!(matches!(next_packet(&mut buf), Ok(Some(Packet::Publish(p))) if p.pkid == 3));
        assert!(matches!(next_packet(&mut buf), Ok(None)));
        let mut garbage = BytesMut::from(&[0xf0u8, 0x00][..]);
        assert!(next_packet(&mut garbage).is_err());
    }

    #[test]
    fn write_publish_writes_what_rumqttc_writes() {
        // Remaining lengths of one, two and three bytes; with and without a packet id.
        for (body, qos, pkid) in [
            (10, QoS::AtLeastOnce, 258),
            (300, QoS::AtLeastOnce, 1),
            (300, QoS::AtMostOnce, 0),
            (20_000, QoS::AtLeastOnce, 65_535),
        ] {
            let topic = ["devices/edge/modules/m/inputs/in/", "$.cid=c%2F1%20%26"];
            let payload = vec![b'x'; body];
            let mut publish = Publish::new(topic.concat(), qos, payload.clone());
            publish.pkid = pkid;
            let mut expected = BytesMut::new();
            Packet::Publish(publish)
                .write(&mut expected, 1 << 20)
                .unwrap();
            let mut wire = BytesMut::new();
            write_publish(&mut wire, &topic, qos, pkid, &payload, 1 << 20).unwrap();
            assert_eq!(wire, expected, "{body} bytes, {qos:?}");
            // The limit counts the whole packet; over it, nothing is written.
            let mut exact = BytesMut::new();
            assert!(write_publish(&mut exact, &topic, qos, pkid, &payload, expected.len()).is_ok());
            let mut small = BytesMut::new();
            assert!(
                write_publish(&mut small, &topic, qos, pkid, &payload, expected.len() - 1).is_err()
            );
            assert!(small.is_empty());
        }
    }

    /// A reader that returns `a` and `b` in two separate reads.
    fn tokio_test_reader<'a>(a: &'a [u8], b: &'a [u8]) -> impl AsyncRead + Unpin + 'a {
        a.chain(b)
    }
}
