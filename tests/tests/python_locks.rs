//! Python locks: CPython's `threading.Lock` and `RLock` are POSIX semaphores
//! (sem_trywait, then sem_wait/sem_clockwait; sem_post). The system Python
//! (Debian's /usr/bin/python3) is traced with `locktrace run`.

use std::path::PathBuf;

use locktrace_e2e::{require_root, run_json, workspace_dir, Inversion, JsonRun, LockKind};

/// Debian's interpreter, not a pyenv or virtualenv one: that is what
/// services (mod_wsgi, gunicorn from Debian) run.
const PYTHON: &str = "/usr/bin/python3";

fn script() -> PathBuf {
    workspace_dir().join("tests/python/two_locks.py")
}

fn run(kind: &str, order: &str) -> JsonRun {
    require_root();
    assert!(
        std::path::Path::new(PYTHON).exists(),
        "{PYTHON} is missing: apt-get install python3"
    );
    let script = script();
    let run = run_json(&[], &[PYTHON, script.to_str().unwrap(), kind, order]);
    assert_eq!(run.run.code(), 0, "python exit status\n{}", run.describe());
    run
}

/// Both edges of a two-semaphore cycle, each requested in libc's semaphore
/// code called from the interpreter.
fn check_python_cycle(finding: &Inversion, run: &JsonRun) {
    assert_eq!(finding.locks.len(), 2, "{}", run.describe());
    for lock in &finding.locks {
        assert_eq!(lock.kind, LockKind::Semaphore, "{}", run.describe());
    }
    let tids: Vec<u32> = finding.cycle.iter().map(|e| e.tid).collect();
    assert_ne!(tids[0], tids[1], "two threads\n{}", run.describe());
    for edge in &finding.cycle {
        let top = edge.stack[0].function.as_deref().unwrap_or("");
        assert!(
            top.contains("sem_"),
            "stack[0] should be in libc's semaphore code, got {top:?}\n{}",
            run.describe()
        );
        let in_python = edge.stack.iter().any(|f| {
            f.module
                .as_deref()
                .is_some_and(|m| m.contains("python3") || m.contains("libpython"))
        });
        assert!(
            in_python,
            "the stack should reach the interpreter\n{}",
            run.describe()
        );
    }
}

/// The findings between the script's own locks (see `script_findings`).
fn script_findings(run: &JsonRun) -> Vec<&Inversion> {
    locktrace_e2e::script_findings(run, "python/two_locks.py:")
}

#[test]
fn python_lock_inversion() {
    let run = run("Lock", "inverted");
    let ours = script_findings(&run);
    assert_eq!(ours.len(), 1, "exactly one inversion\n{}", run.describe());
    check_python_cycle(ours[0], &run);
}

#[test]
fn python_rlock_inversion() {
    let run = run("RLock", "inverted");
    let ours = script_findings(&run);
    assert_eq!(ours.len(), 1, "exactly one inversion\n{}", run.describe());
    check_python_cycle(ours[0], &run);
}

#[test]
fn python_locks_in_one_order() {
    let run = run("Lock", "same");
    assert!(
        script_findings(&run).is_empty(),
        "same order in both threads\n{}",
        run.describe()
    );
    assert!(
        run.report.summary.dependencies >= 1,
        "the tracer saw the Python locks nest\n{}",
        run.describe()
    );
}
