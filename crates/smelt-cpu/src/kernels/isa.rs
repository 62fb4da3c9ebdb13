//! Instruction-set levels, detected at run time.
//!
//! Kernels are chosen when a plan is built, from what the CPU running the process reports
//! (`is_x86_feature_detected!`), never from compile-time flags alone: one binary serves every
//! x86-64 machine, and the scalar code is always there.

use std::fmt;

use super::KernelError;

/// An instruction-set level the kernels are written for, ordered from least to most capable: each
/// level's CPU requirements include those of the levels below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Portable Rust, no SIMD intrinsics (the compiler may still auto-vectorise).
    Scalar,
    /// x86-64 with AVX2, FMA and F16C (Haswell and later, Zen and later).
    Avx2,
    /// Avx2 plus AVX-512 F/BW/VL and AVX512-VNNI (Ice Lake, Sapphire Rapids, Zen 4 and later).
    Avx512Vnni,
}

/// The environment variable that caps the detected level (`scalar`, `avx2`, `avx512`), so tests
/// and benchmarks can exercise every path on one machine. It can lower the level, never raise it
/// above what the CPU has.
pub const ISA_ENV: &str = "SMELT_ISA";

impl Isa {
    /// Every level, lowest first.
    pub const ALL: [Isa; 3] = [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni];

    /// The most capable level this CPU supports, ignoring [`ISA_ENV`].
    pub fn cpu_max() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c");
            let avx512 = is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni");
            if avx2 && avx512 {
                return Isa::Avx512Vnni;
            }
            if avx2 {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    }

    /// The level to use: [`Isa::cpu_max`], lowered by [`ISA_ENV`] when that is set. An unreadable
    /// value is ignored here (kernels must always be available); [`Isa::from_env`] reports it.
    pub fn detect() -> Isa {
        Isa::from_env().unwrap_or_else(|_| Isa::cpu_max())
    }

    /// [`Isa::cpu_max`] capped by [`ISA_ENV`] if set; an error names a value that is not a level.
    pub fn from_env() -> Result<Isa, KernelError> {
        let cpu = Isa::cpu_max();
        match std::env::var(ISA_ENV) {
            Ok(value) => Ok(Isa::from_name(&value)
                .ok_or(KernelError::IsaName { name: value })?
                .min(cpu)),
            Err(_) => Ok(cpu),
        }
    }

    /// Whether this CPU can run code of this level.
    pub fn is_supported(self) -> bool {
        self <= Isa::cpu_max()
    }

    /// The levels this CPU can run, lowest first (for tests that cover every path).
    pub fn supported() -> impl Iterator<Item = Isa> {
        Isa::ALL.into_iter().filter(|isa| isa.is_supported())
    }

    /// The short name used by [`ISA_ENV`] and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512",
        }
    }

    /// Parse a short name (case-insensitive; `avx512vnni` is accepted for `avx512`).
    pub fn from_name(name: &str) -> Option<Isa> {
        match name.trim().to_ascii_lowercase().as_str() {
            "scalar" => Some(Isa::Scalar),
            "avx2" => Some(Isa::Avx2),
            "avx512" | "avx512vnni" => Some(Isa::Avx512Vnni),
            _ => None,
        }
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for isa in Isa::ALL {
            assert_eq!(Isa::from_name(isa.name()), Some(isa));
        }
        assert_eq!(Isa::from_name(" AVX512VNNI "), Some(Isa::Avx512Vnni));
        assert_eq!(Isa::from_name("sse2"), None);
    }

    #[test]
    fn levels_are_ordered_and_scalar_is_always_there() {
        assert!(Isa::Scalar < Isa::Avx2 && Isa::Avx2 < Isa::Avx512Vnni);
        assert!(Isa::Scalar.is_supported());
        let supported: Vec<Isa> = Isa::supported().collect();
        assert_eq!(supported.last(), Some(&Isa::cpu_max()));
        assert!(Isa::detect() <= Isa::cpu_max());
    }
}
