//! Decoding ring-buffer records into typed values. Fields are read one by
//! one with `bytes::Buf` at their `offset_of!` in the `#[repr(C)]` record
//! (the ring buffer aligns records to 8 bytes only, and most of a 12 KiB
//! dependency record is stack that is copied once, as `Bytes`).

use anyhow::{bail, Result};
use bytes::{Buf, Bytes};
use std::mem::{offset_of, size_of};
use tracer_analysis::InitStack;
use tracer_common::{
    DeferredDependency, DependencyEvent, EventKind, FreeEvent, HeldLock, LockEvent, LockKind,
    PyCodeCopy, PyCodeSnapshot, PyFrameRaw, PyStack, CALLER_WORDS, MAX_HELD, PY_CODE_COPIES,
    PY_CREATOR_FRAMES, PY_MAX_FRAMES, STACK_BYTES,
};

/// A `DependencyEvent`, decoded: the lock `to` was requested while each lock
/// of `from` was held, and none of those dependencies had been seen before.
#[derive(Clone, Debug)]
pub struct RawRequest {
    pub pid: u32,
    pub tid: u32,
    pub thread: String,
    pub timestamp_ns: u64,
    /// The thread's cgroup v2 id at the request (0: unknown).
    pub cgroup_id: u64,
    pub to: HeldLock,
    pub from: Vec<HeldLock>,
    /// Non-zero: the lock function's address, the event being made at its
    /// return (`ip` is then the return address in the caller).
    pub entry_ip: u64,
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// User stack bytes from `sp` up.
    pub stack: Bytes,
    /// Every lock the thread held at the request.
    pub held: Vec<u64>,
    /// The thread's Python frames, innermost first (empty unless the
    /// process runs a supported CPython).
    pub python: Vec<PyFrameRaw>,
    /// Sent as a wake-up hand-off (`EventKind::Handoff`).
    pub handoff: bool,
}

pub enum Record {
    Dependency(RawRequest),
    /// `from[0]` is the held lock that `to` requests again.
    SelfDeadlock(RawRequest),
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
        /// For an initialization: the stack at the init function's entry.
        init_stack: Option<InitStack>,
    },
    /// A traced process exited.
    ProcessExit {
        pid: u32,
    },
    /// A traced process exec'd a new program (a new address space).
    ProcessExec {
        pid: u32,
        /// When (CLOCK_MONOTONIC ns; 0: unknown).
        at_ns: u64,
    },
    /// Memory of a code object of CPython process `pid` (the object, its
    /// names, its location table: `(address, bytes)`), copied before the
    /// records that name it.
    PyCode {
        pid: u32,
        parts: Vec<(u64, Vec<u8>)>,
    },
    /// Heap memory `[start, end)` that may have held a lock named in a
    /// dependency was freed.
    MemoryFreed {
        pid: u32,
        start: u64,
        end: u64,
    },
}

impl Record {
    /// The process whose Python frames the record carries, if any kind of
    /// record that may.
    pub fn python_pid(&self) -> Option<u32> {
        match self {
            Record::Dependency(r) | Record::SelfDeadlock(r) => Some(r.pid),
            Record::LockReset { pid, .. } => Some(*pid),
            Record::ProcessExit { .. }
            | Record::ProcessExec { .. }
            | Record::MemoryFreed { .. }
            | Record::PyCode { .. } => None,
        }
    }
}

pub fn decode(bytes: &[u8]) -> Result<Record> {
    if bytes.len() < 4 {
        bail!("empty ring-buffer record");
    }
    let raw = u32_at(bytes, 0);
    let Some(kind) = EventKind::from_raw(raw) else {
        bail!("unknown ring-buffer record kind {raw}");
    };
    match kind {
        EventKind::Dependency | EventKind::Handoff => decode_request(bytes).map(Record::Dependency),
        EventKind::SelfDeadlock => decode_request(bytes).map(Record::SelfDeadlock),
        EventKind::ProcessExit => {
            check_len::<LockEvent>(bytes, "process exit")?;
            Ok(Record::ProcessExit {
                pid: u32_at(bytes, offset_of!(LockEvent, pid)),
            })
        }
        EventKind::ProcessExec => {
            check_len::<LockEvent>(bytes, "process exec")?;
            Ok(Record::ProcessExec {
                pid: u32_at(bytes, offset_of!(LockEvent, pid)),
                at_ns: u64_at(bytes, offset_of!(LockEvent, addr)),
            })
        }
        EventKind::LockReset => decode_lock_reset(bytes),
        EventKind::PyCode => decode_py_code(bytes),
        EventKind::MemoryFreed => {
            check_len::<FreeEvent>(bytes, "memory freed")?;
            Ok(Record::MemoryFreed {
                pid: u32_at(bytes, offset_of!(FreeEvent, pid)),
                start: u64_at(bytes, offset_of!(FreeEvent, start)),
                end: u64_at(bytes, offset_of!(FreeEvent, end)),
            })
        }
    }
}

fn decode_py_code(b: &[u8]) -> Result<Record> {
    check_len::<PyCodeSnapshot>(b, "Python code")?;
    let part = |addr_at: usize, len_at: usize, bytes_at: usize, max: usize| {
        let addr = u64_at(b, addr_at);
        let len = (u32_at(b, len_at) as usize).min(max);
        (addr != 0 && len != 0).then(|| (addr, b[bytes_at..bytes_at + len].to_vec()))
    };
    let parts = [
        part(
            offset_of!(PyCodeSnapshot, code),
            offset_of!(PyCodeSnapshot, code_len),
            offset_of!(PyCodeSnapshot, code_bytes),
            tracer_common::PY_SNAPSHOT_CODE,
        ),
        part(
            offset_of!(PyCodeSnapshot, filename),
            offset_of!(PyCodeSnapshot, filename_len),
            offset_of!(PyCodeSnapshot, filename_bytes),
            tracer_common::PY_SNAPSHOT_STR,
        ),
        part(
            offset_of!(PyCodeSnapshot, qualname),
            offset_of!(PyCodeSnapshot, qualname_len),
            offset_of!(PyCodeSnapshot, qualname_bytes),
            tracer_common::PY_SNAPSHOT_STR,
        ),
        part(
            offset_of!(PyCodeSnapshot, linetable),
            offset_of!(PyCodeSnapshot, linetable_len),
            offset_of!(PyCodeSnapshot, linetable_bytes),
            tracer_common::PY_SNAPSHOT_TABLE,
        ),
    ];
    Ok(Record::PyCode {
        pid: u32_at(b, offset_of!(PyCodeSnapshot, pid)),
        parts: parts.into_iter().flatten().collect(),
    })
}

fn check_len<T>(bytes: &[u8], what: &str) -> Result<()> {
    if bytes.len() < size_of::<T>() {
        bail!("short {what} record: {} bytes", bytes.len());
    }
    Ok(())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    (&b[at..]).get_u32_ne()
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    (&b[at..]).get_u64_ne()
}

fn held_lock_at(b: &[u8], at: usize) -> HeldLock {
    let mut f = &b[at..];
    let mut lock = HeldLock {
        addr: f.get_u64_ne(),
        callsite: f.get_u64_ne(),
        kind: f.get_u32_ne(),
        flags: f.get_u32_ne(),
        sp: f.get_u64_ne(),
        bp: f.get_u64_ne(),
        above: [0; CALLER_WORDS],
        py: PyFrameRaw::default(),
        py_caller: PyFrameRaw::default(),
    };
    for word in &mut lock.above {
        *word = f.get_u64_ne();
    }
    lock.py = PyFrameRaw {
        code: f.get_u64_ne(),
        prev_instr: f.get_u64_ne(),
    };
    lock.py_caller = PyFrameRaw {
        code: f.get_u64_ne(),
        prev_instr: f.get_u64_ne(),
    };
    lock
}

fn py_frame_at(b: &[u8], at: usize) -> PyFrameRaw {
    let mut f = &b[at..];
    PyFrameRaw {
        code: f.get_u64_ne(),
        prev_instr: f.get_u64_ne(),
    }
}

fn py_code_at(b: &[u8], at: usize) -> PyCodeCopy {
    let field = |name_at: usize| at + name_at;
    let mut copy = PyCodeCopy {
        code: u64_at(b, field(offset_of!(PyCodeCopy, code))),
        prev_instr: u64_at(b, field(offset_of!(PyCodeCopy, prev_instr))),
        first_line: (&b[field(offset_of!(PyCodeCopy, first_line))..]).get_i32_ne(),
        linetable_len: u32_at(b, field(offset_of!(PyCodeCopy, linetable_len))),
        filename_len: u32_at(b, field(offset_of!(PyCodeCopy, filename_len))),
        qualname_len: u32_at(b, field(offset_of!(PyCodeCopy, qualname_len))),
        filename: [0; tracer_common::PY_FILENAME_BYTES],
        qualname: [0; tracer_common::PY_QUALNAME_BYTES],
        linetable: [0; tracer_common::PY_LINETABLE_BYTES],
    };
    (&b[field(offset_of!(PyCodeCopy, filename))..]).copy_to_slice(&mut copy.filename);
    (&b[field(offset_of!(PyCodeCopy, qualname))..]).copy_to_slice(&mut copy.qualname);
    (&b[field(offset_of!(PyCodeCopy, linetable))..]).copy_to_slice(&mut copy.linetable);
    copy
}

fn decode_lock_reset(b: &[u8]) -> Result<Record> {
    check_len::<LockEvent>(b, "lock")?;
    let init = u32_at(b, offset_of!(LockEvent, init)) != 0;
    let creator_at = offset_of!(LockEvent, py_creator);
    let py_creator = (0..PY_CREATOR_FRAMES)
        .map(|i| py_frame_at(b, creator_at + i * size_of::<PyFrameRaw>()))
        .take_while(|f| f.code != 0)
        .collect();
    let code_at = offset_of!(LockEvent, py_code);
    let py_code = (0..PY_CODE_COPIES)
        .map(|i| py_code_at(b, code_at + i * size_of::<PyCodeCopy>()))
        .filter(|c| c.code != 0)
        .collect();
    let stack_len = u32_at(b, offset_of!(LockEvent, init_stack_len)) as usize;
    let init_stack = (init && stack_len != 0).then(|| {
        let at = offset_of!(LockEvent, init_stack);
        let len = stack_len.min(tracer_common::INIT_STACK_BYTES);
        InitStack {
            sp: u64_at(b, offset_of!(LockEvent, sp)),
            bp: u64_at(b, offset_of!(LockEvent, bp)),
            bytes: b[at..at + len].to_vec(),
        }
    });
    Ok(Record::LockReset {
        pid: u32_at(b, offset_of!(LockEvent, pid)),
        addr: u64_at(b, offset_of!(LockEvent, addr)),
        init_site: init.then(|| u64_at(b, offset_of!(LockEvent, callsite))),
        py_creator,
        py_code,
        init_stack,
    })
}

fn decode_request(b: &[u8]) -> Result<RawRequest> {
    check_len::<DependencyEvent>(b, "dependency")?;
    let n_from = (u32_at(b, offset_of!(DependencyEvent, n_from)) as usize).min(MAX_HELD);
    let n_held = (u32_at(b, offset_of!(DependencyEvent, n_held)) as usize).min(MAX_HELD);
    let stack_len = (u32_at(b, offset_of!(DependencyEvent, stack_len)) as usize).min(STACK_BYTES);
    let from_at = offset_of!(DependencyEvent, from);
    let held_at = offset_of!(DependencyEvent, held);
    let py_at = offset_of!(DependencyEvent, py);
    let py_depth = (u32_at(b, py_at + offset_of!(PyStack, depth)) as usize).min(PY_MAX_FRAMES);
    let frames_at = py_at + offset_of!(PyStack, frames);
    let comm_at = offset_of!(DependencyEvent, comm);
    let stack_at = offset_of!(DependencyEvent, stack);
    Ok(RawRequest {
        pid: u32_at(b, offset_of!(DependencyEvent, pid)),
        tid: u32_at(b, offset_of!(DependencyEvent, tid)),
        thread: comm_to_string(&b[comm_at..comm_at + tracer_common::COMM_LEN]),
        timestamp_ns: u64_at(b, offset_of!(DependencyEvent, timestamp_ns)),
        cgroup_id: u64_at(b, offset_of!(DependencyEvent, cgroup_id)),
        to: held_lock_at(b, offset_of!(DependencyEvent, to)),
        from: (0..n_from)
            .map(|i| held_lock_at(b, from_at + i * size_of::<HeldLock>()))
            .collect(),
        entry_ip: u64_at(b, offset_of!(DependencyEvent, entry_ip)),
        ip: u64_at(b, offset_of!(DependencyEvent, ip)),
        sp: u64_at(b, offset_of!(DependencyEvent, sp)),
        bp: u64_at(b, offset_of!(DependencyEvent, bp)),
        stack: Bytes::copy_from_slice(&b[stack_at..stack_at + stack_len]),
        held: (0..n_held).map(|i| u64_at(b, held_at + i * 8)).collect(),
        python: (0..py_depth)
            .map(|i| py_frame_at(b, frames_at + i * size_of::<PyFrameRaw>()))
            .collect(),
        handoff: u32_at(b, offset_of!(DependencyEvent, event)) == EventKind::Handoff as u32,
    })
}

/// A dependency the ring buffer had no room for, as a request of one held
/// lock whose stack is the short window the kernel kept.
pub fn deferred(d: &DeferredDependency) -> RawRequest {
    let n_held = (d.n_held as usize).min(MAX_HELD);
    let stack_len = (d.stack_len as usize).min(d.stack.len());
    RawRequest {
        pid: d.pid,
        tid: d.tid,
        thread: comm_to_string(&d.comm),
        timestamp_ns: d.timestamp_ns,
        cgroup_id: d.cgroup_id,
        to: d.to,
        from: vec![d.from],
        entry_ip: 0,
        ip: d.ip,
        sp: d.sp,
        bp: d.bp,
        stack: Bytes::copy_from_slice(&d.stack[..stack_len]),
        held: d.held[..n_held].to_vec(),
        python: Vec::new(),
        handoff: d.event == EventKind::Handoff as u32,
    }
}

/// A lock kind as the kernel side sent it (unknown values read as a mutex).
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

    /// Writes `v`'s bytes at `at` (the test builds records as the kernel
    /// side lays them out).
    fn put(buf: &mut [u8], at: usize, v: &[u8]) {
        buf[at..at + v.len()].copy_from_slice(v);
    }

    #[test]
    fn decodes_a_dependency_event() {
        let mut b = vec![0u8; size_of::<DependencyEvent>()];
        put(
            &mut b,
            offset_of!(DependencyEvent, event),
            &(EventKind::Dependency as u32).to_ne_bytes(),
        );
        put(
            &mut b,
            offset_of!(DependencyEvent, pid),
            &10u32.to_ne_bytes(),
        );
        put(
            &mut b,
            offset_of!(DependencyEvent, tid),
            &11u32.to_ne_bytes(),
        );
        put(
            &mut b,
            offset_of!(DependencyEvent, n_from),
            &2u32.to_ne_bytes(),
        );
        put(&mut b, offset_of!(DependencyEvent, comm), b"work");
        let to = offset_of!(DependencyEvent, to);
        put(&mut b, to, &0x3000u64.to_ne_bytes());
        put(&mut b, to + 8, &0x400u64.to_ne_bytes());
        put(&mut b, to + 16, &1u32.to_ne_bytes());
        let from = offset_of!(DependencyEvent, from);
        put(&mut b, from, &0x1000u64.to_ne_bytes());
        put(
            &mut b,
            from + size_of::<HeldLock>(),
            &0x2000u64.to_ne_bytes(),
        );
        // Where Python code took the first held lock (its innermost frame).
        let py = from + offset_of!(HeldLock, py);
        put(&mut b, py, &0x7f00_1000u64.to_ne_bytes());
        put(&mut b, py + 8, &0x7f00_1040u64.to_ne_bytes());
        put(
            &mut b,
            offset_of!(DependencyEvent, n_held),
            &1u32.to_ne_bytes(),
        );
        put(
            &mut b,
            offset_of!(DependencyEvent, held),
            &0x1000u64.to_ne_bytes(),
        );
        put(
            &mut b,
            offset_of!(DependencyEvent, stack_len),
            &16u32.to_ne_bytes(),
        );
        put(&mut b, offset_of!(DependencyEvent, stack), &[7; 16]);
        let Ok(Record::Dependency(d)) = decode(&b) else {
            panic!("not decoded as a dependency");
        };
        assert_eq!((d.pid, d.tid, d.thread.as_str()), (10, 11, "work"));
        assert_eq!(
            d.from.iter().map(|h| h.addr).collect::<Vec<_>>(),
            vec![0x1000, 0x2000]
        );
        assert_eq!((d.to.addr, d.to.callsite, d.to.kind), (0x3000, 0x400, 1));
        assert_eq!(
            (d.from[0].py.code, d.from[0].py.prev_instr),
            (0x7f00_1000, 0x7f00_1040)
        );
        assert_eq!(d.from[1].py, PyFrameRaw::default());
        assert_eq!(d.held, vec![0x1000]);
        assert_eq!(&d.stack[..], &[7; 16]);
        assert!(!d.handoff);
        assert!(decode(&b[..100]).is_err());
        assert!(decode(&[]).is_err());
    }

    #[test]
    fn decodes_a_lock_init_with_its_stack() {
        let mut b = vec![0u8; size_of::<LockEvent>()];
        put(
            &mut b,
            offset_of!(LockEvent, event),
            &(EventKind::LockReset as u32).to_ne_bytes(),
        );
        put(&mut b, offset_of!(LockEvent, pid), &5u32.to_ne_bytes());
        put(&mut b, offset_of!(LockEvent, init), &1u32.to_ne_bytes());
        put(
            &mut b,
            offset_of!(LockEvent, addr),
            &0xabc0u64.to_ne_bytes(),
        );
        put(
            &mut b,
            offset_of!(LockEvent, callsite),
            &0x55u64.to_ne_bytes(),
        );
        put(&mut b, offset_of!(LockEvent, sp), &0x7ff0u64.to_ne_bytes());
        put(
            &mut b,
            offset_of!(LockEvent, init_stack_len),
            &8u32.to_ne_bytes(),
        );
        put(&mut b, offset_of!(LockEvent, init_stack), &[9; 8]);
        let Ok(Record::LockReset {
            pid,
            addr,
            init_site,
            py_creator,
            init_stack,
            ..
        }) = decode(&b)
        else {
            panic!("not decoded as a lock reset");
        };
        assert_eq!((pid, addr, init_site), (5, 0xabc0, Some(0x55)));
        assert!(py_creator.is_empty());
        assert_eq!(
            init_stack,
            Some(InitStack {
                sp: 0x7ff0,
                bp: 0,
                bytes: vec![9; 8]
            })
        );
    }
}
