//! `cargo xtask test`: build everything, then `cargo test --workspace`
//! against the built `locktrace`, then (the whole suite only) the fuzz
//! targets for a bounded time.

use std::path::Path;

use anyhow::{bail, Result};

use crate::{cmd, prereqs, run, step, workspace_root};

const TRACEFS: &str = "/sys/kernel/tracing";

pub fn test(args: &[String]) -> Result<()> {
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
    let _lock = machine_lock()?;
    step("running cargo test --workspace");
    let mut cargo = run::host_cargo();
    cargo
        .current_dir(workspace_root())
        .args(["test", "--workspace"])
        .args(args)
        .env("LOCKTRACE_BIN", &bin);
    let status = cmd::status(&mut cargo)?;
    // The whole suite (CI's run): the fuzz targets too, after the tests
    // (they need no lock: they trace nothing). A targeted run skips them.
    drop(_lock);
    if status.success() && args.is_empty() {
        crate::fuzz::fuzz(crate::fuzz::SECONDS)?;
    }
    std::process::exit(status.code().unwrap_or(1));
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
