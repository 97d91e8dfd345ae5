//! A thin, typed face over a KV bucket: the two single-writer primitives (`create`, `update` with
//! a revision) surface as [`Error::AlreadyExists`] and [`Error::WrongRevision`].

use async_nats::jetstream::{self, consumer, kv};
use bytes::Bytes;
use futures::StreamExt;

use crate::envelope::Envelope;
use crate::id::Tenant;
use crate::key::Key;
use crate::provision::Bucket;
use crate::{Bus, Error, Result};

#[derive(Clone)]
pub struct Kv {
    pub(crate) store: kv::Store,
    pub(crate) js: jetstream::Context,
    bucket: Bucket,
}

/// A value and the revision it was read at.
#[derive(Clone, Debug, PartialEq)]
pub struct Versioned<T> {
    pub value: T,
    pub revision: u64,
}

impl Bus {
    /// Opens a provisioned bucket; keep the handle, opening costs a round trip.
    pub async fn kv(&self, bucket: Bucket) -> Result<Kv> {
        let store = self.js.get_key_value(bucket.name()).await.map_err(|e| {
            if matches!(e.kind(), jetstream::context::KeyValueErrorKind::GetBucket) {
                Error::Missing {
                    kind: "bucket",
                    name: bucket.name().to_owned(),
                }
            } else {
                Error::nats(format!("open bucket {}", bucket.name()), e)
            }
        })?;
        Ok(Kv {
            store,
            js: self.js.clone(),
            bucket,
        })
    }
}

impl Bus {
    /// Every run-record write as it happens, decoded, through one core subscription on the
    /// bucket's subjects (no JetStream consumer). Deletes and non-record keys are skipped.
    pub async fn run_record_updates(
        &self,
    ) -> Result<impl futures::Stream<Item = crate::envelope::RunRecord> + Send + Unpin + 'static>
    {
        let subject = format!("$KV.{}.*.*", Bucket::Runs.name());
        let sub = self
            .client
            .subscribe(subject.clone())
            .await
            .map_err(|e| Error::nats(format!("subscribe {subject}"), e))?;
        Ok(sub.filter_map(|m| {
            futures::future::ready(crate::envelope::RunRecord::decode(None, &m.payload).ok())
        }))
    }
}

impl Kv {
    pub fn bucket(&self) -> Bucket {
        self.bucket
    }

    pub(crate) fn op(&self, what: &str, key: impl std::fmt::Display) -> String {
        format!("kv {what} {}/{key}", self.bucket.name())
    }

    /// The current value, or `None` when absent or deleted.
    pub async fn get(&self, key: &Key) -> Result<Option<Versioned<Bytes>>> {
        let entry = self
            .store
            .entry(key.as_str())
            .await
            .map_err(|e| Error::nats(self.op("get", key), e))?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .map(|e| Versioned {
                value: e.value,
                revision: e.revision,
            }))
    }

    /// Creates the key; fails with [`Error::AlreadyExists`] if it holds a value.
    pub async fn create(&self, key: &Key, value: Bytes) -> Result<u64> {
        self.store
            .create(key.as_str(), value)
            .await
            .map_err(|e| match e.kind() {
                kv::CreateErrorKind::AlreadyExists => Error::AlreadyExists {
                    key: key.to_string(),
                },
                _ => Error::nats(self.op("create", key), e),
            })
    }

    /// Compare-and-set; fails with [`Error::WrongRevision`] on a stale revision.
    pub async fn update(&self, key: &Key, value: Bytes, revision: u64) -> Result<u64> {
        self.store
            .update(key.as_str(), value, revision)
            .await
            .map_err(|e| match e.kind() {
                kv::UpdateErrorKind::WrongLastRevision => Error::WrongRevision {
                    key: key.to_string(),
                    expected: revision,
                },
                _ => Error::nats(self.op("update", key), e),
            })
    }

    /// Unconditional write.
    pub async fn put(&self, key: &Key, value: Bytes) -> Result<u64> {
        self.store
            .put(key.as_str(), value)
            .await
            .map_err(|e| Error::nats(self.op("put", key), e))
    }

    pub async fn delete(&self, key: &Key) -> Result<()> {
        self.store
            .delete(key.as_str())
            .await
            .map_err(|e| Error::nats(self.op("delete", key), e))
    }

    pub async fn get_as<T: Envelope>(&self, key: &Key) -> Result<Option<Versioned<T>>> {
        match self.get(key).await? {
            None => Ok(None),
            Some(v) => Ok(Some(Versioned {
                value: T::decode(None, &v.value)?,
                revision: v.revision,
            })),
        }
    }

    pub async fn create_as<T: Envelope>(&self, key: &Key, value: &T) -> Result<u64> {
        self.create(key, value.encode()).await
    }

    pub async fn update_as<T: Envelope>(&self, key: &Key, value: &T, revision: u64) -> Result<u64> {
        self.update(key, value.encode(), revision).await
    }

    pub async fn put_as<T: Envelope>(&self, key: &Key, value: &T) -> Result<u64> {
        self.put(key, value.encode()).await
    }

    /// Every live key of `tenant` (`<tenant>.…`), in no particular order. Reads headers only,
    /// through a short-lived ordered consumer filtered to the tenant.
    pub async fn keys(&self, tenant: &Tenant) -> Result<Vec<Key>> {
        self.keys_matching(&format!("{tenant}.>")).await
    }

    /// Every live key of the bucket.
    pub async fn all_keys(&self) -> Result<Vec<Key>> {
        self.keys_matching(">").await
    }

    async fn keys_matching(&self, pattern: &str) -> Result<Vec<Key>> {
        Ok(self
            .live_entries(pattern, true)
            .await?
            .into_iter()
            .map(|e| e.key)
            .collect())
    }

    /// Every live entry whose key matches `pattern` (KV wildcards), oldest write first: one
    /// short-lived ordered consumer, however many keys.
    pub(crate) async fn entries_matching(&self, pattern: &str) -> Result<Vec<(Key, Bytes)>> {
        Ok(self
            .live_entries(pattern, false)
            .await?
            .into_iter()
            .map(|e| (e.key, e.value))
            .collect())
    }

    /// The live entries (last value per key, deletes and expiry markers left out) of the keys
    /// matching `pattern` (a subject pattern relative to the bucket: `acme.users.*`), in no
    /// particular order, through a short-lived ordered consumer; `headers_only` skips the values.
    pub(crate) async fn live_entries(
        &self,
        pattern: &str,
        headers_only: bool,
    ) -> Result<Vec<Entry>> {
        let op = || self.op("list", pattern);
        let stream_name = format!("KV_{}", self.bucket.name());
        let subject_prefix = format!("$KV.{}.", self.bucket.name());
        let stream = self
            .js
            .get_stream_no_info(&stream_name)
            .await
            .map_err(|e| Error::nats(op(), e))?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: format!("{subject_prefix}{pattern}"),
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                headers_only,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::nats(op(), e))?;
        let mut entries = Vec::new();
        if consumer.cached_info().num_pending == 0 {
            return Ok(entries);
        }
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| Error::nats(op(), e))?;
        while let Some(msg) = messages.next().await {
            let msg = msg.map_err(|e| Error::nats(op(), e))?;
            let (pending, revision) = msg
                .info()
                .map(|i| (i.pending, i.stream_sequence))
                .unwrap_or((0, 0));
            if !is_removal(msg.headers.as_ref())
                && let Some(key) = msg.subject.strip_prefix(subject_prefix.as_str())
                && let Ok(key) = Key::parse(key)
            {
                entries.push(Entry {
                    key,
                    revision,
                    value: if headers_only {
                        Bytes::new()
                    } else {
                        msg.payload.clone()
                    },
                });
            }
            if pending == 0 {
                break;
            }
        }
        Ok(entries)
    }
}

/// One live entry of a listing.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub key: Key,
    pub revision: u64,
    pub value: Bytes,
}

/// Whether a KV message says the key is gone: a delete or purge, or the server's marker for a
/// value removed by its TTL or the bucket's max age.
pub(crate) fn is_removal(headers: Option<&async_nats::HeaderMap>) -> bool {
    headers.is_some_and(|h| {
        h.get("KV-Operation")
            .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE")
            || h.get(async_nats::header::NATS_MARKER_REASON).is_some()
    })
}

impl Bus {
    /// Whether this connection can read `tenant`'s run records with a direct get: the check a
    /// tenant's own NATS user passes once the server has wired its account's imports. Any
    /// answer (a missing key answers 404) is a yes; "no responders" is a no.
    pub async fn can_read_run_records(&self, tenant: &crate::id::Tenant) -> Result<bool> {
        let subject = format!(
            "$JS.API.DIRECT.GET.KV_{bucket}.$KV.{bucket}.{tenant}._probe",
            bucket = Bucket::Runs.name()
        );
        match self.client.request(subject.clone(), Bytes::new()).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => Ok(false),
            Err(e) => Err(Error::nats(format!("request {subject}"), e)),
        }
    }
}
