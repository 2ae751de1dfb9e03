//! The few x86/x64 instruction forms a stack check needs: the `call`s that
//! can end right before a return address, the kernel transitions that can
//! precede an interrupted context (`syscall`, `sysenter`, `int 2Eh`), and the
//! gadget shapes a synthetic frame points at.
//!
//! Encodings from the Intel SDM vol. 2 (CALL: `E8 cd`, `FF /2`, `FF /3`,
//! `9A cp`; ModR/M and SIB tables 2-1..2-3 and the 16-bit table for the `67`
//! prefix in 32-bit code). Only lengths matter here, and the length of these
//! forms depends on the prefixes, the ModR/M byte, the SIB byte and the
//! displacement, never on operand size (near branches ignore `66` in 64-bit
//! code). The tests compare every answer with iced-x86, an independent
//! decoder.

/// Code size of the module a return address lies in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bits {
    /// 32-bit code (PE32, `IMAGE_FILE_MACHINE_I386`).
    B32,
    /// 64-bit code (PE32+, `IMAGE_FILE_MACHINE_AMD64`).
    B64,
}

/// The longest x86 instruction.
pub const MAX_INSN: usize = 15;

/// A call instruction form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallForm {
    /// `E8 rel32` (`rel16` with `66` in 32-bit code).
    Relative,
    /// `FF /2` with a register operand (`call rax`, `call r8`).
    Register,
    /// `FF /2` through memory, RIP-relative in 64-bit code (`call [rip+X]`:
    /// imports, CFG dispatch).
    RipRelative,
    /// `FF /2` through any other memory operand (`call [rbx+8]`).
    Memory,
    /// `FF /3` (far, through memory) or `9A` (far absolute, 32-bit only).
    Far,
}

impl CallForm {
    pub fn as_str(self) -> &'static str {
        match self {
            CallForm::Relative => "call_relative",
            CallForm::Register => "call_register",
            CallForm::RipRelative => "call_rip_relative",
            CallForm::Memory => "call_memory",
            CallForm::Far => "call_far",
        }
    }
}

/// A user-to-kernel transition whose next instruction is where the thread
/// resumes (an interrupted context, not a call's return address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transition {
    /// `0F 05`.
    Syscall,
    /// `0F 34`.
    Sysenter,
    /// `CD 2E`.
    Int2e,
}

impl Transition {
    pub fn as_str(self) -> &'static str {
        match self {
            Transition::Syscall => "syscall",
            Transition::Sysenter => "sysenter",
            Transition::Int2e => "int_2e",
        }
    }
}

/// Gadget shapes at a return address, as in published ROP call-stack
/// spoofers (a `jmp [rbx]` gadget in SilentMoonwalk and Draugr, `call`
/// gadgets in call-proxy loaders, `push reg; ret` and `pop reg; ret`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Gadget {
    /// `jmp reg` (`FF /4`, register).
    JmpRegister,
    /// `jmp [reg]`, `jmp [reg+disp]` (`FF /4` or `/5`, memory, not RIP-relative).
    JmpMemory,
    /// `call reg` (`FF /2`, register).
    CallRegister,
    /// `call [reg]` (`FF /2`, memory, not RIP-relative).
    CallMemory,
    /// `push reg; ret` (`50+r` or `FF /6`).
    PushRet,
    /// `pop reg; ret` (`58+r` or `8F /0`).
    PopRet,
    /// `add rsp/esp, imm; ret` (imm8 or imm32).
    AddSpRet,
}

impl Gadget {
    pub fn as_str(self) -> &'static str {
        match self {
            Gadget::JmpRegister => "jmp_register",
            Gadget::JmpMemory => "jmp_memory",
            Gadget::CallRegister => "call_register",
            Gadget::CallMemory => "call_memory",
            Gadget::PushRet => "push_ret",
            Gadget::PopRet => "pop_ret",
            Gadget::AddSpRet => "add_sp_ret",
        }
    }
}

/// Prefixes: how many bytes, whether `67` (address size) and `66` (operand
/// size) were seen. `F0` (lock) is not accepted: it makes a branch invalid.
struct Prefixes {
    len: usize,
    addr16: bool,
    op16: bool,
}

fn prefixes(code: &[u8], bits: Bits) -> Prefixes {
    let mut p = Prefixes {
        len: 0,
        addr16: false,
        op16: false,
    };
    let mut rex = false;
    while let Some(&b) = code.get(p.len) {
        match b {
            0x26 | 0x2E | 0x36 | 0x3E | 0x64 | 0x65 | 0xF2 | 0xF3 => {}
            0x66 => p.op16 = true,
            0x67 => p.addr16 = bits == Bits::B32,
            0x40..=0x4F if bits == Bits::B64 => {
                rex = true;
                p.len += 1;
                continue;
            }
            _ => break,
        }
        // A legacy prefix after a REX prefix cancels the REX (still one
        // instruction, still the same length rules).
        rex = false;
        p.len += 1;
    }
    let _ = rex;
    p
}

/// Length of a ModR/M operand (ModR/M, SIB, displacement) at `code[0]`, or
/// `None` if `code` is too short.
fn modrm_len(code: &[u8], addr16: bool) -> Option<usize> {
    let m = *code.first()?;
    let (md, rm) = (m >> 6, m & 7);
    let len = if md == 3 {
        1
    } else if addr16 {
        match (md, rm) {
            (0, 6) => 3,
            (0, _) => 1,
            (1, _) => 2,
            _ => 3,
        }
    } else {
        let mut len = 1;
        if rm == 4 {
            let sib = *code.get(1)?;
            len += 1;
            if md == 0 && sib & 7 == 5 {
                len += 4;
            }
        }
        match md {
            0 if rm == 5 => len += 4,
            1 => len += 1,
            2 => len += 4,
            _ => {}
        }
        len
    };
    (code.len() >= len).then_some(len)
}

/// Decodes a call instruction at the start of `code`: its form and length,
/// or `None` if `code` does not start with a complete call.
pub fn decode_call(code: &[u8], bits: Bits) -> Option<(CallForm, usize)> {
    let p = prefixes(code, bits);
    let op = *code.get(p.len)?;
    let rest = code.get(p.len + 1..)?;
    let (form, len) = match op {
        0xE8 => {
            let imm = if bits == Bits::B32 && p.op16 { 2 } else { 4 };
            (CallForm::Relative, p.len + 1 + imm)
        }
        0x9A if bits == Bits::B32 => {
            let imm = if p.op16 { 4 } else { 6 };
            (CallForm::Far, p.len + 1 + imm)
        }
        0xFF => {
            let m = *rest.first()?;
            let (md, reg, rm) = (m >> 6, (m >> 3) & 7, m & 7);
            let form = match reg {
                2 if md == 3 => CallForm::Register,
                2 if md == 0 && rm == 5 && bits == Bits::B64 => CallForm::RipRelative,
                2 => CallForm::Memory,
                3 if md != 3 => CallForm::Far,
                _ => return None,
            };
            (form, p.len + 1 + modrm_len(rest, p.addr16)?)
        }
        _ => return None,
    };
    (len <= MAX_INSN && code.len() >= len).then_some((form, len))
}

/// The call instruction that ends exactly where `leading` ends (`leading`
/// is the code right before a return address), the shortest if several do.
pub fn call_ending_at(leading: &[u8], bits: Bits) -> Option<(CallForm, usize)> {
    (2..=MAX_INSN.min(leading.len())).find_map(|l| {
        let start = leading.len() - l;
        match decode_call(&leading[start..], bits) {
            Some((f, n)) if n == l => Some((f, n)),
            _ => None,
        }
    })
}

/// A kernel transition ending where `leading` ends.
pub fn transition_ending_at(leading: &[u8]) -> Option<Transition> {
    match leading {
        [.., 0x0F, 0x05] => Some(Transition::Syscall),
        [.., 0x0F, 0x34] => Some(Transition::Sysenter),
        [.., 0xCD, 0x2E] => Some(Transition::Int2e),
        _ => None,
    }
}

/// The gadget shape starting at `code` (the bytes at a return address).
pub fn gadget_at(code: &[u8], bits: Bits) -> Option<Gadget> {
    let p = prefixes(code, bits);
    let op = *code.get(p.len)?;
    let after = |n: usize| code.get(p.len + n).copied();
    // `ret`, `ret imm16`, also as `bnd ret` (F2, MSVC's MPX-era epilogues)
    // and `repz ret` (F3, older gcc).
    let ret_at = |n: usize| match after(n) {
        Some(0xF2 | 0xF3) => matches!(after(n + 1), Some(0xC3 | 0xC2)),
        b => matches!(b, Some(0xC3 | 0xC2)),
    };
    match op {
        0xFF => {
            let m = after(1)?;
            let (md, reg, rm) = (m >> 6, (m >> 3) & 7, m & 7);
            let rip = md == 0 && rm == 5 && bits == Bits::B64;
            modrm_len(code.get(p.len + 1..)?, p.addr16)?;
            match reg {
                // push reg in its ModR/M form (FF /6, `ff f7` = push rdi):
                // Wine's x64 DLLs hold 17 such `push reg; ret` byte runs.
                6 if md == 3 && ret_at(2) => Some(Gadget::PushRet),
                4 if md == 3 => Some(Gadget::JmpRegister),
                4 | 5 if md != 3 && !rip => Some(Gadget::JmpMemory),
                2 if md == 3 => Some(Gadget::CallRegister),
                2 if !rip => Some(Gadget::CallMemory),
                _ => None,
            }
        }
        0x50..=0x57 if ret_at(1) => Some(Gadget::PushRet),
        0x58..=0x5F if ret_at(1) => Some(Gadget::PopRet),
        // pop reg in its ModR/M form (8F /0, `8f c3` = pop rbx).
        0x8F if after(1).is_some_and(|m| m & 0xF8 == 0xC0) && ret_at(2) => Some(Gadget::PopRet),
        // add rsp/esp, imm8 (83 /0 ib) or imm32 (81 /0 id), ModR/M C4;
        // REX.W is a prefix here. Compilers use imm32 for frames over 127
        // bytes (Wine's x64 DLLs: 56 of 1,538 `add rsp, imm; ret` epilogues).
        0x83 if after(1) == Some(0xC4) && ret_at(3) && !p.op16 => Some(Gadget::AddSpRet),
        0x81 if after(1) == Some(0xC4) && ret_at(6) && !p.op16 => Some(Gadget::AddSpRet),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_call_encodings() {
        let b64 = Bits::B64;
        let cases: &[(&[u8], CallForm)] = &[
            (&[0xE8, 1, 2, 3, 4], CallForm::Relative),
            (&[0xFF, 0x15, 1, 2, 3, 4], CallForm::RipRelative),
            (&[0x48, 0xFF, 0x15, 1, 2, 3, 4], CallForm::RipRelative),
            (&[0xFF, 0xD0], CallForm::Register),
            (&[0x41, 0xFF, 0xD2], CallForm::Register),
            (&[0x3E, 0xFF, 0xD0], CallForm::Register),
            (&[0xFF, 0x50, 0x08], CallForm::Memory),
            (&[0xFF, 0x14, 0x24], CallForm::Memory),
            (&[0xFF, 0x54, 0x24, 0x08], CallForm::Memory),
            (&[0xFF, 0x94, 0xC1, 1, 2, 3, 4], CallForm::Memory),
            (&[0xFF, 0x14, 0x25, 1, 2, 3, 4], CallForm::Memory),
            (&[0x41, 0xFF, 0x55, 0x10], CallForm::Memory),
            (&[0xFF, 0x1D, 1, 2, 3, 4], CallForm::Far),
            // The prefixed forms compilers and linkers emit: `call qword ptr
            // cs:[rip+X]`, `bnd call` (F2, MPX), `notrack call` (3E, CET),
            // `data16 call rax` (66: ignored by near branches), REX.W far.
            (&[0x2E, 0xFF, 0x15, 1, 2, 3, 4], CallForm::RipRelative),
            (&[0xF2, 0xFF, 0x15, 1, 2, 3, 4], CallForm::RipRelative),
            (&[0xF2, 0xE8, 1, 2, 3, 4], CallForm::Relative),
            (&[0x3E, 0xFF, 0x15, 1, 2, 3, 4], CallForm::RipRelative),
            (&[0x66, 0xFF, 0xD0], CallForm::Register),
            (&[0x48, 0xFF, 0x1D, 1, 2, 3, 4], CallForm::Far),
        ];
        for (code, form) in cases {
            assert_eq!(
                decode_call(code, b64),
                Some((*form, code.len())),
                "{code:02x?}"
            );
            let mut lead = vec![0x90u8; 9];
            lead.extend_from_slice(code);
            // The shortest call ending there (48 FF 15 .. also ends in FF 15 ..).
            let (_, n) = call_ending_at(&lead, b64).expect("call-preceded");
            assert!(n <= code.len());
        }
        // 32-bit: 66 E8 is rel16, 67 switches to 16-bit ModR/M, 9A is far.
        let b32 = Bits::B32;
        assert_eq!(
            decode_call(&[0x66, 0xE8, 1, 2], b32),
            Some((CallForm::Relative, 4))
        );
        assert_eq!(
            decode_call(&[0x67, 0xFF, 0x16, 1, 2], b32),
            Some((CallForm::Memory, 5))
        );
        assert_eq!(
            decode_call(&[0x9A, 1, 2, 3, 4, 5, 6], b32),
            Some((CallForm::Far, 7))
        );
        assert_eq!(decode_call(&[0x9A, 1, 2, 3, 4, 5, 6], b64), None);
        assert_eq!(
            decode_call(&[0xFF, 0x15, 1, 2, 3, 4], b32),
            Some((CallForm::Memory, 6))
        );
    }

    #[test]
    fn non_calls_are_not_calls() {
        let b64 = Bits::B64;
        for code in [
            &[0xFF, 0xE0][..],         // jmp rax
            &[0xFF, 0x25, 0, 0, 0, 0], // jmp [rip]
            &[0xFF, 0xD8],             // FF /3 with a register: invalid
            &[0xF0, 0xFF, 0xD0],       // lock call: invalid
            &[0xE8, 1, 2, 3],          // truncated
            &[0xFF],
            &[],
        ] {
            assert_eq!(decode_call(code, b64), None, "{code:02x?}");
        }
        // The bytes before a return site of a syscall stub end in 0F 05.
        let stub = [
            0x4C, 0x8B, 0xD1, 0xB8, 0x18, 0, 0, 0, 0xF6, 0x04, 0x25, 0x08, 0x03, 0xFE, 0x7F, 0x01,
            0x75, 0x03, 0x0F, 0x05,
        ];
        assert_eq!(call_ending_at(&stub, b64), None);
        assert_eq!(transition_ending_at(&stub), Some(Transition::Syscall));
    }

    #[test]
    fn gadget_shapes() {
        let b = Bits::B64;
        assert_eq!(gadget_at(&[0xFF, 0x23], b), Some(Gadget::JmpMemory)); // jmp [rbx]
        assert_eq!(gadget_at(&[0xFF, 0xE3], b), Some(Gadget::JmpRegister)); // jmp rbx
        assert_eq!(gadget_at(&[0x41, 0xFF, 0xE7], b), Some(Gadget::JmpRegister)); // jmp r15
        assert_eq!(gadget_at(&[0xFF, 0xD3], b), Some(Gadget::CallRegister));
        assert_eq!(gadget_at(&[0xFF, 0x13], b), Some(Gadget::CallMemory));
        assert_eq!(gadget_at(&[0x53, 0xC3], b), Some(Gadget::PushRet));
        // The ModR/M forms (in Wine's ntdll.dll: ff f7 c3, push rdi; ret).
        assert_eq!(gadget_at(&[0xFF, 0xF7, 0xC3], b), Some(Gadget::PushRet));
        assert_eq!(
            gadget_at(&[0xFF, 0xF6, 0xC2, 4, 0], Bits::B32),
            Some(Gadget::PushRet)
        );
        assert_eq!(gadget_at(&[0xFF, 0xF7, 0x90], b), None); // push rdi; nop
        assert_eq!(gadget_at(&[0xFF, 0x37, 0xC3], b), None); // push [rdi]; ret
        assert_eq!(gadget_at(&[0x8F, 0xC3, 0xC3], b), Some(Gadget::PopRet));
        assert_eq!(gadget_at(&[0x8F, 0x03, 0xC3], b), None); // pop [rbx]
        assert_eq!(gadget_at(&[0x5B, 0xC3], b), Some(Gadget::PopRet));
        assert_eq!(
            gadget_at(&[0x48, 0x83, 0xC4, 0x68, 0xC3], b),
            Some(Gadget::AddSpRet)
        );
        // add rsp, 0xd8; ret (imm32: a frame over 127 bytes), from Wine's
        // kernel32.dll; add esp, 0x100; ret in 32-bit code.
        assert_eq!(
            gadget_at(&[0x48, 0x81, 0xC4, 0xD8, 0, 0, 0, 0xC3], b),
            Some(Gadget::AddSpRet)
        );
        assert_eq!(
            gadget_at(&[0x81, 0xC4, 0, 1, 0, 0, 0xC2, 8, 0], Bits::B32),
            Some(Gadget::AddSpRet)
        );
        // add sp, 8 (66): not the stack pointer a return pops from.
        assert_eq!(gadget_at(&[0x66, 0x83, 0xC4, 0x08, 0xC3], Bits::B32), None);
        // bnd ret / repz ret (MSVC's wininst-14.0.exe: 51 f2 c3).
        assert_eq!(
            gadget_at(&[0x51, 0xF2, 0xC3], Bits::B32),
            Some(Gadget::PushRet)
        );
        assert_eq!(
            gadget_at(&[0x48, 0x83, 0xC4, 0x10, 0xF3, 0xC3], b),
            Some(Gadget::AddSpRet)
        );
        assert_eq!(gadget_at(&[0x5B, 0xF2, 0x90], b), None);
        // add rsp, 0x28; nop: no ret.
        assert_eq!(gadget_at(&[0x48, 0x81, 0xC4, 0x28, 0, 0, 0, 0x90], b), None);
        // Ordinary code after a call: not a gadget.
        assert_eq!(gadget_at(&[0x48, 0x8B, 0xC8], b), None);
        assert_eq!(gadget_at(&[0xFF, 0x15, 1, 2, 3, 4], b), None); // call [rip+X]
        assert_eq!(gadget_at(&[0x53, 0x90], b), None);
        assert_eq!(gadget_at(&[], b), None);
    }
}
