//! Shared access signature tokens:
//! `SharedAccessSignature sr={url-encoded resource}&sig={url-encoded base64 HMAC}&se={expiry}[&skn={policy}]`,
//! where the HMAC-SHA256 is computed with the identity's key over `{url-encoded resource}\n{expiry}`.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use percent_encoding::{percent_decode_str, utf8_percent_encode, NON_ALPHANUMERIC};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const PREFIX: &str = "SharedAccessSignature ";

/// Why a token was refused or could not be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SasError {
    /// The text is not a SAS token.
    #[error("not a SharedAccessSignature token: {0}")]
    Malformed(&'static str),
    /// The key is not valid base64.
    #[error("the shared access key is not valid base64")]
    BadKey,
    /// The token's resource is not the identity it was presented for.
    #[error("token is for resource '{found}', expected '{expected}'")]
    WrongResource {
        /// Resource in the token.
        found: String,
        /// Resource of the connecting identity.
        expected: String,
    },
    /// The token has expired.
    #[error("token expired at {expiry} (now {now})")]
    Expired {
        /// Token expiry, seconds since the epoch.
        expiry: u64,
        /// Current time, seconds since the epoch.
        now: u64,
    },
    /// The signature does not match the key.
    #[error("signature does not match the identity's key")]
    BadSignature,
}

/// A parsed SAS token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SasToken {
    /// Resource URI, decoded (e.g. `hub/devices/d/modules/m`).
    pub resource: String,
    /// The `sr` value exactly as it appears in the token (the signed text uses it).
    pub resource_raw: String,
    /// Base64 signature, decoded from the URL encoding.
    pub signature: String,
    /// Expiry, seconds since the epoch.
    pub expiry: u64,
    /// Policy name, when the token was made with a shared access policy.
    pub key_name: Option<String>,
}

/// The resource URI of a device (`{hub}/devices/{device}`) or a module
/// (`{hub}/devices/{device}/modules/{module}`).
pub fn resource_uri(hub: &str, device: &str, module: Option<&str>) -> String {
    match module {
        Some(m) => format!("{hub}/devices/{device}/modules/{m}"),
        None => format!("{hub}/devices/{device}"),
    }
}

/// The text to sign for `resource` and `expiry`.
pub fn string_to_sign(resource: &str, expiry: u64) -> String {
    format!(
        "{}\n{expiry}",
        utf8_percent_encode(resource, NON_ALPHANUMERIC)
    )
}

/// HMAC-SHA256 of `data` with a base64 `key`, as base64.
pub fn sign(key_b64: &str, data: &[u8]) -> Result<String, SasError> {
    let key = B64.decode(key_b64.trim()).map_err(|_| SasError::BadKey)?;
    let mut mac = HmacSha256::new_from_slice(&key).map_err(|_| SasError::BadKey)?;
    mac.update(data);
    Ok(B64.encode(mac.finalize().into_bytes()))
}

/// Builds a token from a signature already computed over [`string_to_sign`] (e.g. by the
/// workload API, which holds the key).
pub fn token_from_signature(resource: &str, signature_b64: &str, expiry: u64) -> String {
    format!(
        "{PREFIX}sr={}&sig={}&se={expiry}",
        utf8_percent_encode(resource, NON_ALPHANUMERIC),
        utf8_percent_encode(signature_b64, NON_ALPHANUMERIC)
    )
}

/// Makes a token for `resource` valid until `expiry` with a base64 key.
pub fn make_token(resource: &str, key_b64: &str, expiry: u64) -> Result<String, SasError> {
    let sig = sign(key_b64, string_to_sign(resource, expiry).as_bytes())?;
    Ok(token_from_signature(resource, &sig, expiry))
}

impl SasToken {
    /// Parses a token.
    pub fn parse(text: &str) -> Result<SasToken, SasError> {
        let body = text.trim().strip_prefix(PREFIX).ok_or(SasError::Malformed(
            "missing 'SharedAccessSignature ' prefix",
        ))?;
        let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
        for part in body.split('&') {
            let (k, v) = part
                .split_once('=')
                .ok_or(SasError::Malformed("field without '='"))?;
            match k {
                "sr" => sr = Some(v),
                "sig" => sig = Some(v),
                "se" => se = Some(v),
                "skn" => skn = Some(v),
                _ => {}
            }
        }
        let sr = sr.ok_or(SasError::Malformed("missing sr"))?;
        let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
        Ok(SasToken {
            resource: decode(sr),
            resource_raw: sr.to_owned(),
            signature: decode(sig.ok_or(SasError::Malformed("missing sig"))?),
            expiry: se
                .ok_or(SasError::Malformed("missing se"))?
                .parse()
                .map_err(|_| SasError::Malformed("se is not a number"))?,
            key_name: skn.map(decode),
        })
    }

    /// Checks the token for `expected_resource` (compared case-insensitively) at time `now`
    /// (seconds since the epoch) against the identity's base64 key.
    pub fn verify(&self, expected_resource: &str, key_b64: &str, now: u64) -> Result<(), SasError> {
        if !self.resource.eq_ignore_ascii_case(expected_resource) {
            return Err(SasError::WrongResource {
                found: self.resource.clone(),
                expected: expected_resource.to_owned(),
            });
        }
        if self.expiry <= now {
            return Err(SasError::Expired {
                expiry: self.expiry,
                now,
            });
        }
        let key = B64.decode(key_b64.trim()).map_err(|_| SasError::BadKey)?;
        let mut mac = HmacSha256::new_from_slice(&key).map_err(|_| SasError::BadKey)?;
        mac.update(format!("{}\n{}", self.resource_raw, self.expiry).as_bytes());
        let sig = B64
            .decode(self.signature.as_bytes())
            .map_err(|_| SasError::BadSignature)?;
        mac.verify_slice(&sig).map_err(|_| SasError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seS0xMjM0NTY=";

    #[test]
    fn made_tokens_verify() {
        let r = resource_uri("hub.example", "edge", Some("router"));
        let t = make_token(&r, KEY, 2_000).unwrap();
        assert!(t.starts_with(
            "SharedAccessSignature sr=hub%2Eexample%2Fdevices%2Fedge%2Fmodules%2Frouter&sig="
        ));
        let p = SasToken::parse(&t).unwrap();
        assert_eq!(p.resource, r);
        assert_eq!(p.verify(&r, KEY, 1_000), Ok(()));
        assert_eq!(p.verify(&r.to_uppercase(), KEY, 1_000), Ok(()));
    }

    #[test]
    fn refuses_wrong_key_resource_and_expiry() {
        let r = resource_uri("hub", "edge", Some("router"));
        let p = SasToken::parse(&make_token(&r, KEY, 2_000).unwrap()).unwrap();
        let other_key = "b3RoZXIta2V5";
        assert_eq!(p.verify(&r, other_key, 1_000), Err(SasError::BadSignature));
        assert!(matches!(
            p.verify("hub/devices/edge/modules/other", KEY, 1_000),
            Err(SasError::WrongResource { .. })
        ));
        assert_eq!(
            p.verify(&r, KEY, 2_000),
            Err(SasError::Expired {
                expiry: 2_000,
                now: 2_000
            })
        );
    }

    #[test]
    fn verifies_tokens_encoded_by_other_clients() {
        // Another SDK may encode the resource with lower-case hex or leave '.' alone; the
        // signature covers `sr` as sent, so verification must use the raw text.
        let raw = "hub.example%2fdevices%2fedge";
        let sig = sign(KEY, format!("{raw}\n99").as_bytes()).unwrap();
        let text = format!(
            "SharedAccessSignature sr={raw}&sig={}&se=99&skn=",
            utf8_percent_encode(&sig, NON_ALPHANUMERIC)
        );
        let p = SasToken::parse(&text).unwrap();
        assert_eq!(p.verify("hub.example/devices/edge", KEY, 1), Ok(()));
    }

    #[test]
    fn malformed_tokens_say_why() {
        assert!(matches!(
            SasToken::parse("Bearer x"),
            Err(SasError::Malformed(_))
        ));
        assert!(matches!(
            SasToken::parse("SharedAccessSignature sr=a&sig=b"),
            Err(SasError::Malformed("missing se"))
        ));
        assert!(matches!(
            SasToken::parse("SharedAccessSignature sr=a&sig=b&se=x"),
            Err(SasError::Malformed("se is not a number"))
        ));
        assert_eq!(sign("not base64!", b"x"), Err(SasError::BadKey));
    }
}
