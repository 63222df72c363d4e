//! The tracer's own file descriptors. Probe links kept per process (a
//! traced process's probes with `--pid`, a watched process's `free`) hold
//! one or more each for as long as the process lives, so a host with more
//! such processes than descriptors would leave none for what every record
//! needs (`/proc` reads, the files symbols come from). Links are made only
//! while a reserve stays free; past it a process is left without them and
//! counted, and tracing goes on.

use std::sync::atomic::{AtomicU64, Ordering};

/// Descriptors always left for reading `/proc` and files: an eighth of the
/// limit, at least 64.
fn reserve(limit: u64) -> u64 {
    (limit / 8).max(64)
}

static SOFT_LIMIT: AtomicU64 = AtomicU64::new(0);

/// Raises the soft limit on open descriptors to the hard one (what the
/// operator allows, `LimitNOFILE=` in a unit; the soft default of 1,024 is
/// for programs that `select()`), once, at start.
pub fn raise_soft_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to our own struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                tracing::debug!(
                    from = limit.rlim_cur,
                    to = limit.rlim_max,
                    "descriptor limit raised"
                );
                limit = raised;
            }
        }
    }
    SOFT_LIMIT.store(limit.rlim_cur, Ordering::Relaxed);
}

/// The soft limit on open descriptors.
fn soft_limit() -> u64 {
    let known = SOFT_LIMIT.load(Ordering::Relaxed);
    if known != 0 {
        return known;
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid pointer to our own struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    limit.rlim_cur
}

/// Descriptors the tracer has open now.
fn open_now() -> Option<u64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as u64)
}

/// Whether `n` more descriptors may be kept by links, leaving the reserve
/// free. Unknown (`/proc/self/fd` unreadable: none left to read it with)
/// means no.
pub fn room_for_links(n: u64) -> bool {
    let limit = soft_limit();
    open_now().is_some_and(|open| open + n + reserve(limit) <= limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_an_eighth_and_at_least_64() {
        assert_eq!(reserve(256), 64);
        assert_eq!(reserve(1024), 128);
        assert_eq!(reserve(524_288), 65_536);
    }

    #[test]
    fn links_have_room_in_a_test_process_and_not_past_the_limit() {
        assert!(room_for_links(1));
        assert!(!room_for_links(soft_limit()));
    }
}
