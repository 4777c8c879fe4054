//! A route or condition text as a deployment manifest (or a route tester) gives it: parsed
//! with IoT Hub's query language, and a condition that parses evaluated against a message
//! whose body is the same bytes read as JSON. Errors, never panics or unbounded recursion.
#![no_main]

use edge_routes::{evaluate, parse_condition, parse_route, MessageView};
use libfuzzer_sys::fuzz_target;
use std::borrow::Cow;

struct Fuzzed {
    body: Option<serde_json::Value>,
}

impl MessageView for Fuzzed {
    fn system_property(&self, name: &str) -> Option<Cow<'_, str>> {
        name.eq_ignore_ascii_case("connectionDeviceId")
            .then_some(Cow::Borrowed("Client_001"))
    }
    fn application_property(&self, name: &str) -> Option<Cow<'_, str>> {
        (name == "Origin").then_some(Cow::Borrowed("probe"))
    }
    fn body(&self) -> Option<&serde_json::Value> {
        self.body.as_ref()
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let msg = Fuzzed {
        body: serde_json::from_slice(data).ok(),
    };
    if let Ok(route) = parse_route(text) {
        let _ = route.matches("/messages/modules/sender/outputs/out", &msg);
    }
    if let Ok(expr) = parse_condition(text) {
        let _ = evaluate(&expr, &msg);
    }
});
