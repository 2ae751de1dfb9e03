//! The traced host's binaries, supplied offline with `--images DIR` (a copy
//! of its `System32`, `SysWOW64`, ...): the bytes around a return address,
//! whether a `call` precedes it, and whether it points at a gadget.
//!
//! A module of the trace is tied to a file by file name, `SizeOfImage` and
//! `TimeDateStamp` (all three are in the kernel's Image events), as
//! `--system-dlls` does, so a file from another build is never read for a
//! module it is not. The directory is indexed from the headers only (the
//! first 64 KiB of each file); a file is read whole the first time a module
//! matches it, once.
//!
//! Nothing here trusts the files: a hostile or truncated PE gives an error
//! for that file or "not done" for the address, never a panic and never a
//! check that passed. PE layout:
//! [PE Format](https://learn.microsoft.com/windows/win32/debug/pe-format).

#![forbid(unsafe_code)]

pub mod disk;
pub mod pdata;
pub mod x86;

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use object::pe::{ImageNtHeaders32, ImageNtHeaders64};
use object::read::pe::{ImageNtHeaders, PeFile};
use object::{LittleEndian as LE, Object};
use sha2::{Digest, Sha256};

pub use pdata::FunctionStart;
pub use x86::{Bits, CallForm, Gadget, Transition};

/// Bytes kept before and after a return address as evidence (Elastic's
/// `callsite_leading_bytes` / `callsite_trailing_bytes`).
pub const EVIDENCE_BYTES: usize = 16;

/// Files larger than this are skipped (ntoskrnl.exe is ~11 MiB; no system
/// binary comes near).
pub const MAX_FILE: u64 = 256 << 20;

/// Files looked at in one directory tree at most, and its depth.
pub const MAX_FILES: usize = 200_000;
const MAX_DEPTH: usize = 6;

/// What a module is known by: the kernel's Image event carries all three.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    /// Lower-case file name, e.g. `ntdll.dll`.
    pub name: String,
    pub size_of_image: u32,
    pub time_date_stamp: u32,
}

/// One file of the directory, indexed by its headers.
#[derive(Debug)]
pub struct ImageFile {
    pub identity: Identity,
    pub path: PathBuf,
    pub bits: Bits,
    loaded: OnceLock<Result<Arc<Image>, String>>,
}

/// A file read and parsed: its sections' file-backed bytes and exports.
#[derive(Debug)]
pub struct Image {
    pub bits: Bits,
    /// SHA-256 of the whole file, computed on first use.
    sha256: OnceLock<[u8; 32]>,
    sha256_hex: OnceLock<String>,
    bytes: Vec<u8>,
    sections: Vec<Section>,
    /// Export RVA -> name.
    exports: BTreeMap<u32, Arc<str>>,
    /// RVAs of `KiUserExceptionDispatcher` (see [`export_span`]), found once.
    exception_dispatcher: Option<(u32, u32)>,
    /// The x64 exception directory (`.pdata`), if present and sane.
    functions: Option<pdata::Table>,
}

#[derive(Debug, Clone, Copy)]
struct Section {
    rva: u32,
    /// File-backed bytes of the section: `bytes[file..file + len]` holds
    /// RVAs `rva..rva + len`.
    file: usize,
    len: u32,
    executable: bool,
}

/// All files of `--images DIR`.
#[derive(Debug, Default)]
pub struct Images {
    pub files: Vec<ImageFile>,
    by_identity: HashMap<Identity, usize>,
    by_pe: HashMap<(u32, u32), Vec<usize>>,
    /// Files skipped while indexing, with why (not PE, unreadable, too big).
    pub skipped: Vec<(PathBuf, String)>,
    /// Answers of [`Images::frame`] by (file, RVA): stacks repeat, so most
    /// frames are looked up, not decoded again. Cleared when full.
    memo: Mutex<HashMap<(u32, u32), FrameFacts, BuildHasherDefault<MulHasher>>>,
    /// `live`: the host's own module files ([`disk`]) instead of a
    /// directory; indices are its slots.
    disk: Option<disk::DiskFiles>,
}

/// A multiply-rotate hasher for the memo's integer keys, as the engine's
/// own tables use (SipHash cost 4% of an `--images` analysis). The memo is
/// bounded ([`MEMO_MAX`]) and a hostile trace's keys are RVAs inside files
/// the user supplied.
#[derive(Default)]
pub struct MulHasher(u64);

impl Hasher for MulHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

/// Entries [`Images::frame`] keeps at most (about 16 MB).
const MEMO_MAX: usize = 1 << 20;

/// The ntdll export the kernel starts user-mode exception dispatch at
/// (the context of the faulting instruction is on the stack below it).
pub const EXCEPTION_DISPATCHER: &str = "KiUserExceptionDispatcher";

/// The RVAs `[start, end)` an export covers by the "nearest export at or
/// below" reading that [`FrameFacts::exception_dispatcher`] uses: from the
/// export to the next export's RVA (`u32::MAX` if it is the last). `None`
/// if no export has that name.
pub fn export_span(exports: &BTreeMap<u32, Arc<str>>, name: &str) -> Option<(u32, u32)> {
    let (&start, _) = exports.iter().find(|(_, n)| &***n == name)?;
    let end = exports
        .range(start.saturating_add(1)..)
        .next()
        .map_or(u32::MAX, |(&a, _)| a);
    Some((start, end))
}

/// What one return address's bytes say ([`Images::frame`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameFacts {
    pub preceded: Preceded,
    /// The nearest export at or below is `KiUserExceptionDispatcher`.
    pub exception_dispatcher: bool,
}

impl Images {
    /// Indexes every PE file under `dir` (sub-directories included).
    pub fn load_dir(dir: &Path) -> Result<Images, String> {
        let mut images = Images::default();
        let mut stack = vec![(dir.to_path_buf(), 0usize)];
        let mut seen = 0usize;
        while let Some((d, depth)) = stack.pop() {
            let rd = std::fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))?;
            let mut entries: Vec<_> = rd.flatten().collect();
            entries.sort_by_key(|e| e.file_name());
            for entry in entries {
                seen += 1;
                if seen > MAX_FILES {
                    return Err(format!(
                        "{}: more than {MAX_FILES} files; point --images at the copied System32-like folders only",
                        dir.display()
                    ));
                }
                let path = entry.path();
                let Ok(ft) = entry.file_type() else { continue };
                if ft.is_dir() {
                    if depth < MAX_DEPTH {
                        stack.push((path, depth + 1));
                    }
                    continue;
                }
                match index_file(&path) {
                    Ok(Some(f)) => images.add(f),
                    Ok(None) => {}
                    Err(e) => images.skipped.push((path, e)),
                }
            }
        }
        if images.files.is_empty() {
            return Err(format!(
                "{}: no PE image found; copy the traced machine's C:\\Windows\\System32 (and SysWOW64) there, or leave out --images",
                dir.display()
            ));
        }
        Ok(images)
    }

    /// The running host's module files (`live`): modules are matched by
    /// the path their Image event names, read from disk when first needed.
    pub fn from_disk(d: disk::DiskFiles) -> Images {
        Images {
            disk: Some(d),
            ..Images::default()
        }
    }

    /// The host's module files, in `live`.
    pub fn disk(&self) -> Option<&disk::DiskFiles> {
        self.disk.as_ref()
    }

    /// The file of a module as its Image event gives it: in `live` the
    /// file at `nt_path` (checked against the size and timestamp when
    /// read), else [`Images::find`] by its file name.
    pub fn find_module(
        &self,
        nt_path: &str,
        file_name: &str,
        size_of_image: u64,
        time_date_stamp: u32,
    ) -> Option<usize> {
        match &self.disk {
            Some(d) => d.register(nt_path, size_of_image, time_date_stamp),
            None => self.find(file_name, size_of_image, time_date_stamp),
        }
    }

    /// The trusted Authenticode signer (subject CN) of module `i`'s file:
    /// `live` only (offline there is no file whose signature could be
    /// verified).
    pub fn trusted_signer(&self, i: usize) -> Option<&str> {
        self.disk.as_ref()?.signature(i)?.trusted_subject()
    }

    fn add(&mut self, f: ImageFile) {
        let i = self.files.len();
        self.by_identity.entry(f.identity.clone()).or_insert(i);
        self.by_pe
            .entry((f.identity.size_of_image, f.identity.time_date_stamp))
            .or_default()
            .push(i);
        self.files.push(f);
    }

    /// Builds an index from in-memory files (tests, `synth`).
    pub fn from_files(files: Vec<(PathBuf, Vec<u8>)>) -> Images {
        let mut images = Images::default();
        for (path, bytes) in files {
            match header_identity(&path, &bytes) {
                Ok(Some((identity, bits))) => {
                    let f = ImageFile {
                        identity,
                        path,
                        bits,
                        loaded: OnceLock::new(),
                    };
                    let _ = f.loaded.set(Image::parse(bytes).map(Arc::new));
                    images.add(f);
                }
                Ok(None) => {}
                Err(e) => images.skipped.push((path, e)),
            }
        }
        images
    }

    /// The file of a trace module: same file name, `SizeOfImage` and
    /// `TimeDateStamp`.
    pub fn find(&self, file_name: &str, size_of_image: u64, time_date_stamp: u32) -> Option<usize> {
        let id = Identity {
            name: file_name.to_ascii_lowercase(),
            size_of_image: u32::try_from(size_of_image).ok()?,
            time_date_stamp,
        };
        self.by_identity.get(&id).copied()
    }

    /// Files with this PE identity whatever their name (a renamed copy of
    /// a system DLL has the original's size and timestamp).
    pub fn find_by_pe(&self, size_of_image: u64, time_date_stamp: u32) -> &[usize] {
        u32::try_from(size_of_image)
            .ok()
            .and_then(|s| self.by_pe.get(&(s, time_date_stamp)))
            .map_or(&[], Vec::as_slice)
    }

    /// The SHA-256 (hex) of file `i`, if it can be read (kept once made).
    pub fn sha256_hex(&self, i: usize) -> Option<&str> {
        if let Some(d) = &self.disk {
            return d.sha256_hex(i);
        }
        let f = self.files.get(i)?;
        self.image(i).ok()?;
        let img = f.loaded.get()?.as_ref().ok()?;
        Some(img.sha256_hex_cached())
    }

    /// [`Image::preceded`] for RVA `rva` of file `i`, and whether it lies
    /// in `KiUserExceptionDispatcher` (by exports), memoised. `None` if the
    /// file cannot be read.
    pub fn frame(&self, i: usize, rva: u32) -> Option<FrameFacts> {
        let key = (u32::try_from(i).ok()?, rva);
        if let Ok(m) = self.memo.lock() {
            if let Some(&f) = m.get(&key) {
                return Some(f);
            }
        }
        // A module file that cannot serve answers at once (per frame, no
        // error text made).
        if self.disk.as_ref().is_some_and(|d| d.failure(i).is_some()) {
            return None;
        }
        let img = self.image(i).ok()?;
        let f = FrameFacts {
            preceded: img.preceded(rva),
            exception_dispatcher: img
                .export_near(rva)
                .is_some_and(|(n, _)| &**n == EXCEPTION_DISPATCHER),
        };
        if let Ok(mut m) = self.memo.lock() {
            if m.len() >= MEMO_MAX {
                m.clear();
            }
            m.insert(key, f);
        }
        Some(f)
    }

    /// The parsed file `i` (read on first use).
    pub fn image(&self, i: usize) -> Result<Arc<Image>, String> {
        if let Some(d) = &self.disk {
            return d.image(i);
        }
        let f = self.files.get(i).ok_or("no such image")?;
        f.loaded
            .get_or_init(|| {
                let len = std::fs::metadata(&f.path)
                    .map_err(|e| format!("{}: {e}", f.path.display()))?
                    .len();
                if len > MAX_FILE {
                    return Err(format!(
                        "{}: larger than {MAX_FILE} bytes",
                        f.path.display()
                    ));
                }
                let bytes =
                    std::fs::read(&f.path).map_err(|e| format!("{}: {e}", f.path.display()))?;
                let img = Image::parse(bytes).map_err(|e| format!("{}: {e}", f.path.display()))?;
                if img.identity_mismatch(&f.identity) {
                    return Err(format!(
                        "{}: changed since it was indexed",
                        f.path.display()
                    ));
                }
                Ok(Arc::new(img))
            })
            .clone()
    }
}

/// Reads the first 64 KiB of a file and indexes it if it is a PE image.
fn index_file(path: &Path) -> Result<Option<ImageFile>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut head = Vec::with_capacity(4096);
    file.take(64 << 10)
        .read_to_end(&mut head)
        .map_err(|e| e.to_string())?;
    Ok(
        header_identity(path, &head)?.map(|(identity, bits)| ImageFile {
            identity,
            path: path.to_path_buf(),
            bits,
            loaded: OnceLock::new(),
        }),
    )
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(o..o.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(o..o.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// Identity from the headers: `Ok(None)` for files that are not PE at all
/// (no `MZ`), an error for a damaged PE header.
fn header_identity(path: &Path, head: &[u8]) -> Result<Option<(Identity, Bits)>, String> {
    if head.get(..2) != Some(b"MZ") {
        return Ok(None);
    }
    let pe = u32_at(head, 0x3C).ok_or("truncated DOS header")? as usize;
    if head.get(pe..pe.saturating_add(4)) != Some(b"PE\0\0") {
        return Err(format!("no PE signature at offset {pe:#x}"));
    }
    let machine = u16_at(head, pe + 4).ok_or("truncated COFF header")?;
    let tds = u32_at(head, pe + 8).ok_or("truncated COFF header")?;
    let magic = u16_at(head, pe + 24).ok_or("truncated optional header")?;
    let bits = match (magic, machine) {
        (0x20B, 0x8664) => Bits::B64,
        (0x10B, 0x014C) => Bits::B32,
        _ => {
            return Err(format!(
            "machine {machine:#x} / optional header {magic:#x}: only x86 and x64 images are used"
        ))
        }
    };
    let size = u32_at(head, pe + 24 + 56).ok_or("truncated optional header")?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    Ok(Some((
        Identity {
            name,
            size_of_image: size,
            time_date_stamp: tds,
        },
        bits,
    )))
}

/// What the bytes at and before a return address say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReturnCheck {
    pub preceded: Preceded,
    /// Gadget shape at the return address, if any.
    pub gadget: Option<Gadget>,
    /// Up to [`EVIDENCE_BYTES`] bytes before and from the return address.
    pub leading: Vec<u8>,
    pub trailing: Vec<u8>,
}

/// What precedes a return address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preceded {
    /// A call instruction ends right at it (form, length).
    Call(CallForm, u8),
    /// A kernel transition ends right at it (an interrupted context).
    Transition(Transition),
    /// Neither: no call can have pushed this address.
    Nothing,
    /// The bytes are not available: the check was not done.
    NotDone(NotDone),
}

/// Why a check could not be done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotDone {
    /// The address is not in a section's file-backed bytes.
    NoBytes,
    /// The address is in a section that is not executable.
    NotCode,
}

impl NotDone {
    pub fn as_str(self) -> &'static str {
        match self {
            NotDone::NoBytes => "no_bytes",
            NotDone::NotCode => "not_code",
        }
    }
}

impl Image {
    /// Parses a PE32 or PE32+ image (x86 or x64).
    pub fn parse(bytes: Vec<u8>) -> Result<Image, String> {
        let (bits, sections, exports, exception) =
            match object::FileKind::parse(&*bytes).map_err(|e| e.to_string())? {
                object::FileKind::Pe64 => {
                    let (s, e, x) = layout::<ImageNtHeaders64>(&bytes)?;
                    (Bits::B64, s, e, x)
                }
                object::FileKind::Pe32 => {
                    let (s, e, _) = layout::<ImageNtHeaders32>(&bytes)?;
                    // PE32 images have no function table (x86 unwinds by
                    // frame pointers and SEH records on the stack).
                    (Bits::B32, s, e, None)
                }
                k => return Err(format!("not a PE image ({k:?})")),
            };
        let exception_dispatcher = export_span(&exports, EXCEPTION_DISPATCHER);
        let mut img = Image {
            bits,
            sha256: OnceLock::new(),
            sha256_hex: OnceLock::new(),
            bytes,
            sections,
            exports,
            exception_dispatcher,
            functions: None,
        };
        img.functions = exception.and_then(|(rva, size)| pdata::Table::locate(&img, rva, size));
        Ok(img)
    }

    /// The RVAs `[start, end)` of `ntdll!KiUserExceptionDispatcher`, if
    /// this file exports it ([`export_span`]).
    pub fn exception_dispatcher(&self) -> Option<(u32, u32)> {
        self.exception_dispatcher
    }

    fn identity_mismatch(&self, id: &Identity) -> bool {
        header_identity(Path::new(&id.name), &self.bytes)
            .ok()
            .flatten()
            .is_none_or(|(i, _)| i != *id)
    }

    /// SHA-256 of the whole file (Elastic's `hash.sha256` of a module).
    pub fn sha256(&self) -> &[u8; 32] {
        self.sha256
            .get_or_init(|| Sha256::digest(&self.bytes).into())
    }

    /// [`Image::sha256`] as lower-case hex.
    pub fn sha256_hex(&self) -> String {
        self.sha256_hex_cached().to_string()
    }

    /// [`Image::sha256_hex`], kept once made.
    pub fn sha256_hex_cached(&self) -> &str {
        self.sha256_hex
            .get_or_init(|| self.sha256().iter().map(|b| format!("{b:02x}")).collect())
    }

    fn section(&self, rva: u32) -> Option<&Section> {
        self.sections
            .iter()
            .find(|s| rva >= s.rva && rva - s.rva < s.len)
    }

    /// File-backed bytes from `rva`, at most `len`, within one section.
    pub fn bytes_at(&self, rva: u32, len: usize) -> Option<&[u8]> {
        let s = self.section(rva)?;
        let off = s.file + (rva - s.rva) as usize;
        let avail = (s.len - (rva - s.rva)) as usize;
        self.bytes.get(off..off + avail.min(len))
    }

    /// File-backed bytes before `rva`, at most `len`, within the section
    /// holding `rva - 1` (code does not run across sections).
    pub fn bytes_before(&self, rva: u32, len: usize) -> Option<&[u8]> {
        let last = rva.checked_sub(1)?;
        let s = self.section(last)?;
        let end = s.file + (rva - s.rva) as usize;
        let avail = (rva - s.rva) as usize;
        self.bytes.get(end - avail.min(len)..end)
    }

    /// Whether a call (or a kernel transition) precedes the return address
    /// at `rva` (no allocation: the per-frame check).
    pub fn preceded(&self, rva: u32) -> Preceded {
        let leading = self.bytes_before(rva, x86::MAX_INSN).unwrap_or(&[]);
        match self.section(rva.wrapping_sub(1)) {
            None => Preceded::NotDone(NotDone::NoBytes),
            Some(s) if !s.executable => Preceded::NotDone(NotDone::NotCode),
            Some(_) => {
                if let Some((f, n)) = x86::call_ending_at(leading, self.bits) {
                    Preceded::Call(f, n as u8)
                } else if let Some(t) = x86::transition_ending_at(leading) {
                    Preceded::Transition(t)
                } else {
                    Preceded::Nothing
                }
            }
        }
    }

    /// RVA ranges (start, length) of the executable sections' file-backed
    /// bytes: where [`Image::preceded`] and [`Image::gadget`] read.
    pub fn code_ranges(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.sections
            .iter()
            .filter(|s| s.executable)
            .map(|s| (s.rva, s.len))
    }

    /// The gadget shape at `rva`, if any.
    pub fn gadget(&self, rva: u32) -> Option<Gadget> {
        x86::gadget_at(self.bytes_at(rva, x86::MAX_INSN)?, self.bits)
    }

    /// [`Image::preceded`] and [`Image::gadget`] with the bytes around
    /// `rva` as evidence.
    pub fn check_return(&self, rva: u32) -> ReturnCheck {
        ReturnCheck {
            preceded: self.preceded(rva),
            gadget: self.gadget(rva),
            leading: self
                .bytes_before(rva, EVIDENCE_BYTES)
                .unwrap_or(&[])
                .to_vec(),
            trailing: self.bytes_at(rva, EVIDENCE_BYTES).unwrap_or(&[]).to_vec(),
        }
    }

    /// Lower-case hex of the bytes before (`leading`) or from `rva`.
    pub fn hex_around(&self, rva: u32, leading: bool) -> String {
        let b = if leading {
            self.bytes_before(rva, EVIDENCE_BYTES)
        } else {
            self.bytes_at(rva, EVIDENCE_BYTES)
        };
        b.unwrap_or(&[])
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The export at exactly `rva`.
    pub fn export_at(&self, rva: u32) -> Option<&Arc<str>> {
        self.exports.get(&rva)
    }

    /// The start of the function holding `rva`, from the x64 exception
    /// directory (chained entries resolved to their primary function).
    /// [`FunctionStart::NoTable`] for PE32 images and images without one.
    pub fn function_start(&self, rva: u32) -> FunctionStart {
        match &self.functions {
            Some(t) => t.function_start(self, rva),
            None => FunctionStart::NoTable,
        }
    }

    /// Entries of the exception directory (0 without one).
    pub fn function_count(&self) -> usize {
        self.functions.as_ref().map_or(0, |t| t.len())
    }

    /// The nearest export at or below `rva`, with the distance from it.
    pub fn export_near(&self, rva: u32) -> Option<(&Arc<str>, u32)> {
        let (&a, n) = self.exports.range(..=rva).next_back()?;
        Some((n, rva - a))
    }
}

/// Sections, exports, and the exception directory's (RVA, size) if any.
type Layout = (Vec<Section>, BTreeMap<u32, Arc<str>>, Option<(u32, u32)>);

fn layout<H: ImageNtHeaders>(bytes: &[u8]) -> Result<Layout, String> {
    let pe = PeFile::<H>::parse(bytes).map_err(|e| e.to_string())?;
    let base = pe.relative_address_base();
    let mut sections = Vec::new();
    for s in pe.section_table().iter() {
        let rva = s.virtual_address.get(LE);
        let vsize = s.virtual_size.get(LE);
        let (file, raw) = s.pe_file_range();
        let file = file as usize;
        // File-backed part, clipped to the file and to the virtual size.
        let in_file = bytes.len().saturating_sub(file) as u64;
        let len = u64::from(raw).min(in_file).min(if vsize == 0 {
            u64::from(raw)
        } else {
            u64::from(vsize)
        });
        let len = u32::try_from(len).unwrap_or(0);
        if len == 0 || rva.checked_add(len).is_none() {
            continue;
        }
        let ch = s.characteristics.get(LE);
        sections.push(Section {
            rva,
            file,
            len,
            executable: ch & (object::pe::IMAGE_SCN_MEM_EXECUTE | object::pe::IMAGE_SCN_CNT_CODE)
                != 0,
        });
    }
    let mut exports = BTreeMap::new();
    // A damaged export table leaves the image usable for byte checks.
    if let Ok(list) = pe.exports() {
        for e in list {
            let Ok(n) = std::str::from_utf8(e.name()) else {
                continue;
            };
            let Some(rva) = e
                .address()
                .checked_sub(base)
                .and_then(|r| u32::try_from(r).ok())
            else {
                continue;
            };
            exports.entry(rva).or_insert_with(|| Arc::from(n));
        }
    }
    let exception = pe
        .data_directory(object::pe::IMAGE_DIRECTORY_ENTRY_EXCEPTION)
        .map(|d| (d.virtual_address.get(LE), d.size.get(LE)))
        .filter(|&(rva, size)| rva != 0 && size != 0);
    Ok((sections, exports, exception))
}
