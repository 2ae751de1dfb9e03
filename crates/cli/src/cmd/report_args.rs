//! Output and filter options shared by `analyze` and `live`, so that a
//! recorded trace and a live host are reported in exactly the same way.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::{bail, Context};
use sentry_engine::report::Format;
use sentry_engine::{Allowlist, BuiltinAllowlist, DEFAULT_ALLOWLIST};

#[derive(clap::Args)]
pub struct ReportArgs {
    /// TOML allowlist of known benign sources (default: the shipped list,
    /// which has no active entry).
    #[arg(long, value_name = "FILE")]
    pub allowlist: Option<PathBuf>,
    /// Turn off the built-in allowlist (`builtin:chromium-sandbox`: Chrome's
    /// and Edge's sandbox interception thunks, docs/verdicts.md), so that
    /// those syscalls are alerted as `direct`/`unbacked`.
    #[arg(long)]
    pub no_builtin_allowlist: bool,
    /// Alert line layout: json or ecs (Elastic Common Schema).
    #[arg(long, default_value = "json")]
    pub format: String,
    /// One line per syscall (all verdicts, JSON or ECS) instead of deduplicated alerts.
    #[arg(long)]
    pub per_syscall: bool,
    /// Write lines here instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Write the per-process summary and statistics here instead of stderr.
    #[arg(long, value_name = "FILE")]
    pub summary: Option<PathBuf>,
    /// Print no summary, statistics or status lines.
    #[arg(long, short)]
    pub quiet: bool,
    /// Only this process id.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Only processes whose image name matches this glob.
    #[arg(long)]
    pub process: Option<String>,
    /// How long (trace time, ms) a syscall waits for its stack; at least 1.
    #[arg(long, default_value_t = 500)]
    pub window_ms: u64,
    /// Hard cap on syscalls/stacks waiting for their other half; at least 64.
    #[arg(long, default_value_t = 1 << 16)]
    pub max_pending: usize,
}

/// Fewest pending entries accepted: below it a burst of syscalls on a few
/// processors evicts entries before their stacks arrive.
const MIN_PENDING: usize = 64;

impl ReportArgs {
    /// Rejects values that would silently disable analysis.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.window_ms == 0 {
            bail!(
                "--window-ms 0: no syscall could wait for its stack, so every one would be                  `no_stack` and nothing could be found; give at least 1 (the default is 500)"
            );
        }
        if self.max_pending < MIN_PENDING {
            bail!(
                "--max-pending {}: syscalls would be evicted before their stacks arrive; give at                  least {MIN_PENDING} (the default is 65536)",
                self.max_pending
            );
        }
        if let Some(g) = &self.process {
            if let Some(c) = g.chars().find(|c| "[]{}".contains(*c)) {
                bail!(
                    "--process {g}: `{c}` is not a wildcard here (only `*` and `?` are), so the                      pattern could only match a name containing it literally"
                );
            }
            if g.trim().is_empty() {
                bail!("--process: empty pattern");
            }
        }
        Ok(())
    }
}

impl ReportArgs {
    /// `--format`, checked.
    pub fn format(&self) -> anyhow::Result<Format> {
        Ok(match self.format.as_str() {
            "json" => Format::Json,
            "ecs" => Format::Ecs,
            f => bail!("--format {f}: expected json or ecs"),
        })
    }

    /// `--allowlist`, or the shipped default.
    pub fn allowlist(&self) -> anyhow::Result<Allowlist> {
        match &self.allowlist {
            Some(p) => {
                let t = std::fs::read_to_string(p).with_context(|| format!("{}", p.display()))?;
                Allowlist::parse(&t).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
            }
            None => Allowlist::parse(DEFAULT_ALLOWLIST).map_err(|e| anyhow::anyhow!("{e}")),
        }
    }

    /// The built-in recognisers, unless `--no-builtin-allowlist`.
    pub fn builtin(&self) -> BuiltinAllowlist {
        if self.no_builtin_allowlist {
            BuiltinAllowlist::disabled()
        } else {
            BuiltinAllowlist::default()
        }
    }

    /// Where alert lines go: `--out` or stdout, buffered.
    pub fn alert_writer(&self) -> anyhow::Result<Box<dyn Write>> {
        Ok(match &self.out {
            Some(p) => Box::new(BufWriter::with_capacity(
                1 << 16,
                File::create(p).with_context(|| format!("{}", p.display()))?,
            )),
            None => Box::new(BufWriter::with_capacity(1 << 16, std::io::stdout())),
        })
    }
}
