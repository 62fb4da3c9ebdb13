//! Device layout of weight rows. GGUF blocks of Q4_0 (18 bytes), Q5_0 (22), Q8_0 (34) and
//! Q6_K (210) are only 2-byte aligned, which limits a gemv lane to 2-byte loads; on upload
//! each block is padded so that its fields are 4-byte (Q4_0/Q5_0/Q8_0: 2 bytes in front) or
//! 16-byte (Q6_K: 14 bytes at the end) aligned. The padding costs bandwidth (Q6_K +6.7%),
//! far less than the narrow loads did. Every kernel (`deq_*`, `ld8_*`) reads this layout.

use smelt_gguf::GgmlType;

/// A padded block: values per block, GGUF bytes, device bytes, padding bytes in front.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PaddedBlock {
    pub values: usize,
    pub gguf: usize,
    pub dev: usize,
    pub front: usize,
}

pub(crate) fn padded_block(t: GgmlType) -> Option<PaddedBlock> {
    let (values, gguf, dev, front) = match t {
        GgmlType::Q4_0 => (32, 18, 20, 2),
        GgmlType::Q5_0 => (32, 22, 24, 2),
        GgmlType::Q8_0 => (32, 34, 36, 2),
        GgmlType::Q6_K => (256, 210, 224, 0),
        _ => return None,
    };
    Some(PaddedBlock {
        values,
        gguf,
        dev,
        front,
    })
}

/// Bytes of one device row of `cols` values of type `t`.
pub(crate) fn dev_row_bytes(t: GgmlType, cols: usize) -> Result<u64, String> {
    let gguf = smelt_quant::row_size(t, cols).map_err(|e| e.to_string())?;
    Ok(match padded_block(t) {
        Some(b) => (gguf / b.gguf * b.dev) as u64,
        None => gguf as u64,
    })
}

/// `data` (whole GGUF blocks of type `t`) in the device layout.
pub(crate) fn to_device(t: GgmlType, data: &[u8]) -> Option<Vec<u8>> {
    let b = padded_block(t)?;
    let mut out = vec![0u8; data.len() / b.gguf * b.dev];
    for (src, dst) in data.chunks_exact(b.gguf).zip(out.chunks_exact_mut(b.dev)) {
        dst[b.front..b.front + b.gguf].copy_from_slice(src);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_rows_keep_every_block_and_align_it() {
        for t in [
            GgmlType::Q4_0,
            GgmlType::Q5_0,
            GgmlType::Q8_0,
            GgmlType::Q6_K,
        ] {
            let b = padded_block(t).unwrap();
            let data: Vec<u8> = (0..3 * b.gguf).map(|i| (i * 7 + 1) as u8).collect();
            let dev = to_device(t, &data).unwrap();
            assert_eq!(dev.len(), 3 * b.dev);
            assert_eq!(dev_row_bytes(t, 3 * b.values).unwrap(), dev.len() as u64);
            for i in 0..3 {
                let d = &dev[i * b.dev..(i + 1) * b.dev];
                assert_eq!(
                    &d[b.front..b.front + b.gguf],
                    &data[i * b.gguf..(i + 1) * b.gguf]
                );
                assert!(d[..b.front]
                    .iter()
                    .chain(&d[b.front + b.gguf..])
                    .all(|&x| x == 0));
            }
            // The fields after the f16 scale start 4-byte aligned (16 for Q6_K's sections).
            assert_eq!((b.front + 2) % 4, if t == GgmlType::Q6_K { 2 } else { 0 });
            assert_eq!(b.dev % if t == GgmlType::Q6_K { 16 } else { 4 }, 0);
        }
        assert_eq!(padded_block(GgmlType::Q4_K), None);
        assert_eq!(dev_row_bytes(GgmlType::Q4_K, 256).unwrap(), 144);
    }
}
