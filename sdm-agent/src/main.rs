//! The `sdm-agent` command line: [`cli`] defines the arguments and
//! dispatches to one module per subcommand.

use std::process::ExitCode;

use clap::Parser as _;

mod cli;

fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    init_tracing();
    match cli::dispatch(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sdm-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
