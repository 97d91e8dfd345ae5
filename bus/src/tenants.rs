//! The tenant directory: tenant records from KV `agentos-tenants`, cached briefly so that the
//! edge and the orchestrators can ask "may this tenant do this?" on every request without a
//! round trip. A change takes effect within the cache's TTL everywhere, at once where it was
//! made ([`Tenants::forget`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::envelope::TenantRecord;
use crate::id::Tenant;
use crate::{Bucket, Bus, Kv, Result};

/// How long a cached tenant record is trusted.
pub const TENANT_CACHE_TTL: Duration = Duration::from_secs(2);

/// Which tenants may use the platform.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Admission {
    /// Any tenant a valid token names; a record only adds restrictions (development, and
    /// deployments whose identity provider is the only gate).
    #[default]
    Implicit,
    /// Only tenants an administrator created (`POST /v1/admin/tenants`).
    Registered,
}

impl std::str::FromStr for Admission {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "implicit" => Ok(Self::Implicit),
            "registered" => Ok(Self::Registered),
            other => Err(format!(
                "unknown tenant admission {other:?} (implicit or registered)"
            )),
        }
    }
}

/// Where a tenant stands.
#[derive(Clone, Debug)]
pub enum Standing {
    /// May use the platform; `None` for an implicit tenant without a record.
    Active(Option<Arc<TenantRecord>>),
    Disabled,
    /// No record, and the admission is [`Admission::Registered`].
    Unregistered,
}

type Cache = HashMap<Tenant, (Instant, Option<Arc<TenantRecord>>)>;

/// Cheap to clone; clones share the cache.
#[derive(Clone)]
pub struct Tenants {
    kv: Kv,
    admission: Admission,
    ttl: Duration,
    cache: Arc<Mutex<Cache>>,
}

impl Bus {
    /// The tenant directory, with the default TTL.
    pub async fn tenants(&self, admission: Admission) -> Result<Tenants> {
        Ok(Tenants {
            kv: self.kv(Bucket::Tenants).await?,
            admission,
            ttl: TENANT_CACHE_TTL,
            cache: Arc::default(),
        })
    }
}

impl Tenants {
    /// The bucket itself, for administration.
    pub fn kv(&self) -> &Kv {
        &self.kv
    }

    /// The tenant's record, `None` for a tenant without one.
    pub async fn get(&self, tenant: &Tenant) -> Result<Option<Arc<TenantRecord>>> {
        if let Some((at, rec)) = self.lock().get(tenant)
            && at.elapsed() < self.ttl
        {
            return Ok(rec.clone());
        }
        let rec = self
            .kv
            .get_as::<TenantRecord>(&crate::key::tenant(tenant))
            .await?
            .map(|v| Arc::new(v.value));
        self.lock()
            .insert(tenant.clone(), (Instant::now(), rec.clone()));
        Ok(rec)
    }

    /// Whether the tenant may use the platform at all, and with which record.
    pub async fn standing(&self, tenant: &Tenant) -> Result<Standing> {
        Ok(match self.get(tenant).await? {
            Some(rec) if !rec.enabled => Standing::Disabled,
            Some(rec) => Standing::Active(Some(rec)),
            None if self.admission == Admission::Registered => Standing::Unregistered,
            None => Standing::Active(None),
        })
    }

    /// Drops the cached record (after a change made here).
    pub fn forget(&self, tenant: &Tenant) {
        self.lock().remove(tenant);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
