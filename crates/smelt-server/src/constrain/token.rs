//! Grammar constraints at the token level: which vocabulary entries may come next.
//!
//! The vocabulary is sorted by bytes once per model. Each step walks it in order, reusing the
//! matcher state of the longest prefix shared with the previous token, and skips every token
//! that extends a prefix the grammar already rejected: the cost is that of walking the trie of
//! accepted prefixes, without building a trie.

use std::sync::Arc;

use smelt_engine::TokenConstraint;

use super::grammar::Grammar;
use super::matcher::State;

/// A model's vocabulary as byte strings, sorted for the walk.
#[derive(Debug)]
pub struct TokenTable {
    /// Bytes of each token id; empty for tokens a constrained output may never contain (control tokens).
    bytes: Vec<Vec<u8>>,
    /// Ids of the usable tokens, sorted by their bytes.
    sorted: Vec<u32>,
    /// `lcp[i]`: length of the common prefix of `sorted[i - 1]` and `sorted[i]` (0 for i = 0).
    lcp: Vec<u32>,
    /// End-of-generation tokens (allowed once the value is complete).
    eog: Vec<u32>,
    max_len: usize,
}

impl TokenTable {
    /// `bytes[id]` is the text of token `id`; `usable(id)` says whether it may appear in constrained
    /// output (false for control tokens); `eog` are the end-of-generation ids.
    pub fn new(bytes: Vec<Vec<u8>>, usable: impl Fn(u32) -> bool, eog: Vec<u32>) -> TokenTable {
        let mut bytes = bytes;
        for (id, b) in bytes.iter_mut().enumerate() {
            if !usable(id as u32) {
                b.clear();
            }
        }
        let mut sorted: Vec<u32> = (0..bytes.len() as u32)
            .filter(|&i| !bytes[i as usize].is_empty())
            .collect();
        sorted.sort_by(|&a, &b| bytes[a as usize].cmp(&bytes[b as usize]));
        let mut lcp = vec![0u32; sorted.len()];
        for i in 1..sorted.len() {
            let (a, b) = (&bytes[sorted[i - 1] as usize], &bytes[sorted[i] as usize]);
            lcp[i] = a.iter().zip(b.iter()).take_while(|(x, y)| x == y).count() as u32;
        }
        let max_len = bytes.iter().map(|b| b.len()).max().unwrap_or(0);
        TokenTable {
            bytes,
            sorted,
            lcp,
            eog,
            max_len,
        }
    }

    pub fn n_vocab(&self) -> usize {
        self.bytes.len()
    }

    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.bytes
            .get(id as usize)
            .map(|b| b.as_slice())
            .unwrap_or(&[])
    }

    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// Ids whose bytes are exactly `b`.
    fn exact<'a>(&'a self, b: &'a [u8]) -> impl Iterator<Item = u32> + 'a {
        let start = self
            .sorted
            .partition_point(|&id| self.bytes[id as usize].as_slice() < b);
        self.sorted[start..]
            .iter()
            .copied()
            .take_while(move |&id| self.bytes[id as usize] == b)
    }
}

/// Constrains generation to one value of a grammar (JSON schema, any JSON object, a tool call).
pub struct GrammarConstraint {
    grammar: Arc<Grammar>,
    table: Arc<TokenTable>,
    state: State,
    /// Tokens left before generation is cut off; near the end the output is steered to close.
    remaining: Option<usize>,
    scratch: Vec<State>,
    allowed: Vec<bool>,
    /// A token the grammar rejected was accepted anyway (the engine ignored the mask).
    broken: bool,
}

/// Check every candidate against the budget once this few tokens more than the closing text are left.
const TIGHT_LOOKAHEAD: usize = 16;

impl GrammarConstraint {
    /// `budget`: how many tokens generation may produce at most (max_tokens and the context room).
    pub fn new(
        grammar: Arc<Grammar>,
        table: Arc<TokenTable>,
        budget: Option<usize>,
    ) -> GrammarConstraint {
        let state = State::new(&grammar);
        let scratch = vec![state.clone(); table.max_len + 1];
        let allowed = vec![false; table.n_vocab()];
        GrammarConstraint {
            grammar,
            table,
            state,
            remaining: budget,
            scratch,
            allowed,
            broken: false,
        }
    }

    /// The bytes accepted so far form a complete value.
    pub fn is_complete(&self) -> bool {
        self.state.is_complete()
    }

    /// Which tokens may come next (indexed by token id).
    pub fn allowed(&mut self) -> &[bool] {
        self.compute_allowed();
        &self.allowed
    }

    fn compute_allowed(&mut self) {
        let g = &*self.grammar;
        let t = &*self.table;
        self.allowed.fill(false);
        let mut any = false;

        // Near the end of the budget, only tokens after which the value can still be closed in
        // the tokens left (at worst one byte per token) are allowed.
        let closing_len = self.state.closing(g).len();
        let tight = self
            .remaining
            .filter(|&left| left <= closing_len + TIGHT_LOOKAHEAD);

        let scratch = &mut self.scratch;
        scratch[0].assign_from(&self.state);
        // scratch[d] holds the state after the first d bytes of the previous token; valid up to `valid`.
        let mut valid = 0usize;
        let mut i = 0usize;
        while i < t.sorted.len() {
            let id = t.sorted[i];
            let bytes = &t.bytes[id as usize];
            valid = valid.min(t.lcp[i] as usize);
            let mut failed_at = None;
            let mut d = valid;
            while d < bytes.len() {
                let (head, tail) = scratch.split_at_mut(d + 1);
                tail[0].assign_from(&head[d]);
                if !tail[0].feed(g, bytes[d]) {
                    failed_at = Some(d);
                    break;
                }
                d += 1;
                valid = d;
            }
            i += 1;
            match failed_at {
                None => {
                    let fits = match tight {
                        Some(left) => scratch[bytes.len()].closing(g).len() < left,
                        None => true,
                    };
                    if fits {
                        self.allowed[id as usize] = true;
                        any = true;
                    }
                }
                Some(d) => {
                    // Every following token sharing the rejected prefix bytes[..=d] is rejected too.
                    while i < t.sorted.len() && t.lcp[i] as usize > d {
                        i += 1;
                    }
                    valid = valid.min(d);
                }
            }
        }
        if !any && tight.is_some() {
            // Follow the shortest way to a complete value.
            let closing = self.state.closing(g);
            for k in 1..=closing.len() {
                for id in t.exact(&closing[..k]) {
                    self.allowed[id as usize] = true;
                    any = true;
                }
            }
        }
        if self.state.can_end(g) || !any {
            // Complete values may end; and when nothing fits (a vocabulary that cannot spell the
            // value) ending beats sampling from an all -inf distribution.
            for &id in &t.eog {
                if let Some(a) = self.allowed.get_mut(id as usize) {
                    *a = true;
                }
            }
        }
    }
}

impl TokenConstraint for GrammarConstraint {
    fn mask(&mut self, logits: &mut [f32]) {
        self.compute_allowed();
        for (i, l) in logits.iter_mut().enumerate() {
            if !self.allowed.get(i).copied().unwrap_or(false) {
                *l = f32::NEG_INFINITY;
            }
        }
    }

    fn accept(&mut self, token: u32) -> bool {
        if self.broken || self.table.is_eog(token) {
            return true;
        }
        let g = &*self.grammar;
        for &b in self.table.token_bytes(token) {
            if !self.state.feed(g, b) {
                self.broken = true;
                return true;
            }
        }
        if self.table.token_bytes(token).is_empty() {
            // A control token the mask forbade: stop rather than continue off-grammar.
            self.broken = true;
            return true;
        }
        if let Some(r) = &mut self.remaining {
            *r = r.saturating_sub(1);
        }
        self.state.is_complete()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::constrain::matcher::matches;
    use crate::constrain::ordered::OrderedJson;

    /// A vocabulary like a real BPE one: every single byte, plus common multi-byte pieces.
    fn vocab() -> (Vec<Vec<u8>>, u32) {
        let mut v: Vec<Vec<u8>> = (0u8..=255).map(|b| vec![b]).collect();
        for piece in [
            "{\"",
            "\":",
            "\": ",
            ", \"",
            "\"}",
            "name",
            "age",
            " \"",
            "true",
            "false",
            "null",
            "12",
            "3.5",
            "},",
            "]}",
            "hello world",
            "\",",
            "\"]",
            "[\"",
            "abc",
            "é",
            "<|end|>",
        ] {
            v.push(piece.as_bytes().to_vec());
        }
        let eog = (v.len() - 1) as u32;
        (v, eog)
    }

    fn table() -> Arc<TokenTable> {
        let (v, eog) = vocab();
        Arc::new(TokenTable::new(v, move |id| id != eog, vec![eog]))
    }

    /// Sample deterministically among allowed tokens, preferring the longest ("greedy" for text).
    fn run(
        c: &mut GrammarConstraint,
        t: &TokenTable,
        pick: &mut impl FnMut(&[u32]) -> u32,
        max: usize,
    ) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        for _ in 0..max {
            let allowed: Vec<u32> = c
                .allowed()
                .iter()
                .enumerate()
                .filter(|(_, a)| **a)
                .map(|(i, _)| i as u32)
                .collect();
            assert!(!allowed.is_empty());
            let tok = pick(&allowed);
            if t.is_eog(tok) {
                return (out, true);
            }
            out.extend_from_slice(t.token_bytes(tok));
            if c.accept(tok) {
                return (out, true);
            }
        }
        (out, false)
    }

    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *seed >> 33
    }

    #[test]
    fn mask_matches_brute_force() {
        let t = table();
        let g = Arc::new(Grammar::any_object());
        let mut c = GrammarConstraint::new(g.clone(), t.clone(), None);
        let mut seed = 7u64;
        for _ in 0..40 {
            let fast: Vec<bool> = c.allowed().to_vec();
            for id in 0..t.n_vocab() as u32 {
                let mut s = c.state.clone();
                let bytes = t.token_bytes(id);
                let ok = !bytes.is_empty() && bytes.iter().all(|&b| s.feed(&g, b));
                let expect = ok || (t.is_eog(id) && c.state.can_end(&g));
                assert_eq!(
                    fast[id as usize],
                    expect,
                    "token {:?}",
                    String::from_utf8_lossy(bytes)
                );
            }
            let allowed: Vec<u32> = (0..t.n_vocab() as u32)
                .filter(|&i| fast[i as usize] && !t.is_eog(i))
                .collect();
            if allowed.is_empty() {
                break;
            }
            let tok = allowed[lcg(&mut seed) as usize % allowed.len()];
            if c.accept(tok) {
                break;
            }
        }
    }

    #[test]
    fn random_walks_always_produce_valid_json_within_budget() {
        let t = table();
        let schema: OrderedJson = serde_json::from_str(
            r#"{"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer"},"tags":{"type":"array","items":{"type":"string"}}},"required":["name","age"]}"#,
        )
        .unwrap();
        for g in [
            Arc::new(Grammar::any_object()),
            Arc::new(Grammar::from_schema(&schema).unwrap()),
        ] {
            for seed0 in 0..30u64 {
                // The schema's shortest value is 20 bytes: budgets from 22 tokens up must always close.
                let budget = 22 + (seed0 as usize % 40);
                let mut c = GrammarConstraint::new(g.clone(), t.clone(), Some(budget));
                let mut seed = seed0;
                let (out, done) = run(
                    &mut c,
                    &t,
                    &mut |a| a[lcg(&mut seed) as usize % a.len()],
                    budget,
                );
                assert!(
                    done,
                    "seed {seed0}: not finished in {budget} tokens: {}",
                    String::from_utf8_lossy(&out)
                );
                assert!(
                    matches(&g, &out),
                    "seed {seed0}: {}",
                    String::from_utf8_lossy(&out)
                );
                let v: serde_json::Value = serde_json::from_slice(&out).expect("parses");
                assert!(v.is_object());
            }
        }
    }

    #[test]
    fn forced_tool_call_is_valid() {
        let t = table();
        let tools = vec![(
            "greet".to_string(),
            serde_json::from_str(
                r#"{"type":"object","properties":{"name":{"type":"string"}},"required":["name"]}"#,
            )
            .unwrap(),
        )];
        let g = Arc::new(Grammar::tool_call(&tools, "name", "arguments").unwrap());
        let mut seed = 3;
        let mut c = GrammarConstraint::new(g.clone(), t.clone(), Some(40));
        let (out, done) = run(
            &mut c,
            &t,
            &mut |a| a[lcg(&mut seed) as usize % a.len()],
            40,
        );
        assert!(done);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["name"], "greet");
        assert!(v["arguments"]["name"].is_string());
    }

    #[test]
    fn control_tokens_are_never_allowed_inside_strings() {
        let t = table();
        let g = Arc::new(Grammar::any_object());
        let mut c = GrammarConstraint::new(g, t.clone(), None);
        for tok in [b"{\"".as_slice(), b"abc"] {
            let id = (0..t.n_vocab() as u32)
                .find(|&i| t.token_bytes(i) == tok)
                .unwrap();
            assert!(!c.accept(id));
        }
        let eog = t.eog[0];
        assert!(!c.allowed()[eog as usize]);
    }
}
