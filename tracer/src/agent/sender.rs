//! Delivery to Alertmanager: alerts wait in a bounded queue and are posted
//! (`POST /api/v2/alerts`), retried with backoff while Alertmanager is
//! down. The tracing loop only ever `try_send`s into the channel: it never
//! waits for the network.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::agent::alerts::Alert;
use crate::agent::metrics::Metrics;

pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Alerts per POST.
const BATCH: usize = 64;
/// After the agent is told to stop: how long it keeps trying.
pub const FLUSH_LIMIT: Duration = Duration::from_secs(2);

/// A bounded queue that [`deliver_all`] drains: how items are kept,
/// batched into one POST's body and counted.
pub trait Outbox {
    type Item;
    /// Queues `item`; past the bound the oldest goes (counted).
    fn push(&mut self, item: Self::Item);
    /// How many items wait.
    fn queued(&self) -> usize;
    /// The body of the next POST, and how many items from the front of the
    /// queue it carries.
    fn next_body(&self) -> (Result<Vec<u8>>, usize);
    /// The first `n` items were delivered.
    fn delivered(&mut self, n: usize);
    /// An attempt to deliver `n` items failed; they stay queued.
    fn failed(&mut self, n: usize);
}

/// Where [`deliver_all`] posts, and what to call it and its items in the
/// log.
pub struct Endpoint {
    /// `http://host:port[/prefix]`.
    pub url: String,
    pub path: &'static str,
    /// The server, for people: "Alertmanager", "the webhook".
    pub who: &'static str,
    /// What is sent: "alerts", "findings".
    pub items: &'static str,
}

/// Posts what arrives on `incoming` through `outbox` to `to` until the
/// channel closes, then tries for [`FLUSH_LIMIT`] to deliver what is left.
/// While the server fails, attempts back off from [`FIRST_BACKOFF`] to
/// [`MAX_BACKOFF`], and new items are still taken in.
pub async fn deliver_all<O: Outbox>(
    to: Endpoint,
    mut outbox: O,
    mut incoming: mpsc::Receiver<O::Item>,
) {
    let Endpoint {
        url,
        path,
        who,
        items,
    } = to;
    let mut backoff = FIRST_BACKOFF;
    let mut failing = false;
    let mut flush_deadline: Option<tokio::time::Instant> = None;
    loop {
        if outbox.queued() == 0 {
            if flush_deadline.is_some() {
                return;
            }
            match incoming.recv().await {
                Some(item) => outbox.push(item),
                None => return,
            }
        }
        while let Ok(item) = incoming.try_recv() {
            outbox.push(item);
        }
        let (body, n) = outbox.next_body();
        let sent = match body {
            Ok(body) => post_json(&url, path, body, who).await,
            Err(e) => Err(e),
        };
        match sent {
            Ok(()) => {
                outbox.delivered(n);
                if failing {
                    info!("{who} at {url} takes {items} again");
                }
                failing = false;
                backoff = FIRST_BACKOFF;
                continue;
            }
            Err(e) => {
                outbox.failed(n);
                if !failing {
                    warn!(
                        "cannot send {items} to {who} at {url} (retrying, {} queued): {e:#}",
                        outbox.queued()
                    );
                }
                failing = true;
            }
        }
        if let Some(deadline) = flush_deadline {
            if tokio::time::Instant::now() >= deadline {
                warn!(
                    "{} {items} left undelivered to {who} at exit",
                    outbox.queued()
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        // Wait out the backoff, still taking new items in.
        let sleep = tokio::time::sleep(backoff);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                item = incoming.recv() => match item {
                    Some(item) => outbox.push(item),
                    None => {
                        flush_deadline = Some(tokio::time::Instant::now() + FLUSH_LIMIT);
                        break;
                    }
                },
            }
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Alerts for Alertmanager: a re-send of an alert still queued replaces
/// it, and up to [`BATCH`] go in one `POST /api/v2/alerts`.
struct Alerts {
    queue: VecDeque<Alert>,
    limit: usize,
    metrics: Arc<Metrics>,
}

impl Outbox for Alerts {
    type Item = Alert;

    fn push(&mut self, alert: Alert) {
        // Alertmanager down for several intervals: the queue holds each
        // alert once.
        if let Some(queued) = self.queue.iter_mut().find(|q| q.labels == alert.labels) {
            *queued = alert;
            return;
        }
        if self.queue.len() >= self.limit {
            self.queue.pop_front();
            self.metrics.alerts_dropped.inc();
        }
        self.queue.push_back(alert);
    }

    fn queued(&self) -> usize {
        self.queue.len()
    }

    fn next_body(&self) -> (Result<Vec<u8>>, usize) {
        let n = self.queue.len().min(BATCH);
        let batch: Vec<&Alert> = self.queue.iter().take(n).collect();
        (serde_json::to_vec(&batch).map_err(Into::into), n)
    }

    fn delivered(&mut self, n: usize) {
        self.metrics.alerts_sent.inc_by(n as u64);
        self.queue.drain(..n);
    }

    fn failed(&mut self, n: usize) {
        self.metrics.alerts_failed.inc_by(n as u64);
    }
}

/// Posts what arrives on `alerts` to Alertmanager at `base` (see
/// [`deliver_all`]).
pub async fn deliver(
    base: String,
    queue_limit: usize,
    alerts: mpsc::Receiver<Alert>,
    metrics: Arc<Metrics>,
) {
    let outbox = Alerts {
        queue: VecDeque::new(),
        limit: queue_limit,
        metrics,
    };
    let to = Endpoint {
        url: base,
        path: "/api/v2/alerts",
        who: "Alertmanager",
        items: "alerts",
    };
    deliver_all(to, outbox, alerts).await
}

/// `POST url + path` of a JSON body, over plain HTTP/1.1, within
/// [`ATTEMPT_TIMEOUT`]: an error unless the answer is a 2xx. `url` is
/// `http://host:port[/prefix]`; `who` names the server in errors.
pub async fn post_json(url: &str, path: &str, body: Vec<u8>, who: &str) -> Result<()> {
    let rest = url.strip_prefix("http://").context("not an http:// URL")?;
    let (authority, prefix) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(authority)
            .await
            .with_context(|| format!("cannot connect to {authority}"))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let target = match format!("{prefix}{path}") {
            t if t.is_empty() => "/".to_string(),
            t => t,
        };
        let request = Request::post(target)
            .header("host", authority)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        if !status.is_success() {
            let text = response.into_body().collect().await?.to_bytes();
            bail!(
                "{who} answered {status}: {}",
                String::from_utf8_lossy(&text).trim()
            );
        }
        Ok(())
    };
    tokio::time::timeout(ATTEMPT_TIMEOUT, attempt)
        .await
        .context("no answer within 5s")?
}
