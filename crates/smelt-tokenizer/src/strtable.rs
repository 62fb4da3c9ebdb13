//! Many short byte strings in one buffer (token texts and pieces: 262k of them for Gemma 3).

/// Byte strings by index, stored back to back.
#[derive(Clone, Debug, Default)]
pub(crate) struct StrTable {
    data: Vec<u8>,
    /// `ends[i]` is where string `i` ends in `data`.
    ends: Vec<usize>,
}

impl StrTable {
    pub fn push(&mut self, s: &[u8]) {
        self.data.extend_from_slice(s);
        self.ends.push(self.data.len());
    }

    /// String `i`; callers only pass ids they have checked against [`StrTable::len`].
    pub fn get(&self, i: u32) -> &[u8] {
        let i = i as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.data[start..self.ends[i]]
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }
}

impl<'a> FromIterator<&'a [u8]> for StrTable {
    fn from_iter<I: IntoIterator<Item = &'a [u8]>>(iter: I) -> Self {
        let mut t = StrTable::default();
        for s in iter {
            t.push(s);
        }
        t
    }
}
