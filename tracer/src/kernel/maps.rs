//! Typed readers and writers of the kernel side's maps: the filter, Python
//! descriptions, held-lock stacks, futex waits, counters and the dependency
//! cache.

use anyhow::Result;
use aya::maps::{HashMap, PerCpuArray};
use tracer_analysis::waits::WaitStarts;
use tracer_common::{
    Counter, DeferredDependency, DependencyKey, FutexKey, FutexStats, FutexWait, HeldStack,
    LockEvent, LockKey, PyProcess,
};

use crate::host::proc;
use crate::kernel::load::Probes;

/// Deferred dependencies taken from the kernel side per call.
const DEFERRED_BATCH: usize = 1024;

pub use crate::host::waitfor::HeldByThread;

/// Blocking on one futex word of one process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FutexWord {
    pub pid: u32,
    pub addr: u64,
    pub waits: u64,
    pub wait_ns: u64,
    /// Waits made inside a traced lock function for this word.
    pub lock_waits: u64,
}

impl Probes {
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

    /// Tells the kernel side the pid namespace of process `pid` when it is
    /// not ours (ours is a global), so that its threads' held mutexes can
    /// be checked against their owner field (see `nstid` in the kernel
    /// side). Until then they order nothing.
    pub fn set_pid_ns(&mut self, pid: u32) -> Result<()> {
        let Some(theirs) = proc::pid_namespace(&pid.to_string()) else {
            // Gone already.
            return Ok(());
        };
        if theirs != self.pid_ns {
            let mut ns: HashMap<_, u32, [u64; 2]> = HashMap::try_from(self.map_mut("PID_NS")?)?;
            ns.insert(pid, [theirs.0, theirs.1], 0)?;
        }
        Ok(())
    }

    /// Whether the kernel side may trace `pid` (always host-wide). With
    /// probes in every process, cgroup membership is only checked by the
    /// kernel, at each hit; with probes per process, the kernel side adds a
    /// cgroup's processes to `TRACED` at their fork or exec, and the sweeps
    /// those that moved in.
    pub fn may_trace(&self, pid: u32) -> bool {
        self.host_wide
            || (self.cgroup_filter && !self.links.per_process)
            || self
                .map("TRACED")
                .and_then(|m| Ok(HashMap::<_, u32, u8>::try_from(m)?.get(&pid, 0).is_ok()))
                .unwrap_or(false)
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

    /// Forgets what the kernel side knows thread `tid` holds (also what it
    /// inherited at a fork and has not yet taken up).
    pub fn forget_thread(&mut self, tid: u32) -> Result<()> {
        for name in ["HELD", "INHERIT"] {
            let mut map: HashMap<_, u32, HeldStack> = HashMap::try_from(self.map_mut(name)?)?;
            // Absent keys are fine.
            let _ = map.remove(&tid);
        }
        Ok(())
    }

    /// The held-lock stack of every thread that holds something.
    pub fn held_stacks(&self) -> Result<HeldByThread> {
        let map = self.map("HELD")?;
        let held: HashMap<_, u32, HeldStack> = HashMap::try_from(map)?;
        let mut out = HeldByThread::new();
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
    pub fn futex_waits(&self) -> Result<WaitStarts> {
        let map = self.map("FUTEX_WAITING")?;
        let waiting: HashMap<_, u32, FutexWait> = HashMap::try_from(map)?;
        Ok(waiting
            .iter()
            .filter_map(|e| e.ok())
            .map(|(tid, w)| (tid, (w.uaddr, w.start_ns)))
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
            .filter(|&pid| crate::host::proc::is_process(pid))
            .collect())
    }

    /// Blocking per futex word, summed over CPUs.
    pub fn futex_stats(&self) -> Result<Vec<FutexWord>> {
        let map = self.map("FUTEX_STATS")?;
        // aya's PerCpuHashMap also handles the LRU kind.
        let stats: aya::maps::PerCpuHashMap<_, FutexKey, FutexStats> =
            aya::maps::PerCpuHashMap::try_from(map)?;
        let mut out = Vec::new();
        for entry in stats.iter() {
            let (key, per_cpu) = entry?;
            let mut word = FutexWord {
                pid: key.pid,
                addr: key.uaddr,
                ..FutexWord::default()
            };
            for s in per_cpu.iter() {
                word.waits += s.waits;
                word.wait_ns += s.wait_ns;
                word.lock_waits += s.lock_waits;
            }
            out.push(word);
        }
        Ok(out)
    }

    /// Takes the dependencies the ring buffer had no room for (the kernel
    /// kept them in `DEFERRED`), deleting them there.
    /// Also the processes whose exit it had no room for
    /// (`EXITS_DEFERRED`), to be handled after their dependencies.
    pub fn take_deferred(&mut self) -> Result<(Vec<DeferredDependency>, Vec<u32>)> {
        // Walking an empty hash map still visits all its buckets: only when
        // the kernel side says it deferred something since the last time.
        let deferred_so_far = self.counter(Counter::DeferredDependencies)?;
        if deferred_so_far == self.deferred_taken {
            return Ok((Vec::new(), Vec::new()));
        }
        let mut deferred: HashMap<_, DependencyKey, DeferredDependency> =
            HashMap::try_from(self.map_mut("DEFERRED")?)?;
        // A bounded batch (each entry is three system calls): a full map
        // is taken over several turns, and the loop answers signals between
        // them.
        let keys: Vec<DependencyKey> = deferred
            .keys()
            .filter_map(|k| k.ok())
            .take(DEFERRED_BATCH)
            .collect();
        let mut out = Vec::with_capacity(keys.len());
        let more = keys.len() == DEFERRED_BATCH;
        let mut unfinished = more;
        for key in keys {
            let Ok(d) = deferred.get(&key, 0) else {
                continue;
            };
            // Still being written by the kernel side (it sets `event` last):
            // the next call must walk the map again, even if nothing else is
            // deferred meanwhile.
            if d.event == 0 {
                unfinished = true;
                continue;
            }
            let _ = deferred.remove(&key);
            out.push(d);
        }
        if !unfinished {
            self.deferred_taken = deferred_so_far;
        }
        self.deferred_left = unfinished;
        // Exits wait for the rest of the map: a process's deferred
        // dependencies are older than its exit.
        let exits = if more {
            Vec::new()
        } else {
            self.take_deferred_exits()?
        };
        Ok((out, exits))
    }

    /// Whether the kernel side's deferred dependencies were not all taken
    /// at the last look: an exit read from the ring buffer must wait for
    /// them (they are older than it).
    pub fn deferred_left(&self) -> bool {
        self.deferred_left
    }

    fn take_deferred_exits(&mut self) -> Result<Vec<u32>> {
        let mut exits: HashMap<_, u32, u8> = HashMap::try_from(self.map_mut("EXITS_DEFERRED")?)?;
        let pids: Vec<u32> = exits.keys().filter_map(|k| k.ok()).collect();
        for pid in &pids {
            let _ = exits.remove(pid);
        }
        Ok(pids)
    }

    /// Takes the init the kernel side held back for lock `addr` of `pid`
    /// (`PENDING_INITS`), as the bytes of a ring-buffer record: the ring
    /// buffer had no room for it when a dependency first named the lock.
    pub fn take_pending_init(&mut self, pid: u32, addr: u64) -> Option<Vec<u8>> {
        let key = LockKey { pid, _pad: 0, addr };
        let mut pending: HashMap<_, LockKey, [u8; size_of::<LockEvent>()]> =
            HashMap::try_from(self.map_mut("PENDING_INITS").ok()?).ok()?;
        let bytes = pending.get(&key, 0).ok()?;
        // Whoever deletes the entry owns the init (the kernel side may be
        // sending it at this moment).
        pending.remove(&key).ok()?;
        Some(bytes.to_vec())
    }

    /// Deletes the inits the kernel side held back (`PENDING_INITS`) for
    /// the processes `gone` names: their locks can take part in no more
    /// dependencies, and a process that reuses the pid must not find them.
    pub fn forget_pending_inits(&mut self, gone: impl Fn(u32) -> bool) -> Result<usize> {
        let mut pending: HashMap<_, LockKey, LockEvent> =
            HashMap::try_from(self.map_mut("PENDING_INITS")?)?;
        let keys: Vec<LockKey> = pending
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| gone(k.pid))
            .collect();
        for key in &keys {
            let _ = pending.remove(key);
        }
        Ok(keys.len())
    }

    /// One kernel counter, summed over CPUs.
    pub fn counter(&self, counter: Counter) -> Result<u64> {
        let counters: PerCpuArray<_, u64> = PerCpuArray::try_from(self.map("COUNTERS")?)?;
        Ok(counters.get(&(counter as u32), 0)?.iter().sum())
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
