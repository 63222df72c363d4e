//! Lazy mutex release: `pthread_mutex_unlock` is not probed, so a mutex's
//! held entry stays in the kernel until the thread's next acquisition (and
//! is read by the wait-for graph meanwhile), where the mutex's owner field
//! decides whether it is still held. Each test is a way a stale entry would
//! make a false finding (`tests/fixtures/lazy_release.c`), with a control
//! that the tracer did see the locks. They need root.

use locktrace_e2e::{
    edge, exactly_one_inversion, fixture, has_frame, lock_names, names, require_root, run_json,
    JsonRun, Variant,
};

fn run(mode: &str) -> JsonRun {
    run_json(
        &[],
        &[
            fixture("lazy_release", Variant::NoFp).into_os_string(),
            mode.into(),
        ],
    )
}

/// No inversion and no self-deadlock, but the tracer saw the nesting.
fn assert_no_false_finding(run: &JsonRun, why: &str) {
    run.assert_exit(0);
    let context = run.describe();
    assert!(run.report.inversions().is_empty(), "{why}\n{context}");
    assert!(run.report.self_deadlocks().is_empty(), "{why}\n{context}");
    assert!(
        run.report.summary.dependencies >= 1,
        "the tracer saw mutex_b -> the shared lock\n{context}"
    );
}

#[test]
fn unlocked_then_held_by_another_thread_orders_nothing() {
    require_root();
    let run = run("other_thread");
    assert_no_false_finding(
        &run,
        "mutex_a was unlocked before its first thread took mutex_b (another thread held it \
         then): no mutex_a -> mutex_b, so mutex_b -> mutex_a makes no cycle",
    );
    assert!(
        run.counter("stale_held") >= 1,
        "the stale entry was dropped\n{}",
        run.describe()
    );
}

#[test]
fn destroyed_and_remade_in_the_same_memory_inherits_nothing() {
    require_root();
    let run = run("reuse");
    assert_no_false_finding(
        &run,
        "slot_mutex was unlocked, destroyed and made again (held by another thread) before \
         the first thread took mutex_b: no slot_mutex -> mutex_b",
    );
}

/// mutex_a unlocked and re-taken by the same thread under mutex_b: b -> a
/// only (no a -> b from the stale entry, no self-deadlock on a). Another
/// thread's a -> b then closes a real cycle, whose a -> b edge is that
/// thread's.
#[test]
fn retaken_by_the_same_thread_at_another_depth_orders_correctly() {
    require_root();
    let run = run("same_thread");
    run.assert_exit(0);
    let context = run.describe();
    assert!(
        run.report.self_deadlocks().is_empty(),
        "mutex_a was unlocked before it was taken again\n{context}"
    );
    let finding = exactly_one_inversion(&run);
    assert_eq!(
        lock_names(finding, &run),
        names(&["mutex_a", "mutex_b"]),
        "{context}"
    );
    let ba = edge(finding, "mutex_b", "mutex_a", &run);
    assert!(
        has_frame(
            &ba.stack,
            "lazy_release",
            "retake_a_under_b",
            "RETAKE_A_UNDER_B"
        ),
        "mutex_b -> mutex_a is the re-take under mutex_b\n{context}"
    );
    let ab = edge(finding, "mutex_a", "mutex_b", &run);
    assert!(
        has_frame(&ab.stack, "lazy_release", "a_then_b", "A_THEN_B"),
        "mutex_a -> mutex_b is the second thread's, not the stale entry's\n{context}"
    );
    assert_ne!(ab.tid, ba.tid, "{context}");
}

/// A recursive mutex locked twice and unlocked once is held (r -> b, which
/// with b -> r is a cycle); unlocked again it is not (no r -> c, so c -> r
/// makes none).
#[test]
fn recursive_mutex_released_level_by_level() {
    require_root();
    let run = run("recursive");
    run.assert_exit(0);
    let context = run.describe();
    let finding = exactly_one_inversion(&run);
    assert_eq!(
        lock_names(finding, &run),
        names(&["recursive_r", "mutex_b"]),
        "only recursive_r <-> mutex_b: recursive_r was no longer held when mutex_c was \
         taken\n{context}"
    );
    let rb = edge(finding, "recursive_r", "mutex_b", &run);
    assert!(
        has_frame(&rb.stack, "lazy_release", "recursive_levels", "R_THEN_B"),
        "{context}"
    );
    assert!(run.report.self_deadlocks().is_empty(), "{context}");
}

/// A thread whose mutex_a entry is stale blocks (re-taking mutex_m inside
/// pthread_cond_wait, where no acquisition probe runs) on mutex_m, held by
/// a thread waiting for mutex_a, really held by a third that sleeps (past
/// the kernel's tracked depth, so no held stack names it). The stale entry
/// would close a wait-for cycle: a false deadlock. The real holder is named.
#[test]
fn holder_that_unlocked_between_scans_makes_no_deadlock() {
    require_root();
    let run = run_json(
        &["--hang-threshold", "1s"],
        &[
            fixture("lazy_release", Variant::NoFp).into_os_string(),
            "deadlock".into(),
        ],
    );
    run.assert_exit(0);
    let context = run.describe();
    assert!(
        run.report.deadlocks().is_empty(),
        "the thread with the stale mutex_a entry does not hold it: no deadlock\n{context}"
    );
    let hangs = run.report.lock_wait_timeouts();
    let on_a = hangs
        .iter()
        .find(|h| h.waiter.waits_for_name() == Some("mutex_a"))
        .unwrap_or_else(|| panic!("a hang on mutex_a is reported\n{context}"));
    assert_eq!(on_a.holders.len(), 1, "{context}");
    assert!(
        has_frame(
            &on_a.holders[0].stack,
            "lazy_release",
            "real_holder",
            "REAL_HOLDER_SLEEPS"
        ),
        "mutex_a's holder is the thread that sleeps with it\n{context}"
    );
}

/// `mode` of the fixture in a new pid namespace (as in a container), where
/// glibc writes namespace tids into the owner fields. A shell waits there
/// first, so that the collector has told the kernel side the namespace
/// before the fixture (the same process, exec'd) takes its locks.
fn run_in_pid_namespace(mode: &str) -> JsonRun {
    let fixture = fixture("lazy_release", Variant::NoFp);
    let script = format!("sleep 0.5; exec {} {mode}", fixture.display());
    run_json(
        &[],
        &["unshare", "--pid", "--fork", "--", "/bin/sh", "-c", &script],
    )
}

/// In a pid namespace the owner field holds the namespace's tid: the
/// thread's own must be known to confirm a held mutex (else the real
/// cycle would be lost), and a mutex another thread holds must still not
/// count as the first thread's (else a false one).
#[test]
fn owner_checks_work_in_a_pid_namespace() {
    require_root();
    let real = run_in_pid_namespace("same_thread");
    real.assert_exit(0);
    let finding = exactly_one_inversion(&real);
    assert_eq!(
        lock_names(finding, &real),
        names(&["mutex_a", "mutex_b"]),
        "the real cycle, seen through namespace tids\n{}",
        real.describe()
    );
    let ab = edge(finding, "mutex_a", "mutex_b", &real);
    assert!(
        has_frame(&ab.stack, "lazy_release", "a_then_b", "A_THEN_B"),
        "{}",
        real.describe()
    );
    assert_no_false_finding(
        &run_in_pid_namespace("other_thread"),
        "in a pid namespace too, mutex_a held by another thread is not the first thread's",
    );
}
