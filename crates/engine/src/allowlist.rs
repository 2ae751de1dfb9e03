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
    /// The module of `U` by PE identity: its image name, `TimeDateStamp`
    /// and `SizeOfImage` (all three logged in Image events), so a file that
    /// merely takes the name does not match.
    #[serde(default)]
    pub identity: Option<ModuleIdentity>,
    /// The caller `C`'s module by PE identity.
    #[serde(default)]
    pub caller_identity: Option<ModuleIdentity>,
    /// SHA-256 of `U`'s module file (lower-case hex), known when the module
    /// was matched to a file of `--images`; an entry with it matches
    /// nothing otherwise.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Authenticode signer of `U`'s module file (the signing certificate's
    /// subject common name, e.g. `Microsoft Corporation`): `live` only,
    /// and only when the file's signature verifies to a trusted root.
    /// Offline there is no file to verify: such an entry never matches
    /// (`analyze` says so).
    #[serde(default)]
    pub signer: Option<String>,
    #[serde(default)]
    pub verdict: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub comment: Option<String>,
}

/// A module's PE identity in an entry. Numbers as integers or `"0x..."`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ModuleIdentity {
    pub name: String,
    pub time_date_stamp: Number,
    pub size_of_image: Number,
}

/// An integer written as a TOML integer or a `"0x..."` string.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Number {
    Int(u64),
    Text(String),
}

impl Number {
    fn value(&self) -> Option<u64> {
        match self {
            Number::Int(v) => Some(*v),
            Number::Text(t) => {
                let t = t.trim();
                match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
                    Some(h) => u64::from_str_radix(h, 16).ok(),
                    None => t.parse().ok(),
                }
            }
        }
    }
}

/// A module's PE identity in an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity<'a> {
    pub name: &'a str,
    pub time_date_stamp: u32,
    pub size_of_image: u64,
}

impl<'a> Identity<'a> {
    pub fn of(m: &'a crate::state::Module) -> Identity<'a> {
        Identity {
            name: &m.name,
            time_date_stamp: m.time_date_stamp,
            size_of_image: m.size,
        }
    }
}

/// A parsed [`ModuleIdentity`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct IdentityKey {
    name: String,
    time_date_stamp: u32,
    size_of_image: u64,
}

impl IdentityKey {
    fn parse(m: &ModuleIdentity) -> Option<IdentityKey> {
        Some(IdentityKey {
            name: m.name.clone(),
            time_date_stamp: u32::try_from(m.time_date_stamp.value()?).ok()?,
            size_of_image: m.size_of_image.value()?,
        })
    }

    fn matches(&self, i: Option<Identity<'_>>) -> bool {
        i.is_some_and(|i| {
            i.name.eq_ignore_ascii_case(&self.name)
                && i.time_date_stamp == self.time_date_stamp
                && i.size_of_image == self.size_of_image
        })
    }
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
    /// PE identities of `U`'s and `C`'s modules.
    pub identity: Option<Identity<'a>>,
    pub caller_identity: Option<Identity<'a>>,
    /// SHA-256 (hex) of `U`'s module file, when known.
    pub sha256: Option<&'a str>,
    /// The trusted Authenticode signer of `U`'s module file (`live`).
    pub signer: Option<&'a str>,
    pub verdict: Verdict,
    pub reason: Option<Reason>,
}

/// Parsed allowlist with a suppression counter per entry.
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    pub entries: Vec<AllowEntry>,
    call_sites: Vec<Option<(String, u64)>>,
    identities: Vec<(Option<IdentityKey>, Option<IdentityKey>)>,
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
        let mut identities = Vec::new();
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
            if !names(&e.module)
                && e.call_site.is_none()
                && !names(&e.caller_module)
                && e.identity.is_none()
                && e.caller_identity.is_none()
                && e.sha256.is_none()
                && !names(&e.signer)
            {
                return Err(format!(
                    "entry {n}: give an `identity`, `sha256`, `signer`, `call_site`, `module`, `caller_identity` or `caller_module` that names something (an entry may not silence a whole process)"
                ));
            }
            if let Some(h) = &e.sha256 {
                if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!("entry {n}: sha256 `{h}` is not 64 hex digits"));
                }
            }
            let id = |m: &Option<ModuleIdentity>, what: &str| {
                match m {
                None => Ok(None),
                Some(m) => IdentityKey::parse(m).map(Some).ok_or_else(|| {
                    format!(
                        "entry {n}: {what}: time_date_stamp must fit 32 bits and both numbers be integers or \"0x...\""
                    )
                }),
            }
            };
            identities.push((
                id(&e.identity, "identity")?,
                id(&e.caller_identity, "caller_identity")?,
            ));
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
            identities,
            hits,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Some entry names a file hash (worth hashing module files for).
    pub fn uses_sha256(&self) -> bool {
        self.entries.iter().any(|e| e.sha256.is_some())
    }

    /// Some entry names a signer (worth verifying module signatures for).
    pub fn uses_signer(&self) -> bool {
        self.entries.iter().any(|e| e.signer.is_some())
    }

    /// Entries that can never match in this run, 1-based, with the field
    /// that needs what is missing: `sha256` needs module files (`--images`
    /// offline, the files on disk in `live`), `signer` a file whose
    /// signature the host verifies (`live` with module files only).
    pub fn never_matching(&self, files: bool, signatures: bool) -> Vec<(usize, &'static str)> {
        let mut v = Vec::new();
        for (i, e) in self.entries.iter().enumerate() {
            if e.signer.is_some() && !signatures {
                v.push((i + 1, "signer"));
            } else if e.sha256.is_some() && !files {
                v.push((i + 1, "sha256"));
            }
        }
        v
    }

    /// [`Allowlist::never_matching`] as one warning line, if any.
    pub fn never_matching_warning(
        &self,
        files: bool,
        signatures: bool,
        why: &str,
    ) -> Option<String> {
        let n = self.never_matching(files, signatures);
        if n.is_empty() {
            return None;
        }
        let list: Vec<String> = n.iter().map(|(i, f)| format!("{i} ({f})")).collect();
        Some(format!(
            "allowlist entries that can never match here: {}; {why}",
            list.join(", ")
        ))
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
            if let Some((id, caller)) = self.identities.get(i) {
                if id.as_ref().is_some_and(|k| !k.matches(a.identity))
                    || caller
                        .as_ref()
                        .is_some_and(|k| !k.matches(a.caller_identity))
                {
                    continue;
                }
            }
            if let Some(h) = &e.sha256 {
                if !a.sha256.is_some_and(|x| x.eq_ignore_ascii_case(h)) {
                    continue;
                }
            }
            if let Some(s) = &e.signer {
                if a.signer.is_none_or(|x| x != s.trim()) {
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
            identity: None,
            caller_identity: None,
            sha256: None,
            signer: None,
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

    /// An identity entry matches the module by name, timestamp and size,
    /// not by name alone; a hash entry only when the hash is known.
    #[test]
    fn identity_and_hash_entries() {
        let mut a = Allowlist::parse(
            r#"
[[allow]]
process = "game.exe"
identity = { name = "AntiCheat.dll", time_date_stamp = "0x5E4B9C1F", size_of_image = 1146880 }
reason = "not_call_preceded"

[[allow]]
process = "game.exe"
sha256 = "d25ff1e6c6460a7f9de39198d182058c1712726008d187e1953b83abe977e4a0"
"#,
        )
        .unwrap();
        let good = Identity {
            name: "anticheat.dll",
            time_date_stamp: 0x5E4B_9C1F,
            size_of_image: 0x11_8000,
        };
        let mut f = AlertFacts {
            process: "game.exe",
            module: Some("anticheat.dll"),
            offset: 0x10,
            caller_module: None,
            identity: Some(good),
            caller_identity: None,
            sha256: None,
            signer: None,
            verdict: Verdict::Indirect,
            reason: Some(Reason::NotCallPreceded),
        };
        assert_eq!(a.check(&f), Some(0));
        // Same name, another build (or a file dropped under that name).
        f.identity = Some(Identity {
            time_date_stamp: 0x5E4B_9C20,
            ..good
        });
        assert_eq!(a.check(&f), None);
        f.identity = Some(Identity {
            size_of_image: 0x11_9000,
            ..good
        });
        assert_eq!(a.check(&f), None);
        f.identity = None;
        assert_eq!(a.check(&f), None);
        f.sha256 = Some("D25FF1E6C6460A7F9DE39198D182058C1712726008D187E1953B83ABE977E4A0");
        assert_eq!(a.check(&f), Some(1));
        f.sha256 = Some("00");
        assert_eq!(a.check(&f), None);
        assert_eq!(a.hits, vec![1, 1]);
        assert!(Allowlist::parse("[[allow]]\nprocess = \"a\"\nsha256 = \"abc\"\n").is_err());
        assert!(Allowlist::parse(
            "[[allow]]\nprocess = \"a\"\nidentity = { name = \"x\", time_date_stamp = \"0x1ffffffff\", size_of_image = 1 }\n"
        )
        .is_err());
    }

    /// A signer entry matches only a trusted signer's name (the engine
    /// gives one only for a verified signature, `live`); offline it is
    /// reported as never matching, never silently dropped.
    #[test]
    fn signer_entries() {
        let mut a = Allowlist::parse(
            r#"
[[allow]]
process = "game.exe"
signer = "Example Anti-Cheat GmbH"
reason = "not_call_preceded"

[[allow]]
process = "game.exe"
sha256 = "d25ff1e6c6460a7f9de39198d182058c1712726008d187e1953b83abe977e4a0"

[[allow]]
process = "game.exe"
module = "x.dll"
"#,
        )
        .unwrap();
        assert!(a.uses_signer());
        let mut f = AlertFacts {
            process: "game.exe",
            module: Some("anticheat.dll"),
            offset: 0x10,
            caller_module: None,
            identity: None,
            caller_identity: None,
            sha256: None,
            signer: None,
            verdict: Verdict::Indirect,
            reason: Some(Reason::NotCallPreceded),
        };
        assert_eq!(a.check(&f), None);
        f.signer = Some("Example Anti-Cheat GmbH");
        assert_eq!(a.check(&f), Some(0));
        // Exact (a prefix or another case is another subject).
        f.signer = Some("Example Anti-Cheat");
        assert_eq!(a.check(&f), None);
        f.signer = Some("example anti-cheat gmbh");
        assert_eq!(a.check(&f), None);
        assert_eq!(a.never_matching(true, true), vec![]);
        assert_eq!(a.never_matching(true, false), vec![(1, "signer")]);
        assert_eq!(
            a.never_matching(false, false),
            vec![(1, "signer"), (2, "sha256")]
        );
        let w = a.never_matching_warning(true, false, "offline").unwrap();
        assert!(w.contains("1 (signer)"), "{w}");
        // A signer alone names something; an empty or wildcard one does not.
        assert!(Allowlist::parse("[[allow]]\nprocess = \"a\"\nsigner = \"B\"\n").is_ok());
        assert!(Allowlist::parse("[[allow]]\nprocess = \"a\"\nsigner = \"*\"\n").is_err());
        assert!(Allowlist::parse("[[allow]]\nprocess = \"a\"\nsigner = \"\"\n").is_err());
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
