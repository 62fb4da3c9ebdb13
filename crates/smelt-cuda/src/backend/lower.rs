//! Lowering a graph to a [`CudaProgram`]: fusion, code generation (with a decode program's
//! short-context variants), NVRTC compilation through the disk cache, and the launch list.

use std::collections::HashMap;
use std::sync::Mutex;

use smelt_graph::{fuse_with, Graph};

use super::{Args, CudaBackend, CudaKvCache, CudaProgram, Step};
use crate::codegen::{self, Work};
use crate::CudaError;

/// v13h: decode attention's splits a KV head (a cluster's blocks) while every position of a
/// step is below `SHORT_SPLITS * CHUNK` (256). There a split holds at most one 32-key chunk
/// whatever the count, chunk s in split s, and the splits past the eighth hold nothing: the
/// result is the 16-split kernel's bit for bit (an empty split merges as + 0), in half the
/// blocks. SmolLM2-shaped on the H100: decode from an empty context +6% (8 splits at every
/// position lost 1.5% after a 512-token prompt; cuda.md v13). `SMELT_CUDA_ATTN_SHORT=0`: off.
pub(crate) const SHORT_SPLITS: usize = 8;

/// A short-context variant of a program: (position bound, generated program, its source).
type Variant = (u32, codegen::Generated, String);

impl CudaBackend {
    /// Fuse and generate `g` (decode attention in `attn_splits` splits a KV head, None: the
    /// most; key regions where `regions` and the backend's setting allow; `solo`: the cache
    /// rows written taken from the block table on the device, v27): its launches and the
    /// source to compile.
    fn generate(
        &self,
        g: &Graph,
        kv: &CudaKvCache,
        attn_splits: Option<usize>,
        regions: bool,
        solo: bool,
    ) -> Result<(codegen::Generated, String), CudaError> {
        let plan = fuse_with(g, self.fuse);
        let gen = codegen::generate(
            &plan,
            &self.winfo,
            &kv.info,
            self.dev.sm_count as usize,
            self.dev.cc.0,
            codegen::GenOptions {
                cublas: self.use_cublas,
                persistent: self.persistent,
                attn_tail: self.attn_tail,
                wo_fold: self.wo_fold,
                trace: self.trace.is_some(),
                global_params: self.global_params,
                row_regs: None,
                attn_prewait: false,
                attn_mma: None,
                row_pipe_k: None,
                stage_kb: 0,
                wrap_returns: self.pdl == Some(4),
                attn_splits,
                cluster: self.cluster,
                batch_mma: self.batch_mma,
                batch_mma_q8_0: self.batch_mma_q8_0,
                rows_at_once: self.rows_at_once,
                attn_region: if regions { self.attn_region } else { 0 },
                greedy_fold: self.greedy_fold,
                rows_together: self.rows_together,
                device_rows: solo,
            },
        )?;
        let mut src = gen.src.clone();
        if let Some(at) = self.pdl {
            let at = if at == 4 && !self.flags_fit(&gen) {
                2
            } else {
                at
            };
            src = format!("#define SMELT_PDL 1\n#define SMELT_PDL_AT {at}\n{src}");
        }
        Ok((gen, src))
    }

    /// v13f (`SMELT_CUDA_PDL=flag`, kernel lab): whether program `gen` takes release counters
    /// in place of `griddepcontrol.wait`. Each block of launch L adds 1 to counter L at its
    /// end (`red.release.gpu`, after a block barrier); launch L + 1's blocks poll it
    /// (`ld.acquire.gpu`, one thread) up to L's block count, then let launch L + 2 in: one
    /// grid ahead. The counters are zeroed before each step. Decode programs whose kernels
    /// take their parameters by value with two slots free (the counter's index and the
    /// previous launch's blocks go in the last two), no persistent kernel, no attention tail
    /// (it returns early).
    fn flags_fit(&self, gen: &codegen::Generated) -> bool {
        self.pdl == Some(4)
            && gen.param_values
            && !gen.persistent
            && self.attn_tail == 0
            && gen.launches.iter().all(|l| match &l.work {
                Work::Kernel { params, .. } => params.len() <= codegen::PV_MAX - 2,
                Work::Gemm(_) => false,
            })
    }

    /// `g` generated with its source (see [`Self::generate`]), and its short-context
    /// variants widest first (v19b, v13h, v13i): (position bound, generated, source). A
    /// program with key regions gets one without below its first region's end. A decode
    /// program whose cluster attention takes more than [`SHORT_SPLITS`] splits a KV head
    /// gets one with [`SHORT_SPLITS`] below `SHORT_SPLITS * 32` positions and, at level 2
    /// (`SMELT_CUDA_ATTN_SHORT=2`), one with half that below half the bound.
    fn generate_all(
        &self,
        g: &Graph,
        kv: &CudaKvCache,
        solo: bool,
    ) -> Result<((codegen::Generated, String), Vec<Variant>), CudaError> {
        let main = self.generate(g, kv, None, true, solo)?;
        let mut variants = Vec::new();
        // v19b: below its first key region's end a program with regions runs the one without
        // (the same logits, without the regions' staging and merge: SmolLM2 -1.8% from an
        // empty context on a 4096-position cache with them).
        let region = main.0.attn_region;
        if region > 0 && self.short_attn > 0 {
            let (gen, src) = self.generate(g, kv, None, false, solo)?;
            variants.push((region as u32, gen, src));
        }
        if main.0.decode && main.0.cluster_splits > SHORT_SPLITS {
            for level in 0..self.short_attn {
                let splits = SHORT_SPLITS >> level;
                let (gen, src) = self.generate(g, kv, Some(splits), false, solo)?;
                if gen.cluster_splits != splits {
                    break;
                }
                variants.push(((splits * codegen::ATTN_CHUNK) as u32, gen, src));
            }
        }
        Ok((main, variants))
    }

    /// Compile the programs of `graphs` into the disk cache in parallel, so that lowering them
    /// later only loads them (a batch engine's step shapes, at load). Returns the seconds spent
    /// generating the sources (fusion and code generation, one after another), compiling
    /// them (NVRTC in parallel, or reading the cache), the number of compile threads and the
    /// longest single compile (seconds).
    pub fn precompile(
        &self,
        graphs: &[Graph],
        kv: &CudaKvCache,
    ) -> Result<(f64, f64, usize, f64), CudaError> {
        let t0 = std::time::Instant::now();
        let mut srcs = Vec::new();
        for g in graphs {
            let ((_, src), variants) = self.generate_all(g, kv, false)?;
            srcs.push(src);
            srcs.extend(variants.into_iter().map(|v| v.2));
        }
        let generated = t0.elapsed().as_secs_f64();
        let (threads, slowest) = self.dev.precompile(&srcs)?;
        Ok((
            generated,
            t0.elapsed().as_secs_f64() - generated,
            threads,
            slowest,
        ))
    }

    /// Fuse, generate, compile (or load from the disk cache) and prepare `g`; a decode
    /// program's short-context variant with it (v13h, [`SHORT_SPLITS`]).
    pub fn lower(&mut self, g: &Graph, kv: &CudaKvCache) -> Result<CudaProgram, CudaError> {
        self.lower_with(g, kv, false)
    }

    /// v27: [`Self::lower`] for a sequence decoding alone over a paged cache (`g` a
    /// one-token decode graph, `kv` paged): each step takes the cache row it writes from its
    /// position and block table on the device, so the greedy and sampled graphs of
    /// backend/greedy.rs run over the pool (`greedy_begin` with the sequence's blocks). Its
    /// logits are the batch program's of one row bit for bit (the same arithmetic; only
    /// where the write row comes from differs).
    pub fn lower_solo(&mut self, g: &Graph, kv: &CudaKvCache) -> Result<CudaProgram, CudaError> {
        if !kv.is_paged() || g.n_tokens() != 1 {
            return Err(CudaError::Invalid(
                "a solo program is one token over a paged cache".into(),
            ));
        }
        let prog = self.lower_with(g, kv, true)?;
        if !prog.decode {
            return Err(CudaError::Invalid(
                "a solo program runs the decode kernels".into(),
            ));
        }
        Ok(prog)
    }

    fn lower_with(
        &mut self,
        g: &Graph,
        kv: &CudaKvCache,
        solo: bool,
    ) -> Result<CudaProgram, CudaError> {
        let ((gen, src), variants) = self.generate_all(g, kv, solo)?;
        if !variants.is_empty() {
            // Compiled side by side into the disk cache first: on a cold cache the variants
            // then cost no wall time where there are cores for them.
            let mut srcs = vec![src.clone()];
            srcs.extend(variants.iter().map(|v| v.2.clone()));
            self.dev.precompile(&srcs)?;
        }
        let mut prog = self.lower_generated(g, kv, gen, src, solo)?;
        let mut chain: Option<(u32, Box<CudaProgram>)> = None;
        for (bound, gen, src) in variants.into_iter().rev() {
            let mut p = self.lower_generated(g, kv, gen, src, solo)?;
            p.short = chain.take();
            chain = Some((bound, Box::new(p)));
        }
        prog.short = chain;
        Ok(prog)
    }

    /// Compile (or load) generated program `gen` of `g` and prepare it.
    fn lower_generated(
        &mut self,
        g: &Graph,
        kv: &CudaKvCache,
        gen: codegen::Generated,
        src: String,
        solo: bool,
    ) -> Result<CudaProgram, CudaError> {
        // A one-token step whose next token and position the device may write (v20a, v23):
        // a contiguous cache, or a solo program over a pool (v27).
        let one_step = gen.decode && g.n_tokens() == 1 && (!kv.is_paged() || solo);
        let module = self.dev.compile(&src)?;
        let mut funcs = Vec::new();
        let mut index = HashMap::new();
        let mut fn_smem: HashMap<String, usize> = gen.funcs.iter().cloned().collect();
        for l in &gen.launches {
            let Work::Kernel { func, smem, .. } = &l.work else {
                continue;
            };
            if !index.contains_key(func) {
                let smem = fn_smem.remove(func).unwrap_or(*smem as usize);
                index.insert(func.clone(), funcs.len());
                funcs.push(self.dev.function(&module, func, smem)?);
            }
        }
        // v20d: the greedy head kernel's buffers, by address.
        let greedy = self.greedy_addrs();
        let addr = |v: u64| match v {
            codegen::PARAM_GREEDY_BUF => greedy.0,
            codegen::PARAM_GREEDY_RING => greedy.1,
            v => v,
        };
        // Kernels taking their parameters by value need no device copy of them.
        let flat: Vec<u64> = gen
            .launches
            .iter()
            .filter(|_| !gen.param_values)
            .flat_map(|l| match &l.work {
                Work::Kernel { params, .. } => params.as_slice(),
                Work::Gemm(_) => &[],
            })
            .map(|&v| addr(v))
            .collect();
        let params = self.dev.alloc(flat.len().max(1) * 8)?;
        let bytes: Vec<u8> = flat.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.dev.upload(params.ptr, &bytes)?;
        let mut launches = Vec::new();
        let mut values = Vec::new();
        let mut at = 0u64;
        // Programmatic launch (PDL) for a grid smaller than the GPU (SmolLM2's kernels,
        // attention, the 1B's QKV and output projection: bound by their chain, not HBM): on
        // the H100 every kernel launched so lost the 8B 3% and the 1B with its full grids but
        // not its 132-block ones 2.7% (cuda.md v11a). `SMELT_CUDA_PDL_GRID=n` (kernel lab):
        // grids of fewer than n blocks instead.
        let pdl_limit = crate::codegen::lab_knob("SMELT_CUDA_PDL_GRID")
            .map_or(self.dev.sm_count as u64, |n| n as u64);
        // v13f: launch L's counter after the tile counters (`flags_fit`).
        let flags = self.flags_fit(&gen).then_some(gen.counters);
        let mut prev_blocks = 0u64;
        for (li, l) in gen.launches.iter().enumerate() {
            launches.push(match &l.work {
                Work::Kernel {
                    func,
                    grid,
                    block,
                    smem,
                    params: ps,
                } => {
                    let mut grid = *grid;
                    if gen.persistent {
                        // As many blocks as are resident at once, at most the generated count.
                        let per_sm = crate::device::occupancy(&funcs[index[func]], *block, *smem)?;
                        let sms = self.dev.sm_count as u32;
                        grid.0 = grid.0.min(per_sm * sms);
                        if grid.0 == 0 {
                            return Err(CudaError::Driver(
                                "the persistent decode kernel does not fit on an SM".into(),
                            ));
                        }
                    }
                    let blocks = grid.0 as u64 * grid.1 as u64 * grid.2 as u64;
                    let args = if gen.param_values {
                        let mut v = [0u64; codegen::PV_MAX];
                        for (d, &x) in v.iter_mut().zip(ps) {
                            *d = addr(x);
                        }
                        if let Some(base) = flags {
                            v[codegen::PV_MAX - 2] = (base + li) as u64;
                            v[codegen::PV_MAX - 1] = prev_blocks;
                            prev_blocks = blocks;
                        }
                        values.push(v);
                        Args::Value(values.len() - 1)
                    } else {
                        let a = Args::Device(params.ptr + at * 8);
                        at += ps.len() as u64;
                        a
                    };
                    let programmatic = blocks < pdl_limit;
                    Step::Kernel(index[func], grid, *block, *smem, args, programmatic)
                }
                Work::Gemm(g) => Step::Gemm(*g),
            });
        }
        // v20d: the greedy graph's head kernel (by value; not with v13f's release counters).
        let greedy_head = match &gen.greedy_head {
            Some(codegen::Launch {
                work:
                    Work::Kernel {
                        func,
                        grid,
                        block,
                        smem,
                        params: ps,
                    },
                ..
            }) if gen.param_values && flags.is_none() => {
                funcs.push(self.dev.function(&module, func, *smem as usize)?);
                let mut v = [0u64; codegen::PV_MAX];
                for (d, &x) in v.iter_mut().zip(ps) {
                    *d = addr(x);
                }
                values.push(v);
                let blocks = grid.0 as u64 * grid.1 as u64 * grid.2 as u64;
                let args = Args::Value(values.len() - 1);
                Some(Step::Kernel(
                    funcs.len() - 1,
                    *grid,
                    *block,
                    *smem,
                    args,
                    blocks < pdl_limit,
                ))
            }
            _ => None,
        };
        // v20a: the argmax kernel (prelude `greedy_next`) of a greedy graph without v20d's
        // head kernel, resolved once here rather than at every greedy step.
        let greedy_next = match greedy_head {
            None if one_step => Some(self.dev.function(&module, "greedy_next", 0)?),
            _ => None,
        };
        // v22: the sampling candidates' kernel of a decode step.
        let top_cands = match gen.decode && !gen.persistent {
            true => Some(self.dev.function(&module, "top_cands", 0)?),
            false => None,
        };
        // v23: the draw of a sampled step on the device.
        let sample_draw = match one_step {
            true => Some(self.dev.function(&module, "sample_draw", 0)?),
            false => None,
        };
        let prog = CudaProgram {
            n_tokens: g.n_tokens(),
            _module: module,
            funcs,
            launches,
            labels: gen.launches.iter().map(|l| l.label.clone()).collect(),
            _params: params,
            arena_len: gen.arena_len,
            counters: gen.counters + flags.map_or(0, |_| gen.launches.len()),
            flags: flags.map(|base| (base, gen.launches.len())),
            out_off: gen.out_off,
            out_len: gen.out_len,
            in_len: if kv.is_paged() {
                let tables = if gen.decode { g.n_tokens() } else { 1 };
                3 * g.n_tokens() + tables * kv.n_blocks()
            } else {
                g.n_tokens()
            },
            decode: gen.decode,
            cooperative: gen.persistent,
            barrier: gen.barrier,
            trace_off: gen.trace_off,
            values,
            no_graph: Default::default(),
            kv_capacity: kv.capacity(),
            paged: kv.is_paged(),
            solo: one_step && kv.is_paged(),
            graph: Mutex::new(None),
            greedy: Mutex::new(None),
            greedy_steps: Mutex::new(None),
            chain_steps: gen.chain_steps,
            top: Mutex::new(None),
            sampled: Mutex::new(None),
            sample_draw,
            top_cands,
            greedy_head,
            greedy_next,
            short: None,
        };
        self.ensure(&prog)?;
        Ok(prog)
    }
}
