//! Evidence for a direct-syscall call site, from the bytes just before the
//! user-mode return address of a SysCallEnter stack (the address after the
//! `syscall` instruction). Live only: the bytes are read from the process
//! with `ReadProcessMemory` while it is alive.
//!
//! A hand-made stub (SysWhispers style) is `mov r10, rcx` (`4c 8b d1`),
//! `mov eax, imm32` (`b8 xx xx xx xx`), `syscall` (`0f 05`). Copies of
//! ntdll's own stub have `test byte ptr [7FFE0308h], 1; jne +3`
//! (`f6 04 25 08 03 fe 7f 01 75 03`) between the `mov eax` and the `syscall`.

/// How many bytes before the return address are read.
pub const CALL_SITE_WINDOW: usize = 32;

/// What the bytes before a return address look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StubShape {
    /// `4c 8b d1 b8 <n> 0f 05`: a minimal hand-made stub.
    Minimal { service_number: u32 },
    /// `4c 8b d1 b8 <n> f6 04 25 08 03 fe 7f 01 75 03 0f 05`: ntdll's layout
    /// (a copied or mapped stub).
    NtdllLike { service_number: u32 },
    /// `0f 05` without a recognised prologue.
    SyscallOnly,
    /// The return address does not follow a `syscall` instruction.
    NotSyscall,
}

/// Bytes read before a return address and what they show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallSiteEvidence {
    pub return_address: u64,
    /// Up to [`CALL_SITE_WINDOW`] bytes ending at `return_address`.
    pub bytes: Vec<u8>,
    pub shape: StubShape,
}

impl CallSiteEvidence {
    pub fn new(return_address: u64, bytes: Vec<u8>) -> CallSiteEvidence {
        let shape = classify(&bytes);
        CallSiteEvidence {
            return_address,
            bytes,
            shape,
        }
    }

    /// Lower-case hex of the bytes, space separated (for JSON output).
    pub fn hex(&self) -> String {
        let mut s = String::with_capacity(self.bytes.len() * 3);
        for (i, b) in self.bytes.iter().enumerate() {
            if i > 0 {
                s.push(' ');
            }
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

const SYSCALL: [u8; 2] = [0x0f, 0x05];
const MOV_R10_RCX_MOV_EAX: [u8; 4] = [0x4c, 0x8b, 0xd1, 0xb8];
const NTDLL_CHECK: [u8; 10] = [0xf6, 0x04, 0x25, 0x08, 0x03, 0xfe, 0x7f, 0x01, 0x75, 0x03];

fn imm32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Classifies the bytes that end at a return address.
pub fn classify(before_ret: &[u8]) -> StubShape {
    let Some(body) = before_ret.strip_suffix(&SYSCALL) else {
        return StubShape::NotSyscall;
    };
    // Minimal: 4c 8b d1 b8 n n n n | 0f 05
    if body.len() >= 8 && body[body.len() - 8..body.len() - 4] == MOV_R10_RCX_MOV_EAX {
        return StubShape::Minimal {
            service_number: imm32(&body[body.len() - 4..]),
        };
    }
    // ntdll: 4c 8b d1 b8 n n n n | f6 04 25 08 03 fe 7f 01 75 03 | 0f 05
    if let Some(pre) = body.strip_suffix(&NTDLL_CHECK) {
        if pre.len() >= 8 && pre[pre.len() - 8..pre.len() - 4] == MOV_R10_RCX_MOV_EAX {
            return StubShape::NtdllLike {
                service_number: imm32(&pre[pre.len() - 4..]),
            };
        }
    }
    StubShape::SyscallOnly
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_stub() {
        // NtAllocateVirtualMemory is 0x18 on Windows 10/11.
        let b = [
            0x90, 0x4c, 0x8b, 0xd1, 0xb8, 0x18, 0x00, 0x00, 0x00, 0x0f, 0x05,
        ];
        assert_eq!(
            classify(&b),
            StubShape::Minimal {
                service_number: 0x18
            }
        );
        let e = CallSiteEvidence::new(0x7ff6_0000_100b, b.to_vec());
        assert!(e.hex().ends_with("b8 18 00 00 00 0f 05"));
    }

    #[test]
    fn ntdll_shaped_stub() {
        let b = [
            0x4c, 0x8b, 0xd1, 0xb8, 0x55, 0x00, 0x00, 0x00, 0xf6, 0x04, 0x25, 0x08, 0x03, 0xfe,
            0x7f, 0x01, 0x75, 0x03, 0x0f, 0x05,
        ];
        assert_eq!(
            classify(&b),
            StubShape::NtdllLike {
                service_number: 0x55
            }
        );
    }

    #[test]
    fn other_shapes() {
        assert_eq!(
            classify(&[0x48, 0x89, 0xc8, 0x0f, 0x05]),
            StubShape::SyscallOnly
        );
        assert_eq!(classify(&[0xff, 0xd0]), StubShape::NotSyscall);
        assert_eq!(classify(&[0x05]), StubShape::NotSyscall);
        assert_eq!(classify(&[]), StubShape::NotSyscall);
        assert_eq!(classify(&[0x0f, 0x05]), StubShape::SyscallOnly);
    }
}
