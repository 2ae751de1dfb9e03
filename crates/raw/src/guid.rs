//! A Windows GUID with its mixed-endian wire layout made explicit.

use std::fmt;

/// A GUID as Windows lays it out: `Data1`–`Data3` little-endian, `Data4` bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Guid {
    pub data1: u32,
    pub data2: u16,
    pub data3: u16,
    pub data4: [u8; 8],
}

impl Guid {
    /// From the canonical value written as one hex number
    /// (`0xce1dbfb4_137e_4da6_87b0_3f59aa102cbc`).
    pub const fn from_u128(v: u128) -> Guid {
        Guid {
            data1: (v >> 96) as u32,
            data2: (v >> 80) as u16,
            data3: (v >> 64) as u16,
            data4: (v as u64).to_be_bytes(),
        }
    }

    /// From the 16 bytes of the in-memory/on-disk layout.
    pub fn from_le_bytes(b: [u8; 16]) -> Guid {
        Guid {
            data1: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            data2: u16::from_le_bytes([b[4], b[5]]),
            data3: u16::from_le_bytes([b[6], b[7]]),
            data4: [b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]],
        }
    }

    /// Reads a GUID from the start of `b`, if it is long enough.
    pub fn read(b: &[u8]) -> Option<Guid> {
        let arr: [u8; 16] = b.get(..16)?.try_into().ok()?;
        Some(Guid::from_le_bytes(arr))
    }

    /// The 16 bytes of the in-memory/on-disk layout.
    pub fn to_le_bytes(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[0..4].copy_from_slice(&self.data1.to_le_bytes());
        out[4..6].copy_from_slice(&self.data2.to_le_bytes());
        out[6..8].copy_from_slice(&self.data3.to_le_bytes());
        out[8..16].copy_from_slice(&self.data4);
        out
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &self.data4;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            self.data1, self.data2, self.data3, d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A GUID string that is not `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuidParseError(pub String);

impl fmt::Display for GuidParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` is not a GUID (expected xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)",
            self.0
        )
    }
}

impl std::error::Error for GuidParseError {}

impl std::str::FromStr for Guid {
    type Err = GuidParseError;

    fn from_str(s: &str) -> Result<Guid, GuidParseError> {
        let t = s.trim().trim_start_matches('{').trim_end_matches('}');
        let err = || GuidParseError(s.to_string());
        let parts: Vec<&str> = t.split('-').collect();
        let lens = [8, 4, 4, 4, 12];
        if parts.len() != 5
            || parts
                .iter()
                .zip(lens)
                .any(|(p, l)| p.len() != l || !p.bytes().all(|c| c.is_ascii_hexdigit()))
        {
            return Err(err());
        }
        let hex: String = parts.concat();
        let v = u128::from_str_radix(&hex, 16).map_err(|_| err())?;
        Ok(Guid::from_u128(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_display_and_bytes() {
        let g: Guid = "2cb15d1d-5fc1-11d2-abe1-00a0c911f518".parse().unwrap();
        assert_eq!(g.to_string(), "2cb15d1d-5fc1-11d2-abe1-00a0c911f518");
        let b = g.to_le_bytes();
        assert_eq!(&b[..4], &[0x1d, 0x5d, 0xb1, 0x2c]);
        assert_eq!(Guid::from_le_bytes(b), g);
        assert!("not-a-guid".parse::<Guid>().is_err());
    }
}
