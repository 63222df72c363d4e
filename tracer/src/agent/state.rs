//! What the agent remembers across restarts (`state_dir`): the fingerprints
//! of the findings it has alerted on, its alerts still active, and the
//! lock order it learned (the class dependencies between classes that
//! outlive a run), so that a restart (`Restart=on-failure` makes them
//! routine) neither alerts again on what was reported, nor forgets to
//! re-send what is active, nor forgets the order it learned. Written
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

use tracer_analysis::model::ClassKey;

use crate::agent::alerts::Alert;
use crate::report::findings::{Edge, Restored};
use crate::session::LearnedOrder;

/// The state file's name in `state_dir`.
pub const STATE_FILE: &str = "state.json";
const VERSION: u32 = 1;
/// Fingerprints remembered; the oldest are forgotten beyond this (and
/// would be alerted on again).
const MAX_REPORTED: usize = 100_000;
/// Class dependencies kept; beyond, the oldest learned are forgotten
/// (counted).
const MAX_ORDERS: usize = 10_000;
/// Frames kept of each stack of a saved dependency: enough for the
/// program's own frame past libc's lock functions (the report's site, the
/// fingerprint's key), few enough for a state of 10,000 dependencies.
const SAVED_FRAMES: usize = 6;
/// A state whose only change is newly learned dependencies is written at
/// most this often (and at exit): on a busy host's first hours new class
/// dependencies come continually, and the state of 10,000 is megabytes.
const ORDERS_SAVED_EVERY: Duration = Duration::from_secs(30);
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

/// A lock class that names the same code in the next run (see
/// [`ClassKey::outlives_the_run`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SavedClass {
    /// A global lock: its binary's file name, build-id and symbol.
    Global {
        module: String,
        symbol: String,
        build_id: String,
    },
    /// A lock Python code created: the line that created it, and its
    /// function (empty in states saved before classes had it).
    PythonLine {
        file: String,
        line: u32,
        #[serde(default)]
        function: String,
    },
}

impl SavedClass {
    pub fn of(key: &ClassKey) -> Option<SavedClass> {
        match key {
            ClassKey::Global {
                module,
                symbol,
                build: Some(build),
            } => Some(SavedClass::Global {
                module: module.clone(),
                symbol: symbol.clone(),
                build_id: build.to_string(),
            }),
            ClassKey::PythonLine {
                file,
                line,
                function,
            } => Some(SavedClass::PythonLine {
                file: file.clone(),
                line: *line,
                function: function.clone(),
            }),
            _ => None,
        }
    }

    pub fn key(&self) -> ClassKey {
        match self {
            SavedClass::Global {
                module,
                symbol,
                build_id,
            } => ClassKey::Global {
                module: module.clone(),
                symbol: symbol.clone(),
                build: Some(build_id.as_str().into()),
            },
            SavedClass::PythonLine {
                file,
                line,
                function,
            } => ClassKey::PythonLine {
                file: file.clone(),
                line: *line,
                function: function.clone(),
            },
        }
    }
}

/// A class dependency learned, as saved: its classes, when it was learned,
/// and the occurrence that taught it (stacks cut to [`SAVED_FRAMES`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SavedOrder {
    pub from: SavedClass,
    pub to: SavedClass,
    /// RFC 3339.
    pub learned: String,
    pub edge: Edge,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    version: u32,
    /// Oldest first.
    reported: Vec<String>,
    active: Vec<Saved>,
    /// Oldest learned first (absent in a state written before the class
    /// graph was saved).
    #[serde(default)]
    orders: Vec<SavedOrder>,
}

/// The agent's memory, and where it is kept.
pub struct State {
    path: PathBuf,
    reported: VecDeque<String>,
    known: HashSet<String>,
    /// The class dependencies learned, oldest first, one per pair.
    orders: VecDeque<SavedOrder>,
    /// The pairs of classes in `orders`.
    pairs: HashSet<(SavedClass, SavedClass)>,
    /// Dependencies forgotten beyond [`MAX_ORDERS`] since the last call
    /// of [`State::take_orders_dropped`].
    orders_dropped: u64,
    /// Changed since the last save.
    dirty: bool,
    /// Dependencies learned since the last save (written with the next
    /// save, or once [`ORDERS_SAVED_EVERY`] has passed).
    orders_changed: bool,
    last_write: std::time::Instant,
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
            orders: VecDeque::new(),
            pairs: HashSet::new(),
            orders_dropped: 0,
            dirty: false,
            orders_changed: false,
            last_write: std::time::Instant::now(),
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
        for order in file.orders {
            state.keep_order(order);
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

    /// A class dependency learned at `time` (RFC 3339): kept (the same
    /// pair learned again replaces the one kept, as the newest).
    pub fn learn(&mut self, order: &LearnedOrder, time: &str) {
        let (Some(from), Some(to)) = (SavedClass::of(&order.from), SavedClass::of(&order.to))
        else {
            return;
        };
        let mut edge = order.edge.clone();
        edge.stack.truncate(SAVED_FRAMES);
        edge.held_stack.truncate(SAVED_FRAMES);
        edge.python_stack.truncate(SAVED_FRAMES);
        edge.restored = None;
        self.keep_order(SavedOrder {
            from,
            to,
            learned: time.to_string(),
            edge,
        });
        self.orders_changed = true;
    }

    fn keep_order(&mut self, order: SavedOrder) {
        let pair = (order.from.clone(), order.to.clone());
        if !self.pairs.insert(pair) {
            self.orders
                .retain(|o| (&o.from, &o.to) != (&order.from, &order.to));
        }
        self.orders.push_back(order);
        while self.orders.len() > MAX_ORDERS {
            if let Some(old) = self.orders.pop_front() {
                self.pairs.remove(&(old.from, old.to));
            }
            self.orders_dropped += 1;
        }
    }

    /// The class dependencies an earlier run learned, as the session
    /// restores them: each edge says when it was learned.
    pub fn restored_orders(&self) -> Vec<LearnedOrder> {
        self.orders
            .iter()
            .map(|o| {
                let mut edge = o.edge.clone();
                edge.restored = Some(Restored {
                    learned: o.learned.clone(),
                });
                LearnedOrder {
                    from: o.from.key(),
                    to: o.to.key(),
                    edge,
                }
            })
            .collect()
    }

    /// Class dependencies forgotten beyond the bound since the last call.
    pub fn take_orders_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.orders_dropped)
    }

    /// The active alerts changed: the next [`State::save`] writes.
    pub fn touch(&mut self) {
        self.dirty = true;
    }

    /// Writes the state if it changed. A failure is a warning (once until a
    /// save succeeds again): the agent goes on with what it has in memory.
    /// `now`: at exit, whatever changed; otherwise learned dependencies
    /// alone wait for [`ORDERS_SAVED_EVERY`].
    pub fn save(&mut self, active: impl Iterator<Item = Saved>, now: bool) {
        let orders_due =
            self.orders_changed && (now || self.last_write.elapsed() >= ORDERS_SAVED_EVERY);
        if !self.dirty && !orders_due {
            return;
        }
        self.last_write = std::time::Instant::now();
        let file = File {
            version: VERSION,
            reported: self.reported.iter().cloned().collect(),
            active: active.collect(),
            orders: self.orders.iter().cloned().collect(),
        };
        match write(&self.path, &file) {
            Ok(()) => {
                self.dirty = false;
                self.orders_changed = false;
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
        state.save(saved.iter().cloned(), true);
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
        state.save(std::iter::empty(), true);
        assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
        assert_eq!(
            std::fs::read(&elsewhere).unwrap(),
            br#"{"version":1,"reported":["aa"],"active":[]}"#
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn global(symbol: &str) -> ClassKey {
        ClassKey::Global {
            module: "prog".into(),
            symbol: symbol.into(),
            build: Some("f5cb6d4f".into()),
        }
    }

    fn order(from: &str, to: &str, frames: usize) -> LearnedOrder {
        let lock = |name: &str| crate::report::findings::Lock {
            addr: 0x5000,
            kind: "mutex",
            name: Some(name.into()),
            shared: None,
            build_id: Some("f5cb6d4f".into()),
            file_offset: Some(0x3080),
            pid: 0,
        };
        let frame = |i: usize| tracer_analysis::model::Frame {
            addr: 0x1000 + i as u64,
            function: Some(format!("f{i}")),
            ..Default::default()
        };
        LearnedOrder {
            from: global(from),
            to: global(to),
            edge: Edge {
                from: lock(from),
                to: lock(to),
                pid: 42,
                tid: 43,
                comm: "prog".into(),
                origin: None,
                thread: "prog".into(),
                stack: (0..frames).map(frame).collect(),
                held_stack: vec![frame(0)],
                python_stack: vec![],
                held_python_stack: vec![],
                restored: None,
            },
        }
    }

    /// The class dependencies learned are saved (stacks cut) and restored
    /// saying when they were learned; classes that do not outlive a run
    /// are not saved; the same pair twice is kept once.
    #[test]
    fn learned_orders_are_saved_and_restored() {
        let dir = scratch("orders");
        let (mut state, _) = State::load(dir.as_path());
        state.learn(&order("mutex_x", "mutex_y", 20), "2026-12-07T23:00:00.000Z");
        state.learn(&order("mutex_x", "mutex_y", 2), "2026-12-07T23:00:01.000Z");
        let mut unnamed = order("mutex_y", "mutex_x", 2);
        unnamed.to = ClassKey::FirstUse(tracer_analysis::model::CodeSite::unmapped(0x10));
        state.learn(&unnamed, "2026-12-07T23:00:02.000Z");
        state.save(std::iter::empty(), true);
        let (again, _) = State::load(dir.as_path());
        let restored = again.restored_orders();
        assert_eq!(restored.len(), 1);
        let r = &restored[0];
        assert_eq!((&r.from, &r.to), (&global("mutex_x"), &global("mutex_y")));
        assert_eq!(
            r.edge.restored,
            Some(Restored {
                learned: "2026-12-07T23:00:01.000Z".into()
            })
        );
        assert_eq!((r.edge.pid, r.edge.stack.len()), (42, 2));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_oldest_orders_are_forgotten_beyond_the_bound_and_counted() {
        let dir = scratch("orders-bound");
        let (mut state, _) = State::load(dir.as_path());
        for i in 0..=MAX_ORDERS {
            state.learn(&order(&format!("a{i}"), "b", 1), "2026-12-07T23:00:00.000Z");
        }
        state.learn(
            &order(&format!("a{MAX_ORDERS}"), "b", 1),
            "2026-12-07T23:00:00.000Z",
        );
        let mut stacks = order("a", "b", SAVED_FRAMES + 4);
        stacks.edge.held_stack = stacks.edge.stack.clone();
        state.learn(&stacks, "2026-12-07T23:00:00.000Z");
        assert_eq!(state.take_orders_dropped(), 2);
        assert_eq!(state.take_orders_dropped(), 0);
        let restored = state.restored_orders();
        assert_eq!(restored.len(), MAX_ORDERS);
        assert!(!restored
            .iter()
            .any(|o| o.from == global("a0") || o.from == global("a1")));
        let last = restored.last().unwrap();
        assert_eq!(last.from, global("a"));
        assert_eq!(
            (last.edge.stack.len(), last.edge.held_stack.len()),
            (SAVED_FRAMES, SAVED_FRAMES)
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
