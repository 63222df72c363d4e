//! The wait-for graph: which thread waits, right now, for which other
//! thread. A thread blocked on a lock sleeps in the `futex` syscall on the
//! lock's futex word (`/proc/PID/task/TID/syscall` says so, with its stack
//! pointer and program counter); the lock's holders come from the kernel
//! side's held-lock stacks (a mutex checked against its owner tid, its unlock
//! not being probed) and, for pthread mutexes, from the owner tid that
//! glibc keeps in the mutex (so locks taken before the tracer started count
//! too). A cycle of waits is a deadlock.

use std::collections::HashMap;
use std::fs;

use tracer_analysis::model::{Blocked, LockKind, Waiter};
use tracer_common::{
    futex_waits_on_word, HeldLock, FUTEX_CMD_MASK, FUTEX_LOCK_PI, FUTEX_LOCK_PI2,
    FUTEX_PRIVATE_FLAG, FUTEX_TID_MASK, FUTEX_WAIT, FUTEX_WAIT_BITSET, MAX_HELD, MUTEX_KIND_OFFSET,
    MUTEX_KIND_PRIO_INHERIT, MUTEX_KIND_PSHARED, MUTEX_OWNER_OFFSET, RWLOCK_SIZE, STACK_BYTES,
    STACK_CHUNK, SYS_FUTEX,
};

use crate::host::proc::{ns_tid, tgid_of, threads};
use crate::host::remote::{self, Outcome};

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
                private: args[1] & FUTEX_PRIVATE_FLAG != 0,
                sp,
                pc,
            })
        })
        .collect()
}

fn read_u32(pid: u32, addr: u64) -> Option<u32> {
    let mut buf = [0u8; 4];
    (remote::read(pid, addr, &mut buf) == Outcome::Read).then(|| u32::from_ne_bytes(buf))
}

/// The stack of a stopped thread from `sp` up (as the kernel side copies it
/// at a probe), for unwinding.
pub fn read_stack(pid: u32, sp: u64) -> Vec<u8> {
    let first = STACK_CHUNK - (sp as usize & (STACK_CHUNK - 1));
    let mut buf = vec![0u8; STACK_BYTES];
    let mut copied = 0;
    let mut chunk = first;
    while copied + chunk <= STACK_BYTES {
        if remote::read(pid, sp + copied as u64, &mut buf[copied..copied + chunk]) != Outcome::Read
        {
            break;
        }
        copied += chunk;
        chunk = STACK_CHUNK;
    }
    buf.truncate(copied);
    buf
}

/// Whether thread `tid` of `pid` still holds `h`, an entry of its held
/// stack. Mutex unlocks are not probed, so a mutex entry stays until the
/// thread's next acquisition: it counts only while the mutex is locked and
/// its owner field (the holder's tid in its pid namespace) names the
/// thread. Other kinds have their releases probed.
pub fn still_held(pid: u32, tid: u32, h: &HeldLock) -> bool {
    if !matches!(
        LockKind::from_raw(h.kind),
        Some(LockKind::Mutex | LockKind::RecursiveMutex)
    ) {
        return true;
    }
    let (Some(word), Some(owner), Some(me)) = (
        read_u32(pid, h.addr),
        read_u32(pid, h.addr + MUTEX_OWNER_OFFSET),
        ns_tid(pid, tid),
    ) else {
        return false;
    };
    word != 0 && owner == me
}

/// What `b` waits for: the lock its futex word belongs to, and its holders
/// among the other threads of the process.
pub fn waiter(b: Blocked, held: &HeldByThread) -> Option<Waiter> {
    let tids = threads(b.pid);
    // Locks the tracer saw taken (a mutex checked against its owner).
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
            // A mutex released since (its unlock is not probed) is not
            // held: never a false holder, never a false deadlock.
            if covers && still_held(b.pid, tid, h) {
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
    if let Some(w) = refused_pi_request(b, held) {
        return Some(w);
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
    // The owner may be in another process: a process-shared mutex. A
    // private word's owner is one of the process's threads, else the word
    // is not a glibc mutex (a futex lock of the program's own, whose next
    // word is data: Rust's `std::sync::Mutex`).
    if owner == 0 || owner == b.tid {
        return None;
    }
    match tgid_of(owner) {
        Some(tgid) if !b.private || tgid == b.pid => {}
        _ => return None,
    }
    Some(Waiter {
        blocked: b,
        lock: b.uaddr,
        kind: LockKind::Mutex,
        holders: vec![owner],
    })
}

/// Bytes above the stack pointer where glibc's park word may be: the
/// futex wait function's frame and the lock function's.
const PARK_WORD_WINDOW: u64 = 1024;
/// Bytes above the park word searched for the lock call's return address:
/// the rest of the lock function's frame.
const PARK_CALLER_WINDOW: u64 = 512;

/// Whether `b` sleeps the way glibc parks a thread whose
/// priority-inheritance lock request the kernel refused: `FUTEX_LOCK_PI`
/// failed with `EDEADLK` (the kernel's rt-mutex chain walk found that the
/// owner waits, through other PI locks, for this thread: a deadlock) or
/// `ESRCH` (the owner died), and `__pthread_mutex_lock_full` then waits
/// forever, without a timeout, for a zero word of its own stack frame that
/// nobody will ever wake (`__futex_abstimed_wait64(&(unsigned int){0}, 0,
/// ...)`). The thread never returns from `pthread_mutex_lock`.
pub fn parked_in_lock(b: &Blocked) -> bool {
    if !matches!(b.op, FUTEX_WAIT | FUTEX_WAIT_BITSET)
        || !(b.sp..b.sp + PARK_WORD_WINDOW).contains(&b.uaddr)
    {
        return false;
    }
    // Expected value 0, no timeout: read again from the syscall's arguments.
    let Ok(line) = fs::read_to_string(format!("/proc/{}/task/{}/syscall", b.pid, b.tid)) else {
        return false;
    };
    let Some((_, args, _, _)) = parse_syscall(&line) else {
        return false;
    };
    args[0] == b.uaddr && args[2] == 0 && args[3] == 0 && read_u32(b.pid, b.uaddr) == Some(0)
}

/// A thread glibc parked after the kernel refused its request of a
/// priority-inheritance mutex (see [`parked_in_lock`]): it waits for that
/// mutex, whose futex word names its owner, forever. The mutex is the
/// thread's newest held-stack entry (pushed when it called the lock
/// function; the park word gives no address), and only when everything
/// ties that entry to the call the thread is still in: the return address
/// of the entry's lock call is on the stack just above the park word (the
/// lock function's frame, still live), the mutex is a PI one that another
/// thread owns (its futex word and glibc's `__owner` agree), and the held
/// stack did not overflow (an entry deeper than it would be missing). An
/// entry left by an earlier, finished lock call fails the first check.
fn refused_pi_request(b: Blocked, held: &HeldByThread) -> Option<Waiter> {
    let stack = held.get(&b.tid)?;
    if stack.len() >= MAX_HELD || !parked_in_lock(&b) {
        return None;
    }
    let request = stack.last()?;
    if !matches!(
        LockKind::from_raw(request.kind),
        Some(LockKind::Mutex | LockKind::RecursiveMutex)
    ) {
        return None;
    }
    let kind = read_u32(b.pid, request.addr + MUTEX_KIND_OFFSET)?;
    if kind & MUTEX_KIND_PRIO_INHERIT == 0 {
        return None;
    }
    let owner = read_u32(b.pid, request.addr)? & FUTEX_TID_MASK;
    if owner == 0
        || read_u32(b.pid, request.addr + MUTEX_OWNER_OFFSET)? != owner
        || Some(owner) == ns_tid(b.pid, b.tid)
    {
        return None;
    }
    // Return addresses are 8-byte aligned; the park word only 4.
    let frame = read_bytes(b.pid, b.uaddr & !7, PARK_CALLER_WINDOW as usize)?;
    let in_the_call = frame
        .chunks_exact(8)
        .any(|w| u64::from_ne_bytes(w.try_into().expect("8 bytes")) == request.callsite);
    if !in_the_call {
        return None;
    }
    // The owner's tid is in the process's pid namespace, like the PI word
    // the fallback below reads; a private mutex's owner is one of its own
    // threads.
    match tgid_of(owner) {
        Some(tgid) if kind & MUTEX_KIND_PSHARED != 0 || tgid == b.pid => {}
        _ => return None,
    }
    Some(Waiter {
        blocked: b,
        lock: request.addr,
        kind: LockKind::from_raw(request.kind).unwrap_or(LockKind::Mutex),
        holders: vec![owner],
    })
}

fn read_bytes(pid: u32, addr: u64, len: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; len];
    (remote::read(pid, addr, &mut buf) == Outcome::Read).then_some(buf)
}

/// Every waiter of `pids`.
pub fn waiters(pids: &[u32], held: &HeldByThread) -> Vec<Waiter> {
    scan(pids, held).0
}

/// Every waiter of `pids`, and the threads blocked in a futex wait that is
/// not on a lock the tracer knows (a futex-based lock of the program's own,
/// a join...).
pub fn scan(pids: &[u32], held: &HeldByThread) -> (Vec<Waiter>, Vec<Blocked>) {
    let mut others = Vec::new();
    let mut waiters: Vec<Waiter> = pids
        .iter()
        .flat_map(|&pid| blocked_threads(pid))
        .filter_map(|b| {
            let w = waiter(b, held);
            if w.is_none() {
                others.push(b);
            }
            w
        })
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
    (waiters, others)
}

/// The registers of a thread asleep in any syscall (sp, pc), for its stack.
pub fn syscall_registers(pid: u32, tid: u32) -> Option<(u64, u64)> {
    let line = fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?;
    let (_, _, sp, pc) = parse_syscall(&line)?;
    Some((sp, pc))
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

    #[test]
    fn own_stack_is_readable() {
        let x = 0u64;
        let sp = &x as *const u64 as u64;
        let stack = read_stack(std::process::id(), sp);
        assert!(stack.len() >= 8);
    }
}
