//! The smelt command line: Ollama's verbs. stdout carries only generated text or requested
//! data; logs and progress go to stderr.

mod gen_cmd;
mod serve_cmd;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "smelt",
    version,
    about = "Local LLM inference: GGUF models, fused CPU engine, Ollama/OpenAI/Anthropic server"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Chat with a model (or complete a prompt with --raw).
    Run(gen_cmd::RunArgs),
    /// Print the token ids of TEXT as a JSON array (no BOS, special tokens not parsed).
    Tokenize(gen_cmd::TokenizeArgs),
    /// Perplexity of a text file, computed as llama-perplexity does.
    Perplexity(gen_cmd::PerplexityArgs),
    /// Architecture, parameters, quantisation, context length, template and license.
    Show(gen_cmd::ShowArgs),
    /// Serve the Ollama, OpenAI and Anthropic APIs (127.0.0.1:11434 by default).
    Serve(serve_cmd::ServeArgs),
}

fn main() {
    let cli = Cli::parse();
    let res: Result<()> = match cli.cmd {
        Cmd::Run(a) => gen_cmd::run(a),
        Cmd::Tokenize(a) => gen_cmd::tokenize(a),
        Cmd::Perplexity(a) => gen_cmd::perplexity(a),
        Cmd::Show(a) => gen_cmd::show(a),
        Cmd::Serve(a) => serve_cmd::run_serve(a),
    };
    if let Err(e) = res {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}
