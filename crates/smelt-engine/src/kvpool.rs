//! Bookkeeping of a paged KV cache: which blocks are free, which sequences hold which blocks,
//! and the prefix cache.
//!
//! The storage itself is a `smelt_cpu::FastKvCache` of `n_blocks` blocks; this module only
//! hands out block numbers. A block is *held* by the sequences whose block tables name it
//! (reference counted). A full block whose keys and values are final is *registered* under
//! the hash chain of the tokens it holds: `h(i) = hash(h(i - 1), tokens of block i)`, so a
//! block's key names its whole prefix (keys and values at a position depend on every token
//! before it). A new sequence walks its prompt block by block and takes every registered
//! block on its chain until the first miss: the longest cached prefix, shared by reference.
//! Registered blocks nobody holds stay cached and are evicted least recently used when a
//! free block is needed. A registered block also stores its tokens and parent hash, so a hash
//! collision can never hand out the wrong keys and values.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

/// The chain hash before the first block.
pub const ROOT_HASH: u64 = 0x736d_656c_745f_6b76;

/// The chain hash of a block holding `tokens` after the prefix whose hash is `parent`.
pub fn chain_hash(parent: u64, tokens: &[u32]) -> u64 {
    // SipHash with fixed keys: stable within a process, which is all a cache in memory needs.
    let mut h = DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

#[derive(Clone, Debug)]
struct Registered {
    hash: u64,
    parent: u64,
    tokens: Box<[u32]>,
}

/// Free blocks, holders' reference counts and the prefix cache of one KV pool.
#[derive(Debug)]
pub struct BlockPool {
    block_size: usize,
    refs: Vec<u32>,
    /// Blocks holding nothing worth keeping.
    free: Vec<u32>,
    /// Per block: its prefix-cache entry.
    reg: Vec<Option<Registered>>,
    by_hash: HashMap<u64, u32>,
    /// Registered blocks nobody holds, by when they were last released (oldest first).
    idle: BTreeMap<u64, u32>,
    /// Per block: its key in `idle`.
    idle_tick: Vec<u64>,
    tick: u64,
    /// Blocks whose tokens a lookup reused, and blocks looked up (for hit rates).
    pub hits: u64,
    pub lookups: u64,
}

impl BlockPool {
    pub fn new(n_blocks: usize, block_size: usize) -> BlockPool {
        BlockPool {
            block_size,
            refs: vec![0; n_blocks],
            // Popped from the end: hand out low numbers first.
            free: (0..n_blocks as u32).rev().collect(),
            reg: vec![None; n_blocks],
            by_hash: HashMap::new(),
            idle: BTreeMap::new(),
            idle_tick: vec![0; n_blocks],
            tick: 0,
            hits: 0,
            lookups: 0,
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn n_blocks(&self) -> usize {
        self.refs.len()
    }

    /// Blocks a sequence could get now: free ones and cached ones nobody holds.
    pub fn available(&self) -> usize {
        self.free.len() + self.idle.len()
    }

    /// Registered blocks (held or not).
    pub fn cached(&self) -> usize {
        self.by_hash.len()
    }

    /// A block for a sequence to write: a free one, else the least recently used cached one
    /// (dropped from the cache). None when every block is held.
    pub fn alloc(&mut self) -> Option<u32> {
        let b = match self.free.pop() {
            Some(b) => b,
            None => {
                let (_, b) = self.idle.pop_first()?;
                self.unregister(b);
                b
            }
        };
        self.refs[b as usize] = 1;
        Some(b)
    }

    fn unregister(&mut self, b: u32) {
        if let Some(r) = self.reg[b as usize].take() {
            self.by_hash.remove(&r.hash);
        }
    }

    /// Take another hold on `b`.
    fn hold(&mut self, b: u32) {
        let i = b as usize;
        if self.refs[i] == 0 {
            self.idle.remove(&self.idle_tick[i]);
        }
        self.refs[i] += 1;
    }

    /// Let go of `b`: a block nobody holds is cached if registered, else free.
    pub fn release(&mut self, b: u32) {
        let i = b as usize;
        debug_assert!(self.refs[i] > 0, "block {b} released more often than held");
        self.refs[i] = self.refs[i].saturating_sub(1);
        if self.refs[i] == 0 {
            if self.reg[i].is_some() {
                self.tick += 1;
                self.idle_tick[i] = self.tick;
                self.idle.insert(self.tick, b);
            } else {
                self.free.push(b);
            }
        }
    }

    /// The registered blocks holding `tokens` from its start, whole blocks only, at most
    /// `max_blocks`: each is held once more for the caller. Returns them and the chain hash
    /// after the last.
    pub fn lookup(&mut self, tokens: &[u32], max_blocks: usize) -> (Vec<u32>, u64) {
        let mut parent = ROOT_HASH;
        let mut found = Vec::new();
        for chunk in tokens.chunks_exact(self.block_size).take(max_blocks) {
            self.lookups += 1;
            let h = chain_hash(parent, chunk);
            let Some(&b) = self.by_hash.get(&h) else {
                break;
            };
            let ok = self.reg[b as usize]
                .as_ref()
                .is_some_and(|r| r.parent == parent && *r.tokens == *chunk);
            if !ok {
                break;
            }
            self.hits += 1;
            self.hold(b);
            found.push(b);
            parent = h;
        }
        (found, parent)
    }

    /// Register held block `b`, now holding the final keys and values of `tokens` after the
    /// prefix `parent`. Returns the block's chain hash. When another block already holds the
    /// same prefix, `b` stays unregistered (and is freed when released).
    pub fn register(&mut self, b: u32, parent: u64, tokens: &[u32]) -> u64 {
        debug_assert_eq!(tokens.len(), self.block_size);
        let hash = chain_hash(parent, tokens);
        if self.reg[b as usize].is_none() && !self.by_hash.contains_key(&hash) {
            self.by_hash.insert(hash, b);
            self.reg[b as usize] = Some(Registered {
                hash,
                parent,
                tokens: tokens.into(),
            });
        }
        hash
    }

    /// Forget every cached prefix nobody holds.
    pub fn clear_cache(&mut self) {
        while let Some((_, b)) = self.idle.pop_first() {
            self.unregister(b);
            self.free.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_shared_cached_and_evicted_lru() {
        let mut p = BlockPool::new(4, 2);
        let a: Vec<u32> = (0..3).map(|_| p.alloc().unwrap()).collect();
        assert_eq!(a, vec![0, 1, 2]);
        // Sequence 1 holds [1 2][3 4][5]: the two full blocks are registered.
        let h0 = p.register(a[0], ROOT_HASH, &[1, 2]);
        p.register(a[1], h0, &[3, 4]);
        // Sequence 2 shares the first block only.
        let (got, h) = p.lookup(&[1, 2, 9, 9, 9], 10);
        assert_eq!((got.clone(), h), (vec![0], h0));
        assert_eq!(p.available(), 1);
        // Sequence 1 ends: its full blocks stay cached, the partial one is freed.
        for &b in &a {
            p.release(b);
        }
        assert_eq!(p.available(), 3);
        assert_eq!(p.cached(), 2);
        // Two new blocks: the free ones first, then the least recently used cached one
        // (block 1: block 0 is still held by sequence 2).
        assert_eq!(p.alloc(), Some(2));
        assert_eq!(p.alloc(), Some(3));
        assert_eq!(p.alloc(), Some(1));
        assert_eq!(p.alloc(), None);
        assert_eq!(p.cached(), 1);
        // The chain still finds block 0, and stops where block 1 was evicted.
        let (got2, _) = p.lookup(&[1, 2, 3, 4], 10);
        assert_eq!(got2, vec![0]);
        p.release(got[0]);
        p.release(got2[0]);
        assert_eq!(p.available(), 1);
        // A lookup never returns a partial block and respects the limit.
        assert!(p.lookup(&[1], 10).0.is_empty());
        assert!(p.lookup(&[1, 2], 0).0.is_empty());
        p.clear_cache();
        assert_eq!(p.cached(), 0);
    }

    #[test]
    fn a_prefix_registered_twice_keeps_one_entry() {
        let mut p = BlockPool::new(2, 2);
        let (x, y) = (p.alloc().unwrap(), p.alloc().unwrap());
        p.register(x, ROOT_HASH, &[7, 7]);
        p.register(y, ROOT_HASH, &[7, 7]);
        p.release(y);
        assert_eq!(p.available(), 1, "the duplicate is freed, not cached");
        p.release(x);
        assert_eq!(p.cached(), 1);
    }

    /// Random sequences over a tiny alphabet (so prefixes are shared) in a small pool: every
    /// block a lookup hands out holds exactly the tokens asked for, no block is handed to a
    /// writer while held, and everything returns to the pool.
    #[test]
    fn random_sequences_keep_the_pool_consistent() {
        const BS: usize = 4;
        let mut p = BlockPool::new(24, BS);
        // What each block holds, as the sequences wrote it.
        let mut content: Vec<Vec<u32>> = vec![Vec::new(); 24];
        let mut rng = 0x1234_5678_9abc_def0u64;
        let mut next = |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut live: Vec<Vec<u32>> = Vec::new();
        for _ in 0..2000 {
            if live.len() < 4 && next(2) == 0 {
                let len = 1 + next(14) as usize;
                let toks: Vec<u32> = (0..len).map(|_| next(2) as u32).collect();
                let (found, mut chain) = p.lookup(&toks, (len - 1) / BS);
                for (i, &b) in found.iter().enumerate() {
                    assert_eq!(content[b as usize], toks[i * BS..(i + 1) * BS]);
                }
                let mut blocks = found.clone();
                let mut ok = true;
                for i in found.len()..len.div_ceil(BS) {
                    let Some(b) = p.alloc() else {
                        ok = false;
                        break;
                    };
                    assert!(!live.iter().any(|l| l.contains(&b)), "block {b} is held");
                    let end = ((i + 1) * BS).min(len);
                    content[b as usize] = toks[i * BS..end].to_vec();
                    if end - i * BS == BS {
                        chain = p.register(b, chain, &toks[i * BS..end]);
                    }
                    blocks.push(b);
                }
                if ok {
                    live.push(blocks);
                } else {
                    blocks.into_iter().for_each(|b| p.release(b));
                }
            } else if !live.is_empty() {
                let i = next(live.len() as u64) as usize;
                live.swap_remove(i).into_iter().for_each(|b| p.release(b));
            }
            let held: usize = p.refs.iter().filter(|&&r| r > 0).count();
            assert_eq!(held + p.available(), p.n_blocks());
        }
        live.into_iter().flatten().for_each(|b| p.release(b));
        assert_eq!(p.available(), p.n_blocks());
        assert!(p.hits > 0, "prefixes were shared");
    }
}
