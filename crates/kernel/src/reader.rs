//! A bounds-checked little-endian cursor over an event payload.
//!
//! Every read names the field it is after, so a short payload yields an error
//! that says which field did not fit. Strings are bounded by the payload: a
//! missing terminator never reads past it, and allocation is at most the
//! payload's length.

use std::fmt::Write as _;

/// A read that did not fit the payload; `lib.rs` adds the record offset.
pub(crate) type Fail = String;

pub(crate) struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
    ps: usize,
}

impl<'a> Reader<'a> {
    /// `ps` must already be validated as 4 or 8.
    pub(crate) fn new(b: &'a [u8], ps: u8) -> Reader<'a> {
        Reader {
            b,
            pos: 0,
            ps: usize::from(ps),
        }
    }

    pub(crate) fn pointer_size(&self) -> u8 {
        self.ps as u8
    }

    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], Fail> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.b.len());
        match end {
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

    pub(crate) fn u8(&mut self, field: &str) -> Result<u8, Fail> {
        Ok(self.take(1, field)?[0])
    }

    pub(crate) fn u32(&mut self, field: &str) -> Result<u32, Fail> {
        let s = self.take(4, field)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }

    pub(crate) fn u64(&mut self, field: &str) -> Result<u64, Fail> {
        let s = self.take(8, field)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }

    /// A pointer-sized field, zero-extended.
    pub(crate) fn ptr(&mut self, field: &str) -> Result<u64, Fail> {
        if self.ps == 4 {
            self.u32(field).map(u64::from)
        } else {
            self.u64(field)
        }
    }

    pub(crate) fn skip(&mut self, n: usize, field: &str) -> Result<(), Fail> {
        self.take(n, field).map(|_| ())
    }

    /// Peeks a u32 without consuming it.
    pub(crate) fn peek_u32(&self) -> Option<u32> {
        let s = self.b.get(self.pos..self.pos.checked_add(4)?)?;
        Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }

    /// Everything not read yet.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let s = &self.b[self.pos..];
        self.pos = self.b.len();
        s
    }

    #[cfg(test)]
    pub(crate) fn remaining(&self) -> usize {
        self.b.len() - self.pos
    }

    /// A NUL-terminated 8-bit string. `last`: the field ends the known layout,
    /// so a missing terminator is tolerated (the text runs to the payload's
    /// end); otherwise it is an error, since later fields cannot be located.
    ///
    /// The bytes are in the system's ANSI code page, which the trace does not
    /// record: valid UTF-8 is taken as such, anything else byte-per-char
    /// (Latin-1, which agrees with Windows-1252 on all letters).
    pub(crate) fn ansiz(&mut self, field: &str, last: bool) -> Result<String, Fail> {
        let rest = &self.b[self.pos..];
        let (text, used) = match rest.iter().position(|&c| c == 0) {
            Some(n) => (&rest[..n], n + 1),
            None if last => (rest, rest.len()),
            None => return Err(self.unterminated(field)),
        };
        self.pos += used;
        Ok(match std::str::from_utf8(text) {
            Ok(s) => s.to_owned(),
            Err(_) => text.iter().map(|&c| char::from(c)).collect(),
        })
    }

    /// A NUL-terminated UTF-16LE string; `last` as for [`Reader::ansiz`]
    /// (an odd trailing byte is then ignored). Unpaired surrogates become
    /// U+FFFD.
    pub(crate) fn utf16z(&mut self, field: &str, last: bool) -> Result<String, Fail> {
        let rest = &self.b[self.pos..];
        let units = rest
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]));
        let n = units.clone().take_while(|&u| u != 0).count();
        let used = if 2 * n + 2 <= rest.len() {
            2 * n + 2
        } else if last {
            rest.len()
        } else {
            return Err(self.unterminated(field));
        };
        self.pos += used;
        // NT paths are nearly always ASCII: size once, decode in one pass.
        let mut s = String::with_capacity(n);
        s.extend(
            char::decode_utf16(units.take(n)).map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER)),
        );
        Ok(s)
    }

    fn unterminated(&self, field: &str) -> Fail {
        format!(
            "{field} at offset {} has no NUL terminator within the {}-byte payload",
            self.pos,
            self.b.len()
        )
    }

    /// The `UserSID` field of kernel Process events (MOF extension `Sid`,
    /// TDH in-type `WBEMSID`): a `TOKEN_USER` (`SID_AND_ATTRIBUTES`: a SID
    /// pointer and a u32 of attributes, padded to two pointers) followed by
    /// the SID itself. A first u32 of zero means "no SID" and occupies 4 bytes
    /// (the rule TraceEvent's `SkipSID` uses). Returns `S-1-5-18` style text,
    /// or an empty string when absent.
    ///
    /// Layouts: <https://learn.microsoft.com/windows/win32/api/winnt/ns-winnt-token_user>,
    /// <https://learn.microsoft.com/windows/win32/api/winnt/ns-winnt-sid>.
    pub(crate) fn user_sid(&mut self) -> Result<String, Fail> {
        match self.peek_u32() {
            None => return Err(self.take(4, "UserSID").err().unwrap_or_default()),
            Some(0) => {
                self.pos += 4;
                return Ok(String::new());
            }
            Some(_) => {}
        }
        self.skip(2 * self.ps, "UserSID TOKEN_USER")?;
        let revision = self.u8("UserSID Revision")?;
        let count = self.u8("UserSID SubAuthorityCount")?;
        if count > SID_MAX_SUB_AUTHORITIES {
            return Err(format!(
                "UserSID claims {count} sub-authorities (at most {SID_MAX_SUB_AUTHORITIES} exist)"
            ));
        }
        let auth = self.take(6, "UserSID IdentifierAuthority")?;
        let authority = auth.iter().fold(0u64, |a, &b| a << 8 | u64::from(b));
        let mut s = String::with_capacity(16 + 11 * usize::from(count));
        // ConvertSidToStringSid prints large authorities in hex.
        if authority >> 32 == 0 {
            let _ = write!(s, "S-{revision}-{authority}");
        } else {
            let _ = write!(s, "S-{revision}-{authority:#014X}");
        }
        for _ in 0..count {
            let sub = self.u32("UserSID SubAuthority")?;
            let _ = write!(s, "-{sub}");
        }
        Ok(s)
    }
}

/// `SID_MAX_SUB_AUTHORITIES` from winnt.h.
const SID_MAX_SUB_AUTHORITIES: u8 = 15;

#[cfg(test)]
mod tests {
    use super::*;

    fn sid_payload(ps: usize, sid: &[u8]) -> Vec<u8> {
        let mut v = vec![0xAA; ps]; // non-zero SID pointer
        v.extend(vec![0u8; ps]); // attributes + padding
        v.extend_from_slice(sid);
        v
    }

    #[test]
    fn local_system_sid_both_pointer_sizes() {
        let sid = [1, 1, 0, 0, 0, 0, 0, 5, 18, 0, 0, 0];
        for ps in [4u8, 8] {
            let p = sid_payload(usize::from(ps), &sid);
            let mut r = Reader::new(&p, ps);
            assert_eq!(r.user_sid().unwrap(), "S-1-5-18");
            assert_eq!(r.remaining(), 0);
        }
    }

    #[test]
    fn user_sid_with_five_sub_authorities() {
        let mut sid = vec![1, 5, 0, 0, 0, 0, 0, 5];
        for v in [21u32, 1_004_336_348, 1_177_238_915, 682_003_330, 1001] {
            sid.extend_from_slice(&v.to_le_bytes());
        }
        let p = sid_payload(8, &sid);
        let mut r = Reader::new(&p, 8);
        assert_eq!(
            r.user_sid().unwrap(),
            "S-1-5-21-1004336348-1177238915-682003330-1001"
        );
    }

    #[test]
    fn large_authority_is_hex() {
        let sid = [1, 0, 0x12, 0x34, 0x56, 0x78, 0x9A, 0xBC];
        let p = sid_payload(4, &sid);
        assert_eq!(Reader::new(&p, 4).user_sid().unwrap(), "S-1-0x123456789ABC");
    }

    #[test]
    fn null_sid_takes_four_bytes() {
        let p = [0, 0, 0, 0, b'x', 0];
        let mut r = Reader::new(&p, 8);
        assert_eq!(r.user_sid().unwrap(), "");
        assert_eq!(r.ansiz("ImageFileName", false).unwrap(), "x");
    }

    #[test]
    fn hostile_sub_authority_counts() {
        // 255 sub-authorities: rejected before any read.
        let p = sid_payload(8, &[1, 255, 0, 0, 0, 0, 0, 5]);
        let e = Reader::new(&p, 8).user_sid().unwrap_err();
        assert!(e.contains("255 sub-authorities"), "{e}");
        // 15 claimed, 1 present: bounded by the payload.
        let p = sid_payload(8, &[1, 15, 0, 0, 0, 0, 0, 5, 18, 0, 0, 0]);
        let e = Reader::new(&p, 8).user_sid().unwrap_err();
        assert!(e.contains("SubAuthority"), "{e}");
        // TOKEN_USER cut short.
        let e = Reader::new(&[1, 0, 0, 0, 0], 8).user_sid().unwrap_err();
        assert!(e.contains("TOKEN_USER"), "{e}");
        assert!(Reader::new(&[1, 0], 8).user_sid().is_err());
    }

    #[test]
    fn strings_are_bounded_by_the_payload() {
        let p = [b'a', b'b'];
        assert!(Reader::new(&p, 8).ansiz("f", false).is_err());
        assert_eq!(Reader::new(&p, 8).ansiz("f", true).unwrap(), "ab");
        let w = [b'a', 0, b'b', 0, b'c'];
        assert!(Reader::new(&w, 8).utf16z("f", false).is_err());
        assert_eq!(Reader::new(&w, 8).utf16z("f", true).unwrap(), "ab");
        let mut r = Reader::new(&[b'h', 0, b'i', 0, 0, 0, 7], 8);
        assert_eq!(r.utf16z("f", false).unwrap(), "hi");
        assert_eq!(r.remaining(), 1);
    }

    #[test]
    fn ansi_falls_back_to_latin1() {
        let p = [b'c', 0xE9, 0];
        assert_eq!(Reader::new(&p, 8).ansiz("f", false).unwrap(), "c\u{e9}");
        let p = [b'c', 0xC3, 0xA9, 0];
        assert_eq!(Reader::new(&p, 8).ansiz("f", false).unwrap(), "c\u{e9}");
    }

    #[test]
    fn short_reads_name_the_field() {
        let mut r = Reader::new(&[1, 2, 3], 8);
        let e = r.ptr("ImageBase").unwrap_err();
        assert!(e.contains("ImageBase needs 8 bytes"), "{e}");
        assert_eq!(Reader::new(&[1, 0, 0, 0], 4).ptr("p").unwrap(), 1);
    }
}
