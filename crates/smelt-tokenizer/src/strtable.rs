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

/// Finds a string's index in a [`StrTable`]: open addressing over ids, so the strings are not
/// stored a second time (262k small allocations for Gemma 3 otherwise). Where a string occurs
/// twice the later index wins, as in llama.cpp's map.
#[derive(Clone, Debug, Default)]
pub(crate) struct StrIndex {
    /// id + 1 per slot, 0 for empty; the length is a power of two, at least twice the ids.
    slots: Vec<u32>,
}

fn hash_bytes(s: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = crate::hash::FxHasher::default();
    h.write(s);
    h.finish()
}

impl StrIndex {
    pub fn new(table: &StrTable) -> StrIndex {
        let cap = (table.len() * 2).next_power_of_two().max(16);
        let mut idx = StrIndex {
            slots: vec![0; cap],
        };
        for id in 0..table.len() as u32 {
            let s = table.get(id);
            let mut slot = idx.first_slot(s);
            loop {
                match idx.slots[slot] {
                    0 => {
                        idx.slots[slot] = id + 1;
                        break;
                    }
                    other if table.get(other - 1) == s => {
                        idx.slots[slot] = id + 1;
                        break;
                    }
                    _ => slot = (slot + 1) & (cap - 1),
                }
            }
        }
        idx
    }

    fn first_slot(&self, s: &[u8]) -> usize {
        (hash_bytes(s) as usize) & (self.slots.len() - 1)
    }

    /// The index of `s` in `table` (the table this index was built from).
    #[inline]
    pub fn get(&self, table: &StrTable, s: &[u8]) -> Option<u32> {
        let mask = self.slots.len() - 1;
        let mut slot = self.first_slot(s);
        loop {
            match self.slots[slot] {
                0 => return None,
                v if table.get(v - 1) == s => return Some(v - 1),
                _ => slot = (slot + 1) & mask,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_finds_every_string_and_the_last_duplicate() {
        let words: Vec<String> = (0..1000)
            .map(|i| format!("w{i}"))
            .chain(["w5".to_owned()])
            .collect();
        let t: StrTable = words.iter().map(|w| w.as_bytes()).collect();
        let idx = StrIndex::new(&t);
        for (i, w) in words.iter().enumerate().take(1000) {
            let expect = if w == "w5" { 1000 } else { i as u32 };
            assert_eq!(idx.get(&t, w.as_bytes()), Some(expect));
        }
        assert_eq!(idx.get(&t, b"nope"), None);
        assert_eq!(idx.get(&t, b""), None);
    }
}
