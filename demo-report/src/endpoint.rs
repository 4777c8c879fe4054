//! IoT Hub's message routing as the tutorial's operator sees it: the RUL messages in the
//! `ruldata` storage endpoint's container (IoT Hub's Avro records), and how many messages each
//! hub route took.

use crate::analysis;
use crate::ReportError;
use cloud_upload::{AccountUploader, StorageAccount};
use hub_records::routed::{decode, read_blob_log};
use hub_records::{classify, Record, RulMessage, Sorted, Tail};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The storage endpoint the tutorial's `RulMessageRoute` writes to.
pub const RUL_ENDPOINT: &str = "ruldata";

/// What a storage endpoint's container holds.
#[derive(Debug, Clone, Default)]
pub struct EndpointRead {
    /// The endpoint.
    pub endpoint: String,
    /// Its container.
    pub container: String,
    /// Blobs read.
    pub blobs: usize,
    /// Messages in them.
    pub messages: usize,
    /// The router's RUL messages among them.
    pub ruls: Vec<RulMessage>,
}

/// Where the runtime keeps blobs: Azurite (`https://host/account`) or a folder.
enum Store {
    Folder(PathBuf),
    Azurite { endpoint: String, ca_pem: String },
}

fn store(state: &Path) -> Result<Store, ReportError> {
    let ready =
        runtime_state::Ready::read(state).map_err(|e| ReportError::Endpoint(format!("{e}")))?;
    Ok(match ready.blob_store.strip_prefix("https://") {
        Some(_) => Store::Azurite {
            endpoint: ready.blob_store.clone(),
            ca_pem: std::fs::read_to_string(&ready.ca_cert)
                .map_err(ReportError::io(&ready.ca_cert))?,
        },
        None => Store::Folder(PathBuf::from(&ready.blob_store)),
    })
}

/// Reads every blob storage endpoint `endpoint` wrote (from its blob log) out of the blob
/// store of the running runtime of `state`; `None` when the hub has no such endpoint.
pub async fn read(state: &Path, endpoint: &str) -> Result<Option<EndpointRead>, ReportError> {
    let log_path = runtime_state::layout::endpoint_blob_log(state, endpoint);
    if !runtime_state::layout::endpoint_dir(state, endpoint).exists() {
        return Ok(None);
    }
    let log = read_blob_log(&log_path).map_err(ReportError::io(&log_path))?;
    let mut out = EndpointRead {
        endpoint: endpoint.to_owned(),
        ..EndpointRead::default()
    };
    if log.is_empty() {
        return Ok(Some(out));
    }
    let store = store(state)?;
    let mut containers: BTreeMap<String, AccountUploader> = BTreeMap::new();
    for b in &log {
        out.container = b.container.clone();
        let bytes = match &store {
            Store::Folder(root) => {
                let path = root.join(&b.container).join(&b.blob);
                std::fs::read(&path).map_err(ReportError::io(&path))?
            }
            Store::Azurite { endpoint, ca_pem } => {
                if !containers.contains_key(&b.container) {
                    let account = StorageAccount::azurite(endpoint)
                        .map_err(|e| ReportError::Endpoint(e.to_string()))?;
                    let c = AccountUploader::new(account, &b.container, Some(ca_pem))
                        .map_err(|e| ReportError::Endpoint(e.to_string()))?;
                    containers.insert(b.container.clone(), c);
                }
                let c = &containers[&b.container];
                c.download(&b.blob)
                    .await
                    .map_err(|e| ReportError::Endpoint(format!("blob {}: {e}", b.blob)))?
                    .to_vec()
            }
        };
        let messages = decode(&bytes, b.encoding)
            .map_err(|e| ReportError::Endpoint(format!("blob {}: {e}", b.blob)))?;
        out.blobs += 1;
        out.messages += messages.len();
        for m in messages {
            if let Sorted::Rul(r) = classify(&m.to_record()) {
                out.ruls.push(r);
            }
        }
    }
    Ok(Some(out))
}

/// Messages each hub route took, as the hub recorded them in its store (the fallback
/// route's name for messages only it took).
pub fn route_counts(store: &Path) -> Result<BTreeMap<String, u64>, ReportError> {
    let mut counts = BTreeMap::new();
    let mut tail = Tail::new(store);
    tail.poll_lines(|line| {
        if let Ok(r) = serde_json::from_slice::<Record>(line) {
            for route in r.routes.unwrap_or_default() {
                *counts.entry(route).or_default() += 1;
            }
        }
    })
    .map_err(ReportError::io(store))?;
    Ok(counts)
}

/// The RUL figures from one source of RUL messages.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Figures {
    /// RUL messages of this run.
    pub rul_messages: usize,
    /// Engines judged.
    pub engines: usize,
    /// RMSE, cycles.
    pub rmse: Option<f64>,
    /// PHM08 score.
    pub phm08_score: Option<f64>,
    /// Interval coverage and engines with an interval.
    pub interval_coverage: Option<(f64, usize)>,
}

impl Figures {
    /// The figures of `ruls` (this run's, by correlation id) against the truth.
    pub fn of(
        ruls: &[&RulMessage],
        units: &std::collections::HashMap<String, u32>,
        truth: &analysis::Truth,
    ) -> Figures {
        let engines = analysis::engine_results(ruls, units, truth);
        let errors: Vec<f64> = engines.iter().map(|e| e.error).collect();
        Figures {
            rul_messages: ruls.len(),
            engines: engines.len(),
            rmse: analysis::rmse(&errors),
            phm08_score: analysis::phm08_score(&errors),
            interval_coverage: analysis::interval_coverage(&engines),
        }
    }
}

/// The report's section on IoT Hub's message routing.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HubRouting {
    /// Messages each hub route took.
    pub routes: BTreeMap<String, u64>,
    /// The storage endpoint read.
    pub endpoint: String,
    /// Its container.
    pub container: String,
    /// Blobs and messages read from it.
    pub blobs: usize,
    /// Messages in them.
    pub messages: usize,
    /// RUL figures from the endpoint's blobs.
    pub from_endpoint: Figures,
    /// The same figures from everything that reached the hub.
    pub from_hub: Figures,
}

impl HubRouting {
    /// Whether the endpoint gives the same figures as the hub's own store.
    pub fn agrees(&self) -> bool {
        self.from_endpoint == self.from_hub
    }
}
