//! Following new lock libraries: a libc that a process maps while we run (a
//! container started now, a program run with another copy of libc) gets the
//! probes as soon as its mapping is seen. That process runs on meanwhile:
//! its lock operations before the attach (usually its first milliseconds)
//! are not seen, which the log says.

use std::collections::HashSet;

use tracing::{debug, info, warn};

use crate::host::spaces::Mapping;
use crate::kernel::load::Probes;
use crate::kernel::targets::{FileId, Target};

pub struct Follower {
    /// Whether to probe new libraries at all (not with `--libc`).
    enabled: bool,
    /// Lock libraries that could not be probed (reported once).
    unprobeable: HashSet<FileId>,
    /// Lock libraries whose processes exited before the file could be
    /// opened: warned about once (a chroot running short-lived programs,
    /// a package build, would otherwise log a line per process).
    missed: HashSet<FileId>,
}

impl Follower {
    pub fn new(enabled: bool) -> Self {
        Follower {
            enabled,
            unprobeable: HashSet::new(),
            missed: HashSet::new(),
        }
    }

    /// Attaches the probes to the lock libraries in `mapped` (process,
    /// mapping) that have none yet.
    pub fn attach_new(&mut self, probes: &mut Probes, mapped: Vec<(u32, Mapping)>) {
        if !self.enabled {
            return;
        }
        for (pid, m) in mapped {
            let id = FileId {
                dev: m.dev,
                inode: m.inode,
            };
            if probes.is_probed(id) || self.unprobeable.contains(&id) || !probes.may_trace(pid) {
                continue;
            }
            let Some(target) = Target::from_mapping(pid, &m) else {
                if self.missed.insert(id) {
                    warn!(pid, file = %m.path.display(), "cannot probe a newly mapped lock library yet: the process exited before it could be opened (tried again with the next process that maps it; not logged again)");
                } else {
                    debug!(pid, file = %m.path.display(), "cannot probe a newly mapped lock library: the process exited before it could be opened");
                }
                continue;
            };
            if !target.is_lock_library_file() {
                debug!(file = %m.path.display(), "not a lock library (no sem_wait and pthread_mutex_lock of its own)");
                self.unprobeable.insert(id);
                continue;
            }
            match probes.attach_file(&target) {
                Ok(missing) => info!(
                    pid,
                    file = %target.name.display(),
                    ?missing,
                    "probing a newly mapped lock library; the process's lock operations before now were not seen"
                ),
                Err(e) => {
                    warn!(pid, file = %m.path.display(), "cannot probe a newly mapped lock library: {e:#}");
                    self.unprobeable.insert(id);
                }
            }
        }
    }
}
