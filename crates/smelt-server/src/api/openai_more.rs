//! OpenAI's legacy completions, model list and embeddings.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use smelt_engine::TokenLogprob;

use super::embed::{embed as run_embed, f32s_base64, EmbedInput};
use super::openai::{err, finish_reason, new_id, usage_json, Sampling, StreamOptions, FINGERPRINT};
use super::{body_bytes, sse_data, stream_response};
use crate::error::{ApiError, Dialect, DialectError};
use crate::request::{Finish, GenOptions, InferRequest, Input, Out};
use crate::run::{self, parse_body, registry_error};
use crate::timefmt;
use crate::AppState;

type Result<T> = std::result::Result<T, DialectError>;

#[derive(Deserialize)]
struct CompletionBody {
    model: String,
    prompt: Value,
    #[serde(default)]
    suffix: Option<String>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(flatten)]
    sampling: Sampling,
    #[serde(default)]
    logprobs: Option<i64>,
    #[serde(default)]
    echo: bool,
}

fn completion_logprobs(lps: &[TokenLogprob]) -> Value {
    let mut offset = 0;
    let mut offsets = Vec::new();
    for l in lps {
        offsets.push(offset);
        offset += l.text.len();
    }
    json!({
        "tokens": lps.iter().map(|l| &l.text).collect::<Vec<_>>(),
        "token_logprobs": lps.iter().map(|l| l.logprob).collect::<Vec<_>>(),
        "top_logprobs": lps.iter().map(|l| l.top.iter().map(|(_, t, p)| (t.clone(), json!(p))).collect::<serde_json::Map<_, _>>()).collect::<Vec<_>>(),
        "text_offset": offsets,
    })
}

pub async fn completions(
    State(app): State<Arc<AppState>>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let started = Instant::now();
    let body = body_bytes(body).map_err(err)?;
    super::log_request(&app, "/v1/completions", &body);
    let b: CompletionBody = parse_body(&body).map_err(err)?;
    let prompt = match b.prompt {
        Value::String(s) => s,
        Value::Array(a) if a.len() == 1 && a[0].is_string() => {
            a[0].as_str().unwrap_or_default().to_string()
        }
        _ => {
            return Err(err(ApiError::invalid_param(
                "prompt",
                "prompt must be a string (or a list of one string)",
            )))
        }
    };
    if b.echo {
        return Err(err(ApiError::invalid_param(
            "echo",
            "echo is not supported",
        )));
    }
    let n_logprobs = b.logprobs.unwrap_or(0);
    if !(0..=5).contains(&n_logprobs) {
        return Err(err(ApiError::invalid_param(
            "logprobs",
            format!("logprobs must be between 0 and 5, got {n_logprobs}"),
        )));
    }
    let mut req = InferRequest::new(
        b.model.clone(),
        Input::Prompt {
            prompt,
            raw: true,
            system: None,
            template: None,
            suffix: b.suffix,
        },
    );
    req.options = b.sampling.options(None).map_err(err)?;
    req.logprobs = b.logprobs.is_some();
    req.top_logprobs = n_logprobs as usize;
    let want_logprobs = req.logprobs;
    let model = b.model;
    let prepared = run::prepare(&app, req, started).await.map_err(err)?;
    let gen = run::start(&app, prepared);
    let id = new_id("cmpl-");
    let created = timefmt::unix_secs(std::time::SystemTime::now());
    if !b.stream {
        let c = gen.collect().await.map_err(err)?;
        return Ok(Json(json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": FINGERPRINT,
            "choices": [{
                "text": c.text,
                "index": 0,
                "logprobs": if want_logprobs { completion_logprobs(&c.logprobs) } else { Value::Null },
                "finish_reason": finish_reason(c.finish.unwrap_or(Finish::Stop)),
            }],
            "usage": usage_json(&c.summary.usage),
        }))
        .into_response());
    }
    let include_usage = b.stream_options.is_some_and(|o| o.include_usage);
    let chunk = move |choices: Value, usage: Option<Value>| -> Value {
        let mut c = json!({"id": id, "object": "text_completion", "created": created, "model": model, "system_fingerprint": FINGERPRINT, "choices": choices});
        if include_usage {
            c["usage"] = usage.unwrap_or(Value::Null);
        }
        c
    };
    let translate = move |ev: Out| -> Vec<Bytes> {
        match ev {
            Out::Text { text, logprobs } => {
                let lp = if want_logprobs {
                    completion_logprobs(&logprobs)
                } else {
                    Value::Null
                };
                vec![sse_data(&chunk(
                    json!([{"text": text, "index": 0, "logprobs": lp, "finish_reason": null}]),
                    None,
                ))]
            }
            Out::ToolCall { .. } => Vec::new(),
            Out::Done { finish, summary } => {
                let mut frames = vec![sse_data(&chunk(
                    json!([{"text": "", "index": 0, "logprobs": null, "finish_reason": finish_reason(finish)}]),
                    None,
                ))];
                if include_usage {
                    frames.push(sse_data(&chunk(
                        json!([]),
                        Some(usage_json(&summary.usage)),
                    )));
                }
                frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
                frames
            }
            Out::Error(e) => vec![
                sse_data(&e.body(Dialect::OpenAi)),
                Bytes::from_static(b"data: [DONE]\n\n"),
            ],
        }
    };
    Ok(stream_response(
        "text/event-stream",
        gen,
        Vec::new(),
        Some(Bytes::from_static(b": keepalive\n\n")),
        translate,
    ))
}

/// A model as OpenAI lists it, with Anthropic's fields too (Claude Code lists models at the same
/// path): clients ignore the fields they do not know.
fn model_json(r: &crate::backend::ModelRecord) -> Value {
    json!({
        "id": r.name,
        "object": "model",
        "created": timefmt::unix_secs(r.modified),
        "owned_by": "library",
        "type": "model",
        "display_name": r.name,
        "created_at": timefmt::rfc3339(r.modified),
    })
}

pub async fn models(State(app): State<Arc<AppState>>) -> Result<Response> {
    let reg = app.registry.clone();
    let list = tokio::task::spawn_blocking(move || reg.list())
        .await
        .map_err(|e| err(ApiError::internal(e.to_string())))?
        .map_err(|e| err(registry_error("", e)))?;
    Ok(Json(json!({
        "object": "list",
        "data": list.iter().map(model_json).collect::<Vec<_>>(),
        "has_more": false,
        "first_id": list.first().map(|r| r.name.clone()),
        "last_id": list.last().map(|r| r.name.clone()),
    }))
    .into_response())
}

pub async fn model(
    State(app): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<Response> {
    let r = run::resolve(&app, &model).await.map_err(err)?;
    Ok(Json(model_json(&r)).into_response())
}

#[derive(Deserialize)]
struct EmbeddingsBody {
    model: String,
    input: Value,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<usize>,
}

pub async fn embeddings(
    State(app): State<Arc<AppState>>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let body = body_bytes(body).map_err(err)?;
    let b: EmbeddingsBody = parse_body(&body).map_err(err)?;
    let bad = || {
        ApiError::invalid_param("input", "input must be a string, a list of strings, a list of token ids, or a list of lists of token ids")
    };
    let tokens = |v: &Vec<Value>| -> Option<Vec<u32>> {
        v.iter()
            .map(|t| t.as_u64().and_then(|n| u32::try_from(n).ok()))
            .collect()
    };
    let inputs: Vec<EmbedInput> = match &b.input {
        Value::String(s) => vec![EmbedInput::Text(s.clone())],
        Value::Array(a) if a.is_empty() => return Err(err(bad())),
        Value::Array(a) if a.iter().all(Value::is_string) => a
            .iter()
            .map(|s| EmbedInput::Text(s.as_str().unwrap_or_default().to_string()))
            .collect(),
        Value::Array(a) if a.iter().all(Value::is_number) => {
            vec![EmbedInput::Tokens(tokens(a).ok_or_else(|| err(bad()))?)]
        }
        Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_array()
                    .and_then(tokens)
                    .map(EmbedInput::Tokens)
                    .ok_or_else(bad)
            })
            .collect::<std::result::Result<_, _>>()
            .map_err(err)?,
        _ => return Err(err(bad())),
    };
    let base64 = match b.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(err(ApiError::invalid_param(
                "encoding_format",
                format!("encoding_format must be float or base64, got {other:?}"),
            )))
        }
    };
    let r = run_embed(
        &app,
        &b.model,
        inputs,
        true,
        None,
        GenOptions::default(),
        b.dimensions,
    )
    .await
    .map_err(err)?;
    let data: Vec<Value> = r
        .embeddings
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let emb = if base64 {
                json!(f32s_base64(e))
            } else {
                json!(e)
            };
            json!({"object": "embedding", "index": i, "embedding": emb})
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": b.model,
        "usage": {"prompt_tokens": r.prompt_tokens, "total_tokens": r.prompt_tokens},
    }))
    .into_response())
}
