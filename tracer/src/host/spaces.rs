//! Process address spaces that stay resolvable after the process exits.
//!
//! Like `perf record`, we open a software dummy perf event per online CPU
//! (host-wide, `pid = -1`) that only emits side-band records: MMAP2 (every
//! mapping, executable or data), COMM (with the exec flag: the address space
//! is replaced), FORK (a child process inherits a copy of its parent's
//! mappings) and EXIT. [`AddressSpaces::sync`] drains those records and
//! replays them, in timestamp order, onto a per-process table of mappings.
//! Processes that already existed when tracking started are seeded from
//! `/proc/PID/maps` the first time they are seen (a record or a query).
//! Exited processes stay resolvable for a grace period (or until
//! [`AddressSpaces::forget`]), then are dropped.
//!
//! If `perf_event_open` is not permitted, tracking falls back to reading
//! `/proc/PID/maps` on demand (short-lived processes are then lost).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::host::files;
pub use crate::host::mapping::{FileKey, Mapping, ANON_PATH};
use crate::host::perf::{open_rings, Record, RecordKind, Ring};

/// How long an exited process stays resolvable after its EXIT record.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct Space {
    /// Mappings keyed by start address; never overlapping. Shared with the
    /// parent after a fork until one of them maps something (a pool of
    /// forked workers costs one table, not one each).
    maps: std::sync::Arc<BTreeMap<u64, Mapping>>,
    name: Option<String>,
    exited: Option<Instant>,
    /// Its cgroup, unit and container, read once while it runs (its first
    /// dependency, or the first finding about it) and kept as long as the
    /// space: a finding built after it exited still says where it ran.
    /// Not inherited at fork (a child is moved to its cgroup before its
    /// exec), not reset at exec (the move came before it).
    origin: Option<crate::host::proc::Origin>,
}

impl Space {
    /// Insert `m`, trimming or removing whatever it overlaps (a new mmap
    /// replaces the old pages, as `perf` does it).
    fn insert(&mut self, m: Mapping) {
        if m.end <= m.start {
            return;
        }
        let maps = std::sync::Arc::make_mut(&mut self.maps);
        let overlapping: Vec<u64> = maps
            .range(..m.end)
            .rev()
            .take_while(|(_, o)| o.end > m.start)
            .map(|(&s, _)| s)
            .collect();
        for s in overlapping {
            let old = maps.remove(&s).expect("present");
            if old.start < m.start {
                let mut left = old.clone();
                left.end = m.start;
                maps.insert(left.start, left);
            }
            if old.end > m.end {
                let mut right = old;
                if right.inode != 0 {
                    right.file_offset += m.end - right.start;
                }
                right.start = m.end;
                maps.insert(right.start, right);
            }
        }
        maps.insert(m.start, m);
    }

    fn find(&self, addr: u64) -> Option<&Mapping> {
        self.maps
            .range(..=addr)
            .next_back()
            .map(|(_, m)| m)
            .filter(|m| addr < m.end)
    }
}

/// Per-process address spaces, kept up to date from perf side-band records.
pub struct AddressSpaces {
    spaces: HashMap<u32, Space>,
    rings: Vec<Ring>,
    self_pid: u32,
    grace: Duration,
    lost: u64,
    last_purge: Instant,
    /// Lock libraries (see `targets::is_lock_library`) mapped since the last
    /// [`AddressSpaces::take_new_libraries`]: the tracer probes new ones.
    new_libraries: Vec<(u32, Mapping)>,
    /// Processes that exec'ed a program or mapped a libpython since the
    /// last [`AddressSpaces::take_new_programs`]: the tracer looks for an
    /// interpreter in them.
    new_programs: Vec<u32>,
    /// Processes forked since the last [`AddressSpaces::take_forks`], with
    /// the time of the fork (CLOCK_MONOTONIC ns): with probes per process,
    /// the children of traced processes get theirs.
    forks: Vec<(u32, u64)>,
    /// Processes that exec'd since the last [`AddressSpaces::take_execs`],
    /// with when (CLOCK_MONOTONIC ns).
    execs: Vec<(u32, u64)>,
}

impl AddressSpaces {
    /// Start tracking. If perf events are not available, logs a warning and
    /// falls back to `/proc/PID/maps` only.
    pub fn new() -> anyhow::Result<Self> {
        let rings = match open_rings() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(
                    "cannot track mappings with perf events ({e:#}); falling back to \
                     /proc/PID/maps: short-lived processes will not be symbolized"
                );
                Vec::new()
            }
        };
        Ok(Self::with_rings(rings))
    }

    /// Without perf events: `/proc/PID/maps` only (tests, fallback).
    pub fn proc_only() -> Self {
        Self::with_rings(Vec::new())
    }

    fn with_rings(rings: Vec<Ring>) -> Self {
        Self {
            spaces: HashMap::new(),
            rings,
            self_pid: std::process::id(),
            grace: DEFAULT_GRACE,
            lost: 0,
            last_purge: Instant::now(),
            new_libraries: Vec::new(),
            new_programs: Vec::new(),
            forks: Vec::new(),
            execs: Vec::new(),
        }
    }

    /// Processes that started a new program, or loaded libpython (an
    /// embedded interpreter, e.g. mod_wsgi), since the last call.
    pub fn take_new_programs(&mut self) -> Vec<u32> {
        let mut pids = std::mem::take(&mut self.new_programs);
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Processes forked since the last call, and when (CLOCK_MONOTONIC ns).
    pub fn take_forks(&mut self) -> Vec<(u32, u64)> {
        std::mem::take(&mut self.forks)
    }

    /// Processes that started a new program since the last call, and when
    /// (CLOCK_MONOTONIC ns).
    pub fn take_execs(&mut self) -> Vec<(u32, u64)> {
        std::mem::take(&mut self.execs)
    }

    /// Lock libraries mapped (executable) since the last call, with the
    /// process that mapped each.
    pub fn take_new_libraries(&mut self) -> Vec<(u32, Mapping)> {
        std::mem::take(&mut self.new_libraries)
    }

    /// Change how long exited processes stay resolvable.
    pub fn set_grace(&mut self, grace: Duration) {
        self.grace = grace;
    }

    /// Whether mappings are tracked with perf events (else /proc only).
    pub fn is_tracking(&self) -> bool {
        !self.rings.is_empty()
    }

    /// Number of side-band records the kernel dropped (ring buffer full).
    pub fn lost_records(&self) -> u64 {
        self.lost
    }

    /// Consume all pending perf records and apply them, in time order.
    pub fn sync(&mut self) {
        let mut records = Vec::new();
        for ring in &mut self.rings {
            ring.drain(&mut records);
        }
        records.sort_by_key(|r| r.time);
        for r in records {
            self.apply(r);
        }
        if self.last_purge.elapsed() >= Duration::from_secs(1) {
            self.purge();
        }
    }

    /// Drop exited processes whose grace period is over.
    fn purge(&mut self) {
        let now = Instant::now();
        self.last_purge = now;
        let grace = self.grace;
        let mut gone = Vec::new();
        self.spaces.retain(|&pid, s| {
            let keep = s.exited.is_none_or(|t| now.duration_since(t) < grace);
            if !keep {
                gone.push(pid);
            }
            keep
        });
        files::with_pins(|pins| gone.into_iter().for_each(|pid| pins.release(pid)));
    }

    /// Forget a process now (e.g. once all its events are reported).
    pub fn forget(&mut self, pid: u32) {
        self.spaces.remove(&pid);
        files::with_pins(|pins| pins.release(pid));
    }

    /// The mapping of `pid` containing `addr`.
    pub fn find(&mut self, pid: u32, addr: u64) -> Option<&Mapping> {
        let fresh = self.ensure(pid);
        // Our own records are ignored, and on a busy host the kernel may have
        // dropped some (`lost_records`): re-read /proc on a miss.
        if !fresh
            && (pid == self.self_pid || self.lost > 0)
            && self.spaces.get(&pid)?.find(addr).is_none()
        {
            self.seed(pid);
        }
        self.spaces.get(&pid)?.find(addr)
    }

    /// Reads the mappings of a live process again (its known ones miss an
    /// address it uses: a space made from a fork record whose parent was
    /// never seen is empty). False if it is gone.
    pub fn reread(&mut self, pid: u32) -> bool {
        self.seed(pid)
    }

    /// Reads the mappings of a live process now, if unknown: a process
    /// traced by pid must stay resolvable after it exits.
    pub fn remember(&mut self, pid: u32) {
        self.ensure(pid);
    }

    /// All mappings of `pid`, sorted by address.
    pub fn mappings(&mut self, pid: u32) -> impl Iterator<Item = &Mapping> {
        self.ensure(pid);
        self.spaces
            .get(&pid)
            .into_iter()
            .flat_map(|s| s.maps.values())
    }

    /// The name (comm) of the process, as of its last exec or rename.
    pub fn process_name(&mut self, pid: u32) -> Option<String> {
        self.ensure(pid);
        self.spaces.get(&pid)?.name.clone()
    }

    /// Where the process runs (see [`crate::host::proc::Origin`]): read
    /// from `/proc/PID/cgroup` the first time, then kept with its address
    /// space (so, bounded like the spaces: forgotten a grace period after
    /// the process exits). A process never seen is read, not kept; one
    /// that exited unread has none.
    pub fn origin(&mut self, pid: u32) -> Option<crate::host::proc::Origin> {
        self.ensure(pid);
        if let Some(space) = self.spaces.get(&pid) {
            if space.origin.is_some() || space.exited.is_some() {
                // Gone: its pid may be another process's by now.
                return space.origin.clone();
            }
        }
        let read = crate::host::proc::origin(pid)?;
        if let Some(space) = self.spaces.get_mut(&pid) {
            space.origin = Some(read.clone());
        }
        Some(read)
    }

    /// Reads the origin of process `pid` now (a record of it was just
    /// read: it ran a moment ago), from `/proc`, or, if it is gone already,
    /// from `cgroup_id`, the cgroup its thread was in (see
    /// [`crate::host::cgroups`]).
    pub fn note_origin(&mut self, pid: u32, cgroup_id: u64) {
        if self.origin(pid).is_some() || cgroup_id == 0 {
            return;
        }
        let Some(path) = crate::host::cgroups::path_of(cgroup_id) else {
            return;
        };
        let origin = crate::host::proc::origin_of_path(&path);
        self.spaces.entry(pid).or_default().origin = Some(origin);
    }

    /// Whether the process is known to have exited.
    pub fn has_exited(&self, pid: u32) -> bool {
        self.spaces.get(&pid).is_some_and(|s| s.exited.is_some())
    }

    /// Seed an unknown pid from /proc; true if it was just seeded.
    fn ensure(&mut self, pid: u32) -> bool {
        if self.spaces.contains_key(&pid) {
            return false;
        }
        self.seed(pid)
    }

    /// (Re)load the mappings of a live process from /proc/PID/maps.
    fn seed(&mut self, pid: u32) -> bool {
        let Some(maps) = read_proc_maps(pid) else {
            return false;
        };
        let mut space = Space {
            name: read_comm(pid),
            ..Space::default()
        };
        for m in maps {
            pin_if_foreign(pid, &m);
            space.insert(m);
        }
        // A process seeded now may have been known and exited: keep that.
        if let Some(old) = self.spaces.get(&pid) {
            space.exited = old.exited;
            space.origin = old.origin.clone();
        }
        self.spaces.insert(pid, space);
        true
    }

    fn apply(&mut self, r: Record) {
        match r.kind {
            RecordKind::Mmap(m) => {
                if r.pid == self.self_pid {
                    return;
                }
                self.ensure(r.pid);
                pin_if_foreign(r.pid, &m);
                if m.executable
                    && m.path
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("libpython"))
                {
                    self.new_programs.push(r.pid);
                }
                if m.executable && crate::host::elf::is_lock_library(&m.path) {
                    self.new_libraries.push((r.pid, m.clone()));
                }
                self.spaces.entry(r.pid).or_default().insert(m);
            }
            RecordKind::Comm { exec, tid, name } => {
                if r.pid == self.self_pid {
                    return;
                }
                if exec {
                    // The address space is replaced; the new image's mmap
                    // records follow.
                    self.new_programs.push(r.pid);
                    self.execs.push((r.pid, r.time));
                    let space = self.spaces.entry(r.pid).or_default();
                    space.maps = Default::default();
                    space.exited = None;
                    space.name = Some(name);
                } else if tid == r.pid {
                    self.ensure(r.pid);
                    self.spaces.entry(r.pid).or_default().name = Some(name);
                }
            }
            RecordKind::Fork { ppid } => {
                if r.pid == ppid || r.pid == self.self_pid {
                    return; // a new thread
                }
                self.forks.push((r.pid, r.time));
                // The parent may be a process we never saw: seed it (or us).
                if !self.spaces.contains_key(&ppid) {
                    self.seed(ppid);
                }
                // Its origin read already (its first dependency came
                // before this record was replayed) is its own; an exited
                // process's of the same pid is not.
                let origin = self
                    .spaces
                    .get(&r.pid)
                    .filter(|s| s.exited.is_none())
                    .and_then(|s| s.origin.clone());
                let mut child = match self.spaces.get(&ppid) {
                    Some(p) => Space {
                        maps: p.maps.clone(),
                        name: p.name.clone(),
                        exited: None,
                        origin: None,
                    },
                    None => Space::default(),
                };
                child.origin = origin;
                self.spaces.insert(r.pid, child);
            }
            RecordKind::Exit { tid } => {
                if tid != r.pid || r.pid == self.self_pid {
                    return; // a thread, not the process
                }
                if let Some(s) = self.spaces.get_mut(&r.pid) {
                    s.exited = Some(Instant::now());
                }
            }
            RecordKind::Lost(n) => {
                if self.lost == 0 {
                    tracing::warn!("perf side-band records lost: mappings may be incomplete");
                }
                self.lost += n;
            }
        }
    }
}

/// The mappings of a live process, from `/proc/PID/maps`.
pub fn read_proc_maps(pid: u32) -> Option<Vec<Mapping>> {
    use procfs::process::{MMPermissions, MMapPath};
    let maps = procfs::process::Process::new(pid as i32)
        .ok()?
        .maps()
        .ok()?;
    let mappings = maps
        .into_iter()
        .map(|m| {
            let path = match m.pathname {
                MMapPath::Path(p) => p,
                MMapPath::Heap => "[heap]".into(),
                MMapPath::Stack | MMapPath::TStack(_) => "[stack]".into(),
                MMapPath::Vdso => "[vdso]".into(),
                MMapPath::Vvar => "[vvar]".into(),
                MMapPath::Vsyscall => "[vsyscall]".into(),
                MMapPath::Other(s) => s.into(),
                _ => ANON_PATH.into(),
            };
            Mapping {
                start: m.address.0,
                end: m.address.1,
                file_offset: m.offset,
                path,
                dev: libc::makedev(m.dev.0 as u32, m.dev.1 as u32),
                inode: m.inode,
                executable: m.perms.contains(MMPermissions::EXECUTE),
                shared: m.perms.contains(MMPermissions::SHARED),
            }
        })
        .collect();
    Some(mappings)
}

/// Whether `p` is the file mapped by `m` (the same name may be another file
/// here: a chroot's or a container's libc has the host's path).
fn is_file_of(p: &Path, m: &Mapping) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).is_ok_and(|meta| meta.ino() == m.inode && meta.dev() == m.dev)
}

/// Keeps the file of `m` open (see [`files::Pins`]) if process `pid` sees it
/// at a path that is another file (or no file) here: a file of another
/// mount namespace (a chroot's, a container's), or a deleted one. After the
/// process exits, `/proc/PID/root` is gone and the file has no path of its
/// own here. Only ELF files mapped executable, the code symbolized and
/// unwound (their data mappings are the same file): shared memory, memfds
/// and deleted data files are never held, whoever maps them.
fn pin_if_foreign(pid: u32, m: &Mapping) {
    if !m.executable || !m.is_file() || is_file_of(&m.path, m) {
        return;
    }
    files::with_pins(|pins| {
        pins.pin((m.dev, m.inode), pid, || {
            let file = files::open(&foreign_path(pid, m)?).ok()?;
            let elf = files::is_elf(&file);
            if elf {
                tracing::debug!(pid, file = %m.path.display(), inode = m.inode, "pinned a file of another mount namespace or root");
            }
            elf.then_some(file)
        })
    });
}

/// The file of `m` through the process's own view of the file system.
fn foreign_path(pid: u32, m: &Mapping) -> Option<PathBuf> {
    let rooted = Path::new("/proc")
        .join(pid.to_string())
        .join("root")
        .join(m.path.strip_prefix("/").ok()?);
    if is_file_of(&rooted, m) {
        return Some(rooted);
    }
    let by_range = PathBuf::from(format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end));
    by_range.exists().then_some(by_range)
}

/// The path on the host of a file that process `pid` maps from under a
/// root of its own (a chroot, a container whose root is a host
/// directory), when the file found there is the one mapped: the name the
/// process sees (`/usr/lib/x86_64-linux-gnu/libc.so.6`) may be the host's
/// own libc's, another file.
pub fn host_path(pid: u32, m: &Mapping) -> Option<PathBuf> {
    if !m.is_file() || is_file_of(&m.path, m) {
        return None;
    }
    let by_root = std::fs::read_link(format!("/proc/{pid}/root"))
        .ok()
        .filter(|root| root != Path::new("/"))
        .and_then(|root| Some(root.join(m.path.strip_prefix("/").ok()?)));
    // The process may be gone already: the copy pinned while it lived
    // knows its path here too.
    let by_pin = || {
        let fd_path = files::with_pins(|pins| pins.path((m.dev, m.inode)))?;
        std::fs::read_link(fd_path).ok()
    };
    by_root
        .filter(|p| is_file_of(p, m))
        .or_else(|| by_pin().filter(|p| is_file_of(p, m)))
}

/// A path through which the file mapped by `m` can be opened: its own path,
/// else (for a file of another mount namespace, or a deleted file) a copy
/// pinned open earlier, or the live process's `/proc/PID/root` or
/// `/proc/PID/map_files`.
pub fn readable_path(pid: u32, m: &Mapping) -> Option<PathBuf> {
    if !m.is_file() {
        return None;
    }
    if is_file_of(&m.path, m) {
        return Some(m.path.clone());
    }
    if let Some(pinned) = files::with_pins(|pins| pins.path((m.dev, m.inode))) {
        return Some(pinned);
    }
    foreign_path(pid, m)
}

fn read_comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end_matches('\n').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::elf::{load_bias, LoadSegment};
    use std::process::Command;

    fn mapping(start: u64, end: u64, off: u64, path: &str) -> Mapping {
        Mapping {
            start,
            end,
            file_offset: off,
            path: path.into(),
            dev: 1,
            inode: 7,
            executable: false,
            shared: false,
        }
    }

    #[test]
    fn insert_splits_overlaps() {
        let mut s = Space::default();
        s.insert(mapping(0x1000, 0x5000, 0, "/a"));
        s.insert(mapping(0x2000, 0x3000, 0, "/b"));
        let v: Vec<_> = s.maps.values().cloned().collect();
        assert_eq!(
            v,
            vec![
                mapping(0x1000, 0x2000, 0, "/a"),
                mapping(0x2000, 0x3000, 0, "/b"),
                mapping(0x3000, 0x5000, 0x2000, "/a"),
            ]
        );
        assert_eq!(s.find(0x3fff).unwrap().path, Path::new("/a"));
        assert!(s.find(0x5000).is_none());
        assert!(s.find(0xfff).is_none());
        // Covering several.
        s.insert(mapping(0x1800, 0x4000, 0x10, "/c"));
        let v: Vec<_> = s.maps.values().map(|m| (m.start, m.end)).collect();
        assert_eq!(
            v,
            vec![(0x1000, 0x1800), (0x1800, 0x4000), (0x4000, 0x5000)]
        );
        assert_eq!(s.find(0x4000).unwrap().file_offset, 0x3000);
    }

    #[test]
    fn bias_from_segments() {
        let loads = [
            LoadSegment {
                vaddr: 0,
                memsz: 0x600,
                offset: 0,
                filesz: 0x600,
                executable: false,
            },
            LoadSegment {
                vaddr: 0x1000,
                memsz: 0x200,
                offset: 0x1000,
                filesz: 0x200,
                executable: true,
            },
            LoadSegment {
                vaddr: 0x3df0,
                memsz: 0x300,
                offset: 0x2df0,
                filesz: 0x250,
                executable: false,
            },
        ];
        let mut m = mapping(0x5555_0000_1000, 0x5555_0000_2000, 0x1000, "/x");
        m.executable = true;
        assert_eq!(load_bias(&m, &loads), Some(0x5555_0000_0000));
        // The data segment: file page 0x2000 is mapped at svma 0x3000.
        let m = mapping(0x5555_0000_3000, 0x5555_0000_4000, 0x2000, "/x");
        assert_eq!(load_bias(&m, &loads), Some(0x5555_0000_0000));
        // A non-PIE executable: svma == avma.
        let mut m = mapping(0x1000, 0x2000, 0x1000, "/x");
        m.executable = true;
        assert_eq!(load_bias(&m, &loads), Some(0));
        // Not a loaded part of the file.
        let m = mapping(0x9000, 0xa000, 0x8000, "/x");
        assert_eq!(load_bias(&m, &loads), None);
    }

    #[test]
    fn proc_seed_finds_own_code() {
        let mut spaces = AddressSpaces::proc_only();
        let f = proc_seed_finds_own_code as *const () as u64;
        let m = spaces.find(std::process::id(), f).expect("own code mapped");
        assert!(m.is_file() && m.executable, "{m:?}");
        assert!(spaces.process_name(std::process::id()).is_some());
    }

    /// A child that runs briefly is still resolvable after it was reaped.
    #[test]
    fn short_lived_child_stays_resolvable() {
        let mut spaces = AddressSpaces::new().unwrap();
        if !spaces.is_tracking() {
            eprintln!("perf events unavailable: skipping");
            return;
        }
        let child = Command::new("/bin/sleep").arg("0.3").spawn().unwrap();
        let pid = child.id();
        let mut found = None;
        for _ in 0..200 {
            spaces.sync();
            if let Some(space) = spaces.spaces.get(&pid) {
                if let Some(m) = space
                    .maps
                    .values()
                    .find(|m| m.executable && m.path.ends_with("sleep"))
                {
                    found = Some(m.clone());
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let m = found.expect("sleep's text mapping seen through perf records");
        let mut child = child;
        child.wait().unwrap();
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
        spaces.sync();
        assert!(spaces.has_exited(pid));
        assert_eq!(spaces.find(pid, m.start + 16), Some(&m));
        assert_eq!(spaces.process_name(pid).as_deref(), Some("sleep"));
        // libc is mapped too.
        assert!(spaces
            .mappings(pid)
            .any(|m| m.path.to_string_lossy().contains("libc.so")));
        spaces.set_grace(Duration::ZERO);
        spaces.purge();
        assert!(spaces.find(pid, m.start + 16).is_none());
    }
}
