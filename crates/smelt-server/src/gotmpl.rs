//! The subset of Go templates that Ollama's prompt templates use for a single turn:
//! `{{ .System }}`, `{{ .Prompt }}`, `{{ .Response }}`, `{{ if .X }} .. {{ else }} .. {{ end }}`,
//! and the `{{-`/`-}}` whitespace trims. Anything else (`range .Messages`, functions) is refused
//! with a clear error rather than rendered wrongly.

#[derive(Debug)]
enum Tok<'a> {
    Text(&'a str),
    Var(&'a str),
    If(&'a str),
    Else,
    End,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unsupported template: {0}")]
pub struct TemplateError(pub String);

fn lex(src: &str) -> Result<Vec<Tok<'_>>, TemplateError> {
    let mut out = Vec::new();
    let mut rest = src;
    let mut trim_next = false;
    while !rest.is_empty() {
        let Some(open) = rest.find("{{") else {
            out.push(Tok::Text(if trim_next { rest.trim_start() } else { rest }));
            break;
        };
        let mut text = &rest[..open];
        if trim_next {
            text = text.trim_start();
        }
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or_else(|| TemplateError("unclosed {{".into()))?;
        let mut action = &after[..close];
        if let Some(a) = action.strip_prefix('-') {
            text = text.trim_end();
            action = a;
        }
        trim_next = false;
        if let Some(a) = action.strip_suffix('-') {
            trim_next = true;
            action = a;
        }
        if !text.is_empty() {
            out.push(Tok::Text(text));
        }
        let action = action.trim();
        let tok = if let Some(cond) = action.strip_prefix("if ") {
            Tok::If(var_name(cond.trim())?)
        } else if action == "else" {
            Tok::Else
        } else if action == "end" {
            Tok::End
        } else {
            Tok::Var(var_name(action)?)
        };
        out.push(tok);
        rest = &after[close + 2..];
    }
    Ok(out)
}

fn var_name(s: &str) -> Result<&str, TemplateError> {
    match s {
        ".System" | ".Prompt" | ".Response" => Ok(&s[1..]),
        other => Err(TemplateError(format!(
            "{{{{ {other} }}}} (only .System, .Prompt, .Response and if/else/end are supported)"
        ))),
    }
}

/// Render with the given values (a missing value is empty and false).
pub fn render(
    src: &str,
    system: &str,
    prompt: &str,
    response: &str,
) -> Result<String, TemplateError> {
    let toks = lex(src)?;
    let value = |name: &str| match name {
        "System" => system,
        "Prompt" => prompt,
        _ => response,
    };
    let mut out = String::new();
    // Stack of (this branch is output, the enclosing context is output).
    let mut stack: Vec<(bool, bool)> = Vec::new();
    let mut on = true;
    for t in toks {
        match t {
            Tok::Text(s) if on => out.push_str(s),
            Tok::Var(v) if on => out.push_str(value(v)),
            Tok::Text(_) | Tok::Var(_) => {}
            Tok::If(v) => {
                stack.push((!value(v).is_empty(), on));
                on = on && !value(v).is_empty();
            }
            Tok::Else => {
                let (cond, outer) = stack
                    .last_mut()
                    .ok_or_else(|| TemplateError("else without if".into()))?;
                *cond = !*cond;
                on = *outer && *cond;
            }
            Tok::End => {
                let (_, outer) = stack
                    .pop()
                    .ok_or_else(|| TemplateError("end without if".into()))?;
                on = outer;
            }
        }
    }
    if !stack.is_empty() {
        return Err(TemplateError("if without end".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_ollama_style_templates() {
        let chatml = "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n";
        assert_eq!(
            render(chatml, "", "hi", "").unwrap(),
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            render(chatml, "be nice", "hi", "").unwrap(),
            "<|im_start|>system\nbe nice<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(render("A {{- .Prompt -}} B", "", "x", "").unwrap(), "AxB");
        assert_eq!(
            render(
                "{{ if .System }}S{{ else }}none{{ end }}:{{ .Prompt }}",
                "",
                "p",
                ""
            )
            .unwrap(),
            "none:p"
        );
    }

    #[test]
    fn refuses_what_it_cannot_render() {
        assert!(render("{{ range .Messages }}{{ end }}", "", "", "").is_err());
        assert!(render("{{ .Prompt ", "", "", "").is_err());
        assert!(render("{{ if .System }}x", "", "", "").is_err());
        assert!(render("{{ end }}", "", "", "").is_err());
    }
}
