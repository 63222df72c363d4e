//! Opening a file the tracer writes (a report, `-o FILE`) without being led
//! elsewhere. The tracer runs as root and the path may lie in a directory
//! another user can write (`/tmp`): a planted symlink would make root
//! truncate a file of the attacker's choosing, and a file the attacker
//! created beforehand would stay readable by them.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use anyhow::{anyhow, Context, Result};

/// Creates `path` for writing: a new file is made with `O_EXCL` and mode
/// 0600 (the reports hold stacks and paths of every traced process); an
/// existing one is truncated only if [`refusal`] has nothing against it.
/// A symlink at `path` is never followed.
pub fn create(path: &Path, force: bool) -> Result<File> {
    open(path, force, false)
}

/// [`create`], but an existing file is appended to, not truncated (the
/// agent's findings file: a restart keeps what earlier runs wrote).
pub fn append(path: &Path, force: bool) -> Result<File> {
    open(path, force, true)
}

fn open(path: &Path, force: bool, append: bool) -> Result<File> {
    let created = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path);
    match created {
        Ok(file) => return Ok(file),
        // O_CREAT|O_EXCL fails so on a symlink too, dangling or not.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot create the output file {}", path.display()))
        }
    }
    // O_PATH: a handle on what is there now, without following a symlink
    // and without opening a device or a FIFO, which opening may disturb.
    let handle = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("cannot open the output file {}", path.display()))?;
    let meta = handle
        .metadata()
        .with_context(|| format!("cannot stat the output file {}", path.display()))?;
    if let Some(why) = refusal(meta.mode(), meta.uid(), meta.nlink(), force) {
        return Err(anyhow!(
            "refusing to write the output file {}: {why}",
            path.display()
        ));
    }
    // The very inode just checked (through the handle), not the path again:
    // a swap between the check and the open cannot redirect the write.
    OpenOptions::new()
        .write(true)
        .truncate(!append)
        .append(append)
        .custom_flags(libc::O_CLOEXEC)
        .open(format!("/proc/self/fd/{}", handle.as_raw_fd()))
        .with_context(|| format!("cannot open the output file {}", path.display()))
}

/// Why an existing file (its `st_mode`, owner and link count) must not be
/// written, if it must not: a symlink, always; without `force`, anything
/// but a regular file of root's with one name, or a character device of
/// root's (`/dev/null`: writing it creates and exposes nothing).
pub fn refusal(mode: u32, uid: u32, nlink: u64, force: bool) -> Option<String> {
    let kind = mode & libc::S_IFMT;
    if kind == libc::S_IFLNK {
        return Some(
            "it is a symbolic link (never followed; remove it or choose another path)".into(),
        );
    }
    if force {
        return None;
    }
    if kind == libc::S_IFCHR && uid == 0 {
        return None;
    }
    if kind != libc::S_IFREG {
        return Some(
            "it exists and is not a regular file (pass --force to write it anyway)".into(),
        );
    }
    if uid != 0 {
        return Some(format!(
            "it exists and is owned by uid {uid}, not root (pass --force to write it anyway)"
        ));
    }
    if nlink > 1 {
        return Some(format!(
            "it has {nlink} hard links, the others may be anywhere (pass --force to write it anyway)"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const REG: u32 = libc::S_IFREG | 0o600;

    #[test]
    fn symlinks_are_refused_even_with_force() {
        let link = libc::S_IFLNK | 0o777;
        assert!(refusal(link, 0, 1, false).is_some());
        assert!(refusal(link, 0, 1, true).is_some());
    }

    #[test]
    fn only_roots_single_regular_files_without_force() {
        assert_eq!(refusal(REG, 0, 1, false), None);
        assert!(refusal(REG, 65534, 1, false).unwrap().contains("uid 65534"));
        assert!(refusal(REG, 0, 2, false).is_some());
        assert!(refusal(libc::S_IFIFO | 0o600, 0, 1, false).is_some());
        assert_eq!(refusal(REG, 65534, 2, true), None);
        assert_eq!(refusal(libc::S_IFCHR | 0o666, 0, 1, true), None);
        // /dev/null, root's own terminal; not a user's terminal.
        assert_eq!(refusal(libc::S_IFCHR | 0o666, 0, 1, false), None);
        assert!(refusal(libc::S_IFCHR | 0o620, 1000, 1, false).is_some());
    }

    #[test]
    fn a_new_file_is_private_and_a_symlink_is_not_followed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("locktrace-outfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let new = dir.join("new");
        let _ = std::fs::remove_file(&new);
        create(&new, false).unwrap();
        assert_eq!(
            std::fs::metadata(&new).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let target = dir.join("target");
        std::fs::write(&target, b"keep").unwrap();
        let link = dir.join("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = create(&link, true).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
