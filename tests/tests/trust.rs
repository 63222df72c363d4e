//! Trust on busy programs: nothing missed (cycles of any length, bursts),
//! nothing false (attaching while a program runs), and a tracer that stays
//! bounded and answers Ctrl-C whatever its load.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use locktrace_e2e::{
    exactly_one_inversion, fixture, has_frame, require_root, run_json, Variant, Watcher,
};

/// A fixture running in the background, killed when dropped.
struct Background(Child);

impl Background {
    fn start(name: &str, args: &[&str]) -> Self {
        let child = Command::new(fixture(name, Variant::NoFp))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Background(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn cycles_of_any_length_are_reported_once() {
    require_root();
    for n in [25usize, 50, 100] {
        let run = run_json(
            &[],
            &[
                fixture("lock_ring", Variant::NoFp).into_os_string(),
                n.to_string().into(),
            ],
        );
        let context = run.describe();
        assert_eq!(run.run.code(), 0, "{context}");
        let cycle = exactly_one_inversion(&run);
        assert_eq!(cycle.locks.len(), n, "a ring of {n} locks\n{context}");
        assert_eq!(cycle.cycle.len(), n, "{context}");
        assert_eq!(run.report.summary.lost_events, 0, "{context}");
    }
}

#[test]
fn a_burst_of_new_dependencies_loses_nothing() {
    require_root();
    let run = run_json(&[], &[fixture("lock_burst", Variant::NoFp)]);
    let context = run.describe();
    assert_eq!(run.run.code(), 0, "{context}");
    let summary = &run.report.summary;
    assert_eq!(summary.lost_events, 0, "nothing lost\n{context}");
    assert!(
        summary.dependencies >= 19_996,
        "every dependency of the burst reached the graph\n{context}"
    );
    let inversion = exactly_one_inversion(&run);
    assert!(
        inversion.cycle.iter().any(|e| has_frame(
            &e.stack,
            "lock_burst",
            "order_late",
            "BURST_INVERSION"
        )),
        "the late order is in a stack\n{context}"
    );
}

#[test]
fn a_storm_of_cycles_stays_bounded_and_answers_ctrl_c_within_a_second() {
    require_root();
    let storm = Background::start("lock_storm", &["60"]);
    let pid = storm.pid().to_string();
    let watcher = Watcher::start(&["--pid", &pid]);
    std::thread::sleep(Duration::from_secs(5));
    let (run, took) = watcher.interrupt();
    let context = run.describe();
    assert!(
        took < Duration::from_secs(1),
        "the tracer took {took:?} to stop after SIGINT\n{context}"
    );
    let summary = &run.report.summary;
    let reported = run.report.inversions().len() as u64;
    assert!(
        summary.cycles > 100,
        "a storm of cycles was seen\n{context}"
    );
    assert!(
        reported <= 25,
        "{reported} inversions reported: a storm is budgeted\n{context}"
    );
    assert!(
        summary.suppressed_findings + summary.repeated_findings > 0,
        "the rest is counted\n{context}"
    );
    drop(storm);
}

#[test]
fn attaching_to_a_busy_program_fifty_times_finds_nothing() {
    require_root();
    let busy = Background::start("busy_pairs", &["600"]);
    let pid = busy.pid().to_string();
    // Let it reach its steady state first.
    std::thread::sleep(Duration::from_millis(500));
    for attach in 1..=50 {
        let watcher = Watcher::start(&["--pid", &pid, "--duration", "1s"]);
        let run = watcher.wait();
        let context = run.describe();
        assert!(
            run.report.records.is_empty(),
            "attach {attach}: a finding on a program without lock-order problems\n{context}"
        );
        assert!(
            run.report
                .summary
                .counters
                .get("acquisitions")
                .copied()
                .unwrap_or(0)
                > 0,
            "attach {attach} saw the program's locks\n{context}"
        );
    }
}
