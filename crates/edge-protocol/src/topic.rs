//! The MQTT topic scheme of IoT Hub and edgeHub.
//!
//! | who publishes | topic |
//! |---|---|
//! | device, telemetry | `devices/{d}/messages/events/{bag}` |
//! | module, to an output | `devices/{d}/modules/{m}/messages/events/{bag}` (bag has `$.on`) |
//! | hub, to a module input | `devices/{d}/modules/{m}/inputs/{input}/{bag}` |
//! | client, twin read | `$iothub/twin/GET/?$rid={rid}` |
//! | client, reported patch | `$iothub/twin/PATCH/properties/reported/?$rid={rid}` |
//! | hub, twin response | `$iothub/twin/res/{status}/?$rid={rid}[&$version={v}]` |
//! | hub, desired patch | `$iothub/twin/PATCH/properties/desired/?$version={v}` |

use crate::message::Message;
use crate::properties::{self, Direction};

/// A topic that a client publishes to (parsed by the hub) or that the hub publishes to
/// (parsed by a client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topic<'a> {
    /// Device telemetry: `devices/{device}/messages/events/{bag}`.
    DeviceEvents {
        /// Sending device.
        device: &'a str,
        /// Raw property bag.
        bag: &'a str,
    },
    /// Module output: `devices/{device}/modules/{module}/messages/events/{bag}`.
    ModuleEvents {
        /// Edge device of the module.
        device: &'a str,
        /// Sending module.
        module: &'a str,
        /// Raw property bag.
        bag: &'a str,
    },
    /// Delivery to a module input: `devices/{device}/modules/{module}/inputs/{input}/{bag}`.
    ModuleInput {
        /// Edge device of the module.
        device: &'a str,
        /// Receiving module.
        module: &'a str,
        /// Input name.
        input: &'a str,
        /// Raw property bag.
        bag: &'a str,
    },
    /// Twin read request.
    TwinGet {
        /// Request id.
        rid: String,
    },
    /// Reported-properties patch request.
    TwinPatchReported {
        /// Request id.
        rid: String,
    },
    /// Response to a twin request.
    TwinResponse {
        /// HTTP-like status (200, 204, 4xx…).
        status: u16,
        /// Request id it answers.
        rid: String,
        /// New reported version, on a patch response.
        version: Option<u64>,
    },
    /// Desired-properties patch pushed by the hub.
    TwinDesiredPatch {
        /// Desired version after the patch.
        version: Option<u64>,
    },
    /// A direct method call to the client: `$iothub/methods/POST/{method}/?$rid={rid}`.
    MethodRequest {
        /// The method's name.
        method: &'a str,
        /// Request id, to answer with.
        rid: String,
    },
    /// The client's answer to a method call: `$iothub/methods/res/{status}/?$rid={rid}`.
    MethodResponse {
        /// The method's status (200, 404…), chosen by the client.
        status: u16,
        /// Request id it answers.
        rid: String,
    },
}

/// A topic that does not follow the scheme.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("topic '{topic}' is not an IoT Hub/edgeHub topic: {reason}")]
pub struct TopicError {
    /// The offending topic.
    pub topic: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .trim_start_matches('?')
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
}

impl<'a> Topic<'a> {
    /// Parses a topic.
    pub fn parse(topic: &'a str) -> Result<Topic<'a>, TopicError> {
        let err = |reason| TopicError {
            topic: topic.to_owned(),
            reason,
        };
        if let Some(rest) = topic.strip_prefix("$iothub/twin/") {
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            let path = path.trim_end_matches('/');
            let rid = || query_param(query, "$rid").ok_or_else(|| err("missing $rid"));
            let version = query_param(query, "$version").and_then(|v| v.parse().ok());
            return match path {
                "GET" => Ok(Topic::TwinGet { rid: rid()? }),
                "PATCH/properties/reported" => Ok(Topic::TwinPatchReported { rid: rid()? }),
                "PATCH/properties/desired" => Ok(Topic::TwinDesiredPatch { version }),
                _ => match path.strip_prefix("res/") {
                    Some(status) => Ok(Topic::TwinResponse {
                        status: status.parse().map_err(|_| err("bad twin status"))?,
                        rid: rid()?,
                        version,
                    }),
                    None => Err(err("unknown twin operation")),
                },
            };
        }
        if let Some(rest) = topic.strip_prefix("$iothub/methods/") {
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            let path = path.trim_end_matches('/');
            let rid = query_param(query, "$rid").ok_or_else(|| err("missing $rid"))?;
            if let Some(method) = path.strip_prefix("POST/") {
                if method.is_empty() || method.contains('/') {
                    return Err(err("bad method name"));
                }
                return Ok(Topic::MethodRequest { method, rid });
            }
            return match path.strip_prefix("res/") {
                Some(status) => Ok(Topic::MethodResponse {
                    status: status.parse().map_err(|_| err("bad method status"))?,
                    rid,
                }),
                None => Err(err("unknown method operation")),
            };
        }
        let rest = topic
            .strip_prefix("devices/")
            .ok_or_else(|| err("expected 'devices/' or '$iothub/twin/'"))?;
        let (device, rest) = split_at_slash(rest).ok_or_else(|| err("no device id"))?;
        if device.is_empty() {
            return Err(err("empty device id"));
        }
        if let Some(bag) = strip_with_bag(rest, "messages/events") {
            return Ok(Topic::DeviceEvents { device, bag });
        }
        let rest = rest
            .strip_prefix("modules/")
            .ok_or_else(|| err("expected 'messages/events' or 'modules/'"))?;
        let (module, rest) = split_at_slash(rest).ok_or_else(|| err("no module id"))?;
        if module.is_empty() {
            return Err(err("empty module id"));
        }
        if let Some(bag) = strip_with_bag(rest, "messages/events") {
            return Ok(Topic::ModuleEvents {
                device,
                module,
                bag,
            });
        }
        if let Some(rest) = rest.strip_prefix("inputs/") {
            let (input, bag) = split_at_slash(rest).unwrap_or((rest, ""));
            if input.is_empty() {
                return Err(err("empty input name"));
            }
            return Ok(Topic::ModuleInput {
                device,
                module,
                input,
                bag,
            });
        }
        Err(err("unknown module topic"))
    }
}

/// `s` split around its first `/` (a byte scan: the names before it are short, and a `/`
/// is ASCII, so the position is a character boundary).
fn split_at_slash(s: &str) -> Option<(&str, &str)> {
    let i = s.bytes().position(|b| b == b'/')?;
    Some((&s[..i], &s[i + 1..]))
}

/// `messages/events` followed by nothing, `/`, or `/{bag}`.
fn strip_with_bag<'a>(rest: &'a str, prefix: &str) -> Option<&'a str> {
    let after = rest.strip_prefix(prefix)?;
    if after.is_empty() {
        Some("")
    } else {
        after.strip_prefix('/')
    }
}

/// Topic for a module sending `message` to the output named by its `output_name` (`$.on`).
pub fn module_output(device: &str, module: &str, message: &Message) -> String {
    let mut t = joined(
        &["devices/", device, "/modules/", module, "/messages/events/"],
        BAG_ROOM,
    );
    properties::encode_into(&mut t, message, Direction::ToHub);
    t
}

/// Topic for device telemetry.
pub fn device_events(device: &str, message: &Message) -> String {
    let mut t = joined(&["devices/", device, "/messages/events/"], BAG_ROOM);
    properties::encode_into(&mut t, message, Direction::ToHub);
    t
}

/// Room left after a topic prefix for a typical property bag (ids, content type, a few
/// application properties), so that encoding it seldom reallocates.
const BAG_ROOM: usize = 256;

/// `parts` concatenated into a string with `spare` more bytes of capacity: one allocation,
/// where `format!` would grow the string as it goes (topics are built for every message).
fn joined(parts: &[&str], spare: usize) -> String {
    let mut t = String::with_capacity(parts.iter().map(|p| p.len()).sum::<usize>() + spare);
    for p in parts {
        t.push_str(p);
    }
    t
}

/// The pieces of `devices/{device}/modules/{module}/inputs/{input}/{bag}`, for writers that
/// put a topic together where it goes (edgeHub writes each delivery's topic straight into
/// the connection's buffer).
pub fn module_input_parts<'a>(
    device: &'a str,
    module: &'a str,
    input: &'a str,
    bag: &'a str,
) -> [&'a str; 8] {
    [
        "devices/",
        device,
        "/modules/",
        module,
        "/inputs/",
        input,
        "/",
        bag,
    ]
}

/// `devices/{device}/modules/{module}/inputs/{input}/`, with room for a bag of `bag_room`.
fn module_input_prefix(device: &str, module: &str, input: &str, bag_room: usize) -> String {
    joined(&module_input_parts(device, module, input, ""), bag_room)
}

/// Topic for the hub delivering `message` to a module input.
pub fn module_input(device: &str, module: &str, input: &str, message: &Message) -> String {
    let mut t = module_input_prefix(device, module, input, BAG_ROOM);
    properties::encode_into(&mut t, message, Direction::FromHub);
    t
}

/// Like [`module_input`], with the message's property bag (`Direction::FromHub`) already
/// encoded.
pub fn module_input_with_bag(device: &str, module: &str, input: &str, bag: &str) -> String {
    joined(&module_input_parts(device, module, input, bag), 0)
}

/// The filter a module subscribes to for all its inputs.
pub fn module_inputs_filter(device: &str, module: &str) -> String {
    format!("devices/{device}/modules/{module}/inputs/#")
}

/// Filter for twin responses.
pub const TWIN_RESPONSES_FILTER: &str = "$iothub/twin/res/#";
/// Filter for desired-property patches.
pub const TWIN_DESIRED_FILTER: &str = "$iothub/twin/PATCH/properties/desired/#";
/// Filter for direct method requests.
pub const METHODS_FILTER: &str = "$iothub/methods/POST/#";

/// A direct method call to `method`.
pub fn method_request(method: &str, rid: &str) -> String {
    format!("$iothub/methods/POST/{method}/?$rid={rid}")
}

/// The answer to method call `rid`.
pub fn method_response(status: u16, rid: &str) -> String {
    format!("$iothub/methods/res/{status}/?$rid={rid}")
}

/// Topic of a twin read request.
pub fn twin_get(rid: &str) -> String {
    format!("$iothub/twin/GET/?$rid={rid}")
}

/// Topic of a reported-properties patch.
pub fn twin_patch_reported(rid: &str) -> String {
    format!("$iothub/twin/PATCH/properties/reported/?$rid={rid}")
}

/// Topic of a twin response.
pub fn twin_response(status: u16, rid: &str, version: Option<u64>) -> String {
    match version {
        Some(v) => format!("$iothub/twin/res/{status}/?$rid={rid}&$version={v}"),
        None => format!("$iothub/twin/res/{status}/?$rid={rid}"),
    }
}

/// Topic of a desired-properties patch.
pub fn twin_desired_patch(version: u64) -> String {
    format!("$iothub/twin/PATCH/properties/desired/?$version={version}")
}

/// MQTT topic-filter match (`+` one level, `#` the rest), as a broker applies it.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_topics_round_trip_and_bad_ones_are_refused() {
        let t = method_request("ping", "7");
        assert_eq!(t, "$iothub/methods/POST/ping/?$rid=7");
        assert_eq!(
            Topic::parse(&t).unwrap(),
            Topic::MethodRequest {
                method: "ping",
                rid: "7".into()
            }
        );
        assert_eq!(
            Topic::parse(&method_response(404, "7")).unwrap(),
            Topic::MethodResponse {
                status: 404,
                rid: "7".into()
            }
        );
        assert!(filter_matches(METHODS_FILTER, &t));
        assert!(
            Topic::parse("$iothub/methods/POST/ping/").is_err(),
            "no $rid"
        );
        assert!(Topic::parse("$iothub/methods/res/ok/?$rid=1").is_err());
        assert!(Topic::parse("$iothub/methods/POST//?$rid=1").is_err());
    }

    #[test]
    fn parses_client_topics() {
        assert_eq!(
            Topic::parse("devices/Client_001/messages/events/$.ct=application%2Fjson"),
            Ok(Topic::DeviceEvents {
                device: "Client_001",
                bag: "$.ct=application%2Fjson"
            })
        );
        assert_eq!(
            Topic::parse("devices/Client_001/messages/events"),
            Ok(Topic::DeviceEvents {
                device: "Client_001",
                bag: ""
            })
        );
        assert_eq!(
            Topic::parse("devices/edge/modules/router/messages/events/$.on=x"),
            Ok(Topic::ModuleEvents {
                device: "edge",
                module: "router",
                bag: "$.on=x"
            })
        );
        assert_eq!(
            Topic::parse("devices/edge/modules/router/inputs/rulInput/a=1"),
            Ok(Topic::ModuleInput {
                device: "edge",
                module: "router",
                input: "rulInput",
                bag: "a=1"
            })
        );
        assert_eq!(
            Topic::parse("$iothub/twin/GET/?$rid=7"),
            Ok(Topic::TwinGet { rid: "7".into() })
        );
        assert_eq!(
            Topic::parse("$iothub/twin/PATCH/properties/reported/?$rid=abc&$version=3"),
            Ok(Topic::TwinPatchReported { rid: "abc".into() })
        );
        assert_eq!(
            Topic::parse("$iothub/twin/res/204/?$rid=abc&$version=3"),
            Ok(Topic::TwinResponse {
                status: 204,
                rid: "abc".into(),
                version: Some(3)
            })
        );
        assert_eq!(
            Topic::parse("$iothub/twin/PATCH/properties/desired/?$version=9"),
            Ok(Topic::TwinDesiredPatch { version: Some(9) })
        );
    }

    #[test]
    fn rejects_foreign_topics() {
        for t in [
            "foo/bar",
            "devices//messages/events",
            "devices/d/modules//messages/events",
            "devices/d/modules/m/outputs/x",
            "devices/d/modules/m/inputs/",
            "$iothub/twin/GET/",
            "$iothub/twin/DELETE/?$rid=1",
            "$iothub/twin/res/abc/?$rid=1",
        ] {
            assert!(Topic::parse(t).is_err(), "{t} should be rejected");
        }
    }

    #[test]
    fn builds_topics_that_parse_back() {
        let mut m = Message::json("{}");
        m.correlation_id = Some("c 1".into());
        m.properties.push(("k".into(), "v/w".into()));
        m.output_name = Some("classOutput".into());
        let t = module_output("edge", "router", &m);
        let Ok(Topic::ModuleEvents { bag, .. }) = Topic::parse(&t) else {
            panic!("{t}")
        };
        let back = properties::decode(bag);
        assert_eq!(back.output_name.as_deref(), Some("classOutput"));
        assert_eq!(back.correlation_id.as_deref(), Some("c 1"));
        assert_eq!(back.property("k"), Some("v/w"));
        m.connection_device_id = Some("edge".into());
        let delivered = module_input("edge", "classifier", "amlInput", &m);
        assert_eq!(
            delivered,
            module_input_with_bag(
                "edge",
                "classifier",
                "amlInput",
                &properties::encode(&m, Direction::FromHub)
            )
        );
        let Ok(Topic::ModuleInput { input, bag, .. }) = Topic::parse(&delivered) else {
            panic!("{delivered}")
        };
        assert_eq!(input, "amlInput");
        assert_eq!(
            properties::decode(bag).connection_device_id.as_deref(),
            Some("edge")
        );
        assert_eq!(
            twin_response(200, "1", None),
            "$iothub/twin/res/200/?$rid=1"
        );
    }

    #[test]
    fn filters_match_like_a_broker() {
        assert!(filter_matches(
            "devices/d/modules/m/inputs/#",
            "devices/d/modules/m/inputs/in1/a=b"
        ));
        assert!(filter_matches(
            "$iothub/twin/res/#",
            "$iothub/twin/res/200/?$rid=1"
        ));
        assert!(filter_matches("a/+/c", "a/b/c"));
        assert!(!filter_matches("a/+/c", "a/b/d"));
        assert!(!filter_matches(
            "devices/d/modules/m/inputs/#",
            "devices/d/modules/other/inputs/in1/"
        ));
    }
}
