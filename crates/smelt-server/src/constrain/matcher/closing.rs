//! The shortest way to complete a value from a matcher state: what generation is steered to
//! when the token budget is about to run out.

use super::{Frame, Phase, State};
use crate::constrain::grammar::{Grammar, Part};

impl State {
    /// The shortest bytes that complete the value from here.
    pub fn closing(&self, g: &Grammar) -> Vec<u8> {
        let mut out = Vec::new();
        // The literal index the frame above chose, for the parent (which key, which tool).
        let mut child_value: Option<u32> = None;
        for i in (0..self.len).rev() {
            let has_child = i + 1 < self.len;
            let mut value = None;
            match self.frames[i] {
                Frame::Value { node } => g.min_value(node, &mut out),
                Frame::Str {
                    min,
                    len,
                    esc,
                    utf8_left,
                    utf8_lo,
                    ..
                } => {
                    if utf8_left > 0 {
                        out.push(utf8_lo);
                        out.extend(std::iter::repeat_n(0x80, utf8_left as usize - 1));
                    }
                    match esc {
                        1 => out.push(b'n'),
                        e if e >= 2 => out.extend(std::iter::repeat_n(b'0', e as usize - 1)),
                        _ => {}
                    }
                    let have = len + (esc > 0) as u32;
                    out.extend(std::iter::repeat_n(b'a', min.saturating_sub(have) as usize));
                    out.push(b'"');
                }
                Frame::Num { phase, .. } => {
                    if !phase.can_end() {
                        out.push(b'0');
                    }
                }
                Frame::Lit { trie, at } => {
                    let (bytes, v) = g.tries[trie as usize].shortest_completion(at);
                    out.extend(bytes);
                    value = Some(v);
                }
                Frame::Array {
                    items,
                    min,
                    count,
                    phase,
                    ..
                } => {
                    let done = count + (has_child || phase == Phase::InValue) as u32;
                    let mut need = min.saturating_sub(done);
                    if matches!(phase, Phase::Open | Phase::ExpectValue { .. })
                        && !has_child
                        && (need > 0 || phase != Phase::Open)
                    {
                        g.min_value(items, &mut out);
                        need = need.saturating_sub(1);
                    }
                    for _ in 0..need {
                        out.push(b',');
                        g.min_value(items, &mut out);
                    }
                    out.push(b']');
                }
                Frame::Obj {
                    obj,
                    next,
                    cur,
                    phase,
                } => {
                    let o = &g.objects[obj as usize];
                    match phase {
                        Phase::Open => g.required_props_from(obj, 0, true, &mut out),
                        Phase::InKey => {
                            let k = child_value.unwrap_or(next as u32) as usize;
                            out.push(b':');
                            g.min_value(o.props[k].node, &mut out);
                            g.required_props_from(obj, k + 1, false, &mut out);
                        }
                        Phase::ExpectColon | Phase::ExpectValue { .. } => {
                            if phase == Phase::ExpectColon {
                                out.push(b':');
                            }
                            g.min_value(o.props[cur as usize].node, &mut out);
                            g.required_props_from(obj, next as usize, false, &mut out);
                        }
                        Phase::InValue | Phase::AfterValue => {
                            g.required_props_from(obj, next as usize, false, &mut out)
                        }
                        Phase::ExpectKey { .. } => {
                            if o.required_from(next as usize) {
                                g.required_props_from(obj, next as usize, true, &mut out);
                            } else {
                                let p = &o.props[next as usize];
                                out.extend_from_slice(&p.key_json);
                                out.push(b':');
                                g.min_value(p.node, &mut out);
                            }
                        }
                    }
                    out.push(b'}');
                }
                Frame::FreeObj { values, phase } => {
                    match phase {
                        Phase::InKey | Phase::ExpectColon => {
                            out.push(b':');
                            g.min_value(values, &mut out);
                        }
                        Phase::ExpectValue { .. } => g.min_value(values, &mut out),
                        Phase::ExpectKey { .. } => {
                            out.extend_from_slice(b"\"\":");
                            g.min_value(values, &mut out);
                        }
                        _ => {}
                    }
                    out.push(b'}');
                }
                Frame::Seq {
                    seq,
                    pos,
                    choice,
                    in_child,
                } => {
                    let parts = &g.seqs[seq as usize];
                    let mut choice = choice;
                    if in_child {
                        if let (Some(Part::Pick(_)), Some(v)) =
                            (parts.get(pos as usize), child_value)
                        {
                            choice = v;
                        }
                        g.seq_completion(seq, pos as usize + 1, choice, &mut out);
                    } else {
                        g.seq_completion(seq, pos as usize, choice, &mut out);
                    }
                }
            }
            child_value = value;
        }
        out
    }
}
