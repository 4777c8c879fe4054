//! The blob-store upload targets against a real Azurite (the Azure Storage emulator), started
//! strict (API version checked, no loose mode) as the Blob service a device would talk to:
//! - the storage-account target (`AVRO_UPLOAD_STORAGE_CONNECTION_STRING`), over plain HTTP as
//!   to the "Azure Blob Storage on IoT Edge" module and over HTTPS, creating its container
//!   and refusing cleanly with a wrong key;
//! - the container SAS URL target (`AVRO_UPLOAD_CONTAINER_SAS_URL`) with a service SAS made
//!   from the account key.
//!
//! Blobs are read back by separate requests (Shared Key GET, or iotedge-local's account SAS
//! reader) and compared byte for byte.

use avro_file_writer::upload::{
    UploadError, UploadTarget, Uploader, CONTAINER_SAS_VAR, CONTAINER_VAR,
    STORAGE_CONNECTION_STRING_VAR,
};
use cloud_upload::blob::{escape_path, StorageAccount, BLOB_API_VERSION};
use iotedge_local::iothub::files::{
    https_client, read_blob, BlobStore, AZURITE_ACCOUNT, AZURITE_KEY,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Another valid key: the account does not have it.
const WRONG_KEY: &str = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ==";

/// Azurite's blob service on a free port of 127.0.0.1, its data in a temporary folder;
/// killed when dropped.
struct Azurite {
    _child: tokio::process::Child,
    port: u16,
    dir: tempfile::TempDir,
}

fn launcher() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../.tools/azurite/node_modules/.bin/azurite-blob");
    assert!(
        p.exists(),
        "Azurite is not installed ({}): run scripts/setup-node.sh",
        p.display()
    );
    p
}

impl Azurite {
    /// Starts Azurite, serving HTTPS with `cert` and `key` when given.
    async fn start(tls: Option<(&Path, &Path)>) -> Azurite {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.path().join("azurite.log")).unwrap();
        let mut cmd = tokio::process::Command::new(launcher());
        cmd.args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .arg("--location")
            .arg(dir.path().join("data"));
        if let Some((cert, key)) = tls {
            cmd.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        let child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("starting Azurite");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "Azurite did not listen within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Azurite {
            _child: child,
            port,
            dir,
        }
    }

    /// `{scheme}://127.0.0.1:{port}/devstoreaccount1`, the emulator's account URL.
    fn endpoint(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}/{AZURITE_ACCOUNT}", self.port)
    }

    fn connection_string(&self, scheme: &str, key: &str) -> String {
        format!(
            "DefaultEndpointsProtocol={scheme};BlobEndpoint={};AccountName={AZURITE_ACCOUNT};AccountKey={key};",
            self.endpoint(scheme)
        )
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("azurite.log")).unwrap_or_default()
    }
}

fn vars(pairs: Vec<(&'static str, String)>) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<&str, String> = pairs.into_iter().collect();
    move |k| map.get(k).cloned()
}

/// Every byte value, then some text: what is read back must be these bytes exactly.
fn sample(tag: &str) -> Vec<u8> {
    let mut data: Vec<u8> = (0..=255u8).collect();
    data.extend_from_slice(format!("Obj\x01 {tag} ").repeat(500).as_bytes());
    data
}

/// Writes `data` to a file in `dir` and uploads it through `target` as `blob`.
async fn upload(
    target: &UploadTarget,
    dir: &Path,
    blob: &str,
    data: &[u8],
) -> Result<(), UploadError> {
    let path = dir.join(blob.replace('/', "_"));
    std::fs::write(&path, data).unwrap();
    target.upload(&path, blob).await
}

/// A Shared Key request for `path` under the account (e.g. `container/blob`), sent as is.
async fn shared_key(
    az: &Azurite,
    method: &str,
    path: &str,
    query: Option<&str>,
) -> (u16, Option<String>, Vec<u8>) {
    let account =
        StorageAccount::from_connection_string(&az.connection_string("http", AZURITE_KEY)).unwrap();
    let mut url = account.url(path).unwrap();
    url.set_query(query);
    let http = https_client("").unwrap();
    let mut request = http.request(method.parse().unwrap(), url).build().unwrap();
    account.authorize(&mut request).unwrap();
    let r = http.execute(request).await.unwrap();
    let code = r
        .headers()
        .get("x-ms-error-code")
        .map(|v| v.to_str().unwrap().to_owned());
    (r.status().as_u16(), code, r.bytes().await.unwrap().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_storage_account_target_stores_blobs_over_http_and_creates_its_container() {
    let az = Azurite::start(None).await;
    let files = tempfile::tempdir().unwrap();
    let target = UploadTarget::storage_from_vars(
        vars(vec![
            (
                STORAGE_CONNECTION_STRING_VAR,
                az.connection_string("http", AZURITE_KEY),
            ),
            (CONTAINER_VAR, "engines".into()),
            ("IOTEDGE_DEVICEID", "edge-7".into()),
        ]),
        "",
    )
    .unwrap()
    .expect("a storage-account target");
    assert!(matches!(target, UploadTarget::Account(..)), "{target:?}");

    // The container does not exist yet: the first upload creates it.
    let (status, code, _) = shared_key(&az, "GET", "engines", Some("restype=container")).await;
    assert_eq!((status, code.as_deref()), (404, Some("ContainerNotFound")));
    let data = sample("first");
    upload(&target, files.path(), "2026/11/21/5/15.avro", &data)
        .await
        .unwrap_or_else(|e| panic!("{e}\nAzurite log:\n{}", az.log()));
    let (status, _, stored) =
        shared_key(&az, "GET", "engines/edge-7/2026/11/21/5/15.avro", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        stored, data,
        "the blob reads back byte for byte, under the device id"
    );

    // The container goes away while the uploader runs: the next upload creates it again.
    let (status, _, _) = shared_key(&az, "DELETE", "engines", Some("restype=container")).await;
    assert_eq!(status, 202);
    let again = sample("second");
    upload(&target, files.path(), "2026/11/21/5/20.avro", &again)
        .await
        .unwrap_or_else(|e| panic!("{e}\nAzurite log:\n{}", az.log()));
    let (status, _, stored) =
        shared_key(&az, "GET", "engines/edge-7/2026/11/21/5/20.avro", None).await;
    assert_eq!((status, stored), (200, again));

    // A wrong key is refused with the service's reason, and nothing is stored. Azure
    // answers a bad Shared Key signature 403 AuthenticationFailed; Azurite 3.35 answers 403
    // AuthorizationFailure with the same "Server failed to authenticate the request" text.
    let forged = UploadTarget::storage_from_vars(
        vars(vec![(
            STORAGE_CONNECTION_STRING_VAR,
            az.connection_string("http", WRONG_KEY),
        )]),
        "",
    )
    .unwrap()
    .unwrap();
    let e = upload(&forged, files.path(), "x/forged.avro", b"forged")
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(
        matches!(
            e,
            UploadError::Refused {
                source: cloud_upload::Error::Unauthorized { .. },
                ..
            }
        ),
        "{text}"
    );
    assert!(
        text.contains("403")
            && (text.contains("(AuthenticationFailed)") || text.contains("(AuthorizationFailure)"))
            && text.contains("failed to authenticate")
            && text.contains("check the AccountKey"),
        "{text}"
    );
    assert!(
        !text.contains(WRONG_KEY) && !text.contains(AZURITE_KEY),
        "{text}"
    );
    let (status, _, _) = shared_key(&az, "GET", "avrofiles/x/forged.avro", None).await;
    assert_eq!(status, 404);
}

/// A container service SAS (`sr=c`) for version [`BLOB_API_VERSION`]; its string-to-sign is
/// the one documented for versions 2015-04-05 to 2018-11-08:
/// `sp\nst\nse\n/blob/{account}/{container}\nsi\nsip\nspr\nsv\nrscc\nrscd\nrsce\nrscl\nrsct`.
fn container_sas(key: &str, container: &str, permissions: &str) -> String {
    let expiry = chrono::Utc::now() + chrono::Duration::hours(1);
    let se = expiry.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let to_sign = format!(
        "{permissions}\n\n{se}\n/blob/{AZURITE_ACCOUNT}/{container}\n\n\nhttps\n{BLOB_API_VERSION}\n\n\n\n\n"
    );
    let sig = cloud_upload::blob::sign(key, &to_sign).unwrap();
    format!(
        "sv={BLOB_API_VERSION}&sr=c&sp={permissions}&se={}&spr=https&sig={}",
        escape_path(&se),
        escape_path(&sig)
    )
}

/// The container SAS target for Azurite's `avrofiles` over https, its create+write SAS signed
/// with `key`.
fn sas_target(az: &Azurite, key: &str, ca_pem: &str) -> UploadTarget {
    let url = format!(
        "{}/avrofiles?{}",
        az.endpoint("https"),
        container_sas(key, "avrofiles", "cw")
    );
    UploadTarget::storage_from_vars(vars(vec![(CONTAINER_SAS_VAR, url)]), ca_pem)
        .unwrap()
        .expect("a container SAS target")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sas_and_account_targets_store_blobs_over_https() {
    let certs = tempfile::tempdir().unwrap();
    let tls =
        iotedge_local::workload::certs::load_or_create(certs.path(), &["localhost".to_owned()])
            .unwrap();
    let (cert, key) = (
        certs.path().join("server.pem"),
        certs.path().join("server.key"),
    );
    let az = Azurite::start(Some((&cert, &key))).await;
    let store = BlobStore::Azurite {
        host: format!("127.0.0.1:{}/{AZURITE_ACCOUNT}", az.port),
    };
    let files = tempfile::tempdir().unwrap();

    // The storage-account target over HTTPS, trusting the runtime's CA; it creates
    // `avrofiles`, the default container.
    let account = UploadTarget::storage_from_vars(
        vars(vec![(
            STORAGE_CONNECTION_STRING_VAR,
            az.connection_string("https", AZURITE_KEY),
        )]),
        &tls.ca_pem,
    )
    .unwrap()
    .unwrap();
    let data = sample("account over https");
    upload(&account, files.path(), "2026/11/21/6/0.avro", &data)
        .await
        .unwrap_or_else(|e| panic!("{e}\nAzurite log:\n{}", az.log()));
    let stored = read_blob(&store, "avrofiles", "2026/11/21/6/0.avro", &tls.ca_pem)
        .await
        .unwrap();
    assert_eq!(stored, data);

    // The container SAS target, with a create+write service SAS for that container.
    let sas = sas_target(&az, AZURITE_KEY, &tls.ca_pem);
    assert!(matches!(sas, UploadTarget::Container(..)), "{sas:?}");
    assert!(!sas.describe().contains("sig="), "{}", sas.describe());
    let data = sample("sas");
    upload(&sas, files.path(), "2026/11/21/6/5.avro", &data)
        .await
        .unwrap_or_else(|e| panic!("{e}\nAzurite log:\n{}", az.log()));
    let stored = read_blob(&store, "avrofiles", "2026/11/21/6/5.avro", &tls.ca_pem)
        .await
        .unwrap();
    assert_eq!(stored, data);

    // A SAS signed with another key is refused, and nothing is stored.
    let forged = sas_target(&az, WRONG_KEY, &tls.ca_pem);
    let e = upload(&forged, files.path(), "x/forged.avro", b"forged")
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(
        matches!(
            e,
            UploadError::Refused {
                source: cloud_upload::Error::Unauthorized { .. },
                ..
            }
        ) && text.contains("403"),
        "{text}"
    );
    assert!(!text.contains("sig="), "{text}");
    assert!(read_blob(&store, "avrofiles", "x/forged.avro", &tls.ca_pem)
        .await
        .is_err());
}
