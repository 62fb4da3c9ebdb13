//! x86-64 building blocks shared by the kernels of every weight type.
//!
//! [`avx2`] and [`vnni`] export the same operations under the same names, each compiled for its
//! level, so one kernel body (written once, in a macro) is instantiated per level and picks up
//! `vpdpbusd`/`vpdpwssd` where the CPU has them. Every helper is `#[inline]` with its level's
//! target features, so it inlines into the kernels of that level (and the higher one).

pub(crate) mod act;
pub(crate) mod avx2;
pub(crate) mod vnni;
