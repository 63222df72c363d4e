//! Programs that do not run on the host's libc: a copy of libc started
//! through the dynamic loader, a chroot with its own libc, a statically
//! linked program. Each is traced like any other.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use locktrace_e2e::{
    assert_one_inversion_of, copy_executable, fixture, fixture_source, host_libc, lock_names,
    names, require_root, run_json, Variant, Watcher,
};

/// A started `late_ab_ba`: it prints its pid, then waits for a line on
/// stdin before taking its locks.
struct Late {
    child: Child,
    stdin: ChildStdin,
    /// Kept open: it prints `done` at the end.
    _stdout: BufReader<std::process::ChildStdout>,
    pid: u32,
}

impl Late {
    fn start(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start late_ab_ba");
        let stdin = child.stdin.take().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let pid = line
            .strip_prefix("pid ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("late_ab_ba printed {line:?}"));
        Late {
            child,
            stdin,
            _stdout: out,
            pid,
        }
    }

    /// Lets it take its locks; waits for it to end.
    fn go(mut self) {
        self.stdin.write_all(b"go\n").unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "late_ab_ba: {status}");
    }
}

impl Drop for Late {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The tracer's log line saying it probes the libc process `pid` mapped.
fn wait_probed(watcher: &Watcher, pid: u32) -> String {
    watcher.wait_for_log(
        &["probing a newly mapped lock library", &format!("pid={pid}")],
        Duration::from_secs(20),
    )
}

#[test]
fn a_copy_of_libc_started_later_is_probed() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("lib").join("libc.so.6");
    copy_executable(&host_libc(), &copy);
    let watcher = Watcher::start(&[]);
    let mut cmd = Command::new("/lib64/ld-linux-x86-64.so.2");
    cmd.arg("--library-path")
        .arg(copy.parent().unwrap())
        .arg(fixture("late_ab_ba", Variant::NoFp));
    let late = Late::start(cmd);
    let pid = late.pid;
    let line = wait_probed(&watcher, pid);
    assert!(
        line.contains(&copy.display().to_string()),
        "probed the copy: {line}"
    );
    late.go();
    watcher.wait_for_finding_of(pid, Duration::from_secs(10));
    let run = watcher.stop();
    assert_one_inversion_of(&run, pid, "late_ab_ba", &["late_a", "late_b"]);
    let finding = run
        .report
        .inversions()
        .into_iter()
        .find(|f| f.pid == pid)
        .unwrap();
    let top = &finding.cycle[0].stack[0];
    assert_eq!(
        top.module.as_deref(),
        Some(copy.to_str().unwrap()),
        "the requesting stack starts in the copy of libc\n{}",
        run.describe()
    );
    assert!(
        run.report
            .summary
            .probed_files
            .iter()
            .any(|f| Path::new(f) == copy),
        "the summary names the copy among the probed files\n{}",
        run.describe()
    );
}

/// The shared libraries `binary` loads, by `ldd`.
fn libraries_of(binary: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(binary).output().expect("ldd");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
        .map(PathBuf::from)
        .collect()
}

#[test]
fn a_program_in_a_chroot_is_traced() {
    require_root();
    let root = tempfile::tempdir().unwrap();
    let program = fixture("late_ab_ba", Variant::NoFp);
    // The chroot's files are copies: the same paths as the host's, other
    // inodes.
    for lib in libraries_of(&program) {
        let real = std::fs::canonicalize(&lib).unwrap();
        copy_executable(&real, &root.path().join(lib.strip_prefix("/").unwrap()));
    }
    copy_executable(&program, &root.path().join("late_ab_ba"));
    let watcher = Watcher::start(&[]);
    let mut cmd = Command::new("chroot");
    cmd.arg(root.path()).arg("/late_ab_ba");
    let late = Late::start(cmd);
    let pid = late.pid;
    let line = wait_probed(&watcher, pid);
    assert!(
        line.contains("/lib/x86_64-linux-gnu/libc.so.6"),
        "probed the chroot's libc: {line}"
    );
    late.go();
    watcher.wait_for_finding_of(pid, Duration::from_secs(10));
    let run = watcher.stop();
    assert_one_inversion_of(&run, pid, "late_ab_ba", &["late_a", "late_b"]);
    assert!(
        run.report.summary.probed_files.len() >= 2,
        "the host's libc and the chroot's\n{}",
        run.describe()
    );
}

/// `ab_ba` linked statically (glibc's libc.a) into `dir`.
fn static_ab_ba(dir: &Path) -> PathBuf {
    let out = dir.join("ab_ba_static");
    let status = Command::new("gcc")
        .args(["-static", "-pthread", "-g", "-O0", "-o"])
        .arg(&out)
        .arg(fixture_source("ab_ba"))
        .status()
        .expect("gcc");
    assert!(status.success(), "gcc -static ab_ba.c");
    out
}

#[test]
fn a_static_program_is_traced() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let program = static_ab_ba(dir.path());
    // `run` probes the command itself when it carries the lock functions.
    let run = run_json(&[], &[&program]);
    let inversions = run.report.inversions();
    assert_eq!(inversions.len(), 1, "{}", run.describe());
    let finding = inversions[0];
    assert_eq!(lock_names(finding, &run), names(&["mutex_a", "mutex_b"]));
    let frames = &finding.cycle[0].stack;
    assert!(
        frames
            .iter()
            .any(|f| f.function.as_deref() == Some("lock_ab")
                || f.function.as_deref() == Some("lock_ba")),
        "the stack names the program's functions\n{}",
        run.describe()
    );
    assert!(
        frames[0]
            .module
            .as_deref()
            .is_some_and(|m| m.ends_with("ab_ba_static")),
        "the lock function is the program's own copy\n{}",
        run.describe()
    );
}

#[test]
fn a_stripped_static_binary_is_refused_with_one_line() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let program = static_ab_ba(dir.path());
    assert!(Command::new("strip")
        .arg(&program)
        .status()
        .unwrap()
        .success());
    let run = locktrace_e2e::Tracer::new([
        "watch".as_ref(),
        "--duration".as_ref(),
        "1s".as_ref(),
        "--binary".as_ref(),
        program.as_os_str(),
    ])
    .run();
    run.assert_exit(1);
    let line = run.single_error_line();
    assert!(
        line.contains("ab_ba_static") && line.contains("stripped"),
        "names the file and the reason\n{}",
        run.describe()
    );
}
