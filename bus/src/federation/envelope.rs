//! The federation envelopes.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::envelope::{Continuation, Envelope, RunRequest};
use crate::id::{NodeId, RunId, Tenant};

/// The protocol versions a node speaks, both ends included.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtocolRange {
    pub min: u32,
    pub max: u32,
}

impl ProtocolRange {
    /// The highest version both speak, if any.
    pub fn common(self, other: Self) -> Option<u32> {
        let (lo, hi) = (self.min.max(other.min), self.max.min(other.max));
        (lo <= hi).then_some(hi)
    }

    pub fn contains(self, v: u32) -> bool {
        (self.min..=self.max).contains(&v)
    }
}

impl std::str::FromStr for ProtocolRange {
    type Err = String;

    /// `1` or `1-3`.
    fn from_str(s: &str) -> Result<Self, String> {
        let num = |t: &str| {
            t.trim()
                .parse::<u32>()
                .map_err(|e| format!("protocol {s:?}: {e}"))
        };
        let (min, max) = match s.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => (num(s)?, num(s)?),
        };
        if min > max || min == 0 {
            return Err(format!(
                "protocol {s:?}: expected N or MIN-MAX with 1 <= MIN <= MAX"
            ));
        }
        Ok(Self { min, max })
    }
}

/// What a node tells its peers about itself, refreshed every `interval_ms`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Announcement {
    pub node: NodeId,
    /// The AgentOS version.
    pub version: String,
    pub protocol: ProtocolRange,
    /// `<tenant>/<agent>` of every agent defined here.
    pub agents: Vec<String>,
    pub models: Vec<String>,
    pub tools: Vec<String>,
    /// How often it is refreshed: the link is down after three intervals without one.
    pub interval_ms: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub announced_at: OffsetDateTime,
}

impl Envelope for Announcement {
    const WHAT: &'static str = "federation announcement";
}

/// A peer as this node knows it (KV `agentos-peers`, key `<node>`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerRecord {
    pub announcement: Announcement,
    /// When the last announcement arrived here.
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen: OffsetDateTime,
}

impl Envelope for PeerRecord {
    const WHAT: &'static str = "peer record";
}

impl PeerRecord {
    /// Whether the link carried an announcement within three of the peer's intervals.
    pub fn link_up(&self, now: OffsetDateTime) -> bool {
        let interval = self.announcement.interval_ms.max(100);
        let age = (now - self.last_seen).whole_milliseconds();
        age < i128::from(interval) * 3
    }

    /// The protocol version this node and the peer would speak, if they share one.
    pub fn protocol_with(&self, ours: ProtocolRange) -> Option<u32> {
        ours.common(self.announcement.protocol)
    }
}

/// A run forwarded to a peer (`agentos.fed.out.<to>.run.<tenant>`, `Nats-Msg-Id` = the run id);
/// the caller's bearer token travels in the `AgentOS-Auth` header.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForwardRun {
    pub origin: NodeId,
    /// The protocol version the origin speaks for this message.
    pub protocol: u32,
    pub request: RunRequest,
}

impl Envelope for ForwardRun {
    const WHAT: &'static str = "forwarded run";
}

/// A cancel of a forwarded run (`agentos.fed.out.<to>.cancel.<tenant>`); the canceller's token
/// travels in `AgentOS-Auth`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForwardCancel {
    pub origin: NodeId,
    pub run_id: RunId,
    pub tenant: Tenant,
}

impl Envelope for ForwardCancel {
    const WHAT: &'static str = "forwarded cancel";
}

/// The answer to a forwarded run waiting in `requires_action`
/// (`agentos.fed.out.<to>.answer.<tenant>`, `Nats-Msg-Id` `answer-<submission>`); the answer
/// names the run by its origin id, and the answerer's token travels in `AgentOS-Auth`. The
/// origin sends only the answer that claimed the wait there.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForwardAnswer {
    pub origin: NodeId,
    pub answer: Continuation,
}

impl Envelope for ForwardAnswer {
    const WHAT: &'static str = "forwarded answer";
}

/// Where a forwarded run stands, as its origin sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FwdState {
    /// Published; the peer has not answered yet (`waiting_for_peer`).
    Pending,
    /// The peer's first event came back.
    Accepted,
    /// The run ended (or was failed here, `peer_unavailable`).
    Done,
}

/// The forward index at the origin (KV `agentos-fwd`, `out.<tenant>.<run>`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FwdEntry {
    pub node: NodeId,
    pub tenant: Tenant,
    pub run_id: RunId,
    pub state: FwdState,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl Envelope for FwdEntry {
    const WHAT: &'static str = "forward index entry";
}

/// A run a peer forwarded here (KV `agentos-fwd`, `in.<tenant>.<origin_run>`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InboundEntry {
    pub origin: NodeId,
    pub tenant: Tenant,
    pub origin_run: RunId,
    /// The run's id here.
    pub local_run: RunId,
    /// Every event went back to the origin.
    #[serde(default)]
    pub done: bool,
}

impl Envelope for InboundEntry {
    const WHAT: &'static str = "inbound forward entry";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_ranges_negotiate_the_highest_common_version() {
        let r = |s: &str| s.parse::<ProtocolRange>().expect("range");
        assert_eq!(r("1-3").common(r("2-5")), Some(3));
        assert_eq!(r("1").common(r("1")), Some(1));
        assert_eq!(r("1").common(r("7-9")), None);
        assert!("0".parse::<ProtocolRange>().is_err());
        assert!("3-1".parse::<ProtocolRange>().is_err());
    }
}
