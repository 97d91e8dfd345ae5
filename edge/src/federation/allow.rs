//! Per-tenant peer allow-lists (`[federation] tenant-peers`): which peers a tenant's runs may be
//! placed on. A tenant the list names may go only to its peers; `*` names every other tenant;
//! a tenant neither names may go to every configured peer (no list: nothing changes).

use std::collections::HashMap;
use std::str::FromStr;

use agentos_bus::id::{NodeId, Tenant};

/// The allow-lists, parsed from `acme=b,c; globex=; *=b` (`;` between tenants, `,` between
/// peers; an empty list allows no peer).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TenantPeers {
    lists: HashMap<Tenant, Vec<NodeId>>,
    /// The `*` entry: the list of every tenant not named.
    others: Option<Vec<NodeId>>,
}

impl TenantPeers {
    /// Whether `tenant`'s runs may be placed on `node`.
    pub fn allows(&self, tenant: &Tenant, node: &NodeId) -> bool {
        match self.lists.get(tenant).or(self.others.as_ref()) {
            Some(list) => list.contains(node),
            None => true,
        }
    }

    /// Every peer the lists name.
    pub fn peers(&self) -> impl Iterator<Item = &NodeId> {
        self.lists.values().chain(self.others.iter()).flatten()
    }

    /// Whether any tenant is restricted.
    pub fn is_empty(&self) -> bool {
        self.lists.is_empty() && self.others.is_none()
    }
}

impl FromStr for TenantPeers {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = Self::default();
        for entry in s.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let Some((tenant, peers)) = entry.split_once('=') else {
                return Err(format!(
                    "tenant-peers entry {entry:?}: expected TENANT=PEER,PEER (or *=PEER,…)"
                ));
            };
            let peers = peers
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| NodeId::parse(p).map_err(|e| format!("tenant-peers entry {entry:?}: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            let tenant = tenant.trim();
            let twice = if tenant == "*" {
                out.others.replace(peers).is_some()
            } else {
                let t = Tenant::parse(tenant)
                    .map_err(|e| format!("tenant-peers entry {entry:?}: {e}"))?;
                out.lists.insert(t, peers).is_some()
            };
            if twice {
                return Err(format!("tenant-peers names {tenant:?} twice"));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Tenant {
        Tenant::parse(s).expect("tenant")
    }

    fn n(s: &str) -> NodeId {
        NodeId::parse(s).expect("node")
    }

    #[test]
    fn named_tenants_take_their_list_others_the_star_or_every_peer() {
        let open: TenantPeers = "".parse().expect("empty");
        assert!(open.is_empty());
        assert!(open.allows(&t("acme"), &n("b")));
        let p: TenantPeers = "acme=b, c; globex=".parse().expect("lists");
        assert!(p.allows(&t("acme"), &n("b")) && p.allows(&t("acme"), &n("c")));
        assert!(!p.allows(&t("globex"), &n("b")));
        assert!(p.allows(&t("initech"), &n("b")), "unnamed: every peer");
        let star: TenantPeers = "acme=b;*=c".parse().expect("star");
        assert!(!star.allows(&t("initech"), &n("b")));
        assert!(star.allows(&t("initech"), &n("c")));
        assert!(star.allows(&t("acme"), &n("b")));
    }

    #[test]
    fn malformed_lists_are_refused() {
        for bad in ["acme", "acme=b;acme=c", "a b=c", "acme=B!", "*=b;*=c"] {
            assert!(bad.parse::<TenantPeers>().is_err(), "{bad}");
        }
    }
}
