//! Python frames for each CPython this machine has under pyenv: the
//! AB/BA of `tests/python/frames_ab_ba.py` (with `Lock`, and with `RLock`)
//! under `locktrace run -- PYTHON` is one inversion, the report's only one,
//! whose locks are named by their creation lines and whose edges name the
//! script's functions and lines, on both sides: where each lock is
//! requested, and where the lock held was taken.

use std::path::PathBuf;

use locktrace_e2e::{
    edge, lock_names, require_root, run_json, workspace_dir, Inversion, JsonRun, PyFrame,
};

/// The pyenv versions of this image (all with Python frames).
const SUPPORTED: &[&str] = &[
    "2.7.18", "3.6.15", "3.7.16", "3.8.18", "3.9.18", "3.10.13", "3.11.7", "3.12.1", "3.13.0",
];

fn pyenv_versions() -> PathBuf {
    let root = std::process::Command::new("pyenv")
        .arg("root")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "/root/.pyenv".into());
    PathBuf::from(root).join("versions")
}

/// `$(pyenv root)/versions/VERSION/bin/python`; the test fails if absent.
fn python(version: &str) -> PathBuf {
    let bin = pyenv_versions().join(version).join("bin/python");
    assert!(
        bin.exists(),
        "pyenv CPython {version} is missing ({} not found): this image should have it",
        bin.display()
    );
    bin
}

fn script() -> PathBuf {
    workspace_dir().join("tests/python/frames_ab_ba.py")
}

/// 1-based line of `frames_ab_ba.py` carrying `# MARKER`.
fn line_of(marker: &str) -> u32 {
    locktrace_e2e::python_marker_line("frames_ab_ba.py", marker)
}

fn created_at(marker: &str) -> String {
    format!("python/frames_ab_ba.py:{}", line_of(marker))
}

/// The innermost Python frame of a request is `function` at the `marker`
/// line; the thread's outer frames reach threading's `run` (named
/// `Thread.run` from 3.11, `run` before: no `co_qualname`).
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
    assert!(
        frames
            .iter()
            .any(|f| f.function.ends_with("run") && f.file.ends_with("threading.py")),
        "the stack goes up to threading.Thread.run\n{}",
        run.describe()
    );
}

/// Where Python code took an edge's held lock: one frame, and what `held`
/// says of it.
fn assert_held(frames: &[PyFrame], held: &dyn Fn(&PyFrame), what: &str, run: &JsonRun) {
    match frames {
        [top] => held(top),
        _ => panic!(
            "the held lock of {what} should have one Python frame, has {frames:?}\n{}",
            run.describe()
        ),
    }
}

/// The script's `function` at its `marker` line.
fn at_script_line(function: &'static str, marker: &'static str) -> impl Fn(&PyFrame) {
    move |top: &PyFrame| {
        assert_eq!(
            (top.function.as_str(), top.line),
            (function, line_of(marker)),
            "where Python took the held lock: {top:?}"
        );
        assert!(top.file.ends_with("frames_ab_ba.py"), "{top:?}");
    }
}

/// `Lock` and `RLock` (a C `_thread.RLock` in 3.x) under `version`.
fn check(version: &str) {
    for kind in ["Lock", "RLock"] {
        check_kind(version, kind);
    }
}

fn check_kind(version: &str, kind: &str) {
    let run = run_script(version, kind);
    let ours = locktrace_e2e::script_findings(&run, "python/frames_ab_ba.py:");
    assert_eq!(ours.len(), 1, "exactly one inversion\n{}", run.describe());
    check_inversion(ours[0], &run);
}

fn run_script(version: &str, kind: &str) -> JsonRun {
    require_root();
    let python = python(version);
    let run = run_json(
        &[],
        &[python.to_str().unwrap(), script().to_str().unwrap(), kind],
    );
    assert_eq!(run.run.code(), 0, "python exit status\n{}", run.describe());
    assert!(
        !run.run.stderr.contains("Python frames unavailable"),
        "CPython {version} is described\n{}",
        run.describe()
    );
    run
}

/// The script's inversion: its two locks named by their creation lines,
/// each edge requested in the script's function and line.
fn check_inversion(finding: &Inversion, run: &JsonRun) {
    check_inversion_under(
        finding,
        run,
        |frames| frames,
        [
            &at_script_line("take_a_then_b", "HOLD_A"),
            &at_script_line("take_b_then_a", "HOLD_B"),
        ],
    );
}

/// As `check_inversion`, the script's frames being what `ours` leaves of
/// each request's Python stack (a library's lock: its frames above), and
/// `held` checking where Python took each edge's held lock (AB's, BA's).
fn check_inversion_under(
    finding: &Inversion,
    run: &JsonRun,
    ours: impl Fn(&[PyFrame]) -> &[PyFrame],
    held: [&dyn Fn(&PyFrame); 2],
) {
    let (a, b) = (created_at("CREATE_A"), created_at("CREATE_B"));
    assert_eq!(
        lock_names(finding, run),
        [a.clone(), b.clone()].into_iter().collect(),
        "locks named by their creation lines\n{}",
        run.describe()
    );
    let ab = edge(finding, &a, &b, run);
    assert_requested_in(ours(&ab.python_stack), "take_a_then_b", "A_THEN_B", run);
    assert_held(&ab.held_python_stack, held[0], "take_a_then_b", run);
    let ba = edge(finding, &b, &a, run);
    assert_requested_in(ours(&ba.python_stack), "take_b_then_a", "B_THEN_A", run);
    assert_held(&ba.held_python_stack, held[1], "take_b_then_a", run);
}

/// Every supported version is installed: a missing one fails here rather
/// than going unnoticed.
#[test]
fn every_supported_pyenv_version_is_present() {
    let found: Vec<String> = std::fs::read_dir(pyenv_versions())
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    eprintln!("pyenv versions found: {found:?}; with Python frames: {SUPPORTED:?}");
    for v in SUPPORTED {
        assert!(
            found.iter().any(|f| f == v),
            "pyenv CPython {v} absent (found {found:?})"
        );
    }
}

#[test]
fn cpython_3_13() {
    check("3.13.0");
}

#[test]
fn cpython_3_12() {
    check("3.12.1");
}

#[test]
fn cpython_3_11() {
    check("3.11.7");
}

#[test]
fn cpython_3_10() {
    check("3.10.13");
}

#[test]
fn cpython_3_9() {
    check("3.9.18");
}

#[test]
fn cpython_3_8() {
    check("3.8.18");
}

#[test]
fn cpython_3_7() {
    check("3.7.16");
}

#[test]
fn cpython_3_6() {
    check("3.6.15");
}

/// Python 2.7: the script's inversion and nothing else in the whole
/// report. 2.7's GIL is a `PyThread` lock too (a semaphore,
/// `interpreter_lock`), which a thread re-takes holding the lock it just
/// acquired: taken for a lock, it made a cycle with nearly every Python
/// lock (10 inversions for this script's 1). It is not ordered now.
#[test]
fn cpython_2_7() {
    check_kind("2.7.18", "Lock");
    // 2.7's RLock is Python code (`threading._RLock`, over a `Lock`): its
    // `acquire` is the innermost frame of each request, the script's
    // function the next; and the innermost frame that took each held lock
    // (only that one is kept).
    let run = run_script("2.7.18", "RLock");
    let ours = locktrace_e2e::script_findings(&run, "python/frames_ab_ba.py:");
    assert_eq!(ours.len(), 1, "exactly one inversion\n{}", run.describe());
    let in_rlock_acquire = |top: &PyFrame| {
        assert_eq!(top.function, "acquire", "{top:?}");
        assert!(top.file.ends_with("threading.py"), "{top:?}");
    };
    check_inversion_under(
        ours[0],
        &run,
        |frames| {
            let (top, callers) = frames
                .split_first()
                .unwrap_or_else(|| panic!("no Python frames in a request\n{}", run.describe()));
            in_rlock_acquire(top);
            callers
        },
        [&in_rlock_acquire, &in_rlock_acquire],
    );
}
