//! The public surface: block geometry against smelt-gguf's type table, typed errors for bad
//! input, byte round trips of every block struct, activation partners, range limits.

mod common;

use common::Rng;
use smelt_quant::{
    BlockQ2_K, BlockQ3_K, BlockQ4_0, BlockQ4_1, BlockQ4_K, BlockQ5_0, BlockQ5_1, BlockQ5_K,
    BlockQ6_K, BlockQ8_0, BlockQ8_1, BlockQ8_K, GgmlType, QuantBlock, QuantError,
};

const SUPPORTED: [GgmlType; 15] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q8_1,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q8_K,
];

/// Geometry matches the GGUF table, and bytes -> block -> bytes is the identity on random bytes.
fn check_block<B: QuantBlock<E, N>, const E: usize, const N: usize>(rng: &mut Rng) {
    assert_eq!(B::DTYPE.block_size(), E, "{}", B::DTYPE);
    assert_eq!(B::DTYPE.type_size(), N, "{}", B::DTYPE);
    assert_eq!(std::mem::size_of::<B>(), N, "{}", B::DTYPE);
    assert_eq!(
        B::VEC_DOT_TYPE,
        smelt_quant::vec_dot_type(B::DTYPE),
        "{}",
        B::DTYPE
    );
    for _ in 0..50 {
        let bytes: [u8; N] = std::array::from_fn(|_| rng.next_u64() as u8);
        assert_eq!(B::from_bytes(&bytes).to_bytes(), bytes, "{}", B::DTYPE);
    }
}

#[test]
fn block_geometry_and_byte_round_trip() {
    let mut rng = Rng::new(1);
    check_block::<BlockQ4_0, 32, 18>(&mut rng);
    check_block::<BlockQ4_1, 32, 20>(&mut rng);
    check_block::<BlockQ5_0, 32, 22>(&mut rng);
    check_block::<BlockQ5_1, 32, 24>(&mut rng);
    check_block::<BlockQ8_0, 32, 34>(&mut rng);
    check_block::<BlockQ8_1, 32, 36>(&mut rng);
    check_block::<BlockQ2_K, 256, 84>(&mut rng);
    check_block::<BlockQ3_K, 256, 110>(&mut rng);
    check_block::<BlockQ4_K, 256, 144>(&mut rng);
    check_block::<BlockQ5_K, 256, 176>(&mut rng);
    check_block::<BlockQ6_K, 256, 210>(&mut rng);
    check_block::<BlockQ8_K, 256, 292>(&mut rng);
    assert_eq!(BlockQ4_K::ELEMS, 256);
    assert_eq!(BlockQ4_K::BYTES, 144);
}

#[test]
fn supported_set() {
    for t in GgmlType::all() {
        assert_eq!(smelt_quant::is_supported(t), SUPPORTED.contains(&t), "{t}");
    }
}

#[test]
fn vec_dot_partners_follow_ggml() {
    use GgmlType::*;
    let pairs = [
        (F32, F32),
        (F16, F16),
        (BF16, BF16),
        (Q4_0, Q8_0),
        (Q4_1, Q8_1),
        (Q5_0, Q8_0),
        (Q5_1, Q8_1),
        (Q8_0, Q8_0),
        (Q8_1, Q8_1),
        (Q2_K, Q8_K),
        (Q3_K, Q8_K),
        (Q4_K, Q8_K),
        (Q5_K, Q8_K),
        (Q6_K, Q8_K),
        (IQ4_NL, Q8_0),
        (IQ4_XS, Q8_K),
        (MXFP4, Q8_0),
        (TQ2_0, Q8_K),
    ];
    for (w, a) in pairs {
        assert_eq!(smelt_quant::vec_dot_type(w), a, "{w}");
    }
    // Every supported weight type's partner is itself supported (the fast kernels need it).
    for t in SUPPORTED {
        assert!(
            smelt_quant::is_supported(smelt_quant::vec_dot_type(t)),
            "{t}"
        );
    }
}

#[test]
fn length_errors_are_typed() {
    let q = GgmlType::Q4_K;
    let mut out = vec![0f32; 256];
    assert_eq!(
        smelt_quant::dequantize(q, &[0u8; 143], &mut out),
        Err(QuantError::ByteLength {
            op: "dequantize",
            dtype: q,
            n_elements: 256,
            expected: 144,
            actual: 143
        })
    );
    let mut out = vec![0f32; 255];
    assert_eq!(
        smelt_quant::dequantize(q, &[0u8; 144], &mut out),
        Err(QuantError::PartialBlock {
            op: "dequantize",
            dtype: q,
            n_elements: 255,
            block_size: 256
        })
    );
    assert_eq!(
        smelt_quant::dequantize_to_vec(GgmlType::Q8_0, &[0u8; 35]),
        Err(QuantError::PartialBlockBytes {
            op: "dequantize",
            dtype: GgmlType::Q8_0,
            n_bytes: 35,
            type_size: 34
        })
    );
    assert_eq!(
        smelt_quant::quantize(GgmlType::Q8_0, &[0.0; 64], &mut [0u8; 67]),
        Err(QuantError::ByteLength {
            op: "quantize",
            dtype: GgmlType::Q8_0,
            n_elements: 64,
            expected: 68,
            actual: 67
        })
    );
    assert!(matches!(
        smelt_quant::quantize_to_vec(GgmlType::Q5_0, &[0.0; 33]),
        Err(QuantError::PartialBlock {
            n_elements: 33,
            block_size: 32,
            ..
        })
    ));
    assert!(matches!(
        smelt_quant::dequantize(GgmlType::IQ2_XXS, &[0u8; 66], &mut [0f32; 256]),
        Err(QuantError::Unsupported {
            op: "dequantize",
            dtype: GgmlType::IQ2_XXS
        })
    ));
    assert!(matches!(
        smelt_quant::quantize_to_vec(GgmlType::I32, &[0.0; 4]),
        Err(QuantError::Unsupported { op: "quantize", .. })
    ));
    // Empty input is zero whole blocks.
    assert_eq!(
        smelt_quant::dequantize_to_vec(GgmlType::Q6_K, &[]),
        Ok(vec![])
    );
    assert_eq!(
        smelt_quant::quantize_to_vec(GgmlType::Q6_K, &[]),
        Ok(vec![])
    );
    let msg = smelt_quant::dequantize(q, &[0u8; 143], &mut [0f32; 256])
        .unwrap_err()
        .to_string();
    assert_eq!(
        msg,
        "[dequantize] 256 elements of Q4_K take 144 bytes, the buffer has 143"
    );
}

#[test]
fn non_finite_and_out_of_range_inputs_are_refused() {
    for dtype in SUPPORTED {
        let n = dtype.block_size().max(32);
        for (index, bad) in [
            (3usize, f32::NAN),
            (n - 1, f32::INFINITY),
            (0, f32::NEG_INFINITY),
        ] {
            let mut x = vec![0.5f32; n];
            x[index] = bad;
            match smelt_quant::quantize_to_vec(dtype, &x) {
                Err(QuantError::OutOfRange {
                    dtype: d, index: i, ..
                }) => {
                    assert_eq!((d, i), (dtype, index));
                }
                other => panic!("{dtype} with {bad}: {other:?}"),
            }
        }
        let limit = smelt_quant::max_abs(dtype).expect("supported");
        if limit < f32::MAX {
            let mut x = vec![0.5f32; n];
            x[1] = -limit * 1.001;
            assert!(matches!(
                smelt_quant::quantize_to_vec(dtype, &x),
                Err(QuantError::OutOfRange { index: 1, .. })
            ));
        }
    }
}

/// Values right at the limit quantise to finite scales and dequantise to finite values.
#[test]
fn inputs_at_the_limit_stay_finite() {
    let mut rng = Rng::new(3);
    for dtype in SUPPORTED {
        let limit = smelt_quant::max_abs(dtype).expect("supported");
        let n = dtype.block_size().max(32);
        for sign in [1.0f32, -1.0] {
            // F32/Q8_K accept anything finite; keep their sums finite with a large but sane value.
            let top = if limit == f32::MAX { 1e30 } else { limit };
            let mut x: Vec<f32> = (0..n)
                .map(|_| (rng.normal() * (top / 8.0)).clamp(-top, top))
                .collect();
            x[5] = sign * top;
            x[6] = -sign * top;
            let y = smelt_quant::dequantize_to_vec(
                dtype,
                &smelt_quant::quantize_to_vec(dtype, &x).expect("quantize"),
            )
            .expect("dequantize");
            assert!(
                y.iter().all(|v| v.is_finite()),
                "{dtype}: non-finite output at the limit"
            );
            // The extremes survive within a few steps of the format.
            let rel = ((y[5] - x[5]) / top).abs();
            assert!(
                rel < 0.35,
                "{dtype}: extreme value {} came back as {}",
                x[5],
                y[5]
            );
        }
    }
}

#[test]
fn zeros_stay_zeros() {
    for dtype in SUPPORTED {
        let n = 3 * dtype.block_size().max(32);
        let q = smelt_quant::quantize_to_vec(dtype, &vec![0.0; n]).expect("quantize");
        let y = smelt_quant::dequantize_to_vec(dtype, &q).expect("dequantize");
        assert!(y.iter().all(|&v| v == 0.0), "{dtype}");
    }
}

#[test]
fn activation_blocks_carry_consistent_sums() {
    let mut rng = Rng::new(5);
    let x: Vec<f32> = (0..256).map(|_| rng.normal()).collect();
    let q8k = BlockQ8_K::quantize(x.as_slice().try_into().expect("256"));
    for (g, &s) in q8k.bsums.iter().enumerate() {
        let sum: i32 = q8k.qs[16 * g..16 * g + 16]
            .iter()
            .map(|&q| i32::from(q))
            .sum();
        assert_eq!(i32::from(s), sum);
    }
    assert!(q8k.qs.iter().any(|&q| q == -127 || q == 127));
    let q81 = BlockQ8_1::quantize(x[..32].try_into().expect("32"));
    let d = smelt_quant::half::f16_to_f32(q81.d);
    let sum: i32 = q81.qs.iter().map(|&q| i32::from(q)).sum();
    assert_eq!(q81.s, smelt_quant::half::f32_to_f16(sum as f32 * d));
}

#[test]
fn dequantize_row_picks_one_row() {
    let mut rng = Rng::new(9);
    let (rows, per_row) = (5usize, 512usize);
    let x: Vec<f32> = (0..rows * per_row).map(|_| rng.normal()).collect();
    for dtype in [GgmlType::Q4_K, GgmlType::Q8_0, GgmlType::F16] {
        let q = smelt_quant::quantize_to_vec(dtype, &x).expect("quantize");
        let all = smelt_quant::dequantize_to_vec(dtype, &q).expect("dequantize");
        let mut row = vec![0f32; per_row];
        for r in 0..rows {
            smelt_quant::dequantize_row(dtype, &q, per_row, r, &mut row).expect("row");
            assert_eq!(row, all[r * per_row..(r + 1) * per_row], "{dtype} row {r}");
        }
        assert!(matches!(
            smelt_quant::dequantize_row(dtype, &q, per_row, rows, &mut row),
            Err(QuantError::RowOutOfRange { row: 5, .. })
        ));
        assert!(matches!(
            smelt_quant::dequantize_row(dtype, &q, per_row, usize::MAX, &mut row),
            Err(QuantError::RowOutOfRange { .. })
        ));
        assert!(matches!(
            smelt_quant::dequantize_row(dtype, &q, per_row, 0, &mut row[..10]),
            Err(QuantError::OutputLength {
                expected: 512,
                actual: 10,
                ..
            })
        ));
    }
}
