//! The smelt command line: Ollama's verbs. stdout carries only generated text or requested
//! data; logs and progress go to stderr.

mod bench_cmd;
mod gen_cmd;
mod serve_cmd;
mod store_cmd;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "smelt",
    version,
    about = "Local LLM inference: GGUF models, fused CPU engine, Ollama/OpenAI/Anthropic server"
)]
struct Cli {
    /// Where models run: auto (the GPU when a CUDA driver and GPU load), cpu, or cuda.
    #[arg(long, global = true, value_enum, default_value_t = Device::Auto)]
    device: Device,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Device {
    Auto,
    Cpu,
    Cuda,
}

#[derive(Subcommand)]
enum Cmd {
    /// Chat with a model (or complete a prompt with --raw); pulls it first when missing.
    Run(gen_cmd::RunArgs),
    /// Serve the Ollama, OpenAI and Anthropic APIs (127.0.0.1:11434 by default).
    Serve(serve_cmd::ServeArgs),
    /// Pull a model from a registry, Hugging Face, or the built-in catalog.
    Pull(store_cmd::PullArgs),
    /// Create a model from a Modelfile or a GGUF file.
    Create(store_cmd::CreateArgs),
    /// List models.
    #[command(alias = "ls")]
    List(store_cmd::ListArgs),
    /// Architecture, parameters, quantisation, context length, template and license.
    Show(store_cmd::ShowArgs),
    /// Copy a model under a new name.
    Cp(store_cmd::CpArgs),
    /// Remove models.
    Rm(store_cmd::RmArgs),
    /// List the models a running server has loaded.
    Ps(store_cmd::PsArgs),
    /// Print the token ids of TEXT as a JSON array (no BOS, special tokens not parsed).
    Tokenize(gen_cmd::TokenizeArgs),
    /// Perplexity of a text file, computed as llama-perplexity does.
    Perplexity(gen_cmd::PerplexityArgs),
    /// Prefill and decode speed, dispatches, memory traffic; --membw; --synthetic models.
    Bench(bench_cmd::BenchArgs),
}

fn main() {
    let cli = Cli::parse();
    // The engine reads the device choice from the environment (also in the server's loader
    // threads); set before any thread starts. An explicit SMELT_DEVICE wins over the default.
    if cli.device != Device::Auto || std::env::var_os(smelt_engine::DEVICE_ENV).is_none() {
        let v = format!("{:?}", cli.device).to_lowercase();
        std::env::set_var(smelt_engine::DEVICE_ENV, v);
    }
    let res: Result<()> = match cli.cmd {
        Cmd::Run(a) => gen_cmd::run(&a),
        Cmd::Serve(a) => serve_cmd::run_serve(a),
        Cmd::Pull(a) => store_cmd::run_pull(&a),
        Cmd::Create(a) => store_cmd::run_create(&a),
        Cmd::List(a) => store_cmd::run_list(&a),
        Cmd::Show(a) => store_cmd::run_show(&a),
        Cmd::Cp(a) => store_cmd::run_cp(&a),
        Cmd::Rm(a) => store_cmd::run_rm(&a),
        Cmd::Ps(a) => store_cmd::run_ps(&a),
        Cmd::Tokenize(a) => gen_cmd::tokenize(&a),
        Cmd::Perplexity(a) => gen_cmd::perplexity(&a),
        Cmd::Bench(a) => bench_cmd::run_bench(a),
    };
    if let Err(e) = res {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}
