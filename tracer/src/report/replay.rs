//! `locktrace report`: reads a capture (the JSON Lines `run`/`watch` wrote
//! with `--format json -o FILE`) and prints its findings again, filtered,
//! as text, JSON, DOT or HTML. Everything comes from the file: nothing is read
//! from the host, so a capture from a production host reads anywhere.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Write};

use anyhow::{bail, Result};
use serde::Deserialize;
use serde_json::Value;

use crate::report::dot;
use crate::report::escape;
pub use crate::report::findings::Entry;
use crate::report::findings::Finding;
use crate::report::fingerprint::fingerprint;
use crate::report::graph::{self, LockGraph};
use crate::report::html;
use crate::report::json;
use crate::report::sink::{Format, Reporter};
use crate::report::text::plural;
use crate::report::walltime::{self, Nanos};

/// The `type` of every record [`Finding`] reads, as `--type` takes it.
pub const TYPE_NAMES: [&str; 6] = [
    "lock_order_inversion",
    "deadlock",
    "lock_wait_timeout",
    "self_deadlock",
    "same_class_nesting",
    "blocked_thread",
];

/// The `type` of a finding, as written (one of [`TYPE_NAMES`]).
pub fn type_name(f: &Finding) -> &'static str {
    match f {
        Finding::LockOrderInversion(_) => "lock_order_inversion",
        Finding::Deadlock(_) => "deadlock",
        Finding::LockWaitTimeout(_) => "lock_wait_timeout",
        Finding::SelfDeadlock(_) => "self_deadlock",
        Finding::SameClassNesting(_) => "same_class_nesting",
        Finding::BlockedThread(_) => "blocked_thread",
    }
}

/// One capture file, read.
#[derive(Debug, Default)]
pub struct Capture {
    /// The file's name, for messages.
    pub name: String,
    pub findings: Vec<Entry>,
    /// The summary line as written (absent when the run was cut short, or
    /// for a `snapshot`).
    pub summary: Option<Value>,
    /// That line, as written (its keys in their order).
    pub summary_line: Option<String>,
    /// One per line skipped: its number and why.
    pub warnings: Vec<String>,
    /// Its `lock_graph` lines (one per run; none before they were written).
    pub graphs: Vec<LockGraph>,
}

/// Reads `text`, the content of capture `name`. A line that is not a
/// record (garbage, or a last line cut short) is skipped with a warning
/// naming it; a capture of a newer schema is refused.
pub fn parse(name: &str, text: &str) -> Result<Capture> {
    let mut capture = Capture {
        name: name.to_string(),
        ..Capture::default()
    };
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let n = i + 1;
        let value: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                capture
                    .warnings
                    .push(format!("{name} line {n} is not JSON, skipped ({e})"));
                continue;
            }
        };
        match value.get("type").and_then(Value::as_str) {
            Some("summary") => {
                let schema = value.get("schema").and_then(Value::as_u64).unwrap_or(1);
                if schema > json::SCHEMA {
                    bail!(
                        "{name} was written by a newer locktrace (JSON schema {schema}; this one \
                         reads schema {}): read it with that version",
                        json::SCHEMA
                    );
                }
                capture.summary = Some(value);
                capture.summary_line = Some(line.to_string());
            }
            Some("lock_graph") => match LockGraph::deserialize(&value) {
                Ok(g) => capture.graphs.push(g),
                Err(e) => capture.warnings.push(format!(
                    "{name} line {n} is not a lock graph, skipped ({e})"
                )),
            },
            _ => match Finding::deserialize(&value) {
                Ok(finding) => {
                    let time = match value.get("time") {
                        None => None,
                        Some(Value::String(t)) if walltime::parse(t).is_some() => Some(t.clone()),
                        Some(other) => {
                            capture.warnings.push(format!(
                                "{name} line {n}: time {} is not an RFC 3339 time, ignored",
                                escape::name(&other.to_string())
                            ));
                            None
                        }
                    };
                    capture.findings.push(Entry { finding, time });
                }
                Err(e) => capture.warnings.push(format!(
                    "{name} line {n} is not a locktrace finding, skipped ({e})"
                )),
            },
        }
    }
    Ok(capture)
}

/// Which findings to print: each list, when not empty, must match.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub types: Vec<String>,
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
    pub fingerprints: Vec<String>,
    /// `--since`: findings reported at or after this time. A finding
    /// without a time (a capture written before findings had one) is not
    /// known to be recent: it is dropped, and counted by [`untimed`].
    pub since: Option<Nanos>,
}

impl Filter {
    pub fn matches(&self, e: &Entry) -> bool {
        self.matches_but_time(&e.finding)
            && self
                .since
                .is_none_or(|since| e.at().is_some_and(|t| t >= since))
    }

    fn matches_but_time(&self, f: &Finding) -> bool {
        let procs = processes(f);
        (self.types.is_empty() || self.types.iter().any(|t| t == type_name(f)))
            && (self.pids.is_empty() || procs.iter().any(|(p, _)| self.pids.contains(p)))
            && (self.comms.is_empty() || procs.iter().any(|(_, c)| self.comms.contains(c)))
            && (self.fingerprints.is_empty() || self.fingerprints.contains(&fingerprint(f)))
    }
}

/// The findings `--since` dropped for want of a time (that the other
/// filters kept): the caller warns with their count.
pub fn untimed(captures: &[Capture], filter: &Filter) -> usize {
    if filter.since.is_none() {
        return 0;
    }
    captures
        .iter()
        .flat_map(|c| &c.findings)
        .filter(|e| e.at().is_none() && filter.matches_but_time(&e.finding))
        .count()
}

/// The processes a finding is about: its own, and for a cycle across
/// processes, those of every edge.
pub fn processes(f: &Finding) -> Vec<(u32, String)> {
    let mut procs = match f {
        Finding::LockOrderInversion(inv) => {
            let mut v = vec![(inv.pid, inv.comm.clone())];
            v.extend(inv.cycle.iter().map(|e| (e.pid, e.comm.clone())));
            v
        }
        Finding::Deadlock(d) => vec![(d.pid, d.comm.clone())],
        Finding::LockWaitTimeout(t) => vec![(t.pid, t.comm.clone())],
        Finding::SelfDeadlock(d) => vec![(d.pid, d.comm.clone())],
        Finding::SameClassNesting(n) => {
            let mut v = vec![(n.pid, n.comm.clone())];
            v.extend(n.opposite.iter().map(|e| (e.pid, e.comm.clone())));
            v
        }
        Finding::BlockedThread(t) => vec![(t.pid, t.comm.clone())],
    };
    procs.sort();
    procs.dedup();
    procs
}

/// What `locktrace report` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
    Dot,
    Html,
}

/// Prints the findings of `captures` that pass `filter` to `out`: text
/// (with a summary of the captures at the end), JSON Lines (the findings,
/// then each capture's summary line as written: a capture again), or one
/// DOT digraph per finding, or one HTML page.
pub fn print(
    captures: &[Capture],
    filter: &Filter,
    output: Output,
    out: Box<dyn Write + Send>,
) -> io::Result<()> {
    let shown: Vec<&Entry> = captures
        .iter()
        .flat_map(|c| &c.findings)
        .filter(|e| filter.matches(e))
        .collect();
    match output {
        Output::Text | Output::Json => {
            let format = if output == Output::Text {
                Format::Text
            } else {
                Format::Json
            };
            let mut reporter = Reporter::new(format, out);
            for e in &shown {
                reporter.replayed(&e.finding, e.time.as_deref())?;
            }
            let mut out = reporter.into_inner();
            if output == Output::Text {
                out.write_all(describe(captures, shown.len()).as_bytes())?;
            } else {
                for line in captures.iter().filter_map(|c| c.summary_line.as_ref()) {
                    writeln!(out, "{line}")?;
                }
            }
            out.flush()
        }
        Output::Html => {
            let mut out = out;
            let sources: Vec<String> = captures.iter().map(|c| c.name.clone()).collect();
            html::write(&mut out, &sources, &shown, &describe(captures, shown.len()))
        }
        Output::Dot => {
            let mut out = out;
            for e in &shown {
                dot::write(&mut out, &e.finding)?;
            }
            out.flush()
        }
    }
}

/// `report --print-fingerprints`: the fingerprints of the findings of
/// `captures` that pass `filter`, each once (in the order first seen), as
/// the TOML array the agent's `[suppress] fingerprints` takes, each with a
/// comment: the finding's type, how many findings had it, and the alert
/// summary of the first (names escaped: a comment cannot be ended, nor a
/// key forged, by a name with a line break). Blocked threads of a snapshot
/// have none.
pub fn print_fingerprints(
    captures: &[Capture],
    filter: &Filter,
    out: &mut dyn Write,
) -> io::Result<()> {
    let mut seen: Vec<(String, &Finding, u64)> = Vec::new();
    for f in captures
        .iter()
        .flat_map(|c| &c.findings)
        .filter(|e| filter.matches(e) && !matches!(e.finding, Finding::BlockedThread(_)))
        .map(|e| &e.finding)
    {
        let fp = fingerprint(f);
        match seen.iter_mut().find(|(s, _, _)| *s == fp) {
            Some(known) => known.2 += 1,
            None => seen.push((fp, f, 1)),
        }
    }
    let names: Vec<String> = captures
        .iter()
        .map(|c| escape::name(&c.name).into_owned())
        .collect();
    writeln!(
        out,
        "# {} in {}: paste under [suppress] in the agent's config",
        plural(seen.len() as u64, "fingerprint", "fingerprints"),
        names.join(", ")
    )?;
    writeln!(out, "fingerprints = [")?;
    for (fp, f, n) in &seen {
        let summary = crate::report::oneline::summary(&escape::finding(f));
        let times = if *n > 1 {
            format!(" ({n} findings)")
        } else {
            String::new()
        };
        writeln!(
            out,
            "    \"{fp}\", # {}{times}: {}",
            type_name(f),
            escape::name(&summary)
        )?;
    }
    writeln!(out, "]")
}

/// Prints the merged graph of `graphs` in `format`.
pub fn print_graph(
    graphs: &[&LockGraph],
    format: Output,
    sources: &[String],
    mut out: Box<dyn Write + Send>,
) -> io::Result<()> {
    let g = LockGraph::merge(graphs.iter().copied());
    match format {
        Output::Text => out.write_all(graph::text(&g).as_bytes())?,
        Output::Json => json::write(&mut out, &g)?,
        Output::Dot => graph::write_dot(&mut out, &g)?,
        Output::Html => {
            let mut dot = Vec::new();
            graph::write_dot(&mut dot, &g)?;
            html::write_graph(&mut out, sources, &dot, &graph::text(&g))?;
        }
    }
    out.flush()
}

/// What the captures hold: findings by type, processes, lost events.
pub fn describe(captures: &[Capture], shown: usize) -> String {
    let mut s = String::new();
    for c in captures {
        let mut by_type: BTreeMap<&str, u64> = BTreeMap::new();
        let mut procs: Vec<(u32, String)> = Vec::new();
        for e in &c.findings {
            *by_type.entry(type_name(&e.finding)).or_default() += 1;
            procs.extend(processes(&e.finding));
        }
        procs.sort();
        procs.dedup();
        let _ = writeln!(
            s,
            "capture {}: {}",
            escape::name(&c.name),
            plural(c.findings.len() as u64, "finding", "findings")
        );
        for (t, n) in &by_type {
            let _ = writeln!(s, "  {t}: {n}");
        }
        let mut times: Vec<(Nanos, &str)> = c
            .findings
            .iter()
            .filter_map(|e| Some((e.at()?, e.time.as_deref()?)))
            .collect();
        times.sort();
        if let (Some(first), Some(last)) = (times.first(), times.last()) {
            let _ = writeln!(s, "  reported: {} to {}", first.1, last.1);
        }
        let untimed = c.findings.len() - times.len();
        if untimed > 0 {
            let _ = writeln!(
                s,
                "  {} no time (written before findings had one)",
                plural(untimed as u64, "finding has", "findings have")
            );
        }
        if !procs.is_empty() {
            let names: Vec<String> = procs
                .iter()
                .map(|(p, c)| format!("{} [{p}]", escape::name(c)))
                .collect();
            let _ = writeln!(s, "  processes: {}", names.join(", "));
        }
        match &c.summary {
            Some(sum) => {
                let field = |k: &str| sum.get(k).and_then(Value::as_u64).unwrap_or(0);
                let _ = writeln!(
                    s,
                    "  traced: {} lock operations, {} locks, {} dependencies, in {:.1}s",
                    field("events"),
                    field("locks"),
                    field("dependencies"),
                    sum.get("duration_s").and_then(Value::as_f64).unwrap_or(0.0)
                );
                let _ = writeln!(s, "  lost events: {}", field("lost_events"));
            }
            None => {
                let _ = writeln!(
                    s,
                    "  no summary line: the run was cut short (or is a snapshot); lost events unknown"
                );
            }
        }
        if !c.warnings.is_empty() {
            let _ = writeln!(
                s,
                "  {} skipped",
                plural(c.warnings.len() as u64, "line", "lines")
            );
        }
    }
    let total: usize = captures.iter().map(|c| c.findings.len()).sum();
    if shown != total {
        let _ = writeln!(s, "shown: {shown} of {total} findings (filtered)");
    }
    s
}

#[cfg(test)]
mod tests;
