//! `turbofan_domain::ports` against the routes of `deployment.template.json`: the same edges,
//! no more, no fewer (module names compared as edgeHub compares route sources: ignoring ASCII
//! case, which the tutorial's `turboFanRouter` relies on).

use edge_routes::{parse_route, Sink as RouteSink};
use std::collections::BTreeSet;
use turbofan_domain::ports::{Sink, EDGES, LEAF_INPUT};

type Edge = (String, String, String);

fn key(module: &str, port: &str, sink: &str) -> Edge {
    (
        module.to_ascii_lowercase(),
        port.to_string(),
        sink.to_string(),
    )
}

fn sink_text(module: &str, input: &str) -> String {
    format!("{}/{input}", module.to_ascii_lowercase())
}

fn manifest_edges() -> BTreeSet<Edge> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deployment.template.json"
    );
    let text = std::fs::read_to_string(path).expect("deployment.template.json at the repo root");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("the manifest is JSON");
    let routes = doc["modulesContent"]["$edgeHub"]["properties.desired"]["routes"]
        .as_object()
        .expect("the manifest has edgeHub routes");
    let mut edges = BTreeSet::new();
    for (name, route) in routes {
        let text = route.as_str().expect("a route is a string");
        let r = parse_route(text).unwrap_or_else(|e| panic!("route {name}: {e}"));
        let sink = match &r.sink {
            RouteSink::Upstream => "$upstream".to_string(),
            RouteSink::Module { module, input } => sink_text(module, input),
        };
        let edge = match r.source.strip_prefix("/messages/modules/") {
            Some(rest) => {
                let (module, output) = rest
                    .split_once("/outputs/")
                    .unwrap_or_else(|| panic!("route {name}: source {} names no output", r.source));
                key(module, output, &sink)
            }
            None => {
                assert_eq!(r.source, "/messages/*", "route {name}");
                assert!(
                    r.condition.is_some(),
                    "route {name}: leaf route without its condition"
                );
                key("<leaf devices>", "", &sink)
            }
        };
        edges.insert(edge);
    }
    edges
}

#[test]
fn the_ports_are_the_manifest_s_routes() {
    let mut ours: BTreeSet<Edge> = EDGES
        .iter()
        .map(|((m, o), s)| {
            let sink = match s {
                Sink::Upstream => "$upstream".to_string(),
                Sink::Module(m, i) => sink_text(m, i),
            };
            key(m, o, &sink)
        })
        .collect();
    ours.insert(key(
        "<leaf devices>",
        "",
        &sink_text(LEAF_INPUT.0, LEAF_INPUT.1),
    ));
    assert_eq!(ours, manifest_edges());
}

#[test]
fn the_manifest_runs_exactly_the_pipeline_s_modules_each_with_a_folder() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let text = std::fs::read_to_string(format!("{root}/deployment.template.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let manifest: BTreeSet<String> = doc["modulesContent"]["$edgeAgent"]["properties.desired"]
        ["modules"]
        .as_object()
        .expect("the manifest has modules")
        .keys()
        .cloned()
        .collect();
    let ours: BTreeSet<String> = turbofan_domain::ports::MODULES
        .iter()
        .map(|m| m.to_string())
        .collect();
    assert_eq!(manifest, ours);
    // scripts/modules.sh finds each module by its folder's module.json.
    for m in turbofan_domain::ports::MODULES {
        assert!(
            std::path::Path::new(&format!("{root}/modules/{m}/module.json")).is_file(),
            "modules/{m}/module.json"
        );
    }
}
