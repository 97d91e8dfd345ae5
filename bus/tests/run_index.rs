//! The run index against a real nats-server: pages newest first, cursors, agent filters, and a
//! page's cost independent of history size.

use agentos_bus::id::{AgentId, RunId, Tenant};
use agentos_bus::{Bus, IndexPage};

mod common;

use common::setup;

fn t(s: &str) -> Tenant {
    Tenant::parse(s).expect("tenant")
}

fn a(s: &str) -> AgentId {
    AgentId::parse(s).expect("agent")
}

/// Every page of `agent`'s (or all) runs of `tenant`, following cursors.
async fn all_pages(
    bus: &Bus,
    tenant: &Tenant,
    agent: Option<&AgentId>,
    limit: usize,
) -> Vec<RunId> {
    let mut out = Vec::new();
    let mut before = None;
    loop {
        let page = bus
            .run_index_page(tenant, agent, before.as_ref(), limit)
            .await
            .expect("page");
        assert!(page.runs.len() <= limit);
        out.extend(page.runs.iter().copied());
        if page.runs.len() < limit {
            return out;
        }
        before = page.runs.last().copied();
    }
}

#[tokio::test]
async fn pages_are_newest_first_and_cursors_walk_the_whole_index_once() {
    let (_server, bus) = setup().await;
    let (acme, globex) = (t("acme"), t("globex"));
    let mut entries = Vec::new();
    let mut acme_runs = Vec::new();
    let mut a2_runs = Vec::new();
    for i in 0..300_u32 {
        let run = RunId::new();
        let agent = if i % 3 == 0 { a("a2") } else { a("a1") };
        // Irregular interleaving with another tenant: bursts of its entries.
        for _ in 0..(i * 7 % 11 % 5) {
            entries.push((globex.clone(), a("a1"), RunId::new()));
        }
        entries.push((acme.clone(), agent.clone(), run));
        acme_runs.push(run);
        if agent == a("a2") {
            a2_runs.push(run);
        }
    }
    bus.index_runs(&entries).await.expect("index");
    bus.index_runs(&entries[..10])
        .await
        .expect("again (deduplicated)");
    acme_runs.reverse();
    a2_runs.reverse();
    for limit in [1, 7, 20, 100] {
        assert_eq!(
            all_pages(&bus, &acme, None, limit).await,
            acme_runs,
            "limit {limit}"
        );
        assert_eq!(all_pages(&bus, &acme, Some(&a("a2")), limit).await, a2_runs);
    }
    assert!(all_pages(&bus, &t("initech"), None, 20).await.is_empty());
    let first = bus
        .run_index_page(&acme, None, None, 20)
        .await
        .expect("page");
    assert_eq!(first.runs, acme_runs[..20]);
}

/// A run id minted `ms` milliseconds after an arbitrary epoch in 2026.
fn run_at(ms: u64) -> RunId {
    let ts = uuid::Timestamp::from_unix(uuid::NoContext, 1_780_000_000 + ms / 1000, 0);
    let id = uuid::Uuid::new_v7(ts).to_string();
    RunId::parse(&id).expect("run id")
}

/// Indexes `n` runs of `tenant` (agent `a1`) created over the last month, as a history looks,
/// interleaved with as many of a noisy tenant.
async fn seed(bus: &Bus, tenant: &Tenant, n: usize) -> Vec<RunId> {
    let noise = t("noise");
    let mut runs = Vec::with_capacity(n);
    let mut entries = Vec::with_capacity(2 * n);
    let step = 30 * 86_400_000 / n as u64;
    for i in 0..n as u64 {
        let run = run_at(i * step);
        runs.push(run);
        entries.push((tenant.clone(), a("a1"), run));
        entries.push((noise.clone(), a("a1"), run_at(i * step + step / 2)));
    }
    bus.index_runs(&entries).await.expect("index");
    runs.reverse();
    runs
}

#[tokio::test]
async fn a_page_costs_the_same_with_100_or_50_000_runs() {
    let (_server, bus) = setup().await;
    let (small, big) = (t("small"), t("big"));
    let small_runs = seed(&bus, &small, 100).await;
    let big_runs = seed(&bus, &big, 50_000).await;
    // The best of 5, so a cold connection or a scheduler hiccup does not count.
    let timed = |tenant: Tenant, before: Option<RunId>| {
        let bus = bus.clone();
        async move {
            let mut best = (IndexPage::default(), std::time::Duration::MAX);
            for _ in 0..5 {
                let started = std::time::Instant::now();
                let page = bus
                    .run_index_page(&tenant, None, before.as_ref(), 21)
                    .await
                    .expect("page");
                best = (page, best.1.min(started.elapsed()));
            }
            best
        }
    };
    let (s_first, s_first_t) = timed(small.clone(), None).await;
    let (s_deep, s_deep_t) = timed(small.clone(), Some(small_runs[59])).await;
    let (b_first, b_first_t) = timed(big.clone(), None).await;
    let (b_deep, b_deep_t) = timed(big.clone(), Some(big_runs[40_000])).await;
    assert_eq!(s_first.runs, small_runs[..21]);
    assert_eq!(s_deep.runs, small_runs[60..81]);
    assert_eq!(b_first.runs, big_runs[..21]);
    assert_eq!(b_deep.runs, big_runs[40_001..40_022]);
    for (what, p, d) in [
        ("100 runs, first page", &s_first, s_first_t),
        ("100 runs, page after #60", &s_deep, s_deep_t),
        ("50,000 runs, first page", &b_first, b_first_t),
        ("50,000 runs, page after #40,000", &b_deep, b_deep_t),
    ] {
        eprintln!(
            "{what}: {} direct gets, {} index entries read, {:.2} ms",
            p.requests,
            p.entries_read,
            d.as_secs_f64() * 1000.0
        );
        assert!(p.entries_read <= 4 * 21, "{what}: read {}", p.entries_read);
        assert!(p.requests <= 12, "{what}: {} requests", p.requests);
    }
    assert!(b_first.entries_read <= 2 * s_first.entries_read);
    assert!(b_deep.entries_read <= 2 * s_deep.entries_read);
}
