//! nats-server configuration for a federated cluster: the hub (accepts leaf links) and a leaf
//! (links to the hub). Both are JetStream domains named by the node id. The leaf remote denies,
//! in both directions, every subject but JetStream's own: AgentOS traffic (`agentos.>`), KV
//! subjects (`$KV.>`, which the same-named buckets on both sides would otherwise both store),
//! service discovery (`$SRV.>`) and consumer acks (`$JS.ACK.>`, same-named consumers). What
//! crosses is the cross-domain JetStream API (`$JS.<domain>.API.>`) and the sources' deliveries:
//! federation travels only as sourced streams.

use std::path::Path;

use crate::id::NodeId;

/// Subjects that never cross the leaf link, either way.
pub const LEAF_DENY: [&str; 5] = ["agentos.>", "$KV.>", "$SRV.>", "$JS.ACK.>", "$O.>"];

fn deny_list() -> String {
    LEAF_DENY
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `jetstream` block: the domain, and the store unless the command line gives it (`--sd`).
fn jetstream(node: &NodeId, store_dir: Option<&Path>) -> String {
    let store = store_dir.map_or(String::new(), |d| {
        format!("  store_dir: \"{}\"\n", d.display())
    });
    format!("jetstream {{\n{store}  domain: {node}\n}}\n")
}

/// A hub: its own domain, and a leafnode listener on `leaf_listen` (`host:port`).
pub fn hub(node: &NodeId, store_dir: Option<&Path>, leaf_listen: &str) -> String {
    format!(
        "server_name: {node}\nmax_payload: 8MB\n{js}\
         leafnodes {{\n  listen: \"{leaf_listen}\"\n}}\n",
        js = jetstream(node, store_dir),
    )
}

/// A leaf of the hub at `hub_leaf_url` (`nats-leaf://host:port`): its own domain, and the
/// remote with the deny lists.
pub fn leaf(node: &NodeId, store_dir: Option<&Path>, hub_leaf_url: &str) -> String {
    let deny = deny_list();
    format!(
        "server_name: {node}\nmax_payload: 8MB\n{js}\
         leafnodes {{\n  reconnect: 1\n  remotes: [\n    {{\n      urls: [\"{hub_leaf_url}\"]\n      \
         deny_imports: [{deny}]\n      deny_exports: [{deny}]\n    }}\n  ]\n}}\n",
        js = jetstream(node, store_dir),
    )
}

/// A leaf with no remote: the same server name and domain, linked to nobody. Written over a
/// leaf's config and reloaded (`nats-server --signal reload`, or `SIGHUP`), it closes the link at
/// once; the leaf's config written back and reloaded restores it.
pub fn unlinked(node: &NodeId, store_dir: Option<&Path>) -> String {
    format!(
        "server_name: {node}\nmax_payload: 8MB\n{js}\
         leafnodes {{\n  reconnect: 1\n  remotes: []\n}}\n",
        js = jetstream(node, store_dir),
    )
}
