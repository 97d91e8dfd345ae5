//! `agentos`: one binary for every process of the platform. Logic lives in the library crates;
//! this file only parses arguments and dispatches.

// Printing to stdout is the interface of a CLI; libraries log through `tracing` instead.
#![allow(clippy::print_stdout)]

mod accounts;
mod accounts_callout;
mod args;
mod callout;
mod certs;
mod client;
mod config;
mod fed_status;
mod federate;
mod metrics;
mod ops;
mod otel;
mod profile;
mod run;
mod run_trace;
mod secret;
mod state;
mod tenant;
mod up;
mod up_cluster;
mod up_metrics;
mod up_observability;
mod up_supervise;
mod up_tls;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let mut cli = args::Cli::parse();
    // `validate` reports a broken file as one of its checks instead of failing here.
    let validating = matches!(cli.command, args::Command::Validate(_));
    let file = match config::locate(cli.config.as_deref()).map(|p| config::load(&p)) {
        None => config::Config::default(),
        Some(Ok(file)) => file,
        Some(Err(_)) if validating => config::Config::default(),
        Some(Err(e)) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    config::layer(&mut cli, file);
    let _traces = match run::init_tracing(cli.log_format, run::service_name(&cli.command)) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
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
