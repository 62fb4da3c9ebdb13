//! Ollama's native API (/api/*): wire types, translation to the internal request, and NDJSON
//! streaming, with the response fields and nanosecond timings Ollama returns.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use smelt_engine::TokenLogprob;

use super::openai::{tool_defs, WireTool};

use super::embed::{embed as run_embed, EmbedInput};
use super::{body_bytes, nanos, ndjson, stream_response};
use crate::config::KeepAlive;
use crate::constrain::OrderedJson;
use crate::error::{ApiError, Dialect, DialectError};
use crate::request::{
    ChatMessage, Finish, GenOptions, InferRequest, Input, Out, OutputFormat, Summary, ToolCall,
};
use crate::run::{self, parse_body, resolve};
use crate::timefmt;
use crate::AppState;

type Result<T> = std::result::Result<T, DialectError>;

pub(super) fn err(e: ApiError) -> DialectError {
    DialectError(Dialect::Ollama, e)
}

// ---------------------------------------------------------------------------------------------
// Wire types
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct GenerateBody {
    model: String,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    suffix: Option<String>,
    #[serde(default)]
    system: Option<String>,
    #[serde(default)]
    template: Option<String>,
    #[serde(default)]
    raw: bool,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    format: Option<OrderedJson>,
    #[serde(default)]
    options: Option<Map<String, Value>>,
    #[serde(default)]
    keep_alive: Option<Value>,
    #[serde(default)]
    images: Option<Vec<Value>>,
    #[serde(default)]
    logprobs: Option<bool>,
    #[serde(default)]
    top_logprobs: Option<usize>,
}

#[derive(Deserialize)]
struct ChatBody {
    model: String,
    #[serde(default)]
    messages: Vec<WireMessage>,
    #[serde(default)]
    tools: Option<Vec<WireTool>>,
    /// A smelt extension (Ollama has none): OpenAI's values. Also read from `options`, the only
    /// free-form field the official client passes through.
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    format: Option<OrderedJson>,
    #[serde(default)]
    options: Option<Map<String, Value>>,
    #[serde(default)]
    keep_alive: Option<Value>,
    #[serde(default)]
    logprobs: Option<bool>,
    #[serde(default)]
    top_logprobs: Option<usize>,
}

#[derive(Deserialize)]
struct WireMessage {
    role: String,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    images: Option<Vec<Value>>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCall>>,
    #[serde(default)]
    tool_name: Option<String>,
    #[serde(default)]
    tool_call_id: Option<String>,
}

#[derive(Deserialize)]
struct WireToolCall {
    #[serde(default)]
    id: Option<String>,
    function: WireFunctionCall,
}

#[derive(Deserialize)]
struct WireFunctionCall {
    name: String,
    #[serde(default)]
    arguments: Value,
}

// ---------------------------------------------------------------------------------------------
// Translation
// ---------------------------------------------------------------------------------------------

fn keep_alive(v: &Option<Value>) -> std::result::Result<Option<KeepAlive>, ApiError> {
    match v {
        None => Ok(None),
        Some(v) => KeepAlive::from_json(v).map_err(|m| ApiError::invalid_param("keep_alive", m)),
    }
}

fn output_format(f: Option<OrderedJson>) -> std::result::Result<OutputFormat, ApiError> {
    match f {
        None | Some(OrderedJson::Null) => Ok(OutputFormat::Text),
        Some(OrderedJson::String(s)) if s.is_empty() => Ok(OutputFormat::Text),
        Some(OrderedJson::String(s)) if s == "json" => Ok(OutputFormat::Json),
        Some(OrderedJson::String(s)) => Err(ApiError::invalid_param(
            "format",
            format!("format must be \"json\" or a JSON schema, got {s:?}"),
        )),
        Some(schema @ OrderedJson::Object(_)) => Ok(OutputFormat::Schema(schema)),
        Some(other) => Err(ApiError::invalid_param(
            "format",
            format!(
                "format must be \"json\" or a JSON schema, got {}",
                other.to_json_string()
            ),
        )),
    }
}

fn options(o: &Option<Map<String, Value>>) -> std::result::Result<GenOptions, ApiError> {
    o.as_ref()
        .map(GenOptions::from_ollama)
        .transpose()
        .map(|o| o.unwrap_or_default())
}

fn no_images(images: &Option<Vec<Value>>) -> std::result::Result<(), ApiError> {
    if images.as_ref().is_some_and(|i| !i.is_empty()) {
        return Err(ApiError::invalid_param(
            "images",
            "images are not supported: smelt serves text models",
        ));
    }
    Ok(())
}

/// Tool-call arguments arrive as an object (or, from some clients, a JSON string).
fn arguments(v: Value) -> Value {
    match v {
        Value::String(s) => serde_json::from_str(&s).unwrap_or(Value::String(s)),
        Value::Null => json!({}),
        other => other,
    }
}

fn chat_messages(messages: Vec<WireMessage>) -> std::result::Result<Vec<ChatMessage>, ApiError> {
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.into_iter().enumerate() {
        if !matches!(m.role.as_str(), "system" | "user" | "assistant" | "tool") {
            return Err(ApiError::invalid_param(
                "messages",
                format!(
                    "messages[{i}].role must be system, user, assistant or tool, got {:?}",
                    m.role
                ),
            ));
        }
        no_images(&m.images)?;
        let tool_calls = m
            .tool_calls
            .unwrap_or_default()
            .into_iter()
            .map(|c| ToolCall {
                id: c.id.unwrap_or_else(|| crate::tools::new_call_id("call_")),
                name: c.function.name,
                arguments: arguments(c.function.arguments),
            })
            .collect();
        out.push(ChatMessage {
            role: m.role,
            content: m.content.unwrap_or_default(),
            tool_calls,
            tool_call_id: m.tool_call_id,
            name: m.tool_name,
        });
    }
    Ok(out)
}

fn logprobs_json(lps: &[TokenLogprob]) -> Value {
    Value::Array(
        lps.iter()
            .map(|l| {
                json!({
                    "token": l.text,
                    "logprob": l.logprob,
                    "bytes": l.text.as_bytes(),
                    "top_logprobs": l.top.iter().map(|(_, t, p)| json!({"token": t, "logprob": p, "bytes": t.as_bytes()})).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

fn done_reason(f: Finish) -> &'static str {
    match f {
        Finish::Length => "length",
        Finish::Stop | Finish::ToolCalls | Finish::Cancelled => "stop",
    }
}

/// The timing fields of a final chunk.
fn add_metrics(o: &mut Map<String, Value>, s: &Summary) {
    o.insert("total_duration".into(), json!(nanos(s.total_duration)));
    o.insert("load_duration".into(), json!(nanos(s.load_duration)));
    // Only what was evaluated: prompt tokens from the prefix cache are not.
    o.insert(
        "prompt_eval_count".into(),
        json!(s.usage.prompt_tokens.saturating_sub(s.usage.cached_tokens)),
    );
    o.insert(
        "prompt_eval_duration".into(),
        json!(nanos(s.usage.prompt_eval_duration)),
    );
    o.insert("eval_count".into(), json!(s.usage.completion_tokens));
    o.insert("eval_duration".into(), json!(nanos(s.usage.eval_duration)));
}

fn tool_calls_json(calls: &[(usize, &ToolCall)]) -> Value {
    Value::Array(
        calls
            .iter()
            .map(|(i, c)| json!({"id": c.id, "function": {"index": i, "name": c.name, "arguments": c.arguments}}))
            .collect(),
    )
}

// ---------------------------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------------------------

/// Empty prompt: load the model (or unload it with keep_alive 0) and say so.
async fn load_only(
    app: &Arc<AppState>,
    model: &str,
    keep: Option<KeepAlive>,
    chat: bool,
) -> Result<Response> {
    let record = resolve(app, model).await.map_err(err)?;
    let reason = if keep == Some(KeepAlive::For(std::time::Duration::ZERO)) {
        app.sched.unload(&record.path);
        "unload"
    } else {
        let (lease, _) = app.sched.acquire(&record, None, keep).await.map_err(err)?;
        drop(lease);
        if let Some(k) = keep {
            app.sched.touch(&record.path, k);
        }
        "load"
    };
    let mut o =
        json!({"model": model, "created_at": timefmt::now(), "done": true, "done_reason": reason});
    if chat {
        o["message"] = json!({"role": "assistant", "content": ""});
    } else {
        o["response"] = json!("");
    }
    Ok(Json(o).into_response())
}

pub async fn generate(
    State(app): State<Arc<AppState>>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let started = Instant::now();
    let body = body_bytes(body).map_err(err)?;
    super::log_request(&app, "/api/generate", &body);
    let b: GenerateBody = parse_body(&body).map_err(err)?;
    let keep = keep_alive(&b.keep_alive).map_err(err)?;
    no_images(&b.images).map_err(err)?;
    if b.model.trim().is_empty() {
        return Err(err(ApiError::invalid_param("model", "model is required")));
    }
    let prompt = b.prompt.unwrap_or_default();
    if prompt.is_empty() && b.suffix.as_deref().unwrap_or("").is_empty() {
        return load_only(&app, &b.model, keep, false).await;
    }
    let mut req = InferRequest::new(
        b.model.clone(),
        Input::Prompt {
            prompt,
            raw: b.raw,
            system: b.system,
            template: b.template,
            suffix: b.suffix,
        },
    );
    req.options = options(&b.options).map_err(err)?;
    req.format = output_format(b.format).map_err(err)?;
    req.keep_alive = keep;
    req.logprobs = b.logprobs.unwrap_or(false) || b.top_logprobs.is_some_and(|n| n > 0);
    req.top_logprobs = b.top_logprobs.unwrap_or(0);
    respond(&app, req, b.stream.unwrap_or(true), false, started).await
}

pub async fn chat(
    State(app): State<Arc<AppState>>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let started = Instant::now();
    let body = body_bytes(body).map_err(err)?;
    super::log_request(&app, "/api/chat", &body);
    let b: ChatBody = parse_body(&body).map_err(err)?;
    let keep = keep_alive(&b.keep_alive).map_err(err)?;
    if b.model.trim().is_empty() {
        return Err(err(ApiError::invalid_param("model", "model is required")));
    }
    if b.messages.is_empty() {
        return load_only(&app, &b.model, keep, true).await;
    }
    let mut req = InferRequest::new(
        b.model.clone(),
        Input::Chat(chat_messages(b.messages).map_err(err)?),
    );
    req.tools = tool_defs(b.tools).map_err(err)?;
    let choice = b.tool_choice.clone().or_else(|| {
        b.options
            .as_ref()
            .and_then(|o| o.get("tool_choice").cloned())
    });
    req.tool_choice = super::openai::tool_choice(choice).map_err(err)?;
    req.options = options(&b.options).map_err(err)?;
    req.format = output_format(b.format).map_err(err)?;
    req.keep_alive = keep;
    req.logprobs = b.logprobs.unwrap_or(false) || b.top_logprobs.is_some_and(|n| n > 0);
    req.top_logprobs = b.top_logprobs.unwrap_or(0);
    respond(&app, req, b.stream.unwrap_or(true), true, started).await
}

async fn respond(
    app: &Arc<AppState>,
    req: InferRequest,
    stream: bool,
    chat: bool,
    started: Instant,
) -> Result<Response> {
    let model = req.model.clone();
    let want_logprobs = req.logprobs;
    let prepared = run::prepare(app, req, started).await.map_err(err)?;
    let gen = run::start(app, prepared);
    if !stream {
        let c = gen.collect().await.map_err(err)?;
        let mut o = Map::new();
        o.insert("model".into(), json!(model));
        o.insert("created_at".into(), json!(timefmt::now()));
        if chat {
            let mut msg = json!({"role": "assistant", "content": c.text});
            if !c.tool_calls.is_empty() {
                let calls: Vec<(usize, &ToolCall)> = c.tool_calls.iter().enumerate().collect();
                msg["tool_calls"] = tool_calls_json(&calls);
            }
            o.insert("message".into(), msg);
        } else {
            o.insert("response".into(), json!(c.text));
        }
        o.insert("done".into(), json!(true));
        o.insert(
            "done_reason".into(),
            json!(done_reason(c.finish.unwrap_or(Finish::Stop))),
        );
        add_metrics(&mut o, &c.summary);
        if want_logprobs {
            o.insert("logprobs".into(), logprobs_json(&c.logprobs));
        }
        return Ok(Json(Value::Object(o)).into_response());
    }
    let translate = move |ev: Out| -> Vec<Bytes> {
        let mut o = Map::new();
        o.insert("model".into(), json!(model));
        o.insert("created_at".into(), json!(timefmt::now()));
        match ev {
            Out::Text { text, logprobs } => {
                if chat {
                    o.insert(
                        "message".into(),
                        json!({"role": "assistant", "content": text}),
                    );
                } else {
                    o.insert("response".into(), json!(text));
                }
                o.insert("done".into(), json!(false));
                if want_logprobs && !logprobs.is_empty() {
                    o.insert("logprobs".into(), logprobs_json(&logprobs));
                }
            }
            Out::ToolCall { index, call } => {
                let msg = json!({"role": "assistant", "content": "", "tool_calls": tool_calls_json(&[(index, &call)])});
                o.insert("message".into(), msg);
                o.insert("done".into(), json!(false));
            }
            Out::Done { finish, summary } => {
                if chat {
                    o.insert(
                        "message".into(),
                        json!({"role": "assistant", "content": ""}),
                    );
                } else {
                    o.insert("response".into(), json!(""));
                }
                o.insert("done".into(), json!(true));
                o.insert("done_reason".into(), json!(done_reason(finish)));
                add_metrics(&mut o, &summary);
            }
            Out::Error(e) => return vec![ndjson(&e.body(Dialect::Ollama))],
        }
        vec![ndjson(&Value::Object(o))]
    };
    // NDJSON has no comment syntax: no keepalive frames.
    Ok(stream_response(
        "application/x-ndjson",
        gen,
        Vec::new(),
        None,
        translate,
    ))
}

// ---------------------------------------------------------------------------------------------
// Embeddings
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct EmbedBody {
    model: String,
    input: Value,
    #[serde(default)]
    truncate: Option<bool>,
    #[serde(default)]
    dimensions: Option<usize>,
    #[serde(default)]
    options: Option<Map<String, Value>>,
    #[serde(default)]
    keep_alive: Option<Value>,
}

pub async fn embed(
    State(app): State<Arc<AppState>>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let body = body_bytes(body).map_err(err)?;
    let b: EmbedBody = parse_body(&body).map_err(err)?;
    let inputs = match b.input {
        Value::String(s) => vec![EmbedInput::Text(s)],
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(EmbedInput::Text(s)),
                other => Err(ApiError::invalid_param(
                    "input",
                    format!(
                        "input must be a string or a list of strings, got {}",
                        run::kind_of(&other)
                    ),
                )),
            })
            .collect::<std::result::Result<_, _>>()
            .map_err(err)?,
        other => {
            return Err(err(ApiError::invalid_param(
                "input",
                format!(
                    "input must be a string or a list of strings, got {}",
                    run::kind_of(&other)
                ),
            )))
        }
    };
    let keep = keep_alive(&b.keep_alive).map_err(err)?;
    let opts = options(&b.options).map_err(err)?;
    let r = run_embed(
        &app,
        &b.model,
        inputs,
        b.truncate.unwrap_or(true),
        keep,
        opts,
        b.dimensions,
    )
    .await
    .map_err(err)?;
    Ok(Json(json!({
        "model": b.model,
        "embeddings": r.embeddings,
        "total_duration": nanos(r.total_duration),
        "load_duration": nanos(r.load_duration),
        "prompt_eval_count": r.prompt_tokens,
    }))
    .into_response())
}

#[derive(Deserialize)]
struct LegacyEmbedBody {
    model: String,
    prompt: String,
    #[serde(default)]
    options: Option<Map<String, Value>>,
    #[serde(default)]
    keep_alive: Option<Value>,
}

pub async fn embeddings_legacy(
    State(app): State<Arc<AppState>>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let body = body_bytes(body).map_err(err)?;
    let b: LegacyEmbedBody = parse_body(&body).map_err(err)?;
    let keep = keep_alive(&b.keep_alive).map_err(err)?;
    let opts = options(&b.options).map_err(err)?;
    let r = run_embed(
        &app,
        &b.model,
        vec![EmbedInput::Text(b.prompt)],
        true,
        keep,
        opts,
        None,
    )
    .await
    .map_err(err)?;
    Ok(
        Json(json!({"embedding": r.embeddings.into_iter().next().unwrap_or_default()}))
            .into_response(),
    )
}
