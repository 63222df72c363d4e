//! `cargo xtask build-ebpf`: the kernel side, for bpfel-unknown-none.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::{cmd, prereqs::Toolchain, step};

pub const TARGET: &str = "bpfel-unknown-none";

/// Builds the eBPF crate at `crate_dir` (always with the release profile) and
/// returns the path of the object.
pub fn build(toolchain: &Toolchain, crate_dir: &Path) -> Result<PathBuf> {
    let crate_dir = crate_dir
        .canonicalize()
        .with_context(|| format!("eBPF crate {}", crate_dir.display()))?;
    let manifest = crate_dir.join("Cargo.toml");
    if !manifest.is_file() {
        bail!("no Cargo.toml in {}", crate_dir.display());
    }
    let target_dir = crate_dir.join("target");
    step(format!(
        "building the eBPF object with {}",
        toolchain.describe()
    ));

    let mut cargo = toolchain.cargo();
    cargo
        .current_dir(&crate_dir)
        .args([
            "build",
            "--release",
            "--target",
            TARGET,
            "-Z",
            "build-std=core",
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir)
        // Same flags as aya-build: the target arch for aya-ebpf's per-arch
        // code (pt_regs layout), and BTF, which aya needs for maps and
        // aya-log.
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags())
        // A first build resolves dependencies: pick versions the chosen
        // compiler supports (e.g. aya-build 0.2.1 wants rustc 1.98).
        .env("CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS", "fallback");
    cmd::run(&mut cargo)?;

    let object = target_dir.join(TARGET).join("release").join("tracer-ebpf");
    if !object.is_file() {
        bail!("the build succeeded but {} is missing", object.display());
    }
    Ok(object)
}

fn rustflags() -> String {
    let arch = std::env::consts::ARCH;
    [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".to_owned(),
        "-Clink-arg=--btf".to_owned(),
    ]
    .join("\x1f")
}
