//! `locktrace agent`: host-wide tracing as a service. The session (the same
//! as `watch`'s) tells an [`Observer`] of each finding and of its counts;
//! the agent turns them into Prometheus metrics (`metrics`) and
//! Alertmanager alerts (`alerts`, `sender`), served and sent from a thread
//! of their own so that neither a scraper nor a down Alertmanager slows
//! tracing; the last findings are kept for the HTML page at /report
//! (`page`). `notify` speaks systemd's readiness protocol. Findings also
//! go to the other sinks: the rotated findings file (`rotate`), journald
//! (`journal`) and a webhook (`webhook`); each counts its own failures and
//! none waits for another. `privileges` drops the capabilities not needed
//! once the probes are attached.

pub mod alerts;
pub mod config;
pub mod contention;
pub mod journal;
pub mod metrics;
pub mod notify;
pub mod page;
pub mod privileges;
pub mod rotate;
pub mod sender;
pub mod state;
pub mod suppress;
pub mod webhook;

use std::io::Write;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

pub use config::Config;

use crate::kernel::load::Filter;
use crate::report::json;
use crate::report::Finding;
use crate::session::{Change, LearnedOrder, Live, Observer};
use alerts::Alert;
use journal::Journal;
use metrics::Metrics;
use state::{Saved, State};
use suppress::Suppressions;

/// Where an alert's `runbook_url` points: the README section on reading
/// findings, in the installed documentation.
pub const RUNBOOK_URL: &str = "file:///usr/share/doc/locktrace/README.md#run-as-an-agent";

/// The agent's endpoints and alert delivery, running beside the session.
pub struct Agent {
    metrics: Arc<Metrics>,
    /// The findings /report shows.
    page: page::Shared,
    alerts: Option<mpsc::Sender<Alert>>,
    /// To the webhook's delivery: each finding's JSON line.
    webhook: Option<mpsc::Sender<Vec<u8>>>,
    journal: Option<Journal>,
    /// Told once by the deliveries started with the agent (alerts,
    /// webhook), once by each delivery a SIGHUP started and once by each
    /// journald thread, when they are done.
    done: std::sync::mpsc::Receiver<()>,
    done_tx: std::sync::mpsc::Sender<()>,
    /// How many times `done` will be told.
    expected_done: usize,
    /// The agent's runtime, where the deliveries a SIGHUP starts run.
    runtime: tokio::runtime::Handle,
    /// The findings file (or standard output) the session writes to.
    output: Option<rotate::Switchable>,
    host: String,
    inversion_active: Duration,
    resend_interval: Duration,
    /// What earlier runs alerted on, and their alerts still active.
    state: Option<(State, Vec<Saved>)>,
    /// The configuration in force (what a SIGHUP changed included).
    config: Config,
    /// To the observer: what a SIGHUP changed.
    reloads: std::sync::mpsc::Sender<Reload>,
    reloaded: Option<std::sync::mpsc::Receiver<Reload>>,
    /// To the session: the filter, hang threshold and report sink a
    /// SIGHUP changed.
    changes: std::sync::mpsc::Sender<Change>,
    changed: Option<std::sync::mpsc::Receiver<Change>>,
}

/// What a SIGHUP changes while tracing goes on (the graphs, the probes
/// and the active alerts are kept).
struct Reload {
    suppressions: Suppressions,
    host: String,
    active_for: Duration,
    resend_every: Duration,
    /// The sinks a SIGHUP changed: `Some(new)` replaces the running one
    /// (whose delivery sends what it has queued, then ends).
    sinks: Sinks,
}

#[derive(Default)]
struct Sinks {
    alerts: Option<Option<mpsc::Sender<Alert>>>,
    webhook: Option<Option<mpsc::Sender<Vec<u8>>>>,
    journal: Option<Option<Journal>>,
}

impl Reload {
    fn of(config: &Config) -> Result<Reload> {
        Ok(Reload {
            suppressions: Suppressions::new(&config.suppress_fingerprints, &config.suppress_frames)
                .map_err(|e| anyhow::anyhow!("[suppress] frames: {e}"))?,
            host: config.host.clone(),
            active_for: config
                .alertmanager
                .as_ref()
                .map_or(Duration::ZERO, |a| a.inversion_active),
            resend_every: config
                .alertmanager
                .as_ref()
                .map_or(Duration::MAX, |a| a.resend_interval),
            sinks: Sinks::default(),
        })
    }
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
        let page = page::LiveFindings::new(&config.host, page::KEPT);
        let served_page = page.clone();
        let state = State::load(&config.state_dir);
        let (reloads, reloaded) = std::sync::mpsc::channel();
        let (changes, changed) = std::sync::mpsc::channel();
        reloads
            .send(Reload::of(config)?)
            .expect("the receiver is here");
        let (alerts, receiver) = match &config.alertmanager {
            Some(am) => {
                let (tx, rx) = mpsc::channel(am.queue);
                (Some(tx), Some((am.clone(), rx)))
            }
            None => (None, None),
        };
        let (webhook, hook_receiver) = match &config.webhook {
            Some(w) => {
                let (tx, rx) = mpsc::channel(w.queue);
                (Some(tx), Some((w.clone(), rx)))
            }
            None => (None, None),
        };
        let (done_tx, done) = std::sync::mpsc::channel();
        let journal = if config.journald {
            Journal::start(metrics.sink_failures("journald"), done_tx.clone())?
        } else {
            None
        };
        let expected_done = 1 + usize::from(journal.is_some());
        let delivered = done_tx.clone();
        let hook_failures = metrics.sink_failures("webhook");
        if config.output.is_some() {
            metrics.sink_failures("file");
        }
        let served = metrics.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the agent's async runtime")?;
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("locktrace-agent".into())
            .spawn(move || {
                privileges::drop_all_in_this_thread();
                runtime.block_on(async move {
                    let server =
                        tokio::spawn(metrics::serve(listener, served.clone(), served_page));
                    let alerts = receiver.map(|(am, rx)| {
                        tokio::spawn(sender::deliver(am.base, am.queue, rx, served))
                    });
                    let hook = hook_receiver.map(|(w, rx)| {
                        tokio::spawn(webhook::deliver(w.url, w.queue, rx, hook_failures))
                    });
                    for delivery in [alerts, hook].into_iter().flatten() {
                        let _ = delivery.await;
                    }
                    let _ = delivered.send(());
                    // Serving goes on until the process exits.
                    if let Ok(Err(e)) = server.await {
                        warn!("the metrics endpoint stopped: {e}");
                    }
                });
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
            page,
            alerts,
            webhook,
            journal,
            done,
            done_tx,
            expected_done,
            runtime: handle,
            output: None,
            host: config.host.clone(),
            inversion_active: config
                .alertmanager
                .as_ref()
                .map_or(Duration::ZERO, |a| a.inversion_active),
            resend_interval: config
                .alertmanager
                .as_ref()
                .map_or(Duration::MAX, |a| a.resend_interval),
            state: Some(state),
            config: config.clone(),
            reloads,
            reloaded: Some(reloaded),
            changes,
            changed: Some(changed),
        })
    }

    /// Where the session writes its report: `[report] output`, appended to
    /// and rotated by size (failures counted, never fatal once open), else
    /// standard output.
    /// A SIGHUP may put another file in its place.
    pub fn report_output(&mut self) -> Result<Box<dyn Write + Send>> {
        let output = rotate::Switchable::new(self.open_output(&self.config)?);
        self.output = Some(output.clone());
        Ok(Box::new(output))
    }

    fn open_output(&self, c: &Config) -> Result<Box<dyn Write + Send>> {
        Ok(match &c.output {
            Some(path) => Box::new(rotate::RotatingFile::open(
                path,
                c.max_size,
                c.keep,
                c.force,
                self.metrics.sink_failures("file"),
            )?),
            None => Box::new(std::io::stdout()),
        })
    }

    /// The sinks `new` changes, started (an error, a findings file
    /// refused, changes nothing): the findings file to switch to, and the
    /// deliveries and journald sink the observer is to take.
    fn new_sinks(&mut self, new: &Config) -> Result<(Option<Box<dyn Write + Send>>, Sinks)> {
        let old = &self.config;
        let file = |c: &Config| (c.output.clone(), c.force, c.max_size, c.keep);
        let am = |c: &Config| c.alertmanager.as_ref().map(|a| (a.base.clone(), a.queue));
        let (file_changed, journald_changed, webhook_changed, am_changed) = (
            file(old) != file(new),
            old.journald != new.journald,
            old.webhook != new.webhook,
            am(old) != am(new),
        );
        let output = match file_changed {
            true => Some(self.open_output(new).context("[report] output")?),
            false => None,
        };
        let mut sinks = Sinks::default();
        if journald_changed {
            let journal = match new.journald {
                true => {
                    Journal::start(self.metrics.sink_failures("journald"), self.done_tx.clone())?
                }
                false => None,
            };
            self.expected_done += usize::from(journal.is_some());
            sinks.journal = Some(journal);
        }
        if webhook_changed {
            sinks.webhook = Some(new.webhook.as_ref().map(|w| {
                let (tx, rx) = mpsc::channel(w.queue);
                let failures = self.metrics.sink_failures("webhook");
                self.spawn_delivery(webhook::deliver(w.url.clone(), w.queue, rx, failures));
                tx
            }));
        }
        if am_changed {
            sinks.alerts = Some(new.alertmanager.as_ref().map(|a| {
                let (tx, rx) = mpsc::channel(a.queue);
                let metrics = self.metrics.clone();
                self.spawn_delivery(sender::deliver(a.base.clone(), a.queue, rx, metrics));
                tx
            }));
        }
        Ok((output, sinks))
    }

    /// Runs `delivery` on the agent's runtime; it says when it is done.
    fn spawn_delivery(&mut self, delivery: impl std::future::Future<Output = ()> + Send + 'static) {
        let done = self.done_tx.clone();
        self.expected_done += 1;
        self.runtime.spawn(async move {
            delivery.await;
            let _ = done.send(());
        });
    }

    /// The probes are attached: /readyz says so, and systemd is told.
    pub fn ready(&self) {
        self.metrics.set_ready();
        notify::notify("READY=1\nSTATUS=tracing");
    }

    /// The class dependencies earlier runs learned, for the session to
    /// restore before it starts.
    pub fn restored_class_graph(&self) -> Vec<LearnedOrder> {
        let orders = self
            .state
            .as_ref()
            .map_or_else(Vec::new, |(state, _)| state.restored_orders());
        if !orders.is_empty() {
            info!(
                "{} class dependencies learned before restored from the state",
                orders.len()
            );
        }
        orders
    }

    /// What the session takes its reloads from.
    pub fn changes(&mut self) -> std::sync::mpsc::Receiver<Change> {
        self.changed.take().expect("one session")
    }

    /// What the session reports to.
    pub fn observer(&mut self) -> Box<dyn Observer> {
        let (state, saved) = self.state.take().expect("one observer");
        let active: Vec<Active> = saved
            .into_iter()
            .map(|s| Active {
                alert: s.alert,
                blocked: None,
                until: state::from_unix(s.until),
            })
            .collect();
        let last_resend = if active.is_empty() {
            Some(Instant::now())
        } else {
            None
        };
        Box::new(AgentObserver {
            metrics: self.metrics.clone(),
            page: self.page.clone(),
            alerts: self.alerts.take(),
            webhook: self.webhook.take(),
            webhook_failures: self.metrics.sink_failures("webhook"),
            journal: self.journal.take(),
            before: Live::default(),
            active,
            host: self.host.clone(),
            active_for: self.inversion_active,
            resend_every: self.resend_interval,
            // The alerts a previous run left active go out at once: the
            // Alertmanager may have restarted with the host. Without any,
            // the first re-send is one interval after the start (an alert
            // made before the first progress report was sent again at once:
            // two sends of one new alert, seen in a clean-clone run).
            last_resend,
            state,
            suppressions: Suppressions::default(),
            reloads: self.reloaded.take().expect("one observer"),
        })
    }

    /// SIGHUP: `new` (the config file read again, the flags applied) takes
    /// over what can change while tracing goes on: the trace filters, the
    /// hang threshold, the memory caps, suppressions, the `host` label,
    /// `inversion_active`, `resend_interval` and the sinks (the findings
    /// file and its rotation, the Alertmanager and webhook URLs and queues,
    /// journald on or off: a replaced delivery sends what it has queued,
    /// then ends). A key that takes a restart keeps its running value, with
    /// a warning naming it. Whatever is wrong with the new values (a pid
    /// gone, a cgroup that is none, a report file refused) keeps the whole
    /// configuration in force.
    pub fn reload(&mut self, new: Config) {
        let prepared = Reload::of(&new)
            .and_then(|r| Ok((r, self.change(&new)?)))
            .and_then(|r| Ok((r, self.new_sinks(&new)?)));
        let ((mut reload, (change, kept_filter)), (output, sinks)) = match prepared {
            Ok(r) => r,
            Err(e) => {
                error!("SIGHUP: {e:#}; keeping the configuration in force");
                return;
            }
        };
        let new_sinks: Vec<&str> = [
            ("report", output.is_some()),
            ("alertmanager", sinks.alerts.is_some()),
            ("webhook", sinks.webhook.is_some()),
            ("journald", sinks.journal.is_some()),
        ]
        .into_iter()
        .filter_map(|(sink, changed)| changed.then_some(sink))
        .collect();
        if let (Some(out), Some(running)) = (output, &self.output) {
            running.switch(out);
        }
        reload.sinks = sinks;
        let old = &self.config;
        let restart: Vec<&str> = [
            ("trace filters (host-wide or not)", kept_filter),
            ("trace.watch_free", old.watch_free != new.watch_free),
            ("metrics.listen", old.metrics_listen != new.metrics_listen),
            ("report.format", old.format != new.format),
            ("agent.state_dir", old.state_dir != new.state_dir),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect();
        if !restart.is_empty() {
            warn!(
                "SIGHUP: {} changed: kept as started (a restart applies it)",
                restart.join(", ")
            );
        }
        info!(
            "SIGHUP: configuration reloaded ({} suppressions{}{}{}{})",
            reload.suppressions.len(),
            if change.filter.is_some() {
                ", new trace filters"
            } else {
                ""
            },
            if change.hang_threshold.is_some() {
                ", new hang threshold"
            } else {
                ""
            },
            if change.caps.is_some() {
                ", new caps"
            } else {
                ""
            },
            if new_sinks.is_empty() {
                String::new()
            } else {
                format!(", new sinks: {}", new_sinks.join(", "))
            },
        );
        let _ = self.reloads.send(reload);
        let _ = self.changes.send(change);
        let mut config = new;
        if kept_filter {
            config.comms = old.comms.clone();
            config.cgroups = old.cgroups.clone();
            config.pids = old.pids.clone();
        }
        config.watch_free = old.watch_free;
        config.metrics_listen = old.metrics_listen;
        config.format = old.format;
        config.state_dir = old.state_dir.clone();
        self.config = config;
    }

    /// What `new` changes in the session, and whether its trace filters
    /// changed in a way only a restart applies: from host-wide to filtered
    /// or back (the kernel side is loaded for one or the other).
    fn change(&self, new: &Config) -> Result<(Change, bool)> {
        let old = &self.config;
        let filters = |c: &Config| (c.comms.clone(), c.cgroups.clone(), c.pids.clone());
        let host_wide =
            |c: &Config| c.comms.is_empty() && c.cgroups.is_empty() && c.pids.is_empty();
        let mut change = Change::default();
        let mut kept_filter = false;
        if filters(old) != filters(new) {
            if host_wide(old) || host_wide(new) {
                kept_filter = true;
            } else {
                let pids = new
                    .pids
                    .iter()
                    .map(|&p| crate::host::preflight::process_of(p))
                    .collect::<Result<Vec<_>>>()
                    .context("[trace] pids")?;
                change.filter = Some(Filter::naming(&pids, &new.comms, &new.cgroups)?);
            }
        }
        let caps = |c: &Config| (c.max_locks, c.max_dependencies);
        if caps(old) != caps(new) {
            change.caps = Some(caps(new));
        }
        if old.hang_threshold != new.hang_threshold {
            change.hang_threshold = Some(new.hang_threshold);
        }
        Ok((change, kept_filter))
    }

    /// After the session (and its observer) is gone: waits for the alerts
    /// still queued to be delivered, for a bounded time.
    pub fn finish(self) {
        notify::notify("STOPPING=1");
        drop(self.alerts);
        drop(self.webhook);
        drop(self.journal);
        let deadline = Instant::now() + sender::FLUSH_LIMIT + Duration::from_secs(1);
        // The deliveries' word, and each journald thread's.
        for _ in 0..self.expected_done {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.done.recv_timeout(left).is_err() {
                break;
            }
        }
    }
}

/// Alerts kept for re-sending; beyond this the oldest is no longer re-sent
/// (Alertmanager keeps it until its `endsAt` all the same).
const MAX_ACTIVE: usize = 10_000;
/// A deadlock or hang alert says it ends this many re-send intervals after
/// each (re-)send, as Prometheus does: should the agent stop, Alertmanager
/// resolves it by itself.
const BLOCKED_ENDS_AFTER_RESENDS: u32 = 4;
/// A deadlock or hang has cleared once its waits are missing from this
/// many scans in a row (one scan could miss a thread that a signal woke
/// for an instant).
const CLEARED_AFTER_SCANS: u32 = 2;

/// An alert still active: sent again every re-send interval with its first
/// `startsAt`, so that an Alertmanager restarted meanwhile (it keeps alerts
/// in memory) has it again.
struct Active {
    alert: Alert,
    /// A deadlock or hang: active while its threads wait. Otherwise the
    /// alert ends at its `endsAt` (an inversion: `inversion_active`).
    blocked: Option<Blocked>,
    /// When it stops being re-sent (non-blocked alerts).
    until: SystemTime,
}

struct Blocked {
    pid: u32,
    /// The waits (tid, lock address) of the finding's threads.
    waits: Vec<(u32, u64)>,
    /// Scans in a row that missed one of them.
    missed: u32,
}

impl Blocked {
    fn of(finding: &Finding) -> Option<Blocked> {
        let (pid, threads) = match finding {
            Finding::Deadlock(d) => (d.pid, d.threads.iter().collect::<Vec<_>>()),
            Finding::LockWaitTimeout(t) => (t.pid, vec![&t.waiter]),
            _ => return None,
        };
        Some(Blocked {
            pid,
            waits: threads
                .iter()
                .filter_map(|t| Some((t.tid, t.waits_for.as_ref()?.addr)))
                .collect(),
            missed: 0,
        })
    }
}

struct AgentObserver {
    metrics: Arc<Metrics>,
    page: page::Shared,
    alerts: Option<mpsc::Sender<Alert>>,
    webhook: Option<mpsc::Sender<Vec<u8>>>,
    webhook_failures: prometheus_client::metrics::counter::Counter,
    journal: Option<Journal>,
    before: Live,
    /// Alerts still active, re-sent every `resend_every`. Those of
    /// deadlocks and hangs are resolved (sent again, ending now) once their
    /// waits end or their process is gone.
    active: Vec<Active>,
    host: String,
    active_for: Duration,
    resend_every: Duration,
    last_resend: Option<Instant>,
    state: State,
    suppressions: Suppressions,
    reloads: std::sync::mpsc::Receiver<Reload>,
}

impl AgentObserver {
    fn send(&self, alert: Alert) {
        if let Some(tx) = &self.alerts {
            if tx.try_send(alert).is_err() {
                self.metrics.alerts_dropped.inc();
            }
        }
    }

    /// Takes what SIGHUPs changed.
    fn apply_reloads(&mut self) {
        while let Ok(r) = self.reloads.try_recv() {
            self.suppressions = r.suppressions;
            self.host = r.host;
            self.active_for = r.active_for;
            self.resend_every = r.resend_every;
            // A sink replaced: the old one's delivery (or thread) sends
            // what it has queued, then ends.
            if let Some(alerts) = r.sinks.alerts {
                self.alerts = alerts;
            }
            if let Some(webhook) = r.sinks.webhook {
                self.webhook = webhook;
            }
            if let Some(journal) = r.sinks.journal {
                self.journal = journal;
            }
        }
    }

    /// Resolves the deadlocks and hangs whose process is gone.
    fn resolve_exited(&mut self) {
        self.resolve(|b| !std::path::Path::new(&format!("/proc/{}", b.pid)).exists());
    }

    /// Sends the alerts of the deadlocks and hangs `cleared` says are over
    /// once more, ending now, and stops re-sending them.
    fn resolve(&mut self, mut cleared: impl FnMut(&mut Blocked) -> bool) {
        let now = alerts::rfc3339(SystemTime::now());
        let mut resolved = Vec::new();
        self.active.retain_mut(|a| {
            let Some(b) = &mut a.blocked else {
                return true;
            };
            if !cleared(b) {
                return true;
            }
            let mut alert = a.alert.clone();
            alert.ends_at = now.clone();
            resolved.push(alert);
            false
        });
        for alert in resolved {
            self.send(alert);
        }
    }

    /// A deadlock or hang alert ends a few re-sends from now.
    fn blocked_ends(&self, now: SystemTime) -> String {
        let after = self
            .resend_every
            .saturating_mul(BLOCKED_ENDS_AFTER_RESENDS)
            .min(Duration::from_secs(365 * 86_400));
        alerts::rfc3339(now + after)
    }

    /// Every still-active alert again, once per interval.
    fn resend(&mut self) {
        if self
            .last_resend
            .is_some_and(|t| t.elapsed() < self.resend_every)
        {
            return;
        }
        self.last_resend = Some(Instant::now());
        let now = SystemTime::now();
        let before = self.active.len();
        self.active.retain(|a| a.blocked.is_some() || a.until > now);
        if self.active.len() != before {
            self.state.touch();
        }
        let ends = self.blocked_ends(now);
        let again: Vec<Alert> = self
            .active
            .iter_mut()
            .map(|a| {
                if a.blocked.is_some() {
                    a.alert.ends_at = ends.clone();
                }
                a.alert.clone()
            })
            .collect();
        for alert in again {
            self.send(alert);
        }
    }

    /// Keeps `alert` for re-sending. The same alert again (same labels: a
    /// restarted process, another worker) replaces the one kept, with the
    /// first `startsAt`. Returns the alert to send.
    fn keep(&mut self, mut alert: Alert, blocked: Option<Blocked>, until: SystemTime) -> Alert {
        if let Some(i) = self
            .active
            .iter()
            .position(|a| a.alert.labels == alert.labels)
        {
            let old = self.active.remove(i);
            alert.starts_at = old.alert.starts_at;
        }
        if self.active.len() >= MAX_ACTIVE {
            self.active.remove(0);
        }
        if blocked.is_none() {
            self.state.touch();
        }
        self.active.push(Active {
            alert: alert.clone(),
            blocked,
            until,
        });
        alert
    }

    /// Saves the state if it changed: the fingerprints alerted on, and the
    /// active alerts that outlive a restart (those of deadlocks and hangs
    /// are found again by the next run if their threads still wait).
    fn save_state(&mut self, now: bool) {
        let saved = self
            .active
            .iter()
            .filter(|a| a.blocked.is_none())
            .map(|a| Saved {
                alert: a.alert.clone(),
                until: state::unix(a.until),
            });
        self.state.save(saved, now);
    }
}

impl Drop for AgentObserver {
    fn drop(&mut self) {
        self.save_state(true);
    }
}

impl Observer for AgentObserver {
    fn finding(&mut self, finding: &Finding, alarm: bool, time: &str) {
        // Every finding is on the page, notes and suppressed ones included
        // (as in the report file).
        self.page
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(finding, time);
        let Some((kind, _)) = alerts::kind(finding) else {
            return;
        };
        self.apply_reloads();
        let fingerprint = alerts::fingerprint(finding);
        let suppressed = alarm && self.suppressions.matches(&fingerprint, finding);
        // The journal is a log: every finding, a note or a suppressed one
        // at a lower priority.
        if let Some(journal) = &self.journal {
            if let Some(entry) =
                journal::entry(finding, kind, fingerprint.clone(), alarm && !suppressed)
            {
                journal.send(entry);
            }
        }
        // Notes (a guarded cycle, a nesting in one address order) are in
        // the report and the journal only.
        if !alarm {
            return;
        }
        if suppressed {
            self.metrics.count_suppressed(kind);
            info!(
                "finding {} suppressed (fingerprint {fingerprint})",
                finding.id()
            );
            return;
        }
        self.metrics.count_finding(kind);
        if let Some(hook) = &self.webhook {
            let mut body = Vec::new();
            let queued = json::write_finding(&mut body, finding, Some(time)).is_ok()
                && hook.try_send(body).is_ok();
            if !queued {
                self.webhook_failures.inc();
            }
        }
        if self.alerts.is_none() {
            return;
        }
        let ctx = alerts::Context {
            host: &self.host,
            runbook_url: RUNBOOK_URL,
            active_for: self.active_for,
        };
        let now = SystemTime::now();
        let Some(mut alert) = alerts::alert(finding, &ctx, now) else {
            return;
        };
        let blocked = Blocked::of(finding);
        let fingerprint = alert.labels["fingerprint"].clone();
        if blocked.is_some() {
            alert.ends_at = self.blocked_ends(now);
        } else if self.state.reported(&fingerprint) {
            // A property of the code, alerted on before (by this run or
            // an earlier one, whose alert is re-sent while active): the
            // same bug again is not news.
            info!(
                "finding {} already alerted on (fingerprint {fingerprint})",
                finding.id()
            );
            return;
        }
        self.state.remember(fingerprint);
        let alert = self.keep(alert, blocked, now + self.active_for);
        self.send(alert);
    }

    fn progress(&mut self, live: &Live) {
        self.apply_reloads();
        self.metrics.set_live(live, &self.before);
        self.page
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_live(live);
        self.before = live.clone();
        self.resolve_exited();
        self.resend();
        self.save_state(false);
    }

    fn learned(&mut self, orders: &[LearnedOrder]) {
        let now = crate::report::walltime::now();
        for order in orders {
            self.state.learn(order, &now);
        }
        self.metrics
            .saved_dependencies_dropped
            .inc_by(self.state.take_orders_dropped());
    }

    fn waits(&mut self, blocked: &[(u32, u32, u64)]) {
        let seen: std::collections::HashSet<(u32, u64)> =
            blocked.iter().map(|&(_, tid, lock)| (tid, lock)).collect();
        self.resolve(|b| {
            if b.waits.is_empty() || b.waits.iter().all(|w| seen.contains(w)) {
                b.missed = 0;
                return false;
            }
            b.missed += 1;
            b.missed >= CLEARED_AFTER_SCANS
        });
    }
}
