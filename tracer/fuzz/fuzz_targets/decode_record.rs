//! The ring-buffer record decoder on any bytes: a record is the kernel
//! side's, but a decoder that panics or loops on a short or garbled one
//! would stop the collector. Then what the collector makes of a decoded
//! record's Python code copies (location tables, names), and the copies of
//! code objects the collector reads frames from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use locktrace::kernel::decode::{decode, Record};
use locktrace::python::memory::{Memory, Snapshots};
use locktrace::python::{frame_from_copy, offsets_for};
use std::mem::size_of;
use tracer_common::{DependencyEvent, LockEvent};

fuzz_target!(|data: &[u8]| {
    // Most inputs are made records' full size (zeros after the input; the
    // last byte says which): a 12 KiB dependency record is far from what
    // libFuzzer grows inputs to by itself.
    let mut record = data.to_vec();
    match data.last().map(|b| b % 3) {
        Some(0) => record.resize(record.len().max(size_of::<DependencyEvent>()), 0),
        Some(1) => record.resize(record.len().max(size_of::<LockEvent>()), 0),
        _ => {}
    }
    let Ok(record) = decode(&record) else {
        return;
    };
    match record {
        Record::LockReset { py_code, .. } => {
            // Each version's instruction offsets and line tables.
            for (major, minor) in [(3, 11), (3, 12), (3, 13), (3, 10), (3, 9), (2, 7)] {
                let offsets = offsets_for(major, minor).unwrap();
                for copy in &py_code {
                    let _ = frame_from_copy(offsets, copy);
                }
            }
        }
        Record::Dependency(r) | Record::SelfDeadlock(r) => {
            assert!(r.from.len() <= tracer_common::MAX_HELD);
            assert!(r.stack.len() <= tracer_common::STACK_BYTES);
            assert!(r.python.len() <= tracer_common::PY_MAX_FRAMES);
        }
        Record::PyCode { parts, .. } => {
            // Kept as the collector keeps them, then read back anywhere in
            // and around each part (the addresses are the process's).
            let mut copies = Snapshots::default();
            for (addr, bytes) in &parts {
                copies.put(*addr, bytes.clone());
            }
            let mut word = [0u8; 8];
            for (addr, bytes) in &parts {
                for at in [
                    *addr,
                    addr.wrapping_add(bytes.len() as u64).wrapping_sub(8),
                    addr.wrapping_sub(1),
                    addr.wrapping_add(bytes.len() as u64),
                ] {
                    let _ = copies.read(at, &mut word);
                }
            }
        }
        Record::ProcessExit { .. } | Record::ProcessExec { .. } | Record::MemoryFreed { .. } => {}
    }
});
