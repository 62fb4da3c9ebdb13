//! The fast backend's KV cache: keys and values in f16, one contiguous allocation.
//!
//! Each layer holds K and V as `[n_head_kv][capacity][head_dim]`, so one head's keys for a run
//! of positions are contiguous for attention. The head size is the plan's (from the layer's
//! attention op); the cache itself only knows each layer's row width `n_head_kv * head_dim`.

/// Where one layer's keys and values start, in f16 elements of [`FastKvCache`]'s storage.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LayerOffsets {
    pub k: usize,
    pub v: usize,
}

/// The f16 KV cache of one sequence.
#[derive(Clone, Debug)]
pub struct FastKvCache {
    pub(crate) data: Vec<u16>,
    pub(crate) layers: Vec<LayerOffsets>,
    capacity: usize,
}

impl FastKvCache {
    /// A cache for `capacity` positions; `widths[l]` = n_head_kv * head_dim of layer l.
    pub fn new(capacity: usize, widths: &[usize]) -> FastKvCache {
        let mut layers = Vec::with_capacity(widths.len());
        let mut off = 0;
        for &width in widths {
            let n = capacity * width;
            layers.push(LayerOffsets { k: off, v: off + n });
            off += 2 * n;
        }
        FastKvCache {
            data: vec![0; off],
            layers,
            capacity,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len() * 2
    }
}

/// Index of column `col` (of a K or V row) at position `pos`, relative to the layer's K or V
/// start, for heads of `head_dim`.
#[inline]
pub(crate) fn kv_index(capacity: usize, head_dim: usize, pos: usize, col: usize) -> usize {
    (col / head_dim) * capacity * head_dim + pos * head_dim + col % head_dim
}
