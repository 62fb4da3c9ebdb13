//! Stop strings over streamed text: text that could still become a stop string is held back,
//! so the client never sees any part of one.

/// Buffers generated text and releases what can no longer be part of a stop string.
#[derive(Clone, Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

/// What [`StopMatcher::push`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopStep {
    /// Text safe to emit now (possibly empty).
    Emit(String),
    /// A stop string matched: emit `text` (what came before it) and end; `matched` is the stop
    /// string (Anthropic reports it as `stop_sequence`).
    Stop { text: String, matched: String },
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> StopMatcher {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> StopStep {
        self.pending.push_str(text);
        if self.stops.is_empty() {
            return StopStep::Emit(std::mem::take(&mut self.pending));
        }
        // The earliest complete match wins (the first listed among those at the same place).
        if let Some((at, i)) = self
            .stops
            .iter()
            .enumerate()
            .filter_map(|(i, s)| self.pending.find(s.as_str()).map(|at| (at, i)))
            .min()
        {
            let text = self.pending[..at].to_string();
            self.pending.clear();
            return StopStep::Stop {
                text,
                matched: self.stops[i].clone(),
            };
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        let mut keep = 0;
        for s in &self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if i > keep && self.pending.ends_with(&s[..i]) {
                    keep = i;
                }
            }
        }
        let cut = self.pending.len() - keep;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        StopStep::Emit(out)
    }

    /// The held-back text, released at the end of generation.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// Push the last text of a generation: returns everything before a stop string, or all of
    /// it with the held-back text when none matches.
    pub fn push_final(&mut self, text: &str) -> String {
        match self.push(text) {
            StopStep::Stop { text, .. } => text,
            StopStep::Emit(s) => s + &self.finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_partial_matches() {
        let mut m = StopMatcher::new(&["</end>".to_string()]);
        assert_eq!(m.push("hello </"), StopStep::Emit("hello ".into()));
        assert_eq!(m.push("e"), StopStep::Emit("".into()));
        assert_eq!(m.push("x"), StopStep::Emit("</ex".into()));
        assert_eq!(m.push("a</en"), StopStep::Emit("a".into()));
        assert_eq!(m.push("d> tail"), stop("", "</end>"));
    }

    #[test]
    fn earliest_stop_wins_and_finish_flushes() {
        let mut m = StopMatcher::new(&["bb".to_string(), "a".to_string()]);
        assert_eq!(m.push("xxbb a"), stop("xx", "bb"));
        let mut m = StopMatcher::new(&["ZZ".to_string()]);
        assert_eq!(m.push("abcZ"), StopStep::Emit("abc".into()));
        assert_eq!(m.finish(), "Z");
        let mut m = StopMatcher::new(&[]);
        assert_eq!(m.push("é"), StopStep::Emit("é".into()));
    }

    #[test]
    fn multibyte_stop_strings() {
        let mut m = StopMatcher::new(&["日本語".to_string()]);
        assert_eq!(m.push("x日本"), StopStep::Emit("x".into()));
        assert_eq!(m.push("語"), stop("", "日本語"));
    }

    fn stop(text: &str, matched: &str) -> StopStep {
        StopStep::Stop {
            text: text.into(),
            matched: matched.into(),
        }
    }
}
