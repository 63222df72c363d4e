//! Lock lifetimes: a destroyed lock's memory, re-initialized, is a new lock
//! (address reuse must not make false inversions, a known source of false
//! reports in ThreadSanitizer).

use std::process::Command;

use locktrace_e2e::{fixture, has_frame, require_root, run_json, Variant, Watcher};

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
/// memory becomes a new mutex with no init call (zeroed) is a new lock: the
/// old one's dependency does not join the new one's into a false inversion.
/// `run` watches its command's frees from its start; `--watch-free` watches
/// every process's.
#[test]
fn a_heap_mutex_freed_without_destroy_is_a_new_lock() {
    require_root();
    let bin = fixture("free_reuse", Variant::NoFp);
    for options in [&[][..], &["--watch-free"]] {
        let reused = run_json(options, &[bin.to_str().unwrap(), "reuse"]);
        assert_eq!(
            reused.run.code(),
            0,
            "exit 3: malloc did not reuse the chunk\n{}",
            reused.describe()
        );
        assert!(
            reused.report.inversions().is_empty(),
            "{options:?}: two mutexes, one after the other, at one address: no inversion\n{}",
            reused.describe()
        );
        assert!(
            reused.counter("freed_lock_memory") >= 1,
            "{options:?}: the free of the old mutex's memory was seen\n{}",
            reused.describe()
        );
        assert_eq!(
            reused.report.summary.lock_memory.before_free_watch,
            0,
            "{options:?}: every dependency was judged (frees watched from the start)\n{}",
            reused.describe()
        );
        // The same heap mutex kept throughout is a real inversion, still
        // reported while frees are watched.
        let kept = run_json(options, &[bin.to_str().unwrap(), "keep"]);
        assert_eq!(kept.run.code(), 0, "{}", kept.describe());
        assert_eq!(
            kept.report.inversions().len(),
            1,
            "{options:?}: the same heap mutex taken in both orders\n{}",
            kept.describe()
        );
    }
}

/// C++'s `std::mutex` calls no init or destroy function at all: a session
/// object deleted and the next one `new`ed in its memory has its mutex at
/// the old one's address.
#[test]
fn a_cxx_std_mutex_in_reused_memory_is_a_new_lock() {
    require_root();
    let bin = fixture("cxx_mutex_reuse", Variant::NoFp);
    let reused = run_json(&[], &[bin.to_str().unwrap(), "reuse", "1"]);
    assert_eq!(
        reused.run.code(),
        0,
        "exit 3: new did not reuse the memory\n{}",
        reused.describe()
    );
    assert!(
        reused.report.inversions().is_empty(),
        "two std::mutex, one after the other, at one address: no inversion\n{}",
        reused.describe()
    );
    let kept = run_json(&[], &[bin.to_str().unwrap(), "keep", "1"]);
    assert_eq!(kept.run.code(), 0, "{}", kept.describe());
    let inversions = kept.report.inversions();
    assert_eq!(
        inversions.len(),
        1,
        "the same std::mutex taken in both orders\n{}",
        kept.describe()
    );
    for edge in &inversions[0].cycle {
        let (function, marker) = if edge.to.name.as_deref() == Some("_ZL8registry") {
            ("session_then_registry", "REGISTRY_AFTER_SESSION")
        } else {
            ("registry_then_session", "SESSION_AFTER_REGISTRY")
        };
        assert!(
            has_frame(&edge.stack, "cxx_mutex_reuse", function, marker),
            "each side requested in its function\n{}",
            kept.describe()
        );
    }
}

/// Host-wide, a process's frees are watched from its first dependency on a
/// heap lock: what it recorded before is not judged (its memory may have
/// been reused unseen), and is judged when it recurs.
#[test]
fn host_wide_heap_locks_are_judged_once_their_process_frees_are_watched() {
    require_root();
    let bin = fixture("cxx_mutex_reuse", Variant::NoFp);
    let watcher = Watcher::start(&[]);
    let run_rounds = |mode: &str| {
        let mut child = Command::new(&bin)
            .args([mode, "40"])
            .spawn()
            .expect("cxx_mutex_reuse");
        let pid = child.id();
        let status = child.wait().unwrap();
        assert!(status.success(), "{mode}: {status} (3: no reuse)");
        pid
    };
    let reused = run_rounds("reuse");
    let kept = run_rounds("keep");
    let run = watcher.stop();
    let context = run.describe();
    let inversions_of = |pid: u32| {
        run.report
            .inversions()
            .into_iter()
            .filter(|i| i.cycle.iter().any(|e| e.pid == pid))
            .count()
    };
    assert_eq!(
        inversions_of(reused),
        0,
        "locks one after the other at one address: no inversion\n{context}"
    );
    assert_eq!(
        inversions_of(kept),
        1,
        "the same mutex in both orders, learned once frees are watched\n{context}"
    );
    let memory = &run.report.summary.lock_memory;
    assert!(
        memory.processes_watched >= 2 && memory.before_free_watch >= 2,
        "each fixture's first heap dependencies were held back: {memory:?}\n{context}"
    );
}

/// Two functions' mutexes on the stack, one frame after the other at one
/// address, no init call: a returned frame's lock ends unseen, so
/// dependencies of stack locks are not judged.
#[test]
fn a_stack_mutex_reused_by_the_next_frame_makes_no_inversion() {
    require_root();
    let run = run_json(&[], &[fixture("stack_reuse", Variant::NoFp)]);
    let context = run.describe();
    assert_eq!(
        run.run.code(),
        0,
        "exit 3: the two frames' mutexes do not share an address\n{context}"
    );
    assert!(
        run.report.inversions().is_empty(),
        "two stack mutexes at one address: no inversion\n{context}"
    );
    assert_eq!(
        run.report.summary.lock_memory.on_stack, 2,
        "both dependencies held back\n{context}"
    );
}
