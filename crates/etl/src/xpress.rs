//! Plain LZ77 XPRESS decompression, the format ETW uses for buffers with the
//! `ETW_BUFFER_FLAG_COMPRESSED` (0x40) flag (Windows 8 and later,
//! `EVENT_TRACE_COMPRESSED_MODE`).
//!
//! Format: [MS-XCA 2.3/2.4, "Plain LZ77 Decompression"](https://learn.microsoft.com/openspecs/windows_protocols/ms-xca/34cb9ab9-5ce6-42d7-a518-107c1c7c65e7).
//! 32-bit flag words (most significant bit first) select a literal byte
//! (0) or a match (1: 16-bit word, offset in the high 13 bits plus one,
//! length in the low 3 bits plus 3, extended through shared nibbles, a byte,
//! a 16-bit and a 32-bit field).
//!
//! The output is bounded by the caller's `max_out` (the buffer size the
//! buffer header declares), so hostile input cannot make it allocate more.

use std::fmt;

/// Why a compressed buffer could not be decompressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XpressError {
    /// The input ends inside a flag word or a match.
    Truncated { at: usize },
    /// A match refers to data before the start of the output.
    BadOffset {
        at: usize,
        offset: usize,
        produced: usize,
    },
    /// The output would exceed the declared size.
    TooLong { at: usize, limit: usize },
    /// A 16/32-bit match length smaller than its encoding allows.
    BadLength { at: usize },
}

impl fmt::Display for XpressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            XpressError::Truncated { at } => {
                write!(f, "compressed data ends inside a token at input byte {at}")
            }
            XpressError::BadOffset {
                at,
                offset,
                produced,
            } => write!(
                f,
                "match at input byte {at} refers {offset} bytes back, only {produced} produced"
            ),
            XpressError::TooLong { at, limit } => write!(
                f,
                "decompressed data at input byte {at} exceeds the declared {limit} bytes"
            ),
            XpressError::BadLength { at } => {
                write!(f, "invalid extended match length at input byte {at}")
            }
        }
    }
}

impl std::error::Error for XpressError {}

/// Decompresses `input` into `out` (cleared first), producing at most
/// `max_out` bytes. On error `out` keeps what was produced before it.
pub fn decompress(input: &[u8], out: &mut Vec<u8>, max_out: usize) -> Result<(), XpressError> {
    out.clear();
    // The declared size is exact for real buffers: one allocation, and the
    // caller has checked it against its memory budget.
    out.reserve_exact(max_out);
    let len = input.len();
    let mut ip = 0usize;
    // Unused flag bits, the next one in bit 31, and how many are left.
    let mut bits: u32 = 0;
    let mut count: u32 = 0;
    // Position of a byte whose high nibble is still unused by a length.
    let mut half_byte: Option<usize> = None;

    while ip < len {
        if count == 0 {
            let Some(w) = input.get(ip..ip + 4) else {
                return Err(XpressError::Truncated { at: ip });
            };
            bits = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
            ip += 4;
            count = 32;
        }
        // A run of literals: the leading zero flag bits.
        let run = bits.leading_zeros().min(count);
        if run > 0 {
            let n = (run as usize).min(len - ip);
            if n > max_out - out.len() {
                return Err(XpressError::TooLong {
                    at: ip,
                    limit: max_out,
                });
            }
            out.extend_from_slice(&input[ip..ip + n]);
            ip += n;
            bits = bits.checked_shl(run).unwrap_or(0);
            count -= run;
            if count == 0 || ip >= len {
                continue;
            }
        }
        // A match flag.
        bits <<= 1;
        count -= 1;
        if ip == len {
            break;
        }
        let at = ip;
        let Some(w) = input.get(ip..ip + 2) else {
            return Err(XpressError::Truncated { at });
        };
        let word = u16::from_le_bytes([w[0], w[1]]) as usize;
        ip += 2;
        let offset = (word >> 3) + 1;
        let mut length = word & 7;
        if length == 7 {
            match half_byte.take() {
                None => {
                    let Some(&b) = input.get(ip) else {
                        return Err(XpressError::Truncated { at });
                    };
                    length = (b & 0x0f) as usize;
                    half_byte = Some(ip);
                    ip += 1;
                }
                Some(p) => length = (input[p] >> 4) as usize,
            }
            if length == 15 {
                let Some(&b) = input.get(ip) else {
                    return Err(XpressError::Truncated { at });
                };
                ip += 1;
                length = b as usize;
                if length == 255 {
                    let Some(w) = input.get(ip..ip + 2) else {
                        return Err(XpressError::Truncated { at });
                    };
                    ip += 2;
                    length = u16::from_le_bytes([w[0], w[1]]) as usize;
                    if length == 0 {
                        let Some(w) = input.get(ip..ip + 4) else {
                            return Err(XpressError::Truncated { at });
                        };
                        ip += 4;
                        length = u32::from_le_bytes([w[0], w[1], w[2], w[3]]) as usize;
                    }
                    if length < 15 + 7 {
                        return Err(XpressError::BadLength { at });
                    }
                    length -= 15 + 7;
                }
                length += 15;
            }
            length += 7;
        }
        length += 3;
        let produced = out.len();
        if offset > produced {
            return Err(XpressError::BadOffset {
                at,
                offset,
                produced,
            });
        }
        if length > max_out - produced {
            return Err(XpressError::TooLong { at, limit: max_out });
        }
        let start = produced - offset;
        if offset >= length {
            out.extend_from_within(start..start + length);
        } else {
            // Overlapping match: the pattern of `offset` bytes repeats.
            let mut left = length;
            while left > 0 {
                let n = left.min(out.len() - start);
                out.extend_from_within(start..start + n);
                left -= n;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-assembled stream: literals "abc", then a match of length 6 at
    /// offset 3 (overlapping), then literal "d".
    #[test]
    fn literals_and_overlapping_match() {
        // Flags (MSB first): 0,0,0 literal; 1 match; 0 literal; rest unused
        // (set to 1 so the end is reached in the match branch).
        let flags: u32 = 0b0001_0111_1111_1111_1111_1111_1111_1111;
        let mut input = flags.to_le_bytes().to_vec();
        input.extend_from_slice(b"abc");
        // offset 3 -> (3-1) << 3, length 6 -> 6-3 = 3.
        let word: u16 = (2 << 3) | 3;
        input.extend_from_slice(&word.to_le_bytes());
        input.push(b'd');
        let mut out = Vec::new();
        decompress(&input, &mut out, 100).unwrap();
        assert_eq!(out, b"abcabcabcd");
    }

    #[test]
    fn long_length_uses_nibble_byte_and_word() {
        // One literal then one match with length 3+7+15+255... via u16 field.
        let flags: u32 = 0b0100_0000_0000_0000_0000_0000_0000_0000;
        let mut input = flags.to_le_bytes().to_vec();
        input.push(b'x');
        let word: u16 = 7; // offset 1, length escape
        input.extend_from_slice(&word.to_le_bytes());
        input.push(0x0f); // nibble 15
        input.push(255); // byte escape
        input.extend_from_slice(&1000u16.to_le_bytes()); // total length field
        let mut out = Vec::new();
        decompress(&input, &mut out, 2000).unwrap();
        // length = (1000 - 22) + 15 + 7 + 3 = 1003
        assert_eq!(out.len(), 1 + 1003);
        assert!(out.iter().all(|&b| b == b'x'));
        // The same stream with a smaller limit is refused, not truncated.
        assert!(matches!(
            decompress(&input, &mut out, 500),
            Err(XpressError::TooLong { .. })
        ));
    }

    #[test]
    fn hostile_inputs_error() {
        let mut out = Vec::new();
        // Match before any output.
        let mut input = 0x8000_0000u32.to_le_bytes().to_vec();
        input.extend_from_slice(&0u16.to_le_bytes());
        assert!(matches!(
            decompress(&input, &mut out, 100),
            Err(XpressError::BadOffset { .. })
        ));
        // Truncated flag word.
        assert!(matches!(
            decompress(&[1, 2], &mut out, 100),
            Err(XpressError::Truncated { .. })
        ));
        // 32-bit length of 4 GB is bounded by max_out.
        let mut input = 0x4000_0000u32.to_le_bytes().to_vec();
        input.push(b'x');
        input.extend_from_slice(&7u16.to_le_bytes());
        input.extend_from_slice(&[0x0f, 255, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(
            decompress(&input, &mut out, 65536),
            Err(XpressError::TooLong { .. })
        ));
    }
}
