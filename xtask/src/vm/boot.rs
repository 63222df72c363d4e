//! Booting one kernel of the tree under KVM and reading the checks'
//! verdicts from its serial console as they come.

use std::{
    io::{Read, Seek, SeekFrom},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context, Result};

use crate::{prereqs, step};

/// How the VM's CPU runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    /// QEMU's software emulation (multi-threaded TCG): slower, but boots
    /// any kernel.
    Tcg,
}

impl Accel {
    /// KVM, unless the host's KVM cannot boot an unmodified kernel: a
    /// PVM host (the `kvm_pvm` module, nested virtualization without
    /// hardware support) runs only kernels built as PVM guests, and
    /// Debian's stop after their real-mode setup there.
    pub fn choose(force_tcg: bool) -> (Accel, Option<&'static str>) {
        if force_tcg {
            return (Accel::Tcg, Some("--tcg"));
        }
        if Path::new("/sys/module/kvm_pvm").exists() {
            return (
                Accel::Tcg,
                Some("this host's KVM is PVM (kvm_pvm), which boots only PVM guest kernels"),
            );
        }
        if std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_err()
        {
            return (Accel::Tcg, Some("/dev/kvm cannot be opened"));
        }
        (Accel::Kvm, None)
    }

    fn args(self) -> &'static [&'static str] {
        match self {
            // The host's CPU but its ARCH_CAPABILITIES MSR, which nested
            // KVM hosts refuse to set (qemu aborts).
            Accel::Kvm => &["-enable-kvm", "-cpu", "host,-arch-capabilities"],
            Accel::Tcg => &["-accel", "tcg,thread=multi", "-cpu", "max"],
        }
    }
}

/// One check's verdict, as the guest printed it.
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// One VM to boot.
pub struct Vm {
    pub name: String,
    pub accel: Accel,
    pub cpus: u32,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The root filesystem (read-only; guest writes are discarded).
    pub image: PathBuf,
    /// Where the serial console is written.
    pub log: PathBuf,
    /// The VM is stopped after this long.
    pub limit: Duration,
}

/// What one boot gave.
pub struct Boot {
    /// `uname -r` and `-v` in the guest.
    pub kernel: Option<String>,
    pub checks: Vec<Check>,
    /// The guest got to its end (`vm-test: done`).
    pub finished: bool,
    /// Why it did not, when the host knows (time limit, qemu's status).
    pub failure: Option<String>,
    pub seconds: f64,
    pub log: PathBuf,
    /// The kernel's own reports of a stall (soft lockup, RCU stall, hung
    /// task), first lines only: each fails the boot, whatever the checks
    /// said.
    pub stalls: Vec<String>,
}

/// The first line of each kind of stall report the kernel prints.
const STALL_REPORTS: &[&str] = &[
    "watchdog: BUG: soft lockup",
    "rcu: INFO: ",
    "blocked for more than",
];

/// The kernel and initrd of `flavour` (`amd64`, `rt-amd64`) in `tree`'s
/// /boot, the ones the packages installed.
pub fn kernel_files(tree: &Path, flavour: &str) -> Result<(PathBuf, PathBuf)> {
    let boot = tree.join("boot");
    let mut found = None;
    for entry in std::fs::read_dir(&boot)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let Some(version) = name.strip_prefix("vmlinuz-") else {
            continue;
        };
        // 6.1.0-N-amd64 and 6.1.0-N-rt-amd64: the flavour is what follows
        // the ABI number.
        let tail = version.splitn(3, '-').nth(2).unwrap_or_default();
        if tail == flavour {
            found = Some(version.to_owned());
        }
    }
    let version = found.ok_or_else(|| anyhow!("no {flavour} kernel in {}", boot.display()))?;
    let kernel = boot.join(format!("vmlinuz-{version}"));
    let initrd = boot.join(format!("initrd.img-{version}"));
    if !initrd.exists() {
        return Err(anyhow!("{} is missing", initrd.display()));
    }
    Ok((kernel, initrd))
}

/// Boots `vm` with `params` (words for guest.sh) on its kernel command
/// line, prints each `vm-test:` line of the console and each stall report
/// of the kernel as they come, and stops the VM after its limit.
pub fn boot(vm: &Vm, params: &str) -> Result<Boot> {
    let (name, log, limit) = (&vm.name, &vm.log, vm.limit);
    let _ = std::fs::remove_file(log);
    let started = Instant::now();
    let mut qemu = Command::new(prereqs::QEMU);
    qemu.args(vm.accel.args())
        .arg("-smp")
        .arg(vm.cpus.to_string())
        .args(["-m", "2048"])
        .args(["-nodefaults", "-no-reboot", "-display", "none"])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .arg("-kernel")
        .arg(&vm.kernel)
        .arg("-initrd")
        .arg(&vm.initrd)
        // No crypto self-tests: under emulation one spun for the whole
        // time limit once (a soft lockup in cryptomgr_test). A soft lockup
        // report shows every CPU's stack, not only the stuck one's.
        .arg("-append")
        .arg(format!(
            "root=/dev/vda ro console=ttyS0 panic=-1 loglevel=4 cryptomgr.notests \
             softlockup_all_cpu_backtrace=1 init=/opt/locktrace/guest.sh {params}"
        ))
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=virtio,snapshot=on",
            vm.image.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    step(format!(
        "booting {name} ({}, {} CPUs, {params})",
        vm.kernel.display(),
        vm.cpus
    ));
    let mut child = qemu.spawn().context("cannot start qemu-system-x86_64")?;
    let mut result = Boot {
        kernel: None,
        checks: Vec::new(),
        finished: false,
        failure: None,
        seconds: 0.0,
        log: log.to_path_buf(),
        stalls: Vec::new(),
    };
    let mut reader = ConsoleReader::default();
    loop {
        let exited = child.try_wait()?;
        for line in reader.new_lines(log) {
            let Some(said) = line.strip_prefix("vm-test: ") else {
                if STALL_REPORTS.iter().any(|r| line.contains(r)) {
                    eprintln!("xtask: [{name}] kernel: {line}");
                    result.stalls.push(line);
                }
                continue;
            };
            eprintln!("xtask: [{name}] {said}");
            result.note(said);
        }
        if let Some(status) = exited {
            if !result.finished {
                result.failure = Some(format!(
                    "the VM stopped before the checks ended (qemu: {status}; a kernel panic?)"
                ));
            }
            break;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            result.failure = Some(format!("stopped after {}s", limit.as_secs()));
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    result.seconds = started.elapsed().as_secs_f64();
    Ok(result)
}

impl Boot {
    fn note(&mut self, said: &str) {
        if let Some(k) = said.strip_prefix("kernel ") {
            self.kernel = Some(k.to_owned());
        } else if said == "done" {
            self.finished = true;
        } else if let Some(name) = said.strip_prefix("PASS ") {
            self.checks.push(Check {
                name: name.to_owned(),
                passed: true,
                detail: String::new(),
            });
        } else if let Some(rest) = said.strip_prefix("FAIL ") {
            let (name, detail) = rest.split_once(": ").unwrap_or((rest, ""));
            self.checks.push(Check {
                name: name.to_owned(),
                passed: false,
                detail: detail.to_owned(),
            });
        }
    }

    pub fn passed(&self) -> bool {
        self.finished
            && self.failure.is_none()
            && self.stalls.is_empty()
            && self.checks.iter().all(|c| c.passed)
    }
}

/// Reads the complete lines appended to the console log since last time.
#[derive(Default)]
struct ConsoleReader {
    offset: u64,
    partial: String,
}

impl ConsoleReader {
    fn new_lines(&mut self, log: &Path) -> Vec<String> {
        let mut bytes = Vec::new();
        if let Ok(mut f) = std::fs::File::open(log) {
            if f.seek(SeekFrom::Start(self.offset)).is_ok() {
                let _ = f.read_to_end(&mut bytes);
            }
        }
        self.offset += bytes.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&bytes));
        let mut lines = Vec::new();
        while let Some(end) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=end).collect();
            lines.push(line.trim_end_matches(['\r', '\n']).to_owned());
        }
        lines
    }
}
