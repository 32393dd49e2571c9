//! `anytime-host`: simulator, benchmarks and tools for anytime-edge.
//!
//! Every subcommand lives in its own module under `cmd/` with an `Args` struct
//! and a `run` function.
use anyhow::Result;
use clap::{Parser, Subcommand};

mod cmd;
mod sim;

#[derive(Parser, Debug)]
#[command(
    name = "anytime-host",
    version,
    about = "anytime-edge host simulator, benchmarks and tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Trunk encode throughput: tract against onnxruntime (python) at equal threads.
    BenchEncode(cmd::bench_encode::Args),
    /// A user's learn and predict requests end to end, by phase.
    BenchLearn(cmd::bench_learn::Args),
    /// One training step of the tuned block (CPU and wgpu) against the SGEMM roofline.
    BenchTrain(cmd::bench_train::Args),
    /// Codec and store throughput, record sizes and reconstruction error.
    BenchStore(cmd::bench_store::Args),
    /// Print a store's header, labels and counts, and verify every CRC.
    InspectStore(cmd::inspect_store::Args),
    /// Replay a labelled dataset as a stream and evaluate every method at every stage.
    Simulate(Box<cmd::simulate::Args>),
}

fn main() -> Result<()> {
    anytime_runtime::train::quiet_device_select();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match Cli::parse().command {
        Command::BenchEncode(a) => cmd::bench_encode::run(a),
        Command::BenchLearn(a) => cmd::bench_learn::run(a),
        Command::BenchTrain(a) => cmd::bench_train::run(a),
        Command::BenchStore(a) => cmd::bench_store::run(a),
        Command::InspectStore(a) => cmd::inspect_store::run(a),
        Command::Simulate(a) => cmd::simulate::run(*a),
    }
}
