//! What an orchestrator and a metrics scraper see of a process: one HTTP endpoint serving
//!
//! - `GET /metrics`: the process's metrics in the Prometheus text format (OpenMetrics), as
//!   edgeHub and edgeAgent serve theirs on port 9600 for Azure Monitor's metrics-collector
//!   module or a Prometheus server;
//! - `GET /health/live`: 200 while the process's event loop answers (a liveness probe);
//! - `GET /health/ready`: 200 once the process does its job (connected, model loaded), else
//!   503 with the reason (a readiness probe).
//!
//! A process makes one [`Exporter`], registers its metrics in it (`prometheus-client` types),
//! says how it judges readiness, and [`serve`]s it. [`probe`] is the client side of the
//! readiness check, for a container's `HEALTHCHECK`, which has no curl in our images.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::registry::{Metric, Registry};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The environment variable that sets where a module serves its metrics and health checks:
/// `host:port`, or `off`.
pub const METRICS_ADDR_VAR: &str = "METRICS_ADDR";

/// Where a module serves them when [`METRICS_ADDR_VAR`] is not set: port 9600 on every
/// interface, as edgeHub does inside its container.
pub const DEFAULT_METRICS_ADDR: &str = "0.0.0.0:9600";

type Readiness = Box<dyn Fn() -> Result<(), String> + Send + Sync>;
type Refresh = Box<dyn Fn() + Send + Sync>;

/// A process's metrics and its readiness.
pub struct Exporter {
    registry: Mutex<Registry>,
    refresh: Mutex<Vec<Refresh>>,
    readiness: Mutex<Vec<Readiness>>,
}

impl Default for Exporter {
    fn default() -> Self {
        Exporter::new()
    }
}

impl Exporter {
    /// An exporter with no metrics, ready.
    pub fn new() -> Exporter {
        Exporter::with_labels(Vec::new())
    }

    /// An exporter whose every series carries `labels` (e.g. the device and the hub).
    pub fn with_labels(labels: Vec<(String, String)>) -> Exporter {
        let labels = labels.into_iter().map(|(k, v)| (k.into(), v.into()));
        Exporter {
            registry: Mutex::new(Registry::with_labels(labels)),
            refresh: Mutex::new(Vec::new()),
            readiness: Mutex::new(Vec::new()),
        }
    }

    /// Registers `metric` (a clone of which the caller keeps and updates) as `name`; a
    /// counter's name gets `_total` in the output.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        lock(&self.registry).register(name, help, metric);
    }

    /// Runs `f` before each scrape: for gauges read off state (queue lengths, disk used)
    /// rather than kept up to date on the hot path.
    pub fn on_scrape(&self, f: impl Fn() + Send + Sync + 'static) {
        lock(&self.refresh).push(Box::new(f));
    }

    /// Adds a readiness condition: the process is ready while every condition is `Ok`.
    pub fn ready_when(&self, f: impl Fn() -> Result<(), String> + Send + Sync + 'static) {
        lock(&self.readiness).push(Box::new(f));
    }

    /// Whether the process is ready, and if not, why.
    pub fn ready(&self) -> Result<(), String> {
        lock(&self.readiness).iter().try_for_each(|f| f())
    }

    /// The metrics in the text format.
    pub fn encode(&self) -> String {
        for f in lock(&self.refresh).iter() {
            f();
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &lock(&self.registry)) {
            tracing::warn!(error = %e, "metrics could not be encoded");
        }
        out
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why the endpoint could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address is not `host:port`.
    #[error("{METRICS_ADDR_VAR} '{0}' is not host:port (e.g. 0.0.0.0:9600) or 'off'")]
    BadAddress(String),
    /// The port is taken, or not ours to bind.
    #[error("cannot serve metrics on {addr}: {source} (set {METRICS_ADDR_VAR} to a free port, or 'off')")]
    Bind {
        /// The address tried.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// The address `METRICS_ADDR` asks for: `None` for `off`, the default when unset.
pub fn addr_from_env() -> Result<Option<SocketAddr>, ServeError> {
    parse_addr(std::env::var(METRICS_ADDR_VAR).ok().as_deref())
}

/// Parses a `METRICS_ADDR` value (`None`: not set).
pub fn parse_addr(value: Option<&str>) -> Result<Option<SocketAddr>, ServeError> {
    let v = value.map(str::trim).unwrap_or(DEFAULT_METRICS_ADDR);
    if v.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    v.parse()
        .map(Some)
        .map_err(|_| ServeError::BadAddress(v.to_owned()))
}

/// Connections the metrics endpoint serves at once (scrapers and health probes).
pub const METRICS_CONNECTIONS: usize = 64;

/// Serves `exporter` on `addr` (port 0: any free port) until the task is aborted or the
/// process ends; returns the address bound. Needs a tokio runtime.
pub async fn serve(
    addr: SocketAddr,
    exporter: Arc<Exporter>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), ServeError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ServeError::Bind { addr, source })?;
    let make = move || {
        let exporter = exporter.clone();
        hyper::service::service_fn(move |req| {
            let exporter = exporter.clone();
            async move { Ok::<_, std::convert::Infallible>(answer(&exporter, &req)) }
        })
    };
    let task = tokio::spawn(crate::http::serve(
        "metrics",
        crate::http::Limits::new(METRICS_CONNECTIONS),
        listener,
        crate::http::plain,
        make,
    ));
    Ok((bound, task))
}

fn answer(exporter: &Exporter, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    match req.uri().path() {
        "/metrics" => Response::builder()
            .header(
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
            .body(Full::new(Bytes::from(exporter.encode())))
            .unwrap_or_default(),
        "/health/live" => text(StatusCode::OK, "live\n".into()),
        "/health/ready" => match exporter.ready() {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "try /metrics, /health/live or /health/ready\n".into(),
        ),
    }
}

/// Asks the endpoint on `addr` (a wildcard host is asked on loopback) for `path`, within
/// `timeout`: `Ok` with the body on a 200, `Err` with the reason otherwise.
pub async fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<String, String> {
    let addr = loopback_for(addr);
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("nothing answers on {addr}: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        let conn = tokio::spawn(conn);
        let req = Request::builder()
            .uri(path)
            .header("host", addr.to_string())
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string());
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                conn.abort();
                return Err(e);
            }
        };
        let status = resp.status();
        let body = resp.into_body().collect().await.map_err(|e| e.to_string());
        conn.abort();
        let body = String::from_utf8_lossy(&body?.to_bytes()).into_owned();
        if status == StatusCode::OK {
            Ok(body)
        } else {
            Err(format!("{status}: {}", body.trim()))
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("{addr} did not answer within {timeout:?}"))?
}

/// The readiness probe of a container `HEALTHCHECK` (a module run as `<module> --health`):
/// asks the endpoint `METRICS_ADDR` names; `Ok` if the process is ready.
pub async fn probe() -> Result<(), String> {
    let addr = addr_from_env()
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{METRICS_ADDR_VAR} is off: there is no health endpoint to ask"))?;
    get(addr, "/health/ready", Duration::from_secs(3))
        .await
        .map(|_| ())
}

/// The address to connect to for one bound to `addr`: a wildcard host becomes loopback.
fn loopback_for(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, a.port()))
        }
        SocketAddr::V6(a) if a.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port()))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn addresses_parse_or_say_what_is_wrong() {
        assert_eq!(
            parse_addr(None).unwrap(),
            Some("0.0.0.0:9600".parse().unwrap())
        );
        assert_eq!(parse_addr(Some("OFF")).unwrap(), None);
        assert_eq!(
            parse_addr(Some(" 127.0.0.1:9601 ")).unwrap(),
            Some("127.0.0.1:9601".parse().unwrap())
        );
        let e = parse_addr(Some("9600")).unwrap_err();
        assert!(e.to_string().contains("host:port"), "{e}");
    }

    #[tokio::test]
    async fn serves_metrics_liveness_and_readiness() {
        let exporter = Arc::new(Exporter::new());
        let messages: Counter = Counter::default();
        exporter.register("demo_messages", "Messages seen.", messages.clone());
        messages.inc_by(3);
        let ready = Arc::new(AtomicBool::new(false));
        let r = ready.clone();
        exporter.ready_when(move || {
            if r.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("not connected to edgeHub".into())
            }
        });
        let (addr, task) = serve("127.0.0.1:0".parse().unwrap(), exporter.clone())
            .await
            .unwrap();
        let t = Duration::from_secs(5);
        let metrics = get(addr, "/metrics", t).await.unwrap();
        assert!(metrics.contains("demo_messages_total 3"), "{metrics}");
        assert_eq!(get(addr, "/health/live", t).await.unwrap(), "live\n");
        let e = get(addr, "/health/ready", t).await.unwrap_err();
        assert!(
            e.starts_with("503") && e.contains("not connected to edgeHub"),
            "{e}"
        );
        ready.store(true, Ordering::SeqCst);
        assert_eq!(get(addr, "/health/ready", t).await.unwrap(), "ready\n");
        assert!(get(addr, "/nothing", t)
            .await
            .unwrap_err()
            .starts_with("404"));
        task.abort();
    }

    #[tokio::test]
    async fn a_taken_port_is_a_clear_error() {
        let exporter = Arc::new(Exporter::new());
        let (addr, _task) = serve("127.0.0.1:0".parse().unwrap(), exporter.clone())
            .await
            .unwrap();
        let e = serve(addr, exporter).await.unwrap_err();
        assert!(e.to_string().contains("set METRICS_ADDR"), "{e}");
    }
}
