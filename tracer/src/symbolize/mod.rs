//! Turning raw addresses of (possibly exited) processes into frames and lock
//! names: addresses are mapped to (file, file offset) through
//! [`AddressSpaces`], then symbolized from the file with `blazesym` (DWARF
//! when present, else the ELF symbol tables). Lock names come from the data
//! symbols (STT_OBJECT) of the file's symbol tables, read with `object`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use blazesym::symbolize::source::{Elf, Source};
use blazesym::symbolize::{Input, Symbolized};

use tracer_analysis::model::{Frame, SharedLock};

use crate::host::elf::{load_bias, load_segments, LoadSegment};
use crate::host::spaces::{readable_path, AddressSpaces, FileKey, Mapping, ANON_PATH};
use crate::symbolize::unwind::Unwinder;

pub mod unwind;
pub mod wrappers;

/// What building findings needs from symbolization (implemented by the
/// collector's enrichment stage, which adds Python names; tests use a
/// table-driven fake).
pub trait Resolve {
    /// Symbolize `addrs` of process `pid`. `addrs[0]` is an instruction
    /// pointer when `first_is_ip`, every other address a return address.
    fn frames(&mut self, pid: u32, addrs: &[u64], first_is_ip: bool) -> Vec<Frame>;
    /// The name of a lock object: a global such as `mutex_a` (or `sym+0x10`
    /// inside one), the line that created a Python lock...
    fn lock_name(&mut self, pid: u32, addr: u64) -> Option<String>;
    /// The process's name (the comm of its main thread).
    fn process_name(&mut self, pid: u32) -> String;
    /// For a lock in memory mapped MAP_SHARED: its identity, as the kernel
    /// gives a shared futex (device, inode, offset), and the mapping's name.
    fn shared_identity(&mut self, _pid: u32, _addr: u64) -> Option<String> {
        None
    }
    /// For a lock object in a mapped file's image (not one Python code
    /// made): its symbol, the file's build-id and its offset in the file.
    fn image_lock(&mut self, _pid: u32, _addr: u64) -> Option<ImageLock> {
        None
    }
    /// Where the process runs: its cgroup, systemd unit and container.
    fn origin(&mut self, _pid: u32) -> Option<crate::host::proc::Origin> {
        None
    }
}

/// Entries of the per-(file, offset) result cache before it is cleared.
const MAX_CACHED_ADDRS: usize = 1 << 16;
/// Files whose data symbols are kept before that cache is cleared.
const MAX_CACHED_FILES: usize = 512;
/// Files blazesym keeps open (with their parsed symbols), least recently
/// used out first: each costs a descriptor, and a file of another mount
/// namespace is a path per process (`/proc/PID/root/...`).
const MAX_OPEN_FILES: usize = 32;

/// What blazesym told about one code address.
#[derive(Clone, Debug)]
struct CodeSym {
    function: String,
    /// Offset of the looked-up address into the function.
    offset: u64,
    /// The function's size in bytes, if the symbol table says.
    size: Option<u64>,
    file: Option<String>,
    line: Option<u32>,
}

/// The function holding a code address, as its file has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    pub name: String,
    /// A path to open the file by, and the function's file offset and size.
    pub path: PathBuf,
    pub file_offset: u64,
    pub size: Option<u64>,
}

/// The data symbols and load segments of one ELF file.
struct DataSyms {
    loads: Vec<LoadSegment>,
    /// (address, size, name), sorted by address.
    syms: Vec<(u64, u64, String)>,
}

impl DataSyms {
    fn read(path: &Path) -> Option<Self> {
        use object::{Object as _, ObjectSymbol as _, SymbolKind};
        let bytes = crate::host::files::read_elf(path)?;
        let elf = object::File::parse(&*bytes).ok()?;
        let mut syms: Vec<(u64, u64, String)> = elf
            .symbols()
            .chain(elf.dynamic_symbols())
            .filter(|s| s.kind() == SymbolKind::Data && s.is_definition())
            .filter_map(|s| Some((s.address(), s.size(), s.name().ok()?.to_string())))
            .filter(|(_, _, n)| !n.is_empty())
            .collect();
        syms.sort();
        syms.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1 && a.2 == b.2);
        Some(Self {
            loads: load_segments(&elf),
            syms,
        })
    }

    /// The data symbol containing `svma`, as `name` or `name+0x10`.
    fn name(&self, svma: u64) -> Option<String> {
        let end = self.syms.partition_point(|s| s.0 <= svma);
        // Among the symbols starting at or before svma, the closest one that
        // covers it (a zero-sized one only on an exact match).
        let (addr, _, name) = self.syms[..end]
            .iter()
            .rev()
            .take(16)
            .find(|(a, size, _)| svma < a + (*size).max(1))?;
        Some(match svma - addr {
            0 => name.clone(),
            off => format!("{name}+{off:#x}"),
        })
    }
}

/// Symbolizes addresses of traced processes; implements [`Resolve`].
///
/// Not `Send`: blazesym's symbolizer keeps `Rc`s.
/// Where a lock lives (see [`Symbolizer::lock_memory`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMemory {
    /// In a mapped file's image (a global or static variable): never freed
    /// while the file is mapped.
    Image,
    /// Memory mapped `MAP_SHARED` (its identity is the file's).
    Shared,
    /// The stack of the thread that took it (or the main thread's).
    Stack,
    /// Anything else: the heap, anonymous memory (other threads' stacks
    /// included: they cannot be told apart from the heap's mappings).
    Heap,
    /// Not known (the process's mappings are gone).
    Unknown,
}

pub struct Symbolizer {
    spaces: AddressSpaces,
    unwinder: Unwinder,
    blaze: blazesym::symbolize::Symbolizer,
    code: HashMap<(FileKey, u64), Option<CodeSym>>,
    data: HashMap<FileKey, Option<Arc<DataSyms>>>,
    build_ids: HashMap<FileKey, Option<Arc<str>>>,
    /// The paths blazesym has open, most recently used last.
    open: std::collections::VecDeque<PathBuf>,
}

/// A lock object in a mapped file's image (a global or static variable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageLock {
    /// Its data symbol (`mutex_a`, `holder+0x28`), if the file has one.
    pub symbol: Option<String>,
    /// The file's GNU build-id (hex), if it has one.
    pub build_id: Option<Arc<str>>,
    /// Its offset in the file: in the file's bytes for `.data`, past them
    /// (where the loader puts it) for `.bss`. With the build-id, the same
    /// for every process and host running the same build.
    pub file_offset: u64,
}

impl Symbolizer {
    /// Starts tracking address spaces (see [`AddressSpaces::new`]).
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self::with_spaces(AddressSpaces::new()?))
    }

    pub fn with_spaces(spaces: AddressSpaces) -> Self {
        Self {
            spaces,
            unwinder: Unwinder::new(),
            blaze: blazesym::symbolize::Symbolizer::builder()
                .enable_code_info(true)
                .enable_inlined_fns(false)
                .enable_demangling(true)
                .build(),
            code: HashMap::new(),
            data: HashMap::new(),
            build_ids: HashMap::new(),
            open: std::collections::VecDeque::new(),
        }
    }

    /// Consume pending mapping records: call after reading each batch of
    /// events and before resolving their addresses.
    pub fn sync(&mut self) {
        self.spaces.sync();
    }

    /// Unwind a stack captured at a probe (see [`Unwinder::unwind`]).
    pub fn unwind(&mut self, pid: u32, ip: u64, sp: u64, bp: u64, stack: &[u8]) -> Vec<u64> {
        self.unwinder
            .unwind(&mut self.spaces, pid, ip, sp, bp, stack)
    }

    /// Drop what is known about a process.
    pub fn forget(&mut self, pid: u32) {
        self.spaces.forget(pid);
    }

    pub fn spaces(&mut self) -> &mut AddressSpaces {
        &mut self.spaces
    }

    fn code_sym(&mut self, pid: u32, m: &Mapping, file_offset: u64) -> Option<CodeSym> {
        let key = (m.file_key(), file_offset);
        if let Some(c) = self.code.get(&key) {
            return c.clone();
        }
        if self.code.len() >= MAX_CACHED_ADDRS {
            self.code.clear();
        }
        let sym = readable_path(pid, m).and_then(|path| self.blaze_lookup(path, file_offset));
        self.code.insert(key, sym.clone());
        sym
    }

    /// Notes that blazesym opens `path` now; past [`MAX_OPEN_FILES`], it
    /// closes the least recently used. Out of descriptors, nothing is
    /// asked of it (counted, see `host::files`).
    fn blaze_open(&mut self, path: &Path) -> bool {
        if let Some(at) = self.open.iter().position(|p| p == path) {
            let p = self.open.remove(at).expect("found");
            self.open.push_back(p);
            return true;
        }
        // blazesym opens the file itself: see first whether it can.
        if crate::host::files::open(path).is_err() {
            return false;
        }
        if self.open.len() >= MAX_OPEN_FILES {
            if let Some(old) = self.open.pop_front() {
                let _ = self.blaze.evict(&blazesym::symbolize::evict::Evict::Elf(
                    blazesym::symbolize::evict::Elf::new(old),
                ));
            }
        }
        self.open.push_back(path.to_path_buf());
        true
    }

    fn blaze_lookup(&mut self, path: PathBuf, file_offset: u64) -> Option<CodeSym> {
        if !self.blaze_open(&path) {
            return None;
        }
        let src = Source::Elf(Elf::new(path));
        match self
            .blaze
            .symbolize_single(&src, Input::FileOffset(file_offset))
        {
            Ok(Symbolized::Sym(sym)) => {
                let (file, line) = match &sym.code_info {
                    Some(ci) => (Some(ci.to_path().display().to_string()), ci.line),
                    None => (None, None),
                };
                Some(CodeSym {
                    function: sym.name.to_string(),
                    offset: sym.offset as u64,
                    size: sym.size.map(|s| s as u64),
                    file,
                    line,
                })
            }
            Ok(Symbolized::Unknown(_)) => None,
            Err(e) => {
                tracing::debug!("symbolizing {file_offset:#x}: {e}");
                None
            }
        }
    }

    /// The function holding code address `addr` of `pid` (a return address
    /// is looked up at `addr - 1`, its call).
    pub fn function_at(&mut self, pid: u32, addr: u64) -> Option<Function> {
        let lookup = addr.saturating_sub(1);
        let m = self.spaces.find(pid, lookup)?.clone();
        if !m.is_file() {
            return None;
        }
        let at = m.file_offset_of(lookup);
        let sym = self.code_sym(pid, &m, at)?;
        Some(Function {
            name: sym.function,
            path: readable_path(pid, &m)?,
            file_offset: at - sym.offset,
            size: sym.size,
        })
    }

    fn frame(&mut self, pid: u32, addr: u64, is_return: bool) -> Frame {
        let mut frame = Frame {
            addr,
            ..Frame::default()
        };
        // A return address follows the call: describe the call instruction.
        let lookup = if is_return {
            addr.saturating_sub(1)
        } else {
            addr
        };
        let Some(m) = self.spaces.find(pid, lookup).cloned() else {
            return frame;
        };
        frame.module = Some(m.path.display().to_string());
        if !m.is_file() {
            return frame;
        }
        frame.file_offset = Some(m.file_offset_of(addr));
        frame.build_id = self.build_id(pid, &m).map(|b| b.to_string());
        match self.code_sym(pid, &m, m.file_offset_of(lookup)) {
            Some(s) => {
                frame.function = Some(s.function);
                frame.offset = Some(s.offset + (addr - lookup));
                frame.file = s.file;
                frame.line = s.line;
            }
            None => frame.offset = Some(m.file_offset_of(addr)),
        }
        frame
    }

    /// The GNU build-id note of a mapped file, in hex (read once per file).
    pub fn build_id(&mut self, pid: u32, m: &Mapping) -> Option<Arc<str>> {
        let key = m.file_key();
        if let Some(b) = self.build_ids.get(&key) {
            return b.clone();
        }
        if self.build_ids.len() >= MAX_CACHED_FILES {
            self.build_ids.clear();
        }
        let id = readable_path(pid, m)
            .and_then(|path| blazesym::helper::read_elf_build_id(&path).ok().flatten())
            .filter(|bytes| !bytes.is_empty())
            .map(|bytes| Arc::from(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()));
        self.build_ids.insert(key, id.clone());
        id
    }

    fn data_syms(&mut self, pid: u32, m: &Mapping) -> Option<Arc<DataSyms>> {
        let key = m.file_key();
        if let Some(d) = self.data.get(&key) {
            return d.clone();
        }
        if self.data.len() >= MAX_CACHED_FILES {
            self.data.clear();
        }
        let d = readable_path(pid, m)
            .and_then(|p| DataSyms::read(&p))
            .map(Arc::new);
        self.data.insert(key, d.clone());
        d
    }
}

impl Symbolizer {
    /// Symbolize `addrs` of process `pid` (see [`Resolve::frames`]).
    pub fn frames(&mut self, pid: u32, addrs: &[u64], first_is_ip: bool) -> Vec<Frame> {
        addrs
            .iter()
            .enumerate()
            .map(|(i, &a)| self.frame(pid, a, i > 0 || !first_is_ip))
            .collect()
    }

    /// The data symbol naming the lock object at `addr`, if it is in a
    /// mapped file's image (a global or static variable).
    pub fn lock_symbol(&mut self, pid: u32, addr: u64) -> Option<String> {
        self.image_lock(pid, addr)?.symbol
    }

    /// The lock object at `addr`, if it is in a mapped file's image: its
    /// symbol, and where it is in which build of the file.
    pub fn image_lock(&mut self, pid: u32, addr: u64) -> Option<ImageLock> {
        // The file image holding addr: the file mapping containing it, or,
        // for .bss past the file's last page (an anonymous mapping or no
        // mapping at all), the closest file mapping below it.
        let mut file: Option<Mapping> = None;
        for m in self.spaces.mappings(pid) {
            if m.start > addr {
                break;
            }
            if m.end > addr && !(m.is_file() || m.path.as_os_str() == ANON_PATH) {
                return None; // heap, stack, vdso...
            }
            if m.is_file() {
                file = Some(m.clone());
            }
        }
        let m = file?;
        // The load bias, preferably from the file's executable mapping
        // (unambiguous segment), else from this mapping.
        let key = m.file_key();
        let exec = self
            .spaces
            .mappings(pid)
            .find(|x| x.executable && x.file_key() == key)
            .cloned();
        let syms = self.data_syms(pid, &m)?;
        let bias = exec
            .and_then(|x| load_bias(&x, &syms.loads))
            .or_else(|| load_bias(&m, &syms.loads))?;
        let svma = addr.wrapping_sub(bias);
        let segment = syms
            .loads
            .iter()
            .find(|s| (s.vaddr..s.vaddr + s.memsz).contains(&svma))?;
        let file_offset = segment.offset + (svma - segment.vaddr);
        Some(ImageLock {
            symbol: syms.name(svma),
            build_id: self.build_id(pid, &m),
            file_offset,
        })
    }

    /// Where the lock at `addr` of process `pid` lives; `sp` is the stack
    /// pointer of the thread that took it (see `reuse`).
    pub fn lock_memory(&mut self, pid: u32, addr: u64, sp: u64) -> LockMemory {
        // A lock is in mapped memory: a miss means the mappings known are
        // not the process's (yet); read them again while it lives.
        let mut found = self.spaces.find(pid, addr).cloned();
        if found.is_none() && self.spaces.reread(pid) {
            found = self.spaces.find(pid, addr).cloned();
        }
        let Some(m) = found else {
            return match self.image_lock(pid, addr) {
                Some(_) => LockMemory::Image,
                None => LockMemory::Unknown,
            };
        };
        if m.shared {
            LockMemory::Shared
        } else if m.is_file() {
            LockMemory::Image
        } else if m.path.as_os_str() == "[stack]" || (m.start..m.end).contains(&sp) {
            LockMemory::Stack
        } else if m.path.as_os_str() == "[heap]" {
            LockMemory::Heap
        } else if self.image_lock(pid, addr).is_some() {
            // .bss past the file's last page.
            LockMemory::Image
        } else {
            LockMemory::Heap
        }
    }

    /// For a lock in memory mapped MAP_SHARED: its identity.
    pub fn shared_lock(&mut self, pid: u32, addr: u64) -> Option<SharedLock> {
        let m = self.spaces.find(pid, addr)?;
        if !m.shared || m.inode == 0 {
            return None;
        }
        Some(SharedLock {
            dev: m.dev,
            inode: m.inode,
            offset: m.file_offset_of(addr),
            path: m.path.display().to_string(),
        })
    }

    /// The process's name (the comm of its main thread).
    pub fn process_name(&mut self, pid: u32) -> String {
        self.spaces
            .process_name(pid)
            .or_else(|| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .ok()
                    .map(|s| s.trim_end().to_string())
            })
            .unwrap_or_else(|| "?".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbolize::unwind::tests::capture;
    use std::process::Command;

    fn names(frames: &[Frame]) -> Vec<String> {
        frames
            .iter()
            .map(|f| f.function.clone().unwrap_or_default())
            .collect()
    }

    #[inline(never)]
    fn sym_level3(s: &mut Symbolizer) -> Vec<Frame> {
        let (ip, sp, bp, stack) = capture();
        let pid = std::process::id();
        let addrs = s.unwind(pid, ip, sp, bp, &stack);
        std::hint::black_box(s.frames(pid, &addrs, true))
    }

    #[inline(never)]
    fn sym_level2(s: &mut Symbolizer) -> Vec<Frame> {
        std::hint::black_box(sym_level3(s))
    }

    #[inline(never)]
    fn sym_level1(s: &mut Symbolizer) -> Vec<Frame> {
        std::hint::black_box(sym_level2(s))
    }

    #[test]
    fn unwinds_and_symbolizes_own_stack() {
        let mut s = Symbolizer::with_spaces(AddressSpaces::proc_only());
        let frames = sym_level1(&mut s);
        let names = names(&frames);
        let pos = |n: &str| {
            names
                .iter()
                .position(|x| x.ends_with(n))
                .unwrap_or_else(|| panic!("{n} not in {names:#?}"))
        };
        assert_eq!(pos("sym_level3"), 0, "{names:#?}");
        assert_eq!(pos("sym_level2"), 1, "{names:#?}");
        assert_eq!(pos("sym_level1"), 2, "{names:#?}");
        assert!(pos("unwinds_and_symbolizes_own_stack") == 3, "{names:#?}");
        let f = &frames[1];
        assert!(
            f.file.as_deref().unwrap().ends_with("symbolize/mod.rs"),
            "{f:?}"
        );
        assert!(f.line.is_some());
        assert!(f.offset.unwrap() > 0);
    }

    const FIXTURE: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

pthread_mutex_t mutex_a = PTHREAD_MUTEX_INITIALIZER;
pthread_mutex_t mutex_b = PTHREAD_MUTEX_INITIALIZER;
static struct { int pad[10]; pthread_mutex_t m; } holder = { {1}, PTHREAD_MUTEX_INITIALIZER };
static char big_bss[100000];

/* A uprobe on pthread_mutex_lock's first instruction, emulated: save the
   registers and 12 KiB of stack as the probe would see them, then jump to
   the real function. */
extern void *__libc_stack_end;
unsigned long snap_sp, snap_bp, snap_len;
unsigned char snap_stack[12288];
void dump_stack(unsigned long sp, unsigned long bp) {
    snap_sp = sp; snap_bp = bp;
    snap_len = (unsigned long)__libc_stack_end - sp;
    if (snap_len > sizeof snap_stack) snap_len = sizeof snap_stack;
    memcpy(snap_stack, (void *)sp, snap_len);
}
int probe_lock(pthread_mutex_t *m);
__asm__(
    ".globl probe_lock\n"
    "probe_lock:\n"
    "  push %rdi\n"
    "  lea 8(%rsp), %rdi\n"
    "  mov %rbp, %rsi\n"
    "  call dump_stack\n"
    "  pop %rdi\n"
    "  jmp *real_lock(%rip)\n");
void *real_lock;

__attribute__((noinline)) void lock_b(void) {
    probe_lock(&mutex_b); /* CALL_B */
    pthread_mutex_unlock(&mutex_b);
}

__attribute__((noinline)) void do_work(void) {
    pthread_mutex_lock(&mutex_a);
    lock_b(); /* CALL_WORK */
    pthread_mutex_unlock(&mutex_a);
}

int main(int argc, char **argv) {
    real_lock = dlsym(RTLD_DEFAULT, "pthread_mutex_lock");
    void *heap = malloc(64);
    do_work(); /* CALL_MAIN */
    printf("%lx %lx %lx %lx %lx %lx %lx %lx %x\n", (unsigned long)real_lock,
           snap_sp, snap_bp, (unsigned long)&mutex_a, (unsigned long)&holder.m,
           (unsigned long)&big_bss[99999], (unsigned long)heap,
           (unsigned long)&lock_b, getpid());
    FILE *f = fopen(argv[1], "wb");
    fwrite(snap_stack, 1, snap_len, f);
    fclose(f);
    return 0;
}
"#;

    fn line_of(marker: &str) -> u32 {
        FIXTURE
            .lines()
            .position(|l| l.contains(marker))
            .expect("marker") as u32
            + 1
    }

    /// Compile the fixture with `flags`, run it to completion (reaped), then
    /// unwind and symbolize its emulated probe hit and name its locks.
    fn check_fixture(tag: &str, flags: &[&str]) {
        let debug = flags.contains(&"-g");
        let dir = std::env::temp_dir().join(format!("locktrace-sym-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("fixture.c");
        let bin = dir.join("fixture");
        std::fs::write(&src, FIXTURE).unwrap();
        let st = Command::new("cc")
            .args(flags)
            .arg("-pthread")
            .arg("-o")
            .arg(&bin)
            .arg(&src)
            .arg("-ldl")
            .status()
            .expect("cc");
        assert!(st.success());

        let mut s = Symbolizer::new().unwrap();
        if !s.spaces().is_tracking() {
            eprintln!("perf events unavailable: skipping");
            return;
        }
        let snap = dir.join("stack.bin");
        let out = Command::new(&bin).arg(&snap).output().unwrap();
        assert!(out.status.success());
        // The child is reaped: only the perf records know its mappings.
        let stdout = String::from_utf8(out.stdout).unwrap();
        let v: Vec<u64> = stdout
            .split_whitespace()
            .map(|x| u64::from_str_radix(x, 16).unwrap())
            .collect();
        let [ip, sp, bp, mutex_a, holder_m, bss_end, heap, lock_b, pid] = v[..] else {
            panic!("{stdout}")
        };
        let pid = pid as u32;
        s.sync();
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
        assert_eq!(s.process_name(pid), "fixture");

        let stack = std::fs::read(&snap).unwrap();
        let addrs = s.unwind(pid, ip, sp, bp, &stack);
        let frames = s.frames(pid, &addrs, true);
        let names = names(&frames);
        assert!(names.len() >= 4, "{frames:#?}");
        assert!(names[0].contains("pthread_mutex_lock"), "{frames:#?}");
        assert_eq!(frames[0].offset, Some(0), "{frames:#?}");
        assert!(frames[0].module.as_deref().unwrap().contains("libc.so"));
        assert_eq!(&names[1..4], ["lock_b", "do_work", "main"], "{frames:#?}");
        for (f, marker) in frames[1..4]
            .iter()
            .zip(["CALL_B", "CALL_WORK", "CALL_MAIN"])
        {
            if debug {
                assert!(f.file.as_deref().unwrap().ends_with("fixture.c"), "{f:?}");
                assert_eq!(f.line, Some(line_of(marker)), "{f:?}");
            } else {
                assert_eq!((&f.file, f.line), (&None, None), "{f:?}");
            }
            assert_eq!(f.module.as_deref(), Some(bin.to_str().unwrap()));
        }
        assert!(frames[1].addr > lock_b && frames[1].offset == Some(frames[1].addr - lock_b));

        // The same hit, had the probe been placed after the function's
        // `push rbx; sub $0x10, rsp` (Debian 12's libc): CFI describes it.
        let m = s.spaces().find(pid, ip).cloned().unwrap();
        let code = std::fs::read(&m.path).unwrap();
        let at = m.file_offset_of(ip) as usize;
        let code = &code[at..at + 0x19];
        if code[..0x10]
            == [
                0x8b, 0x47, 0x10, 0x89, 0xc2, 0x81, 0xe2, 0x7f, 0x01, 0, 0, 0x83, 0xe0, 0x7c, 0x0f,
                0x85,
            ]
            && code[0x14..] == [0x53, 0x48, 0x83, 0xec, 0x10]
        {
            let mut deeper = vec![0u8; 0x18];
            deeper.extend_from_slice(&stack);
            let later = s.unwind(pid, ip + 0x19, sp - 0x18, bp, &deeper);
            assert_eq!(later[1..], addrs[1..], "{later:x?} vs {addrs:x?}");
        } else {
            eprintln!("unexpected libc code at pthread_mutex_lock: skipping mid-function probe");
        }

        assert_eq!(s.lock_symbol(pid, mutex_a).as_deref(), Some("mutex_a"));
        assert_eq!(
            s.lock_symbol(pid, mutex_a + 8).as_deref(),
            Some("mutex_a+0x8")
        );
        assert_eq!(s.lock_symbol(pid, holder_m).as_deref(), Some("holder+0x28"));
        assert_eq!(
            s.lock_symbol(pid, bss_end).as_deref(),
            Some("big_bss+0x1869f")
        );
        assert_eq!(s.lock_symbol(pid, heap), None);
        assert_eq!(s.lock_symbol(pid, sp), None);
        // Where each lock lives, for the reuse rule (`crate::reuse`).
        for global in [mutex_a, holder_m, bss_end] {
            assert_eq!(s.lock_memory(pid, global, sp), LockMemory::Image);
        }
        assert_eq!(s.lock_memory(pid, sp + 64, sp), LockMemory::Stack);
        assert_eq!(s.lock_memory(pid, heap, sp), LockMemory::Heap);
        // libc's own data symbols resolve too (e.g. via .dynsym).
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn fixture_with_frame_pointers() {
        check_fixture("fp", &["-g", "-O0", "-fno-omit-frame-pointer"]);
    }

    #[test]
    fn fixture_without_frame_pointers() {
        check_fixture("nofp", &["-g", "-O0", "-fomit-frame-pointer"]);
    }

    #[test]
    fn fixture_without_debug_info() {
        check_fixture("nodebug", &["-O0", "-fomit-frame-pointer"]);
    }
}
