//! Loading the embedded eBPF object and attaching its probes. Every link is
//! owned by the `Ebpf` value: dropping `Probes` detaches everything (aya's
//! uprobes are perf-event file descriptors, so the kernel also removes them if
//! the tracer is killed).

use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{HashMap, MapData, RingBuf},
    programs::{
        uprobe::{UProbeAttachLocation, UProbeScope},
        TracePoint, UProbe,
    },
    Ebpf, EbpfLoader,
};
use tracer_common::{FILTER_ALL, FILTER_TRACED};
use tracing::{debug, info};

use crate::host::preflight;
use crate::kernel::catalogue::{TRACEPOINTS, UPROBES};
use crate::kernel::placement;
use crate::kernel::targets::{FileId, Target};

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
    /// Empty programs at the same places: the cost floor of a probe hit
    /// (`cargo xtask bench`).
    Floor,
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
    /// Trace the processes in these cgroups (cgroup v2 ids: the inode of
    /// the cgroup's directory), checked in the kernel at every hit.
    pub cgroups: Vec<u64>,
}

impl Filter {
    fn is_host_wide(&self) -> bool {
        self.pids.is_empty() && self.comms.is_empty() && self.cgroups.is_empty()
    }
}

pub struct Probes {
    ebpf: Ebpf,
    policy: ProbePlacement,
    programs: ProbePrograms,
    /// Programs loaded into the kernel (each is loaded once, attached to
    /// every file).
    loaded: HashSet<&'static str>,
    /// The files with probes, and the name each was found by.
    probed: BTreeMap<FileId, PathBuf>,
    pub(super) host_wide: bool,
    pub(super) cgroup_filter: bool,
}

impl Probes {
    /// Loads the programs, installs the filter and attaches the process
    /// tracepoints; the lock probes come with [`Probes::attach_file`].
    pub fn load(filter: &Filter, policy: ProbePlacement, programs: ProbePrograms) -> Result<Self> {
        if EBPF_OBJECT.is_empty() {
            bail!(
                "this locktrace binary was built without its eBPF object: run `cargo xtask build-ebpf`, then rebuild"
            );
        }
        let fork_child =
            preflight::tracepoint_field_offset("sched", "sched_process_fork", "child_pid")?;
        let group_dead =
            preflight::tracepoint_field_offset("sched", "sched_process_exit", "group_dead")?;
        let tgid = std::process::id();
        let mode = if filter.is_host_wide() {
            FILTER_ALL
        } else {
            FILTER_TRACED
        };
        let comm_filter = u32::from(!filter.comms.is_empty());
        let cgroup_filter = u32::from(!filter.cgroups.is_empty());
        let ebpf = EbpfLoader::new()
            .override_global("TRACER_TGID", &tgid, true)
            .override_global("FILTER_MODE", &mode, true)
            .override_global("COMM_FILTER", &comm_filter, true)
            .override_global("CGROUP_FILTER", &cgroup_filter, true)
            .override_global("FORK_CHILD_PID_OFFSET", &fork_child, true)
            .override_global("EXIT_GROUP_DEAD_OFFSET", &group_dead, true)
            .load(EBPF_OBJECT)
            .context("cannot load the eBPF programs")?;
        let mut probes = Probes {
            ebpf,
            policy,
            programs,
            loaded: HashSet::new(),
            probed: BTreeMap::new(),
            host_wide: filter.is_host_wide(),
            cgroup_filter: !filter.cgroups.is_empty(),
        };
        probes.install_filter(filter)?;
        probes.attach_tracepoints()?;
        Ok(probes)
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

    /// Adds a process to the traced set (with `FILTER_TRACED`).
    pub fn trace_pid(&mut self, pid: u32) -> Result<()> {
        let mut traced: HashMap<_, u32, u8> = HashMap::try_from(self.map_mut("TRACED")?)?;
        traced
            .insert(pid, 1, 0)
            .context("cannot add a pid to the filter")?;
        Ok(())
    }

    pub fn is_probed(&self, id: FileId) -> bool {
        self.probed.contains_key(&id)
    }

    /// The files with probes, by the name each was found by.
    pub fn probed_files(&self) -> impl Iterator<Item = &Path> {
        self.probed.values().map(PathBuf::as_path)
    }

    /// Attaches every lock probe to `target` (a libc, or a program with its
    /// own copy of the lock functions). Functions the file lacks (an older
    /// glibc has no `pthread_mutex_clocklock`) are skipped; returns their
    /// names.
    pub fn attach_file(&mut self, target: &Target) -> Result<Vec<&'static str>> {
        if self.probed.contains_key(&target.id) {
            return Ok(Vec::new());
        }
        let path = &target.open_path;
        let elf = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        if !Target::defines_any_lock_function(&elf) {
            bail!(
                "{} does not define any lock function (pthread_mutex_lock, sem_wait, ...)",
                target.name.display()
            );
        }
        let mut missing = Vec::new();
        for probe in UPROBES {
            let symbol = probe.symbol;
            let program = match (self.programs, probe.is_return) {
                (ProbePrograms::Tracer, _) => probe.program,
                (ProbePrograms::Floor, false) => "floor_entry",
                (ProbePrograms::Floor, true) => "floor_return",
            };
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
                program, symbol, offset, instruction = %placed.instruction,
                emulated = placed.emulated, reason = %placed.reason, "probe placement"
            );
            let first_load = self.loaded.insert(program);
            let uprobe: &mut UProbe = self.program(program)?.try_into()?;
            if first_load {
                uprobe
                    .load()
                    .with_context(|| format!("cannot load program {program}"))?;
            }
            let mut attached = uprobe.attach(
                UProbeAttachLocation::AbsoluteOffset(function.file_offset + offset),
                path,
                UProbeScope::AllProcesses,
            );
            if attached.is_err() && offset != placed.offset {
                // The kernel refuses some first instructions (e.g. `lock`
                // prefixed ones, as in pthread_spin_lock): for this
                // comparison mode, the placed probe is the next best.
                debug!(
                    symbol,
                    "cannot probe the first instruction; using the placed offset"
                );
                attached = uprobe.attach(
                    UProbeAttachLocation::AbsoluteOffset(function.file_offset + placed.offset),
                    path,
                    UProbeScope::AllProcesses,
                );
            }
            // Detaching takes about 0.1 s per probe at exit: the kernel
            // serializes uprobe removals, each waiting for a grace period.
            attached.map_err(|e| attach_error(e, symbol, &target.name))?;
        }
        self.probed.insert(target.id, target.name.clone());
        info!(file = %target.name.display(), via = %path.display(), ?missing, "probes attached");
        Ok(missing)
    }

    fn attach_tracepoints(&mut self) -> Result<()> {
        for &(program, category, event) in TRACEPOINTS {
            let tp: &mut TracePoint = self.program(program)?.try_into()?;
            tp.load()
                .with_context(|| format!("cannot load program {program}"))?;
            tp.attach(category, event)
                .with_context(|| format!("cannot attach to tracepoint {category}:{event}"))?;
        }
        Ok(())
    }

    fn program(&mut self, name: &str) -> Result<&mut aya::programs::Program> {
        self.ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("the eBPF object has no program {name}"))
    }

    pub(super) fn map(&self, name: &str) -> Result<&aya::maps::Map> {
        self.ebpf
            .map(name)
            .ok_or_else(|| anyhow!("the eBPF object has no map {name}"))
    }

    pub(super) fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
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
            .ebpf
            .take_map("EVENTS")
            .ok_or_else(|| anyhow!("the eBPF object has no map EVENTS"))?;
        Ok(RingBuf::try_from(map)?)
    }

    /// The kernel logger, when the object logs (aya-log).
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        match aya_log::EbpfLogger::init(&mut self.ebpf) {
            Ok(logger) => Some(logger),
            Err(e) => {
                debug!("no kernel-side logger: {e}");
                None
            }
        }
    }
}

fn comm_key(comm: &str) -> [u8; 16] {
    let mut key = [0u8; 16];
    // The kernel keeps 15 bytes of the name and a NUL.
    for (k, b) in key.iter_mut().zip(comm.bytes().take(15)) {
        *k = b;
    }
    key
}

/// A clear error for a failed attach, naming the known conflicts.
fn attach_error(e: aya::programs::ProgramError, symbol: &str, libc: &Path) -> anyhow::Error {
    let text = format!("{e:#}");
    let hint = if text.contains("Invalid argument") || text.contains("EINVAL") {
        " (another tool, e.g. bcc or bpftrace, may hold a uprobe on the same address with a different pid filter: stop it and retry)"
    } else {
        ""
    };
    anyhow!(
        "cannot attach a uprobe to {symbol} in {}: {text}{hint}",
        libc.display()
    )
}
