//! The run record (KV `agentos-runs`) as a projection of the journal: written when the run
//! starts and when it ends, by compare-and-set, so a concurrent `cancelling` from the edge is
//! never lost. The journal wins when the two disagree.

use agentos_bus::envelope::{EventData, RunRecord, RunStatus};
use agentos_bus::{Error as BusError, Versioned};

use super::drive::{Driver, Stop};
use super::port::Port;

impl<P: Port> Driver<'_, P> {
    /// `run.started` was journaled: the record says `running`.
    pub(super) async fn project_started(&mut self) -> Result<(), Stop> {
        let now = self.port.now();
        self.project(|rec| {
            if !rec.status.is_terminal() && rec.status != RunStatus::Cancelling {
                rec.status = RunStatus::Running;
            }
            rec.started_at.get_or_insert(now);
        })
        .await
    }

    /// The journal has ended: the record says how.
    pub(super) async fn project_terminal(&mut self) -> Result<(), Stop> {
        let Some(ended) = self.state.ended().cloned() else {
            return Ok(());
        };
        let (status, output, error) = match ended.data {
            EventData::RunCompleted { output, .. } => (RunStatus::Completed, Some(output), None),
            EventData::RunFailed { error } => {
                (RunStatus::Failed, self.partial_output(&error), Some(error))
            }
            EventData::RunExpired { .. } => (RunStatus::Expired, None, None),
            _ => (RunStatus::Cancelled, None, None),
        };
        let (usage, steps) = (self.state.usage(), self.state.steps());
        self.project(|rec| {
            rec.status = status;
            rec.output.clone_from(&output);
            rec.error.clone_from(&error);
            rec.usage = usage;
            rec.steps = steps;
            rec.required_action = None;
            rec.last_seq = ended.seq;
            rec.finished_at = Some(ended.ts);
        })
        .await
    }

    /// Read-modify-write of the run record (compare-and-set, retried); creates it for runs
    /// submitted straight onto the bus. The record and revision this driver last wrote are
    /// kept, so the usual case is one write with no read; a stale revision (the edge wrote
    /// `cancelling`, say) re-reads and applies the change again.
    pub(super) async fn project(&mut self, change: impl Fn(&mut RunRecord)) -> Result<(), Stop> {
        for _ in 0..10 {
            let current = match self.record.take() {
                Some(cached) => Some(cached),
                None => {
                    self.port
                        .read_record(&self.req.tenant, &self.req.run_id)
                        .await?
                }
            };
            let (mut rec, revision) = match current {
                Some(c) => (c.value, Some(c.revision)),
                None => (
                    RunRecord {
                        created_by: Some(self.creator(None)),
                        ..RunRecord::queued(self.req)
                    },
                    None,
                ),
            };
            change(&mut rec);
            rec.updated_at = self.port.now();
            match self.port.write_record(&rec, revision).await {
                Ok(revision) => {
                    self.record = Some(Versioned {
                        value: rec,
                        revision,
                    });
                    return Ok(());
                }
                Err(BusError::WrongRevision { .. } | BusError::AlreadyExists { .. }) => continue,
                Err(e) => return Err(Stop::Bus(e)),
            }
        }
        Err(Stop::Bus(BusError::WrongRevision {
            key: agentos_bus::key::run(&self.req.tenant, &self.req.run_id).to_string(),
            expected: 0,
        }))
    }
}
