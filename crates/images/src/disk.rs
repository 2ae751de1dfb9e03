//! `live`: the module files on disk as the byte source of rule 9 and of
//! module hashes, instead of a copied directory (`--images DIR`).
//!
//! An Image event names its file by NT path
//! (`\Device\HarddiskVolume3\Windows\System32\ntdll.dll`). [`DeviceMap`]
//! turns that into a path the process can open (`C:\Windows\...`) from the
//! drive letters' device names (on Windows from `QueryDosDeviceW`, the only
//! part that is FFI). A module gets a slot per (NT path, `SizeOfImage`,
//! `TimeDateStamp`) when it loads, without I/O; its file is read lazily,
//! the first time the engine needs its bytes, hash or signer, on the
//! engine thread (never on the ETW callback thread, which only copies
//! records into the ring). The file is used only if its own headers carry
//! the event's `SizeOfImage` and `TimeDateStamp`: a file replaced since the
//! load is reported as not matched and never read for that module.
//!
//! Memory is bounded twice: at most [`MAX_SLOTS`] modules are tracked (more
//! are counted and left without bytes), and the parsed files kept at once
//! are bounded in bytes (`--module-cache-mb`); past it the least recently
//! used file is dropped and read again if needed (and checked again).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::{header_identity, Identity, Image, MAX_FILE};

/// Modules tracked at most (one slot per NT path, size and timestamp).
pub const MAX_SLOTS: usize = CHUNK * CHUNKS;
const CHUNK: usize = 1024;
const CHUNKS: usize = 64;

/// Default bound of the parsed files kept at once.
pub const DEFAULT_CACHE_BYTES: usize = 128 << 20;

/// Drive letters to NT device names, for turning an Image event's path
/// into one this process can open.
#[derive(Debug, Clone, Default)]
pub struct DeviceMap {
    /// (lower-case device name without a trailing `\`, drive such as `C:`),
    /// longest device first.
    devices: Vec<(String, String)>,
    /// `%SystemRoot%` (`C:\Windows`), for `\SystemRoot\...` paths.
    system_root: Option<String>,
    /// Drives left out, with why (network, substituted).
    pub skipped: Vec<(String, String)>,
}

/// Why an NT path has no local path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unmapped {
    /// No drive letter names the device (a volume mounted in a folder,
    /// a network path, an unknown device).
    NoDrive(String),
    /// Not an absolute NT or DOS path.
    NotAbsolute,
}

impl std::fmt::Display for Unmapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unmapped::NoDrive(d) => write!(f, "no local drive letter for {d}"),
            Unmapped::NotAbsolute => f.write_str("not an absolute path"),
        }
    }
}

impl DeviceMap {
    /// From `(drive, target)` pairs as `QueryDosDeviceW` gives them
    /// (`("C:", "\Device\HarddiskVolume3")`). Network drives
    /// (`\Device\LanmanRedirector\...`, `\Device\Mup\...`) are left out:
    /// reading a module over the network could stall the engine for
    /// seconds. So are substituted drives (targets starting `\??\`): their
    /// files are reached through the drive they point at. The first drive
    /// of a device wins (drives come in letter order).
    pub fn new<I: IntoIterator<Item = (String, String)>>(
        drives: I,
        system_root: Option<String>,
    ) -> DeviceMap {
        let mut m = DeviceMap {
            system_root: system_root.map(|r| r.trim_end_matches('\\').to_string()),
            ..DeviceMap::default()
        };
        for (drive, target) in drives {
            let t = target.trim_end_matches('\\').to_ascii_lowercase();
            let why = if t.starts_with("\\device\\lanmanredirector")
                || t.starts_with("\\device\\mup")
                || t.starts_with("\\device\\webdavredirector")
                || t.contains("redirector")
            {
                Some("network drive")
            } else if t.starts_with("\\??\\") {
                Some("substituted drive")
            } else if !t.starts_with("\\device\\") {
                Some("not a device")
            } else {
                None
            };
            if let Some(why) = why {
                m.skipped.push((drive, format!("{target}: {why}")));
                continue;
            }
            if m.devices.iter().any(|(d, _)| *d == t) {
                continue;
            }
            m.devices.push((t, drive));
        }
        m.devices.sort_by_key(|d| std::cmp::Reverse(d.0.len()));
        m
    }

    /// The drives mapped, `(drive, device)` in letter order.
    pub fn drives(&self) -> Vec<(&str, &str)> {
        let mut v: Vec<_> = self
            .devices
            .iter()
            .map(|(d, l)| (l.as_str(), d.as_str()))
            .collect();
        v.sort();
        v
    }

    /// The local path of an Image event's file name: `\Device\X\rest` with
    /// X a mapped device, `\SystemRoot\rest`, `\??\C:\rest`, `\\?\C:\rest`
    /// or `C:\rest`. A device matches only whole (`HarddiskVolume1` is not
    /// a prefix of `HarddiskVolume10`).
    pub fn to_dos(&self, nt: &str) -> Result<String, Unmapped> {
        for prefix in ["\\??\\", "\\\\?\\"] {
            if let Some(rest) = nt.strip_prefix(prefix) {
                return dos_absolute(rest).ok_or(Unmapped::NotAbsolute);
            }
        }
        if let Some(p) = dos_absolute(nt) {
            return Ok(p);
        }
        let lower = nt.to_ascii_lowercase();
        if let Some(rest) = lower.strip_prefix("\\systemroot\\") {
            let root = self
                .system_root
                .as_ref()
                .ok_or_else(|| Unmapped::NoDrive("\\SystemRoot".into()))?;
            return Ok(format!("{root}\\{}", &nt[nt.len() - rest.len()..]));
        }
        for (dev, drive) in &self.devices {
            if let Some(rest) = lower.strip_prefix(dev.as_str()) {
                if rest.starts_with('\\') {
                    return Ok(format!("{drive}{}", &nt[nt.len() - rest.len()..]));
                }
            }
        }
        if !nt.starts_with('\\') {
            return Err(Unmapped::NotAbsolute);
        }
        // Name the device part: `\Device\HarddiskVolume9`.
        let dev: String = {
            let mut parts = nt.splitn(4, '\\');
            let _ = parts.next();
            let a = parts.next().unwrap_or("");
            let b = parts.next().unwrap_or("");
            format!("\\{a}\\{b}")
        };
        Err(Unmapped::NoDrive(dev))
    }
}

/// A mapped path as this platform opens it: on Windows as is; elsewhere
/// (tests) with `/` separators, so a "drive" can be a directory.
fn local_path(p: String) -> PathBuf {
    if cfg!(windows) {
        PathBuf::from(p)
    } else {
        PathBuf::from(p.replace('\\', "/"))
    }
}

/// `C:\rest` as is (a letter, a colon, a backslash).
fn dos_absolute(p: &str) -> Option<String> {
    let b = p.as_bytes();
    (b.len() >= 3 && b[0].is_ascii_alphabetic() && b[1] == b':' && b[2] == b'\\')
        .then(|| p.to_string())
}

/// The Authenticode signature of a module file, as the platform checked it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// The signer certificate's subject common name, when one was found
    /// (even if the signature did not verify).
    pub subject: Option<String>,
    /// The signature verified and chains to a trusted root
    /// (`WinVerifyTrust` returned 0).
    pub trusted: bool,
    /// What the check said (`trusted`, `untrusted root 0x800b0109`,
    /// `not signed (embedded) 0x800b0100`, ...).
    pub status: String,
}

impl Signature {
    /// The subject an allowlist `signer` entry may match: only a trusted
    /// signature's.
    pub fn trusted_subject(&self) -> Option<&str> {
        self.subject.as_deref().filter(|_| self.trusted)
    }
}

/// Verifies a module file's signature. On Windows, `WinVerifyTrust` on the
/// open file (the same handle whose bytes were read and checked).
pub trait SignatureCheck: Send + Sync {
    fn check(&self, file: &std::fs::File, path: &Path) -> Signature;
}

/// One tracked module.
#[derive(Debug)]
struct Slot {
    nt_path: Box<str>,
    identity: Identity,
    /// Local path, or why there is none.
    local: Result<PathBuf, String>,
    /// Set once the file is known not to serve (missing, not PE, too big,
    /// another build): never read again.
    failed: OnceLock<String>,
    sha256: OnceLock<Box<str>>,
    signature: OnceLock<Signature>,
}

/// Counters of [`DiskFiles`] (reported at the end of a live run).
#[derive(Debug, Default)]
pub struct DiskStats {
    pub slots: AtomicU64,
    pub untracked: AtomicU64,
    pub reads: AtomicU64,
    pub bytes_read: AtomicU64,
    pub unmapped: AtomicU64,
    pub unreadable: AtomicU64,
    /// The file's `SizeOfImage`/`TimeDateStamp` differ from the event's.
    pub mismatched: AtomicU64,
    pub evictions: AtomicU64,
    pub signatures: AtomicU64,
}

#[derive(Debug, Default)]
struct Cache {
    /// slot -> (image, bytes, last use)
    files: HashMap<usize, (Arc<Image>, usize, u64)>,
    bytes: usize,
    tick: u64,
}

/// (lower-case NT path, `SizeOfImage`, `TimeDateStamp`)
type SlotKey = (Box<str>, u32, u32);
type Chunk = Box<[OnceLock<Slot>]>;

/// The module files of the running host (see the module docs).
pub struct DiskFiles {
    map: DeviceMap,
    by_key: Mutex<HashMap<SlotKey, usize>>,
    /// Lower-case NT path -> its latest slot.
    by_path: Mutex<HashMap<Box<str>, usize>>,
    next: Mutex<usize>,
    /// Append-only slots in chunks allocated on first use, so a slot's
    /// hash and signature can be lent out while others are added.
    chunks: Box<[OnceLock<Chunk>]>,
    cache: Mutex<Cache>,
    max_bytes: usize,
    signer: Option<Arc<dyn SignatureCheck>>,
    pub stats: DiskStats,
}

impl std::fmt::Debug for DiskFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskFiles")
            .field("map", &self.map)
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

impl DiskFiles {
    /// `max_bytes` bounds the parsed files kept at once; `signer` checks
    /// signatures (none: every signer lookup answers "not checked").
    pub fn new(
        map: DeviceMap,
        max_bytes: usize,
        signer: Option<Arc<dyn SignatureCheck>>,
    ) -> DiskFiles {
        DiskFiles {
            map,
            by_key: Mutex::new(HashMap::new()),
            by_path: Mutex::new(HashMap::new()),
            next: Mutex::new(0),
            chunks: (0..CHUNKS).map(|_| OnceLock::new()).collect(),
            cache: Mutex::new(Cache::default()),
            max_bytes,
            signer,
            stats: DiskStats::default(),
        }
    }

    pub fn device_map(&self) -> &DeviceMap {
        &self.map
    }

    fn slot(&self, i: usize) -> Option<&Slot> {
        self.chunks.get(i / CHUNK)?.get()?.get(i % CHUNK)?.get()
    }

    /// The slot of a module as its Image event names it (no I/O). `None`
    /// past [`MAX_SLOTS`] modules (counted as untracked) and for a path with
    /// no local drive (counted; such a module never has bytes, so the
    /// engine treats it as it treats a module without a file).
    pub fn register(
        &self,
        nt_path: &str,
        size_of_image: u64,
        time_date_stamp: u32,
    ) -> Option<usize> {
        let i = self.slot_of(nt_path, size_of_image, time_date_stamp)?;
        self.slot(i)?.local.is_ok().then_some(i)
    }

    fn slot_of(&self, nt_path: &str, size_of_image: u64, time_date_stamp: u32) -> Option<usize> {
        let size = u32::try_from(size_of_image).ok()?;
        let key: SlotKey = (nt_path.to_ascii_lowercase().into(), size, time_date_stamp);
        let mut by_key = self.by_key.lock().ok()?;
        if let Some(&i) = by_key.get(&key) {
            return Some(i);
        }
        let mut next = self.next.lock().ok()?;
        let i = *next;
        if i >= MAX_SLOTS {
            self.stats.untracked.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let chunk =
            self.chunks[i / CHUNK].get_or_init(|| (0..CHUNK).map(|_| OnceLock::new()).collect());
        let name = nt_path
            .rsplit(['\\', '/'])
            .next()
            .unwrap_or(nt_path)
            .to_ascii_lowercase();
        let local = self.map.to_dos(nt_path).map(local_path).map_err(|e| {
            self.stats.unmapped.fetch_add(1, Ordering::Relaxed);
            e.to_string()
        });
        let _ = chunk[i % CHUNK].set(Slot {
            nt_path: nt_path.into(),
            identity: Identity {
                name,
                size_of_image: size,
                time_date_stamp,
            },
            local,
            failed: OnceLock::new(),
            sha256: OnceLock::new(),
            signature: OnceLock::new(),
        });
        *next += 1;
        if let Ok(mut p) = self.by_path.lock() {
            p.insert(key.0.clone(), i);
        }
        by_key.insert(key, i);
        self.stats.slots.fetch_add(1, Ordering::Relaxed);
        Some(i)
    }

    /// The NT path and local path of slot `i`.
    pub fn paths(&self, i: usize) -> Option<(&str, Result<&Path, &str>)> {
        let s = self.slot(i)?;
        Some((&s.nt_path, s.local.as_deref().map_err(String::as_str)))
    }

    /// The parsed file of slot `i`: from the cache, or read (once per
    /// eviction) and checked against the module's identity.
    pub fn image(&self, i: usize) -> Result<Arc<Image>, String> {
        let s = self.slot(i).ok_or("no such module")?;
        if let Some(e) = s.failed.get() {
            return Err(e.clone());
        }
        if let Ok(mut c) = self.cache.lock() {
            c.tick += 1;
            let t = c.tick;
            if let Some(e) = c.files.get_mut(&i) {
                e.2 = t;
                return Ok(Arc::clone(&e.0));
            }
        }
        let (img, len) = match self.read(s, false) {
            Ok((img, len, _)) => (img, len),
            Err(e) => {
                let _ = s.failed.set(e.clone());
                return Err(e);
            }
        };
        let img = Arc::new(img);
        if let Ok(mut c) = self.cache.lock() {
            while c.bytes + len > self.max_bytes && !c.files.is_empty() {
                let Some((&old, _)) = c.files.iter().min_by_key(|(_, e)| e.2) else {
                    break;
                };
                if let Some(e) = c.files.remove(&old) {
                    c.bytes -= e.1;
                    self.stats.evictions.fetch_add(1, Ordering::Relaxed);
                }
            }
            if len <= self.max_bytes {
                c.tick += 1;
                let t = c.tick;
                c.bytes += len;
                c.files.insert(i, (Arc::clone(&img), len, t));
            }
        }
        Ok(img)
    }

    /// Bytes of the parsed files held now.
    pub fn cached_bytes(&self) -> usize {
        self.cache.lock().map_or(0, |c| c.bytes)
    }

    /// Reads slot `s`'s file (bounded, PE only) and checks its identity;
    /// with `sign`, also checks its signature on the same open file.
    fn read(&self, s: &Slot, sign: bool) -> Result<(Image, usize, Option<Signature>), String> {
        use std::io::Read;
        let path = s
            .local
            .as_ref()
            .map_err(|e| format!("{}: {e}", s.nt_path))?;
        let fail = |e: String| {
            self.stats.unreadable.fetch_add(1, Ordering::Relaxed);
            format!("{}: {e}", path.display())
        };
        let file = open_shared_read(path).map_err(|e| fail(e.to_string()))?;
        let len = file.metadata().map_err(|e| fail(e.to_string()))?.len();
        if len > MAX_FILE {
            return Err(fail(format!("larger than {MAX_FILE} bytes")));
        }
        let mut bytes = Vec::with_capacity(len as usize);
        (&file)
            .take(MAX_FILE)
            .read_to_end(&mut bytes)
            .map_err(|e| fail(e.to_string()))?;
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes_read
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        match header_identity(Path::new(&s.identity.name), &bytes) {
            Ok(Some((id, _))) if id == s.identity => {}
            Ok(Some((id, _))) => {
                self.stats.mismatched.fetch_add(1, Ordering::Relaxed);
                return Err(format!(
                    "{}: not the loaded module (file: SizeOfImage {:#x}, TimeDateStamp {:#x}; loaded: {:#x}, {:#x}); replaced since it was loaded?",
                    path.display(),
                    id.size_of_image,
                    id.time_date_stamp,
                    s.identity.size_of_image,
                    s.identity.time_date_stamp
                ));
            }
            Ok(None) => return Err(fail("not a PE file".into())),
            Err(e) => return Err(fail(e)),
        }
        let len = bytes.len();
        let img = Image::parse(bytes).map_err(fail)?;
        let sig = match (&self.signer, sign) {
            (Some(c), true) => {
                self.stats.signatures.fetch_add(1, Ordering::Relaxed);
                Some(c.check(&file, path))
            }
            _ => None,
        };
        Ok((img, len, sig))
    }

    /// SHA-256 (hex) of slot `i`'s file, kept once made.
    pub fn sha256_hex(&self, i: usize) -> Option<&str> {
        let s = self.slot(i)?;
        if let Some(h) = s.sha256.get() {
            return Some(h);
        }
        if s.failed.get().is_some() {
            return None;
        }
        let img = self.image(i).ok()?;
        Some(s.sha256.get_or_init(|| img.sha256_hex().into()))
    }

    /// The signature of slot `i`'s file, checked once (on the file opened
    /// again, whose bytes must still be the module's and, if hashed
    /// before, hash the same). `None` without a checker or when the file
    /// does not serve.
    pub fn signature(&self, i: usize) -> Option<&Signature> {
        let s = self.slot(i)?;
        if let Some(g) = s.signature.get() {
            return Some(g);
        }
        self.signer.as_ref()?;
        if s.failed.get().is_some() {
            return None;
        }
        let (img, _, sig) = match self.read(s, true) {
            Ok(r) => r,
            Err(e) => {
                let _ = s.failed.set(e);
                return None;
            }
        };
        let sig = sig?;
        // The hash of the bytes whose signature was checked: the module's
        // hash from now on, or, if one was taken before, the same.
        let h = img.sha256_hex_cached();
        if **s.sha256.get_or_init(|| h.into()) != *h {
            let _ = s
                .failed
                .set(format!("{}: changed since it was first read", s.nt_path));
            self.stats.mismatched.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(s.signature.get_or_init(|| sig))
    }

    /// The signer of the module last loaded from `nt_path`, for the
    /// built-in Chromium allowlist's lookup: the subject of a trusted
    /// signature; for a file whose signature was checked but is not
    /// trusted (or absent), a text naming that, which matches no signer;
    /// `None` when nothing is known (no checker, file unreadable or of
    /// another build).
    pub fn signer_of_path(&self, nt_path: &str) -> Option<String> {
        let i = *self
            .by_path
            .lock()
            .ok()?
            .get(nt_path.to_ascii_lowercase().as_str())?;
        let sig = self.signature(i)?;
        Some(match sig.trusted_subject() {
            Some(s) => s.to_string(),
            None => format!(
                "(not a trusted signature: {}, {})",
                sig.subject.as_deref().unwrap_or("no signer"),
                sig.status
            ),
        })
    }

    /// Signatures checked so far: (NT path, signature), in slot order.
    pub fn signatures(&self) -> Vec<(&str, &Signature)> {
        let n = self.next.lock().map_or(0, |n| *n);
        (0..n)
            .filter_map(|i| {
                let s = self.slot(i)?;
                Some((&*s.nt_path, s.signature.get()?))
            })
            .collect()
    }

    /// Why slot `i` has no bytes, if it failed.
    pub fn failure(&self, i: usize) -> Option<&str> {
        self.slot(i)?.failed.get().map(String::as_str)
    }

    /// One line of counters for the end of a run.
    pub fn summary(&self) -> String {
        let st = &self.stats;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "module files: {} modules tracked ({} untracked), {} files read ({:.1} MB), {} without a local path, {} missing, unreadable or not PE, {} not matched (SizeOfImage/TimeDateStamp differ: replaced since loaded), {} evicted from the {} MiB cache, {} signatures checked",
            g(&st.slots),
            g(&st.untracked),
            g(&st.reads),
            g(&st.bytes_read) as f64 / 1e6,
            g(&st.unmapped),
            g(&st.unreadable),
            g(&st.mismatched),
            g(&st.evictions),
            self.max_bytes >> 20,
            g(&st.signatures),
        )
    }
}

/// Opens a file for reading while denying writers (Windows: share mode
/// read|delete), so the bytes read and the signature checked on the same
/// handle are one file's.
fn open_shared_read(path: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true);
    #[cfg(windows)]
    {
        use std::os::windows::fs::OpenOptionsExt;
        // FILE_SHARE_READ | FILE_SHARE_DELETE
        o.share_mode(0x1 | 0x4);
    }
    o.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> DeviceMap {
        DeviceMap::new(
            [
                ("C:", "\\Device\\HarddiskVolume3"),
                ("D:", "\\Device\\HarddiskVolume1"),
                ("E:", "\\Device\\HarddiskVolume10\\"),
                ("F:", "\\Device\\HarddiskVolume3"),
                ("S:", "\\??\\C:\\src"),
                (
                    "Z:",
                    "\\Device\\LanmanRedirector\\;Z:000000000001a2b3\\server\\share",
                ),
                ("Y:", "\\Device\\Mup\\;WebDavRedirector\\host\\dav"),
            ]
            .map(|(a, b)| (a.to_string(), b.to_string())),
            Some("C:\\Windows\\".into()),
        )
    }

    #[test]
    fn nt_paths_map_to_drive_letters() {
        let m = map();
        assert_eq!(
            m.to_dos("\\Device\\HarddiskVolume3\\Windows\\System32\\ntdll.dll"),
            Ok("C:\\Windows\\System32\\ntdll.dll".into())
        );
        // Case-insensitive device, the rest kept as logged.
        assert_eq!(
            m.to_dos("\\DEVICE\\harddiskvolume1\\Tools\\X.dll"),
            Ok("D:\\Tools\\X.dll".into())
        );
        // Volume10 is not Volume1 + "0...".
        assert_eq!(
            m.to_dos("\\Device\\HarddiskVolume10\\a.dll"),
            Ok("E:\\a.dll".into())
        );
        assert_eq!(
            m.to_dos("\\Device\\HarddiskVolume1x\\a.dll"),
            Err(Unmapped::NoDrive("\\Device\\HarddiskVolume1x".into()))
        );
        assert_eq!(
            m.to_dos("\\SystemRoot\\System32\\drivers\\a.sys"),
            Ok("C:\\Windows\\System32\\drivers\\a.sys".into())
        );
        assert_eq!(m.to_dos("\\??\\C:\\x\\y.dll"), Ok("C:\\x\\y.dll".into()));
        assert_eq!(m.to_dos("\\\\?\\C:\\x\\y.dll"), Ok("C:\\x\\y.dll".into()));
        assert_eq!(m.to_dos("C:\\x\\y.dll"), Ok("C:\\x\\y.dll".into()));
        assert_eq!(m.to_dos("y.dll"), Err(Unmapped::NotAbsolute));
        assert_eq!(m.to_dos("\\??\\y.dll"), Err(Unmapped::NotAbsolute));
        // The device itself, no file.
        assert!(m.to_dos("\\Device\\HarddiskVolume3").is_err());
    }

    #[test]
    fn network_and_substituted_drives_are_left_out() {
        let m = map();
        assert_eq!(
            m.drives(),
            vec![
                ("C:", "\\device\\harddiskvolume3"),
                ("D:", "\\device\\harddiskvolume1"),
                ("E:", "\\device\\harddiskvolume10"),
            ]
        );
        let skipped: Vec<&str> = m.skipped.iter().map(|(d, _)| d.as_str()).collect();
        assert_eq!(skipped, ["S:", "Z:", "Y:"]);
        assert!(matches!(
            m.to_dos("\\Device\\LanmanRedirector\\;Z:000000000001a2b3\\server\\share\\a.dll"),
            Err(Unmapped::NoDrive(_))
        ));
        assert!(matches!(
            m.to_dos("\\Device\\Mup\\server\\share\\a.dll"),
            Err(Unmapped::NoDrive(_))
        ));
    }

    #[test]
    fn signer_subject_only_when_trusted() {
        let mut s = Signature {
            subject: Some("Microsoft Corporation".into()),
            trusted: false,
            status: "untrusted root".into(),
        };
        assert_eq!(s.trusted_subject(), None);
        s.trusted = true;
        assert_eq!(s.trusted_subject(), Some("Microsoft Corporation"));
    }
}
