//! Opening the files of traced processes (programs and libraries, for
//! symbols, unwind data and lock names) without letting them cost the
//! tracer its file descriptors or pin other users' memory:
//!
//! - a file is opened for reading, used and closed; only files of other
//!   mount namespaces or deleted ones are kept open ([`Pins`]), at most
//!   [`MAX_PINNED`], and only ELF files mapped executable (a lock in shared
//!   memory needs no descriptor: its identity is the mapping's device,
//!   inode and offset);
//! - running out of descriptors (`EMFILE`, `ENFILE`) makes one lookup fail,
//!   counted ([`unopened`], the summary's `unopened_files`) and logged at
//!   `-v`: symbolization degrades, tracing goes on.

use crate::host::elf::read_opened_bounded;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Files kept open for processes of other mount namespaces (or deleted
/// files): least recently pinned first out.
pub const MAX_PINNED: usize = 64;

static UNOPENED: AtomicU64 = AtomicU64::new(0);

/// Files not opened for lack of file descriptors so far.
pub fn unopened() -> u64 {
    UNOPENED.load(Ordering::Relaxed)
}

/// Opens `path` for reading; out of descriptors, counts it and says so at
/// `-v` (the first time: a host out of descriptors would say it at every
/// lookup).
pub fn open(path: &Path) -> io::Result<File> {
    File::open(path).inspect_err(|e| {
        if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
            && UNOPENED.fetch_add(1, Ordering::Relaxed) == 0
        {
            tracing::debug!(
                "no file descriptor left to open {}: symbols of such files are missing \
                 (counted in the summary as unopened_files)",
                path.display()
            );
        }
    })
}

/// Reads the whole file at `path` (through [`open`]) if it is an ELF file
/// of at most [`crate::host::elf::MAX_ELF_BYTES`]: a lock in a large shared memory file, a
/// memfd, or a sparse file with an ELF header is not read.
pub fn read_elf(path: &Path) -> Option<Vec<u8>> {
    let file = open(path).ok()?;
    if !is_elf(&file) {
        return None;
    }
    read_opened_bounded(file, path).ok()
}

/// Whether the file starts as an ELF file does (a memfd or shared memory
/// mapped executable, JIT code, is not one: nothing to read symbols from).
pub fn is_elf(file: &File) -> bool {
    let mut magic = [0u8; 4];
    file.read_exact_at(&mut magic, 0).is_ok() && magic == *b"\x7fELF"
}

/// One pinned file and the processes that mapped it.
struct Pin {
    file: File,
    pids: BTreeSet<u32>,
    /// When it was last pinned or used (a counter): the oldest goes first.
    used: u64,
}

/// Files kept open while processes that mapped them may still be
/// symbolized (their address spaces are kept a grace period after they
/// exit). Keyed by (dev, inode). Released when every process that mapped
/// the file is forgotten, or, past [`MAX_PINNED`], the least recently used.
#[derive(Default)]
pub struct Pins {
    files: BTreeMap<(u64, u64), Pin>,
    clock: u64,
}

impl Pins {
    /// Keeps `file` (of `key`) open for `pid`.
    pub fn pin(&mut self, key: (u64, u64), pid: u32, open: impl FnOnce() -> Option<File>) {
        self.clock += 1;
        if let Some(pin) = self.files.get_mut(&key) {
            pin.pids.insert(pid);
            pin.used = self.clock;
            return;
        }
        let Some(file) = open() else {
            return;
        };
        if self.files.len() >= MAX_PINNED {
            let oldest = self
                .files
                .iter()
                .min_by_key(|(_, p)| p.used)
                .map(|(&k, _)| k)
                .expect("not empty");
            self.files.remove(&oldest);
        }
        self.files.insert(
            key,
            Pin {
                file,
                pids: BTreeSet::from([pid]),
                used: self.clock,
            },
        );
    }

    /// The pinned file of `key`, as a path to open it by.
    pub fn path(&mut self, key: (u64, u64)) -> Option<std::path::PathBuf> {
        use std::os::fd::AsRawFd;
        self.clock += 1;
        let pin = self.files.get_mut(&key)?;
        pin.used = self.clock;
        Some(format!("/proc/self/fd/{}", pin.file.as_raw_fd()).into())
    }

    /// `pid` is forgotten: the files only it kept are closed.
    pub fn release(&mut self, pid: u32) {
        self.files.retain(|_, pin| {
            pin.pids.remove(&pid);
            !pin.pids.is_empty()
        });
    }

    /// Files pinned now.
    pub fn count(&self) -> usize {
        self.files.len()
    }
}

/// The pins of the whole collector (the symbolizer, the unwinder and the
/// Python registry all open files through `spaces::readable_path`).
pub static PINS: Mutex<Option<Pins>> = Mutex::new(None);

/// Runs `f` on the collector's pins.
pub fn with_pins<T>(f: impl FnOnce(&mut Pins) -> T) -> T {
    let mut pins = PINS.lock().unwrap_or_else(|e| e.into_inner());
    f(pins.get_or_insert_with(Pins::default))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn devnull() -> Option<File> {
        File::open("/dev/null").ok()
    }

    #[test]
    fn pins_are_bounded_and_released_with_their_processes() {
        let mut pins = Pins::default();
        for i in 0..(MAX_PINNED as u64 + 10) {
            pins.pin((1, i), 100 + i as u32, devnull);
        }
        assert_eq!(pins.count(), MAX_PINNED);
        // The oldest went first.
        assert!(pins.path((1, 0)).is_none());
        assert!(pins.path((1, MAX_PINNED as u64 + 9)).is_some());
        // A file two processes mapped stays until both are forgotten.
        pins.pin((2, 1), 7, devnull);
        pins.pin((2, 1), 8, || panic!("pinned already"));
        pins.release(7);
        assert!(pins.path((2, 1)).is_some());
        pins.release(8);
        assert!(pins.path((2, 1)).is_none());
    }

    #[test]
    fn only_elf_files_are_elf() {
        assert!(is_elf(&File::open("/proc/self/exe").unwrap()));
        assert!(!is_elf(&File::open("/dev/zero").unwrap()));
    }
}
