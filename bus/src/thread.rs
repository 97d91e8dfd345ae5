//! Threads in KV `agentos-threads`: the record, one turn per run that added messages, one entry
//! per run submitted on the thread. Turns are read back in the order they were written.

use crate::envelope::{Envelope, ThreadLock, ThreadRecord, ThreadRun, ThreadTurn};
use crate::id::{RunId, Tenant, ThreadId};
use crate::key::{self, thread_filter};
use crate::{Bucket, Bus, Error, Kv, Result, Versioned};

/// A handle on the threads bucket; keep it, opening costs a round trip.
#[derive(Clone)]
pub struct Threads {
    kv: Kv,
}

impl Bus {
    pub async fn threads(&self) -> Result<Threads> {
        Ok(Threads {
            kv: self.kv(Bucket::Threads).await?,
        })
    }
}

impl Threads {
    /// Creates the record ([`Error::AlreadyExists`] if the id is taken).
    pub async fn create(&self, record: &ThreadRecord) -> Result<u64> {
        self.kv
            .create_as(&key::thread(&record.tenant, &record.id), record)
            .await
    }

    pub async fn get(
        &self,
        tenant: &Tenant,
        thread: &ThreadId,
    ) -> Result<Option<Versioned<ThreadRecord>>> {
        self.kv.get_as(&key::thread(tenant, thread)).await
    }

    /// Replaces the record read at `revision` ([`Error::WrongRevision`] if it changed since).
    pub async fn update(&self, record: &ThreadRecord, revision: u64) -> Result<u64> {
        self.kv
            .update_as(&key::thread(&record.tenant, &record.id), record, revision)
            .await
    }

    /// Deletes the record, then its turns and run entries.
    pub async fn delete(&self, tenant: &Tenant, thread: &ThreadId) -> Result<()> {
        self.kv.delete(&key::thread(tenant, thread)).await?;
        for (k, _) in self
            .kv
            .entries_matching(&thread_filter::all(tenant, thread))
            .await?
        {
            self.kv.delete(&k).await?;
        }
        Ok(())
    }

    /// Every thread record of the tenant, oldest first (ids are time-ordered).
    pub async fn list(&self, tenant: &Tenant) -> Result<Vec<ThreadRecord>> {
        let mut out = self
            .kv
            .entries_matching(&thread_filter::records(tenant))
            .await?
            .into_iter()
            .filter_map(|(_, v)| ThreadRecord::decode(None, &v).ok())
            .collect::<Vec<_>>();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// The thread's turns in the order they were added.
    pub async fn turns(&self, tenant: &Tenant, thread: &ThreadId) -> Result<Vec<ThreadTurn>> {
        self.kv
            .entries_matching(&thread_filter::turns(tenant, thread))
            .await?
            .into_iter()
            .map(|(_, v)| ThreadTurn::decode(None, &v))
            .collect()
    }

    /// Adds a run's turn once: a second write of the same run's turn changes nothing.
    pub async fn add_turn(
        &self,
        tenant: &Tenant,
        thread: &ThreadId,
        turn: &ThreadTurn,
    ) -> Result<()> {
        match self
            .kv
            .create_as(&key::thread_turn(tenant, thread, &turn.run_id), turn)
            .await
        {
            Ok(_) | Err(Error::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Removes a run's turn (if any).
    pub async fn remove_turn(&self, tenant: &Tenant, thread: &ThreadId, run: &RunId) -> Result<()> {
        self.kv.delete(&key::thread_turn(tenant, thread, run)).await
    }

    /// The runs submitted on the thread, oldest first.
    pub async fn runs(&self, tenant: &Tenant, thread: &ThreadId) -> Result<Vec<ThreadRun>> {
        let mut out = self
            .kv
            .entries_matching(&thread_filter::runs(tenant, thread))
            .await?
            .into_iter()
            .map(|(_, v)| ThreadRun::decode(None, &v))
            .collect::<Result<Vec<_>>>()?;
        out.sort_by_key(|r| r.run_id);
        Ok(out)
    }

    /// Lists a run on the thread (idempotent).
    pub async fn add_run(&self, tenant: &Tenant, thread: &ThreadId, run: &ThreadRun) -> Result<()> {
        match self
            .kv
            .create_as(&key::thread_run(tenant, thread, &run.run_id), run)
            .await
        {
            Ok(_) | Err(Error::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The thread's lock as stored (held or not).
    pub async fn lock(
        &self,
        tenant: &Tenant,
        thread: &ThreadId,
    ) -> Result<Option<Versioned<ThreadLock>>> {
        self.kv.get_as(&key::thread_lock(tenant, thread)).await
    }

    /// Writes the lock: KV `create` when `revision` is `None` ([`Error::AlreadyExists`] if
    /// someone was first), else compare-and-set ([`Error::WrongRevision`]).
    pub async fn write_lock(
        &self,
        tenant: &Tenant,
        thread: &ThreadId,
        lock: &ThreadLock,
        revision: Option<u64>,
    ) -> Result<u64> {
        let key = key::thread_lock(tenant, thread);
        match revision {
            None => self.kv.create_as(&key, lock).await,
            Some(rev) => self.kv.update_as(&key, lock, rev).await,
        }
    }

    /// Creates `copy` holding `from`'s turns, in order (its runs stay with `from`).
    pub async fn copy(&self, from: &ThreadId, copy: &ThreadRecord) -> Result<()> {
        let turns = self.turns(&copy.tenant, from).await?;
        self.create(copy).await?;
        for turn in &turns {
            self.add_turn(&copy.tenant, &copy.id, turn).await?;
        }
        Ok(())
    }
}
