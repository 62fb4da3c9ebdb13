//! f16 to f32 conversion of KV-cache rows, at the instruction-set level the matmul kernels use
//! (so `SMELT_ISA` caps both).

use smelt_quant::half::f16_to_f32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum F16Isa {
    Scalar,
    /// AVX2 + FMA + F16C: attention loops vectorise at 8 lanes.
    #[cfg(target_arch = "x86_64")]
    Avx2F16c,
    /// AVX-512F on top: 16 lanes.
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl F16Isa {
    pub fn detect() -> F16Isa {
        F16Isa::for_level(crate::kernels::Isa::detect())
    }

    /// The variant for kernel level `isa` (which the CPU supports: `Isa` levels are only handed
    /// out when it does, and each SIMD level includes F16C).
    pub fn for_level(isa: crate::kernels::Isa) -> F16Isa {
        use crate::kernels::Isa;
        #[cfg(target_arch = "x86_64")]
        {
            if isa >= Isa::Avx512Vnni && is_x86_feature_detected!("avx512f") {
                return F16Isa::Avx512;
            }
            if isa >= Isa::Avx2 {
                return F16Isa::Avx2F16c;
            }
        }
        let _ = isa;
        F16Isa::Scalar
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
            // SAFETY: both SIMD variants are chosen only where the CPU has AVX2 and F16C.
            #[cfg(target_arch = "x86_64")]
            F16Isa::Avx2F16c | F16Isa::Avx512 => unsafe { convert_f16c(src, dst) },
        }
    }
}

/// # Safety
/// The CPU supports AVX2 and F16C; `src.len() == dst.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn convert_f16c(src: &[u16], dst: &mut [f32]) {
    use std::arch::x86_64::*;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_level_converts_exactly() {
        for level in crate::kernels::Isa::supported() {
            let isa = F16Isa::for_level(level);
            for n in [1, 3, 8, 15, 50, 64, 783] {
                let src: Vec<u16> = (0..n).map(|i| (i as u16).wrapping_mul(40503)).collect();
                let mut dst = vec![0f32; n];
                isa.convert(&src, &mut dst);
                for (&d, &s) in dst.iter().zip(&src) {
                    let want = f16_to_f32(s);
                    assert!(
                        d == want || (d.is_nan() && want.is_nan()),
                        "{isa:?} n {n}: {s:#x}"
                    );
                }
            }
        }
    }
}
