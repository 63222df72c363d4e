//! Every `/proc` read about processes and threads (memory maps are in
//! `spaces`, blocked threads in `waitfor`).

use std::fs;

/// Threads of `pid`.
pub fn threads(pid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The process (thread group) of thread `tid`.
pub fn tgid_of(tid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status_field(&status, "Tgid:")?.parse().ok()
}

/// The value of field `name` (with its colon) of a `/proc/.../status` text.
fn status_field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(str::trim)
}

/// A thread's state letter and name (`/proc/PID/task/TID/stat`, `comm`).
pub fn thread_state(pid: u32, tid: u32) -> (String, String) {
    let stat = fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap_or_default();
    // "tid (comm) S ...": the state follows the last ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or("?")
        .to_string();
    let comm = fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_default();
    (state, comm)
}

/// Every process on the host but this one.
pub fn all_pids() -> Vec<u32> {
    let me = std::process::id();
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&p| p != me)
        .collect()
}

/// The live child processes of `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    all.flatten()
        .filter_map(|p| p.stat().ok())
        .filter(|stat| stat.ppid as u32 == pid)
        .map(|stat| stat.pid as u32)
        .collect()
}

/// The name (comm) of a process.
pub fn comm(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end_matches('\n').to_string())
}

/// Whether `pid` is a running process (a thread group leader), not another
/// thread's id.
pub fn is_process(pid: u32) -> bool {
    tgid_of(pid) == Some(pid)
}

/// Whether `pid` is a process that has not exited (not a zombie waiting to
/// be reaped: its memory is gone already).
pub fn is_running(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
        status_field(&status, "Tgid:").and_then(|t| t.parse().ok()) == Some(pid)
            && !status_field(&status, "State:")
                .is_some_and(|s| s.starts_with('Z') || s.starts_with('X'))
    })
}

/// Pids of running processes whose comm is `comm`.
pub fn pids_with_comm(comm: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let short: String = comm.chars().take(15).collect();
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim_end() == short)
                .unwrap_or(false)
        })
        .collect()
}

/// The processes in cgroup v2 directory `dir` itself (not its children).
pub fn pids_in_cgroup(dir: &std::path::Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// The live descendants of `pids` (children, their children, ...), not
/// `pids` themselves.
pub fn descendants(pids: &[u32]) -> Vec<u32> {
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    let parent_of: Vec<(u32, u32)> = all
        .flatten()
        .filter_map(|p| p.stat().ok())
        .map(|stat| (stat.pid as u32, stat.ppid as u32))
        .collect();
    let mut found: Vec<u32> = Vec::new();
    let mut frontier: Vec<u32> = pids.to_vec();
    while let Some(parent) = frontier.pop() {
        for &(pid, ppid) in &parent_of {
            if ppid == parent && !pids.contains(&pid) && !found.contains(&pid) {
                found.push(pid);
                frontier.push(pid);
            }
        }
    }
    found
}

/// When process `pid` started, in CLOCK_MONOTONIC ns (to the kernel's
/// clock tick: 10 ms).
pub fn start_time_ns(pid: u32) -> Option<u64> {
    let stat = procfs::process::Process::new(pid as i32)
        .ok()?
        .stat()
        .ok()?;
    let ticks = procfs::ticks_per_second();
    let since_boot = stat.starttime * 1_000_000_000 / ticks;
    // /proc counts from boot (CLOCK_BOOTTIME); shift to CLOCK_MONOTONIC.
    let offset = clock_ns(libc::CLOCK_BOOTTIME).checked_sub(clock_ns(libc::CLOCK_MONOTONIC))?;
    since_boot.checked_sub(offset)
}

/// A clock's time in ns.
pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The pid namespace of process `pid` ("self": ours) as the kernel names it
/// to `bpf_get_ns_current_pid_tgid`: the device (in the kernel's encoding)
/// and inode of `/proc/PID/ns/pid`.
pub fn pid_namespace(pid: &str) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(format!("/proc/{pid}/ns/pid")).ok()?;
    let dev = meta.dev();
    // stat(2) gives the userspace encoding; the kernel's dev_t is
    // MAJOR << 20 | MINOR.
    let kernel_dev = (u64::from(libc::major(dev)) << 20) | u64::from(libc::minor(dev));
    Some((kernel_dev, meta.ino()))
}

/// Thread `tid`'s id in its own pid namespace: what glibc writes into the
/// owner field of a mutex the thread holds (`NSpid:`, innermost last).
pub fn ns_tid(pid: u32, tid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
    status_field(&status, "NSpid:")?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

/// Where a process runs: its cgroup v2 path, the systemd unit and the
/// container that path names. Read from `/proc/PID/cgroup` (whoever may
/// create cgroups names them: a delegated subtree, a container runtime, so
/// the printers escape these like every name from a traced process).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Origin {
    /// The cgroup v2 path (the `0::` line), as seen from the tracer's
    /// cgroup namespace: `/system.slice/apache2.service`.
    pub cgroup: String,
    /// The innermost `*.service` or `*.scope` component of the path.
    pub unit: Option<String>,
    /// A 64-hex container id in the path (docker, containerd, CRI-O,
    /// podman: `docker-ID.scope`, `cri-containerd-ID.scope`,
    /// `libpod-ID.scope`, `/docker/ID`), the innermost one.
    pub container: Option<String>,
}

/// The origin of process `pid` (procfs), `None` when it is gone or has no
/// cgroup v2 path (a host with cgroup v1 only).
pub fn origin(pid: u32) -> Option<Origin> {
    let groups = procfs::process::Process::new(pid as i32)
        .ok()?
        .cgroups()
        .ok()?;
    let v2 = groups
        .0
        .into_iter()
        .find(|g| g.hierarchy == 0 && g.controllers.is_empty())?;
    Some(origin_of_path(&v2.pathname))
}

/// The unit and container named by cgroup v2 path `path`.
pub fn origin_of_path(path: &str) -> Origin {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let unit = parts
        .iter()
        .rev()
        .find(|p| p.ends_with(".service") || p.ends_with(".scope"))
        .map(|p| p.to_string());
    let container = parts.iter().rev().find_map(|p| {
        let id = p.trim_end_matches(".scope");
        let id = id.rsplit(['-', ':']).next().unwrap_or(id);
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
    });
    Origin {
        cgroup: path.to_string(),
        unit,
        container,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_from_cgroup_paths() {
        assert_eq!(
            origin_of_path("/system.slice/apache2.service"),
            Origin {
                cgroup: "/system.slice/apache2.service".into(),
                unit: Some("apache2.service".into()),
                container: None,
            }
        );
        let id = "0123456789abcdef".repeat(4);
        for path in [
            format!("/system.slice/docker-{id}.scope"),
            format!("/kubepods.slice/kubepods-pod1.slice/cri-containerd-{id}.scope"),
            format!("/machine.slice/libpod-{id}.scope/container"),
            format!("/docker/{id}"),
        ] {
            assert_eq!(
                origin_of_path(&path).container.as_deref(),
                Some(&*id),
                "{path}"
            );
        }
        // A service inside a container (systemd in the container): both.
        let nested = origin_of_path(&format!(
            "/system.slice/docker-{id}.scope/system.slice/nginx.service"
        ));
        assert_eq!(nested.unit.as_deref(), Some("nginx.service"));
        assert_eq!(nested.container.as_deref(), Some(&*id));
        // A user's service: the innermost unit.
        let user =
            origin_of_path("/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service");
        assert_eq!(user.unit.as_deref(), Some("foo.service"));
        let session = origin_of_path("/user.slice/user-1000.slice/session-3.scope");
        assert_eq!(session.unit.as_deref(), Some("session-3.scope"));
        assert_eq!(session.container, None);
        assert_eq!(
            origin_of_path("/"),
            Origin {
                cgroup: "/".into(),
                unit: None,
                container: None
            }
        );
        // Not 64 hex digits: no container.
        assert_eq!(origin_of_path("/docker/0123abc").container, None);
    }

    #[test]
    fn our_own_origin() {
        // Whatever cgroup this test runs in, the path is the `0::` line's.
        let text = fs::read_to_string("/proc/self/cgroup").unwrap();
        let line = text.lines().find_map(|l| l.strip_prefix("0::"));
        assert_eq!(
            origin(std::process::id()).map(|o| o.cgroup),
            line.map(str::to_string)
        );
    }
}
