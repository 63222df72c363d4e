//! Lock wrappers: locks made and taken through `lck_init()`/`lck_lock()` are
//! told apart by the wrappers' callers, for their classes and for where
//! each was taken.

use locktrace_e2e::{fixture, has_frame, require_root, run_json, Level, Variant};

fn check(variant: Variant) {
    let run = run_json(&["--exit-code", "3"], &[fixture("lock_wrapper", variant)]);
    let context = run.describe();
    assert_eq!(run.run.code(), 3, "{context}");
    let inversions = run.report.inversions();
    assert_eq!(inversions.len(), 1, "one class-level inversion\n{context}");
    let inv = inversions[0];
    assert_eq!(inv.level, Level::Class, "{context}");
    // Two classes: lck_init's call site, told apart by its callers.
    assert_eq!(inv.classes.len(), 2, "{context}");
    for class in &inv.classes {
        assert!(
            class.starts_with("init@lock_wrapper_")
                && class.contains(" (lck_init) <- lock_wrapper_"),
            "{class}: the init site in the wrapper, and the wrapper's caller\n{context}"
        );
    }
    for caller in ["(account_new)", "(ledger_new)"] {
        assert!(
            inv.classes.iter().any(|c| c.ends_with(caller)),
            "a class made by {caller}\n{context}"
        );
    }
    assert!(
        run.report.same_class_nestings().is_empty(),
        "the wrapper does not make one class of every lock\n{context}"
    );
    // Where each held lock was taken: the wrapper, then its caller at the
    // line of the call.
    let debit = inv
        .cycle
        .iter()
        .find(|e| has_frame(&e.held_stack, "lock_wrapper", "debit", "DEBIT_ACCOUNT"))
        .unwrap_or_else(|| panic!("debit's held account, taken at its line\n{context}"));
    assert_eq!(
        debit.held_stack[0].function.as_deref(),
        Some("lck_lock"),
        "the wrapper first\n{context}"
    );
    assert!(
        inv.cycle
            .iter()
            .any(|e| has_frame(&e.held_stack, "lock_wrapper", "audit", "AUDIT_LEDGER")),
        "{context}"
    );
}

#[test]
fn wrapped_locks_without_frame_pointers() {
    require_root();
    check(Variant::NoFp);
}

#[test]
fn wrapped_locks_with_frame_pointers() {
    require_root();
    check(Variant::Fp);
}
