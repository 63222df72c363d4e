//! Finding (and on Debian, as root, installing) what the builds and tests
//! need. All apt package names live here.
//!
//! `XTASK_TOOLCHAIN=debian|nightly` restricts the eBPF toolchain search to one
//! kind (for testing xtask itself).

use std::{env, path::Path, process::Command};

use anyhow::{bail, Result};

use crate::{cmd, step};

/// Debian's current Rust (1.96 in bookworm-security): compiler, cargo and the
/// library source that `-Z build-std=core` compiles for the BPF target.
pub const APT_RUST: &[&str] = &["rustc-web", "cargo-web", "rust-web-src"];
/// What `cargo install bpf-linker --features llvm-22` needs: LLVM 22's
/// `libLLVM.so` (bpf-linker links it dynamically, so zlib/zstd headers are not
/// needed) and a C toolchain to link.
pub const APT_BPF_LINKER: &[&str] = &["llvm-22-dev"];
/// The C compiler: linker for every Rust build and compiler of the test
/// fixtures.
pub const APT_CC: &[&str] = &["gcc"];
/// A test fixture is C++: `std::mutex` never calls `pthread_mutex_init` or
/// `_destroy`, the case the tracer's heap-reuse rule is for.
pub const APT_CXX: &[&str] = &["g++"];
/// The tests trace Debian's interpreter (/usr/bin/python3), not another one
/// on PATH, and a C program embedding libpython (built with python3-dev).
pub const APT_TEST: &[&str] = &["python3", "python3-dev"];
/// What the embedding tests build with (from [`APT_TEST`]).
const PYTHON_CONFIG: &str = "/usr/bin/python3-config";
/// `cargo xtask bench`'s web-server measurement: Debian's Apache (MPM event)
/// serves a static file, Debian's wrk loads it.
pub const APT_BENCH: &[&str] = &["apache2", "wrk"];
/// The Apache + mod_wsgi scenario of the end-to-end tests: Debian's Apache
/// and mod_wsgi for Python 3 (run from a test-owned configuration; the
/// system service is neither used nor started by the tests).
pub const APT_WSGI: &[&str] = &["apache2", "libapache2-mod-wsgi-py3", "wrk"];
/// The tests that trace other glibc builds and distro Pythons from the
/// host build Debian 11 and 13 trees with it (cached under target/rootfs).
pub const APT_DEBOOTSTRAP: &[&str] = &["debootstrap"];
pub const DEBOOTSTRAP: &str = "/usr/sbin/debootstrap";
/// `locktrace report --format dot` is checked by rendering it with Debian's
/// Graphviz (`dot -Tsvg`).
pub const APT_GRAPHVIZ: &[&str] = &["graphviz"];
/// Graphviz's renderer (from [`APT_GRAPHVIZ`]).
pub const DOT: &str = "/usr/bin/dot";
/// `locktrace report --format html` is opened in Debian's headless Chromium.
pub const APT_CHROMIUM: &[&str] = &["chromium"];
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Where Debian's mod_wsgi lands (from [`APT_WSGI`]).
pub const MOD_WSGI: &str = "/usr/lib/apache2/modules/mod_wsgi.so";
/// The agent's tests: a real Alertmanager receiving its alerts, a real
/// Prometheus scraping its metrics and loading the shipped alerting rules,
/// promtool checking those rules, and systemd's journald (run by the tests
/// in a mount namespace of their own) receiving its journal entries, with
/// `systemd-analyze` checking the shipped unit.
pub const APT_AGENT: &[&str] = &["prometheus-alertmanager", "prometheus", "systemd"];
pub const ALERTMANAGER: &str = "/usr/bin/prometheus-alertmanager";
pub const PROMETHEUS: &str = "/usr/bin/prometheus";
pub const PROMTOOL: &str = "/usr/bin/promtool";
pub const JOURNALD: &str = "/lib/systemd/systemd-journald";
/// What the web-server measurement runs (from [`APT_BENCH`]).
pub const APACHE2: &str = "/usr/sbin/apache2";
pub const APACHE2_MPM_EVENT: &str = "/usr/lib/apache2/modules/mod_mpm_event.so";
pub const WRK: &str = "/usr/bin/wrk";
/// `cargo xtask bench`'s lock-heavy server: Debian's memcached, loaded by
/// memcaslap (libmemcached-tools).
pub const APT_BENCH_MEMCACHED: &[&str] = &["memcached", "libmemcached-tools"];
pub const MEMCACHED: &str = "/usr/bin/memcached";
pub const MEMCASLAP: &str = "/usr/bin/memcaslap";
/// `cargo xtask bench`'s WSGI application: a Django view (Debian's
/// python3-django) under Debian's Apache and mod_wsgi.
pub const APT_BENCH_DJANGO: &[&str] = &["python3-django", "libapache2-mod-wsgi-py3"];
/// Where python3-django's package lands.
pub const DJANGO: &str = "/usr/lib/python3/dist-packages/django/__init__.py";
/// `cargo xtask bench`'s database: Debian's MariaDB server (and its client,
/// which creates the benchmark's database) loaded by Debian's sysbench.
pub const APT_BENCH_MARIADB: &[&str] = &["mariadb-server", "mariadb-client", "sysbench"];
pub const MARIADBD: &str = "/usr/sbin/mariadbd";
pub const MARIADB_INSTALL_DB: &str = "/usr/bin/mariadb-install-db";
pub const MARIADB: &str = "/usr/bin/mariadb";
pub const SYSBENCH: &str = "/usr/bin/sysbench";
/// `cargo xtask bench`'s HTTP cache: Debian's varnish (it compiles its VCL
/// with the C compiler of [`APT_CC`]).
pub const APT_BENCH_VARNISH: &[&str] = &["varnish"];
pub const VARNISHD: &str = "/usr/sbin/varnishd";

/// `cargo xtask vm-test`: Debian's kernels boot under KVM
/// (qemu-system-x86) on a bookworm root filesystem built by debootstrap and
/// written into an ext4 image without mounting it (`mkfs.ext4 -d`,
/// e2fsprogs).
pub const APT_VM: &[&str] = &["qemu-system-x86", "debootstrap", "e2fsprogs"];
pub const QEMU: &str = "/usr/bin/qemu-system-x86_64";
pub const MKFS_EXT4: &str = "/usr/sbin/mkfs.ext4";

pub const BPF_LINKER_VERSION: &str = "0.13.0";
/// `cargo fuzz`, which builds and runs the fuzz targets of `tracer/fuzz`
/// (libFuzzer) with the eBPF side's toolchain.
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// The oldest rustc the eBPF side builds with (aya-ebpf 0.2's build
/// dependencies).
const MIN_RUSTC_MINOR: u32 = 87;

const DEBIAN_RUST_SRC: &str = "/usr/lib/rustlib/src/rust";

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Building the eBPF object and the collector.
    Build,
    /// Also running the end-to-end tests.
    Test,
    /// Also running `cargo xtask bench` (the tests' tools, Apache and wrk).
    Bench,
    /// `cargo xtask vm-test`: the fixtures' compiler, qemu and debootstrap.
    Vm,
}

/// A toolchain that can build `core` for bpfel-unknown-none.
pub enum Toolchain {
    /// `rustc-web`, `cargo-web`, `rust-web-src`: /usr/bin/{rustc,cargo}.
    Debian { version: String },
    /// rustup's nightly with the `rust-src` component.
    RustupNightly { version: String },
}

impl Toolchain {
    pub fn describe(&self) -> String {
        match self {
            Self::Debian { version } => format!("Debian's rustc-web {version}"),
            Self::RustupNightly { version } => format!("rustup's nightly ({version})"),
        }
    }

    /// `cargo` of this toolchain, with xtask's toolchain environment cleared.
    pub fn cargo(&self) -> Command {
        match self {
            Self::Debian { .. } => {
                let mut c = cmd::foreign_toolchain_command("/usr/bin/cargo");
                c.env("RUSTC", "/usr/bin/rustc").env("RUSTC_BOOTSTRAP", "1");
                c
            }
            Self::RustupNightly { .. } => {
                let mut c = cmd::foreign_toolchain_command("rustup");
                c.args(["run", "nightly", "cargo"]);
                c
            }
        }
    }
}

/// Finds the eBPF toolchain and the tools for `scope`, installing what is
/// missing when possible; otherwise says what to install and fails.
pub fn ensure(scope: Scope) -> Result<Toolchain> {
    let toolchain = find_toolchain();
    let bpf_linker_ok = bpf_linker_ok();
    let mut apt: Vec<(&[&str], &str)> = Vec::new();
    if toolchain.is_none() {
        apt.push((
            APT_RUST,
            "the eBPF object needs a Rust compiler with its library source (-Z build-std=core)",
        ));
    }
    if cmd::which("cc").is_none() || (scope != Scope::Build && cmd::which("gcc").is_none()) {
        apt.push((
            APT_CC,
            "a C compiler links Rust programs and builds the test fixtures",
        ));
    }
    if scope != Scope::Build && cmd::which("g++").is_none() {
        apt.push((
            APT_CXX,
            "a test fixture is C++ (std::mutex is announced by no lock function)",
        ));
    }
    if scope != Scope::Build
        && ["/usr/bin/python3", PYTHON_CONFIG]
            .iter()
            .any(|p| !Path::new(p).exists())
    {
        apt.push((
            APT_TEST,
            "the end-to-end tests trace Debian's Python, also embedded in a C program",
        ));
    }
    if scope == Scope::Test
        && [APACHE2, MOD_WSGI, WRK]
            .iter()
            .any(|p| !Path::new(p).exists())
    {
        apt.push((
            APT_WSGI,
            "the end-to-end tests run a WSGI application under Apache and mod_wsgi, loaded by wrk",
        ));
    }
    if scope == Scope::Test
        && [ALERTMANAGER, PROMETHEUS, PROMTOOL, JOURNALD]
            .iter()
            .any(|p| !Path::new(p).exists())
    {
        apt.push((
            APT_AGENT,
            "the agent's tests send alerts to Debian's Alertmanager, have Debian's Prometheus scrape \
             the agent and load the shipped rules, check those rules with promtool and send findings \
             to systemd's journald (run by the tests, not as a service)",
        ));
    }
    if scope == Scope::Test && !Path::new(DEBOOTSTRAP).exists() {
        apt.push((
            APT_DEBOOTSTRAP,
            "the end-to-end tests build Debian 11 and 13 trees (glibc 2.31 and 2.41, Python 3.9 \
             and 3.13) and trace programs run in them (built once, kept under target/rootfs)",
        ));
    }
    if scope == Scope::Test && !Path::new(DOT).exists() {
        apt.push((
            APT_GRAPHVIZ,
            "the end-to-end tests render `locktrace report --format dot` with Graphviz",
        ));
    }
    if scope == Scope::Test && !Path::new(CHROMIUM).exists() {
        apt.push((
            APT_CHROMIUM,
            "the end-to-end tests open `locktrace report --format html` in headless Chromium",
        ));
    }
    if scope == Scope::Vm
        && [QEMU, DEBOOTSTRAP, MKFS_EXT4]
            .iter()
            .any(|p| !Path::new(p).exists())
    {
        apt.push((
            APT_VM,
            "`cargo xtask vm-test` boots Debian's kernels under KVM (qemu-system-x86) on a \
             bookworm root filesystem it builds with debootstrap into an ext4 image (e2fsprogs)",
        ));
    }
    if scope == Scope::Bench
        && [APACHE2, APACHE2_MPM_EVENT, WRK]
            .iter()
            .any(|p| !Path::new(p).exists())
    {
        apt.push((
            APT_BENCH,
            "the benchmark's web-server measurement runs its own Apache (MPM event) and \
             loads it with wrk (where apt starts the apache2 system service too, the \
             benchmark neither uses nor stops it)",
        ));
    }
    if scope == Scope::Bench
        && [MEMCACHED, MEMCASLAP]
            .iter()
            .any(|p| !Path::new(p).exists())
    {
        apt.push((
            APT_BENCH_MEMCACHED,
            "the benchmark runs its own memcached on loopback under memcaslap (a lock-heavy \
             server: full tracing against the overhead budget; where apt starts the memcached \
             system service too, the benchmark neither uses nor stops it)",
        ));
    }
    if scope == Scope::Bench && [DJANGO, MOD_WSGI].iter().any(|p| !Path::new(p).exists()) {
        apt.push((
            APT_BENCH_DJANGO,
            "the benchmark serves a Django view from its own Apache + mod_wsgi on loopback \
             (python3-django, libapache2-mod-wsgi-py3)",
        ));
    }
    if scope == Scope::Bench
        && [MARIADBD, MARIADB_INSTALL_DB, MARIADB, SYSBENCH]
            .iter()
            .any(|p| !Path::new(p).exists())
    {
        apt.push((
            APT_BENCH_MARIADB,
            "the benchmark runs its own MariaDB server (its own datadir in a temp dir, on \
             127.0.0.1) under sysbench oltp_read_write (where apt starts the mariadb system \
             service too, the benchmark neither uses nor stops it)",
        ));
    }
    if scope == Scope::Bench && !Path::new(VARNISHD).exists() {
        apt.push((
            APT_BENCH_VARNISH,
            "the benchmark runs its own varnishd (its own -n workdir, on 127.0.0.1) in front of \
             its Apache, loaded by wrk (where apt starts the varnish system service too, the \
             benchmark neither uses nor stops it)",
        ));
    }
    if !bpf_linker_ok && !Path::new(LLVM_PREFIX).join("lib/libLLVM.so").exists() {
        apt.push((
            APT_BPF_LINKER,
            "bpf-linker (the BPF linker) is built against LLVM 22",
        ));
    }

    if (!apt.is_empty() || !bpf_linker_ok) && !can_install() {
        explain_and_fail(toolchain.is_none(), &apt, bpf_linker_ok)?;
    }
    if !apt.is_empty() {
        apt_install(&apt)?;
    }
    if !bpf_linker_ok {
        install_bpf_linker()?;
    }
    match toolchain.or_else(find_toolchain) {
        Some(t) => Ok(t),
        None => bail!(
            "installed {} but still found no usable eBPF toolchain",
            APT_RUST.join(" ")
        ),
    }
}

fn find_toolchain() -> Option<Toolchain> {
    let only = env::var("XTASK_TOOLCHAIN").unwrap_or_default();
    if only != "nightly" {
        if let Some(t) = find_debian() {
            return Some(t);
        }
    }
    if only != "debian" {
        return find_nightly();
    }
    None
}

fn find_debian() -> Option<Toolchain> {
    let src = Path::new(DEBIAN_RUST_SRC);
    if !Path::new("/usr/bin/cargo").exists() || !src.join("library").is_dir() {
        return None;
    }
    // "rustc 1.96.0 (ac68faa20 2026-05-25) (built from a source tarball)"
    let out = cmd::output(Command::new("/usr/bin/rustc").arg("-V"))?;
    let full = out.split_whitespace().nth(1)?.to_owned();
    let mut parts = full.split('.');
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next()?.parse().ok()?;
    if major != 1 || minor < MIN_RUSTC_MINOR {
        return None;
    }
    // Never pair the compiler with another version's library source.
    if let Ok(src_version) = std::fs::read_to_string(src.join("src/version")) {
        if src_version.trim() != full {
            return None;
        }
    }
    Some(Toolchain::Debian {
        version: format!("{major}.{minor}"),
    })
}

fn find_nightly() -> Option<Toolchain> {
    let mut list = cmd::foreign_toolchain_command("rustup");
    list.args(["component", "list", "--toolchain", "nightly", "--installed"]);
    let installed = cmd::output(&mut list)?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        return None;
    }
    let mut rustc = cmd::foreign_toolchain_command("rustup");
    rustc.args(["run", "nightly", "rustc", "-V"]);
    let version = cmd::output(&mut rustc)?;
    let version = version
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    Some(Toolchain::RustupNightly { version })
}

/// bpf-linker 0.13.x is the first one on `PATH` (with ~/.cargo/bin first,
/// as the eBPF build sees it).
fn bpf_linker_ok() -> bool {
    let Some(path) = cmd::which("bpf-linker") else {
        return false;
    };
    let want = BPF_LINKER_VERSION
        .rsplit_once('.')
        .map_or("", |(minor, _)| minor);
    cmd::output(Command::new(path).arg("--version")).is_some_and(|v| {
        v.split_whitespace()
            .nth(1)
            .is_some_and(|v| v.starts_with(&format!("{want}.")))
    })
}

fn is_debian() -> bool {
    Path::new("/etc/debian_version").exists()
}

fn can_install() -> bool {
    is_debian() && cmd::is_root()
}

fn apt_install(groups: &[(&[&str], &str)]) -> Result<()> {
    for (pkgs, why) in groups {
        step(format!("installing {} with apt-get: {why}", pkgs.join(" ")));
    }
    cmd::run(Command::new("apt-get").args(["update", "-q"]))?;
    let mut install = Command::new("apt-get");
    install
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q"])
        .args(groups.iter().flat_map(|(pkgs, _)| pkgs.iter()));
    cmd::run(&mut install)
}

fn bpf_linker_install_args() -> Vec<String> {
    [
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--locked",
        "--force",
        "--no-default-features",
        "--features",
        "llvm-22",
    ]
    .map(String::from)
    .into()
}

fn install_bpf_linker() -> Result<()> {
    step(format!(
        "installing bpf-linker {BPF_LINKER_VERSION} into {} with `cargo install` \
         (the BPF target's linker, built against LLVM 22)",
        cmd::cargo_bin_dir().display()
    ));
    // The stable rustup cargo if there is one, else whatever cargo is on PATH.
    let mut c = if cmd::which("rustup").is_some() {
        let mut c = cmd::foreign_toolchain_command("rustup");
        c.args(["run", "stable", "cargo"]);
        c
    } else {
        cmd::foreign_toolchain_command("cargo")
    };
    c.env("LLVM_PREFIX", LLVM_PREFIX)
        .args(bpf_linker_install_args());
    cmd::run(&mut c)?;
    if !bpf_linker_ok() {
        bail!(
            "installed bpf-linker, but `bpf-linker --version` does not report {BPF_LINKER_VERSION}"
        );
    }
    Ok(())
}

/// cargo-fuzz [`CARGO_FUZZ_VERSION`] is the first one on `PATH` (with
/// ~/.cargo/bin first).
fn cargo_fuzz_ok() -> bool {
    let Some(path) = cmd::which("cargo-fuzz") else {
        return false;
    };
    // "cargo-fuzz 0.13.2"
    cmd::output(Command::new(path).arg("--version"))
        .is_some_and(|v| v.split_whitespace().nth(1) == Some(CARGO_FUZZ_VERSION))
}

/// Installs cargo-fuzz if it is not there (once: later runs find it).
pub fn ensure_cargo_fuzz() -> Result<()> {
    if cargo_fuzz_ok() {
        return Ok(());
    }
    let args = [
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
        "--force",
    ];
    if !cmd::is_root() {
        eprintln!("xtask: missing cargo-fuzz; install it, then run this again:");
        eprintln!("  cargo {}", args.join(" "));
        bail!("missing prerequisites");
    }
    step(format!(
        "installing cargo-fuzz {CARGO_FUZZ_VERSION} into {} with `cargo install` \
         (it builds and runs the fuzz targets of tracer/fuzz: the Python frame reader \
         and the ring-buffer record decoder)",
        cmd::cargo_bin_dir().display()
    ));
    let mut c = if cmd::which("rustup").is_some() {
        let mut c = cmd::foreign_toolchain_command("rustup");
        c.args(["run", "stable", "cargo"]);
        c
    } else {
        cmd::foreign_toolchain_command("cargo")
    };
    c.args(args);
    cmd::run(&mut c)?;
    if !cargo_fuzz_ok() {
        bail!(
            "installed cargo-fuzz, but `cargo-fuzz --version` does not report {CARGO_FUZZ_VERSION}"
        );
    }
    Ok(())
}

/// Says exactly what to run, then fails.
fn explain_and_fail(
    no_toolchain: bool,
    apt: &[(&[&str], &str)],
    bpf_linker_ok: bool,
) -> Result<()> {
    let sudo = if cmd::is_root() { "" } else { "sudo " };
    eprintln!("xtask: missing prerequisites; install them, then run this again:");
    if no_toolchain {
        eprintln!("  # a Rust toolchain that can build `core` for BPF, either of:");
        eprintln!("  {sudo}apt-get install {}", APT_RUST.join(" "));
        eprintln!("  rustup toolchain install nightly --component rust-src");
    }
    let others: Vec<&str> = apt
        .iter()
        .filter(|(pkgs, _)| *pkgs != APT_RUST)
        .flat_map(|(pkgs, _)| pkgs.iter().copied())
        .collect();
    if !others.is_empty() {
        if is_debian() {
            eprintln!("  {sudo}apt-get install {}", others.join(" "));
        } else {
            eprintln!("  # with your package manager: {}", others.join(" "));
        }
    }
    if !bpf_linker_ok {
        eprintln!(
            "  LLVM_PREFIX={LLVM_PREFIX} cargo {}",
            bpf_linker_install_args().join(" ")
        );
    }
    bail!("missing prerequisites")
}
