//! Reading another process's memory without letting it stall the
//! collector.
//!
//! A read of another process's memory faults its pages in, and a page of a
//! file on a FUSE file system is read by that file system's daemon: a
//! process of another user can map a file of its own FUSE mount, point its
//! (forged) CPython frames there, and never answer. Linux has no remote
//! read that refuses to fault, a FUSE request once sent is waited for
//! uninterruptibly (even by a thread being killed), and checking the
//! mapping first races with the process remapping it. So the reads are
//! made by a helper process (`locktrace __read-memory`, this binary,
//! holding nothing but two pipes) and waited for with a deadline (0.3 s
//! when the helper waits for a FUSE daemon, 2 s otherwise): a read that
//! blocks in the kernel costs a helper, which is left behind (it ends
//! when the file system answers or goes away), never the collector. The
//! process whose memory stalled is not read again; after [`MAX_ABANDONED`]
//! helpers left behind, no process's memory is read any more.
//!
//! Without a helper (`use_helper` not called: the library's own tests),
//! reads are made in place.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The helper's subcommand (not in `--help`).
pub const SUBCOMMAND: &str = "__read-memory";

/// Bytes per request: larger reads are split.
const CHUNK: usize = 64 << 10;

/// How long a read may take before the helper is looked at: one waiting
/// for a FUSE daemon's answer is then given up.
const DEADLINE: Duration = Duration::from_millis(300);

/// How long any other read may take: a helper that is running (a loaded
/// machine) or waits for something else (a slow disk, a network file
/// system).
const LONG_DEADLINE: Duration = Duration::from_secs(2);

/// Where a thread waiting for a FUSE daemon's answer sleeps
/// (`fs/fuse/dev.c`), as `/proc/PID/wchan` names it.
const FUSE_WAIT: &str = "request_wait_answer";

/// Helpers left blocked before reading stops for good.
pub const MAX_ABANDONED: usize = 8;

/// How one read went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Read,
    /// Unmapped, unreadable, or the process gone.
    Fault,
    /// The read blocked in the kernel (now, or for this process before):
    /// the process's memory is not read.
    Stalled,
}

struct Helper {
    child: Child,
    to: ChildStdin,
    from: ChildStdout,
}

#[derive(Default)]
struct State {
    program: Option<PathBuf>,
    helper: Option<Helper>,
    /// Processes whose memory stalled a read.
    stalled: HashSet<u32>,
    /// Helpers left blocked, reaped when they end.
    abandoned: Vec<Child>,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);
static STALLS: AtomicU64 = AtomicU64::new(0);

/// Reads are made by helper processes running `program` (this binary).
pub fn use_helper(program: PathBuf) {
    let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
    state.get_or_insert_with(State::default).program = Some(program);
}

/// Reads that blocked in the kernel so far (each cost a helper).
pub fn stalls() -> u64 {
    STALLS.load(Ordering::Relaxed)
}

/// Whether process `pid`'s memory stalled a read (or reading has stopped).
pub fn has_stalled(pid: u32) -> bool {
    let guard = STATE.lock().unwrap_or_else(|e| e.into_inner());
    guard
        .as_ref()
        .is_some_and(|s| s.stalled.contains(&pid) || s.abandoned.len() >= MAX_ABANDONED)
}

/// Fills `buf` from `addr` in process `pid`.
pub fn read(pid: u32, addr: u64, buf: &mut [u8]) -> Outcome {
    let mut guard = STATE.lock().unwrap_or_else(|e| e.into_inner());
    let Some(state) = guard.as_mut().filter(|s| s.program.is_some()) else {
        drop(guard);
        return read_in_place(pid, addr, buf);
    };
    if state.stalled.contains(&pid) || state.abandoned.len() >= MAX_ABANDONED {
        return Outcome::Stalled;
    }
    let mut done = 0;
    while done < buf.len() {
        let end = (done + CHUNK).min(buf.len());
        match state.request(pid, addr + done as u64, &mut buf[done..end]) {
            Outcome::Read => done = end,
            other => return other,
        }
    }
    Outcome::Read
}

impl State {
    fn request(&mut self, pid: u32, addr: u64, buf: &mut [u8]) -> Outcome {
        self.abandoned
            .retain_mut(|child| !matches!(child.try_wait(), Ok(Some(_))));
        if self.helper.is_none() {
            match self.spawn() {
                Ok(helper) => self.helper = Some(helper),
                Err(e) => {
                    tracing::debug!("cannot start a memory reader: {e}");
                    return Outcome::Fault;
                }
            }
        }
        let helper = self.helper.as_mut().expect("just made");
        let mut request = [0u8; 16];
        request[0..4].copy_from_slice(&pid.to_le_bytes());
        request[4..8].copy_from_slice(&(buf.len() as u32).to_le_bytes());
        request[8..16].copy_from_slice(&addr.to_le_bytes());
        if helper.to.write_all(&request).is_err() {
            self.end_helper();
            return Outcome::Fault;
        }
        match wait_readable(helper) {
            Ready::Yes => {}
            Ready::Broken => {
                self.end_helper();
                return Outcome::Fault;
            }
            Ready::Blocked => {
                STALLS.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    pid,
                    addr = format_args!("{addr:#x}"),
                    "reading a process's memory blocked in the kernel (a file system that does \
                     not answer): its memory is not read again"
                );
                self.stalled.insert(pid);
                if let Some(mut helper) = self.helper.take() {
                    let _ = helper.child.kill();
                    self.abandoned.push(helper.child);
                }
                if self.abandoned.len() >= MAX_ABANDONED {
                    tracing::warn!(
                        "{MAX_ABANDONED} memory reads blocked in the kernel: no process's memory \
                         is read any more (Python frames, blocked threads' stacks)"
                    );
                }
                return Outcome::Stalled;
            }
        }
        let mut header = [0u8; 8];
        if helper.from.read_exact(&mut header).is_err() {
            self.end_helper();
            return Outcome::Fault;
        }
        let n = i64::from_le_bytes(header);
        if n < 0 || n as usize != buf.len() {
            // A short read is sent whole (the helper's header says how
            // much); take it and call it a fault.
            if n > 0 {
                let mut skip = vec![0u8; n as usize];
                if helper.from.read_exact(&mut skip).is_err() {
                    self.end_helper();
                }
            }
            return Outcome::Fault;
        }
        if helper.from.read_exact(buf).is_err() {
            self.end_helper();
            return Outcome::Fault;
        }
        Outcome::Read
    }

    fn spawn(&self) -> std::io::Result<Helper> {
        let program = self.program.as_ref().expect("checked by read");
        let mut child = Command::new(program)
            .arg(SUBCOMMAND)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let to = child.stdin.take().expect("piped");
        let from = child.stdout.take().expect("piped");
        Ok(Helper { child, to, from })
    }

    /// Ends a helper that broke (it exited, or its pipe is gone).
    fn end_helper(&mut self) {
        if let Some(mut helper) = self.helper.take() {
            let _ = helper.child.kill();
            let _ = helper.child.wait();
        }
    }
}

enum Ready {
    Yes,
    Broken,
    Blocked,
}

/// Waits for the helper's answer: until [`DEADLINE`] if it then waits for
/// a FUSE daemon, else until [`LONG_DEADLINE`].
fn wait_readable(helper: &Helper) -> Ready {
    let started = Instant::now();
    let mut limit = DEADLINE;
    loop {
        let left = limit.saturating_sub(started.elapsed());
        let mut fd = libc::pollfd {
            fd: helper.from.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: poll(2) on one valid pollfd we own.
        let n = unsafe { libc::poll(&mut fd, 1, ms) };
        if n > 0 {
            return if fd.revents & libc::POLLIN != 0 {
                Ready::Yes
            } else {
                Ready::Broken
            };
        }
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        if started.elapsed() < limit {
            continue;
        }
        if limit == DEADLINE && !waits_for_fuse(helper.child.id()) {
            limit = LONG_DEADLINE;
            continue;
        }
        return Ready::Blocked;
    }
}

/// Whether process `pid` sleeps waiting for a FUSE daemon's answer.
fn waits_for_fuse(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/wchan")).is_ok_and(|w| w.trim() == FUSE_WAIT)
}

/// `process_vm_readv` of `buf.len()` bytes at `addr` in `pid`: the bytes
/// read, or -1.
fn read_vm(pid: u32, addr: u64, buf: &mut [u8]) -> isize {
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: `local` describes `buf`, valid for writes of its length;
    // `remote` is only dereferenced by the kernel, in the other process.
    unsafe { libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0) }
}

fn read_in_place(pid: u32, addr: u64, buf: &mut [u8]) -> Outcome {
    let n = read_vm(pid, addr, buf);
    if n >= 0 && n as usize == buf.len() {
        Outcome::Read
    } else {
        Outcome::Fault
    }
}

/// The helper: answers requests on standard input until it closes. Each
/// request is 16 bytes (pid u32, length u32, address u64, little-endian);
/// each answer the bytes read as an i64 (-1: none), then those bytes.
pub fn serve() -> ExitCode {
    // SAFETY: prctl(2) and setpgid(2) with constant arguments. It dies
    // with the collector, and a blocked one left behind is not a member of
    // the collector's process group (which a terminal or a test harness
    // waits for).
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        libc::setpgid(0, 0);
    }
    let mut input = std::io::stdin().lock();
    let mut output = std::io::stdout().lock();
    let mut request = [0u8; 16];
    let mut buf = vec![0u8; CHUNK];
    while input.read_exact(&mut request).is_ok() {
        let pid = u32::from_le_bytes(request[0..4].try_into().expect("4 bytes"));
        let len =
            (u32::from_le_bytes(request[4..8].try_into().expect("4 bytes")) as usize).min(CHUNK);
        let addr = u64::from_le_bytes(request[8..16].try_into().expect("8 bytes"));
        let n = read_vm(pid, addr, &mut buf[..len]).max(-1);
        let sent = output
            .write_all(&(n as i64).to_le_bytes())
            .and_then(|()| output.write_all(&buf[..n.max(0) as usize]))
            .and_then(|()| output.flush());
        if sent.is_err() {
            break;
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_place_reads_our_own_memory_and_faults_on_address_zero() {
        let word = 0x1122_3344_5566_7788u64;
        let mut buf = [0u8; 8];
        let pid = std::process::id();
        assert_eq!(
            read_in_place(pid, &word as *const u64 as u64, &mut buf),
            Outcome::Read
        );
        assert_eq!(u64::from_ne_bytes(buf), word);
        assert_eq!(read_in_place(pid, 0, &mut buf), Outcome::Fault);
    }

    #[test]
    fn a_sleeping_or_running_process_does_not_wait_for_fuse() {
        let spinner = Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .unwrap();
        let sleeper = Command::new("sleep").arg("5").spawn().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(!waits_for_fuse(spinner.id()));
        assert!(!waits_for_fuse(sleeper.id()));
        // wchan names where a sleeper sleeps (root reads it).
        let wchan = std::fs::read_to_string(format!("/proc/{}/wchan", sleeper.id())).unwrap();
        assert!(wchan.contains("sleep"), "{wchan}");
        for mut child in [spinner, sleeper] {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}
