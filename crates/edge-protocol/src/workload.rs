//! The workload API's HTTP contract, as the local runtime serves it and the module client
//! (and Microsoft's SDKs) call it: the routes, the paths with their `api-version`, and the
//! JSON bodies.
//!
//! - `POST /modules/{module}/genid/{genid}/sign` [`SignRequest`] → [`SignResponse`]
//! - `GET /trust-bundle` → [`TrustBundleResponse`]
//! - an error: [`ErrorResponse`]

use serde::{Deserialize, Serialize};

/// The sign route, with its `{module}` and `{genid}` parameters (axum's syntax).
pub const SIGN_ROUTE: &str = "/modules/{module}/genid/{genid}/sign";
/// The trust bundle route.
pub const TRUST_BUNDLE_ROUTE: &str = "/trust-bundle";

/// The only key a module signs with.
pub const KEY_ID_PRIMARY: &str = "primary";
/// The only signing algorithm.
pub const ALGO_HMAC_SHA256: &str = "HMACSHA256";

/// The path of a sign request for `module` of generation `generation_id`.
pub fn sign_path(module: &str, generation_id: &str, api_version: &str) -> String {
    format!("/modules/{module}/genid/{generation_id}/sign?api-version={api_version}")
}

/// The path of a trust bundle request.
pub fn trust_bundle_path(api_version: &str) -> String {
    format!("{TRUST_BUNDLE_ROUTE}?api-version={api_version}")
}

/// A sign request's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignRequest {
    /// Which key: [`KEY_ID_PRIMARY`].
    pub key_id: String,
    /// How: [`ALGO_HMAC_SHA256`].
    pub algo: String,
    /// What to sign, base64.
    pub data: String,
}

impl SignRequest {
    /// HMAC-SHA256 of `data_base64` with the primary key: the request every SAS token needs.
    pub fn primary_hmac_sha256(data_base64: String) -> SignRequest {
        SignRequest {
            key_id: KEY_ID_PRIMARY.to_owned(),
            algo: ALGO_HMAC_SHA256.to_owned(),
            data: data_base64,
        }
    }

    /// Whether it asks what the runtime signs: the primary key, HMAC-SHA256.
    pub fn is_supported(&self) -> bool {
        self.key_id == KEY_ID_PRIMARY && self.algo == ALGO_HMAC_SHA256
    }
}

/// A sign request's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignResponse {
    /// The signature, base64.
    pub digest: String,
}

/// The trust bundle's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustBundleResponse {
    /// The CA certificates, PEM.
    pub certificate: String,
}

/// A refused request's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// Why.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_fill_the_routes() {
        let path = sign_path("router", "g1", "2019-01-30");
        assert_eq!(path, "/modules/router/genid/g1/sign?api-version=2019-01-30");
        let route = SIGN_ROUTE
            .replace("{module}", "router")
            .replace("{genid}", "g1");
        assert_eq!(path.split('?').next(), Some(route.as_str()));
        assert_eq!(trust_bundle_path("v"), "/trust-bundle?api-version=v");
    }

    #[test]
    fn bodies_are_the_sdks_json() {
        let req = SignRequest::primary_hmac_sha256("ZGF0YQ==".into());
        let v: serde_json::Value = serde_json::to_value(&req).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"keyId": "primary", "algo": "HMACSHA256", "data": "ZGF0YQ=="})
        );
        assert!(req.is_supported());
        let r: SignResponse = serde_json::from_str(r#"{"digest":"x"}"#).unwrap();
        assert_eq!(r.digest, "x");
        let t: TrustBundleResponse = serde_json::from_str(r#"{"certificate":"PEM"}"#).unwrap();
        assert_eq!(t.certificate, "PEM");
    }
}
