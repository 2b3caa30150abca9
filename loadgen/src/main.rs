//! The `loadgen` binary. Exit codes: 0 the run passed; 1 the verification found disagreements;
//! 2 bad flags; 3 the run could not start or stopped early (the report, when any, is partial).

use std::process::ExitCode;

use clap::Parser;
use loadgen::cli::Args;
use loadgen::run::{run, Ending};

/// mimalloc instead of glibc malloc: see the workspace Cargo.toml for the measured reason.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    let checked = match args.check() {
        Ok(checked) => checked,
        Err(message) => {
            eprintln!("loadgen: {message}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("loadgen: cannot start the async runtime: {error}");
            return ExitCode::from(3);
        }
    };
    match runtime.block_on(run(args, checked)) {
        Ok(Ending::Passed) => ExitCode::SUCCESS,
        Ok(Ending::VerificationFailed) => {
            eprintln!("loadgen: VERIFICATION FAILED: the switch's ledger disagrees with what loadgen saw (see above)");
            ExitCode::from(1)
        }
        Ok(Ending::Aborted) => {
            eprintln!("loadgen: the run stopped early; the report above is partial");
            ExitCode::from(3)
        }
        Err(error) => {
            eprintln!("loadgen: {error:#}");
            ExitCode::from(3)
        }
    }
}
