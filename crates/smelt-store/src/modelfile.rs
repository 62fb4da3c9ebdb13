//! Modelfiles: `FROM`, `PARAMETER`, `TEMPLATE`, `SYSTEM`, `LICENSE`, `MESSAGE` (and `ADAPTER`,
//! recognised and refused), `#` comments, values bare, `"quoted"` or `"""multi-line"""`.

use serde_json::{Map, Value};

use crate::create::CreateSpec;
use crate::error::{Error, Result};
use crate::resolve::{Message, ResolvedModel};

/// A parsed Modelfile, before parameters are typed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Modelfile {
    pub from: String,
    pub adapters: Vec<String>,
    pub parameters: Vec<(String, String)>,
    pub template: Option<String>,
    pub system: Option<String>,
    pub license: Vec<String>,
    pub messages: Vec<Message>,
}

struct Cursor<'a> {
    text: &'a str,
    pos: usize,
    line: usize,
    path: &'a str,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }
    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        if c == '\n' {
            self.line += 1;
        }
        Some(c)
    }
    fn err(&self, reason: impl Into<String>) -> Error {
        Error::Modelfile {
            path: self.path.to_string(),
            line: self.line,
            reason: reason.into(),
        }
    }
    fn skip_blanks(&mut self) {
        while self
            .peek()
            .is_some_and(|c| c == ' ' || c == '\t' || c == '\r')
        {
            self.bump();
        }
    }
    fn word(&mut self) -> String {
        let mut w = String::new();
        while let Some(c) = self.peek().filter(|c| !c.is_whitespace()) {
            w.push(c);
            self.bump();
        }
        w
    }
    fn rest_of_line(&mut self) -> String {
        let mut s = String::new();
        while let Some(c) = self.peek().filter(|&c| c != '\n') {
            s.push(c);
            self.bump();
        }
        s.trim().to_string()
    }
    /// A value: `"""..."""`, `"..."` (with `\"` and `\\` escapes), or the rest of the line.
    fn value(&mut self, what: &str) -> Result<String> {
        self.skip_blanks();
        let start_line = self.line;
        let v = if self.text[self.pos..].starts_with("\"\"\"") {
            self.pos += 3;
            let Some(end) = self.text[self.pos..].find("\"\"\"") else {
                return Err(self.err(format!("{what}: unterminated \"\"\" string")));
            };
            let v = self.text[self.pos..self.pos + end].to_string();
            self.line += v.matches('\n').count();
            self.pos += end + 3;
            v
        } else if self.peek() == Some('"') {
            self.bump();
            let mut v = String::new();
            loop {
                match self.bump() {
                    None => {
                        self.line = start_line;
                        return Err(self.err(format!("{what}: unterminated quoted string")));
                    }
                    Some('"') => break,
                    Some('\\') => match self.bump() {
                        Some('n') => v.push('\n'),
                        Some('t') => v.push('\t'),
                        Some(c) => v.push(c),
                        None => return Err(self.err(format!("{what}: unterminated quoted string"))),
                    },
                    Some(c) => v.push(c),
                }
            }
            v
        } else {
            self.rest_of_line()
        };
        let trailing = self.rest_of_line();
        if !trailing.is_empty() {
            return Err(self.err(format!("{what}: unexpected {trailing:?} after the value")));
        }
        Ok(v)
    }
}

impl Modelfile {
    /// Parses Modelfile text; `path` names it in errors.
    pub fn parse(text: &str, path: &str) -> Result<Modelfile> {
        let mut c = Cursor {
            text,
            pos: 0,
            line: 1,
            path,
        };
        let mut mf = Modelfile::default();
        let mut have_from = false;
        loop {
            while c.peek().is_some_and(char::is_whitespace) {
                c.bump();
            }
            let Some(first) = c.peek() else { break };
            if first == '#' {
                c.rest_of_line();
                continue;
            }
            let command = c.word().to_ascii_uppercase();
            match command.as_str() {
                "FROM" => {
                    if have_from {
                        return Err(c.err("FROM given twice"));
                    }
                    mf.from = c.value("FROM")?;
                    have_from = true;
                }
                "ADAPTER" => mf.adapters.push(c.value("ADAPTER")?),
                "PARAMETER" => {
                    c.skip_blanks();
                    let key = c.word().to_ascii_lowercase();
                    if key.is_empty() {
                        return Err(c.err("PARAMETER needs a name and a value"));
                    }
                    let value = c.value("PARAMETER")?;
                    mf.parameters.push((key, value));
                }
                "TEMPLATE" => mf.template = Some(c.value("TEMPLATE")?),
                "SYSTEM" => mf.system = Some(c.value("SYSTEM")?),
                "LICENSE" => mf.license.push(c.value("LICENSE")?),
                "MESSAGE" => {
                    c.skip_blanks();
                    let role = c.word().to_ascii_lowercase();
                    if !matches!(role.as_str(), "system" | "user" | "assistant" | "tool") {
                        return Err(c.err(format!(
                            "MESSAGE role {role:?} is not system, user, assistant or tool"
                        )));
                    }
                    let content = c.value("MESSAGE")?;
                    mf.messages.push(Message { role, content });
                }
                // Minimum-version requirements concern Ollama's own releases.
                "REQUIRES" => {
                    c.value("REQUIRES")?;
                }
                other => return Err(c.err(format!("unknown instruction {other:?}"))),
            }
        }
        if mf.from.is_empty() {
            return Err(Error::Modelfile {
                path: path.to_string(),
                line: c.line,
                reason: "no FROM line".into(),
            });
        }
        Ok(mf)
    }

    /// Types the parameters and builds what `Store::create` takes.
    pub fn to_spec(&self) -> Result<CreateSpec> {
        if let Some(a) = self.adapters.first() {
            return Err(Error::Unsupported(format!(
                "ADAPTER {a}: LoRA adapters are not supported yet"
            )));
        }
        let pairs: Vec<(&str, &str)> = self
            .parameters
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Ok(CreateSpec {
            from: self.from.clone(),
            template: self.template.clone(),
            system: self.system.clone(),
            parameters: typed_parameters(&pairs)?,
            license: self.license.clone(),
            messages: self.messages.clone(),
        })
    }
}

enum Kind {
    Int,
    Float,
    Bool,
    StringList,
}

fn kind_of(key: &str) -> Option<Kind> {
    Some(match key {
        "num_ctx" | "num_batch" | "num_gpu" | "main_gpu" | "num_thread" | "num_keep"
        | "num_predict" | "top_k" | "seed" | "repeat_last_n" | "mirostat" => Kind::Int,
        "temperature" | "top_p" | "min_p" | "typical_p" | "repeat_penalty" | "presence_penalty"
        | "frequency_penalty" | "mirostat_tau" | "mirostat_eta" | "tfs_z" => Kind::Float,
        "use_mmap" | "use_mlock" | "numa" | "penalize_newline" | "low_vram" | "vocab_only" => {
            Kind::Bool
        }
        "stop" => Kind::StringList,
        _ => return None,
    })
}

/// Ollama's params layer JSON: numbers and booleans typed, `stop` a list (repeated lines add to it).
pub fn typed_parameters(pairs: &[(&str, &str)]) -> Result<Map<String, Value>> {
    let mut out = Map::new();
    for &(key, raw) in pairs {
        let bad =
            |what: &str| Error::Unsupported(format!("PARAMETER {key} {raw:?}: expected {what}"));
        let value = match kind_of(key)
            .ok_or_else(|| Error::Unsupported(format!("unknown PARAMETER {key:?}")))?
        {
            Kind::Int => Value::from(raw.trim().parse::<i64>().map_err(|_| bad("an integer"))?),
            Kind::Float => {
                let f = raw.trim().parse::<f64>().map_err(|_| bad("a number"))?;
                serde_json::Number::from_f64(f)
                    .map(Value::Number)
                    .ok_or_else(|| bad("a finite number"))?
            }
            Kind::Bool => Value::Bool(match raw.trim().to_ascii_lowercase().as_str() {
                "true" | "1" => true,
                "false" | "0" => false,
                _ => return Err(bad("true or false")),
            }),
            Kind::StringList => {
                let list = out
                    .entry(key.to_string())
                    .or_insert_with(|| Value::Array(Vec::new()));
                if let Value::Array(items) = list {
                    items.push(Value::String(raw.to_string()));
                }
                continue;
            }
        };
        out.insert(key.to_string(), value);
    }
    Ok(out)
}

/// A Modelfile that recreates a model, as `ollama show --modelfile` prints.
pub fn render_modelfile(m: &ResolvedModel) -> String {
    let mut s = String::new();
    s.push_str("# Modelfile generated by \"smelt show\"\n");
    s.push_str("# To build a new Modelfile based on this, replace FROM with:\n");
    s.push_str(&format!("# FROM {}\n\n", m.name));
    s.push_str(&format!("FROM {}\n", m.gguf_path.display()));
    if let Some(t) = &m.template {
        s.push_str(&format!("TEMPLATE {}\n", quote(t)));
    }
    if let Some(sys) = &m.system {
        s.push_str(&format!("SYSTEM {}\n", quote(sys)));
    }
    for (k, v) in &m.params {
        match v {
            Value::Array(items) => {
                for item in items {
                    s.push_str(&format!("PARAMETER {k} {}\n", quote(&plain(item))));
                }
            }
            other => s.push_str(&format!("PARAMETER {k} {}\n", plain(other))),
        }
    }
    for l in &m.license {
        s.push_str(&format!("LICENSE {}\n", quote(l)));
    }
    for msg in &m.messages {
        s.push_str(&format!("MESSAGE {} {}\n", msg.role, quote(&msg.content)));
    }
    s
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `"""..."""` keeps text verbatim unless it contains `"""`, which only an escaped string can hold.
fn quote(s: &str) -> String {
    if !s.contains("\"\"\"") && !s.ends_with('"') {
        return format!("\"\"\"{s}\"\"\"");
    }
    let escaped = s
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    format!("\"{escaped}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"
# a comment
FROM ./model.gguf
PARAMETER temperature 0.7
PARAMETER stop "<|im_end|>"
parameter stop <|endoftext|>
PARAMETER num_ctx 4096
TEMPLATE """{{ .System }}
{{ .Prompt }}"""
SYSTEM "You are \"terse\"."
LICENSE """MIT"""
MESSAGE user Hello there
MESSAGE assistant "Hi!"
"#;

    #[test]
    fn parses_every_instruction() {
        let mf = Modelfile::parse(TEXT, "Modelfile").unwrap();
        assert_eq!(mf.from, "./model.gguf");
        assert_eq!(mf.template.as_deref(), Some("{{ .System }}\n{{ .Prompt }}"));
        assert_eq!(mf.system.as_deref(), Some("You are \"terse\"."));
        assert_eq!(mf.license, vec!["MIT".to_string()]);
        assert_eq!(
            mf.messages[0],
            Message {
                role: "user".into(),
                content: "Hello there".into()
            }
        );
        assert_eq!(mf.messages[1].content, "Hi!");
        let spec = mf.to_spec().unwrap();
        assert_eq!(
            Value::Object(spec.parameters),
            serde_json::json!({"temperature": 0.7, "stop": ["<|im_end|>", "<|endoftext|>"], "num_ctx": 4096})
        );
    }

    #[test]
    fn errors_name_the_line() {
        for (text, line, needle) in [
            ("FROM x\nBOGUS y\n", 2, "unknown instruction \"BOGUS\""),
            ("PARAMETER temperature 1\n", 2, "no FROM"),
            ("FROM x\n\nSYSTEM \"\"\"open\n", 3, "unterminated"),
            ("FROM x\nMESSAGE robot hi\n", 2, "MESSAGE role"),
            ("FROM x\nSYSTEM \"a\" b\n", 2, "unexpected \"b\""),
            ("FROM x\nFROM y\n", 2, "twice"),
        ] {
            let e = Modelfile::parse(text, "MF").unwrap_err();
            let Error::Modelfile {
                line: l, reason, ..
            } = &e
            else {
                panic!("{e}")
            };
            assert_eq!(*l, line, "{text:?}: {e}");
            assert!(reason.contains(needle), "{e}");
        }
    }

    #[test]
    fn parameter_types_are_checked() {
        assert!(typed_parameters(&[("num_ctx", "4k")])
            .unwrap_err()
            .to_string()
            .contains("integer"));
        assert!(typed_parameters(&[("flavour", "1")])
            .unwrap_err()
            .to_string()
            .contains("unknown PARAMETER"));
        assert_eq!(
            typed_parameters(&[("use_mmap", "false")]).unwrap()["use_mmap"],
            Value::Bool(false)
        );
        let mf = Modelfile {
            from: "x".into(),
            adapters: vec!["lora.gguf".into()],
            ..Default::default()
        };
        assert!(mf.to_spec().unwrap_err().to_string().contains("ADAPTER"));
    }
}
