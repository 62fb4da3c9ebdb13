//! v17c: which batch kernels take their matmuls on tensor cores (`cu/mma_rows.cu`), how a
//! block splits their work, and the loop over a block's column groups; the rest of a decode
//! matmul kernel (its row stage, the rows' activations) is codegen/decode.rs's.

use std::fmt::Write;

use smelt_graph::{Bundle, Op};

use super::decode::{Each, Mat};
use super::epilogue::Mode;
use super::{row_scale, scaled, type_suffix, Gen, Params, NWARPS};
use crate::CudaError;

/// What the tensor-core rows' loop of one decode matmul kernel reads
/// ([`Gen::mma_rows_loop`]).
pub(super) struct MmaRows<'a> {
    pub bundles: &'a [Bundle],
    pub mats: &'a [Vec<Mat>],
    /// How each bundle finishes its columns here (`Column` or `Tiled`), and how it would for
    /// one token (an adjacent RoPE pair is finished as one token's virtual row).
    pub modes: &'a [Mode],
    pub fin: &'a [Mode],
    pub kdim: usize,
    /// The activation rows' stride in floats (`decode::x_stride`).
    pub xstride: usize,
    pub nr: usize,
    /// Warps a column group's K units are split over ([`Gen::mma_split`]).
    pub ks: usize,
    /// Shared-memory offset (floats) of the warps' partial sums where `ks` > 1.
    pub parts: usize,
    /// The rows' norm scales' array where the input's norm is applied after (empty: none).
    pub scale_rows: &'a str,
}

/// Device functions of the batch rows on tensor cores.
const MMA_ROWS: &str = include_str!("../cu/mma_rows.cu");

impl Gen<'_> {
    /// Whether a batch kernel's matmuls (rows of `kdim` values) take the tensor-core rows:
    /// every weight Q4_K or Q6_K (or Q8_0 where asked: no faster on SmolLM2, v18), every
    /// matmul's rows a multiple of 16.
    pub(super) fn mma_rows_fit(&self, bundles: &[Bundle], kdim: usize) -> bool {
        bundles.iter().all(|b| {
            b.width.is_multiple_of(16)
                && b.matmuls.iter().all(|&m| match self.mat_type(m) {
                    Some("q8_0") => self.batch_mma_q8_0 && kdim.is_multiple_of(32),
                    Some("q4_k" | "q6_k") => kdim.is_multiple_of(256),
                    _ => false,
                })
        })
    }

    /// The warps a column group's K units are split over: a power of two, at most `NWARPS`
    /// and at most the fewest units of the kernel's matmuls (a block then takes `NWARPS / ks`
    /// column groups of 16 rows a pass).
    pub(super) fn mma_split(&self, bundles: &[Bundle], kdim: usize) -> usize {
        let units = bundles
            .iter()
            .flat_map(|b| &b.matmuls)
            .map(|&m| mma_units(self.mat_type(m).unwrap_or("f32"), kdim))
            .min()
            .unwrap_or(1);
        let mut ks = 1;
        while ks * 2 <= units.min(NWARPS) {
            ks *= 2;
        }
        ks
    }

    /// The tensor-core rows' loop of a decode matmul kernel (v17c), and the floats of shared
    /// memory its warps' partial sums take: 16 columns a warp group, the rows' K units split
    /// over `ks` warps (their partial sums added in a fixed order by the group's first warp,
    /// through shared memory), `cg` groups a pass of the block.
    pub(super) fn mma_rows_loop(
        &mut self,
        r: &MmaRows,
        dispatch: &dyn Fn(Each) -> Result<String, CudaError>,
        p: &mut Params,
    ) -> Result<(String, usize), CudaError> {
        let MmaRows {
            bundles,
            mats,
            modes,
            fin,
            kdim,
            xstride,
            nr,
            ks,
            scale_rows,
            ..
        } = *r;
        let mut body = String::new();
        let cg = NWARPS / ks;
        let nmat = bundles.iter().map(|b| b.matmuls.len()).max().unwrap_or(1);
        // The warps' parts where a column group has several (`ks` > 1).
        let part_len = if ks > 1 { NWARPS * nmat * 128 } else { 0 };
        let po = r.parts;
        let compute = dispatch(&mut |bi| {
            Ok(mats[bi]
                .iter()
                .enumerate()
                .map(|(mi, m)| {
                    let units = mma_units(m.ty, kdim);
                    format!(
                        "{{ const float4 s = mmar_{}<{xstride}>({}, {}, {kdim}, {units} * ks / {ks}, {units} * (ks + 1) / {ks}, x8s, {nr}); pv[{mi}][0] += s.x; pv[{mi}][1] += s.y; pv[{mi}][2] += s.z; pv[{mi}][3] += s.w; }}\n",
                        m.ty,
                        m.row("c"),
                        m.rb,
                    )
                })
                .collect())
        })?;
        // A column group's sums: its warps' parts through shared memory (`ks` > 1) or
        // the warp's own registers.
        let sum = |mi: usize| {
            match ks {
            1 => format!("const float v{mi} = pv[{mi}][e];\n"),
            _ => format!(
                "float v{mi} = 0.f; for (int q = 0; q < {ks}; q++) v{mi} += sm[{po} + (((warp + q) * {nmat} + {mi}) * 4 + e) * 32 + lane];\n"
            ),
        }
        };
        let sr = |v: &str| scaled(&row_scale(scale_rows, "n"), v);
        let reduce = dispatch(&mut |bi| {
            let width = bundles[bi].width;
            let b = &bundles[bi];
            let sums: String = (0..mats[bi].len()).map(sum).collect();
            let head = format!(
                "_Pragma(\"unroll\") for (int e = 0; e < 4; e++) {{\n\
                const int n = 2 * (lane & 3) + (e & 1), col = c + (lane >> 2) + 8 * (e >> 1);\n{sums}"
            );
            if modes[bi] == Mode::Tiled {
                let stores: String = mats[bi]
                    .iter()
                    .enumerate()
                    .map(|(mi, m)| {
                        format!(
                            "A[{} + (u64)n * {width} + col] = {};\n",
                            m.raw,
                            sr(&format!("v{mi}"))
                        )
                    })
                    .collect();
                return Ok(format!("{head}if (n < {nr}) {{\n{stores}}} }}\n"));
            }
            let pair = match fin[bi] {
                Mode::Pair(Some(r)) => Some(r),
                _ => None,
            };
            let epi = self.column_epilogue(b, pair.map(Some), None, None, p)?;
            let mut vals = String::new();
            for (mi, &m) in b.matmuls.iter().enumerate() {
                match pair {
                    None => {
                        writeln!(vals, "const float e{} = {};", m.0, sr(&format!("v{mi}"))).unwrap()
                    }
                    Some(_) => writeln!(
                        vals,
                        "const float e{id}_a = {}, e{id}_b = {};",
                        sr(&format!("v{mi}")),
                        sr(&format!("o{mi}")),
                        id = m.0
                    )
                    .unwrap(),
                }
            }
            Ok(match pair {
                None => format!(
                    "{head}if (n < {nr}) {{ const int r = n, rp = n, c = col; (void)r; (void)rp;\n{vals}{epi}}} }}\n"
                ),
                Some(rot) => {
                    // Rows col and col + 1 (lanes 4 apart) rotate together; the lane of
                    // the even one finishes both, as the one-token kernels' virtual row.
                    let others: String = (0..mats[bi].len())
                        .map(|mi| format!("const float o{mi} = __shfl_xor_sync(0xffffffffu, v{mi}, 4);\n"))
                        .collect();
                    format!(
                        "{head}{others}if (n < {nr} && ((lane >> 2) & 1) == 0) {{ const int r = n, rp = n; (void)r; (void)rp;\n\
                        const int c = col / {hd} * {hh} + col % {hd} / 2;\n{cols}{vals}{epi}}} }}\n",
                        hd = rot.head_dim,
                        hh = rot.head_dim / 2,
                        cols = fin[bi].pair_columns(),
                    )
                }
            })
        })?;
        let (store, sync) = match ks {
            1 => (String::new(), ""),
            _ => (
                format!("_Pragma(\"unroll\") for (int i = 0; i < {nmat}; i++) _Pragma(\"unroll\") for (int e = 0; e < 4; e++) sm[{po} + ((warp * {nmat} + i) * 4 + e) * 32 + lane] = pv[i][e];\n__syncthreads();\n"),
                "__syncthreads();\n",
            ),
        };
        write!(
            body,
            "{{ const int ks = warp % {ks}; (void)ks;\n\
            for (int RP = R0; RP < R1; RP += {span}) {{ const int R = RP + 16 * (warp / {ks});\n\
              float pv[{nmat}][4]; _Pragma(\"unroll\") for (int i = 0; i < {nmat}; i++) {{ pv[i][0] = 0.f; pv[i][1] = 0.f; pv[i][2] = 0.f; pv[i][3] = 0.f; }}\n\
              if (R < R1) {{\n{compute}}}\n{store}\
              if (ks == 0 && R < R1) {{\n{reduce}}}\n{sync}\
            }} }}\nPDL_MID();\nTRACE_MARK(3);\n",
            span = 16 * cg
        )
        .unwrap();
        if !self.src.contains("imma_k32") {
            self.src.push_str(MMA_ROWS);
        }
        Ok((body, part_len))
    }

    /// A matmul node's weight type suffix.
    fn mat_type(&self, m: smelt_graph::NodeId) -> Option<&'static str> {
        match self.node(m).op {
            Op::MatMul { w, .. } => type_suffix(self.weight(w).dtype),
            _ => None,
        }
    }
}

/// K units of a matmul's rows of `kdim` values as the tensor-core rows walk them (a
/// super-block of 256 for the K-quants, a block of 32 for Q8_0).
fn mma_units(ty: &str, kdim: usize) -> usize {
    match ty {
        "q8_0" => kdim / 32,
        _ => kdim / 256,
    }
}
