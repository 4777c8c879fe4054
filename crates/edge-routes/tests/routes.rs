//! Route statements: the tutorial's routes, sinks, sources, matching, printing.

mod common;

use common::Msg;
use edge_routes::{
    parse_condition, parse_route, source_matches, BinaryOp, Expr, Function, Route, Sink,
};
use serde_json::json;

const ROUTE_DEVICE_INPUT: &str = r#"FROM /messages/* WHERE NOT IS_DEFINED($connectionModuleId) INTO BrokeredEndpoint("/modules/turbofanRouter/inputs/deviceInput")"#;
const ROUTE_RUL_INPUT: &str = r#"FROM /messages/modules/turbofanRulClassifier/outputs/amlOutput INTO BrokeredEndpoint("/modules/turbofanRouter/inputs/rulInput")"#;
const ROUTE_HUB_OUTPUT: &str =
    "FROM /messages/modules/turboFanRouter/outputs/hubOutput INTO $upstream";
const ROUTE_LOW_RUL: &str = "FROM /messages/modules/turbofanRouter/outputs/* WHERE $body.PredictedRul < 100 AND DeadLetter <> 'true' INTO $upstream";

fn route(text: &str) -> Route {
    parse_route(text).unwrap_or_else(|e| panic!("{text:?} does not parse: {e}"))
}

fn module(module: &str, input: &str) -> Sink {
    Sink::Module {
        module: module.to_string(),
        input: input.to_string(),
    }
}

/// Telemetry straight from a leaf device.
fn leaf_message() -> Msg {
    Msg::new()
        .sys("connectionDeviceId", "turbofan-leaf")
        .body(json!({"CycleTime": 1, "OperationalSetting1": -0.0007}))
}

/// A message some module sent on one of its outputs.
fn module_message(module: &str) -> Msg {
    Msg::new()
        .sys("connectionDeviceId", "edge-device")
        .sys("connectionModuleId", module)
}

#[test]
fn device_input_route_parses() {
    let r = route(ROUTE_DEVICE_INPUT);
    assert_eq!(r.source, "/messages/*");
    assert_eq!(
        r.condition,
        Some(Expr::Not(Box::new(Expr::Call {
            func: Function::IsDefined,
            args: vec![Expr::SystemProperty("connectionModuleId".into())],
        })))
    );
    assert_eq!(r.sink, module("turbofanRouter", "deviceInput"));
}

#[test]
fn device_input_route_takes_leaf_messages_only() {
    let r = route(ROUTE_DEVICE_INPUT);
    assert!(r.matches("/messages/events", &leaf_message()));
    assert!(!r.matches(
        "/messages/modules/turbofanRouter/outputs/classOutput",
        &module_message("turbofanRouter")
    ));
    // Even on a device-looking source, a module id present means no match.
    assert!(!r.matches("/messages/events", &module_message("x")));
}

#[test]
fn rul_input_route_parses_and_matches_only_aml_output() {
    let r = route(ROUTE_RUL_INPUT);
    assert_eq!(
        r.source,
        "/messages/modules/turbofanRulClassifier/outputs/amlOutput"
    );
    assert_eq!(r.condition, None);
    assert_eq!(r.sink, module("turbofanRouter", "rulInput"));
    let msg = module_message("turbofanRulClassifier");
    assert!(r.matches(
        "/messages/modules/turbofanRulClassifier/outputs/amlOutput",
        &msg
    ));
    assert!(!r.matches(
        "/messages/modules/turbofanRulClassifier/outputs/classOutput",
        &msg
    ));
    assert!(!r.matches("/messages/events", &leaf_message()));
}

#[test]
fn hub_output_route_source_is_case_insensitive() {
    let r = route(ROUTE_HUB_OUTPUT);
    assert_eq!(
        r.source,
        "/messages/modules/turboFanRouter/outputs/hubOutput"
    );
    assert_eq!(r.condition, None);
    assert_eq!(r.sink, Sink::Upstream);
    let msg = module_message("turbofanRouter");
    assert!(r.matches("/messages/modules/turbofanRouter/outputs/hubOutput", &msg));
    assert!(!r.matches("/messages/modules/turbofanRouter/outputs/avroOutput", &msg));
}

#[test]
fn low_rul_route_parses() {
    let r = route(ROUTE_LOW_RUL);
    assert_eq!(r.source, "/messages/modules/turbofanRouter/outputs/*");
    assert_eq!(r.sink, Sink::Upstream);
    assert_eq!(
        r.condition,
        Some(parse_condition("($body.PredictedRul < 100) AND (DeadLetter <> 'true')").unwrap())
    );
    let Some(Expr::Binary { op, .. }) = &r.condition else {
        panic!("condition is not binary: {:?}", r.condition);
    };
    assert_eq!(*op, BinaryOp::And);
}

#[test]
fn low_rul_route_filters_on_body_and_property() {
    let r = route(ROUTE_LOW_RUL);
    let source = "/messages/modules/turbofanRouter/outputs/classOutput";
    let low = module_message("turbofanRouter")
        .app("DeadLetter", "false")
        .body(json!({"PredictedRul": 42.0}));
    assert!(r.matches(source, &low));

    let high = module_message("turbofanRouter")
        .app("DeadLetter", "false")
        .body(json!({"PredictedRul": 150.0}));
    assert!(!r.matches(source, &high));

    let dead = module_message("turbofanRouter")
        .app("DeadLetter", "true")
        .body(json!({"PredictedRul": 42.0}));
    assert!(!r.matches(source, &dead));

    // Missing DeadLetter: `undefined <> 'true'` is undefined, so no match.
    let no_flag = module_message("turbofanRouter").body(json!({"PredictedRul": 42.0}));
    assert!(!r.matches(source, &no_flag));

    // Body not JSON (no parsed body): undefined, so no match.
    let no_body = module_message("turbofanRouter").app("DeadLetter", "false");
    assert!(!r.matches(source, &no_body));

    // Right module but a different source module: pattern does not cover it.
    assert!(!r.matches("/messages/modules/other/outputs/classOutput", &low));
}

#[test]
fn source_matching_rules() {
    assert!(source_matches("/*", "/messages/events"));
    assert!(source_matches("/*", "/twinChangeNotifications"));
    assert!(source_matches("/messages/*", "/messages/events"));
    assert!(source_matches(
        "/messages/*",
        "/messages/modules/m/outputs/o"
    ));
    assert!(!source_matches("/messages/*", "/twinChangeNotifications"));
    assert!(source_matches(
        "/messages/modules/m/outputs/*",
        "/messages/modules/m/outputs/o"
    ));
    assert!(!source_matches(
        "/messages/modules/m/outputs/*",
        "/messages/modules/n/outputs/o"
    ));
    assert!(source_matches(
        "/messages/modules/turboFanRouter/outputs/hubOutput",
        "/messages/modules/turbofanRouter/outputs/hubOutput"
    ));
    assert!(source_matches("/MESSAGES/*", "/messages/events"));
    assert!(!source_matches(
        "/messages/modules/turbofanRulClassifier/outputs/amlOutput",
        "/messages/modules/turbofanRulClassifier/outputs/classOutput"
    ));
    // Only one trailing star is stripped; the rest is a plain prefix.
    assert!(source_matches(
        "/messages/modules/turbo*",
        "/messages/modules/turbofanRouter/outputs/o"
    ));
    assert!(!source_matches("/messages/events/more", "/messages/events"));
    assert!(source_matches("", "/anything"));
    // Non-ASCII in the source does not panic.
    assert!(!source_matches("/mé", "/m"));
    assert!(!source_matches("/messages/é", "/messages/e"));
}

#[test]
fn route_without_condition_matches_any_message_on_its_source() {
    let r = route("FROM /* INTO $upstream");
    assert!(r.matches("/messages/events", &Msg::new()));
    assert!(r.matches("/anything", &leaf_message()));
}

#[test]
fn condition_must_be_exactly_true() {
    let msg = Msg::new();
    assert!(route("FROM /* WHERE true INTO $upstream").matches("/m", &msg));
    for cond in ["false", "undefined", "null", "1", "'true'", "missing"] {
        let r = route(&format!("FROM /* WHERE {cond} INTO $upstream"));
        assert!(!r.matches("/m", &msg), "{cond}");
    }
}

#[test]
fn keywords_and_sinks_ignore_case_and_spacing() {
    let r = route(
        "  from\t/messages/*\n where\tIS_DEFINED($x)   into\n\nbrokeredendpoint ( '/modules/a/inputs/b' )  ",
    );
    assert_eq!(r.source, "/messages/*");
    assert_eq!(r.sink, module("a", "b"));
    assert_eq!(route("FROM /* INTO $UpStream").sink, Sink::Upstream);
    assert_eq!(
        route(r#"FROM /* INTO BROKEREDENDPOINT("/modules/m/inputs/i")"#).sink,
        module("m", "i")
    );
}

#[test]
fn select_star_prefix_is_accepted() {
    let r = route("SELECT * FROM /messages/* INTO $upstream");
    assert_eq!(r, route("FROM /messages/* INTO $upstream"));
    assert_eq!(r.to_string(), "FROM /messages/* INTO $upstream");
}

#[test]
fn other_source_paths() {
    assert_eq!(
        route("FROM /twinChangeNotifications INTO $upstream").source,
        "/twinChangeNotifications"
    );
    assert_eq!(route("FROM /* INTO $upstream").source, "/*");
}

#[test]
fn route_display_is_canonical_and_reparses() {
    for (input, canonical) in [
        (ROUTE_DEVICE_INPUT, ROUTE_DEVICE_INPUT),
        (ROUTE_RUL_INPUT, ROUTE_RUL_INPUT),
        (ROUTE_HUB_OUTPUT, ROUTE_HUB_OUTPUT),
        (ROUTE_LOW_RUL, ROUTE_LOW_RUL),
        (
            "from /* where a=1 into $UPSTREAM",
            "FROM /* WHERE a = 1 INTO $upstream",
        ),
        (
            "FROM /* INTO brokeredEndpoint('/modules/m/inputs/i')",
            r#"FROM /* INTO BrokeredEndpoint("/modules/m/inputs/i")"#,
        ),
    ] {
        let r = route(input);
        assert_eq!(r.to_string(), canonical, "{input}");
        assert_eq!(route(&r.to_string()), r);
    }
}

#[test]
fn sink_display_escapes_quotes() {
    let sink = module("we\"ird", "in\\put");
    let text = format!("FROM /* INTO {sink}");
    assert_eq!(
        text,
        r#"FROM /* INTO BrokeredEndpoint("/modules/we\"ird/inputs/in\\put")"#
    );
    assert_eq!(route(&text).sink, sink);
}

#[test]
fn from_str_parses_routes() {
    let r: Route = ROUTE_HUB_OUTPUT.parse().unwrap();
    assert_eq!(r.sink, Sink::Upstream);
}
