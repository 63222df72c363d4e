//! The VM's root filesystem: a Debian 12 (bookworm) tree built once by
//! debootstrap under the target directory, with both kernels Debian ships
//! for amd64, and kept for later runs.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context, Result};

use crate::{cmd, prereqs, step};

/// What the tree holds besides minbase: the two kernels under test (their
/// postinst scripts build an initramfs for each with initramfs-tools,
/// which finds the virtio disk; kmod and udev are what it needs), and
/// Debian's Python for the Python check.
const PACKAGES: &[&str] = &[
    "linux-image-amd64",
    "linux-image-rt-amd64",
    "initramfs-tools",
    "kmod",
    "udev",
    "python3",
];
const SUITE: &str = "bookworm";

/// The tree, built if it is not there yet (or was built with another
/// package list). Returns its path and the seconds debootstrap took (`None`
/// when it was cached).
pub fn ensure(vm_dir: &Path) -> Result<(PathBuf, Option<f64>)> {
    let tree = vm_dir.join(SUITE);
    let stamp = vm_dir.join(format!("{SUITE}.done"));
    let wanted = PACKAGES.join(",");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == wanted) && tree.is_dir() {
        step(format!("root filesystem: {} (cached)", tree.display()));
        return Ok((tree, None));
    }
    let partial = vm_dir.join(format!("{SUITE}.partial"));
    for dir in [&partial, &tree] {
        if dir.exists() {
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("cannot remove {}", dir.display()))?;
        }
    }
    std::fs::create_dir_all(vm_dir)?;
    let mirror = host_mirror();
    step(format!(
        "building the {SUITE} root filesystem with debootstrap into {} (once, cached there; \
         it downloads about 150 MB and takes minutes; log: {})",
        tree.display(),
        vm_dir.join("debootstrap.log").display()
    ));
    let started = Instant::now();
    let log = std::fs::File::create(vm_dir.join("debootstrap.log"))?;
    let mut debootstrap = Command::new(prereqs::DEBOOTSTRAP);
    debootstrap
        .args(["--variant=minbase", &format!("--include={wanted}"), SUITE])
        .arg(&partial)
        .args(mirror.as_deref())
        .stdout(log.try_clone()?)
        .stderr(log);
    let status = cmd::status(&mut debootstrap)?;
    if !status.success() {
        bail!(
            "debootstrap failed ({status}): see {}",
            vm_dir.join("debootstrap.log").display()
        );
    }
    std::fs::rename(&partial, &tree)?;
    std::fs::write(&stamp, &wanted)?;
    let took = started.elapsed().as_secs_f64();
    step(format!("root filesystem built in {took:.0}s"));
    Ok((tree, Some(took)))
}

/// The Debian mirror this host's apt uses for the suite (so that a proxy
/// or a local mirror set up for apt serves debootstrap too); `None`:
/// debootstrap's default.
fn host_mirror() -> Option<String> {
    let deb822 =
        std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    for stanza in deb822.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
        };
        let suites = field("Suites:").unwrap_or_default();
        if suites.split_whitespace().any(|s| s == SUITE) {
            if let Some(uri) = field("URIs:").and_then(|u| u.split_whitespace().next()) {
                return Some(uri.to_owned());
            }
        }
    }
    let list = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    list.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() >= 3 && f[0] == "deb" && f[2] == SUITE).then(|| f[1].to_owned())
    })
}
