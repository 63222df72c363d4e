//! Benchmark of the userspace collector pipeline, with no kernel involved.
//!
//! 1. Throughput, one thread: generated ring-buffer records, laid out exactly
//!    as the kernel writes `DependencyEvent`, go through what the session
//!    does with them: `kernel::decode`, a detection `Request` (unwinding
//!    skipped: it needs the traced process), the real `Detector` (identity,
//!    classes, instance and class graphs, every rule) with a host that knows
//!    nothing (every lock is its own first-use class), and
//!    `report::build::inversion` for every new cycle (no sink).
//! 2. Memory of the detector, exact, from a counting global allocator.
//!
//! Prints one JSON object on stdout, progress on stderr.
//! `cargo run --release -p tracer --example collector_bench [-- --quick]`

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashSet;
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use locktrace::kernel::decode::{self, lock_kind, RawRequest, Record};
use locktrace::report::build::inversion;
use locktrace::symbolize::Resolve;
use tracer_analysis::model::{CodeSite, Frame, HeldAt, LockInstance, PyFrame, Request, SharedLock};
use tracer_analysis::{Detector, Event, Host, InitStack, Verdict};
use tracer_common::{DependencyEvent, EventKind, HeldLock, COMM_LEN, STACK_CHUNK};

/// Counts live heap bytes (requested sizes: malloc's own per-chunk overhead,
/// ~8-16 bytes, is not included). One uncontended atomic add per call is
/// noise next to the 12 KiB copy each decoded record costs.
struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = System.alloc(l);
        if !p.is_null() {
            LIVE.fetch_add(l.size() as isize, Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(l);
        if !p.is_null() {
            LIVE.fetch_add(l.size() as isize, Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l);
        LIVE.fetch_sub(l.size() as isize, Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = System.realloc(p, l, new);
        if !q.is_null() {
            LIVE.fetch_add(new as isize - l.size() as isize, Relaxed);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// splitmix64: deterministic runs without a `rand` dev-dependency.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n
    }
}

/// Live processes in the generated workload at any time.
const PROCESSES: usize = 64;
/// Most locks one thread holds when it requests another (kernel: MAX_HELD).
const MAX_DEPTH: u64 = 4;
/// One request in this many takes a lock below a held one: an inversion.
const INVERSION_ONE_IN: u64 = 1000;
/// Records decoded per drain, as `Session::drain` decodes a whole batch first.
const BATCH: usize = 256;

/// A traced process: locks are ranked `0..locks`, code takes them in rank
/// order. `seen` plays the kernel's per-process dependency cache, so only new
/// dependencies are emitted, as in a real run.
struct Process {
    pid: u32,
    locks: u64,
    /// Requests left before the process exits and a new pid replaces it.
    budget: u64,
    seen: HashSet<(u64, u64)>,
}

struct Workload {
    rng: Rng,
    procs: Vec<Process>,
    next_pid: u32,
    clock_ns: u64,
    inversions: u64,
    processes: u64,
}

impl Workload {
    fn new() -> Self {
        let mut w = Workload {
            rng: Rng(42),
            procs: Vec::new(),
            next_pid: 1000,
            clock_ns: 1 << 40,
            inversions: 0,
            processes: 0,
        };
        w.procs = (0..PROCESSES).map(|_| w.spawn()).collect();
        w
    }

    fn spawn(&mut self) -> Process {
        self.next_pid += 1;
        self.processes += 1;
        // Log-uniform 8..=512 locks; lifetime proportional to size, so big
        // processes dominate the live set as they would on a host.
        let locks = 8 << self.rng.below(7);
        Process {
            pid: self.next_pid,
            locks,
            budget: 2 * locks,
            seen: HashSet::new(),
        }
    }

    fn addr(pid: u32, rank: u64) -> u64 {
        0x5555_0000_0000 + ((pid as u64) << 24) + rank * 0x40
    }

    /// Writes the next record into `ev` the way the kernel side fills a
    /// reserved ring-buffer slot.
    fn fill(&mut self, ev: &mut DependencyEvent) {
        loop {
            let i = self.rng.below(self.procs.len() as u64) as usize;
            if self.procs[i].budget == 0 {
                self.procs[i] = self.spawn();
            }
            let p = &mut self.procs[i];
            p.budget -= 1;
            let depth = 1 + self.rng.below(MAX_DEPTH);
            let mut ranks: Vec<u64> = (0..=depth).map(|_| self.rng.below(p.locks)).collect();
            ranks.sort_unstable();
            ranks.dedup();
            if ranks.len() < 2 {
                continue;
            }
            let (held, to) = if self.rng.below(INVERSION_ONE_IN) == 0 {
                self.inversions += 1;
                (ranks[1..].to_vec(), ranks[0])
            } else {
                let last = ranks.pop().unwrap();
                (ranks, last)
            };
            let new: Vec<u64> = held
                .into_iter()
                .filter(|&h| p.seen.insert((h, to)))
                .collect();
            if new.is_empty() {
                continue; // the kernel emits nothing for known dependencies
            }
            let pid = p.pid;
            let tid = pid + self.rng.below(8) as u32;
            self.clock_ns += self.rng.below(100_000);
            ev.event = EventKind::Dependency as u32;
            ev.pid = pid;
            ev.tid = tid;
            ev.timestamp_ns = self.clock_ns;
            ev.comm = [0; COMM_LEN];
            let comm = format!("worker-{}", tid - pid);
            ev.comm[..comm.len()].copy_from_slice(comm.as_bytes());
            let lock = |rank: u64| HeldLock {
                addr: Self::addr(pid, rank),
                // Per lock: each is its own first-use class.
                callsite: Self::addr(pid, rank) + 0x10_0000_0000,
                kind: 1,
                flags: 0,
                sp: 0,
                bp: 0,
                above: [0; 6],
                py: Default::default(),
                py_caller: Default::default(),
            };
            ev.to = lock(to);
            (ev.ip, ev.sp, ev.bp) = (0x7f00_0000_1000, 0x7ffc_0000_0000, 0);
            ev.n_from = new.len() as u32;
            for (slot, &h) in ev.from.iter_mut().zip(&new) {
                *slot = lock(h);
            }
            // The kernel copies the stack in pages up to its end: 1-3 pages.
            ev.stack_len = (STACK_CHUNK as u32) * (1 + self.rng.below(3) as u32);
            return;
        }
    }
}

/// Stands in for the symbolizer in `report::build::inversion`.
struct NoSymbols;
impl Resolve for NoSymbols {
    fn frames(&mut self, _: u32, _: &[u64], _: bool) -> Vec<Frame> {
        Vec::new()
    }
    fn lock_name(&mut self, _: u32, _: u64) -> Option<String> {
        None
    }
    fn process_name(&mut self, _: u32) -> String {
        String::new()
    }
}

/// A host that knows nothing: no mapped files, no shared memory, no
/// Python, no wake-up mutexes.
struct NoHost;
impl Host for NoHost {
    fn code_site(&mut self, _: u32, _: u64) -> Option<CodeSite> {
        None
    }
    fn makes_locks_for_callers(&mut self, _: u32, _: u64) -> bool {
        false
    }
    fn is_wrapper(&mut self, _: u32, _: u64) -> bool {
        false
    }
    fn init_callers(&mut self, _: u32, _: u64, _: &InitStack) -> Vec<u64> {
        Vec::new()
    }
    fn global_symbol(&mut self, _: LockInstance) -> Option<tracer_analysis::GlobalSymbol> {
        None
    }
    fn shared_lock(&mut self, _: LockInstance) -> Option<SharedLock> {
        None
    }
    fn python_creation(&mut self, _: LockInstance) -> Option<Option<PyFrame>> {
        None
    }
    fn wakeup_mutex_owner(&mut self, _: u32, _: u64) -> Option<u32> {
        None
    }
}

fn held_at(h: &HeldLock) -> HeldAt {
    HeldAt {
        addr: h.addr,
        kind: lock_kind(h.kind),
        taken_at: vec![h.callsite],
        python: None,
    }
}

/// What the session does with a dependency record, minus unwinding: that
/// step needs the traced process's memory maps and ELF files, so every
/// request gets an empty stack here (a real stack adds 8 bytes per frame to
/// each request, shared by its dependencies and both graphs).
fn on_request(detector: &mut Detector, findings: &mut u64, d: RawRequest) {
    let request = Request {
        pid: d.pid,
        tid: d.tid,
        thread: d.thread,
        timestamp_ns: d.timestamp_ns,
        to: held_at(&d.to),
        from: d.from.iter().map(held_at).collect(),
        held: d.held,
        stack: Vec::new(),
        python: Vec::new(),
        handoff: d.handoff,
    };
    for verdict in detector.on_event(Event::Request(request), &mut NoHost) {
        *findings += 1;
        if let Verdict::Inversion(inv) = verdict {
            black_box(inversion(&inv, &mut NoSymbols));
        }
    }
}

fn as_bytes(ev: &DependencyEvent) -> &[u8] {
    // SAFETY: viewing plain `repr(C)` data as bytes, as the ring buffer does.
    unsafe {
        std::slice::from_raw_parts(
            (ev as *const DependencyEvent).cast(),
            size_of::<DependencyEvent>(),
        )
    }
}

fn throughput(events: usize) -> serde_json::Value {
    // The slots are reused batch after batch, like ring-buffer pages; only
    // their headers change, the stack bytes are arbitrary but non-zero.
    let mut slots: Vec<Box<DependencyEvent>> = (0..BATCH)
        .map(|_| {
            // SAFETY: all-zero is a valid DependencyEvent. (Not
            // `Box::new_zeroed`: stable since 1.92, the MSRV is 1.87.)
            let mut ev = unsafe {
                let mut b = Box::<DependencyEvent>::new_uninit();
                b.as_mut_ptr().write_bytes(0, 1);
                b.assume_init()
            };
            ev.stack
                .iter_mut()
                .enumerate()
                .for_each(|(i, b)| *b = i as u8 | 1);
            ev
        })
        .collect();
    let mut work = Workload::new();
    let mut detector = Detector::new(Duration::from_secs(10));
    let (mut t_decode, mut t_graph) = (Duration::ZERO, Duration::ZERO);
    let (mut done, mut findings, mut deps) = (0usize, 0u64, 0u64);
    let mut last_progress = Instant::now();
    while done < events {
        let n = BATCH.min(events - done);
        slots[..n].iter_mut().for_each(|ev| work.fill(ev)); // not timed
        let t0 = Instant::now();
        let batch: Vec<Record> = slots[..n]
            .iter()
            .map(|ev| decode::decode(as_bytes(ev)).expect("decodable record"))
            .collect();
        let t1 = Instant::now();
        for record in batch {
            let Record::Dependency(d) = record else {
                continue; // the generator makes dependencies only
            };
            deps += d.from.len() as u64;
            on_request(&mut detector, &mut findings, d);
        }
        t_graph += t1.elapsed();
        t_decode += t1 - t0;
        done += n;
        if last_progress.elapsed() > Duration::from_secs(2) {
            eprintln!("  {done}/{events} events, {} locks", detector.stats().locks);
            last_progress = Instant::now();
        }
    }
    let per_s = |t: Duration| (done as f64 / t.as_secs_f64()).round();
    serde_json::json!({
        "dependency_events_per_s": per_s(t_decode + t_graph),
        "decode_only_events_per_s": per_s(t_decode),
        "dependencies_per_s": (deps as f64 / (t_decode + t_graph).as_secs_f64()).round(),
        "events": done,
        "dependencies_in_events": deps,
        "record_bytes": size_of::<DependencyEvent>(),
        "graph_locks": detector.stats().locks,
        "graph_dependencies": detector.stats().dependencies,
        "lock_classes": detector.stats().classes,
        "processes": work.processes,
        "inversions_injected": work.inversions,
        "cycles": detector.stats().cycles,
        "findings": findings,
        "truncated_searches": detector.stats().truncated_cycle_searches,
    })
}

/// A request of one held lock, as `on_request` builds them.
fn request(pid: u32, from: u64, to: u64) -> Event {
    let lock = |rank: u64| HeldAt {
        addr: Workload::addr(pid, rank),
        kind: lock_kind(1),
        taken_at: vec![Workload::addr(pid, rank) + 0x10_0000_0000],
        python: None,
    };
    Event::Request(Request {
        pid,
        tid: pid,
        thread: "worker-0".into(),
        timestamp_ns: 0,
        to: lock(to),
        from: vec![lock(from)],
        held: vec![Workload::addr(pid, from)],
        stack: Vec::new(),
        python: Vec::new(),
        handoff: false,
    })
}

fn live() -> isize {
    LIVE.load(Relaxed)
}

fn resident_bytes() -> isize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: isize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as isize
}

// Both memory figures are heap in use right after the inserts: hash tables
// grow by doubling, so the same code measures up to ~1.4x more or less at
// other sizes (e.g. 243 vs 348 bytes a dependency at 1500 vs 2000 processes).

/// Bytes per lock: chains of 8 locks (7 dependencies each, the fewest that
/// put a lock in the graph while keeping cycle searches short), 1000 locks a
/// process. Runs first, so that the RSS cross-check sees fresh memory.
fn memory_locks(locks: u64) -> (f64, f64) {
    const CHAIN: u64 = 8;
    let (heap0, rss0) = (live(), resident_bytes());
    let mut detector = Detector::new(Duration::from_secs(10));
    for c in 0..locks / CHAIN {
        let pid = (c / (1000 / CHAIN)) as u32;
        let base = (c % (1000 / CHAIN)) * CHAIN;
        for i in base..base + CHAIN - 1 {
            detector.on_event(request(pid, i, i + 1), &mut NoHost);
        }
    }
    let n = detector.stats().locks as f64;
    let per_million = |d: isize| (d as f64 * 1e6 / n).round();
    let out = (
        per_million(live() - heap0),
        per_million(resident_bytes() - rss0),
    );
    drop(detector);
    out
}

/// Bytes per dependency, locks excluded: create each process's 24 locks with
/// a chain, then measure adding every other ordered pair (a dense DAG).
fn memory_dependencies(processes: u32) -> f64 {
    const LOCKS: u64 = 24;
    let mut detector = Detector::new(Duration::from_secs(10));
    for pid in 0..processes {
        (0..LOCKS - 1).for_each(|i| drop(detector.on_event(request(pid, i, i + 1), &mut NoHost)));
    }
    let (heap0, deps0) = (live(), detector.stats().dependencies);
    for pid in 0..processes {
        for i in 0..LOCKS {
            (i + 2..LOCKS).for_each(|j| drop(detector.on_event(request(pid, i, j), &mut NoHost)));
        }
    }
    let added = (detector.stats().dependencies - deps0) as f64;
    ((live() - heap0) as f64 * 1e5 / added).round()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (locks, dep_procs, events) = if quick {
        (100_000, 200, 20_000)
    } else {
        (1_000_000, 2_000, 500_000)
    };
    let start = Instant::now();
    eprintln!("memory: {locks} locks in chains");
    let (bytes_per_million_locks, rss_per_million_locks) = memory_locks(locks);
    eprintln!("memory: dense dependencies in {dep_procs} processes");
    let bytes_per_100k_dependencies = memory_dependencies(dep_procs);
    eprintln!("throughput: {events} dependency events");
    let mut out = throughput(events);
    let o = out.as_object_mut().unwrap();
    o.insert(
        "bytes_per_million_locks".into(),
        bytes_per_million_locks.into(),
    );
    o.insert(
        "bytes_per_100k_dependencies".into(),
        bytes_per_100k_dependencies.into(),
    );
    o.insert(
        "rss_bytes_per_million_locks".into(),
        rss_per_million_locks.into(),
    );
    o.insert("stack_frames_per_dependency".into(), 0.into());
    o.insert("quick".into(), quick.into());
    o.insert(
        "elapsed_s".into(),
        ((start.elapsed().as_secs_f64() * 10.0).round() / 10.0).into(),
    );
    println!("{out}");
}
