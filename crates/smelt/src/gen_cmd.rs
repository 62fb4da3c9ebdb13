//! run, tokenize, perplexity, show: the commands that load a model.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use smelt_engine::{Event, GenerateRequest, LoadOptions, Model, SamplingOptions};

#[derive(Args)]
pub struct ModelArgs {
    /// A model: a name in the store (pulled when missing, e.g. smollm2:135m) or a path to a .gguf file.
    pub model: String,
    /// Context length to allocate (default: min(training context, 4096)).
    #[arg(long = "ctx", alias = "num-ctx")]
    pub ctx: Option<usize>,
    /// Worker threads (default: all cores).
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
}

impl ModelArgs {
    /// The GGUF file: a path, or a store name (pulled first when missing, as `ollama run` does).
    fn path(&self) -> Result<PathBuf> {
        Ok(crate::store_cmd::ensure_model(&self.model, false)?.gguf_path)
    }

    fn load(&self) -> Result<Model> {
        let path = self.path()?;
        let t0 = std::time::Instant::now();
        let opts = LoadOptions {
            num_ctx: self.ctx.unwrap_or(0),
            threads: self.threads.unwrap_or(0),
            ..LoadOptions::default()
        };
        let m = Model::load(&path, opts).with_context(|| format!("loading {}", path.display()))?;
        log(&format!(
            "loaded {} in {:.2}s",
            path.display(),
            t0.elapsed().as_secs_f64()
        ));
        Ok(m)
    }
}

fn log(msg: &str) {
    eprintln!("smelt: {msg}");
}

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt; without one, chat interactively (or read stdin when it is not a terminal).
    pub prompt: Option<String>,
    /// Complete PROMPT as plain text instead of applying the chat template.
    #[arg(long)]
    pub raw: bool,
    /// A system message for chat.
    #[arg(long)]
    pub system: Option<String>,
    /// Maximum tokens to generate (-1: until the context is full).
    #[arg(long = "num-predict", short = 'n', default_value_t = -1, allow_hyphen_values = true)]
    pub num_predict: i64,
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    #[arg(long = "top-k", default_value_t = 40)]
    pub top_k: usize,
    #[arg(long = "top-p", default_value_t = 0.9)]
    pub top_p: f32,
    #[arg(long = "min-p", default_value_t = 0.0)]
    pub min_p: f32,
    #[arg(long = "repeat-penalty", default_value_t = 1.1)]
    pub repeat_penalty: f32,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop at this text (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Print timings to stderr.
    #[arg(long)]
    pub verbose: bool,
}

impl RunArgs {
    fn sampling(&self) -> SamplingOptions {
        SamplingOptions {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            seed: self.seed,
            ..SamplingOptions::default()
        }
    }

    fn request(&self, prompt: Vec<u32>) -> GenerateRequest {
        let mut req = GenerateRequest::new(prompt, self.sampling());
        req.max_tokens = usize::try_from(self.num_predict).ok();
        req.stop = self.stop.clone();
        req
    }
}

/// Generate and stream text to stdout; returns the text.
fn stream(model: &Model, req: GenerateRequest, verbose: bool) -> Result<String> {
    let mut out = std::io::stdout().lock();
    let mut text = String::new();
    let mut io_err = None;
    let usage = model.generate(req, &mut |ev| {
        if let Event::Text { text: t, .. } = ev {
            text.push_str(&t);
            if let Err(e) = out.write_all(t.as_bytes()).and_then(|_| out.flush()) {
                io_err.get_or_insert(e);
            }
        }
    })?;
    if let Some(e) = io_err {
        return Err(e.into());
    }
    if verbose {
        let pe = usage.prompt_eval_duration.as_secs_f64();
        let ev = usage.eval_duration.as_secs_f64();
        log(&format!(
            "prompt: {} tokens ({} cached) in {:.3}s ({:.1} tok/s); generated {} tokens in {:.3}s ({:.1} tok/s)",
            usage.prompt_tokens,
            usage.cached_tokens,
            pe,
            (usage.prompt_tokens - usage.cached_tokens) as f64 / pe.max(1e-9),
            usage.completion_tokens,
            ev,
            usage.completion_tokens as f64 / ev.max(1e-9)
        ));
    }
    Ok(text)
}

pub fn run(a: &RunArgs) -> Result<()> {
    let model = a.model.load()?;
    let prompt = match &a.prompt {
        Some(p) => Some(p.clone()),
        None if !std::io::stdin().is_terminal() => {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
            Some(s)
        }
        None => None,
    };
    let mut messages: Vec<serde_json::Value> = Vec::new();
    if let Some(sys) = &a.system {
        messages.push(serde_json::json!({"role": "system", "content": sys}));
    }
    if let Some(p) = prompt {
        let ids = if a.raw {
            model.encode_prompt(&p)
        } else {
            messages.push(serde_json::json!({"role": "user", "content": p}));
            model
                .encode_chat(&serde_json::Value::Array(messages), None, true)?
                .1
        };
        stream(&model, a.request(ids), a.verbose)?;
        println!();
        return Ok(());
    }
    // Interactive chat.
    eprintln!(
        "smelt: chatting with {} (Ctrl-D to quit, /clear to forget)",
        model.info().name
    );
    let stdin = std::io::stdin();
    loop {
        eprint!(">>> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            eprintln!();
            return Ok(());
        }
        let line = line.trim_end_matches(['\n', '\r']);
        if line.is_empty() {
            continue;
        }
        if line == "/clear" {
            messages.retain(|m| m["role"] == "system");
            continue;
        }
        if line == "/bye" {
            return Ok(());
        }
        messages.push(serde_json::json!({"role": "user", "content": line}));
        let ids = if a.raw {
            model.encode_prompt(line)
        } else {
            model
                .encode_chat(&serde_json::Value::Array(messages.clone()), None, true)?
                .1
        };
        let reply = stream(&model, a.request(ids), a.verbose)?;
        println!("\n");
        messages.push(serde_json::json!({"role": "assistant", "content": reply}));
    }
}

#[derive(Args)]
pub struct TokenizeArgs {
    /// A model name or a path to a .gguf file.
    pub model: String,
    pub text: String,
}

pub fn tokenize(a: &TokenizeArgs) -> Result<()> {
    let path = crate::store_cmd::ensure_model(&a.model, false)?.gguf_path;
    let g = smelt_gguf::Gguf::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let tok = smelt_tokenizer::Tokenizer::from_gguf(&g)?;
    let ids = tok.encode(&a.text, false, false);
    println!("{}", serde_json::to_string(&ids)?);
    Ok(())
}

#[derive(Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A text file.
    pub file: PathBuf,
    /// Evaluate at most this many chunks.
    #[arg(long)]
    pub chunks: Option<usize>,
}

pub fn perplexity(a: &PerplexityArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("reading {}", a.file.display()))?;
    let n_ctx = a.model.ctx.unwrap_or(512);
    let model = Model::load(
        &a.model.path()?,
        LoadOptions {
            num_ctx: n_ctx,
            threads: a.model.threads.unwrap_or(0),
            ..LoadOptions::default()
        },
    )?;
    let tok = model.tokenizer();
    // llama-perplexity tokenises the whole text with BOS (when the model adds one).
    let tokens = tok.encode(&text, true, false);
    let bos = if tok.adds_bos() { tok.bos() } else { None };
    log(&format!(
        "{} tokens, {} chunks of {n_ctx}",
        tokens.len(),
        tokens.len() / n_ctx
    ));
    let r = model.with_runner(|r| {
        smelt_engine::perplexity::perplexity(r, &tokens, n_ctx, bos, a.chunks, |i, n, ppl| {
            eprint!("[{i}/{n}]{ppl:.4} ");
        })
    })??;
    eprintln!();
    println!("chunks: {}", r.chunks);
    println!("scored tokens: {}", r.scored);
    println!("ppl: {:.4}", r.ppl);
    Ok(())
}
