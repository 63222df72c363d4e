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
//!   held until unlocked as often as it was locked;
//! - `pthread_cond_wait` releases its mutex for the wait and re-acquires it
//!   (a blocking acquisition, ordered after the other held locks) on return;
//! - readers never block readers: a cycle is reported only if every hop can
//!   block;
//! - a blocking or timed request of a non-recursive mutex already held by the
//!   requesting thread is a `self_deadlock`.

use std::path::Path;

use locktrace_e2e::{
    comm_of, edge, fixture, lock_names, marker_line, names, require_root, run_json, Edge, Finding,
    Frame, JsonRun, Lock, SelfDeadlock, Variant,
};

// ---------------------------------------------------------------------------
// Helpers

fn assert_exit(run: &JsonRun, expected: i32) {
    assert_eq!(
        run.run.code(),
        expected,
        "unexpected tracer exit status (the fixture's own status is passed through)\n{}",
        run.describe()
    );
}

fn self_deadlocks(run: &JsonRun) -> Vec<SelfDeadlock> {
    run.report
        .self_deadlocks()
        .unwrap_or_else(|e| panic!("{e}\n{}", run.describe()))
}

fn counter(run: &JsonRun, counter: &str) -> u64 {
    run.report
        .summary
        .counters
        .get(counter)
        .and_then(|v| v.as_u64())
        .unwrap_or_else(|| panic!("no counter {counter} in the summary\n{}", run.describe()))
}

/// The traced program, which unlocks every lock it takes (libc's own start-up
/// locking included), made as many acquisitions as releases. (Not the
/// `unmatched_releases` counter: it may count other processes' releases.)
fn assert_balanced(run: &JsonRun, why: &str) {
    let acquisitions = counter(run, "acquisitions");
    let releases = counter(run, "releases");
    assert!(
        acquisitions > 0,
        "the tracer counted no acquisition\n{}",
        run.describe()
    );
    assert_eq!(
        acquisitions,
        releases,
        "acquisitions and releases should match: {why}\n{}",
        run.describe()
    );
}

/// Exactly one lock_order_inversion, and no self_deadlock.
fn exactly_one_inversion(run: &JsonRun) -> &Finding {
    assert_eq!(
        run.report.findings.len(),
        1,
        "expected exactly one lock_order_inversion\n{}",
        run.describe()
    );
    assert!(
        self_deadlocks(run).is_empty(),
        "expected no self_deadlock\n{}",
        run.describe()
    );
    &run.report.findings[0]
}

/// No finding of any kind, no cycle, no lost event, and at least
/// `min_dependencies` dependencies (the tracer did see the nested locks).
fn assert_no_finding(run: &JsonRun, why: &str, min_dependencies: u64) {
    assert!(
        run.report.findings.is_empty(),
        "no lock_order_inversion expected: {why}\n{}",
        run.describe()
    );
    assert!(
        self_deadlocks(run).is_empty(),
        "no self_deadlock expected: {why}\n{}",
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

/// The cycle's edges chain up (each edge's `to` is the next edge's `from`),
/// `locks[i]` is `cycle[i].from`, and the finding belongs to `pid`/`comm`.
fn assert_well_formed(finding: &Finding, run: &JsonRun, pid: u32, comm: &str) {
    let n = finding.cycle.len();
    assert_eq!(
        finding.locks.len(),
        n,
        "as many locks as edges\n{}",
        run.describe()
    );
    for i in 0..n {
        let (a, b) = (&finding.cycle[i], &finding.cycle[(i + 1) % n]);
        assert_eq!(
            a.to.addr,
            b.from.addr,
            "cycle edges {i} and {} do not chain (to != next from)\n{}",
            (i + 1) % n,
            run.describe()
        );
        assert_eq!(
            finding.locks[i].addr,
            a.from.addr,
            "locks[{i}] is not cycle[{i}].from\n{}",
            run.describe()
        );
    }
    assert_eq!(finding.pid, pid, "finding pid\n{}", run.describe());
    assert_eq!(finding.comm, comm, "finding comm\n{}", run.describe());
}

/// The kind of each lock in `locks` (the held modes), by name.
fn assert_lock_kinds(finding: &Finding, run: &JsonRun, expected: &[(&str, &str)]) {
    for &(lock, kind) in expected {
        let found: Vec<&Lock> = finding.locks.iter().filter(|l| l.label() == lock).collect();
        assert_eq!(
            found.len(),
            1,
            "{lock} should be in `locks` once\n{}",
            run.describe()
        );
        assert_eq!(
            found[0].kind,
            kind,
            "kind of {lock} in `locks` (its held mode)\n{}",
            run.describe()
        );
    }
}

fn in_libc(frame: &Frame) -> bool {
    frame.module.as_deref().is_some_and(|m| {
        Path::new(m)
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("libc"))
    })
}

fn function_contains(frame: &Frame, needle: &str) -> bool {
    frame
        .function
        .as_deref()
        .is_some_and(|f| f.contains(needle))
}

/// Where libc's lock function must show in an edge's `stack`.
#[derive(Clone, Copy)]
enum LibcFrame<'a> {
    /// `stack[0]`'s function contains this.
    Top(&'a str),
    /// Some frame's function contains this (`stack[0]` is still in libc).
    Any(&'a str),
}

/// What one edge of a cycle must look like.
struct EdgeSpec<'a> {
    /// Lock names.
    from: &'a str,
    to: &'a str,
    /// Held mode of `from`, requested mode of `to`.
    from_kind: &'a str,
    to_kind: &'a str,
    libc: LibcFrame<'a>,
    /// `to` was requested in `function` at the line of `to_marker`.
    function: &'a str,
    to_marker: &'a str,
    /// `from` was taken in `held_function` at the line of `from_marker`.
    held_function: &'a str,
    from_marker: &'a str,
}

/// Finds and checks the edge `spec.from` -> `spec.to` of a cycle in fixture
/// `source`: kinds, a `stack` starting in libc (in the lock function named by
/// `spec.libc`) with a frame of `function` at the `to_marker` line, a
/// `held_stack[0]` in `held_function` at the `from_marker` line, pid and comm.
fn check_edge<'a>(
    finding: &'a Finding,
    spec: &EdgeSpec<'_>,
    run: &JsonRun,
    source: &str,
    pid: u32,
    comm: &str,
) -> &'a Edge {
    let edge = edge(finding, spec.from, spec.to, run);
    let file = format!("{source}.c");
    let to_line = marker_line(source, spec.to_marker);
    let from_line = marker_line(source, spec.from_marker);
    let what = format!("edge {} -> {}", spec.from, spec.to);

    assert_eq!(
        edge.from.kind,
        spec.from_kind,
        "{what}: from.kind (the mode {} was held in)\n{}",
        spec.from,
        run.describe()
    );
    assert_eq!(
        edge.to.kind,
        spec.to_kind,
        "{what}: to.kind (the mode {} was requested in)\n{}",
        spec.to,
        run.describe()
    );
    assert!(
        !edge.stack.is_empty() && !edge.held_stack.is_empty(),
        "{what}: empty stack or held_stack\n{}",
        run.describe()
    );
    let top = &edge.stack[0];
    assert!(
        in_libc(top),
        "{what}: stack should start inside libc, starts with {top:?}\n{}",
        run.describe()
    );
    match spec.libc {
        LibcFrame::Top(f) => assert!(
            function_contains(top, f),
            "{what}: stack should start in libc's {f}, starts with {top:?}\n{}",
            run.describe()
        ),
        LibcFrame::Any(f) => assert!(
            edge.stack.iter().any(|fr| function_contains(fr, f)),
            "{what}: stack should have a frame in libc's {f}\n{}",
            run.describe()
        ),
    }
    assert!(
        edge.stack
            .iter()
            .any(|f| f.is_at(spec.function, &file, to_line)),
        "{what}: stack has no frame {} at {file}:{to_line} ({})\n{}",
        spec.function,
        spec.to_marker,
        run.describe()
    );

    let held = &edge.held_stack[0];
    assert!(
        held.is_at(spec.held_function, &file, from_line),
        "{what}: held_stack[0] should be where {} was taken: {} at {file}:{from_line} ({}), \
         is {held:?}\n{}",
        spec.from,
        spec.held_function,
        spec.from_marker,
        run.describe()
    );

    assert_eq!(edge.pid, pid, "{what}: pid\n{}", run.describe());
    assert!(edge.tid != 0, "{what}: tid is 0\n{}", run.describe());
    assert_eq!(edge.comm, comm, "{what}: comm\n{}", run.describe());
    assert!(
        !edge.thread.is_empty(),
        "{what}: empty thread name\n{}",
        run.describe()
    );
    edge
}

// ---------------------------------------------------------------------------
// rwlocks

fn rwlock_ww(variant: Variant) {
    require_root();
    let bin = fixture("rwlock_ww", variant);
    let run = run_json(&[], &[&bin]);
    assert_exit(&run, 0);
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
        &[("rwlock_a", "rwlock_write"), ("rwlock_b", "rwlock_write")],
    );
    let ab = check_edge(
        finding,
        &EdgeSpec {
            from: "rwlock_a",
            to: "rwlock_b",
            from_kind: "rwlock_write",
            to_kind: "rwlock_write",
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
            from_kind: "rwlock_write",
            to_kind: "rwlock_write",
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
    assert_exit(&run, 0);
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
        &[("rwlock_a", "rwlock_read"), ("rwlock_b", "rwlock_read")],
    );
    for e in &finding.cycle {
        assert_eq!(
            e.from.kind,
            "rwlock_read",
            "from.kind: both locks were held for reading\n{}",
            run.describe()
        );
        assert_eq!(
            e.to.kind,
            "rwlock_write",
            "to.kind: both requests were for writing\n{}",
            run.describe()
        );
    }
    check_edge(
        finding,
        &EdgeSpec {
            from: "rwlock_a",
            to: "rwlock_b",
            from_kind: "rwlock_read",
            to_kind: "rwlock_write",
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
            from_kind: "rwlock_read",
            to_kind: "rwlock_write",
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
    assert_exit(&run, 0);
    // rwlock_a -> rwlock_b and rwlock_b -> rwlock_a were seen.
    assert_no_finding(&run, "readers never block readers", 2);
}

/// Both orders, one request for writing, the other for reading: the read
/// request of a read-held lock cannot block, so the cycle cannot deadlock.
#[test]
fn rwlock_one_read_read_hop_has_no_finding() {
    require_root();
    let run = run_json(&[], &[fixture("rwlock_mixed", Variant::Fp)]);
    assert_exit(&run, 0);
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
    assert_exit(&run, 0);
    // mutex_r -> mutex_m was seen (twice, one dependency).
    assert_no_finding(
        &run,
        "re-locking the held recursive mutex_r while holding mutex_m cannot block: \
         no mutex_m -> mutex_r, and no self-deadlock",
        1,
    );
    assert_balanced(
        &run,
        "each lock of the recursive mutex, re-locks included, is one acquisition, \
         each unlock one release",
    );
}

/// A recursive mutex locked twice and unlocked once is still held: the
/// dependency it makes is what closes the cycle.
#[test]
fn recursive_held_until_last_unlock() {
    require_root();
    let bin = fixture("recursive_depth", Variant::NoFp);
    let run = run_json(&[], &[&bin]);
    assert_exit(&run, 0);
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
        &[("mutex_r", "recursive_mutex"), ("mutex_m", "mutex")],
    );
    let rm = edge(finding, "mutex_r", "mutex_m", &run);
    assert_eq!(
        rm.from.kind,
        "recursive_mutex",
        "mutex_r -> mutex_m: from.kind\n{}",
        run.describe()
    );
    assert_eq!(
        rm.to.kind,
        "mutex",
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
        "each lock of the recursive mutex, re-locks included, is one acquisition, \
         each unlock one release",
    );
}

// ---------------------------------------------------------------------------
// Self-deadlock

fn self_deadlock(variant: Variant) {
    require_root();
    let bin = fixture("self_deadlock", variant);
    let run = run_json(&[], &[&bin]);
    assert_exit(&run, 0);
    let pid = run.run.printed_pid("pid");
    let tid = run.run.printed_pid("tid");
    let comm = comm_of(&bin);
    let file = "self_deadlock.c";

    assert!(
        run.report.findings.is_empty(),
        "no lock_order_inversion expected: the failed timedlock did not hold mutex_a, so \
         there is no mutex_a -> mutex_b\n{}",
        run.describe()
    );
    let found = self_deadlocks(&run);
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
    assert_eq!(d.lock.kind, "mutex", "lock kind\n{}", run.describe());
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
    assert_exit(&run, 0);
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
    assert_exit(&run, 0);
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
    assert_lock_kinds(finding, &run, &[("mutex_a", "mutex"), ("mutex_m", "mutex")]);
    let ma = check_edge(
        finding,
        &EdgeSpec {
            from: "mutex_m",
            to: "mutex_a",
            from_kind: "mutex",
            to_kind: "mutex",
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
            from_kind: "mutex",
            to_kind: "mutex",
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
    assert_exit(&run, 0);
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
            from_kind: "mutex",
            to_kind: "mutex",
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
            from_kind: "mutex",
            to_kind: "mutex",
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
    assert_exit(&run, 0);
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
        &[("spin_a", "spinlock"), ("spin_b", "spinlock")],
    );
    let ab = check_edge(
        finding,
        &EdgeSpec {
            from: "spin_a",
            to: "spin_b",
            from_kind: "spinlock",
            to_kind: "spinlock",
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
            from_kind: "spinlock",
            to_kind: "spinlock",
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
