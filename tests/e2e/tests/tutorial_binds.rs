//! The tutorial's own binds for the Avro writer: `/etc/iotedge:/app/iotconfig`, where IoT
//! Edge 1.0/1.1 kept `config.yaml` with the device connection string. The writer finds the
//! device identity there, as the tutorial's writer did, and its files upload through IoT Hub.

use e2e::pipeline::{self, wait_for};
use e2e::run::{replay, start_connected};
use e2e::{Uploads, WRITER};
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_tutorial_s_binds_the_writer_finds_config_yaml_and_uploads() {
    let mut manifest = pipeline::deployment_manifest(&[]).unwrap();
    manifest["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"][WRITER]["settings"]
        ["createOptions"]["HostConfig"]["Binds"] =
        json!(["/data/avrofiles:/avrofiles", "/etc/iotedge:/app/iotconfig"]);
    let p = start_connected(&manifest, false, |_| {}).await;
    let target = wait_for(
        "the writer's upload target",
        Duration::from_secs(30),
        || {
            let t = p.reported(WRITER)["UploadTarget"].clone();
            Ok((!t.is_null()).then_some(t))
        },
    )
    .await
    .expect("the writer reports an upload target: IoT Hub, from /app/iotconfig/config.yaml");
    assert!(
        target.to_string().to_lowercase().contains("iot hub")
            || target.to_string().contains("/devices/"),
        "{target}"
    );

    replay(&p, 2, 5, 50.0).await;
    let mut uploads = Uploads::default();
    for _ in 0..600 {
        p.collect_uploads(&mut uploads).await.unwrap();
        if uploads.records().count() >= 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        uploads.records().count(),
        10,
        "every row archived and uploaded through IoT Hub"
    );
    p.shutdown().await;
}
