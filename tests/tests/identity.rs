//! Lock identity over a process's life: an exec starts a new address space
//! (`exec_ab.c` then `exec_ba.c` in one pid, non-PIE, their locks at the same
//! addresses), and priority-inheritance mutexes, whose futex word names the
//! owner, in the wait-for graph (`pi_deadlock.c`). They need root.

use locktrace_e2e::{
    blocked_threads, deadlocked_fixture, fixture, has_frame, parse_records, require_root, run_json,
    Tracer, Variant,
};

/// The addresses of lock_one and lock_two an image printed
/// (`<which> image PID: lock_one 0x.. lock_two 0x..`).
fn printed_locks(stdout: &str, which: &str) -> (String, String) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("{which} image ")))
        .unwrap_or_else(|| panic!("no `{which} image` line in\n{stdout}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    (words[4].to_string(), words[6].to_string())
}

#[test]
fn two_images_of_one_pid_share_no_lock() {
    require_root();
    let run = run_json(
        &[],
        &[
            fixture("exec_ab", Variant::NoFp).into_os_string(),
            fixture("exec_ba", Variant::NoFp).into_os_string(),
        ],
    );
    run.assert_exit(0);
    let context = run.describe();
    // The fixture's premise: one pid, the same addresses, taken both ways.
    let first = printed_locks(&run.run.stdout, "first");
    let second = printed_locks(&run.run.stdout, "second");
    assert_eq!(
        first, second,
        "both non-PIE images have lock_one and lock_two at the same addresses\n{context}"
    );
    assert!(
        run.report.summary.dependencies >= 2,
        "the tracer saw lock_one -> lock_two in the first image and lock_two -> lock_one \
         in the second\n{context}"
    );
    assert!(
        run.report.inversions().is_empty(),
        "the two images' locks are four locks: no cycle, at instance or class level\n{context}"
    );
}

#[test]
fn pi_mutex_deadlock_is_a_deadlock() {
    require_root();
    // Killed by its alarm after 4 s.
    let run = run_json(
        &[],
        &[
            fixture("pi_deadlock", Variant::NoFp).into_os_string(),
            "4".into(),
        ],
    );
    let context = run.describe();
    assert_eq!(run.run.code(), 128 + 14, "killed by SIGALRM\n{context}");
    let deadlocks = run.report.deadlocks();
    assert_eq!(deadlocks.len(), 1, "exactly one deadlock\n{context}");
    let d = deadlocks[0];
    assert_eq!(d.threads.len(), 2, "{context}");
    let mut waited: Vec<&str> = d
        .threads
        .iter()
        .map(|t| t.waits_for_name().unwrap_or("<not waiting>"))
        .collect();
    waited.sort_unstable();
    assert_eq!(waited, ["pi_a", "pi_b"], "{context}");
    for t in &d.threads {
        let other = if t.waits_for_name() == Some("pi_a") {
            "pi_b"
        } else {
            "pi_a"
        };
        assert!(
            t.holds.iter().any(|h| h.lock.label() == other),
            "the thread waiting for one PI mutex holds the other\n{context}"
        );
        let holder = *t.held_by.first().expect("held_by");
        assert!(
            d.threads.iter().any(|o| o.tid == holder && o.tid != t.tid),
            "held by the other thread of the cycle\n{context}"
        );
        let (function, marker) = if t.waits_for_name() == Some("pi_b") {
            ("lock_ab", "LOCK_B_IN_AB")
        } else {
            ("lock_ba", "LOCK_A_IN_BA")
        };
        assert!(
            has_frame(&t.stack, "pi_deadlock", function, marker),
            "{context}"
        );
    }
}

#[test]
fn snapshot_lists_both_threads_of_a_pi_deadlock() {
    require_root();
    let process = deadlocked_fixture("pi_deadlock");
    let pid = process.0.id().to_string();
    let run = Tracer::new(["snapshot", "--pid", &pid, "--format", "json"]).run();
    let context = run.describe();
    assert_eq!(run.code(), 0, "{context}");
    let records = parse_records(&run.stdout).unwrap_or_else(|e| panic!("{e}\n{context}"));
    let blocked = blocked_threads(&records);
    assert_eq!(blocked.len(), 2, "both threads of the deadlock\n{context}");
    let waiting = blocked
        .iter()
        .find(|t| t.waits_for.is_some())
        .unwrap_or_else(|| panic!("the thread asleep in FUTEX_LOCK_PI\n{context}"));
    assert_eq!(waiting.waits_for_name(), Some("pi_b"), "{context}");
    let refused = blocked
        .iter()
        .find(|t| t.refused_lock)
        .unwrap_or_else(|| panic!("the thread glibc parked after EDEADLK\n{context}"));
    assert_eq!(
        waiting.held_by,
        [refused.tid],
        "pi_b is held by the parked thread\n{context}"
    );
    assert!(
        has_frame(&refused.stack, "pi_deadlock", "lock_ba", "LOCK_A_IN_BA"),
        "the parked thread is in its pthread_mutex_lock(&pi_a)\n{context}"
    );
}
