//! Provisioning on a real 3-node cluster: every stream and bucket at R3, every node accepting
//! JetStream writes, and an R1 platform scaled up to R3 in place.

use std::time::Duration;

use agentos_bus::cluster::NatsCluster;
use agentos_bus::provision::Outcome;
use agentos_bus::{Bus, ConnectOptions, Settings};

fn r(n: usize) -> Settings {
    Settings {
        replicas: n,
        ..Settings::default()
    }
}

async fn provisioned(bus: &Bus, settings: &Settings) -> agentos_bus::provision::Report {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match bus.provision(settings).await {
            Ok(report) => return report,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("provision: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("provision: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_node_takes_writes_to_r3_streams() {
    let cluster = NatsCluster::ephemeral(3).await.expect("cluster");
    let bus = Bus::connect(&ConnectOptions::new(cluster.url()))
        .await
        .expect("connect");
    let report = provisioned(&bus, &r(3)).await;
    assert!(report.is_clean(), "{report:?}");
    cluster
        .wait_healthy(Duration::from_secs(60))
        .await
        .expect("healthy");
    for item in bus.check(&r(3)).await.expect("check").items {
        let stream = match item.kind {
            "kv" => format!("KV_{}", item.name),
            _ => item.name.clone(),
        };
        let st = bus.stream_status(&stream).await.expect("status");
        assert_eq!((st.replicas, st.current), (3, 3), "{st:?}");
    }
    for node in &cluster.nodes {
        let client = async_nats::connect(node.url()).await.expect("connect node");
        let js = async_nats::jetstream::new(client);
        let ack = js
            .publish("agentos.dlq.probe.probe", "x".into())
            .await
            .expect("publish")
            .await;
        assert!(ack.is_ok(), "{}: {ack:?}", node.url());
    }
}

/// A platform provisioned at R1 on the cluster (the default) is scaled to R3 in place by the
/// next provisioning at R3, keeping its data; asking for R1 again is drift, never a shrink.
#[tokio::test(flavor = "multi_thread")]
async fn an_r1_platform_is_scaled_up_to_r3_in_place() {
    let cluster = NatsCluster::ephemeral(3).await.expect("cluster");
    let bus = Bus::connect(&ConnectOptions::new(cluster.url()))
        .await
        .expect("connect");
    provisioned(&bus, &r(1)).await;
    cluster
        .wait_healthy(Duration::from_secs(60))
        .await
        .expect("healthy");
    let client = async_nats::connect(cluster.url().split(',').next().expect("url"))
        .await
        .expect("connect");
    let js = async_nats::jetstream::new(client);
    js.publish("agentos.dlq.probe.probe", "kept".into())
        .await
        .expect("publish")
        .await
        .expect("stored");

    let report = provisioned(&bus, &r(3)).await;
    assert!(report.is_clean(), "{report:?}");
    assert!(
        report.items.iter().all(|i| matches!(
            &i.outcome,
            Outcome::Upgraded { changes } if changes == &vec!["replicas 1 → 3".to_owned()]
        )),
        "{report:?}"
    );
    let dlq = agentos_bus::provision::STREAM_DLQ;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let st = bus.stream_status(dlq).await.expect("status");
        if (st.replicas, st.current, st.messages) == (3, 3, 1) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{st:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let again = bus.provision(&r(1)).await.expect("provision R1");
    assert_eq!(again.drifted().count(), again.items.len(), "{again:?}");
    assert_eq!(bus.stream_status(dlq).await.expect("status").replicas, 3);
}
