//! The running sessions, shared by every process that loads the harness: a
//! directory with one file per session. `StartTraceW` refuses a name or a
//! GUID already taken (`ERROR_ALREADY_EXISTS`: "a session with the same name
//! or GUID is already running", [StartTraceW](https://learn.microsoft.com/windows/win32/api/evntrace/nf-evntrace-starttracew));
//! session names are case-insensitive. A zero `Wnode.Guid` gets a generated
//! GUID. `ControlTraceW(STOP)` from any process removes the file, which is
//! how a consumer in another process sees its session stopped.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use sentry_raw::Guid;

use crate::props::{StartProps, ERROR_ALREADY_EXISTS, ERROR_WMI_INSTANCE_NOT_FOUND};

/// One running session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub name: String,
    pub guid: Guid,
    /// The `TRACEHANDLE` `StartTraceW` returned (above 32 bits).
    pub handle: u64,
    pub props: StartProps,
    /// `TraceSetInformation(TraceStackTracingInfo)`: (class GUID, type).
    pub stacks: Vec<(Guid, u8)>,
    /// `TraceSetInformation(TraceSystemTraceEnableFlagsInfo)`, first mask.
    pub group_mask: Option<u32>,
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

fn guid_hex(g: &Guid) -> String {
    hex(&g.to_le_bytes())
}

fn guid_unhex(s: &str) -> Option<Guid> {
    Guid::read(&unhex(s)?)
}

impl Session {
    fn encode(&self) -> String {
        let p = &self.props;
        let stacks: Vec<String> = self
            .stacks
            .iter()
            .map(|(g, t)| format!("{}:{t}", guid_hex(g)))
            .collect();
        format!(
            "name={}\nguid={}\nhandle={}\nclient_context={}\nbuffer_kb={}\nminimum_buffers={}\n\
             maximum_buffers={}\nlog_file_mode={}\nflush_timer={}\nenable_flags={}\nlog_file={}\n\
             stacks={}\ngroup_mask={}\n",
            hex(self.name.as_bytes()),
            guid_hex(&self.guid),
            self.handle,
            p.client_context,
            p.buffer_kb,
            p.minimum_buffers,
            p.maximum_buffers,
            p.log_file_mode,
            p.flush_timer,
            p.enable_flags,
            p.log_file
                .as_deref()
                .map(|f| hex(f.as_bytes()))
                .unwrap_or_default(),
            stacks.join(";"),
            self.group_mask.map(|m| m.to_string()).unwrap_or_default(),
        )
    }

    fn decode(text: &str) -> Option<Session> {
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
        };
        let num = |k: &str| get(k)?.parse::<u64>().ok();
        let string = |k: &str| String::from_utf8(unhex(get(k)?)?).ok();
        let log_file = string("log_file").filter(|f| !f.is_empty());
        let stacks = get("stacks")?
            .split(';')
            .filter(|s| !s.is_empty())
            .map(|s| {
                let (g, t) = s.split_once(':')?;
                Some((guid_unhex(g)?, t.parse().ok()?))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Session {
            name: string("name")?,
            guid: guid_unhex(get("guid")?)?,
            handle: num("handle")?,
            props: StartProps {
                guid: guid_unhex(get("guid")?)?,
                client_context: num("client_context")? as u32,
                buffer_kb: num("buffer_kb")? as u32,
                minimum_buffers: num("minimum_buffers")? as u32,
                maximum_buffers: num("maximum_buffers")? as u32,
                log_file_mode: num("log_file_mode")? as u32,
                flush_timer: num("flush_timer")? as u32,
                enable_flags: num("enable_flags")? as u32,
                log_file,
            },
            stacks,
            group_mask: get("group_mask").and_then(|m| m.parse().ok()),
        })
    }
}

/// The table.
pub struct Sessions {
    dir: PathBuf,
}

impl Sessions {
    pub fn new(root: &Path) -> Sessions {
        let dir = root.join("sessions");
        let _ = fs::create_dir_all(&dir);
        Sessions { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir
            .join(format!("{:016x}.session", fnv(&name.to_lowercase())))
    }

    /// Every running session.
    pub fn all(&self) -> Vec<Session> {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        rd.filter_map(|e| fs::read_to_string(e.ok()?.path()).ok())
            .filter_map(|t| Session::decode(&t))
            .collect()
    }

    pub fn find(&self, name: &str) -> Option<Session> {
        let s = Session::decode(&fs::read_to_string(self.path(name)).ok()?)?;
        s.name.eq_ignore_ascii_case(name).then_some(s)
    }

    pub fn by_handle(&self, handle: u64) -> Option<Session> {
        self.all().into_iter().find(|s| s.handle == handle)
    }

    pub fn exists(&self, name: &str) -> bool {
        self.path(name).is_file()
    }

    /// Registers a new session; `seq` makes generated GUIDs and handles
    /// differ between sessions of one process.
    pub fn start(&self, name: &str, props: StartProps, seq: u64) -> Result<Session, u32> {
        let zero = props.guid == Guid::default();
        if !zero && self.all().iter().any(|s| s.guid == props.guid) {
            return Err(ERROR_ALREADY_EXISTS);
        }
        let h = fnv(&format!(
            "{}/{}/{seq}",
            name.to_lowercase(),
            std::process::id()
        ));
        let guid = if zero {
            Guid::from_u128((u128::from(h) << 64) | u128::from(!h))
        } else {
            props.guid
        };
        // Above 32 bits, and never INVALID_PROCESSTRACE_HANDLE.
        let handle = 0x0000_5e00_0000_0000 | (h & 0x0000_00ff_ffff_fff0);
        let s = Session {
            name: name.to_string(),
            guid,
            handle,
            props: StartProps { guid, ..props },
            stacks: Vec::new(),
            group_mask: None,
        };
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(self.path(name))
            .map_err(|_| ERROR_ALREADY_EXISTS)?;
        f.write_all(s.encode().as_bytes())
            .map_err(|_| ERROR_ALREADY_EXISTS)?;
        Ok(s)
    }

    /// Rewrites a session's record (after `TraceSetInformation`).
    pub fn update(&self, s: &Session) {
        let _ = fs::write(self.path(&s.name), s.encode());
    }

    /// Stops (removes) a session.
    pub fn stop(&self, name: &str) -> Result<Session, u32> {
        let s = self.find(name).ok_or(ERROR_WMI_INSTANCE_NOT_FOUND)?;
        fs::remove_file(self.path(name)).map_err(|_| ERROR_WMI_INSTANCE_NOT_FOUND)?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(guid: Guid) -> StartProps {
        StartProps {
            guid,
            client_context: 1,
            buffer_kb: 256,
            minimum_buffers: 16,
            maximum_buffers: 80,
            log_file_mode: 0x110,
            flush_timer: 250,
            enable_flags: 0x87,
            log_file: Some(r"C:\t.etl".into()),
        }
    }

    #[test]
    fn names_and_guids_are_unique_and_stop_removes() {
        let dir = std::env::temp_dir().join(format!("etw-replay-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let t = Sessions::new(&dir);
        let g1 = Guid::from_u128(1);
        let a = t.start("Live", props(g1), 0).unwrap();
        assert!(a.handle > u64::from(u32::MAX));
        assert_eq!(t.find("live").unwrap(), a, "names are case-insensitive");
        // Same name (any case), or same GUID under another name: refused.
        assert_eq!(
            t.start("LIVE", props(Guid::from_u128(2)), 1),
            Err(ERROR_ALREADY_EXISTS)
        );
        assert_eq!(t.start("other", props(g1), 2), Err(ERROR_ALREADY_EXISTS));
        // Zero GUIDs are generated, unique.
        let b = t.start("b", props(Guid::default()), 3).unwrap();
        let c = t.start("c", props(Guid::default()), 4).unwrap();
        assert_ne!(b.guid, Guid::default());
        assert_ne!(b.guid, c.guid);
        assert_eq!(t.by_handle(c.handle).unwrap().name, "c");
        let mut c2 = c.clone();
        c2.stacks = vec![(g1, 51)];
        c2.group_mask = Some(0x87);
        t.update(&c2);
        assert_eq!(t.find("c").unwrap(), c2);
        assert_eq!(t.stop("B").unwrap().name, "b");
        assert_eq!(t.stop("b"), Err(ERROR_WMI_INSTANCE_NOT_FOUND));
        assert_eq!(t.all().len(), 2);
        let _ = fs::remove_dir_all(&dir);
    }
}
