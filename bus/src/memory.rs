//! Tenant memory: JSON items in KV `agentos-memory` under `<tenant>.<namespace…>.<key>`, with
//! compare-and-set on the item's revision and a per-item TTL enforced by NATS (per-message TTL,
//! `Nats-TTL`; the bucket is provisioned with `allow_msg_ttl`). Ranking for semantic search is
//! plain cosine similarity over the vectors stored with the items ([`cosine`]).

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::header::{NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, NATS_MESSAGE_TTL, NATS_ROLLUP};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::kv::Operation;
use bytes::Bytes;

use crate::envelope::{Envelope, MemoryItem};
use crate::id::{MemoryKey, Namespace, Tenant};
use crate::key::{self, Key};
use crate::kv::Kv;
use crate::provision::{Bucket, MARKER_TTL};
use crate::{Bus, Error, Result, Versioned};

/// Largest value, counted as its compact JSON text.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Longest TTL an item may ask for (one year).
pub const MAX_TTL: Duration = Duration::from_secs(365 * 86_400);

/// The condition a write is made under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Whatever is there (or nothing).
    Any,
    /// Only if the item does not exist (`If-None-Match: *`).
    Absent,
    /// Only if the item is at this revision (`If-Match`).
    Revision(u64),
}

/// Memory items of every tenant; cheap to clone.
#[derive(Clone)]
pub struct Memory {
    kv: Kv,
    ttl_enabled: bool,
}

impl Bus {
    /// Opens the memory bucket, noting whether it takes per-item TTLs (a bucket provisioned by
    /// an older release does not: see provisioning drift).
    pub async fn memory(&self) -> Result<Memory> {
        let kv = self.kv(Bucket::Memory).await?;
        let name = format!("KV_{}", Bucket::Memory.name());
        let mut stream = self
            .js
            .get_stream(&name)
            .await
            .map_err(|e| Error::nats(format!("get stream {name}"), e))?;
        let ttl_enabled = stream
            .info()
            .await
            .map_err(|e| Error::nats(format!("stream info {name}"), e))?
            .config
            .allow_message_ttl;
        if !ttl_enabled {
            tracing::warn!(
                bucket = Bucket::Memory.name(),
                "the memory bucket does not allow per-message TTLs (provisioned by an older release); items with ttl_s are refused"
            );
        }
        Ok(Memory { kv, ttl_enabled })
    }
}

impl Memory {
    fn subject(&self, key: &Key) -> String {
        format!("$KV.{}.{key}", Bucket::Memory.name())
    }

    /// The item, or `None` when absent, deleted or expired.
    pub async fn get(
        &self,
        tenant: &Tenant,
        namespace: &Namespace,
        key: &MemoryKey,
    ) -> Result<Option<Versioned<MemoryItem>>> {
        let key = key::memory(tenant, namespace, key);
        self.kv.get_as::<MemoryItem>(&key).await
    }

    /// Writes the item under `expect`; its new revision. A stale revision is
    /// [`Error::WrongRevision`], an existing item under [`Expect::Absent`] is
    /// [`Error::AlreadyExists`].
    pub async fn put(
        &self,
        tenant: &Tenant,
        namespace: &Namespace,
        key: &MemoryKey,
        item: &MemoryItem,
        ttl: Option<Duration>,
        expect: Expect,
    ) -> Result<u64> {
        let key = key::memory(tenant, namespace, key);
        if ttl.is_some() && !self.ttl_enabled {
            return Err(Error::TtlDisabled {
                bucket: Bucket::Memory.name(),
            });
        }
        let payload = item.encode();
        match expect {
            Expect::Any => self.publish(&key, payload, ttl, None).await,
            Expect::Revision(rev) => self.publish(&key, payload, ttl, Some(rev)).await,
            Expect::Absent => {
                // An item that never existed has last subject sequence 0; one that was deleted
                // or expired has its removal marker last, and counts as absent too.
                let mut expected = 0;
                for _ in 0..3 {
                    match self
                        .publish(&key, payload.clone(), ttl, Some(expected))
                        .await
                    {
                        Err(Error::WrongRevision { .. }) => {}
                        other => return other,
                    }
                    match self.last_removal(&key).await? {
                        Some(rev) => expected = rev,
                        None => {
                            return Err(Error::AlreadyExists {
                                key: key.to_string(),
                            });
                        }
                    }
                }
                Err(Error::AlreadyExists {
                    key: key.to_string(),
                })
            }
        }
    }

    /// Deletes the item (at `revision`, when given). The removal is a purge marker that itself
    /// expires after [`MARKER_TTL`], so deleted items leave nothing behind for long.
    pub async fn delete(
        &self,
        tenant: &Tenant,
        namespace: &Namespace,
        key: &MemoryKey,
        revision: Option<u64>,
    ) -> Result<()> {
        let key = key::memory(tenant, namespace, key);
        let mut headers = HeaderMap::new();
        headers.insert("KV-Operation", "PURGE");
        headers.insert(NATS_ROLLUP, "sub");
        if self.ttl_enabled {
            headers.insert(NATS_MESSAGE_TTL, MARKER_TTL.as_secs().to_string().as_str());
        }
        if let Some(rev) = revision {
            headers.insert(
                NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                rev.to_string().as_str(),
            );
        }
        self.send(&key, headers, Bytes::new(), revision)
            .await
            .map(|_| ())
    }

    /// The keys of a namespace's live items with their revisions, sorted by key. Reads headers
    /// only: one message per item of the namespace.
    pub async fn list(
        &self,
        tenant: &Tenant,
        namespace: &Namespace,
    ) -> Result<Vec<(MemoryKey, u64)>> {
        let mut out: Vec<_> = self
            .entries(tenant, namespace, true)
            .await?
            .into_iter()
            .map(|(k, rev, _)| (k, rev))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Every live item of a namespace with its value, sorted by key; refuses a namespace of more
    /// than `max` items ([`Error::TooLarge`]) rather than read without bound.
    pub async fn scan(
        &self,
        tenant: &Tenant,
        namespace: &Namespace,
        max: usize,
    ) -> Result<Vec<(MemoryKey, Versioned<MemoryItem>)>> {
        let entries = self.entries(tenant, namespace, false).await?;
        if entries.len() > max {
            return Err(Error::TooLarge {
                what: format!("namespace {namespace}"),
                limit: max,
            });
        }
        let mut out = Vec::with_capacity(entries.len());
        for (key, revision, value) in entries {
            match MemoryItem::decode(None, &value) {
                Ok(value) => out.push((key, Versioned { value, revision })),
                Err(e) => {
                    tracing::warn!(%namespace, key = %key, error = %e, "skipping undecodable memory item")
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    async fn entries(
        &self,
        tenant: &Tenant,
        namespace: &Namespace,
        headers_only: bool,
    ) -> Result<Vec<(MemoryKey, u64, Bytes)>> {
        let prefix = key::memory_namespace(tenant, namespace);
        let pattern = format!("{prefix}.*");
        Ok(self
            .kv
            .live_entries(&pattern, headers_only)
            .await?
            .into_iter()
            .filter_map(|e| {
                let tail = e
                    .key
                    .as_str()
                    .strip_prefix(prefix.as_str())?
                    .strip_prefix('.')?;
                Some((MemoryKey::parse(tail).ok()?, e.revision, e.value))
            })
            .collect())
    }

    /// The revision of the key's last message when that message is a removal (delete, purge
    /// or expiry marker); `None` when the key holds a value.
    async fn last_removal(&self, key: &Key) -> Result<Option<u64>> {
        let entry = self
            .kv
            .store
            .entry(key.as_str())
            .await
            .map_err(|e| Error::nats(self.kv.op("get", key), e))?;
        Ok(match entry {
            None => Some(0),
            Some(e) if e.operation == Operation::Put => None,
            Some(e) => Some(e.revision),
        })
    }

    async fn publish(
        &self,
        key: &Key,
        payload: Bytes,
        ttl: Option<Duration>,
        expected: Option<u64>,
    ) -> Result<u64> {
        let mut headers = HeaderMap::new();
        if let Some(ttl) = ttl {
            headers.insert(NATS_MESSAGE_TTL, ttl.as_secs().max(1).to_string().as_str());
        }
        if let Some(rev) = expected {
            headers.insert(
                NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                rev.to_string().as_str(),
            );
        }
        self.send(key, headers, payload, expected).await
    }

    async fn send(
        &self,
        key: &Key,
        headers: HeaderMap,
        payload: Bytes,
        expected: Option<u64>,
    ) -> Result<u64> {
        let subject = self.subject(key);
        let fail = |e: async_nats::jetstream::context::PublishError| match e.kind() {
            PublishErrorKind::WrongLastSequence => Error::WrongRevision {
                key: key.to_string(),
                expected: expected.unwrap_or_default(),
            },
            PublishErrorKind::TimedOut => Error::TimedOut {
                op: self.kv.op("put", key),
                after: Duration::ZERO,
            },
            _ => Error::nats(self.kv.op("put", key), e),
        };
        let ack = self
            .kv
            .js
            .publish_with_headers(subject, headers, payload)
            .await
            .map_err(fail)?
            .await
            .map_err(fail)?;
        Ok(ack.sequence)
    }
}

/// Cosine similarity of two vectors; `None` when their lengths differ or one is all zeros.
pub fn cosine(a: &[f32], b: &[f32]) -> Option<f32> {
    if a.len() != b.len() || a.is_empty() {
        return None;
    }
    let (mut dot, mut na, mut nb) = (0f32, 0f32, 0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        return None;
    }
    Some(dot / (na.sqrt() * nb.sqrt()))
}

/// Whether `value` matches `filter`: every field of the filter object is present in the value
/// with an equal JSON value; nested objects match recursively (a subset), anything else by
/// equality.
pub fn matches_filter(
    value: &serde_json::Value,
    filter: &serde_json::Map<String, serde_json::Value>,
) -> bool {
    let Some(obj) = value.as_object() else {
        return filter.is_empty();
    };
    filter
        .iter()
        .all(|(field, want)| match (obj.get(field), want) {
            (Some(have), serde_json::Value::Object(sub)) => matches_filter(have, sub),
            (Some(have), want) => have == want,
            (None, _) => false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cosine_ranks_parallel_vectors_first() {
        assert_eq!(cosine(&[1.0, 0.0], &[2.0, 0.0]), Some(1.0));
        assert_eq!(cosine(&[1.0, 0.0], &[0.0, 1.0]), Some(0.0));
        assert_eq!(cosine(&[1.0], &[1.0, 0.0]), None);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), None);
    }

    #[test]
    fn filters_match_fields_as_a_subset() {
        let v = json!({"kind": "fact", "user": {"name": "alice", "age": 3}, "n": 1});
        let f = |j: serde_json::Value| j.as_object().cloned().unwrap_or_default();
        assert!(matches_filter(&v, &f(json!({}))));
        assert!(matches_filter(&v, &f(json!({"kind": "fact"}))));
        assert!(matches_filter(
            &v,
            &f(json!({"user": {"name": "alice"}, "n": 1}))
        ));
        assert!(!matches_filter(&v, &f(json!({"kind": "pref"}))));
        assert!(!matches_filter(&v, &f(json!({"missing": null}))));
        assert!(!matches_filter(&json!("text"), &f(json!({"kind": "fact"}))));
    }
}
