//! Process groups and what a run may leave behind: stopping a group,
//! listing its members, and checking that no process and no uprobe
//! survives a tracer run.

use std::collections::BTreeSet;
use std::fs;
use std::process::{Child, Command};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use crate::tracer::Run;

/// Where the kernel lists tracefs-based uprobes.
const UPROBE_EVENTS: &[&str] = &[
    "/sys/kernel/tracing/uprobe_events",
    "/sys/kernel/debug/tracing/uprobe_events",
];

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
pub(crate) fn assert_group_gone(run: &Run) {
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

/// The lines of uprobe_events. Fails (the uprobe check must not pass for
/// want of looking) when tracefs is not readable at either place.
fn uprobe_event_lines() -> BTreeSet<String> {
    let mut lines = BTreeSet::new();
    let mut read_any = false;
    for path in UPROBE_EVENTS {
        if let Ok(text) = fs::read_to_string(path) {
            read_any = true;
            lines.extend(
                text.lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(str::to_string),
            );
        }
    }
    assert!(
        read_any,
        "cannot read {UPROBE_EVENTS:?} to check for uprobes left behind: mount tracefs \
         (`mount -t tracefs tracefs /sys/kernel/tracing`; `cargo xtask test` does)"
    );
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
pub(crate) struct ActiveRun;

impl ActiveRun {
    pub(crate) fn start() -> Self {
        let mut active = ACTIVE.lock().unwrap_or_else(|e| e.into_inner());
        if *active == 0 {
            BASELINE_UPROBES.get_or_init(uprobe_event_lines);
        }
        *active += 1;
        ActiveRun
    }

    pub(crate) fn finish(self, run: &Run) {
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

/// The cgroup v2 hierarchy (at /sys/fs/cgroup, or /sys/fs/cgroup/unified
/// beside cgroup v1).
pub fn cgroup2_root() -> std::path::PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| std::path::PathBuf::from(f[1]))
        })
        .expect("a cgroup v2 hierarchy is mounted")
}

/// A test cgroup named for `label` and this test process, removed when
/// dropped (its processes must have exited by then).
pub struct TestCgroup(pub std::path::PathBuf);

impl TestCgroup {
    pub fn new(label: &str) -> Self {
        let dir = cgroup2_root().join(format!("locktrace-e2e-{label}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create a test cgroup");
        TestCgroup(dir)
    }

    /// A test cgroup directly under the root, named `name` (a unit's or a
    /// container's name, as systemd or a runtime would make it).
    pub fn named(name: &str) -> Self {
        let dir = cgroup2_root().join(name);
        std::fs::create_dir_all(&dir).expect("create a test cgroup");
        TestCgroup(dir)
    }

    /// Its path as `/proc/PID/cgroup` shows it: `/NAME`.
    pub fn path(&self) -> String {
        let rel = self.0.strip_prefix(cgroup2_root()).expect("under the root");
        format!("/{}", rel.display())
    }

    /// `sh -c` that moves itself into this cgroup, then execs `program`
    /// with `args` (the program starts in the cgroup).
    pub fn command(&self, program: &std::path::Path, args: &[&std::ffi::OsStr]) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!(
                "echo $$ > '{}/cgroup.procs' && exec \"$@\"",
                self.0.display()
            ))
            .arg("sh")
            .arg(program)
            .args(args);
        cmd
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A fixture process, killed and waited for when dropped (a failed
/// assertion leaves none behind).
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts fixture `name` (`_nofp`) with the argument 30 (its alarm) and
/// waits, 10 s at most, until three of its threads sleep in a futex wait:
/// main in pthread_join and the two deadlocked threads.
pub fn deadlocked_fixture(name: &str) -> Killed {
    let child = Command::new(crate::fixture(name, crate::Variant::NoFp))
        .arg("30")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start the {name} fixture: {e}"));
    let child = Killed(child);
    let pid = child.0.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let in_futex = fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|t| {
                fs::read_to_string(t.path().join("syscall")).is_ok_and(|s| s.starts_with("202 "))
            })
            .count();
        if in_futex >= 3 {
            return child;
        }
        assert!(Instant::now() < deadline, "the fixture did not deadlock");
        thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_mentions() {
        assert!(mentions_number("p:uprobes/aya_123_x /x", "123"));
        assert!(!mentions_number("p:uprobes/aya_1234_x /x", "123"));
    }
}
