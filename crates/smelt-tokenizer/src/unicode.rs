//! Codepoint classes for the pre-tokenizers, and GPT-2's byte-to-unicode mapping.
//!
//! The classes follow llama.cpp's reading of the Unicode general categories (15.1): one class
//! per codepoint (`\p{L}`, `\p{N}`, ...), plus a separate whitespace bit (`\s`, the Unicode
//! White_Space property). Positions outside the text being split get [`Flags::NONE`], which is
//! why every class test below also works as "is there a codepoint here at all".

use crate::unicode_table::CLASS_RANGES;

/// Class bits of one codepoint (the low byte is its general-category class).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Flags(u16);

impl Flags {
    pub const NONE: Flags = Flags(0);
    const NUMBER: u16 = 0x02;
    const LETTER: u16 = 0x04;
    const MARK: u16 = 0x10;
    const PUNCTUATION: u16 = 0x20;
    const WHITESPACE: u16 = 0x100;

    /// Any class at all: false only outside the text.
    #[inline]
    pub fn is_some(self) -> bool {
        self.0 != 0
    }
    #[inline]
    pub fn is_number(self) -> bool {
        self.0 & Self::NUMBER != 0
    }
    #[inline]
    pub fn is_letter(self) -> bool {
        self.0 & Self::LETTER != 0
    }
    #[inline]
    pub fn is_mark(self) -> bool {
        self.0 & Self::MARK != 0
    }
    #[inline]
    pub fn is_punctuation(self) -> bool {
        self.0 & Self::PUNCTUATION != 0
    }
    #[inline]
    pub fn is_whitespace(self) -> bool {
        self.0 & Self::WHITESPACE != 0
    }
}

/// The Unicode White_Space codepoints (what `\s` matches in the reference regexes).
fn is_white_space(c: u32) -> bool {
    matches!(c, 0x09..=0x0D | 0x20 | 0x85 | 0xA0 | 0x1680 | 0x2000..=0x200A | 0x2028 | 0x2029 | 0x202F | 0x205F | 0x3000)
}

fn class_of(c: u32) -> u8 {
    // The last range whose start is <= c.
    let i = CLASS_RANGES.partition_point(|&(start, _)| start <= c);
    CLASS_RANGES[i.saturating_sub(1)].1
}

/// Flags of every ASCII codepoint, computed once: ASCII dominates most text.
static ASCII_FLAGS: std::sync::LazyLock<[Flags; 128]> = std::sync::LazyLock::new(|| {
    let mut t = [Flags::NONE; 128];
    for (c, f) in t.iter_mut().enumerate() {
        *f = compute_flags(c as u32);
    }
    t
});

fn compute_flags(c: u32) -> Flags {
    let mut bits = class_of(c) as u16;
    if is_white_space(c) {
        bits |= Flags::WHITESPACE;
    }
    Flags(bits)
}

/// The class flags of a codepoint.
#[inline]
pub(crate) fn flags(c: char) -> Flags {
    let c = c as u32;
    if c < 128 {
        ASCII_FLAGS[c as usize]
    } else {
        compute_flags(c)
    }
}

// ---- GPT-2 byte-level mapping ---------------------------------------------------------------

/// GPT-2 maps every byte to a printable codepoint: the printable Latin-1 bytes map to
/// themselves, the other 68 bytes to U+0100.. in byte order.
fn is_self_mapped(b: u8) -> bool {
    matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// The codepoint byte-level BPE uses for each byte.
pub(crate) static BYTE_TO_CHAR: std::sync::LazyLock<[char; 256]> = std::sync::LazyLock::new(|| {
    let mut t = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        t[b as usize] = if is_self_mapped(b) {
            b as char
        } else {
            let c = char::from_u32(next).expect("U+0100..U+0143 are valid codepoints");
            next += 1;
            c
        };
    }
    t
});

/// The bytes that map to U+0100.., in order.
static SHIFTED_BYTES: std::sync::LazyLock<[u8; 68]> = std::sync::LazyLock::new(|| {
    let mut t = [0u8; 68];
    for (slot, b) in t
        .iter_mut()
        .zip((0..=255u8).filter(|&b| !is_self_mapped(b)))
    {
        *slot = b;
    }
    t
});

/// The byte a byte-level BPE codepoint stands for, if it is one of the 256.
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    let c = c as u32;
    if c < 256 && is_self_mapped(c as u8) {
        return Some(c as u8);
    }
    if (256..256 + 68).contains(&c) {
        return Some(SHIFTED_BYTES[(c - 256) as usize]);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_of_known_codepoints() {
        assert!(flags('a').is_letter() && flags('Z').is_letter());
        assert!(flags('é').is_letter() && flags('中').is_letter() && flags('ß').is_letter());
        assert!(flags('7').is_number() && flags('٣').is_number() && flags('½').is_number());
        assert!(flags('Ⅻ').is_number(), "Nl counts as a number");
        assert!(
            flags(' ').is_whitespace()
                && flags('\n').is_whitespace()
                && flags('\u{3000}').is_whitespace()
        );
        assert!(flags('\u{85}').is_whitespace() && !flags('\u{200B}').is_whitespace());
        assert!(flags('\u{301}').is_mark());
        assert!(flags('!').is_punctuation() && !flags('$').is_punctuation());
        assert!(
            flags('\u{10FFFF}').is_some(),
            "unassigned codepoints still have a class"
        );
        assert!(!flags('😀').is_letter() && !flags('😀').is_whitespace());
        // Assigned in Unicode 15.1 (U+2FFC), so a letter-free symbol, not undefined.
        assert_eq!(class_of(0x2FFC), 0x40);
    }

    #[test]
    fn byte_map_is_a_bijection() {
        let mut seen = std::collections::HashSet::new();
        for b in 0..=255u8 {
            let c = BYTE_TO_CHAR[b as usize];
            assert!(seen.insert(c));
            assert_eq!(char_to_byte(c), Some(b));
        }
        assert_eq!(BYTE_TO_CHAR[b' ' as usize], 'Ġ');
        assert_eq!(BYTE_TO_CHAR[b'\n' as usize], 'Ċ');
        assert_eq!(char_to_byte('中'), None);
    }
}
