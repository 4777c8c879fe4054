//! The IoT Edge workload API client: signs SAS data with the module's key (which stays in the
//! runtime) and returns the trust bundle, over a unix socket or HTTP. Its routes and bodies
//! are [`edge_protocol::workload`]'s, which the local runtime serves.

use crate::error::Error;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use edge_protocol::workload::{self, SignRequest, SignResponse, TrustBundleResponse};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;

/// A workload API endpoint.
#[derive(Debug, Clone)]
pub struct WorkloadClient {
    uri: String,
    api_version: String,
}

enum Endpoint<'a> {
    Unix(&'a str),
    Tcp(&'a str),
}

impl WorkloadClient {
    /// A client for `uri` (`unix:///path.sock` or `http://host:port`).
    pub fn new(uri: impl Into<String>, api_version: impl Into<String>) -> Self {
        WorkloadClient {
            uri: uri.into(),
            api_version: api_version.into(),
        }
    }

    fn endpoint(&self) -> Result<Endpoint<'_>, Error> {
        if let Some(path) = self.uri.strip_prefix("unix://") {
            Ok(Endpoint::Unix(path))
        } else if let Some(authority) = self.uri.strip_prefix("http://") {
            Ok(Endpoint::Tcp(authority.trim_end_matches('/')))
        } else {
            Err(self.fail("the URI must start with unix:// or http://"))
        }
    }

    fn fail(&self, reason: impl Into<String>) -> Error {
        Error::Workload {
            uri: self.uri.clone(),
            reason: reason.into(),
        }
    }

    /// Asks the runtime to sign `data` with the module's primary key (HMAC-SHA256); returns
    /// the base64 digest.
    pub async fn sign(
        &self,
        module_id: &str,
        generation_id: &str,
        data: &[u8],
    ) -> Result<String, Error> {
        let body = serde_json::to_string(&SignRequest::primary_hmac_sha256(B64.encode(data)))?;
        let path = workload::sign_path(module_id, generation_id, &self.api_version);
        let resp: SignResponse = self.call("POST", &path, Some(body)).await?;
        Ok(resp.digest)
    }

    /// The PEM trust bundle that edgeHub's server certificate chains to.
    pub async fn trust_bundle(&self) -> Result<String, Error> {
        let path = workload::trust_bundle_path(&self.api_version);
        let resp: TrustBundleResponse = self.call("GET", &path, None).await?;
        Ok(resp.certificate)
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<T, Error> {
        let host = match self.endpoint()? {
            Endpoint::Unix(_) => "localhost".to_owned(),
            Endpoint::Tcp(a) => a.to_owned(),
        };
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", host);
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| self.fail(e.to_string()))?;
        let (status, bytes) = match self.endpoint()? {
            Endpoint::Unix(p) => {
                let stream = tokio::net::UnixStream::connect(p).await.map_err(|e| {
                    self.fail(format!(
                        "cannot connect to the socket ({e}); is the IoT Edge runtime running?"
                    ))
                })?;
                self.exchange(TokioIo::new(stream), req).await?
            }
            Endpoint::Tcp(a) => {
                let stream = tokio::net::TcpStream::connect(a).await.map_err(|e| {
                    self.fail(format!(
                        "cannot connect ({e}); is the IoT Edge runtime running?"
                    ))
                })?;
                self.exchange(TokioIo::new(stream), req).await?
            }
        };
        if !status.is_success() {
            return Err(self.fail(format!(
                "{method} {path} answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            )));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| self.fail(format!("{method} {path}: unexpected response ({e})")))
    }

    async fn exchange<I>(
        &self,
        io: I,
        req: Request<Full<Bytes>>,
    ) -> Result<(hyper::StatusCode, Bytes), Error>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| self.fail(e.to_string()))?;
        let conn = tokio::spawn(conn);
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| self.fail(e.to_string()))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.fail(e.to_string()))?
            .to_bytes();
        conn.abort();
        Ok((status, bytes))
    }
}
