//! The Python matrix: each CPython of this machine (pyenv's 2.7 and 3.6 to
//! 3.13, Debian's python3), run as a program and (pyenv's) embedded in a C
//! program through its libpython (`tests/python/embed_host.c`, built for
//! each version by `tests/build.rs`: the mod_wsgi shape), under
//! `locktrace run`. Two runs each:
//! - `matrix_orders.py`: an AB/BA with `Lock`, one with `RLock` and one
//!   with `Lock` in threads of `start_new_thread`, the report's only
//!   inversions, their locks named by their creation lines and
//!   each request in the script's function and line; and two locks made by
//!   one line taken one inside the other, the report's only same-class
//!   nesting;
//! - `matrix_deadlocks.py`: a real deadlock of two threads with both Python
//!   stacks, and an import-lock deadlock naming Python 3's `import of
//!   slow_module` or Python 2's global `import lock`.
//!
//! Both sides of each AB/BA edge are asserted: where the lock is
//! requested, and where Python took the lock held. `matrix_orders.py` runs
//! a third time as a program ending with `os._exit` right after its threads
//! joined: the same findings, every frame named from the kernel's copies.

use std::path::{Path, PathBuf};

use locktrace_e2e::{
    edge, lock_names, python_marker_line, require_root, run_json, script_findings, Deadlock,
    Inversion, JsonRun, PyFrame, ThreadReport,
};

/// The pyenv versions of this image (all with Python frames).
const SUPPORTED: &[&str] = &[
    "2.7.18", "3.6.15", "3.7.16", "3.8.18", "3.9.18", "3.10.13", "3.11.7", "3.12.1", "3.13.0",
];

/// Debian's interpreter (what mod_wsgi and Debian's gunicorn run).
const DEBIAN_PYTHON: &str = "/usr/bin/python3";

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

/// How a CPython is started.
#[derive(Clone, Copy)]
enum Host {
    /// Its own `python` program.
    Program,
    /// `embed_host`, linked with its libpython.
    Embedded,
}

/// The program running `version` (`debian`: Debian's python3) as `host`;
/// the test fails if it is absent.
fn program(version: &str, host: Host) -> PathBuf {
    let bin = match (version, host) {
        ("debian", Host::Program) => PathBuf::from(DEBIAN_PYTHON),
        ("debian", Host::Embedded) => unreachable!("python_frames.rs embeds Debian's"),
        (_, Host::Program) => pyenv_versions().join(version).join("bin/python"),
        (_, Host::Embedded) => Path::new(env!("EMBED_HOST_DIR"))
            .join(version)
            .join("embed_host"),
    };
    assert!(
        bin.exists(),
        "CPython {version}: {} not found (pyenv's versions are in this image; an embedding \
         host missing was said by tests/build.rs as a cargo warning)",
        bin.display()
    );
    bin
}

fn script(name: &str) -> PathBuf {
    locktrace_e2e::workspace_dir()
        .join("tests/python")
        .join(name)
}

fn run_script(version: &str, host: Host, name: &str, args: &[&str]) -> JsonRun {
    require_root();
    let mut command = vec![
        program(version, host).display().to_string(),
        script(name).display().to_string(),
    ];
    command.extend(args.iter().map(|a| a.to_string()));
    let run = run_json(&[], &command);
    assert_eq!(run.run.code(), 0, "exit status\n{}", run.describe());
    assert!(
        !run.run.stderr.contains("Python frames unavailable"),
        "CPython {version} is described\n{}",
        run.describe()
    );
    run
}

fn orders_line(marker: &str) -> u32 {
    python_marker_line("matrix_orders.py", marker)
}

fn created_at(marker: &str) -> String {
    format!("python/matrix_orders.py:{}", orders_line(marker))
}

/// The innermost Python frame of a request is `function` at the `marker`
/// line of `file`, and the thread's outer frames reach threading's `run`
/// (`Thread.run` from 3.11, `run` before: no `co_qualname`).
fn assert_requested_in(frames: &[PyFrame], function: &str, file: &str, line: u32, run: &JsonRun) {
    assert_innermost_is(frames, function, file, line, run);
    assert!(
        frames
            .iter()
            .any(|f| f.function.ends_with("run") && f.file.ends_with("threading.py")),
        "the stack goes up to threading.Thread.run\n{}",
        run.describe()
    );
}

/// The innermost Python frame of a request is `function` at `line` of
/// `file`.
fn assert_innermost_is(frames: &[PyFrame], function: &str, file: &str, line: u32, run: &JsonRun) {
    let top = frames.first().unwrap_or_else(|| {
        panic!(
            "no Python frames in the request of {function}\n{}",
            run.describe()
        )
    });
    assert_eq!(
        (top.function.as_str(), top.line),
        (function, line),
        "innermost Python frame\n{}",
        run.describe()
    );
    assert!(top.file.ends_with(file), "{top:?}");
}

/// How the threads of an AB/BA were started.
#[derive(Clone, Copy, PartialEq)]
enum Started {
    /// By `threading.Thread`: their stacks reach its `run`.
    Threading,
    /// By `(_)thread.start_new_thread`: the function is the outermost frame.
    Raw,
}

/// One AB/BA of `matrix_orders.py`: the inversion between the locks made
/// at `create` lines, each edge requested in its function at its line.
/// `in_acquire`: each request's innermost frame is threading's `acquire`
/// (2.7's RLock is Python code, `threading._RLock` over a `Lock`), the
/// script's function the next.
fn check_ab_ba(
    findings: &[&Inversion],
    create: [&str; 2],
    requests: [(&str, &str); 2],
    holds: [(&str, &str); 2],
    in_acquire: bool,
    started: Started,
    run: &JsonRun,
) {
    let (a, b) = (created_at(create[0]), created_at(create[1]));
    let finding = findings
        .iter()
        .find(|f| lock_names(f, run) == [a.clone(), b.clone()].into_iter().collect())
        .unwrap_or_else(|| {
            panic!(
                "an inversion between {a} and {b}, named by their creation lines\n{}",
                run.describe()
            )
        });
    for ((from, to), (function, marker)) in [(&a, &b), (&b, &a)].into_iter().zip(requests) {
        let mut frames = edge(finding, from, to, run).python_stack.as_slice();
        if in_acquire {
            let (top, callers) = frames
                .split_first()
                .unwrap_or_else(|| panic!("no Python frames in a request\n{}", run.describe()));
            assert_eq!(top.function, "acquire", "{}", run.describe());
            assert!(top.file.ends_with("threading.py"), "{top:?}");
            frames = callers;
        }
        let line = orders_line(marker);
        match started {
            Started::Threading => {
                assert_requested_in(frames, function, "matrix_orders.py", line, run)
            }
            Started::Raw => assert_innermost_is(frames, function, "matrix_orders.py", line, run),
        }
    }
    // Where Python took each edge's held lock: its `with` line, on every
    // version (2.7's RLock is Python code: the kernel keeps threading's
    // `acquire` and its caller, the report shows the caller).
    for ((from, to), (function, marker)) in [(&a, &b), (&b, &a)].into_iter().zip(holds) {
        let held = &edge(finding, from, to, run).held_python_stack;
        let [top] = held.as_slice() else {
            panic!(
                "the held lock of {function} should have one Python frame, has {held:?}\n{}",
                run.describe()
            );
        };
        assert_eq!(
            (top.function.as_str(), top.line),
            (function, orders_line(marker)),
            "where Python took the held lock\n{}",
            run.describe()
        );
        assert!(top.file.ends_with("matrix_orders.py"), "{top:?}");
    }
}

/// `matrix_orders.py` under `version` as `host` (`args`: `["_exit"]` for
/// a process that ends with `os._exit` right after its threads joined:
/// every frame is named from the kernel's copies).
fn orders(version: &str, host: Host, args: &[&str]) {
    let run = run_script(version, host, "matrix_orders.py", args);
    let findings = script_findings(&run, "python/matrix_orders.py:");
    assert_eq!(findings.len(), 3, "three inversions\n{}", run.describe());
    check_ab_ba(
        &findings,
        ["CREATE_A", "CREATE_B"],
        [("take_a_then_b", "A_THEN_B"), ("take_b_then_a", "B_THEN_A")],
        [("take_a_then_b", "HOLD_A"), ("take_b_then_a", "HOLD_B")],
        false,
        Started::Threading,
        &run,
    );
    // 3.x's RLock is C; 2.7's is Python code.
    check_ab_ba(
        &findings,
        ["CREATE_RA", "CREATE_RB"],
        [
            ("take_ra_then_rb", "RA_THEN_RB"),
            ("take_rb_then_ra", "RB_THEN_RA"),
        ],
        [
            ("take_ra_then_rb", "HOLD_RA"),
            ("take_rb_then_ra", "HOLD_RB"),
        ],
        version.starts_with("2."),
        Started::Threading,
        &run,
    );
    // 2.7 takes no lock holding the GIL: a raw thread's state is found in
    // the interpreter's list (see `PyProcess::interp_head`).
    check_ab_ba(
        &findings,
        ["CREATE_C", "CREATE_D"],
        [("raw_c_then_d", "C_THEN_D"), ("raw_d_then_c", "D_THEN_C")],
        [("raw_c_then_d", "HOLD_C"), ("raw_d_then_c", "HOLD_D")],
        false,
        Started::Raw,
        &run,
    );
    check_same_class(&run);
}

/// Two locks made by `new_lock`'s one line, one taken inside the other: one
/// lock class (the creation line and its function), one same-class nesting
/// (a note: one address order so far), the report's only one.
fn check_same_class(run: &JsonRun) {
    let nestings = run.report.same_class_nestings();
    assert_eq!(
        nestings.len(),
        1,
        "one same-class nesting\n{}",
        run.describe()
    );
    let n = nestings[0];
    let made = created_at("CREATE_SAME");
    assert_eq!(
        (n.held.name.as_deref(), n.requested.name.as_deref()),
        (Some(made.as_str()), Some(made.as_str())),
        "both locks named by the one line that made them\n{}",
        run.describe()
    );
    assert_ne!(n.held.addr, n.requested.addr, "{}", run.describe());
    let class_end = format!("matrix_orders.py:{} (new_lock)", orders_line("CREATE_SAME"));
    assert!(
        n.class.starts_with("python:") && n.class.ends_with(&class_end),
        "the class is the creation site: {}\n{}",
        n.class,
        run.describe()
    );
    assert!(n.note, "{}", run.describe());
    assert_requested_in(
        &n.python_stack,
        "nest",
        "matrix_orders.py",
        orders_line("NEST"),
        run,
    );
}

fn deadlocks_line(name: &str, marker: &str) -> u32 {
    python_marker_line(name, marker)
}

/// Whether a thread's Python stack has `function` of `file` at `line`.
fn stack_has(t: &ThreadReport, function: &str, file: &str, line: u32) -> bool {
    t.python_stack
        .iter()
        .any(|f| f.function == function && f.file.ends_with(file) && f.line == line)
}

/// `matrix_deadlocks.py` under `version` as `host`: its two deadlocks.
fn deadlocks(version: &str, host: Host) {
    let run = run_script(version, host, "matrix_deadlocks.py", &["3"]);
    let found = run.report.deadlocks();
    assert_eq!(found.len(), 2, "two deadlocks\n{}", run.describe());
    let line = |marker| deadlocks_line("matrix_deadlocks.py", marker);
    let (a, b) = (
        format!("python/matrix_deadlocks.py:{}", line("CREATE_A")),
        format!("python/matrix_deadlocks.py:{}", line("CREATE_B")),
    );
    let waits_for_a_or_b = |d: &&&Deadlock| {
        d.threads
            .iter()
            .any(|t| [a.as_str(), b.as_str()].contains(&t.waits_for_name().unwrap_or("")))
    };
    let (plain, import): (Vec<&Deadlock>, Vec<&Deadlock>) =
        found.iter().partition(|d| waits_for_a_or_b(d));
    assert_eq!(
        (plain.len(), import.len()),
        (1, 1),
        "one deadlock on the script's locks, one on an import\n{}",
        run.describe()
    );
    check_plain_deadlock(plain[0], &a, &b, &run);
    check_import_deadlock(import[0], version.starts_with("2."), &run);
}

/// Each thread waits for the other's lock (named by its creation line) at
/// its line, with its Python stack.
fn check_plain_deadlock(d: &Deadlock, a: &str, b: &str, run: &JsonRun) {
    assert_eq!(d.threads.len(), 2, "{}", run.describe());
    for t in &d.threads {
        let waits_for = t.waits_for_name().unwrap_or_default();
        let (function, marker) = if waits_for == b {
            ("first_a_then_b", "WAIT_B")
        } else {
            assert_eq!(waits_for, a, "waits for A or B\n{}", run.describe());
            ("first_b_then_a", "WAIT_A")
        };
        assert_requested_in(
            &t.python_stack,
            function,
            "matrix_deadlocks.py",
            deadlocks_line("matrix_deadlocks.py", marker),
            run,
        );
        let other = d.threads.iter().find(|o| o.tid != t.tid).unwrap();
        assert_eq!(t.held_by, [other.tid], "{}", run.describe());
    }
}

/// `holder` holds L and waits for slow_module's import (Python 3: its
/// module lock, `import of slow_module`; Python 2: the global `import
/// lock`); the other thread runs slow_module's top level, imported by
/// `importer`, and waits for L, held by `holder`.
fn check_import_deadlock(d: &Deadlock, python2: bool, run: &JsonRun) {
    assert_eq!(d.threads.len(), 2, "{}", run.describe());
    let waited = if python2 {
        "import lock"
    } else {
        "import of slow_module"
    };
    let holder = d
        .threads
        .iter()
        .find(|t| t.waits_for_name() == Some(waited))
        .unwrap_or_else(|| panic!("a thread waits for {waited}\n{}", run.describe()));
    assert!(
        stack_has(
            holder,
            "holder",
            "matrix_deadlocks.py",
            deadlocks_line("matrix_deadlocks.py", "IMPORT_UNDER_L")
        ),
        "the waiter for the import is `holder` at its import line\n{}",
        run.describe()
    );
    let importer = d.threads.iter().find(|t| t.tid != holder.tid).unwrap();
    assert!(
        stack_has(
            importer,
            "<module>",
            "slow_module.py",
            deadlocks_line("imports/slow_module.py", "TAKE_L")
        ) && stack_has(
            importer,
            "importer",
            "matrix_deadlocks.py",
            deadlocks_line("matrix_deadlocks.py", "IMPORT_FIRST")
        ),
        "the other thread runs slow_module's top level, imported by `importer`\n{}",
        run.describe()
    );
    assert_eq!(importer.held_by, [holder.tid], "{}", run.describe());
    assert_eq!(holder.held_by, [importer.tid], "{}", run.describe());
    if python2 {
        // Python 2's import lock is a lock the importer holds.
        assert!(
            importer
                .holds
                .iter()
                .any(|h| h.lock.name.as_deref() == Some("import lock")),
            "the importer holds the import lock\n{}",
            run.describe()
        );
    }
    // L was made by a module's top-level code, freed once it ran: the
    // kernel's copy of that code object still names it (2.7's byte-string
    // names too).
    let l = format!(
        "imports/shared_lock.py:{}",
        deadlocks_line("imports/shared_lock.py", "CREATE_L")
    );
    assert_eq!(
        importer.waits_for_name(),
        Some(l.as_str()),
        "L is named by its creation line\n{}",
        run.describe()
    );
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
    eprintln!(
        "pyenv versions found: {found:?}; with Python frames: {SUPPORTED:?}; and {DEBIAN_PYTHON}"
    );
    for v in SUPPORTED {
        assert!(
            found.iter().any(|f| f == v),
            "pyenv CPython {v} absent (found {found:?})"
        );
    }
}

/// The four runs of one pyenv version: orders and deadlocks, as a program
/// and embedded.
macro_rules! matrix {
    ($module:ident, $version:literal) => {
        mod $module {
            use super::*;

            #[test]
            fn orders_program() {
                orders($version, Host::Program, &[]);
            }

            #[test]
            fn orders_embedded() {
                orders($version, Host::Embedded, &[]);
            }

            #[test]
            fn orders_program_exiting_at_once() {
                orders($version, Host::Program, &["_exit"]);
            }

            #[test]
            fn deadlocks_program() {
                deadlocks($version, Host::Program);
            }

            #[test]
            fn deadlocks_embedded() {
                deadlocks($version, Host::Embedded);
            }
        }
    };
}

matrix!(cpython_3_13, "3.13.0");
matrix!(cpython_3_12, "3.12.1");
matrix!(cpython_3_11, "3.11.7");
matrix!(cpython_3_10, "3.10.13");
matrix!(cpython_3_9, "3.9.18");
matrix!(cpython_3_8, "3.8.18");
matrix!(cpython_3_7, "3.7.16");
matrix!(cpython_3_6, "3.6.15");
matrix!(cpython_2_7, "2.7.18");

/// Debian's python3 as a program (`python_frames.rs` embeds it).
mod debian_python3 {
    use super::*;

    #[test]
    fn orders_program() {
        orders("debian", Host::Program, &[]);
    }

    #[test]
    fn orders_program_exiting_at_once() {
        orders("debian", Host::Program, &["_exit"]);
    }

    #[test]
    fn deadlocks_program() {
        deadlocks("debian", Host::Program);
    }
}
