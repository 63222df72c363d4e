//! Checks the end-to-end tests share: exit statuses and error lines, lock
//! names, the shape of a cycle, and one edge against the fixture's source
//! (markers). Each failure message carries the whole run.

use std::collections::BTreeSet;
use std::path::Path;

use crate::records::{Edge, Frame, Inversion, LockKind};
use crate::tracer::{JsonRun, Run};
use crate::{fixture_source, marker_line};

// ---------------------------------------------------------------------------
// Exit statuses and errors

impl Run {
    /// The tracer exited with `expected`.
    pub fn assert_exit(&self, expected: i32) {
        assert_eq!(
            self.code(),
            expected,
            "unexpected tracer exit status\n{}",
            self.describe()
        );
    }

    /// The tracer exited with a non-zero status.
    pub fn assert_failed(&self) {
        assert!(
            self.status.code().is_some_and(|c| c != 0),
            "expected a non-zero exit status\n{}",
            self.describe()
        );
    }

    /// Exactly one non-empty stderr line, starting `locktrace: `.
    pub fn single_error_line(&self) -> String {
        let lines = self.stderr_lines();
        assert_eq!(
            lines.len(),
            1,
            "expected one error line on stderr\n{}",
            self.describe()
        );
        assert!(
            lines[0].starts_with("locktrace: "),
            "error line should start with `locktrace: `\n{}",
            self.describe()
        );
        lines[0].to_string()
    }
}

impl JsonRun {
    /// The tracer exited with `expected` (without `--exit-code`, the traced
    /// command's own status).
    pub fn assert_exit(&self, expected: i32) {
        assert_eq!(
            self.run.code(),
            expected,
            "unexpected tracer exit status (the command's own status is passed through)\n{}",
            self.describe()
        );
    }

    /// The summary's kernel counter `name`.
    pub fn counter(&self, name: &str) -> u64 {
        self.report
            .summary
            .counters
            .get(name)
            .copied()
            .unwrap_or_else(|| panic!("no counter {name} in the summary\n{}", self.describe()))
    }
}

// ---------------------------------------------------------------------------
// Locks and cycles

pub fn names(expected: &[&str]) -> BTreeSet<String> {
    expected.iter().map(|s| s.to_string()).collect()
}

/// The names of a finding's locks (each must have one).
pub fn lock_names(finding: &Inversion, run: &JsonRun) -> BTreeSet<String> {
    finding
        .locks
        .iter()
        .map(|l| {
            l.name
                .clone()
                .unwrap_or_else(|| panic!("lock {} has no name\n{}", l.addr, run.describe()))
        })
        .collect()
}

/// The one `lock_order_inversion` of process `pid` (`which` says what the
/// process is, for the message).
pub fn one_inversion_of<'a>(run: &'a JsonRun, pid: u32, which: &str) -> &'a Inversion {
    let found: Vec<_> = run
        .report
        .inversions()
        .into_iter()
        .filter(|f| f.pid == pid)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one inversion in {which} [{pid}]\n{}",
        run.describe()
    );
    found[0]
}

/// The one `lock_order_inversion` of process `pid`, between the locks named
/// `expected` (`which` says what the process is, for the message).
pub fn assert_one_inversion_of(run: &JsonRun, pid: u32, which: &str, expected: &[&str]) {
    let found = one_inversion_of(run, pid, which);
    assert_eq!(
        lock_names(found, run),
        names(expected),
        "{}",
        run.describe()
    );
}

/// The single `lock_order_inversion` of the run; no `self_deadlock` either.
pub fn exactly_one_inversion(run: &JsonRun) -> &Inversion {
    let inversions = run.report.inversions();
    assert_eq!(
        inversions.len(),
        1,
        "expected exactly one lock_order_inversion\n{}",
        run.describe()
    );
    assert!(
        run.report.self_deadlocks().is_empty(),
        "expected no self_deadlock\n{}",
        run.describe()
    );
    inversions[0]
}

/// The findings between a Python script's own locks: those with a lock
/// named by a creation line starting with `prefix` (`python/two_locks.py:`).
/// There must be no other finding (the interpreter's own locks order
/// nothing: a false class-level inversion between a thread's tstate lock
/// and `_shutdown_locks_lock`, about one run in 40, was fixed by naming the
/// locks `threading` makes while imported by its own lines).
pub fn script_findings<'a>(run: &'a JsonRun, prefix: &str) -> Vec<&'a Inversion> {
    let (ours, others): (Vec<_>, Vec<_>) = run.report.inversions().into_iter().partition(|f| {
        f.locks
            .iter()
            .any(|l| l.name.as_deref().is_some_and(|n| n.starts_with(prefix)))
    });
    assert!(
        others.is_empty(),
        "no finding besides the script's\n{}",
        run.describe()
    );
    ours
}

/// The single edge of the cycle going `from` -> `to` (by lock name).
pub fn edge<'a>(finding: &'a Inversion, from: &str, to: &str, run: &JsonRun) -> &'a Edge {
    let matching: Vec<&Edge> = finding
        .cycle
        .iter()
        .filter(|e| e.from.label() == from && e.to.label() == to)
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "expected exactly one edge {from} -> {to} in the cycle\n{}",
        run.describe()
    );
    matching[0]
}

/// The cycle's edges chain up (each edge's `to` is the next edge's `from`),
/// `locks[i]` is `cycle[i].from`, and the finding belongs to `pid`/`comm`.
pub fn assert_well_formed(finding: &Inversion, run: &JsonRun, pid: u32, comm: &str) {
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
pub fn assert_lock_kinds(finding: &Inversion, run: &JsonRun, expected: &[(&str, LockKind)]) {
    for &(lock, kind) in expected {
        let found: Vec<LockKind> = finding
            .locks
            .iter()
            .filter(|l| l.label() == lock)
            .map(|l| l.kind)
            .collect();
        assert_eq!(
            found,
            [kind],
            "{lock} should be in `locks` once, with its held mode\n{}",
            run.describe()
        );
    }
}

// ---------------------------------------------------------------------------
// Frames

pub fn in_libc(frame: &Frame) -> bool {
    frame.module.as_deref().is_some_and(|m| {
        Path::new(m)
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("libc"))
    })
}

pub fn function_contains(frame: &Frame, needle: &str) -> bool {
    frame
        .function
        .as_deref()
        .is_some_and(|f| f.contains(needle))
}

/// Whether `frames` has a frame in `function` at the line of `/* marker */`
/// in fixture `source` (`source.c`).
pub fn has_frame(frames: &[Frame], source: &str, function: &str, marker: &str) -> bool {
    let line = marker_line(source, marker);
    let path = fixture_source(source);
    let file = path.file_name().unwrap().to_string_lossy();
    frames.iter().any(|f| f.is_at(function, &file, line))
}

// ---------------------------------------------------------------------------
// One edge against the fixture's source

/// Where libc's lock function must show in an edge's `stack`.
#[derive(Clone, Copy)]
pub enum LibcFrame<'a> {
    /// `stack[0]`'s function contains this.
    Top(&'a str),
    /// Some frame's function contains this (`stack[0]` is still in libc).
    Any(&'a str),
}

/// What one edge of a cycle must look like.
pub struct EdgeSpec<'a> {
    /// Lock names.
    pub from: &'a str,
    pub to: &'a str,
    /// Held mode of `from`, requested mode of `to`.
    pub from_kind: LockKind,
    pub to_kind: LockKind,
    pub libc: LibcFrame<'a>,
    /// `to` was requested in `function` at the line of `to_marker`.
    pub function: &'a str,
    pub to_marker: &'a str,
    /// `from` was taken in `held_function` at the line of `from_marker`.
    pub held_function: &'a str,
    pub from_marker: &'a str,
}

impl<'a> EdgeSpec<'a> {
    /// Two plain mutexes, both taken in `function` (`pthread_mutex_lock`).
    pub fn mutexes(
        from: &'a str,
        to: &'a str,
        function: &'a str,
        to_marker: &'a str,
        from_marker: &'a str,
    ) -> Self {
        EdgeSpec {
            from,
            to,
            from_kind: LockKind::Mutex,
            to_kind: LockKind::Mutex,
            libc: LibcFrame::Top("pthread_mutex_lock"),
            function,
            to_marker,
            held_function: function,
            from_marker,
        }
    }
}

/// Finds and checks the edge `spec.from` -> `spec.to` of a cycle in fixture
/// `source`: kinds, a `stack` starting in libc (in the lock function named by
/// `spec.libc`) with a frame of `function` at the `to_marker` line, a
/// `held_stack[0]` in `held_function` at the `from_marker` line, pid, comm,
/// and a thread.
pub fn check_edge<'a>(
    finding: &'a Inversion,
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
