//! Revoked tokens: a deny-list of token ids (`jti`) in KV `agentos-revoked`, one entry per
//! revoked token under the digest of its `jti`, kept (per-message TTL) until the token would have
//! expired anyway. Readers load the list and follow new entries through one core subscription.

use async_nats::HeaderMap;
use async_nats::header::NATS_MESSAGE_TTL;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::envelope::Envelope;
use crate::provision::Bucket;
use crate::{Bus, Error, Key, Result};

/// One revoked token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Revoked {
    /// Until when it matters: the token's own expiry (or a bound the revoker chose).
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
}

impl Envelope for Revoked {
    const WHAT: &'static str = "revocation";
}

/// The entry name of a `jti`: its digest, so any string an issuer uses makes a valid key.
pub fn revocation_key(jti: &str) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, jti.as_bytes())
        .simple()
        .to_string()
}

impl Bus {
    /// Revokes the token `jti` until `until` (the entry then expires with it).
    pub async fn revoke_token(&self, jti: &str, until: OffsetDateTime) -> Result<()> {
        let key = Key::parse(revocation_key(jti))?;
        let ttl = (until - OffsetDateTime::now_utc()).whole_seconds().max(1);
        let mut headers = HeaderMap::new();
        headers.insert(NATS_MESSAGE_TTL, ttl.to_string().as_str());
        let subject = format!("$KV.{}.{}", Bucket::Revoked.name(), key.as_str());
        self.js
            .publish_with_headers(subject.clone(), headers, Revoked { until }.encode())
            .await
            .map_err(|e| Error::nats(format!("revoke via {subject}"), e))?
            .await
            .map_err(|e| Error::nats(format!("revoke via {subject}"), e))?;
        Ok(())
    }

    /// Every revocation written from now on: `(entry name, revocation)`.
    pub async fn revocation_updates(
        &self,
    ) -> Result<impl Stream<Item = (String, Revoked)> + Send + Unpin + use<>> {
        let subject = format!("$KV.{}.>", Bucket::Revoked.name());
        let sub = self
            .client
            .subscribe(subject.clone())
            .await
            .map_err(|e| Error::nats(format!("subscribe {subject}"), e))?;
        Ok(sub.filter_map(|m| {
            let key = m.subject.as_str().rsplit('.').next().map(str::to_owned);
            let value = Revoked::decode(None, &m.payload).ok();
            futures::future::ready(key.zip(value))
        }))
    }

    /// The revocations stored now.
    pub async fn revocations(&self) -> Result<Vec<(String, Revoked)>> {
        let kv = self.kv(Bucket::Revoked).await?;
        let mut out = Vec::new();
        for key in kv.all_keys().await? {
            if let Some(v) = kv.get_as::<Revoked>(&key).await? {
                out.push((key.as_str().to_owned(), v.value));
            }
        }
        Ok(out)
    }
}
