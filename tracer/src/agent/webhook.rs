//! The webhook sink (`[webhook] url`): each finding alerted on is POSTed,
//! one request per finding, as its JSON line (the report's, with `time`
//! and `fingerprint`). As alerts to Alertmanager (`sender`): a bounded
//! queue on the agent's thread, retried with backoff while the receiver is
//! down; the tracing loop only `try_send`s. A failed attempt, or a finding
//! dropped from a full queue, counts in
//! `locktrace_sink_failures_total{sink="webhook"}`.

use std::collections::VecDeque;

use anyhow::Result;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

use crate::agent::sender::{deliver_all, Endpoint, Outbox};

/// Findings' JSON lines, one per POST; a full queue drops the oldest, and
/// a drop or a failed attempt counts as a failure.
struct Findings {
    queue: VecDeque<Vec<u8>>,
    limit: usize,
    failures: Counter,
}

impl Outbox for Findings {
    type Item = Vec<u8>;

    fn push(&mut self, body: Vec<u8>) {
        if self.queue.len() >= self.limit {
            self.queue.pop_front();
            self.failures.inc();
        }
        self.queue.push_back(body);
    }

    fn queued(&self) -> usize {
        self.queue.len()
    }

    fn next_body(&self) -> (Result<Vec<u8>>, usize) {
        (Ok(self.queue.front().cloned().unwrap_or_default()), 1)
    }

    fn delivered(&mut self, n: usize) {
        self.queue.drain(..n);
    }

    fn failed(&mut self, _n: usize) {
        self.failures.inc();
    }
}

/// POSTs each body arriving on `bodies` to `url` (see [`deliver_all`]).
pub async fn deliver(
    url: String,
    queue_limit: usize,
    bodies: mpsc::Receiver<Vec<u8>>,
    failures: Counter,
) {
    let outbox = Findings {
        queue: VecDeque::new(),
        limit: queue_limit,
        failures,
    };
    let to = Endpoint {
        url,
        path: "",
        who: "the webhook",
        items: "findings",
    };
    deliver_all(to, outbox, bodies).await
}
