//! The case behind the project, on the real stack: a Django-style deadlock
//! between an application registry lock and Python's import lock in a
//! mod_wsgi daemon process under Apache, found by `locktrace watch --comm
//! apache2`, started before Apache or attached to it running.

use std::time::Duration;

use locktrace_e2e::apache::{Apache, HttpError, WsgiMode};
use locktrace_e2e::{require_root, Inversion, JsonRun, Level, Record, ThreadReport, Watcher};

/// The lock-order inversions of processes `pids` (tests run in parallel
/// and traced other Apaches too).
fn inversions_in<'a>(run: &'a JsonRun, pids: &[u32]) -> Vec<&'a Inversion> {
    run.report
        .inversions()
        .into_iter()
        .filter(|f| pids.contains(&f.pid))
        .collect()
}

/// The records of processes `pids` (every one but the summary).
fn records_of<'a>(run: &'a JsonRun, pids: &[u32]) -> Vec<&'a Record> {
    run.report
        .records
        .iter()
        .filter(|r| r.pid().is_some_and(|p| pids.contains(&p)))
        .collect()
}

/// The tracer's arguments: started before Apache, it probes every process
/// (`--probe-all`), so that Apache's processes are seen from their first
/// instruction (a worker re-creates CPython's import lock right after its
/// fork: without its creation, the lock has no class shared with its
/// siblings'); attached to a running Apache, only Apache's processes get
/// probes (the default).
fn tracer_args(tracer_first: bool) -> &'static [&'static str] {
    if tracer_first {
        &["--comm", "apache2", "--probe-all"]
    } else {
        &["--comm", "apache2"]
    }
}

/// One Apache scenario at a time: a hang or a wrk load in one would slow the
/// others' start (and their tracers see every Apache).
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sequenced first requests with the global import lock (`/b-imp`, then
/// `/a-imp`: Python 2's import lock, which Django 1.3 sites hung on):
/// nothing hangs, and locktrace reports the one inversion between the
/// registry lock (named by its creation line) and the import lock, with both
/// views' Python frames, and nothing else (no noise from APR, mod_wsgi or
/// the GIL).
fn sequenced_requests(mode: WsgiMode, tracer_first: bool) {
    require_root();
    let _serial = one_at_a_time();
    let mut watcher = tracer_first.then(|| Watcher::start(tracer_args(true)));
    let apache = Apache::start(mode, Duration::from_millis(100));
    if watcher.is_none() {
        // Attached to a live service, as on a production host.
        watcher = Some(Watcher::start(tracer_args(false)));
    }
    let watcher = watcher.unwrap();
    let timeout = Duration::from_secs(20);
    apache.get("/b-imp", timeout).expect("/b-imp answers");
    apache.get("/a-imp", timeout).expect("/a-imp answers");
    // Where the application runs: the daemon, or (embedded) Apache's
    // own worker process.
    let daemons = match mode {
        WsgiMode::Embedded => apache.pids(),
        _ => apache.daemon_pids("g"),
    };
    let ours = apache.pids();
    // The tracer reads code objects from the live daemon.
    std::thread::sleep(Duration::from_secs(1));
    let run = watcher.stop();
    apache.stop();

    let findings = inversions_in(&run, &ours);
    assert_eq!(
        findings.len(),
        1,
        "exactly one inversion\n{}",
        run.describe()
    );
    let others: Vec<&Record> = records_of(&run, &ours)
        .into_iter()
        .filter(|r| !matches!(r, Record::LockOrderInversion(_)))
        .collect();
    assert!(
        others.is_empty(),
        "no other finding over the whole run: {others:?}\n{}",
        run.describe()
    );
    let finding = findings[0];
    assert!(
        daemons.contains(&finding.pid),
        "in the mod_wsgi daemon {daemons:?}\n{}",
        run.describe()
    );
    let names: Vec<String> = finding
        .locks
        .iter()
        .filter_map(|l| l.name.clone())
        .collect();
    // (A lock made before the tracer started has no known creation line:
    // mod_wsgi's daemon preloads the application at its start.)
    assert!(
        !tracer_first || names.iter().any(|n| n == "wsgi/registry.py:6"),
        "the registry lock is named by its creation line: {names:?}\n{}",
        run.describe()
    );
    let functions: Vec<&str> = finding
        .cycle
        .iter()
        .filter_map(|e| e.python_stack.first().map(|f| f.function.as_str()))
        .collect();
    let all: Vec<&str> = finding
        .cycle
        .iter()
        .flat_map(|e| e.python_stack.iter().map(|f| f.function.as_str()))
        .collect();
    assert!(
        all.contains(&"view_a_imp"),
        "view_a_imp in a stack: {all:?}\n{}",
        run.describe()
    );
    assert!(
        all.contains(&"view_b_imp"),
        "view_b_imp in a stack: {all:?}\n{}",
        run.describe()
    );
    assert_eq!(
        functions.len(),
        2,
        "both sides have Python frames\n{}",
        run.describe()
    );
}

#[test]
fn sequenced_requests_show_the_inversion() {
    sequenced_requests(WsgiMode::Daemon { processes: 1 }, true);
}

#[test]
fn inversion_is_found_when_attached_to_a_running_apache() {
    sequenced_requests(WsgiMode::Daemon { processes: 1 }, false);
}

#[test]
fn inversion_is_found_in_embedded_mode() {
    sequenced_requests(WsgiMode::Embedded, true);
}

/// Concurrent first requests to `/a` and `/b`: the daemon really deadlocks
/// (`/a` holds the registry lock and waits for slow_models' import, which
/// `/b` runs and which waits for the registry lock). locktrace reports the
/// deadlock with both threads' Python stacks, and Apache indeed stops
/// answering `/a`.
fn concurrent_first_requests_deadlock(tracer_first: bool) {
    require_root();
    let _serial = one_at_a_time();
    let mut watcher = tracer_first.then(|| Watcher::start(tracer_args(true)));
    let apache = Apache::start(WsgiMode::Daemon { processes: 1 }, Duration::from_secs(1));
    if watcher.is_none() {
        // Attached to a live service, as on a production host.
        watcher = Some(Watcher::start(tracer_args(false)));
    }
    let watcher = watcher.unwrap();
    let daemons = apache.daemon_pids("g");
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| apache.get("/a", Duration::from_secs(8)));
        std::thread::sleep(Duration::from_millis(100));
        s.spawn(|| apache.get("/b", Duration::from_secs(8)));
        // The report, while the daemon is stuck.
        let deadline = started + Duration::from_secs(8);
        while std::time::Instant::now() < deadline
            && !watcher
                .records_so_far()
                .iter()
                .any(|r| matches!(r, Record::Deadlock(_)))
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "deadlock reported {:?} after the requests",
            started.elapsed()
        );
    });
    // Apache really stopped answering on that URL.
    assert!(
        matches!(
            apache.get("/a", Duration::from_secs(2)),
            Err(HttpError::Timeout)
        ),
        "/a should hang"
    );
    let run = watcher.stop();
    apache.stop();
    // The capture, for the README's picture of this case
    // (`locktrace report --format html`).
    if let Ok(keep) = std::env::var("LOCKTRACE_KEEP_CAPTURE") {
        std::fs::write(format!("{keep}-{tracer_first}.jsonl"), &run.report.raw).unwrap();
    }

    // (Tests run in parallel: another test's Apache may deadlock too.)
    let deadlocks: Vec<_> = run
        .report
        .deadlocks()
        .into_iter()
        .filter(|d| daemons.contains(&d.pid))
        .collect();
    assert_eq!(
        deadlocks.len(),
        1,
        "one deadlock, in the mod_wsgi daemon {daemons:?}\n{}",
        run.describe()
    );
    let threads = &deadlocks[0].threads;
    assert_eq!(threads.len(), 2, "{}", run.describe());
    let functions = |t: &ThreadReport| -> Vec<String> {
        t.python_stack.iter().map(|f| f.function.clone()).collect()
    };
    let waiting_for_import = threads
        .iter()
        .find(|t| t.waits_for_name() == Some("import of slow_models"))
        .unwrap_or_else(|| panic!("a thread waits for slow_models' import\n{}", run.describe()));
    assert!(
        functions(waiting_for_import).contains(&"view_a".to_string()),
        "that thread serves /a\n{}",
        run.describe()
    );
    let other = threads.iter().find(|t| *t != waiting_for_import).unwrap();
    assert_eq!(
        other.held_by,
        [waiting_for_import.tid],
        "the other waits for a lock the first holds\n{}",
        run.describe()
    );
    // The registry lock is created when mod_wsgi preloads the application
    // at the daemon's start: named by its creation line when the tracer ran
    // then (a lock made before the tracer started has no known creation).
    if tracer_first {
        assert_eq!(
            other.waits_for_name(),
            Some("wsgi/registry.py:6"),
            "the other waits for the registry lock\n{}",
            run.describe()
        );
    }
    let f = functions(other);
    assert!(
        f.contains(&"view_b".to_string()) && f.contains(&"<module>".to_string()),
        "the other serves /b and runs slow_models' top level: {f:?}\n{}",
        run.describe()
    );
}

#[test]
fn concurrent_first_requests_deadlock_is_reported() {
    concurrent_first_requests_deadlock(true);
}

#[test]
fn deadlock_is_reported_when_attached_to_a_running_apache() {
    concurrent_first_requests_deadlock(false);
}

/// The two URLs served by two daemon processes (groups `ga`, `gb`): neither
/// process has a cycle alone, the inversion is between lock classes (the
/// registry lock is created at the same Python line in both, the global
/// import lock by the same C code, and each module's import lock by the
/// same importlib line), and each finding names both processes. Two class
/// cycles are real here: registry lock <-> global import lock, and registry
/// lock <-> slow_models' module lock (taken inside the global one).
#[test]
fn split_across_two_daemons_is_a_class_level_inversion() {
    require_root();
    let _serial = one_at_a_time();
    let watcher = Watcher::start(tracer_args(true));
    let apache = Apache::start(WsgiMode::TwoDaemonGroups, Duration::from_millis(100));
    let timeout = Duration::from_secs(20);
    apache.get("/b-imp", timeout).expect("/b-imp answers");
    apache.get("/a-imp", timeout).expect("/a-imp answers");
    let (ga, gb) = (apache.daemon_pids("ga"), apache.daemon_pids("gb"));
    let ours = apache.pids();
    std::thread::sleep(Duration::from_secs(1));
    let run = watcher.stop();
    apache.stop();

    let findings = inversions_in(&run, &ours);
    assert!(
        (1..=2).contains(&findings.len()),
        "one or two inversions\n{}",
        run.describe()
    );
    for finding in &findings {
        let pids: Vec<u32> = finding.cycle.iter().map(|e| e.pid).collect();
        assert!(
            pids.iter().any(|p| ga.contains(p)) && pids.iter().any(|p| gb.contains(p)),
            "its two sides are in the two daemons ga {ga:?} and gb {gb:?}: {pids:?}\n{}",
            run.describe()
        );
        assert_eq!(finding.level, Level::Class, "{}", run.describe());
        assert!(
            finding
                .locks
                .iter()
                .any(|l| l.name.as_deref() == Some("wsgi/registry.py:6")),
            "the registry lock is in it\n{}",
            run.describe()
        );
    }
    assert!(
        findings.iter().any(|f| f
            .classes
            .iter()
            .any(|c| c.contains("_PyImport_AcquireLock"))),
        "the global import lock's class is the C code that makes it, the same in both daemons\n{}",
        run.describe()
    );
}

/// No false alarms: Apache serving a static file and a WSGI view with a
/// consistent lock order under wrk for 30 s, locktrace host-wide: nothing
/// reported from that Apache (APR, glibc, the GIL, mod_wsgi), nothing lost.
#[test]
fn no_false_alarms_under_load() {
    require_root();
    let _serial = one_at_a_time();
    let watcher = Watcher::start(&[]);
    let apache = Apache::start(WsgiMode::Daemon { processes: 2 }, Duration::from_millis(0));
    let ours = apache.pids();
    let load = |path: &str| {
        let url = apache.url(path);
        std::process::Command::new("/usr/bin/wrk")
            .args(["-t2", "-c8", "-d30s", &url])
            .output()
            .expect("wrk (apt-get install wrk)")
    };
    let (ok, static_file) = std::thread::scope(|s| {
        let ok = s.spawn(|| load("/ok"));
        let static_file = s.spawn(|| load("/static/hello.txt"));
        (ok.join().unwrap(), static_file.join().unwrap())
    });
    let run = watcher.stop();
    apache.stop();
    for out in [&ok, &static_file] {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("Requests/sec"),
            "wrk: {text}"
        );
        assert!(!text.contains("Non-2xx"), "every request answered: {text}");
    }
    let findings = records_of(&run, &ours);
    assert!(findings.is_empty(), "no finding from Apache: {findings:?}");
    assert_eq!(run.report.summary.lost_events, 0, "{}", run.describe());
}
