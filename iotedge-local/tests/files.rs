//! IoT Hub file upload end to end: the device identity from the IoT Edge config file a module
//! bind-mounts, SAS URI → blob PUT → notification, into a folder or into Azurite.

use bytes::Bytes;
use edge_client::upload::{find_connection_string, FileUploader};
use iotedge_local::iothub::files::{read_blob, BlobStore};
use iotedge_local::testing::{start_with, TestRuntime};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

fn manifest() -> Value {
    json!({"modulesContent": {
        "$edgeAgent": {"properties.desired": {"modules": {
            "writer": {"settings": {"image": "local/writer", "createOptions": {"HostConfig": {"Binds": [
                "/data/avrofiles:/avrofiles", "/etc/aziot/config.toml:/etc/aziot/config.toml:ro"]}}}}}}},
        "$edgeHub": {"properties.desired": {"routes": {}}}
    }})
}

fn azurite_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../.tools/azurite/node_modules/.bin/azurite-blob");
    assert!(
        p.exists(),
        "Azurite is not installed: run scripts/setup-node.sh"
    );
    p
}

async fn upload_and_check(t: &TestRuntime) {
    let settings = t.settings("writer");
    let cs = find_connection_string(&settings)
        .expect("the device identity is in the bind-mounted config.toml");
    assert_eq!(cs.device_id, "edge-device");
    let uploader = FileUploader::new(cs.clone(), Some(&t.rt.ca_pem)).unwrap();
    let data = Bytes::from_static(b"Obj\x01 not really avro, but bytes are bytes");
    uploader
        .upload("2026/11/21/5/15.avro", data.clone())
        .await
        .expect("upload succeeds");

    let blob = "edge-device/2026/11/21/5/15.avro";
    let stored = read_blob(&t.rt.blob_store, "avrofiles", blob, &t.rt.ca_pem)
        .await
        .unwrap();
    assert_eq!(stored, data.to_vec());
    assert_eq!(t.rt.files.uploaded.load(Ordering::Relaxed), 1);
    let notes =
        std::fs::read_to_string(t.rt.state_dir().join("files/notifications.jsonl")).unwrap();
    let note: Value = serde_json::from_str(notes.lines().next().unwrap()).unwrap();
    assert_eq!(
        (note["isSuccess"].clone(), note["blobName"].clone()),
        (json!(true), json!(blob))
    );

    // The hub refuses a device that cannot prove its identity, and nothing is stored.
    let mut forged = cs;
    forged.shared_access_key = runtime_state::new_key();
    let e = FileUploader::new(forged, Some(&t.rt.ca_pem))
        .unwrap()
        .upload("x.avro", data)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("401"), "{e}");
    assert!(read_blob(
        &t.rt.blob_store,
        "avrofiles",
        "edge-device/x.avro",
        &t.rt.ca_pem
    )
    .await
    .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_upload_into_a_folder_of_the_state() {
    let t = start_with(manifest(), |_| {}).await;
    assert!(matches!(t.rt.blob_store, BlobStore::Directory(_)));
    upload_and_check(&t).await;
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_upload_into_azurite() {
    let bin = azurite_bin();
    let t = start_with(manifest(), |o| o.azurite = Some(bin.clone())).await;
    assert!(matches!(t.rt.blob_store, BlobStore::Azurite { .. }));
    upload_and_check(&t).await;

    // Right after the upload the runtime restarts (Azurite with it): the blob is still there.
    let t = t
        .restart_with(std::time::Duration::ZERO, |o| o.azurite = Some(bin))
        .await;
    let stored = read_blob(
        &t.rt.blob_store,
        "avrofiles",
        "edge-device/2026/11/21/5/15.avro",
        &t.rt.ca_pem,
    )
    .await
    .expect("a blob uploaded just before a restart is kept");
    assert!(stored.starts_with(b"Obj\x01"));
    t.rt.shutdown().await;
}
