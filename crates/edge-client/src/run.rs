//! The usual main loop of a module: handle inputs concurrently until SIGTERM/SIGINT, then
//! finish what is in flight and close.

use crate::client::ModuleClient;
use crate::error::Error;
use edge_protocol::Message;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{info, warn, Instrument};

/// Resolves on SIGTERM (how a runtime stops a module) or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => info!("SIGTERM: stopping"),
                _ = int.recv() => info!("SIGINT: stopping"),
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Runs `handler` for every input message, at most `concurrency` at a time, until `stop`
/// resolves; then waits for the handlers in flight and closes the client.
///
/// A message is acknowledged when its handler returns `Ok`. On `Err` it is logged and left
/// unacknowledged, so edgeHub delivers it again (handlers report bad *content* as outputs,
/// e.g. dead letters, and return `Err` only when they could not do their job).
pub async fn run_inputs<H, Fut, E>(
    client: &ModuleClient,
    concurrency: usize,
    stop: impl Future<Output = ()>,
    handler: H,
) -> Result<(), Error>
where
    H: Fn(String, Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let mut inputs = client.inputs()?;
    let handler = Arc::new(handler);
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = JoinSet::new();
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            _ = &mut stop => break,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let m = tokio::select! {
            _ = &mut stop => break,
            m = inputs.recv() => match m { Some(m) => m, None => break },
        };
        while tasks.try_join_next().is_some() {}
        let handler = handler.clone();
        let (input, message, token) = m.into_parts();
        let span = tracing::info_span!(
            "message",
            input = %input,
            correlation_id = message.correlation_id.as_deref().unwrap_or(""),
            message_id = message.message_id.as_deref().unwrap_or(""),
        );
        tasks.spawn(
            async move {
                match handler(input, message).await {
                    Ok(()) => token.ack(),
                    Err(e) => warn!(error = %e, "handler failed; message left for redelivery"),
                }
                drop(permit);
            }
            .instrument(span),
        );
    }
    // Messages received but not started are left unacknowledged: edgeHub keeps them.
    drop(inputs);
    while tasks.join_next().await.is_some() {}
    client.close(Duration::from_secs(10)).await;
    Ok(())
}
