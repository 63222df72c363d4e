//! One mapping of a process's address space, as `/proc/PID/maps` and the
//! perf side-band describe it.

use std::path::PathBuf;

/// Pseudo path of anonymous mappings (as `perf` names them).
pub const ANON_PATH: &str = "//anon";

/// One mapping of a process: `[start, end)` maps `path` from `file_offset`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub file_offset: u64,
    /// The mapped file, or a pseudo name: `[heap]`, `[stack]`, `[vdso]`,
    /// `//anon` (anonymous memory).
    pub path: PathBuf,
    /// Device of the file (`libc::makedev(major, minor)`), 0 if none.
    pub dev: u64,
    /// Inode of the file, 0 for anonymous and pseudo mappings.
    pub inode: u64,
    /// Mapped with PROT_EXEC.
    pub executable: bool,
    /// Mapped with MAP_SHARED: the same memory (dev, inode, offset) may be
    /// mapped by other processes, so a lock in it is one lock for all.
    pub shared: bool,
}

impl Mapping {
    /// Backed by a regular file (that we may open to read ELF data from).
    pub fn is_file(&self) -> bool {
        self.inode != 0 && self.path.is_absolute()
    }

    /// The file offset that `addr` (inside this mapping) maps.
    pub fn file_offset_of(&self, addr: u64) -> u64 {
        addr - self.start + self.file_offset
    }

    /// A key identifying the mapped file for caches: (dev, inode, path).
    pub fn file_key(&self) -> FileKey {
        FileKey {
            dev: self.dev,
            inode: self.inode,
            path: self.path.clone(),
        }
    }
}

/// Identifies a mapped file across processes (cache key).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey {
    pub dev: u64,
    pub inode: u64,
    pub path: PathBuf,
}
