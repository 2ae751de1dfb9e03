//! The events, one template per id and version, and their decoder.
//!
//! Layouts (`inType`s from the manifests named in the crate documentation;
//! all fields little-endian, packed, in this order):
//!
//! | id | ver | fields |
//! |---|---|---|
//! | 1 | 0 | NotifyRoutineAddress (Pointer), ReturnCode (UInt32) |
//! | 2 | 0 | TargetProcessId (UInt32), ReturnCode (UInt32) |
//! | 2 | 1 | as v0, TargetProcessStartKey (UInt64), TargetProcessCreationTime (FILETIME) |
//! | 3 | 0 | LinkSourceName, LinkTargetName (UnicodeString), DesiredAccess (UInt32), ReturnCode (UInt32) |
//! | 4 | 0 | ReturnCode (UInt32) |
//! | 5 | 0 | TargetProcessId (UInt32), DesiredAccess (UInt32), ReturnCode (UInt32) |
//! | 6 | 0 | TargetProcessId, TargetThreatId (sic), DesiredAccess, ReturnCode (UInt32 each) |
//! | 7, 8 | 0 | DriverName (UnicodeString), ReturnCode (UInt32) |
//!
//! A `Pointer` is as wide as the event's pointer size (the header kind:
//! `EVENT_HEADER32` or `EVENT_HEADER64`). A version newer than the ones
//! above decodes with the newest known layout of its id (versions only
//! append fields); bytes after the last known field are ignored.

use sentry_raw::{EventId, RawEvent};

use crate::access::{AccessMask, ObjectKind, ReturnCode};
use crate::PROVIDER;

/// The eight events of the provider, by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AuditApi {
    /// 1, `KERNEL_AUDIT_API_PSSETLOADIMAGENOTIFYROUTINE`.
    LoadImageNotifyRoutine = 1,
    /// 2, `KERNEL_AUDIT_API_TERMINATEPROCESS` (another process only:
    /// written by `PspLogAuditTerminateRemoteProcessEvent`).
    TerminateProcess = 2,
    /// 3, `KERNEL_AUDIT_API_CREATESYMBOLICLINKOBJECT`.
    CreateSymbolicLinkObject = 3,
    /// 4, `KERNEL_AUDIT_API_SETCONTEXTTHREAD`.
    SetContextThread = 4,
    /// 5, `KERNEL_AUDIT_API_OPENPROCESS`.
    OpenProcess = 5,
    /// 6, `KERNEL_AUDIT_API_OPENTHREAD`.
    OpenThread = 6,
    /// 7, `KERNEL_AUDIT_API_IOREGISTERLASTCHANCESHUTDOWNNOTIFICATION`.
    LastChanceShutdownNotification = 7,
    /// 8, `KERNEL_AUDIT_API_IOREGISTERSHUTDOWNNOTIFICATION`.
    ShutdownNotification = 8,
}

impl AuditApi {
    pub const ALL: [AuditApi; 8] = [
        AuditApi::LoadImageNotifyRoutine,
        AuditApi::TerminateProcess,
        AuditApi::CreateSymbolicLinkObject,
        AuditApi::SetContextThread,
        AuditApi::OpenProcess,
        AuditApi::OpenThread,
        AuditApi::LastChanceShutdownNotification,
        AuditApi::ShutdownNotification,
    ];

    pub fn from_id(id: u16) -> Option<AuditApi> {
        AuditApi::ALL.into_iter().find(|a| a.id() == id)
    }

    /// The event id.
    pub fn id(self) -> u16 {
        self as u16
    }

    /// The newest event version whose layout is known.
    pub fn latest_version(self) -> u8 {
        match self {
            AuditApi::TerminateProcess => 1,
            _ => 0,
        }
    }

    /// The API the event is named after (alerts print it).
    pub fn name(self) -> &'static str {
        match self {
            AuditApi::LoadImageNotifyRoutine => "PsSetLoadImageNotifyRoutine",
            AuditApi::TerminateProcess => "NtTerminateProcess",
            AuditApi::CreateSymbolicLinkObject => "NtCreateSymbolicLinkObject",
            AuditApi::SetContextThread => "NtSetContextThread",
            AuditApi::OpenProcess => "NtOpenProcess",
            AuditApi::OpenThread => "NtOpenThread",
            AuditApi::LastChanceShutdownNotification => "IoRegisterLastChanceShutdownNotification",
            AuditApi::ShutdownNotification => "IoRegisterShutdownNotification",
        }
    }

    /// The system calls (ntoskrnl service routines) that write this event,
    /// per `jdu2600/API-To-ETW` (`ntoskrnl.exe.csv`: NtOpenProcess and
    /// NtAlpcOpenSenderProcess reach `PsOpenProcess`, NtOpenThread and
    /// NtAlpcOpenSenderThread `PsOpenThread`). Empty for the events only
    /// kernel-mode callers (drivers) cause: 1, 7 and 8. Event 3 is also
    /// written for kernel callers of `IoCreateSymbolicLink`, whose stacks
    /// have no user part.
    pub fn system_calls(self) -> &'static [&'static str] {
        match self {
            AuditApi::TerminateProcess => &["NtTerminateProcess"],
            AuditApi::CreateSymbolicLinkObject => &["NtCreateSymbolicLinkObject"],
            AuditApi::SetContextThread => &["NtSetContextThread"],
            AuditApi::OpenProcess => &["NtOpenProcess", "NtAlpcOpenSenderProcess"],
            AuditApi::OpenThread => &["NtOpenThread", "NtAlpcOpenSenderThread"],
            AuditApi::LoadImageNotifyRoutine
            | AuditApi::LastChanceShutdownNotification
            | AuditApi::ShutdownNotification => &[],
        }
    }

    /// The object `DesiredAccess` applies to.
    pub fn object(self) -> Option<ObjectKind> {
        match self {
            AuditApi::OpenProcess => Some(ObjectKind::Process),
            AuditApi::OpenThread => Some(ObjectKind::Thread),
            AuditApi::CreateSymbolicLinkObject => Some(ObjectKind::SymbolicLink),
            _ => None,
        }
    }
}

/// A `win:UnicodeString` field: UTF-16LE code units, without the NUL.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Utf16<'a>(pub &'a [u8]);

impl Utf16<'_> {
    /// Decodes the string; unpaired surrogates become U+FFFD.
    pub fn to_string_lossy(&self) -> String {
        let units = self
            .0
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]));
        char::decode_utf16(units)
            .map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect()
    }
}

impl std::fmt::Debug for Utf16<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.to_string_lossy())
    }
}

/// One decoded event. Fields the event's template does not have are `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditEvent<'a> {
    pub api: AuditApi,
    /// The version from the header (may be newer than the layout used).
    pub version: u8,
    pub return_code: ReturnCode,
    /// Events 2, 5, 6.
    pub target_pid: Option<u32>,
    /// Event 6 (`TargetThreatId` in the manifest).
    pub target_tid: Option<u32>,
    /// Events 3, 5, 6.
    pub desired_access: Option<AccessMask>,
    /// Event 1.
    pub notify_routine: Option<u64>,
    /// Event 2 version 1.
    pub target_start_key: Option<u64>,
    /// Event 2 version 1: FILETIME.
    pub target_creation_time: Option<i64>,
    /// Event 3.
    pub link_source: Option<Utf16<'a>>,
    /// Event 3.
    pub link_target: Option<Utf16<'a>>,
    /// Events 7 and 8.
    pub driver_name: Option<Utf16<'a>>,
}

impl<'a> AuditEvent<'a> {
    /// An event with only the fields every template has.
    pub fn new(api: AuditApi, return_code: u32) -> AuditEvent<'a> {
        AuditEvent {
            api,
            version: 0,
            return_code: ReturnCode(return_code),
            target_pid: None,
            target_tid: None,
            desired_access: None,
            notify_routine: None,
            target_start_key: None,
            target_creation_time: None,
            link_source: None,
            link_target: None,
            driver_name: None,
        }
    }

    pub fn api_name(&self) -> &'static str {
        self.api.name()
    }

    /// The target process and thread, where the event names them.
    pub fn target(&self) -> Option<(u32, Option<u32>)> {
        self.target_pid.map(|p| (p, self.target_tid))
    }

    /// Appends the payload as the kernel lays it out for this event's id
    /// and version (the newest known layout for newer versions), with
    /// pointers `pointer_size` (4 or 8) wide. Missing fields are written
    /// as zero (empty strings). The inverse of [`decode`]; `synth` writes
    /// scenario traces with it.
    pub fn encode(&self, pointer_size: u8, out: &mut Vec<u8>) {
        let u32s = |out: &mut Vec<u8>, v: Option<u32>| {
            out.extend_from_slice(&v.unwrap_or(0).to_le_bytes())
        };
        let wstr = |out: &mut Vec<u8>, s: Option<Utf16<'_>>| {
            out.extend_from_slice(s.map_or(&[][..], |s| s.0));
            out.extend_from_slice(&[0, 0]);
        };
        let access = self.desired_access.map(|a| a.0);
        let rc = Some(self.return_code.0);
        match self.api {
            AuditApi::LoadImageNotifyRoutine => {
                let a = self.notify_routine.unwrap_or(0);
                if pointer_size == 4 {
                    out.extend_from_slice(&(a as u32).to_le_bytes());
                } else {
                    out.extend_from_slice(&a.to_le_bytes());
                }
                u32s(out, rc);
            }
            AuditApi::TerminateProcess => {
                u32s(out, self.target_pid);
                u32s(out, rc);
                if self.version >= 1 {
                    out.extend_from_slice(&self.target_start_key.unwrap_or(0).to_le_bytes());
                    out.extend_from_slice(&self.target_creation_time.unwrap_or(0).to_le_bytes());
                }
            }
            AuditApi::CreateSymbolicLinkObject => {
                wstr(out, self.link_source);
                wstr(out, self.link_target);
                u32s(out, access);
                u32s(out, rc);
            }
            AuditApi::SetContextThread => u32s(out, rc),
            AuditApi::OpenProcess => {
                u32s(out, self.target_pid);
                u32s(out, access);
                u32s(out, rc);
            }
            AuditApi::OpenThread => {
                u32s(out, self.target_pid);
                u32s(out, self.target_tid);
                u32s(out, access);
                u32s(out, rc);
            }
            AuditApi::LastChanceShutdownNotification | AuditApi::ShutdownNotification => {
                wstr(out, self.driver_name);
                u32s(out, rc);
            }
        }
    }
}

/// An Audit-API event whose payload does not fit its template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// File offset of the record (0 for live events).
    pub offset: u64,
    pub id: u16,
    pub version: u8,
    pub reason: String,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Kernel-Audit-API-Calls event {} v{} at offset {:#x}: {}",
            self.id, self.version, self.offset, self.reason
        )
    }
}

impl std::error::Error for DecodeError {}

/// Decodes an event of the provider.
///
/// `Ok(None)`: not this provider, or an id the manifests do not define.
/// `Err`: the payload is shorter than the template of its version (or a
/// string has no terminator, or the pointer size is neither 4 nor 8).
pub fn decode<'a>(ev: &RawEvent<'a>) -> Result<Option<AuditEvent<'a>>, DecodeError> {
    let EventId::Manifest {
        provider,
        id,
        version,
        ..
    } = ev.id
    else {
        return Ok(None);
    };
    if provider != PROVIDER {
        return Ok(None);
    }
    let Some(api) = AuditApi::from_id(id) else {
        return Ok(None);
    };
    let err = |reason: String| DecodeError {
        offset: ev.offset,
        id,
        version,
        reason,
    };
    if ev.pointer_size != 4 && ev.pointer_size != 8 {
        return Err(err(format!(
            "pointer size {} is neither 4 nor 8",
            ev.pointer_size
        )));
    }
    decode_payload(api, version, ev.pointer_size, ev.payload)
        .map(Some)
        .map_err(err)
}

/// [`decode`] on a bare payload.
fn decode_payload(
    api: AuditApi,
    version: u8,
    pointer_size: u8,
    payload: &[u8],
) -> Result<AuditEvent<'_>, String> {
    let mut r = Fields { b: payload, pos: 0 };
    let mut e = AuditEvent::new(api, 0);
    e.version = version;
    match api {
        AuditApi::LoadImageNotifyRoutine => {
            e.notify_routine = Some(if pointer_size == 4 {
                u64::from(r.u32("NotifyRoutineAddress")?)
            } else {
                r.u64("NotifyRoutineAddress")?
            });
            e.return_code = ReturnCode(r.u32("ReturnCode")?);
        }
        AuditApi::TerminateProcess => {
            e.target_pid = Some(r.u32("TargetProcessId")?);
            e.return_code = ReturnCode(r.u32("ReturnCode")?);
            if version >= 1 {
                e.target_start_key = Some(r.u64("TargetProcessStartKey")?);
                e.target_creation_time = Some(r.u64("TargetProcessCreationTime")? as i64);
            }
        }
        AuditApi::CreateSymbolicLinkObject => {
            e.link_source = Some(r.wstr("LinkSourceName")?);
            e.link_target = Some(r.wstr("LinkTargetName")?);
            e.desired_access = Some(AccessMask(r.u32("DesiredAccess")?));
            e.return_code = ReturnCode(r.u32("ReturnCode")?);
        }
        AuditApi::SetContextThread => {
            e.return_code = ReturnCode(r.u32("ReturnCode")?);
        }
        AuditApi::OpenProcess => {
            e.target_pid = Some(r.u32("TargetProcessId")?);
            e.desired_access = Some(AccessMask(r.u32("DesiredAccess")?));
            e.return_code = ReturnCode(r.u32("ReturnCode")?);
        }
        AuditApi::OpenThread => {
            e.target_pid = Some(r.u32("TargetProcessId")?);
            e.target_tid = Some(r.u32("TargetThreatId")?);
            e.desired_access = Some(AccessMask(r.u32("DesiredAccess")?));
            e.return_code = ReturnCode(r.u32("ReturnCode")?);
        }
        AuditApi::LastChanceShutdownNotification | AuditApi::ShutdownNotification => {
            e.driver_name = Some(r.wstr("DriverName")?);
            e.return_code = ReturnCode(r.u32("ReturnCode")?);
        }
    }
    Ok(e)
}

/// A bounds-checked cursor whose errors name the field.
struct Fields<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], String> {
        match self.pos.checked_add(n).filter(|&e| e <= self.b.len()) {
            Some(end) => {
                let s = &self.b[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(format!(
                "payload is {} bytes; {field} needs {n} bytes at offset {}",
                self.b.len(),
                self.pos
            )),
        }
    }

    fn u32(&mut self, field: &str) -> Result<u32, String> {
        let s = self.take(4, field)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }

    fn u64(&mut self, field: &str) -> Result<u64, String> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8, field)?);
        Ok(u64::from_le_bytes(a))
    }

    /// A NUL-terminated UTF-16LE string, bounded by the payload.
    fn wstr(&mut self, field: &str) -> Result<Utf16<'a>, String> {
        let rest = &self.b[self.pos..];
        let Some(units) = rest.chunks_exact(2).position(|c| c == [0, 0]) else {
            return Err(format!(
                "{field} at offset {} has no NUL terminator before the payload ends ({} bytes)",
                self.pos,
                self.b.len()
            ));
        };
        let s = &rest[..2 * units];
        self.pos += 2 * units + 2;
        Ok(Utf16(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_name_their_system_calls() {
        for a in AuditApi::ALL {
            assert_eq!(AuditApi::from_id(a.id()), Some(a));
        }
        assert_eq!(AuditApi::from_id(0), None);
        assert_eq!(AuditApi::from_id(9), None);
        assert_eq!(AuditApi::OpenProcess.id(), 5);
        assert!(AuditApi::OpenThread
            .system_calls()
            .contains(&"NtOpenThread"));
        assert!(AuditApi::ShutdownNotification.system_calls().is_empty());
    }

    #[test]
    fn a_string_without_terminator_is_an_error_naming_the_field() {
        let b = [b'a', 0, b'b', 0];
        let e = decode_payload(AuditApi::ShutdownNotification, 0, 8, &b).unwrap_err();
        assert!(e.contains("DriverName"), "{e}");
        // An odd trailing byte is not half a terminator.
        let b = [b'a', 0, 0];
        assert!(decode_payload(AuditApi::ShutdownNotification, 0, 8, &b).is_err());
    }
}
