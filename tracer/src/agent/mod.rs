//! `locktrace agent`: host-wide tracing as a service. The session (the same
//! as `watch`'s) tells an [`Observer`] of each finding and of its counts;
//! the agent turns them into Prometheus metrics (`metrics`) and
//! Alertmanager alerts (`alerts`, `sender`), served and sent from a thread
//! of their own so that neither a scraper nor a down Alertmanager slows
//! tracing. `notify` speaks systemd's readiness protocol.

pub mod alerts;
pub mod config;
pub mod metrics;
pub mod notify;
pub mod sender;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use tokio::sync::mpsc;
use tracing::{info, warn};

pub use config::Config;

use crate::report::Finding;
use crate::session::{Live, Observer};
use alerts::Alert;
use metrics::Metrics;

/// Where an alert's `runbook_url` points: the README section on reading
/// findings, in the installed documentation.
pub const RUNBOOK_URL: &str = "file:///usr/share/doc/locktrace/README.md#run-as-an-agent";

/// The agent's endpoints and alert delivery, running beside the session.
pub struct Agent {
    metrics: Arc<Metrics>,
    alerts: Option<mpsc::Sender<Alert>>,
    done: std::sync::mpsc::Receiver<()>,
    host: String,
    inversion_active: Duration,
}

impl Agent {
    /// Binds the metrics address (an error if taken) and starts the thread
    /// serving it and sending alerts. /readyz answers 503 until [`Agent::ready`].
    pub fn start(config: &Config) -> Result<Agent> {
        let listener = TcpListener::bind(config.metrics_listen).with_context(|| {
            format!(
                "cannot listen on {} ([metrics] listen)",
                config.metrics_listen
            )
        })?;
        let metrics = Arc::new(Metrics::new());
        let (alerts, receiver) = match &config.alertmanager {
            Some(am) => {
                let (tx, rx) = mpsc::channel(am.queue);
                (Some(tx), Some((am.clone(), rx)))
            }
            None => (None, None),
        };
        let (done_tx, done) = std::sync::mpsc::channel();
        let served = metrics.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the agent's async runtime")?;
        std::thread::Builder::new()
            .name("locktrace-agent".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let server = tokio::spawn(metrics::serve(listener, served.clone()));
                    if let Some((am, rx)) = receiver {
                        sender::deliver(am.base, am.queue, rx, served).await;
                    } else if let Ok(Err(e)) = server.await {
                        warn!("the metrics endpoint stopped: {e}");
                    }
                });
                let _ = done_tx.send(());
            })
            .context("cannot start the agent's thread")?;
        info!(
            "metrics on http://{}/metrics, alerts to {}",
            config.metrics_listen,
            config
                .alertmanager
                .as_ref()
                .map_or("nowhere", |a| a.base.as_str())
        );
        Ok(Agent {
            metrics,
            alerts,
            done,
            host: config.host.clone(),
            inversion_active: config
                .alertmanager
                .as_ref()
                .map_or(Duration::ZERO, |a| a.inversion_active),
        })
    }

    /// The probes are attached: /readyz says so, and systemd is told.
    pub fn ready(&self) {
        self.metrics.set_ready();
        notify::notify("READY=1\nSTATUS=tracing");
    }

    /// What the session reports to.
    pub fn observer(&mut self) -> Box<dyn Observer> {
        Box::new(AgentObserver {
            metrics: self.metrics.clone(),
            alerts: self.alerts.take(),
            before: Live::default(),
            blocked: Vec::new(),
            host: self.host.clone(),
            active_for: self.inversion_active,
        })
    }

    /// After the session (and its observer) is gone: waits for the alerts
    /// still queued to be delivered, for a bounded time.
    pub fn finish(self) {
        notify::notify("STOPPING=1");
        drop(self.alerts);
        let _ = self
            .done
            .recv_timeout(sender::FLUSH_LIMIT + Duration::from_secs(1));
    }
}

struct AgentObserver {
    metrics: Arc<Metrics>,
    alerts: Option<mpsc::Sender<Alert>>,
    before: Live,
    /// Alerts of deadlocks and hangs still active, by process: resolved
    /// (sent again, ending now) once the process is gone.
    blocked: Vec<(u32, Alert)>,
    host: String,
    active_for: Duration,
}

impl AgentObserver {
    fn send(&self, alert: Alert) {
        if let Some(tx) = &self.alerts {
            if tx.try_send(alert).is_err() {
                self.metrics.alerts_dropped.inc();
            }
        }
    }

    /// Deadlocked or hung threads stay blocked until their process ends
    /// (killed or restarted): then their alert is resolved.
    fn resolve_cleared(&mut self) {
        let now = SystemTime::now();
        let (gone, live): (Vec<_>, Vec<_>) = std::mem::take(&mut self.blocked)
            .into_iter()
            .partition(|(pid, _)| !std::path::Path::new(&format!("/proc/{pid}")).exists());
        self.blocked = live;
        for (_, mut alert) in gone {
            alert.ends_at = alerts::rfc3339(now);
            self.send(alert);
        }
    }
}

impl Observer for AgentObserver {
    fn finding(&mut self, finding: &Finding, alarm: bool) {
        // Notes (a guarded cycle, a nesting in one address order) are in
        // the report only.
        let Some((kind, _)) = alerts::kind(finding).filter(|_| alarm) else {
            return;
        };
        self.metrics.count_finding(kind);
        if self.alerts.is_none() {
            return;
        }
        let ctx = alerts::Context {
            host: &self.host,
            runbook_url: RUNBOOK_URL,
            active_for: self.active_for,
        };
        let Some(alert) = alerts::alert(finding, &ctx, SystemTime::now()) else {
            return;
        };
        match finding {
            Finding::Deadlock(d) => self.blocked.push((d.pid, alert.clone())),
            Finding::LockWaitTimeout(t) => self.blocked.push((t.pid, alert.clone())),
            _ => {}
        }
        self.send(alert);
    }

    fn progress(&mut self, live: &Live) {
        self.metrics.set_live(live, &self.before);
        self.before = live.clone();
        self.resolve_cleared();
    }
}
