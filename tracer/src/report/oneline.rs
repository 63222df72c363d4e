//! One line per finding: which locks, where, in which process (the
//! agent's alert summary, `report --print-fingerprints`).

use crate::report::findings::{Finding, Lock};
use crate::report::fingerprint::site;

pub fn pid_comm(finding: &Finding) -> (u32, &str) {
    match finding {
        Finding::LockOrderInversion(f) => (f.pid, &f.comm),
        Finding::Deadlock(f) => (f.pid, &f.comm),
        Finding::LockWaitTimeout(f) => (f.pid, &f.comm),
        Finding::SelfDeadlock(f) => (f.pid, &f.comm),
        Finding::SameClassNesting(f) => (f.pid, &f.comm),
        Finding::BlockedThread(t) => (t.pid, &t.comm),
    }
}

/// One line: which locks, where.
pub fn summary(finding: &Finding) -> String {
    let (pid, comm) = pid_comm(finding);
    let what = match finding {
        Finding::LockOrderInversion(f) => {
            let mut names: Vec<String> = f.locks.iter().map(Lock::label).collect();
            if let Some(first) = names.first().cloned() {
                names.push(first);
            }
            let sites: Vec<String> = f.cycle.iter().filter_map(|e| site(&e.stack)).collect();
            format!(
                "lock-order inversion {} at {}",
                names.join(" -> "),
                sites.join(", ")
            )
        }
        Finding::Deadlock(f) => format!("deadlock of {} threads", f.threads.len()),
        Finding::LockWaitTimeout(f) => match &f.waiter.waits_for {
            Some(lock) => format!("thread {} blocked on {}", f.waiter.tid, lock.label()),
            None => format!("thread {} blocked on a lock", f.waiter.tid),
        },
        Finding::SelfDeadlock(f) => format!(
            "thread {} requested {} it holds, at {}",
            f.tid,
            f.lock.label(),
            site(&f.stack).unwrap_or_default()
        ),
        Finding::SameClassNesting(f) => format!(
            "two locks of class {} nested at {}",
            f.class,
            site(&f.stack).unwrap_or_default()
        ),
        Finding::BlockedThread(_) => "blocked thread".to_string(),
    };
    format!("{what} in {comm} (pid {pid})")
}
