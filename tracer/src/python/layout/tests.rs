//! Each pyenv CPython of this machine (as root): its Python found, its
//! threads' stacks read, and 3.13's `_Py_DebugOffsets` agreeing with the
//! table generated from its headers.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::super::memory::{ProcessMemory, RECORD};
use super::super::{detect, thread_stack, CodeCache};
use super::*;

/// A thread blocked in `waiter` (called by `outer`); prints "ready" (in
/// Python 2 and 3).
const SCRIPT: &str = r#"import sys, threading, time
ev = threading.Event()
tids = []

def waiter():
    tids.append(threading.current_thread().ident)
    ev.wait()

def outer():
    waiter()

threading.Thread(target=outer).start()
while not tids:
    time.sleep(0.01)
sys.stdout.write("ready\n")
sys.stdout.flush()
time.sleep(3600)
"#;

fn line_of(text: &str) -> u32 {
    SCRIPT.lines().position(|l| l.contains(text)).unwrap() as u32 + 1
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pyenv_python(version: &str) -> Option<std::path::PathBuf> {
    let root = std::env::var("PYENV_ROOT").unwrap_or_else(|_| "/root/.pyenv".into());
    let minor = version.rsplit_once('.').unwrap().0;
    let bin = std::path::Path::new(&root)
        .join("versions")
        .join(version)
        .join("bin")
        .join(format!("python{minor}"));
    bin.exists().then_some(bin)
}

/// The tids of process `pid`'s threads other than the main one.
fn other_threads(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
        .filter(|&t| t != pid)
        .collect()
}

fn check(version: &str) {
    let Some(python) = pyenv_python(version) else {
        panic!("pyenv CPython {version} is not installed");
    };
    let dir =
        std::env::temp_dir().join(format!("locktrace-layout-{}-{version}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("script.py");
    std::fs::write(&file, SCRIPT).unwrap();
    let mut p = Proc(
        Command::new(&python)
            .arg(&file)
            .stdout(Stdio::piped())
            .env_remove("PYTHONPATH")
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(p.0.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pid = p.0.id();
    let interp = detect(pid).unwrap().expect("python detected");
    // (Before 3.11 the micro version is not known: no `Py_Version`.)
    let minor = format!("{}.{}.", interp.version.0, interp.version.1);
    assert!(
        version.starts_with(&minor),
        "{version}: {:?}",
        interp.version
    );
    let waiter = other_threads(pid)[0];
    let mem = ProcessMemory(pid);
    let threads = super::super::thread_states(&interp, &Reader::new(&mem, RECORD)).unwrap();
    assert!(
        threads.iter().any(|&(t, _)| t == waiter),
        "{threads:?} {waiter}"
    );
    let mut cache = CodeCache::new();
    let mut stack = Vec::new();
    for _ in 0..100 {
        let reader = Reader::new(&mem, RECORD);
        stack = thread_stack(&interp, &mut cache, &reader, waiter).unwrap();
        if stack.iter().any(|f| f.function == "waiter") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let file = file.to_string_lossy();
    let i = stack
        .iter()
        .position(|f| f.function == "waiter")
        .unwrap_or_else(|| panic!("{version}: {stack:#?}"));
    assert_eq!(
        (stack[i].file.as_str(), stack[i].line),
        (&*file, line_of("ev.wait()")),
        "{version}: {stack:#?}"
    );
    assert_eq!(
        (stack[i + 1].function.as_str(), stack[i + 1].line),
        ("outer", line_of("    waiter()")),
        "{version}: {stack:#?}"
    );
    assert!(
        stack[i + 2..].iter().any(|f| f.function.ends_with("run")),
        "{version}: {stack:#?}"
    );
    assert!(
        !stack.iter().any(|f| f.file == "<shim>"),
        "{version}: {stack:#?}"
    );
    if version.starts_with("3.13") {
        assert_eq!(*interp.offsets, V3_13);
    }
    drop(p);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pyenv_3_13() {
    check("3.13.0");
}

#[test]
fn pyenv_3_12() {
    check("3.12.1");
}

#[test]
fn pyenv_3_10() {
    check("3.10.13");
}

#[test]
fn pyenv_3_9() {
    check("3.9.18");
}

#[test]
fn pyenv_3_8() {
    check("3.8.18");
}

#[test]
fn pyenv_3_7() {
    check("3.7.16");
}

#[test]
fn pyenv_3_6() {
    check("3.6.15");
}

#[test]
fn pyenv_2_7() {
    check("2.7.18");
}

/// A 3.13 patch release that moved fields: its `_Py_DebugOffsets` (here
/// in this process's memory) win over the table; what they lack stays the
/// table's.
#[test]
fn debug_offsets_override_the_table() {
    let mut words = [0u64; debug::WORDS];
    words[0] = u64::from_le_bytes(*b"xdebugpy");
    words[debug::VERSION] = 0x030d05f0;
    // A real runtime's offsets (the table's), then a few moved.
    for (i, v) in [
        (debug::INTERPRETERS_HEAD, V3_13.runtime_interp_head),
        (debug::INTERP_NEXT, V3_13.interp_next),
        (debug::INTERP_THREADS_HEAD, V3_13.interp_tstate_head),
        (debug::TSTATE_NEXT, V3_13.tstate_next),
        (debug::FRAME_PREVIOUS, V3_13.frame_previous),
        (debug::FRAME_INSTR_PTR, V3_13.frame_prev_instr),
        (debug::FRAME_LOCALSPLUS, V3_13.frame_localsplus),
        (debug::FRAME_OWNER, V3_13.frame_owner),
        (debug::CODE_FILENAME, V3_13.code_filename),
        (debug::CODE_NAME, V3_13.code_name),
        (debug::CODE_QUALNAME, V3_13.code_qualname),
        (debug::CODE_LINETABLE, V3_13.code_linetable),
        (debug::CODE_FIRSTLINENO, V3_13.code_firstlineno),
        (debug::BYTES_SIZE, V3_13.bytes_size),
        (debug::BYTES_DATA, V3_13.bytes_data),
        (debug::UNICODE_STATE, V3_13.unicode_state),
        (debug::UNICODE_LENGTH, V3_13.unicode_length),
        (debug::UNICODE_ASCII_SIZE, V3_13.unicode_ascii_data),
    ] {
        words[i] = v;
    }
    words[debug::TSTATE_NATIVE_THREAD_ID] = V3_13.tstate_native_thread_id + 8;
    words[debug::TSTATE_CURRENT_FRAME] = V3_13.tstate_cframe + 8;
    words[debug::FRAME_EXECUTABLE] = 8;
    words[debug::CODE_ADAPTIVE] = V3_13.code_adaptive + 16;
    words[debug::INTERP_GIL_HOLDER] = 100;
    // 3.13.0's sizes of `_PyRuntimeState` and `PyInterpreterState` (pyenv's,
    // as read from its `_PyRuntime`): the main interpreter, the last field,
    // where the table has it.
    words[debug::RUNTIME_SIZE] = 283320;
    words[debug::INTERP_SIZE] = 194968;
    // Read from this process's memory, as from a traced one's (the array
    // is passed anew after each change, so that no write is elided).
    let read = |words: &[u64; debug::WORDS], version: u32| {
        let at = std::hint::black_box(words.as_ptr()) as u64;
        let mem = ProcessMemory(std::process::id());
        with_debug_offsets(&Reader::new(&mem, RECORD), at, version, &V3_13)
    };
    let o = read(&words, 0x030d05f0).unwrap();
    assert_eq!(o.tstate_native_thread_id, V3_13.tstate_native_thread_id + 8);
    assert_eq!(o.tstate_cframe, V3_13.tstate_cframe + 8);
    assert_eq!(o.frame_code, 8);
    assert_eq!(o.code_adaptive, V3_13.code_adaptive + 16);
    assert_eq!(o.runtime_main_interp, V3_13.runtime_main_interp);
    assert_eq!(o.runtime_tstate_current, V3_13.runtime_main_interp + 100);
    // Debian 13's 3.13.5 (read from its `_PyRuntime`): one more static
    // string before the main interpreter moved it 48 bytes, which the
    // table, 3.13.0's, does not know.
    words[debug::RUNTIME_SIZE] = 283376;
    words[debug::INTERP_SIZE] = 194976;
    let o = read(&words, 0x030d05f0).unwrap();
    assert_eq!(o.runtime_main_interp, 88400);
    assert_eq!(o.runtime_tstate_current, 88400 + 100);
    assert_eq!(o.code_firsttraceable, V3_13.code_firsttraceable);
    assert_eq!(o.unicode_ascii_mask, V3_13.unicode_ascii_mask);
    // Another minor version's, a free-threaded build's, no cookie: refused.
    assert!(read(&words, 0x030e00f0).is_err());
    words[debug::FREE_THREADED] = 1;
    assert!(read(&words, 0x030d05f0).is_err());
    words[debug::FREE_THREADED] = 0;
    assert!(read(&words, 0x030d05f0).is_ok());
    // Offsets a forged runtime chooses: a field past the header it is read
    // from (the reader would index past what it read), a sum that
    // overflows. Refused, not a panic.
    for (field, bad) in [
        (debug::CODE_LINETABLE, 4096),
        (debug::CODE_FIRSTLINENO, V3_13.code_adaptive + 14),
        (debug::UNICODE_STATE, 4096),
        (debug::INTERP_GIL_HOLDER, u64::MAX),
        (debug::FRAME_PREVIOUS, u64::MAX - 4),
        (debug::INTERP_SIZE, 283376),
        (debug::INTERP_SIZE, 283377),
        (debug::RUNTIME_SIZE, u64::MAX),
    ] {
        let good = words[field];
        words[field] = bad;
        assert!(read(&words, 0x030d05f0).is_err(), "{field}: {bad:#x}");
        words[field] = good;
        assert!(read(&words, 0x030d05f0).is_ok());
    }
    words[0] = 0;
    assert!(read(&words, 0x030d05f0).is_err());
}

#[test]
fn line_tables() {
    // 3.10: (start delta, line delta) pairs; -128 = no line.
    let table = [6, 0, 4, 1, 2, 0x80, 8, 2];
    assert_eq!(linetable_310(&table, 10, 0), Some(10));
    assert_eq!(linetable_310(&table, 10, 7), Some(11));
    assert_eq!(linetable_310(&table, 10, 11), None);
    assert_eq!(linetable_310(&table, 10, 12), Some(13));
    assert_eq!(linetable_310(&table, 10, 20), None);
    // lnotab: (offset increment, line increment) pairs.
    let table = [0, 1, 6, 1, 8, 0xff];
    assert_eq!(lnotab(&table, 10, 0, true), Some(11));
    assert_eq!(lnotab(&table, 10, 6, true), Some(12));
    assert_eq!(lnotab(&table, 10, 14, true), Some(11));
    // Python 2's: unsigned line increments.
    assert_eq!(lnotab(&table, 10, 14, false), Some(267));
}
