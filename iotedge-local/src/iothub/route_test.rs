//! The route tester (`iotedge-local route test`): which hub routes and endpoints a message
//! would reach, as the portal's "Test route" says for one message, and for every message
//! already in the `$upstream` store.

use crate::iothub::routing::{HubRouting, MessageRef, RecordRef, Routed};
use edge_protocol::{Message, SystemProperty};
use edge_routes::MessageView;
use std::fmt::Write as _;
use std::path::Path;

/// Why a test message could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TestError {
    /// A `NAME=VALUE` pair is malformed.
    #[error("'{0}' is not NAME=VALUE")]
    Pair(String),
    /// A system property the hub does not know.
    #[error("'{0}' is not a system property routes can read (e.g. contentType, connectionDeviceId, messageId)")]
    UnknownSystemProperty(String),
    /// A query given on its own does not parse.
    #[error("the query does not parse at {0}")]
    Query(#[from] edge_routes::ParseError),
    /// The store could not be read.
    #[error("reading the upstream store {path}: {source}")]
    Store {
        /// The store.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

fn pair(text: &str) -> Result<(&str, &str), TestError> {
    text.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| TestError::Pair(text.to_owned()))
}

/// A test message: `body` as UTF-8 JSON (as the portal's test assumes, unless `system`
/// says otherwise), with application and system properties given as `NAME=VALUE`.
pub fn message(body: &str, properties: &[String], system: &[String]) -> Result<Message, TestError> {
    let mut m = Message::json(body.to_owned());
    for p in properties {
        let (k, v) = pair(p)?;
        m.set_property(k, v);
    }
    for p in system {
        let (k, v) = pair(p)?;
        let field = match SystemProperty::from_query_name(k) {
            Some(SystemProperty::MessageId) => &mut m.message_id,
            Some(SystemProperty::CorrelationId) => &mut m.correlation_id,
            Some(SystemProperty::ContentType) => &mut m.content_type,
            Some(SystemProperty::ContentEncoding) => &mut m.content_encoding,
            Some(SystemProperty::UserId) => &mut m.user_id,
            Some(SystemProperty::ConnectionDeviceId) => &mut m.connection_device_id,
            Some(SystemProperty::ConnectionModuleId) => &mut m.connection_module_id,
            Some(SystemProperty::EnqueuedTime) => &mut m.enqueued_time,
            Some(SystemProperty::OutputName) => &mut m.output_name,
            _ => return Err(TestError::UnknownSystemProperty(k.to_owned())),
        };
        *field = (!v.is_empty()).then(|| v.into());
    }
    Ok(m)
}

/// What one query says of `m`: `true`, `false`, or why it is neither (IoT Hub's routes take a
/// message only on `true`).
pub fn test_query(query: &str, m: &Message) -> Result<String, TestError> {
    let expr = edge_routes::parse_condition(query)?;
    let view = MessageRef::new(m);
    let value = edge_routes::evaluate(&expr, &view);
    Ok(if value.is_true() {
        "true: a route with this query takes the message".into()
    } else {
        format!("{value:?}: a route with this query does not take the message")
    })
}

/// The portal's "Test route" for every route of `routing`: each route's verdict, the
/// fallback route's, and the endpoints the message reaches.
pub fn explain(routing: &HubRouting, view: &dyn MessageView) -> String {
    let routed = routing.evaluate(view);
    let mut out = String::new();
    let names: Vec<&str> = routing.route_names().collect();
    let width = names
        .iter()
        .map(|n| n.len())
        .chain([routing.fallback_name().len()])
        .max()
        .unwrap_or(0);
    for (i, name) in names.iter().enumerate() {
        let verdict = if routed.routes.contains(&i) {
            "matched"
        } else {
            "no match"
        };
        let _ = writeln!(out, "{name:width$}  {verdict}");
    }
    let fallback = if routed.fallback {
        "took it (no route matched)"
    } else if routed.routes.is_empty() {
        "disabled or not matched: the message is dropped"
    } else {
        "not used (a route matched)"
    };
    let _ = writeln!(out, "{:width$}  {fallback}", routing.fallback_name());
    let endpoints: Vec<&str> = routing.names(routed.endpoints).collect();
    let _ = writeln!(
        out,
        "endpoints: {}",
        if endpoints.is_empty() {
            "none".to_owned()
        } else {
            endpoints.join(", ")
        }
    );
    out
}

/// Where the messages of a store would go under `routing`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StoreSummary {
    /// Messages read.
    pub messages: u64,
    /// Messages each route would take (the fallback route last).
    pub routes: Vec<(String, u64)>,
    /// Messages each endpoint would get.
    pub endpoints: Vec<(String, u64)>,
    /// Messages no route and no fallback would take.
    pub dropped: u64,
    /// Lines that are not records.
    pub unreadable: u64,
}

/// Routes every message of the store at `path` with `routing`; `each` sees every record's
/// sequence number with its routes and endpoints.
pub fn test_store(
    routing: &HubRouting,
    path: &Path,
    mut each: impl FnMut(u64, Vec<&str>, Vec<&str>),
) -> Result<StoreSummary, TestError> {
    let store_error = |source| TestError::Store {
        path: path.display().to_string(),
        source,
    };
    if !path.exists() {
        return Err(store_error(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no messages have reached this hub yet",
        )));
    }
    let names: Vec<String> = routing
        .route_names()
        .chain([routing.fallback_name()])
        .map(str::to_owned)
        .collect();
    let mut s = StoreSummary {
        routes: names.iter().map(|n| (n.clone(), 0)).collect(),
        endpoints: routing
            .endpoint_names()
            .iter()
            .map(|n| (n.clone(), 0))
            .collect(),
        ..StoreSummary::default()
    };
    let mut tail = hub_records::Tail::new(path);
    tail.poll_lines(|line| {
        let Ok(r) = serde_json::from_slice::<hub_records::Record>(line) else {
            s.unreadable += 1;
            return;
        };
        s.messages += 1;
        let routed: Routed = routing.evaluate(&RecordRef(&r));
        for &i in &routed.routes {
            s.routes[i].1 += 1;
        }
        if routed.fallback {
            if let Some(last) = s.routes.last_mut() {
                last.1 += 1;
            }
        }
        if routed.endpoints == 0 {
            s.dropped += 1;
        }
        for (i, e) in s.endpoints.iter_mut().enumerate() {
            if routed.endpoints & (1 << i) != 0 {
                e.1 += 1;
            }
        }
        each(
            r.seq,
            routing.route_names_of(&routed).collect(),
            routing.names(routed.endpoints).collect(),
        );
    })
    .map_err(store_error)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iothub::routing::HubConfig;

    fn tutorial() -> HubRouting {
        let config: HubConfig = serde_json::from_value(serde_json::json!({"routing": {
            "endpoints": {"storageContainers": [{"name": "ruldata", "containerName": "ruldata"}]},
            "routes": [{"name": "RulMessageRoute", "endpointNames": ["ruldata"],
                "condition": "IS_DEFINED($body.PredictedRul) AND NOT IS_DEFINED($body.OperationalSetting1)"}]
        }}))
        .unwrap();
        HubRouting::new(config).unwrap()
    }

    #[test]
    fn the_tester_says_which_route_and_endpoint_a_message_reaches() {
        let r = tutorial();
        let m = message(r#"{"PredictedRul": 12.5}"#, &[], &[]).unwrap();
        let text = explain(&r, &MessageRef::new(&m));
        assert!(text.contains("RulMessageRoute  matched"), "{text}");
        assert!(text.contains("endpoints: ruldata"), "{text}");
        // Not JSON by its system properties: $body is not read.
        let m = message(
            r#"{"PredictedRul": 12.5}"#,
            &["DeadLetter=true".into()],
            &["contentType=text/plain".into()],
        )
        .unwrap();
        let text = explain(&r, &MessageRef::new(&m));
        assert!(text.contains("took it"), "{text}");
        assert!(text.contains("endpoints: events"), "{text}");
    }

    #[test]
    fn a_query_on_its_own_says_true_or_why_not_and_an_invalid_one_where_it_breaks() {
        let m = message(r#"{"PredictedRul": 12.5}"#, &["a=b".into()], &[]).unwrap();
        assert!(test_query("$body.PredictedRul < 20 AND a = 'b'", &m)
            .unwrap()
            .starts_with("true"));
        assert!(test_query("$body.Missing < 20", &m)
            .unwrap()
            .contains("does not take"));
        let e = test_query("$body.PredictedRul <", &m)
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1, column 21"), "{e}");
        assert!(message("{}", &["novalue".into()], &[]).is_err());
        assert!(message("{}", &[], &["shoeSize=4".into()]).is_err());
    }
}
