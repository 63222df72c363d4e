//! Which files get the lock probes.
//!
//! A uprobe belongs to a file (an inode), not to a process: one probe on a
//! libc serves every process that maps it. So the unit here is the file,
//! identified by (device, inode) as `/proc/PID/maps` shows it. The host
//! usually has one libc, but containers and chroots bring their own, a
//! program may be started with another copy through the dynamic loader, and
//! statically linked programs carry their own lock functions (`--binary`).

use std::{
    collections::BTreeSet,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context, Result};

use crate::host::elf::{check_header, is_lock_library, read_bounded};
use crate::host::spaces::{host_path, read_proc_maps, readable_path, Mapping};

/// A file's identity: what the kernel attaches a uprobe to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    pub dev: u64,
    pub inode: u64,
}

/// A file to probe.
#[derive(Clone, Debug)]
pub struct Target {
    pub id: FileId,
    /// A path the tracer can open it by (possibly through `/proc/PID/root`
    /// or `/proc/PID/map_files`, for files of other mount namespaces).
    pub open_path: PathBuf,
    /// Its name as the process that maps it sees it (for reports).
    pub name: PathBuf,
}

impl Target {
    /// A file named on the command line (`--libc`, `--binary`).
    pub fn from_path(path: &Path) -> Result<Self> {
        let meta =
            std::fs::metadata(path).with_context(|| format!("cannot open {}", path.display()))?;
        if !meta.is_file() {
            bail!("{} is not a regular file", path.display());
        }
        Ok(Target {
            id: FileId {
                dev: meta.dev(),
                inode: meta.ino(),
            },
            open_path: path.to_path_buf(),
            name: path.to_path_buf(),
        })
    }

    /// The file of a mapping of process `pid`, if the tracer can open it;
    /// named by its host path when the process has a root of its own
    /// (else a chroot's libc and the host's would both be
    /// `/usr/lib/x86_64-linux-gnu/libc.so.6` in the summary).
    pub fn from_mapping(pid: u32, m: &Mapping) -> Option<Self> {
        Some(Target {
            id: FileId {
                dev: m.dev,
                inode: m.inode,
            },
            open_path: readable_path(pid, m)?,
            name: host_path(pid, m).unwrap_or_else(|| m.path.clone()),
        })
    }

    /// Whether this (discovered) library has the lock functions.
    pub fn is_lock_library_file(&self) -> bool {
        check_header(&self.open_path).is_ok()
            && read_bounded(&self.open_path).is_ok_and(|elf| Target::defines_lock_functions(&elf))
    }

    /// Whether a shared library has the lock functions themselves (not
    /// stubs that forward to another library): glibc has `sem_wait` where
    /// the pthread implementation is.
    pub fn defines_lock_functions(elf: &[u8]) -> bool {
        defines(elf, &["pthread_mutex_lock"]) && defines(elf, &["sem_wait"])
    }

    /// Whether a program has any lock function of its own (a static program
    /// links only those it uses).
    pub fn defines_any_lock_function(elf: &[u8]) -> bool {
        defines(elf, &crate::kernel::catalogue::probed_symbols())
    }
}

/// Whether `elf` defines one of `names`.
fn defines(elf: &[u8], names: &[&str]) -> bool {
    use object::{Object, ObjectSymbol};
    let Ok(file) = object::File::parse(elf) else {
        return false;
    };
    file.dynamic_symbols()
        .chain(file.symbols())
        .any(|s| !s.is_undefined() && s.name().is_ok_and(|n| names.contains(&n)))
}

/// Checks a `--binary` or `--libc` file: it must export the lock functions
/// (a stripped static binary has no symbols to put probes on).
pub fn check_explicit(path: &Path) -> Result<Target> {
    let target = Target::from_path(path)?;
    // The header first: a huge file of something else is refused unread.
    check_header(path)?;
    let elf = read_bounded(path)?;
    object::File::parse(&*elf)
        .map_err(|e| anyhow!("{} is not an ELF file: {e}", path.display()))?;
    if !Target::defines_any_lock_function(&elf) {
        bail!(
            "{} has no lock function symbols (pthread_mutex_lock, sem_wait, ...) (stripped, or not linked with the C library's locks): nothing to probe",
            path.display()
        );
    }
    Ok(target)
}

/// The program `run` starts, when it is statically linked with the lock
/// functions: it carries its own copy, which gets the probes too (no
/// `--binary` needed). `program` is the command as typed (looked up in
/// `PATH` when it has no slash).
pub fn static_program(program: &str) -> Result<Option<Target>> {
    use object::read::elf::{ElfFile64, ProgramHeader};
    let Some(path) = find_in_path(program) else {
        return Ok(None); // the launch reports it
    };
    if check_header(&path).is_err() {
        return Ok(None); // a script, or 32-bit: its interpreter is probed
    }
    let Ok(elf) = read_bounded(&path) else {
        return Ok(None);
    };
    let Ok(file) = ElfFile64::<object::Endianness>::parse(&*elf) else {
        return Ok(None); // a script, or 32-bit: its interpreter is probed
    };
    let endian = file.endian();
    let dynamic = file
        .elf_program_headers()
        .iter()
        .any(|ph| ph.p_type(endian) == object::elf::PT_INTERP);
    let threads = Target::defines_any_lock_function(&elf);
    if dynamic || !threads && !mentions_pthread(&elf) {
        return Ok(None);
    }
    if !threads {
        bail!(
            "{} is statically linked and stripped: its lock functions have no symbols to probe",
            path.display()
        );
    }
    Target::from_path(&path).map(Some)
}

/// A stripped static program still carries glibc's pthread error strings.
fn mentions_pthread(elf: &[u8]) -> bool {
    elf.windows(b"pthread_mutex".len())
        .any(|w| w == b"pthread_mutex")
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// The lock libraries mapped by the given processes, one per file (the
/// first process seen mapping it names it).
pub fn discover(pids: impl IntoIterator<Item = u32>) -> Vec<Target> {
    let mut seen = BTreeSet::new();
    let mut found = Vec::new();
    for pid in pids {
        let Some(maps) = read_proc_maps(pid) else {
            continue; // exited
        };
        for m in maps {
            if !m.executable || !is_lock_library(&m.path) {
                continue;
            }
            let id = FileId {
                dev: m.dev,
                inode: m.inode,
            };
            if seen.contains(&id) {
                continue;
            }
            seen.insert(id);
            // glibc 2.34+ keeps an empty libpthread.so.0; older glibc's
            // libc.so.6 has only forwarders to libpthread.
            if let Some(t) = Target::from_mapping(pid, &m).filter(Target::is_lock_library_file) {
                found.push(t);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognizes_lock_libraries() {
        for yes in [
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
            "/lib/x86_64-linux-gnu/libc-2.31.so",
            "/lib/x86_64-linux-gnu/libpthread.so.0",
            "/lib64/libpthread-2.28.so",
        ] {
            assert!(is_lock_library(Path::new(yes)), "{yes}");
        }
        for no in [
            "/usr/lib/libcrypto.so.3",
            "/usr/bin/python3.11",
            "/lib/libc.so",
        ] {
            assert!(!is_lock_library(Path::new(no)), "{no}");
        }
    }

    #[test]
    fn finds_our_own_libc() {
        let found = discover([std::process::id()]);
        assert_eq!(found.len(), 1, "{found:?}");
        let elf = std::fs::read(&found[0].open_path).unwrap();
        assert!(Target::defines_lock_functions(&elf));
        let by_path = Target::from_path(&found[0].open_path).unwrap();
        assert_eq!(
            by_path.id, found[0].id,
            "maps and stat agree on the identity"
        );
    }
}
