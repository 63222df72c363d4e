//! Lock classes: the same lock in the program's code, across processes of
//! one binary (prefork workers) and across instances.

use std::collections::BTreeSet;

use locktrace_e2e::{fixture, marker_line, require_root, run_json, Variant};

#[test]
fn inversion_split_across_two_processes_is_a_class_finding() {
    require_root();
    let run = run_json(&[], &[fixture("class_split", Variant::NoFp)]);
    let context = run.describe();
    assert_eq!(run.run.code(), 0, "{context}");
    let first = run.run.printed_pid("first") as u64;
    let second = run.run.printed_pid("second") as u64;
    let inversions = run.report.records("lock_order_inversion");
    assert_eq!(
        inversions.len(),
        1,
        "one finding, at class level only\n{context}"
    );
    let inv = &inversions[0];
    assert_eq!(inv["level"], "class", "{context}");
    let pids: BTreeSet<u64> = inv["cycle"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["pid"].as_u64())
        .collect();
    assert_eq!(
        pids,
        BTreeSet::from([first, second]),
        "both processes\n{context}"
    );
    let classes: BTreeSet<String> = inv["classes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c.as_str().map(String::from))
        .collect();
    assert_eq!(
        classes,
        BTreeSet::from([
            "class_split_nofp:mutex_x".to_string(),
            "class_split_nofp:mutex_y".to_string()
        ]),
        "{context}"
    );
    // Each side's request is in the function of its process.
    let y_line = marker_line("class_split", "Y_AFTER_X");
    let x_line = marker_line("class_split", "X_AFTER_Y");
    for edge in inv["cycle"].as_array().unwrap() {
        let (function, line) = if edge["to"]["name"] == "mutex_y" {
            ("x_then_y", y_line)
        } else {
            ("y_then_x", x_line)
        };
        assert!(
            edge["stack"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["function"] == function && f["line"].as_u64() == Some(line)),
            "{context}"
        );
    }
}

#[test]
fn two_locks_of_one_class_nested_is_its_own_finding() {
    require_root();
    let run = run_json(&[], &[fixture("same_class", Variant::NoFp)]);
    let context = run.describe();
    assert_eq!(run.run.code(), 0, "{context}");
    assert!(
        run.report.records("lock_order_inversion").is_empty(),
        "not a cycle\n{context}"
    );
    let nesting = run.report.records("same_class_nesting");
    assert_eq!(nesting.len(), 1, "{context}");
    let n = &nesting[0];
    assert!(
        n["class"]
            .as_str()
            .is_some_and(|c| c.starts_with("init@same_class_nofp+") && c.contains("open_account")),
        "the class is the init call site\n{context}"
    );
    assert_ne!(n["held"]["addr"], n["requested"]["addr"], "{context}");
    let line = marker_line("same_class", "SECOND_ACCOUNT");
    assert!(
        n["stack"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["function"] == "transfer" && f["line"].as_u64() == Some(line)),
        "{context}"
    );
}
