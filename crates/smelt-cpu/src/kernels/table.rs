//! The kernel table: (weight type, instruction set) -> activation type and tiles.
//!
//! Where a type has no code of its own for a level, the entry names the lower level whose code
//! it runs (`code_isa`); the fallbacks are listed in `docs/kernel-lab/cpu-gemv.md`.

use smelt_gguf::GgmlType;

use super::legacy;
use super::tile::{scalar_tile, tiles, Tiles};
use super::{ActType, Isa};

/// One table entry.
#[derive(Clone, Copy)]
pub(crate) struct Entry {
    pub act: ActType,
    pub code_isa: Isa,
    pub tiles: &'static Tiles,
}

/// The weight types with kernels, in GGUF id order.
pub const SUPPORTED_TYPES: &[GgmlType] = &[
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
];

macro_rules! scalar_tiles {
    ($fmt:ty) => {
        tiles!(scalar_tile, $fmt; 4 x 1)
    };
}

static Q4_0_SCALAR: Tiles = scalar_tiles!(legacy::Q4_0);
static Q4_1_SCALAR: Tiles = scalar_tiles!(legacy::Q4_1);
static Q5_0_SCALAR: Tiles = scalar_tiles!(legacy::Q5_0);
static Q5_1_SCALAR: Tiles = scalar_tiles!(legacy::Q5_1);
static Q8_0_SCALAR: Tiles = scalar_tiles!(legacy::Q8_0);

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;

    // AVX2 has 16 vector registers: a 4 x 2 tile keeps its 8 accumulators, the activations and
    // their corrections in registers. AVX-512VL has 32: 4 x 4.
    pub static Q4_0_AVX2: Tiles = tiles!(legacy::avx2::tile, legacy::Q4_0; 4 x 2);
    pub static Q4_1_AVX2: Tiles = tiles!(legacy::avx2::tile, legacy::Q4_1; 4 x 2);
    pub static Q5_0_AVX2: Tiles = tiles!(legacy::avx2::tile, legacy::Q5_0; 4 x 2);
    pub static Q5_1_AVX2: Tiles = tiles!(legacy::avx2::tile, legacy::Q5_1; 4 x 2);
    pub static Q8_0_AVX2: Tiles = tiles!(legacy::avx2::tile, legacy::Q8_0; 4 x 2);

    pub static Q4_0_AVX512: Tiles = tiles!(legacy::avx512::tile, legacy::Q4_0; 4 x 4);
    pub static Q4_1_AVX512: Tiles = tiles!(legacy::avx512::tile, legacy::Q4_1; 4 x 4);
    pub static Q5_0_AVX512: Tiles = tiles!(legacy::avx512::tile, legacy::Q5_0; 4 x 4);
    pub static Q5_1_AVX512: Tiles = tiles!(legacy::avx512::tile, legacy::Q5_1; 4 x 4);
    pub static Q8_0_AVX512: Tiles = tiles!(legacy::avx512::tile, legacy::Q8_0; 4 x 4);
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
    let (code_isa, tiles) =
        simd_tiles(wtype, isa).or_else(|| Some((Isa::Scalar, scalar(wtype)?)))?;
    Some(Entry {
        act,
        code_isa,
        tiles,
    })
}

fn scalar(wtype: GgmlType) -> Option<&'static Tiles> {
    use GgmlType as G;
    Some(match wtype {
        G::Q4_0 => &Q4_0_SCALAR,
        G::Q4_1 => &Q4_1_SCALAR,
        G::Q5_0 => &Q5_0_SCALAR,
        G::Q5_1 => &Q5_1_SCALAR,
        G::Q8_0 => &Q8_0_SCALAR,
        _ => return None,
    })
}

#[cfg(target_arch = "x86_64")]
fn simd_tiles(wtype: GgmlType, isa: Isa) -> Option<(Isa, &'static Tiles)> {
    use x86::*;
    use GgmlType as G;
    if isa >= Isa::Avx512Vnni {
        let tiles = match wtype {
            G::Q4_0 => Some(&Q4_0_AVX512),
            G::Q4_1 => Some(&Q4_1_AVX512),
            G::Q5_0 => Some(&Q5_0_AVX512),
            G::Q5_1 => Some(&Q5_1_AVX512),
            G::Q8_0 => Some(&Q8_0_AVX512),
            _ => None,
        };
        if let Some(tiles) = tiles {
            return Some((Isa::Avx512Vnni, tiles));
        }
    }
    if isa >= Isa::Avx2 {
        let tiles = match wtype {
            G::Q4_0 => Some(&Q4_0_AVX2),
            G::Q4_1 => Some(&Q4_1_AVX2),
            G::Q5_0 => Some(&Q5_0_AVX2),
            G::Q5_1 => Some(&Q5_1_AVX2),
            G::Q8_0 => Some(&Q8_0_AVX2),
            _ => None,
        };
        if let Some(tiles) = tiles {
            return Some((Isa::Avx2, tiles));
        }
    }
    None
}

#[cfg(not(target_arch = "x86_64"))]
fn simd_tiles(_wtype: GgmlType, _isa: Isa) -> Option<(Isa, &'static Tiles)> {
    None
}
