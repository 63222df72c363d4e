//! `cargo xtask bench`: the cost of tracing, measured side by side in one run
//! and reported as ratios (the machine is shared and noisy: absolute numbers
//! drift between runs, ratios of interleaved measurements much less).
//!
//! Probe cost: `bench/lockloop.c` locks and unlocks uncontended mutexes for a
//! fixed time and prints the mean ns per pair, under five setups run in
//! turn, round after round: untraced; the floor (empty BPF programs on the
//! same placed probes and on `pthread_mutex_unlock`: the price of two probe
//! hits per pair); the one-hit floor (the same without the unlock probe,
//! which locktrace does without: the price of one hit); locktrace; and
//! locktrace with every probe on its function's first instruction (what other
//! tools do). Collector throughput: `tracer/examples/collector_bench.rs`.
//!
//! End to end: Debian's Apache (MPM event, `bench/apache2.conf`) serves a
//! small static file on loopback to Debian's wrk, under the same four
//! setups, traced host-wide with `locktrace watch` as a production host
//! would be (so wrk is traced too); requests/s and p99 latency.
//!
//! Real servers (`bench/server_rows.rs` and one module each), untraced
//! against traced: a Django view under Apache + mod_wsgi; memcached, MariaDB
//! and varnish in full and under `--budget 5`; and whether `--budget 5`
//! learns memcached's lock orders (`bench/convergence.rs`). `--only` picks
//! parts ([`Part`]).

use std::{
    collections::VecDeque,
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde::{ser::SerializeMap, Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::{cmd, prereqs, run, step, target_dir, workspace_root};

mod attach;
mod convergence;
mod django;
mod mariadb;
mod memcached;
mod server_rows;
mod varnish;

pub struct Options {
    pub rounds: usize,
    pub seconds: f64,
    pub quick: bool,
    /// The parts to measure (all when empty).
    pub only: Vec<Part>,
}

impl Options {
    fn wants(&self, part: Part) -> bool {
        self.only.is_empty() || self.only.contains(&part)
    }
}

/// A part of the benchmark, as `--only` names it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Part {
    /// `run` of a trivial program, exit after SIGTERM, a bystander.
    Attach,
    /// ns per lock+unlock pair in C and Python loops.
    ProbeCost,
    /// The `--watch-free` table.
    FreeWatch,
    /// Apache serving a static file under wrk, traced host-wide.
    Web,
    /// A Django view under Apache + mod_wsgi, untraced and traced.
    Django,
    /// memcached under memcaslap: untraced, full, budget 5%.
    Memcached,
    /// memcached: which of full mode's lock orders `--budget 5` learns, and when.
    Convergence,
    /// MariaDB under sysbench oltp_read_write: untraced, full, budget 5%.
    Mariadb,
    /// varnish under wrk: untraced, full, budget 5%.
    Varnish,
    /// The collector's own throughput (no kernel).
    Collector,
}

#[derive(Clone, Copy)]
enum Setup {
    Untraced,
    Floor,
    /// The floor without the probe on `pthread_mutex_unlock` (which
    /// locktrace does without): one hit per mutex pair.
    OneHitFloor,
    Locktrace,
    EntryProbes,
    /// locktrace with `--watch-free`: a probe hit per `free` too.
    WatchFree,
    /// `locktrace agent`: `watch` as a service, its metrics endpoint served
    /// (no Alertmanager: nothing to send on a clean load).
    Agent,
}

impl Setup {
    const ALL: [Setup; 5] = [
        Setup::Untraced,
        Setup::Floor,
        Setup::Locktrace,
        Setup::EntryProbes,
        Setup::Agent,
    ];

    /// The setups of the probe-cost table: also the one-hit floor.
    const PROBE_COST: [Setup; 5] = [
        Setup::Untraced,
        Setup::Floor,
        Setup::OneHitFloor,
        Setup::Locktrace,
        Setup::EntryProbes,
    ];

    /// The setups of the free-watch table.
    const FREE_WATCH: [Setup; 3] = [Setup::Untraced, Setup::Locktrace, Setup::WatchFree];

    fn name(self) -> &'static str {
        match self {
            Setup::WatchFree => "watch_free",
            Setup::Untraced => "untraced",
            Setup::Floor => "floor",
            Setup::OneHitFloor => "one_hit_floor",
            Setup::Locktrace => "locktrace",
            Setup::EntryProbes => "offset_0",
            Setup::Agent => "agent",
        }
    }

    /// The setup as the tables call it.
    fn label(self) -> &'static str {
        match self {
            Setup::Untraced => "untraced",
            Setup::Floor => "floor (empty programs, placed probes)",
            Setup::OneHitFloor => "one-hit floor (no probe on the mutex unlock)",
            Setup::Locktrace => "locktrace",
            Setup::EntryProbes => "probes at offset 0",
            Setup::WatchFree => "locktrace --watch-free",
            Setup::Agent => "locktrace agent (metrics served)",
        }
    }

    /// locktrace's options for this setup (None: run untraced).
    fn tracer_args(self) -> Option<&'static [&'static str]> {
        match self {
            Setup::Untraced => None,
            Setup::Floor => Some(&["--floor-probes"]),
            Setup::OneHitFloor => Some(&["--one-hit-floor-probes"]),
            Setup::Locktrace => Some(&[]),
            Setup::EntryProbes => Some(&["--probe-at-entry"]),
            Setup::WatchFree => Some(&["--watch-free"]),
            Setup::Agent => Some(&[]),
        }
    }
}

/// A loop that prints its mean ns per lock+unlock pair.
enum Workload {
    /// bench/lockloop.c: mode (mutex, trylock), threads.
    Lockloop(&'static str, u32),
    /// bench/pylockloop.py under Debian's python3: threading.Lock.
    PythonLock,
}

impl Workload {
    fn name(&self) -> String {
        match self {
            Workload::Lockloop(mode, 1) => format!("{mode}, 1 thread"),
            Workload::Lockloop(mode, n) => format!("{mode}, {n} threads"),
            Workload::PythonLock => "Python threading.Lock".into(),
        }
    }

    fn command(&self, lockloop: &Path, seconds: f64) -> Vec<std::ffi::OsString> {
        match self {
            Workload::Lockloop(mode, threads) => vec![
                lockloop.as_os_str().to_owned(),
                mode.into(),
                threads.to_string().into(),
                format!("{seconds}").into(),
            ],
            Workload::PythonLock => vec![
                "/usr/bin/python3".into(),
                workspace_root()
                    .join("xtask/bench/pylockloop.py")
                    .into_os_string(),
                format!("{seconds}").into(),
            ],
        }
    }
}

/// A mutex pair with a malloc and a free inside: what `--watch-free` costs.
const FREE_WORKLOADS: &[Workload] = &[
    Workload::Lockloop("malloc", 1),
    Workload::Lockloop("malloc", 2),
];

const WORKLOADS: &[Workload] = &[
    Workload::Lockloop("mutex", 1),
    Workload::Lockloop("mutex", 2),
    Workload::Lockloop("trylock", 1),
    Workload::Lockloop("trylock", 2),
    Workload::Lockloop("rwlock", 1),
    Workload::Lockloop("rwlock", 2),
    Workload::Lockloop("sem", 1),
    Workload::Lockloop("sem", 2),
    Workload::PythonLock,
];

/// Another tracer's uprobes on libc would slow the "untraced" runs too.
fn other_tracers() -> Vec<String> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        let comm = comm.trim();
        (pid != me && matches!(comm, "locktrace" | "bpftrace" | "deadlock"))
            .then(|| format!("{comm} [{pid}]"))
    })
    .collect()
}

pub fn bench(opts: &Options) -> Result<()> {
    if !cmd::is_root() {
        bail!("the benchmark loads BPF programs: run as root");
    }
    let toolchain = prereqs::ensure(prereqs::Scope::Bench)?;
    let locktrace = run::build_all(&toolchain, true)?;
    // Not beside a test suite: its host-wide tracers would slow every
    // setup, and the benchmark's tracers would see its programs.
    let _lock = crate::test::machine_lock()?;
    let out_dir = target_dir().join("bench");
    std::fs::create_dir_all(&out_dir)?;
    let lockloop = compile_lockloop(&out_dir)?;

    let others = other_tracers();
    if !others.is_empty() {
        bail!(
            "other tracers are running ({}): their uprobes on libc would slow the \
             untraced runs too; stop them first",
            others.join(", ")
        );
    }
    let mut results = Results::default();
    let mut markdown = String::new();
    let mut add = |md: String| {
        if !markdown.is_empty() {
            markdown.push('\n');
        }
        markdown.push_str(&md);
    };
    if opts.wants(Part::Attach) {
        step("attach, detach and bystanders");
        let attach = attach::attach_bench(&locktrace, &lockloop, opts)?;
        add(attach::render(&attach, opts));
        results.attach = Some(attach);
    }
    if opts.wants(Part::ProbeCost) {
        let rows = probe_cost_rows(&locktrace, &lockloop, WORKLOADS, &Setup::PROBE_COST, opts)?;
        add(render_probe_cost(&rows, opts));
        results.probe_cost = Some(rows);
    }
    if opts.wants(Part::FreeWatch) {
        let free_rows = probe_cost_rows(
            &locktrace,
            &lockloop,
            FREE_WORKLOADS,
            &Setup::FREE_WATCH,
            opts,
        )?;
        add(render_free_watch(&free_rows, opts));
        results.free_watch = Some(free_rows);
    }
    if opts.wants(Part::Web) {
        let web = web_bench(&locktrace, opts)?;
        add(render_web(&web, opts));
        results.web_server = Some(web);
    }
    if opts.wants(Part::Django) {
        step("a Django view under Apache + mod_wsgi: untraced, traced");
        let django = django::django_bench(&locktrace, opts)?;
        add(django::render(&django, opts));
        results.django = Some(django);
    }
    if opts.wants(Part::Memcached) {
        step("memcached under memcaslap: untraced, full, budget 5%");
        let memcached = memcached::memcached_bench(&locktrace, opts)?;
        add(memcached::render(&memcached, opts));
        results.memcached = Some(memcached);
    }
    if opts.wants(Part::Convergence) {
        step("memcached: full mode's lock orders learned by --budget 5, over time");
        let convergence = convergence::convergence_bench(&locktrace, opts)?;
        add(convergence::render(&convergence));
        results.memcached_convergence = Some(convergence);
    }
    if opts.wants(Part::Mariadb) {
        step("MariaDB under sysbench oltp_read_write: untraced, full, budget 5%");
        let mariadb = mariadb::mariadb_bench(&locktrace, opts)?;
        add(mariadb::render(&mariadb, opts));
        results.mariadb = Some(mariadb);
    }
    if opts.wants(Part::Varnish) {
        step("varnish under wrk: untraced, full, budget 5%");
        let varnish = varnish::varnish_bench(&locktrace, opts)?;
        add(varnish::render(&varnish, opts));
        results.varnish = Some(varnish);
    }
    if opts.wants(Part::Collector) {
        step("collector throughput (tracer/examples/collector_bench.rs)");
        let collector = collector_bench(opts.quick)?;
        add(format!(
            "Collector (one thread, no kernel): `{}`\n",
            collector.get()
        ));
        results.collector = Some(collector);
    }
    println!("{markdown}");
    let json_path = out_dir.join("results.json");
    std::fs::write(&json_path, results_json(&results)?)?;
    std::fs::write(out_dir.join("results.md"), &markdown)?;
    step(format!("results: {} and results.md", json_path.display()));
    Ok(())
}

/// A row per workload: its median ns per pair under each of `setups`,
/// measured round after round, the setups interleaved.
fn probe_cost_rows(
    locktrace: &Path,
    lockloop: &Path,
    workloads: &[Workload],
    setups: &'static [Setup],
    opts: &Options,
) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for workload in workloads {
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); setups.len()];
        for round in 0..opts.rounds {
            for (i, &setup) in setups.iter().enumerate() {
                let command = workload.command(lockloop, opts.seconds);
                let ns = measure(locktrace, &command, setup, opts.seconds)
                    .with_context(|| format!("{}, {}", workload.name(), setup.name()))?;
                step(format!(
                    "{} round {} {}: {ns:.1} ns/pair",
                    workload.name(),
                    round + 1,
                    setup.name()
                ));
                samples[i].push(ns);
            }
        }
        rows.push(Row {
            workload: workload.name(),
            setups,
            median_ns: samples.iter_mut().map(|s| median(s)).collect(),
        });
    }
    Ok(rows)
}

struct Row {
    workload: String,
    /// The setups measured, in order.
    setups: &'static [Setup],
    /// Per setup, in `setups` order.
    median_ns: Vec<f64>,
}

fn compile_lockloop(out_dir: &Path) -> Result<PathBuf> {
    let src = workspace_root().join("xtask/bench/lockloop.c");
    let bin = out_dir.join("lockloop");
    cmd::run(
        Command::new("gcc")
            .args(["-O2", "-g", "-pthread", "-o"])
            .arg(&bin)
            .arg(&src),
    )?;
    Ok(bin)
}

/// One run of a workload under `setup`; returns its ns per lock+unlock
/// pair.
fn measure(
    locktrace: &Path,
    workload: &[std::ffi::OsString],
    setup: Setup,
    seconds: f64,
) -> Result<f64> {
    let mut command = match setup.tracer_args() {
        None => {
            let mut c = Command::new(&workload[0]);
            c.args(&workload[1..]);
            c
        }
        Some(args) => {
            let mut c = Command::new(locktrace);
            c.arg("run")
                .args(args)
                .args(["--format", "json", "--output", "/dev/null", "--"])
                .args(workload);
            c
        }
    };
    let stdout = run_bounded(&mut command, Duration::from_secs_f64(seconds + 60.0))?;
    stdout
        .trim()
        .parse::<f64>()
        .with_context(|| format!("lockloop printed {stdout:?}"))
}

/// Runs `command`, killing it if it outlives `limit` (a benchmark must never
/// leave a tracer behind).
fn run_bounded(command: &mut Command, limit: Duration) -> Result<String> {
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start the benchmark command")?;
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            let mut out = String::new();
            use std::io::Read;
            child.stdout.take().map(|mut s| s.read_to_string(&mut out));
            if !status.success() {
                bail!("exited with {status}");
            }
            return Ok(out);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!("did not finish within {limit:?}: killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        samples[n / 2]
    } else {
        (samples[n / 2 - 1] + samples[n / 2]) / 2.0
    }
}

/// The JSON line `collector_bench` prints last.
fn collector_bench(quick: bool) -> Result<Box<RawValue>> {
    let mut c = run::host_cargo();
    c.current_dir(workspace_root()).args([
        "run",
        "--quiet",
        "--release",
        "-p",
        "tracer",
        "--example",
        "collector_bench",
        "--",
    ]);
    if quick {
        c.arg("--quick");
    }
    let out = run_bounded(&mut c, Duration::from_secs(600))?;
    let json = out
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .context("collector_bench printed no JSON")?;
    RawValue::from_string(json.trim().to_owned())
        .with_context(|| format!("collector_bench printed malformed JSON: {json}"))
}

fn render_probe_cost(rows: &[Row], opts: &Options) -> String {
    let mut md = String::new();
    md.push_str(&format!(
        "Probe cost: ns per uncontended lock+unlock pair, median of {} interleaved rounds of {} s each.\n\n",
        opts.rounds, opts.seconds
    ));
    md.push_str("| workload | untraced | floor (empty programs, placed probes) | one-hit floor (no probe on the mutex unlock) | locktrace | probes at offset 0 | locktrace / floor | locktrace / one-hit floor | offset 0 / locktrace |\n");
    md.push_str("|---|---|---|---|---|---|---|---|---|\n");
    for row in rows {
        let [u, f, f1, l, e] = [0, 1, 2, 3, 4].map(|i| row.median_ns[i]);
        md.push_str(&format!(
            "| {} | {u:.1} | {f:.1} | {f1:.1} | {l:.1} | {e:.1} | {:.2}x | {:.2}x | {:.1}x |\n",
            row.workload,
            l / f,
            l / f1,
            e / l
        ));
    }
    md
}

/// The free-watch table: a mutex pair with a malloc and free inside,
/// untraced, traced, and traced with `--watch-free`.
fn render_free_watch(rows: &[Row], opts: &Options) -> String {
    let mut md = format!(
        "`--watch-free`: ns per mutex pair with a malloc(64) and its free inside, median of {} interleaved rounds of {} s each.\n\n",
        opts.rounds, opts.seconds
    );
    md.push_str(
        "| workload | untraced | locktrace | locktrace --watch-free | --watch-free / locktrace |\n",
    );
    md.push_str("|---|---|---|---|---|\n");
    for row in rows {
        let [u, l, w] = [0, 1, 2].map(|i| row.median_ns[i]);
        md.push_str(&format!(
            "| {} | {u:.1} | {l:.1} | {w:.1} | {:.2}x |\n",
            row.workload,
            w / l
        ));
    }
    md
}

/// `results.json`: one key per part measured (the parts not measured are
/// left out), one JSON object.
#[derive(Serialize, Default)]
struct Results {
    #[serde(skip_serializing_if = "Option::is_none")]
    probe_cost: Option<Vec<Row>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    free_watch: Option<Vec<Row>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    web_server: Option<WebResults>,
    #[serde(skip_serializing_if = "Option::is_none")]
    collector: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    attach: Option<attach::AttachResults>,
    #[serde(skip_serializing_if = "Option::is_none")]
    memcached: Option<memcached::MemcachedResults>,
    #[serde(skip_serializing_if = "Option::is_none")]
    memcached_convergence: Option<convergence::ConvergenceResults>,
    #[serde(skip_serializing_if = "Option::is_none")]
    django: Option<server_rows::ServerResults>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mariadb: Option<server_rows::ServerResults>,
    #[serde(skip_serializing_if = "Option::is_none")]
    varnish: Option<server_rows::ServerResults>,
}

fn results_json(results: &Results) -> Result<String> {
    Ok(serde_json::to_string(results)? + "\n")
}

/// `v` written with exactly `decimals` decimals (as the tables show it),
/// null if it is not a number.
fn fixed(v: f64, decimals: usize) -> Box<RawValue> {
    let text = if v.is_finite() {
        format!("{v:.decimals$}")
    } else {
        "null".to_owned()
    };
    RawValue::from_string(text).expect("a formatted f64 is JSON")
}

/// `{"workload": ..., "untraced_ns": ..., ...}`, one key per setup.
impl Serialize for Row {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(1 + self.setups.len()))?;
        map.serialize_entry("workload", &self.workload)?;
        for (setup, ns) in self.setups.iter().zip(&self.median_ns) {
            map.serialize_entry(&format!("{}_ns", setup.name()), &fixed(*ns, 2))?;
        }
        map.end()
    }
}

// ---------------------------------------------------------------------------
// End to end: Apache under wrk.

/// wrk's load: threads and connections (`wrk -t2 -c32`).
const WRK_THREADS: u32 = 2;
const WRK_CONNECTIONS: u32 = 32;
/// The static file Apache serves (about 1 KiB of HTML).
const WEB_FILE: &str = "file.html";
/// How long locktrace may take to exit after SIGTERM (it detaches one probe
/// at a time, about 0.1 s each) before it is killed.
const TRACER_EXIT_GRACE: Duration = Duration::from_secs(60);
/// How long locktrace may take to attach its probes.
const TRACER_ATTACH_LIMIT: Duration = Duration::from_secs(60);
/// After the probes are attached: time for the collector to start reading.
const TRACER_SETTLE: Duration = Duration::from_secs(1);
const APACHE_START_LIMIT: Duration = Duration::from_secs(30);
const APACHE_EXIT_GRACE: Duration = Duration::from_secs(15);

/// Seconds of each wrk run.
fn web_seconds(opts: &Options) -> u64 {
    if opts.quick {
        2
    } else {
        10
    }
}

/// One wrk run.
#[derive(Clone)]
struct WrkSample {
    requests_per_s: f64,
    p99_ms: f64,
    /// Socket errors (connect + read + write + timeout).
    socket_errors: u64,
    /// wrk's "Socket errors:" line, if it printed one.
    socket_errors_line: Option<String>,
}

/// locktrace's summary of one traced run.
#[derive(Clone, Copy)]
struct TraceSummary {
    events: Option<u64>,
    lost_events: Option<u64>,
    /// Records the kernel side wrote to the ring buffer (dependency and
    /// lock records): the collector's traffic.
    records: Option<u64>,
    /// Findings reported (every JSON line but the summary).
    findings: usize,
    /// The tracer's own CPU time during the load, in percent of one core,
    /// and its peak resident memory (MiB), read from /proc before it stops.
    cpu_pct: Option<f64>,
    peak_rss_mib: Option<f64>,
}

struct WebRow {
    setup: Setup,
    requests_per_s: f64,
    p99_ms: f64,
    /// Median events per traced run (None: untraced, or not reported).
    events: Option<u64>,
    /// Most lost events in one run.
    lost_events: Option<u64>,
    /// Median ring-buffer records per request (traced setups).
    records_per_request: Option<f64>,
    /// The tracer's median CPU (percent of one core) during the load, and
    /// its largest peak resident memory (MiB).
    tracer_cpu_pct: Option<f64>,
    tracer_peak_rss_mib: Option<f64>,
    socket_errors: u64,
}

struct WebResults {
    server: String,
    seconds: u64,
    rows: Vec<WebRow>,
    /// Other tracers seen running between measurements.
    disturbed: Vec<String>,
}

impl WebResults {
    fn row(&self, setup: Setup) -> Option<&WebRow> {
        self.rows.iter().find(|r| r.setup.name() == setup.name())
    }
}

fn web_bench(locktrace: &Path, opts: &Options) -> Result<WebResults> {
    let seconds = web_seconds(opts);
    let apache = Apache::start()?;
    let server = apache.version();
    step(format!(
        "web server: {server} (MPM event) on {}, pid {}",
        apache.url(),
        apache.pid()
    ));
    // Warm-up: every worker process and thread started, caches filled.
    run_wrk(&apache.url(), 1).context("wrk warm-up run")?;

    let mut samples: Vec<Vec<(WrkSample, Option<TraceSummary>)>> =
        vec![Vec::new(); Setup::ALL.len()];
    let mut disturbed = Vec::new();
    // Someone else's tracer (tests started meanwhile) slows every setup with
    // its probe hits: say so rather than hide it. Looked for before and after
    // each measurement (never while ours runs: it has the same name).
    let look_for_others = |disturbed: &mut Vec<String>| {
        for other in other_tracers() {
            if !disturbed.contains(&other) {
                step(format!(
                    "warning: {other} is running: the web-server numbers are disturbed"
                ));
                disturbed.push(other);
            }
        }
    };
    for round in 0..opts.rounds {
        for (i, setup) in Setup::ALL.into_iter().enumerate() {
            look_for_others(&mut disturbed);
            let sample = web_measure(locktrace, &apache, setup, seconds)
                .with_context(|| format!("web server, {}", setup.name()))?;
            look_for_others(&mut disturbed);
            let (wrk, trace) = &sample;
            let trace_note = match trace {
                Some(TraceSummary {
                    events: Some(e),
                    lost_events: Some(l),
                    records,
                    findings,
                    cpu_pct,
                    peak_rss_mib,
                }) => format!(
                    ", {e} events traced, {} ring-buffer records, {l} lost, {findings} findings, \
                     tracer CPU {}, peak RSS {}",
                    records.map_or("?".to_owned(), |r| r.to_string()),
                    cpu_pct.map_or("?".to_owned(), |c| format!("{c:.1}%")),
                    peak_rss_mib.map_or("?".to_owned(), |r| format!("{r:.0} MiB")),
                ),
                Some(_) => ", no summary from locktrace".to_owned(),
                None => String::new(),
            };
            let errors_note = match &wrk.socket_errors_line {
                Some(line) if wrk.socket_errors > 0 => format!(", wrk: {line}"),
                _ => String::new(),
            };
            step(format!(
                "web server round {} {}: {:.0} requests/s, p99 {:.2} ms{trace_note}{errors_note}",
                round + 1,
                setup.name(),
                wrk.requests_per_s,
                wrk.p99_ms
            ));
            samples[i].push(sample);
        }
    }
    drop(apache);

    let rows = Setup::ALL
        .into_iter()
        .zip(samples)
        .map(|(setup, runs)| {
            let mut rps: Vec<f64> = runs.iter().map(|(w, _)| w.requests_per_s).collect();
            let mut p99: Vec<f64> = runs.iter().map(|(w, _)| w.p99_ms).collect();
            let mut events: Vec<f64> = runs
                .iter()
                .filter_map(|(_, t)| t.and_then(|t| t.events))
                .map(|e| e as f64)
                .collect();
            let lost_events = runs
                .iter()
                .filter_map(|(_, t)| t.and_then(|t| t.lost_events))
                .max();
            let mut per_request: Vec<f64> = runs
                .iter()
                .filter_map(|(w, t)| {
                    let requests = w.requests_per_s * seconds as f64;
                    let records = t.and_then(|t| t.records)?;
                    (requests > 0.0).then(|| records as f64 / requests)
                })
                .collect();
            let mut cpu: Vec<f64> = runs
                .iter()
                .filter_map(|(_, t)| t.and_then(|t| t.cpu_pct))
                .collect();
            let rss = runs
                .iter()
                .filter_map(|(_, t)| t.and_then(|t| t.peak_rss_mib))
                .reduce(f64::max);
            WebRow {
                setup,
                tracer_cpu_pct: (!cpu.is_empty()).then(|| median(&mut cpu)),
                tracer_peak_rss_mib: rss,
                requests_per_s: median(&mut rps),
                p99_ms: median(&mut p99),
                events: (!events.is_empty()).then(|| median(&mut events).round() as u64),
                lost_events,
                records_per_request: (!per_request.is_empty()).then(|| median(&mut per_request)),
                socket_errors: runs.iter().map(|(w, _)| w.socket_errors).sum(),
            }
        })
        .collect();
    Ok(WebResults {
        server,
        seconds,
        rows,
        disturbed,
    })
}

/// One wrk run against `apache` under `setup`.
fn web_measure(
    locktrace: &Path,
    apache: &Apache,
    setup: Setup,
    seconds: u64,
) -> Result<(WrkSample, Option<TraceSummary>)> {
    let Some(args) = setup.tracer_args() else {
        // The same pause as after a tracer's start: Apache idle before wrk.
        std::thread::sleep(TRACER_SETTLE);
        return Ok((run_wrk(&apache.url(), seconds)?, None));
    };
    let output = apache
        .dir
        .path
        .join(format!("trace-{}.jsonl", setup.name()));
    let tracer = match setup {
        Setup::Agent => Tracer::start_agent(locktrace, &apache.dir.path, &output)?,
        _ => Tracer::start(locktrace, args, &output)?,
    };
    // On an error, dropping `tracer` stops it.
    let cpu_before = tracer.cpu_seconds();
    let wrk = run_wrk(&apache.url(), seconds)?;
    let cpu = tracer.cpu_seconds().zip(cpu_before).map(|(a, b)| a - b);
    let peak_rss = tracer.peak_rss_mib();
    tracer.stop()?;
    let mut summary = read_summary(&output);
    summary.cpu_pct = cpu.map(|c| 100.0 * c / seconds as f64);
    summary.peak_rss_mib = peak_rss;
    let _ = std::fs::remove_file(&output);
    Ok((wrk, Some(summary)))
}

/// The `"events"` and `"lost_events"` of locktrace's JSON summary line, and
/// how many findings came before it.
fn read_summary(output: &Path) -> TraceSummary {
    summary_of(&std::fs::read_to_string(output).unwrap_or_default())
}

/// One line of locktrace's JSON output, as far as the benchmark reads it.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum TraceRecord {
    Summary {
        events: u64,
        lost_events: u64,
        #[serde(default)]
        counters: std::collections::BTreeMap<String, u64>,
    },
    /// The class graph written before the summary (`report --graph`):
    /// not a finding.
    LockGraph,
    /// Any finding.
    #[serde(other)]
    Finding,
}

/// [`read_summary`] of the text of an output (lines that are not JSON, as
/// the last one of a killed tracer may be, are not counted).
fn summary_of(text: &str) -> TraceSummary {
    let records: Vec<TraceRecord> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let summary = records.iter().rev().find_map(|r| match r {
        TraceRecord::Summary {
            events,
            lost_events,
            counters,
        } => {
            let records = ["dependency_events", "lock_records"]
                .iter()
                .map(|k| counters.get(*k).copied())
                .sum::<Option<u64>>();
            Some((*events, *lost_events, records))
        }
        TraceRecord::Finding | TraceRecord::LockGraph => None,
    });
    TraceSummary {
        events: summary.map(|s| s.0),
        lost_events: summary.map(|s| s.1),
        records: summary.and_then(|s| s.2),
        findings: records
            .iter()
            .filter(|r| matches!(r, TraceRecord::Finding))
            .count(),
        cpu_pct: None,
        peak_rss_mib: None,
    }
}

fn run_wrk(url: &str, seconds: u64) -> Result<WrkSample> {
    let mut wrk = Command::new(prereqs::WRK);
    wrk.args([
        format!("-t{WRK_THREADS}"),
        format!("-c{WRK_CONNECTIONS}"),
        format!("-d{seconds}s"),
        "--latency".to_owned(),
        url.to_owned(),
    ])
    .stdin(Stdio::null());
    let out = run_bounded(&mut wrk, Duration::from_secs(seconds + 60)).context("wrk")?;
    parse_wrk(&out).with_context(|| format!("cannot read wrk's output:\n{out}"))
}

/// Reads `Requests/sec:`, the `99%` line of `--latency` and the errors from
/// wrk's report.
fn parse_wrk(out: &str) -> Result<WrkSample> {
    let mut requests_per_s = None;
    let mut p99_ms = None;
    let mut socket_errors = 0;
    let mut socket_errors_line = None;
    for line in out.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            requests_per_s = v.trim().parse::<f64>().ok();
        } else if let Some(v) = line.strip_prefix("99%") {
            p99_ms = parse_wrk_time_ms(v.trim());
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            bail!(
                "the server answered with errors: {} non-2xx/3xx responses",
                v.trim()
            );
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            socket_errors = v
                .split(',')
                .filter_map(|kv| kv.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
            socket_errors_line = Some(line.to_owned());
        }
    }
    Ok(WrkSample {
        requests_per_s: requests_per_s.context("no Requests/sec line")?,
        p99_ms: p99_ms.context("no 99% latency line (run with --latency)")?,
        socket_errors,
        socket_errors_line,
    })
}

/// wrk's times ("812.00us", "1.23ms", "2.01s", "1.00m") in milliseconds.
fn parse_wrk_time_ms(s: &str) -> Option<f64> {
    let unit_at = s.find(|c: char| c.is_ascii_alphabetic())?;
    let value: f64 = s[..unit_at].parse().ok()?;
    let scale = match &s[unit_at..] {
        "us" => 1e-3,
        "ms" => 1.0,
        "s" => 1e3,
        "m" => 60e3,
        "h" => 3600e3,
        _ => return None,
    };
    Some(value * scale)
}

/// A directory of the benchmark's own, removed when dropped.
struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    fn path(&self) -> &Path {
        &self.path
    }

    fn new(name: &str) -> Result<ScratchDir> {
        use std::os::unix::fs::PermissionsExt;
        let path =
            std::env::temp_dir().join(format!("locktrace-bench-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).with_context(|| format!("cannot create {}", path.display()))?;
        // Apache's workers run as www-data and must read the document root.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        Ok(ScratchDir { path })
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Sends `signal` to `child` unless it has already been reaped (its pid is
/// then no longer ours).
fn signal_child(child: &mut Child, signal: libc::c_int) {
    if matches!(child.try_wait(), Ok(None)) {
        // SAFETY: kill has no memory-safety preconditions; the pid is our
        // own unreaped child.
        unsafe {
            libc::kill(child.id() as libc::pid_t, signal);
        }
    }
}

/// Waits up to `limit` for `child` to exit.
fn wait_for_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(50)),
            _ => return None,
        }
    }
}

/// Our Apache: started by [`Apache::start`], stopped (SIGTERM, then SIGKILL
/// after [`APACHE_EXIT_GRACE`]) when dropped, its directory removed.
struct Apache {
    child: Child,
    port: u16,
    /// What [`Apache::url`] names and readiness is checked with.
    path: String,
    // Dropped after `child` is stopped (Drop::drop runs first).
    dir: ScratchDir,
}

impl Apache {
    /// Apache serving [`WEB_FILE`] with `xtask/bench/apache2.conf`.
    fn start() -> Result<Apache> {
        let dir = ScratchDir::new("web")?;
        let htdocs = dir.path.join("htdocs");
        std::fs::create_dir(&htdocs)?;
        std::fs::write(htdocs.join(WEB_FILE), web_page())?;
        Apache::start_conf(dir, "apache2.conf", &format!("/{WEB_FILE}"))
    }

    /// Apache with the configuration `xtask/bench/TEMPLATE` (`@DIR@` and
    /// `@PORT@` filled in) in `dir`, ready once `GET path` answers 200.
    fn start_conf(dir: ScratchDir, template: &str, path: &str) -> Result<Apache> {
        let port = free_port()?;
        let template = workspace_root().join("xtask/bench").join(template);
        let conf = std::fs::read_to_string(&template)
            .with_context(|| format!("cannot read {}", template.display()))?
            .replace("@DIR@", &dir.path.to_string_lossy())
            .replace("@PORT@", &port.to_string());
        let conf_path = dir.path.join("apache2.conf");
        std::fs::write(&conf_path, conf)?;
        let stderr = std::fs::File::create(dir.path.join("stderr.log"))?;
        // Same process group as xtask: a Ctrl-C stops Apache too.
        let child = Command::new(prereqs::APACHE2)
            .arg("-f")
            .arg(&conf_path)
            .arg("-DFOREGROUND")
            .env("APACHE_RUN_USER", "www-data")
            .env("APACHE_RUN_GROUP", "www-data")
            .env("APACHE_RUN_DIR", &dir.path)
            .env("APACHE_LOG_DIR", &dir.path)
            .env("APACHE_LOCK_DIR", &dir.path)
            .env("APACHE_PID_FILE", dir.path.join("apache2.pid"))
            .env("LANG", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("cannot start {}", prereqs::APACHE2))?;
        let mut apache = Apache {
            child,
            port,
            path: path.to_owned(),
            dir,
        };
        apache.wait_ready()?;
        Ok(apache)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}{}", self.port, self.path)
    }

    /// "Apache/2.4.62 (Debian)".
    fn version(&self) -> String {
        cmd::output(Command::new(prereqs::APACHE2).arg("-v"))
            .and_then(|v| {
                v.lines()
                    .find_map(|l| l.strip_prefix("Server version:"))
                    .map(|v| v.trim().to_owned())
            })
            .unwrap_or_else(|| "Apache".to_owned())
    }

    /// Until `GET path` answers 200.
    fn wait_ready(&mut self) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("apache2 exited with {status} at start:\n{}", self.logs());
            }
            if self.get_ok() {
                return Ok(());
            }
            if start.elapsed() > APACHE_START_LIMIT {
                bail!(
                    "apache2 did not serve {} within {APACHE_START_LIMIT:?}:\n{}",
                    self.url(),
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn get_ok(&self) -> bool {
        http_get_ok(self.port, &self.path)
    }

    /// Apache's stderr and error log.
    fn logs(&self) -> String {
        ["stderr.log", "error.log"]
            .iter()
            .filter_map(|f| std::fs::read_to_string(self.dir.path.join(f)).ok())
            .collect::<Vec<_>>()
            .join("")
    }

    /// The processes whose parent is Apache's main process (its workers).
    fn workers(&self) -> Vec<libc::pid_t> {
        let parent = self.child.id().to_string();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(|e| {
            let pid: libc::pid_t = e.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // "pid (comm) state ppid ...": comm may hold spaces.
            let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?;
            (ppid == parent).then_some(pid)
        })
        .collect()
    }
}

impl Drop for Apache {
    fn drop(&mut self) {
        signal_child(&mut self.child, libc::SIGTERM);
        if wait_for_exit(&mut self.child, APACHE_EXIT_GRACE).is_some() {
            return;
        }
        step(format!(
            "apache2 [{}] did not stop within {APACHE_EXIT_GRACE:?} of SIGTERM: killing it",
            self.child.id()
        ));
        let workers = self.workers();
        signal_child(&mut self.child, libc::SIGKILL);
        for pid in workers {
            // SAFETY: as in signal_child; these are our Apache's children.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        let _ = self.child.wait();
    }
}

/// Whether `GET path` on 127.0.0.1:`port` answers 200.
fn http_get_ok(port: u16, path: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
        .lines()
        .next()
        .is_some_and(|status| status.split_whitespace().nth(1) == Some("200"))
}

/// A free TCP port on 127.0.0.1 (free when asked: Apache binds it soon after).
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("cannot find a free port on 127.0.0.1")?;
    Ok(listener.local_addr()?.port())
}

/// About 1 KiB of HTML.
fn web_page() -> String {
    let mut page =
        String::from("<!DOCTYPE html>\n<html><head><title>locktrace bench</title></head><body>\n");
    for i in 0..16 {
        page.push_str(&format!(
            "<p>Paragraph {i:02}: a small static file for the web-server benchmark.</p>\n"
        ));
    }
    page.push_str("</body></html>\n");
    page
}

/// `locktrace watch` host-wide: started by [`Tracer::start`] (returns once
/// the kernel side is armed: every probe live, acquisitions recorded), stopped by [`Tracer::stop`] or, on an error,
/// when dropped. Never left running.
struct Tracer {
    child: Option<Child>,
    /// locktrace's stderr: whether "armed" was logged, and the last
    /// lines (for errors).
    log: Arc<Mutex<TracerLog>>,
}

#[derive(Default)]
struct TracerLog {
    armed: bool,
    tail: VecDeque<String>,
}

impl Tracer {
    /// `locktrace watch ARGS`.
    fn start(locktrace: &Path, args: &[&str], output: &Path) -> Result<Tracer> {
        Self::spawn(locktrace, "watch", args, output)
    }

    /// `locktrace agent` host-wide, with a config in `dir`: its metrics
    /// endpoint on a free loopback port, its state in `dir/agent-state`,
    /// no Alertmanager.
    fn start_agent(locktrace: &Path, dir: &Path, output: &Path) -> Result<Tracer> {
        let config = dir.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "[agent]\nhost = \"bench\"\nstate_dir = \"{}\"\n\
                 [metrics]\nlisten = \"127.0.0.1:{}\"\n",
                dir.join("agent-state").display(),
                free_port()?
            ),
        )?;
        let config = config.to_string_lossy().into_owned();
        Self::spawn(locktrace, "agent", &["--config", &config], output)
    }

    fn spawn(locktrace: &Path, subcommand: &str, args: &[&str], output: &Path) -> Result<Tracer> {
        let mut child = Command::new(locktrace)
            .arg(subcommand)
            .args(args)
            .args(["--format", "json", "--output"])
            .arg(output)
            // `info` logs "armed" once every probe is live and acquisitions
            // are recorded ("probes attached" comes before that).
            .env("LOCKTRACE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", locktrace.display()))?;
        let log = Arc::new(Mutex::new(TracerLog::default()));
        if let Some(stderr) = child.stderr.take() {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                    log.armed |= line.contains("armed: acquisitions are recorded");
                    log.tail.push_back(line);
                    if log.tail.len() > 20 {
                        log.tail.pop_front();
                    }
                }
            });
        }
        let mut tracer = Tracer {
            child: Some(child),
            log,
        };
        let start = Instant::now();
        loop {
            if tracer.log.lock().unwrap_or_else(|e| e.into_inner()).armed {
                break;
            }
            if let Some(child) = tracer.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    tracer.child = None;
                    bail!(
                        "locktrace {subcommand} exited with {status} before attaching:\n{}",
                        tracer.tail()
                    );
                }
            }
            if start.elapsed() > TRACER_ATTACH_LIMIT {
                bail!(
                    "locktrace {subcommand} did not attach within {TRACER_ATTACH_LIMIT:?}:\n{}",
                    tracer.tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(TRACER_SETTLE);
        Ok(tracer)
    }

    /// The tracer's CPU time so far (user + system), from /proc.
    fn cpu_seconds(&self) -> Option<f64> {
        let pid = self.child.as_ref()?.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // After "pid (comm) ": state is field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 =
            fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        Some(ticks / hz)
    }

    /// The tracer's peak resident memory so far (VmHWM), in MiB.
    fn peak_rss_mib(&self) -> Option<f64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib / 1024.0)
    }

    fn tail(&self) -> String {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.tail.iter().map(|l| format!("  {l}\n")).collect()
    }

    /// SIGTERM, then waits for locktrace to detach and exit; fails if it
    /// had to be killed or exited with an error.
    fn stop(mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let start = Instant::now();
        match terminate_tracer(&mut child) {
            Some(status) if status.success() => {
                step(format!(
                    "locktrace exited {:.1} s after SIGTERM",
                    start.elapsed().as_secs_f64()
                ));
                Ok(())
            }
            Some(status) => bail!("locktrace exited with {status}:\n{}", self.tail()),
            None => bail!("locktrace did not exit within {TRACER_EXIT_GRACE:?} of SIGTERM: killed"),
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate_tracer(&mut child);
        }
    }
}

/// SIGTERM, up to [`TRACER_EXIT_GRACE`] to exit, then SIGKILL. Returns the
/// exit status unless it had to be killed.
fn terminate_tracer(child: &mut Child) -> Option<ExitStatus> {
    signal_child(child, libc::SIGTERM);
    if let Some(status) = wait_for_exit(child, TRACER_EXIT_GRACE) {
        return Some(status);
    }
    step(format!(
        "locktrace [{}] did not exit within {TRACER_EXIT_GRACE:?} of SIGTERM: killing it",
        child.id()
    ));
    signal_child(child, libc::SIGKILL);
    let _ = child.wait();
    None
}

fn render_web(web: &WebResults, opts: &Options) -> String {
    let mut md = format!(
        "Web server: {} (MPM event, `xtask/bench/apache2.conf`) serving a 1 KiB static file on \
         loopback to `wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{}s --latency`; traced host-wide \
         (`locktrace watch`, wrk included; the agent row is `locktrace agent` with its metrics \
         endpoint and no Alertmanager, its CPU and peak RSS the agent's steady state under the \
         load); median of {} interleaved rounds.\n\n",
        web.server, web.seconds, opts.rounds
    );
    md.push_str(
        "| setup | requests/s | p99 latency | requests/s vs untraced | requests/s vs floor | events per run (most lost) | ring-buffer records per request | tracer CPU (% of a core) | tracer peak RSS |\n",
    );
    md.push_str("|---|---|---|---|---|---|---|---|---|\n");
    let untraced = web.row(Setup::Untraced).map(|r| r.requests_per_s);
    let floor = web.row(Setup::Floor).map(|r| r.requests_per_s);
    let ratio = |base: Option<f64>, rps: f64| match base {
        Some(b) if b > 0.0 => format!("{:.2}x", rps / b),
        _ => "-".to_owned(),
    };
    for row in &web.rows {
        let events = match (row.events, row.lost_events) {
            (Some(e), Some(l)) => format!("{e} ({l})"),
            (Some(e), None) => e.to_string(),
            _ => "-".to_owned(),
        };
        let per_request = row
            .records_per_request
            .map_or("-".to_owned(), |r| format!("{r:.4}"));
        let cpu = row
            .tracer_cpu_pct
            .map_or("-".to_owned(), |c| format!("{c:.1}%"));
        let rss = row
            .tracer_peak_rss_mib
            .map_or("-".to_owned(), |r| format!("{r:.0} MiB"));
        md.push_str(&format!(
            "| {} | {:.0} | {:.2} ms | {} | {} | {events} | {per_request} | {cpu} | {rss} |\n",
            row.setup.label(),
            row.requests_per_s,
            row.p99_ms,
            ratio(untraced, row.requests_per_s),
            ratio(floor, row.requests_per_s),
        ));
    }
    if !web.disturbed.is_empty() {
        md.push_str(&format!(
            "\n**Disturbed**: other tracers ran during the measurement ({}); their probes slow \
             every setup.\n",
            match web.disturbed.len() {
                n @ 0..=3 => web.disturbed[..n].join(", "),
                n => format!("{}, and {} more", web.disturbed[..3].join(", "), n - 3),
            }
        ));
    }
    let errors: u64 = web.rows.iter().map(|r| r.socket_errors).sum();
    if errors > 0 {
        md.push_str(&format!(
            "\nwrk reported {errors} socket errors in all (see the progress lines).\n"
        ));
    }
    md
}

/// `results.json`'s `web_server`.
impl Serialize for WebResults {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(4))?;
        map.serialize_entry("server", &self.server)?;
        map.serialize_entry(
            "load",
            &format!(
                "wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{}s --latency",
                self.seconds
            ),
        )?;
        map.serialize_entry("setups", &self.rows)?;
        map.serialize_entry("disturbed_by", &self.disturbed)?;
        map.end()
    }
}

/// One setup of `web_server.setups`.
impl Serialize for WebRow {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(9))?;
        map.serialize_entry("setup", self.setup.name())?;
        map.serialize_entry("requests_per_s", &fixed(self.requests_per_s, 1))?;
        map.serialize_entry("p99_ms", &fixed(self.p99_ms, 3))?;
        map.serialize_entry("events", &self.events)?;
        map.serialize_entry("lost_events", &self.lost_events)?;
        map.serialize_entry(
            "records_per_request",
            &self.records_per_request.map(|r| fixed(r, 4)),
        )?;
        map.serialize_entry("tracer_cpu_pct", &self.tracer_cpu_pct.map(|c| fixed(c, 1)))?;
        map.serialize_entry(
            "tracer_peak_rss_mib",
            &self.tracer_peak_rss_mib.map(|r| fixed(r, 1)),
        )?;
        map.serialize_entry("socket_errors", &self.socket_errors)?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK_OUTPUT: &str = "\
Running 2s test @ http://127.0.0.1:38359/file.html
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.02ms    1.83ms  30.11ms   93.52%
    Req/Sec    21.04k     1.89k   24.01k    70.00%
  Latency Distribution
     50%  484.00us
     75%    0.92ms
     90%    2.21ms
     99%    9.57ms
  83698 requests in 2.00s, 107.59MB read
  Socket errors: connect 0, read 5, write 0, timeout 0
Requests/sec:  41849.12
Transfer/sec:     53.79MB
";

    #[test]
    fn reads_wrk_report() {
        let s = parse_wrk(WRK_OUTPUT).unwrap();
        assert_eq!(s.requests_per_s, 41849.12);
        assert!((s.p99_ms - 9.57).abs() < 1e-9);
        assert_eq!(s.socket_errors, 5);
        let bad = WRK_OUTPUT.replace(
            "Requests/sec:",
            "Non-2xx or 3xx responses: 12\nRequests/sec:",
        );
        assert!(parse_wrk(&bad).is_err());
        assert!(parse_wrk("Requests/sec: 1.0\n").is_err());
    }

    #[test]
    fn reads_wrk_times() {
        assert_eq!(parse_wrk_time_ms("484.00us"), Some(0.484));
        assert_eq!(parse_wrk_time_ms("2.00s"), Some(2000.0));
        assert_eq!(parse_wrk_time_ms("1.50m"), Some(90_000.0));
        assert_eq!(parse_wrk_time_ms("3.00x"), None);
    }

    #[test]
    fn reads_summary_counts() {
        let text = r#"{"type":"self_deadlock","id":1,"pid":5}
{"type":"lock_graph","classes":[],"dependencies":[],"omitted_dependencies":0}
{"type":"summary","events":614787,"dependencies":3,"lost_events":0,"counters":{"dependency_events":9,"lock_records":4}}
"#;
        let s = summary_of(text);
        assert_eq!(
            (s.events, s.lost_events, s.records, s.findings),
            (Some(614787), Some(0), Some(13), 1)
        );
        // A tracer killed before its summary.
        let s = summary_of("{\"type\":\"deadlock\",\"id\":1}\n{\"type\":\"summ");
        assert_eq!((s.events, s.lost_events, s.findings), (None, None, 1));
    }

    /// The exact text the hand-written JSON of earlier versions had.
    #[test]
    fn writes_results_json() {
        let rows = vec![Row {
            workload: "mutex, 1 thread".into(),
            setups: &Setup::PROBE_COST,
            median_ns: vec![17.0, 60.123, 40.25, 80.5, 640.0],
        }];
        let free_rows = vec![Row {
            workload: "malloc, 1 thread".into(),
            setups: &Setup::FREE_WATCH,
            median_ns: vec![20.0, 700.0, 1300.0],
        }];
        let web = WebResults {
            server: "Apache/2.4.65 (Debian)".into(),
            seconds: 10,
            rows: vec![WebRow {
                setup: Setup::Locktrace,
                requests_per_s: 41849.12,
                p99_ms: 9.57,
                events: Some(614787),
                lost_events: None,
                records_per_request: Some(0.00125),
                tracer_cpu_pct: Some(12.34),
                tracer_peak_rss_mib: Some(61.0),
                socket_errors: 0,
            }],
            disturbed: vec!["locktrace [42]".into()],
        };
        let collector = RawValue::from_string(r#"{"events_per_s": 1.5e6}"#.into()).unwrap();
        let attach = attach::AttachResults {
            run_true_untraced_s: 0.5,
            run_true_traced_s: 0.75,
            watch_two_libcs_armed_s: 1.0,
            watch_two_libcs_exit_s: 0.125,
            bystander_native_ns: 16.5,
            bystander_beside_watch_pid_ns: 17.0,
            busy_pid_armed_s: 1.5,
            busy_pid_total_s: 2.5,
        };
        let memcached = memcached::MemcachedResults {
            seconds: 20,
            ops_per_s: vec![50000.0, 25000.0, 47500.0],
            dependencies: vec![30000.0, 15000.0],
            findings: vec![0, 0],
            budget_duty_cycle: 0.0625,
        };
        let results = Results {
            probe_cost: Some(rows),
            free_watch: Some(free_rows),
            web_server: Some(web),
            collector: Some(collector),
            attach: Some(attach),
            memcached: Some(memcached),
            ..Results::default()
        };
        assert_eq!(
            results_json(&results).unwrap(),
            concat!(
                r#"{"probe_cost":[{"workload":"mutex, 1 thread","untraced_ns":17.00,"#,
                r#""floor_ns":60.12,"one_hit_floor_ns":40.25,"locktrace_ns":80.50,"#,
                r#""offset_0_ns":640.00}],"free_watch":[{"workload":"malloc, 1 thread","#,
                r#""untraced_ns":20.00,"locktrace_ns":700.00,"watch_free_ns":1300.00}],"#,
                r#""web_server":{"server":"Apache/2.4.65 (Debian)","#,
                r#""load":"wrk -t2 -c32 -d10s --latency","setups":[{"setup":"locktrace","#,
                r#""requests_per_s":41849.1,"p99_ms":9.570,"events":614787,"lost_events":null,"#,
                r#""records_per_request":0.0013,"tracer_cpu_pct":12.3,"tracer_peak_rss_mib":61.0,"#,
                r#""socket_errors":0}],"disturbed_by":["locktrace [42]"]},"#,
                r#""collector":{"events_per_s": 1.5e6},"attach":{"run_true_untraced_s":0.5,"#,
                r#""run_true_traced_s":0.75,"watch_two_libcs_armed_s":1.0,"#,
                r#""watch_two_libcs_exit_s":0.125,"bystander_native_ns":16.5,"#,
                r#""bystander_beside_watch_pid_ns":17.0,"busy_pid_armed_s":1.5,"#,
                r#""busy_pid_total_s":2.5},"memcached":{"seconds":20,"#,
                r#""ops_per_s":[50000.0,25000.0,47500.0],"dependencies":[30000.0,15000.0],"#,
                r#""findings":[0,0],"budget_duty_cycle":0.0625}}"#,
                "\n"
            )
        );
    }

    fn server_results() -> server_rows::ServerResults {
        let setup = |setup, throughput, deps, duty| server_rows::SetupResult {
            setup,
            throughput,
            dependencies: deps,
            findings: 0,
            lost_events: deps.map(|_| 0),
            duty_cycle: duty,
            estimated_cost_pct: duty.map(|_| 41.5),
        };
        server_rows::ServerResults {
            server: "MariaDB 10.11.19".into(),
            load: "sysbench oltp_read_write --time=20".into(),
            unit: "transactions/s",
            seconds: 20,
            setups: vec![
                setup("untraced", 1356.36, None, None),
                setup("full (watch --pid)", 900.04, Some(5210), None),
                setup("budget 5%", 1300.0, Some(1200), Some(0.0625)),
            ],
            disturbed_by: vec![],
        }
    }

    /// A rows-only run writes only its parts, the new rows included.
    #[test]
    fn writes_rows_only_json() {
        let results = Results {
            mariadb: Some(server_results()),
            memcached_convergence: Some(convergence::ConvergenceResults {
                full_seconds: 20,
                full_orders: 12,
                full_instance_dependencies: 48630,
                budget_runs: vec![convergence::BudgetRun {
                    seconds: 60,
                    learned: 11,
                    extra: 1,
                    instance_dependencies: 20000,
                    duty_cycle: Some(0.09),
                }],
                missing: vec!["a -> b".into()],
            }),
            ..Results::default()
        };
        assert_eq!(
            results_json(&results).unwrap(),
            concat!(
                r#"{"memcached_convergence":{"full_seconds":20,"full_orders":12,"#,
                r#""full_instance_dependencies":48630,"budget_runs":[{"seconds":60,"#,
                r#""learned":11,"extra":1,"instance_dependencies":20000,"duty_cycle":0.09}],"#,
                r#""missing":["a -> b"]},"mariadb":{"server":"MariaDB 10.11.19","#,
                r#""load":"sysbench oltp_read_write --time=20","unit":"transactions/s","#,
                r#""seconds":20,"setups":[{"setup":"untraced","throughput":1356.4,"#,
                r#""dependencies":null,"findings":0,"lost_events":null,"duty_cycle":null,"#,
                r#""estimated_cost_pct":null},{"setup":"full (watch --pid)","#,
                r#""throughput":900.0,"dependencies":5210,"findings":0,"lost_events":0,"#,
                r#""duty_cycle":null,"estimated_cost_pct":null},{"setup":"budget 5%","#,
                r#""throughput":1300.0,"dependencies":1200,"findings":0,"lost_events":0,"#,
                r#""duty_cycle":0.0625,"estimated_cost_pct":41.5}],"disturbed_by":[]}}"#,
                "\n"
            )
        );
    }

    #[test]
    fn renders_server_rows() {
        assert_eq!(
            server_rows::render_table(&server_results()),
            "| setup | transactions/s | kept | dependencies learned | findings | lost events | duty cycle |\n\
             |---|---|---|---|---|---|---|\n\
             | untraced | 1356.4 | 1.00x |  |  |  |  |\n\
             | full (watch --pid) | 900.0 | 0.66x | 5210 | 0 | 0 | 100% |\n\
             | budget 5% | 1300.0 | 0.96x | 1200 | 0 | 0 | 6.2% |\n"
        );
    }
}
