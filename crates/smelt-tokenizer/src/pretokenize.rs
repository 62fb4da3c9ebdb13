//! Pre-tokenizers for byte-level BPE: split text into words before merging.
//!
//! Each GGUF `tokenizer.ggml.pre` name selects a list of split steps, applied one after the
//! other; each step splits every chunk left by the previous one. The regexes the models were
//! trained with are written by hand here as small scanners that reproduce llama.cpp's
//! behaviour exactly, including where it differs from a textbook regex engine (those places
//! are marked "as llama.cpp"). Positions are codepoint indices; a step never looks past the
//! chunk it is splitting.

use crate::unicode::{flags, Flags};

/// One split step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+` (GPT-2).
    Gpt2,
    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+` (Llama 3).
    Llama3,
    /// As [`Step::Llama3`] but `\p{N}` one digit at a time (Qwen 2).
    Qwen2,
    /// As [`Step::Qwen2`] but letter runs also take combining marks, `[\p{L}\p{M}]+` (Qwen 3.5).
    Qwen35,
    /// `\p{N}`: every number codepoint becomes its own chunk.
    EachNumber,
    /// `\p{N}+`: runs of number codepoints.
    NumberRuns,
    /// `[\p{P}\$\+<=>\^~\|]+`: runs of punctuation and those six ASCII symbols.
    PunctRuns,
    /// `[0-9][0-9][0-9]`: ASCII digit triples, leftmost first.
    AsciiDigitTriples,
}

/// What a `tokenizer.ggml.pre` name means for a byte-level BPE vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PreConfig {
    pub steps: &'static [Step],
    /// A whole word that is itself a token is emitted without merging.
    pub ignore_merges: bool,
    /// Detokenising removes spaces before punctuation (`clean_up_tokenization_spaces`).
    pub clean_spaces: bool,
    /// Whether a BOS token is added when the GGUF does not say.
    pub add_bos: bool,
}

const DEFAULT: &[Step] = &[
    Step::PunctRuns,
    Step::Gpt2,
    Step::NumberRuns,
    Step::AsciiDigitTriples,
];
const GPT2: &[Step] = &[Step::Gpt2];
const STARCODER: &[Step] = &[Step::EachNumber, Step::Gpt2];
const LLAMA3: &[Step] = &[Step::Llama3];
const QWEN2: &[Step] = &[Step::Qwen2];
const QWEN35: &[Step] = &[Step::Qwen35];

/// The pre-tokenizer a name selects (the names llama.cpp's converter writes), or `None` for
/// one this crate does not implement.
pub(crate) fn pre_config(name: &str) -> Option<PreConfig> {
    let cfg = |steps, ignore_merges, clean_spaces, add_bos| PreConfig {
        steps,
        ignore_merges,
        clean_spaces,
        add_bos,
    };
    Some(match name {
        "default" => cfg(DEFAULT, false, true, false),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" => cfg(LLAMA3, true, true, true),
        "dbrx" | "smaug-bpe" => cfg(LLAMA3, false, true, false),
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de"
        | "a.x-4.0" | "mellum" | "modern-bert" | "mpt" | "olmo" | "exaone4" | "jais" => {
            cfg(GPT2, false, true, false)
        }
        "trillion" | "granite-docling" => cfg(GPT2, false, false, false),
        "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b" | "mellum2" => {
            cfg(STARCODER, false, true, false)
        }
        "smollm" | "command-r" => cfg(STARCODER, false, false, false),
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "hunyuan" | "grok-2"
        | "solar-open" => cfg(QWEN2, false, false, false),
        "stablelm2" | "megrez" => cfg(QWEN2, false, true, false),
        "qwen35" => cfg(QWEN35, false, false, false),
        _ => return None,
    })
}

/// Splits `text` into words: byte ranges of `text`, in order, covering all of it.
pub(crate) fn split(text: &str, steps: &[Step]) -> Vec<std::ops::Range<usize>> {
    let mut byte_at: Vec<usize> = Vec::with_capacity(text.len() + 1);
    let mut cpts: Vec<char> = Vec::with_capacity(text.len());
    for (i, c) in text.char_indices() {
        byte_at.push(i);
        cpts.push(c);
    }
    byte_at.push(text.len());
    let fl: Vec<Flags> = cpts.iter().map(|&c| flags(c)).collect();

    let mut chunks = vec![cpts.len()];
    if cpts.is_empty() {
        chunks.clear();
    }
    for &step in steps {
        let mut out = Vec::with_capacity(chunks.len() * 2);
        let mut start = 0;
        for &len in &chunks {
            let chunk = Chunk {
                cpts: &cpts,
                fl: &fl,
                ini: start,
                end: start + len,
            };
            match step {
                Step::Gpt2 => chunk.gpt2(&mut out),
                Step::Llama3 => chunk.llama3_like(Digits::UpToThree, false, &mut out),
                Step::Qwen2 => chunk.llama3_like(Digits::One, false, &mut out),
                Step::Qwen35 => chunk.llama3_like(Digits::One, true, &mut out),
                Step::EachNumber => chunk.class_runs(|f| f.is_number(), false, &mut out),
                Step::NumberRuns => chunk.class_runs(|f| f.is_number(), true, &mut out),
                Step::PunctRuns => chunk.class_runs_cpt(is_punct_run_char, &mut out),
                Step::AsciiDigitTriples => chunk.ascii_digit_triples(&mut out),
            }
            start += len;
        }
        chunks = out;
    }

    let mut words = Vec::with_capacity(chunks.len());
    let mut start = 0;
    for len in chunks {
        words.push(byte_at[start]..byte_at[start + len]);
        start += len;
    }
    words
}

fn is_punct_run_char(c: char, f: Flags) -> bool {
    f.is_punctuation() || matches!(c, '$' | '+' | '<' | '=' | '>' | '^' | '~' | '|')
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Digits {
    One,
    UpToThree,
}

/// One chunk `[ini, end)` of the codepoints being split.
struct Chunk<'a> {
    cpts: &'a [char],
    fl: &'a [Flags],
    ini: usize,
    end: usize,
}

/// Collects the lengths of consecutive words within a chunk.
struct Emitter<'o> {
    out: &'o mut Vec<usize>,
    prev_end: usize,
}

impl Emitter<'_> {
    /// Ends the current word at `end`; returns its length (empty words are dropped).
    fn word_to(&mut self, end: usize) -> usize {
        let len = end - self.prev_end;
        if len > 0 {
            self.out.push(len);
        }
        self.prev_end = end;
        len
    }
}

impl Chunk<'_> {
    #[inline]
    fn cpt(&self, pos: usize) -> Option<char> {
        (self.ini <= pos && pos < self.end).then(|| self.cpts[pos])
    }

    #[inline]
    fn flags(&self, pos: usize) -> Flags {
        if self.ini <= pos && pos < self.end {
            self.fl[pos]
        } else {
            Flags::NONE
        }
    }

    /// Matches a contraction `'s 't 'm 'd 're 've 'll` at `pos` (ASCII case folded when
    /// `fold_case`; no other codepoint lower-cases into these letters); returns its length.
    fn contraction(&self, pos: usize, fold_case: bool) -> Option<usize> {
        if self.cpt(pos) != Some('\'') || pos + 1 >= self.end {
            return None;
        }
        let fold = |c: Option<char>| c.map(|c| if fold_case { c.to_ascii_lowercase() } else { c });
        let next = fold(self.cpt(pos + 1));
        if matches!(next, Some('s' | 't' | 'm' | 'd')) {
            return Some(2);
        }
        if pos + 2 < self.end {
            let next2 = fold(self.cpt(pos + 2));
            if matches!(
                (next, next2),
                (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l'))
            ) {
                return Some(3);
            }
        }
        None
    }

    /// Counts the whitespace run at `pos`; returns (its length, the end of its last \r or \n).
    fn whitespace_run(&self, pos: usize) -> (usize, Option<usize>) {
        let mut n = 0;
        let mut last_newline_end = None;
        while self.flags(pos + n).is_whitespace() {
            if matches!(self.cpt(pos + n), Some('\r' | '\n')) {
                last_newline_end = Some(pos + n + 1);
            }
            n += 1;
        }
        (n, last_newline_end)
    }

    fn gpt2(&self, out: &mut Vec<usize>) {
        let mut em = Emitter {
            out,
            prev_end: self.ini,
        };
        let mut pos = self.ini;
        while pos < self.end {
            if let Some(n) = self.contraction(pos, false) {
                pos += em.word_to(pos + n);
                continue;
            }
            let is_space = self.cpt(pos) == Some(' ');
            let mut f2 = if is_space {
                self.flags(pos + 1)
            } else {
                self.flags(pos)
            };
            // ` ?\p{L}+`, ` ?\p{N}+`
            let class: Option<fn(Flags) -> bool> = if f2.is_letter() {
                Some(Flags::is_letter)
            } else if f2.is_number() {
                Some(Flags::is_number)
            } else {
                None
            };
            if let Some(class) = class {
                pos += is_space as usize;
                while class(f2) {
                    pos += 1;
                    f2 = self.flags(pos);
                }
                em.word_to(pos);
                continue;
            }
            // ` ?[^\s\p{L}\p{N}]+`
            let other =
                |f: Flags| !(f.is_whitespace() || f.is_letter() || f.is_number()) && f.is_some();
            if other(f2) {
                pos += is_space as usize;
                while other(f2) {
                    pos += 1;
                    f2 = self.flags(pos);
                }
                em.word_to(pos);
                continue;
            }
            let (n_ws, _) = self.whitespace_run(pos);
            // `\s+(?!\S)`: leave the last whitespace to start the next word, unless at the end.
            if n_ws > 1 && self.cpt(pos + n_ws).is_some() {
                pos += n_ws - 1;
                em.word_to(pos);
                continue;
            }
            if n_ws > 0 {
                pos += n_ws;
                em.word_to(pos);
                continue;
            }
            pos += 1;
            em.word_to(pos);
        }
    }

    fn llama3_like(&self, digits: Digits, letters_take_marks: bool, out: &mut Vec<usize>) {
        let mut em = Emitter {
            out,
            prev_end: self.ini,
        };
        let is_word = |f: Flags| f.is_letter() || (letters_take_marks && f.is_mark());
        let mut pos = self.ini;
        while pos < self.end {
            let cpt = self.cpt(pos);
            let f = self.flags(pos);
            if let Some(n) = self.contraction(pos, true) {
                pos += em.word_to(pos + n);
                continue;
            }
            // `[^\r\n\p{L}\p{N}]?\p{L}+`
            if !(matches!(cpt, Some('\r' | '\n')) || f.is_number())
                && (is_word(f) || is_word(self.flags(pos + 1)))
            {
                pos += 1;
                while is_word(self.flags(pos)) {
                    pos += 1;
                }
                em.word_to(pos);
                continue;
            }
            // `\p{N}{1,3}` or `\p{N}`
            if f.is_number() {
                match digits {
                    Digits::One => pos += 1,
                    Digits::UpToThree => {
                        let mut group_start = pos;
                        while self.flags(pos).is_number() {
                            pos += 1;
                            if pos - group_start >= 3 {
                                em.word_to(pos);
                                group_start = pos;
                            }
                        }
                    }
                }
                em.word_to(pos);
                continue;
            }
            // ` ?[^\s\p{L}\p{N}]+[\r\n]*`; as llama.cpp, the "is there a codepoint" test looks at
            // the current codepoint even when the optional space was skipped.
            let is_space = cpt == Some(' ');
            let mut f2 = if is_space { self.flags(pos + 1) } else { f };
            let other = |f: Flags| !(f.is_whitespace() || is_word(f) || f.is_number());
            if other(f2) && f.is_some() {
                pos += is_space as usize;
                while other(f2) && f2.is_some() {
                    pos += 1;
                    f2 = self.flags(pos);
                }
                while matches!(self.cpt(pos), Some('\r' | '\n')) {
                    pos += 1;
                }
                em.word_to(pos);
                continue;
            }
            let (n_ws, last_newline_end) = self.whitespace_run(pos);
            // `\s*[\r\n]+`
            if let Some(e) = last_newline_end {
                pos = e;
                em.word_to(pos);
                continue;
            }
            // `\s+(?!\S)`
            if n_ws > 1 && self.cpt(pos + n_ws).is_some() {
                pos += n_ws - 1;
                em.word_to(pos);
                continue;
            }
            if n_ws > 0 {
                pos += n_ws;
                em.word_to(pos);
                continue;
            }
            pos += 1;
            em.word_to(pos);
        }
    }

    /// Splits out codepoints of a class, each alone (`runs == false`) or as maximal runs; the
    /// text between them becomes words too.
    fn class_runs(&self, class: impl Fn(Flags) -> bool, runs: bool, out: &mut Vec<usize>) {
        let mut em = Emitter {
            out,
            prev_end: self.ini,
        };
        let mut pos = self.ini;
        while pos < self.end {
            if class(self.fl[pos]) {
                em.word_to(pos);
                pos += 1;
                while runs && pos < self.end && class(self.fl[pos]) {
                    pos += 1;
                }
                em.word_to(pos);
            } else {
                pos += 1;
            }
        }
        em.word_to(self.end);
    }

    /// Like [`Chunk::class_runs`] (runs) with a class that looks at the codepoint too.
    fn class_runs_cpt(&self, class: fn(char, Flags) -> bool, out: &mut Vec<usize>) {
        let mut em = Emitter {
            out,
            prev_end: self.ini,
        };
        let mut pos = self.ini;
        while pos < self.end {
            if class(self.cpts[pos], self.fl[pos]) {
                em.word_to(pos);
                while pos < self.end && class(self.cpts[pos], self.fl[pos]) {
                    pos += 1;
                }
                em.word_to(pos);
            } else {
                pos += 1;
            }
        }
        em.word_to(self.end);
    }

    fn ascii_digit_triples(&self, out: &mut Vec<usize>) {
        let mut em = Emitter {
            out,
            prev_end: self.ini,
        };
        let mut pos = self.ini;
        while pos < self.end {
            if pos + 3 <= self.end && self.cpts[pos..pos + 3].iter().all(|c| c.is_ascii_digit()) {
                em.word_to(pos);
                pos += 3;
                em.word_to(pos);
            } else {
                pos += 1;
            }
        }
        em.word_to(self.end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words<'a>(text: &'a str, steps: &[Step]) -> Vec<&'a str> {
        split(text, steps).into_iter().map(|r| &text[r]).collect()
    }

    #[test]
    fn gpt2_words() {
        assert_eq!(
            words("Hello world's  test\n\n", GPT2),
            ["Hello", " world", "'s", " ", " test", "\n\n"]
        );
        // Case-sensitive contractions; punctuation runs take one leading space.
        assert_eq!(
            words("it'S ok!!  ?", GPT2),
            ["it", "'", "S", " ok", "!!", " ", " ?"]
        );
        assert_eq!(words("", GPT2), Vec::<&str>::new());
    }

    #[test]
    fn llama3_words() {
        assert_eq!(
            words("I'VE 12345 abc\r\n\r\nx", LLAMA3),
            ["I", "'VE", " ", "123", "45", " abc", "\r\n\r\n", "x"]
        );
        // A non-letter prefix joins the letter run; punctuation takes trailing newlines.
        assert_eq!(
            words("(hello)...\n\nok", LLAMA3),
            ["(hello", ")...\n\n", "ok"]
        );
    }

    #[test]
    fn qwen2_splits_every_digit() {
        assert_eq!(words("ab12345", QWEN2), ["ab", "1", "2", "3", "4", "5"]);
    }

    #[test]
    fn starcoder_isolates_digits_before_gpt2() {
        assert_eq!(words(" 123 abc", STARCODER), [" ", "1", "2", "3", " abc"]);
    }

    #[test]
    fn default_splits_punctuation_numbers_and_digit_triples() {
        assert_eq!(
            words("a+b 1234567", DEFAULT),
            ["a", "+", "b", " ", "123", "456", "7"]
        );
    }

    #[test]
    fn unknown_names_are_none() {
        assert!(pre_config("no-such-pre").is_none());
        assert_eq!(pre_config("smollm").map(|c| c.steps), Some(STARCODER));
        assert_eq!(
            pre_config("llama-bpe").map(|c| (c.ignore_merges, c.add_bos)),
            Some((true, true))
        );
    }
}
