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
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        uprobe::{UProbeAttachLocation, UProbeScope},
        TracePoint, UProbe,
    },
    Ebpf, EbpfLoader,
};
use tracer_common::{
    Counter, DependencyKey, FutexKey, FutexStats, HeldStack, PyProcess, FILTER_ALL, FILTER_TRACED,
};
use tracing::{debug, info};

use iced_x86::Register;

use crate::{
    placement, preflight,
    targets::{FileId, Target},
};

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

/// One uprobe on a libc function.
struct Uprobe {
    /// The program's name in the eBPF object.
    program: &'static str,
    symbol: &'static str,
    /// A return probe (placed like the entry probe: the return address is
    /// still at `[rsp]` at the placed instruction).
    is_return: bool,
    /// The argument registers the program reads.
    reads: &'static [Register],
    /// The program tolerates a second hit in the same call (see
    /// `placement::place_repeat_safe`).
    repeat_safe: bool,
}

const fn entry(program: &'static str, symbol: &'static str) -> Uprobe {
    Uprobe {
        program,
        symbol,
        is_return: false,
        reads: &[Register::RDI],
        repeat_safe: false,
    }
}

/// For functions whose compare-and-swap retry loop branches back before
/// their first emulated instruction: the programs there tolerate a second
/// hit (a try entry records the same pending lock; its return finds it
/// consumed; a post is deduplicated by its stack pointer).
const fn repeat_safe(probe: Uprobe) -> Uprobe {
    Uprobe {
        repeat_safe: true,
        ..probe
    }
}

const fn ret(program: &'static str, symbol: &'static str) -> Uprobe {
    Uprobe {
        program,
        symbol,
        is_return: true,
        reads: &[Register::RDI],
        repeat_safe: false,
    }
}

/// Every probe: an entry probe per lock function (blocking operations need no
/// return probe: their wait shows in the futex tracepoints), and a return
/// probe where the result decides what is held (try, timed, condition waits).
const UPROBES: &[Uprobe] = &[
    entry("mutex_lock", "pthread_mutex_lock"),
    entry("unlock", "pthread_mutex_unlock"),
    entry("mutex_trylock", "pthread_mutex_trylock"),
    ret("try_return", "pthread_mutex_trylock"),
    entry("mutex_timedlock", "pthread_mutex_timedlock"),
    ret("try_return", "pthread_mutex_timedlock"),
    entry("mutex_timedlock", "pthread_mutex_clocklock"),
    ret("try_return", "pthread_mutex_clocklock"),
    entry("rwlock_rdlock", "pthread_rwlock_rdlock"),
    entry("rwlock_wrlock", "pthread_rwlock_wrlock"),
    entry("unlock", "pthread_rwlock_unlock"),
    entry("rwlock_tryrdlock", "pthread_rwlock_tryrdlock"),
    ret("try_return", "pthread_rwlock_tryrdlock"),
    entry("rwlock_tryrdlock", "pthread_rwlock_timedrdlock"),
    ret("try_return", "pthread_rwlock_timedrdlock"),
    entry("rwlock_tryrdlock", "pthread_rwlock_clockrdlock"),
    ret("try_return", "pthread_rwlock_clockrdlock"),
    entry("rwlock_trywrlock", "pthread_rwlock_trywrlock"),
    ret("try_return", "pthread_rwlock_trywrlock"),
    entry("rwlock_trywrlock", "pthread_rwlock_timedwrlock"),
    ret("try_return", "pthread_rwlock_timedwrlock"),
    entry("rwlock_trywrlock", "pthread_rwlock_clockwrlock"),
    ret("try_return", "pthread_rwlock_clockwrlock"),
    entry("spin_lock", "pthread_spin_lock"),
    entry("unlock", "pthread_spin_unlock"),
    entry("spin_trylock", "pthread_spin_trylock"),
    ret("try_return", "pthread_spin_trylock"),
    entry("sem_wait", "sem_wait"),
    repeat_safe(entry("sem_trywait", "sem_trywait")),
    repeat_safe(ret("try_return", "sem_trywait")),
    entry("sem_timedwait", "sem_timedwait"),
    ret("try_return", "sem_timedwait"),
    entry("sem_timedwait", "sem_clockwait"),
    ret("try_return", "sem_clockwait"),
    repeat_safe(entry("sem_post", "sem_post")),
    // pthread_spin_init shares its code with pthread_spin_unlock: not probed.
    entry("lock_init", "pthread_mutex_init"),
    entry("lock_destroy", "pthread_mutex_destroy"),
    entry("lock_init", "pthread_rwlock_init"),
    entry("lock_destroy", "pthread_rwlock_destroy"),
    entry("lock_destroy", "pthread_spin_destroy"),
    entry("lock_init", "sem_init"),
    entry("lock_destroy", "sem_destroy"),
    // The mutex is the second argument.
    Uprobe {
        program: "cond_wait",
        symbol: "pthread_cond_wait",
        is_return: false,
        reads: &[Register::RDI, Register::RSI],
        repeat_safe: false,
    },
    Uprobe {
        program: "cond_wait_return",
        symbol: "pthread_cond_wait",
        is_return: true,
        reads: &[Register::RDI, Register::RSI],
        repeat_safe: false,
    },
    Uprobe {
        program: "cond_wait",
        symbol: "pthread_cond_timedwait",
        is_return: false,
        reads: &[Register::RDI, Register::RSI],
        repeat_safe: false,
    },
    Uprobe {
        program: "cond_wait_return",
        symbol: "pthread_cond_timedwait",
        is_return: true,
        reads: &[Register::RDI, Register::RSI],
        repeat_safe: false,
    },
    Uprobe {
        program: "cond_wait",
        symbol: "pthread_cond_clockwait",
        is_return: false,
        reads: &[Register::RDI, Register::RSI],
        repeat_safe: false,
    },
    Uprobe {
        program: "cond_wait_return",
        symbol: "pthread_cond_clockwait",
        is_return: true,
        reads: &[Register::RDI, Register::RSI],
        repeat_safe: false,
    },
];

/// The functions that get probes.
pub fn probed_symbols() -> Vec<&'static str> {
    UPROBES.iter().map(|p| p.symbol).collect()
}

/// (program, category, event)
const TRACEPOINTS: &[(&str, &str, &str)] = &[
    ("process_fork", "sched", "sched_process_fork"),
    ("process_exec", "sched", "sched_process_exec"),
    ("process_exit", "sched", "sched_process_exit"),
    ("futex_enter", "syscalls", "sys_enter_futex"),
    ("futex_exit", "syscalls", "sys_exit_futex"),
];

pub struct Probes {
    ebpf: Ebpf,
    policy: ProbePlacement,
    programs: ProbePrograms,
    /// Programs loaded into the kernel (each is loaded once, attached to
    /// every file).
    loaded: HashSet<&'static str>,
    /// The files with probes, and the name each was found by.
    probed: BTreeMap<FileId, PathBuf>,
    host_wide: bool,
    cgroup_filter: bool,
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

    /// Describes CPython process `pid` to the kernel side, with the
    /// `PyThreadState` of each of its threads (tid, address) known now.
    pub fn set_python(&mut self, pid: u32, py: &PyProcess, threads: &[(u32, u64)]) -> Result<()> {
        let mut procs: HashMap<_, u32, PyProcess> =
            HashMap::try_from(self.map_mut("PY_PROCESSES")?)?;
        procs.insert(pid, py, 0)?;
        let mut tstates: HashMap<_, u32, u64> = HashMap::try_from(self.map_mut("PY_THREADS")?)?;
        for (tid, tstate) in threads {
            tstates.insert(tid, tstate, 0)?;
        }
        Ok(())
    }

    /// Whether the kernel side may trace `pid` (always host-wide; cgroup
    /// membership is only known to the kernel, at each hit).
    pub fn may_trace(&self, pid: u32) -> bool {
        self.host_wide
            || self.cgroup_filter
            || self
                .map("TRACED")
                .and_then(|m| Ok(HashMap::<_, u32, u8>::try_from(m)?.get(&pid, 0).is_ok()))
                .unwrap_or(false)
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

    fn map(&self, name: &str) -> Result<&aya::maps::Map> {
        self.ebpf
            .map(name)
            .ok_or_else(|| anyhow!("the eBPF object has no map {name}"))
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("the eBPF object has no map {name}"))
    }

    /// The thread that alone waits on conditions with mutex `addr` of
    /// process `pid` (its wake-up mutex), as the kernel side saw so far.
    pub fn wakeup_mutex_owner(&self, pid: u32, addr: u64) -> Option<u32> {
        // aya's HashMap also reads the LRU kind.
        let map: HashMap<_, [u64; 2], u64> =
            HashMap::try_from(self.map("COND_MUTEXES").ok()?).ok()?;
        let v = map.get(&[u64::from(pid), addr], 0).ok()?;
        (v & tracer_common::COND_MUTEX_SHARED == 0).then_some(v as u32)
    }

    /// Forgets dependencies in the kernel's cache of those already sent, so
    /// that they are sent again (their lock was reset).
    pub fn forget_dependencies(&mut self, keys: &[DependencyKey]) -> Result<()> {
        // aya's HashMap also handles the LRU kind.
        let mut sent: HashMap<_, DependencyKey, u8> =
            HashMap::try_from(self.map_mut("DEPENDENCIES")?)?;
        for key in keys {
            // Absent (evicted) keys are fine.
            let _ = sent.remove(key);
        }
        Ok(())
    }

    /// The held-lock stack of every thread that holds something.
    pub fn held_stacks(&self) -> Result<crate::waitfor::HeldByThread> {
        let map = self.map("HELD")?;
        let held: HashMap<_, u32, HeldStack> = HashMap::try_from(map)?;
        let mut out = crate::waitfor::HeldByThread::new();
        for entry in held.iter() {
            // Entries can vanish while iterating (threads exit): skip them.
            let Ok((tid, stack)) = entry else { continue };
            let depth = (stack.depth as usize).min(stack.locks.len());
            if depth > 0 {
                out.insert(tid, stack.locks[..depth].to_vec());
            }
        }
        Ok(out)
    }

    /// Futex waits in progress: tid -> (futex word, start in CLOCK_MONOTONIC
    /// ns).
    pub fn futex_waits(&self) -> Result<crate::blocking::WaitStarts> {
        let map = self.map("FUTEX_WAITING")?;
        let waiting: HashMap<_, u32, [u64; 2]> = HashMap::try_from(map)?;
        Ok(waiting
            .iter()
            .filter_map(|e| e.ok())
            .map(|(tid, [uaddr, start])| (tid, (uaddr, start)))
            .collect())
    }

    /// The processes traced with `FILTER_TRACED` (thread ids left out).
    pub fn traced_pids(&self) -> Result<Vec<u32>> {
        let map = self.map("TRACED")?;
        let traced: HashMap<_, u32, u8> = HashMap::try_from(map)?;
        Ok(traced
            .keys()
            .filter_map(|k| k.ok())
            // Threads created by traced processes are in the map too.
            .filter(|&pid| crate::preflight::is_process(pid))
            .collect())
    }

    /// Whether every process is traced.
    pub fn is_host_wide(&self) -> bool {
        self.host_wide
    }

    /// Blocking per futex word: (pid, address, waits, ns), summed over CPUs.
    pub fn futex_stats(&self) -> Result<Vec<(u32, u64, u64, u64)>> {
        let map = self.map("FUTEX_STATS")?;
        // aya's PerCpuHashMap also handles the LRU kind.
        let stats: aya::maps::PerCpuHashMap<_, FutexKey, FutexStats> =
            aya::maps::PerCpuHashMap::try_from(map)?;
        let mut out = Vec::new();
        for entry in stats.iter() {
            let (key, per_cpu) = entry?;
            let (waits, ns) = per_cpu
                .iter()
                .fold((0, 0), |(w, n), s| (w + s.waits, n + s.wait_ns));
            out.push((key.pid, key.uaddr, waits, ns));
        }
        Ok(out)
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

    /// The kernel counters, summed over CPUs.
    pub fn counters(&self) -> Result<Vec<(Counter, u64)>> {
        let map = self.map("COUNTERS")?;
        let counters: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
        Counter::ALL
            .iter()
            .map(|&c| Ok((c, counters.get(&(c as u32), 0)?.iter().sum())))
            .collect()
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
