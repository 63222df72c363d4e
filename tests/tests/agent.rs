//! `locktrace agent` with the real components around it: Debian's
//! Alertmanager (its own config and data directory, on loopback) notifying
//! a webhook receiver run by the test, and the agent's /metrics endpoint.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use locktrace_e2e::records::{Level, Record};
use locktrace_e2e::services::{
    counter, free_port, http_get, http_get_with_headers, poll, wait_ready, Alertmanager, Receiver,
};
use locktrace_e2e::tracer::{Tracer, Watcher};
use locktrace_e2e::{
    comm_of, copy_executable, fixture, one_inversion_of, require_root, workspace_dir, Variant,
};
use serde_json::Value;

/// A config error stops the agent at once, in one line naming the key and
/// its line.
#[test]
fn bad_config_is_one_line_naming_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("locktrace.toml");
    std::fs::write(&config, "[trace]\nhang_threshold = \"5y\"\n").unwrap();
    let run = Tracer::new(["agent", "--config", config.to_str().unwrap()]).run();
    assert_ne!(run.code(), 0, "{}", run.describe());
    let lines = run.stderr_lines();
    assert_eq!(lines.len(), 1, "one line\n{}", run.describe());
    let expected = format!(
        "locktrace: config {}:2: key `trace.hang_threshold`:",
        config.display()
    );
    assert!(lines[0].starts_with(&expected), "{}", run.describe());
}

/// An AB/BA inversion while the agent runs: exactly one `LockOrderInversion`
/// notification reaches Alertmanager's webhook receiver, with the
/// fingerprint, service and summary, and /metrics counts it.
#[test]
fn inversion_becomes_one_alertmanager_notification() {
    require_root();
    let receiver = Receiver::start();
    let alertmanager = Alertmanager::start(&receiver.url(), free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &metrics, &alertmanager.url);
    let program = fixture("ab_ba", Variant::Fp);
    let comm = comm_of(&program);
    let agent = Watcher::start_agent(&["--config", &config, "--comm", &comm], &[]);
    wait_ready(&metrics);
    // The live report before any finding: a page, and none in it.
    let (status, _, empty_page) = http_get_with_headers(&metrics, "/report");
    assert_eq!(status, 200, "{empty_page}");
    assert!(empty_page.contains("0 findings shown"), "{empty_page}");
    assert_eq!(empty_page.matches("<article ").count(), 0, "{empty_page}");
    // `systemctl reload` sends SIGHUP: the agent reloads its config and
    // keeps tracing instead of dying of the signal's default.
    // SAFETY: kill(2) on the test's own unreaped child.
    assert_eq!(unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) }, 0);
    agent.wait_for_log(&["SIGHUP"], Duration::from_secs(5));

    let out = Command::new(&program).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while receiver.notifications().is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    // Anything more would come within Alertmanager's group_wait (1s).
    thread::sleep(Duration::from_secs(3));
    let notifications = receiver.notifications();
    let (status, text) = http_get(&metrics, "/metrics");
    let health = http_get(&metrics, "/healthz");
    let page = http_get_with_headers(&metrics, "/report");
    let run = agent.stop();
    // For the README's examples.
    eprintln!(
        "notifications:\n{}\n/metrics:\n{text}",
        serde_json::to_string_pretty(&notifications).unwrap()
    );

    let inversions: Vec<_> = run
        .report
        .records
        .iter()
        .filter(|r| matches!(r, Record::LockOrderInversion(_)))
        .collect();
    assert_eq!(inversions.len(), 1, "{}", run.run.describe());
    assert_eq!(
        notifications.len(),
        1,
        "one notification\n{notifications:#?}\n{}\n{}",
        alertmanager.log(),
        run.run.describe()
    );
    let alerts = notifications[0]["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 1, "{notifications:#?}");
    let labels = &alerts[0]["labels"];
    assert_eq!(labels["alertname"], "LockOrderInversion", "{labels}");
    assert_eq!(labels["severity"], "warning", "{labels}");
    assert_eq!(labels["host"], "test-host", "{labels}");
    // The test runs in no systemd service or container: the command name.
    assert_eq!(labels["service"], comm.as_str(), "{labels}");
    let fingerprint = labels["fingerprint"].as_str().unwrap();
    assert!(
        fingerprint.len() == 16 && fingerprint.bytes().all(|b| b.is_ascii_hexdigit()),
        "{labels}"
    );
    let summary = alerts[0]["annotations"]["summary"].as_str().unwrap();
    for needle in ["mutex_a", "mutex_b", "lock_ab", "lock_ba", comm.as_str()] {
        assert!(summary.contains(needle), "{needle} in {summary:?}");
    }
    assert_eq!(status, 200, "{text}");
    assert!(
        counter(&text, "locktrace_findings_total{type=\"inversion\"}") >= 1.0,
        "{text}"
    );
    assert_eq!(counter(&text, "locktrace_alerts_sent_total"), 1.0, "{text}");
    assert!(counter(&text, "locktrace_events_total") > 0.0, "{text}");
    assert_eq!(health.0, 200, "{}", health.1);

    // /report: the HTML page of `locktrace report` for the live findings,
    // under the same Content-Security-Policy: the inversion with its locks,
    // the time its JSON line gives and its fingerprint.
    let (status, headers, body) = page;
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {name} header in {headers:?}"))
    };
    assert_eq!(status, 200, "{body}");
    assert!(
        header("content-type").starts_with("text/html"),
        "{headers:?}"
    );
    let csp = "default-src 'none'; style-src 'unsafe-inline'; img-src data:";
    assert_eq!(header("content-security-policy"), csp);
    assert!(
        body.starts_with("<!DOCTYPE html>")
            && body.contains(&format!("content=\"{csp}\""))
            && !body.contains("<script"),
        "{body}"
    );
    assert_eq!(
        body.matches("<article ").count(),
        run.report.records.len(),
        "{body}"
    );
    let Record::LockOrderInversion(inv) = inversions[0] else {
        unreachable!()
    };
    for needle in [
        "mutex_a",
        "mutex_b",
        "lock_ab",
        "lock_ba",
        inv.time.as_str(),
        inv.fingerprint.as_str(),
        "the live findings of locktrace agent on test-host",
        "lost events: ",
    ] {
        assert!(body.contains(needle), "{needle} in /report\n{body}");
    }
}

/// Alertmanager is down when the inversion is found: the alert is queued,
/// the failed attempts counted, and once Alertmanager starts the alert
/// arrives. Meanwhile the agent told systemd (a `NOTIFY_SOCKET` of the
/// test's) it is ready and pinged the watchdog.
#[test]
fn alerts_wait_for_alertmanager_and_systemd_is_notified() {
    require_root();
    let receiver = Receiver::start();
    let port = free_port();
    let metrics = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &metrics, &format!("http://127.0.0.1:{port}"));
    let notify = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&notify).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // Its own copy of the fixture: a name no other test's agent traces.
    let program = dir.path().join("ab_ba_queued");
    copy_executable(&fixture("ab_ba", Variant::Fp), &program);
    let comm = comm_of(&program);
    let agent = Watcher::start_agent(
        &["--config", &config, "--comm", &comm],
        &[
            ("NOTIFY_SOCKET", notify.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    wait_ready(&metrics);
    let mut messages = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(messages.iter().any(|m: &String| m.starts_with("READY=1"))
        && messages.iter().any(|m| m == "WATCHDOG=1"))
    {
        assert!(
            Instant::now() < deadline,
            "sd_notify messages: {messages:?}"
        );
        let mut buf = [0; 256];
        if let Ok(n) = socket.recv(&mut buf) {
            messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }

    let out = Command::new(&program).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while counter(
        &http_get(&metrics, "/metrics").1,
        "locktrace_alerts_failed_total",
    ) < 1.0
    {
        assert!(Instant::now() < deadline, "no failed attempt counted");
        thread::sleep(Duration::from_millis(100));
    }
    let alertmanager = Alertmanager::start(&receiver.url(), port);
    let deadline = Instant::now() + Duration::from_secs(40);
    while receiver.notifications().is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    thread::sleep(Duration::from_secs(2));
    let notifications = receiver.notifications();
    let text = http_get(&metrics, "/metrics").1;
    let run = agent.stop();
    assert_eq!(
        notifications.len(),
        1,
        "one notification\n{notifications:#?}\n{}\n{}",
        alertmanager.log(),
        run.run.describe()
    );
    let labels = &notifications[0]["alerts"][0]["labels"];
    assert_eq!(labels["alertname"], "LockOrderInversion", "{labels}");
    assert_eq!(labels["service"], comm.as_str(), "{labels}");
    assert_eq!(counter(&text, "locktrace_alerts_sent_total"), 1.0, "{text}");
    assert!(
        counter(&text, "locktrace_alerts_failed_total") >= 1.0,
        "{text}"
    );
    assert_eq!(
        counter(&text, "locktrace_alerts_dropped_total"),
        0.0,
        "{text}"
    );
}

/// A real deadlock: a critical `Deadlock` alert, resolved once the
/// deadlocked process is killed.
#[test]
fn deadlock_alert_is_resolved_when_the_process_is_killed() {
    require_root();
    let receiver = Receiver::start();
    let alertmanager = Alertmanager::start(&receiver.url(), free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &metrics, &alertmanager.url);
    let program = dir.path().join("deadlock_agent");
    copy_executable(&fixture("deadlock", Variant::Fp), &program);
    let comm = comm_of(&program);
    let agent = Watcher::start_agent(
        &[
            "--config",
            &config,
            "--comm",
            &comm,
            "--hang-threshold",
            "60s",
        ],
        &[],
    );
    wait_ready(&metrics);
    let mut deadlocked = Command::new(&program)
        .arg("30")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadlock = |status: &str| {
        receiver
            .notifications()
            .into_iter()
            .find(|n| n["status"] == status && n["commonLabels"]["alertname"] == "Deadlock")
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while deadlock("firing").is_none() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    let firing = deadlock("firing");
    let _ = deadlocked.kill();
    let _ = deadlocked.wait();
    let deadline = Instant::now() + Duration::from_secs(20);
    while firing.is_some() && deadlock("resolved").is_none() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    let resolved = deadlock("resolved");
    let all = receiver.notifications();
    let run = agent.stop();
    let firing = firing.unwrap_or_else(|| {
        panic!(
            "no Deadlock alert\n{all:#?}\n{}\n{}",
            alertmanager.log(),
            run.run.describe()
        )
    });
    assert_eq!(firing["commonLabels"]["severity"], "critical", "{firing}");
    assert_eq!(firing["commonLabels"]["service"], comm.as_str(), "{firing}");
    let resolved = resolved.unwrap_or_else(|| {
        panic!(
            "the Deadlock alert was not resolved\n{all:#?}\n{}",
            alertmanager.log()
        )
    });
    assert_eq!(
        resolved["commonLabels"]["fingerprint"], firing["commonLabels"]["fingerprint"],
        "{resolved}"
    );
}

/// Alertmanager keeps alerts in memory: stopped and restarted (a fresh
/// instance, its data gone) while an inversion's alert is active, it gets
/// the alert again from the agent's re-sends, with its first `startsAt`,
/// and notifies the receiver again. The attempts made while it was down are
/// counted as failed.
#[test]
fn active_alert_is_sent_again_to_a_restarted_alertmanager() {
    require_root();
    let receiver = Receiver::start();
    let port = free_port();
    let alertmanager = Alertmanager::start(&receiver.url(), port);
    let metrics = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_with(
        dir.path(),
        &metrics,
        &alertmanager.url,
        "resend_interval = \"1s\"\n",
    );
    let program = dir.path().join("ab_ba_resent");
    copy_executable(&fixture("ab_ba", Variant::Fp), &program);
    let comm = comm_of(&program);
    let agent = Watcher::start_agent(&["--config", &config, "--comm", &comm], &[]);
    wait_ready(&metrics);
    let out = Command::new(&program).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while receiver.notifications().is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    let first = receiver.notifications();
    let before = http_get(&metrics, "/metrics").1;
    drop(alertmanager);
    // Re-sends fail while it is down.
    let deadline = Instant::now() + Duration::from_secs(20);
    while counter(
        &http_get(&metrics, "/metrics").1,
        "locktrace_alerts_failed_total",
    ) < 1.0
        && Instant::now() < deadline
    {
        thread::sleep(Duration::from_millis(100));
    }
    let down = http_get(&metrics, "/metrics").1;
    let restarted = Alertmanager::start(&receiver.url(), port);
    let deadline = Instant::now() + Duration::from_secs(30);
    while receiver.notifications().len() < 2 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    let all = receiver.notifications();
    let (_, listed) = http_get(&restarted.url["http://".len()..], "/api/v2/alerts");
    let after = http_get(&metrics, "/metrics").1;
    let run = agent.stop();
    assert_eq!(
        first.len(),
        1,
        "one notification before the restart\n{first:#?}\n{}",
        run.run.describe()
    );
    assert_eq!(
        counter(&before, "locktrace_alerts_failed_total"),
        0.0,
        "{before}"
    );
    assert!(
        counter(&down, "locktrace_alerts_failed_total") >= 1.0,
        "re-sends to the stopped Alertmanager counted as failed\n{down}"
    );
    assert_eq!(
        all.len(),
        2,
        "the alert again after the restart\n{all:#?}\n{}\n{}",
        restarted.log(),
        run.run.describe()
    );
    let (one, two) = (&all[0]["alerts"][0], &all[1]["alerts"][0]);
    assert_eq!(two["labels"]["alertname"], "LockOrderInversion", "{two}");
    assert_eq!(two["status"], "firing", "{two}");
    assert_eq!(
        two["labels"]["fingerprint"], one["labels"]["fingerprint"],
        "{two}"
    );
    assert_eq!(
        two["startsAt"], one["startsAt"],
        "its first startsAt\n{all:#?}"
    );
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert!(
        counter(&after, "locktrace_alerts_sent_total") >= 2.0,
        "{after}"
    );
    assert_eq!(
        counter(&after, "locktrace_alerts_dropped_total"),
        0.0,
        "{after}"
    );
}

/// A hang whose wait ends while its process lives on: its
/// `LockWaitTimeout` alert is resolved then, not when the process exits.
#[test]
fn hang_alert_is_resolved_when_the_wait_ends() {
    require_root();
    let receiver = Receiver::start();
    let alertmanager = Alertmanager::start(&receiver.url(), free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &metrics, &alertmanager.url);
    let program = dir.path().join("hang_agent");
    copy_executable(&fixture("hang", Variant::Fp), &program);
    let comm = comm_of(&program);
    let agent = Watcher::start_agent(
        &[
            "--config",
            &config,
            "--comm",
            &comm,
            "--hang-threshold",
            "1s",
        ],
        &[],
    );
    wait_ready(&metrics);
    // Holds mutex_a 4 s while another thread waits for it, then lives 60 s.
    let mut hung = Command::new(&program)
        .args(["4", "60"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let hang = |status: &str| {
        receiver
            .notifications()
            .into_iter()
            .find(|n| n["status"] == status && n["commonLabels"]["alertname"] == "LockWaitTimeout")
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while hang("resolved").is_none() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    let still_running = hung.try_wait().unwrap().is_none();
    let (firing, resolved) = (hang("firing"), hang("resolved"));
    let all = receiver.notifications();
    let _ = hung.kill();
    let _ = hung.wait();
    let run = agent.stop();
    let firing = firing.unwrap_or_else(|| {
        panic!(
            "no LockWaitTimeout alert\n{all:#?}\n{}\n{}",
            alertmanager.log(),
            run.run.describe()
        )
    });
    let resolved = resolved.unwrap_or_else(|| {
        panic!(
            "the hang's alert was not resolved while its process lived\n{all:#?}\n{}\n{}",
            alertmanager.log(),
            run.run.describe()
        )
    });
    assert!(still_running, "resolved only once the process exited");
    assert_eq!(firing["commonLabels"]["severity"], "warning", "{firing}");
    assert_eq!(
        resolved["commonLabels"]["fingerprint"], firing["commonLabels"]["fingerprint"],
        "{resolved}"
    );
}

/// A finding's fingerprint follows the build, not the path: the fixture's
/// source built twice into two directories (the same build-id) gives one
/// fingerprint (the second is not alerted on again); built again with
/// another build-id, another. JSON frames
/// and global locks carry the build-id and file offset.
#[test]
fn fingerprints_follow_the_build_id_not_the_path() {
    require_root();
    let receiver = Receiver::start();
    let alertmanager = Alertmanager::start(&receiver.url(), free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &metrics, &alertmanager.url);
    const FORCED: &str = "0123456789abcdef0123456789abcdef01234567";
    let builds = [
        ("one/ab_ba_bid_one", None),
        ("two/ab_ba_bid_two", None),
        ("new/ab_ba_bid_new", Some(FORCED)),
    ];
    let source = locktrace_e2e::fixture_source("ab_ba");
    let mut programs = Vec::new();
    for (path, build_id) in builds {
        let out = dir.path().join(path);
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        // From the source's directory, by its file name: the debug info
        // (and so the build-id) is the same for the first two builds.
        let mut cc = Command::new("gcc");
        cc.current_dir(source.parent().unwrap())
            .args(["-g", "-O0", "-pthread", "-fno-omit-frame-pointer", "-o"])
            .arg(&out)
            .arg(source.file_name().unwrap());
        if let Some(id) = build_id {
            cc.arg(format!("-Wl,--build-id=0x{id}"));
        }
        let status = cc.status().unwrap();
        assert!(status.success(), "{cc:?}");
        programs.push(out);
    }
    let comms: Vec<String> = programs.iter().map(|p| comm_of(p)).collect();
    let mut args = vec!["--config", config.as_str()];
    for comm in &comms {
        args.extend(["--comm", comm.as_str()]);
    }
    let agent = Watcher::start_agent(&args, &[]);
    wait_ready(&metrics);
    for program in &programs {
        let out = Command::new(program).output().unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let am = &alertmanager.url["http://".len()..];
    let alerts = || -> Vec<Value> {
        serde_json::from_str::<Value>(&http_get(am, "/api/v2/alerts").1)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    // The second build's inversion has the first's fingerprint: it is not
    // alerted on again (the agent says so in its log).
    while !(alerts().len() >= 2 && agent.stderr_so_far().contains("already alerted on"))
        && Instant::now() < deadline
    {
        thread::sleep(Duration::from_millis(100));
    }
    thread::sleep(Duration::from_secs(1));
    let listed = alerts();
    let log = agent.stderr_so_far();
    let run = agent.stop();
    let fingerprint_of = |comm: &str| {
        listed
            .iter()
            .find(|a| a["labels"]["service"] == comm)
            .map(|a| a["labels"]["fingerprint"].as_str().unwrap().to_string())
    };
    let describe = || format!("{listed:#?}\n{}", run.run.describe());
    // One of the first two builds is alerted on (the one whose finding came
    // first), the other is the repeat.
    let one = match (fingerprint_of(&comms[0]), fingerprint_of(&comms[1])) {
        (Some(f), None) | (None, Some(f)) => f,
        other => panic!(
            "one alert for the first two builds: {other:?}\n{}",
            describe()
        ),
    };
    let new = fingerprint_of(&comms[2]).unwrap_or_else(|| panic!("no alert\n{}", describe()));
    let again = log
        .lines()
        .find_map(|l| l.split("already alerted on (fingerprint ").nth(1))
        .map(|rest| rest.trim_end_matches(')').to_string())
        .unwrap_or_else(|| panic!("the second build not judged a repeat\n{}", describe()));
    eprintln!("fingerprints: {one} {again} {new}");
    assert_eq!(again, one, "same build, other path\n{}", describe());
    assert_ne!(one, new, "another build-id\n{}", describe());

    // The JSON report: the program's frames and its global locks, keyed
    // by build-id and file offset.
    let mut seen = Vec::new();
    for record in &run.report.records {
        let Record::LockOrderInversion(inv) = record else {
            continue;
        };
        let program = programs
            .iter()
            .position(|p| comm_of(p) == inv.comm)
            .unwrap_or_else(|| panic!("an inversion of {}", inv.comm));
        let edge = inv
            .cycle
            .iter()
            .find(|e| {
                e.stack
                    .iter()
                    .any(|f| f.function.as_deref() == Some("lock_ab"))
            })
            .unwrap_or_else(|| panic!("no edge taken in lock_ab: {inv:#?}"));
        let frame = edge
            .stack
            .iter()
            .find(|f| f.function.as_deref() == Some("lock_ab"))
            .unwrap();
        let lock = inv
            .locks
            .iter()
            .find(|l| l.name.as_deref() == Some("mutex_a"))
            .unwrap_or_else(|| panic!("mutex_a in {inv:#?}"));
        // For the README.
        eprintln!("{}: {frame:?}\n{lock:?}", inv.comm);
        seen.push((
            program,
            frame.build_id.clone(),
            frame.file_offset,
            lock.build_id.clone(),
            lock.file_offset,
        ));
    }
    seen.sort();
    assert_eq!(
        seen.iter().map(|s| s.0).collect::<Vec<_>>(),
        [0, 1, 2],
        "one inversion per build\n{}",
        run.run.describe()
    );
    let build_id = seen[0]
        .1
        .clone()
        .expect("a build-id on the program's frame");
    assert_eq!(seen[1].1.as_deref(), Some(build_id.as_str()), "{seen:?}");
    assert_eq!(seen[2].1.as_deref(), Some(FORCED), "{seen:?}");
    for s in &seen {
        assert!(s.2.is_some(), "a file offset on the frame: {seen:?}");
        assert_eq!(s.2, seen[0].2, "the same code at the same offset: {seen:?}");
        assert_eq!(s.3, s.1, "the lock's build-id is its program's: {seen:?}");
        assert!(s.4.is_some(), "mutex_a's file offset: {seen:?}");
        assert_eq!(s.4, seen[0].4, "{seen:?}");
    }
}

/// The agent restarted with the same state dir does not alert again on an
/// inversion it reported before: the first run's alert ends (a short
/// `inversion_active`) and is resolved; the same inversion after the
/// restart is in the report but no new alert fires.
#[test]
fn restart_with_state_does_not_alert_again() {
    require_root();
    let receiver = Receiver::start();
    let alertmanager = Alertmanager::start(&receiver.url(), free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_with(
        dir.path(),
        &metrics,
        &alertmanager.url,
        "inversion_active = \"4s\"\n",
    );
    let program = dir.path().join("ab_ba_state");
    copy_executable(&fixture("ab_ba", Variant::Fp), &program);
    let comm = comm_of(&program);
    let notified = |status: &str| {
        receiver
            .notifications()
            .into_iter()
            .filter(|n| n["status"] == status)
            .count()
    };
    let mut runs = Vec::new();
    for round in 0..2 {
        let agent = Watcher::start_agent(&["--config", &config, "--comm", &comm], &[]);
        wait_ready(&metrics);
        let out = Command::new(&program).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        if round == 0 {
            // Alerted, then ended by itself.
            let deadline = Instant::now() + Duration::from_secs(30);
            while notified("resolved") == 0 && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(100));
            }
        } else {
            // A new alert would be notified within a few seconds.
            let deadline = Instant::now() + Duration::from_secs(20);
            while !agent.stderr_so_far().contains("already alerted on") && Instant::now() < deadline
            {
                thread::sleep(Duration::from_millis(100));
            }
            thread::sleep(Duration::from_secs(4));
        }
        runs.push(agent.stop());
    }
    let all = receiver.notifications();
    let describe = || {
        format!(
            "{all:#?}\n{}\n{}\n{}",
            alertmanager.log(),
            runs[0].run.describe(),
            runs[1].run.describe()
        )
    };
    for run in &runs {
        let inversions = run
            .report
            .records
            .iter()
            .filter(|r| matches!(r, Record::LockOrderInversion(_)))
            .count();
        assert_eq!(inversions, 1, "each run finds it\n{}", describe());
    }
    assert_eq!(notified("firing"), 1, "alerted once\n{}", describe());
    assert_eq!(notified("resolved"), 1, "{}", describe());
    let state = std::fs::read_to_string(dir.path().join("state/state.json")).unwrap();
    let fingerprint = all[0]["alerts"][0]["labels"]["fingerprint"]
        .as_str()
        .unwrap();
    assert!(state.contains(fingerprint), "{state}");
}

/// SIGHUP reloads the config file: a bad one is one error line and the
/// agent goes on as it was; a suppression added (a frame glob) makes the
/// next inversion counted as suppressed, reported, and not alerted on.
#[test]
fn sighup_adds_a_suppression_and_a_bad_reload_keeps_the_old_config() {
    require_root();
    let receiver = Receiver::start();
    let alertmanager = Alertmanager::start(&receiver.url(), free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &metrics, &alertmanager.url);
    let good = std::fs::read_to_string(&config).unwrap();
    let program = dir.path().join("ab_ba_hup");
    copy_executable(&fixture("ab_ba", Variant::Fp), &program);
    let comm = comm_of(&program);
    let agent = Watcher::start_agent(&["--config", &config, "--comm", &comm], &[]);
    wait_ready(&metrics);
    let hangup = || {
        // SAFETY: kill(2) on the test's own unreaped child.
        assert_eq!(unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) }, 0);
    };
    std::fs::write(
        &config,
        format!("{good}[suppress]\nframes = [\"lock_[ab\"]\n"),
    )
    .unwrap();
    hangup();
    let bad = agent.wait_for_log(&["SIGHUP"], Duration::from_secs(5));
    std::fs::write(
        &config,
        format!("{good}[suppress]\nframes = [\"lock_ba\"]\n"),
    )
    .unwrap();
    hangup();
    let reloaded = agent.wait_for_log(&["SIGHUP"], Duration::from_secs(5));
    let out = Command::new(&program).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !agent.stderr_so_far().contains("suppressed") && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    // An alert would be notified within a few seconds.
    thread::sleep(Duration::from_secs(4));
    let text = http_get(&metrics, "/metrics").1;
    let notifications = receiver.notifications();
    let run = agent.stop();
    // For the README.
    eprintln!("{bad}\n{reloaded}\n/metrics:\n{text}");
    assert!(
        bad.contains("ERROR")
            && bad.contains(&format!("{config}:"))
            && bad.contains("key `suppress.frames`")
            && bad.contains("keeping the configuration in force"),
        "one error line naming the key: {bad}"
    );
    assert!(reloaded.contains("reloaded (1 suppressions)"), "{reloaded}");
    let inversions = run
        .report
        .records
        .iter()
        .filter(|r| matches!(r, Record::LockOrderInversion(_)))
        .count();
    assert_eq!(inversions, 1, "still reported\n{}", run.run.describe());
    assert_eq!(
        counter(
            &text,
            "locktrace_findings_suppressed_total{type=\"inversion\"}"
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        counter(&text, "locktrace_findings_total{type=\"inversion\"}"),
        0.0,
        "{text}"
    );
    assert_eq!(counter(&text, "locktrace_alerts_sent_total"), 0.0, "{text}");
    assert!(
        notifications.is_empty(),
        "not alerted\n{notifications:#?}\n{}",
        run.run.describe()
    );
}

/// SIGHUP changes the trace filters while the graphs stay: an agent
/// tracing command X does not report Y's inversion; once `[trace] comms`
/// names Y too and the agent got SIGHUP, it does. X took one order before
/// the reload and takes the other after it: its inversion is reported (the
/// graph was kept, and X traced throughout).
#[test]
fn sighup_changes_the_trace_filters_and_keeps_the_graphs() {
    require_root();
    let metrics = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let stepped = dir.path().join("stepped_x");
    copy_executable(&fixture("stepped_ab_ba", Variant::Fp), &stepped);
    let other = dir.path().join("ab_ba_y");
    copy_executable(&fixture("ab_ba", Variant::Fp), &other);
    let (x, y) = (comm_of(&stepped), comm_of(&other));
    let config = dir.path().join("locktrace.toml");
    let write = |comms: &[&str], hang: &str| {
        std::fs::write(
            &config,
            format!(
                "[agent]\nhost = \"test-host\"\nstate_dir = \"{}\"\n\
                 [metrics]\nlisten = \"{metrics}\"\n\
                 [trace]\ncomms = {comms:?}\nhang_threshold = \"{hang}\"\n",
                dir.path().join("state").display()
            ),
        )
        .unwrap();
    };
    write(&[&x], "10s");
    let agent = Watcher::start_agent(&["--config", config.to_str().unwrap()], &[]);
    wait_ready(&metrics);
    // X takes a then b, and waits.
    let mut first = Command::new(&stepped)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = String::new();
    BufReader::new(first.stdout.as_mut().unwrap())
        .read_line(&mut said)
        .unwrap();
    assert!(said.starts_with("ab "), "{said:?}");
    // Y, not traced yet.
    let untraced = Command::new(&other).output().unwrap();
    assert!(untraced.status.success(), "{untraced:?}");
    write(&[&x, &y], "5s");
    // SAFETY: kill(2) on the test's own unreaped child.
    assert_eq!(unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) }, 0);
    let reloaded = agent.wait_for_log(&["SIGHUP"], Duration::from_secs(5));
    // The session applies it at its next scan (every 0.4 s).
    agent.wait_for_log(&["filter reloaded"], Duration::from_secs(5));
    let traced = Command::new(&other).spawn().unwrap();
    let traced_pid = traced.id();
    assert!(traced.wait_with_output().unwrap().status.success());
    // X takes b then a.
    first.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let x_pid = first.id();
    assert!(first.wait().unwrap().success());
    agent.wait_for_finding_of(traced_pid, Duration::from_secs(20));
    agent.wait_for_finding_of(x_pid, Duration::from_secs(20));
    let run = agent.stop();
    eprintln!("{reloaded}");
    assert!(
        reloaded.contains("new trace filters") && reloaded.contains("new hang threshold"),
        "{reloaded}"
    );
    assert!(!reloaded.contains("a restart applies it"), "{reloaded}");
    let inversions: Vec<(u32, String)> = run
        .report
        .records
        .iter()
        .filter_map(|r| match r {
            Record::LockOrderInversion(i) => Some((i.pid, i.comm.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        inversions,
        [(traced_pid, y.clone()), (x_pid, x.clone())],
        "Y's inversion once traced (not before), X's across the reload\n{}",
        run.run.describe()
    );
}

/// The memory cap: an agent keeping at most one dependency in its instance
/// graph (`[trace] max_dependencies = 1`) evicts the colder lock of an
/// AB/BA's first order (with that dependency) to keep the second, counts
/// both in /metrics and the summary, and still reports the inversion, from
/// the class graph (which the cap does not bound).
#[test]
fn memory_cap_evicts_cold_locks_and_keeps_the_class_graph() {
    require_root();
    let metrics = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("ab_ba_cap");
    copy_executable(&fixture("ab_ba", Variant::Fp), &program);
    let comm = comm_of(&program);
    let config = dir.path().join("locktrace.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nstate_dir = \"{}\"\n[metrics]\nlisten = \"{metrics}\"\n\
             [trace]\ncomms = [\"{comm}\"]\nmax_dependencies = 1\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let agent = Watcher::start_agent(&["--config", config.to_str().unwrap()], &[]);
    wait_ready(&metrics);
    let child = Command::new(&program).spawn().unwrap();
    let pid = child.id();
    assert!(child.wait_with_output().unwrap().status.success());
    agent.wait_for_finding_of(pid, Duration::from_secs(20));
    // The next scan (every 0.4 s) counts it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut text = http_get(&metrics, "/metrics").1;
    while !text.contains("locktrace_locks_evicted_total 1") && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
        text = http_get(&metrics, "/metrics").1;
    }
    let run = agent.stop();
    eprintln!("/metrics:\n{text}");
    let levels: Vec<Level> = run
        .report
        .records
        .iter()
        .filter_map(|r| match r {
            Record::LockOrderInversion(i) if i.pid == pid => Some(i.level),
            _ => None,
        })
        .collect();
    assert_eq!(levels, [Level::Class], "{}", run.run.describe());
    let summary = &run.report.summary;
    assert_eq!(
        (
            summary.evicted_locks,
            summary.evicted_dependencies,
            summary.dropped_dependencies
        ),
        (1, 1, 0),
        "{}",
        run.run.describe()
    );
    for (name, value) in [
        ("locktrace_locks_evicted_total", 1.0),
        ("locktrace_dependencies_evicted_total", 1.0),
        ("locktrace_dependencies_dropped_total", 0.0),
    ] {
        assert_eq!(counter(&text, name), value, "{name}\n{text}");
    }
}

/// A config file for the agent in `dir` (its state in `dir/state`); its
/// path.
fn write_config(dir: &Path, metrics: &str, alertmanager: &str) -> String {
    write_config_with(dir, metrics, alertmanager, "")
}

/// The same, with more keys of `[alertmanager]`.
fn write_config_with(dir: &Path, metrics: &str, alertmanager: &str, more: &str) -> String {
    let config = dir.join("locktrace.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nhost = \"test-host\"\nstate_dir = \"{}\"\n\
             [metrics]\nlisten = \"{metrics}\"\n\
             [journald]\nenabled = false\n\
             [alertmanager]\nurl = \"{alertmanager}\"\n{more}",
            dir.join("state").display()
        ),
    )
    .unwrap();
    config.to_str().unwrap().to_string()
}

/// The shipped unit passes `systemd-analyze verify` without a warning
/// (its ExecStart pointed at the built binary).
#[test]
fn systemd_unit_verifies() {
    let shipped = workspace_dir().join("dist/systemd/locktrace.service");
    let text = std::fs::read_to_string(&shipped).unwrap();
    assert!(
        text.contains("ExecStart=/usr/bin/locktrace agent"),
        "{text}"
    );
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("locktrace.service");
    let bin = locktrace_e2e::locktrace_bin();
    std::fs::write(
        &unit,
        text.replace("/usr/bin/locktrace", bin.to_str().unwrap()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (systemd) is installed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{out:?}");
}

/// The shipped alerting rules load (`promtool check rules`) and pass their
/// unit tests (`promtool test rules`).
#[test]
fn prometheus_rules_check_and_test() {
    let dir = workspace_dir().join("dist/prometheus");
    for args in [
        ["check", "rules", "locktrace-rules.yml"],
        ["test", "rules", "locktrace-rules.test.yml"],
    ] {
        let out = Command::new("/usr/bin/promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool: `cargo xtask test` installs prometheus");
        assert!(out.status.success(), "promtool {args:?}: {out:?}");
    }
}

/// Debian's systemd-journald, run by the test in a mount namespace of its
/// own (tmpfs over `/run/systemd` and `/var/log`: nothing of it outlives
/// the test, and the host's journal, if any, is not touched), as a journal
/// namespace whose socket directory is also mounted at
/// `/run/systemd/journal`: an agent started in that mount namespace finds
/// journald's socket where it always is.
struct Journald {
    child: Child,
    namespace: String,
    /// A stdout stream held open: a namespaced journald exits when idle.
    _stream: std::os::unix::net::UnixStream,
}

impl Journald {
    fn start() -> Journald {
        const JOURNALD: &str = "/lib/systemd/systemd-journald";
        assert!(
            Path::new(JOURNALD).exists(),
            "{JOURNALD} is missing: `cargo xtask test` installs systemd"
        );
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let namespace = format!(
            "locktrace-e2e-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let script = format!(
            "set -e; mount -t tmpfs tmpfs /run/systemd; mount -t tmpfs tmpfs /var/log; \
             mkdir /var/log/journal /run/systemd/journal.{namespace} /run/systemd/journal; \
             mount --bind /run/systemd/journal.{namespace} /run/systemd/journal; \
             exec {JOURNALD} {namespace}"
        );
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("unshare (util-linux)");
        let root = format!("/proc/{}/root/run/systemd/journal", child.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            if Path::new(&format!("{root}/socket")).exists() {
                if let Ok(s) = std::os::unix::net::UnixStream::connect(format!("{root}/stdout")) {
                    break s;
                }
            }
            assert!(Instant::now() < deadline, "journald did not start");
            thread::sleep(Duration::from_millis(50));
        };
        // The stream's header: identifier, unit, priority, level prefix,
        // forward to syslog, kmsg, console.
        (&stream)
            .write_all(b"locktrace-e2e\n\n6\n0\n0\n0\n0\n")
            .unwrap();
        Journald {
            child,
            namespace,
            _stream: stream,
        }
    }

    /// `nsenter -t PID -m --`: a command in journald's mount namespace.
    fn enter(&self) -> Vec<String> {
        ["nsenter", "-t", &self.child.id().to_string(), "-m", "--"]
            .map(String::from)
            .to_vec()
    }

    /// The entries `journalctl -o json MATCH` lists.
    fn entries(&self, matches: &str) -> Vec<Value> {
        let out = Command::new(&self.enter()[0])
            .args(&self.enter()[1..])
            .args([
                "journalctl",
                "--namespace",
                &self.namespace,
                "-o",
                "json",
                matches,
            ])
            .output()
            .expect("journalctl");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Journald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `MESSAGE_ID` of an inversion's journal entry (README).
const INVERSION_MESSAGE_ID: &str = "17da171d517245ffbfd8a4d20c91fdfc";

/// A config with the sinks (`more`: `[report]` and `[webhook]` keys), no
/// Alertmanager.
fn write_sinks_config(dir: &Path, metrics: &str, more: &str) -> String {
    let config = dir.join("locktrace.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nhost = \"test-host\"\nstate_dir = \"{}\"\n\
             [metrics]\nlisten = \"{metrics}\"\n{more}",
            dir.join("state").display()
        ),
    )
    .unwrap();
    config.to_str().unwrap().to_string()
}

/// The findings file and its rotated copies (`FILE`, `FILE.1`, ...), each
/// with its mode.
fn rotated_files(report: &Path) -> Vec<(std::path::PathBuf, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut files = vec![report.to_path_buf()];
    for n in 1.. {
        let p = std::path::PathBuf::from(format!("{}.{n}", report.display()));
        if !p.exists() {
            break;
        }
        files.push(p);
    }
    files
        .into_iter()
        .map(|p| {
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
            (p, mode)
        })
        .collect()
}

/// Each run of the AB/BA fixture reaches every sink once: the webhook gets
/// one POST of the finding's JSON, journald one entry (inversion
/// `MESSAGE_ID`, `PRIORITY` warning, the fingerprint, the text report),
/// and the findings file, rotated by size, keeps them all in 0600 files.
#[test]
fn findings_reach_the_journal_the_webhook_and_a_rotated_file() {
    require_root();
    let journald = Journald::start();
    let receiver = Receiver::start();
    let metrics = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    // An inversion's line is several KB: a file per finding.
    let config = write_sinks_config(
        dir.path(),
        &metrics,
        &format!(
            "[report]\nmax_size = 2000\nkeep = 10\n[webhook]\nurl = \"{}\"\n",
            receiver.url()
        ),
    );
    // Two programs with other locks (the same inversion again would be
    // the same class-level cycle, reported once) under one command name;
    // `late_ab_ba` takes its locks once it reads a line.
    let programs = ["ab_ba", "late_ab_ba"].map(|name| {
        let program = dir.path().join(name).join("ab_ba_sinks");
        copy_executable(&fixture(name, Variant::Fp), &program);
        program
    });
    let comm = comm_of(&programs[0]);
    let enter = journald.enter();
    let enter: Vec<&str> = enter.iter().map(String::as_str).collect();
    let agent = Watcher::start_agent_wrapped(&enter, &["--config", &config, "--comm", &comm], &[]);
    wait_ready(&metrics);
    let runs = programs.len();
    let mut pids = Vec::new();
    for program in &programs {
        let mut child = Command::new(program)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        pids.push(child.id());
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline
        && (receiver.notifications().len() < runs
            || journald
                .entries(&format!("MESSAGE_ID={INVERSION_MESSAGE_ID}"))
                .len()
                < runs)
    {
        thread::sleep(Duration::from_millis(200));
    }
    // Anything more would come within a second.
    thread::sleep(Duration::from_secs(1));
    let posts = receiver.notifications();
    let entries = journald.entries(&format!("MESSAGE_ID={INVERSION_MESSAGE_ID}"));
    let text = http_get(&metrics, "/metrics").1;
    let report = agent.report_path().to_path_buf();
    let agent_pid = agent.pid();
    let (run, _report_dir) = agent.stop_keeping_dir();
    eprintln!(
        "a webhook POST:\n{}\na journal entry:\n{}\nfiles: {:?}",
        serde_json::to_string_pretty(&posts.first()).unwrap(),
        serde_json::to_string_pretty(&entries.first()).unwrap(),
        rotated_files(&report)
    );

    // The webhook: one POST per finding, the finding's JSON line.
    let posted: Vec<Record> = posts
        .iter()
        .map(|p| serde_json::from_value(p.clone()).expect("a finding's JSON"))
        .collect();
    let mut posted_pids: Vec<u32> = posted.iter().filter_map(Record::pid).collect();
    posted_pids.sort_unstable();
    let mut expected = pids.clone();
    expected.sort_unstable();
    assert_eq!(posted_pids, expected, "{posts:#?}\n{}", run.run.describe());
    assert!(
        posted
            .iter()
            .all(|r| matches!(r, Record::LockOrderInversion(_))),
        "{posts:#?}"
    );

    // journald: one entry per finding, from the agent, with its fingerprint.
    assert_eq!(entries.len(), runs, "{entries:#?}\n{}", run.run.describe());
    for record in &posted {
        let Record::LockOrderInversion(inv) = record else {
            unreachable!()
        };
        let entry = entries
            .iter()
            .find(|e| e["LOCKTRACE_FINGERPRINT"] == inv.fingerprint.as_str())
            .unwrap_or_else(|| panic!("no entry of {}: {entries:#?}", inv.fingerprint));
        assert_eq!(entry["PRIORITY"], "4", "{entry}");
        assert_eq!(entry["SYSLOG_IDENTIFIER"], "locktrace", "{entry}");
        assert_eq!(entry["LOCKTRACE_TYPE"], "inversion", "{entry}");
        assert_eq!(entry["_PID"], agent_pid.to_string().as_str(), "{entry}");
        let message = entry["MESSAGE"].as_str().unwrap();
        let header = format!(
            "lock-order inversion between 2 locks in ab_ba_sinks [{}]",
            inv.pid
        );
        assert!(message.contains(&header), "{header} in {message}");
    }

    // The findings file: rotated, every part 0600, no finding lost.
    let files = rotated_files(&report);
    assert!(files.len() > runs, "a file per finding: {files:?}");
    let mut in_files = Vec::new();
    for (path, mode) in &files {
        assert_eq!(*mode, 0o600, "{}", path.display());
        let records =
            locktrace_e2e::records::parse_records(&std::fs::read_to_string(path).unwrap()).unwrap();
        in_files.extend(records.iter().filter_map(Record::pid));
    }
    in_files.sort_unstable();
    assert_eq!(in_files, expected, "{files:?}");

    for sink in ["file", "journald", "webhook"] {
        let name = format!("locktrace_sink_failures_total{{sink=\"{sink}\"}}");
        assert_eq!(counter(&text, &name), 0.0, "{text}");
    }
}

/// The webhook's receiver is down: its failed attempts are counted, and
/// the journal and the findings file get the finding all the same.
#[test]
fn a_webhook_down_is_counted_and_the_other_sinks_still_get_findings() {
    require_root();
    let journald = Journald::start();
    let metrics = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let config = write_sinks_config(
        dir.path(),
        &metrics,
        &format!(
            "[webhook]\nurl = \"http://127.0.0.1:{}/hook\"\n",
            free_port()
        ),
    );
    let program = dir.path().join("ab_ba_nohook");
    copy_executable(&fixture("ab_ba", Variant::Fp), &program);
    let comm = comm_of(&program);
    let enter = journald.enter();
    let enter: Vec<&str> = enter.iter().map(String::as_str).collect();
    let agent = Watcher::start_agent_wrapped(&enter, &["--config", &config, "--comm", &comm], &[]);
    wait_ready(&metrics);
    let child = Command::new(&program).spawn().unwrap();
    let pid = child.id();
    assert!(child.wait_with_output().unwrap().status.success());
    let failures = "locktrace_sink_failures_total{sink=\"webhook\"}";
    let deadline = Instant::now() + Duration::from_secs(20);
    while counter(&http_get(&metrics, "/metrics").1, failures) < 1.0 {
        assert!(Instant::now() < deadline, "no webhook failure counted");
        thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut entries = Vec::new();
    while entries.is_empty() && Instant::now() < deadline {
        entries = journald.entries(&format!("MESSAGE_ID={INVERSION_MESSAGE_ID}"));
        thread::sleep(Duration::from_millis(200));
    }
    let text = http_get(&metrics, "/metrics").1;
    let run = agent.stop();
    assert_eq!(entries.len(), 1, "{entries:#?}\n{}", run.run.describe());
    let inversions = run.report.inversions();
    assert_eq!(inversions.len(), 1, "{}", run.run.describe());
    assert_eq!(inversions[0].pid, pid);
    assert_eq!(
        entries[0]["LOCKTRACE_FINGERPRINT"],
        inversions[0].fingerprint.as_str()
    );
    assert!(counter(&text, failures) >= 1.0, "{text}");
    for sink in ["journald", "file"] {
        let name = format!("locktrace_sink_failures_total{{sink=\"{sink}\"}}");
        assert_eq!(counter(&text, &name), 0.0, "{text}");
    }
    assert_eq!(
        counter(&text, "locktrace_findings_total{type=\"inversion\"}"),
        1.0,
        "{text}"
    );
}

/// The capability sets of a task (`CapEff`, `CapPrm`, `CapBnd`, `CapInh`,
/// `CapAmb`, as hex masks) and its `NoNewPrivs`, from its status file.
fn capabilities(status: &str) -> std::collections::BTreeMap<String, u64> {
    status
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.starts_with("Cap") || *k == "NoNewPrivs")
        .map(|(k, v)| (k.to_string(), u64::from_str_radix(v.trim(), 16).unwrap()))
        .collect()
}

/// What the README says the agent keeps after the start with multi-uprobe
/// links (Linux 6.6+, as on the test machines): CAP_DAC_READ_SEARCH (2),
/// CAP_SYS_PTRACE (19), CAP_CHECKPOINT_RESTORE (40).
const KEPT_CAPABILITIES: u64 = 1 << 2 | 1 << 19 | 1 << 40;

/// Once READY, the agent's tracing thread holds exactly the documented
/// capabilities (effective, permitted, bounding; nothing inheritable or
/// ambient) with no_new_privs, its other threads none; and tracing goes
/// on: with `--comm`, a deadlock and an inversion of another user's
/// processes started after the drop are reported, symbolized; host-wide, a copy of libc mapped after the drop is probed
/// (multi-uprobe links made without CAP_BPF, CAP_PERFMON or CAP_SYS_ADMIN)
/// and its inversion reported.
#[test]
fn capabilities_after_the_start_are_the_documented_set_and_tracing_goes_on() {
    require_root();
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // Another user's program that only its owner may run, and nobody
    // read: its process is not dumpable. Reading its memory and maps takes
    // CAP_SYS_PTRACE, reading its file CAP_DAC_READ_SEARCH.
    let program = dir.path().join("ab_ba_caps");
    copy_executable(&fixture("ab_ba", Variant::Fp), &program);
    std::os::unix::fs::chown(&program, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o100)).unwrap();
    let comm = comm_of(&program);
    // A deadlock of that user's, under the same name: the wait-for scan
    // reads the mutexes' owners from its memory.
    let deadlocking = dir.path().join("d").join("ab_ba_caps");
    copy_executable(&fixture("deadlock", Variant::Fp), &deadlocking);
    std::fs::set_permissions(dir.path().join("d"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&deadlocking, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&deadlocking, std::fs::Permissions::from_mode(0o100)).unwrap();
    let as_nobody = |program: &Path| {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(program);
        cmd
    };
    let libc_copy = dir.path().join("lib").join("libc.so.6");
    copy_executable(&locktrace_e2e::host_libc(), &libc_copy);
    for filtered in [true, false] {
        let metrics = format!("127.0.0.1:{}", free_port());
        let state = tempfile::tempdir().unwrap();
        let config = write_sinks_config(state.path(), &metrics, "[journald]\nenabled = false\n");
        let mut args = vec!["--config", config.as_str()];
        if filtered {
            args.extend(["--comm", comm.as_str()]);
        }
        let agent = Watcher::start_agent(&args, &[]);
        wait_ready(&metrics);
        let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap();
        let caps = capabilities(&status);
        for set in ["CapEff", "CapPrm", "CapBnd"] {
            assert_eq!(
                caps[set], KEPT_CAPABILITIES,
                "{set}: {:#x}\n{status}",
                caps[set]
            );
        }
        assert_eq!((caps["CapInh"], caps["CapAmb"]), (0, 0), "{status}");
        assert_eq!(caps["NoNewPrivs"], 1, "{status}");
        let tasks = std::fs::read_dir(format!("/proc/{}/task", agent.pid())).unwrap();
        for task in tasks.map(|t| t.unwrap().path()) {
            let status = std::fs::read_to_string(task.join("status")).unwrap_or_default();
            if status.is_empty() {
                continue; // the thread ended meanwhile
            }
            let caps = capabilities(&status);
            for set in ["CapEff", "CapPrm", "CapBnd"] {
                assert_eq!(
                    caps[set] & !KEPT_CAPABILITIES,
                    0,
                    "{} {set}\n{status}",
                    task.display()
                );
            }
            assert_eq!(caps["NoNewPrivs"], 1, "{}\n{status}", task.display());
        }

        let pid = if filtered {
            let child = as_nobody(&program).spawn().unwrap();
            let pid = child.id();
            assert!(child.wait_with_output().unwrap().status.success());
            // Then a deadlock.
            let mut deadlocked = as_nobody(&deadlocking)
                .arg("30")
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            // The deadlock comes from a wait-for scan.
            let deadlocked_pid = deadlocked.id();
            let deadline = Instant::now() + Duration::from_secs(20);
            let deadlock = || {
                agent
                    .records_so_far()
                    .iter()
                    .any(|r| matches!(r, Record::Deadlock(d) if d.pid == deadlocked_pid))
            };
            while !deadlock() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(100));
            }
            let found = deadlock();
            let _ = deadlocked.kill();
            let _ = deadlocked.wait();
            assert!(
                found,
                "another user's deadlock after the drop\n{}",
                agent.stderr_so_far()
            );
            pid
        } else {
            // Started through the loader with the copy of libc first: a
            // file no probe was on when the capabilities were dropped.
            let mut child = Command::new("/lib64/ld-linux-x86-64.so.2")
                .arg("--library-path")
                .arg(libc_copy.parent().unwrap())
                .arg(fixture("late_ab_ba", Variant::NoFp))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let pid = child.id();
            agent.wait_for_log(
                &["probing a newly mapped lock library", &format!("pid={pid}")],
                Duration::from_secs(20),
            );
            child.stdin.take().unwrap().write_all(b"go\n").unwrap();
            assert!(child.wait_with_output().unwrap().status.success());
            pid
        };
        agent.wait_for_finding_of(pid, Duration::from_secs(20));
        let run = agent.stop();
        let found = one_inversion_of(&run, pid, &format!("filtered: {filtered}"));
        // Its stacks symbolized: the maps and the file were read.
        let functions: Vec<&str> = found
            .cycle
            .iter()
            .flat_map(|e| &e.stack)
            .filter_map(|f| f.function.as_deref())
            .collect();
        let expected = if filtered { "lock_ab" } else { "take_ab" };
        assert!(
            functions.contains(&expected),
            "{expected} in {functions:?}\n{}",
            run.run.describe()
        );
        assert!(
            !run.run.stderr.contains("Operation not permitted"),
            "{}",
            run.run.describe()
        );
    }
}

/// SIGHUP switches the sinks: a bad file keeps the running ones (the next
/// finding still goes to the first webhook), a good one moves the webhook
/// to another receiver, turns journald on and shrinks the findings file's
/// rotation size, all from the next finding on, without a restart.
#[test]
fn sighup_switches_the_sinks_and_a_bad_reload_keeps_them() {
    require_root();
    let journald = Journald::start();
    let (first, second) = (Receiver::start(), Receiver::start());
    let metrics = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    // Three copies of one program under three names: three lock classes
    // (a global's class is its binary's name and symbol), three findings.
    let programs = [1, 2, 3].map(|n| {
        let program = dir.path().join(format!("ab_ba_swap{n}"));
        copy_executable(&fixture("ab_ba", Variant::Fp), &program);
        program
    });
    let comms: Vec<String> = programs.iter().map(|p| comm_of(p)).collect();
    let write = |sinks: &str| {
        write_sinks_config(
            dir.path(),
            &metrics,
            &format!("[trace]\ncomms = {comms:?}\n{sinks}"),
        )
    };
    let config = write(&format!(
        "[journald]\nenabled = false\n[webhook]\nurl = \"{}\"\n",
        first.url()
    ));
    let enter = journald.enter();
    let enter: Vec<&str> = enter.iter().map(String::as_str).collect();
    let agent = Watcher::start_agent_wrapped(&enter, &["--config", &config], &[]);
    wait_ready(&metrics);
    let run = |program: &Path| {
        let child = Command::new(program).spawn().unwrap();
        let pid = child.id();
        assert!(child.wait_with_output().unwrap().status.success());
        pid
    };
    let posted_pids = |receiver: &Receiver| -> Vec<u32> {
        receiver
            .notifications()
            .iter()
            .filter_map(|p| p["pid"].as_u64().map(|p| p as u32))
            .collect()
    };
    let wait_posts = |receiver: &Receiver, n: usize| {
        poll(Duration::from_secs(20), || {
            (receiver.notifications().len() >= n).then_some(())
        })
    };
    let hup = || {
        // SAFETY: kill(2) on the test's own unreaped child.
        assert_eq!(unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) }, 0);
    };
    let p1 = run(&programs[0]);
    wait_posts(&first, 1);

    // A bad file: the sinks in force stay.
    write("[webhook]\nurl = \"ftp://127.0.0.1/hook\"\n");
    hup();
    let refused = agent.wait_for_log(
        &["keeping the configuration in force"],
        Duration::from_secs(5),
    );
    let p2 = run(&programs[1]);
    wait_posts(&first, 2);

    // Another webhook, journald on, a findings file rotated past 2000 bytes.
    write(&format!(
        "[journald]\nenabled = true\n[report]\nmax_size = 2000\n[webhook]\nurl = \"{}\"\n",
        second.url()
    ));
    hup();
    let reloaded = agent.wait_for_log(&["new sinks"], Duration::from_secs(5));
    // The observer takes them at the session's next scan (0.4 s).
    thread::sleep(Duration::from_secs(1));
    let p3 = run(&programs[2]);
    wait_posts(&second, 1);
    let entries = poll(Duration::from_secs(20), || {
        let e = journald.entries(&format!("MESSAGE_ID={INVERSION_MESSAGE_ID}"));
        (!e.is_empty()).then_some(e)
    })
    .unwrap_or_default();
    // Anything more would come within a second.
    thread::sleep(Duration::from_secs(1));
    let report = agent.report_path().to_path_buf();
    let (run, _report_dir) = agent.stop_keeping_dir();
    eprintln!("{refused}\n{reloaded}");
    let describe = || run.run.describe();
    assert!(
        reloaded.contains("new sinks: report, webhook, journald"),
        "{reloaded}"
    );
    assert!(!reloaded.contains("a restart applies it"), "{reloaded}");
    assert_eq!(posted_pids(&first), [p1, p2], "{}", describe());
    assert_eq!(posted_pids(&second), [p3], "{}", describe());
    let journaled: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["MESSAGE"].as_str())
        .collect();
    assert_eq!(journaled.len(), 1, "{entries:#?}");
    assert!(journaled[0].contains(&format!("[{p3}]")), "{entries:#?}");
    // The file: rotated before the third finding's record (the first two
    // make more than 2000 bytes), and before the end's records (the third
    // alone is more).
    let files = rotated_files(&report);
    assert_eq!(files.len(), 3, "{files:?}\n{}", describe());
    let pids_in = |path: &Path| -> Vec<u32> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["type"] == "lock_order_inversion")
            .filter_map(|v| v["pid"].as_u64().map(|p| p as u32))
            .collect()
    };
    assert_eq!(pids_in(&files[2].0), [p1, p2], "{files:?}");
    assert_eq!(pids_in(&files[1].0), [p3], "{files:?}");
    assert!(pids_in(&files[0].0).is_empty(), "{files:?}");
}

/// CAP_CHECKPOINT_RESTORE is kept for `/proc/PID/map_files/`: a program
/// whose file was deleted after it started (an upgrade replacing it) is
/// read through it. With the capability, the inversion's stacks name the
/// program's functions; the agent started without it (`setpriv
/// --bounding-set -checkpoint_restore`) reports the inversion with them
/// unnamed.
#[test]
fn a_deleted_program_is_read_through_map_files_with_checkpoint_restore() {
    require_root();
    for keep in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("late_deleted");
        copy_executable(&fixture("late_ab_ba", Variant::Fp), &program);
        let comm = comm_of(&program);
        let metrics = format!("127.0.0.1:{}", free_port());
        let config = write_sinks_config(dir.path(), &metrics, "[journald]\nenabled = false\n");
        let args = ["--config", config.as_str(), "--comm", comm.as_str()];
        let agent = match keep {
            true => Watcher::start_agent(&args, &[]),
            false => Watcher::start_agent_wrapped(
                &["setpriv", "--bounding-set", "-checkpoint_restore", "--"],
                &args,
                &[],
            ),
        };
        wait_ready(&metrics);
        let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap();
        let expected = match keep {
            true => KEPT_CAPABILITIES,
            false => KEPT_CAPABILITIES & !(1 << 40),
        };
        assert_eq!(capabilities(&status)["CapEff"], expected, "{status}");
        let mut child = Command::new(&program)
            .arg("hold")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        // Its file is gone: only /proc/PID/map_files leads to it.
        std::fs::remove_file(&program).unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"go\n").unwrap();
        // It stays until its finding is made (its files are read while it
        // runs: a process gone takes its map_files with it).
        agent.wait_for_finding_of(pid, Duration::from_secs(20));
        drop(stdin);
        assert!(child.wait_with_output().unwrap().status.success());
        let run = agent.stop();
        let found = one_inversion_of(&run, pid, &format!("keep: {keep}"));
        let functions: Vec<&str> = found
            .cycle
            .iter()
            .flat_map(|e| &e.stack)
            .filter_map(|f| f.function.as_deref())
            .collect();
        assert_eq!(
            functions.contains(&"take_ab"),
            keep,
            "CAP_CHECKPOINT_RESTORE kept: {keep}; functions {functions:?}\n{}",
            run.run.describe()
        );
    }
}
