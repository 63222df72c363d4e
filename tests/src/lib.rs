//! Harness for locktrace's end-to-end tests: locating the binary and the
//! fixtures ([here](self)), running the tracer with a timeout and checking
//! that nothing is left behind ([`tracer`], [`process`]), its JSON Lines
//! output as typed records ([`records`]), and the checks tests share
//! ([`checks`]).

pub mod apache;
pub mod checks;
pub mod process;
pub mod records;
pub mod rootfs;
pub mod services;
pub mod tracer;

use std::fs;
use std::path::{Path, PathBuf};

pub use checks::*;
pub use process::{
    cgroup2_root, deadlocked_fixture, group_members, stop_group, Killed, TestCgroup,
};
pub use records::*;
pub use tracer::{locktrace_report, run_json, JsonRun, Run, Tracer, Watcher, TRACER_TIMEOUT};

// ---------------------------------------------------------------------------
// Preconditions and locations

/// Fails the test (no silent skip) unless running as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "end-to-end tests need root (they load BPF programs); running as euid {euid}"
    );
}

/// The libc this test process runs with (the host's).
pub fn host_libc() -> PathBuf {
    fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with("/libc.so.6"))
        .map(PathBuf::from)
        .expect("the test runs on a libc.so.6")
}

/// An executable copy of `from` at `to`: a new inode, so the kernel's
/// uprobes on the original (another tracer's) do not see it.
pub fn copy_executable(from: &Path, to: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(to.parent().unwrap()).unwrap();
    fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", from.display(), to.display()));
    fs::set_permissions(to, fs::Permissions::from_mode(0o755)).unwrap();
}

/// The workspace root (parent of this crate).
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The locktrace binary: `$LOCKTRACE_BIN`, else `<target>/debug/locktrace`
/// (`<target>` is `$CARGO_TARGET_DIR` or `<workspace>/target`).
pub fn locktrace_bin() -> PathBuf {
    let (path, origin) = match std::env::var_os("LOCKTRACE_BIN") {
        Some(p) if !p.is_empty() => (PathBuf::from(p), "$LOCKTRACE_BIN"),
        _ => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .filter(|t| !t.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| workspace_dir().join("target"));
            (target.join("debug").join("locktrace"), "default location")
        }
    };
    assert!(
        path.is_file(),
        "locktrace binary not found at {} ({origin}); build it first (`cargo xtask build`) \
         or set LOCKTRACE_BIN, e.g. run the suite with `cargo xtask test`",
        path.display()
    );
    path
}

/// Directory of the compiled fixtures (see build.rs).
pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("FIXTURE_DIR"))
}

/// Frame-pointer variant of a fixture binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// `-fno-omit-frame-pointer`
    Fp,
    /// `-fomit-frame-pointer`
    NoFp,
}

impl Variant {
    pub fn suffix(self) -> &'static str {
        match self {
            Variant::Fp => "fp",
            Variant::NoFp => "nofp",
        }
    }
}

/// Path of compiled fixture `name` (e.g. "ab_ba") in the given variant.
pub fn fixture(name: &str, variant: Variant) -> PathBuf {
    let path = fixture_dir().join(format!("{name}_{}", variant.suffix()));
    assert!(path.is_file(), "fixture {} was not built", path.display());
    path
}

/// Path of the C source of fixture `name`.
pub fn fixture_source(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let c = dir.join(format!("{name}.c"));
    let cxx = dir.join(format!("{name}.cc"));
    if !c.exists() && cxx.exists() {
        cxx
    } else {
        c
    }
}

/// 1-based line of the Python script `tests/python/NAME` carrying the
/// comment `# MARKER`. Panics unless exactly one line does.
pub fn python_marker_line(name: &str, marker: &str) -> u32 {
    let text = fs::read_to_string(workspace_dir().join("tests/python").join(name)).unwrap();
    let needle = format!("# {marker}");
    let hits: Vec<u32> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.trim_end().ends_with(&needle))
        .map(|(i, _)| i as u32 + 1)
        .collect();
    assert_eq!(hits.len(), 1, "marker {needle} in {name}");
    hits[0]
}

/// 1-based line of the fixture source carrying the comment `/* MARKER */`.
/// Panics unless exactly one line does.
pub fn marker_line(name: &str, marker: &str) -> u64 {
    let path = fixture_source(name);
    let text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let needle = format!("/* {marker} */");
    let hits: Vec<u64> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(&needle))
        .map(|(i, _)| i as u64 + 1)
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "marker {needle} must appear exactly once in {}, found at lines {hits:?}",
        path.display()
    );
    hits[0]
}

/// What the kernel shows as the `comm` of an executable started from `path`
/// (the file name, truncated to 15 bytes).
pub fn comm_of(path: &Path) -> String {
    let name = path.file_name().unwrap().to_string_lossy();
    name.bytes().take(15).map(char::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_resolve() {
        assert!(marker_line("ab_ba", "LOCK_B_IN_AB") > marker_line("ab_ba", "LOCK_A_IN_AB"));
    }
}
