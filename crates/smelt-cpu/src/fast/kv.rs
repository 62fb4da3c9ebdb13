//! The fast backend's KV cache: keys and values in f16 (default) or q8_0, one allocation.
//!
//! The cache is a pool of blocks of `block_size` positions. A sequence reaches its positions
//! through a block table (position `p` lies at offset `p % block_size` of block
//! `table[p / block_size]`), so many sequences share one pool and a block of a common prefix
//! can belong to several of them. A single sequence's cache is one block of `capacity`
//! positions with the table `[0]`.
//!
//! Each layer holds, per block, V as `[n_head_kv][block_size][head_dim]` and, in f16, K
//! transposed as `[n_head_kv][head_dim][block_size]`: attention computes a chunk of scores as
//! `sum_d q[d] * K[d][chunk]`, reading each dimension's run of positions contiguously, and adds
//! values row by row. The head size is the plan's (from the layer's attention op); the cache
//! itself only knows each layer's row width `n_head_kv * head_dim`. In q8_0 both K and V are
//! rows of `head_dim / 32` blocks of 34 bytes (f16 scale, 32 i8), as ggml's q8_0 KV cache stores
//! them: half the memory of f16, at 8-bit rounding of keys and values.

use smelt_graph::KvPart;

use super::FastError;

/// How keys and values are stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KvType {
    #[default]
    F16,
    Q8_0,
}

impl KvType {
    /// Storage units (f16 elements, or bytes for q8_0) of one head's row of `head_dim` values.
    pub(crate) fn head_row(self, head_dim: usize) -> usize {
        match self {
            KvType::F16 => head_dim,
            KvType::Q8_0 => head_dim / 32 * 34,
        }
    }

    /// Whether keys are stored transposed (`[head][d][position]`).
    pub(crate) fn keys_transposed(self) -> bool {
        self == KvType::F16
    }

    /// Offset (in storage units, from the start of a block's K or V of one layer) of column
    /// `col` of a K or V row at position `pos` of the block, for heads of `head_dim` and blocks
    /// of `capacity` positions. For q8_0, `col` starts a block of 32 values.
    #[inline]
    pub(crate) fn index(
        self,
        part: KvPart,
        capacity: usize,
        head_dim: usize,
        pos: usize,
        col: usize,
    ) -> usize {
        let hr = self.head_row(head_dim);
        let head = (col / head_dim) * capacity * hr;
        match self {
            KvType::F16 if part == KvPart::K => head + (col % head_dim) * capacity + pos,
            KvType::F16 => head + pos * hr + col % head_dim,
            KvType::Q8_0 => head + pos * hr + (col % head_dim) / 32 * 34,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KvType::F16 => "f16",
            KvType::Q8_0 => "q8_0",
        }
    }
}

/// Where one layer's keys and values start, in storage units, and the distance between two
/// blocks of one part.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LayerOffsets {
    pub k: usize,
    pub v: usize,
    pub block: usize,
}

/// A pool of KV blocks: one sequence's cache, or the shared pool of a batch.
#[derive(Clone, Debug)]
pub struct FastKvCache {
    /// f16 storage (empty for q8_0).
    pub(crate) f16: Vec<u16>,
    /// q8_0 storage (empty for f16).
    pub(crate) q8: Vec<u8>,
    pub(crate) layers: Vec<LayerOffsets>,
    block_size: usize,
    n_blocks: usize,
    dtype: KvType,
}

impl FastKvCache {
    /// An f16 cache for `capacity` positions; `widths[l]` = n_head_kv * head_dim of layer l.
    pub fn new(capacity: usize, widths: &[usize]) -> FastKvCache {
        FastKvCache::with_type(capacity, widths, KvType::F16).expect("f16 caches take any width")
    }

    /// A cache of `dtype`; q8_0 needs every width to be a multiple of 32 (heads too, checked
    /// when a program is lowered).
    pub fn with_type(
        capacity: usize,
        widths: &[usize],
        dtype: KvType,
    ) -> Result<FastKvCache, FastError> {
        FastKvCache::paged(1, capacity, widths, dtype)
    }

    /// A pool of `n_blocks` blocks of `block_size` positions each.
    pub fn paged(
        n_blocks: usize,
        block_size: usize,
        widths: &[usize],
        dtype: KvType,
    ) -> Result<FastKvCache, FastError> {
        if n_blocks == 0 || block_size == 0 {
            return Err(FastError::Invalid(format!(
                "a KV cache of {n_blocks} blocks of {block_size} positions"
            )));
        }
        if dtype == KvType::Q8_0 {
            if let Some(w) = widths.iter().find(|&&w| w % 32 != 0) {
                return Err(FastError::Unsupported {
                    what: format!("a q8_0 KV cache for rows of {w} values"),
                });
            }
        }
        let unit = |w: usize| match dtype {
            KvType::F16 => w,
            KvType::Q8_0 => w / 32 * 34,
        };
        let mut layers = Vec::with_capacity(widths.len());
        let mut off = 0usize;
        let overflow = || {
            FastError::Invalid(format!(
                "a KV cache of {n_blocks}x{block_size} positions overflows"
            ))
        };
        for &width in widths {
            let block = block_size.checked_mul(unit(width)).ok_or_else(overflow)?;
            let n = block.checked_mul(n_blocks).ok_or_else(overflow)?;
            layers.push(LayerOffsets {
                k: off,
                v: off + n,
                block,
            });
            off = n
                .checked_mul(2)
                .and_then(|n2| off.checked_add(n2))
                .ok_or_else(overflow)?;
        }
        let (f16, q8) = match dtype {
            KvType::F16 => (committed(off), Vec::new()),
            KvType::Q8_0 => (Vec::new(), committed(off)),
        };
        Ok(FastKvCache {
            f16,
            q8,
            layers,
            block_size,
            n_blocks,
            dtype,
        })
    }

    /// Positions in all blocks together.
    pub fn capacity(&self) -> usize {
        self.block_size * self.n_blocks
    }

    /// Positions per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn n_blocks(&self) -> usize {
        self.n_blocks
    }

    /// Bytes of one block (every layer's keys and values).
    pub fn block_bytes(&self) -> usize {
        self.bytes() / self.n_blocks
    }

    pub fn dtype(&self) -> KvType {
        self.dtype
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.f16.len() * 2 + self.q8.len()
    }
}

/// `n` zeros, written now. `vec![0; n]` gets zeroed pages from the OS lazily, so the resident
/// set would grow for as long as the pool finds blocks it has not used yet (seen: +590 MiB
/// over a 2-minute load test of a 1.5 GB pool); the pool is the model's memory from load on,
/// as the server's admission accounts it.
fn committed<T: Copy + Default>(n: usize) -> Vec<T> {
    let mut v = Vec::with_capacity(n);
    v.resize(n, T::default());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts() {
        let c = FastKvCache::with_type(10, &[64, 128], KvType::Q8_0).unwrap();
        assert_eq!(c.bytes(), 2 * 10 * (2 + 4) * 34);
        assert_eq!(
            KvType::Q8_0.index(KvPart::K, 10, 64, 3, 96),
            10 * 68 + 3 * 68 + 34
        );
        assert_eq!(
            KvType::Q8_0.index(KvPart::V, 10, 64, 3, 96),
            10 * 68 + 3 * 68 + 34
        );
        assert_eq!(
            KvType::F16.index(KvPart::V, 10, 64, 3, 96),
            10 * 64 + 3 * 64 + 32
        );
        // Keys transposed: head 1, dimension 32, position 3.
        assert_eq!(
            KvType::F16.index(KvPart::K, 10, 64, 3, 96),
            10 * 64 + 32 * 10 + 3
        );
        assert!(FastKvCache::with_type(4, &[48], KvType::Q8_0).is_err());
        let p = FastKvCache::paged(3, 4, &[64, 128], KvType::F16).unwrap();
        assert_eq!(p.capacity(), 12);
        assert_eq!(p.block_bytes(), 2 * 4 * (64 + 128) * 2);
        assert_eq!(p.layers[1].k, 2 * 3 * 4 * 64);
        assert_eq!(p.layers[1].block, 4 * 128);
        assert!(FastKvCache::paged(0, 4, &[64], KvType::F16).is_err());
        assert_eq!(FastKvCache::new(4, &[48]).bytes(), 2 * 4 * 48 * 2);
    }
}
