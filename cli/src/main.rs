//! `agentos`: one binary for every process of the platform. Logic lives in the library crates;
//! this file only parses arguments and dispatches.

// Printing to stdout is the interface of a CLI; libraries log through `tracing` instead.
#![allow(clippy::print_stdout)]

mod args;
mod client;
mod ops;
mod run;
mod state;
mod up;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = args::Cli::parse();
    run::init_tracing(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run::dispatch(cli)) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
