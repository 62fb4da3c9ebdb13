//! A byte-at-a-time matcher for a compiled [`Grammar`]: a pushdown automaton whose stack is an
//! inline array of small `Copy` frames, so saving and restoring a state (done once per byte while
//! walking the vocabulary) is a short memcpy.
//!
//! JSON is matched in a compact canonical form: no whitespace except one optional space after
//! `:` and `,` (small models otherwise wander off into endless whitespace).

use super::grammar::{Grammar, Node, NodeId, ObjId, Part, SeqId, TrieId};

mod closing;

/// Deepest nesting of values the matcher follows.
pub const MAX_DEPTH: usize = 32;
/// Most digits in one number.
const MAX_DIGITS: u8 = 24;
/// Most digits in an exponent.
const MAX_EXP_DIGITS: u8 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NumPhase {
    Start,
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    Exp,
    ExpSign,
    ExpDigits,
}

impl NumPhase {
    fn can_end(self) -> bool {
        matches!(
            self,
            NumPhase::Zero | NumPhase::Int | NumPhase::Frac | NumPhase::ExpDigits
        )
    }
}

/// Where a container is between its children.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Open,
    InKey,
    ExpectColon,
    ExpectValue { spaced: bool },
    InValue,
    AfterValue,
    ExpectKey { spaced: bool },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Frame {
    /// A value of `node` is about to start.
    Value {
        node: NodeId,
    },
    /// Inside a string (after the opening quote). `esc`: 0 none, 1 after `\`, 2..=5 hex digits left + 1.
    Str {
        min: u32,
        max: u32,
        len: u32,
        esc: u8,
        utf8_left: u8,
        utf8_lo: u8,
        utf8_hi: u8,
    },
    Num {
        integer: bool,
        phase: NumPhase,
        digits: u8,
    },
    Lit {
        trie: TrieId,
        at: u32,
    },
    Array {
        items: NodeId,
        min: u32,
        max: u32,
        count: u32,
        phase: Phase,
    },
    Obj {
        obj: ObjId,
        next: u16,
        cur: u16,
        phase: Phase,
    },
    FreeObj {
        values: NodeId,
        phase: Phase,
    },
    Seq {
        seq: SeqId,
        pos: u16,
        choice: u32,
        in_child: bool,
    },
}

const STR_ANY: Frame = Frame::Str {
    min: 0,
    max: u32::MAX,
    len: 0,
    esc: 0,
    utf8_left: 0,
    utf8_lo: 0x80,
    utf8_hi: 0xBF,
};

/// A matcher state. Cheap to copy with [`State::assign_from`].
#[derive(Clone, Debug)]
pub struct State {
    frames: [Frame; MAX_DEPTH],
    len: usize,
}

impl State {
    pub fn new(g: &Grammar) -> State {
        let mut frames = [Frame::Value { node: g.root }; MAX_DEPTH];
        frames[0] = Frame::Value { node: g.root };
        State { frames, len: 1 }
    }

    /// Become a copy of `other`, copying only its live frames.
    #[inline]
    pub fn assign_from(&mut self, other: &State) {
        self.frames[..other.len].copy_from_slice(&other.frames[..other.len]);
        self.len = other.len;
    }

    /// The whole value has been read.
    pub fn is_complete(&self) -> bool {
        self.len == 0
    }

    /// The output could end here (complete, or a root number/literal that needs no more bytes).
    pub fn can_end(&self, g: &Grammar) -> bool {
        match self.len {
            0 => true,
            1 => match self.frames[0] {
                Frame::Num { phase, .. } => phase.can_end(),
                Frame::Lit { trie, at } => {
                    g.tries[trie as usize].nodes[at as usize].terminal.is_some()
                }
                _ => false,
            },
            _ => false,
        }
    }

    fn push(&mut self, f: Frame) -> bool {
        if self.len == MAX_DEPTH {
            return false;
        }
        self.frames[self.len] = f;
        self.len += 1;
        true
    }

    /// Pop the finished top frame and tell its parent (with the literal's value index, if any).
    fn pop_done(&mut self, g: &Grammar, value: Option<u32>) {
        self.len -= 1;
        if self.len == 0 {
            return;
        }
        let top = self.len - 1;
        let mut finished_seq = false;
        match &mut self.frames[top] {
            Frame::Array { count, phase, .. } => {
                *count += 1;
                *phase = Phase::AfterValue;
            }
            Frame::Obj {
                next, cur, phase, ..
            } => match *phase {
                Phase::InKey => {
                    let k = value.unwrap_or(0) as u16;
                    *cur = k;
                    *next = k + 1;
                    *phase = Phase::ExpectColon;
                }
                _ => *phase = Phase::AfterValue,
            },
            Frame::FreeObj { phase, .. } => {
                *phase = if *phase == Phase::InKey {
                    Phase::ExpectColon
                } else {
                    Phase::AfterValue
                };
            }
            Frame::Seq {
                seq,
                pos,
                choice,
                in_child,
            } => {
                if let (Some(Part::Pick(_)), Some(v)) =
                    (g.seqs[*seq as usize].get(*pos as usize), value)
                {
                    *choice = v;
                }
                *pos += 1;
                *in_child = false;
                finished_seq = *pos as usize >= g.seqs[*seq as usize].len();
            }
            _ => {}
        }
        if finished_seq {
            self.pop_done(g, None);
        }
    }

    /// Feed one byte; false when the grammar does not allow it (the state is then unspecified).
    pub fn feed(&mut self, g: &Grammar, b: u8) -> bool {
        loop {
            if self.len == 0 {
                return false;
            }
            let top = self.len - 1;
            match self.frames[top] {
                Frame::Value { node } => {
                    let f = match &g.nodes[node as usize] {
                        Node::Any => match b {
                            b'{' => {
                                return self.replace(
                                    top,
                                    Frame::FreeObj {
                                        values: g.any,
                                        phase: Phase::Open,
                                    },
                                )
                            }
                            b'[' => {
                                let a = Frame::Array {
                                    items: g.any,
                                    min: 0,
                                    max: u32::MAX,
                                    count: 0,
                                    phase: Phase::Open,
                                };
                                return self.replace(top, a);
                            }
                            b'"' => return self.replace(top, STR_ANY),
                            b'-' | b'0'..=b'9' => Frame::Num {
                                integer: false,
                                phase: NumPhase::Start,
                                digits: 0,
                            },
                            b't' | b'f' | b'n' => Frame::Lit {
                                trie: g.keyword_trie,
                                at: 0,
                            },
                            _ => return false,
                        },
                        Node::Str { min, max } => {
                            if b != b'"' {
                                return false;
                            }
                            let f = Frame::Str {
                                min: *min,
                                max: *max,
                                len: 0,
                                esc: 0,
                                utf8_left: 0,
                                utf8_lo: 0x80,
                                utf8_hi: 0xBF,
                            };
                            return self.replace(top, f);
                        }
                        Node::Num { integer } => Frame::Num {
                            integer: *integer,
                            phase: NumPhase::Start,
                            digits: 0,
                        },
                        Node::Lits(t) => Frame::Lit { trie: *t, at: 0 },
                        Node::Array { items, min, max } => {
                            if b != b'[' {
                                return false;
                            }
                            let a = Frame::Array {
                                items: *items,
                                min: *min,
                                max: *max,
                                count: 0,
                                phase: Phase::Open,
                            };
                            return self.replace(top, a);
                        }
                        Node::Object(o) => {
                            if b != b'{' {
                                return false;
                            }
                            return self.replace(
                                top,
                                Frame::Obj {
                                    obj: *o,
                                    next: 0,
                                    cur: 0,
                                    phase: Phase::Open,
                                },
                            );
                        }
                        Node::FreeObject { values } => {
                            if b != b'{' {
                                return false;
                            }
                            return self.replace(
                                top,
                                Frame::FreeObj {
                                    values: *values,
                                    phase: Phase::Open,
                                },
                            );
                        }
                        Node::Union(alts) => match alts.iter().find(|a| g.can_start(**a, b)) {
                            Some(a) => Frame::Value { node: *a },
                            None => return false,
                        },
                        Node::Seq(s) => Frame::Seq {
                            seq: *s,
                            pos: 0,
                            choice: 0,
                            in_child: false,
                        },
                    };
                    self.frames[top] = f;
                }
                Frame::Str { .. } => return self.feed_str(g, top, b),
                Frame::Num {
                    integer,
                    phase,
                    digits,
                } => {
                    let digit = b.is_ascii_digit();
                    let next = match (phase, b) {
                        (NumPhase::Start, b'-') => Some(NumPhase::Minus),
                        (NumPhase::Start | NumPhase::Minus, b'0') => Some(NumPhase::Zero),
                        (NumPhase::Start | NumPhase::Minus, b'1'..=b'9') => Some(NumPhase::Int),
                        (NumPhase::Int, _) if digit => Some(NumPhase::Int),
                        (NumPhase::Zero | NumPhase::Int, b'.') if !integer => Some(NumPhase::Dot),
                        (NumPhase::Zero | NumPhase::Int | NumPhase::Frac, b'e' | b'E')
                            if !integer =>
                        {
                            Some(NumPhase::Exp)
                        }
                        (NumPhase::Dot | NumPhase::Frac, _) if digit => Some(NumPhase::Frac),
                        (NumPhase::Exp, b'+' | b'-') => Some(NumPhase::ExpSign),
                        (NumPhase::Exp | NumPhase::ExpSign | NumPhase::ExpDigits, _) if digit => {
                            Some(NumPhase::ExpDigits)
                        }
                        _ => None,
                    };
                    match next {
                        Some(p) => {
                            // Exponents get their own count: at most two digits keeps every number
                            // within f64 range.
                            let digits = match (phase, p) {
                                (NumPhase::Exp | NumPhase::ExpSign, NumPhase::ExpDigits) => 1,
                                _ => digits + digit as u8,
                            };
                            let limit = if p == NumPhase::ExpDigits {
                                MAX_EXP_DIGITS
                            } else {
                                MAX_DIGITS
                            };
                            if digits > limit {
                                return false;
                            }
                            self.frames[top] = Frame::Num {
                                integer,
                                phase: p,
                                digits,
                            };
                            return true;
                        }
                        // The byte ends the number and belongs to the parent.
                        None if phase.can_end() => self.pop_done(g, None),
                        None => return false,
                    }
                }
                Frame::Lit { trie, at } => {
                    let t = &g.tries[trie as usize];
                    match t.step(at, b) {
                        Some(n) => {
                            let node = &t.nodes[n as usize];
                            if node.children.is_empty() {
                                self.pop_done(g, node.terminal);
                            } else {
                                self.frames[top] = Frame::Lit { trie, at: n };
                            }
                            return true;
                        }
                        None => match t.nodes[at as usize].terminal {
                            // A literal that is a prefix of another ends here (enum [1, 12] then `,`).
                            Some(v) => self.pop_done(g, Some(v)),
                            None => return false,
                        },
                    }
                }
                Frame::Array {
                    items,
                    min,
                    max,
                    count,
                    phase,
                } => {
                    let set = |s: &mut State, p: Phase| {
                        s.frames[top] = Frame::Array {
                            items,
                            min,
                            max,
                            count,
                            phase: p,
                        };
                    };
                    match phase {
                        Phase::Open if b == b']' => {
                            if min > 0 {
                                return false;
                            }
                            self.pop_done(g, None);
                            return true;
                        }
                        Phase::Open | Phase::ExpectValue { spaced: true } => {
                            if max == 0 {
                                return false;
                            }
                            set(self, Phase::InValue);
                            if !self.push(Frame::Value { node: items }) {
                                return false;
                            }
                        }
                        Phase::ExpectValue { spaced: false } => {
                            if b == b' ' {
                                set(self, Phase::ExpectValue { spaced: true });
                                return true;
                            }
                            set(self, Phase::InValue);
                            if !self.push(Frame::Value { node: items }) {
                                return false;
                            }
                        }
                        Phase::AfterValue => {
                            return match b {
                                b',' if count < max => {
                                    set(self, Phase::ExpectValue { spaced: false });
                                    true
                                }
                                b']' if count >= min => {
                                    self.pop_done(g, None);
                                    true
                                }
                                _ => false,
                            };
                        }
                        _ => return false,
                    }
                }
                Frame::Obj {
                    obj,
                    next,
                    cur,
                    phase,
                } => {
                    let o = &g.objects[obj as usize];
                    let set = |s: &mut State, p: Phase| {
                        s.frames[top] = Frame::Obj {
                            obj,
                            next,
                            cur,
                            phase: p,
                        }
                    };
                    match phase {
                        Phase::Open if b == b'}' => {
                            if o.required_from(0) {
                                return false;
                            }
                            self.pop_done(g, None);
                            return true;
                        }
                        Phase::Open | Phase::ExpectKey { spaced: true } => {
                            set(self, Phase::InKey);
                            if !self.push(Frame::Lit {
                                trie: o.key_sets[next as usize],
                                at: 0,
                            }) {
                                return false;
                            }
                        }
                        Phase::ExpectKey { spaced: false } => {
                            if b == b' ' {
                                set(self, Phase::ExpectKey { spaced: true });
                                return true;
                            }
                            set(self, Phase::InKey);
                            if !self.push(Frame::Lit {
                                trie: o.key_sets[next as usize],
                                at: 0,
                            }) {
                                return false;
                            }
                        }
                        Phase::ExpectColon => {
                            if b != b':' {
                                return false;
                            }
                            set(self, Phase::ExpectValue { spaced: false });
                            return true;
                        }
                        Phase::ExpectValue { spaced } => {
                            if b == b' ' && !spaced {
                                set(self, Phase::ExpectValue { spaced: true });
                                return true;
                            }
                            set(self, Phase::InValue);
                            if !self.push(Frame::Value {
                                node: o.props[cur as usize].node,
                            }) {
                                return false;
                            }
                        }
                        Phase::AfterValue => {
                            return match b {
                                b',' if (next as usize) < o.props.len() => {
                                    set(self, Phase::ExpectKey { spaced: false });
                                    true
                                }
                                b'}' if !o.required_from(next as usize) => {
                                    self.pop_done(g, None);
                                    true
                                }
                                _ => false,
                            };
                        }
                        Phase::InKey | Phase::InValue => return false,
                    }
                }
                Frame::FreeObj { values, phase } => {
                    let set = |s: &mut State, p: Phase| {
                        s.frames[top] = Frame::FreeObj { values, phase: p }
                    };
                    match (phase, b) {
                        (Phase::Open, b'}') | (Phase::AfterValue, b'}') => {
                            self.pop_done(g, None);
                            return true;
                        }
                        (Phase::Open | Phase::ExpectKey { .. }, b'"') => {
                            set(self, Phase::InKey);
                            return self.push(STR_ANY);
                        }
                        (Phase::ExpectKey { spaced: false }, b' ') => {
                            set(self, Phase::ExpectKey { spaced: true });
                            return true;
                        }
                        (Phase::ExpectColon, b':') => {
                            set(self, Phase::ExpectValue { spaced: false });
                            return true;
                        }
                        (Phase::ExpectValue { spaced: false }, b' ') => {
                            set(self, Phase::ExpectValue { spaced: true });
                            return true;
                        }
                        (Phase::ExpectValue { .. }, _) => {
                            set(self, Phase::InValue);
                            if !self.push(Frame::Value { node: values }) {
                                return false;
                            }
                        }
                        (Phase::AfterValue, b',') => {
                            set(self, Phase::ExpectKey { spaced: false });
                            return true;
                        }
                        _ => return false,
                    }
                }
                Frame::Seq {
                    seq, pos, choice, ..
                } => {
                    let parts = &g.seqs[seq as usize];
                    let Some(part) = parts.get(pos as usize) else {
                        return false;
                    };
                    let child = match part {
                        Part::Space => {
                            self.frames[top] = Frame::Seq {
                                seq,
                                pos: pos + 1,
                                choice,
                                in_child: false,
                            };
                            if b == b' ' {
                                return true;
                            }
                            continue;
                        }
                        Part::Lit(t) | Part::Pick(t) => Frame::Lit { trie: *t, at: 0 },
                        Part::Value(n) => Frame::Value { node: *n },
                        Part::Choice(nodes) => match nodes.get(choice as usize) {
                            Some(n) => Frame::Value { node: *n },
                            None => return false,
                        },
                    };
                    self.frames[top] = Frame::Seq {
                        seq,
                        pos,
                        choice,
                        in_child: true,
                    };
                    if !self.push(child) {
                        return false;
                    }
                }
            }
        }
    }

    fn replace(&mut self, top: usize, f: Frame) -> bool {
        self.frames[top] = f;
        true
    }

    fn feed_str(&mut self, g: &Grammar, top: usize, b: u8) -> bool {
        let Frame::Str {
            min,
            max,
            mut len,
            mut esc,
            mut utf8_left,
            mut utf8_lo,
            mut utf8_hi,
        } = self.frames[top]
        else {
            return false;
        };
        if utf8_left > 0 {
            if b < utf8_lo || b > utf8_hi {
                return false;
            }
            utf8_left -= 1;
            (utf8_lo, utf8_hi) = (0x80, 0xBF);
        } else if esc == 1 {
            match b {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {
                    esc = 0;
                    len += 1;
                }
                b'u' => esc = 5,
                _ => return false,
            }
        } else if esc >= 2 {
            if !b.is_ascii_hexdigit() {
                return false;
            }
            esc -= 1;
            if esc == 1 {
                esc = 0;
                len += 1;
            }
        } else if b == b'"' {
            if len < min {
                return false;
            }
            self.pop_done(g, None);
            return true;
        } else if len >= max || b < 0x20 {
            return false;
        } else if b == b'\\' {
            esc = 1;
        } else if b < 0x80 {
            len += 1;
        } else {
            // Lead byte of a multi-byte character: how many continuation bytes, and the range of
            // the first one (excludes overlong forms and surrogates).
            (utf8_left, utf8_lo, utf8_hi) = match b {
                0xC2..=0xDF => (1, 0x80, 0xBF),
                0xE0 => (2, 0xA0, 0xBF),
                0xE1..=0xEC | 0xEE..=0xEF => (2, 0x80, 0xBF),
                0xED => (2, 0x80, 0x9F),
                0xF0 => (3, 0x90, 0xBF),
                0xF1..=0xF3 => (3, 0x80, 0xBF),
                0xF4 => (3, 0x80, 0x8F),
                _ => return false,
            };
            len += 1;
        }
        self.frames[top] = Frame::Str {
            min,
            max,
            len,
            esc,
            utf8_left,
            utf8_lo,
            utf8_hi,
        };
        true
    }
}

/// Whether `text` is exactly one value of the grammar.
pub fn matches(g: &Grammar, text: &[u8]) -> bool {
    let mut s = State::new(g);
    text.iter().all(|&b| s.feed(g, b)) && s.can_end(g)
}

#[cfg(test)]
mod tests;
