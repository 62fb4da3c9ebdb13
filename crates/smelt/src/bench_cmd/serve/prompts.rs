//! Prompts of an exact token length built from the model's own vocabulary, with a prefix that
//! all requests share and a tail unique to each request.
//!
//! A prompt is a run of whole-word tokens (" apple", " river", ...): each word is one token on
//! its own, and because the pre-tokenizer splits at spaces, a run of them tokenizes back to the
//! same tokens, so `n` words are `n` prompt tokens (plus the BOS the server adds) and a prefix of
//! the text is a prefix of the tokens, which is what a prefix cache keys on.

use anyhow::{bail, Result};
use smelt_tokenizer::Tokenizer;

/// Fewest words the vocabulary must offer: with fewer, "unique" tails would repeat.
const MIN_WORDS: usize = 256;
/// Words kept; more adds nothing but start-up time.
const MAX_WORDS: usize = 4096;

/// The single-token words of a vocabulary.
pub struct WordTable {
    words: Vec<String>,
}

impl WordTable {
    /// Every token whose text is a space and 3 to 10 lowercase ASCII letters and that encodes
    /// back to itself alone.
    pub fn from_tokenizer(tok: &Tokenizer) -> Result<WordTable> {
        let mut words = Vec::new();
        for id in 0..tok.vocab_size() as u32 {
            if tok.is_control(id) {
                continue;
            }
            let text = tok.decode(&[id]);
            let Some(letters) = text.strip_prefix(' ') else {
                continue;
            };
            if !(3..=10).contains(&letters.len())
                || !letters.bytes().all(|b| b.is_ascii_lowercase())
            {
                continue;
            }
            if tok.encode(&text, false, false) == [id] {
                words.push(text);
                if words.len() == MAX_WORDS {
                    break;
                }
            }
        }
        if words.len() < MIN_WORDS {
            bail!(
                "the model's vocabulary has {} single-token words, the serving benchmark needs {MIN_WORDS} to build prompts",
                words.len()
            );
        }
        Ok(WordTable { words })
    }

    /// `n` words drawn from the stream seeded by `seed`, appended to `out`.
    pub fn push_words(&self, seed: u64, n: usize, out: &mut String) {
        let mut rng = SplitMix64(seed);
        for _ in 0..n {
            let i = (rng.next() % self.words.len() as u64) as usize;
            out.push_str(&self.words[i]);
        }
    }
}

/// How the prompts of a run are shaped.
#[derive(Clone, Copy, Debug)]
pub struct PromptShape {
    /// Words per prompt.
    pub tokens: usize,
    /// Leading words common to every prompt of the run.
    pub shared: usize,
    /// Distinguishes this run's unique tails from another run's against the same server.
    pub nonce: u64,
}

/// Seed of the shared prefix: fixed, so repeated runs against one server share it too.
const PREFIX_SEED: u64 = 0x5EED_0F5A_4ED0_0001;

impl PromptShape {
    /// `tokens` words of which the first `round(tokens * shared_ratio)` are shared.
    pub fn new(tokens: usize, shared_ratio: f64, nonce: u64) -> PromptShape {
        let shared = ((tokens as f64 * shared_ratio).round() as usize).min(tokens);
        PromptShape {
            tokens,
            shared,
            nonce,
        }
    }

    /// The prompt of request `index` of client `client` in phase `phase` (warm-up or measured).
    pub fn prompt(&self, words: &WordTable, phase: u64, client: u64, index: u64) -> String {
        let mut s = String::with_capacity(self.tokens * 8);
        words.push_words(PREFIX_SEED, self.shared, &mut s);
        let seed = mix(mix(mix(self.nonce ^ phase) ^ client) ^ index);
        words.push_words(seed, self.tokens - self.shared, &mut s);
        s
    }
}

/// A 64-bit mixing step (splitmix64's finaliser).
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0.wrapping_sub(0x9E37_79B9_7F4A_7C15))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(model: &str) -> (Tokenizer, WordTable) {
        let g = smelt_gguf::Gguf::open(smelt_testutil::model_path(model)).unwrap();
        let tok = Tokenizer::from_gguf(&g).unwrap();
        let words = WordTable::from_tokenizer(&tok).unwrap();
        (tok, words)
    }

    fn check_lengths(model: &str) {
        let (tok, words) = table(model);
        let shape = PromptShape::new(200, 0.25, 7);
        assert_eq!(shape.shared, 50);
        let a = shape.prompt(&words, 1, 0, 0);
        let b = shape.prompt(&words, 1, 1, 0);
        let ta = tok.encode(&a, false, false);
        let tb = tok.encode(&b, false, false);
        assert_eq!((ta.len(), tb.len()), (200, 200), "{model}");
        // The first 50 tokens are shared, the tails differ.
        assert_eq!(ta[..50], tb[..50]);
        assert_ne!(ta[50..], tb[50..]);
        // Same coordinates, same prompt; another index, another tail.
        assert_eq!(a, shape.prompt(&words, 1, 0, 0));
        assert_ne!(a, shape.prompt(&words, 1, 0, 1));
    }

    #[test]
    fn prompts_have_exact_token_counts_and_a_shared_prefix() {
        check_lengths(smelt_testutil::SMOLLM2);
        check_lengths(smelt_testutil::GEMMA3);
    }
}
