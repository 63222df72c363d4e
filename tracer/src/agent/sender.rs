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

/// Posts what arrives on `alerts` to `base` until the channel closes, then
/// tries for [`FLUSH_LIMIT`] to deliver what is left.
pub async fn deliver(
    base: String,
    queue_limit: usize,
    mut alerts: mpsc::Receiver<Alert>,
    metrics: Arc<Metrics>,
) {
    let mut queue: VecDeque<Alert> = VecDeque::new();
    let mut backoff = FIRST_BACKOFF;
    let mut failing = false;
    let mut closed = false;
    let mut flush_deadline = None;
    loop {
        let enqueue = |queue: &mut VecDeque<Alert>, alert: Alert| {
            // A re-send of an alert still queued (Alertmanager down for
            // several intervals) replaces it: the queue holds each alert
            // once.
            if let Some(queued) = queue.iter_mut().find(|q| q.labels == alert.labels) {
                *queued = alert;
                return;
            }
            if queue.len() >= queue_limit {
                queue.pop_front();
                metrics.alerts_dropped.inc();
            }
            queue.push_back(alert);
        };
        if queue.is_empty() {
            if closed {
                return;
            }
            match alerts.recv().await {
                Some(a) => enqueue(&mut queue, a),
                None => return,
            }
        }
        while let Ok(a) = alerts.try_recv() {
            enqueue(&mut queue, a);
        }
        let n = queue.len().min(BATCH);
        let batch: Vec<&Alert> = queue.iter().take(n).collect();
        match post(&base, &batch).await {
            Ok(()) => {
                metrics.alerts_sent.inc_by(n as u64);
                queue.drain(..n);
                if failing {
                    info!("Alertmanager at {base} accepts alerts again");
                }
                failing = false;
                backoff = FIRST_BACKOFF;
                continue;
            }
            Err(e) => {
                metrics.alerts_failed.inc_by(n as u64);
                if !failing {
                    warn!(
                        "cannot send alerts to Alertmanager at {base} (retrying, {} queued): {e:#}",
                        queue.len()
                    );
                }
                failing = true;
            }
        }
        if closed {
            if flush_deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                warn!("{} alerts left undelivered at exit", queue.len());
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        // Wait out the backoff, still taking new alerts in.
        let sleep = tokio::time::sleep(backoff);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                a = alerts.recv() => match a {
                    Some(a) => enqueue(&mut queue, a),
                    None => {
                        closed = true;
                        flush_deadline = Some(tokio::time::Instant::now() + FLUSH_LIMIT);
                        break;
                    }
                },
            }
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn post(base: &str, alerts: &[&Alert]) -> Result<()> {
    let body = serde_json::to_vec(alerts)?;
    post_json(base, "/api/v2/alerts", body, "Alertmanager").await
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
