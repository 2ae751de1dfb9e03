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

/// Decompresses `input` into `out` (replacing its contents), producing at
/// most `max_out` bytes. On error `out` keeps what was produced before it.
pub fn decompress(input: &[u8], out: &mut Vec<u8>, max_out: usize) -> Result<(), XpressError> {
    // The declared size is exact for real buffers: one allocation (the
    // caller has checked it against its memory budget), written in place,
    // then cut to what was produced.
    // Old bytes are not zeroed first: `run` reads only what it wrote.
    if out.len() < max_out {
        out.resize(max_out, 0);
    }
    let (produced, result) = run(input, &mut out[..max_out]);
    out.truncate(produced);
    result
}

/// Decompresses into `out`; returns the bytes produced and the outcome.
/// Writes may run ahead of the produced length (fixed-size copies); the
/// caller cuts them off.
fn run(input: &[u8], out: &mut [u8]) -> (usize, Result<(), XpressError>) {
    let max_out = out.len();
    let len = input.len();
    let mut ip = 0usize;
    let mut op = 0usize;
    // Unused flag bits, the next one in bit 31, and how many are left.
    let mut bits: u32 = 0;
    let mut count: u32 = 0;
    // Position of a byte whose high nibble is still unused by a length.
    let mut half_byte: Option<usize> = None;
    macro_rules! fail {
        ($e:expr) => {
            return (op, Err($e))
        };
    }

    while ip < len {
        if count == 0 {
            let Some(w) = input
                .get(ip..ip + 4)
                .and_then(|w| <[u8; 4]>::try_from(w).ok())
            else {
                fail!(XpressError::Truncated { at: ip });
            };
            bits = u32::from_le_bytes(w);
            ip += 4;
            count = 32;
        }
        // A run of literals: the leading zero flag bits.
        let run = bits.leading_zeros().min(count);
        if run > 0 {
            let n = (run as usize).min(len - ip);
            if n > max_out - op {
                fail!(XpressError::TooLong {
                    at: ip,
                    limit: max_out
                });
            }
            if ip + 32 <= len && op + 32 <= max_out {
                out[op..op + 32].copy_from_slice(&input[ip..ip + 32]);
            } else {
                out[op..op + n].copy_from_slice(&input[ip..ip + n]);
            }
            ip += n;
            op += n;
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
        let Some(w) = input
            .get(ip..ip + 2)
            .and_then(|w| <[u8; 2]>::try_from(w).ok())
        else {
            fail!(XpressError::Truncated { at });
        };
        let word = u16::from_le_bytes(w) as usize;
        ip += 2;
        let offset = (word >> 3) + 1;
        let mut length = word & 7;
        if length == 7 {
            match half_byte.take() {
                None => {
                    let Some(&b) = input.get(ip) else {
                        fail!(XpressError::Truncated { at });
                    };
                    length = (b & 0x0f) as usize;
                    half_byte = Some(ip);
                    ip += 1;
                }
                Some(p) => length = (input[p] >> 4) as usize,
            }
            if length == 15 {
                let Some(&b) = input.get(ip) else {
                    fail!(XpressError::Truncated { at });
                };
                ip += 1;
                length = b as usize;
                if length == 255 {
                    let Some(w) = input.get(ip..ip + 2) else {
                        fail!(XpressError::Truncated { at });
                    };
                    ip += 2;
                    length = u16::from_le_bytes([w[0], w[1]]) as usize;
                    if length == 0 {
                        let Some(w) = input.get(ip..ip + 4) else {
                            fail!(XpressError::Truncated { at });
                        };
                        ip += 4;
                        length = u32::from_le_bytes([w[0], w[1], w[2], w[3]]) as usize;
                    }
                    if length < 15 + 7 {
                        fail!(XpressError::BadLength { at });
                    }
                    length -= 15 + 7;
                }
                length += 15;
            }
            length += 7;
        }
        length += 3;
        if offset > op {
            fail!(XpressError::BadOffset {
                at,
                offset,
                produced: op
            });
        }
        if length > max_out - op {
            fail!(XpressError::TooLong { at, limit: max_out });
        }
        let start = op - offset;
        if op + length + 16 <= max_out {
            // Room to write up to 15 bytes past the match: fixed-size
            // copies, no call to `memmove`. Each copy reads only bytes
            // already produced (the chunk is no longer than the offset).
            if offset >= 16 {
                out.copy_within(start..start + 16, op);
                let mut k = 16;
                while k < length {
                    out.copy_within(start + k..start + k + 16, op + k);
                    k += 16;
                }
            } else if offset >= 8 {
                let mut k = 0;
                while k < length {
                    out.copy_within(start + k..start + k + 8, op + k);
                    k += 8;
                }
            } else {
                // A pattern shorter than 8 bytes: its first 16 bytes
                // gathered at once (`REPEAT` row `offset`: i % offset), then
                // 8-byte copies from a whole number of patterns back.
                const REPEAT: [[u8; 16]; 8] = {
                    let mut t = [[0u8; 16]; 8];
                    let mut p = 1;
                    while p < 8 {
                        let mut i = 0;
                        while i < 16 {
                            t[p][i] = (i % p) as u8;
                            i += 1;
                        }
                        p += 1;
                    }
                    t
                };
                const PERIOD: [usize; 8] = [8, 8, 8, 9, 8, 10, 12, 14];
                let mut pattern = [0u8; 16];
                for (b, &i) in pattern.iter_mut().zip(&REPEAT[offset & 7]) {
                    *b = out[start + usize::from(i)];
                }
                out[op..op + 16].copy_from_slice(&pattern);
                let period = PERIOD[offset & 7];
                let mut k = 16;
                while k < length {
                    out.copy_within(op + k - period..op + k - period + 8, op + k);
                    k += 8;
                }
            }
        } else if offset >= length {
            out.copy_within(start..start + length, op);
        } else {
            // Overlapping: the `offset`-byte pattern repeats; each copy
            // doubles what can be copied next.
            let mut done = 0;
            while done < length {
                let n = (length - done).min(op + done - start);
                out.copy_within(start..start + n, op + done);
                done += n;
            }
        }
        op += length;
    }
    (op, Ok(()))
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

    /// The format decoded one flag bit and one byte at a time, as MS-XCA
    /// writes it, to check the fast paths against.
    fn reference(input: &[u8], max_out: usize) -> Result<Vec<u8>, ()> {
        let mut out: Vec<u8> = Vec::new();
        let (mut ip, mut flags, mut count, mut half): (usize, u32, u32, Option<usize>) =
            (0, 0, 0, None);
        let byte = |i: usize| input.get(i).copied().ok_or(());
        while ip < input.len() {
            if count == 0 {
                flags = u32::from_le_bytes(input.get(ip..ip + 4).ok_or(())?.try_into().unwrap());
                ip += 4;
                count = 32;
            }
            count -= 1;
            if flags & (1 << count) == 0 {
                if ip >= input.len() {
                    break;
                }
                out.push(byte(ip)?);
                ip += 1;
            } else {
                if ip == input.len() {
                    break;
                }
                let w = u16::from_le_bytes([byte(ip)?, byte(ip + 1)?]) as usize;
                ip += 2;
                let off = (w >> 3) + 1;
                let mut l = w & 7;
                if l == 7 {
                    l = match half.take() {
                        None => {
                            half = Some(ip);
                            ip += 1;
                            (byte(ip - 1)? & 15) as usize
                        }
                        Some(p) => (input[p] >> 4) as usize,
                    };
                    if l == 15 {
                        l = byte(ip)? as usize;
                        ip += 1;
                        if l == 255 {
                            l = u16::from_le_bytes([byte(ip)?, byte(ip + 1)?]) as usize;
                            ip += 2;
                            if l == 0 {
                                l = u32::from_le_bytes(
                                    input.get(ip..ip + 4).ok_or(())?.try_into().unwrap(),
                                ) as usize;
                                ip += 4;
                            }
                            l = l.checked_sub(22).ok_or(())?;
                        }
                        l += 15;
                    }
                    l += 7;
                }
                l += 3;
                if off > out.len() || out.len() + l > max_out {
                    return Err(());
                }
                for _ in 0..l {
                    out.push(out[out.len() - off]);
                }
            }
            if out.len() > max_out {
                return Err(());
            }
        }
        Ok(out)
    }

    /// Encodes literals (`None`) and matches (`Some((offset, length))`)
    /// with every length escape; returns the stream and its expansion.
    fn encode(tokens: &[(Option<(usize, usize)>, u8)]) -> (Vec<u8>, Vec<u8>) {
        let (mut input, mut out) = (Vec::new(), Vec::new());
        let mut half: Option<usize> = None;
        for chunk in tokens.chunks(32) {
            let at = input.len();
            input.extend_from_slice(&[0; 4]);
            let mut flags = 0u32;
            for (i, &(m, lit)) in chunk.iter().enumerate() {
                let Some((offset, length)) = m else {
                    input.push(lit);
                    out.push(lit);
                    continue;
                };
                flags |= 1 << (31 - i);
                let l = length - 3;
                let word = ((offset - 1) << 3) as u16 | l.min(7) as u16;
                input.extend_from_slice(&word.to_le_bytes());
                if l >= 7 {
                    let nibble = (l - 7).min(15) as u8;
                    match half.take() {
                        Some(p) => input[p] |= nibble << 4,
                        None => {
                            half = Some(input.len());
                            input.push(nibble);
                        }
                    }
                    if l - 7 >= 15 {
                        let rest = l - 7 - 15;
                        if rest < 255 {
                            input.push(rest as u8);
                        } else {
                            input.push(255);
                            input.extend_from_slice(&((length - 3) as u16).to_le_bytes());
                        }
                    }
                }
                for _ in 0..length {
                    out.push(out[out.len() - offset]);
                }
            }
            if chunk.len() < 32 {
                flags |= (1u32 << (32 - chunk.len())) - 1;
            }
            input[at..at + 4].copy_from_slice(&flags.to_le_bytes());
        }
        (input, out)
    }

    proptest::proptest! {
        /// Long matches (every length escape), short and long offsets,
        /// into an output buffer holding old bytes.
        #[test]
        fn long_and_overlapping_matches(
            tokens in proptest::collection::vec(
                (proptest::prelude::any::<bool>(), 0usize..9000, 0usize..1200, proptest::prelude::any::<u8>()),
                1..120,
            ),
            dirty in 0usize..5000,
        ) {
            let mut produced = 0usize;
            let tokens: Vec<(Option<(usize, usize)>, u8)> = tokens
                .into_iter()
                .map(|(is_match, o, l, lit)| {
                    if is_match && produced > 0 {
                        // Half the offsets short (overlapping copies).
                        let offset = if o % 2 == 0 { 1 + o % 20 } else { 1 + o % 8192 };
                        let length = 3 + if l % 3 == 0 { l % 40 } else { l };
                        let offset = offset.min(produced);
                        produced += length;
                        (Some((offset, length)), lit)
                    } else {
                        produced += 1;
                        (None, lit)
                    }
                })
                .collect();
            let (input, want) = encode(&tokens);
            let mut out = vec![0xA5; dirty];
            let fast = decompress(&input, &mut out, want.len() + 40).map(|()| out.clone());
            proptest::prop_assert_eq!(fast.as_ref().ok(), Some(&want));
            proptest::prop_assert_eq!(fast.ok(), reference(&input, want.len() + 40).ok());
        }

        #[test]
        fn matches_the_reference(
            input in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
            max_out in 0usize..3000,
        ) {
            let mut out = Vec::new();
            let fast = decompress(&input, &mut out, max_out).map(|()| out.clone());
            let slow = reference(&input, max_out);
            proptest::prop_assert_eq!(fast.is_ok(), slow.is_ok());
            if let (Ok(a), Ok(b)) = (fast, slow) {
                proptest::prop_assert_eq!(a, b);
            }
        }

        /// Valid streams: literals then matches that refer back, so most
        /// inputs decode fully (random bytes mostly fail early).
        #[test]
        fn matches_the_reference_on_valid_streams(
            tokens in proptest::collection::vec((proptest::prelude::any::<bool>(), 0u16..0xFFFF, proptest::prelude::any::<u8>()), 1..200),
        ) {
            let mut input = Vec::new();
            let mut produced = 0usize;
            for chunk in tokens.chunks(32) {
                let mut flags = 0u32;
                let mut body = Vec::new();
                for (i, &(is_match, word, lit)) in chunk.iter().enumerate() {
                    if is_match && produced > 0 {
                        // Lengths 3..=9 without escapes keep the stream valid.
                        let off = (word as usize >> 3) % produced;
                        let w = ((off as u16) << 3) | (word % 7);
                        flags |= 1 << (31 - i);
                        body.extend_from_slice(&w.to_le_bytes());
                        produced += 3 + (word % 7) as usize;
                    } else {
                        body.push(lit);
                        produced += 1;
                    }
                }
                // Unused flag bits: matches, which end the stream.
                flags |= (1u32 << (32 - chunk.len())).wrapping_sub(1) * u32::from(chunk.len() < 32);
                input.extend_from_slice(&flags.to_le_bytes());
                input.extend_from_slice(&body);
            }
            let mut out = Vec::new();
            let fast = decompress(&input, &mut out, 1 << 20).map(|()| out.clone());
            let slow = reference(&input, 1 << 20);
            proptest::prop_assert_eq!(fast.as_ref().map(Vec::len), Ok(produced));
            proptest::prop_assert_eq!(fast.ok(), slow.ok());
        }
    }
}
