//! Attention over the f16 KV cache: causal, GQA, optional sliding window.
//!
//! Work items are (token, query head) pairs dealt round-robin to the threads, which balances
//! both decode (one token, heads split) and causal prefill (later tokens see more keys).
//! Keys and values of one KV head are contiguous per position (see `kv.rs`).

use smelt_quant::half::f16_to_f32;

use super::exec::Ctx;
use super::kv::KvType;
use super::lower::AttnStep;
use super::FastError;

/// The f16 dot and axpy used on cache rows, chosen once for the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum F16Isa {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2F16c,
}

impl F16Isa {
    pub fn detect() -> F16Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                return F16Isa::Avx2F16c;
            }
        }
        F16Isa::Scalar
    }

    /// `sum(q[i] * k[i])` with `k` in f16.
    #[inline]
    pub fn dot(self, q: &[f32], k: &[u16]) -> f32 {
        assert_eq!(q.len(), k.len());
        match self {
            F16Isa::Scalar => dot_scalar(q, k),
            // SAFETY: `detect` chose this only where the CPU has AVX2, FMA and F16C; lengths match.
            #[cfg(target_arch = "x86_64")]
            F16Isa::Avx2F16c => unsafe { x86::dot(q, k) },
        }
    }

    /// `dst[i] = src[i]` converted from f16.
    #[inline]
    pub fn convert(self, src: &[u16], dst: &mut [f32]) {
        assert_eq!(src.len(), dst.len());
        match self {
            F16Isa::Scalar => dst
                .iter_mut()
                .zip(src)
                .for_each(|(d, &s)| *d = f16_to_f32(s)),
            // SAFETY: as in `dot`.
            #[cfg(target_arch = "x86_64")]
            F16Isa::Avx2F16c => unsafe { x86::convert(src, dst) },
        }
    }

    /// `out[i] += w * v[i]` with `v` in f16.
    #[inline]
    pub fn axpy(self, out: &mut [f32], w: f32, v: &[u16]) {
        assert_eq!(out.len(), v.len());
        match self {
            F16Isa::Scalar => out
                .iter_mut()
                .zip(v)
                .for_each(|(o, &v)| *o += w * f16_to_f32(v)),
            // SAFETY: as in `dot`.
            #[cfg(target_arch = "x86_64")]
            F16Isa::Avx2F16c => unsafe { x86::axpy(out, w, v) },
        }
    }
}

/// `sum(q[i] * k[i])` with `k` in q8_0 blocks (f16 scale, 32 i8): per block, the i8 dot in
/// f32, times the scale.
fn dot_q8(q: &[f32], k: &[u8]) -> f32 {
    let mut sum = 0.0;
    for (qb, kb) in q.chunks_exact(32).zip(k.chunks_exact(34)) {
        let d = f16_to_f32(u16::from_le_bytes([kb[0], kb[1]]));
        let mut acc = [0f32; 8];
        for (qc, kc) in qb.chunks_exact(8).zip(kb[2..].chunks_exact(8)) {
            for i in 0..8 {
                acc[i] += qc[i] * f32::from(kc[i] as i8);
            }
        }
        sum += d * acc.iter().sum::<f32>();
    }
    sum
}

/// `out[i] += w * v[i]` with `v` in q8_0 blocks.
fn axpy_q8(out: &mut [f32], w: f32, v: &[u8]) {
    for (ob, vb) in out.chunks_exact_mut(32).zip(v.chunks_exact(34)) {
        let wd = w * f16_to_f32(u16::from_le_bytes([vb[0], vb[1]]));
        for (o, &x) in ob.iter_mut().zip(&vb[2..]) {
            *o += wd * f32::from(x as i8);
        }
    }
}

fn dot_scalar(q: &[f32], k: &[u16]) -> f32 {
    let mut acc = [0f32; 8];
    let (qc, kc) = (q.chunks_exact(8), k.chunks_exact(8));
    let (qr, kr) = (qc.remainder(), kc.remainder());
    for (a, b) in qc.zip(kc) {
        for i in 0..8 {
            acc[i] += a[i] * f16_to_f32(b[i]);
        }
    }
    acc.iter().sum::<f32>()
        + qr.iter()
            .zip(kr)
            .map(|(a, &b)| a * f16_to_f32(b))
            .sum::<f32>()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use smelt_quant::half::f16_to_f32;

    /// # Safety
    /// The CPU supports AVX2, FMA and F16C; `q.len() == k.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot(q: &[f32], k: &[u16]) -> f32 {
        let n = q.len();
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        // SAFETY: every load reads 8 (16) elements at i < n - 7 (n - 15) of slices of length n.
        unsafe {
            while i + 16 <= n {
                let k0 = _mm256_cvtph_ps(_mm_loadu_si128(k.as_ptr().add(i).cast()));
                let k1 = _mm256_cvtph_ps(_mm_loadu_si128(k.as_ptr().add(i + 8).cast()));
                acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(q.as_ptr().add(i)), k0, acc0);
                acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(q.as_ptr().add(i + 8)), k1, acc1);
                i += 16;
            }
            while i + 8 <= n {
                let k0 = _mm256_cvtph_ps(_mm_loadu_si128(k.as_ptr().add(i).cast()));
                acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(q.as_ptr().add(i)), k0, acc0);
                i += 8;
            }
        }
        let acc = _mm256_add_ps(acc0, acc1);
        let hi = _mm256_extractf128_ps(acc, 1);
        let s = _mm_add_ps(_mm256_castps256_ps128(acc), hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        let mut sum = _mm_cvtss_f32(s);
        while i < n {
            sum += q[i] * f16_to_f32(k[i]);
            i += 1;
        }
        sum
    }

    /// # Safety
    /// The CPU supports AVX2, FMA and F16C; `src.len() == dst.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn convert(src: &[u16], dst: &mut [f32]) {
        let n = src.len();
        let mut i = 0;
        // SAFETY: every access covers 8 elements at i < n - 7 of slices of length n.
        unsafe {
            while i + 8 <= n {
                let x = _mm256_cvtph_ps(_mm_loadu_si128(src.as_ptr().add(i).cast()));
                _mm256_storeu_ps(dst.as_mut_ptr().add(i), x);
                i += 8;
            }
        }
        while i < n {
            dst[i] = f16_to_f32(src[i]);
            i += 1;
        }
    }

    /// # Safety
    /// The CPU supports AVX2, FMA and F16C; `out.len() == v.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn axpy(out: &mut [f32], w: f32, v: &[u16]) {
        let n = out.len();
        let wv = _mm256_set1_ps(w);
        let mut i = 0;
        // SAFETY: every access covers 8 elements at i < n - 7 of slices of length n.
        unsafe {
            while i + 8 <= n {
                let x = _mm256_cvtph_ps(_mm_loadu_si128(v.as_ptr().add(i).cast()));
                let o = _mm256_loadu_ps(out.as_ptr().add(i));
                _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_fmadd_ps(wv, x, o));
                i += 8;
            }
        }
        while i < n {
            out[i] += w * f16_to_f32(v[i]);
            i += 1;
        }
    }
}

/// Row storage of the cache being read: f16 elements or q8_0 bytes.
enum Rows<'a> {
    F16(&'a [u16]),
    Q8(&'a [u8]),
}

impl Rows<'_> {
    /// Row `j` (of `hr` storage units) as f32 into `dst`.
    fn load(&self, isa: F16Isa, j: usize, hr: usize, dst: &mut [f32]) {
        match self {
            Rows::F16(r) => isa.convert(&r[j * hr..(j + 1) * hr], dst),
            Rows::Q8(r) => dequant_q8(&r[j * hr..(j + 1) * hr], dst),
        }
    }
}

/// This thread's share of one attention kernel.
///
/// Items are (token, query head) pairs, or (token, KV head) groups when there are enough of
/// them to keep every thread busy: a group loads each key and value row once (converted to
/// f32 once) for all the query heads sharing it.
pub(crate) fn run(
    st: &AttnStep,
    tid: usize,
    ctx: &Ctx,
    scratch: &mut [f32],
) -> Result<(), FastError> {
    let (hd, n_head) = (st.head_dim, st.n_head);
    let group = n_head / st.n_head_kv;
    let grouped = group > 1 && group <= MAX_GROUP && st.rows * st.n_head_kv >= 4 * ctx.n_threads;
    let per = if grouped { group } else { 1 };
    let lay = ctx.kv_layers[st.layer];
    let cap = ctx.capacity;
    let qcols = n_head * hd;
    let items = if grouped {
        st.rows * st.n_head_kv
    } else {
        st.rows * n_head
    };
    let hr = ctx.kv_type.head_row(hd);
    let (scores, row) = scratch.split_at_mut(per * cap);
    let row = &mut row[..hd];
    let mut i = tid;
    while i < items {
        let (t, h0) = if grouped {
            (i / st.n_head_kv, (i % st.n_head_kv) * group)
        } else {
            (i / n_head, i % n_head)
        };
        i += ctx.n_threads;
        let pos = ctx.positions[t] as usize;
        let lo = st.window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let n_keys = pos + 1 - lo;
        let base = ctx.kv_type.index(cap, hd, lo, (h0 / group) * hd);
        // SAFETY: q was written by an earlier kernel; the cache rows up to `pos` were written
        // by earlier kernels (this step's) or earlier steps; nothing writes them now.
        let (q, keys, vals) = unsafe {
            let q = ctx.arena.get(st.q_off + t * qcols + h0 * hd, per * hd);
            match ctx.kv_type {
                KvType::F16 => (
                    q,
                    Rows::F16(ctx.kv16.get(lay.k + base, n_keys * hr)),
                    Rows::F16(ctx.kv16.get(lay.v + base, n_keys * hr)),
                ),
                KvType::Q8_0 => (
                    q,
                    Rows::Q8(ctx.kv8.get(lay.k + base, n_keys * hr)),
                    Rows::Q8(ctx.kv8.get(lay.v + base, n_keys * hr)),
                ),
            }
        };
        // Scores: head g's at [g * n_keys..].
        let sc = &mut scores[..per * n_keys];
        match (&keys, per) {
            (Rows::F16(k), 1) => {
                for (s, k) in sc.iter_mut().zip(k.chunks_exact(hr)) {
                    *s = ctx.f16.dot(q, k) * st.scale;
                }
            }
            (Rows::Q8(k), 1) => {
                for (s, k) in sc.iter_mut().zip(k.chunks_exact(hr)) {
                    *s = dot_q8(q, k) * st.scale;
                }
            }
            _ => {
                for j in 0..n_keys {
                    keys.load(ctx.f16, j, hr, row);
                    for (g, qg) in q.chunks_exact(hd).enumerate() {
                        sc[g * n_keys + j] = dot(qg, row) * st.scale;
                    }
                }
            }
        }
        let mut inv_sum = [0f32; MAX_GROUP];
        for (g, s) in sc.chunks_exact_mut(n_keys).enumerate() {
            let max = s.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            s.iter_mut().for_each(|v| *v = exp_neg(*v - max));
            inv_sum[g % MAX_GROUP] = 1.0 / s.iter().sum::<f32>();
        }
        // SAFETY: item i is this thread's alone (round-robin), and its output columns (the
        // heads h0..h0 + per of row t) are written by no other item.
        let out = unsafe {
            ctx.arena
                .get_mut(st.out_off + t * qcols + h0 * hd, per * hd)
        };
        out.fill(0.0);
        match (&vals, per) {
            (Rows::F16(v), 1) => {
                for (s, v) in sc.iter().zip(v.chunks_exact(hr)) {
                    ctx.f16.axpy(out, s * inv_sum[0], v);
                }
            }
            (Rows::Q8(v), 1) => {
                for (s, v) in sc.iter().zip(v.chunks_exact(hr)) {
                    axpy_q8(out, s * inv_sum[0], v);
                }
            }
            _ => {
                for j in 0..n_keys {
                    vals.load(ctx.f16, j, hr, row);
                    for (g, og) in out.chunks_exact_mut(hd).enumerate() {
                        let w = sc[g * n_keys + j] * inv_sum[g % MAX_GROUP];
                        og.iter_mut().zip(&*row).for_each(|(o, v)| *o += w * v);
                    }
                }
            }
        }
    }
    Ok(())
}

/// Most query heads per KV head the grouped path handles (Gemma 3 and Llama 3 use 2 to 8);
/// `lower` keeps larger groups on the per-head path.
pub(crate) const MAX_GROUP: usize = 16;

/// Eight-accumulator f32 dot product (vectorises).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    crate::reference::dot(a, b)
}

/// q8_0 blocks to f32.
fn dequant_q8(src: &[u8], dst: &mut [f32]) {
    for (ob, b) in dst.chunks_exact_mut(32).zip(src.chunks_exact(34)) {
        let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
        ob.iter_mut()
            .zip(&b[2..])
            .for_each(|(o, &x)| *o = d * f32::from(x as i8));
    }
}

/// `e^x` for the softmax's `x <= 0`, within a few ulp; plain arithmetic, so loops over it
/// vectorise (the library `exp` is a call per element). `x = n ln2 + r` with `n` an integer
/// (set in the exponent bits) and `|r| <= ln2 / 2`, `ln2` split in two parts so `r` is exact
/// (Cody and Waite), and `e^r` by its Taylor series to degree 7.
#[inline]
pub(crate) fn exp_neg(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.max(-87.0);
    // Round to nearest with the 1.5 * 2^23 trick (vectorises, unlike `round`).
    let n = (x * LOG2E + 12_582_912.0) - 12_582_912.0;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;
    use smelt_quant::half::f32_to_f16;

    #[test]
    fn q8_0_dot_and_axpy_match_dequantised_values() {
        for n in [32, 64, 256] {
            let q: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
                .collect();
            let x: Vec<f32> = (0..n).map(|i| ((i * 13 % 17) as f32 - 8.0) / 5.0).collect();
            let k = smelt_quant::quantize_to_vec(smelt_gguf::GgmlType::Q8_0, &x).unwrap();
            let kd = smelt_quant::dequantize_to_vec(smelt_gguf::GgmlType::Q8_0, &k).unwrap();
            let want: f32 = q.iter().zip(&kd).map(|(a, b)| a * b).sum();
            assert!(
                (dot_q8(&q, &k) - want).abs() < 1e-4 * (1.0 + want.abs()),
                "n {n}"
            );
            let mut out = q.clone();
            axpy_q8(&mut out, 0.5, &k);
            for i in 0..n {
                assert!((out[i] - (q[i] + 0.5 * kd[i])).abs() < 1e-5, "n {n} i {i}");
            }
        }
    }

    #[test]
    fn exp_neg_is_accurate() {
        let mut x = 0.0f32;
        while x > -87.0 {
            let (want, got) = (x.exp(), exp_neg(x));
            assert!((want - got).abs() <= 3e-7 * want, "{x}: {want} vs {got}");
            x -= 0.0137;
        }
        assert_eq!(exp_neg(0.0), 1.0);
        assert!(exp_neg(f32::NEG_INFINITY) < 1e-37);
    }

    #[test]
    fn simd_f16_matches_scalar_on_odd_lengths() {
        let isa = F16Isa::detect();
        for n in [1, 3, 8, 15, 50, 64, 256, 783] {
            let q: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
                .collect();
            let k: Vec<u16> = (0..n)
                .map(|i| f32_to_f16(((i * 13 % 17) as f32 - 8.0) / 5.0))
                .collect();
            let want = dot_scalar(&q, &k);
            let got = isa.dot(&q, &k);
            assert!(
                (want - got).abs() <= 1e-4 * (1.0 + want.abs()),
                "n {n}: {want} vs {got}"
            );
            let mut a = q.clone();
            let mut b = q.clone();
            F16Isa::Scalar.axpy(&mut a, 0.37, &k);
            isa.axpy(&mut b, 0.37, &k);
            let k16: Vec<f32> = k.iter().map(|&h| f16_to_f32(h)).collect();
            let mut conv = vec![0f32; n];
            isa.convert(&k, &mut conv);
            assert_eq!(conv, k16);
            assert!(
                a.iter()
                    .zip(&b)
                    .all(|(x, y)| (x - y).abs() <= 1e-5 * (1.0 + x.abs())),
                "n {n}"
            );
        }
    }
}
