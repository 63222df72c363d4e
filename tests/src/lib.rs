//! Harness for locktrace's end-to-end tests: locating the binary and the
//! fixtures, running the tracer with a timeout (killing it and everything it
//! started on timeout or panic), parsing its JSON Lines output, and checking
//! that nothing (processes, uprobes) is left behind after a run.

pub mod apache;

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

/// Upper bound for any single tracer run.
pub const TRACER_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the kernel lists tracefs-based uprobes.
const UPROBE_EVENTS: &[&str] = &[
    "/sys/kernel/tracing/uprobe_events",
    "/sys/kernel/debug/tracing/uprobe_events",
];

// ---------------------------------------------------------------------------
// Preconditions and locations

/// Fails the test (no silent skip) unless running as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "end-to-end tests need root (they load BPF programs); running as euid {euid}"
    );
}

/// The workspace root (parent of this crate).
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The locktrace binary: `$LOCKTRACE_BIN`, else `<target>/debug/locktrace`
/// (`<target>` is `$CARGO_TARGET_DIR` or `<workspace>/target`).
pub fn locktrace_bin() -> PathBuf {
    let (path, origin) = match std::env::var_os("LOCKTRACE_BIN") {
        Some(p) if !p.is_empty() => (PathBuf::from(p), "$LOCKTRACE_BIN"),
        _ => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .filter(|t| !t.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| workspace_dir().join("target"));
            (target.join("debug").join("locktrace"), "default location")
        }
    };
    assert!(
        path.is_file(),
        "locktrace binary not found at {} ({origin}); build it first (`cargo xtask build`) \
         or set LOCKTRACE_BIN, e.g. run the suite with `cargo xtask test`",
        path.display()
    );
    path
}

/// Directory of the compiled fixtures (see build.rs).
pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("FIXTURE_DIR"))
}

/// Frame-pointer variant of a fixture binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// `-fno-omit-frame-pointer`
    Fp,
    /// `-fomit-frame-pointer`
    NoFp,
}

impl Variant {
    pub fn suffix(self) -> &'static str {
        match self {
            Variant::Fp => "fp",
            Variant::NoFp => "nofp",
        }
    }
}

/// Path of compiled fixture `name` (e.g. "ab_ba") in the given variant.
pub fn fixture(name: &str, variant: Variant) -> PathBuf {
    let path = fixture_dir().join(format!("{name}_{}", variant.suffix()));
    assert!(path.is_file(), "fixture {} was not built", path.display());
    path
}

/// Path of the C source of fixture `name`.
pub fn fixture_source(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(format!("{name}.c"))
}

/// 1-based line of the fixture source carrying the comment `/* MARKER */`.
/// Panics unless exactly one line does.
pub fn marker_line(name: &str, marker: &str) -> u64 {
    let path = fixture_source(name);
    let text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let needle = format!("/* {marker} */");
    let hits: Vec<u64> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(&needle))
        .map(|(i, _)| i as u64 + 1)
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "marker {needle} must appear exactly once in {}, found at lines {hits:?}",
        path.display()
    );
    hits[0]
}

/// What the kernel shows as the `comm` of an executable started from `path`
/// (the file name, truncated to 15 bytes).
pub fn comm_of(path: &Path) -> String {
    let name = path.file_name().unwrap().to_string_lossy();
    name.bytes().take(15).map(char::from).collect()
}

// ---------------------------------------------------------------------------
// Running the tracer

/// A finished tracer run.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    /// stdout of the tracer (with `--output FILE`: the traced command's stdout).
    pub stdout: String,
    pub stderr: String,
    pub tracer_pid: u32,
    /// The command line, for messages.
    pub cmdline: String,
}

impl Run {
    /// Exit code; panics (with the run's output) if killed by a signal.
    pub fn code(&self) -> i32 {
        match self.status.code() {
            Some(c) => c,
            None => panic!(
                "tracer was killed by signal {:?}\n{}",
                self.status.signal(),
                self.describe()
            ),
        }
    }

    /// Everything about the run, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "command: {}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}\n---",
            self.cmdline, self.status, self.stdout, self.stderr
        )
    }

    /// The pid a fixture printed as `<label> N` on stdout (fixtures print
    /// `pid N`; fork_held also prints `child N`).
    pub fn printed_pid(&self, label: &str) -> u32 {
        let prefix = format!("{label} ");
        let pids: Vec<u32> = self
            .stdout
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .filter_map(|rest| rest.trim().parse().ok())
            .collect();
        assert_eq!(
            pids.len(),
            1,
            "expected exactly one `{label} N` line from the fixture on the tracer's stdout\n{}",
            self.describe()
        );
        pids[0]
    }

    /// Non-empty lines of stderr.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }
}

/// Builder for one tracer invocation.
pub struct Tracer {
    /// Program and arguments placed before the tracer (e.g. setpriv ...).
    prefix: Vec<OsString>,
    args: Vec<OsString>,
    timeout: Duration,
}

impl Tracer {
    /// `locktrace ARGS...`
    pub fn new<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Tracer {
            prefix: Vec::new(),
            args: args.into_iter().map(|a| a.as_ref().to_owned()).collect(),
            timeout: TRACER_TIMEOUT,
        }
    }

    /// Run the tracer through a wrapper command, e.g. `setpriv ...`.
    pub fn wrapped_in<I, S>(mut self, prefix: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.prefix = prefix.into_iter().map(|a| a.as_ref().to_owned()).collect();
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs the tracer to completion (or kills it at the timeout and fails),
    /// then checks that nothing is left behind: no process of its process
    /// group (tracer, traced command and its forks) and no uprobe.
    pub fn run(self) -> Run {
        let bin = locktrace_bin();
        let mut argv: Vec<OsString> = self.prefix.clone();
        argv.push(bin.into_os_string());
        argv.extend(self.args.iter().cloned());
        let cmdline = argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");

        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so that it and everything it starts can
            // be found and killed as a unit.
            .process_group(0);

        let active = ActiveRun::start();
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{cmdline}`: {e}"));
        let mut guard = ChildGuard::new(child);
        let tracer_pid = guard.pid;

        let deadline = Instant::now() + self.timeout;
        let status = loop {
            match guard.child.as_mut().unwrap().try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) => {}
                Err(e) => panic!("waiting for `{cmdline}`: {e}"),
            }
            if Instant::now() >= deadline {
                guard.kill_all();
                let (stdout, stderr) = guard.collect_output();
                panic!(
                    "`{cmdline}` did not finish within {:?}; killed it and its process group\n\
                     --- stdout ---\n{stdout}\n--- stderr ---\n{stderr}\n---",
                    self.timeout
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        guard.child = None; // reaped
        let (stdout, stderr) = guard.collect_output();
        let run = Run {
            status,
            stdout,
            stderr,
            tracer_pid,
            cmdline,
        };

        // If the tracer left anything in its group, the guard kills it when
        // the assertion below unwinds.
        assert_group_gone(&run);
        drop(guard);
        active.finish(&run);
        run
    }
}

/// `locktrace watch ARGS --format json --output FILE` running in the
/// background while a test drives programs; [`Watcher::stop`] ends it like
/// a user would (SIGTERM) and checks, like [`Tracer::run`], that nothing is
/// left behind.
pub struct Watcher {
    guard: ChildGuard,
    active: Option<ActiveRun>,
    lines: std::sync::mpsc::Receiver<String>,
    stderr: std::sync::Arc<Mutex<String>>,
    report: PathBuf,
    _dir: tempfile::TempDir,
    cmdline: String,
}

impl Watcher {
    /// Starts the tracer (with `LOCKTRACE_LOG=info`) and waits until its
    /// probes are attached.
    pub fn start(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let report = dir.path().join("report.jsonl");
        let mut cmd = Command::new(locktrace_bin());
        cmd.arg("watch")
            .args(args)
            .args(["--format", "json", "--output"])
            .arg(&report)
            .env("LOCKTRACE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let cmdline = format!("locktrace watch {}", args.join(" "));
        let active = ActiveRun::start();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{cmdline}`: {e}"));
        let err = child.stderr.take().unwrap();
        let guard = ChildGuard::new(child);
        let (tx, lines) = std::sync::mpsc::channel();
        let stderr = std::sync::Arc::new(Mutex::new(String::new()));
        let all = stderr.clone();
        thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                let mut text = all.lock().unwrap_or_else(|e| e.into_inner());
                text.push_str(&line);
                text.push('\n');
                drop(text);
                let _ = tx.send(line);
            }
        });
        let watcher = Watcher {
            guard,
            active: Some(active),
            lines,
            stderr,
            report,
            _dir: dir,
            cmdline,
        };
        watcher.wait_for_log(&["probes attached"], TRACER_TIMEOUT);
        watcher
    }

    /// Waits for a line of the tracer's log containing every one of
    /// `needles`; returns it.
    pub fn wait_for_log(&self, needles: &[&str], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if needles.iter().all(|n| line.contains(n)) => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "`{}` logged no line containing {needles:?} within {timeout:?}\n--- stderr ---\n{}",
                    self.cmdline,
                    self.stderr.lock().unwrap_or_else(|e| e.into_inner())
                ),
            }
        }
    }

    /// The records of the report written so far (JSON Lines, unparsed).
    pub fn records_so_far(&self) -> Vec<Value> {
        fs::read_to_string(&self.report)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The tracer's pid.
    pub fn pid(&self) -> u32 {
        self.guard.pid
    }

    /// SIGTERM, then the report.
    pub fn stop(mut self) -> JsonRun {
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { libc::kill(self.guard.pid as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + TRACER_TIMEOUT;
        let status = loop {
            if let Ok(Some(status)) = self.guard.child.as_mut().unwrap().try_wait() {
                break status;
            }
            if Instant::now() >= deadline {
                self.guard.kill_all();
                panic!(
                    "`{}` did not stop within {TRACER_TIMEOUT:?} of SIGTERM",
                    self.cmdline
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        self.guard.child = None;
        let (stdout, _) = self.guard.collect_output();
        // The reader thread ends with the pipe.
        thread::sleep(Duration::from_millis(50));
        let run = Run {
            status,
            stdout,
            stderr: self
                .stderr
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            tracer_pid: self.guard.pid,
            cmdline: self.cmdline.clone(),
        };
        assert_group_gone(&run);
        self.active.take().unwrap().finish(&run);
        let raw = fs::read_to_string(&self.report).unwrap_or_default();
        let report = Report::parse(&raw).unwrap_or_else(|e| {
            panic!(
                "malformed JSON output: {e}\n{}\n--- json output ---\n{raw}---",
                run.describe()
            )
        });
        JsonRun { run, report }
    }
}

/// Kills the tracer's process group when dropped (normal exit after a
/// successful run finds nothing to kill).
struct ChildGuard {
    child: Option<Child>,
    pid: u32,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
}

impl ChildGuard {
    fn new(mut child: Child) -> Self {
        let pid = child.id();
        let stdout = child.stdout.take().map(spawn_reader);
        let stderr = child.stderr.take().map(spawn_reader);
        ChildGuard {
            child: Some(child),
            pid,
            stdout,
            stderr,
        }
    }

    /// SIGINT to the tracer (to let it detach its probes), a short grace
    /// period, then SIGKILL to the whole process group.
    fn kill_all(&mut self) {
        stop_group(
            self.pid,
            &mut self.child,
            libc::SIGINT,
            Duration::from_secs(3),
        );
    }

    fn collect_output(&mut self) -> (String, String) {
        // Readers finish when every holder of the pipes (the tracer and
        // anything it started) has exited or closed them; do not wait forever.
        let join = |h: Option<JoinHandle<String>>| -> String {
            let Some(h) = h else { return String::new() };
            let deadline = Instant::now() + Duration::from_secs(10);
            while !h.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
            if h.is_finished() {
                h.join().unwrap_or_default()
            } else {
                "<output still open 10 s after the tracer exited: something kept the pipe>"
                    .to_string()
            }
        };
        let out = join(self.stdout.take());
        let err = join(self.stderr.take());
        (out, err)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.child.is_some() || !group_members(self.pid).is_empty() {
            self.kill_all();
        }
    }
}

/// Stops the process group `pgid` led by `child`: `signal` to the leader
/// (if not reaped yet), up to `grace` for it to exit, then SIGKILL to the
/// whole group, and the leader reaped. Returns whether the leader exited
/// within the grace period.
pub fn stop_group(pgid: u32, child: &mut Option<Child>, signal: i32, grace: Duration) -> bool {
    let pgid = pgid as libc::pid_t;
    let mut graceful = false;
    if let Some(child) = child.as_mut() {
        // SAFETY: kill(2) on the pid of our own unreaped child.
        unsafe { libc::kill(pgid, signal) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                graceful = true;
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
    // SAFETY: kill(2) on the process group we created (the leader's pid is
    // its id); harmless if the group is already empty.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
    graceful
}

fn spawn_reader<R: Read + Send + 'static>(mut r: R) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

// ---------------------------------------------------------------------------
// Leftover checks

/// (pid, comm) of live (non-zombie) processes in process group `pgid`.
pub fn group_members(pgid: u32) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp ...; comm may contain spaces/parens.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if rest.len() < 3 || rest[0] == "Z" || rest[0] == "X" {
            continue;
        }
        if rest[2].parse::<u32>().ok() == Some(pgid) {
            found.push((pid, comm));
        }
    }
    found
}

/// No process of the tracer's process group (the tracer itself, any
/// `locktrace` helper, the traced command and its forks) survives the run.
fn assert_group_gone(run: &Run) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left = group_members(run.tracer_pid);
        if left.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "processes left behind after the tracer exited (pid, comm): {left:?}\n{}",
                run.describe()
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn uprobe_event_lines() -> BTreeSet<String> {
    let mut lines = BTreeSet::new();
    for path in UPROBE_EVENTS {
        if let Ok(text) = fs::read_to_string(path) {
            lines.extend(
                text.lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(str::to_string),
            );
        }
    }
    lines
}

/// Number of tracer runs in flight in this test process, and the uprobes that
/// existed before the first run (not ours to judge).
static ACTIVE: Mutex<usize> = Mutex::new(0);
static BASELINE_UPROBES: OnceLock<BTreeSet<String>> = OnceLock::new();

/// Bookkeeping for the uprobe check: tests run in parallel, so a uprobe seen
/// while another tracer runs may be that tracer's. When this run is the only
/// one, uprobe_events must be back to its state before the first run;
/// otherwise no line may mention this tracer's pid.
struct ActiveRun;

impl ActiveRun {
    fn start() -> Self {
        let mut active = ACTIVE.lock().unwrap_or_else(|e| e.into_inner());
        if *active == 0 {
            BASELINE_UPROBES.get_or_init(uprobe_event_lines);
        }
        *active += 1;
        ActiveRun
    }

    fn finish(self, run: &Run) {
        // Let Drop do the decrement; check under the same lock so that no
        // other run starts between the count and the read.
        let mut active = ACTIVE.lock().unwrap_or_else(|e| e.into_inner());
        *active -= 1;
        let alone = *active == 0;
        let lines = uprobe_event_lines();
        std::mem::forget(self);
        drop(active);

        let baseline = BASELINE_UPROBES.get().cloned().unwrap_or_default();
        let pid = run.tracer_pid.to_string();
        let left: Vec<&String> = lines
            .iter()
            .filter(|l| !baseline.contains(*l))
            .filter(|l| alone || mentions_number(l, &pid))
            .collect();
        assert!(
            left.is_empty(),
            "uprobes left behind in uprobe_events after the tracer exited{}: {left:?}\n{}",
            if alone {
                " (no other tracer was running; possibly left by an earlier run)"
            } else {
                ""
            },
            run.describe()
        );
    }
}

impl Drop for ActiveRun {
    fn drop(&mut self) {
        // Only reached when a run panicked before finish().
        let mut active = ACTIVE.lock().unwrap_or_else(|e| e.into_inner());
        *active -= 1;
    }
}

/// `haystack` contains `number` not embedded in a longer number.
fn mentions_number(haystack: &str, number: &str) -> bool {
    haystack.match_indices(number).any(|(i, _)| {
        let before = haystack[..i].chars().next_back();
        let after = haystack[i + number.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_digit()) && !after.is_some_and(|c| c.is_ascii_digit())
    })
}

// ---------------------------------------------------------------------------
// JSON report

#[derive(Debug, Clone, Deserialize)]
pub struct Lock {
    pub addr: String,
    pub kind: String,
    pub name: Option<String>,
}

impl Lock {
    /// The lock's name, or `<unnamed>`.
    pub fn label(&self) -> &str {
        self.name.as_deref().unwrap_or("<unnamed>")
    }
}

/// The names of a finding's locks (each must have one).
pub fn lock_names(finding: &Finding, run: &JsonRun) -> BTreeSet<String> {
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

/// The findings between a Python script's own locks: those with a lock
/// named by a creation line starting with `prefix` (`python/two_locks.py:`).
/// Known false positive, not fixed yet (about 1 run in 40): an inversion
/// between a thread's tstate lock (`threading.py:1013`) and a lock an
/// extension module's init creates; any other finding may only be that.
pub fn script_findings<'a>(run: &'a JsonRun, prefix: &str) -> Vec<&'a Finding> {
    let (ours, others): (Vec<_>, Vec<_>) = run.report.findings.iter().partition(|f| {
        f.locks
            .iter()
            .any(|l| l.name.as_deref().is_some_and(|n| n.starts_with(prefix)))
    });
    for f in others {
        assert!(
            f.locks
                .iter()
                .any(|l| l.name.as_deref() == Some("python3.11/threading.py:1013")),
            "only the known tstate-lock false positive besides the script's\n{}",
            run.describe()
        );
    }
    ours
}

pub fn names(expected: &[&str]) -> BTreeSet<String> {
    expected.iter().map(|s| s.to_string()).collect()
}

/// The single edge of the cycle going `from` -> `to` (by lock name).
pub fn edge<'a>(finding: &'a Finding, from: &str, to: &str, run: &JsonRun) -> &'a Edge {
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

#[derive(Debug, Clone, Deserialize)]
pub struct Frame {
    pub addr: String,
    pub module: Option<String>,
    pub function: Option<String>,
    pub offset: Option<u64>,
    pub file: Option<String>,
    pub line: Option<u64>,
}

impl Frame {
    /// Function `function`, in a file named `file_name` (compared by file
    /// name, the path may be absolute), at line `line`.
    pub fn is_at(&self, function: &str, file_name: &str, line: u64) -> bool {
        self.function.as_deref() == Some(function)
            && self
                .file
                .as_deref()
                .and_then(|f| Path::new(f).file_name())
                .is_some_and(|f| f == file_name)
            && self.line == Some(line)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Edge {
    pub from: Lock,
    pub to: Lock,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub thread: String,
    pub stack: Vec<Frame>,
    pub held_stack: Vec<Frame>,
    #[serde(default)]
    pub python_stack: Vec<PyFrame>,
}

/// A Python frame of a report: `function` is the qualified name.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct PyFrame {
    pub function: String,
    pub file: String,
    pub line: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Finding {
    pub id: u64,
    pub pid: u32,
    pub comm: String,
    pub locks: Vec<Lock>,
    pub cycle: Vec<Edge>,
}

/// A `self_deadlock` finding: thread `tid` requested (with a blocking or
/// timed call) a non-recursive `lock` it already held.
#[derive(Debug, Clone, Deserialize)]
pub struct SelfDeadlock {
    pub id: u64,
    pub pid: u32,
    pub comm: String,
    pub tid: u32,
    pub thread: String,
    pub lock: Lock,
    /// Where the lock was requested again, innermost first (libc first).
    pub stack: Vec<Frame>,
    /// Where it was taken first: its call site.
    pub held_stack: Vec<Frame>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Summary {
    pub events: u64,
    pub dependencies: u64,
    pub locks: u64,
    pub cycles: u64,
    pub lost_events: u64,
    pub counters: serde_json::Map<String, Value>,
    #[serde(default)]
    pub probed_files: Vec<String>,
    #[serde(default)]
    pub forgotten_processes: u64,
    pub duration_s: f64,
}

/// A parsed `--format json` output.
#[derive(Debug)]
pub struct Report {
    /// The raw output, for messages.
    pub raw: String,
    pub findings: Vec<Finding>,
    /// Every record other than `lock_order_inversion` and `summary`, in
    /// order, unparsed (e.g. `self_deadlock`: see [`Report::self_deadlocks`]).
    pub other_records: Vec<Value>,
    pub summary: Summary,
}

impl Report {
    /// Every record of type `kind`, unparsed, in order.
    pub fn records(&self, kind: &str) -> Vec<Value> {
        self.raw
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["type"] == kind)
            .collect()
    }

    /// Parses JSON Lines: every line one JSON object with a `type`; findings
    /// are `lock_order_inversion`; the last line is the only `summary`.
    /// Unknown record types are tolerated.
    pub fn parse(raw: &str) -> Result<Report, String> {
        let lines: Vec<&str> = raw.lines().filter(|l| !l.trim().is_empty()).collect();
        let mut findings = Vec::new();
        let mut other_records = Vec::new();
        let mut summary = None;
        for (i, line) in lines.iter().enumerate() {
            let value: Value = serde_json::from_str(line)
                .map_err(|e| format!("line {} is not JSON ({e}): {line}", i + 1))?;
            let ty = value
                .get("type")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("line {} has no string \"type\": {line}", i + 1))?;
            match ty {
                "lock_order_inversion" => findings.push(
                    serde_json::from_value::<Finding>(value.clone())
                        .map_err(|e| format!("bad lock_order_inversion on line {}: {e}", i + 1))?,
                ),
                "summary" => {
                    if i + 1 != lines.len() {
                        return Err(format!("summary on line {} is not the last line", i + 1));
                    }
                    summary = Some(
                        serde_json::from_value::<Summary>(value.clone())
                            .map_err(|e| format!("bad summary: {e}"))?,
                    );
                }
                _ => other_records.push(value),
            }
        }
        let summary = summary.ok_or("no summary line at the end of the output")?;
        Ok(Report {
            raw: raw.to_string(),
            findings,
            other_records,
            summary,
        })
    }

    /// The `self_deadlock` findings, in order; an error names a malformed one.
    pub fn self_deadlocks(&self) -> Result<Vec<SelfDeadlock>, String> {
        self.other_records
            .iter()
            .filter(|v| v.get("type").and_then(Value::as_str) == Some("self_deadlock"))
            .map(|v| {
                serde_json::from_value::<SelfDeadlock>(v.clone())
                    .map_err(|e| format!("bad self_deadlock ({e}): {v}"))
            })
            .collect()
    }
}

/// A `locktrace run --format json --output FILE [EXTRA...] -- CMD...` run.
pub struct JsonRun {
    pub run: Run,
    pub report: Report,
}

impl JsonRun {
    /// Everything about the run, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "{}\n--- json output ---\n{}---",
            self.run.describe(),
            self.report.raw
        )
    }
}

/// Runs `locktrace run --format json --output TMP EXTRA... -- COMMAND...`,
/// asserts the output file parses, and returns both.
pub fn run_json<S: AsRef<OsStr>>(extra: &[&str], command: &[S]) -> JsonRun {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("report.jsonl");
    let mut args: Vec<OsString> = vec!["run".into(), "--format".into(), "json".into()];
    args.push("--output".into());
    args.push(out.clone().into_os_string());
    args.extend(extra.iter().map(OsString::from));
    args.push("--".into());
    args.extend(command.iter().map(|a| a.as_ref().to_owned()));
    let run = Tracer::new(&args).run();
    let raw = fs::read_to_string(&out).unwrap_or_else(|e| {
        panic!(
            "cannot read the tracer's --output file {}: {e}\n{}",
            out.display(),
            run.describe()
        )
    });
    let report = Report::parse(&raw).unwrap_or_else(|e| {
        panic!(
            "malformed JSON output: {e}\n{}\n--- json output ---\n{raw}---",
            run.describe()
        )
    });
    JsonRun { run, report }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_resolve() {
        assert!(marker_line("ab_ba", "LOCK_B_IN_AB") > marker_line("ab_ba", "LOCK_A_IN_AB"));
    }

    #[test]
    fn number_mentions() {
        assert!(mentions_number("p:uprobes/aya_123_x /x", "123"));
        assert!(!mentions_number("p:uprobes/aya_1234_x /x", "123"));
    }

    #[test]
    fn parse_report() {
        let raw = r#"{"type":"lock_order_inversion","id":1,"pid":5,"comm":"x","locks":[{"addr":"0x1","kind":"mutex","name":"mutex_a"}],"cycle":[{"from":{"addr":"0x1","kind":"mutex","name":null},"to":{"addr":"0x2","kind":"mutex","name":"mutex_b"},"pid":5,"tid":6,"comm":"x","thread":"x","stack":[{"addr":"0x10","module":null,"function":"lock_ab","offset":4,"file":"/a/ab_ba.c","line":14}],"held_stack":[]}]}
{"type":"summary","events":4,"dependencies":2,"locks":2,"cycles":1,"lost_events":0,"counters":{},"duration_s":0.5}
"#;
        let r = Report::parse(raw).unwrap();
        assert_eq!(r.findings.len(), 1);
        assert!(r.findings[0].cycle[0].stack[0].is_at("lock_ab", "ab_ba.c", 14));
        assert_eq!(r.summary.cycles, 1);
        assert!(r.self_deadlocks().unwrap().is_empty());
        assert!(Report::parse("{\"type\":\"summary\"}").is_err());
    }

    #[test]
    fn parse_self_deadlock() {
        let raw = r#"{"type":"self_deadlock","id":1,"pid":5,"comm":"x","tid":6,"thread":"x","lock":{"addr":"0x1","kind":"mutex","name":"mutex_a"},"stack":[{"addr":"0x10","module":null,"function":"relock_a","offset":4,"file":"/a/self_deadlock.c","line":9}],"held_stack":[]}
{"type":"something_new","x":1}
{"type":"summary","events":4,"dependencies":0,"locks":1,"cycles":0,"lost_events":0,"counters":{},"duration_s":0.5}
"#;
        let r = Report::parse(raw).unwrap();
        assert!(r.findings.is_empty());
        assert_eq!(r.other_records.len(), 2);
        let s = r.self_deadlocks().unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].lock.name.as_deref(), Some("mutex_a"));
        assert_eq!(s[0].tid, 6);
        let bad = raw.replace("\"tid\":6,", "");
        assert!(Report::parse(&bad).unwrap().self_deadlocks().is_err());
    }
}
