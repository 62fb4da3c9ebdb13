//! Token ids back to text: pieces, whole-sequence detokenisation, and UTF-8-safe streaming.

use crate::special::attr;
use crate::strtable::StrTable;
use crate::unicode::char_to_byte;
use crate::{Tokenizer, TokenizerKind};

impl Tokenizer {
    /// The bytes a token stands for, control tokens rendering as nothing (llama.cpp's default
    /// for generated text). A piece may be part of a UTF-8 sequence (byte tokens, byte-level
    /// BPE); an id outside the vocabulary renders as nothing.
    pub fn token_to_piece(&self, id: u32) -> &[u8] {
        self.piece(id, false)
    }

    /// [`Tokenizer::token_to_piece`], with control and unknown tokens rendered as their text
    /// when `special` is set.
    pub fn piece(&self, id: u32, special: bool) -> &[u8] {
        if !self.valid(id) {
            return &[];
        }
        if !special && self.attrs[id as usize] & (attr::UNKNOWN | attr::CONTROL) != 0 {
            return &[];
        }
        self.pieces.get(id)
    }

    /// Token ids to bytes exactly as llama.cpp's `llama_detokenize`: `remove_special` drops a
    /// leading BOS / trailing EOS the model adds itself, `unparse_special` renders control
    /// tokens; the first piece loses one leading space when the model adds a space prefix, and
    /// vocabularies with `clean_up_tokenization_spaces` drop spaces before punctuation.
    pub fn detokenize(&self, ids: &[u32], remove_special: bool, unparse_special: bool) -> Vec<u8> {
        let mut ids = ids;
        let mut remove_space = self.add_space_prefix;
        if remove_special && self.adds_bos() && !ids.is_empty() && Some(ids[0]) == self.bos() {
            remove_space = false;
            ids = &ids[1..];
        }
        if remove_special
            && self.adds_eos()
            && !ids.is_empty()
            && Some(ids[ids.len() - 1]) == self.eos()
        {
            ids = &ids[..ids.len() - 1];
        }
        let mut text = Vec::new();
        for &id in ids {
            let mut piece = self.piece(id, unparse_special);
            if remove_space {
                piece = piece.strip_prefix(b" ").unwrap_or(piece);
            }
            remove_space = false;
            text.extend_from_slice(piece);
        }
        if self.clean_spaces {
            clean_up_spaces(&mut text);
        }
        text
    }

    /// Token ids to text ([`Tokenizer::detokenize`] without removing or rendering special
    /// tokens), with invalid UTF-8 replaced by U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        String::from_utf8_lossy(&self.detokenize(ids, false, false)).into_owned()
    }
}

/// Every token's piece with special tokens rendered (llama.cpp's piece cache, built once).
pub(crate) fn render_pieces(kind: TokenizerKind, texts: &StrTable, attrs: &[u16]) -> StrTable {
    let mut pieces = StrTable::default();
    let mut buf = Vec::new();
    for id in 0..texts.len() as u32 {
        let a = attrs[id as usize];
        let text = texts.get(id);
        buf.clear();
        if a & (attr::UNKNOWN | attr::CONTROL | attr::USER_DEFINED) != 0 {
            buf.extend_from_slice(text);
        } else if a & attr::NORMAL != 0 {
            match kind {
                TokenizerKind::Spm => unescape_spaces(text, &mut buf),
                TokenizerKind::Bpe => decode_byte_level(text, &mut buf),
            }
        } else if a & attr::BYTE != 0 {
            buf.push(byte_token_value(text));
        }
        // Unused and undefined tokens render as nothing.
        pieces.push(&buf);
    }
    pieces
}

/// SentencePiece pieces spell spaces as U+2581.
fn unescape_spaces(text: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < text.len() {
        if text[i..].starts_with("\u{2581}".as_bytes()) {
            out.push(b' ');
            i += 3;
        } else {
            out.push(text[i]);
            i += 1;
        }
    }
}

/// A `<0xXX>` byte token's byte (as C's `strtol` on the two hex digits: garbage reads as 0).
fn byte_token_value(text: &[u8]) -> u8 {
    let digits = text.get(3..5).unwrap_or(&[]);
    let mut v: u32 = 0;
    for &d in digits {
        match (d as char).to_digit(16) {
            Some(x) => v = v * 16 + x,
            None => break,
        }
    }
    v as u8
}

/// Byte-level BPE text back to bytes. A codepoint outside the byte alphabet is spelled out as
/// `[UNK_BYTE_0x<its utf8 hex><the token text>]`, as llama.cpp does.
fn decode_byte_level(text: &[u8], out: &mut Vec<u8>) {
    for c in lenient_chars(text) {
        match char_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                out.extend_from_slice(b"[UNK_BYTE_0x");
                let mut utf8 = [0u8; 4];
                for b in c.encode_utf8(&mut utf8).bytes() {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
                out.extend_from_slice(text);
                out.push(b']');
            }
        }
    }
}

/// The codepoints of possibly invalid UTF-8, each bad byte read as U+FFFD.
fn lenient_chars(mut s: &[u8]) -> impl Iterator<Item = char> + '_ {
    std::iter::from_fn(move || {
        if s.is_empty() {
            return None;
        }
        match std::str::from_utf8(s) {
            Ok(v) => {
                let c = v.chars().next()?;
                s = &s[c.len_utf8()..];
                Some(c)
            }
            Err(e) if e.valid_up_to() > 0 => {
                let v = std::str::from_utf8(&s[..e.valid_up_to()]).ok()?;
                let c = v.chars().next()?;
                s = &s[c.len_utf8()..];
                Some(c)
            }
            Err(_) => {
                s = &s[1..];
                Some('\u{FFFD}')
            }
        }
    })
}

/// `clean_up_tokenization_spaces`, byte for byte as llama.cpp implements it (in place, with its
/// look-behind reading the partly rewritten buffer).
fn clean_up_spaces(t: &mut Vec<u8>) {
    // " ?", " !", " .", " ," lose the space.
    let n = t.len();
    let mut total = n.min(1);
    for i in 1..n {
        let x = t[i];
        if t[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            total -= 1;
        }
        t[total] = x;
        total += 1;
    }
    t.truncate(total);

    // " ' " loses both spaces.
    let n = t.len();
    let mut total = n.min(1);
    let mut i = 1;
    while i < n {
        let x = t[i];
        if x == b'\'' && i + 1 < n && t[i - 1] == b' ' && t[i + 1] == b' ' {
            total -= 1;
            i += 1;
            t[i] = 0;
        }
        t[total] = x;
        total += 1;
        i += 1;
    }
    t.truncate(total);

    // " 's", " 'm", " 're", " 've" lose the space.
    let n = t.len();
    let mut total = n.min(1);
    for i in 1..n {
        let x = t[i];
        if t[i - 1] == b' ' && x == b'\'' && i + 1 < n {
            let x1 = t[i + 1];
            if matches!(x1, b't' | b'd') {
            } else if matches!(x1, b's' | b'm') {
                total -= 1;
            } else if i + 2 < n {
                let x2 = t[i + 2];
                if matches!((x1, x2), (b'r', b'e') | (b'v', b'e')) {
                    total -= 1;
                }
            }
        }
        t[total] = x;
        total += 1;
    }
    t.truncate(total);
}

/// Assembles bytes arriving in pieces into text, emitting only complete UTF-8: the bytes of a
/// character split across pieces wait for the rest, and bytes that can never become valid
/// are replaced by U+FFFD at once. Owns no tokenizer, so it can live in long-lived state.
#[derive(Clone, Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    pub fn new() -> Utf8Stream {
        Utf8Stream::default()
    }

    /// Adds bytes; returns the text that is now complete (possibly empty).
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(
                        std::str::from_utf8(&self.pending[..valid]).expect("valid_up_to is valid"),
                    );
                    match e.error_len() {
                        // An incomplete sequence at the end: wait for more bytes.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        // Bytes that can never become valid: replace them and go on.
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// Whether bytes are waiting for the rest of a character.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Ends the stream: returns what is still pending, invalid bytes as U+FFFD.
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

/// Turns generated token ids into text one at a time, emitting only complete UTF-8 (see
/// [`Utf8Stream`]). Its output, concatenated, is the pieces of all tokens (what llama.cpp's
/// server streams); for vocabularies without a space prefix or space clean-up that equals
/// [`Tokenizer::decode`].
#[derive(Clone, Debug)]
pub struct StreamDecoder<'t> {
    tokenizer: &'t Tokenizer,
    special: bool,
    bytes: Utf8Stream,
}

impl<'t> StreamDecoder<'t> {
    /// A decoder; `special` renders control tokens as their text.
    pub fn new(tokenizer: &'t Tokenizer, special: bool) -> StreamDecoder<'t> {
        StreamDecoder {
            tokenizer,
            special,
            bytes: Utf8Stream::new(),
        }
    }

    /// Adds one token; returns the text that is now complete (possibly empty).
    pub fn push(&mut self, id: u32) -> String {
        self.bytes.push(self.tokenizer.piece(id, self.special))
    }

    /// Whether bytes are waiting for the rest of a character.
    pub fn has_pending(&self) -> bool {
        self.bytes.has_pending()
    }

    /// Ends the stream: returns what is still pending, invalid bytes as U+FFFD.
    pub fn finish(&mut self) -> String {
        self.bytes.finish()
    }
}

impl Tokenizer {
    /// A [`StreamDecoder`] for generated text (control tokens render as nothing).
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder::new(self, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cleaned(s: &str) -> String {
        let mut v = s.as_bytes().to_vec();
        clean_up_spaces(&mut v);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn clean_up_spaces_matches_reference_rules() {
        assert_eq!(cleaned("Hello , world !"), "Hello, world!");
        assert_eq!(cleaned("it ' s"), "it's");
        assert_eq!(
            cleaned("I 'm you 're we 've he 's"),
            "I'm you're we've he's"
        );
        assert_eq!(cleaned("don 't you 'd we 'll"), "don 't you 'd we 'll");
        assert_eq!(cleaned(""), "");
        assert_eq!(cleaned(" ."), ".");
    }

    #[test]
    fn byte_token_values() {
        assert_eq!(byte_token_value(b"<0x0A>"), 10);
        assert_eq!(byte_token_value(b"<0xFF>"), 255);
        assert_eq!(byte_token_value(b"<0x"), 0);
    }

    #[test]
    fn byte_level_text_decodes_and_flags_strangers() {
        let decoded = |s: &str| {
            let mut out = vec![];
            decode_byte_level(s.as_bytes(), &mut out);
            out
        };
        assert_eq!(decoded("ĠhelloĊ"), b" hello\n");
        assert_eq!(decoded("a中"), "a[UNK_BYTE_0xe4b8ada中]".as_bytes());
        assert_eq!(lenient_chars(b"a\xffb").collect::<String>(), "a\u{FFFD}b");
    }
}
