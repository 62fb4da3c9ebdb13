//! Anthropic's Messages API (/v1/messages, /v1/messages/count_tokens), with the exact streaming
//! event sequence. Unknown fields and query parameters (Claude Code sends `?beta=true`,
//! `thinking`, `context_management`, `metadata`, `cache_control` ...) are accepted and ignored.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{body_bytes, sse_event, stream_response};
use crate::constrain::OrderedJson;
use crate::error::{ApiError, Dialect, DialectError};
use crate::request::{
    check_range, ChatMessage, Finish, GenOptions, InferRequest, Input, Out, ToolCall, ToolChoice,
    ToolDef,
};
use crate::run::{self, parse_body};
use crate::tools::new_call_id;
use crate::AppState;

type Result<T> = std::result::Result<T, DialectError>;

fn err(e: ApiError) -> DialectError {
    DialectError(Dialect::Anthropic, e)
}

#[derive(Deserialize)]
struct MessagesBody {
    model: String,
    #[serde(default)]
    max_tokens: Option<i64>,
    messages: Vec<WireMessage>,
    #[serde(default)]
    system: Option<Value>,
    #[serde(default)]
    stop_sequences: Option<Vec<String>>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    top_k: Option<i64>,
    #[serde(default)]
    tools: Option<Vec<WireTool>>,
    #[serde(default)]
    tool_choice: Option<WireToolChoice>,
}

#[derive(Deserialize)]
struct WireMessage {
    role: String,
    content: Value,
}

#[derive(Deserialize)]
struct WireTool {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    input_schema: Option<OrderedJson>,
}

#[derive(Deserialize)]
struct WireToolChoice {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    name: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Translation
// ---------------------------------------------------------------------------------------------

/// Text of a `system` field or a tool_result's content: a string or a list of text blocks.
fn text_of(v: &Value, what: &str) -> std::result::Result<String, ApiError> {
    match v {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut parts = Vec::new();
            for b in blocks {
                match b.get("type").and_then(Value::as_str) {
                    Some("text") => parts.push(
                        b.get("text")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                    ),
                    Some(other) => {
                        return Err(ApiError::invalid_param(
                            what,
                            format!(
                                "{what}: content blocks of type {other:?} are not supported here"
                            ),
                        ))
                    }
                    None => {
                        return Err(ApiError::invalid_param(
                            what,
                            format!("{what}: every content block needs a type"),
                        ))
                    }
                }
            }
            Ok(parts.join("\n"))
        }
        other => Err(ApiError::invalid_param(
            what,
            format!(
                "{what} must be a string or a list of text blocks, got {}",
                run::kind_of(other)
            ),
        )),
    }
}

/// Claude Code starts its system prompt with a per-request `x-anthropic-billing-header: ...`
/// block: metadata for Anthropic's billing, not an instruction, and different on every request,
/// so it would defeat the prefix cache. It is dropped.
fn without_billing_header(system: &Value) -> Value {
    match system {
        Value::Array(blocks) => Value::Array(
            blocks
                .iter()
                .filter(|b| {
                    !b.get("text")
                        .and_then(Value::as_str)
                        .is_some_and(|t| t.trim_start().starts_with("x-anthropic-billing-header"))
                })
                .cloned()
                .collect(),
        ),
        Value::String(s) if s.trim_start().starts_with("x-anthropic-billing-header") => {
            // A header line, then (maybe) the real prompt.
            Value::String(
                s.trim_start()
                    .split_once('\n')
                    .map(|(_, rest)| rest.to_string())
                    .unwrap_or_default(),
            )
        }
        other => other.clone(),
    }
}

/// Anthropic turns to chat messages: tool_use blocks become the assistant's calls, tool_result
/// blocks become tool messages (before the user's text of the same turn).
fn chat_messages(
    system: &Option<Value>,
    messages: Vec<WireMessage>,
) -> std::result::Result<Vec<ChatMessage>, ApiError> {
    let mut out = Vec::new();
    if let Some(s) = system {
        let text = text_of(&without_billing_header(s), "system")?;
        if !text.is_empty() {
            out.push(ChatMessage::new("system", text));
        }
    }
    if messages.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "messages must not be empty",
        ));
    }
    for (i, m) in messages.into_iter().enumerate() {
        // Claude Code also sends system messages between the turns.
        if !matches!(m.role.as_str(), "user" | "assistant" | "system") {
            return Err(ApiError::invalid_param(
                "messages",
                format!(
                    "messages[{i}].role must be user, assistant or system, got {:?}",
                    m.role
                ),
            ));
        }
        let blocks = match m.content {
            Value::String(s) => {
                out.push(ChatMessage::new(&m.role, s));
                continue;
            }
            Value::Array(b) => b,
            other => {
                return Err(ApiError::invalid_param(
                    "messages",
                    format!(
                    "messages[{i}].content must be a string or a list of content blocks, got {}",
                    run::kind_of(&other)
                ),
                ))
            }
        };
        let mut text = Vec::new();
        let mut calls = Vec::new();
        for b in blocks {
            match b.get("type").and_then(Value::as_str) {
                Some("text") => text.push(b.get("text").and_then(Value::as_str).unwrap_or_default().to_string()),
                Some("tool_use") => {
                    let name = b.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
                    let id = b.get("id").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| new_call_id("toolu_"));
                    calls.push(ToolCall { id, name, arguments: b.get("input").cloned().unwrap_or(json!({})) });
                }
                Some("tool_result") => {
                    let id = b.get("tool_use_id").and_then(Value::as_str).map(str::to_string);
                    let mut content = text_of(b.get("content").unwrap_or(&Value::Null), "tool_result.content")?;
                    if b.get("is_error").and_then(Value::as_bool) == Some(true) {
                        content = format!("Error: {content}");
                    }
                    let name = id.as_ref().and_then(|id| {
                        out.iter().rev().flat_map(|p: &ChatMessage| p.tool_calls.iter()).find(|c| &c.id == id).map(|c| c.name.clone())
                    });
                    out.push(ChatMessage { role: "tool".into(), content, tool_call_id: id, name, ..Default::default() });
                }
                // Earlier reasoning is not replayed to the model.
                Some("thinking") | Some("redacted_thinking") => {}
                Some(other) => {
                    return Err(ApiError::invalid_param(
                        "messages",
                        format!("messages[{i}]: content blocks of type {other:?} are not supported (text, tool_use and tool_result are)"),
                    ))
                }
                None => return Err(ApiError::invalid_param("messages", format!("messages[{i}]: every content block needs a type"))),
            }
        }
        if !text.is_empty() || !calls.is_empty() {
            out.push(ChatMessage {
                role: m.role,
                content: text.join("\n"),
                tool_calls: calls,
                ..Default::default()
            });
        }
    }
    Ok(out)
}

fn translate(
    b: MessagesBody,
    need_max_tokens: bool,
) -> std::result::Result<InferRequest, ApiError> {
    let max_tokens = match (b.max_tokens, need_max_tokens) {
        (Some(n), _) if n < 1 => {
            return Err(ApiError::invalid_param(
                "max_tokens",
                format!("max_tokens must be at least 1, got {n}"),
            ))
        }
        (None, true) => {
            return Err(ApiError::invalid_param(
                "max_tokens",
                "max_tokens: field required",
            ))
        }
        (m, _) => m,
    };
    if let Some(t) = b.temperature {
        check_range("temperature", t, 0.0, 1.0)?;
    }
    let mut req = InferRequest::new(
        b.model.clone(),
        Input::Chat(chat_messages(&b.system, b.messages)?),
    );
    req.options = GenOptions {
        temperature: b.temperature,
        top_p: b.top_p,
        top_k: b.top_k,
        // Larger than the room left in the context is clamped there, not refused.
        num_predict: max_tokens,
        stop: b.stop_sequences,
        ..Default::default()
    };
    // Server tools (web search, ...) have no input schema here: they are not ours to run.
    req.tools = b
        .tools
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t.kind.as_deref().is_none_or(|k| k == "custom") || t.input_schema.is_some())
        .map(|t| ToolDef {
            name: t.name,
            description: t.description.unwrap_or_default(),
            parameters: t.input_schema.unwrap_or(OrderedJson::Null),
        })
        .collect();
    req.tool_choice = match b.tool_choice {
        None => ToolChoice::Auto,
        Some(c) => match c.kind.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "any" => ToolChoice::Required,
            "tool" => ToolChoice::Named(c.name.ok_or_else(|| {
                ApiError::invalid_param("tool_choice", "tool_choice of type tool needs a name")
            })?),
            other => {
                return Err(ApiError::invalid_param(
                    "tool_choice",
                    format!("tool_choice.type must be auto, any, tool or none, got {other:?}"),
                ))
            }
        },
    };
    Ok(req)
}

/// `stop_reason` and `stop_sequence`: a stop string that ended generation is reported as
/// `stop_sequence` with the string, as Anthropic does.
fn stop_reason(f: Finish, stop_sequence: Option<&String>) -> (&'static str, Value) {
    match (f, stop_sequence) {
        (Finish::Length, _) => ("max_tokens", Value::Null),
        (Finish::ToolCalls, _) => ("tool_use", Value::Null),
        (Finish::Stop, Some(s)) => ("stop_sequence", json!(s)),
        (Finish::Stop | Finish::Cancelled, _) => ("end_turn", Value::Null),
    }
}

/// Our call ids, in Anthropic's shape.
fn tool_use_id(id: &str) -> String {
    match id.strip_prefix("call_") {
        Some(rest) => format!("toolu_{rest}"),
        None => id.to_string(),
    }
}

fn usage(input: usize, output: usize, cached: usize) -> Value {
    json!({
        "input_tokens": input.saturating_sub(cached),
        "output_tokens": output,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    })
}

// ---------------------------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------------------------

pub async fn messages(
    State(app): State<Arc<AppState>>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let started = Instant::now();
    let body = body_bytes(body).map_err(err)?;
    super::log_request(&app, "/v1/messages", &body);
    let b: MessagesBody = parse_body(&body).map_err(err)?;
    let stream = b.stream;
    let model = b.model.clone();
    let req = translate(b, true).map_err(err)?;
    let prepared = run::prepare(&app, req, started).await.map_err(err)?;
    let gen = run::start(&app, prepared);
    let id = new_call_id("msg_");

    if !stream {
        let input = gen.prompt_tokens;
        let c = gen.collect().await.map_err(err)?;
        let mut content = Vec::new();
        if !c.text.is_empty() || c.tool_calls.is_empty() {
            content.push(json!({"type": "text", "text": c.text}));
        }
        for t in &c.tool_calls {
            content.push(json!({"type": "tool_use", "id": tool_use_id(&t.id), "name": t.name, "input": t.arguments}));
        }
        let u = &c.summary.usage;
        let (reason, sequence) =
            stop_reason(c.finish.unwrap_or(Finish::Stop), u.stop_sequence.as_ref());
        return Ok(Json(json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": reason,
            "stop_sequence": sequence,
            "usage": usage(input.max(u.prompt_tokens), u.completion_tokens, u.cached_tokens),
        }))
        .into_response());
    }

    let head = vec![
        sse_event(
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": usage(gen.prompt_tokens, 0, 0),
            }}),
        ),
        sse_event("ping", &json!({"type": "ping"})),
    ];
    // Block bookkeeping: the index of the next block, and whether a text block is open.
    let mut next_index = 0usize;
    let mut text_open: Option<usize> = None;
    let translate = move |ev: Out| -> Vec<Bytes> {
        let mut frames = Vec::new();
        let close_text = |frames: &mut Vec<Bytes>, text_open: &mut Option<usize>| {
            if let Some(i) = text_open.take() {
                frames.push(sse_event(
                    "content_block_stop",
                    &json!({"type": "content_block_stop", "index": i}),
                ));
            }
        };
        match ev {
            Out::Text { text, .. } => {
                if text.is_empty() {
                    return frames;
                }
                let i = match text_open {
                    Some(i) => i,
                    None => {
                        let i = next_index;
                        next_index += 1;
                        text_open = Some(i);
                        frames.push(sse_event(
                            "content_block_start",
                            &json!({"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}}),
                        ));
                        i
                    }
                };
                frames.push(sse_event(
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": i, "delta": {"type": "text_delta", "text": text}}),
                ));
            }
            Out::ToolCall { call, .. } => {
                close_text(&mut frames, &mut text_open);
                let i = next_index;
                next_index += 1;
                frames.push(sse_event(
                    "content_block_start",
                    &json!({"type": "content_block_start", "index": i, "content_block": {
                        "type": "tool_use", "id": tool_use_id(&call.id), "name": call.name, "input": {}
                    }}),
                ));
                frames.push(sse_event(
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": i, "delta": {"type": "input_json_delta", "partial_json": call.arguments.to_string()}}),
                ));
                frames.push(sse_event(
                    "content_block_stop",
                    &json!({"type": "content_block_stop", "index": i}),
                ));
            }
            Out::Done { finish, summary } => {
                if next_index == 0 {
                    // Always at least one block, as Anthropic answers.
                    frames.push(sse_event(
                        "content_block_start",
                        &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                    ));
                    frames.push(sse_event(
                        "content_block_stop",
                        &json!({"type": "content_block_stop", "index": 0}),
                    ));
                }
                close_text(&mut frames, &mut text_open);
                let u = &summary.usage;
                let (reason, sequence) = stop_reason(finish, u.stop_sequence.as_ref());
                frames.push(sse_event(
                    "message_delta",
                    &json!({
                        "type": "message_delta",
                        "delta": {"stop_reason": reason, "stop_sequence": sequence},
                        "usage": {"output_tokens": u.completion_tokens, "input_tokens": u.prompt_tokens.saturating_sub(u.cached_tokens),
                                  "cache_read_input_tokens": u.cached_tokens},
                    }),
                ));
                frames.push(sse_event("message_stop", &json!({"type": "message_stop"})));
            }
            Out::Error(e) => frames.push(sse_event("error", &e.body(Dialect::Anthropic))),
        }
        frames
    };
    let ping = sse_event("ping", &json!({"type": "ping"}));
    Ok(stream_response(
        "text/event-stream",
        gen,
        head,
        Some(ping),
        translate,
    ))
}

pub async fn count_tokens(
    State(app): State<Arc<AppState>>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let body = body_bytes(body).map_err(err)?;
    super::log_request(&app, "/v1/messages/count_tokens", &body);
    let b: MessagesBody = parse_body(&body).map_err(err)?;
    let req = translate(b, false).map_err(err)?;
    let n = run::count_prompt_tokens(&app, req).await.map_err(err)?;
    Ok(Json(json!({"input_tokens": n})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> MessagesBody {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn claude_code_shaped_request_translates() {
        let b = body(json!({
            "model": "m", "max_tokens": 32000, "stream": true,
            "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
            "thinking": {"type": "enabled", "budget_tokens": 1000}, "metadata": {"user_id": "x"},
            "context_management": {}, "output_config": {},
            "tools": [{"name": "Bash", "description": "run", "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "list files", "cache_control": {"type": "ephemeral"}}]},
                {"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm", "signature": "s"}, {"type": "text", "text": "Sure."}, {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "a.txt"}]}, {"type": "text", "text": "thanks"}]},
            ],
        }));
        let r = translate(b, true).unwrap();
        let Input::Chat(m) = &r.input else { panic!() };
        assert_eq!(m.len(), 5);
        assert_eq!(
            (m[0].role.as_str(), m[0].content.as_str()),
            ("system", "You are Claude Code.")
        );
        assert_eq!(m[2].tool_calls[0].name, "Bash");
        assert_eq!(m[2].content, "Sure.");
        assert_eq!(
            (
                m[3].role.as_str(),
                m[3].content.as_str(),
                m[3].name.as_deref()
            ),
            ("tool", "a.txt", Some("Bash"))
        );
        assert_eq!(
            (m[4].role.as_str(), m[4].content.as_str()),
            ("user", "thanks")
        );
        assert_eq!(r.options.num_predict, Some(32000));
        assert_eq!(r.tools.len(), 1);
    }

    #[test]
    fn billing_header_is_dropped_from_the_system_prompt() {
        let sys = json!([
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1; cch=abc;"},
            {"type": "text", "text": "You are Claude Code."}
        ]);
        let m = chat_messages(
            &Some(sys),
            vec![WireMessage {
                role: "user".into(),
                content: json!("hi"),
            }],
        )
        .unwrap();
        assert_eq!(m[0].content, "You are Claude Code.");
        let s = json!("x-anthropic-billing-header: cc_version=2.1\nBe brief.");
        let m = chat_messages(
            &Some(s),
            vec![WireMessage {
                role: "user".into(),
                content: json!("hi"),
            }],
        )
        .unwrap();
        assert_eq!(m[0].content, "Be brief.");
    }

    #[test]
    fn choices_and_errors() {
        let mk = |extra: Value| {
            let mut v = json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}],
                "tools": [{"name": "t", "input_schema": {"type": "object"}}]});
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            translate(body(v), true)
        };
        assert_eq!(
            mk(json!({"tool_choice": {"type": "any"}}))
                .unwrap()
                .tool_choice,
            ToolChoice::Required
        );
        assert_eq!(
            mk(json!({"tool_choice": {"type": "tool", "name": "t"}}))
                .unwrap()
                .tool_choice,
            ToolChoice::Named("t".into())
        );
        assert_eq!(
            mk(json!({"tool_choice": {"type": "none"}}))
                .unwrap()
                .tool_choice,
            ToolChoice::None
        );
        assert!(mk(json!({"temperature": 1.5})).is_err());
        assert!(mk(json!({"max_tokens": 0})).is_err());
        assert!(translate(
            body(json!({"model": "m", "messages": [{"role": "user", "content": "x"}]})),
            true
        )
        .is_err());
        assert!(translate(
            body(json!({"model": "m", "messages": [{"role": "user", "content": "x"}]})),
            false
        )
        .is_ok());
        assert!(mk(
            json!({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]})
        )
        .is_err());
        assert!(mk(json!({"messages": [{"role": "tool", "content": "x"}]})).is_err());
        let late = mk(
            json!({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}),
        );
        let Input::Chat(m) = late.unwrap().input else {
            panic!()
        };
        assert_eq!(m[1].role, "system");
    }
}
