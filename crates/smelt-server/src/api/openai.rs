//! OpenAI's API (/v1/chat/completions, /v1/completions, /v1/models, /v1/embeddings): wire types,
//! translation, and SSE streaming with `data: [DONE]`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use smelt_engine::TokenLogprob;

use super::{body_bytes, sse_data, stream_response};
use crate::constrain::OrderedJson;
use crate::error::{ApiError, Dialect, DialectError};
use crate::request::{
    check_range, ChatMessage, Finish, GenOptions, InferRequest, Input, Out, OutputFormat, ToolCall,
    ToolChoice, ToolDef,
};
use crate::run::{self, parse_body};
use crate::timefmt;
use crate::tools::new_call_id;
use crate::AppState;

type Result<T> = std::result::Result<T, DialectError>;

pub(super) fn err(e: ApiError) -> DialectError {
    DialectError(Dialect::OpenAi, e)
}

pub(super) const FINGERPRINT: &str = "fp_smelt";

// ---------------------------------------------------------------------------------------------
// Wire types
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct ChatBody {
    model: String,
    messages: Vec<WireMessage>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(flatten)]
    sampling: Sampling,
    #[serde(default)]
    max_completion_tokens: Option<i64>,
    #[serde(default)]
    tools: Option<Vec<WireTool>>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    response_format: Option<ResponseFormat>,
    #[serde(default)]
    logprobs: Option<bool>,
    #[serde(default)]
    top_logprobs: Option<i64>,
}

/// Options shared by chat and completions (plus llama.cpp's top_k, min_p, repeat_penalty).
#[derive(Deserialize, Default)]
pub(super) struct Sampling {
    #[serde(default)]
    max_tokens: Option<i64>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    top_k: Option<i64>,
    #[serde(default)]
    min_p: Option<f32>,
    #[serde(default)]
    repeat_penalty: Option<f32>,
    #[serde(default)]
    presence_penalty: Option<f32>,
    #[serde(default)]
    frequency_penalty: Option<f32>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    stop: Option<Value>,
    #[serde(default)]
    n: Option<i64>,
}

#[derive(Deserialize)]
pub(super) struct StreamOptions {
    #[serde(default)]
    pub(super) include_usage: bool,
}

#[derive(Deserialize)]
struct WireMessage {
    role: String,
    #[serde(default)]
    content: Option<Value>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCall>>,
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
    arguments: Option<String>,
}

/// A tool definition in OpenAI's shape, which Ollama's API shares.
#[derive(Deserialize)]
pub(crate) struct WireTool {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    function: WireFunction,
}

#[derive(Deserialize)]
struct WireFunction {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<OrderedJson>,
}

#[derive(Deserialize)]
struct ResponseFormat {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    json_schema: Option<JsonSchemaFormat>,
}

#[derive(Deserialize)]
struct JsonSchemaFormat {
    #[serde(default)]
    schema: Option<OrderedJson>,
}

// ---------------------------------------------------------------------------------------------
// Translation
// ---------------------------------------------------------------------------------------------

impl Sampling {
    pub(super) fn options(
        &self,
        max_override: Option<i64>,
    ) -> std::result::Result<GenOptions, ApiError> {
        if let Some(n) = self.n {
            if n != 1 {
                return Err(ApiError::invalid_param(
                    "n",
                    format!("only n = 1 is supported, got {n}"),
                ));
            }
        }
        if let Some(t) = self.temperature {
            check_range("temperature", t, 0.0, 2.0)?;
        }
        let max = max_override.or(self.max_tokens);
        if let Some(m) = max {
            if m < 1 {
                return Err(ApiError::invalid_param(
                    "max_tokens",
                    format!("max_tokens must be at least 1, got {m}"),
                ));
            }
        }
        Ok(GenOptions {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            seed: self.seed,
            num_predict: max,
            stop: stop_list(&self.stop)?,
            ..Default::default()
        })
    }
}

fn stop_list(v: &Option<Value>) -> std::result::Result<Option<Vec<String>>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(vec![s.clone()])),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str().map(str::to_string).ok_or_else(|| {
                    ApiError::invalid_param("stop", "stop must be a string or a list of strings")
                })
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(ApiError::invalid_param(
            "stop",
            "stop must be a string or a list of strings",
        )),
    }
}

/// Message content: a string, or a list of parts of which only text is supported.
fn content_text(v: Option<Value>, i: usize) -> std::result::Result<String, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s),
        Some(Value::Array(parts)) => {
            let mut out = String::new();
            for p in parts {
                match (
                    p.get("type").and_then(Value::as_str),
                    p.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => out.push_str(t),
                    (kind, _) => {
                        return Err(ApiError::invalid_param(
                            "messages",
                            format!(
                            "messages[{i}]: content part of type {} is not supported (text only)",
                            kind.unwrap_or("?")
                        ),
                        ))
                    }
                }
            }
            Ok(out)
        }
        Some(other) => Err(ApiError::invalid_param(
            "messages",
            format!(
                "messages[{i}].content must be a string or a list of parts, got {}",
                run::kind_of(&other)
            ),
        )),
    }
}

fn chat_messages(messages: Vec<WireMessage>) -> std::result::Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "messages must not be empty",
        ));
    }
    let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len());
    for (i, m) in messages.into_iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            "tool" | "function" => "tool",
            other => {
                return Err(ApiError::invalid_param(
                    "messages",
                    format!("messages[{i}].role must be system, developer, user, assistant or tool, got {other:?}"),
                ))
            }
        };
        let content = content_text(m.content, i)?;
        let tool_calls: Vec<ToolCall> = m
            .tool_calls
            .unwrap_or_default()
            .into_iter()
            .map(|c| {
                let args = c.function.arguments.unwrap_or_default();
                let arguments = if args.trim().is_empty() {
                    json!({})
                } else {
                    serde_json::from_str(&args).unwrap_or(Value::String(args))
                };
                ToolCall {
                    id: c.id.unwrap_or_else(|| new_call_id("call_")),
                    name: c.function.name,
                    arguments,
                }
            })
            .collect();
        // A tool result names its tool through the call it answers.
        let name = m.name.or_else(|| {
            let id = m.tool_call_id.as_ref()?;
            out.iter()
                .rev()
                .flat_map(|p| p.tool_calls.iter())
                .find(|c| &c.id == id)
                .map(|c| c.name.clone())
        });
        out.push(ChatMessage {
            role: role.into(),
            content,
            tool_calls,
            tool_call_id: m.tool_call_id,
            name,
        });
    }
    Ok(out)
}

pub(crate) fn tool_defs(
    tools: Option<Vec<WireTool>>,
) -> std::result::Result<Vec<ToolDef>, ApiError> {
    tools
        .unwrap_or_default()
        .into_iter()
        .map(|t| {
            if t.kind.as_deref().is_some_and(|k| k != "function") {
                return Err(ApiError::invalid_param(
                    "tools",
                    format!("unsupported tool type {:?}", t.kind.unwrap_or_default()),
                ));
            }
            Ok(ToolDef {
                name: t.function.name,
                description: t.function.description.unwrap_or_default(),
                parameters: t.function.parameters.unwrap_or(OrderedJson::Null),
            })
        })
        .collect()
}

pub(crate) fn tool_choice(v: Option<Value>) -> std::result::Result<ToolChoice, ApiError> {
    let bad = || {
        ApiError::invalid_param("tool_choice", "tool_choice must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}")
    };
    match v {
        None | Some(Value::Null) => Ok(ToolChoice::Auto),
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Ok(ToolChoice::Auto),
            "none" => Ok(ToolChoice::None),
            "required" => Ok(ToolChoice::Required),
            _ => Err(bad()),
        },
        Some(Value::Object(o)) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(bad)?;
            Ok(ToolChoice::Named(name.to_string()))
        }
        Some(_) => Err(bad()),
    }
}

fn response_format(f: Option<ResponseFormat>) -> std::result::Result<OutputFormat, ApiError> {
    match f {
        None => Ok(OutputFormat::Text),
        Some(f) => match f.kind.as_str() {
            "text" => Ok(OutputFormat::Text),
            "json_object" => Ok(OutputFormat::Json),
            "json_schema" => match f.json_schema.and_then(|j| j.schema) {
                Some(s @ OrderedJson::Object(_)) => Ok(OutputFormat::Schema(s)),
                _ => Err(ApiError::invalid_param(
                    "response_format",
                    "response_format.json_schema.schema must be a JSON schema object",
                )),
            },
            other => Err(ApiError::invalid_param(
                "response_format",
                format!("unsupported response_format type {other:?}"),
            )),
        },
    }
}

pub(super) fn finish_reason(f: Finish) -> &'static str {
    match f {
        Finish::Length => "length",
        Finish::ToolCalls => "tool_calls",
        Finish::Stop | Finish::Cancelled => "stop",
    }
}

fn call_json(index: Option<usize>, c: &ToolCall) -> Value {
    let mut v = json!({
        "id": c.id,
        "type": "function",
        "function": {"name": c.name, "arguments": c.arguments.to_string()},
    });
    if let Some(i) = index {
        v["index"] = json!(i);
    }
    v
}

fn chat_logprobs(lps: &[TokenLogprob]) -> Value {
    json!({
        "content": lps.iter().map(|l| json!({
            "token": l.text,
            "logprob": l.logprob,
            "bytes": l.text.as_bytes(),
            "top_logprobs": l.top.iter().map(|(_, t, p)| json!({"token": t, "logprob": p, "bytes": t.as_bytes()})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

pub(super) fn usage_json(u: &smelt_engine::Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    })
}

pub(super) fn new_id(prefix: &str) -> String {
    new_call_id(prefix)
}

// ---------------------------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------------------------

pub async fn chat_completions(
    State(app): State<Arc<AppState>>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let started = Instant::now();
    let body = body_bytes(body).map_err(err)?;
    super::log_request(&app, "/v1/chat/completions", &body);
    let b: ChatBody = parse_body(&body).map_err(err)?;
    let mut req = InferRequest::new(
        b.model.clone(),
        Input::Chat(chat_messages(b.messages).map_err(err)?),
    );
    req.options = b.sampling.options(b.max_completion_tokens).map_err(err)?;
    req.tools = tool_defs(b.tools).map_err(err)?;
    req.tool_choice = tool_choice(b.tool_choice).map_err(err)?;
    req.format = response_format(b.response_format).map_err(err)?;
    let top = b.top_logprobs.unwrap_or(0);
    if !(0..=20).contains(&top) {
        return Err(err(ApiError::invalid_param(
            "top_logprobs",
            format!("top_logprobs must be between 0 and 20, got {top}"),
        )));
    }
    if top > 0 && b.logprobs != Some(true) {
        return Err(err(ApiError::invalid_param(
            "top_logprobs",
            "top_logprobs requires logprobs: true",
        )));
    }
    req.logprobs = b.logprobs.unwrap_or(false);
    req.top_logprobs = top as usize;
    let want_logprobs = req.logprobs;
    let model = b.model;
    let prepared = run::prepare(&app, req, started).await.map_err(err)?;
    let gen = run::start(&app, prepared);
    let id = new_id("chatcmpl-");
    let created = timefmt::unix_secs(std::time::SystemTime::now());

    if !b.stream {
        let c = gen.collect().await.map_err(err)?;
        let finish = c.finish.unwrap_or(Finish::Stop);
        let mut message = json!({"role": "assistant", "content": if c.text.is_empty() && !c.tool_calls.is_empty() { Value::Null } else { json!(c.text) }});
        if !c.tool_calls.is_empty() {
            message["tool_calls"] =
                Value::Array(c.tool_calls.iter().map(|t| call_json(None, t)).collect());
        }
        return Ok(Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": FINGERPRINT,
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": if want_logprobs { chat_logprobs(&c.logprobs) } else { Value::Null },
                "finish_reason": finish_reason(finish),
            }],
            "usage": usage_json(&c.summary.usage),
        }))
        .into_response());
    }

    let include_usage = b.stream_options.is_some_and(|o| o.include_usage);
    let chunk = move |choices: Value, usage: Option<Value>| -> Value {
        let mut c = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": FINGERPRINT,
            "choices": choices,
        });
        if include_usage {
            c["usage"] = usage.unwrap_or(Value::Null);
        }
        c
    };
    let head = vec![sse_data(&chunk(
        json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]),
        None,
    ))];
    let translate = move |ev: Out| -> Vec<Bytes> {
        match ev {
            Out::Text { text, logprobs } => {
                let lp = if want_logprobs {
                    chat_logprobs(&logprobs)
                } else {
                    Value::Null
                };
                vec![sse_data(&chunk(
                    json!([{"index": 0, "delta": {"content": text}, "logprobs": lp, "finish_reason": null}]),
                    None,
                ))]
            }
            Out::ToolCall { index, call } => vec![sse_data(&chunk(
                json!([{"index": 0, "delta": {"tool_calls": [call_json(Some(index), &call)]}, "logprobs": null, "finish_reason": null}]),
                None,
            ))],
            Out::Done { finish, summary } => {
                let mut frames = vec![sse_data(&chunk(
                    json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": finish_reason(finish)}]),
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
    // An SSE comment: clients skip it.
    let keepalive = Bytes::from_static(b": keepalive\n\n");
    Ok(stream_response(
        "text/event-stream",
        gen,
        head,
        Some(keepalive),
        translate,
    ))
}
