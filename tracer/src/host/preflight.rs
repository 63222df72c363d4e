//! Checks made before anything is loaded, so that bad input or a missing
//! kernel feature gives one clear line instead of a verifier dump.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};

/// Capabilities that let a non-root user load and attach the probes.
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

pub const DEFAULT_KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";
const TRACEFS: &str = "/sys/kernel/tracing";

/// Root, or CAP_BPF + CAP_PERFMON (or CAP_SYS_ADMIN).
pub fn check_privileges() -> Result<()> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| eff & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    bail!(
        "locktrace needs root (or CAP_BPF and CAP_PERFMON) to load BPF programs: run it with sudo"
    )
}

pub fn check_btf(path: &Path) -> Result<()> {
    if !path.exists() {
        bail!(
            "the kernel has no BTF ({} is missing): locktrace needs a kernel built with CONFIG_DEBUG_INFO_BTF=y",
            path.display()
        );
    }
    Ok(())
}

/// Mounts tracefs when it is not mounted (aya finds tracepoint ids there).
pub fn ensure_tracefs() -> Result<()> {
    let events = Path::new(TRACEFS).join("events");
    if events.exists() || Path::new("/sys/kernel/debug/tracing/events").exists() {
        return Ok(());
    }
    nix::mount::mount(
        Some("tracefs"),
        TRACEFS,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("tracefs is not mounted and mounting it at {TRACEFS} failed"))?;
    tracing::info!("mounted tracefs at {TRACEFS}");
    Ok(())
}

/// The byte offset of a tracepoint field, from its format file (layouts
/// differ between kernel versions).
pub fn tracepoint_field_offset(category: &str, event: &str, field: &str) -> Result<u32> {
    let path = [TRACEFS, "/sys/kernel/debug/tracing"]
        .iter()
        .map(|root| {
            Path::new(root)
                .join("events")
                .join(category)
                .join(event)
                .join("format")
        })
        .find(|p| p.exists())
        .ok_or_else(|| anyhow!("the kernel has no tracepoint {category}:{event}"))?;
    let format = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    parse_field_offset(&format, field)
        .ok_or_else(|| anyhow!("tracepoint {category}:{event} has no field {field}"))
}

fn parse_field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let decl = line.trim().strip_prefix("field:")?;
        let (decl, rest) = decl.split_once(';')?;
        let name = decl.split_whitespace().last()?.split('[').next()?;
        if name != field {
            return None;
        }
        rest.split(';')
            .find_map(|kv| kv.trim().strip_prefix("offset:"))
            .and_then(|v| v.parse().ok())
    })
}

pub fn check_pid(pid: u32) -> Result<()> {
    if pid == 0 || !Path::new(&format!("/proc/{pid}")).exists() {
        bail!("no process with pid {pid}");
    }
    Ok(())
}

/// The process (thread group) of `pid`, which may be a thread id: `/proc`
/// answers for a thread's id too (unlisted), but the filters and the kernel
/// side match processes, so a thread id as it is would trace nothing.
pub fn process_of(pid: u32) -> Result<u32> {
    check_pid(pid)?;
    crate::host::proc::tgid_of(pid).with_context(|| format!("cannot read the process of pid {pid}"))
}

/// The id of a cgroup v2 directory (its inode number, which is what the
/// kernel's `bpf_get_current_cgroup_id` returns).
pub fn cgroup_id(dir: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let fs = nix::sys::statfs::statfs(dir)
        .with_context(|| format!("cannot use --cgroup {}", dir.display()))?;
    if fs.filesystem_type() != nix::sys::statfs::CGROUP2_SUPER_MAGIC {
        bail!(
            "--cgroup {} is not a cgroup v2 directory (with cgroup v1 mounted, the v2 hierarchy \
             is often at /sys/fs/cgroup/unified)",
            dir.display()
        );
    }
    Ok(std::fs::metadata(dir)?.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORK_FORMAT: &str = "name: sched_process_fork\nID: 318\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;\n\
\tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;\n\
\tfield:char child_comm[16];\toffset:16;\tsize:16;\tsigned:0;\n\
\tfield:pid_t child_pid;\toffset:32;\tsize:4;\tsigned:1;\n";

    #[test]
    fn finds_field_offsets_in_tracepoint_formats() {
        assert_eq!(parse_field_offset(FORK_FORMAT, "child_pid"), Some(32));
        assert_eq!(parse_field_offset(FORK_FORMAT, "parent_pid"), Some(12));
        assert_eq!(parse_field_offset(FORK_FORMAT, "child_comm"), Some(16));
        assert_eq!(parse_field_offset(FORK_FORMAT, "nope"), None);
    }

    #[test]
    fn a_thread_id_stands_for_its_process() {
        let me = std::process::id();
        assert_eq!(process_of(me).unwrap(), me);
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tx.send(unsafe { libc::gettid() } as u32).unwrap();
            let _ = done.recv();
        });
        let tid = rx.recv().unwrap();
        assert_ne!(tid, me);
        assert_eq!(process_of(tid).unwrap(), me);
        drop(done_tx);
        t.join().unwrap();
        assert!(process_of(0).is_err());
    }
}
