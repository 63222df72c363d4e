//! Starting the traced command without a race: the child is forked and waits
//! on a pipe until the probes are attached, then execs. Must run before any
//! other thread exists (between fork and exec only async-signal-safe calls).

use std::{
    ffi::CString,
    os::fd::{AsRawFd, OwnedFd},
};

use anyhow::{anyhow, Context, Result};
use nix::{
    fcntl::OFlag,
    sys::{
        signal::{kill, Signal},
        wait::{waitpid, WaitStatus},
    },
    unistd::{execvp, fork, pipe2, ForkResult, Pid},
};

/// A forked child waiting to exec its command.
pub struct Suspended {
    pub pid: Pid,
    go: OwnedFd,
    exec_error: OwnedFd,
    program: String,
}

pub fn spawn_suspended(command: &[String]) -> Result<Suspended> {
    let args: Vec<CString> = command
        .iter()
        .map(|a| CString::new(a.as_bytes()).map_err(|_| anyhow!("the command contains a NUL byte")))
        .collect::<Result<_>>()?;
    let (go_read, go_write) = pipe2(OFlag::O_CLOEXEC).context("pipe")?;
    let (err_read, err_write) = pipe2(OFlag::O_CLOEXEC).context("pipe")?;
    // SAFETY: called while the process is single-threaded; the child only
    // makes async-signal-safe calls before exec.
    match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            drop(go_write);
            drop(err_read);
            let mut byte = [0u8; 1];
            // SAFETY: plain read(2) on our own pipe.
            let n = unsafe { libc::read(go_read.as_raw_fd(), byte.as_mut_ptr().cast(), 1) };
            if n != 1 {
                // The tracer went away before releasing us: never run untraced.
                unsafe { libc::_exit(127) };
            }
            let errno = match execvp(&args[0], &args) {
                Ok(never) => match never {},
                Err(e) => e as i32,
            };
            let bytes = errno.to_ne_bytes();
            // SAFETY: write(2) and _exit(2) are async-signal-safe.
            unsafe {
                libc::write(err_write.as_raw_fd(), bytes.as_ptr().cast(), bytes.len());
                libc::_exit(127);
            }
        }
        ForkResult::Parent { child } => Ok(Suspended {
            pid: child,
            go: go_write,
            exec_error: err_read,
            program: command[0].clone(),
        }),
    }
}

impl Suspended {
    /// Lets the child exec; fails (and reaps it) if exec fails.
    pub fn release(self) -> Result<Pid> {
        let pid = self.pid;
        nix::unistd::write(&self.go, &[1]).context("cannot release the command")?;
        drop(self.go);
        let mut buf = [0u8; 4];
        let n = nix::unistd::read(&self.exec_error, &mut buf).unwrap_or(0);
        if n == 4 {
            let _ = waitpid(pid, None);
            let errno = nix::errno::Errno::from_raw(i32::from_ne_bytes(buf));
            return Err(anyhow!("cannot run `{}`: {}", self.program, errno.desc()));
        }
        Ok(pid)
    }

    /// Ends the child without running the command.
    pub fn abort(self) {
        let _ = kill(self.pid, Signal::SIGKILL);
        let _ = waitpid(self.pid, None);
    }
}

/// The shell-style exit status of a finished child.
/// Waits (at most a second) until the released child runs its own program
/// (its executable is no longer ours) and the dynamic loader has mapped
/// its libraries (a libc is mapped: the direct dependencies, libpython of
/// an embedding program among them, come in one pass).
pub fn wait_for_exec(pid: Pid) {
    use std::time::{Duration, Instant};
    let ours = std::fs::read_link("/proc/self/exe").ok();
    let exe = format!("/proc/{pid}/exe");
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        match std::fs::read_link(&exe) {
            Ok(p) if Some(&p) != ours.as_ref() => break,
            Err(_) => return, // exited (or a failed exec)
            _ => std::thread::sleep(Duration::from_micros(200)),
        }
    }
    // A static program maps no libc: give up after a short while.
    let deadline = Instant::now() + Duration::from_millis(200);
    while Instant::now() < deadline {
        let libc_mapped =
            crate::host::spaces::read_proc_maps(pid.as_raw() as u32).is_some_and(|maps| {
                maps.iter()
                    .any(|m| m.executable && crate::host::elf::is_lock_library(&m.path))
            });
        if libc_mapped {
            return;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

pub fn exit_status(status: WaitStatus) -> i32 {
    match status {
        WaitStatus::Exited(_, code) => code,
        WaitStatus::Signaled(_, signal, _) => 128 + signal as i32,
        _ => 1,
    }
}
