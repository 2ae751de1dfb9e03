//! Module files on disk (Win32 calls only; the logic is in
//! `sentry_images::disk`): drive letters' NT device names, and a file's
//! Authenticode signer.
//!
//! APIs:
//! [GetLogicalDrives](https://learn.microsoft.com/windows/win32/api/fileapi/nf-fileapi-getlogicaldrives),
//! [QueryDosDeviceW](https://learn.microsoft.com/windows/win32/api/fileapi/nf-fileapi-querydosdevicew),
//! [WinVerifyTrust](https://learn.microsoft.com/windows/win32/api/wintrust/nf-wintrust-winverifytrust)
//! with [WINTRUST_DATA](https://learn.microsoft.com/windows/win32/api/wintrust/ns-wintrust-wintrust_data)
//! and [WINTRUST_FILE_INFO](https://learn.microsoft.com/windows/win32/api/wintrust/ns-wintrust-wintrust_file_info),
//! [WTHelperProvDataFromStateData](https://learn.microsoft.com/windows/win32/api/wintrust/nf-wintrust-wthelperprovdatafromstatedata),
//! [WTHelperGetProvSignerFromChain](https://learn.microsoft.com/windows/win32/api/wintrust/nf-wintrust-wthelpergetprovsignerfromchain),
//! [CertGetNameStringW](https://learn.microsoft.com/windows/win32/api/wincrypt/nf-wincrypt-certgetnamestringw),
//! and the catalog functions listed at [`catalog`].

use std::ffi::c_void;
use std::os::windows::ffi::OsStrExt;
use std::os::windows::io::AsRawHandle;
use std::path::Path;

use windows::core::{w, PCWSTR};
use windows::Win32::Foundation::{HANDLE, HWND};
use windows::Win32::Security::Cryptography::Catalog::{
    CryptCATAdminAcquireContext2, CryptCATAdminCalcHashFromFileHandle2,
    CryptCATAdminEnumCatalogFromHash, CryptCATAdminReleaseCatalogContext,
    CryptCATAdminReleaseContext, CryptCATCatalogInfoFromContext, CATALOG_INFO,
};
use windows::Win32::Security::Cryptography::{
    szOID_COMMON_NAME, CertGetNameStringW, CERT_NAME_ATTR_TYPE,
};
use windows::Win32::Security::WinTrust::{
    WTHelperGetProvSignerFromChain, WTHelperProvDataFromStateData, WinVerifyTrust,
    DRIVER_ACTION_VERIFY, WINTRUST_ACTION_GENERIC_VERIFY_V2, WINTRUST_CATALOG_INFO, WINTRUST_DATA,
    WINTRUST_DATA_0, WINTRUST_DATA_UNION_CHOICE, WINTRUST_FILE_INFO, WTD_CACHE_ONLY_URL_RETRIEVAL,
    WTD_CHOICE_CATALOG, WTD_CHOICE_FILE, WTD_REVOCATION_CHECK_NONE, WTD_REVOKE_NONE,
    WTD_STATEACTION_CLOSE, WTD_STATEACTION_VERIFY, WTD_UI_NONE,
};
use windows::Win32::Storage::FileSystem::{GetLogicalDrives, QueryDosDeviceW};

/// `(drive, NT device)` for every drive letter, in letter order
/// (`("C:", "\Device\HarddiskVolume3")`): the first name `QueryDosDeviceW`
/// gives (the current mapping).
pub fn dos_devices() -> Vec<(String, String)> {
    // SAFETY: no arguments; returns a bit mask.
    let mask = unsafe { GetLogicalDrives() };
    let mut out = Vec::new();
    let mut buf = vec![0u16; 1024];
    for i in 0..26u32 {
        if mask & (1 << i) == 0 {
            continue;
        }
        let drive = format!("{}:", char::from(b'A' + i as u8));
        let name: Vec<u16> = drive.encode_utf16().chain(std::iter::once(0)).collect();
        // SAFETY: `name` is NUL-terminated and outlives the call; the
        // binding passes `buf` with its length.
        let n = unsafe { QueryDosDeviceW(PCWSTR(name.as_ptr()), Some(&mut buf)) } as usize;
        if n == 0 || n > buf.len() {
            continue;
        }
        // A list of NUL-terminated strings: the first is the mapping in use.
        let first = buf[..n].split(|&c| c == 0).next().unwrap_or(&[]);
        if !first.is_empty() {
            out.push((drive, String::from_utf16_lossy(first)));
        }
    }
    out
}

/// What `WinVerifyTrust` said about a file's embedded signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticode {
    /// Subject common name of the signer's certificate, when the provider
    /// found a signer (also for a signature that did not verify).
    pub subject: Option<String>,
    /// `WinVerifyTrust` returned 0: the signature verifies and chains to a
    /// trusted root.
    pub trusted: bool,
    /// Its answer in words, with the HRESULT.
    pub status: String,
}

/// Verifies the Authenticode signature embedded in `file` (open, at
/// `path`) with `WINTRUST_ACTION_GENERIC_VERIFY_V2`, no UI, and no
/// revocation check nor network retrieval (`WTD_REVOKE_NONE`,
/// `WTD_REVOCATION_CHECK_NONE | WTD_CACHE_ONLY_URL_RETRIEVAL`): the check
/// runs on the engine thread, and fetching a CRL or OCSP answer can block
/// for many seconds, or forever on a host without network. The price: a
/// revoked certificate still verifies. The file handle is given with the
/// path (`WINTRUST_FILE_INFO.hFile`), so the file checked is the one whose
/// bytes were read. A file without an embedded signature (most of
/// System32 is signed in catalogs) is looked up in this host's catalogs
/// and, if one holds its hash, verified as that catalog's member: the
/// signer is then the catalog's (not verified on a real Windows host: Wine
/// has no catalogs).
pub fn authenticode(file: &std::fs::File, path: &Path) -> Authenticode {
    let wpath: Vec<u16> = path
        .as_os_str()
        .encode_wide()
        .chain(std::iter::once(0))
        .collect();
    let handle = HANDLE(file.as_raw_handle());
    let mut info = WINTRUST_FILE_INFO {
        cbStruct: size_of::<WINTRUST_FILE_INFO>() as u32,
        pcwszFilePath: PCWSTR(wpath.as_ptr()),
        hFile: handle,
        pgKnownSubject: std::ptr::null_mut(),
    };
    let embedded = verify(WTD_CHOICE_FILE, WINTRUST_DATA_0 { pFile: &mut info });
    if embedded.hr as u32 != TRUST_E_NOSIGNATURE {
        return embedded.result(None);
    }
    match catalog(handle, &wpath) {
        Some((v, cat)) => v.result(Some(&cat)),
        None => {
            let mut a = embedded.result(None);
            a.status =
                "no embedded signature, and no catalog of this host holds its hash (0x800b0100)"
                    .into();
            a
        }
    }
}

/// `TRUST_E_NOSIGNATURE`: no signature in the file (look in catalogs).
const TRUST_E_NOSIGNATURE: u32 = 0x800B_0100;

/// One `WinVerifyTrust` call (VERIFY, read the signer, CLOSE).
struct Verified {
    hr: i32,
    signer: Signer,
}

impl Verified {
    /// WinVerifyTrust's 0 alone is not taken as trust: the signer's own
    /// error and its chain's trust status must be clean too (Wine 8's
    /// WinVerifyTrust returns 0 for a self-signed signer whose root is in
    /// no store; `.ci/etw-replay-modfiles`). These can only withhold trust.
    fn result(self, catalog: Option<&str>) -> Authenticode {
        let Verified { hr, signer } = self;
        let chain_bad = signer.chain_error.is_none_or(|e| e & CHAIN_DISTRUST != 0);
        let trusted = hr == 0 && signer.signer_error == 0 && !chain_bad;
        let mut status = status_text(hr);
        if hr == 0 && !trusted {
            status = format!(
                "not trusted: WinVerifyTrust returned 0 but the signer's error is {:#x} and its chain's error status {}",
                signer.signer_error,
                signer
                    .chain_error
                    .map_or("unknown (no chain)".to_string(), |e| format!("{e:#x}"))
            );
        } else if let Some(e) = signer.chain_error.filter(|e| *e != 0) {
            status.push_str(&format!(", chain error status {e:#x}"));
        }
        if let Some(c) = catalog {
            status.push_str(&format!(", catalog {c}"));
        }
        Authenticode {
            subject: signer.subject,
            trusted,
            status,
        }
    }
}

/// `WinVerifyTrust` with `WINTRUST_ACTION_GENERIC_VERIFY_V2` on `object`
/// (a file or a catalog member, per `choice`), no UI, no revocation check,
/// no network retrieval; the signer read before the state is closed.
fn verify(choice: WINTRUST_DATA_UNION_CHOICE, object: WINTRUST_DATA_0) -> Verified {
    let mut data = WINTRUST_DATA {
        cbStruct: size_of::<WINTRUST_DATA>() as u32,
        dwUIChoice: WTD_UI_NONE,
        fdwRevocationChecks: WTD_REVOKE_NONE,
        dwUnionChoice: choice,
        Anonymous: object,
        dwStateAction: WTD_STATEACTION_VERIFY,
        dwProvFlags: WTD_REVOCATION_CHECK_NONE | WTD_CACHE_ONLY_URL_RETRIEVAL,
        ..Default::default()
    };
    let mut action = WINTRUST_ACTION_GENERIC_VERIFY_V2;
    // INVALID_HANDLE_VALUE as the window: "no interactive user".
    let no_ui = HWND(-1isize as *mut c_void);
    // SAFETY: `data` and the structure its union points to (owned by the
    // caller, with the strings and hash it points to) live until the CLOSE
    // call below; the file handles stay open (borrowed by the caller).
    let hr = unsafe {
        WinVerifyTrust(
            no_ui,
            &mut action,
            (&mut data as *mut WINTRUST_DATA).cast::<c_void>(),
        )
    };
    let signer = if data.hWVTStateData.0.is_null() {
        Signer::default()
    } else {
        signer_of(data.hWVTStateData)
    };
    data.dwStateAction = WTD_STATEACTION_CLOSE;
    // SAFETY: releases the state data the VERIFY call allocated; `data` is
    // the same structure, still valid.
    let _ = unsafe {
        WinVerifyTrust(
            no_ui,
            &mut action,
            (&mut data as *mut WINTRUST_DATA).cast::<c_void>(),
        )
    };
    Verified { hr, signer }
}

/// The file's signature from a catalog of this host that holds its hash
/// (SHA-256 catalogs first, then SHA-1), verified as a catalog member:
/// [CryptCATAdminAcquireContext2](https://learn.microsoft.com/windows/win32/api/mscat/nf-mscat-cryptcatadminacquirecontext2),
/// [CryptCATAdminCalcHashFromFileHandle2](https://learn.microsoft.com/windows/win32/api/mscat/nf-mscat-cryptcatadmincalchashfromfilehandle2),
/// [CryptCATAdminEnumCatalogFromHash](https://learn.microsoft.com/windows/win32/api/mscat/nf-mscat-cryptcatadminenumcatalogfromhash),
/// [CryptCATCatalogInfoFromContext](https://learn.microsoft.com/windows/win32/api/mscat/nf-mscat-cryptcatcataloginfofromcontext),
/// [WINTRUST_CATALOG_INFO](https://learn.microsoft.com/windows/win32/api/wintrust/ns-wintrust-wintrust_catalog_info)
/// (member tag: the hash in hex). `None` when no catalog holds it.
fn catalog(file: HANDLE, wpath: &[u16]) -> Option<(Verified, String)> {
    for alg in [w!("SHA256"), w!("SHA1")] {
        let mut admin: isize = 0;
        // SAFETY: `admin` receives the context; the GUID and algorithm name
        // are static.
        let ok = unsafe {
            CryptCATAdminAcquireContext2(&mut admin, Some(&DRIVER_ACTION_VERIFY), alg, None, None)
        };
        if ok.is_err() || admin == 0 {
            continue;
        }
        let found = catalog_with(admin, file, wpath);
        // SAFETY: releases the context acquired above, once.
        let _ = unsafe { CryptCATAdminReleaseContext(admin, 0) };
        if found.is_some() {
            return found;
        }
    }
    None
}

fn catalog_with(admin: isize, file: HANDLE, wpath: &[u16]) -> Option<(Verified, String)> {
    let mut hash = [0u8; 64];
    let mut len = hash.len() as u32;
    // SAFETY: `hash` holds `len` bytes; `file` is an open handle with read
    // access (the hash is of the file's Authenticode-relevant bytes).
    let ok = unsafe {
        CryptCATAdminCalcHashFromFileHandle2(admin, file, &mut len, Some(hash.as_mut_ptr()), None)
    };
    let len = len as usize;
    if ok.is_err() || len == 0 || len > hash.len() {
        return None;
    }
    let hash = &mut hash[..len];
    // SAFETY: `hash` is the buffer just filled; no previous context.
    let cat = unsafe { CryptCATAdminEnumCatalogFromHash(admin, hash, None, None) };
    if cat == 0 {
        return None;
    }
    let mut ci = CATALOG_INFO {
        cbStruct: size_of::<CATALOG_INFO>() as u32,
        ..Default::default()
    };
    // SAFETY: `cat` is the catalog context returned above; `ci` is a
    // CATALOG_INFO with its size set.
    let info = unsafe { CryptCATCatalogInfoFromContext(cat, &mut ci, 0) };
    let result = info.ok().map(|()| {
        let n = ci.wszCatalogFile.iter().position(|&c| c == 0).unwrap_or(0);
        let cat_path = &ci.wszCatalogFile[..=n.min(ci.wszCatalogFile.len() - 1)];
        let tag: Vec<u16> = hash
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<String>()
            .encode_utf16()
            .chain(std::iter::once(0))
            .collect();
        let mut member = WINTRUST_CATALOG_INFO {
            cbStruct: size_of::<WINTRUST_CATALOG_INFO>() as u32,
            dwCatalogVersion: 0,
            pcwszCatalogFilePath: PCWSTR(cat_path.as_ptr()),
            pcwszMemberTag: PCWSTR(tag.as_ptr()),
            pcwszMemberFilePath: PCWSTR(wpath.as_ptr()),
            hMemberFile: file,
            pbCalculatedFileHash: hash.as_mut_ptr(),
            cbCalculatedFileHash: len as u32,
            pcCatalogContext: std::ptr::null_mut(),
            hCatAdmin: admin,
        };
        let v = verify(
            WTD_CHOICE_CATALOG,
            WINTRUST_DATA_0 {
                pCatalog: &mut member,
            },
        );
        (v, String::from_utf16_lossy(&ci.wszCatalogFile[..n]))
    });
    // SAFETY: releases the catalog context enumerated above, once.
    let _ = unsafe { CryptCATAdminReleaseCatalogContext(admin, cat, 0) };
    result
}

/// Chain errors that deny trust
/// ([CERT_TRUST_STATUS](https://learn.microsoft.com/windows/win32/api/wincrypt/ns-wincrypt-cert_trust_status)):
/// untrusted root, partial chain, bad signature, revoked, distrusted,
/// cyclic, not valid for code signing (wincrypt.h values).
const CHAIN_DISTRUST: u32 = 0x0000_0020 // CERT_TRUST_IS_UNTRUSTED_ROOT
    | 0x0001_0000 // CERT_TRUST_IS_PARTIAL_CHAIN
    | 0x0000_0008 // CERT_TRUST_IS_NOT_SIGNATURE_VALID
    | 0x0000_0004 // CERT_TRUST_IS_REVOKED
    | 0x0400_0000 // CERT_TRUST_IS_EXPLICIT_DISTRUST
    | 0x0000_0080 // CERT_TRUST_IS_CYCLIC
    | 0x0000_0010; // CERT_TRUST_IS_NOT_VALID_FOR_USAGE

/// What the provider's state says of the first signer.
#[derive(Default)]
struct Signer {
    subject: Option<String>,
    /// `CRYPT_PROVIDER_SGNR.dwError` (no signer: nonzero).
    signer_error: u32,
    /// The signer's chain's `TrustStatus.dwErrorStatus`, if it has a chain.
    chain_error: Option<u32>,
}

/// The first signer from the provider's state: its certificate's subject
/// CN, its error and its chain's trust status.
fn signer_of(state: HANDLE) -> Signer {
    let none = Signer {
        signer_error: u32::MAX,
        ..Signer::default()
    };
    // SAFETY: `state` is the hWVTStateData of a VERIFY call not yet closed.
    let prov = unsafe { WTHelperProvDataFromStateData(state) };
    if prov.is_null() {
        return none;
    }
    // SAFETY: `prov` is the provider data returned above, valid until CLOSE.
    let sgnr = unsafe { WTHelperGetProvSignerFromChain(prov, 0, false, 0) };
    if sgnr.is_null() {
        return none;
    }
    // SAFETY: non-null pointer to the provider's signer, valid until CLOSE.
    let sgnr = unsafe { &*sgnr };
    let chain_error = (!sgnr.pChainContext.is_null()).then(|| {
        // SAFETY: non-null chain context owned by the provider data.
        unsafe { (*sgnr.pChainContext).TrustStatus.dwErrorStatus }
    });
    let mut out = Signer {
        subject: None,
        signer_error: sgnr.dwError,
        chain_error,
    };
    if sgnr.csCertChain == 0 || sgnr.pasCertChain.is_null() {
        return out;
    }
    // SAFETY: `pasCertChain` holds `csCertChain` (>= 1) entries; the first
    // is the signer's own certificate.
    let cert = unsafe { (*sgnr.pasCertChain).pCert };
    if cert.is_null() {
        return out;
    }
    let cn = Some(szOID_COMMON_NAME.0 as *const c_void);
    // SAFETY: `cert` is a valid CERT_CONTEXT; with no buffer the call
    // returns the size needed, terminator included.
    let n = unsafe { CertGetNameStringW(cert, CERT_NAME_ATTR_TYPE, 0, cn, None) } as usize;
    if n <= 1 || n > 4096 {
        return out;
    }
    let mut buf = vec![0u16; n];
    // SAFETY: as above; the binding passes `buf` with its length.
    let n =
        unsafe { CertGetNameStringW(cert, CERT_NAME_ATTR_TYPE, 0, cn, Some(&mut buf)) } as usize;
    let s = String::from_utf16_lossy(&buf[..n.saturating_sub(1).min(buf.len())]);
    out.subject = (!s.is_empty()).then_some(s);
    out
}

/// `WinVerifyTrust`'s documented answers in words.
fn status_text(hr: i32) -> String {
    let what = match hr as u32 {
        0 => return "trusted".into(),
        0x800B_0100 => "no signature",
        0x800B_0109 => "signature chains to an untrusted root",
        0x800B_010A => "certificate chain could not be built",
        0x800B_0101 => "certificate expired",
        0x800B_0111 => "signer explicitly distrusted",
        0x8009_6010 => "bad digest: the file changed after it was signed",
        0x800B_0004 => "subject not trusted",
        0x800B_0003 => "unknown subject form",
        _ => "not verified",
    };
    format!("{what} ({:#010x})", hr as u32)
}
