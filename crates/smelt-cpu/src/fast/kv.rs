//! The fast backend's KV cache: keys and values in f16 (default) or q8_0, one allocation.
//!
//! Each layer holds V as `[n_head_kv][capacity][head_dim]` and, in f16, K transposed as
//! `[n_head_kv][head_dim][capacity]`: attention computes a chunk of scores as
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

    /// Offset (in storage units, from the layer's K or V start) of column `col` of a K or V
    /// row at position `pos`, for heads of `head_dim`. For q8_0, `col` starts a block.
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

/// Where one layer's keys and values start, in storage units.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LayerOffsets {
    pub k: usize,
    pub v: usize,
}

/// The KV cache of one sequence.
#[derive(Clone, Debug)]
pub struct FastKvCache {
    /// f16 storage (empty for q8_0).
    pub(crate) f16: Vec<u16>,
    /// q8_0 storage (empty for f16).
    pub(crate) q8: Vec<u8>,
    pub(crate) layers: Vec<LayerOffsets>,
    capacity: usize,
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
        for &width in widths {
            let n = capacity.checked_mul(unit(width)).ok_or_else(|| {
                FastError::Invalid(format!("a KV cache of {capacity} positions overflows"))
            })?;
            layers.push(LayerOffsets { k: off, v: off + n });
            off += 2 * n;
        }
        let (f16, q8) = match dtype {
            KvType::F16 => (vec![0; off], Vec::new()),
            KvType::Q8_0 => (Vec::new(), vec![0; off]),
        };
        Ok(FastKvCache {
            f16,
            q8,
            layers,
            capacity,
            dtype,
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn dtype(&self) -> KvType {
        self.dtype
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.f16.len() * 2 + self.q8.len()
    }
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
        assert_eq!(FastKvCache::new(4, &[48]).bytes(), 2 * 4 * 48 * 2);
    }
}
