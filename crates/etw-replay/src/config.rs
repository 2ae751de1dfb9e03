//! The harness is off unless `SENTRY_REPLAY_DIR` names a directory: every
//! export then returns `ERROR_CALL_NOT_IMPLEMENTED`, as Wine's own ETW
//! stubs do for most calls, and writes nothing. The other variables:
//!
//! - `SENTRY_REPLAY_TRACE`: the `.etl` whose events `ProcessTrace` delivers
//!   (read with the project's reader, cut into per-processor buffers of the
//!   session's `BufferSize`, flushed when full or by its `FlushTimer`).
//! - `SENTRY_REPLAY_PROCESSOR`: `index` (default: `EVENT_HEADER_FLAG_PROCESSOR_INDEX`
//!   set, `BufferContext.ProcessorIndex`), `number` (flag clear,
//!   `ProcessorNumber` with a non-zero `Alignment` byte, which a reader that
//!   ignores the flag takes for part of the index) or `mixed` (alternating).
//! - `SENTRY_REPLAY_FAULTS`: comma-separated failure injection:
//!   `process-trace-error=N:CODE` (`ProcessTrace` returns CODE after N
//!   events, the session left running), `external-stop=N` (after N events
//!   the session is stopped as if by another program; `ProcessTrace`
//!   returns success), `stop-fail=K` (the first K `ControlTraceW(STOP)`s
//!   of this process fail with `ERROR_BUSY`), `events-lost=N` (queries
//!   report N lost events).
//!
//! The call log is `$SENTRY_REPLAY_DIR/calls.jsonl`; sessions live in
//! `$SENTRY_REPLAY_DIR/sessions/`, shared by every process.

use std::path::PathBuf;

/// How the processor goes into `ETW_BUFFER_CONTEXT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProcessorStyle {
    #[default]
    Index,
    Number,
    Mixed,
}

/// Injected failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Faults {
    pub process_trace_error: Option<(u64, u32)>,
    pub external_stop: Option<u64>,
    pub stop_fail: u32,
    pub events_lost: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub dir: PathBuf,
    pub trace: Option<PathBuf>,
    pub processor: ProcessorStyle,
    pub faults: Faults,
}

impl Config {
    /// From the environment; `None` when the harness is off.
    pub fn from_env() -> Result<Option<Config>, String> {
        let Some(dir) = std::env::var_os("SENTRY_REPLAY_DIR") else {
            return Ok(None);
        };
        Config::parse(
            PathBuf::from(dir),
            std::env::var_os("SENTRY_REPLAY_TRACE").map(PathBuf::from),
            std::env::var("SENTRY_REPLAY_PROCESSOR").ok().as_deref(),
            std::env::var("SENTRY_REPLAY_FAULTS").ok().as_deref(),
        )
        .map(Some)
    }

    pub fn parse(
        dir: PathBuf,
        trace: Option<PathBuf>,
        processor: Option<&str>,
        faults: Option<&str>,
    ) -> Result<Config, String> {
        let processor = match processor.unwrap_or("index") {
            "index" => ProcessorStyle::Index,
            "number" => ProcessorStyle::Number,
            "mixed" => ProcessorStyle::Mixed,
            o => {
                return Err(format!(
                    "SENTRY_REPLAY_PROCESSOR={o}: index, number or mixed"
                ))
            }
        };
        let mut f = Faults::default();
        for item in faults.unwrap_or("").split(',').filter(|s| !s.is_empty()) {
            let (k, v) = item
                .split_once('=')
                .ok_or_else(|| format!("SENTRY_REPLAY_FAULTS: {item}: expected KEY=VALUE"))?;
            let num = |s: &str| {
                s.parse::<u64>()
                    .map_err(|_| format!("SENTRY_REPLAY_FAULTS: {item}: {s} is not a number"))
            };
            match k {
                "process-trace-error" => {
                    let (n, code) = v.split_once(':').ok_or_else(|| {
                        format!("SENTRY_REPLAY_FAULTS: {item}: expected process-trace-error=N:CODE")
                    })?;
                    f.process_trace_error = Some((num(n)?, num(code)? as u32));
                }
                "external-stop" => f.external_stop = Some(num(v)?),
                "stop-fail" => f.stop_fail = num(v)? as u32,
                "events-lost" => f.events_lost = num(v)? as u32,
                _ => return Err(format!("SENTRY_REPLAY_FAULTS: unknown fault {k}")),
            }
        }
        Ok(Config {
            dir,
            trace,
            processor,
            faults: f,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_and_errors_say_what_is_wrong() {
        let c = Config::parse(
            "d".into(),
            None,
            Some("mixed"),
            Some("process-trace-error=2000:1359,external-stop=5,stop-fail=2,events-lost=7"),
        )
        .unwrap();
        assert_eq!(c.processor, ProcessorStyle::Mixed);
        assert_eq!(
            c.faults,
            Faults {
                process_trace_error: Some((2000, 1359)),
                external_stop: Some(5),
                stop_fail: 2,
                events_lost: 7
            }
        );
        assert!(Config::parse("d".into(), None, None, Some("bogus=1"))
            .unwrap_err()
            .contains("unknown fault bogus"));
        assert!(Config::parse("d".into(), None, Some("x"), None).is_err());
        assert!(Config::parse("d".into(), None, None, Some("stop-fail=x")).is_err());
    }
}
