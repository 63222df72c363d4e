//! Lock lifetimes: a destroyed lock's memory, re-initialized, is a new lock
//! (address reuse must not make false inversions, a known source of false
//! reports in ThreadSanitizer).

use locktrace_e2e::{fixture, require_root, run_json, Variant};

#[test]
fn reused_mutex_memory_is_a_new_lock() {
    require_root();
    let bin = fixture("destroy_reuse", Variant::NoFp);
    let reused = run_json(&[], &[bin.to_str().unwrap(), "reuse"]);
    assert_eq!(reused.run.code(), 0, "{}", reused.describe());
    assert!(
        reused.report.inversions().is_empty(),
        "a destroyed and re-initialized mutex is a new lock: no inversion\n{}",
        reused.describe()
    );
    // The same program without the reset has a real inversion: the test
    // above is not passing for want of seeing the locks.
    let kept = run_json(&[], &[bin.to_str().unwrap(), "keep"]);
    assert_eq!(kept.run.code(), 0, "{}", kept.describe());
    assert_eq!(
        kept.report.inversions().len(),
        1,
        "the same mutex taken in both orders\n{}",
        kept.describe()
    );
}

/// A heap mutex freed without a destroy (legal for a plain mutex) whose
/// memory becomes a new mutex with no init call (zeroed) is a new lock
/// with `--watch-free`: the old one's dependency does not join the new
/// one's into a false inversion.
#[test]
fn a_heap_mutex_freed_without_destroy_is_a_new_lock_with_watch_free() {
    require_root();
    let bin = fixture("free_reuse", Variant::NoFp);
    let reused = run_json(&["--watch-free"], &[bin.to_str().unwrap(), "reuse"]);
    assert_eq!(
        reused.run.code(),
        0,
        "exit 3: malloc did not reuse the chunk\n{}",
        reused.describe()
    );
    assert!(
        reused.report.inversions().is_empty(),
        "two mutexes, one after the other, at one address: no inversion\n{}",
        reused.describe()
    );
    assert!(
        reused.counter("freed_lock_memory") >= 1,
        "the free of the old mutex's memory was seen\n{}",
        reused.describe()
    );
    // The same heap mutex kept throughout is a real inversion, still
    // reported while frees are watched.
    let kept = run_json(&["--watch-free"], &[bin.to_str().unwrap(), "keep"]);
    assert_eq!(kept.run.code(), 0, "{}", kept.describe());
    assert_eq!(
        kept.report.inversions().len(),
        1,
        "the same heap mutex taken in both orders\n{}",
        kept.describe()
    );
}
