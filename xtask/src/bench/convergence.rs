//! Does `--budget 5` learn what full tracing learns? memcached under
//! memcaslap is traced in full once, then under `--budget 5` for runs of
//! growing length (1, 2, 5 and 10 minutes; seconds with `--quick`): which
//! of full mode's lock orders each learned. Each run is a fresh tracer
//! (`watch --comm memcached --probe-all`) with a fresh memcached started
//! under it.
//!
//! A lock order is a class-level dependency: a (class, class) pair of the
//! `lock_graph` line, the unit class-level inversions are judged in and the
//! only one that names the same locks in two runs (instances are addresses
//! of one process; the summary's `dependencies` counts those: memcached's
//! item locks make tens of thousands, and no run, full or sliced, sees every
//! pair). memcached makes its locks at start, so the tracer is started
//! first: locks whose init was not seen are classed by their first
//! acquisition's site, which is not sound enough to judge by, and take part
//! in no class-level dependency (with `--pid` of a running memcached the
//! class graph is empty).

use std::{collections::BTreeSet, path::Path};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::{
    memcached::{load, Memcached},
    Options, ScratchDir, Tracer,
};
use crate::step;

/// A lock order: the names of the class taken first and of the one taken
/// while it was held.
type Order = (String, String);

#[derive(Serialize)]
pub struct ConvergenceResults {
    /// Length of the full-mode run, seconds.
    pub full_seconds: u64,
    /// Class-level dependencies (lock orders) full mode learned.
    pub full_orders: usize,
    /// Instance-level dependencies full mode learned (the summary's).
    pub full_instance_dependencies: u64,
    /// One budget run per length, shortest first.
    pub budget_runs: Vec<BudgetRun>,
    /// Full mode's orders that the longest budget run did not learn.
    pub missing: Vec<String>,
}

#[derive(Serialize)]
pub struct BudgetRun {
    pub seconds: u64,
    /// Of full mode's orders, how many this run learned.
    pub learned: usize,
    /// Orders this run learned that full mode did not.
    pub extra: usize,
    pub instance_dependencies: u64,
    pub duty_cycle: Option<f64>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Line {
    LockGraph {
        classes: Vec<String>,
        dependencies: Vec<GraphDependency>,
        omitted_dependencies: u64,
    },
    Summary {
        dependencies: u64,
        #[serde(default)]
        budget: Option<Budget>,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct GraphDependency {
    from: usize,
    to: usize,
}

#[derive(Deserialize)]
struct Budget {
    duty_cycle: f64,
}

/// What one traced run learned: its lock orders, its instance-level
/// dependency count, its duty cycle.
struct Capture {
    orders: BTreeSet<Order>,
    instance_dependencies: u64,
    duty_cycle: Option<f64>,
}

fn read_capture(output: &Path) -> Result<Capture> {
    let text = std::fs::read_to_string(output)
        .with_context(|| format!("cannot read {}", output.display()))?;
    let mut orders = None;
    let mut summary = None;
    for line in text.lines() {
        match serde_json::from_str(line) {
            Ok(Line::LockGraph {
                classes,
                dependencies,
                omitted_dependencies,
            }) => {
                if omitted_dependencies > 0 {
                    bail!("the lock graph left out {omitted_dependencies} dependencies");
                }
                let name = |i: usize| classes.get(i).cloned().unwrap_or_default();
                orders = Some(
                    dependencies
                        .iter()
                        .map(|d| (name(d.from), name(d.to)))
                        .collect(),
                );
            }
            Ok(Line::Summary {
                dependencies,
                budget,
            }) => summary = Some((dependencies, budget.map(|b| b.duty_cycle))),
            _ => {}
        }
    }
    let (Some(orders), Some((instance_dependencies, duty_cycle))) = (orders, summary) else {
        bail!("{} has no lock_graph or no summary line", output.display());
    };
    Ok(Capture {
        orders,
        instance_dependencies,
        duty_cycle,
    })
}

/// One traced run: `watch --comm memcached --probe-all ARGS` armed, then a
/// fresh memcached started under it (its lock inits seen: what gives its
/// locks sound classes), `seconds` of memcaslap, the tracer stopped, then
/// memcached.
fn traced_run(locktrace: &Path, args: &[&str], seconds: u64, output: &Path) -> Result<Capture> {
    let mut watch = vec!["--comm", "memcached", "--probe-all"];
    watch.extend_from_slice(args);
    let tracer = Tracer::start(locktrace, &watch, output)?;
    let server = Memcached::start()?;
    load(server.port, seconds)?;
    tracer.stop()?;
    drop(server);
    read_capture(output)
}

pub fn convergence_bench(locktrace: &Path, opts: &Options) -> Result<ConvergenceResults> {
    let (full_seconds, lengths): (u64, &[u64]) = if opts.quick {
        (3, &[5, 10])
    } else {
        (20, &[60, 120, 300, 600])
    };
    let scratch = ScratchDir::new("convergence")?;
    let full = traced_run(
        locktrace,
        &[],
        full_seconds,
        &scratch.path().join("full.jsonl"),
    )
    .context("memcached, full tracing")?;
    step(format!(
        "convergence: full mode learned {} lock orders ({} instance dependencies) in {full_seconds} s",
        full.orders.len(),
        full.instance_dependencies
    ));
    if full.orders.is_empty() {
        bail!("full tracing learned no lock order of memcached: nothing to converge to");
    }
    let mut budget_runs = Vec::new();
    let mut missing = Vec::new();
    for &seconds in lengths {
        let run = traced_run(
            locktrace,
            &["--budget", "5"],
            seconds,
            &scratch.path().join(format!("budget-{seconds}.jsonl")),
        )
        .with_context(|| format!("memcached, --budget 5 for {seconds} s"))?;
        let learned = full.orders.intersection(&run.orders).count();
        step(format!(
            "convergence: --budget 5 for {seconds} s learned {learned} of {} (and {} more), duty cycle {}",
            full.orders.len(),
            run.orders.difference(&full.orders).count(),
            run.duty_cycle
                .map_or("?".to_owned(), |d| format!("{:.1}%", d * 100.0)),
        ));
        missing = full
            .orders
            .difference(&run.orders)
            .map(|(a, b)| format!("{a} -> {b}"))
            .collect();
        budget_runs.push(BudgetRun {
            seconds,
            learned,
            extra: run.orders.difference(&full.orders).count(),
            instance_dependencies: run.instance_dependencies,
            duty_cycle: run.duty_cycle,
        });
    }
    Ok(ConvergenceResults {
        full_seconds,
        full_orders: full.orders.len(),
        full_instance_dependencies: full.instance_dependencies,
        budget_runs,
        missing,
    })
}

pub fn render(r: &ConvergenceResults) -> String {
    let mut md = format!(
        "memcached under memcaslap, `watch --comm memcached --probe-all` started before \
         memcached: full mode's lock orders (class-level dependencies of the `lock_graph` line) \
         learned by `--budget 5`, one fresh tracer and memcached per length. Full mode, {} s: \
         {} orders ({} instance dependencies).\n\n\
         | --budget 5 run | orders of full mode learned | fraction | other orders | instance dependencies | duty cycle |\n\
         |---|---|---|---|---|---|\n",
        r.full_seconds, r.full_orders, r.full_instance_dependencies
    );
    for run in &r.budget_runs {
        md.push_str(&format!(
            "| {} s | {} of {} | {:.2} | {} | {} | {} |\n",
            run.seconds,
            run.learned,
            r.full_orders,
            run.learned as f64 / r.full_orders.max(1) as f64,
            run.extra,
            run.instance_dependencies,
            run.duty_cycle
                .map_or("?".to_owned(), |d| format!("{:.1}%", d * 100.0)),
        ));
    }
    let all = r
        .budget_runs
        .iter()
        .find(|run| run.learned == r.full_orders);
    if let Some(run) = all {
        md.push_str(&format!(
            "\nThe shortest run that learned every order of full mode: {} s.\n",
            run.seconds
        ));
    }
    if !r.missing.is_empty() {
        md.push_str("\nNot learned by the longest run:\n\n");
        for m in r.missing.iter().take(20) {
            md.push_str(&format!("- `{m}`\n"));
        }
        if r.missing.len() > 20 {
            md.push_str(&format!("- and {} more\n", r.missing.len() - 20));
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_lock_orders_by_class_name() {
        let dir = ScratchDir::new("convergence-test").unwrap();
        let path = dir.path().join("capture.jsonl");
        std::fs::write(
            &path,
            concat!(
                r#"{"type":"lock_graph","classes":["item_locks","stats_lock","lru_locks"],"#,
                r#""dependencies":[{"from":0,"to":1,"seen":9,"pid":7,"thread":"mc-worker"},"#,
                r#"{"from":2,"to":0,"seen":1,"pid":7,"thread":"mc-worker"}],"omitted_dependencies":0}"#,
                "\n",
                r#"{"type":"summary","events":10,"dependencies":48630,"budget":{"budget_pct":5.0,"#,
                r#""duty_cycle":0.09,"slices":4,"estimated_cost_pct":55.0,"new_dependencies_last_slices":[0]}}"#,
                "\n"
            ),
        )
        .unwrap();
        let c = read_capture(&path).unwrap();
        let orders: Vec<(&str, &str)> = c
            .orders
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        assert_eq!(
            orders,
            [("item_locks", "stats_lock"), ("lru_locks", "item_locks")]
        );
        assert_eq!((c.instance_dependencies, c.duty_cycle), (48630, Some(0.09)));
        // A graph that left dependencies out cannot be compared.
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace(r#""omitted_dependencies":0"#, r#""omitted_dependencies":3"#);
        std::fs::write(&path, text).unwrap();
        assert!(read_capture(&path).is_err());
    }

    #[test]
    fn renders_missing_orders() {
        let r = ConvergenceResults {
            full_seconds: 20,
            full_orders: 4,
            full_instance_dependencies: 100,
            budget_runs: vec![BudgetRun {
                seconds: 60,
                learned: 3,
                extra: 0,
                instance_dependencies: 40,
                duty_cycle: Some(0.1),
            }],
            missing: vec!["a -> b".into()],
        };
        let md = render(&r);
        assert!(
            md.contains("| 60 s | 3 of 4 | 0.75 | 0 | 40 | 10.0% |"),
            "{md}"
        );
        assert!(
            md.ends_with("Not learned by the longest run:\n\n- `a -> b`\n"),
            "{md}"
        );
    }
}
