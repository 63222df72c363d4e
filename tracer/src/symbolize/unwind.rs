//! Stack unwinding from a uprobe's registers and a copy of the user stack,
//! with `framehop` and the `.eh_frame` CFI of the mapped ELF files (frame
//! pointers where a frame has no CFI).
//!
//! The unwind sections of each file are read once and cached by file; for
//! every walk, a framehop unwinder is populated lazily with the modules that
//! the walk actually enters, placed at the process's load bias for them.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder as _};
use object::{Object as _, ObjectSection as _};

use crate::host::elf::{load_bias, load_segments, LoadSegment};
use crate::host::spaces::{AddressSpaces, FileKey, Mapping};

/// At most this many frames (the ip included) are returned.
pub const MAX_FRAMES: usize = 64;

/// Files whose unwind data is kept; the cache is cleared past this.
const MAX_CACHED_FILES: usize = 512;

type Data = Arc<[u8]>;

/// What framehop needs from one ELF file.
struct ElfUnwindData {
    loads: Vec<LoadSegment>,
    text_svma: Option<Range<u64>>,
    got_svma: Option<Range<u64>>,
    eh_frame: Option<(Range<u64>, Data)>,
    eh_frame_hdr: Option<(Range<u64>, Data)>,
    debug_frame: Option<Data>,
}

impl ElfUnwindData {
    fn read(path: &std::path::Path) -> Option<Self> {
        let bytes = crate::host::files::read_elf(path)?;
        let elf = object::File::parse(&*bytes).ok()?;
        let range = |name: &str| {
            elf.section_by_name(name)
                .map(|s| s.address()..s.address() + s.size())
        };
        let section = |name: &str| {
            let s = elf.section_by_name(name)?;
            let data = s.uncompressed_data().ok()?;
            Some((s.address()..s.address() + s.size(), Data::from(&*data)))
        };
        Some(Self {
            loads: load_segments(&elf),
            text_svma: range(".text"),
            got_svma: range(".got"),
            eh_frame: section(".eh_frame"),
            eh_frame_hdr: section(".eh_frame_hdr"),
            debug_frame: section(".debug_frame").map(|(_, d)| d),
        })
    }

    fn module(&self, name: String, mapping: &Mapping) -> Option<Module<Data>> {
        let bias = load_bias(mapping, &self.loads)?;
        let info = ExplicitModuleSectionInfo {
            base_svma: 0,
            text_svma: self.text_svma.clone(),
            got_svma: self.got_svma.clone(),
            eh_frame_svma: self.eh_frame.as_ref().map(|(r, _)| r.clone()),
            eh_frame: self.eh_frame.as_ref().map(|(_, d)| d.clone()),
            eh_frame_hdr_svma: self.eh_frame_hdr.as_ref().map(|(r, _)| r.clone()),
            eh_frame_hdr: self.eh_frame_hdr.as_ref().map(|(_, d)| d.clone()),
            debug_frame: self.debug_frame.clone(),
            ..Default::default()
        };
        Some(Module::new(name, mapping.start..mapping.end, bias, info))
    }
}

/// Unwinds user stacks of traced processes.
#[derive(Default)]
pub struct Unwinder {
    files: HashMap<FileKey, Option<Arc<ElfUnwindData>>>,
}

impl Unwinder {
    pub fn new() -> Self {
        Self::default()
    }

    fn file_data(&mut self, pid: u32, m: &Mapping) -> Option<Arc<ElfUnwindData>> {
        let key = m.file_key();
        if let Some(d) = self.files.get(&key) {
            return d.clone();
        }
        if self.files.len() >= MAX_CACHED_FILES {
            self.files.clear();
        }
        let data = crate::host::spaces::readable_path(pid, m)
            .and_then(|p| ElfUnwindData::read(&p))
            .map(Arc::new);
        if data.is_none() {
            tracing::debug!("no unwind data for {}", m.path.display());
        }
        self.files.insert(key, data.clone());
        data
    }

    /// Unwind the stack of `pid` from the registers at the probe. `stack`
    /// holds the bytes at `[sp, sp + stack.len())`; the walk ends at the
    /// first read outside it. Returns `ip` first, then return addresses.
    pub fn unwind(
        &mut self,
        spaces: &mut AddressSpaces,
        pid: u32,
        ip: u64,
        sp: u64,
        bp: u64,
        stack: &[u8],
    ) -> Vec<u64> {
        let mut read_stack = |addr: u64| -> Result<u64, ()> {
            let off = addr.checked_sub(sp).ok_or(())? as usize;
            let bytes = stack.get(off..off.checked_add(8).ok_or(())?).ok_or(())?;
            Ok(u64::from_le_bytes(bytes.try_into().map_err(|_| ())?))
        };
        let mut unwinder: UnwinderX86_64<Data> = UnwinderX86_64::new();
        let mut cache = CacheX86_64::new();
        // Module start addresses already added (or known to be missing).
        let mut tried: Vec<u64> = Vec::new();
        let mut regs = UnwindRegsX86_64::new(ip, sp, bp);
        let mut frames = vec![ip];
        let mut address = FrameAddress::from_instruction_pointer(ip);
        while frames.len() < MAX_FRAMES {
            let lookup = address.address_for_lookup();
            if let Some(m) = spaces.find(pid, lookup) {
                if !tried.contains(&m.start) {
                    tried.push(m.start);
                    if m.is_file() {
                        let m = m.clone();
                        if let Some(module) = self
                            .file_data(pid, &m)
                            .and_then(|d| d.module(m.path.display().to_string(), &m))
                        {
                            unwinder.add_module(module);
                        }
                    }
                }
            }
            let prev_sp = regs.sp();
            match unwinder.unwind_frame(address, &mut regs, &mut cache, &mut read_stack) {
                Ok(Some(ra)) => {
                    let Some(next) = FrameAddress::from_return_address(ra) else {
                        break;
                    };
                    // Stacks grow down: a caller's frame is never below.
                    if regs.sp() < prev_sp {
                        break;
                    }
                    frames.push(ra);
                    address = next;
                }
                Ok(None) | Err(_) => break,
            }
        }
        frames
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Registers and a copy of the stack of the calling thread, as a uprobe
    /// would see them at the instruction after the asm block.
    #[inline(always)]
    pub(crate) fn capture() -> (u64, u64, u64, Vec<u8>) {
        let (ip, sp, bp): (u64, u64, u64);
        // SAFETY: reads registers only.
        unsafe {
            std::arch::asm!(
                "lea {ip}, [rip]",
                "mov {sp}, rsp",
                "mov {bp}, rbp",
                ip = out(reg) ip,
                sp = out(reg) sp,
                bp = out(reg) bp,
                options(nostack, nomem, preserves_flags),
            );
        }
        // Copy up to 12 KiB of the stack from sp, staying inside [stack]
        // mapping of this thread.
        let mut len = 12 * 1024usize;
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        for line in maps.lines() {
            let range = line.split(' ').next().unwrap();
            let (a, b) = range.split_once('-').unwrap();
            let (a, b) = (
                u64::from_str_radix(a, 16).unwrap(),
                u64::from_str_radix(b, 16).unwrap(),
            );
            if (a..b).contains(&sp) {
                len = len.min((b - sp) as usize);
            }
        }
        // SAFETY: [sp, sp + len) is mapped stack memory of this thread.
        let stack = unsafe { std::slice::from_raw_parts(sp as *const u8, len) }.to_vec();
        (ip, sp, bp, stack)
    }

    #[inline(never)]
    fn level3(out: &mut Vec<u64>) {
        let (ip, sp, bp, stack) = capture();
        let mut spaces = AddressSpaces::proc_only();
        let mut u = Unwinder::new();
        *out = u.unwind(&mut spaces, std::process::id(), ip, sp, bp, &stack);
        std::hint::black_box(out);
    }

    #[inline(never)]
    fn level2(out: &mut Vec<u64>) {
        level3(out);
        std::hint::black_box(out);
    }

    #[inline(never)]
    fn level1(out: &mut Vec<u64>) {
        level2(out);
        std::hint::black_box(out);
    }

    #[test]
    fn unwinds_own_stack() {
        let mut frames = Vec::new();
        level1(&mut frames);
        // ip in level3, then return addresses into level2, level1, the test.
        assert!(frames.len() >= 4, "{frames:x?}");
        let within = |f: fn(&mut Vec<u64>), a: u64| {
            let start = f as *const () as u64;
            (start..start + 0x2000).contains(&a)
        };
        assert!(within(level3, frames[0]), "{frames:x?}");
        assert!(within(level2, frames[1]), "{frames:x?}");
        assert!(within(level1, frames[2]), "{frames:x?}");
    }
}
