//! Putting the lock probes on files. Each file gets one multi-uprobe link per
//! program (see `multi`), for every process, or, with `watch --pid`, one per
//! traced process: the kernel then inserts breakpoints only in the traced
//! processes, and the others pay nothing. Kernels without multi-uprobe
//! links get aya's single uprobes, for every process.
//!
//! Order and arming: the programs that only consume state (releases, the
//! returns of try and condition waits) are attached before those that record
//! acquisitions, so that an acquisition seen always has its release seen; and
//! the kernel side records no acquisition until the collector arms it, once
//! every probe of the files found at start is live (`Probes::arm`).

use std::{
    collections::BTreeMap,
    os::fd::{AsFd, OwnedFd},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use aya::programs::{
    uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
    UProbe,
};
use tracing::{debug, info, warn};

use crate::kernel::catalogue::{records_acquisitions, FREE_WATCH, TWO_HIT_FLOOR_ONLY, UPROBES};
use crate::kernel::links::{Attacher, FilePlan, Group, LateLinks, Which};
use crate::kernel::load::{ProbePlacement, ProbePrograms, Probes};
use crate::kernel::multi;
use crate::kernel::placement;
use crate::kernel::targets::Target;

impl Probes {
    /// Attaches every lock probe to `target` (a libc, or a program with its
    /// own copy of the lock functions), for every process or for each
    /// traced one. Functions the file lacks (an older glibc has no
    /// `pthread_mutex_clocklock`) are skipped; returns their names.
    pub fn attach_file(&mut self, target: &Target) -> Result<Vec<&'static str>> {
        if self.links.plans.contains_key(&target.id) {
            return Ok(Vec::new());
        }
        let (plan, missing) = self.plan(target)?;
        let started = Instant::now();
        if let Attacher::Single = self.links.attacher {
            self.attach_single(&plan)?;
        } else {
            let scopes: Vec<Option<u32>> = if self.links.per_process {
                self.links.by_process.keys().copied().collect()
            } else {
                vec![None]
            };
            for scope in scopes {
                for &which in self.links.linked_now() {
                    match self.link(&plan, scope, which) {
                        Ok(links) => self.links.keep(scope, which, links),
                        // The process exited meanwhile.
                        Err(e) if scope.is_some() && is_gone(&e) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        info!(
            file = %target.name.display(), inode = target.id.inode,
            via = %target.open_path.display(), ?missing,
            elapsed = ?started.elapsed(), "probes attached"
        );
        self.links.plans.insert(target.id, plan);
        Ok(missing)
    }

    /// Puts the probes of every probed file in process `pid` (with links
    /// per process), once; returns whether it made links now.
    pub(super) fn link_process(&mut self, pid: u32) -> Result<bool> {
        if !self.links.per_process || self.links.by_process.contains_key(&Some(pid)) {
            return Ok(false);
        }
        let needed: u64 = self
            .links
            .plans
            .values()
            .map(|plan| plan.groups.len() as u64)
            .sum();
        if !crate::host::descriptors::room_for_links(needed) {
            // Tried again by `sweep_processes` after a while.
            if self.links.refused.refuse(pid) {
                warn!(
                    pid,
                    "no file descriptor to spare for a traced process's probes: it is \
                     not traced until one is (counted in the summary)"
                );
            }
            return Ok(false);
        }
        self.links.by_process.insert(Some(pid), Vec::new());
        for &which in self.links.linked_now() {
            let mut made = Vec::new();
            for plan in self.links.plans.values() {
                made.extend(self.link(plan, Some(pid), which)?);
            }
            self.links.keep(Some(pid), which, made);
        }
        Ok(true)
    }

    /// Process `pid` started (forked at `started_ns`, CLOCK_MONOTONIC)
    /// while tracing. With probes per process, a traced one (a child of a
    /// traced process: the kernel side follows forks) gets them now; until
    /// now it ran unseen, so the locks its parent held at the fork are
    /// forgotten (they may have been released meanwhile), and the delay is
    /// logged and counted.
    pub fn probe_new_process(&mut self, pid: u32, started_ns: Option<u64>) {
        if !self.links.per_process
            || self.links.by_process.contains_key(&Some(pid))
            || !self.may_trace(pid)
            || self.links.refused.recently_refused(pid)
        {
            return;
        }
        if let Err(e) = self.forget_thread(pid) {
            warn!(pid, "cannot reset a new process's held locks: {e:#}");
        }
        match self.link_process(pid) {
            Ok(false) => {}
            Ok(true) => {
                self.links.refused.forget(pid);
                let now = crate::host::proc::clock_ns(libc::CLOCK_MONOTONIC);
                let delay = Duration::from_nanos(started_ns.map_or(0, |t| now.saturating_sub(t)));
                debug!(
                    pid,
                    delay_ms = delay.as_secs_f64() * 1e3,
                    "probes put in a new process; its lock operations before were not seen"
                );
                self.links.late.processes += 1;
                self.links.late.max_delay = self.links.late.max_delay.max(delay);
            }
            Err(e) if is_gone(&e) => {
                self.links.by_process.remove(&Some(pid));
            }
            Err(e) => {
                warn!(pid, "cannot put the probes in a new process: {e:#}");
                // Not tried again.
                self.links.by_process.insert(Some(pid), Vec::new());
            }
        }
    }

    /// With probes per process: probes traced processes the fork records
    /// missed (the perf side-band lost records, or is not available), and
    /// closes the links of exited ones.
    pub fn sweep_processes(&mut self) {
        self.unwatch_exited();
        if !self.links.per_process {
            return;
        }
        self.unlink_exited();
        let Ok(mut traced) = self.traced_pids() else {
            return;
        };
        // Processes moved into a traced cgroup (no fork or exec there).
        for dir in &self.cgroup_dirs {
            for pid in crate::host::proc::pids_in_cgroup(dir) {
                if !traced.contains(&pid) && pid != std::process::id() {
                    traced.push(pid);
                }
            }
        }
        for pid in traced {
            if !self.links.by_process.contains_key(&Some(pid)) && !self.may_trace(pid) {
                // In the cgroup, not yet in the filter.
                if let Err(e) = self.add_to_filter(pid) {
                    debug!(pid, "cannot trace a process of the cgroup: {e:#}");
                    continue;
                }
            }
            if !self.links.by_process.contains_key(&Some(pid)) {
                let started = crate::host::proc::start_time_ns(pid);
                self.probe_new_process(pid, started);
            }
        }
    }

    /// Processes linked after they started, and the longest delay.
    pub fn late_links(&self) -> LateLinks {
        self.links.late
    }

    /// Traced processes left without probes for a while so far: no
    /// descriptor to spare for their links (see `host::descriptors`).
    pub fn processes_refused_links(&self) -> u64 {
        self.links.refused.processes
    }

    /// Closes the links of processes that exited (in the background: each
    /// close waits for a grace period).
    pub(super) fn unlink_exited(&mut self) {
        self.links.refused.forget_exited();
        let gone: Vec<Option<u32>> = self
            .links
            .by_process
            .keys()
            .copied()
            .filter(|scope| scope.is_some_and(|pid| !crate::host::proc::is_process(pid)))
            .collect();
        let mut closing = Vec::new();
        for scope in gone {
            closing.extend(self.links.by_process.remove(&scope).unwrap_or_default());
            closing.extend(self.links.traffic.remove(&scope).unwrap_or_default());
            closing.extend(
                self.links
                    .traffic_acquisitions
                    .remove(&scope)
                    .unwrap_or_default(),
            );
        }
        self.links.closers.retain(|closer| !closer.is_finished());
        if !closing.is_empty() {
            self.links.closers.push(std::thread::spawn(move || {
                multi::close_concurrently(closing)
            }));
        }
    }

    /// Where each program goes in `target`.
    fn plan(&self, target: &Target) -> Result<(FilePlan, Vec<&'static str>)> {
        let path = &target.open_path;
        let elf = crate::host::elf::read_bounded(path)?;
        if !Target::defines_any_lock_function(&elf) {
            bail!(
                "{} does not define any lock function (pthread_mutex_lock, sem_wait, ...)",
                target.name.display()
            );
        }
        let mut missing = Vec::new();
        // (acquisitions last, program, return) -> (offset, placed, cookie)
        type Placed = Vec<(u64, u64, u64)>;
        let mut groups: BTreeMap<(bool, &'static str, bool), Placed> = BTreeMap::new();
        let floor_only = match self.programs {
            ProbePrograms::Floor => TWO_HIT_FLOOR_ONLY,
            _ => &[],
        };
        for probe in UPROBES.iter().chain(floor_only) {
            let symbol = probe.symbol;
            let Ok((placed, function)) =
                placement::place_symbol(&elf, symbol, probe.reads, probe.repeat_safe)
            else {
                if !missing.contains(&symbol) {
                    missing.push(symbol);
                }
                continue;
            };
            let offset = match self.policy {
                ProbePlacement::Entry => 0,
                ProbePlacement::Emulated => placed.offset,
            };
            debug!(
                file = %target.name.display(), inode = target.id.inode, program = probe.program, symbol, offset, file_offset = function.file_offset + offset,
                instruction = %placed.instruction, emulated = placed.emulated,
                reason = %placed.reason, "probe placement"
            );
            let program = match (self.programs, probe.is_return) {
                (ProbePrograms::Tracer, _) => probe.program,
                (ProbePrograms::Floor | ProbePrograms::OneHitFloor, false) => "floor_entry",
                (ProbePrograms::Floor | ProbePrograms::OneHitFloor, true) => "floor_return",
            };
            // Acquisition programs sort last.
            let key = (
                records_acquisitions(probe.program),
                program,
                probe.is_return,
            );
            groups.entry(key).or_default().push((
                function.file_offset + offset,
                function.file_offset + placed.offset,
                probe.cookie,
            ));
        }
        // Symbols but no function a probe could be placed in (another
        // machine's code, or not the functions the catalogue knows): not
        // probed, and not to be listed as probed.
        if groups.is_empty() {
            bail!(
                "{}: none of its lock functions can be probed ({} missing or not placeable)",
                target.name.display(),
                missing.len()
            );
        }
        let mut groups: Vec<Group> = groups
            .into_iter()
            .map(|((_, program, is_return), mut offsets)| {
                offsets.sort_unstable();
                offsets.dedup_by_key(|(wanted, _, _)| *wanted);
                Group {
                    program,
                    is_return,
                    offsets: offsets.iter().map(|o| o.0).collect(),
                    placed: offsets.iter().map(|o| o.1).collect(),
                    cookies: offsets.iter().map(|o| o.2).collect(),
                }
            })
            .collect();
        let free = self.free_group(&elf);
        if self.watch_free && matches!(self.programs, ProbePrograms::Tracer) {
            match &free {
                // With the lifecycle programs, before the acquisitions.
                Some(group) => groups.insert(0, group.clone()),
                // glibc before 2.34: the lock functions are in libpthread,
                // `free` in libc.
                None => warn!(
                    file = %target.name.display(),
                    "--watch-free: no `free` in the file of the lock functions: frees are not watched there"
                ),
            }
        }
        let plan = FilePlan {
            name: target.name.clone(),
            open_path: target.open_path.clone(),
            groups,
            free,
        };
        Ok((plan, missing))
    }

    /// Where `free` is probed in `elf`, for the processes whose frees must
    /// be seen (see `frees`); none outside tracing (the benchmark floors).
    fn free_group(&self, elf: &[u8]) -> Option<Group> {
        if !matches!(self.programs, ProbePrograms::Tracer) {
            return None;
        }
        let [probe] = FREE_WATCH else {
            unreachable!("one free probe")
        };
        let (placed, function) =
            placement::place_symbol(elf, probe.symbol, probe.reads, probe.repeat_safe).ok()?;
        let offset = match self.policy {
            ProbePlacement::Entry => 0,
            ProbePlacement::Emulated => placed.offset,
        };
        Some(Group {
            program: probe.program,
            is_return: false,
            offsets: vec![function.file_offset + offset],
            placed: vec![function.file_offset + placed.offset],
            cookies: vec![probe.cookie],
        })
    }

    /// Attaches the groups of `plan` that `which` names, in order, in
    /// process `pid` or in all.
    pub(super) fn link(
        &self,
        plan: &FilePlan,
        pid: Option<u32>,
        which: Which,
    ) -> Result<Vec<OwnedFd>> {
        let Attacher::Multi(programs) = &self.links.attacher else {
            return Ok(Vec::new()); // see `attach_single`
        };
        let mut links = Vec::with_capacity(plan.groups.len());
        for group in plan.groups.iter().filter(|g| which.wants(g.program)) {
            let program = programs
                .get(group.program)
                .ok_or_else(|| anyhow!("program {} was not loaded", group.program))?;
            let link = multi::attach(
                program.as_fd(),
                &plan.open_path,
                &group.offsets,
                &group.cookies,
                group.is_return,
                pid,
            )
            .map_err(|e| {
                anyhow::Error::new(e).context(format!(
                    "cannot attach {} to {}{}",
                    group.program,
                    plan.name.display(),
                    pid.map(|p| format!(" in process {p}")).unwrap_or_default()
                ))
            })?;
            links.push(link);
        }
        Ok(links)
    }

    /// Attaches the groups of `plan` as aya's single uprobes, for every
    /// process (their links are kept in `links.singles`).
    fn attach_single(&mut self, plan: &FilePlan) -> Result<()> {
        for group in &plan.groups {
            let mut made = Vec::new();
            let uprobe: &mut UProbe = self.program(group.program)?.try_into()?;
            if uprobe.fd().is_err() {
                uprobe
                    .load()
                    .with_context(|| format!("cannot load program {}", group.program))?;
            }
            let probes = group.offsets.iter().zip(&group.placed).zip(&group.cookies);
            for ((&offset, &placed), &cookie) in probes {
                let at = |offset| UProbeAttachPoint {
                    location: UProbeAttachLocation::AbsoluteOffset(offset),
                    cookie: Some(cookie),
                };
                let path = &plan.open_path;
                let mut attached = uprobe.attach(at(offset), path, UProbeScope::AllProcesses);
                if attached.is_err() && placed != offset {
                    debug!(
                        program = group.program,
                        offset, "cannot probe the first instruction; using the placed offset"
                    );
                    attached = uprobe.attach(at(placed), path, UProbeScope::AllProcesses);
                }
                let id = attached.map_err(|e| attach_error(e, group.program, &plan.name))?;
                made.push(uprobe.take_link(id)?);
            }
            self.links.singles.extend(made);
        }
        Ok(())
    }
}

/// Whether a link failed because its process is gone.
fn is_gone(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .or_else(|| e.root_cause().downcast_ref::<std::io::Error>())
        .is_some_and(|e| e.raw_os_error() == Some(libc::ESRCH))
}

/// A clear error for a failed attach, naming the known conflicts.
fn attach_error(e: aya::programs::ProgramError, program: &str, file: &Path) -> anyhow::Error {
    let text = format!("{e:#}");
    let hint = if text.contains("Invalid argument") || text.contains("EINVAL") {
        " (another tool, e.g. bcc or bpftrace, may hold a uprobe on the same address with a different pid filter: stop it and retry)"
    } else {
        ""
    };
    anyhow!(
        "cannot attach a uprobe of {program} to {}: {text}{hint}",
        file.display()
    )
}
