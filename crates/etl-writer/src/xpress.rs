//! XPRESS "Plain LZ77" compression, the variant ETW uses for compressed
//! buffers (buffer flag `0x40`, Windows 8+).
//!
//! Format: [MS-XCA §2.3–2.4](https://learn.microsoft.com/openspecs/windows_protocols/ms-xca/a8b7cb0a-92a6-4187-a23b-5e14273b96f8).
//! Data is a sequence of 32-bit little-endian flag words, each followed by
//! the 32 items it describes (bit 31 first): a 0 bit is a literal byte, a 1
//! bit a match `u16 = (offset-1) << 3 | min(len-3, 7)` with longer lengths
//! continued in a shared nibble, a byte, then a `u16`/`u32`. Unused bits of
//! the last flag word are set to 1, which decoders read as the end.
//!
//! The compressor is greedy with a single-slot hash of 3-byte prefixes: not
//! the best ratio, but every decoder accepts it.

const MIN_MATCH: usize = 3;
const MAX_OFFSET: usize = 8192;
const MAX_MATCH: usize = 4096;
const HASH_BITS: u32 = 13;

/// A reusable compressor (keeps its hash table between calls).
pub struct Compressor {
    table: Vec<u32>,
}

impl Default for Compressor {
    fn default() -> Self {
        Self::new()
    }
}

impl Compressor {
    pub fn new() -> Compressor {
        Compressor {
            table: vec![u32::MAX; 1 << HASH_BITS],
        }
    }

    /// Compresses `input` into `out` (cleared first).
    pub fn compress(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.clear();
        self.table.fill(u32::MAX);
        let mut flags: u32 = 0;
        let mut flag_count = 0u32;
        let mut flag_pos = out.len();
        out.extend_from_slice(&[0; 4]);
        // Position of a length byte whose high nibble is still free.
        let mut nibble_pos: Option<usize> = None;
        let mut i = 0;
        while i < input.len() {
            if flag_count == 32 {
                out[flag_pos..flag_pos + 4].copy_from_slice(&flags.to_le_bytes());
                flag_pos = out.len();
                out.extend_from_slice(&[0; 4]);
                flags = 0;
                flag_count = 0;
            }
            let (len, offset) = self.find_match(input, i);
            if len >= MIN_MATCH {
                flags = (flags << 1) | 1;
                flag_count += 1;
                let m = len - MIN_MATCH;
                let code = ((offset - 1) << 3) | m.min(7);
                out.extend_from_slice(&(code as u16).to_le_bytes());
                if m >= 7 {
                    let n = m - 7;
                    let nib = n.min(15) as u8;
                    match nibble_pos.take() {
                        Some(p) => out[p] |= nib << 4,
                        None => {
                            nibble_pos = Some(out.len());
                            out.push(nib);
                        }
                    }
                    if n >= 15 {
                        let b = n - 15;
                        if b < 255 {
                            out.push(b as u8);
                        } else {
                            out.push(255);
                            if m < 0x1_0000 {
                                out.extend_from_slice(&(m as u16).to_le_bytes());
                            } else {
                                out.extend_from_slice(&0u16.to_le_bytes());
                                out.extend_from_slice(&(m as u32).to_le_bytes());
                            }
                        }
                    }
                }
                for p in i + 1..(i + len).min(input.len().saturating_sub(2)) {
                    self.insert(input, p);
                }
                i += len;
            } else {
                flags <<= 1;
                flag_count += 1;
                out.push(input[i]);
                i += 1;
            }
        }
        // Fill the unused bits with 1s: the end-of-stream marker.
        let rest = 32 - flag_count;
        let last = if rest == 32 {
            u32::MAX
        } else {
            (flags << rest) | ((1u32 << rest) - 1)
        };
        out[flag_pos..flag_pos + 4].copy_from_slice(&last.to_le_bytes());
    }

    fn hash(b: &[u8]) -> usize {
        let v = u32::from(b[0]) | u32::from(b[1]) << 8 | u32::from(b[2]) << 16;
        (v.wrapping_mul(2_654_435_761) >> (32 - HASH_BITS)) as usize
    }

    fn insert(&mut self, input: &[u8], p: usize) {
        if p + 3 <= input.len() {
            let h = Self::hash(&input[p..]);
            self.table[h] = p as u32;
        }
    }

    /// Longest match at `i` with the single hash candidate: (len, offset).
    fn find_match(&mut self, input: &[u8], i: usize) -> (usize, usize) {
        if i + MIN_MATCH > input.len() {
            return (0, 0);
        }
        let h = Self::hash(&input[i..]);
        let cand = self.table[h];
        self.table[h] = i as u32;
        if cand == u32::MAX {
            return (0, 0);
        }
        let c = cand as usize;
        let offset = i - c;
        if offset == 0 || offset > MAX_OFFSET {
            return (0, 0);
        }
        let max = (input.len() - i).min(MAX_MATCH);
        let mut len = 0;
        while len < max && input[c + len] == input[i + len] {
            len += 1;
        }
        if len >= MIN_MATCH {
            (len, offset)
        } else {
            (0, 0)
        }
    }
}

/// Decompresses Plain LZ77 data (used by the tests to check the compressor;
/// bounded by `limit` output bytes). `None` on malformed input.
pub fn decompress(input: &[u8], limit: usize) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut i = 0;
    let mut flags = 0u32;
    let mut flag_count = 0;
    let mut nibble_pos: Option<usize> = None;
    let rd = |i: &mut usize, n: usize| -> Option<&[u8]> {
        let s = input.get(*i..*i + n)?;
        *i += n;
        Some(s)
    };
    while i < input.len() {
        if flag_count == 0 {
            let b = rd(&mut i, 4)?;
            flags = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            flag_count = 32;
        }
        flag_count -= 1;
        if flags & (1 << flag_count) == 0 {
            out.push(*rd(&mut i, 1)?.first()?);
        } else {
            if i == input.len() {
                break;
            }
            let b = rd(&mut i, 2)?;
            let code = usize::from(u16::from_le_bytes([b[0], b[1]]));
            let offset = (code >> 3) + 1;
            let mut len = code & 7;
            if len == 7 {
                len = match nibble_pos.take() {
                    Some(p) => usize::from(input[p] >> 4),
                    None => {
                        nibble_pos = Some(i);
                        usize::from(rd(&mut i, 1)?[0] & 15)
                    }
                };
                if len == 15 {
                    len = usize::from(rd(&mut i, 1)?[0]);
                    if len == 255 {
                        let b = rd(&mut i, 2)?;
                        len = usize::from(u16::from_le_bytes([b[0], b[1]]));
                        if len == 0 {
                            let b = rd(&mut i, 4)?;
                            len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
                        }
                        len = len.checked_sub(22)?;
                    }
                    len += 15;
                }
                len += 7;
            }
            len += 3;
            if offset > out.len() || out.len() + len > limit {
                return None;
            }
            let start = out.len() - offset;
            for k in 0..len {
                let v = out[start + k];
                out.push(v);
            }
        }
        if out.len() > limit {
            return None;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(data: &[u8]) -> usize {
        let mut c = Compressor::new();
        let mut out = Vec::new();
        c.compress(data, &mut out);
        let back = decompress(&out, data.len()).expect("decodes");
        assert_eq!(back, data);
        out.len()
    }

    #[test]
    fn round_trips_literals_short_and_long_matches() {
        assert_eq!(round_trip(b""), 4);
        round_trip(b"ab");
        round_trip(b"abcabcabcabc");
        // 31, 32, 33 items: flag word boundaries.
        for n in 30..70 {
            let v: Vec<u8> = (0..n).map(|i| (i * 7 % 251) as u8).collect();
            round_trip(&v);
        }
        // Long runs: nibble, byte, u16 length forms.
        for n in [10, 25, 40, 300, 5000] {
            let mut v = b"xyz".to_vec();
            v.extend(std::iter::repeat_n(b'q', n));
            v.extend_from_slice(b"tail");
            v.extend(std::iter::repeat_n(b'r', n / 2 + 9));
            let c = round_trip(&v);
            assert!(c < v.len());
        }
    }

    #[test]
    fn compresses_buffer_like_data() {
        let mut v = Vec::new();
        for i in 0u64..4000 {
            v.extend_from_slice(&(0xfffff803_12345000u64 + (i % 17) * 0x20).to_le_bytes());
            v.extend_from_slice(&(i * 37).to_le_bytes());
        }
        let c = round_trip(&v);
        assert!(c < v.len() / 2, "{c} of {}", v.len());
    }

    #[test]
    fn rejects_truncated_input() {
        let mut c = Compressor::new();
        let mut out = Vec::new();
        c.compress(b"hello hello hello hello", &mut out);
        assert!(decompress(&out[..3], 100).is_none());
    }
}
