//! `agentos`: one binary for every process of the platform. Logic lives in the library crates;
//! this file only parses arguments and dispatches.

// Printing to stdout is the interface of a CLI; libraries log through `tracing` instead.
#![allow(clippy::print_stdout)]

mod accounts;
mod args;
mod client;
mod config;
mod ops;
mod run;
mod state;
mod tenant;
mod up;

use clap::{CommandFactory, FromArgMatches};

fn main() -> std::process::ExitCode {
    let matches = args::Cli::command().get_matches();
    let cli = match args::Cli::from_arg_matches(&matches)
        .map_err(anyhow::Error::from)
        .and_then(|mut cli| {
            // `validate` reports a broken file as one of its checks instead of failing here.
            let validating = matches!(cli.command, args::Command::Validate(_));
            if let Some(path) = config::locate(cli.config.as_deref()) {
                match config::load(&path).and_then(|c| config::apply(&mut cli, &matches, &c)) {
                    Err(_) if validating => {}
                    other => other?,
                }
            }
            Ok(cli)
        }) {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
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
