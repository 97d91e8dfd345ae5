//! Federation over NATS leaf nodes: what clusters say to each other, and the streams it travels
//! through. Each cluster is a JetStream domain named by its [`NodeId`]; nothing but JetStream
//! sourcing crosses the leaf link (see [`nats_conf`] for the deny lists that enforce it).
//!
//! Stream layout (on every node):
//! - `AGENTOS_FED_OUT` (limits, 7 days, `Nats-Msg-Id` dedup): `agentos.fed.out.<to>.<kind>.<tenant>`,
//!   what this node sends to peer `to` (forwarded runs, cancels, events going back).
//! - `AGENTOS_FED_ANNOUNCE` (one message per subject): `agentos.fed.announce.<node>`, this node's
//!   latest announcement.
//! - `AGENTOS_FED_IN` (limits, 7 days): sources, per peer, the peer's `AGENTOS_FED_OUT` filtered to
//!   `agentos.fed.out.<self>.>` and its `AGENTOS_FED_ANNOUNCE`, across the link
//!   (`external.api_prefix = $JS.<peer>.API`), transformed to `agentos.fed.in.<peer>.…`. One durable
//!   consumer, `federation`, takes it.

mod envelope;
pub mod nats_conf;
mod ops;

pub use envelope::{
    Announcement, ForwardAnswer, ForwardCancel, ForwardRun, FwdEntry, FwdState, InboundEntry,
    PeerRecord, ProtocolRange,
};
pub use ops::{FedDelivery, Topology};

pub const STREAM_OUT: &str = "AGENTOS_FED_OUT";
pub const STREAM_IN: &str = "AGENTOS_FED_IN";
pub const STREAM_ANNOUNCE: &str = "AGENTOS_FED_ANNOUNCE";
/// The durable consumer of `AGENTOS_FED_IN`, shared by every edge of a cluster.
pub const INBOX_DURABLE: &str = "federation";

/// The federation protocol versions this build speaks.
pub const PROTOCOL: ProtocolRange = ProtocolRange { min: 1, max: 1 };
