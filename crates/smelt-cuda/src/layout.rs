//! Device layout of weight rows. GGUF blocks of Q4_0 (18 bytes), Q5_0 (22), Q8_0 (34) and
//! Q6_K (210) are only 2-byte aligned, which would limit a gemv lane to 2-byte loads. On
//! upload each row of these types is laid out in sections instead: each field of a block,
//! for every block of the row in turn (Q8_0: every block's 32 quants, then every block's f16
//! scale), the row rounded up to 16 bytes. Every quant field then starts 16-byte aligned and
//! no byte is padding but at a row's end (v14a; v3-v13 padded each block: Q6_K 224 bytes,
//! +6.7% read a token, Q8_0 36, Q4_0 20, Q5_0 24). Every kernel (`deq_*`, `dqu_*`, `ld8_*`)
//! reads this layout, with the row's length to find its sections.

use smelt_gguf::GgmlType;

/// A sectioned block type: values per block, GGUF bytes per block, and its fields (offset
/// and length in the GGUF block) in the order of the row's sections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sectioned {
    pub values: usize,
    pub gguf: usize,
    pub fields: &'static [(usize, usize)],
}

pub(crate) fn sectioned(t: GgmlType) -> Option<Sectioned> {
    let (values, gguf, fields): (usize, usize, &'static [(usize, usize)]) = match t {
        // d, 16 bytes of nibbles -> nibbles, d.
        GgmlType::Q4_0 => (32, 18, &[(2, 16), (0, 2)]),
        // d, 4 bytes of fifth bits, 16 of nibbles -> nibbles, fifth bits, d.
        GgmlType::Q5_0 => (32, 22, &[(6, 16), (2, 4), (0, 2)]),
        // d, 32 int8 -> int8, d.
        GgmlType::Q8_0 => (32, 34, &[(2, 32), (0, 2)]),
        // ql 128, qh 64, scales 16, d 2: the GGUF order.
        GgmlType::Q6_K => (256, 210, &[(0, 128), (128, 64), (192, 16), (208, 2)]),
        _ => return None,
    };
    Some(Sectioned {
        values,
        gguf,
        fields,
    })
}

/// Bytes of one device row of `cols` values of type `t`.
pub(crate) fn dev_row_bytes(t: GgmlType, cols: usize) -> Result<u64, String> {
    let gguf = smelt_quant::row_size(t, cols).map_err(|e| e.to_string())?;
    Ok(match sectioned(t) {
        Some(_) => gguf.div_ceil(16) as u64 * 16,
        None => gguf as u64,
    })
}

/// `data` (whole GGUF rows of `cols` values of type `t`) in the device layout; None where
/// the type keeps GGUF's.
pub(crate) fn to_device(t: GgmlType, data: &[u8], cols: usize) -> Option<Vec<u8>> {
    let s = sectioned(t)?;
    let nb = cols / s.values;
    let (row_in, row_out) = (nb * s.gguf, (nb * s.gguf).div_ceil(16) * 16);
    if row_in == 0 {
        return Some(Vec::new());
    }
    let rows = data.len() / row_in;
    let mut out = vec![0u8; rows * row_out];
    for (src, dst) in data.chunks_exact(row_in).zip(out.chunks_exact_mut(row_out)) {
        let mut o = 0;
        for &(off, len) in s.fields {
            for b in src.chunks_exact(s.gguf) {
                dst[o..o + len].copy_from_slice(&b[off..off + len]);
                o += len;
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sectioned_rows_keep_every_byte_and_align_each_field() {
        for t in [
            GgmlType::Q4_0,
            GgmlType::Q5_0,
            GgmlType::Q8_0,
            GgmlType::Q6_K,
        ] {
            let s = sectioned(t).unwrap();
            assert_eq!(s.fields.iter().map(|f| f.1).sum::<usize>(), s.gguf);
            for nb in [1usize, 3, 8] {
                let cols = nb * s.values;
                let data: Vec<u8> = (0..2 * nb * s.gguf).map(|i| (i * 7 + 1) as u8).collect();
                let dev = to_device(t, &data, cols).unwrap();
                let rb = dev_row_bytes(t, cols).unwrap() as usize;
                assert_eq!(dev.len(), 2 * rb);
                assert_eq!(rb % 16, 0);
                assert!(rb < nb * s.gguf + 16);
                for r in 0..2 {
                    let (src, dst) = (&data[r * nb * s.gguf..], &dev[r * rb..(r + 1) * rb]);
                    // Field f of block b at the section's start plus b times its length.
                    let mut sec = 0;
                    for &(off, len) in s.fields {
                        // The quant fields (the first section) start 16-byte aligned.
                        assert!(sec > 0 || len % 16 == 0);
                        for b in 0..nb {
                            let at = sec + b * len;
                            assert_eq!(
                                &dst[at..at + len],
                                &src[b * s.gguf + off..b * s.gguf + off + len]
                            );
                        }
                        sec += nb * len;
                    }
                    assert!(dst[sec..].iter().all(|&x| x == 0));
                }
            }
        }
        assert_eq!(sectioned(GgmlType::Q4_K), None);
        assert_eq!(dev_row_bytes(GgmlType::Q4_K, 256).unwrap(), 144);
        assert_eq!(dev_row_bytes(GgmlType::Q6_K, 2048).unwrap(), 1680);
        assert_eq!(dev_row_bytes(GgmlType::Q8_0, 576).unwrap(), 624);
    }
}
