//! Where a finding came from: every finding carries its process's cgroup v2
//! path, systemd unit and container id (`/proc/PID/cgroup`), in JSON, in the
//! text report and read back by `locktrace report`. The fixture runs in a
//! cgroup the test makes, named as systemd names a service or as docker
//! names a container's scope (systemd is not PID 1 on every test host, so
//! `systemd-run --scope` is not used).

use std::path::Path;

use locktrace_e2e::{
    fixture, require_root, run_json, Origin, TestCgroup, Tracer, Variant, Watcher, TRACER_TIMEOUT,
};

/// `sh -c` that moves itself into `cgroup`, then execs the AB/BA fixture.
fn in_cgroup(cgroup: &TestCgroup) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!(
            "echo $$ > '{}/cgroup.procs' && exec \"$@\"",
            cgroup.0.display()
        ),
        "sh".into(),
        fixture("ab_ba", Variant::NoFp).display().to_string(),
    ]
}

/// The AB/BA fixture run in `cgroup`: the JSON inversion (its own origin
/// and each edge's) says `expected`, and the text reports, the tracer's and
/// `locktrace report`'s of the capture, have the line `text_line`.
fn check(cgroup: &TestCgroup, expected: &Origin, text_line: &str) {
    let command = in_cgroup(cgroup);
    let run = run_json(&[], &command);
    run.run.assert_exit(0);
    let inversions = run.report.inversions();
    assert_eq!(inversions.len(), 1, "{}", run.describe());
    let inv = inversions[0];
    assert_eq!(inv.origin.as_ref(), Some(expected), "{}", run.describe());
    for edge in &inv.cycle {
        assert_eq!(edge.origin.as_ref(), Some(expected), "{}", run.describe());
    }

    // Read back from the capture.
    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("capture.jsonl");
    std::fs::write(&capture, &run.report.raw).unwrap();
    let replayed = report_text(&capture);
    assert!(
        replayed.contains(text_line),
        "{text_line:?} not in\n{replayed}"
    );

    // The tracer's own text report.
    let mut args = vec!["run".to_string(), "--".to_string()];
    args.extend(command);
    let text = Tracer::new(&args).run();
    text.assert_exit(0);
    let lines: Vec<&str> = text.stdout.lines().collect();
    let headline = lines
        .iter()
        .position(|l| l.starts_with("WARNING: potential deadlock"))
        .unwrap_or_else(|| panic!("no inversion\n{}", text.describe()));
    assert_eq!(
        lines.get(headline + 1).copied(),
        Some(text_line.trim_end_matches('\n')),
        "the line after the headline\n{}",
        text.describe()
    );
}

fn report_text(capture: &Path) -> String {
    let run = locktrace_e2e::locktrace_report(&[], &[capture]);
    run.assert_exit(0);
    run.stdout
}

#[test]
fn a_finding_names_its_service_unit_and_cgroup() {
    require_root();
    let cgroup = TestCgroup::named(&format!("locktrace-e2e-{}.service", std::process::id()));
    let path = cgroup.path();
    let unit = path.trim_start_matches('/').to_string();
    check(
        &cgroup,
        &Origin {
            cgroup: path.clone(),
            unit: Some(unit.clone()),
            container: None,
        },
        &format!("  in {unit} (cgroup {path})"),
    );
}

#[test]
fn a_finding_names_its_container() {
    require_root();
    // Docker's systemd driver names a container's scope `docker-ID.scope`.
    let id = format!("{:064x}", 0xe2e0_0000_u64 + u64::from(std::process::id()));
    let cgroup = TestCgroup::named(&format!("docker-{id}.scope"));
    let path = cgroup.path();
    check(
        &cgroup,
        &Origin {
            cgroup: path.clone(),
            unit: Some(format!("docker-{id}.scope")),
            container: Some(id.clone()),
        },
        &format!("  in container {} (cgroup {path})", &id[..12]),
    );
}

/// A process that exited, and was reaped, before the collector read its
/// records (a short-lived worker on a busy host): its finding still names
/// its cgroup, from the cgroup id the kernel side recorded with each
/// dependency. The collector is stopped (SIGSTOP) while the fixture runs, so
/// its records wait in the ring buffer until the process is gone.
#[test]
fn a_process_gone_before_its_records_are_read_still_names_its_cgroup() {
    require_root();
    let cgroup = TestCgroup::named(&format!(
        "locktrace-e2e-gone-{}.service",
        std::process::id()
    ));
    let path = cgroup.path();
    let watcher = Watcher::start(&[]);
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &watcher.pid().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} the tracer");
    };
    signal("-STOP");
    let command = in_cgroup(&cgroup);
    let mut child = std::process::Command::new(&command[0])
        .args(&command[1..])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start the fixture");
    let pid = child.id(); // sh execs the fixture
    let status = child.wait().expect("reap the fixture");
    signal("-CONT");
    assert!(status.success(), "the fixture: {status}");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the fixture is gone before its records are read"
    );
    assert!(
        watcher.wait_for_finding_of(pid, TRACER_TIMEOUT),
        "no finding of the fixture\n{}",
        watcher.stderr_so_far()
    );
    let run = watcher.stop();
    let inv = (run.report.inversions().into_iter())
        .find(|f| f.pid == pid)
        .unwrap_or_else(|| panic!("{}", run.describe()));
    let unit = path.trim_start_matches('/').to_string();
    let expected = Origin {
        cgroup: path.clone(),
        unit: Some(unit),
        container: None,
    };
    assert_eq!(inv.origin.as_ref(), Some(&expected), "{}", run.describe());
    for edge in &inv.cycle {
        assert_eq!(edge.origin.as_ref(), Some(&expected), "{}", run.describe());
    }
}
