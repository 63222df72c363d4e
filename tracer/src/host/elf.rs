//! ELF helpers shared by the stages that read binaries: how a file's
//! PT_LOAD segments map its addresses.

use std::path::Path;

use crate::host::mapping::Mapping;

/// A PT_LOAD program header of an ELF file: how file offsets map to the
/// addresses stated in the file (SVMAs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadSegment {
    pub vaddr: u64,
    pub memsz: u64,
    pub offset: u64,
    pub filesz: u64,
    pub executable: bool,
}

/// The PT_LOAD segments of an ELF image (in memory, or read lazily from a
/// file with `object::ReadCache`).
pub fn load_segments<'d, R: object::ReadRef<'d>>(elf: &object::File<'d, R>) -> Vec<LoadSegment> {
    use object::{Object as _, ObjectSegment as _, SegmentFlags};
    elf.segments()
        .filter_map(|s| {
            let (offset, filesz) = s.file_range();
            let executable = match s.flags() {
                SegmentFlags::Elf { p_flags } => p_flags & object::elf::PF_X != 0,
                _ => false,
            };
            (s.size() > 0).then_some(LoadSegment {
                vaddr: s.address(),
                memsz: s.size(),
                offset,
                filesz,
                executable,
            })
        })
        .collect()
}

/// The load bias of the ELF image that `mapping` maps (process address =
/// bias + address stated in the file), computed from the PT_LOAD segment
/// that the mapping's file offset falls into. A segment whose executable
/// flag matches the mapping's is preferred (pages shared by two segments).
pub fn load_bias(mapping: &Mapping, loads: &[LoadSegment]) -> Option<u64> {
    const PAGE: u64 = 4096;
    let off = mapping.file_offset;
    let containing = |s: &&LoadSegment| {
        let lo = s.offset & !(PAGE - 1);
        let hi = (s.offset + s.filesz.max(1)).max(lo + 1);
        (lo..hi).contains(&off)
    };
    let seg = loads
        .iter()
        .filter(containing)
        .find(|s| s.executable == mapping.executable)
        .or_else(|| loads.iter().find(containing))?;
    // svma(start) = vaddr + (off - offset); bias = start - svma(start).
    let svma_start = seg.vaddr.wrapping_add(off).wrapping_sub(seg.offset);
    Some(mapping.start.wrapping_sub(svma_start))
}

/// Whether a mapped file is a C library that may hold the lock functions:
/// `libc.so.6` (glibc 2.34 and later: pthread is in it), or, for older
/// glibc, `libpthread.so.0` (the old `libc.so.6` only has forwarders, which
/// [`Target::defines_lock_functions`] rejects).
/// Whether the ELF executable at `path` names a dynamic loader (its
/// libraries are mapped after the exec); false for a static program or
/// what cannot be read.
pub fn has_interpreter(path: &Path) -> bool {
    use object::read::elf::{ElfFile64, ProgramHeader};
    let Ok(data) = std::fs::read(path) else {
        return false;
    };
    let Ok(file) = ElfFile64::<object::Endianness>::parse(&*data) else {
        return false;
    };
    let endian = file.endian();
    file.elf_program_headers()
        .iter()
        .any(|ph| ph.p_type(endian) == object::elf::PT_INTERP)
}

pub fn is_lock_library(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let versioned = |stem: &str| name.starts_with(stem) && name.ends_with(".so");
    name == "libc.so.6"
        || name == "libpthread.so.0"
        || versioned("libc-")
        || versioned("libpthread-")
}
