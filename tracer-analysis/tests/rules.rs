//! Every detection rule, driven through the `Detector` with a table-driven
//! fake host: no root, no kernel, no `/proc`.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use tracer_analysis::detector::Stats;
use tracer_analysis::model::{
    Blocked, ClassKey, CodeSite, HeldAt, Level, LockInstance, LockKind, PyFrame, Request,
    SharedLock, Waiter,
};
use tracer_analysis::waits::{WaitScan, WaitStarts};
use tracer_analysis::{Detector, Event, GlobalSymbol, Host, InitStack, Verdict};

/// The host, as tables.
#[derive(Default)]
struct FakeHost {
    /// Code addresses of each process: (pid, addr) -> site.
    sites: HashMap<(u32, u64), CodeSite>,
    /// Global locks: (pid, addr) -> (module, symbol).
    globals: HashMap<(u32, u64), GlobalSymbol>,
    shared: HashMap<(u32, u64), SharedLock>,
    python: HashMap<(u32, u64), Option<PyFrame>>,
    /// (pid, mutex) -> the thread that waits on conditions with it.
    wakeup: HashMap<(u32, u64), u32>,
    /// What the unwinder finds above an init: (pid, stack pointer of the
    /// copied stack) -> the init site's caller.
    callers: HashMap<(u32, u64), u64>,
}

impl FakeHost {
    fn site(&mut self, pid: u32, addr: u64, module: &str, offset: u64) -> &mut Self {
        self.sites.insert(
            (pid, addr),
            CodeSite {
                module: module.into(),
                offset,
                function: None,
                build: None,
            },
        );
        self
    }

    fn global(&mut self, pid: u32, addr: u64, module: &str, symbol: &str) -> &mut Self {
        self.globals.insert(
            (pid, addr),
            GlobalSymbol {
                module: module.into(),
                symbol: symbol.into(),
                build: None,
            },
        );
        self
    }
}

impl Host for FakeHost {
    fn code_site(&mut self, pid: u32, addr: u64) -> Option<CodeSite> {
        self.sites.get(&(pid, addr)).cloned()
    }
    fn makes_locks_for_callers(&mut self, pid: u32, addr: u64) -> bool {
        self.sites
            .get(&(pid, addr))
            .is_some_and(|s| s.module.contains(".so"))
            || self.is_wrapper(pid, addr)
    }
    fn is_wrapper(&mut self, pid: u32, addr: u64) -> bool {
        self.sites
            .get(&(pid, addr))
            .is_some_and(|s| s.function.as_deref() == Some("lck_init"))
    }
    fn init_callers(&mut self, pid: u32, _site: u64, stack: &InitStack) -> Vec<u64> {
        self.callers
            .get(&(pid, stack.sp))
            .copied()
            .into_iter()
            .collect()
    }
    fn global_symbol(&mut self, lock: LockInstance) -> Option<GlobalSymbol> {
        self.globals.get(&(lock.pid, lock.addr)).cloned()
    }
    fn shared_lock(&mut self, lock: LockInstance) -> Option<SharedLock> {
        self.shared.get(&(lock.pid, lock.addr)).cloned()
    }
    fn python_creation(&mut self, lock: LockInstance) -> Option<Option<PyFrame>> {
        self.python.get(&(lock.pid, lock.addr)).cloned()
    }
    fn wakeup_mutex_owner(&mut self, pid: u32, addr: u64) -> Option<u32> {
        self.wakeup.get(&(pid, addr)).copied()
    }
}

/// A lock as a test names it.
#[derive(Clone, Copy)]
struct L {
    addr: u64,
    kind: LockKind,
}

impl L {
    fn held(self) -> HeldAt {
        HeldAt {
            addr: self.addr,
            kind: self.kind,
            // A call site per lock: each lock is its own first-use class
            // unless a test says otherwise.
            taken_at: vec![self.addr + 0x1000],
            python: None,
        }
    }
}

fn lock(addr: u64, kind: LockKind) -> L {
    L { addr, kind }
}

fn mutex(addr: u64) -> L {
    lock(addr, LockKind::Mutex)
}

/// Thread `tid` of `pid` requests `to` holding `held` (innermost last);
/// every held lock makes a new dependency.
fn request(pid: u32, tid: u32, held: &[L], to: L) -> Event {
    Event::Request(Request {
        pid,
        tid,
        thread: format!("t{tid}"),
        timestamp_ns: 1,
        to: to.held(),
        from: held.iter().map(|h| h.held()).collect(),
        held: held.iter().map(|h| h.addr).collect(),
        stack: vec![0x7f00_0000_0000, to.held().site()],
        python: Vec::new(),
        handoff: false,
    })
}

struct Run {
    detector: Detector,
    host: FakeHost,
}

impl Run {
    fn new() -> Self {
        Run {
            detector: Detector::new(Duration::from_secs(10)),
            host: FakeHost::default(),
        }
    }

    fn feed(&mut self, event: Event) -> Vec<Verdict> {
        self.detector.on_event(event, &mut self.host)
    }

    fn stats(&self) -> Stats {
        self.detector.stats()
    }
}

fn inversion(v: &[Verdict]) -> &tracer_analysis::detector::Inversion {
    match v {
        [Verdict::Inversion(inv)] => inv,
        other => panic!("not one inversion: {other:?}"),
    }
}

#[test]
fn ab_ba_in_one_process_is_one_instance_inversion() {
    let mut run = Run::new();
    let (a, b) = (mutex(0xa0), mutex(0xb0));
    assert!(run.feed(request(1, 11, &[a], b)).is_empty());
    let verdicts = run.feed(request(1, 12, &[b], a));
    let inv = inversion(&verdicts);
    assert_eq!(inv.level, Level::Instance);
    assert_eq!(inv.id, 1);
    assert_eq!(inv.gate, None);
    let hops: Vec<(u64, u64, u32)> = inv
        .edges
        .iter()
        .map(|e| (e.from.addr, e.to.addr, e.tid))
        .collect();
    assert_eq!(hops, [(0xa0, 0xb0, 11), (0xb0, 0xa0, 12)]);
    assert!(verdicts[0].is_alarm());
    // Seen again: nothing new.
    assert!(run.feed(request(1, 13, &[b], a)).is_empty());
    assert_eq!(run.stats().cycles, 1);
}

#[test]
fn a_cycle_split_across_two_workers_is_one_class_inversion() {
    let mut run = Run::new();
    // Two processes of one binary, each taking the two global mutexes in
    // its own order: no instance cycle, one class cycle.
    for pid in [1, 2] {
        run.host
            .global(pid, 0xa0, "prefork_demo", "mutex_x")
            .global(pid, 0xb0, "prefork_demo", "mutex_y");
    }
    let (x, y) = (mutex(0xa0), mutex(0xb0));
    assert!(run.feed(request(1, 1, &[x], y)).is_empty());
    let verdicts = run.feed(request(2, 2, &[y], x));
    let inv = inversion(&verdicts);
    assert_eq!(inv.level, Level::Class);
    assert_eq!(
        inv.classes,
        ["prefork_demo:mutex_x", "prefork_demo:mutex_y"]
    );
    let pids: HashSet<u32> = inv.edges.iter().map(|e| e.pid).collect();
    assert_eq!(pids, HashSet::from([1, 2]));
}

/// Two builds of one program (the same file name: a new version deployed
/// beside the old one) whose lock order changed are other code: their
/// globals are other classes, and the two orders make no finding.
#[test]
fn the_same_globals_of_two_builds_are_other_classes() {
    let mut run = Run::new();
    for (pid, build) in [(1, "0ld0"), (2, "5e30")] {
        for (addr, symbol) in [(0xa0, "mutex_x"), (0xb0, "mutex_y")] {
            run.host.globals.insert(
                (pid, addr),
                GlobalSymbol {
                    module: "prefork_demo".into(),
                    symbol: symbol.into(),
                    build: Some(build.into()),
                },
            );
        }
    }
    let (x, y) = (mutex(0xa0), mutex(0xb0));
    assert!(run.feed(request(1, 1, &[x], y)).is_empty());
    assert!(
        run.feed(request(2, 2, &[y], x)).is_empty(),
        "one order in each build: no class cycle"
    );
    // A third process of the first build takes the other order: its class
    // cycle is reported.
    for (addr, symbol) in [(0xa0, "mutex_x"), (0xb0, "mutex_y")] {
        run.host.globals.insert(
            (3, addr),
            GlobalSymbol {
                module: "prefork_demo".into(),
                symbol: symbol.into(),
                build: Some("0ld0".into()),
            },
        );
    }
    let verdicts = run.feed(request(3, 3, &[y], x));
    assert_eq!(inversion(&verdicts).level, Level::Class);
}

/// The class of global `symbol` of build `build` of `prefork_demo`.
fn global_class(symbol: &str, build: &str) -> ClassKey {
    ClassKey::Global {
        module: "prefork_demo".into(),
        symbol: symbol.into(),
        build: Some(build.into()),
    }
}

/// A run whose process `pid` has the globals mutex_x (0xa0) and mutex_y
/// (0xb0) of build `build`.
fn with_globals(run: &mut Run, pid: u32, build: &str) {
    for (addr, symbol) in [(0xa0, "mutex_x"), (0xb0, "mutex_y")] {
        run.host.globals.insert(
            (pid, addr),
            GlobalSymbol {
                module: "prefork_demo".into(),
                symbol: symbol.into(),
                build: Some(build.into()),
            },
        );
    }
}

/// A class dependency learned by an earlier run (an agent's state) closes
/// a cycle with this run's other order: one class inversion, naming the
/// restored edge by its tag. Cycles of restored dependencies alone are not
/// reported; another build's globals are other classes.
#[test]
fn a_restored_class_dependency_closes_a_cycle_with_a_live_one() {
    let mutexes = (LockKind::Mutex, LockKind::Mutex);
    let (x, y) = (mutex(0xa0), mutex(0xb0));
    let mut run = Run::new();
    run.detector.learn_class_dependencies();
    run.detector.restore_class_dependency(
        global_class("mutex_x", "b1"),
        global_class("mutex_y", "b1"),
        mutexes,
        7,
    );
    with_globals(&mut run, 1, "b1");
    let verdicts = run.feed(request(1, 1, &[y], x));
    let inv = inversion(&verdicts);
    assert_eq!(inv.level, Level::Class);
    assert_eq!(
        inv.classes,
        ["prefork_demo:mutex_x", "prefork_demo:mutex_y"]
    );
    let live: Vec<u32> = inv.edges.iter().map(|e| e.pid).collect();
    assert_eq!(inv.restored, [Some(7), None], "pids {live:?}");
    // What this run learned: y -> x, not the restored x -> y.
    let learned = run.detector.take_learned();
    assert_eq!(learned.len(), 1);
    assert_eq!(
        (&learned[0].from, &learned[0].to),
        (
            &global_class("mutex_y", "b1"),
            &global_class("mutex_x", "b1")
        )
    );

    // Both orders restored: judged before, not reported again.
    let mut run = Run::new();
    for (from, to, tag) in [("mutex_x", "mutex_y", 1), ("mutex_y", "mutex_x", 2)] {
        run.detector.restore_class_dependency(
            global_class(from, "b1"),
            global_class(to, "b1"),
            mutexes,
            tag,
        );
    }
    with_globals(&mut run, 1, "b1");
    assert!(run.feed(request(1, 1, &[y], x)).is_empty());

    // Another build: other classes, no cycle.
    let mut run = Run::new();
    run.detector.restore_class_dependency(
        global_class("mutex_x", "b1"),
        global_class("mutex_y", "b1"),
        mutexes,
        7,
    );
    with_globals(&mut run, 1, "b2");
    assert!(run.feed(request(1, 1, &[y], x)).is_empty());
}

/// A restored dependency seen again live takes the live occurrence: an
/// inversion in one process is then reported at instance level, as
/// without the state.
#[test]
fn a_restored_dependency_seen_live_is_judged_as_live() {
    let mut run = Run::new();
    run.detector.restore_class_dependency(
        global_class("mutex_x", "b1"),
        global_class("mutex_y", "b1"),
        (LockKind::Mutex, LockKind::Mutex),
        7,
    );
    with_globals(&mut run, 1, "b1");
    let (x, y) = (mutex(0xa0), mutex(0xb0));
    assert!(run.feed(request(1, 1, &[x], y)).is_empty());
    let verdicts = run.feed(request(1, 2, &[y], x));
    let inv = inversion(&verdicts);
    assert_eq!(inv.level, Level::Instance);
    assert!(inv.restored.is_empty());
}

#[test]
fn a_cycle_seen_at_both_levels_is_reported_once_at_instance_level() {
    let mut run = Run::new();
    run.host
        .global(1, 0xa0, "demo", "mutex_x")
        .global(1, 0xb0, "demo", "mutex_y");
    let (x, y) = (mutex(0xa0), mutex(0xb0));
    run.feed(request(1, 1, &[x], y));
    let verdicts = run.feed(request(1, 2, &[y], x));
    assert_eq!(inversion(&verdicts).level, Level::Instance);
}

#[test]
fn a_common_gate_makes_a_guarded_note_until_seen_without_it() {
    let mut run = Run::new();
    let (g, a, b) = (mutex(0x10), mutex(0xa0), mutex(0xb0));
    // G -> A -> B and G -> B -> A: the dependencies A -> B and B -> A were
    // both made under G.
    run.feed(request(1, 1, &[g], a));
    let mut made = run.feed(request(1, 1, &[g, a], b));
    made.retain(|v| matches!(v, Verdict::Inversion(_)));
    assert!(made.is_empty());
    run.feed(request(1, 2, &[g], b));
    let verdicts = run.feed(request(1, 2, &[g, b], a));
    let inv = inversion(&verdicts);
    assert_eq!(inv.gate, Some(LockInstance { pid: 1, addr: 0x10 }));
    assert!(!verdicts[0].is_alarm(), "a guarded cycle is a note");
    // B -> A without G: now it can deadlock.
    let verdicts = run.feed(request(1, 3, &[b], a));
    let inv = inversion(&verdicts);
    assert_eq!(inv.gate, None);
    assert!(verdicts[0].is_alarm());
}

fn init_all(run: &mut Run, site: u64, addrs: &[u64]) {
    for &addr in addrs {
        run.feed(Event::LockInit {
            lock: LockInstance { pid: 1, addr },
            site,
            stack: None,
        });
    }
}

#[test]
fn an_array_of_one_class_nested_in_one_order_is_one_note() {
    let mut run = Run::new();
    let init = 0x4000;
    run.host.site(1, init, "table", 0x99);
    let slots: Vec<u64> = (0..64).map(|i| 0x1000 + i * 0x40).collect();
    init_all(&mut run, init, &slots);
    let mut verdicts = Vec::new();
    for (tid, pair) in slots.windows(2).enumerate() {
        verdicts.extend(run.feed(request(1, tid as u32, &[mutex(pair[0])], mutex(pair[1]))));
    }
    let [v @ Verdict::SameClassNesting {
        opposite: None,
        class,
        ..
    }] = verdicts.as_slice()
    else {
        panic!("not one note: {verdicts:?}");
    };
    assert_eq!(class, "init@table+0x99");
    assert!(v.is_note() && !v.is_alarm());
    assert_eq!(run.stats().same_class_notes, 1);
}

#[test]
fn two_accounts_transferred_both_ways_are_a_same_class_warning() {
    let mut run = Run::new();
    let init = 0x4000;
    run.host.site(1, init, "bank", 0x1234);
    // a < b < c < d: transfer(a, b) locks upwards, transfer(d, c) downwards.
    init_all(&mut run, init, &[0xa0, 0xb0, 0xc0, 0xd0]);
    let note = run.feed(request(1, 1, &[mutex(0xa0)], mutex(0xb0)));
    assert!(matches!(note.as_slice(), [v] if v.is_note()), "{note:?}");
    let verdicts = run.feed(request(1, 2, &[mutex(0xd0)], mutex(0xc0)));
    let [v @ Verdict::SameClassNesting {
        class,
        dep,
        opposite: Some(opposite),
        ..
    }] = verdicts.as_slice()
    else {
        panic!("not one warning: {verdicts:?}");
    };
    assert!(v.is_alarm());
    assert_eq!(class, "init@bank+0x1234");
    assert_eq!((dep.from.addr, dep.to.addr), (0xd0, 0xc0));
    assert_eq!((opposite.from.addr, opposite.to.addr), (0xa0, 0xb0));
    // Once per class.
    assert!(run
        .feed(request(1, 3, &[mutex(0xc0)], mutex(0xa0)))
        .is_empty());
}

#[test]
fn the_same_two_instances_both_ways_are_one_instance_inversion() {
    let mut run = Run::new();
    run.host.site(1, 0x4000, "bank", 0x1234);
    init_all(&mut run, 0x4000, &[0xa0, 0xb0]);
    run.feed(request(1, 1, &[mutex(0xa0)], mutex(0xb0)));
    let verdicts = run.feed(request(1, 2, &[mutex(0xb0)], mutex(0xa0)));
    assert_eq!(inversion(&verdicts).level, Level::Instance);
}

#[test]
fn a_librarys_own_locks_nested_within_their_class_are_counted_not_reported() {
    let mut run = Run::new();
    let init = 0x7f00_0000_4000;
    run.host.site(1, init, "libapr-1.so.0", 0x1f2a);
    for addr in [0xa0, 0xb0] {
        run.feed(Event::LockInit {
            lock: LockInstance { pid: 1, addr },
            site: init,
            stack: None,
        });
    }
    assert!(run
        .feed(request(1, 1, &[mutex(0xa0)], mutex(0xb0)))
        .is_empty());
    assert_eq!(run.stats().library_same_class_nesting, 1);
}

#[test]
fn a_library_init_site_with_a_known_caller_is_classed_by_the_caller() {
    let mut run = Run::new();
    let init = 0x7f00_0000_4000;
    let stack = |sp| {
        Some(InitStack {
            sp,
            bp: 0,
            bytes: vec![0; 64],
        })
    };
    run.host
        .site(1, init, "libapr-1.so.0", 0x1f2a)
        .site(1, 0x5000, "app", 0x100)
        .site(1, 0x6000, "app", 0x200);
    run.host.callers.insert((1, 0x7ffc_1000), 0x5000);
    run.host.callers.insert((1, 0x7ffc_2000), 0x6000);
    run.feed(Event::LockInit {
        lock: LockInstance { pid: 1, addr: 0xa0 },
        site: init,
        stack: stack(0x7ffc_1000),
    });
    run.feed(Event::LockInit {
        lock: LockInstance { pid: 1, addr: 0xb0 },
        site: init,
        stack: stack(0x7ffc_2000),
    });
    // Two classes (two callers), so no same-class nesting: an edge.
    assert!(run
        .feed(request(1, 1, &[mutex(0xa0)], mutex(0xb0)))
        .is_empty());
    assert_eq!(run.stats().classes, 2);
}

#[test]
fn locks_made_through_a_wrapper_are_classed_by_the_wrappers_caller() {
    let mut run = Run::new();
    // lck_init (in the program) makes the locks of account_new and of
    // ledger_new: two classes, and an order between them both ways is a
    // class-level inversion, not a nesting of one class.
    let init = 0x4000;
    run.host.sites.insert(
        (1, init),
        CodeSite {
            module: "lock_wrapper".into(),
            offset: 0x11f4,
            function: Some("lck_init".into()),
            build: None,
        },
    );
    run.host
        .site(1, 0x5000, "lock_wrapper", 0x13bc)
        .site(1, 0x6000, "lock_wrapper", 0x13ef);
    let callers = [
        (0xa0, 0x5000),
        (0xb0, 0x6000),
        (0xc0, 0x5000),
        (0xd0, 0x6000),
    ];
    for (i, (addr, caller)) in callers.into_iter().enumerate() {
        let sp = 0x7ffc_0000 + i as u64 * 0x100;
        run.host.callers.insert((1, sp), caller);
        run.feed(Event::LockInit {
            lock: LockInstance { pid: 1, addr },
            site: init,
            stack: Some(InitStack {
                sp,
                bp: 0,
                bytes: vec![0; 64],
            }),
        });
    }
    // account a -> ledger b, then ledger d -> account c.
    assert!(run
        .feed(request(1, 1, &[mutex(0xa0)], mutex(0xb0)))
        .is_empty());
    let verdicts = run.feed(request(1, 2, &[mutex(0xd0)], mutex(0xc0)));
    let inv = inversion(&verdicts);
    assert_eq!(inv.level, Level::Class);
    assert_eq!(
        inv.classes,
        [
            "init@lock_wrapper+0x11f4 (lck_init) <- lock_wrapper+0x13bc",
            "init@lock_wrapper+0x11f4 (lck_init) <- lock_wrapper+0x13ef"
        ]
    );
}

#[test]
fn semaphores_of_one_class_nested_are_not_reported() {
    let mut run = Run::new();
    let init = 0x4000;
    run.host.site(1, init, "python3", 0x99);
    for addr in [0xa0, 0xb0] {
        run.feed(Event::LockInit {
            lock: LockInstance { pid: 1, addr },
            site: init,
            stack: None,
        });
    }
    let sem = |addr| lock(addr, LockKind::Semaphore);
    assert!(run.feed(request(1, 1, &[sem(0xa0)], sem(0xb0))).is_empty());
}

#[test]
fn python_locks_are_classed_by_their_creation_line() {
    let mut run = Run::new();
    let line = |n| {
        Some(PyFrame {
            function: "<module>".into(),
            file: "/srv/app/registry.py".into(),
            line: n,
        })
    };
    run.host.python.insert((1, 0xa0), line(6));
    run.host.python.insert((1, 0xb0), line(6));
    let sem = |addr| lock(addr, LockKind::Semaphore);
    run.feed(request(1, 1, &[sem(0xa0)], sem(0xb0)));
    assert_eq!(run.stats().classes, 1);
    // A line that could not be read: a class of its own.
    run.host.python.insert((1, 0xc0), None);
    run.feed(request(1, 1, &[sem(0xa0)], sem(0xc0)));
    assert_eq!(run.stats().classes, 2);
}

#[test]
fn a_relock_of_a_held_lock_is_a_self_deadlock() {
    let mut run = Run::new();
    let a = mutex(0xa0);
    let verdicts = run.feed(Event::SelfDeadlock(match request(1, 7, &[a], a) {
        Event::Request(r) => r,
        _ => unreachable!(),
    }));
    let [Verdict::SelfDeadlock { dep, .. }] = verdicts.as_slice() else {
        panic!("not one self-deadlock: {verdicts:?}");
    };
    assert_eq!((dep.from, dep.to, dep.tid), (dep.to, dep.from, 7));
    assert!(verdicts[0].is_alarm());
}

#[test]
fn wakeup_handoffs_do_not_make_a_cycle() {
    let mut run = Run::new();
    // Thread 1 holds its wake-up mutex A and locks thread 2's (B) to wake
    // it; thread 2 does the same the other way.
    run.host.wakeup.insert((1, 0xa0), 1);
    run.host.wakeup.insert((1, 0xb0), 2);
    let (a, b) = (mutex(0xa0), mutex(0xb0));
    run.feed(request(1, 1, &[a], b));
    assert!(run.feed(request(1, 2, &[b], a)).is_empty());
    assert_eq!(run.stats().handoff_cycles, 1);
}

#[test]
fn a_shared_lock_is_one_node_for_every_process_that_maps_it() {
    let mut run = Run::new();
    let shared = |offset| SharedLock {
        dev: 1,
        inode: 99,
        offset,
        path: "/dev/shm/pool".into(),
    };
    // Mapped at different addresses in the two workers.
    run.host.shared.insert((1, 0x1000), shared(0));
    run.host.shared.insert((1, 0x1040), shared(0x40));
    run.host.shared.insert((2, 0x9000), shared(0));
    run.host.shared.insert((2, 0x9040), shared(0x40));
    run.feed(request(1, 1, &[mutex(0x1000)], mutex(0x1040)));
    let verdicts = run.feed(request(2, 2, &[mutex(0x9040)], mutex(0x9000)));
    let inv = inversion(&verdicts);
    assert_eq!(inv.level, Level::Instance);
    let pids: Vec<u32> = inv.edges.iter().map(|e| e.pid).collect();
    assert_eq!(pids, [1, 2]);
}

#[test]
fn a_reinitialized_lock_forgets_its_dependencies() {
    let mut run = Run::new();
    let (a, b) = (mutex(0xa0), mutex(0xb0));
    run.feed(request(1, 1, &[a], b));
    run.feed(Event::LockDestroy {
        lock: LockInstance { pid: 1, addr: 0xa0 },
    });
    let forgotten = run.detector.take_forgotten();
    assert_eq!(forgotten.len(), 1);
    assert_eq!((forgotten[0].from.addr, forgotten[0].to.addr), (0xa0, 0xb0));
    // The memory is a new lock: its order against B is new.
    assert!(run.feed(request(1, 2, &[b], a)).is_empty());
}

/// Heap memory freed with a lock in it (never destroyed): the locks in the
/// range are forgotten, those outside it (the next chunk's) are kept.
#[test]
fn freed_memory_forgets_exactly_the_locks_in_it() {
    let mut run = Run::new();
    let (a, b, next) = (mutex(0x1028), mutex(0xb0), mutex(0x1048));
    run.feed(request(1, 1, &[a], b));
    run.feed(request(1, 2, &[next], b));
    // Another process's lock at the same address stays too.
    run.feed(request(2, 3, &[a], b));
    run.feed(Event::MemoryFreed {
        pid: 1,
        start: 0x1000,
        end: 0x1048,
    });
    let forgotten: Vec<(u32, u64, u64)> = (run.detector.take_forgotten().iter())
        .map(|d| (d.pid, d.from.addr, d.to.addr))
        .collect();
    assert_eq!(forgotten, [(1, 0x1028, 0xb0)]);
    // The memory is a new lock: its order against B is new.
    assert!(run.feed(request(1, 4, &[b], a)).is_empty());
    // The next chunk's lock is the same lock: B -> it closes a cycle.
    assert_eq!(
        inversion(&run.feed(request(1, 5, &[b], next))).level,
        Level::Instance
    );
}

#[test]
fn an_exited_process_is_forgotten_and_its_pid_may_be_reused() {
    let mut run = Run::new();
    let (a, b) = (mutex(0xa0), mutex(0xb0));
    run.feed(request(1, 1, &[a], b));
    run.feed(Event::ProcessExit { pid: 1 });
    assert_eq!(run.detector.take_forgotten().len(), 1);
    assert_eq!(run.stats().forgotten_processes, 1);
    // Another program with pid 1: B -> A alone is no cycle.
    assert!(run.feed(request(1, 2, &[b], a)).is_empty());
}

/// Two non-PIE programs exec'd one after the other in pid 1, their globals
/// at the same addresses: the second image's B -> A is no cycle with the
/// first's A -> B, at instance level or at class level, and each image's
/// globals are classes of its own binary.
#[test]
fn an_exec_starts_a_new_address_space() {
    let mut run = Run::new();
    let (a, b) = (mutex(0x404080), mutex(0x4040c0));
    run.host
        .global(1, 0x404080, "exec_ab", "lock_one")
        .global(1, 0x4040c0, "exec_ab", "lock_two");
    run.feed(request(1, 1, &[a], b));
    run.feed(Event::ProcessExec { pid: 1 });
    assert_eq!(run.detector.take_forgotten().len(), 1);
    // Forgotten, not gone: the process lives on.
    assert_eq!(run.stats().forgotten_processes, 0);
    assert_eq!(run.stats().forgotten_dependencies, 1);
    run.host
        .global(1, 0x404080, "exec_ba", "lock_one")
        .global(1, 0x4040c0, "exec_ba", "lock_two");
    assert!(run.feed(request(1, 1, &[b], a)).is_empty());
}

fn waiter(tid: u32, lock: u64, holders: &[u32]) -> Waiter {
    Waiter {
        blocked: Blocked {
            pid: 1,
            tid,
            uaddr: lock,
            op: 0,
            private: true,
            sp: 0,
            pc: 0,
        },
        lock,
        kind: LockKind::Mutex,
        holders: holders.to_vec(),
    }
}

#[test]
fn a_deadlock_names_the_inversion_found_before() {
    let mut run = Run::new();
    let (a, b) = (mutex(0xa0), mutex(0xb0));
    run.feed(request(1, 11, &[a], b));
    let inv_id = inversion(&run.feed(request(1, 12, &[b], a))).id;
    let starts = WaitStarts::new();
    let t0 = Instant::now();
    let scan = |s: u64| WaitScan {
        waiters: vec![waiter(11, 0xb0, &[12]), waiter(12, 0xa0, &[11])],
        starts: &starts,
        now: t0 + Duration::from_secs(s),
        now_ns: s * 1_000_000_000,
    };
    assert!(run.detector.on_waits(&scan(0)).is_empty());
    let verdicts = run.detector.on_waits(&scan(1));
    let [Verdict::Deadlock {
        id,
        threads,
        inversion,
    }] = verdicts.as_slice()
    else {
        panic!("not one deadlock: {verdicts:?}");
    };
    assert_eq!(*inversion, Some(inv_id));
    assert!(*id > inv_id);
    assert_eq!(threads.len(), 2);
}

#[test]
fn the_same_bug_in_a_hundred_workers_is_one_finding_and_repeats() {
    let mut run = Run::new();
    let mut reported = 0;
    for pid in 1..=100 {
        run.host
            .global(pid, 0xa0, "worker", "mutex_x")
            .global(pid, 0xb0, "worker", "mutex_y");
        run.feed(request(pid, pid, &[mutex(0xa0)], mutex(0xb0)));
        reported += run
            .feed(request(pid, pid + 1000, &[mutex(0xb0)], mutex(0xa0)))
            .len();
    }
    assert_eq!(reported, 1);
    assert_eq!(run.stats().repeated_findings, 99);
}

#[test]
fn a_storm_of_cycles_in_one_process_is_budgeted_and_counted() {
    let mut run = Run::new();
    // 40 pairs of locks, each taken both ways: 40 distinct bugs at once.
    let mut reported = 0;
    for i in 0..40u64 {
        let (a, b) = (mutex(0x1000 + i * 0x100), mutex(0x1040 + i * 0x100));
        run.feed(request(1, 1, &[a], b));
        reported += run.feed(request(1, 2, &[b], a)).len();
    }
    assert_eq!(reported, 20);
    assert_eq!(run.stats().suppressed_findings, 20);
    // Another process has its own budget.
    let (a, b) = (mutex(0xa0), mutex(0xb0));
    run.feed(request(2, 3, &[a], b));
    assert_eq!(run.feed(request(2, 4, &[b], a)).len(), 1);
}

/// At its share of lock instances, a process's coldest locks are evicted
/// (with their dependencies, which the kernel side forgets too) to make
/// room for its new ones: the graph stays bounded, nothing is dropped.
#[test]
fn a_process_cannot_grow_the_graph_without_bound() {
    use tracer_analysis::detector::MAX_LOCKS_PER_PROCESS;
    let mut run = Run::new();
    let n = MAX_LOCKS_PER_PROCESS as u64 / 2 + 10;
    let pair = |i: u64| (mutex(0x10_0000 + i * 0x80), mutex(0x10_0040 + i * 0x80));
    for i in 0..n {
        let (a, b) = pair(i);
        run.feed(request(1, 1, &[a], b));
    }
    let s = run.stats();
    assert_eq!(s.graph_locks, MAX_LOCKS_PER_PROCESS as u64);
    assert_eq!(
        (
            s.evicted_locks,
            s.evicted_dependencies,
            s.dropped_dependencies
        ),
        (20, 10, 0)
    );
    // The oldest went first, and leave the kernel's cache.
    let evicted: Vec<u64> = run
        .detector
        .take_forgotten()
        .iter()
        .map(|d| d.from.addr)
        .collect();
    let oldest: Vec<u64> = (0..10).map(|i| pair(i).0.addr).collect();
    assert_eq!(evicted, oldest);
    // The newest pair is kept: again, it is no new edge.
    let (a, b) = pair(n - 1);
    run.feed(request(1, 1, &[a], b));
    assert_eq!(run.stats().evicted_locks, 20);
    // Another process has its own share: it evicts nothing.
    run.feed(request(2, 2, &[mutex(0xa0)], mutex(0xb0)));
    let s = run.stats();
    assert_eq!(s.graph_locks, MAX_LOCKS_PER_PROCESS as u64 + 2);
    assert_eq!(s.evicted_locks, 20);
}

#[test]
fn a_process_cannot_fill_the_graph_with_dependencies() {
    use tracer_analysis::limits::Limit;
    // 60 locks taken in every ascending pair (no cycle): 1,770 edges, over
    // a share of 1,000 (the real one is 500,000).
    let mut run = Run {
        detector: Detector::with_limits(
            Duration::from_secs(10),
            tracer_analysis::limits::LOCKS,
            Limit {
                per_process: 1_000,
                total: 1_500,
            },
        ),
        host: FakeHost::default(),
    };
    let lock = |i: u64| mutex(0x10_0000 + i * 0x40);
    let mut fed = 0;
    for i in 0..60 {
        for j in i + 1..60 {
            run.feed(request(1, 1, &[lock(i)], lock(j)));
            fed += 1;
        }
    }
    let s = run.stats();
    assert!(s.graph_dependencies <= 1_000, "{s:?}");
    assert_eq!(s.graph_dependencies + s.evicted_dependencies, fed, "{s:?}");
    assert_eq!(s.dropped_dependencies, 0);
    let kept = s.graph_dependencies;
    // The last one taken is kept: again, it is no new edge.
    run.feed(request(1, 2, &[lock(58)], lock(59)));
    assert_eq!(run.stats().graph_dependencies, kept);
    run.detector.take_forgotten();
    // Another process has its share, up to the total: once the total is
    // full, the first process's coldest locks make room.
    for i in 0..600 {
        run.feed(request(2, 3, &[mutex(0xa0 + i * 0x40)], mutex(0xb0_0000)));
    }
    let s = run.stats();
    assert!(s.graph_dependencies <= 1_500, "{s:?}");
    let from: HashSet<u32> = run
        .detector
        .take_forgotten()
        .iter()
        .map(|d| d.pid)
        .collect();
    assert_eq!(from, HashSet::from([1]));
    // All 600 of the second process's are in the graph: again, none is new.
    let evicted = s.evicted_dependencies;
    for i in 0..600 {
        run.feed(request(2, 3, &[mutex(0xa0 + i * 0x40)], mutex(0xb0_0000)));
    }
    assert_eq!(run.stats().evicted_dependencies, evicted);
    // The first one's exit gives its share back.
    run.feed(Event::ProcessExit { pid: 1 });
    assert_eq!(run.stats().graph_dependencies, 600);
}

#[test]
fn an_inversion_past_the_cap_is_reported_by_the_class_graph() {
    // The instance graph capped at one dependency: the second order of an
    // AB/BA in one process evicts the first (with its colder lock), so no
    // instance cycle reports it; the class graph (kept whole) does, once.
    let mut run = Run::new();
    run.detector.set_limits(10, 1);
    run.host
        .global(1, 0xa0, "ab_ba", "mutex_a")
        .global(1, 0xb0, "ab_ba", "mutex_b");
    let (a, b) = (mutex(0xa0), mutex(0xb0));
    assert!(run.feed(request(1, 1, &[a], b)).is_empty());
    let verdicts = run.feed(request(1, 2, &[b], a));
    let inv = inversion(&verdicts);
    assert_eq!(inv.level, Level::Class);
    assert_eq!(inv.classes, ["ab_ba:mutex_a", "ab_ba:mutex_b"]);
    let s = run.stats();
    assert_eq!(
        (
            s.evicted_locks,
            s.evicted_dependencies,
            s.dropped_dependencies
        ),
        (1, 1, 0)
    );
    assert_eq!(s.graph_dependencies, 1);
    assert!(run.feed(request(1, 3, &[b], a)).is_empty());
    // Uncapped, the instance graph reports it (and the class graph not
    // again).
    let mut run = Run::new();
    run.host
        .global(1, 0xa0, "ab_ba", "mutex_a")
        .global(1, 0xb0, "ab_ba", "mutex_b");
    run.feed(request(1, 1, &[a], b));
    assert_eq!(
        inversion(&run.feed(request(1, 2, &[b], a))).level,
        Level::Instance
    );
}

#[test]
fn first_use_classes_make_no_class_level_finding() {
    let mut run = Run::new();
    // Heap locks with no init record nor symbol: classed by the site of
    // their first acquisition, which says little (move_one() takes its
    // lower lock at one site and its higher at another): no class-level
    // cycle or nesting may come of them.
    let site = |l: L, at: u64| HeldAt {
        addr: l.addr,
        kind: l.kind,
        taken_at: vec![at],
        python: None,
    };
    let req = |tid, held: HeldAt, to: HeldAt| {
        Event::Request(Request {
            pid: 1,
            tid,
            thread: "t".into(),
            timestamp_ns: 1,
            held: vec![held.addr],
            from: vec![held],
            stack: vec![to.site()],
            to,
            python: Vec::new(),
            handoff: false,
        })
    };
    let (x, y, u, v) = (mutex(0x10), mutex(0x20), mutex(0x30), mutex(0x40));
    // x first taken at S1, y at S2; u first at S2, v at S1: the classes
    // S1 -> S2 and S2 -> S1, with no instance cycle (x -> y, u -> v).
    assert!(run.feed(req(1, site(x, 0x1), site(y, 0x2))).is_empty());
    let v2 = run.feed(req(2, site(u, 0x2), site(v, 0x1)));
    assert!(v2.is_empty(), "{v2:?}");
    // Two locks first taken at one site, nested: no same-class note.
    let (p, q) = (mutex(0x50), mutex(0x60));
    assert!(run.feed(req(3, site(p, 0x3), site(q, 0x3))).is_empty());
}
