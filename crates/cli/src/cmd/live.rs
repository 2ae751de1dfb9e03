use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {}

#[derive(clap::Args)]
pub struct RecordArgs {}

#[derive(clap::Args)]
pub struct StopArgs {}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("this subcommand is not built yet")
}

pub fn record(_args: RecordArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("this subcommand is not built yet")
}

pub fn stop(_args: StopArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("this subcommand is not built yet")
}
