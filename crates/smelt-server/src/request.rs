//! The one internal request every API adapter translates into, and the events it streams back.

use std::time::Duration;

use serde_json::Value;
use smelt_engine::{SamplingOptions, TokenLogprob, Usage};

use crate::config::KeepAlive;
use crate::error::ApiError;

/// One chat message, HF-style: what chat templates expect.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChatMessage {
    /// system, user, assistant or tool.
    pub role: String,
    pub content: String,
    /// Calls the assistant made (assistant messages).
    pub tool_calls: Vec<ToolCall>,
    /// Which call a tool message answers.
    pub tool_call_id: Option<String>,
    /// The tool's name (tool messages).
    pub name: Option<String>,
}

impl ChatMessage {
    pub fn new(role: &str, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.to_string(),
            content: content.into(),
            ..Default::default()
        }
    }
}

/// A call to a declared tool.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// A JSON object.
    pub arguments: Value,
}

/// A tool the model may call.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolDef {
    pub name: String,
    pub description: String,
    /// JSON schema of the arguments object.
    pub parameters: Value,
}

/// Whether and which tool the model must call.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum ToolChoice {
    /// The model decides.
    #[default]
    Auto,
    /// No tool calls.
    None,
    /// Some tool must be called.
    Required,
    /// This tool must be called.
    Named(String),
}

/// Constraint on the output text.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum OutputFormat {
    #[default]
    Text,
    /// Any JSON object.
    Json,
    /// JSON valid against this schema.
    Schema(Value),
}

/// What the model is given.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// A conversation, rendered with the model's chat template.
    Chat(Vec<ChatMessage>),
    /// A bare prompt (Ollama generate, OpenAI completions).
    Prompt {
        prompt: String,
        /// Use the prompt as is, with no template.
        raw: bool,
        /// System prompt for the template (Ollama `system`).
        system: Option<String>,
        /// A replacement prompt template (Ollama `template`, Go-template subset).
        template: Option<String>,
        /// Text after the insertion point (fill-in-the-middle); rejected when the model has no FIM.
        suffix: Option<String>,
    },
}

/// The internal request.
#[derive(Clone, Debug)]
pub struct InferRequest {
    pub model: String,
    pub input: Input,
    pub sampling: SamplingOptions,
    /// Upper bound of new tokens (None: until the context is full).
    pub max_tokens: Option<usize>,
    /// Context window the request asks for (Ollama `num_ctx`).
    pub num_ctx: Option<usize>,
    pub stop: Vec<String>,
    pub tools: Vec<ToolDef>,
    pub tool_choice: ToolChoice,
    pub format: OutputFormat,
    pub keep_alive: Option<KeepAlive>,
    pub logprobs: bool,
    pub top_logprobs: usize,
}

impl InferRequest {
    pub fn new(model: impl Into<String>, input: Input) -> InferRequest {
        InferRequest {
            model: model.into(),
            input,
            sampling: SamplingOptions::default(),
            max_tokens: None,
            num_ctx: None,
            stop: Vec::new(),
            tools: Vec::new(),
            tool_choice: ToolChoice::Auto,
            format: OutputFormat::Text,
            keep_alive: None,
            logprobs: false,
            top_logprobs: 0,
        }
    }
}

/// Why a generation ended, as the adapters report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    Stop,
    Length,
    ToolCalls,
    Cancelled,
}

/// Counts and timings of a finished request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    pub usage: Usage,
    pub load_duration: Duration,
    pub total_duration: Duration,
}

/// What a running request streams to its adapter.
#[derive(Clone, Debug, PartialEq)]
pub enum Out {
    /// Output text (never part of a tool call).
    Text {
        text: String,
        logprobs: Vec<TokenLogprob>,
    },
    /// A complete tool call, in order (`index` counts from 0).
    ToolCall { index: usize, call: ToolCall },
    /// The end; always last.
    Done { finish: Finish, summary: Summary },
    /// A failure after the response started; always last.
    Error(ApiError),
}

// ---------------------------------------------------------------------------------------------
// Validation shared by the adapters
// ---------------------------------------------------------------------------------------------

/// Check a float option lies in `lo..=hi`.
pub fn check_range(name: &str, v: f32, lo: f32, hi: f32) -> Result<(), ApiError> {
    if !v.is_finite() || v < lo || v > hi {
        return Err(ApiError::invalid_param(
            name,
            format!("{name} must be between {lo} and {hi}, got {v}"),
        ));
    }
    Ok(())
}

/// The sampling checks every dialect shares (dialects add their own tighter ranges).
pub fn validate_sampling(s: &SamplingOptions) -> Result<(), ApiError> {
    check_range("temperature", s.temperature, 0.0, 100.0)?;
    check_range("top_p", s.top_p, 0.0, 1.0)?;
    check_range("min_p", s.min_p, 0.0, 1.0)?;
    check_range("repeat_penalty", s.repeat_penalty, 0.0, 100.0)?;
    check_range("presence_penalty", s.presence_penalty, -2.0, 2.0)?;
    check_range("frequency_penalty", s.frequency_penalty, -2.0, 2.0)?;
    if s.repeat_last_n < -1 {
        return Err(ApiError::invalid_param(
            "repeat_last_n",
            format!(
                "repeat_last_n must be -1 (whole context) or >= 0, got {}",
                s.repeat_last_n
            ),
        ));
    }
    Ok(())
}

/// Largest num_ctx a request may ask for.
pub const MAX_NUM_CTX: usize = 1 << 20;
/// Most top_logprobs a request may ask for.
pub const MAX_TOP_LOGPROBS: usize = 20;

impl InferRequest {
    /// Checks independent of the model (the pipeline checks the context once the model is known).
    pub fn validate(&self) -> Result<(), ApiError> {
        if self.model.trim().is_empty() {
            return Err(ApiError::invalid_param("model", "model is required"));
        }
        validate_sampling(&self.sampling)?;
        if let Some(n) = self.num_ctx {
            if n == 0 || n > MAX_NUM_CTX {
                return Err(ApiError::invalid_param(
                    "num_ctx",
                    format!("num_ctx must be between 1 and {MAX_NUM_CTX}, got {n}"),
                ));
            }
        }
        if self.top_logprobs > MAX_TOP_LOGPROBS {
            return Err(ApiError::invalid_param(
                "top_logprobs",
                format!(
                    "top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {}",
                    self.top_logprobs
                ),
            ));
        }
        if let ToolChoice::Named(name) = &self.tool_choice {
            if !self.tools.iter().any(|t| &t.name == name) {
                return Err(ApiError::invalid_param(
                    "tool_choice",
                    format!("tool_choice names {name:?}, which is not among the declared tools"),
                ));
            }
        }
        if matches!(
            self.tool_choice,
            ToolChoice::Required | ToolChoice::Named(_)
        ) && self.tools.is_empty()
        {
            return Err(ApiError::invalid_param(
                "tool_choice",
                "tool_choice requires a tool call but no tools were given",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for t in &self.tools {
            if t.name.is_empty() {
                return Err(ApiError::invalid_param("tools", "every tool needs a name"));
            }
            if !seen.insert(t.name.as_str()) {
                return Err(ApiError::invalid_param(
                    "tools",
                    format!("tool {:?} is declared twice", t.name),
                ));
            }
            if !(t.parameters.is_object() || t.parameters.is_null()) {
                return Err(ApiError::invalid_param(
                    "tools",
                    format!(
                        "the parameters of tool {:?} must be a JSON schema object",
                        t.name
                    ),
                ));
            }
        }
        if self.stop.iter().any(|s| s.is_empty()) {
            return Err(ApiError::invalid_param(
                "stop",
                "stop sequences must not be empty",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chat() -> InferRequest {
        InferRequest::new("m", Input::Chat(vec![ChatMessage::new("user", "hi")]))
    }

    #[test]
    fn validation_catches_out_of_range_options() {
        assert!(chat().validate().is_ok());
        let mut r = chat();
        r.sampling.top_p = 1.5;
        assert!(r.validate().unwrap_err().message.contains("top_p"));
        let mut r = chat();
        r.sampling.temperature = f32::NAN;
        assert!(r.validate().is_err());
        let mut r = chat();
        r.num_ctx = Some(0);
        assert!(r.validate().is_err());
        let mut r = chat();
        r.model = " ".into();
        assert!(r.validate().is_err());
        let mut r = chat();
        r.stop = vec![String::new()];
        assert!(r.validate().is_err());
    }

    #[test]
    fn validation_of_tools() {
        let tool = ToolDef {
            name: "f".into(),
            description: String::new(),
            parameters: json!({"type": "object"}),
        };
        let mut r = chat();
        r.tool_choice = ToolChoice::Required;
        assert!(r.validate().is_err(), "required with no tools");
        r.tools = vec![tool.clone()];
        assert!(r.validate().is_ok());
        r.tool_choice = ToolChoice::Named("g".into());
        assert!(r.validate().unwrap_err().message.contains("\"g\""));
        r.tools = vec![tool.clone(), tool];
        r.tool_choice = ToolChoice::Auto;
        assert!(r.validate().unwrap_err().message.contains("twice"));
    }
}
