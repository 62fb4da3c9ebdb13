//! Embeddings, shared by Ollama's /api/embed and /api/embeddings and OpenAI's /v1/embeddings.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::KeepAlive;
use crate::error::ApiError;
use crate::request::GenOptions;
use crate::run::{model_defaults, resolve};
use crate::AppState;

/// One input: text, or token ids (OpenAI accepts both).
#[derive(Clone, Debug, PartialEq)]
pub enum EmbedInput {
    Text(String),
    Tokens(Vec<u32>),
}

pub struct Embedded {
    pub embeddings: Vec<Vec<f32>>,
    pub prompt_tokens: usize,
    pub load_duration: Duration,
    pub total_duration: Duration,
}

/// Embed each input. `truncate`: cut inputs longer than the context (else 400).
/// `dimensions`: keep the first N dimensions, renormalised.
pub async fn embed(
    app: &Arc<AppState>,
    model_name: &str,
    inputs: Vec<EmbedInput>,
    truncate: bool,
    keep_alive: Option<KeepAlive>,
    options: GenOptions,
    dimensions: Option<usize>,
) -> Result<Embedded, ApiError> {
    let started = Instant::now();
    if model_name.trim().is_empty() {
        return Err(ApiError::invalid_param("model", "model is required"));
    }
    options.validate()?;
    if dimensions == Some(0) {
        return Err(ApiError::invalid_param(
            "dimensions",
            "dimensions must be at least 1",
        ));
    }
    let record = resolve(app, model_name).await?;
    let options = options.or(&model_defaults(&record));
    let num_ctx = options.num_ctx.map(|n| n as usize);
    let (lease, load_duration) = app.sched.acquire(&record, num_ctx, keep_alive).await?;
    let model = lease.slot.model.clone();
    if !model.can_embed() {
        return Err(ApiError::invalid(format!(
            "model '{model_name}' does not support embeddings"
        )));
    }
    let ctx = num_ctx
        .unwrap_or(lease.slot.num_ctx)
        .min(lease.slot.num_ctx);
    let mut out = Vec::with_capacity(inputs.len());
    let mut prompt_tokens = 0;
    for (i, input) in inputs.into_iter().enumerate() {
        let mut tokens = match input {
            EmbedInput::Text(t) => {
                if t.is_empty() {
                    return Err(ApiError::invalid_param(
                        "input",
                        format!("input {i} is empty"),
                    ));
                }
                let m = model.clone();
                tokio::task::spawn_blocking(move || m.tokenize(&t, true, false))
                    .await
                    .map_err(|e| ApiError::internal(format!("tokenize failed: {e}")))?
            }
            EmbedInput::Tokens(t) => t,
        };
        if tokens.is_empty() {
            return Err(ApiError::invalid_param(
                "input",
                format!("input {i} is empty"),
            ));
        }
        if tokens.len() > ctx {
            if !truncate {
                return Err(ApiError::invalid_param(
                    "input",
                    format!(
                        "input {i} is {} tokens but the context window is {ctx} tokens",
                        tokens.len()
                    ),
                ));
            }
            tokens.truncate(ctx);
        }
        prompt_tokens += tokens.len();
        let _turn = app.sched.wait_turn(&lease.slot).await?;
        let m = model.clone();
        let mut v = tokio::task::spawn_blocking(move || m.embed(&tokens))
            .await
            .map_err(|e| ApiError::internal(format!("embedding failed: {e}")))?
            .map_err(|e| ApiError::internal(format!("embedding failed: {e}")))?;
        if let Some(d) = dimensions {
            v.truncate(d);
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            if norm > 0.0 {
                v.iter_mut().for_each(|x| *x /= norm);
            }
        }
        out.push(v);
    }
    drop(lease);
    Ok(Embedded {
        embeddings: out,
        prompt_tokens,
        load_duration,
        total_duration: started.elapsed(),
    })
}

/// Standard base64 (OpenAI's `encoding_format: "base64"` of little-endian f32s).
pub fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        s.push(A[(n >> 18) as usize & 63] as char);
        s.push(A[(n >> 12) as usize & 63] as char);
        s.push(if chunk.len() > 1 {
            A[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        s.push(if chunk.len() > 2 {
            A[n as usize & 63] as char
        } else {
            '='
        });
    }
    s
}

pub fn f32s_base64(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(f32s_base64(&[1.0]), "AACAPw==");
    }
}
