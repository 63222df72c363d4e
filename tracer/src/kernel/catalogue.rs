//! The probe catalogue: which program goes on which libc function, at
//! entry or return, reading which argument registers; and the tracepoints.

use iced_x86::Register;

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
pub const UPROBES: &[Uprobe] = &[
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
pub const TRACEPOINTS: &[(&str, &str, &str)] = &[
    ("process_fork", "sched", "sched_process_fork"),
    ("process_exec", "sched", "sched_process_exec"),
    ("process_exit", "sched", "sched_process_exit"),
    ("futex_enter", "syscalls", "sys_enter_futex"),
    ("futex_exit", "syscalls", "sys_exit_futex"),
];
