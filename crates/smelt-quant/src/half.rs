//! IEEE half (f16) and bfloat16 conversions, bit-exact with numpy and ggml.
//!
//! Both directions are written on the bit patterns, so the results do not depend on the CPU's
//! float conversion instructions: f16 -> f32 keeps NaN payloads (as numpy's scalar path does),
//! f32 -> f16 and f32 -> bf16 round to nearest, ties to even (as numpy and ggml do).

/// f16 bits -> f32, exact for every value (subnormals, infinities and NaN payloads included).
#[inline]
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h & 0x8000) << 16;
    let exp = u32::from((h >> 10) & 0x1f);
    let mant = u32::from(h & 0x03ff);
    let bits = match exp {
        0 => {
            // Zero or subnormal: mant * 2^-24, exact in f32 (a normal f32 for any mant > 0).
            let magnitude = mant as f32 * (1.0 / 16_777_216.0);
            sign | magnitude.to_bits()
        }
        0x1f => sign | 0x7f80_0000 | (mant << 13),
        _ => sign | ((exp + 112) << 23) | (mant << 13),
    };
    f32::from_bits(bits)
}

/// f32 -> f16 bits, rounding to nearest with ties to even; overflow gives infinity, NaN gives
/// the quiet NaN 0x7e00 with the sign kept (ggml's choice).
#[inline]
pub fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let abs = bits & 0x7fff_ffff;
    if abs > 0x7f80_0000 {
        return sign | 0x7e00;
    }
    // 65520 is halfway between 65504 (the largest f16) and 65536; the tie goes to the even
    // pattern, which is infinity.
    if abs >= 0x477f_f000 {
        return sign | 0x7c00;
    }
    if abs < 0x3880_0000 {
        // Below 2^-14 the result is subnormal (or zero): the integer mant = x * 2^24, rounded.
        // The scaling is exact and leaves a value below 1024, so round_ties_even is exact RNE.
        let scaled = f32::from_bits(abs) * 16_777_216.0;
        return sign | scaled.round_ties_even() as u16;
    }
    // Normal: rebias the exponent (127 -> 15) and round 23 mantissa bits to 10. A carry out of
    // the mantissa correctly bumps the exponent.
    let mut h = ((abs >> 23) - 112) << 10 | ((abs >> 13) & 0x03ff);
    let rest = abs & 0x1fff;
    if rest > 0x1000 || (rest == 0x1000 && h & 1 == 1) {
        h += 1;
    }
    sign | h as u16
}

/// bf16 bits -> f32 (exact: bf16 is the top half of an f32).
#[inline]
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// f32 -> bf16 bits, rounding to nearest with ties to even; NaN is made quiet (ggml's
/// `ggml_compute_fp32_to_bf16`, gguf-py's `BF16.quantize_blocks`).
#[inline]
pub fn f32_to_bf16(x: f32) -> u16 {
    let u = x.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return ((u >> 16) | 0x0040) as u16;
    }
    ((u + 0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_round_trips_every_pattern() {
        for h in 0..=u16::MAX {
            let f = f16_to_f32(h);
            if f.is_nan() {
                // Payload kept, quiet bit as given.
                assert_eq!(f.to_bits() & 0x007f_ffff, u32::from(h & 0x3ff) << 13);
                continue;
            }
            assert_eq!(f32_to_f16(f), h, "pattern {h:#06x} -> {f}");
        }
    }

    #[test]
    fn f16_known_values() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x0400), 2f32.powi(-14));
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert_eq!(f16_to_f32(0x8000).to_bits(), 0x8000_0000);
        assert_eq!(f32_to_f16(65519.99), 0x7bff);
        assert_eq!(f32_to_f16(65520.0), 0x7c00);
        assert_eq!(f32_to_f16(-1e9), 0xfc00);
        assert_eq!(f32_to_f16(f32::NAN), 0x7e00);
        assert_eq!(f32_to_f16(1e-9), 0x0000);
        assert_eq!(f32_to_f16(-0.0), 0x8000);
    }

    #[test]
    fn f16_rounds_ties_to_even() {
        // Exactly between two neighbouring halves (exact in f32: 12 significant bits at most),
        // and one f32 ulp either side of that point.
        for h in 0u16..0x7bff {
            let lo = f16_to_f32(h) as f64;
            let hi = f16_to_f32(h + 1) as f64;
            let mid = ((lo + hi) / 2.0) as f32;
            let even = if h & 1 == 0 { h } else { h + 1 };
            assert_eq!(f32_to_f16(mid), even, "tie above {h:#06x}");
            if mid > 0.0 {
                assert_eq!(f32_to_f16(f32::from_bits(mid.to_bits() - 1)), h);
                assert_eq!(f32_to_f16(f32::from_bits(mid.to_bits() + 1)), h + 1);
                assert_eq!(
                    f32_to_f16(-f32::from_bits(mid.to_bits() + 1)),
                    (h + 1) | 0x8000
                );
            }
        }
    }

    #[test]
    fn bf16_rounds_and_quiets() {
        assert_eq!(f32_to_bf16(1.0), 0x3f80);
        assert_eq!(bf16_to_f32(0x3f80), 1.0);
        // 1 + 2^-8 is halfway between bf16 1.0 and 1.0078125: ties to even (1.0).
        assert_eq!(f32_to_bf16(1.0 + 2f32.powi(-8)), 0x3f80);
        assert_eq!(f32_to_bf16(1.0 + 3.0 * 2f32.powi(-8)), 0x3f82);
        assert_eq!(f32_to_bf16(f32::INFINITY), 0x7f80);
        assert_eq!(f32_to_bf16(f32::from_bits(0x7f80_0001)), 0x7fc0);
        assert_eq!(f32_to_bf16(f32::MAX), 0x7f80);
        for h in (0..=u16::MAX).filter(|h| h & 0x7fff <= 0x7f80) {
            assert_eq!(f32_to_bf16(bf16_to_f32(h)), h);
        }
    }
}
