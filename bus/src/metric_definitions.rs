//! The bus's metrics (dead letters; streams and consumers, from [`crate::queue_gauges`]) and the
//! one rule every crate's metrics share: which tenants get their own `tenant` label. Names and
//! units follow `docs/instrumentation.md`; recording is one call at each call site.

use std::collections::HashSet;
use std::sync::OnceLock;

use metrics::{SharedString, Unit, counter, describe_counter, describe_gauge, gauge};

use crate::id::Tenant;
use crate::status::{ConsumerStatus, StreamStatus};

pub const DEAD_LETTERS_TOTAL: &str = "agentos_dead_letters_total";
pub const QUOTA_REJECTIONS_TOTAL: &str = "agentos_quota_rejections_total";
pub const STREAM_MESSAGES: &str = "agentos_stream_messages";
pub const CONSUMER_PENDING_MESSAGES: &str = "agentos_consumer_pending_messages";
pub const CONSUMER_ACK_PENDING_MESSAGES: &str = "agentos_consumer_ack_pending_messages";
pub const CONSUMER_MAX_ACK_PENDING_MESSAGES: &str = "agentos_consumer_max_ack_pending_messages";
pub const CONSUMER_REDELIVERED_MESSAGES: &str = "agentos_consumer_redelivered_messages";
pub const CONSUMER_WAITING_REQUESTS: &str = "agentos_consumer_waiting_requests";

/// The `tenant` label of tenants not on the allow-list.
pub const OTHER_TENANT: &str = "other";

static LABELLED_TENANTS: OnceLock<HashSet<String>> = OnceLock::new();

/// Sets, once per process, the tenants whose metrics carry their own name; every other tenant's
/// are labelled `other`, so the series count stays bounded whatever the number of tenants.
/// Returns false if the list was already set.
pub fn label_tenants(tenants: impl IntoIterator<Item = Tenant>) -> bool {
    LABELLED_TENANTS
        .set(tenants.into_iter().map(String::from).collect())
        .is_ok()
}

/// The value of the `tenant` label for `tenant`: its name if allow-listed, else `other`.
pub fn tenant_label(tenant: &Tenant) -> SharedString {
    match LABELLED_TENANTS.get() {
        Some(set) if set.contains(tenant.as_str()) => SharedString::from(tenant.to_string()),
        _ => SharedString::const_str(OTHER_TENANT),
    }
}

/// Registers the help text and unit of every metric above (with the process's recorder).
pub fn describe() {
    describe_counter!(
        QUOTA_REJECTIONS_TOTAL,
        Unit::Count,
        "Requests and runs refused by a quota, by tenant and code (rate_limited, budget_exceeded, quota_exceeded)"
    );
    describe_counter!(
        DEAD_LETTERS_TOTAL,
        Unit::Count,
        "Messages dead-lettered by this process, by kind (runs, tool, model, …) and error code"
    );
    describe_gauge!(
        STREAM_MESSAGES,
        Unit::Count,
        "Messages stored in a JetStream stream (polled)"
    );
    describe_gauge!(
        CONSUMER_PENDING_MESSAGES,
        Unit::Count,
        "Messages of a consumer's stream not yet delivered: the backlog (polled)"
    );
    describe_gauge!(
        CONSUMER_ACK_PENDING_MESSAGES,
        Unit::Count,
        "Messages delivered to a consumer and not yet acknowledged (polled)"
    );
    describe_gauge!(
        CONSUMER_MAX_ACK_PENDING_MESSAGES,
        Unit::Count,
        "A consumer's max_ack_pending: the most messages it may have unacknowledged (polled)"
    );
    describe_gauge!(
        CONSUMER_REDELIVERED_MESSAGES,
        Unit::Count,
        "Messages a consumer has delivered more than once and not yet acknowledged (polled)"
    );
    describe_gauge!(
        CONSUMER_WAITING_REQUESTS,
        Unit::Count,
        "Pull requests waiting on a consumer: 0 means no worker is pulling (polled)"
    );
}

/// A request (edge) or a run (orchestrator) refused by one of `tenant`'s quotas.
pub fn quota_rejected(tenant: &Tenant, code: &'static str) {
    counter!(QUOTA_REJECTIONS_TOTAL, "tenant" => tenant_label(tenant), "code" => code).increment(1);
}

pub(crate) fn dead_lettered(kind: &'static str, code: &'static str) {
    counter!(DEAD_LETTERS_TOTAL, "kind" => kind, "code" => code).increment(1);
}

pub(crate) fn stream(s: &StreamStatus) {
    gauge!(STREAM_MESSAGES, "stream" => s.name.clone()).set(s.messages as f64);
}

pub(crate) fn consumer(c: &ConsumerStatus) {
    let labels = [("stream", c.stream.clone()), ("consumer", c.name.clone())];
    gauge!(CONSUMER_PENDING_MESSAGES, &labels).set(c.pending as f64);
    gauge!(CONSUMER_ACK_PENDING_MESSAGES, &labels).set(c.ack_pending as f64);
    gauge!(CONSUMER_MAX_ACK_PENDING_MESSAGES, &labels).set(c.max_ack_pending as f64);
    gauge!(CONSUMER_REDELIVERED_MESSAGES, &labels).set(c.redelivered as f64);
    gauge!(CONSUMER_WAITING_REQUESTS, &labels).set(c.waiting as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allow_listed_tenants_get_their_own_label() {
        let acme: Tenant = "acme".parse().expect("tenant");
        let globex: Tenant = "globex".parse().expect("tenant");
        assert!(label_tenants([acme.clone()]));
        assert!(!label_tenants([globex.clone()]), "set once");
        assert_eq!(&*tenant_label(&acme), "acme");
        assert_eq!(&*tenant_label(&globex), OTHER_TENANT);
    }
}
