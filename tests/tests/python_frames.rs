//! Python-aware reports: the Python functions and lines of each side of an
//! inversion, and Python locks named by the line that created them.

use std::path::{Path, PathBuf};

use locktrace_e2e::{
    edge, lock_names, require_root, run_json, workspace_dir, Inversion, JsonRun, PyFrame,
    ThreadReport,
};

/// Debian's interpreter (what mod_wsgi and Debian's gunicorn run).
const PYTHON: &str = "/usr/bin/python3";

fn script() -> PathBuf {
    workspace_dir().join("tests/python/frames_ab_ba.py")
}

/// 1-based line of `frames_ab_ba.py` carrying `# MARKER`.
fn line_of(marker: &str) -> u32 {
    line_in("frames_ab_ba.py", marker)
}

/// `frames_ab_ba.py:LINE`: how a lock created at LINE is named.
fn created_at(marker: &str) -> String {
    format!("python/frames_ab_ba.py:{}", line_of(marker))
}

fn run(kind: &str) -> JsonRun {
    run_with(PYTHON, kind)
}

/// `frames_ab_ba.py KIND` run by `python` (an interpreter, or a program
/// embedding one).
fn run_with(python: &str, kind: &str) -> JsonRun {
    run_args(python, &[kind])
}

/// `frames_ab_ba.py ARGS...` run by `python`: exactly one inversion
/// between the script's locks.
fn run_args(python: &str, args: &[&str]) -> JsonRun {
    require_root();
    assert!(
        Path::new(python).exists(),
        "{python} is missing: apt-get install python3"
    );
    let script = script();
    let mut command = vec![python, script.to_str().unwrap()];
    command.extend_from_slice(args);
    let run = run_json(&[], &command);
    assert_eq!(run.run.code(), 0, "python exit status\n{}", run.describe());
    let ours = script_findings(&run);
    assert_eq!(ours.len(), 1, "exactly one inversion\n{}", run.describe());
    run
}

/// The findings between the script's own locks (see `script_findings`).
fn script_findings(run: &JsonRun) -> Vec<&Inversion> {
    locktrace_e2e::script_findings(run, "python/frames_ab_ba.py:")
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

/// The text report of `run`'s capture (`locktrace report`).
fn finding_text(run: &JsonRun) -> String {
    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("capture.jsonl");
    std::fs::write(&capture, &run.report.raw).unwrap();
    let report = locktrace_e2e::locktrace_report(&[], &[&capture]);
    report.assert_exit(0);
    report.stdout
}

/// Where Python code took an edge's held lock: one frame, `function` at
/// the `marker` line of the script (beside the native call site).
fn assert_held_in(frames: &[PyFrame], function: &str, marker: &str, run: &JsonRun) {
    match frames {
        [top] => {
            assert_eq!(
                (top.function.as_str(), top.line),
                (function, line_of(marker)),
                "where Python took the held lock\n{}",
                run.describe()
            );
            assert!(top.file.ends_with("frames_ab_ba.py"), "{top:?}");
        }
        _ => panic!(
            "the held lock of {function}'s edge should have one Python frame, has {frames:?}\n{}",
            run.describe()
        ),
    }
}

fn check_module_locks(kind: &str) {
    check_module_locks_with(PYTHON, kind);
}

fn check_module_locks_with(python: &str, kind: &str) {
    let run = run_with(python, kind);
    assert_module_lock_edges(&run);
    // The text report says it too, beside the native call site.
    let text = finding_text(&run);
    for (function, marker) in [("take_a_then_b", "HOLD_A"), ("take_b_then_a", "HOLD_B")] {
        let line = format!("#0  {function}  ");
        let at = format!("frames_ab_ba.py:{}\n", line_of(marker));
        assert!(
            text.lines()
                .collect::<Vec<_>>()
                .windows(2)
                .any(|w| w[0].ends_with("was taken at (Python):")
                    && w[1].contains(&line)
                    && w[1].ends_with(at.trim_end())),
            "the text report says where {function} took its first lock\n{text}"
        );
    }
}

/// The one inversion of `frames_ab_ba.py Lock|RLock`: its locks named by
/// their creation lines, both edges' request and held sides by the script's
/// functions and lines.
fn assert_module_lock_edges(run: &JsonRun) {
    let finding = script_findings(run)[0];
    let (a, b) = (created_at("CREATE_A"), created_at("CREATE_B"));
    assert_eq!(
        lock_names(finding, run),
        [a.clone(), b.clone()].into_iter().collect(),
        "locks named by their creation lines\n{}",
        run.describe()
    );
    let ab = edge(finding, &a, &b, run);
    assert_requested_in(&ab.python_stack, "take_a_then_b", "A_THEN_B", run);
    assert_held_in(&ab.held_python_stack, "take_a_then_b", "HOLD_A", run);
    let ba = edge(finding, &b, &a, run);
    assert_requested_in(&ba.python_stack, "take_b_then_a", "B_THEN_A", run);
    assert_held_in(&ba.held_python_stack, "take_b_then_a", "HOLD_B", run);
}

#[test]
fn lock_inversion_names_python_functions_and_lines() {
    check_module_locks("Lock");
}

#[test]
fn rlock_inversion_names_python_functions_and_lines() {
    check_module_locks("RLock");
}

/// A script that exits right after its threads: the interpreter frees its
/// code objects at shutdown, or the process is gone at once, before the
/// collector reads its records. The kernel side copied them at the event:
/// every run names both edges' Python frames.
fn check_exit_right_after(how: &str) {
    for attempt in 1..=20 {
        let run = run_args(PYTHON, &["Lock", how]);
        assert_module_lock_edges(&run);
        eprintln!("run {attempt} of 20 ({how}): Python frames named");
    }
}

#[test]
fn a_script_that_calls_os_exit_right_after_has_python_frames() {
    check_exit_right_after("_exit");
}

#[test]
fn a_script_that_exits_right_after_has_python_frames() {
    check_exit_right_after("exit");
}

/// The mod_wsgi shape: a C program that embeds libpython and runs the same
/// script gets the same report.
#[test]
fn embedded_python_is_traced_like_the_interpreter() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("embed_host");
    let source = workspace_dir().join("tests/python/embed_host.c");
    let build = format!(
        "gcc -O1 -g -o {} {} $(/usr/bin/python3.11-config --embed --cflags --ldflags)",
        host.display(),
        source.display()
    );
    let status = std::process::Command::new("sh")
        .args(["-c", &build])
        .status()
        .unwrap();
    assert!(
        status.success(),
        "{build} (python3-dev is needed: cargo xtask test installs it)"
    );
    check_module_locks_with(host.to_str().unwrap(), "Lock");
}

#[test]
fn instance_locks_with_acquire_and_release() {
    let run = run("instance");
    let finding = script_findings(&run)[0];
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
    assert_held_in(
        &fwd.held_python_stack,
        "Accounts.forward",
        "FORWARD_FIRST",
        &run,
    );
    let back = edge(finding, &second, &first, &run);
    assert_requested_in(
        &back.python_stack,
        "Accounts.backward",
        "BACKWARD_FIRST",
        &run,
    );
    assert_held_in(
        &back.held_python_stack,
        "Accounts.backward",
        "BACKWARD_SECOND",
        &run,
    );
}

/// 1-based line of `tests/python/NAME` carrying `# MARKER`.
fn line_in(name: &str, marker: &str) -> u32 {
    locktrace_e2e::python_marker_line(name, marker)
}

/// A real deadlock of two Python threads (ending by itself after 4 s): one
/// `deadlock` finding, each thread shown with its Python stack at the line
/// where it waits, and the locks named by their creation lines.
#[test]
fn python_deadlock_shows_both_python_stacks() {
    require_root();
    let script = workspace_dir().join("tests/python/deadlock.py");
    let run = run_json(&[], &[PYTHON, script.to_str().unwrap(), "4"]);
    assert_eq!(run.run.code(), 0, "{}", run.describe());
    let deadlocks = run.report.deadlocks();
    assert_eq!(deadlocks.len(), 1, "one deadlock\n{}", run.describe());
    let threads = &deadlocks[0].threads;
    assert_eq!(threads.len(), 2, "{}", run.describe());
    let name = |line: u32| format!("python/deadlock.py:{line}");
    let (a, b) = (
        name(line_in("deadlock.py", "CREATE_A")),
        name(line_in("deadlock.py", "CREATE_B")),
    );
    for t in threads {
        let waits_for = t.waits_for_name().unwrap_or_default().to_string();
        let (function, marker, holds, took) = if waits_for == b {
            ("first_a_then_b", "WAIT_B", &a, "TAKE_A")
        } else {
            assert_eq!(
                waits_for,
                a,
                "waits for one of the two locks\n{}",
                run.describe()
            );
            ("first_b_then_a", "WAIT_A", &b, "TAKE_B")
        };
        // Where it took what it holds: its `with` line.
        let held = t
            .holds
            .iter()
            .find(|h| h.lock.label() == *holds)
            .unwrap_or_else(|| panic!("holds {holds}\n{}", run.describe()));
        assert_eq!(
            held.taken_at_python
                .iter()
                .map(|f| (f.function.as_str(), f.line))
                .collect::<Vec<_>>(),
            [(function, line_in("deadlock.py", took))],
            "where Python took {holds}\n{}",
            run.describe()
        );
        let top = t
            .python_stack
            .first()
            .unwrap_or_else(|| panic!("no Python stack\n{}", run.describe()));
        assert_eq!(top.function, function, "{}", run.describe());
        assert_eq!(
            top.line,
            line_in("deadlock.py", marker),
            "{}",
            run.describe()
        );
    }
}

/// The import-lock deadlock that hung Django sites, in Python 3: `importer`
/// runs slow_module's import (owning its module lock, which no thread
/// visibly holds) and its top level waits for L; `holder` holds L and
/// waits for slow_module's import. Reported as a deadlock naming the
/// module, with both Python stacks.
#[test]
fn module_import_lock_deadlock() {
    require_root();
    let script = workspace_dir().join("tests/python/import_deadlock.py");
    let run = run_json(&[], &[PYTHON, script.to_str().unwrap(), "3"]);
    assert_eq!(run.run.code(), 0, "{}", run.describe());
    let deadlocks = run.report.deadlocks();
    assert_eq!(deadlocks.len(), 1, "one deadlock\n{}", run.describe());
    let threads = &deadlocks[0].threads;
    assert_eq!(threads.len(), 2, "{}", run.describe());
    let stack_has = |t: &ThreadReport, function: &str, file: &str, line: u32| {
        t.python_stack
            .iter()
            .any(|f| f.function == function && f.file.ends_with(file) && f.line == line)
    };
    let importing = threads
        .iter()
        .find(|t| t.waits_for_name() == Some("import of slow_module"))
        .unwrap_or_else(|| {
            panic!(
                "a thread waits for the import of slow_module\n{}",
                run.describe()
            )
        });
    assert!(
        stack_has(
            importing,
            "holder",
            "import_deadlock.py",
            line_in("import_deadlock.py", "IMPORT_UNDER_L")
        ),
        "the waiter for the import is `holder` at its import line\n{}",
        run.describe()
    );
    let other = threads.iter().find(|t| *t != importing).unwrap();
    assert!(
        stack_has(
            other,
            "<module>",
            "slow_module.py",
            line_in("imports/slow_module.py", "TAKE_L")
        ) && stack_has(
            other,
            "importer",
            "import_deadlock.py",
            line_in("import_deadlock.py", "IMPORT_FIRST")
        ),
        "the other thread runs slow_module's top level, imported by `importer`\n{}",
        run.describe()
    );
    assert_eq!(
        other.held_by,
        [importing.tid],
        "it waits for L, held by `holder`\n{}",
        run.describe()
    );
    // L was created by a module's top-level code, freed once it ran: the
    // kernel's copy of that code object still names it.
    assert_eq!(
        other.waits_for_name(),
        Some(
            format!(
                "imports/shared_lock.py:{}",
                line_in("imports/shared_lock.py", "CREATE_L")
            )
            .as_str()
        ),
        "L is named by its creation line\n{}",
        run.describe()
    );
    assert_eq!(
        importing.held_by.first(),
        Some(&other.tid),
        "{}",
        run.describe()
    );
}

/// A program linked with a libpython that locktrace cannot read (`symbols`:
/// the C definitions the fake library exports), taking the AB/BA locks of
/// `ab_ba.c`: one finding with native stacks, and one warning saying why
/// there are no Python frames (containing `reason`).
fn unreadable_python(symbols: &str, library: &str, reason: &str) {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    std::fs::write(dir.path().join("fake.c"), symbols).unwrap();
    let build = format!(
        "gcc -shared -fPIC -o {d}/lib{library}.so {d}/fake.c && \
         gcc -g -O0 -pthread -o {d}/host {} -L{d} -Wl,--no-as-needed -l{library} -Wl,-rpath,{d}",
        locktrace_e2e::fixture_source("ab_ba").display()
    );
    let status = std::process::Command::new("sh")
        .args(["-c", &build])
        .status()
        .unwrap();
    assert!(status.success(), "{build}");
    let host = dir.path().join("host");
    let run = run_json(&[], &[host.to_str().unwrap()]);
    assert_eq!(run.run.code(), 0, "{}", run.describe());
    let inversions = run.report.inversions();
    assert_eq!(inversions.len(), 1, "{}", run.describe());
    for e in &inversions[0].cycle {
        assert!(e.python_stack.is_empty(), "{}", run.describe());
        assert!(
            e.stack.iter().any(|f| f
                .function
                .as_deref()
                .is_some_and(|n| n.starts_with("lock_"))),
            "native stacks\n{}",
            run.describe()
        );
    }
    let notes: Vec<&str> = run
        .run
        .stderr_lines()
        .into_iter()
        .filter(|l| l.contains("Python frames unavailable"))
        .collect();
    assert_eq!(notes.len(), 1, "one note\n{}", run.describe());
    assert!(notes[0].contains(reason), "says why\n{}", run.describe());
}

#[test]
fn unsupported_python_version_gives_native_stacks_and_one_note() {
    unreadable_python(
        "const unsigned long Py_Version = 0x030e00f0;\nchar _PyRuntime[4096];\n",
        "python3.14",
        "CPython 3.14 is not supported",
    );
}

#[test]
fn stripped_libpython_gives_native_stacks_and_one_note() {
    unreadable_python(
        "const unsigned long Py_Version = 0x030b02f0;\n",
        "python3.11",
        "without a _PyRuntime symbol",
    );
}
