//! Files to Azure blob storage from a device, as block blobs, three ways:
//! - [`FileUploader`]: IoT Hub file upload with the device identity (ask the hub for a SAS
//!   URI, write the blob, notify the hub), the bodies being [`edge_protocol::file_upload`]'s;
//! - [`ContainerUploader`]: straight into a container through a container SAS URL;
//! - [`AccountUploader`]: into a container of a storage account, each request signed with
//!   the account key (Shared Key), e.g. the "Azure Blob Storage on IoT Edge" module.
//!
//! HTTPS trusts the system's roots plus an extra PEM bundle (the edge trust bundle). Every
//! failure is an [`Error`] that says what the caller can do about it.

#![warn(missing_docs)]

pub mod blob;
mod error;
mod https;
pub mod upload;

pub use blob::{AccountUploader, StorageAccount, AZURITE_ACCOUNT, AZURITE_KEY};
pub use error::Error;
pub use upload::{find_connection_string, ContainerUploader, FileUploader, Uploaded};
