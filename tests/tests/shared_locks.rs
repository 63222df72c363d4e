//! Process-shared locks: a mutex in MAP_SHARED memory is one lock for every
//! process that maps it, identified as the kernel identifies a shared futex.

use std::collections::BTreeSet;

use locktrace_e2e::{fixture, require_root, run_json, Level, Variant};

#[test]
fn inversion_through_shared_mutexes_of_two_workers() {
    require_root();
    let run = run_json(&[], &[fixture("shared_workers", Variant::NoFp)]);
    let context = run.describe();
    assert_eq!(run.run.code(), 0, "{context}");
    let first = run.run.printed_pid("first");
    let second = run.run.printed_pid("second");
    let inversions = run.report.inversions();
    assert_eq!(inversions.len(), 1, "one finding\n{context}");
    let inv = inversions[0];
    assert_eq!(
        inv.level,
        Level::Instance,
        "one lock per shared mutex\n{context}"
    );
    let pids: BTreeSet<u32> = inv.cycle.iter().map(|e| e.pid).collect();
    assert_eq!(
        pids,
        BTreeSet::from([first, second]),
        "both workers\n{context}"
    );
    for lock in &inv.locks {
        let shared = lock.shared.as_deref().unwrap_or("");
        assert!(
            shared.contains("inode") && shared.contains("/dev/zero"),
            "a shared lock is reported with its identity and mapping\n{context}"
        );
    }
    // Two locks in the whole run: each shared mutex is one node.
    assert_eq!(run.report.summary.locks, 2, "{context}");
}
