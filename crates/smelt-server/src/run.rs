//! The path every generation takes, whatever API it came through: resolve the model, load it,
//! render the prompt, tokenize, check the context, build the constraint, then run on a blocking
//! thread and stream [`Out`] events back. Dropping the [`Generation`] cancels it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use smelt_engine::{
    CancelToken, Event, FinishReason, GenerateRequest, TokenConstraint, TokenLogprob, Usage,
};
use tokio::sync::mpsc;

use crate::backend::{LoadedModel, ModelRecord, RegistryError};
use crate::constrain::{Grammar, GrammarConstraint, OrderedJson};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::request::{
    ChatMessage, Finish, GenOptions, InferRequest, Input, Out, OutputFormat, Summary, ToolCall,
    ToolChoice,
};
use crate::scheduler::Lease;
use crate::tools::{self, Piece, ToolCallParser, ToolFormat};
use crate::AppState;

/// Find a model in the store (blocking I/O off the async threads).
pub async fn resolve(app: &Arc<AppState>, name: &str) -> Result<ModelRecord, ApiError> {
    let reg = app.registry.clone();
    let n = name.to_string();
    tokio::task::spawn_blocking(move || reg.resolve(&n))
        .await
        .map_err(|e| ApiError::internal(format!("model lookup failed: {e}")))?
        .map_err(|e| registry_error(name, e))
}

pub fn registry_error(name: &str, e: RegistryError) -> ApiError {
    match e {
        RegistryError::NotFound(_) => ApiError::model_not_found(name),
        RegistryError::Invalid(m) => ApiError::invalid(m),
        RegistryError::Failed(m) => ApiError::internal(m),
    }
}

/// The model's defaults for generation (its Modelfile parameters).
pub fn model_defaults(record: &ModelRecord) -> GenOptions {
    GenOptions::from_ollama(&record.params).unwrap_or_default()
}

/// A request ready to run.
pub struct Prepared {
    pub lease: Lease,
    pub gen: GenerateRequest,
    pub parser: Option<ToolCallParser>,
    pub load_duration: Duration,
    pub started: Instant,
}

impl Prepared {
    pub fn prompt_tokens(&self) -> usize {
        self.gen.prompt.len()
    }
}

/// Load the model and get everything ready; errors here become a plain HTTP error response.
pub async fn prepare(
    app: &Arc<AppState>,
    req: InferRequest,
    started: Instant,
) -> Result<Prepared, ApiError> {
    req.validate()?;
    let record = resolve(app, &req.model).await?;
    let options = req.options.clone().or(&model_defaults(&record));
    options.validate()?;
    let num_ctx = options.num_ctx.map(|n| n as usize);
    let (lease, load_duration) = app.sched.acquire(&record, num_ctx, req.keep_alive).await?;
    if !load_duration.is_zero() {
        Metrics::add(&app.metrics.model_loads, 1);
    }
    // A busy model with a full queue answers 503 now rather than mid-stream.
    if lease.slot.is_running() {
        app.sched.check_queue()?;
    }
    let model = lease.slot.model.clone();
    let ctx = num_ctx
        .unwrap_or(lease.slot.num_ctx)
        .min(lease.slot.num_ctx);

    // Rendering and tokenizing a long prompt takes a while: off the async threads.
    let req2 = req.clone();
    let rec2 = record.clone();
    let model2 = model.clone();
    let (prompt, forced) =
        tokio::task::spawn_blocking(move || render_and_tokenize(&*model2, &rec2, &req2))
            .await
            .map_err(|e| ApiError::internal(format!("prompt rendering failed: {e}")))??;

    if prompt.len() >= ctx {
        return Err(ApiError::invalid(format!(
            "the prompt is {} tokens but the context window is {ctx} tokens: shorten the input or raise num_ctx",
            prompt.len()
        )));
    }
    let room = ctx - prompt.len();
    let max_tokens = match options.num_predict {
        Some(n) if n >= 0 => (n as usize).min(room),
        _ => room,
    };

    let is_forced = forced.is_some();
    let constraint = build_constraint(&*model, &req, forced, max_tokens)?;
    let format = tool_format(&*model);
    let parser = if is_forced {
        Some(ToolCallParser::inside_call(format))
    } else if !req.tools.is_empty() && req.tool_choice != ToolChoice::None {
        Some(ToolCallParser::new(format))
    } else {
        None
    };

    let mut gen = GenerateRequest::new(prompt, options.sampling());
    gen.max_tokens = Some(max_tokens);
    gen.stop = options.stop.clone().unwrap_or_default();
    gen.logprobs = req.logprobs;
    gen.top_logprobs = req.top_logprobs;
    gen.constraint = constraint;
    Ok(Prepared {
        lease,
        gen,
        parser,
        load_duration,
        started,
    })
}

/// The tool-call format a model speaks (Hermes text for templates without tool support).
fn tool_format(model: &dyn LoadedModel) -> ToolFormat {
    model
        .chat_template_source()
        .and_then(|s| ToolFormat::from_template(&s))
        .unwrap_or(ToolFormat::Hermes)
}

/// Prompt token ids, and the tools a forced call must choose from (None when not forced).
fn render_and_tokenize(
    model: &dyn LoadedModel,
    record: &ModelRecord,
    req: &InferRequest,
) -> Result<(Vec<u32>, Option<Vec<crate::request::ToolDef>>), ApiError> {
    let forced: Option<Vec<crate::request::ToolDef>> = match &req.tool_choice {
        ToolChoice::Required => Some(req.tools.clone()),
        ToolChoice::Named(n) => Some(req.tools.iter().filter(|t| &t.name == n).cloned().collect()),
        ToolChoice::Auto | ToolChoice::None => None,
    };
    let text = match &req.input {
        Input::Chat(messages) => {
            let mut text = render_chat(model, record, messages, req)?;
            if forced.is_some() {
                text.push_str(tool_format(model).forced_prefix());
            }
            text
        }
        Input::Prompt {
            prompt,
            raw,
            system,
            template,
            suffix,
        } => {
            if suffix.as_deref().is_some_and(|s| !s.is_empty()) {
                return Err(ApiError::invalid_param(
                    "suffix",
                    "this model does not support fill-in-the-middle (suffix)",
                ));
            }
            let system = system
                .clone()
                .or_else(|| record.system.clone())
                .unwrap_or_default();
            if *raw {
                prompt.clone()
            } else if let Some(t) = template
                .as_ref()
                .or(record.template.as_ref())
                .filter(|t| !t.trim().is_empty())
            {
                crate::gotmpl::render(t, &system, prompt, "")
                    .map_err(|e| ApiError::invalid_param("template", e.to_string()))?
            } else if model.chat_template_source().is_some() {
                let mut msgs = Vec::new();
                if !system.is_empty() {
                    msgs.push(ChatMessage::new("system", system));
                }
                msgs.push(ChatMessage::new("user", prompt.clone()));
                model
                    .render_chat(&tools::messages_json(&msgs), None, true)
                    .map_err(|e| ApiError::invalid(format!("chat template failed: {e}")))?
            } else {
                prompt.clone()
            }
        }
    };
    let ids = model.encode_prompt(&text);
    if ids.is_empty() {
        return Err(ApiError::invalid("the prompt is empty"));
    }
    Ok((ids, forced))
}

/// Render a conversation with the model's template, handling tools the template cannot.
fn render_chat(
    model: &dyn LoadedModel,
    record: &ModelRecord,
    messages: &[ChatMessage],
    req: &InferRequest,
) -> Result<String, ApiError> {
    let mut msgs: Vec<ChatMessage> = Vec::new();
    if !messages.iter().any(|m| m.role == "system") {
        if let Some(s) = record.system.as_ref().filter(|s| !s.is_empty()) {
            msgs.push(ChatMessage::new("system", s.clone()));
        }
    }
    msgs.extend(record.messages.iter().cloned());
    msgs.extend(messages.iter().cloned());
    let use_tools = !req.tools.is_empty() && req.tool_choice != ToolChoice::None;
    let src = model.chat_template_source();
    let native = src.as_deref().is_some_and(tools::template_handles_tools);
    let has_tool_history = msgs
        .iter()
        .any(|m| m.role == "tool" || !m.tool_calls.is_empty());
    let (msgs, tools_value) = if native {
        (msgs, use_tools.then(|| tools::tools_json(&req.tools)))
    } else if use_tools || has_tool_history {
        let tools: &[crate::request::ToolDef] = if use_tools { &req.tools } else { &[] };
        (tools::messages_without_tool_support(&msgs, tools), None)
    } else {
        (msgs, None)
    };
    // A conversation ending with an assistant turn asks for that turn to be continued.
    let continue_last = msgs
        .last()
        .is_some_and(|m| m.role == "assistant" && m.tool_calls.is_empty());
    let render = |msgs: &[ChatMessage]| -> Result<String, String> {
        let text = model.render_chat(
            &tools::messages_json(msgs),
            tools_value.as_ref(),
            !continue_last,
        )?;
        if !continue_last {
            return Ok(text);
        }
        let last = &msgs[msgs.len() - 1].content;
        // Cut what the template wrote after the assistant's text (its end-of-turn marker).
        match text.rfind(last.as_str()).filter(|_| !last.is_empty()) {
            Some(at) => Ok(text[..at + last.len()].to_string()),
            None => Ok(text),
        }
    };
    match render(&msgs) {
        Ok(text) => Ok(text),
        // Strict templates (Gemma's) refuse system messages after the first turn: those join the
        // user turn next to them, in place (the prompt's prefix stays the same turn to turn).
        Err(e) if has_late_system(&msgs) => render(&fold_late_system(&msgs))
            .map_err(|_| ApiError::invalid(format!("chat template failed: {e}"))),
        Err(e) => Err(ApiError::invalid(format!("chat template failed: {e}"))),
    }
}

/// A system message anywhere but at the start.
fn has_late_system(msgs: &[ChatMessage]) -> bool {
    let lead = msgs.iter().take_while(|m| m.role == "system").count();
    msgs[lead..].iter().any(|m| m.role == "system")
}

/// Later system messages merged into the previous user turn, or the next one when the previous
/// turn is not the user's.
fn fold_late_system(msgs: &[ChatMessage]) -> Vec<ChatMessage> {
    let lead = msgs
        .iter()
        .take_while(|m| m.role == "system")
        .count()
        .min(1);
    let mut out: Vec<ChatMessage> = msgs[..lead].to_vec();
    let mut pending: Vec<&str> = Vec::new();
    for m in &msgs[lead..] {
        if m.role == "system" {
            match out.last_mut() {
                Some(prev) if prev.role == "user" && prev.tool_calls.is_empty() => {
                    prev.content.push_str("\n\n");
                    prev.content.push_str(&m.content);
                }
                _ => pending.push(&m.content),
            }
            continue;
        }
        let mut m = m.clone();
        if m.role == "user" && !pending.is_empty() {
            m.content = format!("{}\n\n{}", pending.join("\n\n"), m.content);
            pending.clear();
        }
        out.push(m);
    }
    if !pending.is_empty() {
        out.push(ChatMessage::new("user", pending.join("\n\n")));
    }
    out
}

fn build_constraint(
    model: &dyn LoadedModel,
    req: &InferRequest,
    forced: Option<Vec<crate::request::ToolDef>>,
    budget: usize,
) -> Result<Option<Box<dyn TokenConstraint>>, ApiError> {
    let grammar = if let Some(tools) = forced {
        let (name_key, args_key) = tool_format(model).keys();
        let defs: Vec<(String, OrderedJson)> = tools
            .iter()
            .map(|t| (t.name.clone(), t.parameters.clone()))
            .collect();
        Grammar::tool_call(&defs, name_key, args_key)
            .map_err(|e| ApiError::invalid_param("tools", e.to_string()))?
    } else {
        match &req.format {
            OutputFormat::Text => return Ok(None),
            OutputFormat::Json => Grammar::any_object(),
            OutputFormat::Schema(s) => Grammar::from_schema(s)
                .map_err(|e| ApiError::invalid_param("format", e.to_string()))?,
        }
    };
    let c = GrammarConstraint::new(Arc::new(grammar), model.token_table(), Some(budget));
    Ok(Some(Box::new(c)))
}

/// A running generation; dropping it cancels the work at the next token.
pub struct Generation {
    rx: mpsc::Receiver<Out>,
    cancel: CancelToken,
    pub prompt_tokens: usize,
}

impl Drop for Generation {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Everything a finished generation produced (non-streaming responses).
#[derive(Debug, Default)]
pub struct Collected {
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
    pub logprobs: Vec<TokenLogprob>,
    pub finish: Option<Finish>,
    pub summary: Summary,
}

impl Generation {
    pub async fn recv(&mut self) -> Option<Out> {
        self.rx.recv().await
    }

    /// Run to the end; an error mid-way is returned as such.
    pub async fn collect(mut self) -> Result<Collected, ApiError> {
        let mut c = Collected::default();
        while let Some(ev) = self.rx.recv().await {
            match ev {
                Out::Text { text, logprobs } => {
                    c.text.push_str(&text);
                    c.logprobs.extend(logprobs);
                }
                Out::ToolCall { call, .. } => c.tool_calls.push(call),
                Out::Done { finish, summary } => {
                    c.finish = Some(finish);
                    c.summary = summary;
                }
                Out::Error(e) => return Err(e),
            }
        }
        if c.finish.is_none() {
            return Err(ApiError::internal("generation ended without a result"));
        }
        Ok(c)
    }
}

/// Start generating; events arrive on the returned [`Generation`].
pub fn start(app: &Arc<AppState>, p: Prepared) -> Generation {
    let (tx, rx) = mpsc::channel::<Out>(64);
    let cancel = CancelToken::default();
    let prompt_tokens = p.prompt_tokens();
    let app = app.clone();
    let task_cancel = cancel.clone();
    tokio::spawn(async move {
        let Prepared {
            lease,
            mut gen,
            parser,
            load_duration,
            started,
        } = p;
        let permit = tokio::select! {
            p = app.sched.wait_turn(&lease.slot) => p,
            _ = tx.closed() => {
                Metrics::add(&app.metrics.cancelled, 1);
                return;
            }
        };
        let permit = match permit {
            Ok(p) => p,
            Err(e) => {
                let _ = tx.send(Out::Error(e)).await;
                return;
            }
        };
        gen.cancel = task_cancel.clone();
        let model = lease.slot.model.clone();
        let tx2 = tx.clone();
        let result = tokio::task::spawn_blocking(move || {
            run_blocking(&*model, gen, parser, &tx2, &task_cancel)
        })
        .await;
        drop(permit);
        let total = started.elapsed();
        let out = match result {
            Ok(Ok(r)) => {
                record_metrics(&app.metrics, &r, started);
                if app.config.debug {
                    let u = &r.usage;
                    eprintln!(
                        "smelt: {} prompt={} cached={} generated={} prefill={:.2}s decode={:.2}s total={:.2}s finish={:?}",
                        lease.slot.name(),
                        u.prompt_tokens,
                        u.cached_tokens,
                        u.completion_tokens,
                        u.prompt_eval_duration.as_secs_f64(),
                        u.eval_duration.as_secs_f64(),
                        total.as_secs_f64(),
                        r.reason
                    );
                }
                let finish = match r.reason {
                    FinishReason::Cancelled => Finish::Cancelled,
                    _ if r.tool_calls > 0 => Finish::ToolCalls,
                    FinishReason::Length => Finish::Length,
                    FinishReason::Stop => Finish::Stop,
                };
                Out::Done {
                    finish,
                    summary: Summary {
                        usage: r.usage,
                        load_duration,
                        total_duration: total,
                    },
                }
            }
            Ok(Err(e)) => Out::Error(ApiError::internal(format!("generation failed: {e}"))),
            Err(e) => Out::Error(ApiError::internal(format!("generation failed: {e}"))),
        };
        let _ = tx.send(out).await;
        drop(lease);
    });
    Generation {
        rx,
        cancel,
        prompt_tokens,
    }
}

struct RunResult {
    usage: Usage,
    reason: FinishReason,
    tool_calls: usize,
    first_token: Option<Instant>,
}

fn run_blocking(
    model: &dyn LoadedModel,
    gen: GenerateRequest,
    mut parser: Option<ToolCallParser>,
    tx: &mpsc::Sender<Out>,
    cancel: &CancelToken,
) -> Result<RunResult, String> {
    let mut n_calls = 0usize;
    let mut reason = FinishReason::Stop;
    let mut first_token = None;
    let emit = |pieces: Vec<Piece>, mut logprobs: Vec<TokenLogprob>, n_calls: &mut usize| {
        for piece in pieces {
            let out = match piece {
                Piece::Text(text) => Out::Text {
                    text,
                    logprobs: std::mem::take(&mut logprobs),
                },
                Piece::Call(call) => {
                    *n_calls += 1;
                    Out::ToolCall {
                        index: *n_calls - 1,
                        call,
                    }
                }
            };
            // The client went away: stop generating.
            if tx.blocking_send(out).is_err() {
                cancel.cancel();
            }
        }
    };
    let usage = model.generate(gen, &mut |ev| match ev {
        Event::Text {
            text,
            tokens,
            logprobs,
        } => {
            if first_token.is_none() && !tokens.is_empty() {
                first_token = Some(Instant::now());
            }
            let pieces = match parser.as_mut() {
                Some(p) => p.push(&text),
                None if text.is_empty() && logprobs.is_empty() => Vec::new(),
                None => vec![Piece::Text(text)],
            };
            emit(pieces, logprobs, &mut n_calls);
        }
        Event::Done { reason: r, .. } => reason = r,
    })?;
    if let Some(p) = parser.as_mut() {
        emit(p.finish(), Vec::new(), &mut n_calls);
    }
    Ok(RunResult {
        usage,
        reason,
        tool_calls: n_calls,
        first_token,
    })
}

fn record_metrics(m: &Metrics, r: &RunResult, started: Instant) {
    Metrics::add(&m.prompt_tokens, r.usage.prompt_tokens as u64);
    Metrics::add(&m.cached_prompt_tokens, r.usage.cached_tokens as u64);
    Metrics::add(&m.generated_tokens, r.usage.completion_tokens as u64);
    if r.reason == FinishReason::Cancelled {
        Metrics::add(&m.cancelled, 1);
    }
    if let Some(t) = r.first_token {
        m.ttft.observe(t.duration_since(started).as_secs_f64());
    }
    let secs = r.usage.eval_duration.as_secs_f64();
    if r.usage.completion_tokens > 1 && secs > 0.0 {
        m.tokens_per_second
            .observe(r.usage.completion_tokens as f64 / secs);
    }
    m.request_duration.observe(started.elapsed().as_secs_f64());
}

/// Parse a JSON body into `T`, with errors clients can act on.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::invalid(
            "the request body is empty: send a JSON object",
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        let what = if e.is_syntax() || e.is_eof() {
            "malformed JSON"
        } else {
            "invalid request"
        };
        ApiError::invalid(format!("{what}: {e}"))
    })
}

/// A JSON value's type name, for error messages.
pub fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Prompt tokens a request would use (Anthropic's count_tokens): renders and tokenizes with the
/// model's tokenizer, loading the model if needed.
pub async fn count_prompt_tokens(
    app: &Arc<AppState>,
    req: InferRequest,
) -> Result<usize, ApiError> {
    req.validate()?;
    let record = resolve(app, &req.model).await?;
    let (lease, _) = app.sched.acquire(&record, None, req.keep_alive).await?;
    let model = lease.slot.model.clone();
    let (ids, _) = tokio::task::spawn_blocking(move || render_and_tokenize(&*model, &record, &req))
        .await
        .map_err(|e| ApiError::internal(format!("prompt rendering failed: {e}")))??;
    Ok(ids.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(role: &str, c: &str) -> ChatMessage {
        ChatMessage::new(role, c)
    }

    #[test]
    fn late_system_messages_join_the_user_turns_in_place() {
        let msgs = vec![
            m("system", "S"),
            m("user", "u1"),
            m("system", "late"),
            m("assistant", "a"),
            m("system", "x"),
            m("user", "u2"),
        ];
        assert!(has_late_system(&msgs));
        let out = fold_late_system(&msgs);
        let roles: Vec<&str> = out.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "user"]);
        assert_eq!(out[1].content, "u1\n\nlate");
        assert_eq!(out[3].content, "x\n\nu2");
        assert!(!has_late_system(&[m("system", "a"), m("user", "b")]));
        let tail = fold_late_system(&[m("user", "u"), m("assistant", "a"), m("system", "end")]);
        assert_eq!(tail.last().unwrap().content, "end");
        assert_eq!(tail.last().unwrap().role, "user");
    }
}
