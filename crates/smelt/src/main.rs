//! The smelt command line. (Minimal wiring of `bench` on the `fast` branch; the lead's
//! main.rs adds `Bench(bench_cmd::BenchArgs)` to its verbs.)

mod bench_cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "smelt", version, about = "Local LLM inference")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Prefill and decode speed, dispatches, memory traffic; --membw; --synthetic models.
    Bench(bench_cmd::BenchArgs),
}

fn main() {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Bench(a) => bench_cmd::run_bench(a),
    };
    if let Err(e) = res {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}
