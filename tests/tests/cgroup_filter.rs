//! `watch --cgroup DIR`: only the processes in that cgroup v2 directory are
//! traced (the filter is applied in the kernel).

use std::path::{Path, PathBuf};
use std::process::Command;

use locktrace_e2e::{fixture, require_root, Variant, Watcher};

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
    // Returns once the probes are live.
    let watcher = Watcher::start(&["--cgroup", cgroup.0.to_str().unwrap(), "--duration", "8s"]);
    let inside = run_ab_ba(Some(&cgroup.0));
    let outside = run_ab_ba(None);
    let run = watcher.wait();
    run.assert_exit(0);

    let pids: Vec<u32> = run.report.inversions().iter().map(|f| f.pid).collect();
    assert_eq!(
        pids,
        vec![inside],
        "one inversion, from the process in the cgroup ({inside}), none from the one outside \
         ({outside})\n{}",
        run.describe()
    );
}
