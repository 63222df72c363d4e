//! Lock wrappers: functions whose only job is to call a lock function
//! (`lck_lock()` calling `pthread_mutex_lock`, APR's, GLib's, varnish's
//! `Lck__Lock`, CPython's `PyThread_acquire_lock`). Every lock taken through
//! one has the same call site, inside the wrapper: the site that tells locks
//! apart (their class, where each was taken) is the wrapper's caller.
//!
//! A function is a wrapper if its name is in the built-in table or given
//! with `--wrapper` (exact, or `prefix*`), or if its shape says so: at most
//! 64 bytes of code with exactly one call (decoded with iced-x86).

use std::collections::HashMap;
use std::os::unix::fs::FileExt;

use iced_x86::{Decoder, DecoderOptions, FlowControl};

use crate::symbolize::{Function, Symbolizer};

/// Wrapper functions of widespread libraries and servers, by name or
/// `prefix*`.
const BUILT_IN: &[&str] = &[
    // APR (Apache, mod_wsgi)
    "apr_thread_mutex_*",
    "apr_thread_rwlock_*",
    "apr_proc_mutex_*",
    "apr_global_mutex_*",
    // GLib
    "g_mutex_*",
    "g_rec_mutex_*",
    "g_rw_lock_*",
    // varnish
    "Lck__*",
    "Lck_*",
    // CPython
    "PyThread_acquire_lock*",
    "PyThread_allocate_lock",
    "PyThread_release_lock",
    "PyMutex_*",
    // NSPR (Firefox, NSS)
    "PR_Lock",
    "PR_NewLock",
    "PR_EnterMonitor",
    // libstdc++/gthreads
    "__gthread_mutex_*",
    "__gthread_recursive_mutex_*",
];

/// Largest function the shape rule accepts.
const MAX_WRAPPER_BYTES: u64 = 64;
/// Functions judged, cached by (file, offset) before the cache is cleared.
const MAX_CACHED: usize = 1 << 14;

pub struct Wrappers {
    patterns: Vec<String>,
    judged: HashMap<(std::path::PathBuf, u64), bool>,
}

impl Wrappers {
    /// The built-in table and `extra` (`--wrapper` values).
    pub fn new(extra: &[String]) -> Self {
        let mut patterns: Vec<String> = BUILT_IN.iter().map(|p| p.to_string()).collect();
        patterns.extend(extra.iter().cloned());
        Wrappers {
            patterns,
            judged: HashMap::new(),
        }
    }

    /// Whether the code at return address `addr` of `pid` is in a lock
    /// wrapper.
    pub fn is_wrapper(&mut self, sym: &mut Symbolizer, pid: u32, addr: u64) -> bool {
        let Some(f) = sym.function_at(pid, addr) else {
            return false;
        };
        if self.patterns.iter().any(|p| matches(p, &f.name)) {
            return true;
        }
        let key = (f.path.clone(), f.file_offset);
        if let Some(&known) = self.judged.get(&key) {
            return known;
        }
        if self.judged.len() >= MAX_CACHED {
            self.judged.clear();
        }
        let verdict = has_wrapper_shape(&f);
        self.judged.insert(key, verdict);
        verdict
    }
}

/// `pattern`: a name, or a prefix ending in `*`.
fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == pattern,
    }
}

/// At most [`MAX_WRAPPER_BYTES`] of code and exactly one call.
fn has_wrapper_shape(f: &Function) -> bool {
    let Some(size) = f.size.filter(|&s| s > 0 && s <= MAX_WRAPPER_BYTES) else {
        return false;
    };
    let mut code = vec![0u8; size as usize];
    let Ok(file) = crate::host::files::open(&f.path) else {
        return false;
    };
    if file.read_exact_at(&mut code, f.file_offset).is_err() {
        return false;
    }
    one_call(&code)
}

/// Whether `code` (one whole function) makes exactly one call.
pub fn one_call(code: &[u8]) -> bool {
    let mut decoder = Decoder::new(64, code, DecoderOptions::NONE);
    let mut calls = 0;
    for instruction in &mut decoder {
        if instruction.is_invalid() {
            return false;
        }
        if matches!(
            instruction.flow_control(),
            FlowControl::Call | FlowControl::IndirectCall
        ) {
            calls += 1;
        }
    }
    calls == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_prefixes() {
        assert!(matches("Lck__*", "Lck__Lock"));
        assert!(matches("PR_Lock", "PR_Lock"));
        assert!(!matches("PR_Lock", "PR_LockMore"));
        assert!(!matches("g_mutex_*", "g_rw_lock_reader_lock"));
    }

    #[test]
    fn one_call_shapes() {
        // lck_lock at -O0 without frame pointers:
        //   sub rsp,0x18; mov [rsp+8],rdi; mov rax,[rsp+8]; mov rdi,rax;
        //   call rel32; nop; add rsp,0x18; ret
        let wrapper = [
            0x48, 0x83, 0xec, 0x18, 0x48, 0x89, 0x7c, 0x24, 0x08, 0x48, 0x8b, 0x44, 0x24, 0x08,
            0x48, 0x89, 0xc7, 0xe8, 0x00, 0x00, 0x00, 0x00, 0x90, 0x48, 0x83, 0xc4, 0x18, 0xc3,
        ];
        assert!(one_call(&wrapper));
        // Two calls (lock, then unlock): not a wrapper.
        let two = [0xe8, 0, 0, 0, 0, 0xe8, 0, 0, 0, 0, 0xc3];
        assert!(!one_call(&two));
        // A tail call only: the lock function returns to the caller itself.
        let tail = [0x48, 0x83, 0xc7, 0x08, 0xe9, 0, 0, 0, 0];
        assert!(!one_call(&tail));
    }
}
