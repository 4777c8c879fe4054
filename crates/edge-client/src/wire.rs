//! MQTT 3.1.1 on the wire, shared by the module client and the local edgeHub: packets are
//! read and written with rumqttc's codec (`rumqttc::mqttbytes::v4`).

use bytes::BytesMut;
use rumqttc::Packet;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest MQTT packet accepted or sent (IoT Hub's message limit is 256 KiB, plus topic).
pub const MAX_PACKET: usize = 512 * 1024;

/// Read-buffer growth step: message bodies keep parts of the buffer alive, so it is
/// reallocated rather than reused; large steps make that rare.
const READ_CHUNK: usize = 64 * 1024;

/// Reads one packet into `buf`, reading more from `rd` as needed; `Ok(None)` at end of
/// stream. Packets already in `buf` are returned without reading. Cancel-safe.
pub async fn read_packet<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
) -> std::io::Result<Option<Packet>> {
    loop {
        match Packet::read(buf, MAX_PACKET) {
            Ok(p) => return Ok(Some(p)),
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(n)) => buf.reserve(n.max(READ_CHUNK)),
            Err(e) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("malformed MQTT packet: {e}"),
                ))
            }
        }
        if rd.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
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

    /// A reader that returns `a` and `b` in two separate reads.
    fn tokio_test_reader<'a>(a: &'a [u8], b: &'a [u8]) -> impl AsyncRead + Unpin + 'a {
        a.chain(b)
    }
}
