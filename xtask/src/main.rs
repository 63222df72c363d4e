//! `cargo xtask`: builds the eBPF object, runs locktrace, runs the tests.
//!
//! Every command first makes sure its prerequisites are there (see
//! [`prereqs`]); on Debian, as root, missing ones are installed.

mod bench;
mod cmd;
mod ebpf;
mod fuzz;
mod prereqs;
mod run;
mod test;
mod vm;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "locktrace build and test helper")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the eBPF object (tracer-ebpf) for bpfel-unknown-none.
    BuildEbpf {
        /// Accepted for symmetry: the eBPF object is always built with the
        /// release profile (BPF debug builds are not useful).
        #[arg(long)]
        release: bool,
        /// Build this crate instead of <workspace>/tracer-ebpf (for testing
        /// xtask itself).
        #[arg(long, hide = true)]
        crate_dir: Option<PathBuf>,
    },
    /// Build everything, then run locktrace with ARGS
    /// (e.g. `cargo xtask run -- run -- ./some-program`).
    Run {
        /// Build and run the release build of locktrace.
        #[arg(long)]
        release: bool,
        /// Arguments for locktrace.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build everything, then run `cargo test --workspace` (needs root);
    /// without ARGS (the whole suite, as CI runs it), then `fuzz` and `vm-test`.
    Test {
        /// Do not run `vm-test` after the whole suite.
        #[arg(long)]
        no_vm: bool,
        /// Extra arguments for `cargo test`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Boot Debian 12's own kernels (6.1: linux-image-amd64, and 6.1
    /// PREEMPT_RT: linux-image-rt-amd64) under KVM on a bookworm root
    /// filesystem (debootstrap, cached in target/vm) and run smoke checks of
    /// the release locktrace inside; one verdict per check and kernel (needs
    /// root and /dev/kvm; installs qemu-system-x86 and debootstrap).
    VmTest {
        /// Kernel flavours to boot (amd64, rt-amd64); both when none.
        kernels: Vec<String>,
        /// Run the VMs under QEMU's software emulation even where KVM
        /// works (it is chosen by itself where KVM cannot boot them).
        #[arg(long)]
        tcg: bool,
        /// Run only these checks of guest.sh (repeatable; all when none).
        #[arg(long = "check", value_name = "NAME")]
        checks: Vec<String>,
        /// Run the selected checks this many times in each boot (to find
        /// a rare failure without paying for a boot each time).
        #[arg(long, default_value_t = 1)]
        repeat: u32,
        /// Virtual CPUs of each VM.
        #[arg(long, default_value_t = vm::CPUS)]
        cpus: u32,
    },
    /// Run each fuzz target of tracer/fuzz (the CPython frame reader, the
    /// ring-buffer record decoder) for a bounded time; installs cargo-fuzz.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = fuzz::SECONDS)]
        seconds: u64,
    },
    /// Measure the cost of tracing side by side (probe cost per lock
    /// operation in C and Python loops, and Apache under wrk, each untraced,
    /// with empty programs on the same probes (the floor), with locktrace,
    /// and with probes at offset 0; collector throughput; real servers
    /// untraced, traced in full and under `--budget 5`: memcached, MariaDB,
    /// varnish, a Django view under mod_wsgi) and print Markdown tables
    /// (needs root; installs the servers and their load generators).
    Bench {
        /// Interleaved rounds per workload (the median is reported).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
        /// One short round: a smoke run, not a measurement.
        #[arg(long)]
        quick: bool,
        /// Only the attach, detach and bystander rows (`run` of a trivial
        /// program, exit after SIGTERM, an untraced process beside
        /// `watch --pid`).
        #[arg(long)]
        attach_only: bool,
        /// Only the web-server table: Apache under wrk, untraced, traced
        /// and under `locktrace agent` (its CPU and peak RSS).
        #[arg(long)]
        web_only: bool,
        /// Only these parts (repeatable or comma-separated; with
        /// --attach-only and --web-only, their parts too).
        #[arg(long, value_enum, value_delimiter = ',')]
        only: Vec<bench::Part>,
    },
}

fn main() {
    if let Err(err) = real_main() {
        eprintln!("xtask: error: {err:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    match Cli::parse().command {
        Command::BuildEbpf {
            release: _,
            crate_dir,
        } => {
            let toolchain = prereqs::ensure(prereqs::Scope::Build)?;
            let crate_dir = crate_dir.unwrap_or_else(|| workspace_root().join("tracer-ebpf"));
            let object = ebpf::build(&toolchain, &crate_dir)?;
            step(format!("eBPF object: {}", object.display()));
            Ok(())
        }
        Command::Run { release, args } => run::run(release, &args),
        Command::Test { args, no_vm } => test::test(&args, no_vm),
        Command::VmTest {
            kernels,
            tcg,
            checks,
            repeat,
            cpus,
        } => vm::vm_test(
            &kernels,
            &vm::Options {
                force_tcg: tcg,
                checks,
                repeat,
                cpus,
            },
        ),
        Command::Fuzz { seconds } => fuzz::fuzz(seconds),
        Command::Bench {
            rounds,
            seconds,
            quick,
            attach_only,
            web_only,
            mut only,
        } => {
            if attach_only {
                only.push(bench::Part::Attach);
            }
            if web_only {
                only.push(bench::Part::Web);
            }
            let opts = if quick {
                bench::Options {
                    rounds: 1,
                    seconds: 0.3,
                    quick,
                    only,
                }
            } else {
                bench::Options {
                    rounds,
                    seconds,
                    quick,
                    only,
                }
            };
            bench::bench(&opts)
        }
    }
}

/// The workspace root (the parent of the xtask crate).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or(manifest_dir)
}

/// The host workspace's target directory (honours `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace_root().join(dir),
        _ => workspace_root().join("target"),
    }
}

/// Prints one progress line. xtask writes to stderr so that locktrace's own
/// stdout (JSON Lines) stays clean under `cargo xtask run`.
pub fn step(msg: impl std::fmt::Display) {
    eprintln!("xtask: {msg}");
}
