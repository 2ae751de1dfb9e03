//! The call decoder against iced-x86 (an independent decoder): for every
//! generated call encoding (prefixes, REX, every ModR/M, SIB and
//! displacement shape) and for random bytes, `decode_call` answers exactly
//! when iced decodes a call, with the same length.

use iced_x86::{Decoder, DecoderOptions, Mnemonic};
use proptest::prelude::*;
use sentry_images::x86::{call_ending_at, decode_call, gadget_at, Bits};

fn iced_call(code: &[u8], bits: Bits) -> Option<usize> {
    let b = if bits == Bits::B64 { 64 } else { 32 };
    let mut d = Decoder::new(b, code, DecoderOptions::NONE);
    if !d.can_decode() {
        return None;
    }
    let i = d.decode();
    if i.is_invalid() || i.mnemonic() != Mnemonic::Call {
        return None;
    }
    Some(i.len())
}

fn bits_of(b: bool) -> Bits {
    if b {
        Bits::B64
    } else {
        Bits::B32
    }
}

/// A call encoding: legacy prefixes, optional REX (64-bit), opcode and operand.
fn call_encoding() -> impl Strategy<Value = (bool, Vec<u8>)> {
    let legacy = prop::collection::vec(
        prop::sample::select(vec![
            0x26u8, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF2, 0xF3,
        ]),
        0..4,
    );
    (
        any::<bool>(),
        legacy,
        prop::option::of(0x40u8..=0x4F),
        0u8..4,
        any::<u8>(),
        any::<u8>(),
        prop::collection::vec(any::<u8>(), 6),
    )
        .prop_map(|(b64, pre, rex, kind, modrm, sib, tail)| {
            let mut v = pre;
            if b64 {
                if let Some(r) = rex {
                    v.push(r);
                }
            }
            match kind {
                0 => v.push(0xE8),
                1 if !b64 => v.push(0x9A),
                _ => {
                    v.push(0xFF);
                    // reg field 2 (near) or 3 (far).
                    let reg = if kind == 3 { 3 } else { 2 };
                    v.push((modrm & 0xC7) | (reg << 3));
                    v.push(sib);
                }
            }
            v.extend_from_slice(&tail);
            (b64, v)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8_000))]

    #[test]
    fn generated_calls_match_iced((b64, code) in call_encoding()) {
        let bits = bits_of(b64);
        let ours = decode_call(&code, bits).map(|c| c.1);
        prop_assert_eq!(ours, iced_call(&code, bits), "{:02x?}", code);
    }

    #[test]
    fn random_bytes_match_iced(b64 in any::<bool>(), code in prop::collection::vec(any::<u8>(), 0..16)) {
        let bits = bits_of(b64);
        let ours = decode_call(&code, bits).map(|c| c.1);
        prop_assert_eq!(ours, iced_call(&code, bits), "{:02x?}", code);
    }

    /// Placed right before a return address, any call makes it call-preceded.
    #[test]
    fn a_call_before_makes_call_preceded(
        (b64, code) in call_encoding(),
        filler in prop::collection::vec(any::<u8>(), 0..12),
    ) {
        let bits = bits_of(b64);
        if let Some(n) = iced_call(&code, bits) {
            let mut lead = filler;
            lead.extend_from_slice(&code[..n]);
            let (_, m) = call_ending_at(&lead, bits).expect("call-preceded");
            // Some call ends there; decoding from its start gives that length.
            prop_assert_eq!(iced_call(&lead[lead.len() - m..], bits), Some(m));
        }
    }

    /// `call_ending_at` never claims a call that iced does not decode.
    #[test]
    fn call_ending_at_is_sound(b64 in any::<bool>(), lead in prop::collection::vec(any::<u8>(), 0..20)) {
        let bits = bits_of(b64);
        if let Some((_, m)) = call_ending_at(&lead, bits) {
            prop_assert_eq!(iced_call(&lead[lead.len() - m..], bits), Some(m));
        }
        // ... and finds one whenever iced decodes a call ending there.
        let any = (1..=lead.len().min(15))
            .any(|l| iced_call(&lead[lead.len() - l..], bits) == Some(l));
        prop_assert_eq!(call_ending_at(&lead, bits).is_some(), any);
        let _ = gadget_at(&lead, bits);
    }
}
