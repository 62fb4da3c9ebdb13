//! Every kernel at every level this CPU has, against smelt-quant's reference dequantisers and an
//! f64 dot product, on random weights quantised by the reference quantisers.
//!
//! Two checks per output:
//! 1. Against `sum(w_hat * x_hat)` in f64, where `w_hat`, `x_hat` are the dequantised weight and
//!    activation rows: the kernels' integer sums are exact, so only f32 rounding remains. Each
//!    block term is rounded a few times and at most `n / 32 + 8` terms are added in f32, so the
//!    error is below `(n / 32 + 8) * 2^-23 * sum |w_hat * x_hat|` (with cancellation between the
//!    K-quants' scale and minimum terms at most tripling it); we allow `TOL_ROUND` times that sum.
//!    A wrong element would move the result by about `sum / n`, far above that for every n used.
//!    Q4_1/Q5_1 also use the activation's f16 block sum `s = f16(d * sum(q))` (as ggml does):
//!    its rounding, about `2^-10 * |m * s|` per block, is added to the allowance.
//! 2. Against `sum(w_hat * x)` with the original f32 activations: the activation quantisation
//!    moves each `x` by at most half its block's step `d`, so the error is below
//!    `sum |w_hat| * d / 2` plus the rounding allowance of check 1.

use smelt_gguf::GgmlType;

use super::*;

/// Relative allowance for f32 rounding (see the module docs): 3 * (4096 / 32 + 8) * 2^-23 is
/// 4.9e-5; rounding errors add like a random walk, so in practice they are far smaller.
const TOL_ROUND: f64 = 5e-5;

/// splitmix64: a small seeded generator, enough for test data.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub(crate) fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Roughly normal (sum of four uniforms), with an occasional outlier as real activations
    /// and weights have.
    pub(crate) fn value(&mut self) -> f32 {
        let v = (self.uniform() + self.uniform() + self.uniform() + self.uniform() - 2.0) * 1.7;
        if self.next_u64().is_multiple_of(97) {
            v * 12.0
        } else {
            v
        }
    }

    pub(crate) fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.value() * scale).collect()
    }
}

/// The weight types every level must have an entry for.
const REQUIRED: &[GgmlType] = &[
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::F16,
    GgmlType::F32,
];

#[test]
fn table_has_every_required_entry() {
    let mut missing = Vec::new();
    for &wtype in REQUIRED {
        for isa in Isa::ALL {
            match table::lookup(wtype, isa) {
                Some(entry) if isa == Isa::Scalar || entry.code_isa != Isa::Scalar => {}
                _ => missing.push(format!("{wtype} @ {isa}")),
            }
        }
    }
    assert!(missing.is_empty(), "missing kernels: {missing:?}");
    for &wtype in SUPPORTED_TYPES {
        let entry = table::lookup(wtype, Isa::Scalar).expect("supported type has scalar code");
        assert_eq!(
            entry.act.ggml_type(),
            match smelt_quant::vec_dot_type(wtype) {
                // ggml converts activations to F16/BF16 for those weights; we keep f32.
                GgmlType::F16 | GgmlType::BF16 => GgmlType::F32,
                other => other,
            },
            "{wtype}"
        );
    }
}

#[test]
fn lookup_refuses_unknown_types_and_unsupported_levels() {
    assert!(matches!(
        MatmulKernel::new(GgmlType::IQ2_XXS, Isa::Scalar),
        Err(KernelError::Unsupported { .. })
    ));
    if !Isa::Avx512Vnni.is_supported() {
        assert!(matches!(
            MatmulKernel::new(GgmlType::Q4_0, Isa::Avx512Vnni),
            Err(KernelError::IsaUnavailable { .. })
        ));
    }
}

// ---------------------------------------------------------------- activation quantisers

/// Rows that exercise the quantisers' edge cases: exact rounding ties, a zero block, a block
/// whose largest magnitude appears with both signs (the first must win), tiny values.
fn special_rows(n: usize) -> Vec<Vec<f32>> {
    let mut rows = Vec::new();
    // With amax = 127, Q8_0's d is exactly 1, so k + 0.5 are exact ties.
    rows.push(
        (0..n)
            .map(|i| match i % 32 {
                0 => 127.0,
                j => (j as f32 - 16.0) + if j % 2 == 0 { 0.5 } else { -0.5 },
            })
            .collect(),
    );
    rows.push(vec![0.0; n]);
    rows.push(
        (0..n)
            .map(|i| match i % 64 {
                5 => -3.0,
                9 => 3.0,
                j => (j as f32) / 40.0 - 0.8,
            })
            .collect(),
    );
    rows.push((0..n).map(|i| (i as f32 - 100.0) * 1e-30).collect());
    // Q8_K: iscale * v lands on .5 for v = max * (k + 0.5) / 127.
    rows.push(
        (0..n)
            .map(|i| match i % 256 {
                0 => -127.0,
                j => ((j % 200) as f32 - 100.0) + 0.5,
            })
            .collect(),
    );
    rows
}

#[test]
fn activation_quantisers_are_bit_exact_with_the_reference() {
    let mut rng = Rng::new(1);
    for act in [ActType::Q8_0, ActType::Q8_1, ActType::Q8_K, ActType::F32] {
        for n in [256usize, 768, 4096] {
            let mut rows = special_rows(n);
            for scale in [1.0f32, 1e-3, 40.0] {
                rows.push(rng.vec(n, scale));
            }
            for x in &rows {
                let reference = smelt_quant::quantize_to_vec(act.ggml_type(), x).unwrap();
                for isa in Isa::supported() {
                    let got = quantize_row_to_vec(act, isa, x).unwrap();
                    assert!(
                        got == reference,
                        "{act:?} n={n} {isa}: differs from reference"
                    );
                }
            }
        }
    }
}

#[test]
fn quantise_refuses_bad_lengths() {
    let x = vec![1.0f32; 64];
    let mut out = vec![0u8; 10];
    assert!(matches!(
        quantize_row(ActType::Q8_0, Isa::Scalar, &x, &mut out),
        Err(KernelError::Length { .. })
    ));
    assert!(matches!(
        quantize_row(ActType::Q8_K, Isa::Scalar, &x, &mut out),
        Err(KernelError::PartialBlock { .. })
    ));
}

// ---------------------------------------------------------------- dot products

/// Random weights of one type, quantised by the reference quantiser, and their dequantisation.
struct Weights {
    wtype: GgmlType,
    n: usize,
    rows: usize,
    q: Vec<u8>,
    deq: Vec<f32>,
}

impl Weights {
    fn new(wtype: GgmlType, n: usize, rows: usize, rng: &mut Rng) -> Weights {
        let mut w = Vec::with_capacity(n * rows);
        for _ in 0..rows {
            // Rows of different magnitudes, as real matrices have.
            let scale = 0.02 + rng.uniform() * 0.2;
            w.extend(rng.vec(n, scale));
        }
        let q = smelt_quant::quantize_to_vec(wtype, &w).unwrap();
        let deq = smelt_quant::dequantize_to_vec(wtype, &q).unwrap();
        Weights {
            wtype,
            n,
            rows,
            q,
            deq,
        }
    }

    fn row(&self, r: usize) -> &[f32] {
        &self.deq[r * self.n..(r + 1) * self.n]
    }
}

/// One quantised activation row and what the checks need of it.
struct Act {
    x: Vec<f32>,
    q: Vec<u8>,
    deq: Vec<f32>,
    /// Per element, the largest error the quantisation may have made (half a step).
    half_step: Vec<f64>,
}

impl Act {
    fn new(kernel: &MatmulKernel, x: Vec<f32>) -> Act {
        let q = {
            let mut q = vec![0u8; kernel.act_row_bytes(x.len()).unwrap()];
            kernel.quantize_act(&x, &mut q).unwrap();
            q
        };
        let act = kernel.act_type();
        let deq = smelt_quant::dequantize_to_vec(act.ggml_type(), &q).unwrap();
        let bs = act.block_size();
        // Rounding to the nearest step moves a value by at most half a step. The quants are
        // computed with the unrounded scale d, Q8_0/Q8_1 store it as f16 (relative error up
        // to 2^-11): the step is up to 2^-11 larger than the stored one, and q * d and q * f16(d)
        // differ by up to |q| * d * 2^-11, which we bound by |x_hat| * 2^-10.
        let half_step = (0..x.len())
            .map(|i| {
                let block = &q[i / bs * act.block_bytes()..];
                let x_hat = deq[i].abs() as f64;
                match act {
                    ActType::F32 => 0.0,
                    ActType::Q8_K => {
                        let d = f32::from_le_bytes(block[..4].try_into().unwrap());
                        d.abs() as f64 / 2.0 + x_hat * 1e-6
                    }
                    _ => {
                        f16(block, 0).abs() as f64 / 2.0 * (1.0 + 2f64.powi(-10))
                            + x_hat * 2f64.powi(-10)
                    }
                }
            })
            .collect::<Vec<_>>();
        for (i, (&a, &b)) in x.iter().zip(&deq).enumerate() {
            let err = (a as f64 - b as f64).abs();
            assert!(
                err <= half_step[i] * (1.0 + 1e-6) + 1e-6 * (a.abs() as f64) + 1e-37,
                "{act:?}: element {i}: {a} quantised to {b}, step {}",
                2.0 * half_step[i]
            );
        }
        Act {
            x,
            q,
            deq,
            half_step,
        }
    }
}

fn f16(b: &[u8], at: usize) -> f32 {
    smelt_quant::half::f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// The slack of Q8_1's block sums `s = f16(d * sum(q))`: the f16 rounding (2^-11 relative)
/// plus the difference between the unrounded `d` it uses and the f16 `d` the dequantised
/// activations use (2^-11 again), so `1.1 * 2^-10 * |m_w * s_x|` per block.
fn q8_1_sum_slack(w: &Weights, r: usize, act: &Act) -> f64 {
    let bytes = w.wtype.type_size();
    let row = &w.q[r * (w.n / 32) * bytes..];
    (0..w.n / 32)
        .map(|b| (f16(row, b * bytes + 2) as f64 * f16(&act.q, b * 36 + 2) as f64).abs())
        .sum::<f64>()
        * 1.1
        * 2f64.powi(-10)
}

/// Assert one kernel output against both references.
fn check_output(kernel: &MatmulKernel, w: &Weights, r: usize, act: &Act, got: f32, what: &str) {
    let wr = w.row(r);
    let mut exact = 0f64;
    let mut magnitude = 0f64;
    let mut vs_f32 = 0f64;
    let mut quant_bound = 0f64;
    for (i, &a) in wr.iter().enumerate() {
        let (a, b) = (a as f64, act.deq[i] as f64);
        exact += a * b;
        magnitude += (a * b).abs();
        vs_f32 += a * act.x[i] as f64;
        quant_bound += a.abs() * act.half_step[i];
    }
    let mut slack = TOL_ROUND * magnitude + 1e-30;
    if kernel.act_type() == ActType::Q8_1 {
        slack += q8_1_sum_slack(w, r, act);
    }
    let got = got as f64;
    let label = format!(
        "{} @ {} (code {}) n={} row {r} {what}",
        w.wtype,
        kernel.isa(),
        kernel.code_isa(),
        w.n
    );
    assert!(
        (got - exact).abs() <= slack,
        "{label}: got {got}, dequantised reference {exact}, allowed {slack}"
    );
    assert!(
        (got - vs_f32).abs() <= quant_bound + slack,
        "{label}: got {got}, f32-activation reference {vs_f32}, allowed {}",
        quant_bound + slack
    );
}

/// gemv on rows `r0..rows` (a sub-range when r0 > 0), every level.
fn check_gemv(w: &Weights, r0: usize, rng: &mut Rng) {
    let x = rng.vec(w.n, 1.0);
    for isa in Isa::supported() {
        let kernel = MatmulKernel::new(w.wtype, isa).unwrap();
        let act = Act::new(&kernel, x.clone());
        let mut out = vec![f32::NAN; w.rows - r0];
        kernel
            .gemv(w.n, &w.q, r0..w.rows, &act.q, &mut out)
            .unwrap();
        for (i, &got) in out.iter().enumerate() {
            check_output(&kernel, w, r0 + i, &act, got, "gemv");
        }
        if r0 == 0 {
            let row_bytes = kernel.row_bytes(w.n).unwrap();
            let dot = kernel.dot(w.n, &w.q[..row_bytes], &act.q).unwrap();
            assert_eq!(dot, out[0], "{} @ {isa}: dot differs from gemv", w.wtype);
        }
    }
}

/// gemm over `tokens` activation rows, output with a padded stride, every level.
fn check_gemm(w: &Weights, tokens: usize, rng: &mut Rng) {
    let xs: Vec<Vec<f32>> = (0..tokens).map(|_| rng.vec(w.n, 1.0)).collect();
    let stride = w.rows + 3;
    for isa in Isa::supported() {
        let kernel = MatmulKernel::new(w.wtype, isa).unwrap();
        let acts: Vec<Act> = xs.iter().map(|x| Act::new(&kernel, x.clone())).collect();
        let xq: Vec<u8> = acts.iter().flat_map(|a| a.q.iter().copied()).collect();
        let mut out = vec![f32::NAN; stride * tokens];
        kernel
            .gemm(w.n, &w.q, 0..w.rows, &xq, tokens, &mut out, stride)
            .unwrap();
        for (t, act) in acts.iter().enumerate() {
            for r in 0..w.rows {
                check_output(
                    &kernel,
                    w,
                    r,
                    act,
                    out[t * stride + r],
                    &format!("gemm token {t}/{tokens}"),
                );
            }
            assert!(out[t * stride + w.rows..(t + 1) * stride]
                .iter()
                .all(|v| v.is_nan()));
        }
    }
}

fn lengths(wtype: GgmlType) -> Vec<usize> {
    [32usize, 256, 768, 4096]
        .into_iter()
        .filter(|n| n.is_multiple_of(wtype.block_size()))
        .collect()
}

fn check_type(wtype: GgmlType, seed: u64) {
    let mut rng = Rng::new(seed);
    for n in lengths(wtype) {
        let max_rows = if n >= 4096 { 50 } else { 783 };
        let w = Weights::new(wtype, n, max_rows, &mut rng);
        for rows in [1usize, 3, 50, 783].into_iter().filter(|&r| r <= max_rows) {
            let sub = Weights {
                wtype,
                n,
                rows,
                q: w.q[..rows * w.q.len() / max_rows].to_vec(),
                deq: w.deq[..rows * n].to_vec(),
            };
            check_gemv(&sub, 0, &mut rng);
            if rows > 1 {
                check_gemv(&sub, 1, &mut rng);
            }
        }
        if n <= 768 {
            for (rows, tokens) in [(3usize, 1usize), (3, 3), (50, 3), (50, 50), (783, 7)] {
                let sub = Weights {
                    wtype,
                    n,
                    rows,
                    q: w.q[..rows * w.q.len() / max_rows].to_vec(),
                    deq: w.deq[..rows * n].to_vec(),
                };
                check_gemm(&sub, tokens, &mut rng);
            }
        }
    }
    // Many tokens against a few rows: token chunks and token remainders.
    let n = lengths(wtype)[0];
    let w = Weights::new(wtype, n, 5, &mut rng);
    check_gemm(&w, 783, &mut rng);
}

macro_rules! type_tests {
    ($($name:ident: $t:ident,)*) => {$(
        #[test]
        fn $name() {
            check_type(GgmlType::$t, GgmlType::$t.id() as u64);
        }
    )*};
}

type_tests! {
    q4_0: Q4_0,
    q4_1: Q4_1,
    q5_0: Q5_0,
    q5_1: Q5_1,
    q8_0: Q8_0,
    q2_k: Q2_K,
    q3_k: Q3_K,
    q4_k: Q4_K,
    q5_k: Q5_K,
    q6_k: Q6_K,
    f32_weights: F32,
    f16_weights: F16,
    bf16_weights: BF16,
}

#[test]
fn calls_refuse_bad_shapes() {
    let kernel = MatmulKernel::new(GgmlType::Q4_0, Isa::detect()).unwrap();
    let n = 64;
    let w = vec![0u8; kernel.row_bytes(n).unwrap() * 4];
    let xq = vec![0u8; kernel.act_row_bytes(n).unwrap()];
    let mut out = vec![0f32; 4];
    assert!(kernel.gemv(n, &w, 0..4, &xq, &mut out).is_ok());
    assert!(matches!(
        kernel.gemv(n, &w, 0..5, &xq, &mut [0f32; 5]),
        Err(KernelError::RowRange { .. })
    ));
    #[allow(clippy::reversed_empty_ranges)]
    let reversed = 3..2;
    assert!(matches!(
        kernel.gemv(n, &w, reversed, &xq, &mut []),
        Err(KernelError::RowRange { .. })
    ));
    assert!(matches!(
        kernel.gemv(n, &w, 0..4, &xq, &mut out[..3]),
        Err(KernelError::Length { .. })
    ));
    assert!(matches!(
        kernel.gemv(n, &w, 0..4, &xq[1..], &mut out),
        Err(KernelError::Length { .. })
    ));
    assert!(matches!(
        kernel.gemv(48, &w, 0..1, &xq, &mut out[..1]),
        Err(KernelError::PartialBlock { .. })
    ));
    assert!(matches!(
        kernel.gemm(n, &w, 0..4, &xq, 1, &mut out[..3], 4),
        Err(KernelError::Length { .. })
    ));
    let xq2 = vec![0u8; xq.len() * 2];
    assert!(matches!(
        kernel.gemm(n, &w, 0..4, &xq2, 2, &mut [0f32; 8], 3),
        Err(KernelError::Length { .. })
    ));
    assert!(kernel.gemm(n, &w, 0..4, &xq2, 2, &mut [0f32; 8], 4).is_ok());
    assert!(kernel.gemm(n, &w, 2..2, &xq, 1, &mut [], 0).is_ok());
}
