//! `cargo xtask vm-test [KERNEL]...`: boots Debian 12's own kernels (6.1,
//! and 6.1 PREEMPT_RT) under KVM on a small bookworm root filesystem with
//! the release `locktrace`, runs the smoke checks inside (`guest.sh`), and
//! prints a verdict per check and kernel.

mod boot;
mod payload;
mod rootfs;

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::{cmd, prereqs, run, step, target_dir};

/// The kernels Debian 12 ships for amd64, by flavour (the suffix of
/// `linux-image-FLAVOUR`).
pub const KERNELS: &[&str] = &["amd64", "rt-amd64"];

/// One boot's limit: the checks take about a minute; the slowest parts are
/// the single uprobes of a kernel without multi-uprobe links.
const BOOT_LIMIT: Duration = Duration::from_secs(600);

/// Runs the checks on `kernels` (all of [`KERNELS`] when empty); fails
/// when any check failed or any VM did not finish.
pub fn vm_test(kernels: &[String], force_tcg: bool) -> Result<()> {
    if !cmd::is_root() {
        bail!("vm-test builds a root filesystem with debootstrap and uses /dev/kvm: run as root");
    }
    let kernels: Vec<String> = if kernels.is_empty() {
        KERNELS.iter().map(|k| k.to_string()).collect()
    } else {
        kernels.to_vec()
    };
    if let Some(k) = kernels.iter().find(|k| !KERNELS.contains(&k.as_str())) {
        bail!("unknown kernel {k}: one of {}", KERNELS.join(", "));
    }
    let (accel, why_tcg) = boot::Accel::choose(force_tcg);
    if let Some(why) = why_tcg {
        step(format!(
            "the VMs run under QEMU's software emulation (TCG), not KVM: {why}"
        ));
    }
    let started = Instant::now();
    let toolchain = prereqs::ensure(prereqs::Scope::Vm)?;
    let locktrace = run::build_all(&toolchain, true)?;
    let vm_dir = target_dir().join("vm");
    let (tree, debootstrap_s) = rootfs::ensure(&vm_dir)?;
    payload::install(&tree, &locktrace)?;
    let image = payload::image(&tree, &vm_dir)?;

    let mut boots = Vec::new();
    for flavour in &kernels {
        let (kernel, initrd) = boot::kernel_files(&tree, flavour)?;
        let log = vm_dir.join(format!("{flavour}.console.log"));
        let name = format!("linux-image-{flavour}");
        let result = boot::boot(&name, accel, &kernel, &initrd, &image, &log, BOOT_LIMIT)?;
        boots.push((name, result));
    }

    step("vm-test summary:");
    let mut failed = false;
    for (name, b) in &boots {
        let passed = b.checks.iter().filter(|c| c.passed).count();
        eprintln!(
            "  {name} ({}): {passed} of {} checks passed in {:.0}s{}",
            b.kernel.as_deref().unwrap_or("did not boot"),
            b.checks.len(),
            b.seconds,
            b.failure
                .as_deref()
                .map(|f| format!("; {f}"))
                .unwrap_or_default()
        );
        for c in b.checks.iter().filter(|c| !c.passed) {
            eprintln!("    FAIL {}: {}", c.name, c.detail);
        }
        if !b.passed() {
            failed = true;
            eprintln!("    console: {}", b.log.display());
        }
    }
    eprintln!(
        "  total {:.0}s{}",
        started.elapsed().as_secs_f64(),
        debootstrap_s
            .map(|s| format!(", of which debootstrap {s:.0}s"))
            .unwrap_or_default()
    );
    if failed {
        bail!("vm-test failed");
    }
    Ok(())
}
