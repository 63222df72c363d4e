//! The record types against locktrace's real output (no root needed): one
//! line of each record type, captured from the release build on the
//! fixtures, stacks shortened to keep them small.

use super::*;

const SUMMARY: &str = r#"{"type":"summary","events":14,"dependencies":2,"locks":2,"cycles":1,"lost_events":0,"truncated_cycle_searches":0,"counters":{"acquisitions":7},"contention":[],"forgotten_processes":0,"forgotten_dependencies":0,"library_same_class_nesting":0,"handoff_cycles":0,"probed_files":["/usr/lib/x86_64-linux-gnu/libc.so.6"],"duration_s":0.27}"#;

/// `SUMMARY` with `from` replaced by `to`, parsed as one record.
fn summary_with(from: &str, to: &str) -> Result<Vec<Record>, String> {
    assert!(SUMMARY.contains(from), "{from}");
    parse_records(&SUMMARY.replacen(from, to, 1))
}

#[test]
fn a_new_field_is_an_error() {
    assert!(summary_with(r#""cycles":1,"#, r#""cycles":1,"new":2,"#).is_err());
}

#[test]
fn a_missing_field_is_an_error() {
    assert!(summary_with(r#""handoff_cycles":0,"#, "").is_err());
}

#[test]
fn an_unknown_record_type_is_an_error() {
    assert!(parse_records(r#"{"type":"something_new","id":1}"#).is_err());
}

#[test]
fn the_summary_is_last_and_only_once() {
    let report = Report::parse(&format!("{SUMMARY}\n")).unwrap();
    assert!(report.records.is_empty());
    assert_eq!(report.summary.counters["acquisitions"], 7);
    assert!(Report::parse("").is_err());
    assert!(Report::parse(&format!("{SUMMARY}\n{SUMMARY}\n")).is_err());
}
