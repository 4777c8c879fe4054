//! A module's process: [`start`] sets it up (logging, metrics, health) and connects;
//! its main loop handles inputs until SIGTERM/SIGINT, then finishes what is in flight and
//! closes. [`run_inputs`] runs asynchronous handlers concurrently; [`forward_inputs`]
//! runs a plain handler that turns each input into outputs, and needs no future per
//! message.

use crate::client::{InputMessage, ModuleClient, Prepared};
use crate::error::Error;
use edge_process::observe::{self, Exporter};
use edge_protocol::{CompactString, Message};
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde_json::json;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{info, warn, Instrument};

/// Inputs [`forward_inputs`] handles one after the other before it looks at its stop
/// signal again.
const INPUTS_PER_TURN: usize = 64;

/// The span of one input message's handling. At debug level: at the default level a span
/// per message cost the router a tenth of its CPU.
fn message_span(input: &str, message: &Message) -> tracing::Span {
    tracing::debug_span!(
        "message",
        input = %input,
        correlation_id = message.correlation_id.as_deref().unwrap_or(""),
        message_id = message.message_id.as_deref().unwrap_or(""),
    )
}

/// The next input message; `None` once `stop` has resolved (it is looked at first) or the
/// inputs have ended.
pub async fn next_input<S: Future<Output = ()>>(
    inputs: &mut mpsc::UnboundedReceiver<InputMessage>,
    stop: std::pin::Pin<&mut S>,
) -> Option<InputMessage> {
    tokio::select! {
        biased;
        _ = stop => None,
        m = inputs.recv() => m,
    }
}

/// A started module: its client, its log level, and its metrics and health endpoint (where
/// the module registers its own metrics and readiness conditions).
pub struct ModuleProcess {
    /// The connection to edgeHub.
    pub client: ModuleClient,
    /// Applies `LoggingLevel` desired properties.
    pub log: crate::logging::LogLevel,
    /// The metrics served on `METRICS_ADDR` (`/metrics`, `/health/live`, `/health/ready`).
    pub metrics: Arc<Exporter>,
}

/// What [`start`] made of the process.
pub enum Started {
    /// Run as `<module> --health` (a container's `HEALTHCHECK`): whether the running module
    /// is ready, else why not. The process then ends: 0 if ready, else 1.
    Health(Result<(), String>),
    /// The module, connected to edgeHub.
    Module(ModuleProcess),
}

/// Starts a module's process, the same way for every module:
///
/// 1. run as `<module> --health` (a container's `HEALTHCHECK`), asks the running module's
///    readiness endpoint: [`Started::Health`];
/// 2. logging at `RUST_LOG`'s level (else `info`);
/// 3. the metrics and health endpoint on `METRICS_ADDR` (default `0.0.0.0:9600`, `off` for
///    none): live at once, ready once connected to edgeHub (and whatever the module adds);
///    a port it cannot bind is a warning, not a failure;
/// 4. the client from the IoT Edge environment ([`ModuleClient::from_env`]), its counters
///    registered: [`Started::Module`]. If it cannot connect, the error: the binary ends with
///    a failure status, so that the runtime restarts the module.
pub async fn start() -> Result<Started, Error> {
    if std::env::args().nth(1).as_deref() == Some("--health") {
        return Ok(Started::Health(observe::probe().await));
    }
    let log = crate::logging::init();
    let metrics = Arc::new(Exporter::new());
    let client_slot: Arc<OnceLock<ModuleClient>> = Arc::new(OnceLock::new());
    let slot = client_slot.clone();
    metrics.ready_when(move || match slot.get() {
        None => Err("connecting to edgeHub".into()),
        Some(c) if !c.is_connected() => Err("not connected to edgeHub".into()),
        Some(_) => Ok(()),
    });
    match observe::addr_from_env() {
        Ok(Some(addr)) => match observe::serve(addr, metrics.clone()).await {
            Ok((bound, _)) => {
                info!("metrics on http://{bound}/metrics, health on /health/live and /health/ready")
            }
            Err(e) => warn!("{e}; running without metrics and health checks"),
        },
        Ok(None) => info!(
            "metrics and health checks are off ({})",
            observe::METRICS_ADDR_VAR
        ),
        Err(e) => warn!("{e}; running without metrics and health checks"),
    }
    let client = ModuleClient::from_env().await?;
    client.metrics().register(&metrics);
    let _ = client_slot.set(client.clone());
    answer_ping_and_status(&client, metrics.clone());
    Ok(Started::Module(ModuleProcess {
        client,
        log,
        metrics,
    }))
}

/// [`start`] for a module's `main`: `--health` ends the process itself (0 if ready, else 1);
/// otherwise the connected module, or why it could not connect (which `main` returns, ending
/// with a failure status so that the runtime restarts the module).
pub async fn start_module() -> Result<ModuleProcess, Error> {
    match start().await? {
        Started::Module(process) => Ok(process),
        Started::Health(Ok(())) => std::process::exit(0),
        Started::Health(Err(why)) => {
            eprintln!("not healthy: {why}");
            std::process::exit(1)
        }
    }
}

/// Answers the direct methods every module has: `ping` (`{"pong": true, "module": …}`) and
/// `status` (uptime, connection, readiness, messages per input and output); 404 for others.
fn answer_ping_and_status(client: &ModuleClient, metrics: Arc<Exporter>) {
    let started = std::time::Instant::now();
    // A weak reference: the handler lives in the client and must not keep it alive.
    let weak = Arc::downgrade(&client.inner);
    let module = client.settings().module_id.clone();
    client.on_methods(move |method, _payload| match method {
        "ping" => (200, json!({"pong": true, "module": module})),
        "status" => {
            let Some(inner) = weak.upgrade() else {
                return (503, json!({"message": "the module is stopping"}));
            };
            let m = &inner.metrics;
            (
                200,
                json!({
                    "module": module,
                    "uptimeSecs": started.elapsed().as_secs(),
                    "connected": m.connected.get() == 1,
                    "connections": m.connections.get(),
                    "ready": metrics.ready().err().map_or(json!(true), |why| json!(why)),
                    "messagesReceived": m.received.snapshot(),
                    "messagesSent": m.sent.snapshot(),
                }),
            )
        }
        other => (
            404,
            json!({"message": format!("no method '{other}': this module answers ping and status")}),
        ),
    });
}

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
///
/// The handlers run as futures of this task, not as tasks of their own: a module's client is
/// on a current-thread runtime, so a task per message would add its allocation and
/// scheduling and no parallelism.
pub async fn run_inputs<H, Fut, E>(
    client: &ModuleClient,
    concurrency: usize,
    stop: impl Future<Output = ()>,
    handler: H,
) -> Result<(), Error>
where
    H: Fn(CompactString, Message) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut inputs = client.inputs()?;
    let concurrency = concurrency.max(1);
    let mut running = FuturesUnordered::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => break,
            Some(()) = running.next(), if !running.is_empty() => {}
            m = inputs.recv(), if running.len() < concurrency => {
                let Some(m) = m else { break };
                let (input, message, token) = m.into_parts();
                // A handler's failure is its transport's (the message is delivered again),
                // so the warning does not name the message; the span, at `debug`, does.
                let span = message_span(&input, &message);
                let handled = handler(input, message);
                running.push(
                    async move {
                        match handled.await {
                            Ok(()) => token.ack(),
                            Err(e) => warn!(error = %e, "handler failed; message left for redelivery"),
                        }
                    }
                    .instrument(span),
                );
            }
        }
    }
    // Messages received but not started are left unacknowledged: edgeHub keeps them.
    drop(inputs);
    while running.next().await.is_some() {}
    client.close(Duration::from_secs(10)).await;
    Ok(())
}

/// The main loop of a module that turns each input into outputs (a router): `handler`
/// makes an input into the outputs to send, each made ready with
/// [`ModuleClient::prepare_output`] (so that it can send something else in place of one
/// MQTT cannot carry), and [`ModuleClient::forward`] sends them and acknowledges the input
/// once edgeHub has accepted them all. Runs until `stop` resolves, then waits for what is in
/// flight and closes the client.
///
/// Nothing waits per message: how many inputs are in flight is bounded by edgeHub's window
/// of deliveries to the module, and their outputs by the client's send window.
pub async fn forward_inputs<H>(
    client: &ModuleClient,
    stop: impl Future<Output = ()>,
    mut handler: H,
) -> Result<(), Error>
where
    H: FnMut(&str, Message) -> Vec<Prepared>,
{
    let mut inputs = client.inputs()?;
    tokio::pin!(stop);
    while let Some(first) = next_input(&mut inputs, stop.as_mut()).await {
        // What else has arrived is handled before `stop` is looked at again.
        let mut next = Some(first);
        let mut handled = 0;
        while let Some(m) = next.take() {
            let (input, message, token) = m.into_parts();
            let span = message_span(&input, &message);
            let outputs = span.in_scope(|| handler(&input, message));
            if let Err(e) = client.forward(token, outputs).instrument(span).await {
                warn!(error = %e, "outputs not sent; message left for redelivery");
            }
            handled += 1;
            if handled < INPUTS_PER_TURN {
                next = inputs.try_recv().ok();
            }
        }
    }
    // Messages received but not handled are left unacknowledged: edgeHub keeps them.
    drop(inputs);
    client.close(Duration::from_secs(10)).await;
    Ok(())
}

/// A module `main`'s exit status for what its `run` returned: success, or the error logged
/// (with its causes, `{:#}`) and status 1, so that the runtime restarts the module.
pub fn exit_code<E: std::fmt::Display>(result: Result<(), E>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
