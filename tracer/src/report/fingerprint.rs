//! A finding's fingerprint: its stable identity across restarts, workers
//! and hosts running the same build. The agent labels alerts with it (and
//! keeps state and suppressions by it); the JSON report writes it on every
//! finding and `locktrace report --fingerprint` selects by it.

use tracer_analysis::model::Frame;

use crate::report::findings::{Finding, Lock};

/// The finding's type as the fingerprint hashes it (the agent's metric
/// label: changing it changes every fingerprint).
fn type_key(finding: &Finding) -> &'static str {
    match finding {
        Finding::LockOrderInversion(_) => "inversion",
        Finding::Deadlock(_) => "deadlock",
        Finding::LockWaitTimeout(_) => "lock_wait_timeout",
        Finding::SelfDeadlock(_) => "self_deadlock",
        Finding::SameClassNesting(_) => "same_class_nesting",
        Finding::BlockedThread(_) => "record",
    }
}

/// The first frame of the program's own code (past the lock functions of
/// libc): `function` or `module+offset`.
pub fn site(stack: &[Frame]) -> Option<String> {
    let frame = program_frame(stack)?;
    Some(match (&frame.function, &frame.module) {
        (Some(function), _) => function.clone(),
        (None, Some(module)) => format!("{}+{:#x}", basename(module), frame.offset.unwrap_or(0)),
        (None, None) => format!("{:#x}", frame.addr),
    })
}

fn program_frame(stack: &[Frame]) -> Option<&Frame> {
    stack
        .iter()
        .find(|f| !f.module.as_deref().is_some_and(is_lock_library))
        .or(stack.first())
}

fn is_lock_library(module: &str) -> bool {
    let name = basename(module);
    name.starts_with("libc.so") || name.starts_with("libc-") || name.starts_with("libpthread")
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The finding's stable identity, 16 hex digits: FNV-1a (64 bits, a fixed
/// function: the same on every build and host) of its type, its lock
/// classes and the program sites that took them, each sorted. Code is
/// keyed by the ELF build-id and file offset of the binary that holds it:
/// a global lock by its file's build-id and its offset in that file, a lock
/// on the heap by the site that took it, a site by its frame's build-id and
/// file offset, a Python lock by the file and line that created it (its
/// name) and a Python site by its innermost Python frame. Never pids,
/// addresses or paths: the same bug in a restarted process, another worker
/// or another host running the same build has the same fingerprint; a
/// rebuilt binary (another build-id) has another. Code in a file without a
/// build-id is known by its function or symbol name.
pub fn fingerprint(finding: &Finding) -> String {
    let kind = type_key(finding);
    let mut locks: Vec<String> = Vec::new();
    let mut sites: Vec<String> = Vec::new();
    let mut lock = |l: &Lock, taken: &[Frame]| {
        locks.push(match (&l.build_id, l.file_offset, &l.name) {
            (Some(build_id), Some(offset), _) => format!("{} {build_id}+{offset:#x}", l.kind),
            (_, _, Some(name)) => format!("{} {name}", l.kind),
            _ => format!("{} @{}", l.kind, site_key(taken).unwrap_or_default()),
        });
    };
    match finding {
        Finding::LockOrderInversion(f) => {
            for e in &f.cycle {
                lock(&e.from, &e.held_stack);
                match e.python_stack.first() {
                    Some(py) => sites.push(format!("python {}:{}", py.file, py.line)),
                    None => sites.extend(site_key(&e.stack)),
                }
            }
        }
        Finding::SelfDeadlock(f) => {
            lock(&f.lock, &f.held_stack);
            sites.extend(site_key(&f.stack));
        }
        Finding::SameClassNesting(f) => {
            // Its two locks are instances of one class: the class's name
            // (a file name and offset, not yet a build-id) keys it.
            locks.push(f.class.clone());
            sites.extend(site_key(&f.stack));
        }
        Finding::Deadlock(f) => {
            for t in &f.threads {
                if let Some(l) = &t.waits_for {
                    lock(l, &t.stack);
                }
                sites.extend(site_key(&t.stack));
            }
        }
        Finding::LockWaitTimeout(f) => {
            if let Some(l) = &f.waiter.waits_for {
                lock(l, &f.waiter.stack);
            }
            sites.extend(site_key(&f.waiter.stack));
        }
        Finding::BlockedThread(_) => {}
    }
    locks.sort();
    locks.dedup();
    sites.sort();
    sites.dedup();
    let text = format!("{kind}\n{}\n{}", locks.join("\n"), sites.join("\n"));
    format!("{:016x}", fnv1a(text.as_bytes()))
}

/// The program's own site of a stack (past libc's lock functions), as the
/// fingerprint keys it: `build-id+file offset`, else its name.
fn site_key(stack: &[Frame]) -> Option<String> {
    let frame = program_frame(stack)?;
    match (&frame.build_id, frame.file_offset) {
        (Some(build_id), Some(offset)) => Some(format!("{build_id}+{offset:#x}")),
        _ => site(stack),
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_is_the_published_function() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
