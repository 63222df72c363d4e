//! `watch --cgroup DIR`: only the processes in that cgroup v2 directory are
//! traced (the filter is applied in the kernel).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use locktrace_e2e::{fixture, locktrace_bin, require_root, Variant};
use serde_json::Value;

/// The cgroup v2 hierarchy (at /sys/fs/cgroup, or /sys/fs/cgroup/unified
/// beside cgroup v1).
fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .expect("a cgroup v2 hierarchy is mounted")
}

/// A test cgroup, removed at the end (its processes have exited by then).
struct TestCgroup(PathBuf);

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs fixture `ab_ba` (in `cgroup` when given) and returns its pid.
fn run_ab_ba(cgroup: Option<&Path>) -> u32 {
    let bin = fixture("ab_ba", Variant::NoFp);
    let out = match cgroup {
        Some(dir) => Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec {}",
                dir.display(),
                bin.display()
            ))
            .output(),
        None => Command::new(&bin).output(),
    }
    .expect("run ab_ba");
    assert!(out.status.success(), "ab_ba failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("pid ")?.trim().parse().ok())
        .expect("ab_ba prints its pid")
}

#[test]
fn only_processes_in_the_cgroup_are_traced() {
    require_root();
    let cgroup = TestCgroup(cgroup2_root().join(format!("locktrace-e2e-{}", std::process::id())));
    std::fs::create_dir_all(&cgroup.0).expect("create a test cgroup");
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.jsonl");
    let mut tracer = KillOnDrop(
        Command::new(locktrace_bin())
            .args(["watch", "--cgroup"])
            .arg(&cgroup.0)
            .args(["--duration", "8s", "--format", "json", "--output"])
            .arg(&report)
            .env("LOCKTRACE_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("start locktrace"),
    );
    // Wait until the probes are live.
    let stderr = tracer.0.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("probes attached") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("locktrace attached its probes");

    let inside = run_ab_ba(Some(&cgroup.0));
    let outside = run_ab_ba(None);
    let status = tracer.0.wait().expect("locktrace exits");
    assert!(status.success(), "locktrace: {status}");

    let raw = std::fs::read_to_string(&report).unwrap_or_default();
    let pids: Vec<u64> = raw
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == "lock_order_inversion")
        .filter_map(|v| v["pid"].as_u64())
        .collect();
    assert_eq!(
        pids,
        vec![inside as u64],
        "one inversion, from the process in the cgroup ({inside}), none from the one outside ({outside})\n{raw}"
    );
}
