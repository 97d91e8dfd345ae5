//! NATS JWTs, the format nats-server reads (nats-io/jwt v2): base64url (no padding) of the JSON
//! header `{"typ":"JWT","alg":"ed25519-nkey"}`, a dot, base64url of the JSON claims, a dot, and
//! base64url of the ed25519 signature of the first two parts by the issuer's nkey. The issuer's
//! public nkey is the `iss` claim, so a reader verifies with the key the token names and then
//! decides whether it trusts that key.
//!
//! Why not the `nats-jwt` crate: its 0.3 release encodes account and user claims only (no
//! authorization request or response), and has not moved since 2022; the format is small enough
//! to keep here, on `nkeys` (the crate async-nats already signs with).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use nkeys::KeyPair;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

const HEADER: &str = r#"{"typ":"JWT","alg":"ed25519-nkey"}"#;

/// The registered claims every NATS JWT carries, around its `nats` body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Claims<N> {
    pub jti: String,
    pub iat: u64,
    pub iss: String,
    pub sub: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub aud: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub nats: N,
}

fn malformed(reason: impl Into<String>) -> Error {
    Error::Decode {
        what: "NATS JWT",
        reason: reason.into(),
    }
}

/// Signs `claims` (whose `iss` must be `signer`'s public key) into a JWT.
pub fn encode<N: Serialize>(claims: &Claims<N>, signer: &KeyPair) -> Result<String> {
    let body = serde_json::to_vec(claims).map_err(|e| malformed(e.to_string()))?;
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(HEADER),
        URL_SAFE_NO_PAD.encode(body)
    );
    let sig = signer
        .sign(input.as_bytes())
        .map_err(|e| Error::Nkey(e.to_string()))?;
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

/// Decodes a JWT whose signature verifies against the key its own `iss` names; the caller
/// decides whether that issuer is trusted.
pub fn decode<N: DeserializeOwned>(token: &str) -> Result<Claims<N>> {
    let mut parts = token.split('.');
    let (Some(header), Some(body), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("not three dot-separated parts"));
    };
    let b64 = |what: &str, s: &str| {
        URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|e| malformed(format!("{what}: {e}")))
    };
    #[derive(Deserialize)]
    struct Header {
        typ: String,
        alg: String,
    }
    let h: Header = serde_json::from_slice(&b64("header", header)?)
        .map_err(|e| malformed(format!("header: {e}")))?;
    if !h.typ.eq_ignore_ascii_case("JWT") || !h.alg.eq_ignore_ascii_case("ed25519-nkey") {
        return Err(malformed(format!("unsupported header {}/{}", h.typ, h.alg)));
    }
    let claims: Claims<N> = serde_json::from_slice(&b64("claims", body)?)
        .map_err(|e| malformed(format!("claims: {e}")))?;
    let issuer = KeyPair::from_public_key(&claims.iss)
        .map_err(|e| malformed(format!("issuer {}: {e}", claims.iss)))?;
    let signed = &token[..header.len() + 1 + body.len()];
    issuer
        .verify(signed.as_bytes(), &b64("signature", sig)?)
        .map_err(|_| malformed("the signature does not verify against its issuer"))?;
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_token_decodes_and_a_tampered_one_does_not() {
        let key = KeyPair::new_account();
        let claims = Claims {
            jti: "j".into(),
            iat: 1,
            iss: key.public_key(),
            sub: "s".into(),
            aud: String::new(),
            exp: Some(2),
            name: None,
            nats: serde_json::json!({"type": "user", "version": 2}),
        };
        let token = encode(&claims, &key).expect("encode");
        let back: Claims<serde_json::Value> = decode(&token).expect("decode");
        assert_eq!(back, claims);

        // Another key's signature under the same `iss`: refused.
        let forged = encode(&claims, &KeyPair::new_account()).expect("encode");
        assert!(decode::<serde_json::Value>(&forged).is_err());
        // A changed body: refused.
        let mut parts: Vec<&str> = token.split('.').collect();
        let other = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&Claims {
                sub: "t".into(),
                ..claims
            })
            .expect("json"),
        );
        parts[1] = &other;
        assert!(decode::<serde_json::Value>(&parts.join(".")).is_err());
    }
}
