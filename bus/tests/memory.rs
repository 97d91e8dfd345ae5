//! Memory items against a real nats-server: compare-and-set, create-only, per-item TTL
//! (NATS per-message TTL), deletes, listing, tenancy, and drift of a bucket provisioned without
//! TTLs.

use std::time::Duration;

use agentos_bus::envelope::{MemoryItem, now};
use agentos_bus::id::{MemoryKey, Namespace, Tenant};
use agentos_bus::provision::Outcome;
use agentos_bus::server::NatsServer;
use agentos_bus::{Bus, ConnectOptions, Error, Expect, Settings};
use serde_json::json;

mod common;

use common::setup;

fn item(v: serde_json::Value) -> MemoryItem {
    MemoryItem {
        value: v,
        embedding: None,
        expires_at: None,
        updated_at: now(),
    }
}

fn ids() -> (Tenant, Namespace, MemoryKey) {
    (
        Tenant::parse("acme").expect("tenant"),
        Namespace::parse("users.alice").expect("ns"),
        MemoryKey::parse("color").expect("key"),
    )
}

#[tokio::test]
async fn compare_and_set_create_only_delete_and_tenancy() {
    let (_server, bus) = setup().await;
    let mem = bus.memory().await.expect("memory");
    let (t, ns, k) = ids();
    let r1 = mem
        .put(&t, &ns, &k, &item(json!("blue")), None, Expect::Absent)
        .await
        .expect("create");
    let err = mem
        .put(&t, &ns, &k, &item(json!("red")), None, Expect::Absent)
        .await
        .expect_err("exists");
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
    let r2 = mem
        .put(
            &t,
            &ns,
            &k,
            &item(json!("green")),
            None,
            Expect::Revision(r1),
        )
        .await
        .expect("cas");
    let err = mem
        .put(&t, &ns, &k, &item(json!("x")), None, Expect::Revision(r1))
        .await
        .expect_err("stale");
    assert!(matches!(err, Error::WrongRevision { .. }), "{err}");
    let got = mem.get(&t, &ns, &k).await.expect("get").expect("some");
    assert_eq!((got.value.value, got.revision), (json!("green"), r2));

    let other = Tenant::parse("umbrella").expect("tenant");
    assert!(mem.get(&other, &ns, &k).await.expect("get").is_none());
    assert!(mem.list(&other, &ns).await.expect("list").is_empty());

    // A nested namespace's items are not the parent's.
    let nested = Namespace::parse("users.alice.prefs").expect("ns");
    mem.put(&t, &nested, &k, &item(json!(1)), None, Expect::Any)
        .await
        .expect("nested");
    let listed = mem.list(&t, &ns).await.expect("list");
    assert_eq!(listed, vec![(k.clone(), r2)]);

    let err = mem
        .delete(&t, &ns, &k, Some(r1))
        .await
        .expect_err("stale delete");
    assert!(matches!(err, Error::WrongRevision { .. }), "{err}");
    mem.delete(&t, &ns, &k, Some(r2)).await.expect("delete");
    assert!(mem.get(&t, &ns, &k).await.expect("get").is_none());
    assert!(mem.list(&t, &ns).await.expect("list").is_empty());
    // Deleted counts as absent for create-only.
    mem.put(&t, &ns, &k, &item(json!("again")), None, Expect::Absent)
        .await
        .expect("create after delete");
}

#[tokio::test]
async fn an_item_with_a_ttl_disappears_and_its_key_can_be_created_again() {
    let (_server, bus) = setup().await;
    let mem = bus.memory().await.expect("memory");
    let (t, ns, k) = ids();
    let keep = MemoryKey::parse("keep").expect("key");
    mem.put(&t, &ns, &keep, &item(json!("stays")), None, Expect::Any)
        .await
        .expect("put");
    let rev = mem
        .put(
            &t,
            &ns,
            &k,
            &item(json!("brief")),
            Some(Duration::from_secs(1)),
            Expect::Absent,
        )
        .await
        .expect("put ttl");
    assert!(mem.get(&t, &ns, &k).await.expect("get").is_some());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while mem.get(&t, &ns, &k).await.expect("get").is_some() {
        assert!(tokio::time::Instant::now() < deadline, "item never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let listed = mem.list(&t, &ns).await.expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].0, keep);
    let err = mem
        .put(&t, &ns, &k, &item(json!("x")), None, Expect::Revision(rev))
        .await
        .expect_err("expired revision");
    assert!(matches!(err, Error::WrongRevision { .. }), "{err}");
    mem.put(&t, &ns, &k, &item(json!("new")), None, Expect::Absent)
        .await
        .expect("create after expiry");
    let scanned = mem.scan(&t, &ns, 10).await.expect("scan");
    assert_eq!(scanned.len(), 2);
    let err = mem.scan(&t, &ns, 1).await.expect_err("bound");
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
}

#[tokio::test]
async fn a_memory_bucket_without_ttls_is_drift_and_refuses_ttl_writes() {
    let server = NatsServer::ephemeral().await.expect("nats-server");
    let bus = Bus::connect(&ConnectOptions::new(server.url()))
        .await
        .expect("connect");
    // What the previous release provisioned: history 5, no per-message TTL.
    let client = async_nats::connect(server.url()).await.expect("raw client");
    async_nats::jetstream::new(client)
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: "agentos-memory".into(),
            history: 5,
            ..Default::default()
        })
        .await
        .expect("old bucket");
    let report = bus
        .provision(&Settings::default())
        .await
        .expect("provision");
    let memory = report
        .items
        .iter()
        .find(|i| i.name == "agentos-memory")
        .expect("memory item");
    let Outcome::Drift { differences } = &memory.outcome else {
        panic!("expected drift: {memory:?}");
    };
    assert!(
        differences.iter().any(|d| d.starts_with("allow_msg_ttl")),
        "{differences:?}"
    );
    let mem = bus.memory().await.expect("memory");
    let (t, ns, k) = ids();
    let err = mem
        .put(
            &t,
            &ns,
            &k,
            &item(json!(1)),
            Some(Duration::from_secs(5)),
            Expect::Any,
        )
        .await
        .expect_err("ttl refused");
    assert_eq!(err.code(), "ttl_disabled");
    mem.put(&t, &ns, &k, &item(json!(1)), None, Expect::Any)
        .await
        .expect("plain put still works");
    mem.delete(&t, &ns, &k, None).await.expect("delete");
    assert!(mem.get(&t, &ns, &k).await.expect("get").is_none());
}
