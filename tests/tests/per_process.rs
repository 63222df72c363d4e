//! `watch --pid`: breakpoints only in the traced process and its children.
//! A process that is not traced keeps the original instructions at every
//! probed offset (it pays nothing); the traced one has breakpoints there
//! while tracing, and the original instructions again after the tracer
//! exits. Children that existed when tracing started are traced; a child
//! forked while tracing gets its probes as soon as it is seen.
//!
//! `watch --cgroup` likewise: only the cgroup's processes get breakpoints,
//! one started there after the tracer as soon as it is seen.
//!
//! The processes run on a private copy of libc (`--libc`), so that another
//! tracer on the machine cannot put breakpoints in them.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use locktrace_e2e::{
    assert_one_inversion_of, copy_executable, fixture, host_libc, require_root, TestCgroup,
    Variant, Watcher,
};

const LOADER: &str = "/lib64/ld-linux-x86-64.so.2";
/// x86's breakpoint instruction (int3).
const INT3: u8 = 0xcc;

/// A copy of the host's libc (a new inode) in `dir`.
fn copy_libc(dir: &Path) -> PathBuf {
    let copy = dir.join("libc.so.6");
    copy_executable(&host_libc(), &copy);
    copy
}

/// A program started on the libc in `lib_dir`, killed when dropped.
struct OnCopy {
    child: Child,
}

impl OnCopy {
    fn start(lib_dir: &Path, program: &Path) -> (Self, ChildStdin, BufReader<ChildStdout>) {
        let mut cmd = Command::new(LOADER);
        cmd.arg("--library-path").arg(lib_dir).arg(program);
        Self::spawn(cmd, program)
    }

    /// Started in `cgroup` (moved there before it execs).
    fn start_in(
        cgroup: &TestCgroup,
        lib_dir: &Path,
        program: &Path,
    ) -> (Self, ChildStdin, BufReader<ChildStdout>) {
        let args = [
            OsStr::new("--library-path"),
            lib_dir.as_os_str(),
            program.as_os_str(),
        ];
        Self::spawn(cgroup.command(Path::new(LOADER), &args), program)
    }

    fn spawn(mut cmd: Command, program: &Path) -> (Self, ChildStdin, BufReader<ChildStdout>) {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        (OnCopy { child }, stdin, stdout)
    }
}

impl Drop for OnCopy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The number after `label ` on the next line of `out`.
fn read_number(out: &mut BufReader<ChildStdout>, label: &str) -> u32 {
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    line.strip_prefix(label)
        .and_then(|rest| rest.trim().parse().ok())
        .unwrap_or_else(|| panic!("expected `{label} N`, read {line:?}"))
}

fn expect_line(out: &mut BufReader<ChildStdout>, expected: &str) {
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), expected, "the fixture's output");
}

/// The probed file offsets, from the tracer's `probe placement` log lines.
fn probed_offsets(log: &str) -> Vec<u64> {
    let offsets: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("probe placement"))
        .filter_map(|l| l.split("file_offset=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(
        offsets.len() >= 20,
        "the log names the probed offsets:\n{log}"
    );
    offsets
}

/// The byte at file offset `offset` of `file` in the memory of `pid`.
fn byte_in_memory(pid: u32, file: &Path, offset: u64) -> u8 {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let vaddr = maps
        .lines()
        .filter(|l| l.ends_with(file.to_str().unwrap()))
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (start, end) = f[0].split_once('-')?;
            let start = u64::from_str_radix(start, 16).ok()?;
            let end = u64::from_str_radix(end, 16).ok()?;
            let map_offset = u64::from_str_radix(f[2], 16).ok()?;
            (map_offset <= offset && offset < map_offset + (end - start))
                .then(|| start + offset - map_offset)
        })
        .unwrap_or_else(|| panic!("process {pid} maps offset {offset} of {}", file.display()));
    let mut mem = File::open(format!("/proc/{pid}/mem")).unwrap();
    mem.seek(SeekFrom::Start(vaddr)).unwrap();
    let mut byte = [0u8];
    mem.read_exact(&mut byte).unwrap();
    byte[0]
}

/// The number after `label ` on the next line of `out`, as a u64.
fn read_address(out: &mut BufReader<ChildStdout>, label: &str) -> u64 {
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    line.strip_prefix(label)
        .and_then(|rest| rest.trim().parse().ok())
        .unwrap_or_else(|| panic!("expected `{label} N`, read {line:?}"))
}

/// The file offset of address `vaddr` of `file` as process `pid` maps it.
fn file_offset(pid: u32, file: &Path, vaddr: u64) -> u64 {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    maps.lines()
        .filter(|l| l.ends_with(file.to_str().unwrap()))
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (start, end) = f[0].split_once('-')?;
            let start = u64::from_str_radix(start, 16).ok()?;
            let end = u64::from_str_radix(end, 16).ok()?;
            let map_offset = u64::from_str_radix(f[2], 16).ok()?;
            (start <= vaddr && vaddr < end).then(|| vaddr - start + map_offset)
        })
        .unwrap_or_else(|| panic!("process {pid} maps {vaddr:#x} from {}", file.display()))
}

/// Mutex unlocks are not probed (a held mutex is checked against its owner
/// field instead): in a traced process, `pthread_mutex_unlock` keeps its
/// original code while `pthread_mutex_lock` has its breakpoint.
#[test]
fn mutex_unlock_carries_no_breakpoint() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let libc = copy_libc(dir.path());
    let (traced, mut stdin, mut out) =
        OnCopy::start(dir.path(), &fixture("lock_addresses", Variant::NoFp));
    let pid = read_number(&mut out, "pid ");
    let lock = read_address(&mut out, "lock ");
    let unlock = read_address(&mut out, "unlock ");
    let pid_arg = pid.to_string();
    let watcher = Watcher::start_logging(
        &["--libc", libc.to_str().unwrap(), "--pid", &pid_arg],
        "info,locktrace=debug",
    );
    // Probes go within the first instructions of a function.
    let window = |start: u64| -> Vec<u64> {
        let at = file_offset(pid, &libc, start);
        (at..at + 64).collect()
    };
    let (_, in_lock) = compare(pid, &libc, &window(lock));
    assert_eq!(
        in_lock.len(),
        1,
        "pthread_mutex_lock has its breakpoint (the test reads the right code)"
    );
    let (changed, in_unlock) = compare(pid, &libc, &window(unlock));
    assert!(
        changed.is_empty() && in_unlock.is_empty(),
        "pthread_mutex_unlock keeps its original code; changed at {changed:?}"
    );
    drop(watcher.stop());
    stdin.write_all(b"done\n").unwrap();
    drop(traced);
}

/// The offsets (of `offsets`) where process `pid`'s memory differs from
/// the file, and the offsets that hold a breakpoint.
fn compare(pid: u32, file: &Path, offsets: &[u64]) -> (Vec<u64>, Vec<u64>) {
    let original = std::fs::read(file).unwrap();
    let mut changed = Vec::new();
    let mut breakpoints = Vec::new();
    for &offset in offsets {
        let byte = byte_in_memory(pid, file, offset);
        if byte != original[offset as usize] {
            changed.push(offset);
        }
        if byte == INT3 {
            breakpoints.push(offset);
        }
    }
    (changed, breakpoints)
}

#[test]
fn only_the_traced_process_and_its_children_get_breakpoints() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let libc = copy_libc(dir.path());
    let (traced, mut stdin, mut out) =
        OnCopy::start(dir.path(), &fixture("forked_ab_ba", Variant::NoFp));
    let parent = read_number(&mut out, "pid ");
    let first_child = read_number(&mut out, "child ");
    let (bystander, _bystander_in, _bystander_out) =
        OnCopy::start(dir.path(), &fixture("forked_ab_ba", Variant::NoFp));
    let bystander_pid = bystander.child.id();

    let parent_arg = parent.to_string();
    let watcher = Watcher::start_logging(
        &["--libc", libc.to_str().unwrap(), "--pid", &parent_arg],
        "info,locktrace=debug",
    );
    let offsets = probed_offsets(&watcher.stderr_so_far());

    for (pid, who) in [(parent, "the traced process"), (first_child, "its child")] {
        let (_, breakpoints) = compare(pid, &libc, &offsets);
        assert_eq!(
            breakpoints.len(),
            offsets.len(),
            "{who} [{pid}] has a breakpoint at every probed offset"
        );
    }
    let (changed, _) = compare(bystander_pid, &libc, &offsets);
    assert!(
        changed.is_empty(),
        "a process that is not traced keeps its original instructions at the probed offsets; changed: {changed:?}"
    );

    // The child forked before tracing began.
    stdin.write_all(b"go\n").unwrap();
    expect_line(&mut out, "done");
    // A child forked now gets its probes as soon as it is seen.
    stdin.write_all(b"fork\n").unwrap();
    let late_child = read_number(&mut out, "late ");
    watcher.wait_for_log(
        &["probes put in a new process", &format!("pid={late_child}")],
        Duration::from_secs(10),
    );
    stdin.write_all(b"late\n").unwrap();
    expect_line(&mut out, "done");

    watcher.wait_for_finding_of(first_child, Duration::from_secs(10));
    let run = watcher.stop();
    assert_one_inversion_of(
        &run,
        first_child,
        "the child forked before tracing",
        &["fork_a", "fork_b"],
    );
    // The late child runs the same code: its inversion has the first one's
    // shape, so it is counted as a repeat (the only one: the parent takes
    // no locks), not reported again.
    assert_eq!(
        run.report.summary.repeated_findings,
        1,
        "the child forked while tracing [{late_child}] repeats the inversion\n{}",
        run.describe()
    );
    assert!(
        run.report.summary.processes_probed_late >= 1,
        "the summary counts the child probed late\n{}",
        run.describe()
    );
    let (changed, _) = compare(parent, &libc, &offsets);
    assert!(
        changed.is_empty(),
        "after the tracer exits, the traced process has its original instructions again; changed: {changed:?}"
    );
    drop(stdin);
    drop(traced);
}

#[test]
fn only_processes_of_the_cgroup_get_breakpoints() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let libc = copy_libc(dir.path());
    let cgroup = TestCgroup::new("per-process");
    let watcher = Watcher::start_logging(
        &[
            "--libc",
            libc.to_str().unwrap(),
            "--cgroup",
            cgroup.0.to_str().unwrap(),
        ],
        "info,locktrace=debug",
    );
    let offsets = probed_offsets(&watcher.stderr_so_far());
    // Both start after the tracer and wait for a line before they lock.
    let program = fixture("late_ab_ba", Variant::NoFp);
    let (inside, mut inside_in, mut inside_out) = OnCopy::start_in(&cgroup, dir.path(), &program);
    let inside_pid = read_number(&mut inside_out, "pid ");
    let (bystander, mut bystander_in, mut bystander_out) = OnCopy::start(dir.path(), &program);
    let bystander_pid = read_number(&mut bystander_out, "pid ");
    watcher.wait_for_log(
        &["probes put in a new process", &format!("pid={inside_pid}")],
        Duration::from_secs(10),
    );

    let (_, breakpoints) = compare(inside_pid, &libc, &offsets);
    assert_eq!(
        breakpoints.len(),
        offsets.len(),
        "the process of the cgroup [{inside_pid}] has a breakpoint at every probed offset"
    );
    let (changed, _) = compare(bystander_pid, &libc, &offsets);
    assert!(
        changed.is_empty(),
        "a process outside the cgroup keeps its original instructions at the probed offsets; changed: {changed:?}"
    );

    for (stdin, out) in [
        (&mut inside_in, &mut inside_out),
        (&mut bystander_in, &mut bystander_out),
    ] {
        stdin.write_all(b"go\n").unwrap();
        expect_line(out, "done");
    }
    watcher.wait_for_finding_of(inside_pid, Duration::from_secs(10));
    let run = watcher.stop();
    assert_one_inversion_of(
        &run,
        inside_pid,
        "the process of the cgroup",
        &["late_a", "late_b"],
    );
    assert!(
        run.report.summary.processes_probed_late >= 1,
        "the summary counts the process probed when it was seen\n{}",
        run.describe()
    );
    drop((inside, bystander));
}
