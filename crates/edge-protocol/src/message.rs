//! The message model shared by every hop: body bytes plus system and application properties.

use bytes::Bytes;
use compact_str::CompactString;

/// A message as edgeHub and IoT Hub see it.
///
/// System properties that a sender sets (`message_id`, `correlation_id`, `content_type`,
/// `content_encoding`, ...) travel with the message; the ones the hub stamps
/// (`connection_device_id`, `connection_module_id`, `enqueued_time`) are set by the runtime.
/// Application properties keep their order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// The payload, opaque bytes.
    pub body: Bytes,
    /// `$.mid`: message id.
    pub message_id: Option<CompactString>,
    /// `$.cid`: correlation id.
    pub correlation_id: Option<CompactString>,
    /// `$.ct`: content type, e.g. `application/json`.
    pub content_type: Option<CompactString>,
    /// `$.ce`: content encoding, e.g. `utf-8`.
    pub content_encoding: Option<CompactString>,
    /// `$.uid`: user id.
    pub user_id: Option<CompactString>,
    /// `$.to`: destination.
    pub to: Option<CompactString>,
    /// `$.exp`: absolute expiry time, as sent.
    pub expiry: Option<CompactString>,
    /// `$.ctime`: creation time, as sent.
    pub creation_time: Option<CompactString>,
    /// `$.cdid`: the device that sent the message (stamped by the hub).
    pub connection_device_id: Option<CompactString>,
    /// `$.cmid`: the module that sent the message (stamped by the hub).
    pub connection_module_id: Option<CompactString>,
    /// `$.on`: the output a module sent the message to.
    pub output_name: Option<CompactString>,
    /// The input the message arrived on (from the topic, not the property bag).
    pub input_name: Option<CompactString>,
    /// `iothub-enqueuedtime`: when the hub accepted the message (RFC 3339, UTC).
    pub enqueued_time: Option<CompactString>,
    /// Application properties, in order.
    pub properties: Vec<(CompactString, CompactString)>,
}

impl Message {
    /// A message with this body and no properties.
    pub fn new(body: impl Into<Bytes>) -> Self {
        Message {
            body: body.into(),
            ..Message::default()
        }
    }

    /// A JSON message: content type `application/json`, encoding `utf-8`.
    pub fn json(body: impl Into<Bytes>) -> Self {
        Message {
            body: body.into(),
            content_type: Some(CompactString::const_new("application/json")),
            content_encoding: Some(CompactString::const_new("utf-8")),
            ..Message::default()
        }
    }

    /// The value of application property `name`, if present.
    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets application property `name`, replacing an existing value in place.
    pub fn set_property(
        &mut self,
        name: impl Into<CompactString>,
        value: impl Into<CompactString>,
    ) {
        let name = name.into();
        let value = value.into();
        match self.properties.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => self.properties.push((name, value)),
        }
    }

    /// Removes application property `name`, returning its value.
    pub fn remove_property(&mut self, name: &str) -> Option<CompactString> {
        let pos = self.properties.iter().position(|(k, _)| k == name)?;
        Some(self.properties.remove(pos).1)
    }

    /// True when the body may be read as JSON text: content type `application/json`
    /// (parameters allowed) and encoding `utf-8` (case-insensitive). This is the rule IoT Hub
    /// and edgeHub apply before evaluating `$body` in route queries.
    pub fn is_json_utf8(&self) -> bool {
        let ct_ok = self.content_type.as_deref().is_some_and(|ct| {
            ct.split(';')
                .next()
                .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
        });
        let ce_ok = self
            .content_encoding
            .as_deref()
            .is_some_and(|ce| ce.trim().eq_ignore_ascii_case("utf-8"));
        ct_ok && ce_ok
    }

    /// The value of system property `name` as the routing query language names it
    /// (without `$`, matched case-insensitively): `messageId`, `correlationId`,
    /// `contentType`, `contentEncoding`, `userId`, `to`, `connectionDeviceId`,
    /// `connectionModuleId`, `iothub-enqueuedtime`, `iothub-creation-time-utc`, ...
    pub fn system_property(&self, name: &str) -> Option<&str> {
        self.system(SystemProperty::from_query_name(name)?)
    }

    /// The value of system property `p`.
    pub fn system(&self, p: SystemProperty) -> Option<&str> {
        let field = match p {
            SystemProperty::MessageId => &self.message_id,
            SystemProperty::CorrelationId => &self.correlation_id,
            SystemProperty::ContentType => &self.content_type,
            SystemProperty::ContentEncoding => &self.content_encoding,
            SystemProperty::UserId => &self.user_id,
            SystemProperty::To => &self.to,
            SystemProperty::ConnectionDeviceId => &self.connection_device_id,
            SystemProperty::ConnectionModuleId => &self.connection_module_id,
            SystemProperty::EnqueuedTime => &self.enqueued_time,
            SystemProperty::CreationTime => &self.creation_time,
            SystemProperty::Expiry => &self.expiry,
            SystemProperty::OutputName => &self.output_name,
            SystemProperty::InputName => &self.input_name,
        };
        field.as_deref()
    }
}

/// A system property of a message, as route queries read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemProperty {
    /// `messageId`.
    MessageId,
    /// `correlationId`.
    CorrelationId,
    /// `contentType`.
    ContentType,
    /// `contentEncoding`.
    ContentEncoding,
    /// `userId`.
    UserId,
    /// `to`.
    To,
    /// `connectionDeviceId` (stamped by the hub).
    ConnectionDeviceId,
    /// `connectionModuleId` (stamped by the hub).
    ConnectionModuleId,
    /// `iothub-enqueuedtime` (stamped by the hub).
    EnqueuedTime,
    /// `iothub-creation-time-utc`.
    CreationTime,
    /// `absoluteExpiryTime`.
    Expiry,
    /// `outputName`.
    OutputName,
    /// `inputName`.
    InputName,
}

impl SystemProperty {
    /// The property a route query names `name` (without `$`, case-insensitively), with
    /// the aliases IoT Hub accepts.
    pub fn from_query_name(name: &str) -> Option<SystemProperty> {
        use SystemProperty::*;
        // The sender's identity first: routes ask for it most.
        const NAMES: [(&str, SystemProperty); 18] = [
            ("connectionModuleId", ConnectionModuleId),
            ("connectionDeviceId", ConnectionDeviceId),
            ("iothub-connection-module-id", ConnectionModuleId),
            ("iothub-connection-device-id", ConnectionDeviceId),
            ("messageId", MessageId),
            ("correlationId", CorrelationId),
            ("contentType", ContentType),
            ("contentEncoding", ContentEncoding),
            ("userId", UserId),
            ("to", To),
            ("iothub-enqueuedtime", EnqueuedTime),
            ("enqueuedTime", EnqueuedTime),
            ("iothub-creation-time-utc", CreationTime),
            ("creationTimeUtc", CreationTime),
            ("absoluteExpiryTime", Expiry),
            ("expiryTimeUtc", Expiry),
            ("outputName", OutputName),
            ("inputName", InputName),
        ];
        // Matched without allocating: routes ask for a property of every message.
        NAMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, p)| *p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_utf8_detection_follows_the_hub_rule() {
        let mut m = Message::json("{}");
        assert!(m.is_json_utf8());
        m.content_type = Some("Application/JSON; charset=utf-8".into());
        assert!(m.is_json_utf8());
        m.content_encoding = Some("utf-16".into());
        assert!(!m.is_json_utf8());
        m.content_encoding = None;
        assert!(!m.is_json_utf8());
        let m = Message::new("{}");
        assert!(!m.is_json_utf8());
    }

    #[test]
    fn properties_keep_order_and_replace_in_place() {
        let mut m = Message::new("x");
        m.set_property("b", "1");
        m.set_property("a", "2");
        m.set_property("b", "3");
        assert_eq!(
            m.properties,
            vec![("b".into(), "3".into()), ("a".into(), "2".into())]
        );
        assert_eq!(m.property("a"), Some("2"));
        assert_eq!(m.remove_property("b").as_deref(), Some("3"));
        assert_eq!(m.property("b"), None);
    }

    #[test]
    fn system_properties_are_found_case_insensitively() {
        let mut m = Message::new("x");
        m.connection_device_id = Some("dev".into());
        m.connection_module_id = Some("mod".into());
        assert_eq!(m.system_property("connectionDeviceId"), Some("dev"));
        assert_eq!(m.system_property("CONNECTIONMODULEID"), Some("mod"));
        assert_eq!(m.system_property("contentType"), None);
        assert_eq!(m.system_property("nonsense"), None);
    }

    #[test]
    fn every_query_name_reads_its_own_field() {
        let m = Message {
            message_id: Some("mid".into()),
            correlation_id: Some("cid".into()),
            content_type: Some("ct".into()),
            content_encoding: Some("ce".into()),
            user_id: Some("uid".into()),
            to: Some("to".into()),
            connection_device_id: Some("cdid".into()),
            connection_module_id: Some("cmid".into()),
            enqueued_time: Some("enq".into()),
            creation_time: Some("ctime".into()),
            expiry: Some("exp".into()),
            output_name: Some("on".into()),
            input_name: Some("in".into()),
            ..Message::new("x")
        };
        let names = [
            ("messageid", "mid"),
            ("CorrelationId", "cid"),
            ("contentType", "ct"),
            ("contentEncoding", "ce"),
            ("userId", "uid"),
            ("to", "to"),
            ("connectionDeviceId", "cdid"),
            ("iothub-connection-device-id", "cdid"),
            ("connectionModuleId", "cmid"),
            ("iothub-connection-module-id", "cmid"),
            ("iothub-enqueuedtime", "enq"),
            ("EnqueuedTime", "enq"),
            ("iothub-creation-time-utc", "ctime"),
            ("creationTimeUtc", "ctime"),
            ("absoluteExpiryTime", "exp"),
            ("expiryTimeUtc", "exp"),
            ("outputName", "on"),
            ("inputName", "in"),
        ];
        for (name, value) in names {
            assert_eq!(m.system_property(name), Some(value), "{name}");
        }
    }
}
