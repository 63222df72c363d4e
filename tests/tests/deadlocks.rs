//! Real deadlocks and hangs: the wait-for graph, `lock_wait_timeout`, and
//! `locktrace snapshot`, on fixtures that really block.

use locktrace_e2e::{
    blocked_threads, deadlocked_fixture, deadlocks, fixture, has_frame, parse_records,
    require_root, run_json, Deadlock, JsonRun, LockKind, Report, Tracer, Variant,
};
use std::collections::BTreeSet;

/// The names of the locks each thread waits for.
fn waited_for(d: &Deadlock) -> BTreeSet<&str> {
    d.threads
        .iter()
        .map(|t| t.waits_for_name().unwrap_or("<not waiting>"))
        .collect()
}

/// The deadlock of `deadlock.c`: two threads, each waiting for the mutex the
/// other holds, each shown in the function and line where it waits.
fn check_ab_ba_deadlock(d: &Deadlock, context: &str) {
    let threads = &d.threads;
    assert_eq!(threads.len(), 2, "two threads\n{context}");
    assert_eq!(
        waited_for(d),
        BTreeSet::from(["mutex_a", "mutex_b"]),
        "{context}"
    );
    for t in threads {
        let waits_for = t.waits_for_name().unwrap_or_default();
        let held: Vec<&str> = t.holds.iter().map(|h| h.lock.label()).collect();
        let other = if waits_for == "mutex_a" {
            "mutex_b"
        } else {
            "mutex_a"
        };
        assert!(
            held.contains(&other),
            "the thread waiting for {waits_for} holds {other}\n{context}"
        );
        let (function, marker) = if waits_for == "mutex_b" {
            ("lock_ab", "LOCK_B_IN_AB")
        } else {
            ("lock_ba", "LOCK_A_IN_BA")
        };
        assert!(
            has_frame(&t.stack, "deadlock", function, marker),
            "the stack of the thread waiting for {waits_for} shows {function} at {marker}\n{context}"
        );
        // The holder named is the other thread of the cycle.
        let holder = *t.held_by.first().expect("held_by");
        assert!(
            threads.iter().any(|o| o.tid == holder && o.tid != t.tid),
            "{context}"
        );
    }
}

#[test]
fn deadlock_is_reported_and_linked_to_its_inversion() {
    require_root();
    // The fixture deadlocks at once and is killed by its alarm after 6 s.
    let run = run_json(
        &[],
        &[
            fixture("deadlock", Variant::NoFp).into_os_string(),
            "6".into(),
        ],
    );
    let context = run.describe();
    assert_eq!(run.run.code(), 128 + 14, "killed by SIGALRM\n{context}");
    let deadlocks = run.report.deadlocks();
    assert_eq!(deadlocks.len(), 1, "exactly one deadlock\n{context}");
    let d = deadlocks[0];
    check_ab_ba_deadlock(d, &context);
    // Both threads took their first lock after the tracer started: it knows
    // where, and how long each has waited.
    for t in &d.threads {
        assert!(t.waiting_s.is_some(), "{context}");
        let taken_at = &t
            .holds
            .first()
            .unwrap_or_else(|| panic!("the thread holds a lock\n{context}"))
            .taken_at;
        assert!(
            has_frame(taken_at, "deadlock", "lock_ab", "LOCK_A_IN_AB")
                || has_frame(taken_at, "deadlock", "lock_ba", "LOCK_B_IN_BA"),
            "where the held lock was taken\n{context}"
        );
    }
    let inversions = run.report.inversions();
    assert_eq!(inversions.len(), 1, "the inversion\n{context}");
    assert_eq!(
        d.inversion,
        Some(inversions[0].id),
        "the deadlock names the inversion found before it\n{context}"
    );
    assert!(
        run.report.lock_wait_timeouts().is_empty(),
        "threads of a reported deadlock are not reported again as hangs\n{context}"
    );
}

#[test]
fn hang_reports_the_waiter_and_what_the_holder_does() {
    require_root();
    let run = run_json(
        &["--hang-threshold", "1s"],
        &[fixture("hang", Variant::NoFp).into_os_string(), "3".into()],
    );
    let context = run.describe();
    assert_eq!(run.run.code(), 0, "{context}");
    let hangs = run.report.lock_wait_timeouts();
    assert_eq!(hangs.len(), 1, "exactly one hang\n{context}");
    let waiter = &hangs[0].waiter;
    assert_eq!(waiter.waits_for_name(), Some("mutex_a"), "{context}");
    assert!(waiter.waiting_s.unwrap_or(0.0) >= 1.0, "{context}");
    assert!(
        has_frame(&waiter.stack, "hang", "blocked_waiter", "WAITER_LOCKS_A"),
        "{context}"
    );
    let holders = &hangs[0].holders;
    assert_eq!(holders.len(), 1, "{context}");
    let holder = &holders[0];
    assert!(
        holder.waits_for.is_none(),
        "the holder waits for no lock\n{context}"
    );
    let held = holder
        .holds
        .first()
        .unwrap_or_else(|| panic!("the holder holds a lock\n{context}"));
    assert_eq!(held.lock.label(), "mutex_a", "{context}");
    assert!(
        has_frame(&held.taken_at, "hang", "slow_holder", "HOLDER_LOCKS_A"),
        "{context}"
    );
    assert!(
        has_frame(&holder.stack, "hang", "slow_holder", "HOLDER_SLEEPS"),
        "the holder's current stack shows it sleeping with the lock\n{context}"
    );
    assert!(run.report.inversions().is_empty(), "{context}");
    assert!(
        run.report.deadlocks().is_empty(),
        "the holder released the lock: no deadlock\n{context}"
    );
}

#[test]
fn deadlock_from_before_the_tracer_started() {
    require_root();
    let process = deadlocked_fixture("deadlock");
    let pid = process.0.id().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report.jsonl");
    let run = Tracer::new([
        "watch",
        "--pid",
        &pid,
        "--duration",
        "2s",
        "--format",
        "json",
        "--output",
        out.to_str().unwrap(),
    ])
    .run();
    let raw = std::fs::read_to_string(&out)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}\n{}", out.display(), run.describe()));
    let context = format!("{}\n--- report ---\n{raw}", run.describe());
    assert_eq!(run.code(), 0, "{context}");
    let report = Report::parse(&raw).unwrap_or_else(|e| panic!("{e}\n{context}"));
    let deadlocks = report.deadlocks();
    assert_eq!(deadlocks.len(), 1, "{context}");
    check_ab_ba_deadlock(deadlocks[0], &context);
    assert_eq!(deadlocks[0].pid, process.0.id(), "{context}");
}

#[test]
fn snapshot_shows_who_waits_for_whom() {
    require_root();
    let process = deadlocked_fixture("deadlock");
    let pid = process.0.id().to_string();
    let run = Tracer::new([
        "snapshot",
        "--pid",
        &pid,
        "--format",
        "json",
        "--exit-code",
        "3",
    ])
    .run();
    let context = run.describe();
    assert_eq!(run.code(), 3, "a deadlock was found\n{context}");
    let records = parse_records(&run.stdout).unwrap_or_else(|e| panic!("{e}\n{context}"));
    assert_eq!(
        blocked_threads(&records).len(),
        2,
        "the two threads blocked on mutexes\n{context}"
    );
    let deadlocks = deadlocks(&records);
    assert_eq!(deadlocks.len(), 1, "{context}");
    check_ab_ba_deadlock(deadlocks[0], &context);
}

/// Runs a deadlocking fixture (killed by its alarm after 4 s) and returns
/// its single deadlock record.
fn single_deadlock(name: &str) -> (JsonRun, Deadlock) {
    require_root();
    let run = run_json(
        &[],
        &[fixture(name, Variant::NoFp).into_os_string(), "4".into()],
    );
    let context = run.describe();
    assert_eq!(run.run.code(), 128 + 14, "killed by SIGALRM\n{context}");
    let deadlocks = run.report.deadlocks();
    assert_eq!(deadlocks.len(), 1, "exactly one deadlock\n{context}");
    let d = deadlocks[0].clone();
    (run, d)
}

#[test]
fn three_thread_deadlock() {
    let (run, d) = single_deadlock("deadlock3");
    let context = run.describe();
    assert_eq!(d.threads.len(), 3, "{context}");
    assert_eq!(
        waited_for(&d),
        BTreeSet::from(["mutex_a", "mutex_b", "mutex_c"]),
        "{context}"
    );
    for t in &d.threads {
        assert!(
            has_frame(&t.stack, "deadlock3", "take_pair", "SECOND_LOCK"),
            "{context}"
        );
    }
}

#[test]
fn deadlock_across_processes_on_shared_mutexes() {
    let (run, d) = single_deadlock("deadlock_shared");
    let context = run.describe();
    let threads = &d.threads;
    assert_eq!(threads.len(), 2, "{context}");
    let pids: BTreeSet<u32> = threads.iter().map(|t| t.pid).collect();
    assert_eq!(
        pids.len(),
        2,
        "the two threads are in two processes\n{context}"
    );
    let child = run.run.printed_pid("child");
    assert!(pids.contains(&child), "{context}");
    for t in threads {
        assert!(
            has_frame(&t.stack, "deadlock_shared", "take", "SECOND_LOCK"),
            "{context}"
        );
        // Each waits for a thread of the other process.
        let holder = *t
            .held_by
            .first()
            .unwrap_or_else(|| panic!("held_by\n{context}"));
        let other = threads
            .iter()
            .find(|o| o.tid == holder)
            .unwrap_or_else(|| panic!("the holder {holder} is in the deadlock\n{context}"));
        assert_ne!(other.pid, t.pid, "{context}");
    }
}

#[test]
fn deadlock_through_an_rwlock() {
    let (run, d) = single_deadlock("deadlock_rwlock");
    let context = run.describe();
    let threads = &d.threads;
    assert_eq!(threads.len(), 2, "{context}");
    let writer = threads
        .iter()
        .find(|t| t.waits_for_name() == Some("rwlock_r"))
        .unwrap_or_else(|| panic!("a thread waits for rwlock_r\n{context}"));
    assert_eq!(
        writer.waits_for.as_ref().map(|l| l.kind),
        Some(LockKind::RwlockWrite),
        "{context}"
    );
    assert!(
        has_frame(&writer.stack, "deadlock_rwlock", "writer", "WRITER_WANTS_R"),
        "{context}"
    );
    let reader = threads
        .iter()
        .find(|t| t.waits_for_name() == Some("mutex_m"))
        .unwrap_or_else(|| panic!("a thread waits for mutex_m\n{context}"));
    assert!(
        reader
            .holds
            .iter()
            .any(|h| h.lock.label() == "rwlock_r" && h.lock.kind == LockKind::RwlockRead),
        "the reader holds rwlock_r for reading\n{context}"
    );
}
