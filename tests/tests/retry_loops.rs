//! Probes placed after the start of a compare-and-swap retry loop
//! (`sem_trywait`, `sem_post`) may fire twice in one call; the programs must
//! count each call once.

use locktrace_e2e::{fixture, require_root, run_json, Variant};

fn counters(n: u64) -> (u64, u64, u64) {
    let run = run_json(
        &[],
        &[
            fixture("sem_contended", Variant::NoFp).into_os_string(),
            n.to_string().into(),
        ],
    );
    assert_eq!(run.run.code(), 0, "{}", run.describe());
    (
        run.counter("acquisitions"),
        run.counter("releases"),
        run.counter("unmatched_releases"),
    )
}

#[test]
fn contended_semaphore_calls_are_counted_once() {
    require_root();
    let (a1, r1, u1) = counters(1_000);
    let (a2, r2, u2) = counters(21_000);
    // 2 threads x 20,000 more sem_trywait + sem_post each.
    assert_eq!(a2 - a1, 40_000, "acquisitions: {a1} then {a2}");
    assert_eq!(r2 - r1, 40_000, "releases: {r1} then {r2}");
    assert_eq!(u2, u1, "no release of a semaphore not held");
}
