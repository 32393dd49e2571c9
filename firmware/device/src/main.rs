//! `anytime-edge`: the device binary (predict, learn, serve, demo).
use anyhow::Result;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

#[derive(Parser, Debug)]
#[command(
    name = "anytime-edge",
    version,
    about = "Learn to recognise images on the device, at any time"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Zero-shot / tuned prediction over any label set.
    Predict(cmd::predict::Args),
    /// Learn from labelled images (one update per sample).
    Learn(cmd::learn::Args),
    /// Long-running loop answering newline-delimited JSON requests.
    Serve(cmd::serve::Args),
    /// The product on the model's bundled pictures: zero-shot, learn a few, predict again.
    Demo(cmd::demo::Args),
}

fn main() -> ExitCode {
    anytime_runtime::train::quiet_device_select();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let result: Result<()> = match Cli::parse().command {
        Command::Predict(a) => cmd::predict::run(a),
        Command::Learn(a) => cmd::learn::run(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Demo(a) => cmd::demo::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
