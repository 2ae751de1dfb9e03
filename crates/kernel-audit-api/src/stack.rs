//! The call stack an event carries when its provider was enabled with
//! `EVENT_ENABLE_PROPERTY_STACK_TRACE`.
//!
//! [EVENT_EXTENDED_ITEM_STACK_TRACE64](https://learn.microsoft.com/windows/win32/api/evntcons/ns-evntcons-event_extended_item_stack_trace64)
//! (`ULONG64 MatchId; ULONG64 Address[]`) and
//! [EVENT_EXTENDED_ITEM_STACK_TRACE32](https://learn.microsoft.com/windows/win32/api/evntcons/ns-evntcons-event_extended_item_stack_trace32)
//! (`ULONG64 MatchId; ULONG Address[]`), in the
//! `EVENT_HEADER_EXTENDED_DATA_ITEM` of type 6 or 5. The addresses run
//! innermost first: for a kernel event, the kernel frames, then the user
//! frames of the thread that made the system call. `MatchId` is zero when
//! both parts are in this event; otherwise Windows could not capture them
//! together and the other part comes in a separate event with the same
//! `MatchId` (Microsoft Learn, the `MatchId` member).
//!
//! A stack item's width follows the kernel, not the caller: the corpus's
//! WoW64 trace (`win8-wow64-compressed-stackcache.etl`) has `STACK_TRACE64`
//! items on `EVENT_HEADER32` events.

use sentry_raw::{ext_type, RawEvent};

/// The first stack item of an event.
#[derive(Debug, Clone, Copy)]
pub struct CallStack<'a> {
    pub match_id: u64,
    /// 4 (`STACK_TRACE32`) or 8 (`STACK_TRACE64`).
    pub width: u8,
    /// The addresses, `width` bytes each (a trailing partial address is
    /// not part of the stack).
    pub addresses: &'a [u8],
}

impl<'a> CallStack<'a> {
    /// The event's first `STACK_TRACE32`/`STACK_TRACE64` item, if any.
    pub fn of(ev: &RawEvent<'a>) -> Option<CallStack<'a>> {
        ev.extended.items().find_map(|item| {
            let width = match item.ext_type {
                ext_type::STACK_TRACE32 => 4,
                ext_type::STACK_TRACE64 => 8,
                _ => return None,
            };
            let match_id = u64::from_le_bytes(item.data.get(..8)?.try_into().ok()?);
            let rest = &item.data[8..];
            let n = rest.len() / usize::from(width);
            Some(CallStack {
                match_id,
                width,
                addresses: &rest[..n * usize::from(width)],
            })
        })
    }

    pub fn len(&self) -> usize {
        self.addresses.len() / usize::from(self.width)
    }

    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty()
    }

    /// The addresses, zero-extended, innermost first.
    pub fn frames(&self) -> impl Iterator<Item = u64> + 'a {
        let w = usize::from(self.width);
        self.addresses.chunks_exact(w).map(move |c| {
            let mut a = [0u8; 8];
            a[..w].copy_from_slice(c);
            u64::from_le_bytes(a)
        })
    }

    /// Appends the frames to `out` (cleared first).
    pub fn collect_into(&self, out: &mut Vec<u64>) {
        out.clear();
        out.extend(self.frames());
    }
}
