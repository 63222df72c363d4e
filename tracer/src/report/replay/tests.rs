//! `locktrace report` over captures written by the JSON printer.

use tracer_analysis::model::Frame;

use crate::report::dot;
use crate::report::replay::{self, print, Entry, Filter, Output};
use crate::report::tests::{ab_ba, inversion, summary, Shared};
use crate::report::walltime;
use crate::report::{
    Deadlock, Finding, Format, HeldReport, Lock, Reporter, SelfDeadlock, ThreadReport,
};

/// The ab_ba inversion as the tracer made it.
fn ab_ba_finding() -> Finding {
    let (cycle, mut r) = ab_ba();
    inversion(&cycle, &mut r)
}

/// When the findings of [`capture`] were reported.
const TIME: &str = "2026-12-07T17:04:21.123Z";

/// What `run --format json -o F` writes for `findings`, reported at [`TIME`].
fn capture(findings: &[Finding]) -> String {
    capture_at(findings, TIME)
}

fn capture_at(findings: &[Finding], time: &str) -> String {
    let out = Shared::default();
    let mut rep = Reporter::new(Format::Json, Box::new(out.clone()));
    for f in findings {
        rep.finding(f, time).unwrap();
    }
    rep.summary(&summary()).unwrap();
    out.text()
}

fn printed(captures: &[replay::Capture], filter: &Filter, output: Output) -> String {
    let out = Shared::default();
    print(captures, filter, output, Box::new(out.clone())).unwrap();
    out.text()
}

#[test]
fn a_capture_prints_the_same_text_as_the_tracer() {
    let finding = ab_ba_finding();
    let c = replay::parse("cap.jsonl", &capture(std::slice::from_ref(&finding))).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert_eq!(c.findings.len(), 1);
    assert_eq!(c.findings[0].finding.to_string(), finding.to_string());
    assert_eq!(c.findings[0].time.as_deref(), Some(TIME));
    let summary = c.summary.as_ref().expect("summary line");
    assert_eq!(summary["schema"], 1);
    let text = printed(&[c], &Filter::default(), Output::Text);
    // The tracer's text, with the time it was reported under the headline.
    let tracer = finding.to_string();
    let (headline, rest) = tracer.split_once('\n').unwrap();
    let expected = format!("{headline}\n  reported {TIME}\n{rest}");
    assert!(text.starts_with(&expected), "{text}");
    assert!(
        text.contains(&format!("  reported: {TIME} to {TIME}\n")),
        "{text}"
    );
    assert!(text.contains("capture cap.jsonl: 1 finding\n  lock_order_inversion: 1\n"));
    assert!(text.contains("processes: ab_ba [4242]"), "{text}");
    assert!(text.contains("lost events: 0"), "{text}");
}

#[test]
fn json_output_is_a_capture_again() {
    let raw = capture(&[ab_ba_finding()]);
    let c = replay::parse("a", &raw).unwrap();
    assert_eq!(printed(&[c], &Filter::default(), Output::Json), raw);
}

#[test]
fn garbage_and_a_cut_last_line_are_skipped_with_their_line_numbers() {
    let raw = capture(&[ab_ba_finding(), ab_ba_finding()]);
    let lines: Vec<&str> = raw.lines().collect();
    let cut = &lines[1][..lines[1].len() / 2];
    let text = format!("not json\n{}\n{{\"type\":\"mystery\"}}\n{cut}\n", lines[0]);
    let c = replay::parse("cap", &text).unwrap();
    assert_eq!(c.findings.len(), 1);
    assert!(c.summary.is_none());
    assert_eq!(c.warnings.len(), 3, "{:?}", c.warnings);
    assert!(c.warnings[0].starts_with("cap line 1 is not JSON"));
    assert!(c.warnings[1].starts_with("cap line 3 is not a locktrace finding"));
    assert!(c.warnings[2].starts_with("cap line 4 is not JSON"));
    let out = printed(&[c], &Filter::default(), Output::Text);
    assert!(out.contains("no summary line"), "{out}");
    assert!(out.contains("3 lines skipped"), "{out}");
}

#[test]
fn a_newer_schema_is_refused() {
    let raw = capture(&[ab_ba_finding()]).replace("\"schema\":1", "\"schema\":2");
    let e = replay::parse("new.jsonl", &raw).unwrap_err().to_string();
    assert!(e.contains("newer locktrace (JSON schema 2"), "{e}");
    // A capture from before the schema field reads as schema 1.
    let old = capture(&[ab_ba_finding()]).replace(",\"schema\":1", "");
    assert_eq!(replay::parse("old", &old).unwrap().findings.len(), 1);
}

#[test]
fn since_keeps_findings_at_or_after_it_and_drops_untimed_ones() {
    let f = ab_ba_finding();
    let early = capture_at(std::slice::from_ref(&f), "2026-12-07T17:00:00.000Z");
    let late = capture_at(std::slice::from_ref(&f), "2026-12-07T18:00:00.000Z");
    // A capture from before findings had a time.
    let old = capture(std::slice::from_ref(&f)).replace(&format!(",\"time\":\"{TIME}\""), "");
    assert!(!old.contains("\"time\""), "{old}");
    let captures = [
        replay::parse("early", &early).unwrap(),
        replay::parse("late", &late).unwrap(),
        replay::parse("old", &old).unwrap(),
    ];
    assert_eq!(captures[2].findings[0].time, None);
    let since = |t: &str| Filter {
        since: Some(walltime::parse(t).unwrap()),
        ..Filter::default()
    };
    let kept = |filter: &Filter| -> Vec<Option<String>> {
        captures
            .iter()
            .flat_map(|c| &c.findings)
            .filter(|e| filter.matches(e))
            .map(|e| e.time.clone())
            .collect()
    };
    // At or after: the bound itself is kept; an offset is honoured.
    assert_eq!(
        kept(&since("2026-12-07T18:00:00Z")),
        [Some("2026-12-07T18:00:00.000Z".to_string())]
    );
    assert_eq!(
        kept(&since("2026-12-07T19:00:00.001+01:00")),
        Vec::<Option<String>>::new()
    );
    assert_eq!(kept(&since("2026-12-07T16:00:00Z")).len(), 2);
    assert_eq!(kept(&Filter::default()).len(), 3);
    assert_eq!(
        replay::untimed(&captures, &since("2026-12-07T16:00:00Z")),
        1
    );
    assert_eq!(replay::untimed(&captures, &Filter::default()), 0);
    // Another filter excluding it: not counted as dropped for its time.
    let other = Filter {
        types: vec!["deadlock".into()],
        ..since("2026-12-07T16:00:00Z")
    };
    assert_eq!(replay::untimed(&captures, &other), 0);
    let text = printed(&captures, &since("2026-12-07T17:30:00Z"), Output::Text);
    assert!(
        text.contains("  reported 2026-12-07T18:00:00.000Z\n"),
        "{text}"
    );
    assert!(
        !text.contains("  reported 2026-12-07T17:00:00.000Z\n"),
        "{text}"
    );
    assert!(text.contains("1 finding has no time"), "{text}");
    assert!(
        text.ends_with("shown: 1 of 3 findings (filtered)\n"),
        "{text}"
    );
    // JSON again: the time as written, before the fingerprint.
    let json = printed(&captures[1..2], &Filter::default(), Output::Json);
    assert!(
        json.contains("\"time\":\"2026-12-07T18:00:00.000Z\",\"fingerprint\":"),
        "{json}"
    );
    // A time that does not read: a warning, and the finding has none.
    let bad = early.replace("2026-12-07T17:00:00.000Z", "yesterday\\u001b");
    let c = replay::parse("bad", &bad).unwrap();
    assert_eq!(c.findings[0].time, None);
    assert!(
        c.warnings[0].contains("bad line 1: time \"yesterday\\u001b\" is not an RFC 3339 time"),
        "{:?}",
        c.warnings
    );
}

#[test]
fn an_unknown_lock_kind_is_not_a_finding() {
    let raw = capture(&[ab_ba_finding()]).replacen("\"mutex\"", "\"futex9\"", 1);
    let c = replay::parse("k", &raw).unwrap();
    assert!(c.findings.is_empty());
    assert!(
        c.warnings[0].contains("unknown lock kind `futex9`"),
        "{:?}",
        c.warnings
    );
}

#[test]
fn filters_by_type_pid_and_comm() {
    let f = ab_ba_finding();
    let filter = |types: &[&str], pids: &[u32], comms: &[&str]| Filter {
        types: types.iter().map(|s| s.to_string()).collect(),
        pids: pids.to_vec(),
        comms: comms.iter().map(|s| s.to_string()).collect(),
        fingerprints: vec![],
        since: None,
    };
    let e = Entry {
        finding: f.clone(),
        time: None,
    };
    assert!(filter(&[], &[], &[]).matches(&e));
    assert!(filter(&["deadlock", "lock_order_inversion"], &[4242], &["ab_ba"]).matches(&e));
    assert!(!filter(&["deadlock"], &[], &[]).matches(&e));
    assert!(!filter(&[], &[1], &[]).matches(&e));
    assert!(!filter(&[], &[], &["other"]).matches(&e));
    let c = replay::parse("c", &capture(&[f])).unwrap();
    let out = printed(&[c], &filter(&["deadlock"], &[], &[]), Output::Text);
    assert!(out.starts_with("capture c: 1 finding"), "{out}");
    assert!(
        out.ends_with("shown: 0 of 1 findings (filtered)\n"),
        "{out}"
    );
}

#[test]
fn filters_by_fingerprint_as_written_on_the_line() {
    let f = ab_ba_finding();
    let c = replay::parse("c", &capture(std::slice::from_ref(&f))).unwrap();
    let raw = capture(std::slice::from_ref(&f));
    let written: serde_json::Value = serde_json::from_str(raw.lines().next().unwrap()).unwrap();
    let fp = written["fingerprint"]
        .as_str()
        .expect("a fingerprint on the line");
    assert_eq!(
        fp,
        crate::report::fingerprint::fingerprint(&c.findings[0].finding)
    );
    let by = |fps: &[&str]| Filter {
        fingerprints: fps.iter().map(|s| s.to_string()).collect(),
        ..Filter::default()
    };
    assert!(by(&[fp]).matches(&c.findings[0]));
    assert!(!by(&["0000000000000000"]).matches(&c.findings[0]));
}

#[test]
fn dot_strings_are_escaped() {
    assert_eq!(dot::quote("plain"), "\"plain\"");
    assert_eq!(dot::quote("a\"b\\c\nd\u{7}"), "\"a\\\"b\\\\c\\nd\"");
}

#[test]
fn dot_of_an_inversion_names_its_locks_and_call_sites() {
    let c = replay::parse("c", &capture(&[ab_ba_finding()])).unwrap();
    let out = printed(&[c], &Filter::default(), Output::Dot);
    assert!(out.starts_with("digraph \"finding 1\" {\n"), "{out}");
    assert!(
        out.contains("l0 [shape=ellipse, label=\"mutex_a\\nmutex 0x55d0c0a01040\"];"),
        "{out}"
    );
    assert!(
        out.contains("l1 [shape=ellipse, label=\"mutex_b\\nmutex 0x55d0c0a01080\"];"),
        "{out}"
    );
    assert!(
        out.contains("l0 -> l1 [label=\"thread worker1 [4243]\\nat worker_ab ab_ba.c:22\"];"),
        "{out}"
    );
    assert!(
        out.contains("l1 -> l0 [label=\"thread worker2 [4244]\\nat worker_ba ab_ba.c:32\"];"),
        "{out}"
    );
    assert!(out.trim_end().ends_with('}'));
}

#[test]
fn the_call_site_is_the_first_line_outside_libc() {
    let frame = |module: &str, function: &str, file: &str, line| Frame {
        addr: 1,
        module: Some(module.into()),
        function: Some(function.into()),
        file: Some(file.into()),
        line: Some(line),
        offset: None,
        ..Frame::default()
    };
    let stack = [
        frame(
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
            "___pthread_mutex_lock",
            "./nptl/pthread_mutex_lock.c",
            84,
        ),
        frame("/src/ab_ba", "lock_ab", "/src/ab_ba.c", 14),
    ];
    assert_eq!(dot::call_site(&stack), "lock_ab ab_ba.c:14");
    assert_eq!(
        dot::call_site(&stack[..1]),
        "___pthread_mutex_lock pthread_mutex_lock.c:84"
    );
    assert_eq!(dot::call_site(&[]), "(no stack)");
}

fn lock(name: &str, addr: u64) -> Lock {
    Lock {
        addr,
        kind: "mutex",
        name: Some(name.into()),
        shared: None,
        build_id: None,
        file_offset: None,
        pid: 0,
    }
}

fn thread(tid: u32, holds: &Lock, waits_for: &Lock, holder: u32) -> ThreadReport {
    ThreadReport {
        pid: 7,
        comm: "dl".into(),
        origin: None,
        tid,
        thread: format!("t{tid}"),
        state: "S".into(),
        waits_for: Some(waits_for.clone()),
        refused_lock: false,
        waiting_s: Some(1.0),
        held_by: vec![holder],
        holds: vec![HeldReport {
            lock: holds.clone(),
            taken_at: vec![],
            taken_at_python: vec![],
        }],
        stack: vec![Frame {
            addr: 0x10,
            function: Some("lock_ab".into()),
            file: Some("/src/deadlock.c".into()),
            line: Some(12),
            ..Frame::default()
        }],
        python_stack: vec![],
    }
}

#[test]
fn dot_of_a_deadlock_has_waits_for_and_held_by_edges() {
    let (a, b) = (lock("mutex_a", 0xa0), lock("mutex_b", 0xb0));
    let d = Finding::Deadlock(Deadlock {
        id: 2,
        pid: 7,
        comm: "dl".into(),
        origin: None,
        threads: vec![thread(8, &a, &b, 9), thread(9, &b, &a, 8)],
        inversion: Some(1),
    });
    let mut out = Vec::new();
    dot::write(&mut out, &d).unwrap();
    let out = String::from_utf8(out).unwrap();
    for edge in [
        "t8 -> l1 [style=dashed, label=\"waits for 1.0s\\nat lock_ab deadlock.c:12\"];",
        "t9 -> l0 [style=dashed",
        "l0 -> t8 [label=\"held by\"];",
        "l1 -> t9 [label=\"held by\"];",
    ] {
        assert!(out.contains(edge), "{edge}\n{out}");
    }
    assert_eq!(out.matches("held by").count(), 2, "{out}");
    assert_eq!(out.matches("[shape=box").count(), 2, "{out}");

    let s = Finding::SelfDeadlock(SelfDeadlock {
        id: 3,
        pid: 7,
        comm: "dl".into(),
        origin: None,
        tid: 8,
        thread: "t8".into(),
        lock: a.clone(),
        stack: vec![],
        held_stack: vec![],
    });
    let mut out = Vec::new();
    dot::write(&mut out, &s).unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.contains("t8 -> l0 [style=dashed, label=\"waits for\\nat (no stack)\"];"),
        "{out}"
    );
}

#[test]
fn text_escapes_names_and_changes_nothing_else() {
    use crate::report::escape;
    let a = lock("a\x1b[2J", 0x100);
    let b = lock("b", 0x200);
    let mut t1 = thread(11, &a, &b, 12);
    t1.thread = "\r\nERROR: x".into();
    t1.comm = "dl\u{9b}".into();
    let t2 = thread(12, &b, &a, 11);
    let deadlock = Finding::Deadlock(Deadlock {
        id: 1,
        pid: 7,
        comm: "dl\x07".into(),
        origin: None,
        threads: vec![t1, t2],
        inversion: None,
    });
    let out = Shared::default();
    let mut rep = Reporter::new(Format::Text, Box::new(out.clone()));
    rep.finding(&deadlock, TIME).unwrap();
    let text = out.text();
    assert!(!text.chars().any(|c| c != '\n' && c.is_control()), "{text}");
    // (A deadlock's own first line is an ERROR: line.)
    assert!(!text.lines().any(|l| l.starts_with("ERROR: x")), "{text}");
    assert!(
        text.contains("thread \\r\\nERROR: x [11] of dl\\u{9b} [7]"),
        "{text}"
    );
    assert!(text.contains("a\\x1b[2J"), "{text}");
    // Without anything to escape, the round trip through the serialized
    // form prints the same text.
    for f in [ab_ba_finding(), dot_deadlock()] {
        assert_eq!(escape::finding(&f).to_string(), f.to_string());
    }
}

fn dot_deadlock() -> Finding {
    let (a, b) = (lock("a", 0x100), lock("b", 0x200));
    Finding::Deadlock(Deadlock {
        id: 2,
        pid: 7,
        comm: "dl".into(),
        origin: None,
        threads: vec![thread(11, &a, &b, 12), thread(12, &b, &a, 11)],
        inversion: Some(1),
    })
}

#[test]
fn origins_read_back_and_old_captures_without_them_still_read() {
    use crate::host::proc::origin_of_path;
    // A capture written before findings carried their origin.
    let mut old = serde_json::to_value(ab_ba_finding()).unwrap();
    old.as_object_mut().unwrap().remove("origin");
    for e in old["cycle"].as_array_mut().unwrap() {
        e.as_object_mut().unwrap().remove("origin");
    }
    assert!(!old.to_string().contains("origin"));
    let c = replay::parse("old.jsonl", &format!("{old}\n")).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let Finding::LockOrderInversion(inv) = &c.findings[0].finding else {
        panic!("an inversion")
    };
    assert_eq!(inv.origin, None);

    // A deadlock whose threads ran in a service: its origin once, after the
    // headline, and not again for each thread of the same process.
    let (a, b) = (lock("mutex_a", 0xa0), lock("mutex_b", 0xb0));
    let origin = Some(origin_of_path("/system.slice/db.service"));
    let mut threads = vec![thread(8, &a, &b, 9), thread(9, &b, &a, 8)];
    threads.iter_mut().for_each(|t| t.origin = origin.clone());
    // A holder in another process (a lock in shared memory), elsewhere.
    threads[1].pid = 70;
    threads[1].origin = Some(origin_of_path("/user.slice/user-0.slice/session-2.scope"));
    let d = Finding::Deadlock(Deadlock {
        id: 1,
        pid: 7,
        comm: "dl".into(),
        origin,
        threads,
        inversion: None,
    });
    let c = replay::parse("new.jsonl", &capture(&[d])).unwrap();
    let text = printed(&[c], &Filter::default(), Output::Text);
    // (The time it was reported, then where: both under the headline.)
    assert!(
        text.starts_with(&format!(
            "ERROR: deadlock: 2 threads of dl [7] wait for each other\n  reported {TIME}\n  in db.service (cgroup /system.slice/db.service)\n\n"
        )),
        "{text}"
    );
    assert_eq!(text.matches("db.service (cgroup").count(), 1, "{text}");
    assert!(
        text.contains(
            "\n    in session-2.scope (cgroup /user.slice/user-0.slice/session-2.scope)\n"
        ),
        "{text}"
    );
}

#[test]
fn fingerprints_print_as_a_suppress_list_the_agent_reads() {
    use crate::report::fingerprint::fingerprint;
    let ab_ba = ab_ba_finding();
    // A process named to end the comment and forge a key of the config.
    let hostile = Finding::SelfDeadlock(SelfDeadlock {
        id: 3,
        pid: 7,
        comm: "x\n[alertmanager]\nurl = \"http://evil\"".into(),
        origin: None,
        tid: 8,
        thread: "t8".into(),
        lock: lock("mutex_a", 0xa0),
        stack: vec![],
        held_stack: vec![],
    });
    // The inversion twice (two workers, two captures), the self-deadlock once.
    let one = replay::parse("one.jsonl", &capture(&[ab_ba.clone(), hostile.clone()])).unwrap();
    let two = replay::parse("two.jsonl", &capture(std::slice::from_ref(&ab_ba))).unwrap();
    let mut out = Vec::new();
    replay::print_fingerprints(&[one, two], &Filter::default(), &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let (fp_inv, fp_self) = (fingerprint(&ab_ba), fingerprint(&hostile));
    assert_eq!(
        text,
        format!(
            "# 2 fingerprints in one.jsonl, two.jsonl: paste under [suppress] in the agent's config\n\
             fingerprints = [\n    \
             \"{fp_inv}\", # lock_order_inversion (2 findings): lock-order inversion mutex_a -> mutex_b -> mutex_a at worker_ab, worker_ba in ab_ba (pid 4242)\n    \
             \"{fp_self}\", # self_deadlock: thread 8 requested mutex_a it holds, at  in x\\n[alertmanager]\\nurl = \"http://evil\" (pid 7)\n\
             ]\n"
        )
    );

    // That it pastes into the agent's config: tracer/tests/print_fingerprints.rs.

    // The filters apply.
    let c = replay::parse("one.jsonl", &capture(&[ab_ba, hostile])).unwrap();
    let filter = Filter {
        types: vec!["self_deadlock".into()],
        ..Filter::default()
    };
    let mut out = Vec::new();
    replay::print_fingerprints(&[c], &filter, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(
        text.lines().filter(|l| l.starts_with("    \"")).count(),
        1,
        "{text}"
    );
    assert!(text.contains("# self_deadlock"), "{text}");
}
