//! Cgroup v2 ids (what the kernel side records with a dependency: the
//! inode number of the cgroup's directory) to cgroup paths, for the origin
//! of a process that exited before the collector read its
//! `/proc/PID/cgroup` (a short-lived worker, CGI, a test's fixture).
//!
//! The map is built by walking the cgroup v2 mount (`/sys/fs/cgroup`, or
//! `/sys/fs/cgroup/unified` beside v1 controllers: the first `cgroup2`
//! line of `/proc/self/mounts`), at most once per second and on a miss
//! only, bounded in depth and in entries.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Directories listed at most per walk, and nesting followed at most.
const MAX_CGROUPS: usize = 100_000;
const MAX_DEPTH: usize = 32;
/// A miss walks again only this long after the last walk.
const REWALK: Duration = Duration::from_secs(1);

struct Walked {
    paths: HashMap<u64, String>,
    at: Option<Instant>,
}

static CACHE: std::sync::LazyLock<Mutex<Walked>> = std::sync::LazyLock::new(|| {
    Mutex::new(Walked {
        paths: HashMap::new(),
        at: None,
    })
});

/// The cgroup path (`/system.slice/apache2.service`, `/` for the root) of
/// cgroup id `id`, if such a cgroup exists (or existed at the last walk).
pub fn path_of(id: u64) -> Option<String> {
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = cache.paths.get(&id) {
        return Some(path.clone());
    }
    if cache.at.is_some_and(|at| at.elapsed() < REWALK) {
        return None;
    }
    cache.paths = mount().map(|m| walk(&m)).unwrap_or_default();
    cache.at = Some(Instant::now());
    cache.paths.get(&id).cloned()
}

/// Where the cgroup v2 hierarchy is mounted.
pub fn mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
    })
}

/// Inode -> path relative to `mount` ("/" for the mount itself).
fn walk(mount: &Path) -> HashMap<u64, String> {
    let mut paths = HashMap::new();
    let Ok(root) = std::fs::metadata(mount) else {
        return paths;
    };
    paths.insert(root.ino(), "/".to_string());
    let mut pending = vec![(mount.to_path_buf(), 0)];
    while let Some((dir, depth)) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if paths.len() >= MAX_CGROUPS {
                return paths;
            }
            // Cgroups are directories; their files are not followed.
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if !kind.is_dir() {
                continue;
            }
            let path = entry.path();
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if let Ok(rel) = path.strip_prefix(mount) {
                paths.insert(meta.ino(), format!("/{}", rel.display()));
            }
            if depth + 1 < MAX_DEPTH {
                pending.push((path, depth + 1));
            }
        }
    }
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_tree_maps_inodes_to_paths() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("system.slice/demo.service")).unwrap();
        std::fs::write(dir.path().join("cgroup.procs"), "").unwrap();
        let paths = walk(dir.path());
        let ino = |p: &str| std::fs::metadata(dir.path().join(p)).unwrap().ino();
        assert_eq!(paths[&ino("")], "/");
        assert_eq!(paths[&ino("system.slice")], "/system.slice");
        assert_eq!(
            paths[&ino("system.slice/demo.service")],
            "/system.slice/demo.service"
        );
        assert_eq!(paths.len(), 3, "files are not cgroups");
    }

    /// This process's own cgroup: its id (the directory's inode) maps to
    /// the path `/proc/self/cgroup` names.
    #[test]
    fn our_own_cgroup_id_maps_to_our_cgroup_path() {
        let Some(own) = crate::host::proc::origin(std::process::id()) else {
            panic!("no cgroup v2 path for this process");
        };
        let dir = format!("{}{}", mount().unwrap().display(), own.cgroup);
        let id = std::fs::metadata(&dir).unwrap().ino();
        assert_eq!(path_of(id).as_deref(), Some(own.cgroup.as_str()));
    }
}
