//! Embeddings: the deterministic local `hash` backend (a hashed bag of words, L2-normalized:
//! the same text always gives the same vector, texts sharing words point the same way; for
//! tests and demos, not for meaning), and the `openai` backend's pass-through to an upstream's
//! `POST /embeddings`.

use agentos_bus::envelope::{EmbeddingReply, EmbeddingRequest, EmbeddingUsage, ErrorBody};
use serde_json::{Value, json};

use super::openai::OpenAi;
use super::upstream_error;

/// Vector size of the `hash` backend unless the request asks for another.
pub const DEFAULT_DIMENSIONS: u32 = 256;
/// Largest `dimensions` the `hash` backend makes.
pub const MAX_DIMENSIONS: u32 = 4096;

/// The deterministic local embedder.
#[derive(Clone, Debug)]
pub struct HashEmbed {
    pub dimensions: u32,
}

impl Default for HashEmbed {
    fn default() -> Self {
        Self {
            dimensions: DEFAULT_DIMENSIONS,
        }
    }
}

/// FNV-1a, 64 bits: stable across processes and releases (unlike `std`'s hasher).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Lowercased alphanumeric words.
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

impl HashEmbed {
    /// One vector: each word adds ±1 at its hashed position; then unit length (all zeros for a
    /// text without words).
    pub fn vector(&self, text: &str, dimensions: u32) -> Vec<f32> {
        let dims = dimensions.max(1) as usize;
        let mut v = vec![0f32; dims];
        for w in words(text) {
            let h = fnv1a(w.as_bytes());
            let sign = if h >> 63 == 0 { 1.0 } else { -1.0 };
            v[(h % dims as u64) as usize] += sign;
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x /= norm);
        }
        v
    }

    pub fn embed(&self, req: &EmbeddingRequest) -> EmbeddingReply {
        let dims = req.dimensions.unwrap_or(self.dimensions);
        if dims == 0 || dims > MAX_DIMENSIONS {
            return EmbeddingReply::Error {
                error: ErrorBody::new(
                    "invalid_request",
                    format!("dimensions must be 1..={MAX_DIMENSIONS}"),
                ),
            };
        }
        let tokens: u64 = req.input.iter().map(|t| words(t).count() as u64).sum();
        EmbeddingReply::Vectors {
            vectors: req.input.iter().map(|t| self.vector(t, dims)).collect(),
            usage: EmbeddingUsage {
                prompt_tokens: tokens,
                total_tokens: tokens,
            },
        }
    }
}

fn upstream_reply(v: &Value, n: usize) -> Option<EmbeddingReply> {
    let mut data: Vec<&Value> = v.get("data")?.as_array()?.iter().collect();
    data.sort_by_key(|d| d.get("index").and_then(Value::as_u64).unwrap_or(0));
    let vectors = data
        .iter()
        .map(|d| {
            d.get("embedding")?
                .as_array()?
                .iter()
                .map(|x| x.as_f64().map(|f| f as f32))
                .collect::<Option<Vec<f32>>>()
        })
        .collect::<Option<Vec<_>>>()?;
    if vectors.len() != n {
        return None;
    }
    let usage = v.get("usage");
    let count = |k| {
        usage
            .and_then(|u| u.get(k))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    Some(EmbeddingReply::Vectors {
        vectors,
        usage: EmbeddingUsage {
            prompt_tokens: count("prompt_tokens"),
            total_tokens: count("total_tokens"),
        },
    })
}

impl OpenAi {
    /// `POST <base>/embeddings` with floats; one attempt, the upstream's errors sanitized.
    pub(super) async fn embed(
        &self,
        upstream_model: &str,
        req: &EmbeddingRequest,
    ) -> EmbeddingReply {
        let mut body =
            json!({"model": upstream_model, "input": req.input, "encoding_format": "float"});
        if let Some(d) = req.dimensions {
            body["dimensions"] = json!(d);
        }
        if let Some(u) = &req.user {
            body["user"] = json!(u);
        }
        let error = |code: &str, message: String| EmbeddingReply::Error {
            error: ErrorBody::new(code, message),
        };
        let resp = match self.post("embeddings", &body).await {
            Ok(r) => r,
            Err(e) => return EmbeddingReply::Error { error: e },
        };
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            let c = upstream_error::classify(status.as_u16(), &text);
            tracing::warn!(status = status.as_u16(), code = c.code, body = %text, "upstream embeddings error");
            return error(c.code, c.message);
        }
        serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| upstream_reply(&v, req.input.len()))
            .unwrap_or_else(|| {
                error(
                    "invalid_upstream_reply",
                    "the upstream's embeddings answer is not OpenAI's shape".into(),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentos_bus::memory::cosine;

    #[test]
    fn hash_vectors_are_deterministic_unit_length_and_share_words() {
        let h = HashEmbed::default();
        let a = h.vector("My favorite color is teal", 256);
        assert_eq!(a, h.vector("my FAVORITE color, is teal!", 256));
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        let q = h.vector("what is my favorite color?", 256);
        let other = h.vector("the train leaves at noon", 256);
        let (near, far) = (
            cosine(&a, &q).unwrap_or(0.0),
            cosine(&a, &other).unwrap_or(0.0),
        );
        assert!(near > far + 0.3, "{near} vs {far}");
        assert!(h.vector("", 8).iter().all(|x| *x == 0.0));
    }

    #[test]
    fn upstream_answers_are_read_in_index_order() {
        let v = json!({"data": [{"index": 1, "embedding": [0.0, 1.0]}, {"index": 0, "embedding": [1.0, 0.0]}],
            "usage": {"prompt_tokens": 3, "total_tokens": 3}});
        let Some(EmbeddingReply::Vectors { vectors, usage }) = upstream_reply(&v, 2) else {
            panic!("not read");
        };
        assert_eq!(vectors, vec![vec![1.0, 0.0], vec![0.0, 1.0]]);
        assert_eq!(usage.total_tokens, 3);
        assert!(upstream_reply(&v, 3).is_none());
    }
}
