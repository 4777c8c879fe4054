//! A message as edgeHub holds it between a client's PUBLISH and its sinks: the property bag
//! it delivers (the sender's bag with the hub's stamps, see
//! [`edge_protocol::properties::restamp`]) and the body. Module queues, the journal and
//! deliveries use the bag as it is; the properties are decoded only for whoever reads them
//! (a route condition, the `$upstream` store), at most once.

use bytes::Bytes;
use edge_protocol::{properties, Message};
use std::sync::OnceLock;

/// A message taken by the hub: delivered bag, body, and its properties decoded on demand.
#[derive(Debug)]
pub struct HubMessage {
    bag: String,
    body: Bytes,
    decoded: OnceLock<Message>,
}

impl HubMessage {
    /// A message whose delivered property bag is `bag`.
    pub fn new(bag: String, body: Bytes) -> HubMessage {
        HubMessage {
            bag,
            body,
            decoded: OnceLock::new(),
        }
    }

    /// The property bag as the hub delivers it (hub stamps included).
    pub fn bag(&self) -> &str {
        &self.bag
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The message with its properties decoded (once, by whichever reader asks first).
    pub fn message(&self) -> &Message {
        self.decoded.get_or_init(|| {
            let mut m = properties::decode(&self.bag);
            m.body = self.body.clone();
            m
        })
    }
}

impl From<Message> for HubMessage {
    /// A message with its stamps already set (tests, replays): its bag is encoded now.
    fn from(m: Message) -> HubMessage {
        let bag = properties::encode(&m, properties::Direction::FromHub);
        let body = m.body.clone();
        HubMessage {
            bag,
            body,
            decoded: OnceLock::from(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_are_decoded_from_the_bag_with_the_body() {
        let h = HubMessage::new(
            "$.cid=c%2F1&Kind=x&$.cdid=edge&iothub-enqueuedtime=t".into(),
            Bytes::from_static(b"{}"),
        );
        let m = h.message();
        assert_eq!(m.correlation_id.as_deref(), Some("c/1"));
        assert_eq!(m.property("Kind"), Some("x"));
        assert_eq!(m.connection_device_id.as_deref(), Some("edge"));
        assert_eq!(m.enqueued_time.as_deref(), Some("t"));
        assert_eq!(m.body, Bytes::from_static(b"{}"));
    }

    #[test]
    fn a_stamped_message_gets_a_bag_that_decodes_to_it() {
        let mut m = Message::json("{}");
        m.correlation_id = Some("c1".into());
        m.connection_device_id = Some("edge".into());
        m.set_property("Kind", "a b/ü");
        let h = HubMessage::from(m.clone());
        // The bag carries every field: decoded again, with the body, it is the message.
        let mut decoded = properties::decode(h.bag());
        decoded.body = h.body().clone();
        assert_eq!(decoded, m);
    }
}
