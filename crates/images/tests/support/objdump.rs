//! Rule 9's byte checks against GNU objdump, an independent disassembler,
//! on real compiled code. Shared by `tests/real_code.rs` (committed
//! binaries and their listings) and `examples/rule9_real.rs` (the CI step
//! `.ci/rule9-real` over Wine's DLLs and the mingw fixtures).
//!
//! objdump decodes a code section front to back (`objdump -d -w -M intel`).
//! For each instruction it prints:
//! - after a `call`: [`Image::preceded`] must be a call (recall over every
//!   real call site; the form and length are compared too);
//! - after `syscall` / `sysenter` / `int 0x2e`: a transition (or a call);
//! - after any other instruction: how often the backward look still finds a
//!   call or transition ending there (bytes of the previous instructions
//!   that happen to decode as one). That rate is what rule 9 cannot see: a
//!   gadget at such an address passes as call-preceded. The other way, a
//!   real return site always passes, so the ambiguity never accuses;
//! - at its start: the gadget shape objdump's decoding names (`jmp rbx`,
//!   `jmp [rbx]`, `call rax`, `call [rsi+8]`, `push/pop reg; ret`,
//!   `add rsp, imm; ret`) must be the one [`Image::gadget`] names, and the
//!   other way round.

#![allow(dead_code)] // each user of the module needs a different part

use sentry_images::{Bits, CallForm, Gadget, Image, Preceded};
use std::collections::BTreeMap;

/// One instruction as objdump printed it.
#[derive(Debug, Clone)]
pub struct Insn {
    pub va: u64,
    pub bytes: Vec<u8>,
    /// Mnemonic and operands, prefixes and the trailing `# comment` removed.
    pub mnemonic: String,
    pub operands: String,
    /// objdump could not decode it (`(bad)`), or the line was cut short.
    pub bad: bool,
}

/// A code section's instructions; a `...` line (objdump skipping zeros)
/// starts a new run, since the instruction before it is not followed by
/// the next line's.
#[derive(Debug, Default)]
pub struct Listing {
    pub runs: Vec<Vec<Insn>>,
}

const PREFIXES: &[&str] = &[
    "data16", "data32", "addr16", "addr32", "cs", "ds", "es", "ss", "fs", "gs", "notrack", "bnd",
    "lock", "rep", "repz", "repe", "repnz", "repne", "xacquire", "xrelease",
];

fn is_prefix(tok: &str) -> bool {
    PREFIXES.contains(&tok) || tok == "rex" || tok.starts_with("rex.")
}

/// Parses `objdump -d -w -M intel` output.
pub fn parse(text: &str) -> Listing {
    parse_where(text, |_| true)
}

/// [`parse`], keeping only the instructions at the addresses `keep`
/// accepts (a run breaks where one is left out).
pub fn parse_where(text: &str, keep: impl Fn(u64) -> bool) -> Listing {
    let mut l = Listing::default();
    let mut run: Vec<Insn> = Vec::new();
    let flush = |run: &mut Vec<Insn>, l: &mut Listing| {
        if !run.is_empty() {
            l.runs.push(std::mem::take(run));
        }
    };
    for line in text.lines() {
        let t = line.trim();
        if line.starts_with("Disassembly of section") || t == "..." {
            flush(&mut run, &mut l);
            continue;
        }
        let mut cols = line.splitn(3, '\t');
        let (Some(addr), Some(hex)) = (cols.next(), cols.next()) else {
            continue;
        };
        let Some(addr) = addr.trim().strip_suffix(':') else {
            continue;
        };
        let Ok(va) = u64::from_str_radix(addr, 16) else {
            continue;
        };
        if !keep(va) {
            continue;
        }
        let bytes: Option<Vec<u8>> = hex
            .split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).ok())
            .collect();
        let Some(bytes) = bytes else { continue };
        let asm = cols.next().unwrap_or("");
        let asm = asm.split(" #").next().unwrap_or("").trim();
        let mut toks = asm.split_whitespace().peekable();
        while toks.peek().is_some_and(|t| is_prefix(t)) {
            toks.next();
        }
        let mnemonic = toks.next().unwrap_or("").to_string();
        let operands: String = toks.collect::<Vec<_>>().join(" ");
        let bad = mnemonic.is_empty() || asm.contains("(bad)");
        if let Some(prev) = run.last() {
            if prev.va + prev.bytes.len() as u64 != va {
                flush(&mut run, &mut l);
            }
        }
        // objdump prints a prefix the CPU ignores (a REX not right before
        // the opcode, `40 48 83 c4 28`) on a line of its own; the CPU runs
        // it as part of the next instruction (Intel SDM vol. 2, 2.2.1), and
        // so does a jump to it: merge.
        if let Some(prev) = run.last_mut() {
            if prev.mnemonic.is_empty()
                && !prev.operands.contains("(bad)")
                && !asm.contains("(bad)")
            {
                let mut b = std::mem::take(&mut prev.bytes);
                b.extend_from_slice(&bytes);
                *prev = Insn {
                    va: prev.va,
                    bytes: b,
                    mnemonic,
                    operands,
                    bad,
                };
                continue;
            }
        }
        run.push(Insn {
            va,
            bytes,
            mnemonic,
            operands,
            bad,
        });
    }
    flush(&mut run, &mut l);
    l
}

/// The PE's `ImageBase` (objdump prints virtual addresses).
pub fn image_base(file: &[u8]) -> Option<u64> {
    let pe = u32::from_le_bytes(file.get(0x3C..0x40)?.try_into().ok()?) as usize;
    let opt = pe + 24;
    match u16::from_le_bytes(file.get(opt..opt + 2)?.try_into().ok()?) {
        0x20B => Some(u64::from_le_bytes(
            file.get(opt + 24..opt + 32)?.try_into().ok()?,
        )),
        0x10B => Some(u64::from(u32::from_le_bytes(
            file.get(opt + 28..opt + 32)?.try_into().ok()?,
        ))),
        _ => None,
    }
}

const GPR64: &[&str] = &[
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15",
];
const GPR32: &[&str] = &[
    "eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", "r8d", "r9d", "r10d", "r11d", "r12d",
    "r13d", "r14d", "r15d",
];
const GPR16: &[&str] = &[
    "ax", "cx", "dx", "bx", "sp", "bp", "si", "di", "r8w", "r9w", "r10w", "r11w", "r12w", "r13w",
    "r14w", "r15w",
];

fn is_gpr(op: &str) -> bool {
    GPR64.contains(&op) || GPR32.contains(&op) || GPR16.contains(&op)
}

fn is_memory(op: &str) -> bool {
    op.contains('[') || op.contains("PTR")
}

/// The call form objdump's operand shows.
pub fn call_form(i: &Insn) -> Option<CallForm> {
    if i.mnemonic != "call" && i.mnemonic != "lcall" {
        return None;
    }
    let op = i.operands.as_str();
    Some(
        if op.contains("FWORD") || i.mnemonic == "lcall" || (op.contains(':') && !is_memory(op)) {
            CallForm::Far
        } else if is_gpr(op) {
            CallForm::Register
        } else if op.contains("[rip") {
            CallForm::RipRelative
        } else if is_memory(op) {
            CallForm::Memory
        } else {
            CallForm::Relative
        },
    )
}

/// `syscall`, `sysenter` or `int 0x2e`.
pub fn is_transition(i: &Insn) -> bool {
    matches!(i.mnemonic.as_str(), "syscall" | "sysenter")
        || (i.mnemonic == "int" && i.operands == "0x2e")
}

fn is_ret(i: Option<&Insn>) -> bool {
    i.is_some_and(|i| i.mnemonic == "ret" && !i.bad)
}

/// The gadget shape of objdump's instruction `i` (followed by `next`).
pub fn gadget(i: &Insn, next: Option<&Insn>) -> Option<Gadget> {
    let op = i.operands.as_str();
    let rip = op.contains("[rip");
    match i.mnemonic.as_str() {
        "jmp" if is_gpr(op) => Some(Gadget::JmpRegister),
        "jmp" if is_memory(op) && !rip => Some(Gadget::JmpMemory),
        "call" if is_gpr(op) => Some(Gadget::CallRegister),
        "call" if is_memory(op) && !rip && !op.contains("FWORD") => Some(Gadget::CallMemory),
        "push" if is_gpr(op) && is_ret(next) => Some(Gadget::PushRet),
        "pop" if is_gpr(op) && is_ret(next) => Some(Gadget::PopRet),
        "add" if (op.starts_with("rsp,0x") || op.starts_with("esp,0x")) && is_ret(next) => {
            Some(Gadget::AddSpRet)
        }
        _ => None,
    }
}

/// Counts per category; `mismatches` holds one line per disagreement.
#[derive(Debug, Default, Clone)]
pub struct Figures {
    pub instructions: u64,
    /// objdump's `(bad)` lines: their neighbours are not used.
    pub bad: u64,
    /// Instructions the check could not read (not in a file-backed
    /// executable section by our parser): must be 0.
    pub not_done: u64,
    pub calls: u64,
    pub calls_preceded: u64,
    /// ... where our form and length are objdump's (the shortest call
    /// ending there may be a suffix of the real one).
    pub calls_same_form: u64,
    pub calls_by_form: BTreeMap<&'static str, u64>,
    pub transitions: u64,
    pub transitions_preceded: u64,
    /// ... of which our check names the transition itself (else a call
    /// happens to end there too, which also passes).
    pub transitions_exact: u64,
    /// Ends of all other instructions, and how many of them we call
    /// call-preceded / transition-preceded.
    pub others: u64,
    pub others_call: u64,
    pub others_transition: u64,
    /// Instruction starts where objdump or we name a gadget shape:
    /// (shape) -> (both, objdump only, ours only).
    pub gadgets: BTreeMap<&'static str, [u64; 3]>,
    pub mismatches: Vec<String>,
}

impl Figures {
    pub fn ambiguity(&self) -> f64 {
        (self.others_call + self.others_transition) as f64 / self.others.max(1) as f64
    }

    pub fn gadget_mismatches(&self) -> u64 {
        self.gadgets.values().map(|g| g[1] + g[2]).sum()
    }

    fn mismatch(&mut self, s: String) {
        if self.mismatches.len() < 50 {
            self.mismatches.push(s);
        }
    }
}

/// Compares the image's checks with the listing of the same file.
pub fn compare(img: &Image, base: u64, listing: &Listing) -> Figures {
    let mut f = Figures::default();
    for run in &listing.runs {
        for (k, i) in run.iter().enumerate() {
            f.instructions += 1;
            let near_bad =
                i.bad || (k > 0 && run[k - 1].bad) || run.get(k + 1).is_some_and(|n| n.bad);
            if i.bad {
                f.bad += 1;
            }
            if near_bad {
                continue;
            }
            let Some(rva) = i.va.checked_sub(base).and_then(|r| u32::try_from(r).ok()) else {
                f.not_done += 1;
                continue;
            };
            // The listing is of this file: its bytes are the image's.
            if img.bytes_at(rva, i.bytes.len()) != Some(&i.bytes[..]) {
                f.not_done += 1;
                f.mismatch(format!(
                    "{:#x}: listing bytes {:02x?} are not the file's",
                    i.va, i.bytes
                ));
                continue;
            }
            let end = rva + i.bytes.len() as u32;
            let p = img.preceded(end);
            if matches!(p, Preceded::NotDone(_)) {
                f.not_done += 1;
                continue;
            }
            if let Some(form) = call_form(i) {
                f.calls += 1;
                *f.calls_by_form.entry(form.as_str()).or_default() += 1;
                match p {
                    Preceded::Call(ours, n) => {
                        f.calls_preceded += 1;
                        if ours == form && usize::from(n) == i.bytes.len() {
                            f.calls_same_form += 1;
                        }
                    }
                    _ => f.mismatch(format!(
                        "{:#x}: after `call {}` ({:02x?}): {p:?}",
                        i.va, i.operands, i.bytes
                    )),
                }
            } else if is_transition(i) {
                f.transitions += 1;
                match p {
                    Preceded::Transition(_) => {
                        f.transitions_preceded += 1;
                        f.transitions_exact += 1;
                    }
                    Preceded::Call(..) => f.transitions_preceded += 1,
                    _ => f.mismatch(format!("{:#x}: after `{}`: {p:?}", i.va, i.mnemonic)),
                }
            } else {
                f.others += 1;
                match p {
                    Preceded::Call(..) => f.others_call += 1,
                    Preceded::Transition(_) => f.others_transition += 1,
                    _ => {}
                }
            }
            let theirs = gadget(i, run.get(k + 1));
            let ours = img.gadget(rva);
            match (theirs, ours) {
                (Some(t), Some(o)) if t == o => f.gadgets.entry(t.as_str()).or_default()[0] += 1,
                (None, None) => {}
                _ => {
                    if let Some(t) = theirs {
                        f.gadgets.entry(t.as_str()).or_default()[1] += 1;
                    }
                    if let Some(o) = ours {
                        f.gadgets.entry(o.as_str()).or_default()[2] += 1;
                    }
                    let next = run.get(k + 1).map_or(String::new(), |n| {
                        format!("; {} {}", n.mnemonic, n.operands)
                    });
                    f.mismatch(format!(
                        "{:#x}: `{} {}{next}` ({:02x?}): objdump {theirs:?}, ours {ours:?}",
                        i.va, i.mnemonic, i.operands, i.bytes
                    ));
                }
            }
        }
    }
    f
}

/// objdump's architecture name for `-b binary -m`.
pub fn machine(bits: Bits) -> &'static str {
    match bits {
        Bits::B64 => "i386:x86-64",
        Bits::B32 => "i386",
    }
}
