//! Process churn: a pool forking 1,000 short-lived workers while
//! `locktrace watch --comm --probe-all` runs. Every worker's dependency is seen, none is
//! lost, and the tracer forgets exited workers: its memory after the churn
//! is what it was after a warm-up round.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use locktrace_e2e::{comm_of, fixture, require_root, Variant, Watcher};

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

const CHURN: u32 = 1000;

#[test]
fn a_thousand_short_lived_workers() {
    require_root();
    let program = fixture("churn", Variant::NoFp);
    // Workers that lock at once: probed from their first instruction.
    let watcher = Watcher::start(&["--comm", &comm_of(&program), "--probe-all"]);
    // Two rounds of 1,000: the first warms the tracer up, the second is
    // measured.
    let per_round = CHURN;
    let mut pool = Command::new(&program)
        .args([per_round.to_string(), "2".into()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start churn");
    let mut stdin = pool.stdin.take().unwrap();
    let mut out = BufReader::new(pool.stdout.take().unwrap());
    let mut next_line = || {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        line
    };
    assert!(next_line().starts_with("pid "));
    assert_eq!(next_line().trim(), "round 1");
    // Let the tracer take in the round (and forget its workers).
    std::thread::sleep(Duration::from_secs(3));
    let before = rss_kib(watcher.pid());
    stdin.write_all(b"next\n").unwrap();
    assert_eq!(next_line().trim(), "round 2");
    std::thread::sleep(Duration::from_secs(3));
    let after = rss_kib(watcher.pid());
    stdin.write_all(b"end\n").unwrap();
    assert!(pool.wait().unwrap().success());
    let run = watcher.stop();
    eprintln!("tracer RSS: {before} KiB after round 1, {after} KiB after round 2");
    let summary = &run.report.summary;
    assert_eq!(summary.lost_events, 0, "no event lost\n{}", run.describe());
    assert!(
        summary.dependencies >= u64::from(2 * per_round),
        "one dependency per worker ({} workers): {} seen\n{}",
        2 * per_round,
        summary.dependencies,
        run.describe()
    );
    assert!(
        summary.forgotten_processes >= u64::from(2 * per_round),
        "every exited worker forgotten: {}\n{}",
        summary.forgotten_processes,
        run.describe()
    );
    assert!(run.report.records.is_empty(), "{}", run.describe());
    assert!(
        after * 100 <= before * 105,
        "tracer memory grew by more than 5% over 1,000 workers: {before} KiB -> {after} KiB"
    );
}
