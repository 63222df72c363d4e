//! Probing the lock traffic in time slices (an overhead budget): the links
//! of the acquisition and release programs are closed and made again, the
//! lock lifecycle ones (init, destroy) stay.
//!
//! Held-lock state is made safe at every switch by forgetting it while no
//! traffic program can run: once the closing links are gone (each close
//! waits for a grace period, so it happens on another thread and the
//! caller polls it) and again just before the new links are made. A lock
//! taken before a slice and released in it is an unmatched release; one
//! taken in a slice and released after it is forgotten at the next switch:
//! neither can order anything.

use std::collections::HashMap as StdHashMap;
use std::os::fd::OwnedFd;
use std::thread::JoinHandle;

use anyhow::Result;
use aya::maps::HashMap;

use tracer_common::{HeldStack, Pending};

use crate::kernel::links::Which;
use crate::kernel::load::Probes;
use crate::kernel::multi;

/// The kernel maps of per-thread lock state that a slice switch forgets:
/// held-lock stacks, those inherited at a fork, pending try and timed
/// requests, condition waits in progress.
const THREAD_STATE: &[&str] = &["HELD", "INHERIT", "PENDING_TRY", "COND_WAITS"];

impl Probes {
    /// Stops probing the lock traffic: its links close on a thread that
    /// ends once they are gone, the acquisitions' first. (All at once, a
    /// release link could go first: a lock released then, unseen, while
    /// the acquisition probes still ran, would order the thread's next
    /// acquisition after it.)
    pub fn traffic_off(&mut self) -> JoinHandle<()> {
        self.links.traffic_on = false;
        let take = |links: &mut StdHashMap<Option<u32>, Vec<OwnedFd>>| -> Vec<OwnedFd> {
            std::mem::take(links).into_values().flatten().collect()
        };
        let acquisitions = take(&mut self.links.traffic_acquisitions);
        let releases = take(&mut self.links.traffic);
        std::thread::spawn(move || {
            multi::close_concurrently(acquisitions);
            multi::close_concurrently(releases);
        })
    }

    /// Probes the lock traffic again, in every traced scope, after
    /// forgetting the per-thread state (no traffic program runs now).
    pub fn traffic_on(&mut self) -> Result<()> {
        self.forget_thread_state()?;
        self.links.traffic_on = true;
        let scopes: Vec<Option<u32>> = self.links.by_process.keys().copied().collect();
        // Releases first (see `Which::Acquisitions`).
        for which in [Which::Releases, Which::Acquisitions] {
            for &scope in &scopes {
                let mut made = Vec::new();
                for plan in self.links.plans.values() {
                    match self.link(plan, scope, which) {
                        Ok(links) => made.extend(links),
                        // The process exited meanwhile: `unlink_exited`
                        // closes what it has.
                        Err(e) if scope.is_some_and(|pid| !crate::host::proc::is_process(pid)) => {
                            tracing::debug!("cannot probe an exited process: {e:#}");
                        }
                        Err(e) => return Err(e),
                    }
                }
                self.links.keep(scope, which, made);
            }
        }
        Ok(())
    }

    /// Forgets every thread's lock state (see [`THREAD_STATE`]). Only safe
    /// while no traffic program runs.
    pub fn forget_thread_state(&mut self) -> Result<()> {
        for &name in THREAD_STATE {
            let map = self.map_mut(name)?;
            if name == "HELD" || name == "INHERIT" {
                clear::<HeldStack>(map)?;
            } else {
                clear::<Pending>(map)?;
            }
        }
        Ok(())
    }
}

/// Deletes every entry of a map keyed by tid.
fn clear<V: aya::Pod>(map: &mut aya::maps::Map) -> Result<()> {
    let mut m: HashMap<_, u32, V> = HashMap::try_from(map)?;
    let keys: Vec<u32> = m.keys().filter_map(|k| k.ok()).collect();
    for tid in keys {
        // Gone already (the thread exited): fine.
        let _ = m.remove(&tid);
    }
    Ok(())
}
