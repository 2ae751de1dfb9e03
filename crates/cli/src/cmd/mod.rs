//! One module per subcommand; each exposes its clap `Args` and a `run`.
pub mod analyze;
pub mod dump;
pub mod live;
pub mod progress;
pub mod report_args;
pub mod stats;
pub mod synth;
