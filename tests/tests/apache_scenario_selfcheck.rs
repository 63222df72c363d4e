//! The Apache + mod_wsgi scenario without any tracer: proves that the
//! deadlock of tests/wsgi is real (and only happens when the requests race),
//! so that tracer tests built on it test the tracer, not the scenario.

use std::thread;
use std::time::Duration;

use locktrace_e2e::apache::{Apache, HttpError, WsgiMode};
use locktrace_e2e::{group_members, require_root};

const SLOW: Duration = Duration::from_secs(1);
/// Far above an undisturbed `/a` (2 x SLOW) or `/b` (SLOW).
const HANG: Duration = Duration::from_secs(5);
const QUICK: Duration = Duration::from_secs(5);

fn start(mode: WsgiMode) -> Apache {
    require_root();
    Apache::start(mode, SLOW)
}

/// Stops Apache and checks that none of its processes survived.
fn stop(apache: Apache) -> bool {
    let pgid = apache.parent_pid();
    let graceful = apache.stop();
    assert!(group_members(pgid).is_empty(), "apache2 processes left");
    graceful
}

/// Both first requests at once; their results in order (first, second).
fn race(
    apache: &Apache,
    first: &str,
    second: &str,
) -> (Result<String, HttpError>, Result<String, HttpError>) {
    thread::scope(|s| {
        let one = s.spawn(|| apache.get(first, HANG));
        // Let `first` be first, well inside the race window.
        thread::sleep(Duration::from_millis(100));
        let two = s.spawn(|| apache.get(second, HANG));
        (one.join().unwrap(), two.join().unwrap())
    })
}

#[test]
fn sequenced_requests_answer() {
    let apache = start(WsgiMode::Daemon { processes: 1 });
    for path in ["/a", "/b", "/a", "/ok", "/static/hello.txt"] {
        let body = apache
            .get(path, QUICK)
            .unwrap_or_else(|e| panic!("{path}: {e}\n{}", apache.logs()));
        assert!(!body.is_empty(), "{path}");
    }
    assert!(stop(apache), "Apache should stop on SIGTERM");

    // Reverse order, fresh process state.
    let apache = start(WsgiMode::Daemon { processes: 1 });
    for path in ["/b", "/a", "/a-imp", "/b-imp"] {
        apache
            .get(path, QUICK)
            .unwrap_or_else(|e| panic!("{path}: {e}\n{}", apache.logs()));
    }
    assert!(stop(apache), "Apache should stop on SIGTERM");
}

/// Checks that the daemon of a fresh daemon-mode Apache deadlocks when
/// `first` and `second` race, and that `stuck` keeps hanging afterwards.
fn check_deadlock(first: &str, second: &str, stuck: &str) {
    let apache = start(WsgiMode::Daemon { processes: 1 });
    let daemons = apache.daemon_pids("g");
    assert_eq!(daemons.len(), 1, "{:?}", apache.processes());
    let (one, two) = race(&apache, first, second);
    assert_eq!(one, Err(HttpError::Timeout), "{first}\n{}", apache.logs());
    assert_eq!(two, Err(HttpError::Timeout), "{second}\n{}", apache.logs());
    // The registry lock is still held by a stuck thread.
    assert_eq!(
        apache.get(stuck, Duration::from_secs(3)),
        Err(HttpError::Timeout)
    );
    // The process is alive (other threads answer): stuck, not crashed.
    let served = apache.served_by("/pid", QUICK).expect("/pid");
    assert_eq!(
        vec![served.pid],
        daemons,
        "the same daemon, not a restarted one"
    );
    apache
        .get("/ok", QUICK)
        .expect("/ok does not touch the registry");
    stop(apache);
}

#[test]
fn racing_first_requests_deadlock() {
    check_deadlock("/b", "/a", "/a");
}

#[test]
fn racing_first_requests_deadlock_a_first() {
    check_deadlock("/a", "/b", "/a");
}

/// Python 2 flavour: the global import lock instead of the module lock.
#[test]
fn racing_first_requests_deadlock_global_import_lock() {
    check_deadlock("/b-imp", "/a-imp", "/a-imp");
}

#[test]
fn two_groups_serve_a_and_b_in_different_processes() {
    let apache = start(WsgiMode::TwoDaemonGroups);
    let a = apache.served_by("/a/pid", QUICK).expect("/a/pid");
    let b = apache.served_by("/b/pid", QUICK).expect("/b/pid");
    assert_ne!(a.pid, b.pid);
    assert_eq!((a.group.as_str(), b.group.as_str()), ("ga", "gb"));
    assert_eq!(apache.daemon_pids("ga"), vec![a.pid]);
    assert_eq!(apache.daemon_pids("gb"), vec![b.pid]);
    // Different interpreters: racing /a and /b cannot deadlock.
    let (one, two) = race(&apache, "/b", "/a");
    assert!(
        one.is_ok() && two.is_ok(),
        "{one:?} {two:?}\n{}",
        apache.logs()
    );
    assert!(stop(apache), "Apache should stop on SIGTERM");
}

#[test]
fn daemon_group_with_two_processes() {
    let apache = start(WsgiMode::Daemon { processes: 2 });
    let daemons = apache.daemon_pids("g");
    assert_eq!(daemons.len(), 2, "{:?}", apache.processes());
    for p in apache.processes() {
        assert_eq!(p.comm, "apache2", "{p:?}");
    }
    let served = apache.served_by("/pid", QUICK).expect("/pid");
    assert!(daemons.contains(&served.pid), "{served:?} {daemons:?}");
    assert!(stop(apache), "Apache should stop on SIGTERM");
}

#[test]
fn embedded_mode_answers_and_deadlocks() {
    let apache = start(WsgiMode::Embedded);
    let served = apache.served_by("/pid", QUICK).expect("/pid");
    assert_eq!(served.group, "", "no daemon group");
    assert!(apache.daemon_pids("g").is_empty());
    assert!(
        apache.pids().contains(&served.pid) && served.pid != apache.parent_pid(),
        "served by an apache2 worker: {served:?} {:?}",
        apache.processes()
    );
    apache.get("/ok", QUICK).expect("/ok");
    // One worker process (ServerLimit 1): the race deadlocks it too.
    let (one, two) = race(&apache, "/b", "/a");
    assert_eq!(
        (one, two),
        (Err(HttpError::Timeout), Err(HttpError::Timeout))
    );
    stop(apache);
}
