//! Payload encoders for the NT Kernel Logger events syscall-sentry reads,
//! written from Microsoft's MSNT_SystemTrace MOF class pages (an
//! implementation independent of the decoders in `sentry-kernel`, so that
//! round trips between the two mean something).
//!
//! Every pointer-typed MOF field is `pointer_size` bytes; strings are
//! NUL-terminated (ANSI for `ImageFileName`, UTF-16LE otherwise).

/// Appends a pointer-sized value (truncated to 32 bits for 4-byte pointers).
pub fn put_ptr(out: &mut Vec<u8>, pointer_size: u8, v: u64) {
    if pointer_size == 4 {
        out.extend_from_slice(&(v as u32).to_le_bytes());
    } else {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends a NUL-terminated UTF-16LE string.
pub fn put_wstr(out: &mut Vec<u8>, s: &str) {
    for u in s.encode_utf16() {
        out.extend_from_slice(&u.to_le_bytes());
    }
    out.extend_from_slice(&[0, 0]);
}

/// Appends a NUL-terminated ANSI string (non-ASCII characters become `?`).
pub fn put_astr(out: &mut Vec<u8>, s: &str) {
    out.extend(s.chars().map(|c| if c.is_ascii() { c as u8 } else { b'?' }));
    out.push(0);
}

/// Binary SID from its string form (`S-1-5-21-...`); `None` if malformed.
/// Layout: revision, sub-authority count, 6-byte big-endian identifier
/// authority, then little-endian 32-bit sub-authorities
/// ([SID](https://learn.microsoft.com/windows/win32/api/winnt/ns-winnt-sid)).
pub fn sid_bytes(s: &str) -> Option<Vec<u8>> {
    let mut parts = s.strip_prefix("S-")?.split('-');
    let rev: u8 = parts.next()?.parse().ok()?;
    let auth: u64 = parts.next()?.parse().ok()?;
    let subs: Vec<u32> = parts.map(|p| p.parse().ok()).collect::<Option<_>>()?;
    if subs.len() > 15 || auth >= 1 << 48 {
        return None;
    }
    let mut b = vec![rev, subs.len() as u8];
    b.extend_from_slice(&auth.to_be_bytes()[2..]);
    for v in subs {
        b.extend_from_slice(&v.to_le_bytes());
    }
    Some(b)
}

/// [Process_TypeGroup1](https://learn.microsoft.com/windows/win32/etw/process-typegroup1)
/// (Start 1, End 2, DCStart 3, DCEnd 4, Defunct 39), versions 3 and 4.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessPayload {
    /// 3 (Windows 7) or 4 (Windows 8+: adds `Flags`, `PackageFullName`,
    /// `ApplicationId`).
    pub version: u8,
    pub unique_process_key: u64,
    pub process_id: u32,
    pub parent_id: u32,
    pub session_id: u32,
    pub exit_status: i32,
    pub directory_table_base: u64,
    pub flags: u32,
    /// String SID; empty writes the 4-byte "no SID" form.
    pub user_sid: String,
    /// The kernel address the `TOKEN_USER.User.Sid` pointer holds (any
    /// non-zero value: readers only skip it).
    pub sid_pointer: u64,
    /// The second pointer-sized word of `TOKEN_USER`: `Attributes` and
    /// alignment padding (real traces hold stale bytes in the padding).
    pub sid_attributes: u64,
    pub image_file_name: String,
    pub command_line: String,
    pub package_full_name: String,
    pub application_id: String,
}

impl ProcessPayload {
    pub fn encode(&self, pointer_size: u8, out: &mut Vec<u8>) {
        put_ptr(out, pointer_size, self.unique_process_key);
        put_u32(out, self.process_id);
        put_u32(out, self.parent_id);
        put_u32(out, self.session_id);
        put_u32(out, self.exit_status as u32);
        put_ptr(out, pointer_size, self.directory_table_base);
        if self.version >= 4 {
            put_u32(out, self.flags);
        }
        // UserSID: a TOKEN_USER (SID pointer + attributes, padded to pointer
        // alignment) followed by the SID itself.
        match sid_bytes(&self.user_sid) {
            Some(sid) => {
                put_ptr(out, pointer_size, self.sid_pointer.max(1));
                put_ptr(out, pointer_size, self.sid_attributes);
                out.extend_from_slice(&sid);
            }
            None => put_u32(out, 0),
        }
        put_astr(out, &self.image_file_name);
        put_wstr(out, &self.command_line);
        if self.version >= 4 {
            put_wstr(out, &self.package_full_name);
            put_wstr(out, &self.application_id);
        }
    }
}

/// [Thread_TypeGroup1](https://learn.microsoft.com/windows/win32/etw/thread-typegroup1)
/// version 3 (Start 1, End 2, DCStart 3, DCEnd 4).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ThreadPayload {
    pub process_id: u32,
    pub thread_id: u32,
    pub stack_base: u64,
    pub stack_limit: u64,
    pub user_stack_base: u64,
    pub user_stack_limit: u64,
    pub affinity: u64,
    pub win32_start_addr: u64,
    pub teb_base: u64,
    pub sub_process_tag: u32,
    pub base_priority: u8,
    pub page_priority: u8,
    pub io_priority: u8,
    pub thread_flags: u8,
}

impl ThreadPayload {
    pub fn encode(&self, pointer_size: u8, out: &mut Vec<u8>) {
        put_u32(out, self.process_id);
        put_u32(out, self.thread_id);
        for v in [
            self.stack_base,
            self.stack_limit,
            self.user_stack_base,
            self.user_stack_limit,
            self.affinity,
            self.win32_start_addr,
            self.teb_base,
        ] {
            put_ptr(out, pointer_size, v);
        }
        put_u32(out, self.sub_process_tag);
        out.extend_from_slice(&[
            self.base_priority,
            self.page_priority,
            self.io_priority,
            self.thread_flags,
        ]);
    }
}

/// [Image_Load](https://learn.microsoft.com/windows/win32/etw/image-load)
/// versions 2 (Windows 7/8 corpus traces) and 3 (Windows 10: same layout,
/// `Reserved0` holds the signature level and type): Load (hook 0x030A),
/// Unload 2, DCStart 3, DCEnd 4.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImagePayload {
    pub image_base: u64,
    pub image_size: u64,
    pub process_id: u32,
    pub image_checksum: u32,
    pub time_date_stamp: u32,
    /// `Reserved0` (Windows 10 stores signature level/type here).
    pub reserved0: u32,
    pub default_base: u64,
    pub file_name: String,
}

impl ImagePayload {
    pub fn encode(&self, pointer_size: u8, out: &mut Vec<u8>) {
        put_ptr(out, pointer_size, self.image_base);
        put_ptr(out, pointer_size, self.image_size);
        put_u32(out, self.process_id);
        put_u32(out, self.image_checksum);
        put_u32(out, self.time_date_stamp);
        put_u32(out, self.reserved0);
        put_ptr(out, pointer_size, self.default_base);
        for _ in 0..4 {
            put_u32(out, 0); // Reserved1..4
        }
        put_wstr(out, &self.file_name);
    }
}

/// [SysCallEnter](https://learn.microsoft.com/windows/win32/etw/syscallenter):
/// `SysCallAddress`, one pointer.
pub fn sys_call_enter(pointer_size: u8, sys_call_address: u64, out: &mut Vec<u8>) {
    put_ptr(out, pointer_size, sys_call_address);
}

/// [SysCallExit](https://learn.microsoft.com/windows/win32/etw/syscallexit):
/// `SysCallNtStatus`, a 32-bit NTSTATUS.
pub fn sys_call_exit(nt_status: u32, out: &mut Vec<u8>) {
    put_u32(out, nt_status);
}

/// [StackWalk_Event](https://learn.microsoft.com/windows/win32/etw/stackwalk-event)
/// (opcode 32): `EventTimeStamp`, `StackProcess`, `StackThread`, then
/// return addresses innermost first.
pub fn stack_walk(
    pointer_size: u8,
    event_timestamp: u64,
    process: u32,
    thread: u32,
    frames: &[u64],
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(&event_timestamp.to_le_bytes());
    put_u32(out, process);
    put_u32(out, thread);
    for &f in frames {
        put_ptr(out, pointer_size, f);
    }
}

/// Stack-cache reference (Windows 8+, opcodes 37 kernel / 38 user): the
/// event at `EventTimeStamp` has the frames stored under `StackKey`
/// (pointer-sized, as in the Windows 8 corpus: 24-byte payloads on x64).
pub fn stack_key_reference(
    pointer_size: u8,
    event_timestamp: u64,
    process: u32,
    thread: u32,
    stack_key: u64,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(&event_timestamp.to_le_bytes());
    put_u32(out, process);
    put_u32(out, thread);
    put_ptr(out, pointer_size, stack_key);
}

/// Stack-cache definition (opcodes 34 create, 35 delete, 36 rundown):
/// `StackKey` then the frames, innermost first.
pub fn stack_key_definition(pointer_size: u8, stack_key: u64, frames: &[u64], out: &mut Vec<u8>) {
    put_ptr(out, pointer_size, stack_key);
    for &f in frames {
        put_ptr(out, pointer_size, f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sid_encoding() {
        assert_eq!(
            sid_bytes("S-1-5-18").unwrap(),
            vec![1, 1, 0, 0, 0, 0, 0, 5, 18, 0, 0, 0]
        );
        assert!(sid_bytes("S-1-x").is_none());
        assert!(sid_bytes("").is_none());
    }

    #[test]
    fn fixed_sizes_match_the_mof_layouts() {
        let mut b = Vec::new();
        ThreadPayload::default().encode(8, &mut b);
        assert_eq!(b.len(), 72);
        b.clear();
        ThreadPayload::default().encode(4, &mut b);
        assert_eq!(b.len(), 44);
        b.clear();
        ImagePayload::default().encode(8, &mut b);
        assert_eq!(b.len(), 56 + 2);
        b.clear();
        ImagePayload::default().encode(4, &mut b);
        assert_eq!(b.len(), 44 + 2);
    }

    #[test]
    fn process_v4_matches_a_windows10_idle_record_length() {
        // Win10 DCStart of Idle: 36 fixed + 16 TOKEN_USER + 12 SID +
        // "Idle\0" + 3 empty wide strings = 75 bytes.
        let p = ProcessPayload {
            version: 4,
            unique_process_key: 1,
            process_id: 0,
            parent_id: 0,
            session_id: u32::MAX,
            exit_status: 0,
            directory_table_base: 0x1aa000,
            flags: 0,
            user_sid: "S-1-5-18".into(),
            sid_pointer: 0xffff_d383_d90d_29a0,
            sid_attributes: 0,
            image_file_name: "Idle".into(),
            command_line: String::new(),
            package_full_name: String::new(),
            application_id: String::new(),
        };
        let mut b = Vec::new();
        p.encode(8, &mut b);
        assert_eq!(b.len(), 75);
    }
}
