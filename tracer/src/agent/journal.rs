//! The journald sink: every finding as one journal entry, sent with
//! journald's native protocol (the `libsystemd` crate: a datagram to
//! `/run/systemd/journal/socket`, a sealed memfd for one too large for a
//! datagram). Entries carry a `MESSAGE_ID` per finding type, so that
//! `journalctl MESSAGE_ID=...` lists one kind, and the fingerprint.
//!
//! A send may block (journald busy): it is made on a thread of its own,
//! fed through a bounded queue the tracing loop never waits on.

use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};

use anyhow::{Context, Result};
use libsystemd::logging::{journal_send, Priority, SD_JOURNAL_SOCK_PATH};
use prometheus_client::metrics::counter::Counter;
use tracing::{info, warn};

use crate::report::escape;
use crate::report::Finding;

/// Entries waiting for the sending thread; beyond this a finding is
/// dropped and counted as a failure.
const QUEUE: usize = 1000;
/// `MESSAGE` (the text report) is cut at this many bytes.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// The `MESSAGE_ID` of each finding type (fixed: made once with
/// `systemd-id128 new`, listed in the README).
pub fn message_id(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "inversion" => "17da171d517245ffbfd8a4d20c91fdfc",
        "deadlock" => "ebe71b85c9a4435a9dd226a2faf0186b",
        "lock_wait_timeout" => "f9687579bca949178024b93c0fa17fb4",
        "self_deadlock" => "71fb46ba7c4345e2b0d3b9d3f4c0fcb3",
        "same_class_nesting" => "8412d0a0acb34827a8c8c1bdcd18828d",
        _ => return None,
    })
}

/// One finding as journald takes it.
pub struct Entry {
    priority: Priority,
    message: String,
    fields: Vec<(&'static str, String)>,
}

/// `kind`: the finding's type (`alerts::kind`). `alarm`: a warning (else
/// a note, or a warning a suppression matched: `PRIORITY` notice).
pub fn entry(
    finding: &Finding,
    kind: &'static str,
    fingerprint: String,
    alarm: bool,
) -> Option<Entry> {
    let id = message_id(kind)?;
    let priority = match (alarm, finding) {
        (true, Finding::Deadlock(_) | Finding::SelfDeadlock(_)) => Priority::Critical,
        (true, _) => Priority::Warning,
        (false, _) => Priority::Notice,
    };
    let text = escape::finding(finding).to_string();
    let mut message = escape::rest(&text).into_owned();
    if message.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str("\n[cut]");
    }
    Some(Entry {
        priority,
        message,
        fields: vec![
            ("MESSAGE_ID", id.to_string()),
            ("SYSLOG_IDENTIFIER", "locktrace".to_string()),
            ("LOCKTRACE_TYPE", kind.to_string()),
            ("LOCKTRACE_FINGERPRINT", fingerprint),
        ],
    })
}

/// The tracing loop's end of the queue.
pub struct Journal {
    queue: SyncSender<Entry>,
    failures: Counter,
}

impl Journal {
    /// The sink, if journald's socket exists (else `None`: no journald on
    /// this host); its sending thread started. `done` is told when the
    /// thread has sent what was queued, once the sink is dropped.
    pub fn start(failures: Counter, done: std::sync::mpsc::Sender<()>) -> Result<Option<Journal>> {
        if !Path::new(SD_JOURNAL_SOCK_PATH).exists() {
            info!(
                "no journald ({SD_JOURNAL_SOCK_PATH} is missing): findings not sent to the journal"
            );
            return Ok(None);
        }
        let (queue, entries) = sync_channel(QUEUE);
        let counted = failures.clone();
        std::thread::Builder::new()
            .name("locktrace-journal".into())
            .spawn(move || {
                crate::agent::privileges::drop_all_in_this_thread();
                send_all(entries, counted);
                let _ = done.send(());
            })
            .context("cannot start the journald sink's thread")?;
        info!("findings also go to journald ({SD_JOURNAL_SOCK_PATH})");
        Ok(Some(Journal { queue, failures }))
    }

    /// Queues `entry`; a full queue drops it (counted).
    pub fn send(&self, entry: Entry) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.queue.try_send(entry)
        {
            self.failures.inc();
        }
    }
}

/// Until the tracing loop's end is dropped (the session is over): each
/// entry sent, each failure counted (and logged once until a send works).
fn send_all(entries: Receiver<Entry>, failures: Counter) {
    let mut failing = false;
    for e in entries {
        let fields = e.fields.iter().map(|(k, v)| (*k, v.as_str()));
        match journal_send(e.priority, &e.message, fields) {
            Ok(()) => failing = false,
            Err(err) => {
                failures.inc();
                if !failing {
                    warn!("cannot send a finding to journald (counted): {err}");
                }
                failing = true;
            }
        }
    }
}
