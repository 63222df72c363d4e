//! Lock classes: the same lock in the program's code, across processes of
//! one binary (prefork workers) and across instances.

use std::collections::BTreeSet;

use locktrace_e2e::{fixture, has_frame, require_root, run_json, Level, Variant};

#[test]
fn inversion_split_across_two_processes_is_a_class_finding() {
    require_root();
    let run = run_json(&[], &[fixture("class_split", Variant::NoFp)]);
    let context = run.describe();
    assert_eq!(run.run.code(), 0, "{context}");
    let first = run.run.printed_pid("first");
    let second = run.run.printed_pid("second");
    let inversions = run.report.inversions();
    assert_eq!(
        inversions.len(),
        1,
        "one finding, at class level only\n{context}"
    );
    let inv = inversions[0];
    assert_eq!(inv.level, Level::Class, "{context}");
    let pids: BTreeSet<u32> = inv.cycle.iter().map(|e| e.pid).collect();
    assert_eq!(
        pids,
        BTreeSet::from([first, second]),
        "both processes\n{context}"
    );
    let classes: BTreeSet<&str> = inv.classes.iter().map(String::as_str).collect();
    assert_eq!(
        classes,
        BTreeSet::from(["class_split_nofp:mutex_x", "class_split_nofp:mutex_y"]),
        "{context}"
    );
    // Each side's request is in the function of its process.
    for edge in &inv.cycle {
        let (function, marker) = if edge.to.name.as_deref() == Some("mutex_y") {
            ("x_then_y", "Y_AFTER_X")
        } else {
            ("y_then_x", "X_AFTER_Y")
        };
        assert!(
            has_frame(&edge.stack, "class_split", function, marker),
            "{context}"
        );
    }
}

/// The same source built twice: with one build-id (built alike in two
/// directories) its processes share lock classes, and the two orders are a
/// class-level inversion; with two build-ids (a new version deployed beside
/// the old one, the same file name) they are other code, and the two orders
/// are no finding.
#[test]
fn the_same_globals_of_two_builds_are_other_classes() {
    require_root();
    let source = locktrace_e2e::fixture_source("class_split");
    let dir = tempfile::tempdir().unwrap();
    let build = |sub: &str, build_id: Option<&str>| {
        let out = dir.path().join(sub).join("class_split_b");
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        // From the source's directory, by its file name: the debug info
        // (and so the build-id) is the same for builds alike.
        let mut cc = std::process::Command::new("gcc");
        cc.current_dir(source.parent().unwrap())
            .args(["-g", "-O0", "-pthread", "-o"])
            .arg(&out)
            .arg(source.file_name().unwrap());
        if let Some(id) = build_id {
            cc.arg(format!("-Wl,--build-id=0x{id}"));
        }
        assert!(cc.status().unwrap().success(), "{cc:?}");
        out.to_str().unwrap().to_string()
    };
    let old = build("old", None);
    let alike = build("alike", None);
    let new = build("new", Some("00112233445566778899aabbccddeeff00112233"));
    for (second, expected) in [(&alike, 1), (&new, 0)] {
        let script = format!("{old} x_then_y && {second} y_then_x");
        let run = run_json(&[], &["sh", "-c", &script]);
        let context = run.describe();
        assert_eq!(run.run.code(), 0, "{context}");
        let inversions = run.report.inversions();
        assert_eq!(
            inversions.len(),
            expected,
            "{second}: one order in each process\n{context}"
        );
        if let Some(inv) = inversions.first() {
            assert_eq!(inv.level, Level::Class, "{context}");
        }
    }
}

#[test]
fn locks_of_one_class_nested_both_ways_is_a_warning_after_a_note() {
    require_root();
    let run = run_json(
        &["--exit-code", "3"],
        &[fixture("same_class", Variant::NoFp)],
    );
    let context = run.describe();
    assert_eq!(
        run.run.code(),
        3,
        "a warning counts for --exit-code\n{context}"
    );
    assert!(run.report.inversions().is_empty(), "not a cycle\n{context}");
    let nesting = run.report.same_class_nestings();
    assert_eq!(nesting.len(), 2, "a note, then a warning\n{context}");
    let (note, warning) = (nesting[0], nesting[1]);
    for n in [note, warning] {
        assert!(
            n.class.starts_with("init@same_class_nofp+") && n.class.contains("open_account"),
            "the class is the init call site\n{context}"
        );
        assert_ne!(n.held.addr, n.requested.addr, "{context}");
        assert!(
            has_frame(&n.stack, "same_class", "transfer", "SECOND_ACCOUNT"),
            "{context}"
        );
    }
    // The first transfer locks upwards: one order only so far, a note.
    assert!(note.note && note.opposite.is_none(), "{context}");
    assert!(
        u64::from_str_radix(note.held.addr.trim_start_matches("0x"), 16).unwrap()
            < u64::from_str_radix(note.requested.addr.trim_start_matches("0x"), 16).unwrap()
    );
    // The second locks downwards: a warning naming the first.
    assert!(!warning.note, "{context}");
    let opposite = warning.opposite.as_ref().expect("the other order");
    assert_eq!(
        (&opposite.from.addr, &opposite.to.addr),
        (&note.held.addr, &note.requested.addr),
        "{context}"
    );
    assert_eq!(run.report.summary.same_class_notes, 1, "{context}");
}

#[test]
fn an_array_of_one_class_nested_in_index_order_is_only_a_note() {
    require_root();
    let run = run_json(
        &["--exit-code", "3"],
        &[fixture("lock_array", Variant::NoFp)],
    );
    let context = run.describe();
    assert_eq!(
        run.run.code(),
        0,
        "a note does not count for --exit-code\n{context}"
    );
    assert!(run.report.inversions().is_empty(), "{context}");
    let nesting = run.report.same_class_nestings();
    assert_eq!(nesting.len(), 1, "{context}");
    assert!(
        nesting[0].note && nesting[0].opposite.is_none(),
        "{context}"
    );
    assert!(
        nesting[0].class.contains("main"),
        "the class is the init loop in main\n{context}"
    );
    assert_eq!(run.report.summary.same_class_notes, 1, "{context}");
}
