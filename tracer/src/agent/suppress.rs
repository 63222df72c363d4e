//! Suppressions: findings an operator has judged (a known bug being fixed,
//! a library's own locking) are counted
//! (`locktrace_findings_suppressed_total{type}`) and written to the report,
//! but not alerted on. A finding is suppressed by its fingerprint, or when
//! one of its frames (native: function, source file or module; Python:
//! function or file) matches a glob.

use std::collections::HashSet;

use globset::{Glob, GlobSet, GlobSetBuilder};
use tracer_analysis::model::{Frame, PyFrame};

use crate::report::Finding;

#[derive(Debug)]
pub struct Suppressions {
    fingerprints: HashSet<String>,
    frames: GlobSet,
}

impl Default for Suppressions {
    fn default() -> Self {
        Suppressions {
            fingerprints: HashSet::new(),
            frames: GlobSet::empty(),
        }
    }
}

/// A frame pattern that is not a glob: its index, and why.
pub fn check_glob(pattern: &str) -> Result<Glob, String> {
    Glob::new(pattern).map_err(|e| format!("`{pattern}` is not a glob: {}", e.kind()))
}

impl Suppressions {
    /// From the config's lists (their patterns checked when it was read).
    pub fn new(fingerprints: &[String], frames: &[String]) -> Result<Self, String> {
        let mut set = GlobSetBuilder::new();
        for pattern in frames {
            set.add(check_glob(pattern)?);
        }
        Ok(Suppressions {
            fingerprints: fingerprints
                .iter()
                .map(|f| f.to_ascii_lowercase())
                .collect(),
            frames: set.build().map_err(|e| e.to_string())?,
        })
    }

    pub fn len(&self) -> usize {
        self.fingerprints.len() + self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `finding` (whose fingerprint is `fingerprint`) is suppressed.
    pub fn matches(&self, fingerprint: &str, finding: &Finding) -> bool {
        if self.fingerprints.contains(fingerprint) {
            return true;
        }
        if self.frames.is_empty() {
            return false;
        }
        let (native, python) = frames(finding);
        native.iter().any(|f| {
            [&f.function, &f.file, &f.module]
                .into_iter()
                .flatten()
                .any(|s| self.frames.is_match(s))
        }) || python
            .iter()
            .any(|f| self.frames.is_match(&f.function) || self.frames.is_match(&f.file))
    }
}

/// Every stack of a finding.
fn frames(finding: &Finding) -> (Vec<&Frame>, Vec<&PyFrame>) {
    let mut native: Vec<&Frame> = Vec::new();
    let mut python: Vec<&PyFrame> = Vec::new();
    match finding {
        Finding::LockOrderInversion(f) => {
            for e in &f.cycle {
                native.extend(e.stack.iter().chain(&e.held_stack));
                python.extend(e.python_stack.iter().chain(&e.held_python_stack));
            }
        }
        Finding::SelfDeadlock(f) => native.extend(f.stack.iter().chain(&f.held_stack)),
        Finding::SameClassNesting(f) => native.extend(f.stack.iter().chain(&f.held_stack)),
        Finding::Deadlock(f) => {
            for t in &f.threads {
                native.extend(&t.stack);
                python.extend(&t.python_stack);
            }
        }
        Finding::LockWaitTimeout(f) => {
            native.extend(&f.waiter.stack);
            python.extend(&f.waiter.python_stack);
        }
        Finding::BlockedThread(t) => native.extend(&t.stack),
    }
    (native, python)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Lock;
    use crate::report::SelfDeadlock;

    fn self_deadlock(function: &str) -> Finding {
        Finding::SelfDeadlock(SelfDeadlock {
            id: 1,
            pid: 1,
            comm: "p".into(),
            origin: None,
            tid: 1,
            thread: "p".into(),
            lock: Lock {
                addr: 0x10,
                kind: "mutex",
                name: None,
                shared: None,
                build_id: None,
                file_offset: None,
                pid: 1,
            },
            stack: vec![Frame {
                function: Some(function.into()),
                module: Some("/opt/app/bin/server".into()),
                file: Some("/src/server/cache.c".into()),
                ..Frame::default()
            }],
            held_stack: vec![],
        })
    }

    #[test]
    fn by_fingerprint_function_or_file() {
        let finding = self_deadlock("cache_evict");
        assert!(!Suppressions::default().matches("00", &finding));
        let s = Suppressions::new(&["ABCD".into()], &[]).unwrap();
        assert!(s.matches("abcd", &finding));
        assert!(!s.matches("abce", &finding));
        for pattern in ["cache_*", "*/server/*.c", "/opt/app/**"] {
            let s = Suppressions::new(&[], &[pattern.into()]).unwrap();
            assert!(s.matches("00", &finding), "{pattern}");
        }
        let s = Suppressions::new(&[], &["lru_*".into()]).unwrap();
        assert!(!s.matches("00", &finding));
        assert!(Suppressions::new(&[], &["a[".into()]).is_err());
    }
}
