//! What the VM runs: the release `locktrace`, the C fixtures of the smoke
//! checks, the Python script and the checks themselves (`guest.sh`, the
//! VM's PID 1), put into the root filesystem and written with it into a
//! disk image.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{cmd, prereqs, step, workspace_root};

/// The checks, run as the VM's init.
const GUEST_SCRIPT: &str = include_str!("guest.sh");
/// Where the payload goes in the tree (`guest.sh` looks there).
pub const GUEST_DIR: &str = "opt/locktrace";
/// The C fixtures the checks run, built as the tests' `_nofp` variants (no
/// frame pointers: the stacks are unwound with `.eh_frame`).
const FIXTURES: &[&str] = &[
    "ab_ba",
    "three_cycle",
    "trylock_reverse",
    "rwlock_ww",
    "deadlock",
    "busy_pairs",
];

/// The checks of guest.sh, in the order it runs them (`vm-test --check`).
pub const CHECKS: &[&str] = &[
    "ab_ba",
    "three_cycle",
    "trylock",
    "rwlock",
    "deadlock",
    "python_ab_ba",
    "run_status",
    "attach_detach",
    "detach_under_load",
];

/// The kernel command line's words for guest.sh: the kernel passes the
/// words it does not know to init as environment variables.
pub fn guest_params(checks: &[String], repeat: u32) -> String {
    let mut params = format!("vmtest_repeat={repeat}");
    if !checks.is_empty() {
        params.push_str(&format!(" vmtest_checks={}", checks.join(",")));
    }
    params
}

/// Puts the payload into `tree` (replacing an earlier one).
pub fn install(tree: &Path, locktrace: &Path) -> Result<()> {
    let root = workspace_root();
    let dir = tree.join(GUEST_DIR);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(dir.join("fixtures"))?;
    std::fs::copy(locktrace, dir.join("locktrace"))
        .with_context(|| format!("cannot copy {}", locktrace.display()))?;
    // The host is bookworm too: the fixtures link against the same glibc.
    for name in FIXTURES {
        let source = root.join("tests/fixtures").join(format!("{name}.c"));
        cmd::run(
            Command::new("gcc")
                .args(["-g", "-O0", "-pthread", "-fomit-frame-pointer", "-o"])
                .arg(dir.join("fixtures").join(name))
                .arg(&source),
        )?;
    }
    std::fs::copy(
        root.join("tests/python/frames_ab_ba.py"),
        dir.join("frames_ab_ba.py"),
    )?;
    let script = dir.join("guest.sh");
    std::fs::write(&script, GUEST_SCRIPT)?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Writes `tree` into a raw ext4 image (`mkfs.ext4 -d`: no mount, no loop
/// device). The VMs boot it read-only.
pub fn image(tree: &Path, vm_dir: &Path) -> Result<PathBuf> {
    let image = vm_dir.join("bookworm.img");
    let used_mb = dir_size(tree)? / (1 << 20);
    // Room for the filesystem's own metadata; the guest writes to tmpfs.
    let size_mb = used_mb + used_mb / 4 + 256;
    step(format!(
        "writing the root filesystem ({used_mb} MB) into {}",
        image.display()
    ));
    let _ = std::fs::remove_file(&image);
    let status = cmd::status(
        Command::new(prereqs::MKFS_EXT4)
            .args(["-q", "-F", "-L", "locktrace-vm", "-d"])
            .arg(tree)
            .arg(&image)
            .arg(format!("{size_mb}M")),
    )?;
    if !status.success() {
        bail!("mkfs.ext4 failed ({status})");
    }
    Ok(image)
}

/// Bytes in the regular files under `dir` (symbolic links not followed).
fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in
            std::fs::read_dir(&d).with_context(|| format!("cannot read {}", d.display()))?
        {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    Ok(total)
}
