//! `cargo xtask fuzz`: runs each fuzz target of `tracer/fuzz` for a bounded
//! time (`cargo xtask test` runs it after the tests, as CI does).
//!
//! The targets feed what the collector reads from others: a forged process
//! memory to the CPython frame reader, garbled records to the ring-buffer
//! decoder. cargo fuzz needs a nightly-capable compiler (its coverage
//! instrumentation); the eBPF side's toolchain is one (Debian's rustc-web
//! with RUSTC_BOOTSTRAP=1, or rustup's nightly). No sanitizer: Debian's
//! rustc has no ASan runtime, and the code under test is safe Rust (what
//! is looked for is a panic, an overflow, a loop, a blow-up in memory).

use anyhow::{bail, Result};

use crate::{cmd, prereqs, step, workspace_root};

/// Seconds per target by default (CI's run).
pub const SECONDS: u64 = 30;

/// The targets of tracer/fuzz/Cargo.toml, with their own libFuzzer
/// options: a dependency record is 12 KiB, past libFuzzer's default input
/// size, and tried at full length at once (`-len_control=0`) rather than
/// grown to slowly.
pub const TARGETS: &[(&str, &[&str])] = &[
    ("python_frames", &[]),
    ("decode_record", &["-max_len=32768", "-len_control=0"]),
];

/// Runs every target for `seconds` (libFuzzer's -max_total_time), each
/// input within 10 s and the process within 2 GiB.
pub fn fuzz(seconds: u64) -> Result<()> {
    let toolchain = prereqs::ensure(prereqs::Scope::Build)?;
    prereqs::ensure_cargo_fuzz()?;
    let dir = workspace_root().join("tracer/fuzz");
    for &(target, options) in TARGETS {
        step(format!(
            "fuzzing {target} for {seconds} s with {} (tracer/fuzz)",
            toolchain.describe()
        ));
        // Built first, so that a target that does not compile is not
        // reported as a crash.
        let mut build = toolchain.cargo();
        build.current_dir(&dir).args([
            "fuzz",
            "build",
            "--sanitizer",
            "none",
            "--debug-assertions",
            target,
        ]);
        let status = cmd::status(&mut build)?;
        if !status.success() {
            bail!(
                "fuzz target {target} does not build ({status}): see the compiler's errors above"
            );
        }
        let mut cargo = toolchain.cargo();
        cargo.current_dir(&dir).args([
            "fuzz",
            "run",
            "--sanitizer",
            "none",
            "--debug-assertions",
            target,
            "--",
            &format!("-max_total_time={seconds}"),
            "-timeout=10",
            "-rss_limit_mb=2048",
        ]);
        cargo.args(options);
        let status = cmd::status(&mut cargo)?;
        if !status.success() {
            bail!(
                "fuzz target {target} failed ({status}): the input is under \
                 tracer/fuzz/artifacts/{target}/; replay it with \
                 `cargo fuzz run {target} FILE` in tracer/fuzz"
            );
        }
    }
    Ok(())
}
