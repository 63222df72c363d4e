//! The webhook sink (`[webhook] url`): each finding alerted on is POSTed,
//! one request per finding, as its JSON line (the report's, with `time`
//! and `fingerprint`). As alerts to Alertmanager (`sender`): a bounded
//! queue on the agent's thread, retried with backoff while the receiver is
//! down; the tracing loop only `try_send`s. A failed attempt, or a finding
//! dropped from a full queue, counts in
//! `locktrace_sink_failures_total{sink="webhook"}`.

use std::collections::VecDeque;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::agent::sender::{post_json, FIRST_BACKOFF, FLUSH_LIMIT, MAX_BACKOFF};

/// POSTs each body arriving on `bodies` to `url` until the channel closes,
/// then tries for [`FLUSH_LIMIT`] to deliver what is left.
pub async fn deliver(
    url: String,
    queue_limit: usize,
    mut bodies: mpsc::Receiver<Vec<u8>>,
    failures: Counter,
) {
    let mut queue: VecDeque<Vec<u8>> = VecDeque::new();
    let mut backoff = FIRST_BACKOFF;
    let mut failing = false;
    let mut flush_deadline: Option<tokio::time::Instant> = None;
    let enqueue = |queue: &mut VecDeque<Vec<u8>>, body| {
        if queue.len() >= queue_limit {
            queue.pop_front();
            failures.inc();
        }
        queue.push_back(body);
    };
    loop {
        if queue.is_empty() {
            if flush_deadline.is_some() {
                return;
            }
            match bodies.recv().await {
                Some(b) => enqueue(&mut queue, b),
                None => return,
            }
        }
        while let Ok(b) = bodies.try_recv() {
            enqueue(&mut queue, b);
        }
        let body = queue.front().expect("not empty").clone();
        match post_json(&url, "", body, "the webhook").await {
            Ok(()) => {
                queue.pop_front();
                if failing {
                    info!("the webhook at {url} takes findings again");
                }
                failing = false;
                backoff = FIRST_BACKOFF;
                continue;
            }
            Err(e) => {
                failures.inc();
                if !failing {
                    warn!(
                        "cannot POST a finding to the webhook at {url} (retrying, {} queued): {e:#}",
                        queue.len()
                    );
                }
                failing = true;
            }
        }
        if let Some(deadline) = flush_deadline {
            if tokio::time::Instant::now() >= deadline {
                warn!(
                    "{} findings left undelivered to the webhook at exit",
                    queue.len()
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        // Wait out the backoff, still taking new findings in.
        let sleep = tokio::time::sleep(backoff);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                b = bodies.recv() => match b {
                    Some(b) => enqueue(&mut queue, b),
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
