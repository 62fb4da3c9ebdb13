//! The one internal request every API adapter translates into, and the events it streams back.

use std::time::Duration;

use serde_json::Value;
use smelt_engine::{SamplingOptions, TokenLogprob, Usage};

use crate::config::KeepAlive;
use crate::constrain::OrderedJson;
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
    /// JSON schema of the arguments object (Null: none given), in the client's key order.
    pub parameters: OrderedJson,
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
    /// JSON valid against this schema (in the client's key order).
    Schema(OrderedJson),
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

/// Generation options a request (or a Modelfile's PARAMETER lines) sets; unset ones fall back to
/// the model's defaults, then to Ollama's.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenOptions {
    pub temperature: Option<f32>,
    pub top_k: Option<i64>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub repeat_last_n: Option<i64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    /// Negative: a random seed.
    pub seed: Option<i64>,
    /// New tokens at most; -1 (or None): until the context is full; -2: fill the context.
    pub num_predict: Option<i64>,
    pub num_ctx: Option<i64>,
    pub stop: Option<Vec<String>>,
}

impl GenOptions {
    /// Read Ollama's `options` object (also the params layer of a Modelfile). Unknown keys and
    /// runner keys that do not apply (num_gpu, use_mmap, ...) are ignored; known keys of the wrong
    /// type are errors.
    pub fn from_ollama(map: &serde_json::Map<String, Value>) -> Result<GenOptions, ApiError> {
        let mut o = GenOptions::default();
        for (k, v) in map {
            if v.is_null() {
                continue;
            }
            let float = || -> Result<f32, ApiError> {
                v.as_f64().map(|f| f as f32).ok_or_else(|| {
                    ApiError::invalid_param(k, format!("option {k} must be a number, got {v}"))
                })
            };
            let int = || -> Result<i64, ApiError> {
                match v.as_i64() {
                    Some(i) => Ok(i),
                    // 40.0 is an integer too.
                    None => v
                        .as_f64()
                        .filter(|f| f.fract() == 0.0 && f.abs() < 9e15)
                        .map(|f| f as i64)
                        .ok_or_else(|| {
                            ApiError::invalid_param(
                                k,
                                format!("option {k} must be an integer, got {v}"),
                            )
                        }),
                }
            };
            match k.as_str() {
                "temperature" => o.temperature = Some(float()?),
                "top_k" => o.top_k = Some(int()?),
                "top_p" => o.top_p = Some(float()?),
                "min_p" => o.min_p = Some(float()?),
                "repeat_penalty" => o.repeat_penalty = Some(float()?),
                "repeat_last_n" => o.repeat_last_n = Some(int()?),
                "presence_penalty" => o.presence_penalty = Some(float()?),
                "frequency_penalty" => o.frequency_penalty = Some(float()?),
                "seed" => o.seed = Some(int()?),
                "num_predict" => o.num_predict = Some(int()?),
                "num_ctx" => o.num_ctx = Some(int()?),
                "stop" => {
                    o.stop = Some(match v {
                        Value::String(s) => vec![s.clone()],
                        Value::Array(a) => a
                            .iter()
                            .map(|x| {
                                x.as_str().map(str::to_string).ok_or_else(|| {
                                    ApiError::invalid_param(
                                        "stop",
                                        format!("stop must be a list of strings, got {v}"),
                                    )
                                })
                            })
                            .collect::<Result<_, _>>()?,
                        _ => {
                            return Err(ApiError::invalid_param(
                                "stop",
                                format!("stop must be a list of strings, got {v}"),
                            ))
                        }
                    })
                }
                _ => {}
            }
        }
        Ok(o)
    }

    /// Fill unset options from `defaults`.
    pub fn or(self, d: &GenOptions) -> GenOptions {
        GenOptions {
            temperature: self.temperature.or(d.temperature),
            top_k: self.top_k.or(d.top_k),
            top_p: self.top_p.or(d.top_p),
            min_p: self.min_p.or(d.min_p),
            repeat_penalty: self.repeat_penalty.or(d.repeat_penalty),
            repeat_last_n: self.repeat_last_n.or(d.repeat_last_n),
            presence_penalty: self.presence_penalty.or(d.presence_penalty),
            frequency_penalty: self.frequency_penalty.or(d.frequency_penalty),
            seed: self.seed.or(d.seed),
            num_predict: self.num_predict.or(d.num_predict),
            num_ctx: self.num_ctx.or(d.num_ctx),
            stop: self.stop.or_else(|| d.stop.clone()),
        }
    }

    /// Sampling settings, Ollama's defaults where unset.
    pub fn sampling(&self) -> SamplingOptions {
        let d = SamplingOptions::default();
        SamplingOptions {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_k: self.top_k.map(|k| k.max(0) as usize).unwrap_or(d.top_k),
            top_p: self.top_p.unwrap_or(d.top_p),
            min_p: self.min_p.unwrap_or(d.min_p),
            repeat_penalty: self.repeat_penalty.unwrap_or(d.repeat_penalty),
            repeat_last_n: self
                .repeat_last_n
                .map(|n| n.clamp(-1, i32::MAX as i64) as i32)
                .unwrap_or(d.repeat_last_n),
            presence_penalty: self.presence_penalty.unwrap_or(d.presence_penalty),
            frequency_penalty: self.frequency_penalty.unwrap_or(d.frequency_penalty),
            seed: self.seed.filter(|s| *s >= 0).map(|s| s as u64),
        }
    }

    /// Range checks (dialects add tighter ones of their own).
    pub fn validate(&self) -> Result<(), ApiError> {
        let f = |name: &str, v: Option<f32>, lo: f32, hi: f32| {
            v.map_or(Ok(()), |v| check_range(name, v, lo, hi))
        };
        f("temperature", self.temperature, 0.0, 100.0)?;
        f("top_p", self.top_p, 0.0, 1.0)?;
        f("min_p", self.min_p, 0.0, 1.0)?;
        f("repeat_penalty", self.repeat_penalty, 0.0, 100.0)?;
        f("presence_penalty", self.presence_penalty, -2.0, 2.0)?;
        f("frequency_penalty", self.frequency_penalty, -2.0, 2.0)?;
        let i =
            |name: &str, v: Option<i64>, lo: i64, hi: i64, what: &str| -> Result<(), ApiError> {
                match v {
                    Some(x) if x < lo || x > hi => Err(ApiError::invalid_param(
                        name,
                        format!("{name} must be {what}, got {x}"),
                    )),
                    _ => Ok(()),
                }
            };
        i(
            "top_k",
            self.top_k,
            0,
            1 << 30,
            "0 (off) or a positive integer",
        )?;
        i(
            "repeat_last_n",
            self.repeat_last_n,
            -1,
            1 << 30,
            "-1 (the whole context) or >= 0",
        )?;
        i(
            "num_predict",
            self.num_predict,
            -2,
            1 << 30,
            "-1 (no limit), -2 (fill the context) or >= 0",
        )?;
        i(
            "num_ctx",
            self.num_ctx,
            1,
            MAX_NUM_CTX as i64,
            &format!("between 1 and {MAX_NUM_CTX}"),
        )?;
        if let Some(stop) = &self.stop {
            if stop.iter().any(|s| s.is_empty()) {
                return Err(ApiError::invalid_param(
                    "stop",
                    "stop sequences must not be empty",
                ));
            }
        }
        Ok(())
    }
}

/// The internal request.
#[derive(Clone, Debug)]
pub struct InferRequest {
    pub model: String,
    pub input: Input,
    pub options: GenOptions,
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
            options: GenOptions::default(),
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
        self.options.validate()?;
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
            if !(t.parameters.is_object() || t.parameters == OrderedJson::Null) {
                return Err(ApiError::invalid_param(
                    "tools",
                    format!(
                        "the parameters of tool {:?} must be a JSON schema object",
                        t.name
                    ),
                ));
            }
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
        r.options.top_p = Some(1.5);
        assert!(r.validate().unwrap_err().message.contains("top_p"));
        let mut r = chat();
        r.options.temperature = Some(f32::NAN);
        assert!(r.validate().is_err());
        let mut r = chat();
        r.options.num_ctx = Some(0);
        assert!(r.validate().is_err());
        let mut r = chat();
        r.options.num_predict = Some(-3);
        assert!(r.validate().is_err());
        let mut r = chat();
        r.model = " ".into();
        assert!(r.validate().is_err());
        let mut r = chat();
        r.options.stop = Some(vec![String::new()]);
        assert!(r.validate().is_err());
    }

    #[test]
    fn ollama_options_parse_typed() {
        let m = json!({"temperature": 0, "top_k": 5.0, "seed": 42, "stop": "x", "num_gpu": 99, "unknown": "ignored"});
        let o = GenOptions::from_ollama(m.as_object().unwrap()).unwrap();
        assert_eq!(o.temperature, Some(0.0));
        assert_eq!(o.top_k, Some(5));
        assert_eq!(o.stop, Some(vec!["x".to_string()]));
        let s = o
            .clone()
            .or(&GenOptions {
                top_p: Some(0.5),
                temperature: Some(1.0),
                ..Default::default()
            })
            .sampling();
        assert_eq!(
            (s.temperature, s.top_p, s.top_k, s.seed),
            (0.0, 0.5, 5, Some(42))
        );
        assert!(
            GenOptions::from_ollama(json!({"temperature": "hot"}).as_object().unwrap()).is_err()
        );
        assert!(GenOptions::from_ollama(json!({"top_k": 1.5}).as_object().unwrap()).is_err());
        assert!(GenOptions::from_ollama(json!({"stop": [1]}).as_object().unwrap()).is_err());
        assert_eq!(
            GenOptions {
                seed: Some(-1),
                ..Default::default()
            }
            .sampling()
            .seed,
            None
        );
    }

    #[test]
    fn validation_of_tools() {
        let tool = ToolDef {
            name: "f".into(),
            description: String::new(),
            parameters: OrderedJson::from_value(&json!({"type": "object"})),
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
