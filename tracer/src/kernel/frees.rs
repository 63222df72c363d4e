//! Watching `free` in one process (see the kernel side's `freed`): a heap
//! lock freed without a destroy, its memory then a new lock that no init
//! call announces (zeroed, `PTHREAD_MUTEX_INITIALIZER`, a C++ `std::mutex`,
//! which never calls `pthread_mutex_init` or `_destroy`), is the same
//! address, so without the free the new lock would inherit the old one's
//! dependencies: a false inversion.
//!
//! A probe on `free` costs every call a trap, so it is put only in the
//! processes whose dependencies name a heap lock, when the first one is
//! seen (`--watch-free` puts it everywhere from the start instead). The
//! time it went in is kept: a heap lock's dependency recorded before that
//! cannot be judged (see `reuse`).

use std::{num::NonZeroU32, os::fd::AsFd};

use anyhow::{anyhow, Result};
use aya::programs::{
    uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
    UProbe,
};
use tracing::debug;

use crate::kernel::links::{Attacher, FreeLink, Group, Watch};
use crate::kernel::load::Probes;
use crate::kernel::multi;
use crate::kernel::targets::FileId;

/// Whether a process's frees are seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watched {
    /// Since this CLOCK_MONOTONIC time (ns): 0 with `--watch-free`.
    Since(u64),
    /// Not yet.
    No,
    /// They cannot be: no `free` in the files probed.
    Never,
}

impl Probes {
    /// Whether process `pid`'s frees are watched: `mapped` are the files
    /// it maps now (device, inode).
    pub fn frees_watched(&self, pid: u32, mapped: &[FileId]) -> Watched {
        if self.watch_free {
            return Watched::Since(0);
        }
        let watches = &self.links.frees;
        match watches.by_process.get(&pid) {
            Some(w) if w.files.iter().any(|f| mapped.contains(f)) => Watched::Since(w.since),
            Some(_) => Watched::No,
            None if watches.unwatchable.contains_key(&pid) => Watched::Never,
            None => Watched::No,
        }
    }

    /// Puts the `free` probe of the probed files that process `pid` maps
    /// (`mapped`) in it, unless they are there.
    pub fn watch_frees(&mut self, pid: u32, mapped: &[FileId]) -> Result<Watched> {
        let now = self.frees_watched(pid, mapped);
        if now != Watched::No {
            return Ok(now);
        }
        let groups: Vec<(FileId, std::path::PathBuf, Group)> = self
            .links
            .plans
            .iter()
            .filter(|(id, _)| mapped.contains(id))
            .filter_map(|(id, plan)| Some((*id, plan.open_path.clone(), plan.free.clone()?)))
            .collect();
        if groups.is_empty() {
            self.links.frees.unwatchable.insert(pid, ());
            return Ok(Watched::Never);
        }
        let mut made = Vec::new();
        for (_, path, group) in &groups {
            match &self.links.attacher {
                Attacher::Multi(programs) => {
                    let program = programs
                        .get(group.program)
                        .ok_or_else(|| anyhow!("program {} was not loaded", group.program))?;
                    let link = multi::attach(
                        program.as_fd(),
                        path,
                        &group.offsets,
                        &group.cookies,
                        false,
                        Some(pid),
                    )?;
                    made.push(FreeLink::Multi(link));
                }
                Attacher::Single => {
                    let scope = UProbeScope::OneProcess(
                        NonZeroU32::new(pid).ok_or_else(|| anyhow!("pid 0"))?,
                    );
                    let uprobe: &mut UProbe = self.program(group.program)?.try_into()?;
                    if uprobe.fd().is_err() {
                        uprobe.load()?;
                    }
                    for (&offset, &cookie) in group.offsets.iter().zip(&group.cookies) {
                        let at = UProbeAttachPoint {
                            location: UProbeAttachLocation::AbsoluteOffset(offset),
                            cookie: Some(cookie),
                        };
                        let id = uprobe.attach(at, path, scope)?;
                        made.push(FreeLink::Single(uprobe.take_link(id)?));
                    }
                }
            }
        }
        let since = crate::host::proc::clock_ns(libc::CLOCK_MONOTONIC);
        debug!(pid, links = made.len(), "frees watched");
        let watch = Watch {
            since,
            files: groups.iter().map(|g| g.0).collect(),
            links: made,
        };
        if let Some(old) = self.links.frees.by_process.insert(pid, watch) {
            // Another program's files (an exec).
            self.links.closers.push(std::thread::spawn(move || {
                multi::close_concurrently(old.links)
            }));
        }
        Ok(Watched::Since(since))
    }

    /// Processes whose frees are watched now (for the summary).
    pub fn processes_watching_frees(&self) -> usize {
        self.links.frees.by_process.len()
    }

    /// Closes the `free` links of processes that exited (in the background:
    /// each close waits for a grace period). Their watch stays known until
    /// [`Probes::forget_frees`].
    pub(super) fn unwatch_exited(&mut self) {
        let closing: Vec<FreeLink> = self
            .links
            .frees
            .by_process
            .iter_mut()
            .filter(|(&pid, w)| !w.links.is_empty() && !crate::host::proc::is_process(pid))
            .flat_map(|(_, w)| std::mem::take(&mut w.links))
            .collect();
        if !closing.is_empty() {
            self.links.closers.push(std::thread::spawn(move || {
                multi::close_concurrently(closing)
            }));
        }
    }

    /// Process `pid`'s exit record was processed: nothing of it comes any
    /// more, and its pid may be another process's next.
    pub fn forget_frees(&mut self, pid: u32) {
        let watches = &mut self.links.frees;
        watches.unwatchable.remove(&pid);
        if let Some(w) = watches.by_process.remove(&pid) {
            if !w.links.is_empty() {
                self.links.closers.push(std::thread::spawn(move || {
                    multi::close_concurrently(w.links)
                }));
            }
        }
    }
}
