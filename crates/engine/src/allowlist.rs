//! Allowlist of known benign sources of direct/indirect syscalls (TOML).
//! The format and the reasons the shipped defaults are empty are in
//! `data/allowlist.default.toml`.

use serde::Deserialize;

use crate::classify::{Reason, Verdict};

/// The default allowlist (every entry commented out).
pub const DEFAULT_ALLOWLIST: &str = include_str!("../data/allowlist.default.toml");

/// One entry.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AllowEntry {
    pub process: String,
    #[serde(default)]
    pub module: Option<String>,
    #[serde(default)]
    pub call_site: Option<String>,
    #[serde(default)]
    pub caller_module: Option<String>,
    #[serde(default)]
    pub verdict: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub comment: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    allow: Vec<AllowEntry>,
}

/// The facts of one alert that entries match on.
#[derive(Debug, Clone, Copy)]
pub struct AlertFacts<'a> {
    pub process: &'a str,
    /// Module of U, `None` if unbacked.
    pub module: Option<&'a str>,
    /// Offset of U in its module.
    pub offset: u64,
    pub caller_module: Option<&'a str>,
    pub verdict: Verdict,
    pub reason: Option<Reason>,
}

/// Parsed allowlist with a suppression counter per entry.
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    pub entries: Vec<AllowEntry>,
    call_sites: Vec<Option<(String, u64)>>,
    pub hits: Vec<u64>,
}

impl Allowlist {
    /// Entries accepted at most: an entry index then fits the engine's
    /// packed per-outcome counters (and no real list comes near it).
    pub const MAX_ENTRIES: usize = 1 << 20;

    /// Parses and validates a TOML allowlist.
    pub fn parse(text: &str) -> Result<Allowlist, String> {
        let f: File = toml::from_str(text).map_err(|e| e.to_string())?;
        if f.allow.len() > Allowlist::MAX_ENTRIES {
            return Err(format!(
                "{} entries: at most {} are accepted (split the list or use patterns)",
                f.allow.len(),
                Allowlist::MAX_ENTRIES
            ));
        }
        let mut call_sites = Vec::new();
        for (i, e) in f.allow.iter().enumerate() {
            let n = i + 1;
            // A pattern of wildcards alone names nothing.
            let names = |p: &Option<String>| {
                p.as_deref().is_some_and(|p| {
                    p.chars()
                        .any(|c| c != '*' && c != '?' && !c.is_whitespace())
                })
            };
            if !names(&Some(e.process.clone())) {
                return Err(format!(
                    "entry {n}: `process` must name a process (`{}` matches every one)",
                    e.process
                ));
            }
            if !names(&e.module) && e.call_site.is_none() && !names(&e.caller_module) {
                return Err(format!(
                    "entry {n}: give a `module`, `call_site` or `caller_module` that names something (an entry may not silence a whole process)"
                ));
            }
            if let Some(v) = &e.verdict {
                match Verdict::parse(v) {
                    Some(v) if v.is_alert() => {}
                    _ => return Err(format!("entry {n}: verdict `{v}` is not direct/indirect")),
                }
            }
            if let Some(r) = &e.reason {
                if Reason::parse(r).is_none() {
                    return Err(format!("entry {n}: unknown reason `{r}`"));
                }
            }
            call_sites.push(match &e.call_site {
                None => None,
                Some(cs) => Some(parse_call_site(cs).ok_or_else(|| {
                    format!("entry {n}: call_site `{cs}` is not module+0xoffset")
                })?),
            });
        }
        let hits = vec![0; f.allow.len()];
        Ok(Allowlist {
            entries: f.allow,
            call_sites,
            hits,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The first matching entry, counted.
    pub fn check(&mut self, a: &AlertFacts<'_>) -> Option<usize> {
        let i = self.matching(a)?;
        self.hits[i] += 1;
        Some(i)
    }

    /// Counts `n` suppressions by entry `i` (decided later than the check:
    /// see [`crate::Learning::Deferred`]).
    pub fn count(&mut self, i: usize, n: u64) {
        if let Some(h) = self.hits.get_mut(i) {
            *h += n;
        }
    }

    /// The first matching entry, not counted.
    pub fn matching(&self, a: &AlertFacts<'_>) -> Option<usize> {
        let unbacked = "<unbacked>";
        for (i, e) in self.entries.iter().enumerate() {
            if !glob(&e.process, a.process) {
                continue;
            }
            if let Some(m) = &e.module {
                if !glob(m, a.module.unwrap_or(unbacked)) {
                    continue;
                }
            }
            if let Some(Some((m, off))) = self.call_sites.get(i) {
                if !a.module.is_some_and(|am| am.eq_ignore_ascii_case(m)) || a.offset != *off {
                    continue;
                }
            }
            if let Some(m) = &e.caller_module {
                if !glob(m, a.caller_module.unwrap_or(unbacked)) {
                    continue;
                }
            }
            if let Some(v) = &e.verdict {
                if v != a.verdict.as_str() {
                    continue;
                }
            }
            if let Some(r) = &e.reason {
                if Some(r.as_str()) != a.reason.map(Reason::as_str) {
                    continue;
                }
            }
            return Some(i);
        }
        None
    }
}

fn parse_call_site(s: &str) -> Option<(String, u64)> {
    let (m, off) = s.rsplit_once('+')?;
    let off = off.strip_prefix("0x").or_else(|| off.strip_prefix("0X"))?;
    Some((m.to_string(), u64::from_str_radix(off, 16).ok()?))
}

/// Case-insensitive glob with `*` and `?`.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let t: Vec<char> = text.to_lowercase().chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            pi += 1;
            mark = ti;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches() {
        assert!(glob("chrome.exe", "Chrome.EXE"));
        assert!(glob("*.exe", "a.exe"));
        assert!(glob("c?rome*", "chrome.exe"));
        assert!(!glob("chrome.exe", "notchrome.exe"));
        assert!(!glob("*.dll", "a.exe"));
    }

    #[test]
    fn default_allowlist_is_valid_and_empty() {
        let a = Allowlist::parse(DEFAULT_ALLOWLIST).unwrap();
        assert!(a.is_empty());
    }

    #[test]
    fn entries_match_all_given_fields_and_count() {
        let mut a = Allowlist::parse(
            r#"
[[allow]]
process = "jit*.exe"
call_site = "Engine.dll+0x1f0"
verdict = "direct"
"#,
        )
        .unwrap();
        let mut f = AlertFacts {
            process: "jithost.exe",
            module: Some("engine.dll"),
            offset: 0x1f0,
            caller_module: None,
            verdict: Verdict::Direct,
            reason: Some(Reason::Image),
        };
        assert_eq!(a.check(&f), Some(0));
        f.offset = 0x1f4;
        assert_eq!(a.check(&f), None);
        f.offset = 0x1f0;
        f.verdict = Verdict::Indirect;
        assert_eq!(a.check(&f), None);
        f.verdict = Verdict::Direct;
        f.process = "other.exe";
        assert_eq!(a.check(&f), None);
        assert_eq!(a.hits, vec![1]);
    }

    #[test]
    fn blanket_entries_are_rejected() {
        assert!(Allowlist::parse("[[allow]]\nprocess = \"*\"\n").is_err());
        assert!(
            Allowlist::parse("[[allow]]\nprocess = \"a\"\nmodule=\"b\"\nverdict=\"normal\"\n")
                .is_err()
        );
        assert!(Allowlist::parse("[[allow]]\nprocess = \"a\"\ncall_site=\"b\"\n").is_err());
        // Wildcards alone name nothing (issue 12: `*`/`*` silenced everything).
        for (p, m) in [("*", "*"), ("*", "jit.dll"), ("a.exe", "*"), ("**", "?*")] {
            let t = format!("[[allow]]\nprocess = \"{p}\"\nmodule = \"{m}\"\n");
            assert!(Allowlist::parse(&t).is_err(), "{t}");
        }
        assert!(Allowlist::parse("[[allow]]\nprocess = \"a*.exe\"\nmodule = \"*.dll\"\n").is_ok());
    }
}
