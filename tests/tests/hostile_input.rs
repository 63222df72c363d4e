//! A shared host's hostile users and careless operators (issue 20): report
//! paths planted by another user, names that forge report lines, option
//! values out of range, files that are not what they claim, and Ctrl-C
//! meant for the traced command.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use locktrace_e2e::{fixture, require_root, Killed, Run, Tracer, Variant, Watcher};

/// The unprivileged user of the attacks.
const NOBODY: u32 = 65534;

/// `argv` run as nobody; it must succeed.
fn as_nobody(argv: &[&str]) {
    let status = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(argv)
        .status()
        .expect("setpriv");
    assert!(status.success(), "as nobody: {argv:?}: {status}");
}

/// A fresh world-writable sticky directory, as /tmp is, reachable by
/// nobody.
fn sticky_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("locktrace-hostile-")
        .tempdir_in("/tmp")
        .expect("temp dir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o1777)).unwrap();
    dir
}

/// `locktrace run -o OUTPUT [EXTRA] -- ab_ba`.
fn run_to(output: &Path, extra: &[&str]) -> Run {
    let mut args: Vec<String> = vec!["run".into(), "-o".into(), output.display().to_string()];
    args.extend(extra.iter().map(|a| a.to_string()));
    args.push("--".into());
    args.push(fixture("ab_ba", Variant::NoFp).display().to_string());
    Tracer::new(&args).run()
}

// ---------------------------------------------------------------------------
// Report files

#[test]
fn a_symlink_planted_by_another_user_is_refused() {
    require_root();
    let dir = sticky_dir();
    let private = tempfile::tempdir().unwrap();
    let secret = private.path().join("secret");
    fs::write(&secret, b"root's own bytes\n").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let link = dir.path().join("report.txt");
    as_nobody(&["ln", "-s", secret.to_str().unwrap(), link.to_str().unwrap()]);

    for extra in [&[][..], &["--force"][..]] {
        let run = run_to(&link, extra);
        run.assert_failed();
        let line = run.single_error_line();
        assert!(
            line.contains("symbolic link") && line.contains("report.txt"),
            "names the file and why\n{}",
            run.describe()
        );
        println!("refusal: {line}");
    }
    assert_eq!(fs::read(&secret).unwrap(), b"root's own bytes\n");
    let meta = fs::metadata(&secret).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o600);
    assert_eq!(meta.uid(), 0);
}

#[test]
fn a_new_report_file_is_readable_by_root_only() {
    require_root();
    let dir = sticky_dir();
    let path = dir.path().join("new.txt");
    let run = run_to(&path, &[]);
    run.assert_exit(0);
    let meta = fs::metadata(&path).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o600, "{}", run.describe());
    assert_eq!(meta.uid(), 0);
    assert!(fs::read_to_string(&path)
        .unwrap()
        .contains("WARNING: potential deadlock"));

    // Root's own file is written again.
    let again = run_to(&path, &[]);
    again.assert_exit(0);
    assert!(fs::read_to_string(&path)
        .unwrap()
        .contains("WARNING: potential deadlock"));
}

#[test]
fn a_file_of_another_user_is_refused_without_force() {
    require_root();
    let dir = sticky_dir();
    let theirs = dir.path().join("theirs.txt");
    as_nobody(&["sh", "-c", &format!("echo planted > {}", theirs.display())]);

    let run = run_to(&theirs, &[]);
    run.assert_failed();
    let line = run.single_error_line();
    assert!(
        line.contains(&format!("uid {NOBODY}")) && line.contains("--force"),
        "says whose file it is and how to write it anyway\n{}",
        run.describe()
    );
    println!("refusal: {line}");
    assert_eq!(fs::read(&theirs).unwrap(), b"planted\n");

    let forced = run_to(&theirs, &["--force"]);
    forced.assert_exit(0);
    assert!(fs::read_to_string(&theirs)
        .unwrap()
        .contains("WARNING: potential deadlock"));
}

// ---------------------------------------------------------------------------
// Names

#[test]
fn forged_thread_names_are_escaped_in_the_text_report() {
    require_root();
    let run = Tracer::new([
        "run".as_ref(),
        "--".as_ref(),
        fixture("forged_names", Variant::NoFp).as_os_str(),
    ])
    .run();
    run.assert_exit(0);
    let text = &run.stdout;
    assert!(
        text.contains("WARNING: potential deadlock"),
        "the inversion is reported\n{}",
        run.describe()
    );
    let raw: Vec<char> = text
        .chars()
        .filter(|&c| c != '\n' && c.is_control())
        .collect();
    assert!(
        raw.is_empty(),
        "raw control characters {raw:?}\n{}",
        run.describe()
    );
    assert!(
        !text.lines().any(|l| l.starts_with("ERROR:")),
        "a forged line\n{}",
        run.describe()
    );
    for shown in ["\\r\\nERROR: x\\x1b[2J", "\\x1b[2J\\nERROR:\\x7f\\u{9b}"] {
        assert!(
            text.contains(shown),
            "shows {shown} escaped\n{}",
            run.describe()
        );
    }
}

// ---------------------------------------------------------------------------
// Option values

/// A usage error: one `locktrace:` line, a non-zero exit, no panic.
fn refused(args: &[&str], says: &str) -> String {
    let run = Tracer::new(args).run();
    run.assert_failed();
    let line = run.single_error_line();
    assert!(
        line.contains(says) && !run.stderr.contains("panicked"),
        "expected `{says}`\n{}",
        run.describe()
    );
    println!("refusal: {line}");
    line
}

#[test]
fn out_of_range_durations_and_exit_codes_are_one_line_errors() {
    require_root();
    refused(
        &["watch", "--duration", "99999999999999999999999h"],
        "out of range",
    );
    refused(
        &["watch", "--hang-threshold", "1000000000000h"],
        "out of range",
    );
    for code in ["-1", "0", "300"] {
        refused(&["run", "--exit-code", code, "--", "true"], "--exit-code");
    }
}

#[test]
fn a_thread_id_as_pid_traces_its_process() {
    require_root();
    let mut python = Command::new("python3")
        .args([
            "-c",
            "import threading, time\n\
             def f():\n    print(threading.get_native_id(), flush=True); time.sleep(30)\n\
             threading.Thread(target=f, daemon=True).start(); time.sleep(30)",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(python.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let tid: u32 = line.trim().parse().unwrap();
    let pid = python.id();
    assert_ne!(tid, pid);
    let run = Tracer::new(["watch", "--duration", "1s", "--pid", &tid.to_string()]).run();
    let _ = python.kill();
    let _ = python.wait();
    run.assert_exit(0);
    let note = format!("--pid {tid} is a thread of process {pid}: tracing process {pid}");
    assert!(run.stderr.contains(&note), "{}", run.describe());
    assert!(
        run.stdout.contains("locktrace: "),
        "a summary\n{}",
        run.describe()
    );
    println!("note: {note}");
}

/// The largest resident size of the children this test process waited for.
fn children_max_rss_kib() -> i64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    usage.ru_maxrss
}

#[test]
fn a_huge_file_that_is_not_elf_is_refused_unread() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let huge = dir.path().join("libc.so.6");
    let status = Command::new("truncate")
        .args(["-s", "2G"])
        .arg(&huge)
        .status()
        .unwrap();
    assert!(status.success());
    let started = Instant::now();
    let line = refused(
        &[
            "watch",
            "--duration",
            "1s",
            "--libc",
            huge.to_str().unwrap(),
        ],
        "not an ELF file",
    );
    assert!(line.contains("libc.so.6"));
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
    // Reading it whole took 2 GB (tests run in parallel: other tracers
    // count too, none near that).
    let rss = children_max_rss_kib();
    assert!(rss < 1024 * 1024, "a child reached {rss} KiB");
}

#[test]
fn a_huge_file_with_an_elf_header_is_refused_unread() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let huge = dir.path().join("libc.so.6");
    // The host's libc's own header, then 2 GiB of holes: it passes the
    // header check, and reading it whole took 2 GB.
    let libc = fs::read("/lib/x86_64-linux-gnu/libc.so.6").unwrap();
    fs::write(&huge, &libc[..64]).unwrap();
    let status = Command::new("truncate")
        .args(["-s", "2G"])
        .arg(&huge)
        .status()
        .unwrap();
    assert!(status.success());
    let started = Instant::now();
    let line = refused(
        &[
            "watch",
            "--duration",
            "1s",
            "--libc",
            huge.to_str().unwrap(),
        ],
        "MiB: not read",
    );
    assert!(line.contains("libc.so.6"));
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let rss = children_max_rss_kib();
    assert!(rss < 1024 * 1024, "a child reached {rss} KiB");
}

#[test]
fn a_32_bit_elf_file_is_refused() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let elf32: PathBuf = dir.path().join("libc32.so.6");
    let mut header = vec![0u8; 4096];
    header[..4].copy_from_slice(b"\x7fELF");
    header[4] = 1; // ELFCLASS32
    header[5] = 1; // little-endian
    header[18] = 3; // EM_386
    fs::write(&elf32, &header).unwrap();
    refused(
        &[
            "watch",
            "--duration",
            "1s",
            "--binary",
            elf32.to_str().unwrap(),
        ],
        "32-bit",
    );
}

#[test]
fn a_file_where_no_lock_function_can_be_probed_is_refused() {
    require_root();
    // An x86-64 library whose `pthread_mutex_lock` is a variable in .bss:
    // a defined symbol, no code to put a probe in.
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("fake.c");
    fs::write(&source, "int pthread_mutex_lock;\nint sem_wait;\n").unwrap();
    let lib = dir.path().join("libfake.so");
    let status = Command::new("gcc")
        .args(["-shared", "-fPIC", "-fno-common", "-nostdlib", "-o"])
        .arg(&lib)
        .arg(&source)
        .status()
        .unwrap();
    assert!(status.success());
    let line = refused(
        &[
            "watch",
            "--duration",
            "1s",
            "--binary",
            lib.to_str().unwrap(),
        ],
        "none of its lock functions can be probed",
    );
    assert!(line.contains("libfake.so"));
}

// ---------------------------------------------------------------------------
// Ctrl-C

#[test]
fn run_forwards_the_first_sigint_and_reports_until_the_command_exits() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    let program = fixture("sigint_ab_ba", Variant::NoFp);
    let watcher = Watcher::start_run(&[program.as_os_str(), ready.as_os_str()]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "the command never got ready");
        std::thread::sleep(Duration::from_millis(10));
    }
    // As `kill -INT` of the tracer (no terminal): the command handles it,
    // then locks AB/BA and exits 3; the tracer sees that and stops.
    let (run, _) = watcher.interrupt();
    run.assert_exit(3);
    assert_eq!(
        run.report.inversions().len(),
        1,
        "the inversion made after the SIGINT\n{}",
        run.describe()
    );
}

#[test]
fn a_second_sigint_stops_tracing_without_waiting_for_the_command() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    // A command that ignores SIGINT and runs on for a while.
    let script = format!("trap '' INT; touch {}; sleep 3", ready.display());
    let watcher = Watcher::start_run(&["sh", "-c", &script]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "the command never got ready");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: kill(2) of the tracer, our child.
    unsafe { libc::kill(watcher.pid() as libc::pid_t, libc::SIGINT) };
    std::thread::sleep(Duration::from_millis(200));
    let (run, took) = watcher.interrupt();
    assert!(
        took < Duration::from_millis(1500),
        "took {took:?} after the second SIGINT (the command runs 3 s)\n{}",
        run.describe()
    );
    run.assert_exit(130);
}

// ---------------------------------------------------------------------------
// Files and descriptors of other users' processes (issue 20, item 4)

/// The tests that load the host (the 100,000-mutex flood, 300 memfds,
/// 480 MiB of shared memory) or trace all of it, one at a time: beside each
/// other, one's load is the other's lost events, and the shared memory of
/// one is in the other's Shmem reading (tests of one file run in parallel).
fn one_heavy_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// `/proc/meminfo`'s `Shmem:` (shared memory, memfds and tmpfs files), KiB.
fn shmem_kib() -> u64 {
    fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Shmem:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("Shmem in /proc/meminfo")
}

/// Descriptors process `pid` has open.
fn open_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// Descriptors of `pid` that hold shared memory: memfds, files in
/// /dev/shm, deleted files, shared anonymous memory. (Its other descriptors
/// follow the host: a host-wide tracer opens the files of whatever else runs
/// for their symbols, at most 32 at a time.)
fn shared_memory_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| fs::read_link(e.path()).ok())
        .filter(|target| {
            let t = target.to_string_lossy();
            t.contains("memfd:")
                || t.starts_with("/dev/shm/")
                || t.ends_with("(deleted)")
                || t.starts_with("/dev/zero")
        })
        .count()
}

/// `fixture` started as nobody with `args`, stdin and stdout piped, once it
/// printed `ready`.
fn start_as_nobody(fixture: &Path, args: &[&str]) -> Killed {
    let mut child = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(fixture)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("setpriv");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "ready", "{} did not start", fixture.display());
    Killed(child)
}

#[test]
fn shared_memory_of_another_user_is_not_kept_after_it_exits() {
    require_root();
    let _serial = one_heavy_at_a_time();
    let watcher = Watcher::start(&[]);
    std::thread::sleep(Duration::from_millis(500));
    let (shmem_before, fds_before) = (shmem_kib(), open_fds(watcher.pid()));
    let shared_fds_before = shared_memory_fds(watcher.pid());
    // 20 pieces each of shared anonymous memory, memfds and deleted files
    // in /dev/shm, 8 MiB each (480 MiB), a process-shared mutex in each
    // (so that the tracer looks at their locks), as nobody.
    let mut pins = start_as_nobody(&fixture("shared_pins", Variant::NoFp), &["20", "/dev/shm"]);
    std::thread::sleep(Duration::from_secs(1));
    let (shmem_during, fds_during) = (shmem_kib(), open_fds(watcher.pid()));
    assert!(
        shmem_during > shmem_before + 400 * 1024,
        "the fixture made its shared memory ({shmem_before} -> {shmem_during} KiB)"
    );
    drop(pins.0.stdin.take());
    assert!(pins.0.wait().unwrap().success());
    // Its memory is the kernel's to free as soon as nobody holds it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut shmem_after, mut fds_after);
    loop {
        (shmem_after, fds_after) = (shmem_kib(), open_fds(watcher.pid()));
        if shmem_after < shmem_before + 64 * 1024 || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let shared_fds_after = shared_memory_fds(watcher.pid());
    let (run, _) = watcher.terminate();
    println!(
        "Shmem {shmem_before} KiB before, {shmem_during} KiB while the fixture ran, \
         {shmem_after} KiB after it exited; tracer descriptors {fds_before}, {fds_during}, \
         {fds_after}; of shared memory {shared_fds_before}, then {shared_fds_after}"
    );
    run.run.assert_exit(0);
    assert!(
        shmem_after < shmem_before + 64 * 1024,
        "the tracer keeps the exited process's shared memory: Shmem {shmem_before} -> \
         {shmem_after} KiB\n{}",
        run.describe()
    );
    assert!(
        shared_fds_after <= shared_fds_before,
        "the tracer keeps descriptors of shared memory: {shared_fds_before} -> {shared_fds_after}\n{}",
        run.describe()
    );
}

/// Runs the AB/BA fixture beside `watcher`'s tracing: its pid, and whether
/// a finding of it came within 20 s.
fn ab_ba_beside(watcher: &Watcher) -> (u32, bool) {
    let out = Command::new(fixture("ab_ba", Variant::NoFp))
        .output()
        .expect("ab_ba");
    assert!(out.status.success());
    let pid: u32 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("pid "))
        .and_then(|p| p.trim().parse().ok())
        .expect("ab_ba prints its pid");
    (
        pid,
        watcher.wait_for_finding_of(pid, Duration::from_secs(20)),
    )
}

#[test]
fn a_tracer_short_of_descriptors_keeps_tracing_and_writes_its_summary() {
    require_root();
    let _serial = one_heavy_at_a_time();
    // 300 memfds with a process-shared mutex in each, as nobody, running
    // before the tracer starts (as the attack did), for 40 s at most.
    let memfds = start_as_nobody(&fixture("memfd_locks", Variant::NoFp), &["300", "40"]);
    let watcher = Watcher::start_wrapped(&["prlimit", "--nofile=256:256", "--"], &[]);
    std::thread::sleep(Duration::from_secs(2));
    // A real inversion beside it is still found.
    let (pid, found) = ab_ba_beside(&watcher);
    let fds = open_fds(watcher.pid());
    let (run, took) = watcher.terminate();
    drop(memfds);
    println!(
        "tracer descriptors {fds} of 256; stopped {took:?} after SIGTERM; summary: {:?} unopened files",
        run.report.summary.unopened_files
    );
    run.run.assert_exit(0);
    assert!(found, "no finding for ab_ba [{pid}]\n{}", run.describe());
    let inversions: Vec<_> = run
        .report
        .inversions()
        .into_iter()
        .filter(|i| i.cycle.iter().any(|e| e.pid == pid))
        .collect();
    assert_eq!(inversions.len(), 1, "{}", run.describe());
    assert!(
        took < Duration::from_secs(1),
        "took {took:?} to stop\n{}",
        run.describe()
    );
}

#[test]
fn a_tracer_short_of_descriptors_for_free_watches_keeps_tracing() {
    require_root();
    let _serial = one_heavy_at_a_time();
    // 300 processes of nobody, each nesting two heap mutexes: each is a
    // process whose frees the tracer must watch (a probe link, one
    // descriptor) before it may judge them, more than 256 descriptors.
    let nesters = start_as_nobody(&fixture("heap_nesters", Variant::NoFp), &["300", "40"]);
    let watcher = Watcher::start_wrapped(&["prlimit", "--nofile=256:256", "--"], &[]);
    std::thread::sleep(Duration::from_secs(4));
    let (pid, found) = ab_ba_beside(&watcher);
    let fds = open_fds(watcher.pid());
    let (run, took) = watcher.terminate();
    drop(nesters);
    let memory = &run.report.summary.lock_memory;
    println!(
        "tracer descriptors {fds} of 256; stopped {took:?} after SIGTERM; lock_memory {memory:?}; \
         unopened files {}",
        run.report.summary.unopened_files
    );
    run.run.assert_exit(0);
    assert!(found, "no finding for ab_ba [{pid}]\n{}", run.describe());
    // The nesters take their pairs in one order: no finding of theirs.
    assert_eq!(run.report.inversions().len(), 1, "{}", run.describe());
    assert!(
        memory.processes_watched > 0 && memory.watches_refused > 0,
        "some nesters watched, the rest refused for lack of descriptors: {memory:?}\n{}",
        run.describe()
    );
    // The watches left descriptors for reading symbols.
    assert_eq!(
        run.report.summary.unopened_files,
        0,
        "files not opened for symbols\n{}",
        run.describe()
    );
    assert!(
        took < Duration::from_secs(1),
        "took {took:?} to stop\n{}",
        run.describe()
    );
}

#[test]
fn a_tracer_short_of_descriptors_for_per_process_probes_keeps_tracing() {
    require_root();
    let _serial = one_heavy_at_a_time();
    // `watch --pid` of a parent of 300 processes: each traced one gets its
    // own probe links (a descriptor per program), more than 256.
    let nesters = start_as_nobody(&fixture("heap_nesters", Variant::NoFp), &["300", "40"]);
    let parent = nesters.0.id().to_string();
    let watcher =
        Watcher::start_wrapped(&["prlimit", "--nofile=256:256", "--"], &["--pid", &parent]);
    std::thread::sleep(Duration::from_secs(4));
    let fds = open_fds(watcher.pid());
    let (run, took) = watcher.terminate();
    drop(nesters);
    let summary = &run.report.summary;
    println!(
        "tracer descriptors {fds} of 256; stopped {took:?} after SIGTERM; not probed {}; \
         unopened files {}; dependencies {}",
        summary.processes_not_probed, summary.unopened_files, summary.dependencies
    );
    run.run.assert_exit(0);
    assert!(
        summary.processes_not_probed > 0 && summary.dependencies > 0,
        "some nesters probed (their pair seen), the rest left for lack of descriptors\n{}",
        run.describe()
    );
    assert_eq!(run.report.inversions().len(), 0, "{}", run.describe());
    assert_eq!(summary.unopened_files, 0, "{}", run.describe());
    assert!(
        took < Duration::from_secs(1),
        "took {took:?} to stop\n{}",
        run.describe()
    );
}

// ---------------------------------------------------------------------------
// Huge inputs (issue 20, item 5)

/// `VmHWM` (peak resident set) of process `pid`, KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// The collector's peak RSS under the flood: the backlog and the graph are
/// bounded (`tracer_analysis::limits`); the old collector passed 580 MB
/// within 20 s here, and 7.4 GB in all.
const FLOOD_PEAK_RSS_KIB: u64 = 350 * 1024;

#[test]
fn a_flood_of_new_dependencies_is_bounded_and_sigterm_stops_it_within_a_second() {
    require_root();
    let _serial = one_heavy_at_a_time();
    // 100,000 mutexes taken in random pairs, always in address order: nearly
    // every pair is a dependency never seen before.
    let mut flood = Killed(
        Command::new(fixture("mutex_flood", Variant::NoFp))
            .args(["40"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("mutex_flood"),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(flood.0.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let pid = flood.0.id().to_string();
    let watcher = Watcher::start(&["--pid", &pid]);
    std::thread::sleep(Duration::from_secs(20));
    let peak = peak_rss_kib(watcher.pid());
    let (run, took) = watcher.terminate();
    drop(flood);
    let s = &run.report.summary;
    println!(
        "flood: collector peak RSS {} MiB after 20 s; stopped {took:?} after SIGTERM; \
         {} dependencies in the graph, {} dropped records, {} dropped dependencies, \
         {} unprocessed at exit, {} lost events",
        peak / 1024,
        s.dependencies,
        s.dropped_records,
        s.dropped_dependencies,
        s.unprocessed_records,
        s.lost_events
    );
    run.run.assert_exit(0);
    assert!(
        took < Duration::from_secs(1),
        "took {took:?} to stop after SIGTERM\n{}",
        run.describe()
    );
    assert!(
        s.dependencies > 1000,
        "the flood was traced\n{}",
        run.describe()
    );
    assert!(
        s.dropped_records + s.dropped_dependencies + s.unprocessed_records + s.lost_events > 0,
        "what did not fit is counted\n{}",
        run.describe()
    );
    assert!(
        run.report.inversions().is_empty(),
        "no cycle is possible\n{}",
        run.describe()
    );
    assert!(
        peak < FLOOD_PEAK_RSS_KIB,
        "the collector reached {peak} KiB (bound {FLOOD_PEAK_RSS_KIB} KiB)\n{}",
        run.describe()
    );
}

// ---------------------------------------------------------------------------
// Processes posing as CPython

/// A fixture that prints "pid N", waits for a line on stdin to take its
/// locks, prints "done", and lives until its stdin closes; killed when
/// dropped.
struct Fixture {
    child: std::process::Child,
    pid: u32,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Fixture {
    fn start(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the fixture");
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut f = Fixture {
            pid: child.id(),
            child,
            stdout,
        };
        let line = f.next_line();
        assert_eq!(line, format!("pid {}", f.pid), "the fixture's first line");
        f
    }

    fn next_line(&mut self) -> String {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut self.stdout, &mut line).expect("fixture output");
        line.trim().to_string()
    }

    /// Waits for `line` (the fixture's alarm ends it if it never comes).
    fn wait_for(&mut self, line: &str) {
        loop {
            let got = self.next_line();
            assert!(!got.is_empty(), "the fixture ended before `{line}`");
            if got == line {
                return;
            }
        }
    }

    fn go(&mut self) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The tracer stopped within a second of SIGTERM, with exit status 0.
fn assert_stopped_in_a_second(run: &locktrace_e2e::JsonRun, took: Duration) {
    assert!(
        took < Duration::from_secs(1),
        "took {took:?} after SIGTERM\n{}",
        run.describe()
    );
    run.assert_exit(0);
}

/// Exactly one inversion of each of `pids` (the real program and the
/// forged one) in `run`'s report.
fn assert_one_inversion_each(run: &locktrace_e2e::JsonRun, pids: [u32; 2]) {
    let inversions = run.report.inversions();
    for pid in pids {
        assert_eq!(
            inversions.iter().filter(|i| i.pid == pid).count(),
            1,
            "one inversion of {pid}\n{}",
            run.describe()
        );
    }
}

/// `forged_python VARIANT` run as nobody (from a copy nobody can run),
/// its structures forged.
fn forged_python(dir: &Path, variant: &str) -> Fixture {
    forged_python_with(dir, &[variant])
}

fn forged_python_with(dir: &Path, args: &[&str]) -> Fixture {
    let copy = dir.join("forged_python");
    if !copy.exists() {
        fs::copy(fixture("forged_python", Variant::NoFp), &copy).unwrap();
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&copy)
        .args(args);
    let mut f = Fixture::start(cmd);
    f.wait_for("ready");
    f
}

/// The collector's peak RSS bound under a forged interpreter: a `watch` of
/// three processes takes about 60 MiB here; the code objects of the
/// attack took 16.6 MB per event (724 MB after 40).
const RSS_BOUND_KIB: u64 = 160 * 1024;

/// Traces the forged process and a real AB/BA program together
/// (`watch --pid`, both started first), lets both take their locks, and
/// checks that the tracer still reports the real program's inversion,
/// marks the forged process (one -v line), stays under [`RSS_BOUND_KIB`],
/// and stops within a second of SIGTERM with its summary.
fn traced_beside_a_real_program(variant: &str) {
    let _serial = one_heavy_at_a_time();
    require_root();
    let dir = sticky_dir();
    let mut forged = forged_python(dir.path(), variant);
    let mut real = Fixture::start(Command::new(fixture("late_ab_ba", Variant::NoFp)));
    let watcher = Watcher::start(&[
        "-v",
        "--pid",
        &forged.pid.to_string(),
        "--pid",
        &real.pid.to_string(),
    ]);
    forged.go();
    real.go();
    real.wait_for("done");
    forged.wait_for("done");
    assert!(
        watcher.wait_for_finding_of(real.pid, Duration::from_secs(20)),
        "the real program's inversion is reported\n{}",
        watcher.stderr_so_far()
    );
    assert!(
        watcher.wait_for_finding_of(forged.pid, Duration::from_secs(20)),
        "the forged process's own inversion counts too\n{}",
        watcher.stderr_so_far()
    );
    let peak = peak_rss_kib(watcher.pid());
    println!("collector peak RSS: {} MiB", peak / 1024);
    assert!(
        peak < RSS_BOUND_KIB,
        "collector peak RSS {peak} KiB (bound {RSS_BOUND_KIB} KiB)"
    );
    let marked = watcher.wait_for_log(
        &["poses as CPython", &format!("process {} ", forged.pid)],
        Duration::from_secs(20),
    );
    println!("-v: {marked}");
    let (run, took) = watcher.terminate();
    assert_stopped_in_a_second(&run, took);
    assert_eq!(
        run.report.summary.unparsable_processes,
        1,
        "{}",
        run.describe()
    );
    assert_one_inversion_each(&run, [real.pid, forged.pid]);
}

#[test]
fn a_forged_python_whose_interpreter_list_loops_cannot_hold_the_tracer() {
    traced_beside_a_real_program("loop");
}

#[test]
fn a_forged_python_with_huge_fake_code_objects_cannot_grow_the_tracer() {
    traced_beside_a_real_program("code");
}

/// Processes running locktrace's memory-reading helper, blocked in the
/// kernel (state D).
fn blocked_memory_readers() -> Vec<u32> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if !cmdline.split(|&b| b == 0).any(|a| a == b"__read-memory") {
            continue;
        }
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_string));
        if state.as_deref() == Some("D") {
            found.push(pid);
        }
    }
    found
}

/// `fuse_trap` mounted on a directory: its file `trap` answers reads by
/// nobody only. Unmounted when dropped (after its daemon is killed, which
/// fails the reads it held).
struct FuseTrap {
    daemon: Option<Fixture>,
    mountpoint: PathBuf,
}

impl FuseTrap {
    fn mount(mountpoint: &Path) -> Self {
        fs::create_dir_all(mountpoint).unwrap();
        let mut cmd = Command::new(fixture("fuse_trap", Variant::NoFp));
        cmd.arg(mountpoint);
        let mut daemon = Fixture::start(cmd);
        daemon.wait_for("ready");
        FuseTrap {
            daemon: Some(daemon),
            mountpoint: mountpoint.to_path_buf(),
        }
    }

    /// Reads it was asked for and never answered, so far (its output up to
    /// now: call once the tracer has stopped).
    fn held_reads(&mut self) -> Vec<String> {
        let mut daemon = self.daemon.take().expect("mounted");
        let _ = daemon.child.kill();
        let _ = daemon.child.wait();
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut daemon.stdout, &mut rest);
        rest.lines()
            .filter(|l| l.starts_with("held a read"))
            .map(str::to_string)
            .collect()
    }
}

/// Kills a process when dropped.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill(2); the pid is our own child, reaped later by its
        // owner.
        unsafe { libc::kill(self.0 as libc::pid_t, libc::SIGKILL) };
    }
}

impl FuseTrap {
    /// Kills the daemon when dropped (failing the reads it holds).
    fn killer(&self) -> KillOnDrop {
        KillOnDrop(self.daemon.as_ref().expect("mounted").pid)
    }
}

impl Drop for FuseTrap {
    fn drop(&mut self) {
        drop(self.daemon.take());
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mountpoint)
            .status();
    }
}

#[test]
fn a_forged_python_whose_memory_never_answers_cannot_hold_the_tracer() {
    let _serial = one_heavy_at_a_time();
    require_root();
    let dir = sticky_dir();
    let mountpoint = dir.path().join("mnt");
    let mut trap = FuseTrap::mount(&mountpoint);
    // Its code objects' names are in a page of the trap that it mapped and
    // never touched: reading them as root never ends.
    let trap_file = mountpoint.join("trap").display().to_string();
    let mut forged = forged_python_with(dir.path(), &["fuse", &trap_file]);
    let mut real = Fixture::start(Command::new(fixture("late_ab_ba", Variant::NoFp)));
    let watcher = Watcher::start(&[
        "-v",
        "--pid",
        &forged.pid.to_string(),
        "--pid",
        &real.pid.to_string(),
    ]);
    // Dropped before the watcher if an assertion fails: a tracer blocked
    // in the trap (the failure this test looks for) can be neither stopped
    // nor waited for until the trap's daemon is gone.
    let unblock = trap.killer();
    // Its dependency must carry frames: the kernel side knows it as
    // Python first (the line is logged just before the kernel side is
    // told).
    watcher.wait_for_log(
        &["Python process", &format!("pid={}", forged.pid)],
        Duration::from_secs(20),
    );
    std::thread::sleep(Duration::from_secs(1));
    forged.go();
    forged.wait_for("done");
    let stalled = watcher.wait_for_log(
        &["blocked in the kernel", &format!("pid={}", forged.pid)],
        Duration::from_secs(20),
    );
    println!("-v: {stalled}");
    // Tracing goes on after the stall.
    real.go();
    real.wait_for("done");
    assert!(
        watcher.wait_for_finding_of(real.pid, Duration::from_secs(20)),
        "the real program's inversion is reported\n{}",
        watcher.stderr_so_far()
    );
    let (run, took) = watcher.terminate();
    // The helper that made the read is still blocked (it cannot be
    // killed), until the file system answers or goes away.
    let blocked = blocked_memory_readers();
    drop(unblock);
    let held = trap.held_reads();
    println!(
        "stopped {took:?} after SIGTERM; the trap held: {held:?}; blocked helpers: {blocked:?}"
    );
    assert_eq!(blocked.len(), 1, "one helper left blocked: {blocked:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !blocked_memory_readers().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        blocked_memory_readers().is_empty(),
        "the blocked helper ends once the file system is gone"
    );
    assert!(
        held.iter().any(|l| l == "held a read of uid 0"),
        "the tracer's read reached the trap and was held: {held:?}"
    );
    assert_stopped_in_a_second(&run, took);
    assert_eq!(
        run.report.summary.stalled_memory_reads,
        1,
        "{}",
        run.describe()
    );
    assert_one_inversion_each(&run, [real.pid, forged.pid]);
}
