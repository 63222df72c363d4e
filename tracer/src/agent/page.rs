//! `/report`: the agent's live findings as the HTML page of `locktrace
//! report --format html` (the same printer, the same Content-Security-Policy),
//! served beside /metrics. Bounded: the last [`KEPT`] findings are kept,
//! and the page says how many older ones are not. Each request lays the
//! pictures out with Graphviz again, on a blocking thread, one request at a
//! time.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use crate::report::findings::Entry;
use crate::report::replay::type_name;
use crate::report::text::plural;
use crate::report::{escape, html, walltime, Finding};
use crate::session::Live;

/// Findings kept for the page; older ones are counted, not kept.
pub const KEPT: usize = 1_000;

/// What the agent found since it started, shared between the session's
/// observer (which adds) and the endpoint (which renders).
#[derive(Debug)]
pub struct LiveFindings {
    host: String,
    /// How many findings are kept ([`KEPT`]).
    limit: usize,
    /// When the agent started (RFC 3339).
    started: String,
    kept: VecDeque<Entry>,
    /// Findings made since the start, kept or not.
    total: u64,
    /// The session's last counts.
    live: Live,
}

pub type Shared = Arc<Mutex<LiveFindings>>;

impl LiveFindings {
    /// Keeps the last `limit` findings.
    pub fn new(host: &str, limit: usize) -> Shared {
        Arc::new(Mutex::new(LiveFindings {
            host: host.to_string(),
            limit: limit.max(1),
            started: walltime::now(),
            kept: VecDeque::new(),
            total: 0,
            live: Live::default(),
        }))
    }

    /// A finding reported at `time`.
    pub fn add(&mut self, finding: &Finding, time: &str) {
        self.total += 1;
        if self.kept.len() >= self.limit {
            self.kept.pop_front();
        }
        self.kept.push_back(Entry {
            finding: finding.clone(),
            time: Some(time.to_string()),
        });
    }

    pub fn set_live(&mut self, live: &Live) {
        self.live = live.clone();
    }

    /// The findings not kept (the oldest).
    pub fn dropped(&self) -> u64 {
        self.total - self.kept.len() as u64
    }
}

/// A copy of what the page shows, taken under the lock (rendering runs
/// Graphviz, outside it).
pub struct Snapshot {
    source: String,
    kept: Vec<Entry>,
    held: String,
}

pub fn snapshot(shared: &Shared) -> Snapshot {
    let f = shared.lock().unwrap_or_else(|e| e.into_inner());
    let mut held = String::new();
    let _ = writeln!(
        held,
        "locktrace agent on {}, tracing since {}: {} made",
        escape::name(&f.host),
        f.started,
        plural(f.total, "finding", "findings")
    );
    let mut by_type = std::collections::BTreeMap::new();
    for e in &f.kept {
        *by_type.entry(type_name(&e.finding)).or_insert(0u64) += 1;
    }
    for (t, n) in &by_type {
        let _ = writeln!(held, "  {t}: {n}");
    }
    if f.dropped() > 0 {
        let _ = writeln!(
            held,
            "  not shown: the oldest {} (this page keeps the last {})",
            f.dropped(),
            f.limit
        );
    }
    let _ = writeln!(
        held,
        "  traced: {} lock operations, {} locks, {} dependencies, {} processes",
        f.live.events, f.live.locks, f.live.dependencies, f.live.traced_processes
    );
    let _ = writeln!(held, "  lost events: {}", f.live.lost_events);
    Snapshot {
        source: format!("the live findings of locktrace agent on {}", f.host),
        kept: f.kept.iter().cloned().collect(),
        held,
    }
}

/// The page.
pub fn render(s: &Snapshot) -> Vec<u8> {
    let shown: Vec<&Entry> = s.kept.iter().collect();
    let mut page = Vec::new();
    // Writing to memory does not fail.
    let _ = html::write(&mut page, std::slice::from_ref(&s.source), &shown, &s.held);
    page
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::{ab_ba, inversion};

    #[test]
    fn keeps_the_last_findings_and_says_how_many_it_dropped() {
        let (cycle, mut r) = ab_ba();
        let finding = inversion(&cycle, &mut r);
        let shared = LiveFindings::new("web1", 5);
        {
            let mut f = shared.lock().unwrap();
            for i in 0..8 {
                f.add(&finding, &format!("2026-12-07T17:04:21.{i:03}Z"));
            }
            assert_eq!(f.kept.len(), 5);
            assert_eq!(f.dropped(), 3);
            // The oldest went first.
            assert_eq!(f.kept[0].time.as_deref(), Some("2026-12-07T17:04:21.003Z"));
        }
        let snap = snapshot(&shared);
        assert!(
            snap.held
                .contains("not shown: the oldest 3 (this page keeps the last 5)"),
            "{}",
            snap.held
        );
        assert!(snap.held.contains(": 8 findings made"), "{}", snap.held);
        let page = String::from_utf8(render(&snap)).unwrap();
        assert!(page.contains(html::CSP), "the report's CSP");
        assert_eq!(page.matches("<article ").count(), 5);
        assert!(page.contains("mutex_a") && page.contains("mutex_b"));
        assert!(page.contains("the live findings of locktrace agent on web1"));
    }
}
