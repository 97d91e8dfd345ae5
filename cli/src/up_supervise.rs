//! `agentos up`'s supervisor: restarts every nats-server of the platform (the one server, or
//! each node of a cluster) and every component when it dies, with exponential backoff, until
//! shutdown; the state file follows the new pids.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use agentos_bus::server::NatsServer;
use anyhow::Result;

use crate::state::State;
use crate::up::{Component, Launcher, save_state};

/// The longest wait before a restart.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How a nats-server is started, and started again after it died: the same binary, port, store
/// and arguments, so the workers' reconnect loops find it where it was.
pub(crate) struct NatsLauncher {
    pub binary: PathBuf,
    pub dir: PathBuf,
    pub port: u16,
    pub args: Vec<String>,
}

impl NatsLauncher {
    pub async fn spawn(&self) -> agentos_bus::Result<NatsServer> {
        NatsServer::spawn(&self.binary, &self.dir, Some(self.port), &self.args).await
    }
}

/// A running nats-server, how to start it again, and its restart bookkeeping.
pub(crate) struct Supervised<'a> {
    name: String,
    server: &'a mut NatsServer,
    launcher: &'a NatsLauncher,
    restarts: u32,
    restart_at: Option<Instant>,
    started_at: Instant,
}

impl<'a> Supervised<'a> {
    pub fn new(name: String, server: &'a mut NatsServer, launcher: &'a NatsLauncher) -> Self {
        Self {
            name,
            server,
            launcher,
            restarts: 0,
            restart_at: None,
            started_at: Instant::now(),
        }
    }
}

/// The next restart delay: 0.5 s doubling to [`MAX_BACKOFF`]; a process that ran a minute since
/// its last start earns a fresh backoff.
fn backoff(restarts: &mut u32, started_at: Instant) -> Duration {
    if started_at.elapsed() > Duration::from_secs(60) {
        *restarts = 0;
    }
    (Duration::from_millis(500) * 2u32.saturating_pow(*restarts)).min(MAX_BACKOFF)
}

/// Restarts a nats-server when it dies (same port and store; the components reconnect on their
/// own). Returns whether the pid changed.
async fn supervise_nats(nats: &mut Supervised<'_>) -> bool {
    let name = &nats.name;
    match nats.restart_at {
        None => {
            if let Some(status) = nats.server.exited() {
                let delay = backoff(&mut nats.restarts, nats.started_at);
                println!(
                    "{name} exited ({status}); restarting in {:.1}s",
                    delay.as_secs_f64()
                );
                nats.restart_at = Some(Instant::now() + delay);
            }
            false
        }
        Some(at) if Instant::now() >= at => match nats.launcher.spawn().await {
            Ok(server) => {
                *nats.server = server;
                nats.restarts += 1;
                nats.started_at = Instant::now();
                nats.restart_at = None;
                println!("{name} restarted (restart #{})", nats.restarts);
                true
            }
            Err(e) => {
                println!("{name} could not be restarted: {e}");
                nats.restart_at = Some(Instant::now() + MAX_BACKOFF);
                false
            }
        },
        Some(_) => false,
    }
}

/// Restarts the nats-servers (`nats[0]` is the one the state file names) and the components
/// that die, with exponential backoff, until shutdown.
pub(crate) async fn supervise(
    launcher: &Launcher,
    nats: &mut [Supervised<'_>],
    components: &mut [Component],
    state: &mut State,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<()> {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let mut changed = false;
        for node in nats.iter_mut() {
            changed |= supervise_nats(node).await;
        }
        if let Some((first, others)) = nats.split_first() {
            state.nats_pid = first.server.pid();
            let peers: Vec<u32> = others.iter().map(|n| n.server.pid()).collect();
            changed |= peers != state.nats_peers;
            state.nats_peers = peers;
        }
        for c in components.iter_mut() {
            match (c.restart_at, c.child.try_wait()) {
                (None, Ok(Some(status))) => {
                    let delay = backoff(&mut c.restarts, c.started_at);
                    println!(
                        "{} exited ({status}); restarting in {:.1}s",
                        c.name,
                        delay.as_secs_f64()
                    );
                    c.restart_at = Some(Instant::now() + delay);
                }
                (Some(at), _) if Instant::now() >= at => match launcher.spawn(&c.name, &c.args) {
                    Ok(child) => {
                        c.child = child;
                        c.started_at = Instant::now();
                        c.restarts += 1;
                        c.restart_at = None;
                        changed = true;
                        println!("{} restarted (restart #{})", c.name, c.restarts);
                    }
                    Err(e) => {
                        println!("{} could not be restarted: {e:#}", c.name);
                        c.restart_at = Some(Instant::now() + MAX_BACKOFF);
                    }
                },
                _ => {}
            }
        }
        if changed {
            save_state(state, components)?;
        }
    }
}
