//! Blocking on futexes: the contention signal, for glibc's locks and for
//! futex-based locks that have no libc entry point.

use locktrace_e2e::{fixture, require_root, run_json, Variant};
use serde_json::Value;

#[test]
fn futex_only_lock_contention_is_measured() {
    require_root();
    let run = run_json(&[], &[fixture("futex_lock", Variant::NoFp)]);
    assert_eq!(run.run.code(), 0, "{}", run.describe());
    let summary: Value = run
        .report
        .records("summary")
        .pop()
        .expect("a summary record");
    let contention = summary["contention"]
        .as_array()
        .unwrap_or_else(|| panic!("summary has no contention list\n{}", run.describe()));
    let lock = contention
        .iter()
        .find(|c| c["name"] == "futex_lock_word")
        .unwrap_or_else(|| {
            panic!(
                "futex_lock_word is not among the contended futexes\n{}",
                run.describe()
            )
        });
    // Each thread holds the lock 4 times for 50 ms: the other waits at
    // least once, for tens of milliseconds.
    let waits = lock["waits"].as_u64().unwrap_or(0);
    let wait_ns = lock["wait_ns"].as_u64().unwrap_or(0);
    assert!(waits >= 1, "waits {waits}\n{}", run.describe());
    assert!(
        wait_ns >= 20_000_000,
        "blocked time {wait_ns} ns\n{}",
        run.describe()
    );
    assert!(
        summary["counters"]["futex_waits"].as_u64().unwrap_or(0) >= waits,
        "{}",
        run.describe()
    );
    assert_eq!(lock["comm"], "futex_lock_nofp", "{}", run.describe());
}
