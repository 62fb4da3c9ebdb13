//! Reference quantisers: quantise -> dequantise error against the original f32 values, within
//! ggml's own test-quantize-fns thresholds on its synthetic data, and within per-type relative
//! RMSE bounds on seeded Gaussian data over odd block counts.

mod common;

use common::Rng;
use smelt_quant::GgmlType;

const QUANT_TYPES: [GgmlType; 15] = [
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

fn round_trip(dtype: GgmlType, x: &[f32]) -> Vec<f32> {
    let q = smelt_quant::quantize_to_vec(dtype, x).unwrap_or_else(|e| panic!("{dtype}: {e}"));
    assert_eq!(
        q.len(),
        smelt_quant::row_size(dtype, x.len()).expect("size")
    );
    smelt_quant::dequantize_to_vec(dtype, &q).unwrap_or_else(|e| panic!("{dtype}: {e}"))
}

/// ggml's test-quantize-fns: data `0.1 + 2 cos(i)` over 4096 values, error
/// `sqrt(sum (x - y)^2) / n`, thresholds 0.0075 (Q2_K), 0.0040 (Q3_K), 0.002 (the rest).
#[test]
fn ggml_test_quantize_fns_thresholds() {
    let n = 32 * 128;
    let x: Vec<f32> = (0..n)
        .map(|i| (0.1 + 2.0 * f64::from((i as f32).cos())) as f32)
        .collect();
    for dtype in QUANT_TYPES {
        let y = round_trip(dtype, &x);
        let sum: f64 = x
            .iter()
            .zip(&y)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum();
        let err = (sum.sqrt() / n as f64) as f32;
        let limit = match dtype {
            GgmlType::Q2_K => 0.0075,
            GgmlType::Q3_K => 0.0040,
            _ => 0.002,
        };
        assert!(err < limit, "{dtype}: ggml total error {err} >= {limit}");
    }
}

/// RMSE of the round trip relative to the RMS of the data.
fn relative_rmse(x: &[f32], y: &[f32]) -> f64 {
    let err: f64 = x.iter().zip(y).map(|(a, b)| f64::from(a - b).powi(2)).sum();
    let norm: f64 = x.iter().map(|a| f64::from(*a).powi(2)).sum();
    (err / norm).sqrt()
}

/// Upper bounds on the relative RMSE for unit Gaussian data: the worst value measured on this
/// implementation over the cases below plus about 15%. They sit where the bits per weight put
/// them (each extra bit roughly halves the error; Q4_K's search beats Q4_1 with fewer bits), so a
/// broken search or packing overshoots them by far.
fn gaussian_bound(dtype: GgmlType) -> f64 {
    match dtype {
        GgmlType::F32 => 0.0,
        GgmlType::F16 => 2.6e-4,
        GgmlType::BF16 => 2.1e-3,
        GgmlType::Q8_0 | GgmlType::Q8_1 => 6.8e-3,
        // One scale per 256 values: a larger block maximum, a coarser step than Q8_0.
        GgmlType::Q8_K => 8.5e-3,
        GgmlType::Q6_K => 0.021,
        GgmlType::Q5_0 => 0.054,
        GgmlType::Q5_1 => 0.043,
        GgmlType::Q5_K => 0.042,
        GgmlType::Q4_0 => 0.100,
        GgmlType::Q4_1 => 0.097,
        GgmlType::Q4_K => 0.082,
        GgmlType::Q3_K => 0.175,
        GgmlType::Q2_K => 0.350,
        other => panic!("no bound for {other}"),
    }
}

#[test]
fn gaussian_round_trip_error_within_bounds() {
    let mut rng = Rng::new(7);
    for dtype in QUANT_TYPES {
        // Odd block counts, and rows whose scale varies by block as real weights do.
        for n_blocks in [1usize, 3, 7, 13] {
            let n = n_blocks * dtype.block_size().max(32);
            let x: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
            let y = round_trip(dtype, &x);
            let err = relative_rmse(&x, &y);
            let bound = gaussian_bound(dtype);
            assert!(
                err <= bound,
                "{dtype}, {n_blocks} blocks: relative RMSE {err:.5} > {bound}"
            );
        }
    }
}
