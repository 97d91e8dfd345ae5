//! The audit log: `agentos.audit.<tenant>` in stream `AGENTOS_AUDIT` (limits, long retention).

use async_nats::jetstream::consumer;
use futures::StreamExt;

use crate::envelope::{AuditRecord, Envelope};
use crate::id::Tenant;
use crate::provision::STREAM_AUDIT;
use crate::{Bus, Error, Result, subject};

impl Bus {
    /// Appends an audit record and waits until it is stored.
    pub async fn audit(&self, record: &AuditRecord) -> Result<u64> {
        self.publish_raw(&subject::audit(&record.tenant), record.encode())
            .await
    }

    /// Up to `limit` audit records after stream sequence `after`, oldest first; one tenant's or
    /// everyone's. Returns `(sequence, record)` pairs; the last sequence is the next cursor.
    pub async fn read_audit(
        &self,
        tenant: Option<&Tenant>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, AuditRecord)>> {
        let op = || "read audit".to_owned();
        // Past the last possible sequence there is nothing to read.
        let Some(start_sequence) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let stream = self
            .js
            .get_stream_no_info(STREAM_AUDIT)
            .await
            .map_err(|e| Error::nats(op(), e))?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: tenant.map_or_else(
                    || subject::filter::AUDIT.to_owned(),
                    |t| subject::audit(t).into(),
                ),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence },
                ..Default::default()
            })
            .await
            .map_err(|e| Error::nats(op(), e))?;
        let name = consumer.cached_info().name.clone();
        let out = read_page(consumer, limit).await;
        // Ordered consumers linger until their inactivity threshold: one per page would pile up
        // (a filtered read pages through the whole log) until JetStream refuses new ones.
        if let Err(e) = stream.delete_consumer(&name).await {
            tracing::debug!(error = %e, "audit reader not deleted; it lapses on its own");
        }
        out
    }
}

async fn read_page(
    consumer: consumer::Consumer<consumer::pull::OrderedConfig>,
    limit: usize,
) -> Result<Vec<(u64, AuditRecord)>> {
    let op = || "read audit".to_owned();
    let mut out = Vec::new();
    if consumer.cached_info().num_pending == 0 || limit == 0 {
        return Ok(out);
    }
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| Error::nats(op(), e))?;
    while let Some(msg) = messages.next().await {
        let msg = msg.map_err(|e| Error::nats(op(), e))?;
        let info = msg.info().map_err(|e| Error::nats(op(), e))?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        if let Ok(record) = AuditRecord::decode(None, &msg.payload) {
            out.push((seq, record));
        }
        if pending == 0 || out.len() >= limit {
            break;
        }
    }
    Ok(out)
}
