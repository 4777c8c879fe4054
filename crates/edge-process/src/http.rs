//! Serving HTTP/1 with bounds, for every HTTP server of the project (metrics and health,
//! the classifier's `/score`, the runtime's file-upload, workload and control APIs): a cap
//! on open connections, a deadline for a request's headers, and an idle timeout, so that
//! clients that open connections and say nothing cannot hold a process's file descriptors
//! (and lock out what else it serves) for longer than that.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The bounds of one server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Time a client has to send a request's headers once it started one, or to start the
    /// first request of a new connection.
    pub header_timeout: Duration,
    /// A connection with no bytes read or written for this long is closed (a request that
    /// takes longer to answer is cut off with it).
    pub idle_timeout: Duration,
}

impl Limits {
    /// Bounds for a server of `max_connections`, with a 10 s header deadline and a 60 s
    /// idle timeout.
    pub const fn new(max_connections: usize) -> Limits {
        Limits {
            max_connections,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Admits connections up to a server's cap.
#[derive(Debug, Clone)]
pub struct Gate {
    permits: Arc<Semaphore>,
    limits: Limits,
}

/// An admitted connection's place; the place is free again when it is dropped.
#[derive(Debug)]
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
    limits: Limits,
}

impl Gate {
    /// A gate for `limits`.
    pub fn new(limits: Limits) -> Gate {
        Gate {
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
        }
    }

    /// A place for a new connection, or `None` when the server is full (then close it).
    pub fn admit(&self) -> Option<Admitted> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        Some(Admitted {
            _permit: permit,
            limits: self.limits,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.limits.max_connections - self.permits.available_permits()
    }
}

/// An I/O stream that notes when bytes last went either way.
struct Watched<I> {
    io: I,
    start: Instant,
    /// Milliseconds from `start` to the last read or write.
    last: Arc<AtomicU64>,
}

impl<I> Watched<I> {
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Serves HTTP/1 on `io` with `service` within the bounds of `admitted`: the connection is
/// closed when a request's headers take longer than the header timeout, or when no byte
/// moves for the idle timeout. Returns when the connection is closed.
pub async fn serve_connection<I, S, B>(io: I, service: S, admitted: Admitted)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
        hyper::Request<hyper::body::Incoming>,
        Response = hyper::Response<B>,
    >,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Future: Send,
    B: hyper::body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B::Data: Send,
{
    let limits = admitted.limits;
    let last = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let watched = Watched {
        io,
        start,
        last: last.clone(),
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(hyper_util::rt::TokioIo::new(watched), service);
    let mut conn = std::pin::pin!(conn);
    let idle_ms = limits.idle_timeout.as_millis() as u64;
    let check = (limits.idle_timeout / 4).max(Duration::from_millis(10));
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "HTTP connection ended");
                }
                break;
            }
            () = tokio::time::sleep(check) => {
                let idle = (start.elapsed().as_millis() as u64)
                    .saturating_sub(last.load(Ordering::Relaxed));
                if idle >= idle_ms {
                    tracing::debug!(idle_ms = idle, "HTTP connection idle; closed");
                    break;
                }
            }
        }
    }
    drop(admitted);
}

/// A listening socket [`serve`] accepts connections from.
pub trait Listener: Send + 'static {
    /// A connection.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The next connection.
    fn next_conn(&self) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

impl Listener for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn next_conn(&self) -> io::Result<Self::Io> {
        let (s, _) = self.accept().await?;
        let _ = s.set_nodelay(true);
        Ok(s)
    }
}

impl Listener for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn next_conn(&self) -> io::Result<Self::Io> {
        Ok(self.accept().await?.0)
    }
}

/// Accepts connections on `listener` forever, each served by [`serve_connection`] with a
/// service from `make`, once `prepare` made it ready (a TLS handshake, say; `None` drops
/// it) within the header timeout. Connections over the cap are closed at once. `what`
/// names the server in logs.
pub async fn serve<L, P, PF, I, M, S, B>(
    what: &'static str,
    limits: Limits,
    listener: L,
    prepare: P,
    make: M,
) where
    L: Listener,
    P: Fn(L::Io) -> PF + Clone + Send + 'static,
    PF: Future<Output = Option<I>> + Send,
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    M: Fn() -> S + Clone + Send + 'static,
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<B>,
        > + Send
        + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Future: Send,
    B: hyper::body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B::Data: Send,
{
    let gate = Gate::new(limits);
    let mut full_logged = false;
    loop {
        let stream = match listener.next_conn().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(server = what, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(admitted) = gate.admit() else {
            if !full_logged {
                tracing::warn!(
                    server = what,
                    max_connections = limits.max_connections,
                    "connection limit reached; new connections are closed until some end"
                );
                full_logged = true;
            }
            drop(stream);
            continue;
        };
        full_logged = false;
        let (prepare, make) = (prepare.clone(), make.clone());
        tokio::spawn(async move {
            let ready = tokio::time::timeout(limits.header_timeout, prepare(stream)).await;
            if let Ok(Some(io)) = ready {
                serve_connection(io, make(), admitted).await;
            }
        });
    }
}

/// `prepare` for [`serve`] when a connection needs nothing before HTTP.
pub async fn plain<I>(io: I) -> Option<I> {
    Some(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn hello_server(limits: Limits) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let make = || {
            hyper::service::service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                    bytes::Bytes::from_static(b"hello"),
                )))
            })
        };
        tokio::spawn(serve("test", limits, listener, plain, make));
        addr
    }

    async fn get(addr: std::net::SocketAddr) -> io::Result<String> {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    }

    /// Reads until the peer closes; false if it did not within `within`.
    async fn closed_within(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(within, async {
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            })
            .await,
            Ok(())
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn silent_and_slow_clients_are_closed_and_the_cap_holds_while_others_are_served() {
        let limits = Limits {
            max_connections: 4,
            header_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(600),
        };
        let addr = hello_server(limits).await;
        assert!(get(addr).await.unwrap().ends_with("hello"));

        // Four silent connections fill the server; a fifth is closed at once.
        let mut silent = Vec::new();
        for _ in 0..4 {
            silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut fifth = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(
            closed_within(&mut fifth, Duration::from_millis(200)).await,
            "over the cap"
        );
        // They get no more than the header timeout.
        for s in &mut silent {
            assert!(
                closed_within(s, Duration::from_secs(2)).await,
                "silent client kept"
            );
        }
        assert!(get(addr).await.unwrap().ends_with("hello"), "served again");

        // Headers sent a byte at a time, slower than the deadline: closed.
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        for b in b"GET / HTTP/1.1\r\nhost: x\r\n".iter() {
            if slow.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            if started.elapsed() > Duration::from_secs(3) {
                break;
            }
        }
        assert!(closed_within(&mut slow, Duration::from_secs(2)).await);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "closed at the header deadline"
        );

        // A kept-alive connection that goes quiet after a request is closed when idle.
        let mut kept = tokio::net::TcpStream::connect(addr).await.unwrap();
        kept.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = kept.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).ends_with("hello"));
        assert!(
            closed_within(&mut kept, Duration::from_secs(2)).await,
            "idle keep-alive kept"
        );
    }
}
