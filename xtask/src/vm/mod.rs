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

/// One boot's limit: the checks take 2-3 minutes on 6.1 and up to 8 on 6.1
/// PREEMPT_RT under emulation; the slowest parts are the single uprobes of
/// a kernel without multi-uprobe links, detached under load.
const BOOT_LIMIT: Duration = Duration::from_secs(900);

/// Virtual CPUs of each VM: two, so that a process runs beside the tracer
/// while it attaches and detaches.
pub const CPUS: u32 = 2;

/// What to run, beyond the kernels.
pub struct Options {
    /// Software emulation even where KVM works.
    pub force_tcg: bool,
    /// The checks of guest.sh to run (all when empty).
    pub checks: Vec<String>,
    /// Each selected check runs this many times per boot.
    pub repeat: u32,
    pub cpus: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            force_tcg: false,
            checks: Vec::new(),
            repeat: 1,
            cpus: CPUS,
        }
    }
}

/// Runs the checks on `kernels` (all of [`KERNELS`] when empty); fails
/// when any check failed, any VM did not finish or its kernel reported a
/// stall (a soft lockup, an RCU stall, a hung task).
pub fn vm_test(kernels: &[String], options: &Options) -> Result<()> {
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
    if let Some(c) = options
        .checks
        .iter()
        .find(|c| !payload::CHECKS.contains(&c.as_str()))
    {
        bail!("unknown check {c}: one of {}", payload::CHECKS.join(", "));
    }
    if options.repeat == 0 || options.cpus == 0 {
        bail!("--repeat and --cpus must be at least 1");
    }
    let (accel, why_tcg) = boot::Accel::choose(options.force_tcg);
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
        let vm = boot::Vm {
            name: name.clone(),
            accel,
            cpus: options.cpus,
            kernel,
            initrd,
            image: image.clone(),
            log,
            limit: BOOT_LIMIT,
        };
        let result = boot::boot(&vm, &payload::guest_params(&options.checks, options.repeat))?;
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
        for stall in &b.stalls {
            eprintln!("    kernel: {stall}");
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
