//! The printers and builders, against a table-driven fake symbolizer.

use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tracer_analysis::detector;
use tracer_analysis::model::{Dependency, Frame, Level, LockInstance as LockId, LockKind, PyFrame};
use tracer_common::Counter;

pub(crate) use crate::report::build::inversion;
use crate::report::summary::counters;
use crate::report::{Finding, Format, Reporter, Summary};
use crate::symbolize::Resolve;

const PID: u32 = 4242;
const MUTEX_A: u64 = 0x55d0c0a01040;
const MUTEX_B: u64 = 0x55d0c0a01080;

/// Symbolization from tables; unknown addresses give bare frames.
#[derive(Default)]
pub(crate) struct FakeResolve {
    frames: HashMap<(u32, u64), Frame>,
    locks: HashMap<(u32, u64), String>,
    procs: HashMap<u32, String>,
    origins: HashMap<u32, crate::host::proc::Origin>,
    /// Every `frames` call: (pid, addrs, first_is_ip).
    calls: Vec<(u32, Vec<u64>, bool)>,
}

impl FakeResolve {
    fn frame(
        mut self,
        pid: u32,
        addr: u64,
        func: &str,
        file: Option<(&str, u32)>,
        module: &str,
    ) -> Self {
        let frame = Frame {
            addr,
            module: Some(module.into()),
            function: Some(func.into()),
            offset: Some(if file.is_some() { 0x1a } else { 0 }),
            file: file.map(|(f, _)| f.into()),
            line: file.map(|(_, l)| l),
            ..Frame::default()
        };
        self.frames.insert((pid, addr), frame);
        self
    }
}

impl Resolve for FakeResolve {
    fn frames(&mut self, pid: u32, addrs: &[u64], first_is_ip: bool) -> Vec<Frame> {
        self.calls.push((pid, addrs.to_vec(), first_is_ip));
        addrs
            .iter()
            .map(|&addr| {
                self.frames.get(&(pid, addr)).cloned().unwrap_or(Frame {
                    addr,
                    ..Frame::default()
                })
            })
            .collect()
    }
    fn lock_name(&mut self, pid: u32, addr: u64) -> Option<String> {
        self.locks.get(&(pid, addr)).cloned()
    }
    fn process_name(&mut self, pid: u32) -> String {
        self.procs.get(&pid).cloned().unwrap_or_else(|| "?".into())
    }
    fn origin(&mut self, pid: u32) -> Option<crate::host::proc::Origin> {
        self.origins.get(&pid).cloned()
    }
}

fn dep(
    pid: u32,
    tid: u32,
    thread: &str,
    from: u64,
    to: u64,
    held: u64,
    stack: &[u64],
) -> Dependency {
    Dependency {
        from: LockId { pid, addr: from },
        to: LockId { pid, addr: to },
        from_kind: LockKind::Mutex,
        to_kind: LockKind::Mutex,
        pid,
        tid,
        thread: thread.into(),
        timestamp_ns: 1,
        held_stack: vec![held].into(),
        held_python: None,
        stack: stack.into(),
        gates: Box::new([]),
        chain_key: 0,
        python: vec![].into(),
        handoff: false,
    }
}

const LOCK_IP: u64 = 0x7f00_0008_a0f0;
const START_THREAD: u64 = 0x7f00_0008_9134;

/// The ab_ba fixture: worker1 takes a then b, worker2 b then a.
pub(crate) fn ab_ba() -> (detector::Inversion, FakeResolve) {
    let libc = "/usr/lib/x86_64-linux-gnu/libc.so.6";
    let bin = "/src/tests/fixtures/ab_ba";
    let src = "/src/tests/fixtures/ab_ba.c";
    let mut r = FakeResolve::default()
        .frame(PID, LOCK_IP, "pthread_mutex_lock", None, libc)
        .frame(PID, START_THREAD, "start_thread", None, libc)
        .frame(PID, 0x55d0_c0a0_0100, "worker_ab", Some((src, 21)), bin)
        .frame(PID, 0x55d0_c0a0_0110, "worker_ab", Some((src, 22)), bin)
        .frame(PID, 0x55d0_c0a0_0200, "worker_ba", Some((src, 31)), bin)
        .frame(PID, 0x55d0_c0a0_0210, "worker_ba", Some((src, 32)), bin);
    r.locks.insert((PID, MUTEX_A), "mutex_a".into());
    r.locks.insert((PID, MUTEX_B), "mutex_b".into());
    r.procs.insert(PID, "ab_ba".into());

    let stack_ab = [LOCK_IP, 0x55d0_c0a0_0110, START_THREAD];
    let stack_ba = [LOCK_IP, 0x55d0_c0a0_0210, START_THREAD];
    let cycle = detector::Inversion {
        id: 1,
        edges: vec![
            dep(
                PID,
                PID + 1,
                "worker1",
                MUTEX_A,
                MUTEX_B,
                0x55d0_c0a0_0100,
                &stack_ab,
            ),
            dep(
                PID,
                PID + 2,
                "worker2",
                MUTEX_B,
                MUTEX_A,
                0x55d0_c0a0_0200,
                &stack_ba,
            ),
        ],
        gate: None,
        level: Level::Instance,
        classes: Vec::new(),
        restored: Vec::new(),
    };
    (cycle, r)
}

/// A `Write` whose bytes the test can read back.
#[derive(Clone, Default)]
pub(super) struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Shared {
    pub(super) fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

pub(super) fn summary() -> Summary {
    Summary {
        events: 1234,
        dependencies: 2,
        locks: 2,
        cycles: 1,
        lost_events: 0,
        truncated_cycle_searches: 0,
        counters: counters(Counter::ALL.iter().map(|&c| {
            let v = match c {
                Counter::Acquire => 5000,
                Counter::HeldOverflow => 3,
                _ => 0,
            };
            (c, v)
        })),
        contention: vec![],
        coverage: Default::default(),
        forgotten_processes: 0,
        forgotten_dependencies: 0,
        library_same_class_nesting: 0,
        same_class_notes: 0,
        repeated_findings: 0,
        suppressed_findings: 0,
        dropped_dependencies: 0,
        evicted_locks: 0,
        evicted_dependencies: 0,
        lock_facts_not_kept: 0,
        lock_memory: Default::default(),
        unprocessed_records: 0,
        dropped_records: 0,
        unopened_files: 0,
        handoff_cycles: 0,
        unparsable_processes: 0,
        stalled_memory_reads: 0,
        probed_files: vec![],
        processes_probed_late: 0,
        probe_delay_max_ms: 0.0,
        processes_not_probed: 0,
        budget: None,
        duration_s: 2.5,
    }
}

#[test]
fn inversion_resolves_stacks() {
    let (cycle, mut r) = ab_ba();
    let finding = inversion(
        &detector::Inversion {
            id: 7,
            ..cycle.clone()
        },
        &mut r,
    );
    assert_eq!(finding.id(), 7);
    // Request stacks start at an instruction pointer, held call sites
    // are return addresses.
    assert_eq!(r.calls.len(), 4);
    assert!(r.calls.iter().all(|(pid, _, _)| *pid == PID));
    assert_eq!(
        r.calls
            .iter()
            .filter(|(_, a, ip)| *ip && a.len() == 3)
            .count(),
        2
    );
    assert_eq!(
        r.calls
            .iter()
            .filter(|(_, a, ip)| !*ip && a.len() == 1)
            .count(),
        2
    );
}

#[test]
fn json_has_every_field() {
    let (cycle, mut r) = ab_ba();
    let finding = inversion(
        &detector::Inversion {
            id: 1,
            ..cycle.clone()
        },
        &mut r,
    );
    let out = Shared::default();
    let mut rep = Reporter::new(Format::Json, Box::new(out.clone()));
    rep.finding(&finding, "2026-12-07T17:04:21.123Z").unwrap();
    rep.summary(&summary()).unwrap();
    let text = out.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(text.ends_with('\n'));

    let v: Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["type"], "lock_order_inversion");
    // The time it was reported, then the fingerprint, last.
    let fp = v["fingerprint"].as_str().unwrap();
    assert!(
        lines[0].ends_with(&format!(
            ",\"time\":\"2026-12-07T17:04:21.123Z\",\"fingerprint\":\"{fp}\"}}"
        )),
        "{}",
        lines[0]
    );
    assert_eq!(v["id"], 1);
    assert_eq!(v["pid"], PID);
    assert_eq!(v["comm"], "ab_ba");
    let lock_a = serde_json::json!({"addr": "0x55d0c0a01040", "kind": "mutex", "name": "mutex_a"});
    let lock_b = serde_json::json!({"addr": "0x55d0c0a01080", "kind": "mutex", "name": "mutex_b"});
    assert_eq!(
        v["locks"],
        Value::Array(vec![lock_a.clone(), lock_b.clone()])
    );
    let edges = v["cycle"].as_array().unwrap();
    assert_eq!(edges.len(), 2);
    for (e, from, to, tid, thread) in [
        (&edges[0], &lock_a, &lock_b, PID + 1, "worker1"),
        (&edges[1], &lock_b, &lock_a, PID + 2, "worker2"),
    ] {
        let keys: Vec<&str> = e.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        for k in [
            "from",
            "to",
            "pid",
            "tid",
            "comm",
            "thread",
            "stack",
            "held_stack",
        ] {
            assert!(keys.contains(&k), "{k} missing in {e}");
        }
        assert_eq!(&e["from"], from);
        assert_eq!(&e["to"], to);
        assert_eq!(e["pid"], PID);
        assert_eq!(e["tid"], tid);
        assert_eq!(e["comm"], "ab_ba");
        assert_eq!(e["thread"], thread);
        let stack = e["stack"].as_array().unwrap();
        assert_eq!(stack.len(), 3);
        assert_eq!(stack[0]["function"], "pthread_mutex_lock");
        assert_eq!(stack[2]["function"], "start_thread");
        let held = e["held_stack"].as_array().unwrap();
        assert_eq!(held.len(), 1);
        for fr in stack.iter().chain(held) {
            for k in ["addr", "module", "function", "offset", "file", "line"] {
                assert!(fr.get(k).is_some(), "{k} missing in {fr}");
            }
            assert!(fr["addr"].as_str().unwrap().starts_with("0x"));
        }
    }
    assert_eq!(edges[0]["stack"][1]["file"], "/src/tests/fixtures/ab_ba.c");
    assert_eq!(edges[0]["stack"][1]["line"], 22);
    assert_eq!(edges[0]["held_stack"][0]["line"], 21);

    let s: Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(s["type"], "summary");
    for (k, n) in [
        ("events", 1234),
        ("dependencies", 2),
        ("locks", 2),
        ("cycles", 1),
        ("lost_events", 0),
        ("truncated_cycle_searches", 0),
    ] {
        assert_eq!(s[k], n, "{k}");
    }
    assert_eq!(s["duration_s"], 2.5);
    assert_eq!(s["counters"]["held_overflow"], 3);
    assert_eq!(s["counters"].as_object().unwrap().len(), Counter::ALL.len());
}

#[test]
fn json_unnamed_lock_is_null() {
    let (cycle, mut r) = ab_ba();
    r.locks.clear();
    let Finding::LockOrderInversion(inv) = inversion(
        &detector::Inversion {
            id: 1,
            ..cycle.clone()
        },
        &mut r,
    ) else {
        unreachable!("an inversion")
    };
    let v = serde_json::to_value(&inv.locks[0]).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"addr": "0x55d0c0a01040", "kind": "mutex", "name": null})
    );
    let text = inv.to_string();
    assert!(
        text.contains("mutex 0x55d0c0a01040 -> mutex 0x55d0c0a01080 -> 0x55d0c0a01040"),
        "{text}"
    );
}

#[test]
fn text_rendering() {
    let (cycle, mut r) = ab_ba();
    let finding = inversion(
        &detector::Inversion {
            id: 1,
            ..cycle.clone()
        },
        &mut r,
    );
    let out = Shared::default();
    let mut rep = Reporter::new(Format::Text, Box::new(out.clone()));
    rep.finding(&finding, "2026-12-07T17:04:21.123Z").unwrap();
    rep.summary(&summary()).unwrap();
    let text = out.text();
    // The live text report does not show the time (its JSON does).
    assert!(!text.contains("2026-12-07T17:04:21"), "{text}");
    for needle in [
        "WARNING: potential deadlock: lock-order inversion between 2 locks in ab_ba [4242]\n",
        "  mutex_a (mutex 0x55d0c0a01040) -> mutex_b (mutex 0x55d0c0a01080) -> mutex_a\n",
        "  #1 thread worker1 [4243] requested mutex_b while holding mutex_a\n",
        "  #2 thread worker2 [4244] requested mutex_a while holding mutex_b\n",
        "     mutex_a was taken at:\n       #0  0x55d0c0a00100  worker_ab+0x1a  /src/tests/fixtures/ab_ba.c:21  (ab_ba)\n",
        "     mutex_b requested at:\n       #0  0x7f000008a0f0  pthread_mutex_lock  (libc.so.6)\n",
        "       #1  0x55d0c0a00110  worker_ab+0x1a  /src/tests/fixtures/ab_ba.c:22  (ab_ba)\n",
        "       #2  0x7f0000089134  start_thread  (libc.so.6)\n",
        "worker_ba+0x1a  /src/tests/fixtures/ab_ba.c:32",
        "\n\nlocktrace: 1234 events, 2 dependencies, 2 locks, 1 cycle, 0 lost events in 2.5s; acquisitions=5000, held_overflow=3\n",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    assert!(!text.contains("lost_events="));
}

#[test]
fn text_frames_without_symbols() {
    let (cycle, _) = ab_ba();
    let mut r = FakeResolve::default();
    r.frames.insert(
        (PID, LOCK_IP),
        Frame {
            addr: LOCK_IP,
            module: Some("/lib/libc.so.6".into()),
            offset: Some(0x8a0f0),
            ..Frame::default()
        },
    );
    let text = inversion(
        &detector::Inversion {
            id: 1,
            ..cycle.clone()
        },
        &mut r,
    )
    .to_string();
    assert!(
        text.contains("#0  0x7f000008a0f0  ??  (libc.so.6+0x8a0f0)\n"),
        "{text}"
    );
    assert!(text.contains("#2  0x7f0000089134  ??\n"), "{text}");
    assert!(text.contains("between 2 locks in ? [4242]"), "{text}");
}

/// The ab_ba cycle as Python code made it: each edge with the request's
/// Python frames and the Python line that took the held lock.
fn python_ab_ba() -> (detector::Inversion, FakeResolve) {
    let (mut cycle, r) = ab_ba();
    let py = |function: &str, line: u32| PyFrame {
        function: function.into(),
        file: "app/locks.py".into(),
        line,
    };
    for (e, function, line) in cycle
        .edges
        .iter_mut()
        .zip([("take_a_then_b", 39), ("take_b_then_a", 45)])
        .map(|(e, (f, l))| (e, f, l))
    {
        e.python = vec![py(function, line + 1)].into();
        e.held_python = Some(Box::new(py(function, line)));
    }
    (cycle, r)
}

#[test]
fn python_edges_say_where_python_took_the_held_lock() {
    let (cycle, mut r) = python_ab_ba();
    let finding = inversion(&cycle, &mut r);
    let text = finding.to_string();
    for needle in [
        "     mutex_a was taken at (Python):\n       #0  take_a_then_b  app/locks.py:39\n       #0  0x55d0c0a00100  worker_ab+0x1a",
        "     mutex_b requested at (Python):\n       #0  take_a_then_b  app/locks.py:40\n",
        "     mutex_b was taken at (Python):\n       #0  take_b_then_a  app/locks.py:45\n",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    let json: Value = serde_json::to_value(&finding).unwrap();
    let held = &json["cycle"][1]["held_python_stack"];
    assert_eq!(held[0]["function"], "take_b_then_a", "{json}");
    assert_eq!(held[0]["line"], 45, "{json}");
    let mut page = Vec::new();
    let entry = crate::report::Entry {
        finding: finding.clone(),
        time: None,
    };
    crate::report::html::write(&mut page, &[], &[&entry], "").unwrap();
    let page = String::from_utf8(page).unwrap();
    let held = page
        .find("mutex_b was taken at</h4><table class=\"stack python\">")
        .unwrap_or_else(|| panic!("no Python table for the held lock in\n{page}"));
    assert!(
        page[held..].contains("take_b_then_a</td><td class=\"at\">app/locks.py:45<"),
        "{page}"
    );
    // A lock Python code did not take has no such field.
    let (cycle, mut r) = ab_ba();
    let json: Value = serde_json::to_value(inversion(&cycle, &mut r)).unwrap();
    assert!(
        json["cycle"][0].get("held_python_stack").is_none(),
        "{json}"
    );
}

#[test]
fn text_cross_process_cycle() {
    let (mut cycle, mut r) = ab_ba();
    cycle.edges[1].pid = 77;
    r.procs.insert(77, "other".into());
    let Finding::LockOrderInversion(inv) = inversion(
        &detector::Inversion {
            id: 1,
            ..cycle.clone()
        },
        &mut r,
    ) else {
        unreachable!("an inversion")
    };
    assert_eq!((inv.pid, inv.comm.as_str()), (PID, "ab_ba"));
    let text = inv.to_string();
    assert!(text.contains("in ab_ba [4242], other [77]\n"), "{text}");
    assert!(
        text.contains("thread worker2 [4244] of other [77] requested"),
        "{text}"
    );
}

#[test]
fn summary_text() {
    let mut s = Summary {
        events: 1,
        dependencies: 1,
        locks: 2,
        cycles: 0,
        lost_events: 1,
        truncated_cycle_searches: 2,
        counters: counters([(Counter::LostEvents, 1), (Counter::StackTruncated, 0)]),
        contention: vec![],
        coverage: Default::default(),
        forgotten_processes: 0,
        forgotten_dependencies: 0,
        library_same_class_nesting: 0,
        same_class_notes: 0,
        repeated_findings: 0,
        suppressed_findings: 0,
        dropped_dependencies: 0,
        evicted_locks: 0,
        evicted_dependencies: 0,
        lock_facts_not_kept: 0,
        lock_memory: Default::default(),
        unprocessed_records: 0,
        dropped_records: 0,
        unopened_files: 0,
        handoff_cycles: 0,
        unparsable_processes: 0,
        stalled_memory_reads: 0,
        probed_files: vec![],
        processes_probed_late: 0,
        probe_delay_max_ms: 0.0,
        processes_not_probed: 0,
        budget: None,
        duration_s: 0.04,
    };
    assert_eq!(
        s.to_string(),
        "locktrace: 1 event, 1 dependency, 2 locks, 0 cycles, 1 lost event in 0.0s; \
         2 truncated cycle searches (the shortest cycle through each edge is always reported; \
             longer ones through the same edge may not be)"
    );
    s.truncated_cycle_searches = 0;
    s.counters.insert("future_counter".into(), 9);
    assert!(s
        .to_string()
        .ends_with("lost event in 0.0s; future_counter=9"));
}

#[test]
fn findings_say_where_their_processes_ran() {
    use crate::host::proc::origin_of_path;
    let (cycle, mut r) = ab_ba();
    r.origins
        .insert(PID, origin_of_path("/system.slice/apache2.service"));
    let finding = inversion(&cycle, &mut r);
    let out = Shared::default();
    let mut rep = Reporter::new(Format::Json, Box::new(out.clone()));
    rep.finding(&finding, "2026-12-07T17:04:21.123Z").unwrap();
    let v: Value = serde_json::from_str(out.text().lines().next().unwrap()).unwrap();
    let origin = serde_json::json!({
        "cgroup": "/system.slice/apache2.service",
        "unit": "apache2.service",
        "container": null,
    });
    assert_eq!(v["origin"], origin);
    for e in v["cycle"].as_array().unwrap() {
        assert_eq!(e["origin"], origin);
    }
    // One line for the one process, after the headline.
    let text = escaped_text(&finding);
    assert!(
        text.starts_with(
            "WARNING: potential deadlock: lock-order inversion between 2 locks in ab_ba [4242]\n\
             \x20 in apache2.service (cgroup /system.slice/apache2.service)\n\n"
        ),
        "{text}"
    );
    assert_eq!(text.matches(" in apache2.service").count(), 1, "{text}");

    // Unknown: null, and no line.
    let (cycle, mut r) = ab_ba();
    let finding = inversion(&cycle, &mut r);
    let v = serde_json::to_value(&finding).unwrap();
    assert_eq!(v["origin"], Value::Null);
    assert!(!escaped_text(&finding).contains("\n  in "));
}

#[test]
fn a_cycle_across_cgroups_names_each_process_origin() {
    use crate::host::proc::origin_of_path;
    let (mut cycle, mut r) = ab_ba();
    let other = PID + 100;
    cycle.edges[1].pid = other;
    r.procs.insert(other, "ab_ba".into());
    let id = "0123456789abcdef".repeat(4);
    r.origins
        .insert(PID, origin_of_path("/system.slice/apache2.service"));
    // A cgroup name with a line break and an escape sequence in it.
    r.origins.insert(
        other,
        origin_of_path(&format!("/system.slice/docker-{id}.scope/x\n\x1b[2J")),
    );
    let finding = inversion(&cycle, &mut r);
    let text = escaped_text(&finding);
    assert!(
        text.contains(
            "\n  ab_ba [4242] in apache2.service (cgroup /system.slice/apache2.service)\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "\n  ab_ba [4342] in container 0123456789ab (cgroup /system.slice/docker-{id}.scope/x\\n\\x1b[2J)\n"
        )),
        "{text}"
    );
    let v = serde_json::to_value(&finding).unwrap();
    assert_eq!(v["cycle"][1]["origin"]["container"], id.as_str());
    assert_eq!(
        v["cycle"][1]["origin"]["unit"],
        format!("docker-{id}.scope")
    );
}

/// The text report of `f` as the printers write it (names escaped).
fn escaped_text(f: &Finding) -> String {
    crate::report::escape::finding(f).to_string()
}
