//! Attach, detach and bystanders: what tracing costs around the workload
//! rather than in it, side by side in one run.
//!
//! - `run` of a trivial program (`true`), untraced and under `locktrace
//!   run`: the wall time a user who gates CI on `run` pays per binary.
//! - `watch` with two libcs probed (the host's, and a copy in a scratch
//!   directory mapped by a process started through the dynamic loader):
//!   start to armed, and exit after SIGTERM.
//! - A process that is not traced, `lockloop mutex 1`, natively and while
//!   `locktrace watch --pid OTHER` traces another process (per-process
//!   probes: it should pay nothing).
//! - `watch --pid P --duration 1s` against a busy process (two threads of
//!   `lockloop mutex`): the wall time of one attach-trace-detach cycle.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::{median, run_bounded, signal_child, Options, ScratchDir};
use crate::step;

const LOADER: &str = "/lib64/ld-linux-x86-64.so.2";
/// Bounds on a tracer's start and exit here (never left running).
const TRACER_LIMIT: Duration = Duration::from_secs(60);
/// After "armed", the collector still looks for Python processes before
/// its loop starts.
const SETTLE: Duration = Duration::from_secs(1);

#[derive(Serialize)]
pub struct AttachResults {
    /// `true`, untraced and under `locktrace run` (median wall seconds).
    pub run_true_untraced_s: f64,
    pub run_true_traced_s: f64,
    /// `watch` with two libcs: start to armed, and SIGTERM to exit.
    pub watch_two_libcs_armed_s: f64,
    pub watch_two_libcs_exit_s: f64,
    /// An untraced process's mutex pair: native, and beside `watch --pid`
    /// of another process (median ns).
    pub bystander_native_ns: f64,
    pub bystander_beside_watch_pid_ns: f64,
    /// `watch --pid P --duration 1s` of a busy process: start to armed, and
    /// the whole command (median wall seconds).
    pub busy_pid_armed_s: f64,
    pub busy_pid_total_s: f64,
}

pub fn attach_bench(locktrace: &Path, lockloop: &Path, opts: &Options) -> Result<AttachResults> {
    let rounds = opts.rounds.max(3);
    let (mut untraced, mut traced) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        untraced.push(wall(Command::new("true"))?);
        let mut run = Command::new(locktrace);
        run.args([
            "run",
            "--format",
            "json",
            "--output",
            "/dev/null",
            "--",
            "true",
        ]);
        traced.push(wall(run)?);
        step(format!(
            "run true, round {round}: untraced {:.3} s, locktrace run {:.3} s",
            untraced[round - 1],
            traced[round - 1]
        ));
    }

    let scratch = ScratchDir::new("libc")?;
    let copy = scratch.path.join("libc.so.6");
    std::fs::copy(host_libc()?, &copy).context("cannot copy libc")?;
    let second = Bystander::start(
        Command::new(LOADER)
            .arg("--library-path")
            .arg(&scratch.path)
            .args(["/bin/sleep", "3600"]),
    )?;
    let (mut armed, mut exit) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let watch = Watch::start(locktrace, &[])?;
        armed.push(watch.armed_s);
        // Stopped as a user stops a running tracer, not in its first
        // milliseconds.
        std::thread::sleep(SETTLE);
        exit.push(watch.stop()?);
        step(format!(
            "watch with two libcs, round {round}: armed after {:.3} s, exited {:.3} s after SIGTERM",
            armed[round - 1],
            exit[round - 1]
        ));
    }
    drop(second);

    let other = Bystander::start(Command::new("sleep").arg("3600"))?;
    let other_pid = other.child.id().to_string();
    let loop_cmd = |seconds: f64| {
        let mut c = Command::new(lockloop);
        c.args(["mutex", "1", &seconds.to_string()]);
        c
    };
    let (mut native, mut beside) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        native.push(ns_per_pair(loop_cmd(opts.seconds), opts.seconds)?);
        let watch = Watch::start(locktrace, &["--pid", &other_pid])?;
        std::thread::sleep(SETTLE);
        beside.push(ns_per_pair(loop_cmd(opts.seconds), opts.seconds)?);
        watch.stop()?;
        step(format!(
            "untraced mutex pair, round {round}: native {:.1} ns, beside watch --pid {:.1} ns",
            native[round - 1],
            beside[round - 1]
        ));
    }
    drop(other);

    let busy = Bystander::start(
        Command::new(lockloop)
            .args(["mutex", "2", "3600"])
            .stdout(Stdio::null()),
    )?;
    let busy_pid = busy.child.id().to_string();
    let (mut busy_armed, mut busy_total) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let started = Instant::now();
        let watch = Watch::start(locktrace, &["--pid", &busy_pid, "--duration", "1s"])?;
        busy_armed.push(watch.armed_s);
        watch.wait()?;
        busy_total.push(started.elapsed().as_secs_f64());
        step(format!(
            "watch --pid (busy) --duration 1s, round {round}: armed after {:.3} s, {:.3} s in all",
            busy_armed[round - 1],
            busy_total[round - 1]
        ));
    }
    drop(busy);

    Ok(AttachResults {
        run_true_untraced_s: median(&mut untraced),
        run_true_traced_s: median(&mut traced),
        watch_two_libcs_armed_s: median(&mut armed),
        watch_two_libcs_exit_s: median(&mut exit),
        bystander_native_ns: median(&mut native),
        bystander_beside_watch_pid_ns: median(&mut beside),
        busy_pid_armed_s: median(&mut busy_armed),
        busy_pid_total_s: median(&mut busy_total),
    })
}

pub fn render(r: &AttachResults, opts: &Options) -> String {
    let mut md = format!(
        "Attach, detach and bystanders: medians of {} interleaved rounds.\n\n",
        opts.rounds.max(3)
    );
    md.push_str("| measure | without locktrace | with locktrace | difference |\n");
    md.push_str("|---|---|---|---|\n");
    md.push_str(&format!(
        "| `run -- true`, wall | {:.3} s | {:.3} s | +{:.3} s |\n",
        r.run_true_untraced_s,
        r.run_true_traced_s,
        r.run_true_traced_s - r.run_true_untraced_s
    ));
    md.push_str(&format!(
        "| `watch`, two libcs: start to armed | - | {:.3} s | - |\n",
        r.watch_two_libcs_armed_s
    ));
    md.push_str(&format!(
        "| `watch`, two libcs: exit after SIGTERM | - | {:.3} s | - |\n",
        r.watch_two_libcs_exit_s
    ));
    md.push_str(&format!(
        "| untraced process's mutex pair beside `watch --pid OTHER` | {:.1} ns | {:.1} ns | {:.2}x |\n",
        r.bystander_native_ns,
        r.bystander_beside_watch_pid_ns,
        r.bystander_beside_watch_pid_ns / r.bystander_native_ns
    ));
    md.push_str(&format!(
        "| `watch --pid BUSY --duration 1s`: start to armed, whole command | - | {:.3} s, {:.3} s | - |\n",
        r.busy_pid_armed_s, r.busy_pid_total_s
    ));
    md
}

/// Wall seconds of `command` (its output discarded).
fn wall(mut command: Command) -> Result<f64> {
    let started = Instant::now();
    let status = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("cannot start the command")?;
    if !status.success() {
        bail!("{command:?} exited with {status}");
    }
    Ok(started.elapsed().as_secs_f64())
}

/// `lockloop`'s ns per pair.
fn ns_per_pair(mut command: Command, seconds: f64) -> Result<f64> {
    let out = run_bounded(&mut command, Duration::from_secs_f64(seconds + 60.0))?;
    out.trim()
        .parse()
        .with_context(|| format!("lockloop printed {out:?}"))
}

fn host_libc() -> Result<std::path::PathBuf> {
    std::fs::read_to_string("/proc/self/maps")?
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with("/libc.so.6"))
        .map(Into::into)
        .context("xtask does not run on a libc.so.6")
}

/// A process of the benchmark's own, killed when dropped.
struct Bystander {
    child: Child,
}

impl Bystander {
    fn start(command: &mut Command) -> Result<Bystander> {
        let child = command
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {command:?}"))?;
        // Time to map its libc.
        std::thread::sleep(Duration::from_millis(200));
        Ok(Bystander { child })
    }
}

impl Drop for Bystander {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `locktrace watch ARGS` until it logs "armed" (every probe attached).
struct Watch {
    child: Option<Child>,
    armed_s: f64,
}

impl Watch {
    fn start(locktrace: &Path, args: &[&str]) -> Result<Watch> {
        let started = Instant::now();
        let mut child = Command::new(locktrace)
            .arg("watch")
            .args(args)
            .args(["--format", "json", "--output", "/dev/null"])
            .env("LOCKTRACE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", locktrace.display()))?;
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("armed") {
                    let _ = tx.send(());
                }
            }
        });
        let mut watch = Watch {
            child: Some(child),
            armed_s: 0.0,
        };
        if rx.recv_timeout(TRACER_LIMIT).is_err() {
            bail!("locktrace watch {args:?} did not arm within {TRACER_LIMIT:?}");
        }
        watch.armed_s = started.elapsed().as_secs_f64();
        Ok(watch)
    }

    /// SIGTERM; the seconds until it exited.
    fn stop(mut self) -> Result<f64> {
        let mut child = self.child.take().expect("running");
        let started = Instant::now();
        signal_child(&mut child, libc::SIGTERM);
        let status = exit_within(&mut child, TRACER_LIMIT)?;
        if !status.success() {
            bail!("locktrace watch exited with {status}");
        }
        Ok(started.elapsed().as_secs_f64())
    }

    /// Waits for it to end by itself (`--duration`).
    fn wait(mut self) -> Result<()> {
        let mut child = self.child.take().expect("running");
        let status = exit_within(&mut child, TRACER_LIMIT)?;
        if !status.success() {
            bail!("locktrace watch exited with {status}");
        }
        Ok(())
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal_child(&mut child, libc::SIGKILL);
            let _ = child.wait();
        }
    }
}

/// Polls `child` every millisecond (exit times are fractions of a second).
fn exit_within(child: &mut Child, limit: Duration) -> Result<std::process::ExitStatus> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if started.elapsed() > limit {
            signal_child(child, libc::SIGKILL);
            let _ = child.wait();
            bail!("locktrace watch did not exit within {limit:?}: killed");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
