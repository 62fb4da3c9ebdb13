//! smelt: the command line. (Minimal wiring of the store subcommands; the lead's main.rs replaces it.)

mod store_cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "smelt",
    version,
    about = "Local LLM inference engine and server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Pull a model from a registry, Hugging Face, or the built-in catalog
    Pull(store_cmd::PullArgs),
    /// Create a model from a Modelfile or a GGUF file
    Create(store_cmd::CreateArgs),
    /// List models
    #[command(alias = "ls")]
    List(store_cmd::ListArgs),
    /// Show a model's details
    Show(store_cmd::ShowArgs),
    /// Copy a model under a new name
    Cp(store_cmd::CpArgs),
    /// Remove models
    Rm(store_cmd::RmArgs),
    /// List the models a running server has loaded
    Ps(store_cmd::PsArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Pull(a) => store_cmd::run_pull(a),
        Command::Create(a) => store_cmd::run_create(a),
        Command::List(a) => store_cmd::run_list(a),
        Command::Show(a) => store_cmd::run_show(a),
        Command::Cp(a) => store_cmd::run_cp(a),
        Command::Rm(a) => store_cmd::run_rm(a),
        Command::Ps(a) => store_cmd::run_ps(a),
    };
    if let Err(e) = result {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}
