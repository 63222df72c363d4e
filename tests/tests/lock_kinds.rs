//! End-to-end tests of the lock kinds beyond plain mutexes: rwlocks (read and
//! write modes), recursive mutexes, self-deadlocks, condition waits, timed and
//! try acquisitions, and spinlocks. They need root.
//!
//! Rules checked (see the fixtures' comments for each scenario):
//! - a lock object's `kind` is `mutex`, `recursive_mutex`, `rwlock_read`,
//!   `rwlock_write` or `spinlock`; in a cycle edge `from.kind` is the mode the
//!   lock was held in and `to.kind` the mode requested; `locks` lists the held
//!   mode of each lock;
//! - try, timed and clock acquisitions hold the lock only when they succeed
//!   and add no dependency, but the lock they took orders later blocking
//!   acquisitions;
//! - a recursive mutex re-locked by its holder adds no dependency and stays
//!   held until unlocked as often as it was locked (its `__count` says so:
//!   mutex unlocks are not probed);
//! - `pthread_cond_wait` releases its mutex for the wait and re-acquires it
//!   (a blocking acquisition, ordered after the other held locks) on return;
//! - readers never block readers: a cycle is reported only if every hop can
//!   block;
//! - a blocking or timed request of a non-recursive mutex already held by the
//!   requesting thread is a `self_deadlock`.

use locktrace_e2e::{
    assert_lock_kinds, assert_well_formed, check_edge, comm_of, edge, exactly_one_inversion,
    fixture, function_contains, in_libc, lock_names, marker_line, names, require_root, run_json,
    EdgeSpec, JsonRun, LibcFrame, LockKind, Variant,
};

// ---------------------------------------------------------------------------
// Helpers

/// The traced program, which unlocks every lock it takes (libc's own start-up
/// locking included), made no more releases the probes saw than
/// acquisitions: mutex unlocks are not probed (a held mutex is checked
/// against its owner field), the releases counted are those of the other
/// kinds and of condition waits, each matching an acquisition. (Not the
/// `unmatched_releases` counter: it may count other processes' releases.)
fn assert_balanced(run: &JsonRun, why: &str) {
    let acquisitions = run.counter("acquisitions");
    let releases = run.counter("releases");
    assert!(
        acquisitions > 0,
        "the tracer counted no acquisition\n{}",
        run.describe()
    );
    assert!(
        releases <= acquisitions,
        "no more releases than acquisitions: {why}\n{}",
        run.describe()
    );
}

/// No finding of any kind, no cycle, no lost event, and at least
/// `min_dependencies` dependencies (the tracer did see the nested locks).
fn assert_no_finding(run: &JsonRun, why: &str, min_dependencies: u64) {
    assert!(
        run.report.records.is_empty(),
        "no finding of any kind expected: {why}\n{}",
        run.describe()
    );
    let s = &run.report.summary;
    assert_eq!(s.cycles, 0, "summary cycles\n{}", run.describe());
    assert_eq!(s.lost_events, 0, "lost events\n{}", run.describe());
    assert!(
        s.dependencies >= min_dependencies,
        "expected at least {min_dependencies} dependencies: the tracer should have seen the \
         nested acquisitions\n{}",
        run.describe()
    );
}

// ---------------------------------------------------------------------------
// rwlocks

fn rwlock_ww(variant: Variant) {
    require_root();
    let bin = fixture("rwlock_ww", variant);
    let run = run_json(&[], &[&bin]);
    run.assert_exit(0);
    let pid = run.run.printed_pid("pid");
    let comm = comm_of(&bin);

    let finding = exactly_one_inversion(&run);
    assert_eq!(finding.cycle.len(), 2, "cycle length\n{}", run.describe());
    assert_eq!(
        lock_names(finding, &run),
        names(&["rwlock_a", "rwlock_b"]),
        "locks\n{}",
        run.describe()
    );
    assert_well_formed(finding, &run, pid, &comm);
    assert_lock_kinds(
        finding,
        &run,
        &[
            ("rwlock_a", LockKind::RwlockWrite),
            ("rwlock_b", LockKind::RwlockWrite),
        ],
    );
    let ab = check_edge(
        finding,
        &EdgeSpec {
            from: "rwlock_a",
            to: "rwlock_b",
            from_kind: LockKind::RwlockWrite,
            to_kind: LockKind::RwlockWrite,
            libc: LibcFrame::Top("pthread_rwlock_wrlock"),
            function: "wrlock_ab",
            to_marker: "WRLOCK_B_IN_AB",
            held_function: "wrlock_ab",
            from_marker: "WRLOCK_A_IN_AB",
        },
        &run,
        "rwlock_ww",
        pid,
        &comm,
    );
    let ba = check_edge(
        finding,
        &EdgeSpec {
            from: "rwlock_b",
            to: "rwlock_a",
            from_kind: LockKind::RwlockWrite,
            to_kind: LockKind::RwlockWrite,
            libc: LibcFrame::Top("pthread_rwlock_wrlock"),
            function: "wrlock_ba",
            to_marker: "WRLOCK_A_IN_BA",
            held_function: "wrlock_ba",
            from_marker: "WRLOCK_B_IN_BA",
        },
        &run,
        "rwlock_ww",
        pid,
        &comm,
    );
    assert_ne!(
        ab.tid,
        ba.tid,
        "the two edges come from two threads\n{}",
        run.describe()
    );
    let s = &run.report.summary;
    assert_eq!(s.cycles, 1, "summary cycles\n{}", run.describe());
    assert_eq!(s.lost_events, 0, "lost events\n{}", run.describe());
}

#[test]
fn rwlock_write_write_inversion_fp() {
    rwlock_ww(Variant::Fp);
}

#[test]
fn rwlock_write_write_inversion_nofp() {
    rwlock_ww(Variant::NoFp);
}

/// Read-held locks requested for writing in the other order: a writer waits
/// for readers, so every hop can block.
#[test]
fn rwlock_read_then_write_inversion() {
    require_root();
    let bin = fixture("rwlock_rw", Variant::NoFp);
    let run = run_json(&[], &[&bin]);
    run.assert_exit(0);
    let pid = run.run.printed_pid("pid");
    let comm = comm_of(&bin);

    let finding = exactly_one_inversion(&run);
    assert_eq!(finding.cycle.len(), 2, "cycle length\n{}", run.describe());
    assert_eq!(
        lock_names(finding, &run),
        names(&["rwlock_a", "rwlock_b"]),
        "locks\n{}",
        run.describe()
    );
    assert_well_formed(finding, &run, pid, &comm);
    assert_lock_kinds(
        finding,
        &run,
        &[
            ("rwlock_a", LockKind::RwlockRead),
            ("rwlock_b", LockKind::RwlockRead),
        ],
    );
    for e in &finding.cycle {
        assert_eq!(
            e.from.kind,
            LockKind::RwlockRead,
            "from.kind: both locks were held for reading\n{}",
            run.describe()
        );
        assert_eq!(
            e.to.kind,
            LockKind::RwlockWrite,
            "to.kind: both requests were for writing\n{}",
            run.describe()
        );
    }
    check_edge(
        finding,
        &EdgeSpec {
            from: "rwlock_a",
            to: "rwlock_b",
            from_kind: LockKind::RwlockRead,
            to_kind: LockKind::RwlockWrite,
            libc: LibcFrame::Top("pthread_rwlock_wrlock"),
            function: "rdlock_a_wrlock_b",
            to_marker: "WRLOCK_B_IN_AB",
            held_function: "rdlock_a_wrlock_b",
            from_marker: "RDLOCK_A_IN_AB",
        },
        &run,
        "rwlock_rw",
        pid,
        &comm,
    );
    check_edge(
        finding,
        &EdgeSpec {
            from: "rwlock_b",
            to: "rwlock_a",
            from_kind: LockKind::RwlockRead,
            to_kind: LockKind::RwlockWrite,
            libc: LibcFrame::Top("pthread_rwlock_wrlock"),
            function: "rdlock_b_wrlock_a",
            to_marker: "WRLOCK_A_IN_BA",
            held_function: "rdlock_b_wrlock_a",
            from_marker: "RDLOCK_B_IN_BA",
        },
        &run,
        "rwlock_rw",
        pid,
        &comm,
    );
    assert_eq!(
        run.report.summary.cycles,
        1,
        "summary cycles\n{}",
        run.describe()
    );
}

/// Both orders, but only readers: readers never block readers.
#[test]
fn rwlock_read_read_has_no_finding() {
    require_root();
    let run = run_json(&[], &[fixture("rwlock_rr", Variant::Fp)]);
    run.assert_exit(0);
    // rwlock_a -> rwlock_b and rwlock_b -> rwlock_a were seen.
    assert_no_finding(&run, "readers never block readers", 2);
}

/// Both orders, one request for writing, the other for reading: the read
/// request of a read-held lock cannot block, so the cycle cannot deadlock.
#[test]
fn rwlock_one_read_read_hop_has_no_finding() {
    require_root();
    let run = run_json(&[], &[fixture("rwlock_mixed", Variant::Fp)]);
    run.assert_exit(0);
    assert_no_finding(
        &run,
        "the read request of rwlock_a cannot block on its read hold, so not every hop \
         of the cycle can block",
        2,
    );
}

// ---------------------------------------------------------------------------
// Recursive mutexes

/// Re-locking a held recursive mutex (while holding another lock) adds no
/// dependency and is no self-deadlock.
#[test]
fn recursive_relock_has_no_finding() {
    require_root();
    let run = run_json(&[], &[fixture("recursive", Variant::Fp)]);
    run.assert_exit(0);
    // mutex_r -> mutex_m was seen (twice, one dependency).
    assert_no_finding(
        &run,
        "re-locking the held recursive mutex_r while holding mutex_m cannot block: \
         no mutex_m -> mutex_r, and no self-deadlock",
        1,
    );
    assert_balanced(
        &run,
        "each lock of the recursive mutex, re-locks included, is one acquisition; \
         its unlocks are not probed",
    );
}

/// A recursive mutex locked twice and unlocked once is still held: the
/// dependency it makes is what closes the cycle.
#[test]
fn recursive_held_until_last_unlock() {
    require_root();
    let bin = fixture("recursive_depth", Variant::NoFp);
    let run = run_json(&[], &[&bin]);
    run.assert_exit(0);
    let pid = run.run.printed_pid("pid");
    let comm = comm_of(&bin);

    let finding = exactly_one_inversion(&run);
    assert_eq!(finding.cycle.len(), 2, "cycle length\n{}", run.describe());
    assert_eq!(
        lock_names(finding, &run),
        names(&["mutex_r", "mutex_m"]),
        "locks\n{}",
        run.describe()
    );
    assert_well_formed(finding, &run, pid, &comm);
    // Held modes: mutex_r was held re-locked (recursive), mutex_m is normal.
    assert_lock_kinds(
        finding,
        &run,
        &[
            ("mutex_r", LockKind::RecursiveMutex),
            ("mutex_m", LockKind::Mutex),
        ],
    );
    let rm = edge(finding, "mutex_r", "mutex_m", &run);
    assert_eq!(
        rm.from.kind,
        LockKind::RecursiveMutex,
        "mutex_r -> mutex_m: from.kind\n{}",
        run.describe()
    );
    assert_eq!(
        rm.to.kind,
        LockKind::Mutex,
        "mutex_r -> mutex_m: to.kind\n{}",
        run.describe()
    );
    let file = "recursive_depth.c";
    let line = marker_line("recursive_depth", "LOCK_M_IN_RM");
    assert!(
        rm.stack
            .iter()
            .any(|f| f.is_at("lock_m_under_relocked_r", file, line)),
        "mutex_r -> mutex_m: stack has no frame lock_m_under_relocked_r at {file}:{line} \
         (LOCK_M_IN_RM: after one of two unlocks)\n{}",
        run.describe()
    );
    // held_stack[0] is where mutex_r was first taken (or re-taken): either
    // call site in lock_m_under_relocked_r.
    let held = rm.held_stack.first();
    let first = marker_line("recursive_depth", "LOCK_R_IN_RM");
    let again = marker_line("recursive_depth", "RELOCK_R_IN_RM");
    assert!(
        held.is_some_and(|h| h.is_at("lock_m_under_relocked_r", file, first)
            || h.is_at("lock_m_under_relocked_r", file, again)),
        "mutex_r -> mutex_m: held_stack[0] should be a lock of mutex_r in \
         lock_m_under_relocked_r ({file}:{first} or {again}), is {held:?}\n{}",
        run.describe()
    );
    let mr = edge(finding, "mutex_m", "mutex_r", &run);
    let line = marker_line("recursive_depth", "LOCK_R_IN_MR");
    assert!(
        mr.stack.iter().any(|f| f.is_at("lock_mr", file, line)),
        "mutex_m -> mutex_r: stack has no frame lock_mr at {file}:{line}\n{}",
        run.describe()
    );
    assert_balanced(
        &run,
        "each lock of the recursive mutex, re-locks included, is one acquisition; \
         its unlocks are not probed",
    );
}

// ---------------------------------------------------------------------------
// Self-deadlock

fn self_deadlock(variant: Variant) {
    require_root();
    let bin = fixture("self_deadlock", variant);
    let run = run_json(&[], &[&bin]);
    run.assert_exit(0);
    let pid = run.run.printed_pid("pid");
    let tid = run.run.printed_pid("tid");
    let comm = comm_of(&bin);
    let file = "self_deadlock.c";

    assert!(
        run.report.inversions().is_empty(),
        "no lock_order_inversion expected: the failed timedlock did not hold mutex_a, so \
         there is no mutex_a -> mutex_b\n{}",
        run.describe()
    );
    let found = run.report.self_deadlocks();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one self_deadlock (the timedlock; a trylock of a held mutex \
         cannot block)\n{}",
        run.describe()
    );
    let d = &found[0];
    assert_eq!(
        d.lock.name.as_deref(),
        Some("mutex_a"),
        "self_deadlock lock\n{}",
        run.describe()
    );
    assert_eq!(
        d.lock.kind,
        LockKind::Mutex,
        "lock kind\n{}",
        run.describe()
    );
    assert_eq!(d.pid, pid, "pid\n{}", run.describe());
    assert_eq!(d.comm, comm, "comm\n{}", run.describe());
    assert_eq!(
        d.tid,
        tid,
        "tid: the worker thread that printed `tid N`\n{}",
        run.describe()
    );
    assert!(
        !d.thread.is_empty(),
        "empty thread name\n{}",
        run.describe()
    );
    assert!(d.id >= 1, "finding id\n{}", run.describe());

    let top = d.stack.first();
    assert!(
        top.is_some_and(|f| in_libc(f) && function_contains(f, "pthread_mutex_")),
        "stack should start in libc's pthread_mutex_timedlock (or the clocklock code it \
         jumps to), starts with {top:?}\n{}",
        run.describe()
    );
    let again = marker_line("self_deadlock", "TIMEDLOCK_A_HELD");
    assert!(
        d.stack.iter().any(|f| f.is_at("relock_a", file, again)),
        "stack has no frame relock_a at {file}:{again} (TIMEDLOCK_A_HELD)\n{}",
        run.describe()
    );
    let first = marker_line("self_deadlock", "LOCK_A_FIRST");
    let held = d.held_stack.first();
    assert!(
        held.is_some_and(|f| f.is_at("relock_a", file, first)),
        "held_stack[0] should be relock_a at {file}:{first} (LOCK_A_FIRST), is {held:?}\n{}",
        run.describe()
    );
    assert_eq!(
        run.report.summary.cycles,
        0,
        "summary cycles\n{}",
        run.describe()
    );
}

#[test]
fn self_deadlock_timedlock_fp() {
    self_deadlock(Variant::Fp);
}

#[test]
fn self_deadlock_timedlock_nofp() {
    self_deadlock(Variant::NoFp);
}

// ---------------------------------------------------------------------------
// Condition variables

/// A consumer waiting on mutex_m holding nothing else, then m -> n
/// everywhere: no finding, and the wait's release and re-acquisition match.
#[test]
fn cond_wait_without_other_locks_has_no_finding() {
    require_root();
    let run = run_json(&[], &[fixture("cond_ok", Variant::NoFp)]);
    run.assert_exit(0);
    // mutex_m -> mutex_n was seen.
    assert_no_finding(
        &run,
        "pthread_cond_wait re-acquires mutex_m holding nothing else, and every order is \
         mutex_m -> mutex_n",
        1,
    );
    assert_balanced(
        &run,
        "pthread_cond_wait releases mutex_m for the wait and re-acquires it: one release \
         and one acquisition, or neither",
    );
}

/// Waiting on mutex_m while holding mutex_a re-acquires mutex_m under
/// mutex_a (a -> m), against the earlier m -> a: one inversion.
fn cond_inversion(variant: Variant) {
    require_root();
    let bin = fixture("cond_inversion", variant);
    let run = run_json(&[], &[&bin]);
    run.assert_exit(0);
    let pid = run.run.printed_pid("pid");
    let comm = comm_of(&bin);

    let finding = exactly_one_inversion(&run);
    assert_eq!(finding.cycle.len(), 2, "cycle length\n{}", run.describe());
    assert_eq!(
        lock_names(finding, &run),
        names(&["mutex_a", "mutex_m"]),
        "locks\n{}",
        run.describe()
    );
    assert_well_formed(finding, &run, pid, &comm);
    assert_lock_kinds(
        finding,
        &run,
        &[("mutex_a", LockKind::Mutex), ("mutex_m", LockKind::Mutex)],
    );
    let ma = check_edge(
        finding,
        &EdgeSpec {
            from: "mutex_m",
            to: "mutex_a",
            from_kind: LockKind::Mutex,
            to_kind: LockKind::Mutex,
            libc: LibcFrame::Top("pthread_mutex_lock"),
            function: "wait_holding_a",
            to_marker: "LOCK_A_IN_WAITER",
            held_function: "wait_holding_a",
            from_marker: "LOCK_M_IN_WAITER",
        },
        &run,
        "cond_inversion",
        pid,
        &comm,
    );
    let am = check_edge(
        finding,
        &EdgeSpec {
            from: "mutex_a",
            to: "mutex_m",
            from_kind: LockKind::Mutex,
            to_kind: LockKind::Mutex,
            libc: LibcFrame::Any("pthread_cond_wait"),
            function: "wait_holding_a",
            to_marker: "COND_WAIT_IN_WAITER",
            held_function: "wait_holding_a",
            from_marker: "LOCK_A_IN_WAITER",
        },
        &run,
        "cond_inversion",
        pid,
        &comm,
    );
    assert_eq!(
        ma.tid,
        am.tid,
        "both edges come from the waiter thread\n{}",
        run.describe()
    );
    assert_ne!(
        am.tid,
        pid,
        "the waiter is not the main thread\n{}",
        run.describe()
    );
    assert_eq!(
        run.report.summary.cycles,
        1,
        "summary cycles\n{}",
        run.describe()
    );
}

#[test]
fn cond_wait_reacquisition_inversion_fp() {
    cond_inversion(Variant::Fp);
}

#[test]
fn cond_wait_reacquisition_inversion_nofp() {
    cond_inversion(Variant::NoFp);
}

// ---------------------------------------------------------------------------
// Timed and try acquisitions

/// Timed and try acquisitions add no dependency (no a -> b, no b -> a from
/// them), but a lock taken with a timed call orders a later blocking one
/// (c -> d): one inversion, between mutex_c and mutex_d.
#[test]
fn timed_and_try_acquisitions() {
    require_root();
    let bin = fixture("timed_try", Variant::Fp);
    let run = run_json(&[], &[&bin]);
    run.assert_exit(0);
    let pid = run.run.printed_pid("pid");
    let comm = comm_of(&bin);

    let finding = exactly_one_inversion(&run);
    assert_eq!(
        lock_names(finding, &run),
        names(&["mutex_c", "mutex_d"]),
        "locks: the only cycle is mutex_c/mutex_d (a timedlock or trylock adds no \
         dependency, so mutex_a/mutex_b make none)\n{}",
        run.describe()
    );
    assert_eq!(finding.cycle.len(), 2, "cycle length\n{}", run.describe());
    assert_well_formed(finding, &run, pid, &comm);
    check_edge(
        finding,
        &EdgeSpec {
            from: "mutex_c",
            to: "mutex_d",
            from_kind: LockKind::Mutex,
            to_kind: LockKind::Mutex,
            libc: LibcFrame::Top("pthread_mutex_lock"),
            function: "timedlock_c_lock_d",
            to_marker: "LOCK_D_IN_T3",
            held_function: "timedlock_c_lock_d",
            from_marker: "TIMEDLOCK_C_IN_T3",
        },
        &run,
        "timed_try",
        pid,
        &comm,
    );
    check_edge(
        finding,
        &EdgeSpec {
            from: "mutex_d",
            to: "mutex_c",
            from_kind: LockKind::Mutex,
            to_kind: LockKind::Mutex,
            libc: LibcFrame::Top("pthread_mutex_lock"),
            function: "lock_d_lock_c",
            to_marker: "LOCK_C_IN_T4",
            held_function: "lock_d_lock_c",
            from_marker: "LOCK_D_IN_T4",
        },
        &run,
        "timed_try",
        pid,
        &comm,
    );
    assert_eq!(
        run.report.summary.cycles,
        1,
        "summary cycles\n{}",
        run.describe()
    );
    assert_eq!(
        run.report.summary.lost_events,
        0,
        "lost events\n{}",
        run.describe()
    );
}

// ---------------------------------------------------------------------------
// Spinlocks

#[test]
fn spinlock_inversion() {
    require_root();
    let bin = fixture("spin_ab_ba", Variant::NoFp);
    let run = run_json(&[], &[&bin]);
    run.assert_exit(0);
    let pid = run.run.printed_pid("pid");
    let comm = comm_of(&bin);

    let finding = exactly_one_inversion(&run);
    assert_eq!(finding.cycle.len(), 2, "cycle length\n{}", run.describe());
    assert_eq!(
        lock_names(finding, &run),
        names(&["spin_a", "spin_b"]),
        "locks\n{}",
        run.describe()
    );
    assert_well_formed(finding, &run, pid, &comm);
    assert_lock_kinds(
        finding,
        &run,
        &[
            ("spin_a", LockKind::Spinlock),
            ("spin_b", LockKind::Spinlock),
        ],
    );
    let ab = check_edge(
        finding,
        &EdgeSpec {
            from: "spin_a",
            to: "spin_b",
            from_kind: LockKind::Spinlock,
            to_kind: LockKind::Spinlock,
            libc: LibcFrame::Top("pthread_spin_lock"),
            function: "spin_ab",
            to_marker: "SPIN_B_IN_AB",
            held_function: "spin_ab",
            from_marker: "SPIN_A_IN_AB",
        },
        &run,
        "spin_ab_ba",
        pid,
        &comm,
    );
    let ba = check_edge(
        finding,
        &EdgeSpec {
            from: "spin_b",
            to: "spin_a",
            from_kind: LockKind::Spinlock,
            to_kind: LockKind::Spinlock,
            libc: LibcFrame::Top("pthread_spin_lock"),
            function: "spin_ba",
            to_marker: "SPIN_A_IN_BA",
            held_function: "spin_ba",
            from_marker: "SPIN_B_IN_BA",
        },
        &run,
        "spin_ab_ba",
        pid,
        &comm,
    );
    assert_ne!(
        ab.tid,
        ba.tid,
        "the two edges come from two threads\n{}",
        run.describe()
    );
    assert_eq!(
        run.report.summary.cycles,
        1,
        "summary cycles\n{}",
        run.describe()
    );
}
