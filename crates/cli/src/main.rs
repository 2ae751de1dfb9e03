//! `syscall-sentry`: finds processes that hide their system calls on Windows
//! (direct and indirect syscalls), from the NT Kernel Logger's SysCallEnter
//! events and their call stacks.
//!
//! Each subcommand lives in its own module under `cmd/`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;
mod exit;

#[derive(Parser)]
#[command(name = "syscall-sentry", version, about, long_about = None, after_help = exit::HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Analyse .etl files (recorded by syscall-sentry, xperf or WPR): alerts for direct and indirect syscalls.
    #[command(after_help = exit::HELP)]
    Analyze(cmd::analyze::Args),
    /// Watch this Windows host live on the NT Kernel Logger (Administrator).
    Live(cmd::live::Args),
    /// Record the same kernel session into an .etl file (Windows, Administrator).
    Record(cmd::live::RecordArgs),
    /// Stop a kernel trace session left running (Windows, Administrator).
    Stop(cmd::live::StopArgs),
    /// Write a synthetic .etl trace of a labelled syscall scenario, with its ground truth.
    Synth(cmd::synth::Args),
    /// Summarise an .etl file: buffers, records, header kinds, event counts, time range.
    Stats(cmd::stats::Args),
    /// Print decoded events of an .etl file as JSON lines.
    Dump(cmd::dump::Args),
}

/// `record` and `stop` elsewhere than on Windows: say which command and
/// what to do instead (the live module's message is about `live`).
fn on_windows_only(e: anyhow::Error, command: &str) -> anyhow::Error {
    if cfg!(windows) {
        return e;
    }
    let what = match command {
        "record" => "record writes this machine's NT Kernel Logger to a file, so it runs on the \
                     Windows host to watch (as Administrator); copy the .etl here and run `analyze` on it",
        _ => "stop ends a kernel trace session on a Windows host; there is none on this OS",
    };
    anyhow::anyhow!("{command} needs Windows: {what}")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Analyze(a) => cmd::analyze::run(a),
        Command::Live(a) => cmd::live::run(a),
        Command::Record(a) => cmd::live::record(a).map_err(|e| on_windows_only(e, "record")),
        Command::Stop(a) => cmd::live::stop(a).map_err(|e| on_windows_only(e, "stop")),
        Command::Synth(a) => cmd::synth::run(a),
        Command::Stats(a) => cmd::stats::run(a),
        Command::Dump(a) => cmd::dump::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) if exit::is_broken_pipe(&e) => ExitCode::from(exit::BROKEN_PIPE),
        Err(e) => {
            eprintln!("syscall-sentry: error: {e:#}");
            ExitCode::from(exit::ERROR)
        }
    }
}
