//! The glibc (x86_64) and Linux futex ABI facts both sides rely on: where
//! glibc keeps a lock's state, and which futex calls put a thread to sleep
//! on a lock word. One copy, so that the kernel side's futex accounting and
//! the collector's wait-for graph agree on what a lock wait is.

/// `futex(2)`'s syscall number on x86_64.
pub const SYS_FUTEX: u64 = 202;

/// `pthread_mutex_t.__data.__count`: extra acquisitions of a recursive
/// mutex by its owner.
pub const MUTEX_COUNT_OFFSET: u64 = 4;
/// `pthread_mutex_t.__data.__owner`: the owner's tid while locked.
pub const MUTEX_OWNER_OFFSET: u64 = 8;
/// `pthread_mutex_t.__data.__kind`, whose low bits are the mutex type.
pub const MUTEX_KIND_OFFSET: u64 = 16;
pub const MUTEX_KIND_MASK: u32 = 3;
pub const MUTEX_KIND_RECURSIVE: u32 = 1;
pub const MUTEX_KIND_ERRORCHECK: u32 = 2;
/// `__kind` bit of a priority-inheritance mutex (`PTHREAD_PRIO_INHERIT`):
/// its futex word holds the owner's tid (`FUTEX_LOCK_PI`).
pub const MUTEX_KIND_PRIO_INHERIT: u32 = 32;
/// `__kind` bit of a process-shared mutex.
pub const MUTEX_KIND_PSHARED: u32 = 128;

/// `sizeof(pthread_rwlock_t)`: an rwlock's futex words are inside it.
pub const RWLOCK_SIZE: u64 = 56;
/// `pthread_rwlock_t.__data.__cur_writer`: the writer's tid while
/// write-locked.
pub const RWLOCK_CUR_WRITER_OFFSET: u64 = 24;

/// A futex op's flag for a process-private futex word (glibc uses it for
/// locks that are not process-shared).
pub const FUTEX_PRIVATE_FLAG: u64 = 128;

/// The command bits of a futex op: without `FUTEX_PRIVATE_FLAG` (128) and
/// `FUTEX_CLOCK_REALTIME` (256).
pub const FUTEX_CMD_MASK: u64 = 0x7f;
pub const FUTEX_WAIT: u64 = 0;
pub const FUTEX_LOCK_PI: u64 = 6;
pub const FUTEX_WAIT_BITSET: u64 = 9;
pub const FUTEX_WAIT_REQUEUE_PI: u64 = 11;
pub const FUTEX_LOCK_PI2: u64 = 13;
/// PI futex words hold the owner's tid in their low bits.
pub const FUTEX_TID_MASK: u32 = 0x3fff_ffff;

/// Whether futex command `cmd` (the op masked with [`FUTEX_CMD_MASK`]) puts
/// the caller to sleep on its `uaddr` word as a lock waiter may be:
/// `FUTEX_WAIT` and `FUTEX_WAIT_BITSET` (glibc's mutexes, rwlocks and
/// semaphores, Rust's and parking_lot's locks; also joins and other
/// waits, which the word itself tells apart), and `FUTEX_LOCK_PI` and
/// `FUTEX_LOCK_PI2` (priority-inheritance mutexes; the word holds the
/// owner's tid).
///
/// Not `FUTEX_WAIT_REQUEUE_PI`: its caller sleeps on a condition variable's
/// word (`uaddr`) until another thread requeues it onto the PI mutex at
/// `uaddr2`. It is a condition wait, which neither side counts as lock
/// contention (and glibc 2.25 and later never issue it). Not
/// `FUTEX_TRYLOCK_PI` either: it never sleeps.
#[inline(always)]
pub const fn futex_waits_on_word(cmd: u64) -> bool {
    matches!(
        cmd,
        FUTEX_WAIT | FUTEX_WAIT_BITSET | FUTEX_LOCK_PI | FUTEX_LOCK_PI2
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_waits_are_the_sleeping_lock_ops() {
        let waits: [u64; 4] = [FUTEX_WAIT, FUTEX_WAIT_BITSET, FUTEX_LOCK_PI, FUTEX_LOCK_PI2];
        for cmd in 0..=FUTEX_CMD_MASK {
            assert_eq!(futex_waits_on_word(cmd), waits.contains(&cmd), "op {cmd}");
        }
        // A private wait is masked to FUTEX_WAIT first.
        assert!(futex_waits_on_word(0x80 & FUTEX_CMD_MASK));
        assert!(!futex_waits_on_word(FUTEX_WAIT_REQUEUE_PI));
    }
}
