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
    // No traced lock function took that word: the coverage says so.
    assert_eq!(lock.lock_waits, 0, "{}", run.describe());
    let untraced = summary
        .coverage
        .untraced
        .iter()
        .find(|u| u.name.as_deref() == Some("futex_lock_word"))
        .unwrap_or_else(|| {
            panic!(
                "futex_lock_word is not listed as untraced\n{}",
                run.describe()
            )
        });
    assert!(untraced.waits >= 1, "{}", run.describe());
    assert!(
        summary.coverage.untraced_waits >= untraced.waits,
        "{}",
        run.describe()
    );
}

#[test]
fn waits_inside_pthread_mutex_lock_count_as_seen() {
    require_root();
    let run = run_json(&[], &[fixture("mutex_contended", Variant::NoFp)]);
    assert_eq!(run.run.code(), 0, "{}", run.describe());
    let summary = &run.report.summary;
    let lock = summary
        .contention
        .iter()
        .find(|c| c.name.as_deref() == Some("contended_mutex"))
        .unwrap_or_else(|| {
            panic!(
                "contended_mutex is not among the contended futexes\n{}",
                run.describe()
            )
        });
    assert!(lock.waits >= 1, "{}", run.describe());
    assert_eq!(
        lock.lock_waits,
        lock.waits,
        "every wait was in pthread_mutex_lock\n{}",
        run.describe()
    );
    assert!(
        !summary
            .coverage
            .untraced
            .iter()
            .any(|u| u.name.as_deref() == Some("contended_mutex")),
        "{}",
        run.describe()
    );
}

#[test]
fn rust_std_mutex_contention_shows_in_the_coverage() {
    require_root();
    let program = locktrace_e2e::fixture_dir().join("rust_mutex");
    let run = run_json(&[], &[program]);
    assert_eq!(run.run.code(), 0, "{}", run.describe());
    let coverage = &run.report.summary.coverage;
    assert!(
        coverage.untraced_waits >= 10,
        "Rust's Mutex waits are not locks the order analysis sees\n{}",
        run.describe()
    );
    let word = coverage
        .untraced
        .iter()
        .find(|u| u.comm == "rust_mutex")
        .unwrap_or_else(|| panic!("no untraced word of rust_mutex\n{}", run.describe()));
    assert!(
        word.site
            .iter()
            .any(|f| f.function.as_deref().is_some_and(
                |name| name.contains("rust_mutex::hold") || name.contains("lock_contended")
            )),
        "the site is in the program's mutex code\n{}",
        run.describe()
    );
}
