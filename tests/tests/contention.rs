//! Blocking on futexes: the contention signal, for glibc's locks and for
//! futex-based locks that have no libc entry point.

use locktrace_e2e::{fixture, require_root, run_json, Variant};

#[test]
fn futex_only_lock_contention_is_measured() {
    require_root();
    let run = run_json(&[], &[fixture("futex_lock", Variant::NoFp)]);
    assert_eq!(run.run.code(), 0, "{}", run.describe());
    let summary = &run.report.summary;
    let lock = summary
        .contention
        .iter()
        .find(|c| c.name.as_deref() == Some("futex_lock_word"))
        .unwrap_or_else(|| {
            panic!(
                "futex_lock_word is not among the contended futexes\n{}",
                run.describe()
            )
        });
    // Each thread holds the lock 4 times for 50 ms: the other waits at
    // least once, for tens of milliseconds.
    assert!(lock.waits >= 1, "waits {}\n{}", lock.waits, run.describe());
    assert!(
        lock.wait_ns >= 20_000_000,
        "blocked time {} ns\n{}",
        lock.wait_ns,
        run.describe()
    );
    assert!(
        run.counter("futex_waits") >= lock.waits,
        "{}",
        run.describe()
    );
    assert_eq!(lock.comm, "futex_lock_nofp", "{}", run.describe());
}
