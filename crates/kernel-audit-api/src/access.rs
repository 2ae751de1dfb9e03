//! `DesiredAccess` masks and `ReturnCode` NTSTATUS values, named.
//!
//! Rights from winnt.h as documented in
//! [Process Security and Access Rights](https://learn.microsoft.com/windows/win32/procthread/process-security-and-access-rights),
//! [Thread Security and Access Rights](https://learn.microsoft.com/windows/win32/procthread/thread-security-and-access-rights)
//! and [Standard Access Rights](https://learn.microsoft.com/windows/win32/secauthz/standard-access-rights)
//! / [ACCESS_MASK](https://learn.microsoft.com/windows/win32/secauthz/access-mask).

/// What a `DesiredAccess` applies to (it names the object-specific bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    Process,
    Thread,
    SymbolicLink,
}

/// An `ACCESS_MASK`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct AccessMask(pub u32);

const PROCESS_RIGHTS: [(u32, &str); 14] = [
    (0x0001, "PROCESS_TERMINATE"),
    (0x0002, "PROCESS_CREATE_THREAD"),
    (0x0004, "PROCESS_SET_SESSIONID"),
    (0x0008, "PROCESS_VM_OPERATION"),
    (0x0010, "PROCESS_VM_READ"),
    (0x0020, "PROCESS_VM_WRITE"),
    (0x0040, "PROCESS_DUP_HANDLE"),
    (0x0080, "PROCESS_CREATE_PROCESS"),
    (0x0100, "PROCESS_SET_QUOTA"),
    (0x0200, "PROCESS_SET_INFORMATION"),
    (0x0400, "PROCESS_QUERY_INFORMATION"),
    (0x0800, "PROCESS_SUSPEND_RESUME"),
    (0x1000, "PROCESS_QUERY_LIMITED_INFORMATION"),
    (0x2000, "PROCESS_SET_LIMITED_INFORMATION"),
];

const THREAD_RIGHTS: [(u32, &str); 12] = [
    (0x0001, "THREAD_TERMINATE"),
    (0x0002, "THREAD_SUSPEND_RESUME"),
    (0x0008, "THREAD_GET_CONTEXT"),
    (0x0010, "THREAD_SET_CONTEXT"),
    (0x0020, "THREAD_SET_INFORMATION"),
    (0x0040, "THREAD_QUERY_INFORMATION"),
    (0x0080, "THREAD_SET_THREAD_TOKEN"),
    (0x0100, "THREAD_IMPERSONATE"),
    (0x0200, "THREAD_DIRECT_IMPERSONATION"),
    (0x0400, "THREAD_SET_LIMITED_INFORMATION"),
    (0x0800, "THREAD_QUERY_LIMITED_INFORMATION"),
    (0x1000, "THREAD_RESUME"),
];

/// `SYMBOLIC_LINK_QUERY` (wdm.h).
const SYMLINK_RIGHTS: [(u32, &str); 1] = [(0x0001, "SYMBOLIC_LINK_QUERY")];

const STANDARD_RIGHTS: [(u32, &str); 10] = [
    (0x0001_0000, "DELETE"),
    (0x0002_0000, "READ_CONTROL"),
    (0x0004_0000, "WRITE_DAC"),
    (0x0008_0000, "WRITE_OWNER"),
    (0x0010_0000, "SYNCHRONIZE"),
    (0x0100_0000, "ACCESS_SYSTEM_SECURITY"),
    (0x0200_0000, "MAXIMUM_ALLOWED"),
    (0x1000_0000, "GENERIC_ALL"),
    (0x2000_0000, "GENERIC_EXECUTE"),
    (0x4000_0000, "GENERIC_WRITE"),
];

/// `GENERIC_READ`, kept apart: 0x80000000 does not fit the table's order.
const GENERIC_READ: u32 = 0x8000_0000;

/// `PROCESS_ALL_ACCESS` and `THREAD_ALL_ACCESS` since Windows Vista:
/// `STANDARD_RIGHTS_REQUIRED | SYNCHRONIZE | 0xFFFF`.
const ALL_ACCESS: u32 = 0x001F_FFFF;

impl AccessMask {
    /// Rights that read or change another process's memory or threads: a
    /// handle with any of them to lsass.exe is what credential dumping
    /// needs (`PROCESS_VM_READ`) or what injection needs.
    pub const PROCESS_SENSITIVE: u32 = 0x0001 | 0x0002 | 0x0008 | 0x0010 | 0x0020 | 0x0040;
    /// Thread rights that take over a thread (context, suspension, APCs).
    pub const THREAD_SENSITIVE: u32 = 0x0001 | 0x0002 | 0x0008 | 0x0010 | 0x0020;

    /// True when the mask asks for a right in `sensitive`, or for everything
    /// (`MAXIMUM_ALLOWED`, `GENERIC_ALL`, `GENERIC_WRITE`, `GENERIC_READ`).
    pub fn is_sensitive(self, object: ObjectKind) -> bool {
        let specific = match object {
            ObjectKind::Process => Self::PROCESS_SENSITIVE,
            ObjectKind::Thread => Self::THREAD_SENSITIVE,
            ObjectKind::SymbolicLink => 0,
        };
        self.0 & (specific | 0x0200_0000 | 0x1000_0000 | 0x4000_0000 | GENERIC_READ) != 0
    }

    /// The mask as `NAME|NAME|0x...` (winnt.h names, lowest bit first; bits
    /// without a name in hex at the end; `PROCESS_ALL_ACCESS` and
    /// `THREAD_ALL_ACCESS` for the full masks; `0` for none).
    pub fn names(self, object: ObjectKind) -> String {
        let m = self.0;
        match object {
            ObjectKind::Process if m == ALL_ACCESS => return "PROCESS_ALL_ACCESS".into(),
            ObjectKind::Thread if m == ALL_ACCESS => return "THREAD_ALL_ACCESS".into(),
            _ => {}
        }
        if m == 0 {
            return "0".into();
        }
        let specific: &[(u32, &str)] = match object {
            ObjectKind::Process => &PROCESS_RIGHTS,
            ObjectKind::Thread => &THREAD_RIGHTS,
            ObjectKind::SymbolicLink => &SYMLINK_RIGHTS,
        };
        let mut out = String::new();
        let mut left = m;
        for &(bit, name) in specific
            .iter()
            .chain(STANDARD_RIGHTS.iter())
            .chain([(GENERIC_READ, "GENERIC_READ")].iter())
        {
            if m & bit != 0 {
                if !out.is_empty() {
                    out.push('|');
                }
                out.push_str(name);
                left &= !bit;
            }
        }
        if left != 0 {
            if !out.is_empty() {
                out.push('|');
            }
            out.push_str(&format!("{left:#x}"));
        }
        out
    }
}

/// An NTSTATUS `ReturnCode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ReturnCode(pub u32);

impl ReturnCode {
    /// `NT_SUCCESS`: severity success or informational.
    pub fn is_success(self) -> bool {
        (self.0 as i32) >= 0
    }

    /// The `STATUS_` name of the codes these calls commonly return
    /// ([NTSTATUS values](https://learn.microsoft.com/openspecs/windows_protocols/ms-erref/596a1078-e883-4972-9bbc-49e60bebca55)).
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0x0000_0000 => "STATUS_SUCCESS",
            0xC000_0008 => "STATUS_INVALID_HANDLE",
            0xC000_000B => "STATUS_INVALID_CID",
            0xC000_000D => "STATUS_INVALID_PARAMETER",
            0xC000_0022 => "STATUS_ACCESS_DENIED",
            0xC000_0035 => "STATUS_OBJECT_NAME_COLLISION",
            0xC000_010A => "STATUS_PROCESS_IS_TERMINATING",
            0xC000_0712 => "STATUS_PROCESS_IS_PROTECTED",
            _ => return None,
        })
    }
}

impl std::fmt::Display for ReturnCode {
    /// `STATUS_ACCESS_DENIED (0xc0000022)`, or the hex value alone.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n} ({:#010x})", self.0),
            None => write!(f, "{:#010x}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_are_named_lowest_bit_first() {
        let p = ObjectKind::Process;
        assert_eq!(
            AccessMask(0x0410).names(p),
            "PROCESS_VM_READ|PROCESS_QUERY_INFORMATION"
        );
        assert_eq!(AccessMask(0x1F_FFFF).names(p), "PROCESS_ALL_ACCESS");
        assert_eq!(
            AccessMask(0x1F_FFFF).names(ObjectKind::Thread),
            "THREAD_ALL_ACCESS"
        );
        assert_eq!(AccessMask(0).names(p), "0");
        assert_eq!(
            AccessMask(0x0010_1000).names(p),
            "PROCESS_QUERY_LIMITED_INFORMATION|SYNCHRONIZE"
        );
        // Thread bit 0x4 has no name: kept as hex.
        assert_eq!(
            AccessMask(0x0000_0014).names(ObjectKind::Thread),
            "THREAD_SET_CONTEXT|0x4"
        );
        assert_eq!(
            AccessMask(0x8200_0000).names(p),
            "MAXIMUM_ALLOWED|GENERIC_READ"
        );
    }

    #[test]
    fn sensitivity_follows_the_rights() {
        let p = ObjectKind::Process;
        assert!(AccessMask(0x0010).is_sensitive(p));
        assert!(!AccessMask(0x1000).is_sensitive(p));
        assert!(!AccessMask(0x0010_1400).is_sensitive(p));
        assert!(AccessMask(0x0200_0000).is_sensitive(p));
        assert!(AccessMask(0x0010).is_sensitive(ObjectKind::Thread));
        assert!(!AccessMask(0x0800).is_sensitive(ObjectKind::Thread));
    }

    #[test]
    fn return_codes_name_common_statuses() {
        assert_eq!(ReturnCode(0).to_string(), "STATUS_SUCCESS (0x00000000)");
        assert_eq!(
            ReturnCode(0xC000_0022).to_string(),
            "STATUS_ACCESS_DENIED (0xc0000022)"
        );
        assert_eq!(ReturnCode(0xC000_9999).to_string(), "0xc0009999");
        assert!(ReturnCode(0).is_success());
        assert!(!ReturnCode(0xC000_0022).is_success());
    }
}
