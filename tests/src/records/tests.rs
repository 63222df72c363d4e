//! The record types against locktrace's real output, without root: one line
//! of each record type (and of each optional part: a gate, a shared lock, a
//! class cycle, Python frames) captured from the release build on the
//! fixtures, with stacks cut to one or two frames and build paths shortened.

use super::*;

const INVERSION: &str = r#"{"type":"lock_order_inversion","id":1,"pid":13740,"comm":"ab_ba_nofp","origin":{"cgroup":"/system.slice/apache2.service","unit":"apache2.service","container":null},"locks":[{"addr":"0x5626e3beb080","kind":"mutex","name":"mutex_a"},{"addr":"0x5626e3beb0c0","kind":"mutex","name":"mutex_b"}],"cycle":[{"from":{"addr":"0x5626e3beb080","kind":"mutex","name":"mutex_a"},"to":{"addr":"0x5626e3beb0c0","kind":"mutex","name":"mutex_b"},"pid":13740,"tid":13751,"comm":"ab_ba_nofp","origin":{"cgroup":"/system.slice/apache2.service","unit":"apache2.service","container":null},"thread":"ab_ba_nofp","stack":[{"addr":"0x7fac9a56d37e","module":"/usr/lib/x86_64-linux-gnu/libc.so.6","function":"___pthread_mutex_lock","offset":14,"file":"./nptl/pthread_mutex_lock.c","line":84,"build_id":null,"file_offset":null},{"addr":"0x5626e3be81cb","module":"target/fixtures/ab_ba_nofp","function":"lock_ab","offset":34,"file":"tests/fixtures/ab_ba.c","line":14,"build_id":null,"file_offset":null}],"held_stack":[{"addr":"0x5626e3be81bc","module":"target/fixtures/ab_ba_nofp","function":"lock_ab","offset":19,"file":"tests/fixtures/ab_ba.c","line":13,"build_id":null,"file_offset":null}]},{"from":{"addr":"0x5626e3beb0c0","kind":"mutex","name":"mutex_b"},"to":{"addr":"0x5626e3beb080","kind":"mutex","name":"mutex_a"},"pid":13740,"tid":13753,"comm":"ab_ba_nofp","origin":{"cgroup":"/system.slice/apache2.service","unit":"apache2.service","container":null},"thread":"ab_ba_nofp","stack":[{"addr":"0x7fac9a56d37e","module":"/usr/lib/x86_64-linux-gnu/libc.so.6","function":"___pthread_mutex_lock","offset":14,"file":"./nptl/pthread_mutex_lock.c","line":84,"build_id":null,"file_offset":null},{"addr":"0x5626e3be8211","module":"target/fixtures/ab_ba_nofp","function":"lock_ba","offset":34,"file":"tests/fixtures/ab_ba.c","line":22,"build_id":null,"file_offset":null}],"held_stack":[{"addr":"0x5626e3be8202","module":"target/fixtures/ab_ba_nofp","function":"lock_ba","offset":19,"file":"tests/fixtures/ab_ba.c","line":21,"build_id":null,"file_offset":null}]}],"guarded":false,"gate":null,"level":"instance","classes":[],"time":"2026-12-07T17:04:21.123Z","fingerprint":"0123456789abcdef"}"#;

const SUMMARY: &str = r#"{"type":"summary","events":6,"dependencies":0,"locks":0,"cycles":0,"lost_events":0,"truncated_cycle_searches":0,"counters":{"acquisitions":3,"dependency_cache_full":0,"dependency_events":0,"futex_wait_ns":745327402,"futex_waits":9,"held_overflow":0,"lost_events":0,"releases":3,"stack_truncated":0,"unmatched_releases":0},"contention":[{"pid":15128,"comm":"futex_lock_nofp","addr":"0x5598dbcba03c","name":"futex_lock_word","waits":7,"wait_ns":343256883,"lock_waits":0},{"pid":15128,"comm":"futex_lock_nofp","addr":"0x7f47c8540990","name":null,"waits":1,"wait_ns":352025972,"lock_waits":0}],"coverage":{"futex_waits":8,"lock_waits":0,"untraced_waits":8,"untraced":[{"pid":15128,"comm":"futex_lock_nofp","addr":"0x5598dbcba03c","name":"futex_lock_word","waits":7,"wait_ns":343256883,"site":[]}]},"forgotten_processes":1,"forgotten_dependencies":0,"library_same_class_nesting":0,"same_class_notes":0,"repeated_findings":0,"suppressed_findings":0,"dropped_dependencies":0,"evicted_locks":0,"evicted_dependencies":0,"lock_facts_not_kept":0,"lock_memory":{"before_free_watch":0,"on_stack":0,"unwatched":0,"processes_watched":1,"watches_refused":0},"unprocessed_records":0,"handoff_cycles":0,"unparsable_processes":0,"stalled_memory_reads":0,"probed_files":["/usr/lib/x86_64-linux-gnu/libc.so.6"],"processes_probed_late":0,"probe_delay_max_ms":0.0,"processes_not_probed":0,"duration_s":0.41170457,"dropped_records":0,"unopened_files":0,"schema":1}"#;

const SELF_DEADLOCK: &str = r#"{"type":"self_deadlock","id":1,"pid":14177,"comm":"self_deadlock_n","origin":{"cgroup":"/","unit":null,"container":null},"tid":14205,"thread":"self_deadlock_n","lock":{"addr":"0x55e69c3c10c0","kind":"mutex","name":"mutex_a"},"stack":[{"addr":"0x55e69c3be2e4","module":"target/fixtures/self_deadlock_nofp","function":"relock_a","offset":219,"file":"tests/fixtures/self_deadlock.c","line":41,"build_id":null,"file_offset":null}],"held_stack":[{"addr":"0x55e69c3be21c","module":"target/fixtures/self_deadlock_nofp","function":"relock_a","offset":19,"file":"tests/fixtures/self_deadlock.c","line":27,"build_id":null,"file_offset":null}],"time":"2026-12-07T17:04:21.123Z","fingerprint":"0123456789abcdef"}"#;

const SAME_CLASS_NESTING: &str = r#"{"type":"same_class_nesting","id":1,"pid":14388,"comm":"same_class_nofp","origin":{"cgroup":"/","unit":null,"container":null},"tid":14388,"thread":"same_class_nofp","class":"init@same_class_nofp+0x11a3 (open_account)","held":{"addr":"0x55f1456592a0","kind":"mutex","name":null},"requested":{"addr":"0x55f1456592e0","kind":"mutex","name":null},"stack":[{"addr":"0x55f1239031e8","module":"target/fixtures/same_class_nofp","function":"transfer","offset":45,"file":"tests/fixtures/same_class.c","line":23,"build_id":null,"file_offset":null}],"held_stack":[{"addr":"0x55f1239031db","module":"target/fixtures/same_class_nofp","function":"transfer","offset":32,"file":"tests/fixtures/same_class.c","line":22,"build_id":null,"file_offset":null}],"python_stack":[{"function":"Bank.transfer","file":"/srv/bank.py","line":23}],"note":true,"opposite":null,"time":"2026-12-07T17:04:21.123Z","fingerprint":"0123456789abcdef"}"#;

const DEADLOCK: &str = r#"{"type":"deadlock","id":2,"pid":14577,"comm":"deadlock_nofp","origin":{"cgroup":"/","unit":null,"container":null},"threads":[{"pid":14577,"comm":"deadlock_nofp","origin":{"cgroup":"/","unit":null,"container":null},"tid":14595,"thread":"deadlock_nofp","state":"S","waits_for":{"addr":"0x5578f9fde0e0","kind":"mutex","name":"mutex_b"},"waiting_s":0.405116111,"held_by":[14596],"holds":[{"lock":{"addr":"0x5578f9fde0a0","kind":"mutex","name":"mutex_a"},"taken_at":[{"addr":"0x5578f9fdb1ec","module":"target/fixtures/deadlock_nofp","function":"lock_ab","offset":19,"file":"tests/fixtures/deadlock.c","line":16,"build_id":null,"file_offset":null}]}],"stack":[{"addr":"0x5578f9fdb20a","module":"target/fixtures/deadlock_nofp","function":"lock_ab","offset":49,"file":"tests/fixtures/deadlock.c","line":18,"build_id":null,"file_offset":null}]},{"pid":14577,"comm":"deadlock_nofp","origin":{"cgroup":"/","unit":null,"container":null},"tid":14596,"thread":"deadlock_nofp","state":"S","waits_for":{"addr":"0x5578f9fde0a0","kind":"mutex","name":"mutex_a"},"waiting_s":0.405101984,"held_by":[14595],"holds":[{"lock":{"addr":"0x5578f9fde0e0","kind":"mutex","name":"mutex_b"},"taken_at":[{"addr":"0x5578f9fdb241","module":"target/fixtures/deadlock_nofp","function":"lock_ba","offset":19,"file":"tests/fixtures/deadlock.c","line":25,"build_id":null,"file_offset":null}]}],"stack":[{"addr":"0x5578f9fdb25f","module":"target/fixtures/deadlock_nofp","function":"lock_ba","offset":49,"file":"tests/fixtures/deadlock.c","line":27,"build_id":null,"file_offset":null}]}],"inversion":1,"time":"2026-12-07T17:04:21.123Z","fingerprint":"0123456789abcdef"}"#;

const LOCK_WAIT_TIMEOUT: &str = r#"{"type":"lock_wait_timeout","id":1,"pid":14725,"comm":"hang_nofp","origin":{"cgroup":"/","unit":null,"container":null},"waiter":{"pid":14725,"comm":"hang_nofp","origin":{"cgroup":"/","unit":null,"container":null},"tid":14745,"thread":"hang_nofp","state":"S","waits_for":{"addr":"0x5602d86f7080","kind":"mutex","name":"mutex_a"},"waiting_s":1.101481605,"held_by":[14743],"holds":[],"stack":[{"addr":"0x5602d86f41f1","module":"target/fixtures/hang_nofp","function":"blocked_waiter","offset":19,"file":"tests/fixtures/hang.c","line":22,"build_id":null,"file_offset":null}]},"holders":[{"pid":14725,"comm":"hang_nofp","origin":{"cgroup":"/","unit":null,"container":null},"tid":14743,"thread":"hang_nofp","state":"S","waits_for":null,"waiting_s":null,"held_by":[],"holds":[{"lock":{"addr":"0x5602d86f7080","kind":"mutex","name":"mutex_a"},"taken_at":[{"addr":"0x5602d86f41bc","module":"target/fixtures/hang_nofp","function":"slow_holder","offset":19,"file":"tests/fixtures/hang.c","line":15,"build_id":null,"file_offset":null}]}],"stack":[{"addr":"0x5602d86f41c9","module":"target/fixtures/hang_nofp","function":"slow_holder","offset":32,"file":"tests/fixtures/hang.c","line":16,"build_id":null,"file_offset":null}]}],"time":"2026-12-07T17:04:21.123Z","fingerprint":"0123456789abcdef"}"#;

const BLOCKED_THREAD: &str = r#"{"type":"blocked_thread","pid":15476,"comm":"deadlock_nofp","origin":{"cgroup":"/","unit":null,"container":null},"tid":15478,"thread":"deadlock_nofp","state":"S","waits_for":{"addr":"0x563a4d9b70e0","kind":"mutex","name":"mutex_b"},"waiting_s":null,"held_by":[15479],"holds":[{"lock":{"addr":"0x563a4d9b70a0","kind":"mutex","name":"mutex_a"},"taken_at":[]}],"stack":[{"addr":"0x563a4d9b420a","module":"target/fixtures/deadlock_nofp","function":"lock_ab","offset":49,"file":"tests/fixtures/deadlock.c","line":18,"build_id":null,"file_offset":null}]}"#;

const CLASS_INVERSION: &str = r#"{"type":"lock_order_inversion","id":1,"pid":14853,"comm":"class_split_nof","origin":{"cgroup":"/","unit":null,"container":null},"locks":[{"addr":"0x559b2ae22080","kind":"mutex","name":"mutex_x"},{"addr":"0x559b2ae220c0","kind":"mutex","name":"mutex_y"}],"cycle":[{"from":{"addr":"0x559b2ae22080","kind":"mutex","name":"mutex_x"},"to":{"addr":"0x559b2ae220c0","kind":"mutex","name":"mutex_y"},"pid":14853,"tid":14853,"comm":"class_split_nof","origin":{"cgroup":"/","unit":null,"container":null},"thread":"class_split_nof","stack":[{"addr":"0x559b2ae1f1bb","module":"target/fixtures/class_split_nofp","function":"x_then_y","offset":34,"file":"tests/fixtures/class_split.c","line":16,"build_id":null,"file_offset":null}],"held_stack":[{"addr":"0x559b2ae1f1ac","module":"target/fixtures/class_split_nofp","function":"x_then_y","offset":19,"file":"tests/fixtures/class_split.c","line":15,"build_id":null,"file_offset":null}]},{"from":{"addr":"0x559b2ae220c0","kind":"mutex","name":"mutex_y"},"to":{"addr":"0x559b2ae22080","kind":"mutex","name":"mutex_x"},"pid":14855,"tid":14855,"comm":"class_split_nof","origin":{"cgroup":"/","unit":null,"container":null},"thread":"class_split_nof","stack":[{"addr":"0x559b2ae1f201","module":"target/fixtures/class_split_nofp","function":"y_then_x","offset":34,"file":"tests/fixtures/class_split.c","line":24,"build_id":null,"file_offset":null}],"held_stack":[{"addr":"0x559b2ae1f1f2","module":"target/fixtures/class_split_nofp","function":"y_then_x","offset":19,"file":"tests/fixtures/class_split.c","line":23,"build_id":null,"file_offset":null}]}],"guarded":false,"gate":null,"level":"class","classes":["class_split_nofp:mutex_x","class_split_nofp:mutex_y"],"time":"2026-12-07T17:04:21.123Z","fingerprint":"0123456789abcdef"}"#;

const GUARDED_INVERSION: &str = r#"{"type":"lock_order_inversion","id":1,"pid":14919,"comm":"guarded_nofp","origin":{"cgroup":"/","unit":null,"container":null},"locks":[{"addr":"0x55bc082070a0","kind":"mutex","name":"mutex_a"},{"addr":"0x55bc082070e0","kind":"mutex","name":"mutex_b"}],"cycle":[{"from":{"addr":"0x55bc082070a0","kind":"mutex","name":"mutex_a"},"to":{"addr":"0x55bc082070e0","kind":"mutex","name":"mutex_b"},"pid":14919,"tid":14990,"comm":"guarded_nofp","origin":{"cgroup":"/","unit":null,"container":null},"thread":"guarded_nofp","stack":[{"addr":"0x55bc082041d3","module":"target/fixtures/guarded_nofp","function":"a_then_b","offset":74,"file":"tests/fixtures/guarded.c","line":21,"build_id":null,"file_offset":null}],"held_stack":[{"addr":"0x55bc082041c4","module":"target/fixtures/guarded_nofp","function":"a_then_b","offset":59,"file":"tests/fixtures/guarded.c","line":20,"build_id":null,"file_offset":null}]},{"from":{"addr":"0x55bc082070e0","kind":"mutex","name":"mutex_b"},"to":{"addr":"0x55bc082070a0","kind":"mutex","name":"mutex_a"},"pid":14919,"tid":14992,"comm":"guarded_nofp","origin":{"cgroup":"/","unit":null,"container":null},"thread":"guarded_nofp","stack":[{"addr":"0x55bc0820426a","module":"target/fixtures/guarded_nofp","function":"b_then_a","offset":74,"file":"tests/fixtures/guarded.c","line":37,"build_id":null,"file_offset":null}],"held_stack":[{"addr":"0x55bc0820425b","module":"target/fixtures/guarded_nofp","function":"b_then_a","offset":59,"file":"tests/fixtures/guarded.c","line":36,"build_id":null,"file_offset":null}]}],"guarded":true,"gate":{"addr":"0x55bc08207060","kind":"mutex","name":"mutex_g"},"level":"instance","classes":[],"time":"2026-12-07T17:04:21.123Z","fingerprint":"0123456789abcdef"}"#;

const SHARED_INVERSION: &str = r#"{"type":"lock_order_inversion","id":1,"pid":15045,"comm":"shared_workers_","origin":{"cgroup":"/","unit":null,"container":null},"locks":[{"addr":"0x7f5be328a000","kind":"mutex","name":null,"shared":"dev 0:1 inode 1030 offset 0x0 (/dev/zero (deleted))"},{"addr":"0x7f5be328a028","kind":"mutex","name":null,"shared":"dev 0:1 inode 1030 offset 0x28 (/dev/zero (deleted))"}],"cycle":[{"from":{"addr":"0x7f5be328a000","kind":"mutex","name":null,"shared":"dev 0:1 inode 1030 offset 0x0 (/dev/zero (deleted))"},"to":{"addr":"0x7f5be328a028","kind":"mutex","name":null,"shared":"dev 0:1 inode 1030 offset 0x28 (/dev/zero (deleted))"},"pid":15045,"tid":15045,"comm":"shared_workers_","origin":{"cgroup":"/","unit":null,"container":null},"thread":"shared_workers_","stack":[{"addr":"0x5616c8ff41ff","module":"target/fixtures/shared_workers_nofp","function":"x_then_y","offset":38,"file":"tests/fixtures/shared_workers.c","line":20,"build_id":null,"file_offset":null}],"held_stack":[{"addr":"0x5616c8ff41ec","module":"target/fixtures/shared_workers_nofp","function":"x_then_y","offset":19,"file":"tests/fixtures/shared_workers.c","line":19,"build_id":null,"file_offset":null}]},{"from":{"addr":"0x7f5be328a028","kind":"mutex","name":null,"shared":"dev 0:1 inode 1030 offset 0x28 (/dev/zero (deleted))"},"to":{"addr":"0x7f5be328a000","kind":"mutex","name":null,"shared":"dev 0:1 inode 1030 offset 0x0 (/dev/zero (deleted))"},"pid":15046,"tid":15046,"comm":"shared_workers_","origin":null,"thread":"shared_workers_","stack":[{"addr":"0x5616c8ff424d","module":"target/fixtures/shared_workers_nofp","function":"y_then_x","offset":38,"file":"tests/fixtures/shared_workers.c","line":28,"build_id":null,"file_offset":null}],"held_stack":[{"addr":"0x5616c8ff423e","module":"target/fixtures/shared_workers_nofp","function":"y_then_x","offset":23,"file":"tests/fixtures/shared_workers.c","line":27,"build_id":null,"file_offset":null}]}],"guarded":false,"gate":null,"level":"instance","classes":[],"time":"2026-12-07T17:04:21.123Z","fingerprint":"0123456789abcdef"}"#;

const PYTHON_INVERSION: &str = r#"{"type":"lock_order_inversion","id":1,"pid":15200,"comm":"python3","origin":{"cgroup":"/","unit":null,"container":null},"locks":[{"addr":"0x3a71210","kind":"semaphore","name":"python/frames_ab_ba.py:16"},{"addr":"0x3a71240","kind":"semaphore","name":"python/frames_ab_ba.py:17"}],"cycle":[{"from":{"addr":"0x3a71210","kind":"semaphore","name":"python/frames_ab_ba.py:16"},"to":{"addr":"0x3a71240","kind":"semaphore","name":"python/frames_ab_ba.py:17"},"pid":15200,"tid":15237,"comm":"python3","origin":{"cgroup":"/","unit":null,"container":null},"thread":"python3","stack":[{"addr":"0x7fc9e1775e05","module":"/usr/lib/x86_64-linux-gnu/libc.so.6","function":"__new_sem_trywait","offset":5,"file":"./nptl/sem_waitcommon.c","line":139,"build_id":null,"file_offset":null}],"held_stack":[{"addr":"0x5898db","module":"/usr/bin/python3.11","function":null,"offset":1611995,"file":null,"line":null,"build_id":null,"file_offset":null}],"held_python_stack":[{"function":"take_a_then_b","file":"tests/python/frames_ab_ba.py","line":39}],"python_stack":[{"function":"take_a_then_b","file":"tests/python/frames_ab_ba.py","line":40}]},{"from":{"addr":"0x3a71240","kind":"semaphore","name":"python/frames_ab_ba.py:17"},"to":{"addr":"0x3a71210","kind":"semaphore","name":"python/frames_ab_ba.py:16"},"pid":15200,"tid":15240,"comm":"python3","origin":{"cgroup":"/","unit":null,"container":null},"thread":"python3","stack":[{"addr":"0x7fc9e1775e05","module":"/usr/lib/x86_64-linux-gnu/libc.so.6","function":"__new_sem_trywait","offset":5,"file":"./nptl/sem_waitcommon.c","line":139,"build_id":null,"file_offset":null}],"held_stack":[{"addr":"0x5898db","module":"/usr/bin/python3.11","function":null,"offset":1611995,"file":null,"line":null,"build_id":null,"file_offset":null}],"held_python_stack":[{"function":"take_b_then_a","file":"tests/python/frames_ab_ba.py","line":45}],"python_stack":[{"function":"take_b_then_a","file":"tests/python/frames_ab_ba.py","line":46}]}],"guarded":false,"gate":null,"level":"instance","classes":[],"time":"2026-12-07T17:04:21.123Z","fingerprint":"0123456789abcdef"}"#;

const PYTHON_DEADLOCK: &str = r#"{"type":"deadlock","id":2,"pid":15296,"comm":"python3","origin":{"cgroup":"/","unit":null,"container":null},"threads":[{"pid":15296,"comm":"python3","origin":{"cgroup":"/","unit":null,"container":null},"tid":15311,"thread":"python3","state":"S","waits_for":{"addr":"0x2cde3060","kind":"semaphore","name":"python/deadlock.py:13"},"waiting_s":0.647991641,"held_by":[15312],"holds":[{"lock":{"addr":"0x2cde3030","kind":"semaphore","name":"python/deadlock.py:12"},"taken_at":[{"addr":"0x5898db","module":"/usr/bin/python3.11","function":null,"offset":1611995,"file":null,"line":null,"build_id":null,"file_offset":null}],"taken_at_python":[{"function":"first_a_then_b","file":"tests/python/deadlock.py","line":18}]}],"stack":[{"addr":"0x7f3efd34cf16","module":"/usr/lib/x86_64-linux-gnu/libc.so.6","function":"__futex_abstimed_wait_common","offset":198,"file":"./nptl/futex-internal.c","line":57,"build_id":null,"file_offset":null}],"python_stack":[{"function":"first_a_then_b","file":"tests/python/deadlock.py","line":20}]},{"pid":15296,"comm":"python3","origin":{"cgroup":"/","unit":null,"container":null},"tid":15312,"thread":"python3","state":"S","waits_for":{"addr":"0x2cde3030","kind":"semaphore","name":"python/deadlock.py:12"},"waiting_s":0.648089034,"held_by":[15311],"holds":[{"lock":{"addr":"0x2cde3060","kind":"semaphore","name":"python/deadlock.py:13"},"taken_at":[{"addr":"0x5898db","module":"/usr/bin/python3.11","function":null,"offset":1611995,"file":null,"line":null,"build_id":null,"file_offset":null}],"taken_at_python":[{"function":"first_b_then_a","file":"tests/python/deadlock.py","line":25}]}],"stack":[{"addr":"0x7f3efd34cf16","module":"/usr/lib/x86_64-linux-gnu/libc.so.6","function":"__futex_abstimed_wait_common","offset":198,"file":"./nptl/futex-internal.c","line":57,"build_id":null,"file_offset":null}],"python_stack":[{"function":"first_b_then_a","file":"tests/python/deadlock.py","line":27}]}],"inversion":null,"time":"2026-12-07T17:04:21.123Z","fingerprint":"0123456789abcdef"}"#;

/// The one record of `line`.
const LOCK_GRAPH: &str = r#"{"type":"lock_graph","classes":["ab_ba_nofp:mutex_a","ab_ba_nofp:mutex_b"],"dependencies":[{"from":0,"to":1,"seen":1,"pid":13740,"thread":"ab_ba_nofp"},{"from":1,"to":0,"seen":1,"pid":13740,"thread":"ab_ba_nofp"}],"omitted_dependencies":0}"#;

fn parse_one(line: &str) -> Record {
    let mut records = parse_records(line).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(records.len(), 1);
    records.remove(0)
}

fn inversion(line: &str) -> Inversion {
    match parse_one(line) {
        Record::LockOrderInversion(x) => x,
        other => panic!("not an inversion: {other:?}"),
    }
}

fn deadlock(line: &str) -> Deadlock {
    match parse_one(line) {
        Record::Deadlock(x) => x,
        other => panic!("not a deadlock: {other:?}"),
    }
}

#[test]
fn lock_order_inversion() {
    let inv = inversion(INVERSION);
    assert_eq!(
        (inv.id, inv.pid, inv.comm.as_str()),
        (1, 13740, "ab_ba_nofp")
    );
    assert_eq!(inv.time, "2026-12-07T17:04:21.123Z");
    assert_eq!(
        (inv.level, inv.guarded, &inv.gate),
        (Level::Instance, false, &None)
    );
    assert!(inv.classes.is_empty());
    let labels: Vec<&str> = inv.locks.iter().map(Lock::label).collect();
    assert_eq!(labels, ["mutex_a", "mutex_b"]);
    let ab = &inv.cycle[0];
    assert_eq!((ab.from.kind, ab.to.label()), (LockKind::Mutex, "mutex_b"));
    assert_eq!((ab.pid, ab.tid), (13740, 13751));
    assert_eq!(
        ab.stack[0].function.as_deref(),
        Some("___pthread_mutex_lock")
    );
    assert_eq!(ab.stack[0].offset, Some(14));
    assert!(ab.stack[1].is_at("lock_ab", "ab_ba.c", 14));
    assert!(ab.held_stack[0].is_at("lock_ab", "ab_ba.c", 13));
    assert!(ab.python_stack.is_empty());
    assert_eq!(ab.from.shared, None);
    let apache = Some(Origin {
        cgroup: "/system.slice/apache2.service".into(),
        unit: Some("apache2.service".into()),
        container: None,
    });
    assert_eq!(inv.origin, apache);
    assert_eq!(ab.origin, apache);
}

#[test]
fn class_level_inversion() {
    let inv = inversion(CLASS_INVERSION);
    assert_eq!(inv.level, Level::Class);
    assert_eq!(
        inv.classes,
        ["class_split_nofp:mutex_x", "class_split_nofp:mutex_y"]
    );
    assert_ne!(inv.cycle[0].pid, inv.cycle[1].pid);
    assert!(inv.cycle.iter().all(|e| e.restored.is_none()));
}

/// An agent's class inversion, one side of which an earlier run learned
/// (restored from its state, `agent_state.rs`): that edge says when.
#[test]
fn class_level_inversion_with_a_restored_edge() {
    let held = r#""held_stack":[{"addr":"0x559b2ae1f1ac","module":"target/fixtures/class_split_nofp","function":"x_then_y","offset":19,"file":"tests/fixtures/class_split.c","line":15,"build_id":null,"file_offset":null}]"#;
    let line = CLASS_INVERSION.replacen(
        held,
        &format!(r#"{held},"restored":{{"learned":"2026-12-07T23:18:16.626Z"}}"#),
        1,
    );
    assert_ne!(line, CLASS_INVERSION);
    let inv = inversion(&line);
    assert_eq!(
        inv.cycle[0].restored,
        Some(Restored {
            learned: "2026-12-07T23:18:16.626Z".into()
        })
    );
    assert_eq!(inv.cycle[1].restored, None);
}

#[test]
fn guarded_inversion() {
    let inv = inversion(GUARDED_INVERSION);
    assert!(inv.guarded);
    assert_eq!(inv.gate.as_ref().map(Lock::label), Some("mutex_g"));
}

#[test]
fn inversion_through_shared_locks() {
    let inv = inversion(SHARED_INVERSION);
    assert_eq!(inv.locks[0].name, None);
    assert_eq!(inv.locks[0].label(), "<unnamed>");
    assert_eq!(
        inv.locks[1].shared.as_deref(),
        Some("dev 0:1 inode 1030 offset 0x28 (/dev/zero (deleted))")
    );
    // The second worker was gone before its cgroup was read.
    assert_eq!(
        inv.cycle[0].origin.as_ref().map(|o| o.cgroup.as_str()),
        Some("/")
    );
    assert_eq!(inv.cycle[1].origin, None);
}

#[test]
fn python_inversion() {
    let inv = inversion(PYTHON_INVERSION);
    assert_eq!(inv.locks[0].kind, LockKind::Semaphore);
    assert_eq!(inv.locks[0].label(), "python/frames_ab_ba.py:16");
    let edge = &inv.cycle[0];
    assert_eq!(
        edge.python_stack[0],
        PyFrame {
            function: "take_a_then_b".into(),
            file: "tests/python/frames_ab_ba.py".into(),
            line: 40
        }
    );
    // Where Python code took the held lock, beside its native call site.
    assert_eq!(
        edge.held_python_stack,
        [PyFrame {
            function: "take_a_then_b".into(),
            file: "tests/python/frames_ab_ba.py".into(),
            line: 39
        }]
    );
    // The interpreter has no symbols: a frame of nulls but its module.
    let held = &edge.held_stack[0];
    assert_eq!(held.module.as_deref(), Some("/usr/bin/python3.11"));
    assert_eq!(
        (&held.function, &held.file, held.line),
        (&None, &None, None)
    );
}

#[test]
fn self_deadlock() {
    let Record::SelfDeadlock(d) = parse_one(SELF_DEADLOCK) else {
        panic!("not a self_deadlock")
    };
    assert_eq!((d.tid, d.lock.label()), (14205, "mutex_a"));
    assert!(d.stack[0].is_at("relock_a", "self_deadlock.c", 41));
    assert!(d.held_stack[0].is_at("relock_a", "self_deadlock.c", 27));
}

#[test]
fn same_class_nesting() {
    let Record::SameClassNesting(n) = parse_one(SAME_CLASS_NESTING) else {
        panic!("not a same_class_nesting")
    };
    assert_eq!(n.class, "init@same_class_nofp+0x11a3 (open_account)");
    assert_ne!(n.held.addr, n.requested.addr);
    assert!(n.stack[0].is_at("transfer", "same_class.c", 23));
    assert_eq!(
        (n.python_stack[0].function.as_str(), n.python_stack[0].line),
        ("Bank.transfer", 23)
    );
}

#[test]
fn deadlock_record() {
    let d = deadlock(DEADLOCK);
    assert_eq!((d.id, d.inversion), (2, Some(1)));
    let t = &d.threads[0];
    assert_eq!(
        (t.state.as_str(), t.waits_for_name()),
        ("S", Some("mutex_b"))
    );
    assert_eq!(t.held_by, [d.threads[1].tid]);
    assert!(t.waiting_s.is_some_and(|s| s > 0.0));
    assert_eq!(t.holds[0].lock.label(), "mutex_a");
    assert!(t.holds[0].taken_at[0].is_at("lock_ab", "deadlock.c", 16));
    assert!(t.python_stack.is_empty());
}

#[test]
fn python_deadlock() {
    let d = deadlock(PYTHON_DEADLOCK);
    assert_eq!(d.inversion, None);
    let top = &d.threads[0].python_stack[0];
    assert_eq!((top.function.as_str(), top.line), ("first_a_then_b", 20));
    let took = &d.threads[0].holds[0].taken_at_python[0];
    assert_eq!((took.function.as_str(), took.line), ("first_a_then_b", 18));
    // A C program's held lock has none.
    assert!(deadlock(DEADLOCK).threads[0].holds[0]
        .taken_at_python
        .is_empty());
}

#[test]
fn lock_wait_timeout() {
    let Record::LockWaitTimeout(h) = parse_one(LOCK_WAIT_TIMEOUT) else {
        panic!("not a lock_wait_timeout")
    };
    assert_eq!(h.waiter.waits_for_name(), Some("mutex_a"));
    assert!(h.waiter.holds.is_empty());
    let holder = &h.holders[0];
    assert_eq!((&holder.waits_for, holder.waiting_s), (&None, None));
    assert!(holder.stack[0].is_at("slow_holder", "hang.c", 16));
}

#[test]
fn blocked_thread() {
    let Record::BlockedThread(t) = parse_one(BLOCKED_THREAD) else {
        panic!("not a blocked_thread")
    };
    assert_eq!(t.pid, 15476);
    assert_eq!(t.waiting_s, None);
    assert!(t.holds[0].taken_at.is_empty(), "taken before tracing");
}

#[test]
fn summary() {
    let report = Report::parse(&format!("{SUMMARY}\n")).unwrap();
    assert!(report.records.is_empty());
    let s = &report.summary;
    assert_eq!((s.events, s.cycles, s.forgotten_processes), (6, 0, 1));
    assert_eq!(s.counters["futex_waits"], 9);
    assert_eq!(s.contention[0].name.as_deref(), Some("futex_lock_word"));
    assert_eq!(
        (s.contention[0].waits, s.contention[1].name.as_deref()),
        (7, None)
    );
    assert_eq!(s.probed_files, ["/usr/lib/x86_64-linux-gnu/libc.so.6"]);
}

#[test]
fn a_run_is_records_then_its_summary() {
    let raw = format!("{INVERSION}\n{DEADLOCK}\n{SUMMARY}\n");
    let report = Report::parse(&raw).unwrap();
    assert_eq!(report.inversions().len(), 1);
    assert_eq!(report.deadlocks().len(), 1);
    assert!(report.self_deadlocks().is_empty());
    assert!(Report::parse(&format!("{SUMMARY}\n{INVERSION}\n")).is_err());
    assert!(Report::parse(&format!("{SUMMARY}\n{SUMMARY}\n")).is_err());
    assert!(Report::parse(INVERSION).is_err(), "no summary");
}

#[test]
fn a_new_field_is_an_error() {
    for (line, field) in [
        (SUMMARY, r#""cycles":0,"#),
        (INVERSION, r#""level":"instance","#),
        (INVERSION, r#""line":13,"#),
        (DEADLOCK, r#""state":"S","#),
        (PYTHON_INVERSION, r#""line":40}"#),
    ] {
        assert!(line.contains(field), "{field}");
        let with_new = line.replacen(field, &format!("\"new\":1,{field}"), 1);
        let error = parse_records(&with_new).unwrap_err();
        assert!(error.contains("unknown field `new`"), "{field}: {error}");
    }
}

#[test]
fn a_missing_field_is_an_error() {
    // Nullable fields included: locktrace always writes them.
    for (line, field) in [
        (SUMMARY, r#""handoff_cycles":0,"#),
        (INVERSION, r#""gate":null,"#),
        (INVERSION, r#","line":13"#),
        (SHARED_INVERSION, r#","name":null"#),
        (BLOCKED_THREAD, r#""waiting_s":null,"#),
    ] {
        assert!(line.contains(field), "{field}");
        let error = parse_records(&line.replacen(field, "", 1)).unwrap_err();
        assert!(error.contains("missing field"), "without {field}: {error}");
    }
}

#[test]
fn an_unknown_record_type_or_kind_is_an_error() {
    assert!(parse_records(r#"{"type":"something_new","id":1}"#).is_err());
    assert!(parse_records(&INVERSION.replace(r#""kind":"mutex""#, r#""kind":"futex""#)).is_err());
}

#[test]
fn lock_graph() {
    let Record::LockGraph(g) = parse_one(LOCK_GRAPH) else {
        panic!("not a lock graph");
    };
    assert_eq!(g.classes.len(), 2);
    assert_eq!((g.dependencies[1].from, g.dependencies[1].to), (1, 0));
}
