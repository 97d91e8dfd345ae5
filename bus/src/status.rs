//! Read-only views of streams and consumers for `agentos status` and tests.

use serde::Serialize;

use crate::{Bus, Error, Result};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StreamStatus {
    pub name: String,
    pub messages: u64,
    pub bytes: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub consumers: usize,
    /// Configured replicas (1 on a single server).
    pub replicas: usize,
    /// The server leading the stream's RAFT group (clustered JetStream only).
    pub leader: Option<String>,
    /// Replicas up to date with the leader, the leader included (`replicas` when healthy).
    pub current: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConsumerStatus {
    pub stream: String,
    pub name: String,
    pub pending: u64,
    pub ack_pending: usize,
    /// The consumer's `max_ack_pending` (-1: unlimited).
    pub max_ack_pending: i64,
    pub redelivered: usize,
    pub waiting: usize,
}

impl Bus {
    pub async fn stream_status(&self, name: &str) -> Result<StreamStatus> {
        let mut stream = self
            .js
            .get_stream(name)
            .await
            .map_err(|e| Error::nats(format!("stream info {name}"), e))?;
        let info = stream
            .info()
            .await
            .map_err(|e| Error::nats(format!("stream info {name}"), e))?;
        Ok(StreamStatus {
            name: name.to_owned(),
            messages: info.state.messages,
            bytes: info.state.bytes,
            first_seq: info.state.first_sequence,
            last_seq: info.state.last_sequence,
            consumers: info.state.consumer_count,
            replicas: info.config.num_replicas,
            leader: info.cluster.as_ref().and_then(|c| c.leader.clone()),
            current: info.cluster.as_ref().map_or(1, |c| {
                usize::from(c.leader.is_some())
                    + c.replicas
                        .iter()
                        .filter(|p| p.current && !p.offline)
                        .count()
            }),
        })
    }

    pub async fn consumer_status(&self, stream: &str, name: &str) -> Result<ConsumerStatus> {
        let s = self
            .js
            .get_stream_no_info(stream)
            .await
            .map_err(|e| Error::nats(format!("stream {stream}"), e))?;
        let info = s
            .consumer_info(name)
            .await
            .map_err(|e| Error::nats(format!("consumer info {stream}/{name}"), e))?;
        Ok(ConsumerStatus {
            stream: stream.to_owned(),
            name: name.to_owned(),
            pending: info.num_pending,
            ack_pending: info.num_ack_pending,
            max_ack_pending: info.config.max_ack_pending,
            redelivered: info.num_redelivered,
            waiting: info.num_waiting,
        })
    }
}
