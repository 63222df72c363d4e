//! Loading the embedded eBPF object: the maps, the filter, the process
//! tracepoints, and the uprobe programs (for multi-uprobe links when the
//! kernel has them; `attach` puts them on files). Every link is a file
//! descriptor of this process, so the kernel also removes them if the
//! tracer is killed; dropping `Probes` closes them all at once.

use std::{
    os::fd::{AsFd, RawFd},
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{Array, HashMap, MapData, ProgramArray, RingBuf},
    programs::{trace_point::TracePointLink, TracePoint, UProbe},
    Ebpf, EbpfLoader,
};
use tracer_common::{FILTER_ALL, FILTER_TRACED};
use tracing::{debug, info};

use crate::host::preflight;
use crate::kernel::catalogue::{uprobe_programs, TAILS, TAIL_ONLY, TRACEPOINTS};
use crate::kernel::links::{Attacher, Links};
use crate::kernel::multi;
use crate::kernel::targets::FileId;

/// Where the uprobes go in each function.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProbePlacement {
    /// On the first instruction the kernel emulates (see `placement`).
    #[default]
    Emulated,
    /// On the first instruction, as other tools do (single-stepped, slow):
    /// for comparisons.
    Entry,
}

/// Which programs go on the uprobes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProbePrograms {
    /// locktrace's programs.
    #[default]
    Tracer,
    /// Empty programs at the same places, and on `pthread_mutex_unlock`:
    /// the cost floor of a tracer that probes both ends of a mutex pair
    /// (`cargo xtask bench`).
    Floor,
    /// Empty programs at exactly the same places: the floor of one probe
    /// hit per mutex pair.
    OneHitFloor,
}

/// The eBPF object built by `cargo xtask build-ebpf` and embedded by build.rs
/// (empty when the crate was built without it).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer.bpf.o"));

/// Which processes the kernel side traces.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Trace only these processes (and their descendants); all when empty and
    /// `comms` is empty too.
    pub pids: Vec<u32>,
    /// Trace processes with these command names (from their next exec on, and
    /// those already running).
    pub comms: Vec<String>,
    /// Insert breakpoints only in the traced processes (`watch` with a
    /// filter), with links per process, a process that starts later getting
    /// its own when the collector sees it; else in every process, the
    /// programs filtering (`run`, `--probe-all` and host-wide: a process is
    /// then probed from its first instruction on, before it is known).
    pub per_process: bool,
    /// Trace the processes in these cgroups (cgroup v2 ids: the inode of
    /// the cgroup's directory), checked in the kernel at every hit.
    pub cgroups: Vec<u64>,
    /// The directories of `cgroups`: with probes per process, their
    /// members are listed again at every sweep (a process moved into a
    /// cgroup without a fork or an exec is seen nowhere else).
    pub cgroup_dirs: Vec<PathBuf>,
    /// Probe the lock traffic in time slices (an overhead budget; see
    /// `slices`): its links are kept apart from the lifecycle ones.
    pub sliced: bool,
    /// The filter may change while tracing (the agent's SIGHUP; see
    /// `retrace`): a filtered kernel side then checks command names at
    /// every exec and cgroups at every hit of an untraced process, with
    /// whatever names and cgroups the filter has now, if none at first.
    pub reloadable: bool,
}

impl Filter {
    fn is_host_wide(&self) -> bool {
        self.pids.is_empty() && self.comms.is_empty() && self.cgroups.is_empty()
    }
}

pub struct Probes {
    /// `None` only while dropping.
    ebpf: Option<Ebpf>,
    pub(super) policy: ProbePlacement,
    pub(super) programs: ProbePrograms,
    /// `free` is probed too (`--watch-free`).
    pub(super) watch_free: bool,
    pub(super) links: Links,
    tracepoints: Vec<TracePointLink>,
    pub(super) host_wide: bool,
    pub(super) cgroup_filter: bool,
    pub(super) cgroup_dirs: Vec<PathBuf>,
    /// See [`Filter::reloadable`].
    pub(super) reloadable: bool,
    /// The kernel's deferred-dependency count when `DEFERRED` was last read.
    pub(super) deferred_taken: u64,
    /// The last look at `DEFERRED` left entries in it (a batch at a time).
    pub(super) deferred_left: bool,
    /// Our pid namespace (device, inode), as the kernel side has it.
    pub(super) pid_ns: (u64, u64),
}

impl Probes {
    /// Loads the programs, installs the filter and attaches the process
    /// tracepoints; the lock probes come with [`Probes::attach_file`].
    /// With `watch_free`, `free` is probed too: heap memory freed with a
    /// lock in it, a lock never destroyed, is then seen.
    pub fn load(
        filter: &Filter,
        policy: ProbePlacement,
        programs: ProbePrograms,
        watch_free: bool,
    ) -> Result<Self> {
        crate::kernel::features::check()?;
        if EBPF_OBJECT.is_empty() {
            bail!(
                "this locktrace binary was built without its eBPF object: run `cargo xtask build-ebpf`, then rebuild"
            );
        }
        // aya reads the number of CPUs from sysfs at the first per-CPU map
        // lookup of each thread (and again after a failure): read now, on
        // the thread that reads the counters, while descriptors are free. A
        // host that later leaves the tracer none (memfds of another user
        // pinned, a low RLIMIT_NOFILE) then cannot make the counters
        // unreadable and the tracer end without its summary.
        aya::util::nr_cpus().map_err(|(path, e)| anyhow::anyhow!("cannot read {path}: {e}"))?;
        let fork_child =
            preflight::tracepoint_field_offset("sched", "sched_process_fork", "child_pid")?;
        let group_dead = exit_group_dead_offset()?;
        let tgid = std::process::id();
        let mode = if filter.is_host_wide() {
            FILTER_ALL
        } else {
            FILTER_TRACED
        };
        let reloadable = filter.reloadable && !filter.is_host_wide();
        let comm_filter = u32::from(reloadable || !filter.comms.is_empty());
        // Our pid namespace: a traced thread in it learns its namespace tid
        // (a mutex's owner) at once; see `set_pid_ns` for the others.
        let (pidns_dev, pidns_ino) = crate::host::proc::pid_namespace("self")
            .context("cannot read our pid namespace (/proc/self/ns/pid)")?;
        let cgroup_filter = u32::from(reloadable || !filter.cgroups.is_empty());
        let ebpf = EbpfLoader::new()
            .override_global("TRACER_TGID", &tgid, true)
            // The lock programs note the memory of locks named in
            // dependencies: `free` may be probed in any process later.
            .override_global(
                "WATCH_FREE",
                &u32::from(matches!(programs, ProbePrograms::Tracer)),
                true,
            )
            .override_global("FILTER_MODE", &mode, true)
            .override_global("COMM_FILTER", &comm_filter, true)
            .override_global("CGROUP_FILTER", &cgroup_filter, true)
            .override_global("PIDNS_DEV", &pidns_dev, true)
            .override_global("PIDNS_INO", &pidns_ino, true)
            .override_global("FORK_CHILD_PID_OFFSET", &fork_child, true)
            .override_global("EXIT_GROUP_DEAD_OFFSET", &group_dead, true)
            .load(EBPF_OBJECT)
            .context("cannot load the eBPF programs")?;
        let maps = multi::map_fds(&ebpf);
        let mut probes = Probes {
            ebpf: Some(ebpf),
            policy,
            programs,
            watch_free,
            links: Links::new(Attacher::Single, false),
            tracepoints: Vec::new(),
            host_wide: filter.is_host_wide(),
            cgroup_filter: !filter.cgroups.is_empty(),
            cgroup_dirs: filter.cgroup_dirs.clone(),
            reloadable,
            deferred_taken: 0,
            deferred_left: false,
            pid_ns: (pidns_dev, pidns_ino),
        };
        // The verifier takes most of the start-up time: the uprobe programs
        // load on other threads while the tracepoints attach here.
        let attacher = std::thread::scope(|s| {
            let uprobes = s.spawn(|| attacher(&maps, policy, programs));
            let tracepoints = probes
                .install_filter(filter)
                .and_then(|()| probes.attach_tracepoints());
            let attacher = uprobes.join().expect("uprobe program loader");
            tracepoints.map(|()| attacher)
        })?;
        let per_process = filter.per_process && matches!(attacher, Attacher::Multi(_));
        if filter.per_process && !per_process {
            info!("probes go to every process (per-process probes need multi-uprobe links), the programs filtering");
        }
        if filter.sliced && !matches!(attacher, Attacher::Multi(_)) {
            bail!(
                "--budget needs multi-uprobe links (Linux 6.6 or later), which this kernel lacks"
            );
        }
        probes.links = Links::new(attacher, per_process);
        probes.fill_tails(&maps)?;
        probes.links.sliced = filter.sliced;
        if per_process {
            // Linked by `attach_file`.
            for &pid in &filter.pids {
                probes.links.by_process.insert(Some(pid), Vec::new());
            }
        }
        Ok(probes)
    }

    /// Fills `TAILS`, where the lock programs tail-call each other (before
    /// any of them is attached: a failed tail call loses what it was to
    /// record or send).
    fn fill_tails(&mut self, maps: &[(String, RawFd)]) -> Result<()> {
        if !matches!(self.programs, ProbePrograms::Tracer) {
            return Ok(()); // the floors' programs make no tail call
        }
        for (index, &name) in (0u32..).zip(TAILS) {
            let context = || format!("cannot put program {name} in map TAILS");
            if let Attacher::Multi(programs) = &self.links.attacher {
                let program = programs
                    .get(name)
                    .ok_or_else(|| anyhow!("program {name} was not loaded"))?;
                let (_, map) = maps
                    .iter()
                    .find(|(map, _)| map == "TAILS")
                    .ok_or_else(|| anyhow!("the eBPF object has no map TAILS"))?;
                multi::set_tail(*map, index, program.as_fd()).with_context(context)?;
                continue;
            }
            let program: &mut UProbe = self.program(name)?.try_into()?;
            if program.fd().is_err() {
                program
                    .load()
                    .with_context(|| format!("cannot load program {name}"))?;
            }
            let fd = program.fd()?.try_clone()?;
            let mut tails = ProgramArray::try_from(self.map_mut("TAILS")?)?;
            tails.set(index, &fd, 0).with_context(context)?;
        }
        Ok(())
    }

    fn install_filter(&mut self, filter: &Filter) -> Result<()> {
        let mut traced: HashMap<_, u32, u8> = HashMap::try_from(self.map_mut("TRACED")?)?;
        for &pid in &filter.pids {
            traced
                .insert(pid, 1, 0)
                .context("cannot add a pid to the filter")?;
        }
        let mut comms: HashMap<_, [u8; 16], u8> = HashMap::try_from(self.map_mut("COMMS")?)?;
        for comm in &filter.comms {
            comms
                .insert(comm_key(comm), 1, 0)
                .context("cannot add a command name to the filter")?;
        }
        let mut cgroups: HashMap<_, u64, u8> = HashMap::try_from(self.map_mut("CGROUPS")?)?;
        for &id in &filter.cgroups {
            cgroups
                .insert(id, 1, 0)
                .context("cannot add a cgroup to the filter")?;
        }
        Ok(())
    }

    /// Adds a process to the traced set (with `FILTER_TRACED`), and puts
    /// the probes in it (with links per process).
    pub fn trace_pid(&mut self, pid: u32) -> Result<()> {
        self.add_to_filter(pid)?;
        self.link_process(pid)?;
        Ok(())
    }

    /// Adds `pid` to the kernel's filter (`TRACED`), without probes.
    pub(super) fn add_to_filter(&mut self, pid: u32) -> Result<()> {
        let mut traced: HashMap<_, u32, u8> = HashMap::try_from(self.map_mut("TRACED")?)?;
        traced
            .insert(pid, 1, 0)
            .context("cannot add a pid to the filter")
    }

    /// Arms the kernel side: from now on it records acquisitions. Called
    /// once every probe of the files found at start is attached.
    pub fn arm(&mut self) -> Result<()> {
        let mut armed: Array<_, u32> = Array::try_from(self.map_mut("ARMED")?)?;
        armed.set(0, 1, 0).context("cannot arm the kernel side")?;
        info!("armed: acquisitions are recorded from now on");
        Ok(())
    }

    /// Probes go on with multi-uprobe links (Linux 6.6+). Such a link is
    /// made on the program loaded at the start without any capability;
    /// aya's single uprobes need `perf_event_open` of a uprobe, which takes
    /// CAP_PERFMON, or CAP_SYS_ADMIN since the 2025 fix for uprobes.
    pub fn uses_multi_links(&self) -> bool {
        matches!(self.links.attacher, Attacher::Multi(_))
    }

    pub fn is_probed(&self, id: FileId) -> bool {
        self.links.plans.contains_key(&id)
    }

    /// The files with probes, by the name each was found by.
    pub fn probed_files(&self) -> impl Iterator<Item = &Path> {
        self.links.plans.values().map(|p| p.name.as_path())
    }

    fn attach_tracepoints(&mut self) -> Result<()> {
        for &(program, category, event) in TRACEPOINTS {
            let tp: &mut TracePoint = self.program(program)?.try_into()?;
            tp.load()
                .with_context(|| format!("cannot load program {program}"))?;
            let link = tp
                .attach(category, event)
                .with_context(|| format!("cannot attach to tracepoint {category}:{event}"))?;
            // Owned here, to be closed with the others at exit: each close
            // waits for a grace period (measured: 65-85 ms each in this VM).
            let link = tp.take_link(link)?;
            self.tracepoints.push(link);
        }
        Ok(())
    }

    fn ebpf(&self) -> &Ebpf {
        self.ebpf.as_ref().expect("present until dropped")
    }

    fn ebpf_mut(&mut self) -> &mut Ebpf {
        self.ebpf.as_mut().expect("present until dropped")
    }

    pub(super) fn program(&mut self, name: &str) -> Result<&mut aya::programs::Program> {
        self.ebpf_mut()
            .program_mut(name)
            .ok_or_else(|| anyhow!("the eBPF object has no program {name}"))
    }

    pub(super) fn map(&self, name: &str) -> Result<&aya::maps::Map> {
        self.ebpf()
            .map(name)
            .ok_or_else(|| anyhow!("the eBPF object has no map {name}"))
    }

    pub(super) fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf_mut()
            .map_mut(name)
            .ok_or_else(|| anyhow!("the eBPF object has no map {name}"))
    }

    /// Whether every process is traced.
    pub fn is_host_wide(&self) -> bool {
        self.host_wide
    }

    /// The event ring buffer (can be taken once).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf_mut()
            .take_map("EVENTS")
            .ok_or_else(|| anyhow!("the eBPF object has no map EVENTS"))?;
        Ok(RingBuf::try_from(map)?)
    }

    /// The kernel logger, when the object logs (aya-log).
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        match aya_log::EbpfLogger::init(self.ebpf_mut()) {
            Ok(logger) => Some(logger),
            Err(e) => {
                debug!("no kernel-side logger: {e}");
                None
            }
        }
    }
}

/// Where `sched_process_exit` says whether the whole process is gone, or
/// [`NO_GROUP_DEAD`] on kernels without the field (then the kernel side
/// takes the main thread's exit for the process's; `-v` says so).
fn exit_group_dead_offset() -> Result<u32> {
    let exit = preflight::tracepoint_field_offset("sched", "sched_process_exit", "pid")
        .map(|_| preflight::tracepoint_field_offset("sched", "sched_process_exit", "group_dead"))?;
    Ok(exit.unwrap_or_else(|e| {
        info!("{e}: a process's exit is its main thread's");
        NO_GROUP_DEAD
    }))
}

/// `EXIT_GROUP_DEAD_OFFSET` for a kernel without the field (the kernel
/// side's `NO_GROUP_DEAD`).
const NO_GROUP_DEAD: u32 = u32::MAX;

pub(super) fn comm_key(comm: &str) -> [u8; 16] {
    let mut key = [0u8; 16];
    // The kernel keeps 15 bytes of the name and a NUL.
    for (k, b) in key.iter_mut().zip(comm.bytes().take(15)) {
        *k = b;
    }
    key
}

impl Probes {
    /// Stops tracing: the lock probes start detaching now, in the
    /// background (the maps stay readable; [`Drop`] waits for the rest).
    pub fn stop_tracing(&mut self) {
        self.links.close_all_in_background();
    }
}

impl Drop for Probes {
    /// Detaches everything at once: the links and the tracepoints close on
    /// their own threads, so that their grace periods overlap (and aya's
    /// `Ebpf` value, with the single uprobes if any, on one more).
    fn drop(&mut self) {
        let started = Instant::now();
        let ebpf = self.ebpf.take();
        let tracepoints = std::mem::take(&mut self.tracepoints);
        let rest = std::thread::spawn(move || {
            std::thread::scope(|s| {
                s.spawn(move || drop(ebpf));
                multi::close_concurrently(tracepoints);
            })
        });
        self.links.close_all();
        let _ = rest.join();
        debug!(elapsed = ?started.elapsed(), "probes detached");
    }
}

/// Multi-uprobe links when the kernel has them (Linux 6.6+), else aya's
/// single uprobes, with the reason on `-v`.
fn attacher(maps: &[(String, RawFd)], policy: ProbePlacement, programs: ProbePrograms) -> Attacher {
    if policy == ProbePlacement::Entry {
        // Some first instructions are refused, and a link is all or nothing.
        info!("probes at offset 0 are single uprobes");
        return Attacher::Single;
    }
    if let Err(e) = multi::probe_support() {
        info!("single uprobes (slow to attach and detach): {e:#}");
        return Attacher::Single;
    }
    let started = Instant::now();
    // Only those attached: the verifier is most of the start-up time.
    let names: Vec<&'static str> = match programs {
        ProbePrograms::Tracer => uprobe_programs()
            .into_iter()
            .filter(|p| !p.starts_with("floor_"))
            .chain(TAIL_ONLY.iter().copied())
            .collect(),
        ProbePrograms::Floor | ProbePrograms::OneHitFloor => vec!["floor_entry", "floor_return"],
    };
    let programs = match multi::load_programs(EBPF_OBJECT, maps, &names) {
        Ok(programs) => programs,
        Err(e) => {
            info!("single uprobes (slow to attach and detach): {e:#}");
            return Attacher::Single;
        }
    };
    debug!(elapsed = ?started.elapsed(), "uprobe programs loaded for multi-uprobe links");
    Attacher::Multi(programs)
}
