//! How a decode matmul finishes its columns (`Mode`): in the warp that computed them (one
//! column a turn, or a RoPE pair of columns), or in epilogue tiles after the block's rows;
//! the code a warp runs for its column(s): the epilogue nodes' values (bias, residual add,
//! SiLU * up, RoPE, ...) and their stores, with the reads of other kernels' nodes issued
//! ahead of the row's weights (v12a) or before the kernel's wait (v13c).

use std::fmt::Write;

use smelt_graph::Op;

use super::decode::{unit_values, x_stride, Mat};
use super::{scaled, type_suffix, Gen, Params};
use crate::CudaError;

/// A RoPE rotation: pairs (2i, 2i + 1), or (i, i + n_rot / 2) with `neox`, of the first
/// `n_rot` dims of each head.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct Rot {
    pub(super) head_dim: usize,
    pub(super) n_rot: usize,
    pub(super) neox: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Mode {
    Tiled,
    Column,
    /// Two columns per warp turn: a RoPE pair, or (None) neighbours of a short row.
    Pair(Option<Rot>),
}

impl Mode {
    /// For a pair bundle: the columns `ca`, `cb` of virtual row `c`, the rotation index `ri`
    /// and whether the pair rotates (`rot`).
    pub(super) fn pair_columns(&self) -> String {
        let Mode::Pair(rot) = *self else {
            return String::new();
        };
        let Some(Rot {
            head_dim,
            n_rot,
            neox,
        }) = rot
        else {
            return "const int ca = 2 * c, cb = ca + 1;\n".to_string();
        };
        let (hh, half) = (head_dim / 2, n_rot / 2);
        let (ca, cb) = if neox {
            (
                format!("hd0 + (k < {half} ? k : {n_rot} + 2 * (k - {half}))"),
                format!("ca + (k < {half} ? {half} : 1)"),
            )
        } else {
            ("hd0 + 2 * k".to_string(), "ca + 1".to_string())
        };
        format!(
            "const int k = c % {hh}, hd0 = c / {hh} * {head_dim}; const int ca = {ca}, cb = {cb}, ri = k; const bool rot = k < {half};\n"
        )
    }
}

/// The columns one warp turn finishes, with their temporaries' suffixes: `c`, or a pair's
/// `ca` and `cb` (`pair` is `Some`).
fn sides(pair: Option<Option<Rot>>) -> &'static [(&'static str, &'static str)] {
    if pair.is_some() {
        &[("_a", "ca"), ("_b", "cb")]
    } else {
        &[("", "c")]
    }
}

/// A read of another kernel's node that an epilogue issues ahead of the row's weights.
pub(super) struct Hoisted {
    name: String,
    node: smelt_graph::NodeId,
    read: String,
}

impl Gen<'_> {
    /// How a bundle finishes its columns. All matmuls quantised and an epilogue elementwise
    /// per column (bias, residual add, SiLU * up, scale, softcap): in the computing warp, one
    /// column per turn. The same plus RoPE (one rotation for every RoPE node): a warp takes a
    /// rotated pair of columns per turn. Otherwise (per-head norms, float weights): tiles.
    pub(super) fn epilogue_mode(&self, b: &smelt_graph::Bundle) -> Mode {
        let quant = b.matmuls.iter().all(|&m| {
            let Op::MatMul { w, .. } = self.node(m).op else {
                return false;
            };
            type_suffix(self.weight(w).dtype).is_some_and(|t| !matches!(t, "f32" | "f16" | "bf16"))
        });
        if !quant {
            return Mode::Tiled;
        }
        let mut rope: Option<Rot> = None;
        for &n in &b.epilogue {
            match self.node(n).op {
                ref op if op.is_columnwise() => {}
                Op::Rope {
                    head_dim,
                    n_rot,
                    neox,
                    ..
                } => {
                    let r = Rot {
                        head_dim,
                        n_rot,
                        neox,
                    };
                    let fits = head_dim.is_multiple_of(2)
                        && n_rot.is_multiple_of(2)
                        && n_rot <= head_dim
                        && b.width.is_multiple_of(head_dim);
                    if !fits || rope.is_some_and(|o| o != r) {
                        return Mode::Tiled;
                    }
                    rope = Some(r);
                }
                _ => return Mode::Tiled,
            }
        }
        match rope {
            Some(r) if std::env::var("SMELT_CUDA_ROPE_PAIRS").map_or(true, |v| v != "0") => {
                Mode::Pair(Some(r))
            }
            Some(_) => Mode::Tiled,
            // Rows of at most one gemv unit per lane (K <= 2048 for K-quants, <= 1024 for
            // 32-value blocks) can go two neighbouring rows per warp turn, twice the bytes in
            // flight: measured slower (1B 1518 -> 1483, SmolLM2 1335 -> 1244 tok/s on the
            // H100), so only with `SMELT_CUDA_TWO_ROWS=N` (rows of at most N units per lane),
            // for the kernel lab.
            None if b.width.is_multiple_of(2)
                && super::lab_knob("SMELT_CUDA_TWO_ROWS")
                    .is_some_and(|n| b.matmuls.iter().all(|&m| self.units_per_lane(m) <= n)) =>
            {
                Mode::Pair(None)
            }
            None => Mode::Column,
        }
    }

    /// Gemv units (`UE8_*` values) each lane takes in one row of matmul `m` (rounded up).
    fn units_per_lane(&self, m: smelt_graph::NodeId) -> usize {
        let Op::MatMul { x, w } = self.node(m).op else {
            return usize::MAX;
        };
        let Some(ue) = type_suffix(self.weight(w).dtype).and_then(unit_values) else {
            return usize::MAX;
        };
        self.node(x).shape[1].div_ceil(ue).div_ceil(32)
    }

    /// Code finishing an inline bundle in the warp that computes it: the matmul values (the
    /// whole warp), then in lane 0 each epilogue node's value and the stores. One column `c`
    /// per turn (`pair` None; values `e<id>`), or two (`Some(rot)`): the columns `ca`, `cb`
    /// (values `e<id>_a`, `e<id>_b`), rotated together by a RoPE node (index `ri`, `rot`).
    pub(super) fn warp_epilogue_code(
        &self,
        b: &smelt_graph::Bundle,
        mats: &[Mat],
        pair: Option<Option<Rot>>,
        nr: usize,
        mut early: Option<(usize, &mut Vec<String>)>,
        p: &mut Params,
    ) -> Result<String, CudaError> {
        let sides = sides(pair);
        // v12a: one token's epilogue reads of other nodes (the residual) are issued before
        // the row's weights, not after its warp sum, where they added an L2 round trip to each
        // column (SASS of SmolLM2's down kernel). Measured (H100): SmolLM2 Q8_0 +2.3%, the
        // 1B Q4_K_M -2%, the 8B -0.5%, so only for rows of 32-value blocks (a unit is 5-9
        // scalar loads); `SMELT_CUDA_EPI_HOIST=0|1` forces it off or on.
        // v18d: a batch's too, lane r reading row r's (the batch's residual read was an L2
        // round trip after the sums in SmolLM2's 8-row trace).
        let blocks32 = mats.iter().all(|m| unit_values(m.ty) == Some(32));
        let hoist = (nr == 1 || super::lab_knob("SMELT_CUDA_BATCH_HOIST") != Some(0))
            && match super::lab_knob("SMELT_CUDA_EPI_HOIST") {
                Some(v) => v != 0,
                None => blocks32,
            };
        // A batch's row `r` is lane r's (where the epilogue runs); with two warps a weight
        // row (v18f), lane l of half `sh` has row `l + sh * h` of its `h` rows.
        let (h, row, first) = match self.seq_split {
            2 => (nr / 2, format!("lane + sh * {}", nr / 2), "RV == R0 + warp"),
            _ => (nr, "lane".to_string(), "R == R0 + warp"),
        };
        let open = format!("if (lane < {h}) {{ const int r = {row}, rp = r; (void)rp;");
        let lane_row = |code: String| match nr {
            1 => code,
            _ => format!("{open} {code} }}"),
        };
        let mut pre = Vec::new();
        let mut angles = (String::new(), String::new());
        let epilogue =
            self.column_epilogue(b, pair, hoist.then_some(&mut pre), Some(&mut angles), p)?;
        // v13c: a hoisted read of a node computed two or more kernels back (the residual in
        // the down and output projections) is issued for the warp's first row before
        // `PDL_WAIT` (that kernel is complete once the previous one has launched this one),
        // through L2 (`__ldcg`: L1 is not yet coherent). SmolLM2 +0.9% in three rounds on the
        // H100; `SMELT_CUDA_PREWAIT_READS=0` turns it off.
        let mut s = String::new();
        for h in pre {
            let done = |ki: usize| {
                self.plan
                    .placement(h.node)
                    .is_some_and(|pl| pl.kernel + 2 <= ki)
            };
            match (early.as_mut(), nr) {
                (Some((ki, reads)), 1) if done(*ki) => {
                    let k = reads.len();
                    reads.push(format!("pw{k} = __ldcg(&{});\n", h.read));
                    writeln!(
                        s,
                        "const float {} = R == R0 + warp ? pw{k} : {};",
                        h.name, h.read
                    )
                    .unwrap();
                }
                (Some((ki, reads)), _) if done(*ki) => {
                    let k = reads.len();
                    reads.push(lane_row(format!("pw{k} = __ldcg(&{});", h.read)) + "\n");
                    writeln!(
                        s,
                        "float {n} = pw{k}; if (!({first})) {{ {n} = 0.f; {} }}",
                        lane_row(format!("{} = {};", h.name, h.read)),
                        n = h.name
                    )
                    .unwrap();
                }
                (_, 1) => writeln!(s, "const float {} = {};", h.name, h.read).unwrap(),
                _ => writeln!(
                    s,
                    "float {n} = 0.f; {}",
                    lane_row(format!("{} = {};", h.name, h.read)),
                    n = h.name
                )
                .unwrap(),
            }
        }
        // A RoPE pair's angles (v18i), the lane's row's where several.
        if !angles.0.is_empty() {
            writeln!(s, "{}", angles.0).unwrap();
            s += &lane_row(angles.1.clone());
            s += "\n";
        }
        // One token: each (matmul, side)'s value, name and row, in order.
        let mut one: Vec<(String, &Mat, String, usize)> = Vec::new();
        for (m, mat) in b.matmuls.iter().zip(mats) {
            let Op::MatMul { x, .. } = self.node(*m).op else {
                unreachable!()
            };
            let kdim = self.node(x).shape[1];
            for (suf, col) in sides {
                if nr == 1 {
                    one.push((format!("e{}{suf}", m.0), mat, mat.row(col), kdim));
                } else {
                    let xs = x_stride(kdim);
                    // Split (v18f): this half's rows of the activations, and lane l's row's
                    // norm scale from lane l + sh * h (`scl` is lane q's row q's).
                    let (x8, scale) = match self.seq_split {
                        2 if !self.norm_scale.1.is_empty() => (
                            format!("XROW(x8s, sh * {h}, {xs})"),
                            format!("__shfl_sync(0xffffffffu, scl, ({row}) & 31)"),
                        ),
                        2 => (format!("XROW(x8s, sh * {h}, {xs})"), String::new()),
                        _ => ("x8s".to_string(), self.norm_scale.1.clone()),
                    };
                    let v = format!(
                        "gemv8r_{}<{h}, {xs}>({}, {kdim} / UE8_{}, {x8}, 0)",
                        mat.ty,
                        mat.row(col),
                        mat.ty,
                    );
                    writeln!(s, "const float e{}{suf} = {};", m.0, scaled(&scale, &v)).unwrap();
                }
            }
        }
        s += &self.one_token_rows(&one);
        if nr == 1 {
            s += "if (lane == 0) {\n";
        } else {
            // Lane r holds row r's sum and finishes row r.
            writeln!(s, "{open}").unwrap();
        }
        s += &epilogue;
        s += "}\n";
        Ok(s)
    }

    /// One token's matmul values `(name, weight, row, k)` of a warp epilogue: a `gemv8` each,
    /// or (v26, `rows_together` n >= 2) runs of up to n rows of one quantised type and length
    /// through `gemv8m`, every row's loads before any row's sum (the same values).
    fn one_token_rows(&self, rows: &[(String, &Mat, String, usize)]) -> String {
        let scale = &self.norm_scale.0;
        let n = self.rows_together.max(1);
        let mut s = String::new();
        let mut i = 0;
        while i < rows.len() {
            let (_, m, _, k) = &rows[i];
            let mut j = i + 1;
            while j < rows.len()
                && j - i < n
                && m.quant
                && rows[j].1.ty == m.ty
                && rows[j].1.quant
                && rows[j].3 == *k
            {
                j += 1;
            }
            let (ty, run) = (m.ty, &rows[i..j]);
            if run.len() == 1 {
                let (name, _, row, k) = &run[0];
                let v = format!("gemv8_{ty}({row}, {k} / UE8_{ty}, x8)");
                writeln!(s, "const float {name} = {};", scaled(scale, &v)).unwrap();
            } else {
                let (first, len) = (&run[0].0, run.len());
                let list: Vec<&str> = run.iter().map(|r| r.2.as_str()).collect();
                writeln!(
                    s,
                    "float g{first}[{len}]; {{ const u8* const r{first}[{len}] = {{{}}}; gemv8m_{ty}<{len}>(r{first}, {k} / UE8_{ty}, x8, g{first}); }}",
                    list.join(", ")
                )
                .unwrap();
                for (q, (name, ..)) in run.iter().enumerate() {
                    let v = format!("g{first}[{q}]");
                    writeln!(s, "const float {name} = {};", scaled(scale, &v)).unwrap();
                }
            }
            i = j;
        }
        s
    }

    /// Code finishing one column `c` (or a pair `ca`, `cb`) of a bundle whose matmul values
    /// are defined as `e<id>` (`e<id>_a`, `e<id>_b`): each epilogue node's value, then the
    /// stores of every node with a destination. With `hoist`, the reads of nodes computed
    /// elsewhere are listed there as values `e<id>h<side>`, to be issued ahead of the code.
    /// With `angles`, a RoPE pair's sine and cosine are computed by code listed there
    /// (declarations, then the computation of row `rp`'s), to be issued ahead of the sums.
    pub(super) fn column_epilogue(
        &self,
        b: &smelt_graph::Bundle,
        pair: Option<Option<Rot>>,
        hoist: Option<&mut Vec<Hoisted>>,
        mut angles: Option<&mut (String, String)>,
        p: &mut Params,
    ) -> Result<String, CudaError> {
        let sides = sides(pair);
        let mut s = String::new();
        let mut local: Vec<smelt_graph::NodeId> = b.matmuls.clone();
        let hoist = hoist.map(std::cell::RefCell::new);
        for &n in &b.epilogue {
            let op = &self.node(n).op;
            let rd = |x: smelt_graph::NodeId, (suf, col): (&str, &str), p: &mut Params| {
                if local.contains(&x) {
                    return Ok(format!("e{}{suf}", x.0));
                }
                let read = self.buf_read(x, col, p)?;
                let Some(pre) = &hoist else {
                    return Ok(read);
                };
                let name = format!("e{}h{suf}", x.0);
                let mut pre = pre.borrow_mut();
                if !pre.iter().any(|h| h.name == name) {
                    pre.push(Hoisted {
                        name: name.clone(),
                        node: x,
                        read,
                    });
                }
                Ok(name)
            };
            if let (
                Some(rot),
                Op::Rope {
                    x,
                    base,
                    freq_scale,
                    factors,
                    ..
                },
            ) = (pair, op)
            {
                let (xa, xb) = (rd(*x, sides[0], p)?, rd(*x, sides[1], p)?);
                let fac = match factors {
                    Some(f) => format!(" / ((const float*)(W + {}))[ri]", p.p(self.weight(*f).off)),
                    None => String::new(),
                };
                let th = format!(
                    "const float th = (float)pos[rp] * {fs} * powf({fb}, -2.0f * (float)ri / {nr}.0f){fac};",
                    fs = super::lit(*freq_scale),
                    fb = super::lit(*base),
                    nr = rot.map_or(0, |r| r.n_rot),
                );
                let id = n.0;
                match angles.as_mut() {
                    // v18i: the angle's sine and cosine before the sums (the chain after them
                    // was the warp sum, then powf and sincosf on lane 0).
                    Some((decl, code)) => {
                        write!(decl, "float e{id}sn = 0.f, e{id}cs = 1.f; ").unwrap();
                        write!(code, "if (rot) {{ {th} sincosf(th, &e{id}sn, &e{id}cs); }}\n")
                            .unwrap();
                        write!(
                            s,
                            "float e{id}_a = {xa}, e{id}_b = {xb};\n\
                             if (rot) {{ const float x0 = e{id}_a, x1 = e{id}_b;\n\
                               e{id}_a = x0 * e{id}cs - x1 * e{id}sn; e{id}_b = x0 * e{id}sn + x1 * e{id}cs; }}\n"
                        )
                        .unwrap();
                    }
                    None => write!(
                        s,
                        "float e{id}_a = {xa}, e{id}_b = {xb};\n\
                         if (rot) {{ {th}\n\
                           float sn, cs; sincosf(th, &sn, &cs); const float x0 = e{id}_a, x1 = e{id}_b;\n\
                           e{id}_a = x0 * cs - x1 * sn; e{id}_b = x0 * sn + x1 * cs; }}\n"
                    )
                    .unwrap(),
                }
            } else {
                for &side in sides {
                    let e = self.columnwise_expr(op, side.1, &|x, p| rd(x, side, p), p)?;
                    writeln!(s, "const float e{}{} = {e};", n.0, side.0).unwrap();
                }
            }
            local.push(n);
        }
        for &(suf, col) in sides {
            // A pair stores each column with `c` bound to it (the stores index by `c`).
            if pair.is_some() {
                write!(s, "{{ const int c = {col};\n").unwrap();
            }
            for &n in &local {
                s += &self.stores(n, &format!("e{}{suf}", n.0), "0", p)?;
            }
            if pair.is_some() {
                s += "}\n";
            }
        }
        Ok(s)
    }
}
