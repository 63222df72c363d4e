//! Guarded cycles: opposite orders of two locks always taken under a common
//! gate lock cannot deadlock. Reported as a note, not counted as a finding.

use locktrace_e2e::{fixture, require_root, run_json, Variant};

#[test]
fn cycle_under_a_gate_lock_is_a_note() {
    require_root();
    let bin = fixture("guarded", Variant::NoFp);
    let run = run_json(&["--exit-code", "3"], &[bin.to_str().unwrap(), "gate"]);
    let context = run.describe();
    // Only a note: the exit status is the command's.
    assert_eq!(run.run.code(), 0, "{context}");
    let raw = run.report.records("lock_order_inversion");
    assert_eq!(raw.len(), 1, "one note\n{context}");
    assert_eq!(raw[0]["guarded"], true, "{context}");
    assert_eq!(raw[0]["gate"]["name"], "mutex_g", "{context}");
}

#[test]
fn the_same_cycle_without_the_gate_is_a_finding() {
    require_root();
    let bin = fixture("guarded", Variant::NoFp);
    let run = run_json(&["--exit-code", "3"], &[bin.to_str().unwrap(), "nogate"]);
    let context = run.describe();
    assert_eq!(run.run.code(), 3, "{context}");
    let raw = run.report.records("lock_order_inversion");
    assert_eq!(raw.len(), 1, "{context}");
    assert_eq!(raw[0]["guarded"], false, "{context}");
}
