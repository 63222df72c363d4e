//! The shape of a real-server row: one server, one load, several setups
//! (untraced, and `locktrace watch` with each setup's options) measured
//! round after round, the setups interleaved, medians reported with what
//! each traced setup learned (dependencies, findings, duty cycle, lost
//! events).

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{fixed, median, Options, ScratchDir, Tracer};
use crate::step;

/// One setup: its name in the tables and locktrace's `watch` options
/// (None: untraced).
pub struct Setup {
    pub name: &'static str,
    pub watch_args: Option<Vec<String>>,
}

impl Setup {
    pub fn untraced() -> Setup {
        Setup {
            name: "untraced",
            watch_args: None,
        }
    }

    pub fn traced(name: &'static str, args: &[&str]) -> Setup {
        Setup {
            name,
            watch_args: Some(args.iter().map(|a| a.to_string()).collect()),
        }
    }
}

/// A server's table: what it is, its load, its unit (`requests/s`,
/// `transactions/s`), and per setup the medians.
#[derive(Serialize)]
pub struct ServerResults {
    pub server: String,
    pub load: String,
    pub unit: &'static str,
    pub seconds: u64,
    pub setups: Vec<SetupResult>,
    /// Other tracers seen running between measurements (their probe hits
    /// slow every setup).
    pub disturbed_by: Vec<String>,
}

#[derive(Serialize)]
pub struct SetupResult {
    pub setup: &'static str,
    /// Median throughput (in `unit`).
    #[serde(serialize_with = "one_decimal")]
    pub throughput: f64,
    /// Median dependencies learned per traced run.
    pub dependencies: Option<u64>,
    /// Findings over all runs (none expected on a clean load).
    pub findings: usize,
    /// Most lost events in one run.
    pub lost_events: Option<u64>,
    /// Median duty cycle (budget setups).
    pub duty_cycle: Option<f64>,
    /// Median estimated probe cost while probed, in % of the traced
    /// processes' CPU time (budget setups).
    pub estimated_cost_pct: Option<f64>,
}

fn one_decimal<S: serde::Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    fixed(*v, 1).serialize(s)
}

/// The last line of locktrace's JSON output, as far as these rows read it.
#[derive(Deserialize)]
struct Summary {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    dependencies: u64,
    #[serde(default)]
    lost_events: u64,
    #[serde(default)]
    budget: Option<Budget>,
}

#[derive(Deserialize)]
struct Budget {
    duty_cycle: f64,
    estimated_cost_pct: f64,
}

/// What one traced run learned.
pub struct Learned {
    pub dependencies: Option<u64>,
    pub lost_events: Option<u64>,
    pub findings: usize,
    pub duty_cycle: Option<f64>,
    pub estimated_cost_pct: Option<f64>,
}

/// What the JSON output of one traced run at `output` says it learned.
pub fn learned(output: &Path) -> Learned {
    let text = std::fs::read_to_string(output).unwrap_or_default();
    let lines: Vec<Summary> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let summary = lines.iter().rev().find(|s| s.kind == "summary");
    Learned {
        dependencies: summary.map(|s| s.dependencies),
        lost_events: summary.map(|s| s.lost_events),
        findings: lines
            .iter()
            .filter(|s| s.kind != "summary" && s.kind != "lock_graph")
            .count(),
        duty_cycle: summary
            .and_then(|s| s.budget.as_ref())
            .map(|b| b.duty_cycle),
        estimated_cost_pct: summary
            .and_then(|s| s.budget.as_ref())
            .map(|b| b.estimated_cost_pct),
    }
}

/// `opts.rounds` rounds of every setup in turn: each traced setup's tracer
/// is armed before `load` starts and stopped after it ends; `load` returns
/// the throughput of one run.
pub fn measure(
    locktrace: &Path,
    label: &str,
    setups: &[Setup],
    opts: &Options,
    mut load: impl FnMut() -> Result<f64>,
) -> Result<(Vec<SetupResult>, Vec<String>)> {
    let mut disturbed = Vec::new();
    // Someone else's tracer started meanwhile: say so rather than hide it.
    // Looked for before and after each measurement (never while ours runs:
    // it has the same name).
    let look_for_others = |disturbed: &mut Vec<String>| {
        for other in super::other_tracers() {
            if !disturbed.contains(&other) {
                step(format!(
                    "warning: {other} is running: the {label} numbers are disturbed"
                ));
                disturbed.push(other);
            }
        }
    };
    let scratch = ScratchDir::new(&format!("{label}-traces"))?;
    let mut throughput: Vec<Vec<f64>> = vec![Vec::new(); setups.len()];
    let mut runs: Vec<Vec<Learned>> = setups.iter().map(|_| Vec::new()).collect();
    for round in 1..=opts.rounds {
        for (i, setup) in setups.iter().enumerate() {
            let output = scratch.path().join(format!("{i}.{round}.jsonl"));
            look_for_others(&mut disturbed);
            let tracer = match &setup.watch_args {
                None => {
                    // The same pause as after a tracer's start.
                    std::thread::sleep(super::TRACER_SETTLE);
                    None
                }
                Some(args) => {
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    Some(Tracer::start(locktrace, &args, &output)?)
                }
            };
            // On an error, dropping `tracer` stops it.
            let value = load().with_context(|| format!("{label}, {}", setup.name))?;
            if tracer.is_none() {
                look_for_others(&mut disturbed);
            }
            let note = match tracer {
                Some(tracer) => {
                    tracer.stop()?;
                    look_for_others(&mut disturbed);
                    let l = learned(&output);
                    let note = format!(
                        ", {} dependencies, {} findings, {} lost{}",
                        l.dependencies.map_or("?".into(), |d| d.to_string()),
                        l.findings,
                        l.lost_events.map_or("?".into(), |d| d.to_string()),
                        l.duty_cycle
                            .map_or(String::new(), |d| format!(", duty cycle {:.1}%", d * 100.0)),
                    );
                    runs[i].push(l);
                    note
                }
                None => String::new(),
            };
            step(format!(
                "{label} round {round} {}: {value:.1}{note}",
                setup.name
            ));
            throughput[i].push(value);
        }
    }
    let rows = setups
        .iter()
        .zip(throughput)
        .zip(runs)
        .map(|((setup, mut values), runs)| {
            let mut deps: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.dependencies)
                .map(|d| d as f64)
                .collect();
            let mut duty: Vec<f64> = runs.iter().filter_map(|r| r.duty_cycle).collect();
            let mut cost: Vec<f64> = runs.iter().filter_map(|r| r.estimated_cost_pct).collect();
            SetupResult {
                setup: setup.name,
                throughput: median(&mut values),
                dependencies: (!deps.is_empty()).then(|| median(&mut deps).round() as u64),
                findings: runs.iter().map(|r| r.findings).sum(),
                lost_events: runs.iter().filter_map(|r| r.lost_events).max(),
                duty_cycle: (!duty.is_empty()).then(|| median(&mut duty)),
                estimated_cost_pct: (!cost.is_empty()).then(|| median(&mut cost)),
            }
        })
        .collect();
    Ok((rows, disturbed))
}

/// The table: per setup its throughput, the ratio to untraced (the first
/// setup) and what it learned.
pub fn render_table(r: &ServerResults) -> String {
    let mut md = format!(
        "| setup | {} | kept | dependencies learned | findings | lost events | duty cycle |\n\
         |---|---|---|---|---|---|---|\n",
        r.unit
    );
    let base = r.setups.first().map(|s| s.throughput);
    for s in &r.setups {
        let kept = match base {
            Some(b) if b > 0.0 => format!("{:.2}x", s.throughput / b),
            _ => "-".to_owned(),
        };
        let or_blank = |v: Option<u64>| v.map_or(String::new(), |v| v.to_string());
        let duty = match (s.duty_cycle, s.dependencies) {
            (Some(d), _) => format!("{:.1}%", d * 100.0),
            (None, Some(_)) => "100%".to_owned(),
            (None, None) => String::new(),
        };
        let findings = if s.dependencies.is_some() {
            s.findings.to_string()
        } else {
            String::new()
        };
        md.push_str(&format!(
            "| {} | {:.1} | {kept} | {} | {findings} | {} | {duty} |\n",
            s.setup,
            s.throughput,
            or_blank(s.dependencies),
            or_blank(s.lost_events),
        ));
    }
    if !r.disturbed_by.is_empty() {
        md.push_str(&format!(
            "\n**Disturbed**: other tracers ran during the measurement ({}); their probes slow \
             every setup.\n",
            match r.disturbed_by.len() {
                n @ 0..=3 => r.disturbed_by[..n].join(", "),
                n => format!("{}, and {} more", r.disturbed_by[..3].join(", "), n - 3),
            }
        ));
    }
    md
}
