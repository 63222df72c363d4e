//! End-to-end tests of the first slice: `locktrace run` on the C fixtures,
//! exit statuses, error handling, and text output. They need root.

use std::ffi::OsStr;
use std::fs;
use std::path::Path;

use locktrace_e2e::{
    comm_of, edge, fixture, lock_names, marker_line, names, require_root, run_json, Edge, Finding,
    JsonRun, Tracer, Variant,
};

// ---------------------------------------------------------------------------
// Helpers

/// Checks one edge of a cycle in fixture `source` ("ab_ba" ...): `to` was
/// requested in `function` at the line of `to_marker` (a frame of `stack`,
/// which starts in libc's pthread_mutex_lock), and `from` was taken in
/// `function` (`held_stack[0]`, at the line of `from_marker` if a line is
/// given).
#[allow(clippy::too_many_arguments)]
fn check_edge(
    edge: &Edge,
    run: &JsonRun,
    source: &str,
    function: &str,
    to_marker: &str,
    held_function: &str,
    from_marker: &str,
    pid: u32,
    comm: &str,
) {
    let file = format!("{source}.c");
    let to_line = marker_line(source, to_marker);
    let from_line = marker_line(source, from_marker);
    let what = format!("edge {} -> {}", edge.from.label(), edge.to.label());

    assert!(
        !edge.stack.is_empty() && !edge.held_stack.is_empty(),
        "{what}: empty stack or held_stack\n{}",
        run.describe()
    );
    let top = &edge.stack[0];
    assert!(
        top.function
            .as_deref()
            .is_some_and(|f| f.contains("pthread_mutex_lock"))
            && top.module.as_deref().is_some_and(|m| {
                Path::new(m)
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("libc"))
            }),
        "{what}: stack should start inside libc's pthread_mutex_lock, starts with {top:?}\n{}",
        run.describe()
    );
    assert!(
        edge.stack.iter().any(|f| f.is_at(function, &file, to_line)),
        "{what}: stack has no frame {function} at {file}:{to_line} ({to_marker})\n{}",
        run.describe()
    );

    let held = &edge.held_stack[0];
    assert_eq!(
        held.function.as_deref(),
        Some(held_function),
        "{what}: held_stack[0] should be where {} was taken\n{}",
        edge.from.label(),
        run.describe()
    );
    if let Some(line) = held.line {
        assert_eq!(
            line,
            from_line,
            "{what}: held_stack[0] line should be {file}:{from_line} ({from_marker})\n{}",
            run.describe()
        );
    }

    assert_eq!(edge.pid, pid, "{what}: pid\n{}", run.describe());
    assert!(edge.tid != 0, "{what}: tid is 0\n{}", run.describe());
    assert_eq!(edge.comm, comm, "{what}: comm\n{}", run.describe());
    assert!(
        !edge.thread.is_empty(),
        "{what}: empty thread name\n{}",
        run.describe()
    );
}

fn exactly_one_finding(run: &JsonRun) -> &Finding {
    assert_eq!(
        run.report.findings.len(),
        1,
        "expected exactly one lock_order_inversion\n{}",
        run.describe()
    );
    &run.report.findings[0]
}

fn assert_exit(run: &locktrace_e2e::Run, expected: i32) {
    assert_eq!(
        run.code(),
        expected,
        "unexpected tracer exit status\n{}",
        run.describe()
    );
}

/// The cycle's edges chain up: each edge's `to` is the next edge's `from`.
fn assert_closed_cycle(finding: &Finding, run: &JsonRun) {
    let n = finding.cycle.len();
    for i in 0..n {
        let (a, b) = (&finding.cycle[i], &finding.cycle[(i + 1) % n]);
        assert_eq!(
            a.to.addr,
            b.from.addr,
            "cycle edges {i} and {} do not chain (to != next from)\n{}",
            (i + 1) % n,
            run.describe()
        );
    }
}

// ---------------------------------------------------------------------------
// Findings

fn ab_ba(variant: Variant) {
    require_root();
    let bin = fixture("ab_ba", variant);
    let run = run_json(&[], &[&bin]);
    assert_exit(&run.run, 0);
    let pid = run.run.printed_pid("pid");
    let comm = comm_of(&bin);

    let finding = exactly_one_finding(&run);
    assert_eq!(finding.cycle.len(), 2, "cycle length\n{}", run.describe());
    assert_eq!(
        lock_names(finding, &run),
        names(&["mutex_a", "mutex_b"]),
        "locks\n{}",
        run.describe()
    );
    assert_eq!(finding.pid, pid, "finding pid\n{}", run.describe());
    assert_eq!(finding.comm, comm, "finding comm\n{}", run.describe());
    assert_closed_cycle(finding, &run);

    let ab = edge(finding, "mutex_a", "mutex_b", &run);
    check_edge(
        ab,
        &run,
        "ab_ba",
        "lock_ab",
        "LOCK_B_IN_AB",
        "lock_ab",
        "LOCK_A_IN_AB",
        pid,
        &comm,
    );
    let ba = edge(finding, "mutex_b", "mutex_a", &run);
    check_edge(
        ba,
        &run,
        "ab_ba",
        "lock_ba",
        "LOCK_A_IN_BA",
        "lock_ba",
        "LOCK_B_IN_BA",
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
    assert_exit(&run.run, 0);
    let pid = run.run.printed_pid("pid");
    let comm = comm_of(&bin);

    let finding = exactly_one_finding(&run);
    assert_eq!(finding.cycle.len(), 3, "cycle length\n{}", run.describe());
    assert_eq!(
        finding.locks.len(),
        3,
        "number of locks\n{}",
        run.describe()
    );
    assert_eq!(
        lock_names(finding, &run),
        names(&["mutex_a", "mutex_b", "mutex_c"]),
        "locks\n{}",
        run.describe()
    );
    assert_closed_cycle(finding, &run);
    for (from, to, function, to_marker, from_marker) in [
        (
            "mutex_a",
            "mutex_b",
            "lock_ab",
            "LOCK_B_IN_AB",
            "LOCK_A_IN_AB",
        ),
        (
            "mutex_b",
            "mutex_c",
            "lock_bc",
            "LOCK_C_IN_BC",
            "LOCK_B_IN_BC",
        ),
        (
            "mutex_c",
            "mutex_a",
            "lock_ca",
            "LOCK_A_IN_CA",
            "LOCK_C_IN_CA",
        ),
    ] {
        let e = edge(finding, from, to, &run);
        check_edge(
            e,
            &run,
            "three_cycle",
            function,
            to_marker,
            function,
            from_marker,
            pid,
            &comm,
        );
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
    assert_exit(&run.run, 0);
    assert!(
        run.report.findings.is_empty(),
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
    assert_exit(&run.run, 0);
    assert!(
        run.report.findings.is_empty(),
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
    assert_exit(&run.run, 0);
    let parent = run.run.printed_pid("pid");
    let child = run.run.printed_pid("child");
    assert_ne!(parent, child);

    let finding = exactly_one_finding(&run);
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
        ab.stack.iter().any(|f| f.is_at(
            "child_lock_b_under_inherited_a",
            "fork_held.c",
            marker_line("fork_held", "LOCK_B_UNDER_INHERITED_A")
        )),
        "A->B stack should show child_lock_b_under_inherited_a\n{}",
        run.describe()
    );
    let ba = edge(finding, "mutex_b", "mutex_a", &run);
    assert!(
        ba.stack.iter().any(|f| f.is_at(
            "child_lock_ba",
            "fork_held.c",
            marker_line("fork_held", "LOCK_A_IN_CHILD_BA")
        )),
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
    assert_eq!(run.report.findings.len(), 1, "findings\n{}", run.describe());
    assert_exit(&run.run, 66);
}

#[test]
fn exit_code_is_the_commands_without_option() {
    require_root();
    let run = run_json(&[], &[fixture("ab_ba", Variant::Fp)]);
    assert_eq!(run.report.findings.len(), 1, "findings\n{}", run.describe());
    assert_exit(&run.run, 0);
}

#[test]
fn exit_status_passthrough() {
    require_root();
    let run = Tracer::new(["run", "--", "sh", "-c", "exit 3"]).run();
    assert_exit(&run, 3);
}

// ---------------------------------------------------------------------------
// Errors

fn assert_failed(run: &locktrace_e2e::Run) {
    assert!(
        run.status.code().is_some_and(|c| c != 0),
        "expected a non-zero exit status\n{}",
        run.describe()
    );
}

/// Exactly one non-empty stderr line, starting `locktrace: `.
fn single_error_line(run: &locktrace_e2e::Run) -> String {
    let lines = run.stderr_lines();
    assert_eq!(
        lines.len(),
        1,
        "expected one error line on stderr\n{}",
        run.describe()
    );
    assert!(
        lines[0].starts_with("locktrace: "),
        "error line should start with `locktrace: `\n{}",
        run.describe()
    );
    lines[0].to_string()
}

#[test]
fn bad_format_is_a_usage_error() {
    require_root();
    let run = Tracer::new(["run", "--format", "xml", "--", "true"]).run();
    assert_failed(&run);
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
    assert_failed(&run);
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
    assert_failed(&run);
    let line = single_error_line(&run);
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
    assert_failed(&run);
    let line = single_error_line(&run);
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
    assert_failed(&run);
    let line = single_error_line(&run);
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
    assert_exit(&run, 0);
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
    assert_exit(&run.run, 0);
    let counter = |name: &str| {
        run.report.summary.counters[name]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {name}\n{}", run.describe()))
    };
    assert_eq!(counter("lost_events"), 0, "{}", run.describe());
    (counter("acquisitions"), counter("releases"))
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
        assert_eq!(
            released_1100 - released_100,
            2000,
            "releases with {extra:?}: {released_100} for N=100, {released_1100} for N=1100"
        );
    }
}
