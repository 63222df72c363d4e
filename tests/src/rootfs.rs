//! Debian userlands for the tests that trace, from the host, programs built
//! and run with another glibc and another Python: a tree made by
//! `debootstrap` (minbase, plus gcc, libc6-dev and python3), built once and
//! kept under `<target>/rootfs/<suite>` for later runs, with the C fixtures
//! compiled inside by the tree's own gcc against its own glibc.
//!
//! Building takes minutes (about 1.5 here for bullseye), so it says so on
//! stderr (past the test harness's capture). A tree is complete only when
//! its stamp is there (written last); anything else under its name (a
//! build cut short, a tree of another spec) is removed and built again.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Instant;

use crate::workspace_dir;

/// Debian's package registry.
pub const MIRROR: &str = "http://deb.debian.org/debian";
/// What the fixtures need inside: a compiler, the C library's headers,
/// the distro's Python.
const INCLUDE: &str = "gcc,libc6-dev,python3";
/// Where the fixtures go inside a tree.
pub const INSIDE_DIR: &str = "/opt/locktrace-e2e";
/// The C fixtures compiled inside (`-fomit-frame-pointer`: the unwinder
/// must use the tree's `.eh_frame`).
const C_FIXTURES: &[&str] = &["late_ab_ba", "deadlock"];
/// The Python scripts copied inside (from `tests/python`).
const PY_SCRIPTS: &[&str] = &["frames_ab_ba.py"];

/// A Debian release.
#[derive(Debug)]
pub struct Suite {
    pub name: &'static str,
    /// Its glibc (`ldd --version`).
    pub glibc: &'static str,
    /// Its `python3` (major.minor).
    pub python: &'static str,
    /// The file that holds the lock functions, as the tree's processes map
    /// it: glibc before 2.34 keeps pthread in `libpthread`.
    pub lock_library: &'static str,
}

pub const BULLSEYE: Suite = Suite {
    name: "bullseye",
    glibc: "2.31",
    python: "3.9",
    lock_library: "/usr/lib/x86_64-linux-gnu/libpthread-2.31.so",
};

pub const TRIXIE: Suite = Suite {
    name: "trixie",
    glibc: "2.41",
    python: "3.13",
    lock_library: "/usr/lib/x86_64-linux-gnu/libc.so.6",
};

/// A built tree with the fixtures compiled inside.
#[derive(Debug)]
pub struct Userland {
    pub suite: &'static Suite,
    /// The tree's root on the host.
    pub root: PathBuf,
}

impl Userland {
    /// The tree of `suite`, built (or checked) and its fixtures compiled,
    /// once per test process.
    pub fn get(suite: &'static Suite) -> &'static Userland {
        static BULLSEYE_TREE: OnceLock<Userland> = OnceLock::new();
        static TRIXIE_TREE: OnceLock<Userland> = OnceLock::new();
        let cell = match suite.name {
            "bullseye" => &BULLSEYE_TREE,
            "trixie" => &TRIXIE_TREE,
            other => panic!("no tree for suite {other}"),
        };
        cell.get_or_init(|| prepare(suite))
    }

    /// A path inside the tree, on the host.
    pub fn host_path(&self, inside: &str) -> PathBuf {
        self.root.join(inside.trim_start_matches('/'))
    }

    /// The path inside the tree of fixture or script `name`.
    pub fn fixture(&self, name: &str) -> String {
        format!("{INSIDE_DIR}/{name}")
    }

    /// `chroot ROOT PROGRAM ARGS...` (PROGRAM a path inside the tree).
    pub fn chroot(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("chroot");
        cmd.arg(&self.root).arg(program).args(args);
        cmd
    }

    /// PROGRAM in the tree in a mount and pid namespace of its own, as a
    /// container runs: `unshare --mount --pid --fork --root ROOT PROGRAM`
    /// (it is pid 1 there).
    pub fn unshare_args(&self, program: &str, args: &[&str]) -> Vec<String> {
        let mut argv = vec![
            "unshare".to_string(),
            "--mount".into(),
            "--pid".into(),
            "--fork".into(),
            format!("--root={}", self.root.display()),
            program.into(),
        ];
        argv.extend(args.iter().map(|a| a.to_string()));
        argv
    }

    /// `ldd --version`'s version inside the tree (its glibc).
    pub fn glibc_version(&self) -> String {
        let out = checked(self.chroot("/usr/bin/ldd", &["--version"]), "ldd --version");
        let text = String::from_utf8_lossy(&out.stdout);
        let first = text.lines().next().unwrap_or_default();
        first
            .rsplit(' ')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// `python3 --version`'s major.minor inside the tree.
    pub fn python_version(&self) -> String {
        let out = checked(
            self.chroot("/usr/bin/python3", &["--version"]),
            "python3 --version",
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let full = text.trim().trim_start_matches("Python ");
        full.splitn(3, '.').take(2).collect::<Vec<_>>().join(".")
    }
}

/// Builds the tree if needed, then compiles the fixtures inside; under a
/// file lock, so that two test processes never build one tree at once.
fn prepare(suite: &'static Suite) -> Userland {
    let dir = rootfs_dir();
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let _lock = lock_file(&dir.join(format!("{}.lock", suite.name)));
    let root = dir.join(suite.name);
    ensure_tree(suite, &root);
    let userland = Userland { suite, root };
    compile_fixtures(&userland);
    userland
}

/// `<target>/rootfs` (`<target>` as for the locktrace binary).
fn rootfs_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|t| !t.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("target"))
        .join("rootfs")
}

/// What a tree was built from: a tree of another spec is built again.
fn spec(suite: &Suite) -> String {
    format!(
        "debootstrap --variant=minbase --include={INCLUDE} {} {MIRROR}\n",
        suite.name
    )
}

const STAMP: &str = ".locktrace-e2e-rootfs";

/// Says something on the real stderr: `cargo test` captures a test's
/// `eprintln!`, and a build of minutes must show while it runs.
fn progress(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "locktrace-e2e: {line}");
}

fn ensure_tree(suite: &Suite, root: &Path) {
    let want = spec(suite);
    if fs::read_to_string(root.join(STAMP)).is_ok_and(|s| s == want) {
        return;
    }
    assert!(
        Path::new("/usr/sbin/debootstrap").exists(),
        "debootstrap is missing (cargo xtask test installs it: apt-get install debootstrap)"
    );
    let partial = root.with_extension("partial");
    let log = root.with_extension("log");
    for stale in [root, partial.as_path()] {
        if stale.exists() {
            progress(&format!(
                "removing {} (no complete-build stamp, or another spec): it is built again",
                stale.display()
            ));
            remove_tree(stale);
        }
    }
    progress(&format!(
        "building the Debian {} tree at {} with debootstrap (minbase + {INCLUDE} from {MIRROR}): \
         a few minutes, once; kept for later runs (log: {})",
        suite.name,
        root.display(),
        log.display()
    ));
    let started = Instant::now();
    let log_file = fs::File::create(&log).unwrap();
    let status = Command::new("debootstrap")
        .args(["--variant=minbase", &format!("--include={INCLUDE}")])
        .arg(suite.name)
        .arg(&partial)
        .arg(MIRROR)
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .status()
        .expect("run debootstrap");
    if !status.success() {
        let text = fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        panic!(
            "debootstrap of {} failed ({status}); last lines of {}:\n{}",
            suite.name,
            log.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    for needed in ["usr/bin/gcc", "usr/bin/python3", "usr/include/pthread.h"] {
        assert!(
            partial.join(needed).exists(),
            "debootstrap of {} succeeded but /{needed} is missing",
            suite.name
        );
    }
    fs::write(partial.join(STAMP), &want).unwrap();
    fs::rename(&partial, root).unwrap();
    progress(&format!(
        "built the Debian {} tree in {:.0} s",
        suite.name,
        started.elapsed().as_secs_f64()
    ));
}

/// Removes a tree: first whatever is mounted under it (a debootstrap
/// killed mid-way leaves its `proc` and `sys` mounts), then the files,
/// never crossing into another file system.
fn remove_tree(dir: &Path) {
    let prefix = format!("{}/", dir.display());
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        let _ = Command::new("umount").args(["-l", point]).status();
    }
    let status = Command::new("rm")
        .args(["-rf", "--one-file-system"])
        .arg(dir)
        .status()
        .expect("rm");
    assert!(
        status.success() && !dir.exists(),
        "cannot remove {}",
        dir.display()
    );
}

/// Copies the fixtures' sources into the tree and compiles them there with
/// the tree's gcc (its own glibc's headers and crt files).
fn compile_fixtures(userland: &Userland) {
    let dir = userland.host_path(INSIDE_DIR);
    fs::create_dir_all(&dir).unwrap();
    for name in C_FIXTURES {
        let source = format!("{name}.c");
        fs::copy(crate::fixture_source(name), dir.join(&source)).unwrap();
        let inside = userland.fixture(name);
        checked(
            userland.chroot(
                "/usr/bin/gcc",
                &[
                    "-g",
                    "-O0",
                    "-pthread",
                    "-Wall",
                    "-fomit-frame-pointer",
                    "-o",
                    &inside,
                    &format!("{inside}.c"),
                ],
            ),
            &format!("gcc {source} in the {} tree", userland.suite.name),
        );
    }
    for script in PY_SCRIPTS {
        fs::copy(
            workspace_dir().join("tests/python").join(script),
            dir.join(script),
        )
        .unwrap();
    }
}

/// Runs `cmd`; fails with its output unless it succeeds.
fn checked(mut cmd: Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// An exclusive flock on `path`, held until the file is dropped.
fn lock_file(path: &Path) -> fs::File {
    use std::os::fd::AsRawFd;
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    // SAFETY: flock on a descriptor we own.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock {}", path.display());
    file
}
