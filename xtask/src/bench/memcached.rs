//! A lock-heavy server: Debian's memcached (4 threads) on loopback under
//! Debian's memcaslap, untraced, traced in full (`watch --pid`) and under a
//! 5 % budget (`watch --pid --budget 5`), in interleaved rounds. Reports
//! the throughput kept and what each traced mode learned (dependencies,
//! findings, duty cycle).

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::server_rows::learned;
use super::{
    free_port, median, run_bounded, signal_child, wait_for_exit, Options, ScratchDir, Tracer,
};
use crate::{prereqs, step};

const SETUPS: [&str; 3] = ["untraced", "full", "budget 5%"];

#[derive(Serialize)]
pub struct MemcachedResults {
    pub seconds: u64,
    /// Median operations per second, per setup (`SETUPS` order).
    pub ops_per_s: Vec<f64>,
    /// Median dependencies learned per traced run (full, budget).
    pub dependencies: Vec<f64>,
    /// Findings over all traced runs (full, budget): none expected.
    pub findings: Vec<usize>,
    /// Median duty cycle of the budget runs.
    pub budget_duty_cycle: f64,
}

/// memcached on a free loopback port, stopped when dropped.
pub(super) struct Memcached {
    pub(super) child: Child,
    pub(super) port: u16,
}

impl Memcached {
    pub(super) fn start() -> Result<Memcached> {
        let port = free_port()?;
        let child = Command::new(prereqs::MEMCACHED)
            .args([
                "-u",
                "nobody",
                "-t",
                "4",
                "-l",
                "127.0.0.1",
                "-U",
                "0",
                "-m",
                "256",
                "-c",
                "1024",
            ])
            .arg("-p")
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start memcached")?;
        let server = Memcached { child, port };
        // Ready once it accepts a connection.
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("memcached did not listen on 127.0.0.1:{port} within 5 s")
    }
}

impl Drop for Memcached {
    fn drop(&mut self) {
        signal_child(&mut self.child, libc::SIGTERM);
        if wait_for_exit(&mut self.child, Duration::from_secs(10)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// memcaslap's operations per second over `seconds`.
pub(super) fn load(port: u16, seconds: u64) -> Result<f64> {
    let out = run_bounded(
        Command::new(prereqs::MEMCASLAP)
            .arg("-s")
            .arg(format!("127.0.0.1:{port}"))
            .args(["-T", "2", "-c", "32", "-t"])
            .arg(format!("{seconds}s")),
        Duration::from_secs(seconds + 60),
    )?;
    // "Run time: 20.0s Ops: 1043710 TPS: 52182 Net_rate: 45.0M/s"
    out.lines()
        .rfind(|l| l.starts_with("Run time"))
        .and_then(|l| {
            l.split("TPS:")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .with_context(|| format!("memcaslap printed no TPS:\n{out}"))
}

pub fn memcached_bench(locktrace: &Path, opts: &Options) -> Result<MemcachedResults> {
    let seconds = if opts.quick { 3 } else { 20 };
    let server = Memcached::start()?;
    let pid = server.child.id().to_string();
    load(server.port, 2).context("memcaslap warm-up run")?;
    let scratch = ScratchDir::new("memcached")?;
    let mut ops: Vec<Vec<f64>> = vec![Vec::new(); SETUPS.len()];
    let mut deps: Vec<Vec<f64>> = vec![Vec::new(); 2];
    let mut findings = vec![0; 2];
    let mut duty = Vec::new();
    for round in 1..=opts.rounds {
        for (i, setup) in SETUPS.iter().enumerate() {
            let output = scratch.path().join(format!("{i}.{round}.jsonl"));
            let args: &[&str] = match i {
                0 => &[],
                1 => &["--pid", &pid],
                _ => &["--pid", &pid, "--budget", "5"],
            };
            let tracer = match i {
                0 => None,
                _ => Some(Tracer::start(locktrace, args, &output)?),
            };
            let tps = load(server.port, seconds).with_context(|| format!("memcached, {setup}"))?;
            if let Some(tracer) = tracer {
                tracer.stop()?;
                let learned = learned(&output);
                deps[i - 1].push(learned.dependencies.map_or(f64::NAN, |d| d as f64));
                findings[i - 1] += learned.findings;
                duty.extend(learned.duty_cycle);
            }
            step(format!("memcached round {round} {setup}: {tps:.0} ops/s"));
            ops[i].push(tps);
        }
    }
    Ok(MemcachedResults {
        seconds,
        ops_per_s: ops.iter_mut().map(|s| median(s)).collect(),
        dependencies: deps.iter_mut().map(|s| median(s)).collect(),
        findings,
        budget_duty_cycle: median(&mut duty),
    })
}

pub fn render(r: &MemcachedResults, opts: &Options) -> String {
    let [u, f, b] = [0, 1, 2].map(|i| r.ops_per_s[i]);
    format!(
        "memcached (4 threads) under memcaslap on loopback, `watch --pid` of memcached, median of {} \
         interleaved rounds of {} s each.\n\n\
         | setup | ops/s | kept | dependencies learned | findings | duty cycle |\n\
         |---|---|---|---|---|---|\n\
         | untraced | {u:.0} | 1.00x | | | |\n\
         | full | {f:.0} | {:.2}x | {:.0} | {} | 100% |\n\
         | budget 5% | {b:.0} | {:.2}x | {:.0} | {} | {:.1}% |\n",
        opts.rounds,
        r.seconds,
        f / u,
        r.dependencies[0],
        r.findings[0],
        b / u,
        r.dependencies[1],
        r.findings[1],
        r.budget_duty_cycle * 100.0,
    )
}
