//! Starting the traced command without a race: the child is forked and waits
//! on a pipe until the probes are attached, then execs. Must run before any
//! other thread exists (between fork and exec only async-signal-safe calls).
//!
//! The child also asks to be traced (ptrace) before its exec, so that it
//! can be held at its program's entry point ([`run_to_entry`]): its
//! libraries are mapped (libpython among them) and none of its code has
//! run, so a Python program is described to the kernel side before it
//! creates its first lock, however short it lives.

use std::{
    ffi::CString,
    os::fd::{AsRawFd, OwnedFd},
};

use anyhow::{anyhow, Context, Result};
use nix::sys::ptrace;
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
            // Stop at the exec (see `run_to_entry`); if refused, the
            // command just runs.
            let _ = ptrace::traceme();
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

/// The released child, held by ptrace at its program's entry point; it
/// runs on (untraced) when this is dropped.
pub struct AtEntry {
    pid: Pid,
}

impl Drop for AtEntry {
    fn drop(&mut self) {
        let _ = ptrace::detach(self.pid, None);
    }
}

/// `AT_ENTRY` of an auxiliary vector: the program's entry point.
const AT_ENTRY: u64 = 9;

/// Runs the released child (stopped by its exec, see `spawn_suspended`) up
/// to its program's entry point, with a breakpoint there: the dynamic
/// loader has then mapped its libraries, and no code of the program has
/// run. None if that failed (the child is let go; it was not stopped, or
/// could not be held).
pub fn run_to_entry(pid: Pid) -> Option<AtEntry> {
    let held = AtEntry { pid };
    if !matches!(
        waitpid(pid, None),
        Ok(WaitStatus::Stopped(_, Signal::SIGTRAP))
    ) {
        // Not stopped at an exec (the exec failed, or tracing was refused).
        std::mem::forget(held);
        return None;
    }
    let auxv = std::fs::read(format!("/proc/{pid}/auxv")).ok()?;
    let entry = auxv
        .chunks_exact(16)
        .map(|p| {
            let word = |b: &[u8]| u64::from_ne_bytes(b.try_into().unwrap());
            (word(&p[..8]), word(&p[8..]))
        })
        .find(|(key, _)| *key == AT_ENTRY)?
        .1;
    let at = entry as ptrace::AddressType;
    let original = ptrace::read(pid, at).ok()?;
    // An int3 over the entry's first byte (restored below).
    ptrace::write(pid, at, (original & !0xff) | 0xcc).ok()?;
    let mut signal = None;
    // Signals that arrive meanwhile are passed on.
    for _ in 0..16 {
        ptrace::cont(pid, signal).ok()?;
        match waitpid(pid, None).ok()? {
            WaitStatus::Stopped(_, Signal::SIGTRAP) => {
                let mut regs = ptrace::getregs(pid).ok()?;
                ptrace::write(pid, at, original).ok()?;
                if regs.rip != entry + 1 {
                    return None;
                }
                regs.rip = entry;
                ptrace::setregs(pid, regs).ok()?;
                return Some(held);
            }
            WaitStatus::Stopped(_, other) => signal = Some(other),
            _ => {
                // Exited before its entry point.
                std::mem::forget(held);
                return None;
            }
        }
    }
    None
}

/// Waits (at most 5 s each) until the released child runs its own program
/// (its executable is no longer ours) and the dynamic loader has mapped
/// its libraries (a libc is mapped: the direct dependencies, libpython of
/// an embedding program among them, come in one pass).
pub fn wait_for_exec(pid: Pid) {
    use std::time::{Duration, Instant};
    let ours = std::fs::read_link("/proc/self/exe").ok();
    let exe = format!("/proc/{pid}/exe");
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match std::fs::read_link(&exe) {
            Ok(p) if Some(&p) != ours.as_ref() => break,
            Err(_) => return, // exited (or a failed exec)
            _ => std::thread::sleep(Duration::from_micros(200)),
        }
    }
    // A static program maps no libc. A dynamic one on a loaded machine may
    // take a while to be scheduled: wait up to 5 s (an embedding program
    // checked before its libpython is mapped would get no Python frames).
    if !crate::host::elf::has_interpreter(std::path::Path::new(&exe)) {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let Some(maps) = crate::host::spaces::read_proc_maps(pid.as_raw() as u32) else {
            return; // exited
        };
        if maps
            .iter()
            .any(|m| m.executable && crate::host::elf::is_lock_library(&m.path))
        {
            return;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// The shell-style exit status of a finished child.
pub fn exit_status(status: WaitStatus) -> i32 {
    match status {
        WaitStatus::Exited(_, code) => code,
        WaitStatus::Signaled(_, signal, _) => 128 + signal as i32,
        _ => 1,
    }
}

/// Whether `pid` is in the foreground process group of the tracer's
/// controlling terminal: then a Ctrl-C typed there reached it already (the
/// terminal signals the whole group), and forwarding the tracer's copy
/// would make it two. False without a terminal.
pub fn in_terminal_foreground(pid: Pid) -> bool {
    let Ok(tty) = std::fs::File::open("/dev/tty") else {
        return false;
    };
    // SAFETY: tcgetpgrp and getpgid only read kernel state; the fd is ours.
    let (foreground, group) = unsafe {
        (
            libc::tcgetpgrp(tty.as_raw_fd()),
            libc::getpgid(pid.as_raw()),
        )
    };
    foreground > 0 && foreground == group
}
