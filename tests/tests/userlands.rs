//! Other Debian userlands traced from the host: a Debian 11 (bullseye:
//! glibc 2.31, pthread still in `libpthread.so.0`, Python 3.9) and a
//! Debian 13 (trixie: glibc 2.41, Python 3.13) tree made by debootstrap
//! (`locktrace_e2e::rootfs`, built once and kept under `target/rootfs`),
//! the fixtures compiled inside with the tree's own gcc and glibc, run
//! with `chroot` or in their own mount and pid namespace (`unshare`, as a
//! container runs), while `locktrace watch` runs on the host: host-wide,
//! `--comm` and `--cgroup`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use locktrace_e2e::rootfs::{Suite, Userland, BULLSEYE, TRIXIE};
use locktrace_e2e::{
    assert_one_inversion_of, marker_line, require_root, Frame, JsonRun, LockKind, Record,
    TestCgroup, Watcher,
};

/// The log filter that shows probe placement (as `-v`).
const VERBOSE: &str = "info,locktrace=debug";
/// What host-wide runs log: the probes, and the files pinned.
const PINS: &str = "info,locktrace::host::spaces=debug";

/// A fixture started in a tree that prints `pid N` and waits for a line
/// on stdin before it takes its locks (`late_ab_ba`), or that just runs.
struct Started {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// Its pid on the host.
    pid: u32,
}

impl Started {
    fn start(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start a fixture in the tree");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let printed: u32 = line
            .strip_prefix("pid ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("the fixture printed {line:?}"));
        // In a pid namespace of its own it is pid 1 there: its host pid is
        // the child `unshare --fork` made.
        let pid = if printed == 1 {
            only_child(child.id())
        } else {
            printed
        };
        Started {
            child,
            stdin,
            stdout,
            pid,
        }
    }

    /// Lets `late_ab_ba` take its locks; waits for its `done`.
    fn go(&mut self) {
        self.stdin.write_all(b"go\n").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "done", "late_ab_ba ran to its end");
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        // SAFETY: kill(2) of the fixture (in a pid namespace, the process
        // we started is `unshare`, which does not pass SIGKILL on).
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The one child of process `pid`.
fn only_child(pid: u32) -> u32 {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_else(|e| panic!("children of {pid}: {e}"));
    let pids: Vec<u32> = children
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    assert_eq!(pids.len(), 1, "one child of unshare [{pid}]: {pids:?}");
    pids[0]
}

/// Waits until the tracer's log has, for each of `wanted`, a line
/// containing all its needles (in any order: the tracer may log them in
/// either).
fn wait_logged(watcher: &Watcher, wanted: &[&[&str]], timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let log = watcher.stderr_so_far();
        let all = wanted
            .iter()
            .all(|needles| log.lines().any(|l| needles.iter().all(|n| l.contains(n))));
        if all {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the tracer logged no lines with {wanted:?} within {timeout:?}\n--- stderr ---\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The log line the tracer writes when it has probed the tree's lock
/// library (for whichever process of the tree mapped it first: tests run
/// side by side), with its inode (trixie's path is the host libc's).
fn probed_line(userland: &Userland) -> Vec<String> {
    // Named by its path on the host (as the process sees it, it would be
    // `/usr/lib/x86_64-linux-gnu/libc.so.6`, the host libc's name).
    vec![
        "probes attached".to_string(),
        format!("file={} ", lock_library_host_path(userland)),
        format!("inode={} ", lock_library_inode(userland)),
    ]
}

/// Waits until the tree's lock library is probed and, with probes per
/// process (`--comm`, `--cgroup`), until process `pid` has its probes.
fn wait_probed(watcher: &Watcher, userland: &Userland, per_process: Option<u32>) {
    let probed = probed_line(userland);
    let probed: Vec<&str> = probed.iter().map(String::as_str).collect();
    let process = per_process.map(|pid| {
        vec![
            "probes put in a new process".to_string(),
            format!("pid={pid}"),
        ]
    });
    let process: Vec<&str> = process.iter().flatten().map(String::as_str).collect();
    let mut wanted = vec![probed.as_slice()];
    if !process.is_empty() {
        wanted.push(process.as_slice());
    }
    wait_logged(watcher, &wanted, Duration::from_secs(20));
}

/// A copy of `late_ab_ba` in the tree named `PREFIX_SUITE`; returns its
/// name. Each test that lets it take its locks runs a copy of its own: the
/// tests run side by side, a host-wide tracer sees the others' processes
/// too (and `--comm late_ab_ba` would match them), and an inversion of the
/// same lock classes (same program, same globals) found a second time is
/// a repeat, counted, not reported.
fn own_copy(userland: &Userland, prefix: &str) -> String {
    let name = format!("{prefix}_{}", userland.suite.name);
    locktrace_e2e::copy_executable(
        &userland.host_path(&userland.fixture("late_ab_ba")),
        &userland.host_path(&userland.fixture(&name)),
    );
    name
}

/// `late_ab_ba` in the tree under `chroot`, once its lock library is
/// probed (host-wide) and the tracer holds its program open: a chrooted
/// process's files have no path on the host under their own names, and
/// one that exits before the tracer has read its mappings (here within
/// milliseconds of "go", when its lock library was probed already) is
/// reported unsymbolized.
fn late_in_chroot(watcher: &Watcher, userland: &Userland, name: &str) -> Started {
    let late = Started::start(userland.chroot(&userland.fixture(name), &[]));
    wait_probed(watcher, userland, None);
    let program = std::fs::metadata(userland.host_path(&userland.fixture(name)))
        .unwrap()
        .ino();
    wait_logged(
        watcher,
        &[&["pinned a file", &format!("inode={program}")]],
        Duration::from_secs(20),
    );
    late
}

/// The tree's lock library, by its path on the host.
fn lock_library_host_path(userland: &Userland) -> String {
    userland
        .host_path(userland.suite.lock_library)
        .display()
        .to_string()
}

/// The inode of the tree's lock library on the host (what the placement
/// log names besides the path, which the host's libc may share).
fn lock_library_inode(userland: &Userland) -> u64 {
    std::fs::metadata(userland.host_path(userland.suite.lock_library))
        .unwrap()
        .ino()
}

/// One `probe placement` line of the log: its fields.
fn placement_fields(line: &str) -> BTreeMap<String, String> {
    let body = line.split("probe placement").nth(1).unwrap_or_default();
    // `key=value` pairs; the last one (reason) runs to the end of the line.
    let mut fields = BTreeMap::new();
    let keys = [
        "file",
        "inode",
        "program",
        "symbol",
        "offset",
        "file_offset",
        "instruction",
        "emulated",
        "reason",
    ];
    for (i, key) in keys.iter().enumerate() {
        let Some(start) = body.find(&format!(" {key}=")) else {
            continue;
        };
        let value_start = start + key.len() + 2;
        let end = keys[i + 1..]
            .iter()
            .filter_map(|k| body[value_start..].find(&format!(" {k}=")))
            .min()
            .map_or(body.len(), |e| value_start + e);
        fields.insert(
            key.to_string(),
            body[value_start..end].trim().trim_matches('"').to_string(),
        );
    }
    fields
}

/// Every probe placed in the tree's lock library has a stated reason, and
/// the hot entry points (mutex lock, CPython's `sem_trywait`, `sem_post`)
/// are on an emulated instruction. Returns the fallbacks to offset 0
/// (symbol, reason), for the message.
fn check_placements(log: &str, userland: &Userland) -> Vec<(String, String)> {
    let inode = lock_library_inode(userland).to_string();
    let placed: Vec<BTreeMap<String, String>> = log
        .lines()
        .filter(|l| l.contains("probe placement"))
        .map(placement_fields)
        .filter(|f| f.get("inode") == Some(&inode))
        .collect();
    let name = userland.suite.name;
    assert!(
        placed.len() >= 40,
        "a placement line per probe of the {name} tree's lock library (inode {inode}); \
         found {}\n{log}",
        placed.len()
    );
    let mut fallbacks = Vec::new();
    for f in &placed {
        let symbol = f.get("symbol").cloned().unwrap_or_default();
        let reason = f.get("reason").cloned().unwrap_or_default();
        assert!(
            !reason.is_empty(),
            "{name}: {symbol} is placed without a reason: {f:?}"
        );
        if f.get("emulated").map(String::as_str) == Some("false") {
            assert_eq!(
                f.get("offset").map(String::as_str),
                Some("0"),
                "{name}: a probe not on an emulated instruction is at the entry: {f:?}"
            );
            fallbacks.push((symbol, reason));
        }
    }
    for hot in ["pthread_mutex_lock", "sem_trywait", "sem_post"] {
        let f = placed
            .iter()
            .find(|f| f.get("symbol").map(String::as_str) == Some(hot))
            .unwrap_or_else(|| panic!("{name}: no placement of {hot}\n{log}"));
        assert_eq!(
            f.get("emulated").map(String::as_str),
            Some("true"),
            "{name}: {hot} is probed on an emulated instruction: {f:?}"
        );
    }
    fallbacks
}

/// The frame of `function` in `late_ab_ba.c` at the line of `marker`
/// (source compiled inside the tree, symbolized through it).
fn at_marker(frames: &[Frame], function: &str, marker: &str) -> bool {
    frames
        .iter()
        .any(|f| f.is_at(function, "late_ab_ba.c", marker_line("late_ab_ba", marker)))
}

/// `late_ab_ba`'s inversion, from the tree: its locks, both requests at
/// their source lines, each starting in the tree's lock library.
fn check_late_inversion(run: &JsonRun, userland: &Userland, pid: u32) {
    assert_one_inversion_of(run, pid, "late_ab_ba", &["late_a", "late_b"]);
    let finding = run
        .report
        .inversions()
        .into_iter()
        .find(|f| f.pid == pid)
        .unwrap();
    for (edge, function, marker) in [
        ("late_a", "take_ab", "LATE_B_IN_AB"),
        ("late_b", "take_ba", "LATE_A_IN_BA"),
    ] {
        let e = finding
            .cycle
            .iter()
            .find(|e| e.from.label() == edge)
            .unwrap();
        assert!(
            at_marker(&e.stack, function, marker),
            "{}: the request from {edge} is in {function} at late_ab_ba.c:{}\n{}",
            userland.suite.name,
            marker_line("late_ab_ba", marker),
            run.describe()
        );
        let top = &e.stack[0];
        assert!(
            top.module
                .as_deref()
                .is_some_and(|m| m.ends_with(userland.suite.lock_library)),
            "{}: the request starts in the tree's lock library\n{}",
            userland.suite.name,
            run.describe()
        );
        assert!(
            top.function
                .as_deref()
                .is_some_and(|f| f.contains("pthread_mutex_lock")),
            "{}: the lock function is named: {top:?}\n{}",
            userland.suite.name,
            run.describe()
        );
    }
}

// ---------------------------------------------------------------------------
// The tests, one set per suite

fn tree_versions(suite: &'static Suite) {
    let userland = Userland::get(suite);
    assert_eq!(userland.glibc_version(), suite.glibc, "{suite:?}");
    assert_eq!(userland.python_version(), suite.python, "{suite:?}");
}

/// Host-wide: an AB/BA inversion in a chrooted program, symbolized through
/// the tree; every probe of the tree's lock library placed with a reason.
fn inversion_host_wide(suite: &'static Suite) {
    require_root();
    let userland = Userland::get(suite);
    let watcher = Watcher::start_logging(&[], VERBOSE);
    let name = own_copy(userland, "all");
    let mut late = late_in_chroot(&watcher, userland, &name);
    late.go();
    watcher.wait_for_finding_of(late.pid, Duration::from_secs(20));
    let fallbacks = check_placements(&watcher.stderr_so_far(), userland);
    let run = watcher.stop();
    check_late_inversion(&run, userland, late.pid);
    assert!(
        run.report
            .summary
            .probed_files
            .iter()
            .any(|f| *f == lock_library_host_path(userland)),
        "the summary names the tree's lock library by its host path\n{}",
        run.describe()
    );
    eprintln!("{}: fallbacks to offset 0: {fallbacks:?}", suite.name);
}

/// Host-wide: a real AB/BA deadlock in a chrooted program, each thread
/// with the lock it waits for, who holds it, and where it was taken.
fn deadlock_host_wide(suite: &'static Suite) {
    require_root();
    let userland = Userland::get(suite);
    let watcher = Watcher::start_logging(&[], PINS);
    // A process of the tree maps its lock library first: then `deadlock`
    // is traced from its first instruction (host-wide, every process of a
    // probed file has the breakpoints).
    let _warm = late_in_chroot(&watcher, userland, "late_ab_ba");
    let deadlock = Started::start(userland.chroot(&userland.fixture("deadlock"), &["30"]));
    let pid = deadlock.pid;
    // Its inversion comes first, the deadlock within a second or two.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline
        && !watcher
            .records_so_far()
            .iter()
            .any(|r| matches!(r, Record::Deadlock(d) if d.pid == pid))
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let run = watcher.stop();
    drop(deadlock);
    let found: Vec<_> = run
        .report
        .deadlocks()
        .into_iter()
        .filter(|d| d.pid == pid)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one deadlock of [{pid}]\n{}",
        run.describe()
    );
    let threads = &found[0].threads;
    assert_eq!(threads.len(), 2, "{}", run.describe());
    for t in threads {
        let waits = t.waits_for_name().unwrap_or_default().to_string();
        let (held, taker) = match waits.as_str() {
            "mutex_b" => ("mutex_a", "lock_ab"),
            "mutex_a" => ("mutex_b", "lock_ba"),
            other => panic!("waits for {other:?}\n{}", run.describe()),
        };
        let holds = t
            .holds
            .iter()
            .find(|h| h.lock.label() == held)
            .unwrap_or_else(|| panic!("thread {} holds {held}\n{}", t.tid, run.describe()));
        assert!(
            holds
                .taken_at
                .iter()
                .any(|f| f.function.as_deref() == Some(taker)),
            "{held} was taken in {taker}\n{}",
            run.describe()
        );
        assert!(
            t.stack.iter().any(|f| f.function.as_deref() == Some(taker)),
            "the thread's stack is in {taker}\n{}",
            run.describe()
        );
    }
}

/// `--comm`: breakpoints only in the processes of that name, here a
/// chrooted one whose lock library the tracer had never seen.
fn inversion_with_comm(suite: &'static Suite) {
    require_root();
    let userland = Userland::get(suite);
    let comm = own_copy(userland, "comm");
    let watcher = Watcher::start_logging(&["--comm", &comm], VERBOSE);
    let mut late = Started::start(userland.chroot(&userland.fixture(&comm), &[]));
    wait_probed(&watcher, userland, Some(late.pid));
    late.go();
    watcher.wait_for_finding_of(late.pid, Duration::from_secs(20));
    let run = watcher.stop();
    check_late_inversion(&run, userland, late.pid);
}

/// `--cgroup`, and the program in its own mount and pid namespace (pid 1
/// there, the tree as its root), as a container runs.
fn inversion_in_a_container(suite: &'static Suite) {
    require_root();
    let userland = Userland::get(suite);
    let cgroup = TestCgroup::new(&format!("userland-{}", suite.name));
    let watcher = Watcher::start_logging(&["--cgroup", cgroup.0.to_str().unwrap()], VERBOSE);
    let name = own_copy(userland, "ns");
    let argv = userland.unshare_args(&userland.fixture(&name), &[]);
    let argv: Vec<&std::ffi::OsStr> = argv.iter().map(|a| a.as_ref()).collect();
    let mut late = Started::start(cgroup.command(std::path::Path::new(argv[0]), &argv[1..]));
    wait_probed(&watcher, userland, Some(late.pid));
    late.go();
    watcher.wait_for_finding_of(late.pid, Duration::from_secs(20));
    let run = watcher.stop();
    check_late_inversion(&run, userland, late.pid);
    drop(late);
}

/// `frames_ab_ba.py KIND` run to its end by the tree's `python3` (under
/// `chroot`); returns its pid.
fn run_script(userland: &Userland, kind: &str) -> u32 {
    // A copy of the script per tree: Python locks are classed by file and
    // line, and the other tree's test (host-wide beside this one) would
    // otherwise make this inversion a repeat of its own.
    let script = userland.fixture(&format!("frames_ab_ba_{}.py", userland.suite.name));
    std::fs::copy(
        userland.host_path(&userland.fixture("frames_ab_ba.py")),
        userland.host_path(&script),
    )
    .expect("copy frames_ab_ba.py in the tree");
    // The script runs after a pause of 1 s: host-wide, a new interpreter is
    // described (which lets the kernel side copy its Python frames) within
    // about 0.1 s of its exec, and locks it creates before then carry no
    // creation line (`run` holds its command until then; a long-running
    // service is described once, at its start).
    let paused = format!(
        "import sys, time\ntime.sleep(1)\nsys.argv = [{script:?}, {kind:?}]\n\
         exec(compile(open({script:?}).read(), {script:?}, 'exec'))"
    );
    let mut child = userland
        .chroot("/usr/bin/python3", &["-c", &paused])
        .stdout(Stdio::null())
        .spawn()
        .expect("start python3 in the tree");
    let pid = child.id();
    let status = child.wait().unwrap();
    assert!(status.success(), "frames_ab_ba.py {kind}: {status}");
    pid
}

/// 1-based line of `tests/python/frames_ab_ba.py` (copied into the tree
/// as it is) carrying `# MARKER`.
fn script_line(marker: &str) -> u32 {
    locktrace_e2e::python_marker_line("frames_ab_ba.py", marker)
}

/// Host-wide: a Python AB/BA by the distro's own interpreter (3.9, 3.13),
/// with Python frames: the locks named by the script's creation lines, each
/// edge requested in the script's function and line, up to threading's
/// `run`. Since 3.13's patch releases, `threading.Lock` is a PyMutex on
/// Debian 13 (no C library lock: nothing to see), `RLock` still a
/// semaphore. `lock_is_seen`: whether `Lock`'s inversion is expected.
/// Worker threads' requests carry their Python frames on Debian 13's 3.13.5
/// too, whose main interpreter sits 48 bytes past 3.13.0's in `_PyRuntime`
/// (native frames only while it was taken from 3.13.0's table).
fn python_ab_ba(suite: &'static Suite, lock_is_seen: bool) {
    require_root();
    let userland = Userland::get(suite);
    let watcher = Watcher::start_logging(&[], PINS);
    // The tree's lock library probed first: then the interpreter is traced
    // from its first instruction, as its locks are created.
    let _warm = late_in_chroot(&watcher, userland, "late_ab_ba");
    // Both scripts name their locks by the same creation lines: one lock
    // class pair, so an `RLock` run after a seen `Lock` run would be the
    // same class-level cycle again (a repeat, not reported). `RLock` runs
    // only where `Lock` is not seen, and second: once its finding is in,
    // the first script's records have been processed too.
    let lock = run_script(userland, "Lock");
    let rlock = if lock_is_seen {
        watcher.wait_for_finding_of(lock, Duration::from_secs(20));
        None
    } else {
        let rlock = run_script(userland, "RLock");
        watcher.wait_for_finding_of(rlock, Duration::from_secs(20));
        Some(rlock)
    };
    let run = watcher.stop();
    let name = suite.name;
    // (The other tree's test runs beside this one: its lines are not ours.)
    let ours = |l: &&str| {
        std::iter::once(lock)
            .chain(rlock)
            .any(|p| l.contains(&format!("pid={p}")))
    };
    let unavailable: Vec<&str> = (run.run.stderr.lines())
        .filter(|l| l.contains("Python frames unavailable"))
        .filter(ours)
        .collect();
    assert!(
        unavailable.is_empty(),
        "{name}: CPython {} is described: {unavailable:?}\n{}",
        suite.python,
        run.describe()
    );
    let created = |marker: &str| format!("frames_ab_ba_{name}.py:{}", script_line(marker));
    let runs =
        std::iter::once((lock, "Lock", lock_is_seen)).chain(rlock.map(|p| (p, "RLock", true)));
    for (pid, kind, expected) in runs {
        let found: Vec<_> = run
            .report
            .inversions()
            .into_iter()
            .filter(|f| f.pid == pid)
            .collect();
        if !expected {
            assert!(
                found.is_empty(),
                "{name}: Python {}'s threading.Lock takes no C library lock: nothing to \
                 report (a finding here means PyMutex is seen now: update this test and \
                 the README)\n{}",
                suite.python,
                run.describe()
            );
            continue;
        }
        assert_eq!(
            found.len(),
            1,
            "{name}: one inversion from frames_ab_ba.py {kind} [{pid}]\n{}",
            run.describe()
        );
        for edge in &found[0].cycle {
            assert_eq!(
                (edge.from.kind, edge.to.kind),
                (LockKind::Semaphore, LockKind::Semaphore),
                "{name}: {kind} is a semaphore\n{}",
                run.describe()
            );
            let label = |l: &locktrace_e2e::Lock| l.name.clone().unwrap_or_default();
            let (from, to) = (label(&edge.from), label(&edge.to));
            let (a, b) = (created("CREATE_A"), created("CREATE_B"));
            let (function, marker) = if from.ends_with(&a) && to.ends_with(&b) {
                ("take_a_then_b", "A_THEN_B")
            } else if from.ends_with(&b) && to.ends_with(&a) {
                ("take_b_then_a", "B_THEN_A")
            } else {
                panic!(
                    "{name}: {kind}'s locks are named by their creation lines {a} and {b}: \
                     {from} -> {to}\n{}",
                    run.describe()
                )
            };
            let top = edge.python_stack.first().unwrap_or_else(|| {
                panic!(
                    "{name}: Python frames in {kind}'s request\n{}",
                    run.describe()
                )
            });
            assert_eq!(
                (top.function.as_str(), top.line),
                (function, script_line(marker)),
                "{name}: the innermost Python frame\n{}",
                run.describe()
            );
            assert!(
                edge.python_stack
                    .iter()
                    .any(|f| f.function.ends_with("run") && f.file.ends_with("threading.py")),
                "{name}: the Python stack goes up to threading's run\n{}",
                run.describe()
            );
        }
    }
}

macro_rules! suite_tests {
    ($module:ident, $suite:expr, $lock_is_seen:expr) => {
        mod $module {
            use super::*;

            #[test]
            fn the_tree_has_its_glibc_and_python() {
                tree_versions(&$suite);
            }

            #[test]
            fn inversion_in_a_chroot_host_wide() {
                inversion_host_wide(&$suite);
            }

            #[test]
            fn deadlock_in_a_chroot_host_wide() {
                deadlock_host_wide(&$suite);
            }

            #[test]
            fn inversion_in_a_chroot_with_comm() {
                inversion_with_comm(&$suite);
            }

            #[test]
            fn inversion_in_a_container_with_cgroup() {
                inversion_in_a_container(&$suite);
            }

            #[test]
            fn python_ab_ba_of_the_distro_interpreter() {
                python_ab_ba(&$suite, $lock_is_seen);
            }
        }
    };
}

// Python 3.9's threading.Lock is a semaphore, 3.13's a PyMutex.
suite_tests!(bullseye, BULLSEYE, true);
suite_tests!(trixie, TRIXIE, false);
