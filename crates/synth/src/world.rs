//! The synthetic machine: services, module layouts, processes.
//!
//! Layouts follow Windows 10 x64: system DLLs at the same base in every
//! process (high `0x7ffb...` range), EXEs at `0x7ff6...`, kernel images in
//! `0xfffff803...` and win32k in session space. Nt stubs in ntdll and win32u
//! are 0x20 apart in system-service-number order, each `mov r10,rcx; mov
//! eax,SSN; test [7FFE0308h],1; jne; syscall; ret`: `syscall` at stub+0x12,
//! return site stub+0x14. 32-bit traces reuse that stub geometry (the
//! verdict rules are written for it) with x86 address ranges.

/// A system service: the Nt stub users call and the kernel routine behind it.
#[derive(Debug, Clone, Copy)]
pub struct Service {
    pub name: &'static str,
    /// System service number (0x1000+ for win32k services).
    pub ssn: u16,
    /// Relative weight in benign traffic.
    pub weight: u32,
}

impl Service {
    pub fn is_win32k(&self) -> bool {
        self.ssn >= 0x1000
    }
}

/// Services with Windows 10 20H1-like numbers. Weights shape benign traffic
/// (waits, file and memory calls dominate).
pub const SERVICES: &[Service] = &[
    Service {
        name: "NtWaitForSingleObject",
        ssn: 0x04,
        weight: 60,
    },
    Service {
        name: "NtReadFile",
        ssn: 0x06,
        weight: 40,
    },
    Service {
        name: "NtDeviceIoControlFile",
        ssn: 0x07,
        weight: 30,
    },
    Service {
        name: "NtWriteFile",
        ssn: 0x08,
        weight: 30,
    },
    Service {
        name: "NtRemoveIoCompletion",
        ssn: 0x09,
        weight: 25,
    },
    Service {
        name: "NtSetInformationThread",
        ssn: 0x0D,
        weight: 8,
    },
    Service {
        name: "NtSetEvent",
        ssn: 0x0E,
        weight: 25,
    },
    Service {
        name: "NtClose",
        ssn: 0x0F,
        weight: 70,
    },
    Service {
        name: "NtQueryInformationFile",
        ssn: 0x11,
        weight: 15,
    },
    Service {
        name: "NtOpenKey",
        ssn: 0x12,
        weight: 15,
    },
    Service {
        name: "NtEnumerateValueKey",
        ssn: 0x13,
        weight: 8,
    },
    Service {
        name: "NtQueryValueKey",
        ssn: 0x17,
        weight: 30,
    },
    Service {
        name: "NtAllocateVirtualMemory",
        ssn: 0x18,
        weight: 45,
    },
    Service {
        name: "NtQueryInformationProcess",
        ssn: 0x19,
        weight: 30,
    },
    Service {
        name: "NtFreeVirtualMemory",
        ssn: 0x1E,
        weight: 30,
    },
    Service {
        name: "NtQueryVirtualMemory",
        ssn: 0x23,
        weight: 20,
    },
    Service {
        name: "NtOpenThreadToken",
        ssn: 0x24,
        weight: 10,
    },
    Service {
        name: "NtQueryInformationThread",
        ssn: 0x25,
        weight: 10,
    },
    Service {
        name: "NtOpenProcess",
        ssn: 0x26,
        weight: 12,
    },
    Service {
        name: "NtMapViewOfSection",
        ssn: 0x28,
        weight: 15,
    },
    Service {
        name: "NtUnmapViewOfSection",
        ssn: 0x2A,
        weight: 12,
    },
    Service {
        name: "NtOpenFile",
        ssn: 0x33,
        weight: 15,
    },
    Service {
        name: "NtDelayExecution",
        ssn: 0x34,
        weight: 20,
    },
    Service {
        name: "NtQuerySystemInformation",
        ssn: 0x36,
        weight: 15,
    },
    Service {
        name: "NtWriteVirtualMemory",
        ssn: 0x3A,
        weight: 10,
    },
    Service {
        name: "NtQueryAttributesFile",
        ssn: 0x3D,
        weight: 12,
    },
    Service {
        name: "NtReadVirtualMemory",
        ssn: 0x3F,
        weight: 12,
    },
    Service {
        name: "NtQueueApcThread",
        ssn: 0x45,
        weight: 6,
    },
    Service {
        name: "NtCreateSection",
        ssn: 0x4A,
        weight: 10,
    },
    Service {
        name: "NtProtectVirtualMemory",
        ssn: 0x50,
        weight: 25,
    },
    Service {
        name: "NtResumeThread",
        ssn: 0x52,
        weight: 6,
    },
    Service {
        name: "NtCreateFile",
        ssn: 0x55,
        weight: 20,
    },
    Service {
        name: "NtTraceEvent",
        ssn: 0x5E,
        weight: 15,
    },
    Service {
        name: "NtAlpcSendWaitReceivePort",
        ssn: 0x80,
        weight: 25,
    },
    Service {
        name: "NtCreateThreadEx",
        ssn: 0xC1,
        weight: 6,
    },
    Service {
        name: "NtUserPeekMessage",
        ssn: 0x1001,
        weight: 40,
    },
    Service {
        name: "NtUserGetKeyState",
        ssn: 0x1003,
        weight: 10,
    },
    Service {
        name: "NtUserGetMessage",
        ssn: 0x1006,
        weight: 20,
    },
    Service {
        name: "NtGdiBitBlt",
        ssn: 0x1008,
        weight: 10,
    },
    Service {
        name: "NtUserGetDC",
        ssn: 0x100A,
        weight: 8,
    },
    Service {
        name: "NtUserMsgWaitForMultipleObjectsEx",
        ssn: 0x1019,
        weight: 15,
    },
    Service {
        name: "NtGdiDeleteObjectApp",
        ssn: 0x1025,
        weight: 8,
    },
    Service {
        name: "NtUserGetAsyncKeyState",
        ssn: 0x1044,
        weight: 5,
    },
    Service {
        name: "NtUserSetWindowsHookEx",
        ssn: 0x108A,
        weight: 2,
    },
    // Services only the Audit-API scenarios call (weight 0: never drawn for
    // background traffic, so the other scenarios' traces are unchanged).
    Service {
        name: "NtTerminateProcess",
        ssn: 0x2C,
        weight: 0,
    },
    Service {
        name: "NtOpenThread",
        ssn: 0x12E,
        weight: 0,
    },
    Service {
        name: "NtSetContextThread",
        ssn: 0x18B,
        weight: 0,
    },
];

/// Index of a service by name (panics on unknown names: a programming error).
pub fn service_index(name: &str) -> usize {
    SERVICES
        .iter()
        .position(|s| s.name == name)
        .unwrap_or_else(|| panic!("unknown service {name}"))
}

/// First stub RVA in ntdll / win32u.
pub const NTDLL_STUBS_RVA: u64 = 0x9_D000;
pub const WIN32U_STUBS_RVA: u64 = 0x1000;
/// Offset of the return site (after `syscall`) in a stub.
pub const RETURN_SITE: u64 = 0x14;

/// Which module a module is, for stack building.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModKind {
    Ntdll,
    Kernel32,
    KernelBase,
    Win32u,
    User32,
    Gdi32,
    Exe,
    Clr,
    OtherDll,
    Wow64,
    Wow64Win,
    Wow64Cpu,
    Ntdll32,
    Kernel32Wow,
    KernelBaseWow,
    Ntoskrnl,
    Hal,
    Win32k,
    Driver,
}

/// An image in some address space.
#[derive(Debug, Clone)]
pub struct Module {
    pub kind: ModKind,
    pub base: u64,
    pub size: u64,
    /// NT path as Image events carry it.
    pub path: String,
    pub time_date_stamp: u32,
    pub checksum: u32,
}

impl Module {
    pub fn file_name(&self) -> &str {
        self.path.rsplit('\\').next().unwrap_or(&self.path)
    }
}

const VOL: &str = "\\Device\\HarddiskVolume3";

/// Address-space constants for one pointer size.
#[derive(Debug, Clone)]
pub struct Layout {
    pub pointer_size: u8,
    /// Shared system DLLs (same base in every process).
    pub ntdll: Module,
    pub kernel32: Module,
    pub kernelbase: Module,
    pub win32u: Module,
    pub user32: Module,
    pub gdi32: Module,
    pub clr: Module,
    pub others: Vec<Module>,
    /// WoW64 (64-bit traces only).
    pub wow64: Option<[Module; 6]>,
    /// Kernel images (pid 0): ntoskrnl first, win32k second.
    pub kernel: Vec<Module>,
}

fn m(kind: ModKind, base: u64, size: u64, path: String, tds: u32) -> Module {
    Module {
        kind,
        base,
        size,
        path,
        time_date_stamp: tds,
        checksum: (size as u32).wrapping_mul(0x9E37) ^ tds,
    }
}

impl Layout {
    pub fn new(pointer_size: u8) -> Layout {
        let s32 = |n: &str| format!("{VOL}\\Windows\\System32\\{n}");
        let sw = |n: &str| format!("{VOL}\\Windows\\SysWOW64\\{n}");
        let dr = |n: &str| format!("\\SystemRoot\\System32\\drivers\\{n}");
        let sr = |n: &str| format!("\\SystemRoot\\System32\\{n}");
        let clr_path = format!(
            "{VOL}\\Program Files\\dotnet\\shared\\Microsoft.NETCore.App\\6.0.25\\coreclr.dll"
        );
        if pointer_size == 8 {
            Layout {
                pointer_size,
                ntdll: m(
                    ModKind::Ntdll,
                    0x7ffb_2c4a_0000,
                    0x1f_8000,
                    s32("ntdll.dll"),
                    0x5E4B_9C1F,
                ),
                kernel32: m(
                    ModKind::Kernel32,
                    0x7ffb_2b1c_0000,
                    0xbd000,
                    s32("kernel32.dll"),
                    0x6D2A_73B0,
                ),
                kernelbase: m(
                    ModKind::KernelBase,
                    0x7ffb_29e9_0000,
                    0x2c_7000,
                    s32("KernelBase.dll"),
                    0x3B1E_0C52,
                ),
                win32u: m(
                    ModKind::Win32u,
                    0x7ffb_2a1e_0000,
                    0x2_2000,
                    s32("win32u.dll"),
                    0x2F77_D5A1,
                ),
                user32: m(
                    ModKind::User32,
                    0x7ffb_2b35_0000,
                    0x19_a000,
                    s32("user32.dll"),
                    0x4C0B_2E99,
                ),
                gdi32: m(
                    ModKind::Gdi32,
                    0x7ffb_2c0d_0000,
                    0x2_9000,
                    s32("gdi32.dll"),
                    0x1A6F_0E3D,
                ),
                clr: m(
                    ModKind::Clr,
                    0x7ffa_f000_0000,
                    0x5e_0000,
                    clr_path,
                    0x6531_77C4,
                ),
                others: vec![
                    m(
                        ModKind::OtherDll,
                        0x7ffb_2bc4_0000,
                        0x9e000,
                        s32("msvcrt.dll"),
                        0x564F_9F39,
                    ),
                    m(
                        ModKind::OtherDll,
                        0x7ffb_2b6f_0000,
                        0x125000,
                        s32("rpcrt4.dll"),
                        0x2D8A_11E0,
                    ),
                    m(
                        ModKind::OtherDll,
                        0x7ffb_2b82_0000,
                        0x354000,
                        s32("combase.dll"),
                        0x7F3C_1B42,
                    ),
                    m(
                        ModKind::OtherDll,
                        0x7ffb_2c2e_0000,
                        0x9c000,
                        s32("sechost.dll"),
                        0x1234_ABCD,
                    ),
                    m(
                        ModKind::OtherDll,
                        0x7ffb_2a92_0000,
                        0x6b000,
                        s32("ws2_32.dll"),
                        0x0B1C_2D3E,
                    ),
                ],
                wow64: Some([
                    m(
                        ModKind::Wow64,
                        0x7ffb_2a6f_0000,
                        0x5_9000,
                        s32("wow64.dll"),
                        0x3E4F_5061,
                    ),
                    m(
                        ModKind::Wow64Win,
                        0x7ffb_2b0b_0000,
                        0x7_a000,
                        s32("wow64win.dll"),
                        0x7182_93A4,
                    ),
                    m(
                        ModKind::Wow64Cpu,
                        0x77a8_0000,
                        0xa000,
                        s32("wow64cpu.dll"),
                        0x55AA_33CC,
                    ),
                    m(
                        ModKind::Ntdll32,
                        0x77b0_0000,
                        0x1a_3000,
                        sw("ntdll.dll"),
                        0x6E5D_4C3B,
                    ),
                    m(
                        ModKind::Kernel32Wow,
                        0x7626_0000,
                        0xf_0000,
                        sw("kernel32.dll"),
                        0x2A3B_4C5D,
                    ),
                    m(
                        ModKind::KernelBaseWow,
                        0x7659_0000,
                        0x21_4000,
                        sw("KernelBase.dll"),
                        0x6F70_8192,
                    ),
                ]),
                kernel: vec![
                    m(
                        ModKind::Ntoskrnl,
                        0xffff_f803_1200_0000,
                        0x104_6000,
                        sr("ntoskrnl.exe"),
                        0x7A1D_3B5F,
                    ),
                    m(
                        ModKind::Win32k,
                        0xffff_a1b8_2c00_0000,
                        0x4_2000,
                        sr("win32k.sys"),
                        0x1F2E_3D4C,
                    ),
                    m(
                        ModKind::Hal,
                        0xffff_f803_1100_0000,
                        0x9_c000,
                        sr("hal.dll"),
                        0x0A0B_0C0D,
                    ),
                    m(
                        ModKind::Driver,
                        0xffff_a1b8_2c20_0000,
                        0x2a_9000,
                        sr("win32kbase.sys"),
                        0x3C4D_5E6F,
                    ),
                    m(
                        ModKind::Driver,
                        0xffff_a1b8_2c50_0000,
                        0x39_8000,
                        sr("win32kfull.sys"),
                        0x4D5E_6F70,
                    ),
                    m(
                        ModKind::Driver,
                        0xffff_f803_1600_0000,
                        0x2d_1000,
                        dr("Ntfs.sys"),
                        0x5E6F_7081,
                    ),
                    m(
                        ModKind::Driver,
                        0xffff_f803_1640_0000,
                        0x1ab000,
                        dr("FLTMGR.SYS"),
                        0x6F70_8192,
                    ),
                    m(
                        ModKind::Driver,
                        0xffff_f803_1680_0000,
                        0x2ba000,
                        dr("tcpip.sys"),
                        0x7081_92A3,
                    ),
                    m(
                        ModKind::Driver,
                        0xffff_f803_16c0_0000,
                        0xc6000,
                        sr("CI.dll"),
                        0x8192_A3B4,
                    ),
                    m(
                        ModKind::Driver,
                        0xffff_f803_16e0_0000,
                        0xbd000,
                        dr("cng.sys"),
                        0x92A3_B4C5,
                    ),
                ],
            }
        } else {
            Layout {
                pointer_size,
                ntdll: m(
                    ModKind::Ntdll,
                    0x77a0_0000,
                    0x19_c000,
                    s32("ntdll.dll"),
                    0x5E4B_9C1F,
                ),
                kernel32: m(
                    ModKind::Kernel32,
                    0x7650_0000,
                    0xe0000,
                    s32("kernel32.dll"),
                    0x6D2A_73B0,
                ),
                kernelbase: m(
                    ModKind::KernelBase,
                    0x7530_0000,
                    0x1f_5000,
                    s32("KernelBase.dll"),
                    0x3B1E_0C52,
                ),
                win32u: m(
                    ModKind::Win32u,
                    0x7601_0000,
                    0x1_8000,
                    s32("win32u.dll"),
                    0x2F77_D5A1,
                ),
                user32: m(
                    ModKind::User32,
                    0x7628_0000,
                    0x19_c000,
                    s32("user32.dll"),
                    0x4C0B_2E99,
                ),
                gdi32: m(
                    ModKind::Gdi32,
                    0x7712_0000,
                    0x2_3000,
                    s32("gdi32.dll"),
                    0x1A6F_0E3D,
                ),
                clr: m(ModKind::Clr, 0x6f10_0000, 0x44_0000, clr_path, 0x6531_77C4),
                others: vec![
                    m(
                        ModKind::OtherDll,
                        0x7700_0000,
                        0xbf000,
                        s32("msvcrt.dll"),
                        0x564F_9F39,
                    ),
                    m(
                        ModKind::OtherDll,
                        0x7740_0000,
                        0xc3000,
                        s32("rpcrt4.dll"),
                        0x2D8A_11E0,
                    ),
                    m(
                        ModKind::OtherDll,
                        0x7580_0000,
                        0x27b000,
                        s32("combase.dll"),
                        0x7F3C_1B42,
                    ),
                    m(
                        ModKind::OtherDll,
                        0x7750_0000,
                        0x79000,
                        s32("sechost.dll"),
                        0x1234_ABCD,
                    ),
                    m(
                        ModKind::OtherDll,
                        0x7770_0000,
                        0x5f000,
                        s32("ws2_32.dll"),
                        0x0B1C_2D3E,
                    ),
                ],
                wow64: None,
                kernel: vec![
                    m(
                        ModKind::Ntoskrnl,
                        0x8240_0000,
                        0x6f_0000,
                        sr("ntoskrnl.exe"),
                        0x7A1D_3B5F,
                    ),
                    m(
                        ModKind::Win32k,
                        0x9a00_0000,
                        0x3_8000,
                        sr("win32k.sys"),
                        0x1F2E_3D4C,
                    ),
                    m(
                        ModKind::Hal,
                        0x8200_0000,
                        0x8_2000,
                        sr("hal.dll"),
                        0x0A0B_0C0D,
                    ),
                    m(
                        ModKind::Driver,
                        0x9a10_0000,
                        0x22_0000,
                        sr("win32kbase.sys"),
                        0x3C4D_5E6F,
                    ),
                    m(
                        ModKind::Driver,
                        0x9a40_0000,
                        0x2f_0000,
                        sr("win32kfull.sys"),
                        0x4D5E_6F70,
                    ),
                    m(
                        ModKind::Driver,
                        0x8b00_0000,
                        0x21_0000,
                        dr("Ntfs.sys"),
                        0x5E6F_7081,
                    ),
                    m(
                        ModKind::Driver,
                        0x8b40_0000,
                        0x16_0000,
                        dr("FLTMGR.SYS"),
                        0x6F70_8192,
                    ),
                    m(
                        ModKind::Driver,
                        0x8b80_0000,
                        0x21_0000,
                        dr("tcpip.sys"),
                        0x7081_92A3,
                    ),
                    m(
                        ModKind::Driver,
                        0x8bc0_0000,
                        0xa_0000,
                        sr("CI.dll"),
                        0x8192_A3B4,
                    ),
                    m(
                        ModKind::Driver,
                        0x8be0_0000,
                        0x9_0000,
                        dr("cng.sys"),
                        0x92A3_B4C5,
                    ),
                ],
            }
        }
    }

    pub fn ntoskrnl(&self) -> &Module {
        &self.kernel[0]
    }

    pub fn win32k(&self) -> &Module {
        &self.kernel[1]
    }

    /// The Nt stub address of a service (in ntdll or win32u).
    pub fn stub(&self, s: &Service) -> u64 {
        if s.is_win32k() {
            self.win32u.base + WIN32U_STUBS_RVA + u64::from(s.ssn & 0xFFF) * 0x20
        } else {
            self.ntdll.base + NTDLL_STUBS_RVA + u64::from(s.ssn) * 0x20
        }
    }

    /// The return site (`syscall` + 2) of a service's stub.
    pub fn return_site(&self, s: &Service) -> u64 {
        self.stub(s) + RETURN_SITE
    }

    /// RVA of the kernel service routine in ntoskrnl / win32k.
    pub fn routine_rva(s: &Service) -> u64 {
        if s.is_win32k() {
            0x1_2000 + u64::from(s.ssn & 0xFFF) * 0x90
        } else {
            0x40_0000 + u64::from(s.ssn) * 0x1A30
        }
    }

    /// `SysCallAddress` for a service.
    pub fn routine(&self, s: &Service) -> u64 {
        let img = if s.is_win32k() {
            self.win32k()
        } else {
            self.ntoskrnl()
        };
        img.base + Self::routine_rva(s)
    }

    /// Lowest kernel address.
    pub fn kernel_start(&self) -> u64 {
        if self.pointer_size == 8 {
            0xFFFF_8000_0000_0000
        } else {
            0x8000_0000
        }
    }

    /// RVAs of the fixed kernel frames of a syscall's stack.
    pub const KI_SYSTEM_SERVICE_COPY_END: u64 = 0x40_b3b5;
    pub const PERFINFO_LOG_SYSCALL_ENTRY: u64 = 0x3d_1e2c;
    pub const RTL_USER_THREAD_START: u64 = 0x5_2651;
    pub const BASE_THREAD_INIT_THUNK: u64 = 0x1_7034;
    /// RVAs of the kernel frames above an Audit-API event's system call:
    /// the stack capture, `EtwWrite`, `PsOpenProcess`/`PsOpenThread`.
    pub const ETW_STACK_CAPTURE: u64 = 0x24_3a1e;
    pub const ETW_WRITE: u64 = 0x23_8b52;
    pub const PS_OPEN_PROCESS: u64 = 0x6a_1e94;
    pub const PS_OPEN_THREAD: u64 = 0x6a_5b20;
}

/// Kind of process, deciding which stacks it produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcKind {
    System,
    Native,
    Gui,
    JitHost,
    Wow64,
    /// Attack process (64-bit, or WoW64 for heaven's gate).
    Implant,
    Wow64Implant,
}

#[derive(Debug, Clone)]
pub struct Thread {
    pub tid: u32,
    pub home_cpu: u16,
    pub stack_base: u64,
    pub teb: u64,
    pub start: u64,
}

#[derive(Debug, Clone)]
pub struct Process {
    pub pid: u32,
    pub parent: u32,
    pub session: u32,
    pub name: &'static str,
    pub command_line: String,
    pub sid: &'static str,
    pub kind: ProcKind,
    pub key: u64,
    pub dtb: u64,
    /// EXE image (not for System).
    pub exe: Option<Module>,
    /// Private executable memory (shellcode, JIT): (base, size).
    pub private: (u64, u64),
    pub threads: Vec<Thread>,
}

impl Process {
    pub fn is_wow64(&self) -> bool {
        matches!(self.kind, ProcKind::Wow64 | ProcKind::Wow64Implant)
    }

    /// Modules loaded in this process (the EXE first).
    pub fn modules<'a>(&'a self, l: &'a Layout) -> Vec<&'a Module> {
        let mut v: Vec<&Module> = Vec::new();
        if self.kind == ProcKind::System {
            return v;
        }
        if let Some(e) = &self.exe {
            v.push(e);
        }
        v.push(&l.ntdll);
        if self.is_wow64() {
            if let Some(w) = &l.wow64 {
                v.extend(w.iter());
            }
            // WoW64 processes also map the 64-bit win32u for wow64win.
            v.push(&l.win32u);
            return v;
        }
        v.push(&l.kernel32);
        v.push(&l.kernelbase);
        if matches!(
            self.kind,
            ProcKind::Gui | ProcKind::JitHost | ProcKind::Implant
        ) {
            v.push(&l.win32u);
            v.push(&l.user32);
            v.push(&l.gdi32);
        }
        if self.kind == ProcKind::JitHost {
            v.push(&l.clr);
        }
        v.extend(l.others.iter().take(2 + (self.pid as usize / 4) % 4));
        v
    }
}
