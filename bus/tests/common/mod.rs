//! What every bus integration test starts from: a real nats-server on a random port, and a
//! provisioned bus connected to it.

use agentos_bus::server::NatsServer;
use agentos_bus::{Bus, ConnectOptions, Settings};

/// The server (killed on drop: keep it alive) and a provisioned bus.
pub async fn setup() -> (NatsServer, Bus) {
    let server = NatsServer::ephemeral().await.expect("nats-server");
    let bus = Bus::connect(&ConnectOptions::new(server.url()))
        .await
        .expect("connect");
    bus.provision(&Settings::default())
        .await
        .expect("provision");
    (server, bus)
}
