//! The kernel table: (weight type, instruction set) -> activation type and tiles.
//!
//! Every supported type has scalar, AVX2 and AVX-512 VNNI code. The float types' AVX-512 entry
//! is their AVX2 body compiled for the AVX-512 level (32 registers, EVEX encodings; no VNNI work
//! to do), listed in `docs/kernel-lab/cpu-gemv.md`.

use smelt_gguf::GgmlType;

use super::tile::{scalar_tile, tiles, Tiles};
use super::{float, k16, k45, legacy};
use super::{ActType, Isa};

/// One table entry.
#[derive(Clone, Copy)]
pub(crate) struct Entry {
    pub act: ActType,
    pub code_isa: Isa,
    pub tiles: &'static Tiles,
    /// The AVX-512 panel gemm's format, for prefill with many tokens.
    #[cfg(target_arch = "x86_64")]
    pub panel: Option<super::panel::Panel>,
}

/// One line per weight type: its code (family module and format marker) and the prefill tile of
/// each SIMD level. AVX2 has 16 vector registers, enough for 4 x 2 accumulators plus operands;
/// AVX-512VL has 32, enough for 4 x 4.
macro_rules! table {
    ($($ty:ident: $module:ident::$fmt:ident,
       avx2 $a2r:literal x $a2t:literal, avx512 $a5r:literal x $a5t:literal;)*) => {
        /// The weight types with kernels, in GGUF id order.
        pub const SUPPORTED_TYPES: &[GgmlType] = &[$(GgmlType::$ty),*];

        fn scalar(wtype: GgmlType) -> Option<&'static Tiles> {
            match wtype {
                $(GgmlType::$ty => {
                    static TILES: Tiles = tiles!(scalar_tile, $module::$fmt; 4 x 1);
                    Some(&TILES)
                })*
                _ => None,
            }
        }

        #[cfg(target_arch = "x86_64")]
        fn avx2(wtype: GgmlType) -> Option<&'static Tiles> {
            match wtype {
                $(GgmlType::$ty => {
                    static TILES: Tiles = tiles!($module::avx2::tile, $module::$fmt; $a2r x $a2t);
                    Some(&TILES)
                })*
                _ => None,
            }
        }

        #[cfg(target_arch = "x86_64")]
        fn avx512(wtype: GgmlType) -> Option<&'static Tiles> {
            match wtype {
                $(GgmlType::$ty => {
                    static TILES: Tiles = tiles!($module::avx512::tile, $module::$fmt; $a5r x $a5t);
                    Some(&TILES)
                })*
                _ => None,
            }
        }
    };
}

table! {
    F32: float::F32, avx2 4 x 2, avx512 4 x 4;
    F16: float::F16, avx2 4 x 2, avx512 4 x 4;
    Q4_0: legacy::Q4_0, avx2 4 x 2, avx512 4 x 4;
    Q4_1: legacy::Q4_1, avx2 4 x 2, avx512 4 x 4;
    Q5_0: legacy::Q5_0, avx2 4 x 2, avx512 4 x 4;
    Q5_1: legacy::Q5_1, avx2 4 x 2, avx512 4 x 4;
    Q8_0: legacy::Q8_0, avx2 4 x 2, avx512 4 x 4;
    Q2_K: k16::Q2_K, avx2 4 x 2, avx512 4 x 4;
    Q3_K: k16::Q3_K, avx2 4 x 2, avx512 4 x 4;
    Q4_K: k45::Q4_K, avx2 4 x 2, avx512 4 x 4;
    Q5_K: k45::Q5_K, avx2 4 x 2, avx512 4 x 4;
    Q6_K: k16::Q6_K, avx2 4 x 2, avx512 4 x 4;
    BF16: float::BF16, avx2 4 x 2, avx512 4 x 4;
}

/// The entry for `wtype` at level `isa` (None: no kernel for the type). Does not check the CPU.
pub(crate) fn lookup(wtype: GgmlType, isa: Isa) -> Option<Entry> {
    use GgmlType as G;
    let act = match wtype {
        G::F32 | G::F16 | G::BF16 => ActType::F32,
        G::Q4_0 | G::Q5_0 | G::Q8_0 => ActType::Q8_0,
        G::Q4_1 | G::Q5_1 => ActType::Q8_1,
        G::Q2_K | G::Q3_K | G::Q4_K | G::Q5_K | G::Q6_K => ActType::Q8_K,
        _ => return None,
    };
    let (code_isa, tiles) = simd(wtype, isa).or_else(|| Some((Isa::Scalar, scalar(wtype)?)))?;
    Some(Entry {
        act,
        code_isa,
        tiles,
        #[cfg(target_arch = "x86_64")]
        panel: if code_isa == Isa::Avx512Vnni {
            super::panel::Panel::of(wtype)
        } else {
            None
        },
    })
}

#[cfg(target_arch = "x86_64")]
fn simd(wtype: GgmlType, isa: Isa) -> Option<(Isa, &'static Tiles)> {
    if isa >= Isa::Avx512Vnni {
        if let Some(tiles) = avx512(wtype) {
            return Some((Isa::Avx512Vnni, tiles));
        }
    }
    if isa >= Isa::Avx2 {
        if let Some(tiles) = avx2(wtype) {
            return Some((Isa::Avx2, tiles));
        }
    }
    None
}

#[cfg(not(target_arch = "x86_64"))]
fn simd(_wtype: GgmlType, _isa: Isa) -> Option<(Isa, &'static Tiles)> {
    None
}
