//! The CPython frame reader on a forged address space: the input is the
//! memory of a "process" (at `BASE`, `_PyRuntime` first) whose lists,
//! frames, code objects, strings and location tables the fuzzer chooses.
//! Whatever they are, the reader must end within a record's budget
//! (libFuzzer's -timeout and -rss_limit_mb catch a loop or a blow-up),
//! never panic, and keep its cache within its bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use locktrace::python::memory::{Reader, Segments, RECORD};
use locktrace::python::{
    import_state, offsets_for, thread_stack, thread_states, CodeCache, Interpreter,
    CACHE_PROCESS_BYTES, CACHE_PROCESS_ENTRIES,
};

/// Where the forged memory is: low, so that its pointers are small numbers
/// the fuzzer finds easily.
const BASE: u64 = 0x100;

fuzz_target!(|data: &[u8]| {
    let mem = Segments(vec![(BASE, data.to_vec())]);
    let interp = Interpreter {
        pid: 1,
        version: (3, 11, 2),
        runtime: BASE,
        module: "libpython3.11.so.1.0".into(),
        offsets: offsets_for(3, 11).unwrap(),
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
