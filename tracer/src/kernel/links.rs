//! The state of the lock probes' links: how they are made, the files with
//! probes and where each probe goes, and the links by process (`attach`
//! makes them).

use std::{
    collections::{BTreeMap, HashMap},
    os::fd::OwnedFd,
    path::PathBuf,
    thread::JoinHandle,
    time::Duration,
};

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
    /// Links are made per traced process (`watch --pid`).
    pub per_process: bool,
    pub late: LateLinks,
    /// Threads closing the links of exited processes.
    pub closers: Vec<JoinHandle<()>>,
}

impl Links {
    pub fn new(attacher: Attacher, per_process: bool) -> Self {
        Links {
            attacher,
            plans: BTreeMap::new(),
            by_process: HashMap::new(),
            per_process,
            late: LateLinks::default(),
            closers: Vec::new(),
        }
    }

    /// Closes every link at once (see `multi::close_concurrently`).
    pub fn close_all(&mut self) {
        let all: Vec<OwnedFd> = std::mem::take(&mut self.by_process)
            .into_values()
            .flatten()
            .collect();
        multi::close_concurrently(all);
        for closer in self.closers.drain(..) {
            let _ = closer.join();
        }
    }
}
