//! Python-aware reports: the Python functions and lines of each side of an
//! inversion, and Python locks named by the line that created them.

use std::path::{Path, PathBuf};

use locktrace_e2e::{edge, lock_names, require_root, run_json, workspace_dir, JsonRun, PyFrame};

/// Debian's interpreter (what mod_wsgi and Debian's gunicorn run).
const PYTHON: &str = "/usr/bin/python3";

fn script() -> PathBuf {
    workspace_dir().join("tests/python/frames_ab_ba.py")
}

/// 1-based line of the script carrying `# MARKER`.
fn line_of(marker: &str) -> u32 {
    let text = std::fs::read_to_string(script()).unwrap();
    let needle = format!("# {marker}");
    let hits: Vec<u32> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.trim_end().ends_with(&needle))
        .map(|(i, _)| i as u32 + 1)
        .collect();
    assert_eq!(hits.len(), 1, "marker {needle}");
    hits[0]
}

/// `frames_ab_ba.py:LINE`: how a lock created at LINE is named.
fn created_at(marker: &str) -> String {
    format!("python/frames_ab_ba.py:{}", line_of(marker))
}

fn run(kind: &str) -> JsonRun {
    require_root();
    assert!(
        Path::new(PYTHON).exists(),
        "{PYTHON} is missing: apt-get install python3"
    );
    let run = run_json(&[], &[PYTHON, script().to_str().unwrap(), kind]);
    assert_eq!(run.run.code(), 0, "python exit status\n{}", run.describe());
    assert_eq!(
        run.report.findings.len(),
        1,
        "exactly one inversion\n{}",
        run.describe()
    );
    run
}

/// The innermost Python frame of an edge's request is `function` at the
/// `marker` line of the script.
fn assert_requested_in(frames: &[PyFrame], function: &str, marker: &str, run: &JsonRun) {
    let top = frames.first().unwrap_or_else(|| {
        panic!(
            "no Python frames in the request of {function}\n{}",
            run.describe()
        )
    });
    assert_eq!(
        (top.function.as_str(), top.line),
        (function, line_of(marker)),
        "innermost Python frame\n{}",
        run.describe()
    );
    assert!(top.file.ends_with("frames_ab_ba.py"), "{top:?}");
    // The thread's outer frames: threading's bootstrap.
    assert!(
        frames
            .iter()
            .any(|f| f.function == "Thread.run" && f.file.ends_with("threading.py")),
        "the stack goes up to threading.Thread.run\n{}",
        run.describe()
    );
}

fn check_module_locks(kind: &str) {
    let run = run(kind);
    let finding = &run.report.findings[0];
    let (a, b) = (created_at("CREATE_A"), created_at("CREATE_B"));
    assert_eq!(
        lock_names(finding, &run),
        [a.clone(), b.clone()].into_iter().collect(),
        "locks named by their creation lines\n{}",
        run.describe()
    );
    let ab = edge(finding, &a, &b, &run);
    assert_requested_in(&ab.python_stack, "take_a_then_b", "A_THEN_B", &run);
    let ba = edge(finding, &b, &a, &run);
    assert_requested_in(&ba.python_stack, "take_b_then_a", "B_THEN_A", &run);
}

#[test]
fn lock_inversion_names_python_functions_and_lines() {
    check_module_locks("Lock");
}

#[test]
fn rlock_inversion_names_python_functions_and_lines() {
    check_module_locks("RLock");
}

#[test]
fn instance_locks_with_acquire_and_release() {
    let run = run("instance");
    let finding = &run.report.findings[0];
    let (first, second) = (created_at("CREATE_FIRST"), created_at("CREATE_SECOND"));
    assert_eq!(
        lock_names(finding, &run),
        [first.clone(), second.clone()].into_iter().collect(),
        "{}",
        run.describe()
    );
    let fwd = edge(finding, &first, &second, &run);
    assert_requested_in(
        &fwd.python_stack,
        "Accounts.forward",
        "FORWARD_SECOND",
        &run,
    );
    let back = edge(finding, &second, &first, &run);
    assert_requested_in(
        &back.python_stack,
        "Accounts.backward",
        "BACKWARD_FIRST",
        &run,
    );
}
