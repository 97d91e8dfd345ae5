//! `agentos tenant credentials|revoke`: a tenant's own NATS account on the local platform; and
//! `agentos env`: the platform's own account, for workers started by hand.
//! Adding or removing one rewrites the accounts file and reloads nats-server (SIGHUP) without
//! dropping anyone else's connection.

use std::time::Duration;

use agentos_bus::envelope::{AuditRecord, now};
use agentos_bus::id::Tenant;
use agentos_bus::{Bus, ConnectOptions};
use anyhow::{Context, Result, anyhow, bail};

use crate::accounts::{NatsAuth, tenant_credentials};
use crate::args::{HomeArgs, TenantArgs, TenantCommand};
use crate::state::State;

pub async fn tenant(cmd: TenantCommand) -> Result<()> {
    match cmd {
        TenantCommand::Credentials(a) => credentials(&a).await,
        TenantCommand::Revoke(a) => revoke(&a).await,
    }
}

fn running(home: &HomeArgs) -> Result<State> {
    State::load(&home.path())?.ok_or_else(|| {
        anyhow!(
            "no platform is running from {}\n  hint: start it with `agentos up`; for your own NATS cluster see docs/operations.md (Tenants on NATS)",
            home.path().display()
        )
    })
}

fn tenant_of(a: &TenantArgs) -> Result<(Tenant, State)> {
    let tenant = Tenant::parse(a.tenant.clone()).map_err(|e| anyhow!("{e}"))?;
    Ok((tenant, running(&a.home)?))
}

/// Prints `export …` lines for the platform's NATS user and the edge.
pub fn env(home: &HomeArgs) -> Result<()> {
    let state = running(home)?;
    let auth = NatsAuth::load_or_create(&state.home)?;
    println!("export AGENTOS_NATS_URL={}", state.nats_url);
    for (k, v) in auth.platform_env() {
        println!("export {k}={v}");
    }
    for (k, v) in state.tls.iter().flat_map(|t| t.nats_env()) {
        println!("export {k}={v}");
    }
    println!("export AGENTOS_EDGE_URL={}", state.edge_url);
    Ok(())
}

async fn credentials(a: &TenantArgs) -> Result<()> {
    let (tenant, state) = tenant_of(a)?;
    let mut auth = NatsAuth::load_or_create(&state.home)?;
    let (password, new) = auth.tenant(&tenant);
    if new {
        auth.save(&state.home)?;
    }
    // Under TLS the tenant gets its own client certificate of the platform's dev CA.
    let tls = tenant_tls(&state, &tenant)?;
    // Also when not new: a reload that failed earlier is completed now.
    let opts = ConnectOptions {
        user: Some(tenant.to_string()),
        password: Some(password.clone()),
        request_timeout: Some(Duration::from_secs(2)),
        ..ConnectOptions::new(&state.nats_url).with_name("agentos-tenant-probe")
    };
    let opts = match &tls {
        Some(t) => t.nats(opts),
        None => opts,
    };
    if new {
        // Before the first probe: the account must exist before its user can connect.
        reload(&state)?;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    wait_until_wired(&state, &tenant, &opts).await?;
    if new {
        audit(&state, &auth, &tenant, "tenant.nats_credentials").await?;
    }
    let mut creds = tenant_credentials(&state.nats_url, &tenant, &password);
    if let Some(t) = &tls {
        creds["tls"] = serde_json::to_value(t)?;
    }
    if a.json {
        println!("{creds}");
        return Ok(());
    }
    let s = &creds["subjects"];
    println!("tenant {tenant} connects to NATS with:");
    println!("  url       {}", state.nats_url);
    println!("  user      {tenant}");
    println!("  password  {password}");
    if let Some(t) = &tls {
        println!("  tls ca    {}", t.ca.display());
        println!("  tls cert  {}", t.cert.display());
        println!("  tls key   {}", t.key.display());
    }
    println!("and may, for itself only:");
    println!(
        "  submit runs     JetStream publish  {}",
        s["submit"].as_str().unwrap_or_default()
    );
    println!(
        "  follow events   subscribe          {}",
        s["events"].as_str().unwrap_or_default()
    );
    println!(
        "  read a run      request            {}",
        s["run_record"].as_str().unwrap_or_default()
    );
    println!(
        "  its last event  request            {}",
        s["last_event"].as_str().unwrap_or_default()
    );
    println!("Anything of another tenant is refused (no responders / permissions violation).");
    Ok(())
}

/// Reloads nats-server until the tenant's account answers. nats-server 2.15 wires a *new*
/// account's service imports only on the reload after the one that created it, so one SIGHUP
/// is not enough; the probe (a direct get of a missing run record) says when it is.
async fn wait_until_wired(state: &State, tenant: &Tenant, opts: &ConnectOptions) -> Result<()> {
    for _ in 0..20 {
        if let Ok(bus) = Bus::connect(opts).await
            && bus.can_read_run_records(tenant).await.unwrap_or(false)
        {
            return Ok(());
        }
        reload(state)?;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bail!(
        "nats-server did not take up tenant {tenant}'s account\n  hint: see {}",
        state.home.join("logs").join("nats.log").display()
    )
}

/// Records the change in the audit log, as the local operator (`cli:$USER`).
async fn audit(state: &State, auth: &NatsAuth, tenant: &Tenant, action: &str) -> Result<()> {
    let opts = auth.platform(&state.nats_url, "agentos-tenant");
    let bus = Bus::connect(&match &state.tls {
        Some(t) => t.nats(opts),
        None => opts,
    })
    .await?;
    let operator = std::env::var("USER").unwrap_or_else(|_| "operator".into());
    let record = AuditRecord {
        ts: now(),
        tenant: tenant.clone(),
        actor: format!("cli:{operator}"),
        actor_tenant: None,
        action: action.into(),
        target: tenant.to_string(),
        request_id: None,
        details: serde_json::json!({"nats_user": tenant}),
    };
    bus.audit(&record).await?;
    bus.close().await?;
    Ok(())
}

/// The tenant's client certificate (CN = the tenant id), issued by the platform's dev CA when
/// missing, if the platform runs with TLS.
fn tenant_tls(state: &State, tenant: &Tenant) -> Result<Option<crate::certs::ClientTls>> {
    let Some(tls) = &state.tls else {
        return Ok(None);
    };
    let dir = tls
        .ca
        .parent()
        .ok_or_else(|| anyhow!("{} has no directory", tls.ca.display()))?;
    let certs = crate::certs::DevCerts {
        dir: dir.to_owned(),
    };
    Ok(Some(certs.ensure_client(tenant.as_str())?))
}

/// Reloads every nats-server of the platform (each node of a cluster has the accounts).
fn reload(state: &State) -> Result<()> {
    for pid in std::iter::once(state.nats_pid).chain(state.nats_peers.iter().copied()) {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .context("signalling nats-server")?;
        if !status.success() {
            bail!("could not signal nats-server (pid {pid})");
        }
    }
    Ok(())
}

async fn revoke(a: &TenantArgs) -> Result<()> {
    let (tenant, state) = tenant_of(a)?;
    let mut auth = NatsAuth::load_or_create(&state.home)?;
    if auth.tenants.remove(&tenant).is_none() {
        println!("tenant {tenant} has no NATS account; nothing to revoke");
        return Ok(());
    }
    auth.save(&state.home)?;
    reload(&state)?;
    audit(&state, &auth, &tenant, "tenant.nats_revoke").await?;
    if a.json {
        println!("{}", serde_json::json!({"tenant": tenant, "revoked": true}));
    } else {
        println!("revoked tenant {tenant}'s NATS account; its connections are closed");
    }
    Ok(())
}
