//! Tests against real processes (as root): Debian's `/usr/bin/python3`
//! (3.11), a C program embedding `libpython3.11.so`, and fake libpythons.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::memory::{Limits, RECORD};
use super::*;

/// A reader of process `pid` with a record's budget.
fn reader(mem: &ProcessMemory) -> Reader<'_> {
    Reader::new(mem, RECORD)
}

const PYTHON: &str = "/usr/bin/python3";

/// A thread blocked in `waiter` (called by `outer`), the main thread asleep;
/// prints one line (concurrent prints may interleave): "MAIN_TID WAITER_TID".
const SCRIPT: &str = r#"import threading, time
ev = threading.Event()
tids = []

def waiter():
    tids.append(threading.get_native_id())
    ev.wait()

def outer():
    waiter()

threading.Thread(target=outer).start()
while not tids:
    time.sleep(0.01)
print(threading.get_native_id(), tids[0], flush=True)
time.sleep(3600)
"#;

/// The 1-based line of `SCRIPT` containing `text`.
fn line_of(text: &str) -> u32 {
    SCRIPT.lines().position(|l| l.contains(text)).unwrap() as u32 + 1
}

/// Kills (and reaps) the process when dropped, test failed or not.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("locktrace-py-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn spawn(cmd: &mut Command) -> Proc {
    Proc(
        cmd.stdout(Stdio::piped())
            .env_remove("PYTHONPATH")
            .spawn()
            .unwrap(),
    )
}

/// The tids printed by `SCRIPT`: (main, waiter).
fn script_tids(p: &mut Proc) -> (u32, u32) {
    let mut line = String::new();
    BufReader::new(p.0.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let tids: Vec<u32> = line
        .split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect();
    match tids[..] {
        [main, waiter] => (main, waiter),
        _ => panic!("unexpected output {line:?}"),
    }
}

/// Waits until the stack of `tid` satisfies `done` (the script may still be
/// on its way to the blocking call), and returns it.
fn stack_when(interp: &Interpreter, tid: u32, done: impl Fn(&[PyFrame]) -> bool) -> Vec<PyFrame> {
    let mut cache = CodeCache::new();
    let mut stack = Vec::new();
    for _ in 0..100 {
        let mem = ProcessMemory(interp.pid);
        stack = thread_stack(interp, &mut cache, &reader(&mem), tid).unwrap();
        if done(&stack) {
            return stack;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("unexpected stack of {tid}: {stack:#?}");
}

fn tasks(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
        .collect()
}

/// Checks the stacks of `SCRIPT` run in process `p`, with file name `file`.
fn check_script(p: &mut Proc, file: &str) -> Interpreter {
    let (main, waiter) = script_tids(p);
    let pid = p.0.id();
    let interp = detect(pid).unwrap().expect("python detected");
    assert_eq!((interp.version.0, interp.version.1), (3, 11));

    let stack = stack_when(&interp, waiter, |s| {
        s.first().is_some_and(|f| f.function == "Condition.wait")
    });
    let at = |function: &str, line: u32| PyFrame {
        function: function.into(),
        file: file.into(),
        line,
    };
    let i = stack
        .iter()
        .position(|f| f.function == "waiter")
        .expect("waiter frame");
    assert!(
        stack[..i].iter().any(|f| f.function == "Event.wait"),
        "{stack:#?}"
    );
    assert_eq!(stack[i], at("waiter", line_of("ev.wait()")), "{stack:#?}");
    assert_eq!(
        stack[i + 1],
        at("outer", line_of("    waiter()")),
        "{stack:#?}"
    );
    // Its callers: threading's bootstrap, through a C call (Thread.run).
    assert_eq!(stack[i + 2].function, "Thread.run", "{stack:#?}");
    assert_eq!(
        stack.last().unwrap().function,
        "Thread._bootstrap",
        "{stack:#?}"
    );
    assert!(stack[0].file.ends_with("threading.py") && stack[0].line > 0);

    let main_stack = vec![at("<module>", line_of("time.sleep(3600)"))];
    stack_when(&interp, main, |s| s == main_stack);

    // thread_states: exactly the script's two threads, both live tasks.
    let pmem = ProcessMemory(pid);
    let mem = reader(&pmem);
    let states = thread_states(&interp, &mem).unwrap();
    let mut tids: Vec<u32> = states.iter().map(|(t, _)| *t).collect();
    tids.sort();
    let mut want = vec![main, waiter];
    want.sort();
    assert_eq!(tids, want);
    assert!(tids.iter().all(|t| tasks(pid).contains(t)));
    // Nobody holds the GIL (both threads wait), else one of these threads.
    let holder = mem
        .u64(interp.runtime + interp.offsets.runtime_tstate_current)
        .unwrap();
    assert!(holder == 0 || states.iter().any(|(_, ts)| *ts == holder));

    // resolve: walk the frames as the kernel will (raw pairs), then resolve.
    let o = interp.offsets;
    let ts = states.iter().find(|(t, _)| *t == waiter).unwrap().1;
    let cframe = mem.u64(ts + o.tstate_cframe).unwrap();
    let mut frame = mem.u64(cframe + o.cframe_current_frame).unwrap();
    let mut pairs = Vec::new();
    while frame != 0 && pairs.len() < 16 {
        let code = mem.u64(frame + o.frame_code).unwrap();
        let prev_instr = mem.u64(frame + o.frame_prev_instr).unwrap();
        pairs.push((code, prev_instr));
        frame = mem.u64(frame + o.frame_previous).unwrap();
    }
    let mut cache = CodeCache::new();
    let resolved: Vec<PyFrame> = pairs
        .iter()
        .filter_map(|&(code, prev)| cache.resolve(&interp, &mem, code, prev).unwrap())
        .collect();
    assert_eq!(resolved, stack);
    // An incomplete frame (prev_instr before the first instruction).
    assert_eq!(
        cache.resolve(&interp, &mem, pairs[0].0, pairs[0].0),
        Ok(None)
    );
    // Cached: still resolvable once the process is gone.
    p.0.kill().unwrap();
    p.0.wait().unwrap();
    assert_eq!(
        cache
            .resolve(&interp, &mem, pairs[0].0, pairs[0].1)
            .unwrap()
            .as_ref(),
        Some(&stack[0])
    );
    cache.forget_process(pid);
    assert_eq!(cache.size(), (0, 0));
    interp
}

#[test]
fn python_binary() {
    assert!(
        Path::new(PYTHON).exists(),
        "{PYTHON} is missing: apt-get install python3 (cargo xtask test does)"
    );
    let dir = Scratch::new("bin");
    let script = dir.0.join("blocked.py");
    std::fs::write(&script, SCRIPT).unwrap();
    let mut p = spawn(Command::new(PYTHON).arg(&script));
    let interp = check_script(&mut p, script.to_str().unwrap());
    let expected = Command::new(PYTHON)
        .args(["-c", "import platform; print(platform.python_version())"])
        .output()
        .unwrap();
    let expected = String::from_utf8(expected.stdout).unwrap();
    let v = interp.version;
    assert_eq!(format!("{}.{}.{}", v.0, v.1, v.2), expected.trim());
    assert_eq!(interp.module, std::fs::canonicalize(PYTHON).unwrap());
}

/// pyenv's CPython 2.7 (`cargo xtask test`'s image has it).
fn pyenv_python27() -> PathBuf {
    let root = std::env::var_os("PYENV_ROOT").unwrap_or_else(|| "/root/.pyenv".into());
    let bin = Path::new(&root).join("versions/2.7.18/bin/python2.7");
    assert!(
        bin.exists(),
        "{} is missing: this image should have it",
        bin.display()
    );
    bin
}

/// 2.7's GIL is found: `interpreter_lock`, the pointer that is null until
/// the first thread starts and then points to the GIL's semaphore.
#[test]
fn python27_gil_variable() {
    let script = "import sys, thread, time\n\
        sys.stdout.write('none\\n'); sys.stdout.flush(); sys.stdin.readline()\n\
        thread.start_new_thread(time.sleep, (3600,))\n\
        sys.stdout.write('threads\\n'); sys.stdout.flush(); time.sleep(3600)\n";
    let mut p = Proc(
        Command::new(pyenv_python27())
            .args(["-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(p.0.stdout.take().unwrap());
    let mut line = String::new();
    let mut next_line = |line: &mut String| {
        line.clear();
        out.read_line(line).unwrap();
        line.trim().to_string()
    };
    assert_eq!(next_line(&mut line), "none");
    let pid = p.0.id();
    let interp = detect(pid).unwrap().expect("python detected");
    assert_eq!((interp.version.0, interp.version.1), (2, 7));
    let gil = interp.gil.unwrap().expect("interpreter_lock found");
    let mem = ProcessMemory(pid);
    assert_eq!(reader(&mem).u64(gil).unwrap(), 0, "no GIL before a thread");
    use std::io::Write as _;
    p.0.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    assert_eq!(next_line(&mut line), "threads");
    let sem = reader(&mem).u64(gil).unwrap();
    assert_ne!(sem, 0, "the GIL exists once a thread started");
    // A semaphore used as a lock: its count is 0 (held) or 1 (free).
    assert!(reader(&mem).u32(sem).unwrap() <= 1);
}

#[test]
fn gil_variable_only_for_2_7_and_only_one() {
    for major in [3, 4] {
        assert_eq!(gil_variable(major, StaticSymbol::One(0x10)), Ok(None));
        assert_eq!(gil_variable(major, StaticSymbol::None), Ok(None));
    }
    assert_eq!(gil_variable(2, StaticSymbol::One(0x10)), Ok(Some(0x10)));
    assert!(gil_variable(2, StaticSymbol::None).is_err());
    assert!(gil_variable(2, StaticSymbol::Several).is_err());
}

/// Builds a C program in `dir` with `gcc` and extra (shell-expanded) flags.
fn gcc(dir: &Path, name: &str, source: &str, flags: &str) -> PathBuf {
    let (src, out) = (dir.join(format!("{name}.c")), dir.join(name));
    std::fs::write(&src, source).unwrap();
    let cmd = format!("gcc -o {} {} {flags}", out.display(), src.display());
    let status = Command::new("sh").args(["-c", &cmd]).status().unwrap();
    assert!(status.success(), "{cmd}");
    out
}

#[test]
fn embedded_libpython() {
    assert!(
        Path::new("/usr/bin/python3.11-config").exists(),
        "python3.11-config is missing: apt-get install python3-dev (cargo xtask test does)"
    );
    let dir = Scratch::new("embed");
    let source = "#include <Python.h>\n\
        int main(int argc, char **argv) {\n\
            Py_Initialize();\n\
            int rc = PyRun_SimpleString(argv[1]);\n\
            Py_Finalize();\n\
            return rc;\n\
        }\n";
    let flags = "$(/usr/bin/python3.11-config --embed --cflags --ldflags)";
    let exe = gcc(&dir.0, "embed", source, flags);
    let mut p = spawn(Command::new(&exe).arg(SCRIPT));
    let interp = check_script(&mut p, "<string>");
    let lib = interp
        .module
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(lib.starts_with("libpython3.11.so"), "{lib}");
}

#[test]
fn not_python() {
    let p = Proc(Command::new("sleep").arg("60").spawn().unwrap());
    assert!(matches!(detect(p.0.id()), Ok(None)));
}

/// A process linking a fake `libNAME.so` that defines `symbols`.
fn fake_python(dir: &Path, lib: &str, symbols: &str) -> Proc {
    let libfile = dir.join(format!("lib{lib}.so"));
    gcc(dir, &format!("lib{lib}.so"), symbols, "-shared -fPIC");
    // It says when it runs main: its libraries are then mapped and
    // relocated (a library caught half-mapped reads as garbage).
    let main = "extern const unsigned long Py_Version;\n\
        #include <unistd.h>\n\
        int main(void) { volatile unsigned long v = Py_Version; (void)v; \
        (void)!write(1, \"r\", 1); pause(); return 0; }\n";
    let flags = format!("-L{0} -l{lib} -Wl,-rpath,{0}", dir.display());
    let exe = gcc(dir, "prog", main, &flags);
    let mut child = Command::new(exe)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = [0u8; 1];
    use std::io::Read;
    child
        .stdout
        .take()
        .unwrap()
        .read_exact(&mut ready)
        .unwrap_or_else(|e| panic!("{} did not start: {e}", libfile.display()));
    Proc(child)
}

#[test]
fn unsupported_version() {
    let dir = Scratch::new("v314");
    let symbols = "const unsigned long Py_Version = 0x030e00f0;\nchar _PyRuntime[4096];\n";
    let p = fake_python(&dir.0, "python3.14", symbols);
    let err = detect(p.0.id()).unwrap_err();
    assert!(
        err.reason.contains(
            "CPython 3.14 is not supported (supported: 2.7, 3.6, 3.7, 3.8, 3.9, 3.10, 3.11, 3.12, 3.13)"
        ),
        "{err}"
    );
}

/// From 3.13 on, `threading.Lock` can be a PyMutex: the warning of a
/// version without frames (3.14) says that its acquisitions are not seen.
#[test]
fn pymutex_versions_say_threading_lock_is_not_seen() {
    let dir = Scratch::new("v314m");
    let symbols = "const unsigned long Py_Version = 0x030e00f0;\nchar _PyRuntime[4096];\n";
    let p = fake_python(&dir.0, "python3.14", symbols);
    let err = detect(p.0.id()).unwrap_err();
    assert!(
        err.reason.contains("CPython 3.14 is not supported")
            && err.reason.contains("threading.Lock is a PyMutex"),
        "{err}"
    );
}

#[test]
fn stripped_libpython() {
    let dir = Scratch::new("stripped");
    let symbols = "const unsigned long Py_Version = 0x030b02f0;\n";
    let p = fake_python(&dir.0, "python3.11", symbols);
    let err = detect(p.0.id()).unwrap_err();
    assert!(
        err.reason
            .contains("CPython 3.11.2 without a _PyRuntime symbol"),
        "{err}"
    );
}

#[test]
fn offsets_table() {
    assert!(offsets_for(3, 11).is_some());
    assert!(offsets_for(3, 12).is_some());
    assert!(offsets_for(3, 14).is_none());
    assert!(offsets_for(3, 5).is_none());
    assert_eq!(version_from_name("libpython3.9d.so.1.0"), Some((3, 9)));
    assert_eq!(version_from_name("python3.11"), Some((3, 11)));
    assert_eq!(version_from_name("python3"), None);
}

#[test]
fn location_table() {
    // One-line forms (+0, +1, +2 lines), a long form (-3), no location.
    let table = [
        0x80 | (10 << 3),
        1,
        2,
        0x80 | (11 << 3) | 1,
        3,
        4,
        0x80 | (12 << 3),
        5,
        6,
    ];
    assert_eq!(addr2line(&table, 10, 0), Some(10));
    assert_eq!(addr2line(&table, 10, 2), Some(11));
    assert_eq!(addr2line(&table, 10, 5), Some(11));
    assert_eq!(addr2line(&table, 10, 6), Some(13));
    assert_eq!(addr2line(&table, 10, 8), None);
    let table = [0x80 | (14 << 3), 7, 0, 1, 1, 0x80 | (15 << 3)];
    assert_eq!(addr2line(&table, 10, 0), Some(7));
    assert_eq!(addr2line(&table, 10, 2), None);
}

// ---------------------------------------------------------------------------
// Forged interpreters (no root: a fake address space)

mod forged {
    use super::super::memory::Segments;
    use super::*;

    const RUNTIME: u64 = 0x10_0000;
    const INTERP: u64 = 0x20_0000;
    const TSTATE: u64 = 0x30_0000;
    const CFRAME: u64 = 0x31_0000;
    const FRAMES: u64 = 0x40_0000;
    const CODES: u64 = 0x1000_0000;
    const NAME: u64 = 0x50_0000;
    const TABLE: u64 = 0x60_0000;
    const TID: u32 = 77;

    fn interp() -> Interpreter {
        Interpreter {
            pid: 1,
            version: (3, 11, 2),
            runtime: RUNTIME,
            module: "libpython3.11.so.1.0".into(),
            offsets: offsets_for(3, 11).unwrap(),
            pthread_tid: 0,
            gil: Ok(None),
            import_lock: None,
        }
    }

    /// One interpreter with one thread, `TID`, whose `depth` frames each
    /// run a code object of their own with a location table of
    /// `table_size` bytes (one shared table: forging is cheap).
    fn forged(depth: u64, table_size: u64) -> Segments {
        let o = offsets_for(3, 11).unwrap();
        let mut m = Segments::default();
        m.put(RUNTIME, &[0; 1024]);
        m.put_u64(RUNTIME + o.runtime_interp_head, INTERP);
        m.put(INTERP, &[0; 64]);
        m.put_u64(INTERP + o.interp_tstate_head, TSTATE);
        m.put(TSTATE, &[0; 256]);
        m.put_u64(TSTATE + o.tstate_native_thread_id, TID.into());
        m.put_u64(TSTATE + o.tstate_cframe, CFRAME);
        m.put(CFRAME, &[0; 16]);
        m.put_u64(CFRAME + o.cframe_current_frame, FRAMES);
        // An ASCII str "f".
        m.put(NAME, &[0; 64]);
        m.put_u64(NAME + o.unicode_length, 1);
        m.put_u64(NAME + o.unicode_state, 0x64);
        m.put(NAME + o.unicode_ascii_data, b"f");
        m.put(TABLE, &vec![0; (o.bytes_data + table_size) as usize]);
        m.put_u64(TABLE + o.bytes_size, table_size);
        m.put(FRAMES, &vec![0; (depth * 128) as usize]);
        m.put(CODES, &vec![0; (depth * 256) as usize]);
        for i in 0..depth {
            let (frame, code) = (FRAMES + i * 128, CODES + i * 256);
            m.put_u64(frame + o.frame_code, code);
            m.put_u64(frame + o.frame_prev_instr, code + o.code_adaptive + 2);
            let previous = if i + 1 < depth { frame + 128 } else { 0 };
            m.put_u64(frame + o.frame_previous, previous);
            for f in [o.code_filename, o.code_name, o.code_qualname] {
                m.put_u64(code + f, NAME);
            }
            m.put_u64(code + o.code_linetable, TABLE);
        }
        m
    }

    #[test]
    fn a_forged_interpreter_reads_as_python() {
        let (interp, m) = (interp(), forged(3, 16));
        let mem = Reader::new(&m, RECORD);
        assert_eq!(thread_states(&interp, &mem).unwrap(), vec![(TID, TSTATE)]);
        let stack = thread_stack(&interp, &mut CodeCache::new(), &mem, TID).unwrap();
        assert_eq!(stack.len(), 3);
        assert_eq!(stack[0].function, "f");
    }

    #[test]
    fn a_looping_interpreter_list_does_not_parse() {
        let (interp, mut m) = (interp(), forged(1, 16));
        let o = interp.offsets;
        // The attack of issue 20: interpreters with no thread, in a loop
        // (the collector spun on it forever).
        m.put_u64(INTERP + o.interp_tstate_head, 0);
        m.put_u64(INTERP + o.interp_next, INTERP);
        let err = thread_states(&interp, &Reader::new(&m, RECORD)).unwrap_err();
        assert_eq!(
            err,
            ReadError::Unparsable(Unparsable("its interpreter list loops".into()))
        );
        // A thread list in a loop.
        let (interp, mut m) = (interp, forged(1, 16));
        m.put_u64(TSTATE + o.tstate_next, TSTATE);
        assert!(matches!(
            thread_states(&interp, &Reader::new(&m, RECORD)),
            Err(ReadError::Unparsable(_))
        ));
        // A frame chain in a loop is cut, not an error (a chain read while
        // the thread runs may loop).
        let mut m = forged(2, 16);
        m.put_u64(FRAMES + 128 + o.frame_previous, FRAMES);
        let stack = thread_stack(
            &interp,
            &mut CodeCache::new(),
            &Reader::new(&m, RECORD),
            TID,
        )
        .unwrap();
        assert_eq!(stack.len(), 2);
    }

    #[test]
    fn huge_location_tables_exhaust_the_record_budget() {
        // The other attack of issue 20: frames running fake code objects
        // with 1 MiB location tables (16.6 MB kept per event).
        let (interp, m) = (interp(), forged(16, 1 << 20));
        let mem = Reader::new(&m, RECORD);
        let mut cache = CodeCache::new();
        let codes: Vec<u64> = (0..16).map(|i| CODES + i * 256).collect();
        let results: Vec<_> = codes
            .iter()
            .map(|&c| cache.resolve(&interp, &mem, c, c + interp.offsets.code_adaptive + 2))
            .collect();
        assert!(results.iter().any(|r| r.is_err()), "{results:?}");
        assert!(mem.bytes_read() <= RECORD.bytes);
        assert!(cache.size().1 <= CACHE_PROCESS_BYTES, "{:?}", cache.size());
        // Past the largest real table: left out, one read each.
        let m = forged(16, (1 << 20) + 1);
        let mem = Reader::new(&m, RECORD);
        let mut cache = CodeCache::new();
        for c in codes {
            let r = cache.resolve(&interp, &mem, c, c + interp.offsets.code_adaptive + 2);
            assert_eq!(r, Ok(None));
        }
        assert!(mem.bytes_read() < 16 * 1024);
    }

    #[test]
    fn the_code_cache_is_bounded_per_process_and_in_total() {
        let m = forged(1, 64);
        let o = offsets_for(3, 11).unwrap();
        let mut cache = CodeCache::new();
        let limits = Limits {
            bytes: u64::MAX,
            reads: u64::MAX,
            time: std::time::Duration::from_secs(600),
        };
        let mut m = m;
        // Ever new code objects: 3 times what one process may keep.
        let n = 3 * CACHE_PROCESS_ENTRIES as u64;
        let template = {
            let mut b = vec![0u8; 256];
            for f in [o.code_filename, o.code_name, o.code_qualname] {
                b[f as usize..][..8].copy_from_slice(&NAME.to_le_bytes());
            }
            b[o.code_linetable as usize..][..8].copy_from_slice(&TABLE.to_le_bytes());
            b
        };
        m.put(CODES, &vec![0; (n * 256) as usize]);
        for i in 0..n {
            m.put(CODES + i * 256, &template);
        }
        for pid in 1..=20 {
            let interp = Interpreter { pid, ..interp() };
            let mem = Reader::new(&m, limits);
            for i in 0..n {
                let c = CODES + i * 256;
                let f = cache.resolve(&interp, &mem, c, c + o.code_adaptive + 2);
                assert!(matches!(f, Ok(Some(_))));
            }
            let (entries, bytes) = cache.size();
            assert!(entries <= CACHE_ENTRIES && bytes <= CACHE_BYTES);
        }
        assert_eq!(
            cache.size().0,
            CACHE_ENTRIES.min(20 * CACHE_PROCESS_ENTRIES)
        );
        for pid in 1..=20 {
            cache.forget_process(pid);
        }
        assert_eq!(cache.size(), (0, 0));
    }

    #[test]
    fn forged_location_tables_never_overflow() {
        // Deltas adding up past i64 (a debug build panicked on them).
        let mut table = Vec::new();
        for _ in 0..40 {
            table.push(0x80 | (14 << 3));
            table.extend([0x7e, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x3f]);
        }
        assert_eq!(addr2line(&table, i32::MAX, 79), None);
        let copy = tracer_common::PyCodeCopy {
            code: u64::MAX - 8,
            prev_instr: 0,
            first_line: 1,
            linetable_len: 0,
            filename_len: 1,
            qualname_len: 1,
            filename: [b'f'; tracer_common::PY_FILENAME_BYTES],
            qualname: [b'f'; tracer_common::PY_QUALNAME_BYTES],
            linetable: [0; tracer_common::PY_LINETABLE_BYTES],
        };
        assert_eq!(frame_from_copy(offsets_for(3, 11).unwrap(), &copy), None);
    }
}
