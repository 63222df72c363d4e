//! `locktrace report`: a capture written by `run --format json -o F`, read
//! back later as text, JSON and DOT (rendered by Debian's Graphviz), and
//! what it says about a damaged or newer capture.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use locktrace_e2e::{
    fixture, lock_names, names, require_root, run_json, JsonRun, Report, Run, Tracer, Variant,
};

/// Graphviz's renderer (Debian's `graphviz`, installed by `cargo xtask test`).
const DOT: &str = "/usr/bin/dot";

/// A fixture's capture, kept in a directory of the test's own.
struct Capture {
    run: JsonRun,
    dir: tempfile::TempDir,
    path: PathBuf,
}

fn capture(name: &str, variant: Variant) -> Capture {
    let run = run_json(&[], &[fixture(name, variant)]);
    run.assert_exit(0);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(format!("{name}.jsonl"));
    fs::write(&path, &run.report.raw).expect("write the capture");
    Capture { run, dir, path }
}

/// `locktrace report ARGS...`, which must succeed.
fn report(args: &[&str], path: &Path) -> Run {
    let mut argv: Vec<String> = vec!["report".into()];
    argv.extend(args.iter().map(|a| a.to_string()));
    argv.push(path.display().to_string());
    let run = Tracer::new(&argv).run();
    run.assert_exit(0);
    run
}

/// The lock names of every inversion of a report.
fn inversion_locks(report: &Report, run: &JsonRun) -> BTreeSet<String> {
    report
        .inversions()
        .iter()
        .flat_map(|f| lock_names(f, run))
        .collect()
}

/// Text, JSON and DOT of the capture of fixture `name` show its findings,
/// with the locks `expected`.
fn check_capture(name: &str, variant: Variant, expected: &[&str]) {
    require_root();
    let cap = capture(name, variant);
    let original = &cap.run.report;
    let context = cap.run.describe();
    assert_eq!(original.inversions().len(), 1, "{context}");
    assert_eq!(
        inversion_locks(original, &cap.run),
        names(expected),
        "{context}"
    );
    let findings = original.records.len();

    // Text: one headline per finding, every lock, and the capture summary.
    let text = report(&[], &cap.path);
    assert!(text.stderr_lines().is_empty(), "{}", text.describe());
    let headlines = text
        .stdout
        .lines()
        .filter(|l| {
            ["WARNING: ", "NOTE: ", "ERROR: "]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .count();
    assert_eq!(
        headlines,
        findings,
        "one headline per finding\n{}",
        text.describe()
    );
    let headline = format!("lock-order inversion between {} locks", expected.len());
    assert!(text.stdout.contains(&headline), "{}", text.describe());
    for lock in expected {
        assert!(text.stdout.contains(lock), "{lock}\n{}", text.describe());
    }
    let summary = format!("capture {}: {} finding", cap.path.display(), findings);
    assert!(
        text.stdout.contains(&summary),
        "{summary}\n{}",
        text.describe()
    );
    assert!(
        text.stdout
            .contains(&format!("lost events: {}", original.summary.lost_events)),
        "{}",
        text.describe()
    );

    // JSON: a capture again, with the same findings and locks.
    let json = report(&["--format", "json"], &cap.path);
    let again = Report::parse(&json.stdout).unwrap_or_else(|e| panic!("{e}\n{}", json.describe()));
    assert_eq!(again.records.len(), findings, "{}", json.describe());
    assert_eq!(inversion_locks(&again, &cap.run), names(expected));
    assert_eq!(again.summary.schema, 1);

    // DOT: one digraph per finding, rendered by Graphviz, naming every lock.
    let dot_path = cap.dir.path().join(format!("{name}.dot"));
    report(
        &["--format", "dot", "-o", dot_path.to_str().unwrap()],
        &cap.path,
    );
    let dot = fs::read_to_string(&dot_path).expect("the DOT file");
    assert_eq!(dot.matches("digraph ").count(), findings, "{dot}");
    let svg = Command::new(DOT)
        .arg("-Tsvg")
        .arg(&dot_path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {DOT} (apt-get install graphviz): {e}"));
    let svg_text = String::from_utf8_lossy(&svg.stdout);
    assert!(
        svg.status.success() && svg.stderr.is_empty(),
        "dot -Tsvg: {}\n{}\n{dot}",
        svg.status,
        String::from_utf8_lossy(&svg.stderr)
    );
    for lock in expected {
        assert!(svg_text.contains(lock), "{lock} in the SVG\n{dot}");
    }
}

#[test]
fn ab_ba_capture_reads_back_as_text_json_and_dot() {
    check_capture("ab_ba", Variant::NoFp, &["mutex_a", "mutex_b"]);
}

#[test]
fn three_cycle_capture_reads_back_as_text_json_and_dot() {
    check_capture(
        "three_cycle",
        Variant::Fp,
        &["mutex_a", "mutex_b", "mutex_c"],
    );
}

#[test]
fn a_garbage_line_is_skipped_with_a_warning_and_a_newer_schema_refused() {
    require_root();
    let cap = capture("ab_ba", Variant::NoFp);
    let raw = &cap.run.report.raw;
    let lines: Vec<&str> = raw.lines().collect();
    let garbage_at = 2;
    let mut damaged: Vec<&str> = lines.clone();
    damaged.insert(garbage_at - 1, "{\"type\": garbage");
    let damaged_path = cap.dir.path().join("damaged.jsonl");
    fs::write(&damaged_path, damaged.join("\n") + "\n").unwrap();
    let run = report(&["--format", "json"], &damaged_path);
    let warnings = run.stderr_lines();
    assert_eq!(warnings.len(), 1, "{}", run.describe());
    assert!(
        warnings[0].starts_with("locktrace: warning: ")
            && warnings[0].contains(&format!("line {garbage_at} is not JSON")),
        "{}",
        run.describe()
    );
    let again = Report::parse(&run.stdout).unwrap_or_else(|e| panic!("{e}\n{}", run.describe()));
    assert_eq!(again.records.len(), cap.run.report.records.len());

    let newer = raw.replace("\"schema\":1", "\"schema\":2");
    assert_ne!(&newer, raw, "the summary line carries the schema");
    let newer_path = cap.dir.path().join("newer.jsonl");
    fs::write(&newer_path, newer).unwrap();
    let run = Tracer::new(["report".to_string(), newer_path.display().to_string()]).run();
    run.assert_failed();
    let error = run.single_error_line();
    assert!(error.contains("newer locktrace"), "{}", run.describe());
    assert!(run.stdout.is_empty(), "{}", run.describe());
}
