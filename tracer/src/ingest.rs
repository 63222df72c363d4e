//! Decoding ring-buffer records into the collector's types.

use anyhow::{bail, Result};
use tracer_common::{
    DependencyEvent, HeldLock, LockEvent, LockKind, PyCodeCopy, PyFrameRaw, PyStack,
    EVENT_DEPENDENCY, EVENT_HANDOFF, EVENT_LOCK_RESET, EVENT_PROCESS_EXIT, EVENT_SELF_DEADLOCK,
    MAX_HELD, PY_MAX_FRAMES, STACK_BYTES,
};

/// A `DependencyEvent`, decoded: the lock `to` was requested while each lock
/// of `from` was held, and none of those dependencies had been seen before.
#[derive(Clone, Debug)]
pub struct DependencyRecord {
    pub pid: u32,
    pub tid: u32,
    pub thread: String,
    pub timestamp_ns: u64,
    pub to: HeldLock,
    pub from: Vec<HeldLock>,
    /// Non-zero: the lock function's address, the event being made at its
    /// return (`ip` is then the return address in the caller).
    pub entry_ip: u64,
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// User stack bytes from `sp` up.
    pub stack: Vec<u8>,
    /// Every lock the thread held at the request.
    pub held: Vec<u64>,
    /// The thread's Python frames, innermost first (empty unless the
    /// process runs a supported CPython).
    pub python: Vec<PyFrameRaw>,
    /// Sent as a wake-up hand-off (`EVENT_HANDOFF`).
    pub handoff: bool,
}

pub enum Record {
    Dependency(DependencyRecord),
    /// `from[0]` is the held lock that `to` requests again.
    SelfDeadlock(DependencyRecord),
    /// The lock at `addr` of process `pid` was initialized (with the init
    /// call site) or destroyed.
    LockReset {
        pid: u32,
        addr: u64,
        init_site: Option<u64>,
        /// The Python frames that created it (innermost first), for a lock
        /// made by Python code, and copies of the first ones' code objects.
        py_creator: Vec<PyFrameRaw>,
        py_code: Vec<PyCodeCopy>,
        /// For an initialization: the stack pointer at the init function's
        /// entry and the stack bytes above it.
        init_stack: Option<(u64, Vec<u8>)>,
    },
    /// A traced process exited.
    ProcessExit {
        pid: u32,
    },
}

pub fn decode(bytes: &[u8]) -> Result<Record> {
    let Some(kind) = bytes
        .get(..4)
        .map(|b| u32::from_ne_bytes(b.try_into().unwrap()))
    else {
        bail!("empty ring-buffer record");
    };
    match kind {
        EVENT_DEPENDENCY | EVENT_HANDOFF => decode_dependency(bytes).map(Record::Dependency),
        EVENT_SELF_DEADLOCK => decode_dependency(bytes).map(Record::SelfDeadlock),
        EVENT_PROCESS_EXIT => {
            let ev = decode_lock_event(bytes)?;
            Ok(Record::ProcessExit { pid: ev.pid })
        }
        EVENT_LOCK_RESET => {
            let ev = decode_lock_event(bytes)?;
            Ok(Record::LockReset {
                pid: ev.pid,
                addr: ev.addr,
                init_site: (ev.init != 0).then_some(ev.callsite),
                py_creator: ev
                    .py_creator
                    .iter()
                    .take_while(|f| f.code != 0)
                    .copied()
                    .collect(),
                py_code: ev.py_code.iter().filter(|c| c.code != 0).copied().collect(),
                init_stack: (ev.init != 0 && ev.init_stack_len != 0).then(|| {
                    let len = (ev.init_stack_len as usize).min(ev.init_stack.len());
                    (ev.sp, ev.init_stack[..len].to_vec())
                }),
            })
        }
        other => bail!("unknown ring-buffer record kind {other}"),
    }
}

fn decode_lock_event(bytes: &[u8]) -> Result<LockEvent> {
    if bytes.len() < size_of::<LockEvent>() {
        bail!("short lock record: {} bytes", bytes.len());
    }
    // SAFETY: the size is checked and LockEvent is plain data.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
}

fn decode_dependency(bytes: &[u8]) -> Result<DependencyRecord> {
    if bytes.len() < size_of::<DependencyEvent>() {
        bail!("short dependency record: {} bytes", bytes.len());
    }
    // Field by field: copying the whole record (12 KiB, mostly stack) to an
    // aligned value first would double the cost of decoding.
    macro_rules! field {
        ($name:ident) => {{
            let offset = std::mem::offset_of!(DependencyEvent, $name);
            // SAFETY: the record holds a whole DependencyEvent (checked
            // above), and its fields are plain data; the ring buffer only
            // aligns to 8, so read unaligned.
            unsafe { std::ptr::read_unaligned(bytes.as_ptr().add(offset).cast()) }
        }};
    }
    let n_from: u32 = field!(n_from);
    let n_held: u32 = field!(n_held);
    let stack_len: u32 = field!(stack_len);
    let n_from = (n_from as usize).min(MAX_HELD);
    let n_held = (n_held as usize).min(MAX_HELD);
    let stack_len = (stack_len as usize).min(STACK_BYTES);
    let from: [HeldLock; MAX_HELD] = field!(from);
    let held: [u64; MAX_HELD] = field!(held);
    let comm: [u8; tracer_common::COMM_LEN] = field!(comm);
    let py: PyStack = field!(py);
    let py_depth = (py.depth as usize).min(PY_MAX_FRAMES);
    let stack_at = std::mem::offset_of!(DependencyEvent, stack);
    Ok(DependencyRecord {
        pid: field!(pid),
        tid: field!(tid),
        thread: comm_to_string(&comm),
        timestamp_ns: field!(timestamp_ns),
        to: field!(to),
        from: from[..n_from].to_vec(),
        entry_ip: field!(entry_ip),
        ip: field!(ip),
        sp: field!(sp),
        bp: field!(bp),
        stack: bytes[stack_at..stack_at + stack_len].to_vec(),
        held: held[..n_held].to_vec(),
        python: py.frames[..py_depth].to_vec(),
        handoff: {
            let event: u32 = field!(event);
            event == EVENT_HANDOFF
        },
    })
}

pub fn lock_kind(raw: u32) -> LockKind {
    LockKind::from_raw(raw).unwrap_or(LockKind::Mutex)
}

fn comm_to_string(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_dependency_event() {
        // SAFETY: all-zero is a valid DependencyEvent, and the layout is its
        // own (Box::new_zeroed needs Rust 1.92; the MSRV is 1.87).
        let mut ev: Box<DependencyEvent> = unsafe {
            let layout = std::alloc::Layout::new::<DependencyEvent>();
            Box::from_raw(std::alloc::alloc_zeroed(layout).cast())
        };
        ev.event = EVENT_DEPENDENCY;
        ev.pid = 10;
        ev.tid = 11;
        ev.n_from = 2;
        ev.comm[..4].copy_from_slice(b"work");
        ev.to = HeldLock {
            addr: 0x3000,
            callsite: 0x400,
            kind: 1,
            flags: 0,
        };
        ev.from[0].addr = 0x1000;
        ev.from[1].addr = 0x2000;
        ev.stack_len = 16;
        ev.stack[..16].copy_from_slice(&[7; 16]);
        // SAFETY: viewing plain data as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&*ev as *const DependencyEvent).cast::<u8>(),
                size_of::<DependencyEvent>(),
            )
        };
        let Ok(Record::Dependency(d)) = decode(bytes) else {
            panic!("not decoded as a dependency");
        };
        assert_eq!((d.pid, d.tid, d.thread.as_str()), (10, 11, "work"));
        assert_eq!(
            d.from.iter().map(|h| h.addr).collect::<Vec<_>>(),
            vec![0x1000, 0x2000]
        );
        assert_eq!(d.to.addr, 0x3000);
        assert_eq!(d.stack, vec![7; 16]);
        assert!(decode(&bytes[..100]).is_err());
    }
}
