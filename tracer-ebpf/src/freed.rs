//! Heap memory freed with a lock in it (`--watch-free`). A glibc mutex
//! that is unlocked is byte for byte a fresh one, so a heap lock that is
//! freed without `pthread_mutex_destroy` (legal: destroy does nothing for
//! a plain mutex, and many programs skip it) and whose memory becomes
//! another lock (statically initialized or zeroed, no init call) would be
//! the same instance to the collector, and join the old lock's
//! dependencies to the new one's: a false inversion. Only `free` shows the
//! end of the old lock.
//!
//! A uprobe on `free` costs every call a trap, so the probe is attached only
//! with `--watch-free`, and does as little as it can: it reads the chunk's
//! size from glibc's chunk header and looks up the lines (64 bytes) or, for
//! chunks over 4 KiB, the pages of the chunk in sets of the memory of locks
//! named in dependencies (filled by `note_named`, when a dependency is
//! sent). Only a free that may hold such a lock is sent to the collector,
//! which forgets the locks it knows in that memory.

use aya_ebpf::{
    macros::{map, uprobe},
    maps::LruHashMap,
    programs::ProbeContext,
};
use tracer_common::{Counter, EventKind, FreeEvent, LockKey};

use crate::{
    context::{global, lock_arg, read_user_u64},
    counters::count,
    emit::EVENTS,
    filter::current_traced,
};

const LINE_SHIFT: u64 = 6;
const PAGE_SHIFT: u64 = 12;
/// Chunks of up to this many lines are looked up line by line.
const MAX_LINES: u64 = 64;
/// Larger chunks of up to this many pages are looked up page by page; a
/// larger one (over 1 MiB) is always sent.
const MAX_PAGES: u64 = 256;

/// Lines holding a lock named in a dependency (LRU, like `KNOWN_LOCKS`: a
/// line evicted there is a free this probe no longer sees).
#[map]
static LOCK_LINES: LruHashMap<LockKey, u8> = LruHashMap::with_max_entries(131072, 0);
/// Pages holding a lock named in a dependency.
#[map]
static LOCK_PAGES: LruHashMap<LockKey, u8> = LruHashMap::with_max_entries(32768, 0);

/// Set by the collector at load time (`--watch-free`): without it, the
/// lock programs skip `note_named`'s map updates.
#[no_mangle]
static WATCH_FREE: u32 = 0;

#[inline(always)]
fn key(tgid: u32, unit: u64) -> LockKey {
    LockKey {
        pid: tgid,
        _pad: 0,
        addr: unit,
    }
}

/// The lock at `addr` is named in a dependency sent now: a free of its
/// memory must be seen.
///
/// Not inlined: called once per lock of a dependency, a BPF subprogram is
/// far cheaper for the verifier than that many inlined copies (`lock`:
/// 282k instructions processed as a subprogram, 341k inlined).
#[inline(never)]
pub fn note_named(tgid: u32, addr: u64) {
    if global(&WATCH_FREE) == 0 {
        return;
    }
    let _ = LOCK_LINES.insert(&key(tgid, addr >> LINE_SHIFT), &1, 0);
    let _ = LOCK_PAGES.insert(&key(tgid, addr >> PAGE_SHIFT), &1, 0);
}

/// Whether `[start, end)` may hold a named lock.
#[inline(always)]
fn may_hold_named_lock(tgid: u32, start: u64, end: u64) -> bool {
    let (first, last) = (start >> LINE_SHIFT, (end - 1) >> LINE_SHIFT);
    if last - first < MAX_LINES {
        for i in 0..MAX_LINES {
            let line = first + i;
            if line > last {
                break;
            }
            // SAFETY: presence check only.
            if unsafe { LOCK_LINES.get(&key(tgid, line)) }.is_some() {
                return true;
            }
        }
        return false;
    }
    let (first, last) = (start >> PAGE_SHIFT, (end - 1) >> PAGE_SHIFT);
    if last - first >= MAX_PAGES {
        return true;
    }
    for i in 0..MAX_PAGES {
        let page = first + i;
        if page > last {
            break;
        }
        // SAFETY: presence check only.
        if unsafe { LOCK_PAGES.get(&key(tgid, page)) }.is_some() {
            return true;
        }
    }
    false
}

/// Forgets the lines wholly inside `[start, end)` (a line shared with the
/// next chunk may hold its lock): a later free of this memory, reused for
/// something else, is not sent again. Pages stay (other chunks share them).
#[inline(always)]
fn forget_lines(tgid: u32, start: u64, end: u64) {
    let first = (start + (1 << LINE_SHIFT) - 1) >> LINE_SHIFT;
    let last = end >> LINE_SHIFT; // exclusive
    for i in 0..MAX_LINES {
        let line = first + i;
        if line >= last {
            break;
        }
        let _ = LOCK_LINES.remove(&key(tgid, line));
    }
}

/// `free(ptr)`.
#[uprobe]
pub fn heap_free(ctx: ProbeContext) -> u32 {
    let Some((tgid, _)) = current_traced() else {
        return 0;
    };
    let ptr = lock_arg(&ctx);
    if ptr < 16 {
        return 0;
    }
    // glibc's chunk header: the chunk's size, with flags in its low three
    // bits; an mmapped chunk (bit 1) has 16 bytes of header, another 8
    // (its next chunk's first word is still its memory).
    let size = read_user_u64(ptr - 8);
    let chunk = size & !7;
    if chunk < 32 {
        return 0; // not a glibc chunk, or unreadable
    }
    let header = if size & 2 != 0 { 16 } else { 8 };
    let end = ptr.wrapping_add(chunk - header);
    let end = if end <= ptr { u64::MAX } else { end };
    if !may_hold_named_lock(tgid, ptr, end) {
        return 0;
    }
    if end - ptr <= MAX_LINES << LINE_SHIFT {
        forget_lines(tgid, ptr, end);
    }
    let Some(mut entry) = EVENTS.reserve::<FreeEvent>(0) else {
        count(Counter::LostEvents);
        return 0;
    };
    entry.write(FreeEvent {
        event: EventKind::MemoryFreed as u32,
        pid: tgid,
        start: ptr,
        end,
    });
    entry.submit(0);
    count(Counter::FreedLockMemory);
    0
}
