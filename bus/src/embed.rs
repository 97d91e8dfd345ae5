//! Embedding calls: one request on `agentos.embed.<tenant>.<model>`, one reply, served by the
//! model workers whose route table has an embedding-capable route for the model.

use std::time::Duration;

use crate::envelope::{EmbeddingReply, EmbeddingRequest, Envelope};
use crate::id::ModelName;
use crate::{Bus, CallMeta, Result, subject};

impl Bus {
    /// Embeds `req.input` with `model` for `meta.tenant`; waits at most `timeout` for the reply.
    /// Nobody serving the model is [`crate::Error::NoResponders`].
    pub async fn embed(
        &self,
        model: &ModelName,
        meta: &CallMeta,
        req: &EmbeddingRequest,
        timeout: Duration,
    ) -> Result<EmbeddingReply> {
        let mut replies = self
            .call(subject::embed(&meta.tenant, model), meta, req.encode())
            .await?;
        let reply = replies.next(timeout).await?;
        EmbeddingReply::decode(reply.schema.as_deref(), &reply.payload)
    }
}
