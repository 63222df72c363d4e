//! Tests against real processes (as root): Debian's `/usr/bin/python3`
//! (3.11), a C program embedding `libpython3.11.so`, and fake libpythons.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::*;

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
        stack = thread_stack(interp, &mut cache, tid).unwrap();
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
    let states = thread_states(&interp).unwrap();
    let mut tids: Vec<u32> = states.iter().map(|(t, _)| *t).collect();
    tids.sort();
    let mut want = vec![main, waiter];
    want.sort();
    assert_eq!(tids, want);
    assert!(tids.iter().all(|t| tasks(pid).contains(t)));
    // Nobody holds the GIL (both threads wait), else one of these threads.
    let holder = Mem(pid)
        .u64(interp.runtime + interp.offsets.runtime_tstate_current)
        .unwrap();
    assert!(holder == 0 || states.iter().any(|(_, ts)| *ts == holder));

    // resolve: walk the frames as the kernel will (raw pairs), then resolve.
    let (o, mem) = (interp.offsets, Mem(pid));
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
        .filter_map(|&(code, prev)| cache.resolve(&interp, code, prev))
        .collect();
    assert_eq!(resolved, stack);
    // An incomplete frame (prev_instr before the first instruction).
    assert_eq!(cache.resolve(&interp, pairs[0].0, pairs[0].0), None);
    // Cached: still resolvable once the process is gone.
    p.0.kill().unwrap();
    p.0.wait().unwrap();
    assert_eq!(
        cache.resolve(&interp, pairs[0].0, pairs[0].1).as_ref(),
        Some(&stack[0])
    );
    cache.forget_process(pid);
    assert!(cache.codes.is_empty());
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
