//! Deterministic simulation of the run state machine, in the spirit of FoundationDB's and
//! TigerBeetle's simulators. The real [`drive`] runs against [`SimPort`]: an in-memory bus
//! (journals with JetStream's guard and dedup semantics, run records with compare-and-set,
//! agents, a scripted model worker and a tool worker that follows the bus protocol's
//! claim-and-record rule), on a virtual clock. One seeded generator decides everything: which
//! driver runs next, and which fault strikes at each await — a driver dropped mid-step and its
//! run redelivered, one delivery driven by two orchestrators at once, bus errors, appends that
//! time out after being stored, model and tool timeouts, duplicate replies, cancels at any
//! moment, agents edited mid-run; runs that wait for their caller (client tools, approvals) and
//! are answered — late, twice, by two racing callers, wrongly — or expire. After each schedule the invariants are checked; a failure
//! names its seed, and `AGENTOS_SIM_SEED=<seed>` replays exactly that schedule.
//!
//! `AGENTOS_SIM_SCHEDULES` sets how many schedules run (default 8,000; 200,000 with
//! `AGENTOS_LONG_TESTS=1`, as `scripts/test-long` runs it).

mod callers;
mod check;
mod port;
mod world;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use agentos_bus::envelope::{
    AgentSpec, ChatMessage, MultitaskStrategy, Role, RunRecord, RunRequest, ThreadTurn,
};
use agentos_bus::id::{AgentId, ModelName, RunId, Tenant, ThreadId, ToolName};
use serde_json::json;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::OrchestratorOptions;
use super::drive::{Attempt, Disposition, drive};
use super::human::Trigger;
use callers::{Accepted, Msg, answer_waiting, edge_cancel};
use check::{Seen, check, stuck};
use port::SimPort;
use world::*;

/// The earlier user message of the simulated thread.
pub(super) const EARLIER_QUESTION: &str = "an earlier question";

/// The simulated tool worker's claim grace, scaled like the world's other timings (a real
/// worker's is [`crate::tool::LEASE_GRACE`], 5 s): the orchestrator waits out a held call in
/// place for up to twice it, and unscaled waits of seconds of virtual time let duplicate
/// drivers pile up faster than the scheduler drains them.
pub(super) const CLAIM_GRACE_MS: u64 = 50;

/// The simulated orchestrators: one message is driven by at most this many drivers at once
/// (one per orchestrator holding it). Without a bound, duplicates of duplicates of a run whose
/// drivers wait in place (a held tool call, a thread's lock) outgrow the scheduler, which
/// polls one driver per tick: thousands of drivers of one run contending for its thread's
/// lock, none of them wrong, and the schedule out of ticks.
const ORCHESTRATORS: usize = 3;

/// Schedules per `cargo test` run, and with `AGENTOS_LONG_TESTS`.
pub(super) const SCHEDULES: u64 = 8_000;
pub(super) const LONG_SCHEDULES: u64 = 200_000;

/// splitmix64: small, fast, and the same everywhere.
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(super) fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    /// True with probability `per_mille` / 1000.
    pub(super) fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// Fault rates, per mille, drawn per schedule so that some schedules are calm and some stormy.
#[derive(Clone, Copy, Debug)]
pub(super) struct Faults {
    /// Per scheduler tick: drop a driver (crash) and redeliver its run later.
    pub(super) crash: u64,
    /// Per tick: start a second driver on a run already being driven.
    pub(super) duplicate: u64,
    /// Per bus operation: fail it.
    pub(super) bus_error: u64,
    /// Per append: store it, then report a timeout (the caller cannot tell).
    pub(super) ambiguous_append: u64,
    /// Per model call: no reply at all.
    pub(super) model_timeout: u64,
    /// Per tool call: the reply is lost (the tool ran).
    pub(super) tool_timeout: u64,
    /// Per reply: deliver it twice.
    pub(super) duplicate_reply: u64,
    /// Per tick: a client cancels a run.
    pub(super) cancel: u64,
    /// Per tick: a client edits an agent (a run pinned to its definition must not notice).
    pub(super) edit_agent: u64,
}

impl Faults {
    pub(super) fn draw(rng: &mut Rng) -> Self {
        let mut rate = |max: u64| rng.below(max + 1);
        Self {
            crash: rate(30),
            duplicate: rate(20),
            bus_error: rate(40),
            ambiguous_append: rate(40),
            model_timeout: rate(60),
            tool_timeout: rate(60),
            duplicate_reply: rate(200),
            cancel: rate(6),
            edit_agent: rate(10),
        }
    }
}

/// A tool result slot, as the tool worker keeps it.
type DriveFuture = Pin<Box<dyn Future<Output = Disposition> + Send>>;

struct Task {
    msg: usize,
    delivered: i64,
    fut: DriveFuture,
}

pub(super) struct SimRun {
    pub(super) req: RunRequest,
    pub(super) cancel: CancellationToken,
}

/// The simulated tenant with quota settings: a day's token budget and run caps no run reaches.
fn sim_tenant(tenant: &Tenant) -> agentos_bus::envelope::TenantRecord {
    let quotas = agentos_bus::quota::Quotas {
        limits: agentos_bus::quota::Limits {
            tokens: agentos_bus::quota::Periods {
                per_day: Some(1_000_000_000),
                ..Default::default()
            },
            run: agentos_bus::quota::RunCaps {
                max_tokens: Some(1_000_000),
                max_steps: None,
            },
            ..Default::default()
        },
        ..Default::default()
    };
    agentos_bus::envelope::TenantRecord {
        id: tenant.clone(),
        name: String::new(),
        enabled: true,
        entitlements: Default::default(),
        quotas,
        created_at: OffsetDateTime::UNIX_EPOCH,
        updated_at: OffsetDateTime::UNIX_EPOCH,
    }
}

/// One schedule: `runs` runs through the orchestrator under the seed's faults. Returns what
/// went wrong, if anything.
fn schedule(seed: u64) -> std::result::Result<Seen, String> {
    let mut rng = Rng(seed);
    let faults = Faults::draw(&mut rng);
    let tenant = Tenant::parse("sim").map_err(|e| e.to_string())?;
    let opts = OrchestratorOptions {
        model_timeout: Duration::from_millis(200),
        tool_timeout: Duration::from_millis(100),
        max_attempts: 12,
        // Scaled like the other timings of the simulated world.
        bus_retry: Duration::from_millis(50),
        claim_grace: Duration::from_millis(CLAIM_GRACE_MS),
        thread_lease: Duration::from_secs(2),
        thread_poll: Duration::from_millis(50),
        ..OrchestratorOptions::default()
    };
    let world = Arc::new(Mutex::new(World {
        rng: Rng(rng.next()),
        faults,
        now_ms: 0,
        stream_seq: 0,
        journals: BTreeMap::new(),
        records: BTreeMap::new(),
        revision: 0,
        agents: BTreeMap::new(),
        audits: Vec::new(),
        indexed: BTreeSet::new(),
        results: BTreeMap::new(),
        executions: BTreeMap::new(),
        jobs: Vec::new(),
        inboxes: BTreeMap::new(),
        next_inbox: 0,
        configs: BTreeMap::new(),
        undeclared_defs: Vec::new(),
        threads: BTreeMap::new(),
        history_missing: BTreeSet::new(),
        locks: BTreeMap::new(),
        thread_runs: BTreeMap::new(),
        signals: BTreeMap::new(),
        outbox: Vec::new(),
        timers: BTreeMap::new(),
        ledgers: BTreeMap::new(),
        // Odd seeds: budgets no run reaches, so every run reserves, settles and releases
        // (drawn from the seed, not the generator, so the other draws stay as they were).
        quotas: (seed % 2 == 1).then(|| Arc::new(sim_tenant(&tenant))),
        seen: Seen::default(),
    }));
    // One thread with an earlier exchange; some runs continue it.
    let thread = ThreadId::parse("thread_sim").map_err(|e| e.to_string())?;
    lock(&world).threads.insert(
        thread.clone(),
        vec![ThreadTurn {
            run_id: sim_run_id(&mut rng)?,
            messages: vec![
                ChatMessage::text(Role::User, EARLIER_QUESTION),
                ChatMessage::text(Role::Assistant, "an earlier answer"),
            ],
            created_at: OffsetDateTime::UNIX_EPOCH,
        }],
    );
    let port = SimPort {
        world: world.clone(),
    };

    // Runs: each its own agent, with a plan of 0–3 tool calls per step over 0–3 steps.
    let n_runs = 1 + rng.below(6) as usize;
    let mut runs = Vec::new();
    for i in 0..n_runs {
        let steps = rng.below(4);
        let now = lock(&world).now();
        let plan: Vec<u64> = (0..steps).map(|_| rng.below(4)).collect();
        let on_thread = rng.chance(400);
        // Some agents' runs wait for their caller: a client tool, and approvals for `sleep`.
        let may_wait = rng.chance(350);
        let agent = AgentSpec {
            id: AgentId::parse(format!("a{i}")).map_err(|e| e.to_string())?,
            tenant: tenant.clone(),
            model: ModelName::parse("sim").map_err(|e| e.to_string())?,
            instructions: String::new(),
            tools: vec![
                ToolName::parse("echo").map_err(|e| e.to_string())?,
                ToolName::parse("sleep").map_err(|e| e.to_string())?,
            ],
            max_steps: 1 + rng.below(5) as u32,
            model_config: json!({ "plan": plan, "thread": on_thread }),
            metadata: Default::default(),
            memory: Default::default(),
            history: Default::default(),
            client_tools: if may_wait {
                vec![ask_tool()]
            } else {
                Vec::new()
            },
            requires_approval: if may_wait {
                vec![ToolName::parse("sleep").map_err(|e| e.to_string())?]
            } else {
                Vec::new()
            },
            created_at: now,
            updated_at: now,
        };
        // Half the runs come through the edge (snapshot and queued record), half straight
        // from a NATS publisher (no snapshot, no record: the orchestrator pins and audits).
        let via_edge = rng.chance(500);
        let req = RunRequest {
            run_id: sim_run_id(&mut rng)?,
            tenant: tenant.clone(),
            agent_id: agent.id.clone(),
            agent: via_edge.then(|| agent.clone()),
            input: format!("run {i}"),
            thread_id: on_thread.then(|| thread.clone()),
            multitask_strategy: on_thread.then(|| MultitaskStrategy::ALL[rng.below(4) as usize]),
            metadata: Default::default(),
            submitted_at: now,
            expires_at: (may_wait && rng.chance(300))
                .then(|| now + Duration::from_millis(rng.below(3_000))),
        };
        {
            let mut w = lock(&world);
            w.agents.insert(agent.id.clone(), agent);
            if via_edge {
                w.revision += 1;
                let rev = w.revision;
                w.records.insert(req.run_id, (RunRecord::queued(&req), rev));
                w.indexed.insert(req.run_id);
            }
        }
        let cancel = CancellationToken::new();
        {
            let mut w = lock(&world);
            w.signals.insert(req.run_id, cancel.clone());
            if let Some(thread) = &req.thread_id {
                let on_thread = w.thread_runs.entry(thread.clone()).or_default();
                on_thread.push(req.run_id);
                on_thread.sort();
            }
        }
        runs.push(SimRun { req, cancel });
    }

    // Every message on the runs subject: the submissions, then answers and wakes as they come.
    let mut msgs: Vec<Msg> = (0..n_runs)
        .map(|run| Msg {
            run,
            trigger: Trigger::Submission,
            acked: false,
            invalid: false,
        })
        .collect();
    let mut deliveries: Vec<(u64, usize, i64)> =
        (0..n_runs).map(|i| (rng.below(10), i, 1)).collect();
    let mut tasks: Vec<Task> = Vec::new();
    let mut accepted: Vec<Accepted> = Vec::new();
    let never = CancellationToken::new();
    let spawn = |msgs: &[Msg], m: usize, delivered: i64| -> Option<Task> {
        let msg = &msgs[m];
        let run = &runs[msg.run];
        // An answer or a wake carries only the run's id: its request comes from the record.
        let req = match &msg.trigger {
            Trigger::Submission => run.req.clone(),
            _ => {
                let w = lock(&world);
                RunRequest::resumed(&w.records.get(&run.req.run_id)?.0)
            }
        };
        let (port, opts, cancel, drain) = (
            port.clone(),
            opts.clone(),
            run.cancel.clone(),
            never.clone(),
        );
        let attempt = Attempt {
            delivered,
            request_id: None,
            trigger: msg.trigger.clone(),
        };
        Some(Task {
            msg: m,
            delivered,
            fut: Box::pin(async move { drive(&port, &opts, attempt, &req, &cancel, &drain).await }),
        })
    };
    let mut cx = Context::from_waker(Waker::noop());
    let mut ticks = 0u64;
    loop {
        ticks += 1;
        if ticks > 400_000 {
            return Err(format!(
                "no progress after {ticks} ticks ({} tasks left)\n{}",
                tasks.len(),
                stuck(&lock(&world), &runs, &msgs, &tasks)
            ));
        }
        let now = {
            let mut w = lock(&world);
            w.now_ms += w.rng.below(3);
            // Tool worker phases that are due.
            let now = w.now_ms;
            let due: Vec<ToolJob> = {
                let (due, later) = std::mem::take(&mut w.jobs)
                    .into_iter()
                    .partition(|j| j.at_ms <= now);
                w.jobs = later;
                due
            };
            for job in due {
                w.tool_phase(job);
            }
            // Wakes published by cancels, and expiry timers that fired.
            let mut woken: Vec<(u64, RunId)> = std::mem::take(&mut w.outbox);
            let fired: Vec<RunId> = w
                .timers
                .iter()
                .filter(|(_, at)| **at <= now)
                .map(|(run, _)| *run)
                .collect();
            for run in fired {
                w.timers.remove(&run);
                w.seen.expiry_timers += 1;
                woken.push((now, run));
            }
            for (at, run) in woken {
                if let Some(idx) = runs.iter().position(|r| r.req.run_id == run) {
                    msgs.push(Msg {
                        run: idx,
                        trigger: Trigger::Wake,
                        acked: false,
                        invalid: false,
                    });
                    deliveries.push((at.max(now), msgs.len() - 1, 1));
                }
            }
            now
        };
        // Deliveries that are due.
        let (due, later): (Vec<_>, Vec<_>) =
            deliveries.into_iter().partition(|(at, _, _)| *at <= now);
        deliveries = later;
        for (_, m, delivered) in due {
            if !msgs[m].acked {
                match spawn(&msgs, m, delivered) {
                    Some(task) => tasks.push(task),
                    None => msgs[m].acked = true,
                }
            }
        }
        // Faults between awaits.
        if !tasks.is_empty() && rng.chance(faults.crash) {
            let t = tasks.swap_remove(rng.below(tasks.len() as u64) as usize);
            lock(&world).seen.crashes += 1;
            if !msgs[t.msg].acked {
                deliveries.push((now + 5 + rng.below(50), t.msg, t.delivered + 1));
            }
        }
        if !tasks.is_empty() && rng.chance(faults.duplicate) {
            let t = &tasks[rng.below(tasks.len() as u64) as usize];
            let (m, delivered) = (t.msg, t.delivered + 1);
            if tasks.iter().filter(|t| t.msg == m).count() < ORCHESTRATORS {
                lock(&world).seen.duplicate_drivers += 1;
                if let Some(task) = spawn(&msgs, m, delivered) {
                    tasks.push(task);
                }
            }
        }
        if rng.chance(faults.cancel) {
            let idx = rng.below(n_runs as u64) as usize;
            let mut w = lock(&world);
            w.seen.cancels += 1;
            edge_cancel(&mut w, &runs[idx]);
        }
        if rng.chance(faults.edit_agent) {
            let idx = rng.below(n_runs as u64) as usize;
            let mut w = lock(&world);
            w.seen.agent_edits += 1;
            if let Some(agent) = w.agents.get_mut(&runs[idx].req.agent_id) {
                let thread = agent.model_config["thread"].clone();
                agent.model_config = json!({"plan": [3, 3, 3, 3, 3], "thread": thread});
                agent.max_steps = 7;
            }
        }
        // Callers answer waiting runs now and then (and always, once nothing else moves).
        let idle = tasks.is_empty() && deliveries.is_empty() && {
            let w = lock(&world);
            w.jobs.is_empty() && w.outbox.is_empty()
        };
        if idle || rng.chance(40) {
            let mut w = lock(&world);
            for (m, a) in answer_waiting(&mut w, &mut rng, &runs, &mut msgs, idle) {
                deliveries.push((now + rng.below(20), m, 1));
                accepted.extend(a);
            }
        }
        if tasks.is_empty() {
            let pending = {
                let w = lock(&world);
                !w.jobs.is_empty() || !w.outbox.is_empty() || !w.timers.is_empty()
            };
            if deliveries.is_empty() && !pending {
                break;
            }
            continue;
        }
        let i = rng.below(tasks.len() as u64) as usize;
        if let Poll::Ready(d) = tasks[i].fut.as_mut().poll(&mut cx) {
            let t = tasks.swap_remove(i);
            match d {
                Disposition::Done => msgs[t.msg].acked = true,
                Disposition::Retry(delay) => {
                    if !msgs[t.msg].acked {
                        let delay = (delay.as_millis() as u64).clamp(1, 300);
                        deliveries.push((now + delay, t.msg, t.delivered + 1));
                    }
                }
                Disposition::Refused(e) => match &msgs[t.msg].trigger {
                    // Dead-lettered: an answer that does not fit the run's wait.
                    Trigger::Answer(_) => {
                        msgs[t.msg].acked = true;
                        lock(&world).seen.answers_refused += 1;
                    }
                    _ => return Err(format!("a submission or wake was refused: {e}")),
                },
            }
        }
    }
    let w = lock(&world);
    let mut seen = check(&w, &runs, &msgs, &accepted)?;
    seen.add(&w.seen);
    Ok(seen)
}

fn lock(w: &Mutex<World>) -> MutexGuard<'_, World> {
    w.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A run id from the seed (a real one is time-based, which would make replays differ).
fn sim_run_id(rng: &mut Rng) -> std::result::Result<RunId, String> {
    let (a, b) = (rng.next(), rng.next());
    let text = format!(
        "{:08x}-{:04x}-7{:03x}-8{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        b >> 52,
        b & 0xffff_ffff_ffff
    );
    RunId::parse(&text).map_err(|e| e.to_string())
}

/// The invariants, checked on the final state; returns how the runs ended.
#[test]
fn the_run_state_machine_keeps_its_invariants_under_simulated_faults() {
    if let Some(seed) = std::env::var("AGENTOS_SIM_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        if let Err(e) = schedule(seed) {
            panic!("seed {seed}: {e}");
        }
        return;
    }
    let default = if std::env::var_os("AGENTOS_LONG_TESTS").is_some() {
        LONG_SCHEDULES
    } else {
        SCHEDULES
    };
    let schedules: u64 = std::env::var("AGENTOS_SIM_SCHEDULES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    // A fresh base each run, printed, so every failure names a replayable seed.
    let base = std::env::var("AGENTOS_SIM_BASE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    let started = std::time::Instant::now();
    let mut seen = Seen::default();
    for i in 0..schedules {
        let seed = base.wrapping_add(i);
        match schedule(seed) {
            Ok(s) => seen.add(&s),
            Err(e) => panic!(
                "seed {seed} failed (replay: AGENTOS_SIM_SEED={seed} cargo test -p agentos-workers simulated): {e}"
            ),
        }
    }
    eprintln!(
        "{schedules} schedules from base {base} passed in {:?}: {seen:#?}",
        started.elapsed()
    );
    if schedules >= 500 {
        assert!(
            seen.missing().is_empty(),
            "never simulated: {:?}",
            seen.missing()
        );
    }
}
