//! The CPython frame reader on a forged address space: the input is the
//! memory of a "process" (at `BASE`, `_PyRuntime` first) whose lists,
//! frames, code objects, strings and location tables the fuzzer chooses,
//! and (its last byte) the CPython version it poses as: every layout's
//! walk and line table, and for 3.13 its `_Py_DebugOffsets` read from that
//! memory. Whatever they are, the reader must end within a record's
//! budget (libFuzzer's -timeout and -rss_limit_mb catch a loop or a
//! blow-up), never panic, and keep its cache within its bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use locktrace::python::layout;
use locktrace::python::memory::{Reader, Segments, RECORD};
use locktrace::python::{
    import_state, offsets_for, thread_stack, thread_states, CodeCache, Interpreter,
    CACHE_PROCESS_BYTES, CACHE_PROCESS_ENTRIES,
};

/// Where the forged memory is: low, so that its pointers are small numbers
/// the fuzzer finds easily.
const BASE: u64 = 0x100;

/// The versions posed as, one per value of the input's last byte.
const VERSIONS: [(u32, u32); 9] = [
    (3, 11),
    (3, 12),
    (3, 13),
    (3, 10),
    (3, 9),
    (3, 8),
    (3, 7),
    (3, 6),
    (2, 7),
];

/// glibc's offset of the tid in `struct pthread` (x86-64): threads of
/// versions before 3.11 are found through it.
const PTHREAD_TID: u64 = 0x2d0;

fuzz_target!(|data: &[u8]| {
    let mem = Segments(vec![(BASE, data.to_vec())]);
    let version = VERSIONS[usize::from(data.last().copied().unwrap_or(0)) % VERSIONS.len()];
    let mut offsets = offsets_for(version.0, version.1).unwrap();
    if version == (3, 13) {
        // As `probe` does: the forged runtime's own offsets, if they are
        // accepted, else the table's.
        let reader = Reader::new(&mem, RECORD);
        if let Ok(o) = layout::with_debug_offsets(&reader, BASE, 0x030d_00f0, offsets) {
            offsets = o;
        }
    }
    let interp = Interpreter {
        pid: 1,
        version: (version.0, version.1, 0),
        runtime: BASE,
        module: "libpython.so".into(),
        offsets,
        pthread_tid: if offsets.native_id_is_pthread {
            PTHREAD_TID
        } else {
            0
        },
        gil: Ok(None),
        import_lock: None,
    };
    let mut cache = CodeCache::new();
    let reader = Reader::new(&mem, RECORD);
    if let Ok(threads) = thread_states(&interp, &reader) {
        for &(tid, _) in threads.iter().take(4) {
            let _ = thread_stack(&interp, &mut cache, &reader, tid);
            let _ = import_state(&interp, &mut cache, &reader, &threads, tid);
        }
    }
    // Frames as the kernel side captures them: (code, prev_instr) pairs,
    // here any words of the input, each pair a record of its own.
    for pair in data.chunks_exact(16).take(64) {
        let code = u64::from_le_bytes(pair[..8].try_into().unwrap());
        let prev_instr = u64::from_le_bytes(pair[8..].try_into().unwrap());
        let reader = Reader::new(&mem, RECORD);
        let _ = cache.resolve(&interp, &reader, code, prev_instr);
        assert!(reader.bytes_read() <= RECORD.bytes);
    }
    let (entries, bytes) = cache.size();
    assert!(entries <= CACHE_PROCESS_ENTRIES && bytes <= CACHE_PROCESS_BYTES);
});
