//! The probe catalogue: which program goes on which libc function, at
//! entry or return, reading which argument registers; and the tracepoints.

use iced_x86::Register;
use tracer_common::{probe_cookie, LockKind, HELD_FLAG_TIMED, HELD_FLAG_TRY};

/// One uprobe on a libc function.
pub struct Uprobe {
    /// The program's name in the eBPF object.
    pub program: &'static str,
    pub symbol: &'static str,
    /// A return probe (placed like the entry probe: the return address is
    /// still at `[rsp]` at the placed instruction).
    pub is_return: bool,
    /// The argument registers the program reads.
    pub reads: &'static [Register],
    /// The program tolerates a second hit in the same call (see
    /// `placement::place_repeat_safe`).
    pub repeat_safe: bool,
    /// What `bpf_get_attach_cookie` returns to the program: for the lock
    /// programs, the kind of lock and the request's flags
    /// (`tracer_common::probe_cookie`).
    pub cookie: u64,
}

const fn entry(program: &'static str, symbol: &'static str) -> Uprobe {
    Uprobe {
        program,
        symbol,
        is_return: false,
        reads: &[Register::RDI],
        repeat_safe: false,
        cookie: 0,
    }
}

/// A blocking lock function: program `lock`, the kind in the cookie.
const fn lock(symbol: &'static str, kind: LockKind) -> Uprobe {
    Uprobe {
        cookie: probe_cookie(kind, 0),
        ..entry("lock", symbol)
    }
}

/// A try or timed lock function's entry: program `try_lock`, the kind and
/// `HELD_FLAG_TRY` or `HELD_FLAG_TIMED` in the cookie; its return is a
/// `try_return` probe.
const fn try_lock(symbol: &'static str, kind: LockKind, flags: u32) -> Uprobe {
    Uprobe {
        cookie: probe_cookie(kind, flags),
        ..entry("try_lock", symbol)
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
        is_return: true,
        ..entry(program, symbol)
    }
}

/// The condition waits: the mutex is the second argument.
const fn cond(program: &'static str, symbol: &'static str, is_return: bool) -> Uprobe {
    Uprobe {
        is_return,
        reads: &[Register::RDI, Register::RSI],
        ..entry(program, symbol)
    }
}

const TRY: u32 = HELD_FLAG_TRY;
const TIMED: u32 = HELD_FLAG_TIMED;

/// Every probe: an entry probe per lock function (blocking operations need no
/// return probe: their wait shows in the futex tracepoints), and a return
/// probe where the result decides what is held (try, timed, condition waits).
///
/// `pthread_mutex_unlock` is not probed: glibc writes the owner's tid into
/// every mutex it locks (`__owner`) and clears it at the unlock, so the
/// kernel side checks a held mutex there at the thread's next acquisition
/// (and the collector before it names a holder in the wait-for graph): one
/// probe hit per lock/unlock pair instead of two.
pub const UPROBES: &[Uprobe] = &[
    lock("pthread_mutex_lock", LockKind::Mutex),
    try_lock("pthread_mutex_trylock", LockKind::Mutex, TRY),
    ret("try_return", "pthread_mutex_trylock"),
    try_lock("pthread_mutex_timedlock", LockKind::Mutex, TIMED),
    ret("try_return", "pthread_mutex_timedlock"),
    try_lock("pthread_mutex_clocklock", LockKind::Mutex, TIMED),
    ret("try_return", "pthread_mutex_clocklock"),
    lock("pthread_rwlock_rdlock", LockKind::RwlockRead),
    lock("pthread_rwlock_wrlock", LockKind::RwlockWrite),
    entry("unlock", "pthread_rwlock_unlock"),
    try_lock("pthread_rwlock_tryrdlock", LockKind::RwlockRead, TRY),
    ret("try_return", "pthread_rwlock_tryrdlock"),
    try_lock("pthread_rwlock_timedrdlock", LockKind::RwlockRead, TRY),
    ret("try_return", "pthread_rwlock_timedrdlock"),
    try_lock("pthread_rwlock_clockrdlock", LockKind::RwlockRead, TRY),
    ret("try_return", "pthread_rwlock_clockrdlock"),
    try_lock("pthread_rwlock_trywrlock", LockKind::RwlockWrite, TRY),
    ret("try_return", "pthread_rwlock_trywrlock"),
    try_lock("pthread_rwlock_timedwrlock", LockKind::RwlockWrite, TRY),
    ret("try_return", "pthread_rwlock_timedwrlock"),
    try_lock("pthread_rwlock_clockwrlock", LockKind::RwlockWrite, TRY),
    ret("try_return", "pthread_rwlock_clockwrlock"),
    lock("pthread_spin_lock", LockKind::Spinlock),
    entry("unlock", "pthread_spin_unlock"),
    try_lock("pthread_spin_trylock", LockKind::Spinlock, TRY),
    ret("try_return", "pthread_spin_trylock"),
    lock("sem_wait", LockKind::Semaphore),
    repeat_safe(try_lock("sem_trywait", LockKind::Semaphore, TRY)),
    repeat_safe(ret("try_return", "sem_trywait")),
    try_lock("sem_timedwait", LockKind::Semaphore, TIMED),
    ret("try_return", "sem_timedwait"),
    try_lock("sem_clockwait", LockKind::Semaphore, TIMED),
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
    cond("cond_wait", "pthread_cond_wait", false),
    cond("cond_wait_return", "pthread_cond_wait", true),
    cond("cond_wait", "pthread_cond_timedwait", false),
    cond("cond_wait_return", "pthread_cond_timedwait", true),
    cond("cond_wait", "pthread_cond_clockwait", false),
    cond("cond_wait_return", "pthread_cond_clockwait", true),
];

/// What only the two-hit cost floor (`--floor-probes`) probes: the mutex
/// unlock, which the real programs validate lazily. Against it, `cargo
/// xtask bench` shows what leaving it out saves.
pub const TWO_HIT_FLOOR_ONLY: &[Uprobe] = &[entry("unlock", "pthread_mutex_unlock")];

/// What `--watch-free` adds: `free`, whose memory may have held a lock
/// named in a dependency (see the kernel side's `freed`).
pub const FREE_WATCH: &[Uprobe] = &[entry("heap_free", "free")];

/// The functions that get probes.
pub fn probed_symbols() -> Vec<&'static str> {
    UPROBES.iter().map(|p| p.symbol).collect()
}

/// (program, category, event)
pub const TRACEPOINTS: &[(&str, &str, &str)] = &[
    ("process_fork", "sched", "sched_process_fork"),
    ("process_exec", "sched", "sched_process_exec"),
    ("process_exit", "sched", "sched_process_exit"),
    ("futex_enter", "syscalls", "sys_enter_futex"),
    ("futex_exit", "syscalls", "sys_exit_futex"),
];

/// The programs that the lock programs tail-call and that are not attached
/// themselves (loaded with them).
pub const TAIL_ONLY: &[&str] = &[EMIT_DEPS, "lock_nested", "py_copy"];
const EMIT_DEPS: &str = "emit_deps";

/// Map `TAILS` of the kernel side, by index: the programs tail-called
/// (`emit_deps` sends dependencies, `lock` records the acquisitions that
/// return probes complete, `lock_nested` finds the new dependencies of an
/// acquisition, `py_copy` copies the code objects an event's Python frames
/// name before `emit_deps` sends it). Verified once each, instead of in every program that
/// reaches them: the verifier is most of `locktrace run`'s start-up.
pub const TAILS: &[&str] = &[EMIT_DEPS, "lock", "lock_nested", "py_copy"];

/// Whether a program records acquisitions (a lock taken, or a try or timed
/// request pending until its return). These are attached after every other
/// program of a file, releases first (and closed before them, see
/// `slices`): then a lock whose acquisition was seen always has its release
/// seen, and never stays in a held stack for ever. (A mutex has no release
/// probe: its owner field says whether it is still held.)
pub fn records_acquisitions(program: &str) -> bool {
    matches!(program, "lock" | "try_lock" | "floor_entry")
}

/// Whether a program follows a lock's life (init, destroy) rather than its
/// traffic: kept on when the traffic is probed in slices.
pub fn is_lifecycle(program: &str) -> bool {
    matches!(program, "lock_init" | "lock_destroy" | "heap_free")
}

/// The programs that go on uprobes.
pub fn uprobe_programs() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = UPROBES
        .iter()
        .chain(FREE_WATCH)
        .map(|p| p.program)
        .collect();
    names.extend(["floor_entry", "floor_return"]);
    names.sort_unstable();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every program is placed in the attach order on purpose: a new one
    /// must be added to one side.
    #[test]
    fn every_program_has_an_attach_order() {
        let first = [
            "unlock",
            "try_return",
            "sem_post",
            "lock_init",
            "lock_destroy",
            "heap_free",
            "cond_wait",
            "cond_wait_return",
            "floor_return",
        ];
        for program in uprobe_programs() {
            assert!(
                records_acquisitions(program) != first.contains(&program),
                "{program}"
            );
        }
    }

    #[test]
    fn lock_programs_get_their_kind() {
        for probe in UPROBES
            .iter()
            .filter(|p| ["lock", "try_lock"].contains(&p.program))
        {
            let (kind, _) = tracer_common::cookie_request(probe.cookie);
            assert!(LockKind::from_raw(kind).is_some(), "{}", probe.symbol);
        }
    }
}
