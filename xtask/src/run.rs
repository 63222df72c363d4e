//! `cargo xtask run`: build everything, then exec locktrace.

use std::{os::unix::process::CommandExt, path::PathBuf, process::Command};

use anyhow::{Context, Result};

use crate::{cmd, ebpf, prereqs, step, target_dir, workspace_root};

/// Builds the eBPF object and `locktrace`; returns the path of `locktrace`.
pub fn build_all(toolchain: &prereqs::Toolchain, release: bool) -> Result<PathBuf> {
    let root = workspace_root();
    ebpf::build(toolchain, &root.join("tracer-ebpf"))?;

    let profile = if release { "release" } else { "debug" };
    step(format!("building locktrace ({profile})"));
    let mut cargo = host_cargo();
    cargo.current_dir(&root).args(["build", "-p", "tracer"]);
    if release {
        cargo.arg("--release");
    }
    cmd::run(&mut cargo)?;
    Ok(target_dir().join(profile).join("locktrace"))
}

/// The cargo running xtask (rustup's stable, normally), for host builds.
pub fn host_cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

pub fn run(release: bool, args: &[String]) -> Result<()> {
    let toolchain = prereqs::ensure(prereqs::Scope::Build)?;
    let bin = build_all(&toolchain, release)?;
    step(format!("running {}", bin.display()));
    let err = Command::new(&bin).args(args).exec();
    Err(err).with_context(|| format!("failed to run {}", bin.display()))
}
