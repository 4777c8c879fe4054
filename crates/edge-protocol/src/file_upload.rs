//! IoT Hub's file-upload API for devices (HTTPS, with the device's SAS token), the one
//! definition of its request and answer bodies: the upload client (`cloud-upload`) writes
//! the requests and reads the answers, the local runtime's IoT Hub (`iotedge-local`) reads
//! the requests and writes the answers, and Microsoft's device SDKs talk to the latter.
//!
//! 1. `POST /devices/{id}/files?api-version=…` with a [`SasUriRequest`] → a [`SasUri`];
//! 2. the device `PUT`s the blob to `https://{hostName}/{containerName}/{blobName}{sasToken}`;
//! 3. `POST /devices/{id}/files/notifications?api-version=…` with a [`Notification`] → 204.
//!
//! A refusal carries an [`ErrorBody`]. Field names are IoT Hub's (camelCase, `Message`);
//! fields are declared in the order the JSON has them.

use serde::{Deserialize, Serialize};

/// The IoT Hub REST API version the client asks for.
pub const API_VERSION: &str = "2021-04-12";
/// The route of step 1, with the device id as `{id}` (an axum path template).
pub const SAS_URI_ROUTE: &str = "/devices/{id}/files";
/// The route of step 3, with the device id as `{id}`.
pub const NOTIFICATION_ROUTE: &str = "/devices/{id}/files/notifications";

/// The path of step 1 for `device_id`.
pub fn sas_uri_path(device_id: &str) -> String {
    SAS_URI_ROUTE.replace("{id}", device_id)
}

/// The path of step 3 for `device_id`.
pub fn notification_path(device_id: &str) -> String {
    NOTIFICATION_ROUTE.replace("{id}", device_id)
}

/// Step 1's body: the blob the device wants to write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SasUriRequest {
    /// The blob's name; IoT Hub stores it as `{deviceId}/{blobName}`.
    pub blob_name: String,
}

/// Step 1's answer: where to write the blob and the SAS token allowing it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SasUri {
    /// The blob's full name, `{deviceId}/{blobName}`.
    pub blob_name: String,
    /// The storage container.
    pub container_name: String,
    /// The upload's id, given back in the [`Notification`].
    pub correlation_id: String,
    /// The blob service's host (and, for an emulator, its account path).
    pub host_name: String,
    /// The SAS query, starting with `?`.
    pub sas_token: String,
}

impl SasUri {
    /// The blob's URL without the token: `https://{hostName}/{containerName}/{blobName}`.
    pub fn blob_url(&self) -> String {
        format!(
            "https://{}/{}/{}",
            self.host_name, self.container_name, self.blob_name
        )
    }
}

/// Step 3's body: how writing the blob went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    /// The [`SasUri::correlation_id`] of the upload.
    pub correlation_id: String,
    /// Whether the blob was written.
    pub is_success: bool,
    /// The blob service's HTTP status (optional for the hub).
    pub status_code: Option<i64>,
    /// What the blob service said (optional for the hub).
    pub status_description: Option<String>,
}

/// IoT Hub's answer to a refused request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Why.
    #[serde(rename = "Message")]
    pub message: String,
    /// IoT Hub's error code, when it has one (e.g. 403006, too many uploads in progress).
    #[serde(rename = "errorCode", default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<u32>,
}

/// IoT Hub's error code for a device with too many uploads in progress
/// (`DeviceMaximumActiveFileUploadLimitExceeded`).
pub const TOO_MANY_ACTIVE_UPLOADS: u32 = 403006;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_spelled_as_iot_hub_spells_them() {
        let request = SasUriRequest {
            blob_name: "2026/11/21/5/15.avro".into(),
        };
        assert_eq!(
            serde_json::to_string(&request).unwrap(),
            r#"{"blobName":"2026/11/21/5/15.avro"}"#
        );
        let sas = SasUri {
            blob_name: "edge/a.avro".into(),
            container_name: "avrofiles".into(),
            correlation_id: "c1".into(),
            host_name: "127.0.0.1:10000/devstoreaccount1".into(),
            sas_token: "?sv=1&sig=x".into(),
        };
        assert_eq!(
            serde_json::to_string(&sas).unwrap(),
            r#"{"blobName":"edge/a.avro","containerName":"avrofiles","correlationId":"c1","hostName":"127.0.0.1:10000/devstoreaccount1","sasToken":"?sv=1&sig=x"}"#
        );
        assert_eq!(
            sas.blob_url(),
            "https://127.0.0.1:10000/devstoreaccount1/avrofiles/edge/a.avro"
        );
        let note = Notification {
            correlation_id: "c1".into(),
            is_success: true,
            status_code: Some(201),
            status_description: Some("uploaded".into()),
        };
        assert_eq!(
            serde_json::to_string(&note).unwrap(),
            r#"{"correlationId":"c1","isSuccess":true,"statusCode":201,"statusDescription":"uploaded"}"#
        );
        let refusal = ErrorBody {
            message: "no".into(),
            error_code: Some(TOO_MANY_ACTIVE_UPLOADS),
        };
        assert_eq!(
            serde_json::to_string(&refusal).unwrap(),
            r#"{"Message":"no","errorCode":403006}"#
        );
        let plain = ErrorBody {
            message: "no".into(),
            error_code: None,
        };
        assert_eq!(
            serde_json::to_string(&plain).unwrap(),
            r#"{"Message":"no"}"#
        );
        assert_eq!(sas_uri_path("d1"), "/devices/d1/files");
        assert_eq!(notification_path("d1"), "/devices/d1/files/notifications");
    }

    #[test]
    fn a_notification_without_status_is_read() {
        let n: Notification =
            serde_json::from_str(r#"{"correlationId":"c","isSuccess":false}"#).unwrap();
        assert_eq!((n.status_code, n.status_description), (None, None));
    }
}
