//! Azure Blob Storage with a storage account's key: files stored as block blobs, each request
//! signed with Shared Key authorization. This serves the "Azure Blob Storage on IoT Edge"
//! module on the same device as well as a cloud storage account, and needs no IoT Hub
//! identity (IoT Hub file upload works for device identities only, not for modules).
//!
//! - [`StorageAccount::from_connection_string`] reads an Azure Storage connection string:
//!   `AccountName`, `AccountKey`, and either `BlobEndpoint` (e.g.
//!   `http://azureblobstorageoniotedge:11002/{account}`) or `DefaultEndpointsProtocol=https`
//!   with `EndpointSuffix` (default `core.windows.net`). `http://` is accepted only with an
//!   explicit `BlobEndpoint`.
//! - [`string_to_sign`] and [`StorageAccount::authorize`] implement Shared Key: HMAC-SHA256,
//!   with the base64-decoded key, over the verb, the standard headers, the `x-ms-*` headers
//!   and `/{account}{url path}` with the query parameters.
//! - [`AccountUploader`] creates its container if needed (`PUT ?restype=container`) and
//!   `PUT`s each file as a block blob.
//!
//! Requests carry `x-ms-version` [`BLOB_API_VERSION`], the Blob REST version documented for
//! Blob Storage on IoT Edge.

use crate::upload::Uploaded;
use crate::Error;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Request, Url};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

/// The Blob service REST version sent as `x-ms-version` (the one Microsoft documents for
/// Azure Blob Storage on IoT Edge; newer ones are refused by some of its versions).
pub const BLOB_API_VERSION: &str = "2017-04-17";
/// Cloud endpoints' suffix when the connection string names none.
pub const DEFAULT_ENDPOINT_SUFFIX: &str = "core.windows.net";
/// The account every Azurite (the Azure Storage emulator) has (public, documented by
/// Microsoft).
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
/// Azurite's well-known account key.
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// The largest blob one Put Blob takes at [`BLOB_API_VERSION`] (256 MiB).
pub const MAX_PUT_BLOB_BYTES: usize = 256 * 1024 * 1024;

/// Characters escaped in a blob name's URL path: all but letters, digits, `-._~` and `/`.
const PATH_ESCAPES: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// A blob path as it goes into a URL: every character but letters, digits, `-._~` and `/`
/// percent-encoded (a device id may hold `#`, `?` or `%`).
pub fn escape_path(path: &str) -> String {
    utf8_percent_encode(path, PATH_ESCAPES).to_string()
}

/// What is wrong with a storage connection string. Messages never include the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionStringError {
    /// A required setting is absent.
    #[error("the storage connection string has no {0}=…")]
    Missing(&'static str),
    /// A `;`-separated part is not `Name=value`.
    #[error("part {0} of the storage connection string is not Name=value")]
    Malformed(usize),
    /// A setting's value holds `AccountKey=` (the `;` before it missing); not shown.
    #[error("the storage connection string's {0} value contains AccountKey=…: is a ';' missing before it?")]
    KeyInValue(String),
    /// The account key does not decode.
    #[error("the storage connection string's AccountKey is not valid base64")]
    KeyNotBase64,
    /// The account name cannot be one.
    #[error("the storage connection string's AccountName '{0}' is not letters and digits")]
    BadAccountName(String),
    /// `DefaultEndpointsProtocol` is neither `http` nor `https`.
    #[error(
        "DefaultEndpointsProtocol must be https (or http with an explicit BlobEndpoint), not '{0}'"
    )]
    BadProtocol(String),
    /// Plain HTTP without an explicit endpoint (a cloud account over HTTP).
    #[error("DefaultEndpointsProtocol=http needs an explicit BlobEndpoint=http://… (the Blob Storage module on the device); cloud endpoints are https")]
    HttpWithoutEndpoint,
    /// `BlobEndpoint` is not an http(s) URL without query.
    #[error("BlobEndpoint '{0}' is not an http:// or https:// URL without query")]
    BadEndpoint(String),
    /// A kind of connection string this client does not sign with.
    #[error("{0} connection strings are not supported: give AccountName, AccountKey and BlobEndpoint (or EndpointSuffix)")]
    Unsupported(&'static str),
}

/// A storage account: its name, key and blob endpoint.
#[derive(Clone)]
pub struct StorageAccount {
    name: String,
    key: String,
    endpoint: Url,
}

impl std::fmt::Debug for StorageAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "StorageAccount({} at {})",
            self.name,
            self.blob_endpoint()
        )
    }
}

/// The connection string's settings, names matched without regard to case.
fn settings(text: &str) -> Result<BTreeMap<String, String>, ConnectionStringError> {
    let mut map = BTreeMap::new();
    for field in edge_protocol::connection_string::fields(text) {
        let (name, value) = field.map_err(|bad| ConnectionStringError::Malformed(bad.position))?;
        if value.to_ascii_lowercase().contains("accountkey=") {
            return Err(ConnectionStringError::KeyInValue(name.to_owned()));
        }
        map.insert(name.to_ascii_lowercase(), value.to_owned());
    }
    Ok(map)
}

/// `BlobEndpoint` checked: http(s), a host, no query or fragment.
fn explicit_endpoint(text: &str) -> Result<Url, ConnectionStringError> {
    let bad = || ConnectionStringError::BadEndpoint(text.to_owned());
    let url = Url::parse(text).map_err(|_| bad())?;
    let scheme_ok = matches!(url.scheme(), "http" | "https");
    if !scheme_ok || !url.has_host() || url.query().is_some() || url.fragment().is_some() {
        return Err(bad());
    }
    Ok(url)
}

impl StorageAccount {
    /// Reads an Azure Storage connection string (`AccountName=…;AccountKey=…;` and
    /// `BlobEndpoint=…` or `DefaultEndpointsProtocol=https;EndpointSuffix=…`).
    pub fn from_connection_string(text: &str) -> Result<StorageAccount, ConnectionStringError> {
        let s = settings(text)?;
        if s.contains_key("usedevelopmentstorage") {
            return Err(ConnectionStringError::Unsupported("UseDevelopmentStorage"));
        }
        let name = s
            .get("accountname")
            .filter(|n| !n.is_empty())
            .ok_or(ConnectionStringError::Missing("AccountName"))?;
        if !name.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(ConnectionStringError::BadAccountName(name.clone()));
        }
        let key = match s.get("accountkey").filter(|k| !k.is_empty()) {
            Some(k) => k,
            None if s.contains_key("sharedaccesssignature") => {
                return Err(ConnectionStringError::Unsupported("SharedAccessSignature"))
            }
            None => return Err(ConnectionStringError::Missing("AccountKey")),
        };
        if B64.decode(key).map_or(true, |k| k.is_empty()) {
            return Err(ConnectionStringError::KeyNotBase64);
        }
        let protocol = s
            .get("defaultendpointsprotocol")
            .map_or("https".to_owned(), |p| p.to_ascii_lowercase());
        if !matches!(protocol.as_str(), "http" | "https") {
            return Err(ConnectionStringError::BadProtocol(protocol));
        }
        let endpoint = match s.get("blobendpoint").filter(|e| !e.is_empty()) {
            Some(e) => explicit_endpoint(e)?,
            None if protocol == "http" => return Err(ConnectionStringError::HttpWithoutEndpoint),
            None => {
                let suffix = s
                    .get("endpointsuffix")
                    .filter(|x| !x.is_empty())
                    .map_or(DEFAULT_ENDPOINT_SUFFIX, |x| x.as_str());
                let text = format!("https://{name}.blob.{suffix}");
                explicit_endpoint(&text)?
            }
        };
        Ok(StorageAccount {
            name: name.clone(),
            key: key.clone(),
            endpoint,
        })
    }

    /// Azurite's well-known account at `blob_endpoint` (e.g.
    /// `https://127.0.0.1:10000/devstoreaccount1`).
    pub fn azurite(blob_endpoint: &str) -> Result<StorageAccount, ConnectionStringError> {
        StorageAccount::from_connection_string(&format!(
            "AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};BlobEndpoint={blob_endpoint}"
        ))
    }

    /// The account name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The blob endpoint, without a trailing `/` (e.g. `http://host:11002/account`).
    pub fn blob_endpoint(&self) -> &str {
        self.endpoint.as_str().trim_end_matches('/')
    }

    /// The URL of `path` (e.g. `container/blob`, escaped here) under the blob endpoint.
    pub fn url(&self, path: &str) -> Result<Url, Error> {
        let escaped = escape_path(path.trim_start_matches('/'));
        let text = format!("{}/{escaped}", self.blob_endpoint());
        Url::parse(&text).map_err(|e| Error::Config(format!("{text}: {e}")))
    }

    /// Signs `request` with the account key: sets `x-ms-date` and `x-ms-version`
    /// ([`BLOB_API_VERSION`]) unless present, `Content-Length` from an in-memory body, and
    /// `Authorization: SharedKey {account}:{signature}`.
    pub fn authorize(&self, request: &mut Request) -> Result<(), Error> {
        let length = request.body().and_then(|b| b.as_bytes()).map(<[u8]>::len);
        let headers = request.headers_mut();
        if let Some(n) = length {
            headers
                .entry(reqwest::header::CONTENT_LENGTH)
                .or_insert(HeaderValue::from(n));
        }
        let date = HeaderValue::try_from(httpdate::fmt_http_date(SystemTime::now()))
            .map_err(|e| Error::Config(format!("x-ms-date: {e}")))?;
        headers
            .entry(HeaderName::from_static("x-ms-date"))
            .or_insert(date);
        headers
            .entry(HeaderName::from_static("x-ms-version"))
            .or_insert(HeaderValue::from_static(BLOB_API_VERSION));
        let text = string_to_sign(
            &self.name,
            request.method(),
            request.headers(),
            request.url(),
        );
        let signature = sign(&self.key, &text)?;
        let value = HeaderValue::try_from(format!("SharedKey {}:{signature}", self.name))
            .map_err(|e| Error::Config(format!("authorization: {e}")))?;
        request
            .headers_mut()
            .insert(reqwest::header::AUTHORIZATION, value);
        Ok(())
    }
}

/// A header's value as signed: empty when absent.
fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// The `x-ms-*` headers, lower-case names sorted, `name:value\n` each (several values of a
/// name joined with `,`, runs of white space made one space).
pub fn canonicalized_headers(headers: &HeaderMap) -> String {
    let mut names: Vec<&str> = headers
        .keys()
        .map(HeaderName::as_str)
        .filter(|n| n.starts_with("x-ms-"))
        .collect();
    names.sort_unstable();
    names.dedup();
    let mut out = String::new();
    for name in names {
        let values: Vec<String> = headers
            .get_all(name)
            .iter()
            .map(|v| {
                let text = String::from_utf8_lossy(v.as_bytes());
                text.split_whitespace().collect::<Vec<_>>().join(" ")
            })
            .collect();
        out.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    out
}

/// `/{account}{encoded url path}`, then `\n{name}:{values}` per query parameter, lower-case
/// names sorted, decoded values sorted and joined with `,`.
pub fn canonicalized_resource(account: &str, url: &Url) -> String {
    let mut out = format!("/{account}{}", url.path());
    let mut params: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in url.query_pairs() {
        params
            .entry(name.to_lowercase())
            .or_default()
            .push(value.into_owned());
    }
    for (name, mut values) in params {
        values.sort_unstable();
        out.push_str(&format!("\n{name}:{}", values.join(",")));
    }
    out
}

/// The Shared Key string-to-sign of a Blob service request (versions 2015-02-21 and later:
/// `Content-Length` is empty when 0).
pub fn string_to_sign(account: &str, method: &Method, headers: &HeaderMap, url: &Url) -> String {
    let length = match header(headers, "content-length") {
        "0" => "",
        n => n,
    };
    let standard = [
        header(headers, "content-encoding"),
        header(headers, "content-language"),
        length,
        header(headers, "content-md5"),
        header(headers, "content-type"),
        header(headers, "date"),
        header(headers, "if-modified-since"),
        header(headers, "if-match"),
        header(headers, "if-none-match"),
        header(headers, "if-unmodified-since"),
        header(headers, "range"),
    ];
    format!(
        "{}\n{}\n{}{}",
        method.as_str(),
        standard.join("\n"),
        canonicalized_headers(headers),
        canonicalized_resource(account, url)
    )
}

/// The base64 HMAC-SHA256 of `text` with the base64 account key `key_b64`.
pub fn sign(key_b64: &str, text: &str) -> Result<String, Error> {
    edge_protocol::sas::sign(key_b64, text.as_bytes())
        .map_err(|_| Error::Config(ConnectionStringError::KeyNotBase64.to_string()))
}

/// A container name as the Blob service takes it: 3–63 lower-case letters, digits and
/// single hyphens, starting and ending with a letter or digit.
pub fn check_container_name(name: &str) -> Result<(), Error> {
    let chars_ok = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let ends_ok = !name.starts_with('-') && !name.ends_with('-');
    if (3..=63).contains(&name.len()) && chars_ok && ends_ok && !name.contains("--") {
        return Ok(());
    }
    Err(Error::Config(format!(
        "container name '{name}' is not 3-63 lower-case letters, digits and single hyphens"
    )))
}

/// A blob name the URL keeps as is: non-empty `/`-separated parts, none `.` or `..`.
fn check_blob_name(name: &str) -> Result<(), Error> {
    let parts_ok = name
        .split('/')
        .all(|p| !p.is_empty() && p != "." && p != "..");
    if parts_ok && name.len() <= 1024 {
        return Ok(());
    }
    Err(Error::BadBlobName(name.to_owned()))
}

/// What the Blob service answered.
/// The storage service's `x-ms-error-code`, when it sent one.
fn error_code(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get("x-ms-error-code")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[derive(Debug)]
struct Answer {
    status: reqwest::StatusCode,
    /// `x-ms-error-code`, when it failed.
    code: Option<String>,
    body: String,
}

impl Answer {
    fn is(&self, status: u16, code: &str) -> bool {
        self.status.as_u16() == status && self.code.as_deref() == Some(code)
    }

    /// The failure of `step` (a `PUT` of `url`) this answer means, sorted by its status.
    fn failure(&self, step: &'static str, url: &Url) -> Error {
        let reason = format!("PUT {url} answered {}", self.describe());
        Error::from_status(step, self.status.as_u16(), false, reason)
    }

    /// `{status} ({code}): {message}` for an error, with a hint for a refused signature.
    fn describe(&self) -> String {
        let code = self
            .code
            .as_deref()
            .map(|c| format!(" ({c})"))
            .unwrap_or_default();
        let hint = if self.status == reqwest::StatusCode::FORBIDDEN {
            " (check the AccountKey, and the clock: a signed request is valid for 15 minutes)"
        } else {
            ""
        };
        format!(
            "{}{code}: {}{hint}",
            self.status,
            service_message(&self.body)
        )
    }
}

/// The `<Message>` of an error body, else the body's start.
fn service_message(body: &str) -> String {
    let message = body
        .split_once("<Message>")
        .and_then(|(_, rest)| rest.split_once("</Message>"))
        .map_or(body, |(m, _)| m);
    let one_line = message.split_whitespace().collect::<Vec<_>>().join(" ");
    one_line.chars().take(500).collect()
}

/// Uploads files as block blobs into a container of a storage account, signing with the
/// account key. The container is created on the first upload and again if it went away.
#[derive(Clone)]
pub struct AccountUploader {
    account: StorageAccount,
    container: String,
    http: reqwest::Client,
    container_ready: Arc<AtomicBool>,
}

impl std::fmt::Debug for AccountUploader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AccountUploader({})", self.container_url())
    }
}

impl AccountUploader {
    /// An uploader into `container` of `account`; HTTPS trusts the system's roots plus
    /// `extra_roots_pem`.
    pub fn new(
        account: StorageAccount,
        container: &str,
        extra_roots_pem: Option<&str>,
    ) -> Result<Self, Error> {
        check_container_name(container)?;
        Ok(AccountUploader {
            account,
            container: container.to_owned(),
            http: crate::https::client(extra_roots_pem)?,
            container_ready: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The storage account.
    pub fn account(&self) -> &StorageAccount {
        &self.account
    }

    /// The container name.
    pub fn container(&self) -> &str {
        &self.container
    }

    /// The container's URL.
    pub fn container_url(&self) -> String {
        format!("{}/{}", self.account.blob_endpoint(), self.container)
    }

    /// Signs and sends `request`; a transport failure is an error of `step`.
    async fn send(&self, step: &'static str, mut request: Request) -> Result<Answer, Error> {
        let target = format!("{} {}", request.method(), request.url());
        self.account.authorize(&mut request)?;
        let fail = |reason: String| Error::transport(step, reason);
        let response = self
            .http
            .execute(request)
            .await
            .map_err(|e| fail(format!("{target}: {e}")))?;
        let status = response.status();
        let code = error_code(&response);
        let body = response
            .text()
            .await
            .map_err(|e| fail(format!("{target}: {e}")))?;
        Ok(Answer { status, code, body })
    }

    /// Creates the container; one that already exists is fine.
    async fn create_container(&self) -> Result<(), Error> {
        const STEP: &str = "creating the container";
        let mut url = self.account.url(&self.container)?;
        url.set_query(Some("restype=container"));
        let request = self.http.put(url.clone()).body(Bytes::new()).build();
        let request = request.map_err(|e| Error::Config(e.to_string()))?;
        let answer = self.send(STEP, request).await?;
        if answer.status.is_success() || answer.is(409, "ContainerAlreadyExists") {
            self.container_ready.store(true, Ordering::Relaxed);
            return Ok(());
        }
        Err(answer.failure(STEP, &url))
    }

    async fn put_blob(&self, url: &Url, data: Bytes) -> Result<Answer, Error> {
        let request = self
            .http
            .put(url.clone())
            .header("x-ms-blob-type", "BlockBlob")
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(data)
            .build()
            .map_err(|e| Error::Config(e.to_string()))?;
        self.send("writing the blob", request).await
    }

    /// Stores `data` as the block blob `blob_name` in the container (replacing one of that
    /// name), creating the container first when needed.
    pub async fn upload(&self, blob_name: &str, data: Bytes) -> Result<Uploaded, Error> {
        check_blob_name(blob_name)?;
        if data.len() > MAX_PUT_BLOB_BYTES {
            return Err(Error::Refused {
                step: "writing the blob",
                reason: format!(
                    "{blob_name} has {} bytes, more than one Put Blob takes ({MAX_PUT_BLOB_BYTES})",
                    data.len()
                ),
            });
        }
        let url = self
            .account
            .url(&format!("{}/{blob_name}", self.container))?;
        if !self.container_ready.load(Ordering::Relaxed) {
            self.create_container().await?;
        }
        let mut answer = self.put_blob(&url, data.clone()).await?;
        if answer.is(404, "ContainerNotFound") {
            self.container_ready.store(false, Ordering::Relaxed);
            self.create_container().await?;
            answer = self.put_blob(&url, data).await?;
        }
        if !answer.status.is_success() {
            return Err(answer.failure("writing the blob", &url));
        }
        Ok(Uploaded {
            url: url.to_string(),
        })
    }
}

impl AccountUploader {
    /// Reads blob `blob_name` of the container (what a cloud consumer of the container
    /// does: the demo report reads IoT Hub's storage endpoints with it).
    pub async fn download(&self, blob_name: &str) -> Result<Bytes, Error> {
        const STEP: &str = "reading the blob";
        check_blob_name(blob_name)?;
        let url = self
            .account
            .url(&format!("{}/{blob_name}", self.container))?;
        let mut request = self
            .http
            .get(url.clone())
            .build()
            .map_err(|e| Error::Config(e.to_string()))?;
        self.account.authorize(&mut request)?;
        let fail = |reason: String| Error::transport(STEP, reason);
        let response = self
            .http
            .execute(request)
            .await
            .map_err(|e| fail(format!("GET {url}: {e}")))?;
        let status = response.status();
        if !status.is_success() {
            let code = error_code(&response);
            let body = response.text().await.unwrap_or_default();
            let answer = Answer { status, code, body };
            let reason = format!("GET {url} answered {}", answer.describe());
            return Err(Error::from_status(STEP, status.as_u16(), false, reason));
        }
        response
            .bytes()
            .await
            .map_err(|e| fail(format!("GET {url}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Azurite's well-known development key (public, documented by Microsoft).
    const DEV_KEY: &str = AZURITE_KEY;

    fn module_account() -> StorageAccount {
        StorageAccount::from_connection_string(&format!(
            "DefaultEndpointsProtocol=http;BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;AccountName=devstoreaccount1;AccountKey={DEV_KEY}"
        ))
        .unwrap()
    }

    #[test]
    fn reads_the_module_and_the_cloud_connection_strings() {
        let a = module_account();
        assert_eq!(a.name(), "devstoreaccount1");
        assert_eq!(a.blob_endpoint(), "http://127.0.0.1:10000/devstoreaccount1");
        let cloud = StorageAccount::from_connection_string(&format!(
            "DefaultEndpointsProtocol=https;AccountName=fleet01;AccountKey={DEV_KEY};EndpointSuffix=core.chinacloudapi.cn;"
        ))
        .unwrap();
        assert_eq!(
            cloud.blob_endpoint(),
            "https://fleet01.blob.core.chinacloudapi.cn"
        );
        let default_suffix =
            StorageAccount::from_connection_string(&format!("AccountName=a1;AccountKey={DEV_KEY}"))
                .unwrap();
        assert_eq!(
            default_suffix.blob_endpoint(),
            "https://a1.blob.core.windows.net"
        );
        // The key is never shown.
        assert!(!format!("{a:?}{cloud:?}").contains(DEV_KEY));
    }

    #[test]
    fn says_what_is_missing_or_wrong_without_showing_the_key() {
        use ConnectionStringError as E;
        let parse = StorageAccount::from_connection_string;
        let k = DEV_KEY;
        let cases = [
            (format!("AccountKey={k}"), E::Missing("AccountName")),
            ("AccountName=a".to_owned(), E::Missing("AccountKey")),
            (
                "AccountName=a;AccountKey=not base64!".to_owned(),
                E::KeyNotBase64,
            ),
            (
                format!("AccountName=a;AccountKey={k};junk"),
                E::Malformed(3),
            ),
            (
                format!("DefaultEndpointsProtocol=http;AccountName=a;AccountKey={k}"),
                E::HttpWithoutEndpoint,
            ),
            (
                format!("DefaultEndpointsProtocol=ftp;AccountName=a;AccountKey={k}"),
                E::BadProtocol("ftp".into()),
            ),
            (
                format!("BlobEndpoint=ftp://h/a;AccountName=a;AccountKey={k}"),
                E::BadEndpoint("ftp://h/a".into()),
            ),
            (
                format!("BlobEndpoint=http://h/a?x=1;AccountName=a;AccountKey={k}"),
                E::BadEndpoint("http://h/a?x=1".into()),
            ),
            (
                "AccountName=a;SharedAccessSignature=sv=2017-04-17&sig=x".to_owned(),
                E::Unsupported("SharedAccessSignature"),
            ),
            (
                "UseDevelopmentStorage=true".to_owned(),
                E::Unsupported("UseDevelopmentStorage"),
            ),
            (
                format!("AccountName=a/b;AccountKey={k}"),
                E::BadAccountName("a/b".into()),
            ),
        ];
        for (text, expected) in cases {
            let e = parse(&text).unwrap_err();
            assert_eq!(e, expected, "{text}");
            assert!(!e.to_string().contains(k), "{e}");
        }
        // A wrong key is not echoed either, nor one that a missing ';' glued to a value.
        let e = parse("AccountName=a;AccountKey=c2VjcmV0IQ%%").unwrap_err();
        assert!(!e.to_string().contains("c2VjcmV0"), "{e}");
        for glued in [
            format!("AccountName=a AccountKey={k}"),
            format!("AccountName=a;BlobEndpoint=http://h/a AccountKey={k}"),
            format!("DefaultEndpointsProtocol=https AccountKey={k};AccountName=a"),
        ] {
            let e = parse(&glued).unwrap_err().to_string();
            assert!(
                !e.contains(k) && e.contains("value contains AccountKey=…: is a ';' missing"),
                "{e}"
            );
        }
    }

    fn blob_request(account: &StorageAccount) -> Request {
        let url = account.url("avrofiles/2026/11/21/5/15.avro").unwrap();
        let mut r = Request::new(Method::PUT, url);
        let h = r.headers_mut();
        h.insert("content-length", HeaderValue::from_static("11"));
        h.insert(
            "content-type",
            HeaderValue::from_static("application/octet-stream"),
        );
        h.insert("x-ms-blob-type", HeaderValue::from_static("BlockBlob"));
        h.insert(
            "x-ms-date",
            HeaderValue::from_static("Sat, 21 Nov 2026 05:20:00 GMT"),
        );
        h.insert("x-ms-version", HeaderValue::from_static(BLOB_API_VERSION));
        r
    }

    #[test]
    fn string_to_sign_follows_the_documented_layout() {
        let a = module_account();
        let r = blob_request(&a);
        // Emulator-style endpoint: the account is also the path's first segment, so the
        // canonicalized resource names it twice.
        assert_eq!(
            string_to_sign(a.name(), r.method(), r.headers(), r.url()),
            "PUT\n\n\n11\n\napplication/octet-stream\n\n\n\n\n\n\n\
             x-ms-blob-type:BlockBlob\nx-ms-date:Sat, 21 Nov 2026 05:20:00 GMT\nx-ms-version:2017-04-17\n\
             /devstoreaccount1/devstoreaccount1/avrofiles/2026/11/21/5/15.avro"
        );
        let mut create = a.url("avrofiles").unwrap();
        create.set_query(Some("restype=container"));
        let mut h = HeaderMap::new();
        h.insert("content-length", HeaderValue::from_static("0"));
        h.insert("x-ms-version", HeaderValue::from_static("2017-04-17"));
        h.append("x-ms-meta-b", HeaderValue::from_static("  two   words "));
        h.append("x-ms-meta-b", HeaderValue::from_static("x"));
        assert_eq!(
            string_to_sign(a.name(), &Method::PUT, &h, &create),
            "PUT\n\n\n\n\n\n\n\n\n\n\n\n\
             x-ms-meta-b:two words,x\nx-ms-version:2017-04-17\n\
             /devstoreaccount1/devstoreaccount1/avrofiles\nrestype:container"
        );
    }

    #[test]
    fn resource_escapes_the_path_and_sorts_decoded_parameters() {
        let url = Url::parse(
            "https://a.blob.core.windows.net/c/x%20y?comp=list&Restype=container&comp=block",
        )
        .unwrap();
        assert_eq!(
            canonicalized_resource("a", &url),
            "/a/c/x%20y\ncomp:block,list\nrestype:container"
        );
        let a = module_account();
        assert_eq!(
            a.url("c/d e+f.avro").unwrap().path(),
            "/devstoreaccount1/c/d%20e%2Bf.avro"
        );
    }

    #[test]
    fn signature_matches_an_independent_computation() {
        // Computed with Python's standard library, not with this code:
        //   python3 -c 'import hmac,hashlib,base64; k=base64.b64decode("Eby8…GMGw=="); s="PUT\n\n\n11\n\napplication/octet-stream\n\n\n\n\n\n\nx-ms-blob-type:BlockBlob\nx-ms-date:Sat, 21 Nov 2026 05:20:00 GMT\nx-ms-version:2017-04-17\n/devstoreaccount1/devstoreaccount1/avrofiles/2026/11/21/5/15.avro"; print(base64.b64encode(hmac.new(k,s.encode(),hashlib.sha256).digest()).decode())'
        // with k the full DEV_KEY (and likewise for the container request).
        let a = module_account();
        let mut r = blob_request(&a);
        a.authorize(&mut r).unwrap();
        assert_eq!(
            r.headers()["authorization"],
            "SharedKey devstoreaccount1:vjMDDMVgayJ+Mn6RLNqsDn/A6dNZhIPd4WgrweSI4DY="
        );
        let container = "PUT\n\n\n\n\n\n\n\n\n\n\n\n\
            x-ms-date:Sat, 21 Nov 2026 05:20:00 GMT\nx-ms-version:2017-04-17\n\
            /devstoreaccount1/devstoreaccount1/avrofiles\nrestype:container";
        assert_eq!(
            sign(DEV_KEY, container).unwrap(),
            "qkgRPVosA3JeT7AKpt0UaBaJ+62GWUJ+L9fsqgDmBO8="
        );
    }

    #[test]
    fn authorize_adds_date_version_and_length() {
        let a = module_account();
        let url = a.url("c/b").unwrap();
        let mut r = Request::new(Method::PUT, url);
        *r.body_mut() = Some(Bytes::from_static(b"abc").into());
        a.authorize(&mut r).unwrap();
        let h = r.headers();
        assert_eq!(h["x-ms-version"], BLOB_API_VERSION);
        assert_eq!(h["content-length"], "3");
        let date = h["x-ms-date"].to_str().unwrap();
        assert!(httpdate::parse_http_date(date).is_ok(), "{date}");
        let text = string_to_sign(a.name(), r.method(), h, r.url());
        let expected = format!(
            "SharedKey devstoreaccount1:{}",
            sign(DEV_KEY, &text).unwrap()
        );
        assert_eq!(h["authorization"], expected.as_str());
    }

    #[test]
    fn names_are_checked_before_anything_is_sent() {
        for good in ["avrofiles", "a-1", "abc"] {
            assert!(check_container_name(good).is_ok(), "{good}");
        }
        for bad in ["ab", "Avro", "a--b", "-ab", "ab-", "a_b", &"a".repeat(64)] {
            assert!(check_container_name(bad).is_err(), "{bad}");
        }
        assert!(check_blob_name("2026/11/21/5/15.avro").is_ok());
        for bad in ["", "a//b", "../x", "a/./b", "/a"] {
            assert!(check_blob_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn service_errors_read_as_one_line() {
        let body = "<?xml version=\"1.0\"?><Error><Code>AuthenticationFailed</Code><Message>Server failed\n to authenticate the request.</Message></Error>";
        assert_eq!(
            service_message(body),
            "Server failed to authenticate the request."
        );
        assert_eq!(service_message("plain"), "plain");
    }
}
