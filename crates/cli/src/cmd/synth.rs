//! `syscall-sentry synth`: writes a labelled scenario as a genuine NT Kernel
//! Logger `.etl` trace plus `X.truth.json` (schema in `docs/verdicts.md`).

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use sentry_synth::{Options, Scenario, Source};

#[derive(clap::Args)]
pub struct Args {
    /// benign, direct-image, direct-unbacked, indirect-jumper,
    /// indirect-randomized, heavens-gate, degraded, mixed; call-stack
    /// evasion: cloned-ntdll, rop-frames, stack-truncation, wow64-bypass,
    /// evasion-lookalikes; Audit-API: audit-benign, audit-lsass-direct,
    /// audit-indirect, audit-set-context, audit-mixed.
    #[arg(long, default_value = "mixed")]
    pub scenario: String,
    /// Seed of the generator: the same seed and options write the same bytes.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Number of syscalls (SysCallEnter events, lost ones included).
    #[arg(long, default_value_t = 2000)]
    pub syscalls: u64,
    /// 8 (x64) or 4 (x86).
    #[arg(long, default_value_t = 8)]
    pub pointer_size: u8,
    /// Processors of the traced machine (one buffer stream each), 1 to 64.
    #[arg(long, default_value_t = 8)]
    pub processors: u16,
    /// XPRESS-compress the buffers (Windows 8+ compressed traces).
    #[arg(long)]
    pub compress: bool,
    /// Stack caching (StackWalk key events 35-38 instead of opcode 32).
    #[arg(long)]
    pub stack_cache: bool,
    /// No short-lived processes starting and exiting: the same processes
    /// throughout, however long the trace (for memory measurements).
    #[arg(long)]
    pub fixed_population: bool,
    /// Which events carry the syscalls: `syscalls` (SysCallEnter +
    /// StackWalk, every syscall) or `audit` (Kernel-Audit-API-Calls events
    /// with their stack, the audited syscalls only). Default: `audit` for
    /// the audit-* scenarios, else `syscalls`. One seed is one workload in
    /// both.
    #[arg(long)]
    pub source: Option<String>,
    /// Do not write X.truth.json (for throughput runs).
    #[arg(long)]
    pub no_truth: bool,
    /// Also write minimal ntdll.dll, win32u.dll, ntoskrnl.exe and win32k.sys
    /// whose exports match the trace's layout (for `analyze --system-dlls`).
    #[arg(long, value_name = "DIR")]
    pub system_dlls_out: Option<PathBuf>,
    /// Also write the user-mode system DLLs (System32/, SysWOW64/) with the
    /// code bytes behind the trace's return addresses (for `analyze --images`).
    #[arg(long, value_name = "DIR")]
    pub images_out: Option<PathBuf>,
    /// Output .etl file.
    #[arg(short, long)]
    pub output: PathBuf,
}

/// A file written under a temporary name next to its final one: renamed
/// by [`Partial::keep`], removed if dropped before.
struct Partial {
    tmp: PathBuf,
    dest: PathBuf,
    kept: bool,
}

impl Partial {
    fn new(dest: &Path) -> Partial {
        let mut name = dest.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".partial-{}", std::process::id()));
        Partial {
            tmp: dest.with_file_name(name),
            dest: dest.to_path_buf(),
            kept: false,
        }
    }

    fn keep(mut self) -> anyhow::Result<()> {
        std::fs::rename(&self.tmp, &self.dest).with_context(|| {
            format!("renaming {} to {}", self.tmp.display(), self.dest.display())
        })?;
        self.kept = true;
        Ok(())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// `out.etl` -> `out.truth.json`.
pub fn truth_path(etl: &Path) -> PathBuf {
    etl.with_extension("truth.json")
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let scenario = Scenario::from_name(&a.scenario).with_context(|| {
        let names: Vec<&str> = Scenario::ALL
            .iter()
            .chain(&Scenario::EVASION)
            .chain(Scenario::AUDIT.iter())
            .chain(Scenario::CHROMIUM.iter())
            .map(|s| s.name())
            .collect();
        format!(
            "unknown scenario `{}` (one of: {})",
            a.scenario,
            names.join(", ")
        )
    })?;
    if a.pointer_size != 4 && a.pointer_size != 8 {
        anyhow::bail!(
            "--pointer-size {}: must be 4 (x86) or 8 (x64)",
            a.pointer_size
        );
    }
    if !(1..=64).contains(&a.processors) {
        anyhow::bail!("--processors {}: must be 1 to 64", a.processors);
    }
    let source = match a.source.as_deref() {
        None => scenario.default_source(),
        Some(s) => Source::from_name(s)
            .with_context(|| format!("--source {s}: expected syscalls or audit"))?,
    };
    let opts = Options {
        scenario,
        seed: a.seed,
        syscalls: a.syscalls,
        pointer_size: a.pointer_size,
        processors: a.processors,
        compress: a.compress,
        stack_cache: a.stack_cache,
        process_churn: !a.fixed_population,
        source,
    };
    let started = Instant::now();
    let tp = truth_path(&a.output);
    // Written under temporary names and renamed when complete: a failed run
    // leaves no empty or partial trace behind.
    let partial_etl = Partial::new(&a.output);
    let partial_truth = (!a.no_truth).then(|| Partial::new(&tp));
    let etl = BufWriter::with_capacity(
        1 << 20,
        File::create(&partial_etl.tmp)
            .with_context(|| format!("creating {}", a.output.display()))?,
    );
    let truth = match &partial_truth {
        None => None,
        Some(p) => Some(BufWriter::with_capacity(
            1 << 20,
            File::create(&p.tmp).with_context(|| format!("creating {}", tp.display()))?,
        )),
    };
    let (etl, summary) = sentry_synth::generate(&opts, etl, truth)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("writing {}", a.output.display()))?;
    drop(etl);
    partial_etl.keep()?;
    if let Some(p) = partial_truth {
        p.keep()?;
    }
    let secs = started.elapsed().as_secs_f64();
    if let Some(dir) = &a.system_dlls_out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, bytes) in sentry_synth::pe::system_dlls(&summary.layout) {
            let p = dir.join(name);
            std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))?;
        }
    }
    if let Some(dir) = &a.images_out {
        for (rel, bytes) in sentry_synth::pe::images(&summary.layout, &summary.code) {
            let p = dir.join(rel);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))?;
        }
    }
    let s = &summary.stats;
    let mb = s.bytes as f64 / 1e6;
    eprintln!(
        "synth: {} ({} syscalls in truth, {} events lost): {} buffers ({} compressed), {} records, {:.1} MB in {:.2} s ({:.0} MB/s)",
        a.output.display(),
        summary.truth_syscalls,
        summary.events_lost,
        s.buffers,
        s.compressed_buffers,
        s.records,
        mb,
        secs,
        mb / secs.max(1e-9)
    );
    let counts: Vec<String> = summary
        .counts
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    eprintln!("synth: verdicts {}", counts.join(" "));
    if !summary.learnable() {
        eprintln!(
            "synth: warning: {} return site(s) are seen more often with another service than their own; \
             an engine learning the stub map from this trace will disagree with the truth (use more --syscalls)",
            summary.unlearnable_sites.len()
        );
    }
    if !a.no_truth {
        eprintln!("synth: truth in {}", tp.display());
    }
    Ok(ExitCode::SUCCESS)
}
