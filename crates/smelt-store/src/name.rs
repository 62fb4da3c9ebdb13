//! Model names: `[host/][namespace/]model[:tag]`, with Ollama's defaults.
//!
//! A name maps one to one onto a manifest path (`manifests/host/namespace/model/tag`), so each part is
//! validated to be a safe single path component: it starts with an ASCII letter, digit or `_` (so `.`
//! and `..` are impossible), and the rest are letters, digits, `_`, `-` and `.` (the host may also
//! carry a `:port`).

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// The registry a bare name refers to.
pub const DEFAULT_HOST: &str = "registry.ollama.ai";
/// The namespace a name without one refers to.
pub const DEFAULT_NAMESPACE: &str = "library";
/// The tag a name without one refers to.
pub const DEFAULT_TAG: &str = "latest";

const MAX_HOST: usize = 350;
const MAX_PART: usize = 80;

/// A fully qualified model name. Parse with [`ModelName::parse`]; `Display` gives the short form
/// (`smollm2:135m`, `ns/model:tag`, or `host/ns/model:tag`), which parses back to the same name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelName {
    host: String,
    namespace: String,
    model: String,
    tag: String,
}

impl ModelName {
    /// Parses `[scheme://][host/][namespace/]model[:tag]`, filling in the defaults.
    pub fn parse(s: &str) -> Result<ModelName> {
        let bad = |reason: &str| Error::InvalidName {
            name: s.to_string(),
            reason: reason.to_string(),
        };
        let mut rest = s;
        for scheme in ["https://", "http://"] {
            if let Some(r) = rest.strip_prefix(scheme) {
                rest = r;
            }
        }
        // A ':' after the last '/' starts the tag; one before it belongs to a host's port.
        let mut tag = DEFAULT_TAG;
        if let Some(colon) = rest.rfind(':') {
            if rest.rfind('/').is_none_or(|slash| colon > slash) {
                tag = &rest[colon + 1..];
                rest = &rest[..colon];
            }
        }
        let mut parts = rest.rsplitn(3, '/');
        let model = parts.next().unwrap_or_default();
        let namespace = parts.next().unwrap_or(DEFAULT_NAMESPACE);
        let host = parts.next().unwrap_or(DEFAULT_HOST);
        check_part(model, MAX_PART, false).map_err(|r| bad(&format!("model {r}")))?;
        check_part(namespace, MAX_PART, false).map_err(|r| bad(&format!("namespace {r}")))?;
        check_part(host, MAX_HOST, true).map_err(|r| bad(&format!("host {r}")))?;
        check_part(tag, MAX_PART, false).map_err(|r| bad(&format!("tag {r}")))?;
        Ok(ModelName {
            host: host.to_string(),
            namespace: namespace.to_string(),
            model: model.to_string(),
            tag: tag.to_string(),
        })
    }

    /// Builds a name from its four parts, validating each.
    pub fn from_parts(host: &str, namespace: &str, model: &str, tag: &str) -> Result<ModelName> {
        let name = ModelName::parse(&format!("{host}/{namespace}/{model}:{tag}"))?;
        if name.host != host
            || name.namespace != namespace
            || name.model != model
            || name.tag != tag
        {
            return Err(Error::InvalidName {
                name: format!("{host}/{namespace}/{model}:{tag}"),
                reason: "a part contains '/' or ':'".into(),
            });
        }
        Ok(name)
    }

    pub fn host(&self) -> &str {
        &self.host
    }
    pub fn namespace(&self) -> &str {
        &self.namespace
    }
    pub fn model(&self) -> &str {
        &self.model
    }
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The same name with another tag.
    pub fn with_tag(&self, tag: &str) -> Result<ModelName> {
        ModelName::from_parts(&self.host, &self.namespace, &self.model, tag)
    }

    /// `host/namespace/model:tag`, never shortened.
    pub fn full(&self) -> String {
        format!(
            "{}/{}/{}:{}",
            self.host, self.namespace, self.model, self.tag
        )
    }

    /// The manifest's path below `manifests/`, one component per part.
    pub fn manifest_rel_path(&self) -> std::path::PathBuf {
        [&self.host, &self.namespace, &self.model, &self.tag]
            .iter()
            .collect()
    }

    /// True for names on Hugging Face (`hf.co/ORG/REPO[:QUANT]`).
    pub fn is_hugging_face(&self) -> bool {
        let h = self.host.to_ascii_lowercase();
        h == "hf.co" || h == "huggingface.co"
    }

    /// Names compare case-insensitively when looking a model up (as Ollama's do), while display keeps case.
    pub fn eq_ignore_case(&self, other: &ModelName) -> bool {
        self.full().eq_ignore_ascii_case(&other.full())
    }
}

fn check_part(part: &str, max: usize, is_host: bool) -> std::result::Result<(), String> {
    if part.is_empty() {
        return Err("is empty".into());
    }
    if part.len() > max {
        return Err(format!("is {} bytes long, the limit is {max}", part.len()));
    }
    let first = part.as_bytes()[0];
    if !(first.is_ascii_alphanumeric() || first == b'_') {
        return Err(format!("{part:?} must start with a letter, digit or '_'"));
    }
    let ok = |c: u8| {
        c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.') || (is_host && c == b':')
    };
    if let Some(c) = part.bytes().find(|&c| !ok(c)) {
        return Err(format!("{part:?} contains {:?}", c as char));
    }
    Ok(())
}

impl fmt::Display for ModelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host != DEFAULT_HOST {
            write!(f, "{}/{}/", self.host, self.namespace)?;
        } else if self.namespace != DEFAULT_NAMESPACE {
            write!(f, "{}/", self.namespace)?;
        }
        write!(f, "{}:{}", self.model, self.tag)
    }
}

impl FromStr for ModelName {
    type Err = Error;
    fn from_str(s: &str) -> Result<ModelName> {
        ModelName::parse(s)
    }
}

impl serde::Serialize for ModelName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ModelName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ModelName::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The property the fuzz target and the randomized test check: parsing never panics, a parsed
/// name's parts are safe path components, and display parses back to the same name.
pub fn check_round_trip(input: &str) -> std::result::Result<(), String> {
    let Ok(name) = ModelName::parse(input) else {
        return Ok(());
    };
    for part in [&name.namespace, &name.model, &name.tag] {
        if part.contains(['/', '\\', ':']) || part == "." || part == ".." {
            return Err(format!("{input:?} gave an unsafe part {part:?}"));
        }
    }
    let shown = name.to_string();
    let again =
        ModelName::parse(&shown).map_err(|e| format!("{input:?} displayed as {shown:?}: {e}"))?;
    if again != name {
        return Err(format!("{input:?} -> {name:?} -> {shown:?} -> {again:?}"));
    }
    let full =
        ModelName::parse(&name.full()).map_err(|e| format!("full form of {input:?}: {e}"))?;
    if full != name {
        return Err(format!("full form of {input:?} parsed as {full:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(s: &str) -> (String, String, String, String) {
        let n = ModelName::parse(s).unwrap();
        (
            n.host.clone(),
            n.namespace.clone(),
            n.model.clone(),
            n.tag.clone(),
        )
    }

    #[test]
    fn defaults_follow_ollama() {
        assert_eq!(
            parts("smollm2"),
            (
                DEFAULT_HOST.into(),
                "library".into(),
                "smollm2".into(),
                "latest".into()
            )
        );
        assert_eq!(parts("smollm2:135m").3, "135m");
        assert_eq!(
            parts("me/mine:v1"),
            (DEFAULT_HOST.into(), "me".into(), "mine".into(), "v1".into())
        );
        assert_eq!(
            parts("hf.co/bartowski/SmolLM2-135M-Instruct-GGUF:Q4_K_M"),
            (
                "hf.co".into(),
                "bartowski".into(),
                "SmolLM2-135M-Instruct-GGUF".into(),
                "Q4_K_M".into()
            )
        );
    }

    #[test]
    fn host_port_is_not_a_tag() {
        assert_eq!(
            parts("127.0.0.1:5000/library/smollm2:135m"),
            (
                "127.0.0.1:5000".into(),
                "library".into(),
                "smollm2".into(),
                "135m".into()
            )
        );
        assert_eq!(parts("127.0.0.1:5000/library/smollm2").3, "latest");
        assert_eq!(
            parts("http://127.0.0.1:5000/library/smollm2").0,
            "127.0.0.1:5000"
        );
    }

    #[test]
    fn display_is_short_and_round_trips() {
        for (input, shown) in [
            ("smollm2", "smollm2:latest"),
            ("registry.ollama.ai/library/smollm2:135m", "smollm2:135m"),
            ("registry.ollama.ai/me/x:1", "me/x:1"),
            ("hf.co/org/repo", "hf.co/org/repo:latest"),
            ("localhost:1/a/b:c", "localhost:1/a/b:c"),
        ] {
            let n = ModelName::parse(input).unwrap();
            assert_eq!(n.to_string(), shown);
            assert_eq!(ModelName::parse(shown).unwrap(), n);
            check_round_trip(input).unwrap();
        }
    }

    #[test]
    fn rejects_unsafe_and_malformed_names() {
        for bad in [
            "",
            ":",
            "a:",
            ":tag",
            "a/../b",
            "../x",
            "..",
            ".hidden",
            "a/b/c/d",
            "a b",
            "a/b c",
            "x:y:z/",
            "a//b",
            "model:ta/g",
            "héllo",
            "a\\b",
            "/abs",
            "a/",
            "a:.",
            "a:..",
        ] {
            assert!(ModelName::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        let long = "a".repeat(81);
        assert!(ModelName::parse(&long).is_err());
        let err = ModelName::parse("a/b/c/d").unwrap_err().to_string();
        assert!(err.contains("\"a/b/c/d\"") && err.contains("host"), "{err}");
    }

    #[test]
    fn from_parts_rejects_separators() {
        assert!(ModelName::from_parts("h", "n", "m", "t").is_ok());
        assert!(ModelName::from_parts("h", "n/x", "m", "t").is_err());
        assert!(ModelName::from_parts("h", "n", "m", "t:u").is_err());
    }

    /// A deterministic fuzz run over strings built from the characters that matter to the grammar
    /// (the cargo-fuzz target in fuzz/ explores arbitrary bytes with the same property).
    #[test]
    fn randomized_round_trip() {
        const ALPHABET: &[u8] = b"aZ9_-.:/:/\\ @x..";
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut accepted = 0;
        for _ in 0..200_000 {
            let len = (next() % 24) as usize;
            let s: String = (0..len)
                .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize] as char)
                .collect();
            check_round_trip(&s).unwrap();
            accepted += ModelName::parse(&s).is_ok() as usize;
        }
        assert!(
            accepted > 1000,
            "the generator should produce many valid names, got {accepted}"
        );
    }
}
