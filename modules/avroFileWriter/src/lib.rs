//! The `avroFileWriter` module's core: the router's records archived as Avro object container
//! files, one per five-minute bucket (`<root>/<year>/<month>/<day>/<hour>/<minute>.avro`,
//! docs/architecture.md §3), each message acknowledged only once its record is synced to
//! disk; bad records quarantined; quiet files handed to an uploader and deleted once it succeeded.
//!
//! | module | what it does |
//! |---|---|
//! | [`bucket`] | bucket of a record, file paths, the clock |
//! | [`container`] | the container format: header, blocks, scans, repair of torn files |
//! | [`record`] | the schema (parsed once), checks, datum encoding through `apache-avro` |
//! | [`writer`] | group commit: blocks written by one thread, synced by another |
//! | [`archive`] | one input message: budget gate, archive or quarantine, retry |
//! | [`budget`] | `MaxDiskMB`: input stops while the tree is full |
//! | [`scanner`] | quiet files: selection, upload, delete after success, backoff |
//! | [`upload`] | the uploader seam and the directory target |
//! | [`tree`] | listing, start-up repair, pruning, the writer/scanner lock |
//! | [`config`] | settings from the environment and desired properties |

#![warn(missing_docs)]

pub mod archive;
pub mod bucket;
pub mod budget;
pub mod config;
pub mod container;
pub mod record;
pub mod scanner;
pub mod stats;
pub mod tree;
pub mod upload;
pub mod writer;
