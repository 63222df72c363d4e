//! Running child processes.

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
};

use anyhow::{bail, Context, Result};

/// Runs `cmd`, failing unless it exits successfully.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = status(cmd)?;
    if !status.success() {
        bail!("{} failed: {status}", describe(cmd));
    }
    Ok(())
}

/// Runs `cmd` and returns its exit status.
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    cmd.status()
        .with_context(|| format!("failed to start {}", describe(cmd)))
}

/// Runs `cmd` and returns its stdout if it exits successfully.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(std::process::Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    format!("`{s}`")
}

/// `$CARGO_HOME/bin`, by default `~/.cargo/bin`.
pub fn cargo_bin_dir() -> PathBuf {
    match env::var_os("CARGO_HOME") {
        Some(home) if !home.is_empty() => PathBuf::from(home).join("bin"),
        _ => {
            PathBuf::from(env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo/bin")
        }
    }
}

/// `PATH` with `~/.cargo/bin` first (for bpf-linker and rustup).
pub fn path_with_cargo_bin() -> OsString {
    let first = cargo_bin_dir();
    let mut dirs = vec![first.clone()];
    if let Some(path) = env::var_os("PATH") {
        dirs.extend(env::split_paths(&path).filter(|d| *d != first));
    }
    env::join_paths(dirs).unwrap_or_default()
}

/// Finds `name` in [`path_with_cargo_bin`].
pub fn which(name: &str) -> Option<PathBuf> {
    env::split_paths(&path_with_cargo_bin())
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A command for a different Rust toolchain than the one running xtask.
///
/// `cargo xtask` runs under rustup's cargo, which exports the toolchain it
/// picked (RUSTUP_TOOLCHAIN, RUSTC, CARGO, CARGO_*, flags, library paths...).
/// Left in place these would make the child build with xtask's toolchain
/// instead of the chosen one, or with its target dir and flags.
pub fn foreign_toolchain_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if should_clear(key) {
            cmd.env_remove(key);
        }
    }
    cmd.env("PATH", path_with_cargo_bin());
    if let Some(ld) = env::var_os("LD_LIBRARY_PATH") {
        // `cargo run` prepends xtask's toolchain and target directories.
        let rustup_home = env::var_os("RUSTUP_HOME").map(PathBuf::from);
        let target = crate::target_dir();
        let kept: Vec<PathBuf> = env::split_paths(&ld)
            .filter(|d| !d.starts_with(&target))
            .filter(|d| rustup_home.as_ref().is_none_or(|r| !d.starts_with(r)))
            .filter(|d| !d.components().any(|c| c.as_os_str() == ".rustup"))
            .collect();
        if kept.is_empty() {
            cmd.env_remove("LD_LIBRARY_PATH");
        } else {
            cmd.env("LD_LIBRARY_PATH", env::join_paths(kept).unwrap_or_default());
        }
    }
    cmd
}

fn should_clear(key: &str) -> bool {
    const KEEP: &[&str] = &[
        "CARGO_HOME",
        "CARGO_NET_",
        "CARGO_HTTP_",
        "CARGO_REGISTRIES_",
        "CARGO_REGISTRY_",
        "CARGO_TERM_",
    ];
    if key.starts_with("CARGO_") {
        return !KEEP.iter().any(|k| key.starts_with(k));
    }
    key.starts_with("__CARGO")
        || key.starts_with("RUSTUP_TOOLCHAIN")
        || matches!(
            key,
            "CARGO"
                | "RUSTC"
                | "RUSTC_WRAPPER"
                | "RUSTC_WORKSPACE_WRAPPER"
                | "RUSTC_BOOTSTRAP"
                | "RUSTDOC"
                | "RUSTFLAGS"
                | "RUSTDOCFLAGS"
                | "OUT_DIR"
        )
}
