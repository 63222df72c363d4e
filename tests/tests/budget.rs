//! `watch --budget PCT`: the lock traffic of a lock-heavy process is probed
//! in slices. An AB/BA inversion that repeats every second is still
//! reported; a thread holding a lock across a slice switch never yields a
//! false edge (over at least 50 switches); the summary states the duty
//! cycle.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use locktrace_e2e::{
    assert_one_inversion_of, fixture, require_root, BudgetStats, JsonRun, Variant, Watcher,
};

/// `sliced MODE SECONDS`, started; its pid once it printed it.
fn start_sliced(mode: &str, seconds: u32) -> (Child, u32) {
    let mut child = Command::new(fixture("sliced", Variant::NoFp))
        .args([mode, &seconds.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start sliced");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let pid = line
        .strip_prefix("pid ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("sliced printed {line:?}"));
    // Its output is not needed any more; it must not block on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    (child, pid)
}

/// Runs `sliced MODE SECONDS` under `watch --pid` with `budget_args`, to
/// its end.
fn traced(mode: &str, seconds: u32, budget_args: &[&str]) -> (JsonRun, u32) {
    let (mut child, pid) = start_sliced(mode, seconds);
    let pid_arg = pid.to_string();
    let mut args = vec!["--pid", pid_arg.as_str()];
    args.extend_from_slice(budget_args);
    let watcher = Watcher::start(&args);
    let status = child.wait().unwrap();
    assert!(status.success(), "sliced {mode}: {status}");
    (watcher.stop(), pid)
}

fn budget_of(run: &JsonRun) -> &BudgetStats {
    run.report
        .summary
        .budget
        .as_ref()
        .unwrap_or_else(|| panic!("the summary states the budget\n{}", run.describe()))
}

#[test]
fn a_repeating_inversion_is_reported_in_slices() {
    require_root();
    // Full probing of the hot thread costs far more than 5 %: one slice
    // of a second, then the traffic is left unprobed.
    let (run, pid) = traced("inversion", 25, &["--budget", "5"]);
    assert_one_inversion_of(&run, pid, "the sliced process", &["first", "second"]);
    let budget = budget_of(&run);
    assert!(
        budget.slices >= 1 && budget.duty_cycle < 0.5,
        "the traffic was probed in slices, less than half of the time: {budget:?}\n{}",
        run.describe()
    );
    assert_eq!(budget.budget_pct, 5.0);
}

#[test]
fn a_lock_held_across_slice_switches_never_orders_anything() {
    require_root();
    // Short slices and a budget of half the cost: several switches per
    // second, each with the holder likely inside or around `outer`.
    let (run, pid) = traced(
        "boundary",
        30,
        &["--budget", "50", "--budget-slice", "100ms"],
    );
    let budget = budget_of(&run);
    assert!(
        budget.slices >= 50,
        "at least 50 slice switches: {budget:?}\n{}",
        run.describe()
    );
    assert!(
        budget.duty_cycle > 0.0 && budget.duty_cycle < 1.0,
        "{budget:?}"
    );
    let ours: Vec<_> = run
        .report
        .records
        .iter()
        .filter(|r| r.pid() == Some(pid))
        .collect();
    assert!(
        ours.is_empty(),
        "no finding: `outer` is never held while `inner` is taken\n{}",
        run.describe()
    );
    assert!(
        run.report.summary.dependencies >= 1,
        "the real order inner -> outer was seen\n{}",
        run.describe()
    );
}
