//! IoT Hub file upload end to end: the device identity from the IoT Edge config file a module
//! bind-mounts, SAS URI → blob PUT → notification, into a folder or into Azurite.

use bytes::Bytes;
use cloud_upload::upload::{block_id, block_list_xml, BLOCK_BYTES};
use cloud_upload::{find_connection_string, FileUploader};
use edge_protocol::file_upload::{
    self, ErrorBody, SasUri, SasUriRequest, API_VERSION, TOO_MANY_ACTIVE_UPLOADS,
};
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
    let cs = find_connection_string(|p| settings.container_path(p))
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
    assert!(
        matches!(e, cloud_upload::Error::Unauthorized { .. }) && e.to_string().contains("401"),
        "{e}"
    );
    assert!(read_blob(
        &t.rt.blob_store,
        "avrofiles",
        "edge-device/x.avro",
        &t.rt.ca_pem
    )
    .await
    .is_err());
    a_large_file_goes_up_in_blocks(t).await;
    // Last: it leaves the device with IoT Hub's 10 uploads in progress.
    a_sas_writes_its_one_blob_only(t).await;
}

/// A file over the block size (a 5-minute Avro file at 2,000 msg/s is ~120 MB) goes up as
/// blocks, read from disk one at a time, and reads back whole.
async fn a_large_file_goes_up_in_blocks(t: &TestRuntime) {
    let cs = find_connection_string(|p| t.settings("writer").container_path(p)).unwrap();
    let uploader = FileUploader::new(cs, Some(&t.rt.ca_pem)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.avro");
    let data: Vec<u8> = (0..2 * BLOCK_BYTES + 12_345)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    std::fs::write(&path, &data).unwrap();
    uploader
        .upload_file("big.avro", &path)
        .await
        .expect("uploaded in blocks");
    let stored = read_blob(
        &t.rt.blob_store,
        "avrofiles",
        "edge-device/big.avro",
        &t.rt.ca_pem,
    )
    .await
    .unwrap();
    assert!(
        stored == data,
        "the blob reads back as the file ({} bytes)",
        stored.len()
    );
}

/// The SAS a device gets writes the one blob it asked for: not another of its own, not
/// another device's; and a device may have only IoT Hub's 10 uploads in progress.
async fn a_sas_writes_its_one_blob_only(t: &TestRuntime) {
    let cs = find_connection_string(|p| t.settings("writer").container_path(p)).unwrap();
    let http = iotedge_local::iothub::files::https_client(&t.rt.ca_pem).unwrap();
    let token = edge_protocol::sas::make_token(
        &edge_protocol::sas::resource_uri(&cs.host_name, &cs.device_id, None),
        &cs.shared_access_key,
        u64::try_from(chrono::Utc::now().timestamp()).unwrap() + 600,
    )
    .unwrap();
    let ask = |name: &str| {
        http.post(format!(
            "https://{}{}?api-version={API_VERSION}",
            cs.host_name,
            file_upload::sas_uri_path(&cs.device_id)
        ))
        .header("authorization", token.clone())
        .header("content-type", "application/json")
        .body(
            serde_json::to_vec(&SasUriRequest {
                blob_name: name.to_owned(),
            })
            .unwrap(),
        )
        .send()
    };
    let sas: SasUri =
        serde_json::from_slice(&ask("one.avro").await.unwrap().bytes().await.unwrap()).unwrap();
    let put = |blob: String| {
        let url = format!(
            "https://{}/{}/{blob}{}",
            sas.host_name, sas.container_name, sas.sas_token
        );
        http.put(url)
            .header("x-ms-blob-type", "BlockBlob")
            .body("data")
            .send()
    };
    let own = put(sas.blob_name.clone()).await.unwrap();
    assert!(own.status().is_success(), "{}", own.status());
    // A block list naming a block that was never uploaded is refused; the blob stays.
    let bogus = http
        .put(format!(
            "{}{}&comp=blocklist",
            sas.blob_url(),
            sas.sas_token
        ))
        .body(block_list_xml(&[block_id(7)]))
        .send()
        .await
        .unwrap();
    assert_eq!(
        bogus.status().as_u16(),
        400,
        "{}",
        bogus.text().await.unwrap()
    );
    let kept = read_blob(&t.rt.blob_store, "avrofiles", &sas.blob_name, &t.rt.ca_pem)
        .await
        .unwrap();
    assert_eq!(kept, b"data");
    for other in ["edge-device/other.avro", "another-device/one.avro"] {
        let r = put(other.to_owned()).await.unwrap();
        assert_eq!(
            r.status().as_u16(),
            403,
            "{other}: {}",
            r.text().await.unwrap()
        );
        assert!(
            read_blob(&t.rt.blob_store, "avrofiles", other, &t.rt.ca_pem)
                .await
                .is_err()
        );
    }
    // One in progress; nine more may be, the eleventh is refused.
    for n in 0..9 {
        let r = ask(&format!("more-{n}.avro")).await.unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    }
    let r = ask("eleventh.avro").await.unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let refusal: ErrorBody = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(refusal.error_code, Some(TOO_MANY_ACTIVE_UPLOADS));
    // The uploader reads that refusal as "come back later", not as a wrong key.
    let e = FileUploader::new(cs, Some(&t.rt.ca_pem))
        .unwrap()
        .upload("twelfth.avro", Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, cloud_upload::Error::Unavailable { .. }) && e.is_retryable(),
        "{e}"
    );
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
