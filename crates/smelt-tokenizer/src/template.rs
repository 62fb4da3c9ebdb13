//! Chat templates: a model's Jinja template rendered the way Hugging Face `transformers` renders
//! it (`apply_chat_template`), so a prompt built here is the prompt the model was trained on.
//!
//! transformers uses a sandboxed Jinja2 environment with `trim_blocks` and `lstrip_blocks`, loop
//! controls, its own `tojson` (Python `json.dumps`, non-ASCII kept), `raise_exception` and
//! `strftime_now`, and passes `messages`, `tools`, `documents`, `add_generation_prompt` and the
//! special-token strings (`bos_token`, `eos_token`, ...). minijinja with Python-compatible
//! string and dict methods supplies the rest; printed values use Python's `str()`.

use std::collections::BTreeMap;

use minijinja::value::{Kwargs, Rest, ValueKind};
use minijinja::{Environment, Error, ErrorKind, Value};

use crate::builtin_templates::{builtin_source, PLAIN};
use crate::pyfmt::{self, DateTime, JsonOptions};
use crate::tokenizer::resolve_special_ids;
use crate::{SpecialIds, TemplateError, Tokenizer, Vocab};

const NAME: &str = "chat_template";
/// Marks errors raised by the template itself, to tell them from engine errors.
const RAISED: &str = "raise_exception: ";

/// A compiled chat template plus the special-token strings it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    tokens: BTreeMap<String, String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .field("tokens", &self.tokens)
            .finish()
    }
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token` and `eos_token` are the strings the template sees.
    pub fn new(
        source: &str,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<ChatTemplate, TemplateError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(|out, _state, value| {
            // `{{ x }}` prints Python's str(x): None, True, ['a'] rather than none, true, ["a"].
            out.write_str(&pyfmt::py_str(value)).map_err(Error::from)
        });
        env.add_filter("tojson", tojson);
        env.add_filter("trim", trim);
        env.add_filter("string", |v: Value| pyfmt::py_str(&v));
        // Jinja2's type tests follow Python's types: None is not iterable, strings and dicts
        // are sequences, bools are numbers.
        env.add_test("iterable", |v: Value| match v.kind() {
            ValueKind::None | ValueKind::Bool | ValueKind::Number | ValueKind::Invalid => false,
            ValueKind::Plain => v.try_iter().is_ok(),
            _ => true,
        });
        env.add_test("sequence", |v: Value| {
            matches!(
                v.kind(),
                ValueKind::String | ValueKind::Seq | ValueKind::Map
            )
        });
        env.add_test("number", |v: Value| {
            matches!(v.kind(), ValueKind::Number | ValueKind::Bool)
        });
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(NAME, source.to_owned())
            .map_err(TemplateError::Syntax)?;
        let mut tokens = BTreeMap::new();
        tokens.insert("bos_token".to_owned(), bos_token.to_owned());
        tokens.insert("eos_token".to_owned(), eos_token.to_owned());
        Ok(ChatTemplate {
            env,
            source: source.to_owned(),
            tokens,
        })
    }

    /// The built-in template for a family (`"gemma3"`, `"chatml"`, `"llama3"`) or a GGUF
    /// architecture name (`"gemma3"`, `"qwen2"`, `"llama"`, ...).
    pub fn builtin_for(
        arch: &str,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<ChatTemplate, TemplateError> {
        let src = builtin_source(arch).ok_or_else(|| TemplateError::NoBuiltin(arch.to_owned()))?;
        ChatTemplate::new(src, bos_token, eos_token)
    }

    /// The template for a model: its own (`tokenizer.chat_template`), else the built-in one
    /// for its architecture, else [`PLAIN`](crate::PLAIN); special-token strings
    /// (`bos_token`, `eos_token`, `unk_token`, `pad_token`, ...) from the vocabulary.
    pub fn for_model(vocab: &Vocab, tokenizer: &Tokenizer) -> Result<ChatTemplate, TemplateError> {
        let text = |id: u32| {
            tokenizer
                .token_text(id)
                .map(|t| String::from_utf8_lossy(t).into_owned())
        };
        let arch = vocab.architecture.as_deref().unwrap_or("");
        ChatTemplate::assemble(
            vocab.chat_template.as_deref(),
            arch,
            tokenizer.special_ids(),
            text,
        )
    }

    /// [`ChatTemplate::for_model`] straight from GGUF metadata, without building a tokenizer.
    /// `arch` picks the built-in template when the file has none (empty: the file's
    /// `general.architecture`).
    pub fn from_gguf(g: &smelt_gguf::Gguf, arch: &str) -> Result<ChatTemplate, TemplateError> {
        let tokens = g.get_string_array("tokenizer.ggml.tokens")?;
        let n_tokens = tokens.map_or(0, |t| t.len());
        let model = g.get_str("tokenizer.ggml.model")?.unwrap_or_default();
        let ids = resolve_special_ids(model, &SpecialIds::from_gguf(g)?, n_tokens);
        let text = |id: u32| {
            tokens
                .and_then(|t| t.get(id as usize))
                .map(|t| String::from_utf8_lossy(t).into_owned())
        };
        let arch = if arch.is_empty() {
            g.architecture().unwrap_or_default()
        } else {
            arch
        };
        ChatTemplate::assemble(g.get_str("tokenizer.chat_template")?, arch, &ids, text)
    }

    fn assemble(
        source: Option<&str>,
        arch: &str,
        ids: &SpecialIds,
        text: impl Fn(u32) -> Option<String>,
    ) -> Result<ChatTemplate, TemplateError> {
        let source = source.or_else(|| builtin_source(arch)).unwrap_or(PLAIN);
        let token = |id: Option<u32>| id.and_then(&text);
        let mut t = ChatTemplate::new(
            source,
            &token(ids.bos).unwrap_or_default(),
            &token(ids.eos).unwrap_or_default(),
        )?;
        for (name, id) in [
            ("unk_token", ids.unk),
            ("pad_token", ids.pad),
            ("sep_token", ids.sep),
            ("mask_token", ids.mask),
        ] {
            if let Some(s) = token(id) {
                t.set_token(name, &s);
            }
        }
        Ok(t)
    }

    /// Sets another special-token string the template may use (`unk_token`, `pad_token`, ...).
    pub fn set_token(&mut self, name: &str, value: &str) {
        self.tokens.insert(name.to_owned(), value.to_owned());
    }

    /// The template source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders a conversation. `messages` is a JSON array of `{role, content, ...}` objects
    /// (content a string or a list of parts; `tool_calls`, `name`, ... passed through as given),
    /// `tools` a JSON array of tool schemas.
    pub fn render(
        &self,
        messages: &serde_json::Value,
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        self.render_with(
            messages,
            tools,
            add_generation_prompt,
            &serde_json::Map::new(),
        )
    }

    /// [`ChatTemplate::render`] with extra template variables (e.g. `enable_thinking`); they
    /// override the special-token strings but not the named arguments.
    pub fn render_with(
        &self,
        messages: &serde_json::Value,
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String, TemplateError> {
        if !messages.is_array() {
            return Err(TemplateError::MessagesNotArray(json_kind(messages)));
        }
        let mut ctx: BTreeMap<String, Value> = BTreeMap::new();
        for (k, v) in &self.tokens {
            ctx.insert(k.clone(), Value::from(v.as_str()));
        }
        for (k, v) in extra {
            ctx.insert(k.clone(), Value::from_serialize(v));
        }
        ctx.insert("messages".into(), Value::from_serialize(messages));
        ctx.insert(
            "tools".into(),
            tools.map_or(Value::from(()), Value::from_serialize),
        );
        ctx.insert("documents".into(), Value::from(()));
        ctx.insert(
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        );

        let tmpl = self.env.get_template(NAME).map_err(TemplateError::Render)?;
        tmpl.render(ctx).map_err(|e| match raised_message(&e) {
            Some(msg) => TemplateError::Raised(msg),
            None => TemplateError::Render(e),
        })
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a bool",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// The message of a `raise_exception` call somewhere in the error chain.
fn raised_message(e: &Error) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(mj) = err.downcast_ref::<Error>() {
            if let Some(msg) = mj.detail().and_then(|d| d.strip_prefix(RAISED)) {
                return Some(msg.to_owned());
            }
        }
        cur = err.source();
    }
    None
}

// ---- functions and filters of the transformers environment -----------------------------------

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(
        ErrorKind::InvalidOperation,
        format!("{RAISED}{message}"),
    ))
}

/// The current time formatted with C `strftime` directives (UTC: a server has no "local").
fn strftime_now(format: String) -> String {
    DateTime::now_utc().strftime(&format)
}

/// Jinja2's `trim`: strip the value's Python `str()` of whitespace, or of the given characters.
fn trim(value: Value, chars: Option<String>) -> String {
    let s = pyfmt::py_str(&value);
    match chars {
        Some(set) => s.trim_matches(|c| set.contains(c)).to_owned(),
        None => s.trim_matches(pyfmt::py_isspace).to_owned(),
    }
}

/// `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`, arguments
/// positional or by name, as transformers defines it.
fn tojson(value: Value, args: Rest<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let positional = |i: usize| args.get(i).cloned();
    let named = |name: &str, i: usize| -> Result<Option<Value>, Error> {
        Ok(kwargs.get::<Option<Value>>(name)?.or_else(|| positional(i)))
    };
    let ensure_ascii = named("ensure_ascii", 0)?.is_some_and(|v| v.is_true());
    let indent = match named("indent", 1)? {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) if v.kind() == ValueKind::String => Some(v.as_str().unwrap_or_default().to_owned()),
        Some(v) => match v.as_i64() {
            Some(n) => Some(" ".repeat(n.max(0) as usize)),
            None => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be an integer or a string",
                ))
            }
        },
    };
    let separators = match named("separators", 2)? {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => {
            let parts: Vec<Value> = v.try_iter()?.collect();
            match parts.as_slice() {
                [a, b] => Some((a.to_string(), b.to_string())),
                _ => {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be a pair of strings",
                    ))
                }
            }
        }
    };
    let sort_keys = named("sort_keys", 3)?.is_some_and(|v| v.is_true());
    kwargs.assert_all_used()?;
    let opts = JsonOptions::new(ensure_ascii, indent, separators, sort_keys);
    Ok(Value::from(pyfmt::to_json(&value, &opts)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(src: &str, messages: serde_json::Value) -> Result<String, TemplateError> {
        ChatTemplate::new(src, "<s>", "</s>")?.render(&messages, None, false)
    }

    #[test]
    fn functions_and_errors() {
        let year = render("{{ strftime_now('%Y') }}", json!([])).unwrap();
        assert!(year.len() == 4 && year.as_str() >= "2024", "{year}");
        match render(
            "{{ raise_exception('no system role, ' + messages[0].role) }}",
            json!([{"role": "system"}]),
        ) {
            Err(TemplateError::Raised(m)) => assert_eq!(m, "no system role, system"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            ChatTemplate::new("{% for %}", "", ""),
            Err(TemplateError::Syntax(_))
        ));
        assert!(matches!(
            render("{{ messages[0].x.y }}", json!([])),
            Err(TemplateError::Render(_))
        ));
        assert!(matches!(
            render("", json!({"role": "user"})),
            Err(TemplateError::MessagesNotArray("an object"))
        ));
        assert!(matches!(
            ChatTemplate::builtin_for("no-such-family", "", ""),
            Err(TemplateError::NoBuiltin(_))
        ));
    }

    #[test]
    fn tokens_and_extra_variables_reach_the_template() {
        let mut t = ChatTemplate::new(
            "{{ bos_token }}|{{ eos_token }}|{{ unk_token }}|{{ enable_thinking }}",
            "<s>",
            "</s>",
        )
        .unwrap();
        t.set_token("unk_token", "<unk>");
        let mut extra = serde_json::Map::new();
        extra.insert("enable_thinking".into(), json!(false));
        assert_eq!(
            t.render_with(&json!([]), None, false, &extra).unwrap(),
            "<s>|</s>|<unk>|False"
        );
    }

    #[test]
    fn builtin_families_render() {
        let msgs = json!([{"role": "system", "content": "S"}, {"role": "user", "content": " Hi "}]);
        let g = ChatTemplate::builtin_for("gemma3", "<bos>", "<eos>").unwrap();
        assert_eq!(
            g.render(&msgs, None, true).unwrap(),
            "<bos><start_of_turn>user\nS\n\nHi<end_of_turn>\n<start_of_turn>model\n"
        );
        let c = ChatTemplate::builtin_for("qwen2", "", "").unwrap();
        assert_eq!(
            c.render(&msgs, None, true).unwrap(),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n Hi <|im_end|>\n<|im_start|>assistant\n"
        );
        let l = ChatTemplate::builtin_for("llama3", "<|begin_of_text|>", "<|eot_id|>").unwrap();
        assert_eq!(
            l.render(&msgs, None, true).unwrap(),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        );
    }
}
