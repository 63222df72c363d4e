//! Running the tracer: one run to completion ([`Tracer`], [`run_json`]) or
//! `locktrace watch` in the background ([`Watcher`]), each killed with its
//! process group on timeout or panic and checked for leftovers afterwards.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::locktrace_bin;
use crate::process::{assert_group_gone, group_members, stop_group, ActiveRun};
use crate::records::{parse_records, Record, Report};

/// Upper bound for any single tracer run.
pub const TRACER_TIMEOUT: Duration = Duration::from_secs(60);

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
    /// probes are attached and armed (acquisitions are recorded).
    pub fn start(args: &[&str]) -> Self {
        Self::start_logging(args, "info")
    }

    /// [`Watcher::start`] with `LOCKTRACE_LOG=log`.
    pub fn start_logging(args: &[&str], log: &str) -> Self {
        Self::start_command::<&str>(&[], "watch", args, log, &[], &[])
    }

    /// `PREFIX... locktrace watch ARGS` (e.g. `prlimit --nofile=256:256
    /// --`), once its probes are armed.
    pub fn start_wrapped(prefix: &[&str], args: &[&str]) -> Self {
        Self::start_command::<&str>(prefix, "watch", args, "info", &[], &[])
    }

    /// `locktrace agent ARGS` (its findings also written as JSON Lines, as
    /// `watch`'s), once its probes are armed.
    pub fn start_agent(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_command::<&str>(&[], "agent", args, "info", env, &[])
    }

    /// `PREFIX... locktrace agent ARGS` (e.g. `nsenter -t PID -m --`: the
    /// agent in another mount namespace), once its probes are armed.
    pub fn start_agent_wrapped(prefix: &[&str], args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_command::<&str>(prefix, "agent", args, "info", env, &[])
    }

    /// `locktrace run -- COMMAND` in the background (for a test that
    /// signals the tracer while the command runs), once its probes are armed.
    pub fn start_run<S: AsRef<OsStr>>(command: &[S]) -> Self {
        Self::start_command(&[], "run", &[], "info", &[], command)
    }

    fn start_command<S: AsRef<OsStr>>(
        prefix: &[&str],
        subcommand: &str,
        args: &[&str],
        log: &str,
        env: &[(&str, &str)],
        command: &[S],
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let report = dir.path().join("report.jsonl");
        let mut cmd = match prefix.split_first() {
            Some((program, rest)) => {
                let mut cmd = Command::new(program);
                cmd.args(rest).arg(locktrace_bin());
                cmd
            }
            None => Command::new(locktrace_bin()),
        };
        cmd.arg(subcommand)
            .args(args)
            .args(["--format", "json", "--output"])
            .arg(&report)
            .args(if command.is_empty() { None } else { Some("--") })
            .args(command)
            .env("LOCKTRACE_LOG", log)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let cmdline = format!("locktrace {subcommand} {}", args.join(" "));
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
        watcher.wait_for_log(&["armed"], TRACER_TIMEOUT);
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

    /// The tracer's log so far.
    pub fn stderr_so_far(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits (at most `timeout`) until the report has a finding about
    /// process `pid`: the collector may be behind the kernel on a loaded
    /// machine, and a tracer stopped now would leave that record
    /// unprocessed (it stops within a second of a signal, whatever is
    /// left). Returns whether one came; the test's own assertions say what
    /// was expected.
    pub fn wait_for_finding_of(&self, pid: u32, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.records_so_far().iter().any(|r| r.pid() == Some(pid)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The records of the report written so far: every complete line (the
    /// tracer may be writing the last one), each of which must parse.
    pub fn records_so_far(&self) -> Vec<Record> {
        let raw = fs::read_to_string(&self.report).unwrap_or_default();
        let complete = match raw.rfind('\n') {
            Some(end) => &raw[..=end],
            None => "",
        };
        parse_records(complete).unwrap_or_else(|e| {
            panic!(
                "`{}` wrote a malformed record: {e}\n--- json output so far ---\n{raw}---",
                self.cmdline
            )
        })
    }

    /// The report file (`--output`) the tracer writes.
    pub fn report_path(&self) -> &Path {
        &self.report
    }

    /// The tracer's pid.
    pub fn pid(&self) -> u32 {
        self.guard.pid
    }

    /// SIGTERM, then the report.
    pub fn stop(self) -> JsonRun {
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { libc::kill(self.guard.pid as libc::pid_t, libc::SIGTERM) };
        self.finish(&format!("stop within {TRACER_TIMEOUT:?} of SIGTERM"))
    }

    /// [`Watcher::stop`], keeping the directory of the report (for what the
    /// tracer wrote beside it: rotated files) until the returned handle is
    /// dropped.
    pub fn stop_keeping_dir(mut self) -> (JsonRun, tempfile::TempDir) {
        let dir = std::mem::replace(&mut self._dir, tempfile::tempdir().expect("temp dir"));
        (self.stop(), dir)
    }

    /// SIGINT, as Ctrl-C: the report, and how long the tracer took to exit
    /// (it promises a second, whatever its load).
    pub fn interrupt(self) -> (JsonRun, Duration) {
        let sent = Instant::now();
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { libc::kill(self.guard.pid as libc::pid_t, libc::SIGINT) };
        let mut took = Duration::ZERO;
        let run = self.finish_timed(
            &format!("stop within {TRACER_TIMEOUT:?} of SIGINT"),
            |exited| took = exited.duration_since(sent),
        );
        (run, took)
    }

    /// SIGTERM, as systemd or `kill` stops it: the report, and how long the
    /// tracer took to exit (it promises a second, whatever its load).
    pub fn terminate(self) -> (JsonRun, Duration) {
        let sent = Instant::now();
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { libc::kill(self.guard.pid as libc::pid_t, libc::SIGTERM) };
        let mut took = Duration::ZERO;
        let run = self.finish_timed(
            &format!("stop within {TRACER_TIMEOUT:?} of SIGTERM"),
            |exited| took = exited.duration_since(sent),
        );
        (run, took)
    }

    /// Waits for the tracer to end by itself (`--duration`), then the
    /// report.
    pub fn wait(self) -> JsonRun {
        self.finish(&format!("end by itself within {TRACER_TIMEOUT:?}"))
    }

    /// Waits for the tracer to exit (else kills it and fails, saying it did
    /// not `what`), checks for leftovers, and reads the report.
    fn finish(self, what: &str) -> JsonRun {
        self.finish_timed(what, |_| {})
    }

    /// [`Self::finish`], telling `exited` when the tracer was seen gone.
    fn finish_timed(mut self, what: &str, exited: impl FnOnce(Instant)) -> JsonRun {
        let deadline = Instant::now() + TRACER_TIMEOUT;
        let status = loop {
            if let Ok(Some(status)) = self.guard.child.as_mut().unwrap().try_wait() {
                exited(Instant::now());
                break status;
            }
            if Instant::now() >= deadline {
                self.guard.kill_all();
                panic!("`{}` did not {what}", self.cmdline);
            }
            thread::sleep(Duration::from_millis(5));
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
        let report = read_report(&self.report, &run);
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

fn spawn_reader<R: Read + Send + 'static>(mut r: R) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
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

/// `locktrace report ARGS... CAPTURES...`, run to its end (no root needed:
/// it reads the captures only).
pub fn locktrace_report<P: AsRef<Path>>(args: &[&str], captures: &[P]) -> Run {
    let mut argv: Vec<OsString> = vec!["report".into()];
    argv.extend(args.iter().map(OsString::from));
    argv.extend(captures.iter().map(|p| p.as_ref().as_os_str().to_owned()));
    Tracer::new(&argv).run()
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
    let report = read_report(&out, &run);
    JsonRun { run, report }
}

/// The report the tracer wrote to `path`; fails unless it parses.
fn read_report(path: &Path, run: &Run) -> Report {
    let raw = fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "cannot read the tracer's --output file {}: {e}\n{}",
            path.display(),
            run.describe()
        )
    });
    Report::parse(&raw).unwrap_or_else(|e| {
        panic!(
            "malformed JSON output: {e}\n{}\n--- json output ---\n{raw}---",
            run.describe()
        )
    })
}
