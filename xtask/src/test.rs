//! `cargo xtask test`: build everything, then `cargo test --workspace`
//! against the built `locktrace`, then (the whole suite only) the fuzz
//! targets for a bounded time.

use std::path::Path;

use anyhow::{bail, Result};

use crate::{cmd, prereqs, run, step, workspace_root};

const TRACEFS: &str = "/sys/kernel/tracing";

/// `cargo test` with `args`; then, for the whole suite (no `args`) unless
/// `no_vm`, `vm-test` on Debian's kernels too (about 11 minutes, 4 of them
/// the first debootstrap: it fits CI's time with the suite).
pub fn test(args: &[String], no_vm: bool) -> Result<()> {
    if !cmd::is_root() {
        bail!("the end-to-end tests load BPF programs: run as root");
    }
    let toolchain = prereqs::ensure(prereqs::Scope::Test)?;
    mount_tracefs()?;
    // The release build: the binary users run, and host-wide tracing under
    // load needs its speed (a debug collector falls behind the ring buffer
    // and loses events, which the tests count).
    let bin = run::build_all(&toolchain, true)?;

    // The end-to-end tests trace host-wide: two suites at once (two
    // worktrees, a bench beside a test run) see each other's programs and
    // their tracers' probes. One suite at a time on a machine.
    let lock = machine_lock()?;
    step("running cargo test --workspace");
    let mut cargo = run::host_cargo();
    cargo
        .current_dir(workspace_root())
        .args(["test", "--workspace"])
        .args(args)
        .env("LOCKTRACE_BIN", &bin);
    let status = cmd::status(&mut cargo)?;
    drop(lock);
    let mut code = status.code().unwrap_or(1);
    let mut failed = |e: anyhow::Error| {
        eprintln!("xtask: error: {e:#}");
        if code == 0 {
            code = 1;
        }
    };
    if args.is_empty() {
        // The whole suite (CI's run): the fuzz targets, then Debian's own
        // kernels. Neither traces this host: no machine lock. A targeted
        // run skips both.
        step("the suite is done; now the fuzz targets (`cargo xtask fuzz`)");
        if let Err(e) = crate::fuzz::fuzz(crate::fuzz::SECONDS) {
            failed(e);
        }
        if !no_vm {
            step("now the kernels of Debian 12 (`cargo xtask vm-test`; --no-vm skips them)");
            if let Err(e) = crate::vm::vm_test(&[], &crate::vm::Options::default()) {
                failed(e);
            }
        }
    }
    std::process::exit(code);
}

/// Where suites queue: held (flock) while `cargo test` runs, released
/// when xtask exits.
const MACHINE_LOCK: &str = "/run/lock/locktrace-e2e.lock";

/// Takes the machine-wide test lock, waiting (and saying so) while another
/// suite (or benchmark) holds it.
pub fn machine_lock() -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(MACHINE_LOCK)
        .map_err(|e| anyhow::anyhow!("cannot open {MACHINE_LOCK}: {e}"))?;
    // SAFETY: flock on an open descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        step(format!(
            "waiting for another test suite on this machine to finish ({MACHINE_LOCK})"
        ));
        // SAFETY: as above; blocking this time.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!(
                "cannot lock {MACHINE_LOCK}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(file)
}

fn mount_tracefs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mounted = mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_, dir, fstype) = (f.next(), f.next(), f.next());
        dir == Some(TRACEFS) && fstype == Some("tracefs")
    });
    if mounted || Path::new(TRACEFS).join("events").is_dir() {
        return Ok(());
    }
    step(format!("mounting tracefs at {TRACEFS} (the tests use it)"));
    cmd::run(std::process::Command::new("mount").args(["-t", "tracefs", "tracefs", TRACEFS]))
}
