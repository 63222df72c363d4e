//! The state of the lock probes' links: how they are made, the files with
//! probes and where each probe goes, and the links by process (`attach`
//! makes them).

use std::{
    collections::{BTreeMap, HashMap},
    os::fd::OwnedFd,
    path::PathBuf,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::programs::uprobe::UProbeLink;

use crate::kernel::multi;
use crate::kernel::targets::FileId;

/// How the probes are attached.
pub enum Attacher {
    /// Multi-uprobe links, with the programs loaded for them.
    Multi(HashMap<&'static str, OwnedFd>),
    /// aya's single uprobes (kernels before 6.6, and probes at offset 0).
    Single,
}

/// The probes of one file that one link attaches: one program, entry or
/// return, at these file offsets.
#[derive(Clone)]
pub struct Group {
    pub program: &'static str,
    pub is_return: bool,
    pub offsets: Vec<u64>,
    /// For probes at offset 0 (a comparison mode, single uprobes only):
    /// where the kernel refuses the first instruction (a `lock` prefixed
    /// one, as in pthread_spin_lock), the placed offset is the next best.
    pub placed: Vec<u64>,
    /// The cookie of each probe (see `catalogue::Uprobe::cookie`).
    pub cookies: Vec<u64>,
}

/// A file with probes: where to open it and its groups, in attach order.
pub struct FilePlan {
    pub name: PathBuf,
    pub open_path: PathBuf,
    pub groups: Vec<Group>,
    /// `free`, if the file has it: put in a process when its frees must be
    /// seen (see `frees`), or in `groups` with `--watch-free`.
    pub free: Option<Group>,
}

/// Links of processes attached after they started (`watch --pid`: children
/// forked while tracing), for the summary.
#[derive(Clone, Copy, Debug, Default)]
pub struct LateLinks {
    pub processes: u64,
    pub max_delay: Duration,
}

/// Every link, and what they were made from.
pub struct Links {
    pub attacher: Attacher,
    /// The files with probes.
    pub plans: BTreeMap<FileId, FilePlan>,
    /// Multi-uprobe links, by the process they are for (`None`: all).
    pub by_process: HashMap<Option<u32>, Vec<OwnedFd>>,
    /// aya's single uprobes (kernels without multi-uprobe links), for
    /// every process, in attach order (see [`close_singles`]).
    pub singles: Vec<UProbeLink>,
    /// Links are made per traced process (`watch --pid`).
    pub per_process: bool,
    pub late: LateLinks,
    /// Threads closing the links of exited processes.
    pub closers: Vec<JoinHandle<()>>,
    /// With an overhead budget: the links of the lock traffic programs, by
    /// process, apart from the lock lifecycle ones in `by_process` (see
    /// `slices`): releases (with condition waits) here, acquisitions in
    /// `traffic_acquisitions`, so that those close first.
    pub traffic: HashMap<Option<u32>, Vec<OwnedFd>>,
    pub traffic_acquisitions: HashMap<Option<u32>, Vec<OwnedFd>>,
    /// Whether the lock traffic is probed now (always without a budget).
    pub traffic_on: bool,
    /// Lock traffic links are kept in `traffic` (an overhead budget).
    pub sliced: bool,
    /// The processes whose frees are watched (see `frees`).
    pub frees: FreeWatches,
    /// Traced processes refused their links for lack of descriptors.
    pub refused: Refusals,
}

/// Which groups of a plan to link.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Which {
    All,
    /// Lock init and destroy: always probed, so that a lock's identity
    /// (its class, a reused address) is known even when its traffic is
    /// not.
    Lifecycle,
    /// Releases, and the other traffic programs that record no
    /// acquisition (condition waits, the returns of try operations).
    Releases,
    /// The programs that record acquisitions: made after the releases,
    /// closed before them, so that an acquisition seen always has its
    /// release seen.
    Acquisitions,
}

impl Which {
    pub fn wants(self, program: &str) -> bool {
        use crate::kernel::catalogue::{is_lifecycle, records_acquisitions};
        let lifecycle = is_lifecycle(program);
        match self {
            Which::All => true,
            Which::Lifecycle => lifecycle,
            Which::Releases => !lifecycle && !records_acquisitions(program),
            Which::Acquisitions => records_acquisitions(program),
        }
    }
}

impl Links {
    pub fn new(attacher: Attacher, per_process: bool) -> Self {
        Links {
            attacher,
            plans: BTreeMap::new(),
            by_process: HashMap::new(),
            singles: Vec::new(),
            per_process,
            late: LateLinks::default(),
            closers: Vec::new(),
            traffic: HashMap::new(),
            traffic_acquisitions: HashMap::new(),
            traffic_on: true,
            sliced: false,
            frees: FreeWatches::default(),
            refused: Refusals::default(),
        }
    }

    /// Keeps the links `made` for `scope` by `which`.
    pub fn keep(&mut self, scope: Option<u32>, which: Which, made: Vec<OwnedFd>) {
        let to = match (self.sliced, which) {
            (true, Which::Releases) => &mut self.traffic,
            (true, Which::Acquisitions) => &mut self.traffic_acquisitions,
            _ => &mut self.by_process,
        };
        to.entry(scope).or_default().extend(made);
    }

    /// What to link in a new scope or file now.
    pub fn linked_now(&self) -> &'static [Which] {
        match (self.sliced, self.traffic_on) {
            (false, _) => &[Which::All],
            (true, true) => &[Which::Lifecycle, Which::Releases, Which::Acquisitions],
            (true, false) => &[Which::Lifecycle],
        }
    }

    /// Closes every link: the multi-uprobe links at once (see
    /// `multi::close_concurrently`), the single uprobes one by one (see
    /// [`close_singles`]).
    pub fn close_all(&mut self) {
        let frees = self.frees.take_all();
        std::thread::scope(|s| {
            s.spawn(|| multi::close_concurrently(frees));
            close_singles(std::mem::take(&mut self.singles));
            multi::close_concurrently(self.take_all());
        });
        for closer in self.closers.drain(..) {
            let _ = closer.join();
        }
    }

    /// Starts closing every link on a thread of its own (joined by
    /// [`Links::close_all`]): tracing stops, no new record comes, and the
    /// kernel's grace periods pass while what is left is processed.
    pub fn close_all_in_background(&mut self) {
        let all = self.take_all();
        let frees = self.frees.take_all();
        let singles = std::mem::take(&mut self.singles);
        self.closers.push(std::thread::spawn(move || {
            std::thread::scope(|s| {
                s.spawn(|| multi::close_concurrently(frees));
                close_singles(singles);
                multi::close_concurrently(all);
            })
        }));
    }

    fn take_all(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.by_process)
            .into_values()
            .chain(std::mem::take(&mut self.traffic).into_values())
            .chain(std::mem::take(&mut self.traffic_acquisitions).into_values())
            .flatten()
            .collect()
    }
}

/// The `free` links of one process.
pub enum FreeLink {
    Multi(std::os::fd::OwnedFd),
    Single(UProbeLink),
}

/// The `free` probes of one process.
pub struct Watch {
    /// CLOCK_MONOTONIC ns when the probes were live.
    pub since: u64,
    /// CLOCK_MONOTONIC ns of the process's next exec, if it exec'd after
    /// `since`: the new program's libc may be another file (a chroot).
    pub until: Option<u64>,
    /// Closed once the process is gone (`gone_at`); the watch stays known
    /// a while after (see `frees`).
    pub links: Vec<FreeLink>,
    pub gone_at: Option<Instant>,
}

/// Processes whose frees are watched, since when.
#[derive(Default)]
pub struct FreeWatches {
    pub by_process: HashMap<u32, Watch>,
    /// Processes where no probed file has a `free` to probe (glibc before
    /// 2.34 keeps the lock functions in libpthread): never watched.
    pub unwatchable: HashMap<u32, ()>,
    /// Processes refused a watch for lack of descriptors.
    pub refused: Refusals,
}

impl FreeWatches {
    /// Every link, to close. The watches stay known: the records left are
    /// processed after the links closed (tracing stops first).
    pub fn take_all(&mut self) -> Vec<FreeLink> {
        self.by_process
            .values_mut()
            .flat_map(|w| std::mem::take(&mut w.links))
            .collect()
    }
}

/// Processes refused links for lack of descriptors (see
/// `host::descriptors`). Each is left alone for [`Refusals::RETRY`], then
/// tried again: other processes' links close as they exit.
#[derive(Default)]
pub struct Refusals {
    at: HashMap<u32, Instant>,
    /// Processes refused at least once (for the summary).
    pub processes: u64,
}

impl Refusals {
    pub const RETRY: Duration = Duration::from_secs(10);

    /// Notes that `pid` was refused now; returns whether it is the first
    /// process ever refused (worth one warning).
    pub fn refuse(&mut self, pid: u32) -> bool {
        if self.at.insert(pid, Instant::now()).is_some() {
            return false;
        }
        self.processes += 1;
        self.processes == 1
    }

    /// Whether `pid` was refused less than [`Refusals::RETRY`] ago.
    pub fn recently_refused(&self, pid: u32) -> bool {
        self.at
            .get(&pid)
            .is_some_and(|at| at.elapsed() < Self::RETRY)
    }

    pub fn forget(&mut self, pid: u32) {
        self.at.remove(&pid);
    }

    /// Forgets the processes that exited (their pid may be reused).
    pub fn forget_exited(&mut self) {
        self.at.retain(|&pid, _| crate::host::proc::is_process(pid));
    }
}

/// Detaches single uprobes one at a time, the last attached first (the
/// acquisition programs before the releases, as `Which::Acquisitions`
/// wants). Not on several threads: Linux before 6.6 removes each one under
/// its global `event_mutex` (`perf_uprobe_destroy`), with three grace
/// periods and a walk over every process mapping the file, so concurrent
/// closes only queue there (measured on Debian's 6.1: the same 9-17 s for
/// 46 uprobes under load, one thread or 32), while each would hold a
/// thread and its descriptors meanwhile.
pub fn close_singles(links: Vec<UProbeLink>) {
    for link in links.into_iter().rev() {
        drop(link);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One warning for the first process refused, one count per process
    /// however often it is refused, and a refused process is left alone
    /// until it is forgotten or its retry delay passed.
    #[test]
    fn refusals_count_each_process_once_and_warn_once() {
        let mut refusals = Refusals::default();
        assert!(refusals.refuse(10));
        assert!(!refusals.refuse(10));
        assert!(!refusals.refuse(11));
        assert_eq!(refusals.processes, 2);
        assert!(refusals.recently_refused(10));
        assert!(!refusals.recently_refused(12));
        refusals.forget(10);
        assert!(!refusals.recently_refused(10));
        refusals.at.insert(11, Instant::now() - Refusals::RETRY);
        assert!(!refusals.recently_refused(11));
    }
}
