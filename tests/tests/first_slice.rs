//! End-to-end tests of the first slice: `locktrace run` on the C fixtures,
//! exit statuses, error handling, and text output. They need root.

use std::ffi::OsStr;
use std::fs;

use locktrace_e2e::{
    assert_well_formed, check_edge, comm_of, edge, exactly_one_inversion, fixture, has_frame,
    lock_names, names, require_root, run_json, EdgeSpec, Tracer, Variant,
};

// ---------------------------------------------------------------------------
// Findings

fn ab_ba(variant: Variant) {
    require_root();
    let bin = fixture("ab_ba", variant);
    let run = run_json(&[], &[&bin]);
    run.assert_exit(0);
    let pid = run.run.printed_pid("pid");
    let comm = comm_of(&bin);

    let finding = exactly_one_inversion(&run);
    assert_eq!(finding.cycle.len(), 2, "cycle length\n{}", run.describe());
    assert_eq!(
        lock_names(finding, &run),
        names(&["mutex_a", "mutex_b"]),
        "locks\n{}",
        run.describe()
    );
    assert_well_formed(finding, &run, pid, &comm);

    let ab = check_edge(
        finding,
        &EdgeSpec::mutexes(
            "mutex_a",
            "mutex_b",
            "lock_ab",
            "LOCK_B_IN_AB",
            "LOCK_A_IN_AB",
        ),
        &run,
        "ab_ba",
        pid,
        &comm,
    );
    let ba = check_edge(
        finding,
        &EdgeSpec::mutexes(
            "mutex_b",
            "mutex_a",
            "lock_ba",
            "LOCK_A_IN_BA",
            "LOCK_B_IN_BA",
        ),
        &run,
        "ab_ba",
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
    assert_eq!(s.lost_events, 0, "lost events\n{}", run.describe());
    assert_eq!(s.cycles, 1, "summary cycles\n{}", run.describe());
}

#[test]
fn ab_ba_fp() {
    ab_ba(Variant::Fp);
}

#[test]
fn ab_ba_nofp() {
    ab_ba(Variant::NoFp);
}

#[test]
fn three_cycle() {
    require_root();
    let bin = fixture("three_cycle", Variant::Fp);
    let run = run_json(&[], &[&bin]);
    run.assert_exit(0);
    let pid = run.run.printed_pid("pid");
    let comm = comm_of(&bin);

    let finding = exactly_one_inversion(&run);
    assert_eq!(finding.cycle.len(), 3, "cycle length\n{}", run.describe());
    assert_eq!(
        lock_names(finding, &run),
        names(&["mutex_a", "mutex_b", "mutex_c"]),
        "locks\n{}",
        run.describe()
    );
    assert_well_formed(finding, &run, pid, &comm);
    for spec in [
        EdgeSpec::mutexes(
            "mutex_a",
            "mutex_b",
            "lock_ab",
            "LOCK_B_IN_AB",
            "LOCK_A_IN_AB",
        ),
        EdgeSpec::mutexes(
            "mutex_b",
            "mutex_c",
            "lock_bc",
            "LOCK_C_IN_BC",
            "LOCK_B_IN_BC",
        ),
        EdgeSpec::mutexes(
            "mutex_c",
            "mutex_a",
            "lock_ca",
            "LOCK_A_IN_CA",
            "LOCK_C_IN_CA",
        ),
    ] {
        check_edge(finding, &spec, &run, "three_cycle", pid, &comm);
    }
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

#[test]
fn same_order_has_no_finding() {
    require_root();
    let run = run_json(&[], &[fixture("same_order", Variant::Fp)]);
    run.assert_exit(0);
    assert!(
        run.report.inversions().is_empty(),
        "same lock order everywhere must not be reported\n{}",
        run.describe()
    );
    let s = &run.report.summary;
    assert_eq!(s.cycles, 0, "summary cycles\n{}", run.describe());
    // A->B, B->C and A->C: the tracer did see the locks.
    assert!(
        s.dependencies >= 3,
        "expected at least 3 dependencies (A->B, B->C, A->C)\n{}",
        run.describe()
    );
}

#[test]
fn trylock_reverse_has_no_finding() {
    require_root();
    let run = run_json(&[], &[fixture("trylock_reverse", Variant::Fp)]);
    run.assert_exit(0);
    assert!(
        run.report.inversions().is_empty(),
        "a reverse order taken only with trylock cannot deadlock and must not be reported\n{}",
        run.describe()
    );
    assert_eq!(
        run.report.summary.cycles,
        0,
        "summary cycles\n{}",
        run.describe()
    );
    assert!(
        run.report.summary.events > 0,
        "the tracer saw no events\n{}",
        run.describe()
    );
}

#[test]
fn fork_with_lock_held() {
    require_root();
    let bin = fixture("fork_held", Variant::Fp);
    let run = run_json(&[], &[&bin]);
    run.assert_exit(0);
    let parent = run.run.printed_pid("pid");
    let child = run.run.printed_pid("child");
    assert_ne!(parent, child);

    let finding = exactly_one_inversion(&run);
    assert_eq!(
        finding.pid,
        child,
        "the inversion happens in the forked child (pid {child}), parent is {parent}\n{}",
        run.describe()
    );
    assert_eq!(finding.cycle.len(), 2, "cycle length\n{}", run.describe());
    assert_eq!(
        lock_names(finding, &run),
        names(&["mutex_a", "mutex_b"]),
        "locks\n{}",
        run.describe()
    );
    for e in &finding.cycle {
        assert_eq!(e.pid, child, "edge pid\n{}", run.describe());
    }
    // A->B exists only because A, taken before fork(), stays held in the child.
    let ab = edge(finding, "mutex_a", "mutex_b", &run);
    assert!(
        has_frame(
            &ab.stack,
            "fork_held",
            "child_lock_b_under_inherited_a",
            "LOCK_B_UNDER_INHERITED_A"
        ),
        "A->B stack should show child_lock_b_under_inherited_a\n{}",
        run.describe()
    );
    let ba = edge(finding, "mutex_b", "mutex_a", &run);
    assert!(
        has_frame(
            &ba.stack,
            "fork_held",
            "child_lock_ba",
            "LOCK_A_IN_CHILD_BA"
        ),
        "B->A stack should show child_lock_ba\n{}",
        run.describe()
    );
    assert_eq!(
        run.report.summary.cycles,
        1,
        "summary cycles\n{}",
        run.describe()
    );
}

// ---------------------------------------------------------------------------
// Exit statuses

#[test]
fn exit_code_when_reported() {
    require_root();
    let run = run_json(&["--exit-code", "66"], &[fixture("ab_ba", Variant::Fp)]);
    assert_eq!(
        run.report.inversions().len(),
        1,
        "findings\n{}",
        run.describe()
    );
    run.assert_exit(66);
}

#[test]
fn exit_code_is_the_commands_without_option() {
    require_root();
    let run = run_json(&[], &[fixture("ab_ba", Variant::Fp)]);
    assert_eq!(
        run.report.inversions().len(),
        1,
        "findings\n{}",
        run.describe()
    );
    run.assert_exit(0);
}

#[test]
fn exit_status_passthrough() {
    require_root();
    let run = Tracer::new(["run", "--", "sh", "-c", "exit 3"]).run();
    run.assert_exit(3);
}

// ---------------------------------------------------------------------------
// Errors

#[test]
fn bad_format_is_a_usage_error() {
    require_root();
    let run = Tracer::new(["run", "--format", "xml", "--", "true"]).run();
    run.assert_failed();
    assert!(
        run.stderr.contains("--format"),
        "the message should name --format\n{}",
        run.describe()
    );
}

#[test]
fn bad_duration_is_a_usage_error() {
    require_root();
    let run = Tracer::new(["watch", "--duration", "abc"]).run();
    run.assert_failed();
    assert!(
        run.stderr.contains("--duration"),
        "the message should name --duration\n{}",
        run.describe()
    );
}

#[test]
fn missing_command() {
    require_root();
    let run = Tracer::new(["run", "--", "/nonexistent/cmd"]).run();
    run.assert_failed();
    let line = run.single_error_line();
    assert!(
        line.contains("/nonexistent/cmd"),
        "the error should name the command\n{}",
        run.describe()
    );
}

#[test]
fn watch_missing_pid() {
    require_root();
    let run = Tracer::new(["watch", "--pid", "999999999", "--duration", "1s"]).run();
    run.assert_failed();
    let line = run.single_error_line();
    assert!(
        line.contains("999999999"),
        "the error should name the pid\n{}",
        run.describe()
    );
}

#[test]
fn not_root() {
    require_root();
    let run = Tracer::new(["run", "--", "/bin/true"])
        .wrapped_in([
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ])
        .run();
    run.assert_failed();
    let line = run.single_error_line();
    assert!(
        line.contains("root") || line.contains("CAP_BPF"),
        "the error should say root or CAP_BPF is needed\n{}",
        run.describe()
    );
}

// ---------------------------------------------------------------------------
// Text output

#[test]
fn text_report() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report.txt");
    let bin = fixture("ab_ba", Variant::Fp);
    let run = Tracer::new([
        OsStr::new("run"),
        OsStr::new("--format"),
        OsStr::new("text"),
        OsStr::new("--output"),
        out.as_os_str(),
        OsStr::new("--"),
        bin.as_os_str(),
    ])
    .run();
    run.assert_exit(0);
    let text = fs::read_to_string(&out)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}\n{}", out.display(), run.describe()));
    let describe = || format!("{}\n--- text output ---\n{text}---", run.describe());
    for needle in ["mutex_a", "mutex_b", "lock_ab", "lock_ba"] {
        assert!(
            text.contains(needle),
            "text report lacks {needle}\n{}",
            describe()
        );
    }
    assert!(
        text.to_lowercase().contains("lock-order inversion"),
        "text report lacks the words `lock-order inversion`\n{}",
        describe()
    );
}

/// The kernel counters of one `count_calls N` run.
fn counted_calls(extra: &[&str], n: u64) -> (u64, u64) {
    let run = run_json(
        extra,
        &[
            fixture("count_calls", Variant::NoFp).into_os_string(),
            n.to_string().into(),
        ],
    );
    run.assert_exit(0);
    assert_eq!(run.counter("lost_events"), 0, "{}", run.describe());
    (run.counter("acquisitions"), run.counter("releases"))
}

/// Probes placed inside the functions (at the first emulated instruction)
/// fire exactly once per call: the counts grow by exactly the calls the
/// fixture adds (libc's own start-up locking is the same in both runs), and
/// match those of probes on the first instruction.
#[test]
fn placed_probes_fire_once_per_call() {
    require_root();
    for extra in [&[][..], &["--probe-at-entry"][..]] {
        let (acquired_100, released_100) = counted_calls(extra, 100);
        let (acquired_1100, released_1100) = counted_calls(extra, 1100);
        // 1000 more lock/unlock pairs and 1000 more successful trylocks; the
        // 1000 more failing trylocks take nothing.
        assert_eq!(
            acquired_1100 - acquired_100,
            2000,
            "acquisitions with {extra:?}: {acquired_100} for N=100, {acquired_1100} for N=1100"
        );
        // Mutex unlocks are not probed: a held mutex is checked against
        // its owner field instead.
        assert_eq!(
            released_1100 - released_100,
            0,
            "releases with {extra:?}: {released_100} for N=100, {released_1100} for N=1100"
        );
    }
}
