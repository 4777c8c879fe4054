//! What edgeHub reads from a socket: any bytes, split into MQTT packets by the project's
//! reader; each PUBLISH's topic parsed as edgeHub parses it, each CONNECT's password as a
//! SAS token. Nothing may panic, loop or allocate past the packet limit.
#![no_main]

use bytes::BytesMut;
use edge_protocol::mqtt::{Incoming, PacketReader};
use edge_protocol::{SasToken, Topic};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut reader = PacketReader::from_buf(BytesMut::from(data)).with_limit(64 * 1024);
    // Every packet ends the buffer or is refused; a reader that does neither is a loop.
    for _ in 0..=data.len() {
        match reader.next_packet() {
            Ok(Some(Incoming::Publish(p))) => {
                let _ = Topic::parse(p.topic);
            }
            Ok(Some(Incoming::Other(rumqttc_packet))) => {
                if let rumqttc::Packet::Connect(c) = rumqttc_packet {
                    if let Some(login) = c.login {
                        let _ = SasToken::parse(&login.password);
                    }
                }
            }
            Ok(Some(Incoming::PubAck(_))) => {}
            Ok(None) | Err(_) => return,
        }
    }
    panic!("the reader handed out more packets than there are bytes");
});
