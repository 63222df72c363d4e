//! The wait-for graph: which thread waits, right now, for which other
//! thread. A thread blocked on a lock sleeps in the `futex` syscall on the
//! lock's futex word (`/proc/PID/task/TID/syscall` says so, with its stack
//! pointer and program counter); the lock's holders come from the kernel
//! side's held-lock stacks and, for pthread mutexes, from the owner tid that
//! glibc keeps in the mutex (so locks taken before the tracer started count
//! too). A cycle of waits is a deadlock.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::os::unix::fs::FileExt;

use tracer_common::{
    futex_waits_on_word, HeldLock, LockKind, FUTEX_CMD_MASK, FUTEX_LOCK_PI, FUTEX_LOCK_PI2,
    FUTEX_TID_MASK, MUTEX_OWNER_OFFSET, RWLOCK_SIZE, STACK_BYTES, STACK_CHUNK, SYS_FUTEX,
};

/// A thread asleep in a futex wait.
#[derive(Clone, Copy, Debug)]
pub struct Blocked {
    pub pid: u32,
    pub tid: u32,
    /// The futex word.
    pub uaddr: u64,
    /// The futex operation (`FUTEX_WAIT`...).
    pub op: u64,
    /// Registers at the syscall, for unwinding its stack.
    pub sp: u64,
    pub pc: u64,
}

/// A blocked thread and the lock it waits for.
#[derive(Clone, Debug)]
pub struct Waiter {
    pub blocked: Blocked,
    /// The lock object (the futex word's lock).
    pub lock: u64,
    pub kind: LockKind,
    /// Threads holding it: of the same process, or of another one for a
    /// process-shared mutex (tids are host-wide).
    pub holders: Vec<u32>,
}

/// Held-lock stacks by tid, as the kernel side keeps them (empty when no
/// probes run, as in `locktrace snapshot`).
pub type HeldByThread = HashMap<u32, Vec<HeldLock>>;

/// `/proc/PID/task/TID/syscall`: "NR ARG0..ARG5 SP PC" while in a syscall.
fn parse_syscall(line: &str) -> Option<(u64, [u64; 6], u64, u64)> {
    let mut fields = line.split_whitespace();
    let nr: i64 = fields.next()?.parse().ok()?;
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    let mut args = [0u64; 6];
    for a in &mut args {
        *a = hex(fields.next()?)?;
    }
    let sp = hex(fields.next()?)?;
    let pc = hex(fields.next()?)?;
    (nr >= 0).then_some((nr as u64, args, sp, pc))
}

/// Threads of `pid`.
pub fn threads(pid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The threads of `pid` asleep in a futex wait.
pub fn blocked_threads(pid: u32) -> Vec<Blocked> {
    threads(pid)
        .into_iter()
        .filter_map(|tid| {
            let line = fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?;
            let (nr, args, sp, pc) = parse_syscall(&line)?;
            let op = args[1] & FUTEX_CMD_MASK;
            (nr == SYS_FUTEX && futex_waits_on_word(op)).then_some(Blocked {
                pid,
                tid,
                uaddr: args[0],
                op,
                sp,
                pc,
            })
        })
        .collect()
}

fn read_u32(pid: u32, addr: u64) -> Option<u32> {
    let mem = File::open(format!("/proc/{pid}/mem")).ok()?;
    let mut buf = [0u8; 4];
    mem.read_exact_at(&mut buf, addr).ok()?;
    Some(u32::from_ne_bytes(buf))
}

/// The stack of a stopped thread from `sp` up (as the kernel side copies it
/// at a probe), for unwinding.
pub fn read_stack(pid: u32, sp: u64) -> Vec<u8> {
    let Ok(mem) = File::open(format!("/proc/{pid}/mem")) else {
        return Vec::new();
    };
    let first = STACK_CHUNK - (sp as usize & (STACK_CHUNK - 1));
    let mut buf = vec![0u8; STACK_BYTES];
    let mut copied = 0;
    let mut chunk = first;
    while copied + chunk <= STACK_BYTES {
        if mem
            .read_exact_at(&mut buf[copied..copied + chunk], sp + copied as u64)
            .is_err()
        {
            break;
        }
        copied += chunk;
        chunk = STACK_CHUNK;
    }
    buf.truncate(copied);
    buf
}

/// The process (thread group) of thread `tid`.
pub fn tgid_of(tid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))?
        .trim()
        .parse()
        .ok()
}

/// What `b` waits for: the lock its futex word belongs to, and its holders
/// among the other threads of the process.
pub fn waiter(b: Blocked, held: &HeldByThread) -> Option<Waiter> {
    let tids = threads(b.pid);
    // Locks the tracer saw taken: exact for every kind.
    let mut holders = Vec::new();
    let mut found: Option<(u64, LockKind)> = None;
    for &tid in tids.iter().filter(|&&t| t != b.tid) {
        for h in held.get(&tid).into_iter().flatten() {
            let kind = LockKind::from_raw(h.kind).unwrap_or(LockKind::Mutex);
            let covers = match kind {
                LockKind::RwlockRead | LockKind::RwlockWrite => {
                    (h.addr..h.addr + RWLOCK_SIZE).contains(&b.uaddr)
                }
                _ => h.addr == b.uaddr,
            };
            if covers {
                found.get_or_insert((h.addr, kind));
                if !holders.contains(&tid) {
                    holders.push(tid);
                }
            }
        }
    }
    if let Some((lock, held_kind)) = found {
        // The mode requested: the waiter's own entry, pushed when it called
        // the lock function.
        let kind = held
            .get(&b.tid)
            .into_iter()
            .flatten()
            .rev()
            .find(|h| h.addr == lock)
            .and_then(|h| LockKind::from_raw(h.kind))
            .unwrap_or(held_kind);
        return Some(Waiter {
            blocked: b,
            lock,
            kind,
            holders,
        });
    }
    // A semaphore the waiter holds itself: CPython's pattern for waiting
    // until another thread releases it (a condition, an event, a module's
    // import lock). Who will is not known here: see
    // `Pythons::resolve_import_waits`, which keeps only the waits it can
    // attribute.
    let own = held
        .get(&b.tid)
        .into_iter()
        .flatten()
        .any(|h| h.addr == b.uaddr && h.kind == LockKind::Semaphore as u32);
    if own {
        return Some(Waiter {
            lock: b.uaddr,
            blocked: b,
            kind: LockKind::Semaphore,
            holders: vec![b.tid],
        });
    }
    // A pthread mutex taken before the tracer started (or with no tracer):
    // glibc keeps its owner's tid in the mutex; a PI futex word holds it.
    // A plain mutex's word is 1 (locked) or 2 (locked, with waiters); other
    // futex waits (a join waits on the thread's tid, a condition on a
    // sequence number) have other words.
    let word = read_u32(b.pid, b.uaddr)?;
    let owner = if matches!(b.op, FUTEX_LOCK_PI | FUTEX_LOCK_PI2) {
        word & FUTEX_TID_MASK
    } else if matches!(word, 1 | 2) {
        read_u32(b.pid, b.uaddr + MUTEX_OWNER_OFFSET)?
    } else {
        return None;
    };
    // The owner may be in another process: a process-shared mutex.
    if owner == 0 || owner == b.tid || tgid_of(owner).is_none() {
        return None;
    }
    Some(Waiter {
        blocked: b,
        lock: b.uaddr,
        kind: LockKind::Mutex,
        holders: vec![owner],
    })
}

/// Every waiter of `pids`.
pub fn waiters(pids: &[u32], held: &HeldByThread) -> Vec<Waiter> {
    let mut waiters: Vec<Waiter> = pids
        .iter()
        .flat_map(|&pid| blocked_threads(pid))
        .filter_map(|b| waiter(b, held))
        .collect();
    // A thread blocked on a lock has it on its held stack already (pushed at
    // the call): it is another waiter, not a holder.
    let waiting: Vec<(u32, u64)> = waiters.iter().map(|w| (w.blocked.tid, w.lock)).collect();
    // (A waiter listed as its own holder is one on a semaphore of its own:
    // see `waiter`.)
    for w in &mut waiters {
        let (lock, tid) = (w.lock, w.blocked.tid);
        w.holders
            .retain(|&h| h == tid || !waiting.contains(&(h, lock)));
    }
    waiters
}

/// The elementary cycles of the wait-for graph (tid -> holders), each as the
/// waiters in order, starting at its smallest tid: every thread of a cycle
/// waits for the next one's lock... and the last for the first's.
pub fn deadlocks(waiters: &[Waiter]) -> Vec<Vec<Waiter>> {
    let by_tid: HashMap<u32, &Waiter> = waiters.iter().map(|w| (w.blocked.tid, w)).collect();
    let mut cycles = Vec::new();
    let mut seen: BTreeSet<Vec<u32>> = BTreeSet::new();
    let mut starts: Vec<u32> = by_tid.keys().copied().collect();
    starts.sort_unstable();
    for start in starts {
        // Depth-first over waits, only through tids greater than the start,
        // so that each cycle is found once, from its smallest tid.
        let mut path = vec![start];
        // (tid, index of the next holder to follow)
        let mut stack: Vec<(u32, usize)> = vec![(start, 0)];
        while let Some(top) = stack.len().checked_sub(1) {
            let (tid, next) = stack[top];
            let holders = &by_tid[&tid].holders;
            if next >= holders.len() {
                stack.pop();
                path.pop();
                continue;
            }
            stack[top].1 += 1;
            let h = holders[next];
            if h == start {
                if seen.insert(path.clone()) {
                    cycles.push(path.iter().map(|t| by_tid[t].clone()).collect());
                }
            } else if h > start && by_tid.contains_key(&h) && !path.contains(&h) && path.len() < 64
            {
                path.push(h);
                stack.push((h, 0));
            }
        }
    }
    cycles
}

/// A thread's state letter and name (`/proc/PID/task/TID/stat`, `comm`).
pub fn thread_state(pid: u32, tid: u32) -> (String, String) {
    let stat = fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap_or_default();
    // "tid (comm) S ...": the state follows the last ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or("?")
        .to_string();
    let comm = fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_default();
    (state, comm)
}

/// The registers of a thread asleep in any syscall (sp, pc), for its stack.
pub fn syscall_registers(pid: u32, tid: u32) -> Option<(u64, u64)> {
    let line = fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?;
    let (_, _, sp, pc) = parse_syscall(&line)?;
    Some((sp, pc))
}

/// Every process on the host but this one.
pub fn all_pids() -> Vec<u32> {
    let me = std::process::id();
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&p| p != me)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::FUTEX_WAIT;

    #[test]
    fn parses_a_futex_wait() {
        let line = "202 0x55d0c0a01040 0x80 0x2 0x0 0x0 0x0 0x7ffc8e4e0a18 0x7f3a1b2c3d4e\n";
        let (nr, args, sp, pc) = parse_syscall(line).unwrap();
        assert_eq!(nr, 202);
        assert_eq!(args[0], 0x55d0c0a01040);
        assert_eq!(args[1] & FUTEX_CMD_MASK, FUTEX_WAIT);
        assert_eq!((sp, pc), (0x7ffc8e4e0a18, 0x7f3a1b2c3d4e));
        assert!(parse_syscall("running\n").is_none());
        assert!(parse_syscall("-1 0x7ffc8e4e0a18 0x7f3a1b2c3d4e\n").is_none());
    }

    fn w(tid: u32, holders: &[u32]) -> Waiter {
        Waiter {
            blocked: Blocked {
                pid: 1,
                tid,
                uaddr: 0x1000 + tid as u64,
                op: FUTEX_WAIT,
                sp: 0,
                pc: 0,
            },
            lock: 0x1000 + tid as u64,
            kind: LockKind::Mutex,
            holders: holders.to_vec(),
        }
    }

    #[test]
    fn finds_each_wait_cycle_once() {
        let tids = |c: &Vec<Waiter>| c.iter().map(|w| w.blocked.tid).collect::<Vec<_>>();
        // 10 -> 11 -> 10, and 12 waits for 10 (blocked behind the cycle).
        let cycles = deadlocks(&[w(10, &[11]), w(11, &[10]), w(12, &[10])]);
        assert_eq!(
            cycles.iter().map(tids).collect::<Vec<_>>(),
            vec![vec![10, 11]]
        );
        // Three threads.
        let cycles = deadlocks(&[w(7, &[5]), w(5, &[6]), w(6, &[7])]);
        assert_eq!(
            cycles.iter().map(tids).collect::<Vec<_>>(),
            vec![vec![5, 6, 7]]
        );
        // No cycle: a chain.
        assert!(deadlocks(&[w(1, &[2]), w(2, &[3])]).is_empty());
    }

    #[test]
    fn own_stack_is_readable() {
        let x = 0u64;
        let sp = &x as *const u64 as u64;
        let stack = read_stack(std::process::id(), sp);
        assert!(stack.len() >= 8);
    }
}
