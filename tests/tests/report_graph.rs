//! `locktrace report --graph`: the whole lock-order graph of JSON
//! captures (their `lock_graph` lines), as text and as DOT rendered by
//! Debian's Graphviz, cycles highlighted, several captures merged.

use std::fs;
use std::path::Path;
use std::process::Command;

use locktrace_e2e::{fixture, require_root, run_json, JsonRun, Run, Variant};

const DOT: &str = "/usr/bin/dot";

/// A JSON capture of fixture `name`, written to `dir`.
fn capture(name: &str, dir: &Path, file: &str) -> (JsonRun, std::path::PathBuf) {
    let run = run_json(&[], &[fixture(name, Variant::NoFp)]);
    run.assert_exit(0);
    let path = dir.join(file);
    fs::write(&path, &run.report.raw).expect("write the capture");
    (run, path)
}

fn report(args: &[&str], paths: &[&Path]) -> Run {
    locktrace_e2e::locktrace_report(args, paths)
}

#[test]
fn a_three_lock_cycle_is_drawn_red_with_every_class() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (run, path) = capture("three_cycle", dir.path(), "three.jsonl");
    let graph = run
        .report
        .graph
        .as_ref()
        .unwrap_or_else(|| panic!("the capture has a lock graph line\n{}", run.describe()));
    let classes = ["mutex_a", "mutex_b", "mutex_c"].map(|m| format!("three_cycle_nofp:{m}"));
    let mut names = graph.classes.clone();
    names.sort();
    assert_eq!(names, classes, "{}", run.describe());
    assert_eq!(graph.dependencies.len(), 3, "{}", run.describe());

    let text = report(&["--graph"], &[&path]);
    text.assert_exit(0);
    assert!(
        text.stdout.contains("3 classes, 3 dependencies, 1 cycle\n")
            && text.stdout.contains("cycle 1: 3 classes"),
        "{}",
        text.describe()
    );
    for (from, to) in [(0, 1), (1, 2), (2, 0)] {
        let line = format!("{} -> {}", classes[from], classes[to]);
        assert!(text.stdout.contains(&line), "{line}\n{}", text.describe());
    }

    let dot = report(&["--graph", "--format", "dot"], &[&path]);
    dot.assert_exit(0);
    let red = dot
        .stdout
        .lines()
        .filter(|l| l.contains(" -> ") && l.contains("color=red"))
        .count();
    assert_eq!(red, 3, "every edge of the cycle is red\n{}", dot.describe());
    let svg_path = dir.path().join("graph.svg");
    let dot_path = dir.path().join("graph.dot");
    fs::write(&dot_path, &dot.stdout).unwrap();
    let status = Command::new(DOT)
        .args(["-Tsvg", "-o"])
        .arg(&svg_path)
        .arg(&dot_path)
        .status()
        .expect("run Graphviz's dot");
    assert!(status.success(), "dot -Tsvg failed on:\n{}", dot.stdout);
    let svg = fs::read_to_string(&svg_path).unwrap();
    for class in &classes {
        assert!(svg.contains(class.as_str()), "{class} in the SVG");
    }

    let html = report(&["--graph", "--format", "html"], &[&path]);
    html.assert_exit(0);
    assert!(
        html.stdout.contains("<svg") && html.stdout.contains("Content-Security-Policy"),
        "{}",
        html.describe()
    );
}

#[test]
fn two_captures_merge_by_class_and_add_up_occurrences() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (_, first) = capture("ab_ba", dir.path(), "first.jsonl");
    let (_, second) = capture("ab_ba", dir.path(), "second.jsonl");
    let merged = report(&["--graph", "--format", "json"], &[&first, &second]);
    merged.assert_exit(0);
    let g: serde_json::Value = serde_json::from_str(merged.stdout.trim()).unwrap_or_else(|e| {
        panic!("one JSON graph ({e})\n{}", merged.describe());
    });
    let classes = g["classes"].as_array().unwrap();
    assert_eq!(classes.len(), 2, "{}", merged.describe());
    let deps = g["dependencies"].as_array().unwrap();
    assert_eq!(deps.len(), 2, "{}", merged.describe());
    for d in deps {
        assert_eq!(
            d["seen"],
            2,
            "each dependency, once per run\n{}",
            merged.describe()
        );
    }
}

#[test]
fn a_capture_without_a_graph_is_one_error_line() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (run, path) = capture("ab_ba", dir.path(), "ab_ba.jsonl");
    let without: String = (run.report.raw.lines())
        .filter(|l| !l.contains("\"type\":\"lock_graph\""))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(&path, without).unwrap();
    let r = report(&["--graph"], &[&path]);
    assert_eq!(r.code(), 1, "{}", r.describe());
    let lines = r.stderr_lines();
    assert!(
        lines.len() == 1 && lines[0].starts_with("locktrace: no lock graph in the captures"),
        "{}",
        r.describe()
    );
}
