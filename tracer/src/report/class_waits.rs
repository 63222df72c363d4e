//! Lock contention by class, for the agent's metrics (read by the session,
//! turned into series by `agent::contention`). The kernel side sums
//! the futex wait time of traced threads per futex word (`FUTEX_STATS`, an
//! LRU map); this turns what each word's sum grew by since the last read
//! into wait time per lock class. Words no traced lock function waited on
//! (a program's own locks, joins) are not lock classes the tracer knows:
//! left out, as the summary's coverage counts them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::kernel::maps::FutexWord;

/// How often the map is read: each read walks it (two system calls per
/// word, up to 16,384 words), and a scraper reads the counters every 15 s
/// or more.
pub const READ_EVERY: Duration = Duration::from_secs(5);

/// Wait time since the last read: by class name (None: a lock no class
/// names yet, or only by its first use), in nanoseconds.
pub type ClassWaitNs = Vec<(Option<String>, u64)>;

#[derive(Default)]
pub struct ClassWaits {
    /// Each word's wait sum at the last read, by (pid, word): bounded by
    /// the kernel map's size, as only the words of the last read are kept.
    last: HashMap<(u32, u64), u64>,
    /// The class name found for a word (words without one are asked
    /// again: a class may come with a later dependency).
    names: HashMap<(u32, u64), String>,
    last_read: Option<Instant>,
}

impl ClassWaits {
    /// Whether the map is due to be read again.
    pub fn due(&self) -> bool {
        self.last_read.is_none_or(|t| t.elapsed() >= READ_EVERY)
    }

    /// The wait time each class gained since the last read of `words` (the
    /// map as read now); `name` gives a word's class name.
    pub fn update(
        &mut self,
        words: &[FutexWord],
        mut name: impl FnMut(u32, u64) -> Option<String>,
    ) -> ClassWaitNs {
        self.last_read = Some(Instant::now());
        let mut by_class: HashMap<Option<String>, u64> = HashMap::new();
        let mut now = HashMap::with_capacity(words.len());
        for w in words {
            let key = (w.pid, w.addr);
            now.insert(key, w.wait_ns);
            // A word the LRU map dropped and took in again starts from 0.
            let grown = match self.last.get(&key) {
                Some(&before) if before <= w.wait_ns => w.wait_ns - before,
                _ => w.wait_ns,
            };
            if grown == 0 || w.lock_waits == 0 {
                continue;
            }
            let class = match self.names.get(&key) {
                Some(n) => Some(n.clone()),
                None => name(w.pid, w.addr).inspect(|n| {
                    self.names.insert(key, n.clone());
                }),
            };
            *by_class.entry(class).or_default() += grown;
        }
        self.names.retain(|k, _| now.contains_key(k));
        self.last = now;
        by_class.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(pid: u32, addr: u64, wait_ns: u64, lock_waits: u64) -> FutexWord {
        FutexWord {
            pid,
            addr,
            waits: 1,
            wait_ns,
            lock_waits,
        }
    }

    fn sorted(mut v: ClassWaitNs) -> ClassWaitNs {
        v.sort();
        v
    }

    #[test]
    fn growth_per_word_adds_up_by_class() {
        let mut c = ClassWaits::default();
        let name = |_pid: u32, addr: u64| match addr {
            0x10 | 0x20 => Some("app:mutex_a".to_string()),
            0x30 => Some("app:mutex_b".to_string()),
            _ => None,
        };
        // Two workers' instances of one class, another class, an unnamed
        // lock, and a word no lock function waited on (left out).
        let first = [
            word(1, 0x10, 100, 1),
            word(2, 0x20, 50, 1),
            word(1, 0x30, 7, 1),
            word(1, 0x40, 9, 1),
            word(1, 0x50, 1000, 0),
        ];
        assert_eq!(
            sorted(c.update(&first, name)),
            vec![
                (None, 9),
                (Some("app:mutex_a".into()), 150),
                (Some("app:mutex_b".into()), 7)
            ]
        );
        // Only what grew since; a word the LRU map dropped and took in
        // again (smaller than before) counts from 0.
        let second = [
            word(1, 0x10, 130, 1),
            word(2, 0x20, 20, 1),
            word(1, 0x30, 7, 1),
        ];
        assert_eq!(
            c.update(&second, name),
            vec![(Some("app:mutex_a".into()), 50)]
        );
        // Words gone from the map are forgotten.
        assert_eq!(c.last.len(), 3);
        assert!(!c.due());
    }
}
