//! IoT Hub's message routing on the local hub, with the tutorial's routes: RUL messages into
//! storage endpoint `ruldata`, telemetry rows into `turbofanDeviceStorage`. The real pipeline
//! (three modules, Azurite) runs; leaf telemetry also reaches the hub through an edgeHub
//! route, as the tutorial's devices sent it before the edge part. The endpoints' blobs are
//! read back from Azurite with Apache Avro and with fastavro.

use anyhow::{bail, Context, Result};
use e2e::pipeline::{self, repo_root, wait_for};
use e2e::run::{replay, start_connected};
use e2e::Pipeline;
use hub_records::routed::{decode, read_blob_log, BlobWritten, RoutedMessage};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

const DEVICES: usize = 5;
const ROWS: u64 = 10;

fn tutorial_hub() -> Value {
    json!({
        "name": "turbofan-hub",
        "partitionCount": 2,
        "routing": {
            "endpoints": {"storageContainers": [
                {"name": "ruldata", "containerName": "ruldata", "encoding": "avro",
                 "batchFrequencyInSeconds": 1},
                {"name": "turbofanDeviceStorage", "containerName": "devicedata",
                 "encoding": "json", "batchFrequencyInSeconds": 1}
            ]},
            "routes": [
                {"name": "RulMessageRoute", "source": "DeviceMessages", "endpointNames": ["ruldata"],
                 "condition": "IS_DEFINED($body.PredictedRul) AND NOT IS_DEFINED($body.OperationalSetting1)",
                 "isEnabled": true},
                {"name": "turbofanDeviceDataToStorage", "source": "DeviceMessages",
                 "endpointNames": ["turbofanDeviceStorage"],
                 "condition": "IS_DEFINED($body.OperationalSetting1)", "isEnabled": true}
            ]
        }
    })
}

/// Every message in `endpoint`'s blobs, read from the blob store, with the blob log.
async fn endpoint_messages(
    p: &Pipeline,
    endpoint: &str,
) -> Result<(Vec<BlobWritten>, Vec<RoutedMessage>)> {
    let log = read_blob_log(&runtime_state::layout::endpoint_blob_log(
        p.state(),
        endpoint,
    ))?;
    let mut messages = Vec::new();
    for b in &log {
        let bytes = iotedge_local::iothub::files::read_blob(
            &p.rt.blob_store,
            &b.container,
            &b.blob,
            &p.rt.ca_pem,
        )
        .await?;
        let read = decode(&bytes, b.encoding).with_context(|| format!("blob {}", b.blob))?;
        if read.len() as u64 != b.messages {
            bail!(
                "blob {} holds {} messages, its log says {}",
                b.blob,
                read.len(),
                b.messages
            );
        }
        messages.extend(read);
    }
    Ok((log, messages))
}

/// fastavro's reading of Avro blobs, copied out of the store: `{file: {schema, fields, bodies}}`.
async fn fastavro(dir: &Path, blobs: &[(String, Vec<u8>)]) -> Result<BTreeMap<String, Value>> {
    let mut files = Vec::new();
    for (i, (_, bytes)) in blobs.iter().enumerate() {
        let f = dir.join(format!("routed-{i}.avro"));
        std::fs::write(&f, bytes)?;
        files.push(f);
    }
    let out = tokio::process::Command::new(repo_root().join(".venv/bin/python"))
        .arg(repo_root().join("tests/avro/read_routed.py"))
        .args(&files)
        .output()
        .await
        .context("running tests/avro/read_routed.py (scripts/setup-python.sh installs fastavro)")?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tutorial_s_routes_put_rul_messages_in_ruldata_and_telemetry_in_its_own_container() {
    let config_dir = tempfile::tempdir().unwrap();
    let hub_config = config_dir.path().join("hub.json");
    std::fs::write(&hub_config, tutorial_hub().to_string()).unwrap();
    let mut manifest = pipeline::deployment_manifest(&[]).unwrap();
    manifest["modulesContent"]["$edgeHub"]["properties.desired"]["routes"]["leafToHub"] =
        json!("FROM /messages/* WHERE NOT IS_DEFINED($connectionModuleId) INTO $upstream");
    let p = start_connected(&manifest, true, |o| o.hub_config = Some(hub_config.clone())).await;
    let sent = replay(&p, DEVICES, ROWS, 50.0).await;
    let sent_cids: BTreeSet<String> = sent.iter().map(|s| s.correlation_id.clone()).collect();

    // Every RUL message reaches the hub; then both endpoints have written everything.
    let ruls = wait_for(
        "a RUL message for every row",
        Duration::from_secs(60),
        || {
            let o = p.upstream()?;
            Ok((o.ruls.len() == sent.len()).then_some(o.ruls))
        },
    )
    .await
    .unwrap();
    let mut in_ruldata = Vec::new();
    let mut rul_blobs = Vec::new();
    let mut telemetry = Vec::new();
    for _ in 0..300 {
        let (l, m) = endpoint_messages(&p, "ruldata").await.unwrap();
        let (_, t) = endpoint_messages(&p, "turbofanDeviceStorage")
            .await
            .unwrap();
        (rul_blobs, in_ruldata, telemetry) = (l, m, t);
        if in_ruldata.len() >= sent.len() && telemetry.len() >= sent.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // ruldata: exactly the RUL messages, each once, bodies as the router sent them.
    let ids: Vec<String> = in_ruldata
        .iter()
        .map(|m| {
            let body = m.body_json().expect("a JSON body");
            assert!(
                body.get("PredictedRul").is_some() && body.get("OperationalSetting1").is_none()
            );
            assert_eq!(m.system_properties["connectionModuleId"], "turbofanRouter");
            body["CorrelationId"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), sent.len(), "one record per RUL message");
    assert_eq!(ids.iter().cloned().collect::<BTreeSet<_>>(), sent_cids);
    let predicted: BTreeMap<String, f64> = ruls
        .iter()
        .map(|r| (r.correlation_id.clone(), r.predicted_rul))
        .collect();
    for m in &in_ruldata {
        let body = m.body_json().unwrap();
        let cid = body["CorrelationId"].as_str().unwrap();
        assert_eq!(
            body["PredictedRul"].as_f64(),
            predicted.get(cid).copied(),
            "{cid}"
        );
    }
    // Blob names: IoT Hub's default format, the hub's name and a partition < 2.
    for b in &rul_blobs {
        let parts: Vec<&str> = b.blob.split('/').collect();
        assert_eq!(parts.len(), 7, "{}", b.blob);
        assert_eq!(parts[0], "turbofan-hub");
        assert!(parts[1] == "0" || parts[1] == "1", "{}", b.blob);
    }

    // turbofanDeviceStorage: the telemetry rows (JSON encoding), none of the RUL messages.
    assert_eq!(telemetry.len(), sent.len());
    assert!(telemetry.iter().all(|m| m
        .body_json()
        .is_some_and(|b| b.get("OperationalSetting1").is_some())));

    // The store says the same per record, and nothing went to the built-in endpoint.
    let store = runtime_state::layout::upstream_store(p.state());
    let routing = iotedge_local::iothub::routing::HubRouting::new(
        iotedge_local::iothub::routing::HubConfig::read(&hub_config).unwrap(),
    )
    .unwrap();
    let s = iotedge_local::iothub::route_test::test_store(&routing, &store, |_, _, _| {}).unwrap();
    assert_eq!(s.messages, 2 * sent.len() as u64);
    assert_eq!(s.routes[0], ("RulMessageRoute".into(), sent.len() as u64));
    assert_eq!(
        s.routes[1],
        ("turbofanDeviceDataToStorage".into(), sent.len() as u64)
    );
    assert_eq!(s.endpoints[0], ("events".into(), 0));

    // fastavro reads every ruldata blob whole, with IoT Hub's schema, and finds the bodies.
    let mut copies = Vec::new();
    for b in &rul_blobs {
        let bytes = iotedge_local::iothub::files::read_blob(
            &p.rt.blob_store,
            &b.container,
            &b.blob,
            &p.rt.ca_pem,
        )
        .await
        .unwrap();
        copies.push((b.blob.clone(), bytes));
    }
    let read = fastavro(p.dir(), &copies)
        .await
        .expect("fastavro reads the blobs");
    let mut bodies = 0;
    for v in read.values() {
        assert_eq!(v["schema"], "Microsoft.Azure.Devices.Message");
        assert_eq!(
            v["fields"],
            json!(["EnqueuedTimeUtc", "Properties", "SystemProperties", "Body"])
        );
        for body in v["bodies"].as_array().unwrap() {
            let body: Value = serde_json::from_str(body.as_str().unwrap()).unwrap();
            assert!(sent_cids.contains(body["CorrelationId"].as_str().unwrap()));
            bodies += 1;
        }
    }
    assert_eq!(bodies, sent.len());
    p.shutdown().await;
}

#[tokio::test]
async fn an_invalid_route_stops_the_start_with_its_name_and_position() {
    let config_dir = tempfile::tempdir().unwrap();
    let hub_config = config_dir.path().join("hub.json");
    let mut config = tutorial_hub();
    config["routing"]["routes"][0]["condition"] = json!("IS_DEFINED($body.PredictedRul) AND NOT");
    std::fs::write(&hub_config, config.to_string()).unwrap();
    let manifest = pipeline::deployment_manifest(&[]).unwrap();
    let e = Pipeline::start_with(&manifest, false, |o| {
        o.hub_config = Some(hub_config.clone());
        o.start_modules = false;
    })
    .await
    .err()
    .expect("the runtime refuses to start");
    let e = format!("{e:#}");
    assert!(e.contains("route 'RulMessageRoute'"), "{e}");
    assert!(e.contains("line 1, column 39"), "{e}");
}
