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

type Cache = HashMap<Tenant, (Instant, Option<Arc<TenantRecord>>)>;

/// Cheap to clone; clones share the cache.
#[derive(Clone)]
pub struct Tenants {
    kv: Kv,
    ttl: Duration,
    cache: Arc<Mutex<Cache>>,
}

impl Bus {
    /// The tenant directory, with the default TTL.
    pub async fn tenants(&self) -> Result<Tenants> {
        Ok(Tenants {
            kv: self.kv(Bucket::Tenants).await?,
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

    /// The tenant's record, `None` for a tenant without one (tenants are implicit until an
    /// administrator creates a record: enabled, entitled to everything).
    pub async fn get(&self, tenant: &Tenant) -> Result<Option<Arc<TenantRecord>>> {
        if let Some((at, rec)) = self.lock().get(tenant)
            && at.elapsed() < self.ttl
        {
            return Ok(rec.clone());
        }
        let rec = self
            .kv
            .get_as::<TenantRecord>(tenant.as_str())
            .await?
            .map(|v| Arc::new(v.value));
        self.lock()
            .insert(tenant.clone(), (Instant::now(), rec.clone()));
        Ok(rec)
    }

    /// Whether the tenant may use the platform at all.
    pub async fn enabled(&self, tenant: &Tenant) -> Result<bool> {
        Ok(self.get(tenant).await?.is_none_or(|t| t.enabled))
    }

    /// Drops the cached record (after a change made here).
    pub fn forget(&self, tenant: &Tenant) {
        self.lock().remove(tenant);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
