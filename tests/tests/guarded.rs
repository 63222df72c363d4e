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
    let inversions = run.report.inversions();
    assert_eq!(inversions.len(), 1, "one note\n{context}");
    assert!(inversions[0].guarded, "{context}");
    assert_eq!(
        inversions[0].gate.as_ref().map(|g| g.label()),
        Some("mutex_g"),
        "{context}"
    );
}

#[test]
fn the_same_cycle_without_the_gate_is_a_finding() {
    require_root();
    let bin = fixture("guarded", Variant::NoFp);
    let run = run_json(&["--exit-code", "3"], &[bin.to_str().unwrap(), "nogate"]);
    let context = run.describe();
    assert_eq!(run.run.code(), 3, "{context}");
    let inversions = run.report.inversions();
    assert_eq!(inversions.len(), 1, "{context}");
    assert!(!inversions[0].guarded, "{context}");
    assert_eq!(inversions[0].gate, None, "{context}");
}
