//! What the agent remembers across restarts (`state_dir`): the fingerprints
//! of the findings it has alerted on, and its alerts still active, so that
//! a restart (`Restart=on-failure` makes them routine) neither alerts again
//! on what was reported nor forgets to re-send what is active. Written
//! atomically (a private temporary file renamed over the state), never
//! through a symlink; a missing or unreadable state is one warning and a
//! fresh start, never a failure.

use std::collections::{HashSet, VecDeque};
use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::agent::alerts::Alert;

/// The state file's name in `state_dir`.
pub const STATE_FILE: &str = "state.json";
const VERSION: u32 = 1;
/// Fingerprints remembered; the oldest are forgotten beyond this (and
/// would be alerted on again).
const MAX_REPORTED: usize = 100_000;
/// The state file is read only up to this size: anything larger is not
/// one the agent wrote.
const MAX_STATE_BYTES: u64 = 256 << 20;

/// An active alert as saved: re-sent after a restart until `until`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Saved {
    pub alert: Alert,
    /// Seconds since the epoch.
    pub until: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    version: u32,
    /// Oldest first.
    reported: Vec<String>,
    active: Vec<Saved>,
}

/// The agent's memory, and where it is kept.
pub struct State {
    path: PathBuf,
    reported: VecDeque<String>,
    known: HashSet<String>,
    /// Changed since the last save.
    dirty: bool,
    /// The last save failed (warned once until one succeeds).
    failing: bool,
}

impl State {
    /// Reads `dir/state.json`. Whatever is wrong with it (missing, a
    /// symlink, corrupt, another version) gives one warning and an empty
    /// state. Returns the active alerts saved, those not ended yet.
    pub fn load(dir: &Path) -> (State, Vec<Saved>) {
        let path = dir.join(STATE_FILE);
        let mut state = State {
            path,
            reported: VecDeque::new(),
            known: HashSet::new(),
            dirty: false,
            failing: false,
        };
        let file = match read(&state.path) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(
                    "no state read from {} ({e:#}): starting with a fresh state",
                    state.path.display()
                );
                return (state, Vec::new());
            }
        };
        for fingerprint in file.reported {
            state.remember(fingerprint);
        }
        state.dirty = false;
        let now = unix(SystemTime::now());
        let active = file.active.into_iter().filter(|s| s.until > now).collect();
        (state, active)
    }

    /// Whether an alert with this fingerprint was sent before (in this run
    /// or an earlier one).
    pub fn reported(&self, fingerprint: &str) -> bool {
        self.known.contains(fingerprint)
    }

    pub fn remember(&mut self, fingerprint: String) {
        if !self.known.insert(fingerprint.clone()) {
            return;
        }
        self.reported.push_back(fingerprint);
        if self.reported.len() > MAX_REPORTED {
            if let Some(old) = self.reported.pop_front() {
                self.known.remove(&old);
            }
        }
        self.dirty = true;
    }

    /// The active alerts changed: the next [`State::save`] writes.
    pub fn touch(&mut self) {
        self.dirty = true;
    }

    /// Writes the state if it changed. A failure is a warning (once until a
    /// save succeeds again): the agent goes on with what it has in memory.
    pub fn save(&mut self, active: impl Iterator<Item = Saved>) {
        if !self.dirty {
            return;
        }
        let file = File {
            version: VERSION,
            reported: self.reported.iter().cloned().collect(),
            active: active.collect(),
        };
        match write(&self.path, &file) {
            Ok(()) => {
                self.dirty = false;
                self.failing = false;
            }
            Err(e) => {
                if !self.failing {
                    tracing::warn!("cannot save the state to {}: {e:#}", self.path.display());
                }
                self.failing = true;
            }
        }
    }
}

pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub fn from_unix(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

fn read(path: &Path) -> Result<File> {
    // O_NOFOLLOW: a symlink planted in place of the state is not read.
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => anyhow::anyhow!("it is a symbolic link"),
            _ => anyhow::Error::new(e),
        })?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        bail!("not a regular file");
    }
    let mut text = String::new();
    (&mut f).take(MAX_STATE_BYTES).read_to_string(&mut text)?;
    let file: File = serde_json::from_str(&text).context("corrupt")?;
    if file.version != VERSION {
        bail!("version {} (this agent writes {VERSION})", file.version);
    }
    Ok(file)
}

/// `path`'s new content, atomically: a new private file beside it (made
/// with O_EXCL, so never through a symlink), synced, renamed over it (a
/// symlink at `path` is replaced, not followed).
fn write(path: &Path, file: &File) -> Result<()> {
    let dir = path.parent().context("no directory")?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(".{STATE_FILE}.{}.tmp", std::process::id()));
    // A leftover of an earlier run of ours (or anything planted there):
    // removed, not followed.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", tmp.display())),
    }
    let result = (|| {
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        out.write_all(&serde_json::to_vec(file)?)?;
        out.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok::<_, anyhow::Error>(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;

    /// A fresh directory of this test's own.
    fn scratch(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("locktrace-state-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn alert(fingerprint: &str) -> Alert {
        Alert {
            labels: BTreeMap::from([("fingerprint".to_string(), fingerprint.to_string())]),
            annotations: BTreeMap::new(),
            starts_at: "2026-12-07T05:31:48Z".into(),
            ends_at: "2026-12-08T05:31:48Z".into(),
        }
    }

    #[test]
    fn saved_and_reloaded_privately() {
        let dir = scratch("saved");
        let (mut state, active) = State::load(dir.as_path());
        assert!(active.is_empty());
        state.remember("aa".into());
        let far = unix(SystemTime::now()) + 3600;
        let saved = [
            Saved {
                alert: alert("aa"),
                until: far,
            },
            // Ended: not re-sent after the restart.
            Saved {
                alert: alert("bb"),
                until: 1,
            },
        ];
        state.save(saved.iter().cloned());
        let path = dir.as_path().join(STATE_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (again, active) = State::load(dir.as_path());
        assert!(again.reported("aa") && !again.reported("bb"));
        assert_eq!(active.len(), 1);
        assert_eq!(active[0].alert.labels["fingerprint"], "aa");
        assert_eq!(active[0].alert.starts_at, "2026-12-07T05:31:48Z");
        // Nothing left beside it.
        assert_eq!(std::fs::read_dir(dir.as_path()).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_or_linked_state_is_a_fresh_start() {
        let dir = scratch("corrupt");
        let path = dir.as_path().join(STATE_FILE);
        std::fs::write(&path, b"{\"version\": 1, \"reported\": [").unwrap();
        let (state, active) = State::load(dir.as_path());
        assert!(!state.reported("aa") && active.is_empty());
        // A symlink to a valid state is neither read nor written through.
        let elsewhere = dir.as_path().join("elsewhere.json");
        std::fs::write(
            &elsewhere,
            br#"{"version":1,"reported":["aa"],"active":[]}"#,
        )
        .unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        let (mut state, _) = State::load(dir.as_path());
        assert!(!state.reported("aa"));
        state.remember("cc".into());
        state.save(std::iter::empty());
        assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
        assert_eq!(
            std::fs::read(&elsewhere).unwrap(),
            br#"{"version":1,"reported":["aa"],"active":[]}"#
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_oldest_fingerprints_are_forgotten_beyond_the_bound() {
        let dir = scratch("bound");
        let (mut state, _) = State::load(dir.as_path());
        for i in 0..=MAX_REPORTED {
            state.remember(format!("{i:016x}"));
        }
        assert!(!state.reported(&format!("{:016x}", 0)));
        assert!(state.reported(&format!("{MAX_REPORTED:016x}")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
