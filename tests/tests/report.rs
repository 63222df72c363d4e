//! `locktrace report`: a capture written by `run --format json -o F`, read
//! back later as text, JSON and DOT (rendered by Debian's Graphviz), and
//! what it says about a damaged or newer capture.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use locktrace_e2e::{
    fixture, lock_names, names, require_root, run_json, JsonRun, Level, Lock, Record, Report, Run,
    ThreadReport, Tracer, Variant,
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
    keep(name, run)
}

/// `run`'s capture, written to a file of its own.
fn keep(name: &str, run: JsonRun) -> Capture {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(format!("{name}.jsonl"));
    fs::write(&path, &run.report.raw).expect("write the capture");
    Capture { run, dir, path }
}

/// `locktrace report ARGS...`, which must succeed.
fn report(args: &[&str], path: &Path) -> Run {
    let run = locktrace_e2e::locktrace_report(args, &[path]);
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

/// A lock as the reports name it: its name, else its address.
fn label(l: &Lock) -> String {
    l.name.clone().unwrap_or_else(|| l.addr.clone())
}

fn thread_locks(t: &ThreadReport) -> impl Iterator<Item = String> + '_ {
    t.waits_for
        .iter()
        .chain(t.holds.iter().map(|h| &h.lock))
        .map(label)
}

/// Every record of a report as its type and the locks it names (a cycle's
/// locks; the locks a deadlock's or hang's threads wait for and hold).
fn findings(report: &Report) -> Vec<(&'static str, BTreeSet<String>)> {
    report
        .records
        .iter()
        .map(|r| {
            let locks: BTreeSet<String> = match r {
                Record::LockOrderInversion(f) => f.locks.iter().map(label).collect(),
                Record::SelfDeadlock(f) => [label(&f.lock)].into(),
                Record::SameClassNesting(f) => [label(&f.held), label(&f.requested)].into(),
                Record::Deadlock(f) => f.threads.iter().flat_map(thread_locks).collect(),
                Record::LockWaitTimeout(f) => thread_locks(&f.waiter)
                    .chain(f.holders.iter().flat_map(thread_locks))
                    .collect(),
                Record::BlockedThread(t) => thread_locks(t).collect(),
                Record::Summary(_) | Record::LockGraph(_) => BTreeSet::new(),
            };
            (r.kind(), locks)
        })
        .collect()
}

/// A finding's fingerprint, as its line says.
fn fingerprint(r: &Record) -> Option<&str> {
    Some(match r {
        Record::LockOrderInversion(f) => &f.fingerprint,
        Record::SelfDeadlock(f) => &f.fingerprint,
        Record::SameClassNesting(f) => &f.fingerprint,
        Record::Deadlock(f) => &f.fingerprint,
        Record::LockWaitTimeout(f) => &f.fingerprint,
        Record::BlockedThread(_) | Record::Summary(_) | Record::LockGraph(_) => return None,
    })
}

/// Text, JSON and DOT of the capture of fixture `name` show its one
/// inversion, with the locks `expected`.
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
    check_read_back(&cap, expected);
}

/// `report` over `cap` in text, JSON and DOT reproduces its findings (the
/// same count, types and locks), every one of the `expected` locks named in
/// each, and Graphviz renders the DOT.
fn check_read_back(cap: &Capture, expected: &[&str]) {
    let original = &cap.run.report;
    let written = findings(original);
    let count = written.len();
    assert!(count > 0, "{}", cap.run.describe());
    let name = cap.path.file_stem().unwrap().to_str().unwrap();

    // Text: one headline per finding, with the time it was reported, every
    // lock, and the capture summary.
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
        count,
        "one headline per finding\n{}",
        text.describe()
    );
    assert_eq!(
        text.stdout.matches("\n  reported 20").count(),
        count,
        "each finding's time under its headline\n{}",
        text.describe()
    );
    for (_, locks) in &written {
        for lock in locks {
            assert!(text.stdout.contains(lock), "{lock}\n{}", text.describe());
        }
    }
    for lock in expected {
        assert!(text.stdout.contains(lock), "{lock}\n{}", text.describe());
    }
    let summary = format!(
        "capture {}: {} finding",
        cap.path.display(),
        original.records.len()
    );
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

    // JSON: a capture again, with the same findings and locks, in order.
    let json = report(&["--format", "json"], &cap.path);
    let again = Report::parse(&json.stdout).unwrap_or_else(|e| panic!("{e}\n{}", json.describe()));
    assert_eq!(findings(&again), written, "{}", json.describe());
    assert_eq!(again.summary.schema, 1);

    // Every finding line carries its fingerprint (the agent's alert label),
    // and `--fingerprint` selects by it.
    let finding_line = original
        .raw
        .lines()
        .find(|l| l.contains("\"fingerprint\":"))
        .expect("a finding's line");
    let line: serde_json::Value = serde_json::from_str(finding_line).unwrap();
    let fp = line["fingerprint"]
        .as_str()
        .unwrap_or_else(|| panic!("no fingerprint on {finding_line}"));
    assert_eq!(fp.len(), 16, "{fp}");
    let one = report(&["--format", "json", "--fingerprint", fp], &cap.path);
    let selected = Report::parse(&one.stdout).unwrap();
    let with_fp = |r: &Report| {
        r.records
            .iter()
            .filter(|r| fingerprint(r) == Some(fp))
            .count()
    };
    assert!(!selected.records.is_empty(), "{}", one.describe());
    assert_eq!(
        with_fp(&selected),
        selected.records.len(),
        "{}",
        one.describe()
    );
    assert_eq!(with_fp(&selected), with_fp(original), "{}", one.describe());
    let none = report(
        &["--format", "json", "--fingerprint", "0123456789abcdef"],
        &cap.path,
    );
    assert!(Report::parse(&none.stdout).unwrap().records.is_empty());

    // DOT: one digraph per finding, rendered by Graphviz, naming every lock.
    let dot_path = cap.dir.path().join(format!("{name}.dot"));
    report(
        &["--format", "dot", "-o", dot_path.to_str().unwrap()],
        &cap.path,
    );
    let dot = fs::read_to_string(&dot_path).expect("the DOT file");
    assert_eq!(dot.matches("digraph ").count(), count, "{dot}");
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
    assert_eq!(svg_text.matches("<svg ").count(), count, "{svg_text}");
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

/// A cycle of lock classes: two processes of one binary, each taking the
/// pair once, in opposite orders.
#[test]
fn class_level_capture_reads_back_as_text_json_and_dot() {
    require_root();
    let cap = capture("class_split", Variant::NoFp);
    let inversions = cap.run.report.inversions();
    assert_eq!(inversions.len(), 1, "{}", cap.run.describe());
    let inv = inversions[0];
    assert_eq!(inv.level, Level::Class, "{}", cap.run.describe());
    assert_ne!(inv.cycle[0].pid, inv.cycle[1].pid, "two processes");
    check_read_back(&cap, &["mutex_x", "mutex_y"]);
    // The text names both processes of the class-level cycle.
    let text = report(&[], &cap.path);
    for edge in &inv.cycle {
        assert!(
            text.stdout.contains(&format!("[{}]", edge.pid)),
            "process {}\n{}",
            edge.pid,
            text.describe()
        );
    }
}

/// A real deadlock (killed by its alarm after 3 s): its inversion, then
/// the deadlock of its two threads.
#[test]
fn deadlock_capture_reads_back_as_text_json_and_dot() {
    require_root();
    let run = run_json(
        &[],
        &[
            fixture("deadlock", Variant::NoFp).into_os_string(),
            "3".into(),
        ],
    );
    assert_eq!(run.report.deadlocks().len(), 1, "{}", run.describe());
    let cap = keep("deadlock", run);
    check_read_back(&cap, &["mutex_a", "mutex_b"]);
    let again =
        Report::parse(&report(&["--format", "json", "--type", "deadlock"], &cap.path).stdout)
            .unwrap();
    assert_eq!(again.deadlocks().len(), 1);
    assert_eq!(again.records.len(), 1);
}

/// A Python AB/BA (Debian's python3): locks named by their creation line.
#[test]
fn python_capture_reads_back_as_text_json_and_dot() {
    require_root();
    let script = locktrace_e2e::workspace_dir().join("tests/python/frames_ab_ba.py");
    let run = run_json(
        &[],
        &["/usr/bin/python3", script.to_str().unwrap(), "instance"],
    );
    run.run.assert_exit(0);
    let ours = locktrace_e2e::script_findings(&run, "python/frames_ab_ba.py:");
    assert_eq!(ours.len(), 1, "{}", run.describe());
    let locks: Vec<String> = lock_names(ours[0], &run).into_iter().collect();
    assert_eq!(locks.len(), 2, "{}", run.describe());
    let cap = keep("python", run);
    let expected: Vec<&str> = locks.iter().map(String::as_str).collect();
    check_read_back(&cap, &expected);
}

/// `--since`: the finding's time is when it was reported; a bound before it
/// keeps it, one after drops it, and a capture without times is dropped with
/// one warning.
#[test]
fn since_keeps_findings_reported_at_or_after_it() {
    require_root();
    let before = std::time::SystemTime::now();
    let cap = capture("ab_ba", Variant::NoFp);
    let after = std::time::SystemTime::now();
    let inversion = cap.run.report.inversions()[0].clone();
    let time = inversion.time.clone();
    // RFC 3339, UTC, milliseconds, between the run's start and end.
    let unix_ms = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
    };
    let (whole, ms) = time
        .strip_suffix('Z')
        .and_then(|t| t.split_once('.'))
        .unwrap_or_else(|| panic!("`{time}` is not YYYY-MM-DDTHH:MM:SS.mmmZ"));
    assert_eq!(ms.len(), 3, "{time}");
    let date = Command::new("date")
        .args(["-u", "-d", &format!("{}Z", whole.replace('T', " ")), "+%s"])
        .output()
        .unwrap();
    let secs: i64 = String::from_utf8_lossy(&date.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| {
            panic!(
                "date cannot read `{time}`: {}",
                String::from_utf8_lossy(&date.stderr)
            )
        });
    let reported = secs * 1000 + ms.parse::<i64>().unwrap();
    assert!(
        unix_ms(before) <= reported && reported <= unix_ms(after),
        "{time} is within the run ({} to {} ms)",
        unix_ms(before),
        unix_ms(after)
    );
    let count = cap.run.report.records.len();
    // One millisecond before it (UTC, then the same instant with an offset):
    // kept; one after: dropped.
    let shift = |ms_delta: i64, zone: &str| {
        let t = reported + ms_delta;
        let out = Command::new("date")
            .env("TZ", zone)
            .args([
                "-d",
                &format!("@{}.{:03}", t / 1000, t % 1000),
                "+%Y-%m-%dT%H:%M:%S.%3N%:z",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    for (since, kept) in [
        (shift(-1, "UTC"), count),
        (shift(-1, "Asia/Kolkata"), count),
        (time.clone(), count),
        (shift(1, "UTC"), 0),
        ("1h".to_string(), count),
    ] {
        let run = report(&["--format", "json", "--since", &since], &cap.path);
        let shown = Report::parse(&run.stdout).unwrap();
        assert_eq!(
            shown.records.len(),
            kept,
            "--since {since}\n{}",
            run.describe()
        );
        assert!(run.stderr_lines().is_empty(), "{}", run.describe());
    }
    let text = report(&["--since", &shift(1, "UTC")], &cap.path);
    assert!(
        text.stdout
            .contains(&format!("shown: 0 of {count} findings (filtered)")),
        "{}",
        text.describe()
    );

    // A capture from before findings had a time: dropped by --since, one
    // warning counting them; shown without it.
    let old: String = cap
        .run
        .report
        .raw
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("time");
            v.to_string() + "\n"
        })
        .collect();
    let old_path = cap.dir.path().join("old.jsonl");
    fs::write(&old_path, old).unwrap();
    let run = report(&["--format", "json", "--since", "1h"], &old_path);
    let shown = Report::parse(&run.stdout).unwrap_or_else(|e| panic!("{e}\n{}", run.describe()));
    assert!(shown.records.is_empty(), "{}", run.describe());
    let warnings = run.stderr_lines();
    assert_eq!(warnings.len(), 1, "{}", run.describe());
    assert!(
        warnings[0].starts_with(&format!("locktrace: warning: --since: {count} finding")),
        "{}",
        run.describe()
    );
    let all = report(&[], &old_path);
    assert!(
        all.stdout
            .contains(&format!("capture {}: {count} finding", old_path.display())),
        "{}",
        all.describe()
    );

    // A bad value: one line, exit status 2.
    let bad = Tracer::new(["report", "--since", "yesterday", old_path.to_str().unwrap()]).run();
    bad.assert_exit(2);
    let error = bad.single_error_line();
    assert!(
        error.contains("`yesterday` is neither an RFC 3339 time"),
        "{}",
        bad.describe()
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

#[test]
fn fingerprints_print_as_a_suppress_list() {
    require_root();
    // Two runs of the AB/BA fixture: two processes, one bug, one fingerprint.
    let one = capture("ab_ba", Variant::NoFp);
    let two = capture("ab_ba", Variant::NoFp);
    let fp = &one.run.report.inversions()[0].fingerprint;
    assert_eq!(fp, &two.run.report.inversions()[0].fingerprint);
    let run = Tracer::new([
        "report".to_string(),
        "--print-fingerprints".to_string(),
        one.path.display().to_string(),
        two.path.display().to_string(),
    ])
    .run();
    run.assert_exit(0);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", run.describe());
    assert!(
        lines[0].starts_with("# 1 fingerprint in ")
            && lines[0].ends_with(": paste under [suppress] in the agent's config"),
        "{}",
        run.describe()
    );
    assert_eq!(lines[1], "fingerprints = [");
    let entry = format!(
        "    \"{fp}\", # lock_order_inversion (2 findings): lock-order inversion mutex_a -> mutex_b -> mutex_a at lock_ab, lock_ba in ab_ba_nofp (pid {})",
        one.run.report.inversions()[0].pid
    );
    assert_eq!(lines[2], entry, "{}", run.describe());
    assert_eq!(lines[3], "]");

    // Filtered away: an empty list. Not with another format.
    let run = report(&["--print-fingerprints", "--type", "deadlock"], &one.path);
    assert!(
        run.stdout.ends_with("fingerprints = [\n]\n"),
        "{}",
        run.describe()
    );
    let run = Tracer::new([
        "report",
        "--print-fingerprints",
        "--format",
        "json",
        one.path.to_str().unwrap(),
    ])
    .run();
    run.assert_failed();
}

/// Debian's Chromium (installed by `cargo xtask test`), headless.
const CHROMIUM: &str = "/usr/bin/chromium";

/// Chromium, headless, on `page` with `extra` arguments, in a fresh profile
/// under `dir`, with its network log written to `dir/NAME.netlog.json`.
/// Returns its standard output and the network log.
fn chromium(dir: &Path, name: &str, page: &Path, extra: &[&str]) -> (String, String) {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: apt-get install chromium"
    );
    let profile = dir.join(format!("{name}.profile"));
    let netlog = dir.join(format!("{name}.netlog.json"));
    let out = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--log-net-log={}", netlog.display()))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {CHROMIUM}: {e}"));
    assert!(
        out.status.success(),
        "chromium {extra:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let log = fs::read_to_string(&netlog).unwrap_or_else(|e| panic!("{}: {e}", netlog.display()));
    (String::from_utf8_lossy(&out.stdout).into_owned(), log)
}

/// The addresses the page itself asked the network for, from Chromium's
/// network log: requests with an initiator (a `file://` page's is `null`);
/// Chromium's own (update checks, sign-in) have none ("not an origin").
fn page_requests(netlog: &str) -> Vec<String> {
    let log: serde_json::Value = serde_json::from_str(netlog).expect("the network log is JSON");
    let start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
        .as_u64()
        .expect("the log names URL_REQUEST_START_JOB");
    log["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["type"].as_u64() == Some(start_job))
        .filter(|e| e["params"]["initiator"].as_str() != Some("not an origin"))
        .filter_map(|e| e["params"]["url"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn html_report_shows_every_finding_in_chromium_without_the_network() {
    require_root();
    let captures = [
        capture("ab_ba", Variant::NoFp),
        capture("three_cycle", Variant::Fp),
    ];
    // A real deadlock (killed by its alarm after 3 s) and a Python AB/BA.
    let deadlock = run_json(
        &[],
        &[
            fixture("deadlock", Variant::NoFp).into_os_string(),
            "3".into(),
        ],
    );
    assert_eq!(
        deadlock.report.deadlocks().len(),
        1,
        "{}",
        deadlock.describe()
    );
    let script = locktrace_e2e::workspace_dir().join("tests/python/frames_ab_ba.py");
    let python = run_json(
        &[],
        &["/usr/bin/python3", script.to_str().unwrap(), "instance"],
    );
    python.run.assert_exit(0);
    assert!(
        !python.report.inversions().is_empty(),
        "{}",
        python.describe()
    );

    let dir = tempfile::tempdir().unwrap();
    let mut paths: Vec<PathBuf> = captures.iter().map(|c| c.path.clone()).collect();
    for (name, run) in [("deadlock", &deadlock), ("python", &python)] {
        let path = dir.path().join(format!("{name}.jsonl"));
        fs::write(&path, &run.report.raw).unwrap();
        paths.push(path);
    }
    let page = dir.path().join("report.html");
    let mut argv: Vec<String> = ["report", "--format", "html", "-o"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    argv.push(page.display().to_string());
    argv.extend(paths.iter().map(|p| p.display().to_string()));
    let run = Tracer::new(&argv).run();
    run.assert_exit(0);

    // Every finding of every capture, with its picture and its lock names.
    let runs: Vec<&JsonRun> = captures
        .iter()
        .map(|c| &c.run)
        .chain([&deadlock, &python])
        .collect();
    let findings: usize = runs.iter().map(|r| r.report.records.len()).sum();
    let (dom, netlog) = chromium(dir.path(), "dom", &page, &["--dump-dom"]);
    assert_eq!(
        dom.matches("<article ").count(),
        findings,
        "one article per finding\n{dom}"
    );
    assert_eq!(
        dom.matches("<svg ").count(),
        findings,
        "one Graphviz picture per finding\n{dom}"
    );
    for r in &runs {
        for inv in r.report.inversions() {
            for lock in lock_names(inv, r) {
                assert!(dom.contains(&lock), "{lock} is shown\n{dom}");
            }
        }
    }
    assert!(
        dom.contains("deadlock: 2 threads of deadlock_nofp"),
        "{dom}"
    );
    assert!(dom.contains("frames_ab_ba.py:"), "Python frames\n{dom}");
    assert!(dom.contains("lost events: "), "the summary\n{dom}");
    let urls = page_requests(&netlog);
    assert!(urls.is_empty(), "the page fetched {urls:?}");
    // The same check sees a page that does fetch something.
    let control = dir.path().join("control.html");
    fs::write(&control, "<p>x</p><img src=\"http://127.0.0.1:9/x.png\">").unwrap();
    let (_, control_log) = chromium(dir.path(), "control", &control, &["--dump-dom"]);
    assert_eq!(
        page_requests(&control_log),
        ["http://127.0.0.1:9/x.png"],
        "the network-log check sees a page's own request"
    );

    // A screenshot: the page renders to something that is not blank.
    let shot = dir.path().join("report.png");
    let (_, netlog) = chromium(
        dir.path(),
        "shot",
        &page,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,1600",
        ],
    );
    let png = fs::read(&shot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    assert!(
        png.len() > 30_000,
        "a page with pictures, not blank: {} bytes",
        png.len()
    );
    let urls = page_requests(&netlog);
    assert!(urls.is_empty(), "the page fetched {urls:?}");
    if let Ok(keep) = std::env::var("LOCKTRACE_KEEP_HTML") {
        fs::copy(&page, format!("{keep}.html")).unwrap();
        fs::copy(&shot, format!("{keep}.png")).unwrap();
    }
}
