//! The agent's Prometheus metrics (the `prometheus-client` crate), served
//! with /healthz, /readyz and /report (the HTML page of its findings,
//! `page`) by a small HTTP server on its own thread: a slow scraper never
//! delays tracing.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{server::conn::http1, service::service_fn, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info};
use prometheus_client::registry::Registry;
use tracing::debug;

use crate::agent::contention::ClassContention;
use crate::agent::page;
use crate::report::html;
use crate::session::Live;

/// The session reports its counts every 400 ms: without a report for this
/// long, its loop is stuck and /healthz says so.
const STALE_AFTER: Duration = Duration::from_secs(10);

type TypeLabel = Vec<(&'static str, &'static str)>;
type SinkLabel = Vec<(&'static str, &'static str)>;

/// The `type` label of each kind of finding (as `alerts::kind` names
/// them). Their series exist from the start at 0: Prometheus's
/// `increase()` cannot see a counter's first value, so a series born at 1
/// would never fire a rule over it.
pub const FINDING_TYPES: [&str; 5] = [
    "inversion",
    "deadlock",
    "lock_wait_timeout",
    "self_deadlock",
    "same_class_nesting",
];

pub struct Metrics {
    registry: Registry,
    findings: Family<TypeLabel, Counter>,
    findings_suppressed: Family<TypeLabel, Counter>,
    events: Counter,
    events_lost: Counter,
    dependencies_dropped: Counter,
    locks_evicted: Counter,
    dependencies_evicted: Counter,
    lock_dependencies: Gauge,
    locks: Gauge,
    lock_classes: Gauge,
    traced_processes: Gauge,
    probed_files: Gauge,
    deadlocked_threads: Gauge,
    waits_over_threshold: Gauge,
    contention: Arc<ClassContention>,
    pub alerts_sent: Counter,
    pub alerts_failed: Counter,
    pub alerts_dropped: Counter,
    /// Class dependencies the state stopped keeping (the oldest, beyond
    /// its bound).
    pub saved_dependencies_dropped: Counter,
    /// By sink (`file`, `journald`, `webhook`): findings a sink failed to
    /// take (a write, a send, an attempt, a full queue).
    sink_failures: Family<SinkLabel, Counter>,
    /// Probes attached and armed.
    ready: AtomicBool,
    started: Instant,
    /// Milliseconds after `started` of the session's last report.
    last_progress_ms: AtomicU64,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("locktrace");
        let m = Metrics {
            registry: Registry::default(),
            findings: Family::default(),
            findings_suppressed: Family::default(),
            events: Counter::default(),
            events_lost: Counter::default(),
            dependencies_dropped: Counter::default(),
            locks_evicted: Counter::default(),
            dependencies_evicted: Counter::default(),
            lock_dependencies: Gauge::default(),
            locks: Gauge::default(),
            lock_classes: Gauge::default(),
            traced_processes: Gauge::default(),
            probed_files: Gauge::default(),
            deadlocked_threads: Gauge::default(),
            waits_over_threshold: Gauge::default(),
            contention: Arc::default(),
            alerts_sent: Counter::default(),
            alerts_failed: Counter::default(),
            alerts_dropped: Counter::default(),
            saved_dependencies_dropped: Counter::default(),
            sink_failures: Family::default(),
            ready: AtomicBool::new(false),
            started: Instant::now(),
            last_progress_ms: AtomicU64::new(0),
        };
        registry.register(
            "findings",
            "Findings reported (warnings; notes are not counted), by type",
            m.findings.clone(),
        );
        registry.register(
            "findings_suppressed",
            "Findings matched by a suppression ([suppress]): reported, not alerted on nor counted in findings_total, by type",
            m.findings_suppressed.clone(),
        );
        registry.register(
            "events",
            "Lock operations seen by the probes (acquisitions and releases)",
            m.events.clone(),
        );
        registry.register(
            "events_lost",
            "Lock events lost (ring buffer full) or undecodable",
            m.events_lost.clone(),
        );
        registry.register(
            "dependencies_dropped",
            "Dependencies not kept in the instance graph, at its cap ([trace] max_locks, max_dependencies), where evicting made no room; the class graph still has them",
            m.dependencies_dropped.clone(),
        );
        registry.register(
            "locks_evicted",
            "Cold lock instances evicted from the instance graph at its cap (the least recently used first); the class graph keeps what they taught",
            m.locks_evicted.clone(),
        );
        registry.register(
            "dependencies_evicted",
            "Dependencies that left the instance graph with the lock instances evicted at its cap",
            m.dependencies_evicted.clone(),
        );
        registry.register(
            "lock_dependencies",
            "Distinct dependencies added to the lock-order graph",
            m.lock_dependencies.clone(),
        );
        registry.register(
            "locks",
            "Lock instances added to the lock-order graph",
            m.locks.clone(),
        );
        registry.register("lock_classes", "Lock classes known", m.lock_classes.clone());
        registry.register(
            "traced_processes",
            "Processes in the tracing scope",
            m.traced_processes.clone(),
        );
        registry.register(
            "probed_files",
            "Files with lock probes (each libc, --binary files)",
            m.probed_files.clone(),
        );
        registry.register(
            "deadlocked_threads",
            "Threads in a deadlock found by the wait-for scan and still blocked",
            m.deadlocked_threads.clone(),
        );
        registry.register(
            "lock_waits_over_threshold",
            "Threads waiting for a lock longer than the hang threshold now (deadlocked ones included)",
            m.waits_over_threshold.clone(),
        );
        registry.register_collector(Box::new(m.contention.clone()));
        registry.register(
            "alerts_sent",
            "Alerts accepted by Alertmanager",
            m.alerts_sent.clone(),
        );
        registry.register(
            "alerts_failed",
            "Alerts not delivered by an attempt (Alertmanager unreachable or refusing); retried",
            m.alerts_failed.clone(),
        );
        registry.register(
            "alerts_dropped",
            "Alerts dropped undelivered: the queue was full while Alertmanager was down",
            m.alerts_dropped.clone(),
        );
        registry.register(
            "saved_dependencies_dropped",
            "Class dependencies learned that the state file no longer keeps (the oldest, beyond its bound): a restart forgets them",
            m.saved_dependencies_dropped.clone(),
        );
        registry.register(
            "sink_failures",
            "Findings a sink failed to take (a failed write, send or delivery attempt, a full queue), by sink",
            m.sink_failures.clone(),
        );
        registry.register(
            "build",
            "The agent's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        for kind in FINDING_TYPES {
            // The guards returned are dropped at once.
            let _ = m.findings.get_or_create(&vec![("type", kind)]);
            let _ = m.findings_suppressed.get_or_create(&vec![("type", kind)]);
        }
        Metrics { registry, ..m }
    }

    pub fn count_finding(&self, kind: &'static str) {
        self.findings.get_or_create(&vec![("type", kind)]).inc();
    }

    pub fn count_suppressed(&self, kind: &'static str) {
        self.findings_suppressed
            .get_or_create(&vec![("type", kind)])
            .inc();
    }

    /// The failure counter of `sink` (created at 0, so that a configured
    /// sink shows on /metrics before its first failure).
    pub fn sink_failures(&self, sink: &'static str) -> Counter {
        self.sink_failures
            .get_or_create(&vec![("sink", sink)])
            .clone()
    }

    /// The session's counts: gauges set, counters moved by what they grew
    /// since `before`.
    pub fn set_live(&self, live: &Live, before: &Live) {
        self.events
            .inc_by(live.events.saturating_sub(before.events));
        self.events_lost
            .inc_by(live.lost_events.saturating_sub(before.lost_events));
        self.dependencies_dropped.inc_by(
            live.dropped_dependencies
                .saturating_sub(before.dropped_dependencies),
        );
        self.locks_evicted
            .inc_by(live.evicted_locks.saturating_sub(before.evicted_locks));
        self.dependencies_evicted.inc_by(
            live.evicted_dependencies
                .saturating_sub(before.evicted_dependencies),
        );
        self.lock_dependencies.set(live.dependencies as i64);
        self.locks.set(live.locks as i64);
        self.lock_classes.set(live.lock_classes as i64);
        self.traced_processes.set(live.traced_processes as i64);
        self.probed_files.set(live.probed_files as i64);
        self.deadlocked_threads.set(live.deadlocked_threads as i64);
        self.waits_over_threshold
            .set(live.waits_over_threshold as i64);
        self.contention.add(&live.class_waits);
        let now = self.started.elapsed().as_millis() as u64;
        self.last_progress_ms.store(now.max(1), Ordering::Relaxed);
    }

    /// The probes are attached and armed.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    fn healthy(&self) -> Result<(), String> {
        if !self.ready.load(Ordering::Relaxed) {
            return Err("probes not attached yet".into());
        }
        let last = self.last_progress_ms.load(Ordering::Relaxed);
        let now = self.started.elapsed().as_millis() as u64;
        if last == 0 || now.saturating_sub(last) > STALE_AFTER.as_millis() as u64 {
            // Right after start, the first scan is due within a second.
            if last == 0 && now < STALE_AFTER.as_millis() as u64 {
                return Ok(());
            }
            return Err(format!(
                "the tracing loop has not reported for {:.1}s",
                now.saturating_sub(last) as f64 / 1e3
            ));
        }
        Ok(())
    }

    fn respond(&self, path: &str) -> Response<Full<Bytes>> {
        let reply = |status: StatusCode, content_type: &str, body: String| {
            Response::builder()
                .status(status)
                .header("content-type", content_type)
                .body(Full::new(Bytes::from(body)))
                .expect("a valid response")
        };
        let text = "text/plain; charset=utf-8";
        match path {
            "/metrics" => {
                let mut body = String::new();
                match encode(&mut body, &self.registry) {
                    Ok(()) => reply(
                        StatusCode::OK,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        body,
                    ),
                    Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, text, e.to_string()),
                }
            }
            "/healthz" => match self.healthy() {
                Ok(()) => reply(StatusCode::OK, text, "ok\n".into()),
                Err(why) => reply(StatusCode::SERVICE_UNAVAILABLE, text, why + "\n"),
            },
            "/readyz" if self.ready.load(Ordering::Relaxed) => {
                reply(StatusCode::OK, text, "ready\n".into())
            }
            "/readyz" => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                text,
                "probes not attached yet\n".into(),
            ),
            _ => reply(
                StatusCode::NOT_FOUND,
                text,
                "/metrics, /healthz, /readyz, /report\n".into(),
            ),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves the endpoints on `listener` until the runtime stops: the
/// metrics and probes from `metrics`, /report from `findings`.
pub async fn serve(
    listener: std::net::TcpListener,
    metrics: Arc<Metrics>,
    findings: page::Shared,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    // One page rendered at a time (each runs Graphviz per finding).
    let turn = Arc::new(tokio::sync::Semaphore::new(1));
    loop {
        let (stream, peer) = listener.accept().await?;
        let metrics = metrics.clone();
        let findings = findings.clone();
        let turn = turn.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                let findings = findings.clone();
                let turn = turn.clone();
                async move {
                    let response = match req.uri().path() {
                        "/report" => report_page(&findings, &turn).await,
                        path => metrics.respond(path),
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, "metrics connection: {e}");
            }
        });
    }
}

/// /report: the page of `locktrace report --format html` for the live
/// findings, with its Content-Security-Policy as a header too.
async fn report_page(
    findings: &page::Shared,
    turn: &tokio::sync::Semaphore,
) -> Response<Full<Bytes>> {
    let _turn = turn.acquire().await;
    let snapshot = page::snapshot(findings);
    let (status, content_type, body) =
        match tokio::task::spawn_blocking(move || page::render(&snapshot)).await {
            Ok(page) => (StatusCode::OK, "text/html; charset=utf-8", page),
            Err(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain; charset=utf-8",
                format!("the report could not be made: {e}\n").into_bytes(),
            ),
        };
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-security-policy", html::CSP)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_text_has_the_documented_names() {
        let m = Metrics::new();
        m.count_finding("inversion");
        m.count_suppressed("deadlock");
        let live = Live {
            events: 10,
            lost_events: 1,
            dependencies: 2,
            locks: 3,
            lock_classes: 4,
            dropped_dependencies: 6,
            evicted_locks: 7,
            evicted_dependencies: 8,
            traced_processes: 5,
            probed_files: 1,
            deadlocked_threads: 2,
            waits_over_threshold: 3,
            class_waits: vec![(Some("ab_ba:mutex_a".into()), 1_500_000_000)],
        };
        m.set_live(&live, &Live::default());
        m.set_live(
            &Live {
                class_waits: Vec::new(),
                ..live.clone()
            },
            &live,
        );
        let mut text = String::new();
        encode(&mut text, &m.registry).unwrap();
        for line in [
            "locktrace_findings_total{type=\"inversion\"} 1",
            "locktrace_findings_suppressed_total{type=\"deadlock\"} 1",
            "locktrace_findings_total{type=\"deadlock\"} 0",
            "locktrace_findings_total{type=\"same_class_nesting\"} 0",
            "locktrace_events_total 10",
            "locktrace_events_lost_total 1",
            "locktrace_lock_dependencies 2",
            "locktrace_dependencies_dropped_total 6",
            "locktrace_locks_evicted_total 7",
            "locktrace_dependencies_evicted_total 8",
            "locktrace_locks 3",
            "locktrace_lock_classes 4",
            "locktrace_traced_processes 5",
            "locktrace_probed_files 1",
            "locktrace_deadlocked_threads 2",
            "locktrace_lock_waits_over_threshold 3",
            "locktrace_lock_wait_seconds_total{class=\"ab_ba:mutex_a\"} 1.5",
            "locktrace_lock_wait_seconds_total{class=\"other\"} 0.0",
            "locktrace_alerts_sent_total 0",
            "locktrace_alerts_failed_total 0",
            "locktrace_build_info{version=",
        ] {
            assert!(text.contains(line), "no `{line}` in\n{text}");
        }
    }
}
