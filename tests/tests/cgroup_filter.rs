//! `watch --cgroup DIR --probe-all`: the probes are in every process and
//! the kernel side traces only the processes in that cgroup v2 directory,
//! from their first instruction on (a program that takes its locks at once
//! is still seen). Probes only in the cgroup's processes (the default):
//! `per_process.rs`.

use locktrace_e2e::{fixture, require_root, TestCgroup, Variant, Watcher};

/// Runs fixture `ab_ba` (in `cgroup` when given) to its end and returns its
/// pid.
fn run_ab_ba(cgroup: Option<&TestCgroup>) -> u32 {
    let bin = fixture("ab_ba", Variant::NoFp);
    let out = match cgroup {
        Some(cgroup) => cgroup.command(&bin, &[]).output(),
        None => std::process::Command::new(&bin).output(),
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
    let cgroup = TestCgroup::new("filter");
    // Returns once the probes are live.
    let watcher = Watcher::start(&[
        "--cgroup",
        cgroup.0.to_str().unwrap(),
        "--probe-all",
        "--duration",
        "8s",
    ]);
    let inside = run_ab_ba(Some(&cgroup));
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
