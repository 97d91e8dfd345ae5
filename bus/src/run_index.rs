//! The run index: one entry per run, its id, on `agentos.runidx.<tenant>.<agent>` in stream
//! `AGENTOS_RUN_INDEX`, in creation order, so a page of a tenant's runs, newest first, costs a
//! few direct gets whatever the tenant's history.
//!
//! JetStream reads forward only, so a page is found by counting: a batched direct get from
//! stream sequence `x` reports how many entries of the filter lie at or after `x`
//! (`Nats-Num-Pending`, cheap because the subjects are per agent, not per run), so `x` is moved
//! until the window `[x, end)` holds the page (interpolating on the density seen, halving at
//! worst), then that window is read in one batch. A cursor (a run id) is found by a search
//! keyed by id: entries are in creation order, which is id order.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use futures::StreamExt;

use crate::id::{AgentId, RunId, Tenant};
use crate::provision::STREAM_RUN_INDEX;
use crate::{Bus, Error, Result, headers, subject};

const DIRECT_GET_TIMEOUT: Duration = Duration::from_secs(5);
/// A window may hold up to this many times the page before it is narrowed further.
const SLACK: u64 = 4;
const MAX_PROBES: usize = 64;
/// Entries read on each side of the spot where a cursor's entry should be, when the search
/// did not land on it (runs created at the same moment may be indexed out of id order).
const CURSOR_SCAN: u64 = 32;

/// An index write whose ack has not been awaited yet; see [`Bus::index_run`].
pub struct PendingIndex {
    subject: String,
    ack: jetstream::context::PublishAckFuture,
}

impl PendingIndex {
    /// Waits for the server to store the entry (a duplicate within the dedup window is a no-op).
    pub async fn stored(self) -> Result<()> {
        self.ack
            .await
            .map(|_| ())
            .map_err(|e| Error::nats(format!("index run on {}", self.subject), e))
    }
}

/// A page of the run index, newest first, and what it cost.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexPage {
    pub runs: Vec<RunId>,
    /// Direct gets this page cost (cursor lookup, counting probes, the read).
    pub requests: usize,
    /// Index entries fetched (cursor lookup and the read window).
    pub entries_read: usize,
}

/// One message of a direct get reply.
struct Got {
    seq: u64,
    run: Option<RunId>,
    /// Entries of the filter after this one, when the server reports it.
    pending: Option<u64>,
}

fn header_u64(h: Option<&HeaderMap>, name: &str) -> Option<u64> {
    h?.get(name)?.as_str().parse().ok()
}

impl Bus {
    /// Sends `run`'s index entry without awaiting the ack (await [`PendingIndex::stored`]).
    /// `Nats-Msg-Id = idx:<run_id>`, so a repeat within the dedup window stores nothing.
    pub async fn index_run(
        &self,
        tenant: &Tenant,
        agent: &AgentId,
        run: &RunId,
    ) -> Result<PendingIndex> {
        let subject = String::from(subject::run_index(tenant, agent));
        let mut h = HeaderMap::new();
        h.insert(headers::MSG_ID, format!("idx:{run}").as_str());
        let publish = jetstream::message::PublishMessage::build()
            .headers(h)
            .payload(Bytes::from(run.to_string()));
        let ack = self
            .js
            .send_publish(subject.clone(), publish)
            .await
            .map_err(|e| Error::nats(format!("index run on {subject}"), e))?;
        Ok(PendingIndex { subject, ack })
    }

    /// Indexes many runs (pipelined, in the given order): backfills and benchmarks.
    pub async fn index_runs(&self, runs: &[(Tenant, AgentId, RunId)]) -> Result<()> {
        for chunk in runs.chunks(1024) {
            let mut pending = Vec::with_capacity(chunk.len());
            for (t, a, r) in chunk {
                pending.push(self.index_run(t, a, r).await?);
            }
            for p in pending {
                p.stored().await?;
            }
        }
        Ok(())
    }

    /// Up to `limit` runs of `tenant` (of one agent if given), newest first, older than `before`
    /// (a run id from an earlier page). Fewer than `limit` means the index has no more.
    pub async fn run_index_page(
        &self,
        tenant: &Tenant,
        agent: Option<&AgentId>,
        before: Option<&RunId>,
        limit: usize,
    ) -> Result<IndexPage> {
        let filter = String::from(match agent {
            Some(a) => subject::run_index(tenant, a),
            None => subject::run_index_all(tenant),
        });
        let mut page = IndexPage::default();
        let want = u64::try_from(limit).unwrap_or(u64::MAX);
        if want == 0 {
            return Ok(page);
        }
        // The window is [x, end); `above` counts the filter's entries at or after `end`.
        let (end, above, bounded) = match before {
            Some(run) => match self.locate(&filter, run, &mut page).await? {
                Some(seq) => {
                    page.requests += 1;
                    (seq, self.count_from(&filter, seq).await?, true)
                }
                None => return Ok(page),
            },
            None => {
                page.requests += 1;
                match self
                    .direct_one(&serde_json::json!({ "last_by_subj": filter }))
                    .await?
                {
                    None => return Ok(page),
                    Some(last) => (last.seq + 1, 0, false),
                }
            }
        };
        if end <= 1 {
            return Ok(page);
        }
        // Window sizes (in stream sequences): `lo` is known to hold fewer than `want` entries,
        // `hi` more than SLACK * want; each sequence holds at most one entry.
        let (mut lo, mut hi) = (0_u64, None::<u64>);
        let mut size = want.min(end - 1);
        let mut interpolate = true;
        for _ in 0..MAX_PROBES {
            let x = end - size;
            page.requests += 1;
            let counted = self.count_from(&filter, x).await?.saturating_sub(above);
            if (want..=SLACK * want).contains(&counted) || counted < want && x == 1 {
                if counted == 0 {
                    return Ok(page);
                }
                page.requests += 1;
                let entries = self.direct_batch(&batch_from(&filter, x, counted)).await?;
                page.entries_read += entries.len();
                let mut runs: Vec<RunId> = entries
                    .iter()
                    .filter(|g| !bounded || g.seq < end)
                    .filter_map(|g| g.run)
                    .collect();
                // Fewer than counted: entries that arrived meanwhile were counted too; widen.
                if runs.len() >= limit || x == 1 {
                    runs.reverse();
                    runs.truncate(limit);
                    page.runs = runs;
                    return Ok(page);
                }
                lo = size;
            } else if counted < want {
                lo = size;
            } else {
                hi = Some(size);
            }
            // Next size: interpolate on the density seen (aiming at 1.25 * want), alternating
            // with halving once both bounds are known, so the search ends in O(log) probes.
            let guess = u64::try_from(
                u128::from(size) * u128::from(want + want / 4 + 1) / u128::from(counted.max(1)),
            )
            .unwrap_or(u64::MAX);
            size = match hi {
                None => guess.max(size.saturating_mul(2)).min(end - 1),
                Some(h) if h <= lo + 1 => h,
                Some(h) => {
                    interpolate = !interpolate;
                    if interpolate {
                        guess
                    } else {
                        lo + (h - lo) / 2
                    }
                    .clamp(lo + 1, h - 1)
                }
            };
        }
        Err(Error::nats(
            format!("page of {filter}"),
            "the run index search did not converge",
        ))
    }

    /// Where the page before `run` ends: the stream sequence of `run`'s entry, or of the first
    /// entry with a later id. Entries are in creation order, which is id order (UUIDv7) up to
    /// runs created within the same moment, so this is a search over stream sequences keyed by
    /// id: interpolated on the ids' timestamps, alternating with halving, then a look around
    /// the spot for the exact id. `None`: nothing is older than `run`.
    async fn locate(&self, filter: &str, run: &RunId, page: &mut IndexPage) -> Result<Option<u64>> {
        page.requests += 2;
        let (Some(first), Some(last)) = (
            self.direct_one(&next_from(filter, 1)).await?,
            self.direct_one(&serde_json::json!({ "last_by_subj": filter }))
                .await?,
        ) else {
            return Ok(None);
        };
        let key = |g: &Got| g.run.unwrap_or_default();
        if key(&first) >= *run {
            return Ok(None);
        }
        if key(&last) < *run {
            return Ok(Some(last.seq + 1));
        }
        // Entries at stream seqs <= lo are older than `run`; the one at hi is `run` or newer;
        // seqs in (ub, hi) hold no entry of the filter.
        let (mut lo, mut lo_key) = (first.seq, key(&first).as_u128());
        let (mut hi, mut hi_run) = (last.seq, key(&last));
        let mut ub = hi - 1;
        let target = run.as_u128();
        let mut halve = false;
        while ub > lo && hi_run != *run {
            let hi_key = hi_run.as_u128();
            let guess = if halve || hi_key <= lo_key {
                lo + (ub - lo).div_ceil(2)
            } else {
                // The fraction of the id range below the target, in f64: precise enough for a
                // guess, and the clamp below keeps it in range.
                #[allow(
                    clippy::cast_precision_loss,
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss
                )]
                let span = ((target.saturating_sub(lo_key)) as f64 / (hi_key - lo_key) as f64
                    * (hi - lo) as f64) as u64;
                lo.saturating_add(span)
            };
            halve = !halve;
            let probe = guess.clamp(lo + 1, ub);
            page.requests += 1;
            let Some(found) = self.direct_one(&next_from(filter, probe)).await? else {
                break;
            };
            if key(&found) >= *run {
                (hi, hi_run, ub) = (found.seq, key(&found), probe - 1);
            } else {
                (lo, lo_key) = (found.seq, key(&found).as_u128());
            }
        }
        if hi_run == *run {
            return Ok(Some(hi));
        }
        // Not at the spot: look around it, for an entry a little out of id order.
        page.requests += 1;
        let around = self
            .direct_batch(&batch_from(
                filter,
                hi.saturating_sub(CURSOR_SCAN).max(1),
                2 * CURSOR_SCAN,
            ))
            .await?;
        page.entries_read += around.len();
        Ok(Some(
            around
                .iter()
                .find(|g| g.run.as_ref() == Some(run))
                .map_or(hi, |g| g.seq),
        ))
    }

    /// Entries of `filter` at stream sequence `from` or later.
    async fn count_from(&self, filter: &str, from: u64) -> Result<u64> {
        let got = self.direct_batch(&batch_from(filter, from, 1)).await?;
        Ok(got.first().map_or(0, |g| g.pending.map_or(1, |p| p + 1)))
    }

    async fn direct_one(&self, req: &serde_json::Value) -> Result<Option<Got>> {
        Ok(self.direct_batch(req).await?.into_iter().next())
    }

    /// A direct get on the index stream, batched or not: the messages until the end-of-batch
    /// marker (or the one reply of a plain get); none when nothing matches.
    async fn direct_batch(&self, req: &serde_json::Value) -> Result<Vec<Got>> {
        let op = || format!("direct get on {STREAM_RUN_INDEX}");
        let batched = req.get("batch").is_some();
        let inbox = self.client.new_inbox();
        let mut sub = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| Error::nats(op(), e))?;
        self.client
            .publish_with_reply(
                format!("$JS.API.DIRECT.GET.{STREAM_RUN_INDEX}"),
                inbox,
                Bytes::from(req.to_string()),
            )
            .await
            .map_err(|e| Error::nats(op(), e))?;
        let mut out = Vec::new();
        let read = async {
            while let Some(msg) = sub.next().await {
                match msg.status.map(|s| s.as_u16()) {
                    None | Some(200) => {
                        let h = msg.headers.as_ref();
                        out.push(Got {
                            seq: header_u64(h, "Nats-Sequence").unwrap_or_default(),
                            run: std::str::from_utf8(&msg.payload)
                                .ok()
                                .and_then(|s| RunId::parse(s).ok()),
                            pending: header_u64(h, "Nats-Num-Pending"),
                        });
                        if !batched {
                            return Ok(());
                        }
                    }
                    Some(204) => {
                        // End of batch: its count is the one after the last message.
                        if let (Some(last), Some(p)) = (
                            out.last_mut(),
                            header_u64(msg.headers.as_ref(), "Nats-Num-Pending"),
                        ) {
                            last.pending = Some(p);
                        }
                        return Ok(());
                    }
                    Some(404) => return Ok(()),
                    Some(code) => {
                        let why = msg.description.unwrap_or_default();
                        return Err(Error::nats(op(), format!("status {code}: {why}")));
                    }
                }
            }
            Ok(())
        };
        match tokio::time::timeout(DIRECT_GET_TIMEOUT, read).await {
            Ok(r) => r.map(|()| out),
            Err(_) => Err(Error::TimedOut {
                op: op(),
                after: DIRECT_GET_TIMEOUT,
            }),
        }
    }
}

fn next_from(filter: &str, from: u64) -> serde_json::Value {
    serde_json::json!({"seq": from, "next_by_subj": filter})
}

fn batch_from(filter: &str, from: u64, n: u64) -> serde_json::Value {
    serde_json::json!({"seq": from, "next_by_subj": filter, "batch": n})
}
