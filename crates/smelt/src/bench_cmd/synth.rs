//! Synthetic GGUF models: random weights in the shapes of real models, quantised with
//! smelt-quant's reference quantisers, so the same benchmark file can be made on any machine
//! (no download) and read by smelt and llama.cpp alike. Never committed.
//!
//! Shapes: `llama-1b` (Llama-3.2-1B: n_embd 2048, 16 layers, 32 heads, 8 KV heads, n_ff 8192)
//! `llama-8b` (Llama-3-8B: 4096, 32 layers, 32/8 heads, n_ff 14336) and `smollm2-135m`
//! (SmolLM2-135M: 576, 30 layers, 9/3 heads, n_ff 1536; n_embd 576 takes no K-quant, so use
//! `q8_0` or `q4_0`, as llama.cpp falls back to for it). Deviation from the
//! real models: the vocabulary is copied from another GGUF (by default SmolLM2's, 49152 tokens,
//! not Llama 3's 128256) so llama.cpp finds a working tokenizer; the output head is untied.
//!
//! Mixes follow llama.cpp's `llama_tensor_get_type`: `q8_0` everything Q8_0; `q4_0` Q4_0 with
//! a Q6_K output head; `q4_k_m` Q4_K with a Q6_K output head and Q6_K for the attn_v and
//! ffn_down of the layers `use_more_bits` picks (the first and last eighth, every third between).
//! Norm weights are F32.

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use smelt_gguf::{GgmlType, Gguf, GgufWriter, Value};

/// A model shape.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub name: &'static str,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub n_ff: usize,
}

pub const SHAPES: &[Shape] = &[
    Shape {
        name: "llama-1b",
        n_embd: 2048,
        n_layer: 16,
        n_head: 32,
        n_head_kv: 8,
        n_ff: 8192,
    },
    Shape {
        name: "llama-8b",
        n_embd: 4096,
        n_layer: 32,
        n_head: 32,
        n_head_kv: 8,
        n_ff: 14336,
    },
    Shape {
        name: "smollm2-135m",
        n_embd: 576,
        n_layer: 30,
        n_head: 9,
        n_head_kv: 3,
        n_ff: 1536,
    },
];

/// A quantisation mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mix {
    Q4_0,
    Q4KM,
    Q8_0,
}

impl Mix {
    fn parse(s: &str) -> Option<Mix> {
        match s.to_ascii_lowercase().as_str() {
            "q4_0" => Some(Mix::Q4_0),
            "q4_k_m" => Some(Mix::Q4KM),
            "q8_0" => Some(Mix::Q8_0),
            _ => None,
        }
    }

    /// llama.cpp's `general.file_type` for the mix.
    fn file_type(self) -> u32 {
        match self {
            Mix::Q4_0 => 2,
            Mix::Q8_0 => 7,
            Mix::Q4KM => 15,
        }
    }

    /// The type of a 2-D tensor `role` (`attn_v`, `ffn_down`, `output`, …) of layer `il`.
    fn tensor_type(self, role: &str, il: usize, n_layer: usize) -> GgmlType {
        match self {
            Mix::Q8_0 => GgmlType::Q8_0,
            Mix::Q4_0 if role == "output" => GgmlType::Q6_K,
            Mix::Q4_0 => GgmlType::Q4_0,
            Mix::Q4KM if role == "output" => GgmlType::Q6_K,
            Mix::Q4KM if (role == "attn_v" || role == "ffn_down") && use_more_bits(il, n_layer) => {
                GgmlType::Q6_K
            }
            Mix::Q4KM => GgmlType::Q4_K,
        }
    }
}

/// llama.cpp's choice of layers that get more bits in the _M mixes.
fn use_more_bits(i: usize, n: usize) -> bool {
    let (lo, hi) = (n / 8, 7 * n / 8);
    i < lo || i >= hi || (i - lo) % 3 == 2
}

/// Parse `SHAPE:MIX`, e.g. `llama-1b:q4_k_m`.
pub fn parse_spec(spec: &str) -> Result<(Shape, Mix)> {
    let (shape, mix) = spec
        .split_once(':')
        .context("expected SHAPE:TYPE, e.g. llama-1b:q4_k_m")?;
    let Some(shape) = SHAPES.iter().find(|s| s.name == shape) else {
        let names: Vec<&str> = SHAPES.iter().map(|s| s.name).collect();
        bail!("unknown shape '{shape}' (known: {})", names.join(", "));
    };
    let mix = Mix::parse(mix)
        .with_context(|| format!("unknown type '{mix}' (known: q4_0, q4_k_m, q8_0)"))?;
    Ok((*shape, mix))
}

/// One tensor to generate: name, ggml dims (ne0 first), type, and how to fill it.
struct Spec {
    name: String,
    dims: Vec<u64>,
    dtype: GgmlType,
    /// Values uniform in `offset ± scale`.
    scale: f32,
    offset: f32,
}

fn tensors(shape: &Shape, mix: Mix, n_vocab: usize) -> Vec<Spec> {
    let (e, ff) = (shape.n_embd, shape.n_ff);
    let hd = e / shape.n_head;
    let kv = shape.n_head_kv * hd;
    let mut v = Vec::new();
    let mut mat = |name: String, cols: usize, rows: usize, role: &str, il: usize| {
        let dtype = mix.tensor_type(role, il, shape.n_layer);
        // Keep activations O(1): uniform(±s) has variance s²/3, so rows of `cols` inputs with
        // s = sqrt(3 / cols) give unit-variance outputs for unit-variance inputs.
        let scale = (3.0 / cols as f32).sqrt();
        v.push(Spec {
            name,
            dims: vec![cols as u64, rows as u64],
            dtype,
            scale,
            offset: 0.0,
        });
    };
    mat("token_embd.weight".into(), e, n_vocab, "token_embd", 0);
    for il in 0..shape.n_layer {
        let n = |r: &str| format!("blk.{il}.{r}.weight");
        mat(n("attn_q"), e, e, "attn_q", il);
        mat(n("attn_k"), e, kv, "attn_k", il);
        mat(n("attn_v"), e, kv, "attn_v", il);
        mat(n("attn_output"), e, e, "attn_output", il);
        mat(n("ffn_gate"), e, ff, "ffn_gate", il);
        mat(n("ffn_up"), e, ff, "ffn_up", il);
        mat(n("ffn_down"), ff, e, "ffn_down", il);
    }
    mat("output.weight".into(), e, n_vocab, "output", 0);
    let norm = |name: String| Spec {
        name,
        dims: vec![e as u64],
        dtype: GgmlType::F32,
        scale: 0.1,
        offset: 1.0,
    };
    for il in 0..shape.n_layer {
        v.push(norm(format!("blk.{il}.attn_norm.weight")));
        v.push(norm(format!("blk.{il}.ffn_norm.weight")));
    }
    v.push(norm("output_norm.weight".into()));
    v
}

/// The vocabulary keys (`tokenizer.ggml.*`) of `vocab_from`, and its token count.
fn vocab(vocab_from: &Path) -> Result<(Vec<(String, Value)>, usize)> {
    let g = Gguf::open(vocab_from)
        .with_context(|| format!("reading the vocabulary from {}", vocab_from.display()))?;
    let keys: Vec<(String, Value)> = g
        .metadata()
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer.ggml."))
        .cloned()
        .collect();
    let n = g
        .get_string_array("tokenizer.ggml.tokens")?
        .map(|a| a.len())
        .context("the vocabulary file has no tokenizer.ggml.tokens")?;
    Ok((keys, n))
}

/// A deterministic generator (xorshift64*) seeded per row, so files do not depend on threads.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn uniform(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (v >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

fn name_seed(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Distinct quantised rows per tensor; every row of the file is one of them, picked by a seeded
/// generator. Quantising every row with the reference quantisers takes minutes per billion
/// weights (the K-quant search is slow); a pool keeps an 8B-class file to seconds per core while
/// every row is still a real quantised row of random weights, at its own address, so a matmul
/// still streams every byte of the tensor.
const POOL_ROWS: usize = 64;

/// The quantised bytes of tensor `t`: a pool of rows generated and quantised on every core, then
/// placed row by row in a seeded random order.
fn generate(t: &Spec) -> Result<Vec<u8>> {
    let cols = t.dims[0] as usize;
    let rows = t.dims.get(1).copied().unwrap_or(1) as usize;
    let row_bytes = smelt_quant::row_size(t.dtype, cols)?;
    let pool_rows = rows.min(POOL_ROWS);
    let mut pool = vec![0u8; pool_rows * row_bytes];
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = pool_rows.div_ceil(threads).max(1);
    let seed = name_seed(&t.name);
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = pool
            .chunks_mut(per * row_bytes)
            .enumerate()
            .map(|(ci, part)| {
                s.spawn(move || -> Result<()> {
                    let mut vals = vec![0f32; cols];
                    for (ri, dst) in part.chunks_mut(row_bytes).enumerate() {
                        let mut rng = Rng::new(seed ^ ((ci * per + ri) as u64) << 1);
                        vals.iter_mut()
                            .for_each(|v| *v = t.offset + t.scale * rng.uniform());
                        smelt_quant::quantize(t.dtype, &vals, dst)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("a generator thread panicked"))??;
        }
        Ok(())
    })?;
    if rows == pool_rows {
        return Ok(pool);
    }
    let mut out = vec![0u8; rows * row_bytes];
    let mut order = Rng::new(seed.rotate_left(17) ^ 0x5eed);
    for dst in out.chunks_mut(row_bytes) {
        order.uniform();
        let pick = (order.0 >> 33) as usize % pool_rows;
        dst.copy_from_slice(&pool[pick * row_bytes..(pick + 1) * row_bytes]);
    }
    Ok(out)
}

/// Write the synthetic model `shape` / `mix` to `out`, with the vocabulary of `vocab_from`.
/// Returns the file size.
pub fn write(shape: &Shape, mix: Mix, vocab_from: &Path, out: &Path) -> Result<u64> {
    let (vocab_keys, n_vocab) = vocab(vocab_from)?;
    let specs = tensors(shape, mix, n_vocab);
    let mut w = GgufWriter::new();
    let a = "llama";
    w.add_metadata("general.architecture", a)?;
    w.add_metadata(
        "general.name",
        format!("smelt synthetic {} {mix:?}", shape.name),
    )?;
    w.add_metadata("general.file_type", mix.file_type())?;
    w.add_metadata("general.quantization_version", 2u32)?;
    let hd = shape.n_embd / shape.n_head;
    for (k, v) in [
        ("context_length", 8192),
        ("embedding_length", shape.n_embd),
        ("block_count", shape.n_layer),
        ("feed_forward_length", shape.n_ff),
        ("attention.head_count", shape.n_head),
        ("attention.head_count_kv", shape.n_head_kv),
        ("rope.dimension_count", hd),
        ("vocab_size", n_vocab),
    ] {
        w.add_metadata(format!("{a}.{k}"), v as u32)?;
    }
    w.add_metadata(format!("{a}.rope.freq_base"), 500_000f32)?;
    w.add_metadata(format!("{a}.attention.layer_norm_rms_epsilon"), 1e-5f32)?;
    for (k, v) in vocab_keys {
        w.add_metadata(k, v)?;
    }
    // Write the layout with zero data first (memory stays at one tensor), then fill each
    // tensor in place.
    let mut sizes = Vec::with_capacity(specs.len());
    for t in &specs {
        let n: u64 = t.dims.iter().product();
        sizes.push(t.dtype.bytes_for(n).context("tensor size overflows")? as usize);
    }
    let zeros = vec![0u8; sizes.iter().copied().max().unwrap_or(0)];
    for (t, &n) in specs.iter().zip(&sizes) {
        w.add_tensor(t.name.clone(), &t.dims, t.dtype, &zeros[..n])?;
    }
    let size = w.write_file(out)?;
    drop(w);
    let layout = Gguf::open(out)?;
    let base = layout.data_offset();
    let offsets: Vec<u64> = specs
        .iter()
        .map(|t| layout.tensor(&t.name).map(|i| i.offset))
        .collect::<Option<_>>()
        .context("a tensor vanished")?;
    drop(layout);
    let mut f = OpenOptions::new()
        .write(true)
        .open(out)
        .with_context(|| format!("opening {}", out.display()))?;
    for (i, (t, off)) in specs.iter().zip(offsets).enumerate() {
        eprint!("\rgenerating {}/{}: {:<32}", i + 1, specs.len(), t.name);
        let bytes = generate(t)?;
        f.seek(SeekFrom::Start(base + off))?;
        f.write_all(&bytes)?;
    }
    eprintln!();
    f.sync_all()?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tiny_synthetic_model_loads_and_runs() {
        let shape = Shape {
            name: "tiny",
            n_embd: 256,
            n_layer: 2,
            n_head: 4,
            n_head_kv: 2,
            n_ff: 512,
        };
        let vocab_from = smelt_testutil::model_path(smelt_testutil::SMOLLM2);
        let dir = std::env::temp_dir().join(format!("smelt-synth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for mix in [Mix::Q4KM, Mix::Q8_0] {
            let out = dir.join(format!("tiny-{mix:?}.gguf"));
            write(&shape, mix, &vocab_from, &out).unwrap();
            let g = std::sync::Arc::new(Gguf::open(&out).unwrap());
            assert_eq!(g.get_str("tokenizer.ggml.model").unwrap(), Some("gpt2"));
            let mut r = smelt_engine::Runner::load(std::sync::Arc::clone(&g), 8, 2).unwrap();
            assert_eq!(r.arch().n_vocab(), 49152);
            let logits = r
                .eval(&[1, 2, 3], smelt_models::Output::LastLogits)
                .unwrap();
            assert!(logits.iter().all(|x| x.is_finite()), "{mix:?}");
            let want = if mix == Mix::Q8_0 {
                GgmlType::Q8_0
            } else {
                GgmlType::Q6_K
            };
            assert_eq!(g.tensor("output.weight").unwrap().dtype, want);
            if mix == Mix::Q8_0 {
                // Regenerating gives the same bytes.
                let again = dir.join("again.gguf");
                write(&shape, mix, &vocab_from, &again).unwrap();
                assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());
            }
        }
        if std::env::var_os("SMELT_KEEP_SYNTH").is_none() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn q4_k_m_gives_a_third_of_the_middle_layers_more_bits() {
        let more: Vec<usize> = (0..16).filter(|&i| use_more_bits(i, 16)).collect();
        assert_eq!(more, vec![0, 1, 4, 7, 10, 13, 14, 15]);
        assert_eq!(Mix::Q4KM.tensor_type("attn_v", 0, 16), GgmlType::Q6_K);
        assert_eq!(Mix::Q4KM.tensor_type("attn_v", 2, 16), GgmlType::Q4_K);
        assert_eq!(Mix::Q4_0.tensor_type("output", 0, 16), GgmlType::Q6_K);
        assert!(parse_spec("llama-1b:q4_k_m").is_ok());
        assert!(parse_spec("llama-3b:q4_0")
            .unwrap_err()
            .to_string()
            .contains("unknown shape"));
    }
}
