//! `cargo xtask bench`: the cost of tracing, measured side by side in one run
//! and reported as ratios (the machine is shared and noisy: absolute numbers
//! drift between runs, ratios of interleaved measurements much less).
//!
//! Probe cost: `bench/lockloop.c` locks and unlocks uncontended mutexes for a
//! fixed time and prints the mean ns per pair, under four setups run in
//! turn, round after round: untraced; the floor (empty BPF programs on the
//! same placed probes: the price of the probe hits alone); locktrace; and
//! locktrace with every probe on its function's first instruction (what other
//! tools do). Collector throughput: `tracer/examples/collector_bench.rs`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{cmd, prereqs, run, step, target_dir, workspace_root};

pub struct Options {
    pub rounds: usize,
    pub seconds: f64,
    pub quick: bool,
}

#[derive(Clone, Copy)]
enum Setup {
    Untraced,
    Floor,
    Locktrace,
    EntryProbes,
}

impl Setup {
    const ALL: [Setup; 4] = [
        Setup::Untraced,
        Setup::Floor,
        Setup::Locktrace,
        Setup::EntryProbes,
    ];

    fn name(self) -> &'static str {
        match self {
            Setup::Untraced => "untraced",
            Setup::Floor => "floor",
            Setup::Locktrace => "locktrace",
            Setup::EntryProbes => "offset_0",
        }
    }

    /// locktrace's options for this setup (None: run untraced).
    fn tracer_args(self) -> Option<&'static [&'static str]> {
        match self {
            Setup::Untraced => None,
            Setup::Floor => Some(&["--floor-probes"]),
            Setup::Locktrace => Some(&[]),
            Setup::EntryProbes => Some(&["--probe-at-entry"]),
        }
    }
}

/// (lockloop mode, threads)
const WORKLOADS: &[(&str, u32)] = &[("mutex", 1), ("mutex", 2), ("trylock", 1), ("trylock", 2)];

pub fn bench(opts: &Options) -> Result<()> {
    if !cmd::is_root() {
        bail!("the benchmark loads BPF programs: run as root");
    }
    let toolchain = prereqs::ensure(prereqs::Scope::Test)?;
    let locktrace = run::build_all(&toolchain, true)?;
    let out_dir = target_dir().join("bench");
    std::fs::create_dir_all(&out_dir)?;
    let lockloop = compile_lockloop(&out_dir)?;

    let mut rows = Vec::new();
    for &(mode, threads) in WORKLOADS {
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); Setup::ALL.len()];
        for round in 0..opts.rounds {
            for (i, setup) in Setup::ALL.into_iter().enumerate() {
                let ns = measure(&locktrace, &lockloop, setup, mode, threads, opts.seconds)
                    .with_context(|| format!("{mode} x{threads}, {}", setup.name()))?;
                step(format!(
                    "{mode} x{threads} round {} {}: {ns:.1} ns/pair",
                    round + 1,
                    setup.name()
                ));
                samples[i].push(ns);
            }
        }
        rows.push(Row {
            workload: format!(
                "{mode}, {threads} thread{}",
                if threads > 1 { "s" } else { "" }
            ),
            median_ns: samples.iter_mut().map(|s| median(s)).collect(),
        });
    }

    step("collector throughput (tracer/examples/collector_bench.rs)");
    let collector = collector_bench(opts.quick)?;

    let markdown = render(&rows, &collector, opts);
    println!("{markdown}");
    let json = serde_json_like(&rows, &collector);
    let json_path = out_dir.join("results.json");
    std::fs::write(&json_path, json)?;
    std::fs::write(out_dir.join("results.md"), &markdown)?;
    step(format!("results: {} and results.md", json_path.display()));
    Ok(())
}

struct Row {
    workload: String,
    /// Per setup, in `Setup::ALL` order.
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

/// One run of lockloop under `setup`; returns its ns per lock+unlock pair.
fn measure(
    locktrace: &Path,
    lockloop: &Path,
    setup: Setup,
    mode: &str,
    threads: u32,
    seconds: f64,
) -> Result<f64> {
    let workload = [
        lockloop.as_os_str().to_owned(),
        mode.into(),
        threads.to_string().into(),
        format!("{seconds}").into(),
    ];
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

fn collector_bench(quick: bool) -> Result<String> {
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
    Ok(json.trim().to_owned())
}

fn render(rows: &[Row], collector: &str, opts: &Options) -> String {
    let mut md = String::new();
    md.push_str(&format!(
        "Probe cost: ns per uncontended lock+unlock pair, median of {} interleaved rounds of {} s each.\n\n",
        opts.rounds, opts.seconds
    ));
    md.push_str("| workload | untraced | floor (empty programs, placed probes) | locktrace | probes at offset 0 | locktrace / floor | offset 0 / locktrace |\n");
    md.push_str("|---|---|---|---|---|---|---|\n");
    for row in rows {
        let [u, f, l, e] = [0, 1, 2, 3].map(|i| row.median_ns[i]);
        md.push_str(&format!(
            "| {} | {u:.1} | {f:.1} | {l:.1} | {e:.1} | {:.2}x | {:.1}x |\n",
            row.workload,
            l / f,
            e / l
        ));
    }
    md.push_str(&format!(
        "\nCollector (one thread, no kernel): `{collector}`\n"
    ));
    md
}

/// The results as JSON (hand-assembled: xtask has no serde).
fn serde_json_like(rows: &[Row], collector: &str) -> String {
    let rows: Vec<String> = rows
        .iter()
        .map(|r| {
            let fields: Vec<String> = Setup::ALL
                .iter()
                .zip(&r.median_ns)
                .map(|(s, ns)| format!("\"{}_ns\":{ns:.2}", s.name()))
                .collect();
            format!("{{\"workload\":\"{}\",{}}}", r.workload, fields.join(","))
        })
        .collect();
    format!(
        "{{\"probe_cost\":[{}],\"collector\":{collector}}}\n",
        rows.join(",")
    )
}
