//! ELF helpers shared by the stages that read binaries: whether a file is
//! an ELF file of this machine (from its header alone), how a file's
//! PT_LOAD segments map its addresses.

use std::io::Read;
use std::path::Path;

use crate::host::mapping::Mapping;

/// The ELF machine the probes and the instruction decoder are built for.
#[cfg(target_arch = "x86_64")]
const MACHINE: (u16, &str) = (object::elf::EM_X86_64, "x86-64");
#[cfg(target_arch = "aarch64")]
const MACHINE: (u16, &str) = (object::elf::EM_AARCH64, "AArch64");

/// Checks, from its first 64 bytes only, that `path` is a 64-bit
/// little-endian ELF file for this machine: a file that is not is refused
/// before anything reads it whole (a 2 GiB file of something else, a
/// 32-bit libc whose functions no probe could be placed in).
pub fn check_header(path: &Path) -> anyhow::Result<()> {
    use anyhow::{bail, Context};
    let mut header = [0u8; 64];
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut got = 0;
    while got < header.len() {
        match file.read(&mut header[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }
    if got < header.len() || header[..4] != object::elf::ELFMAG {
        bail!("{} is not an ELF file", path.display());
    }
    let (machine, name) = MACHINE;
    if header[4] != object::elf::ELFCLASS64 || header[5] != object::elf::ELFDATA2LSB {
        bail!(
            "{} is a 32-bit or big-endian ELF file, not {name} ELF64: its lock functions cannot be probed",
            path.display()
        );
    }
    let found = u16::from_le_bytes([header[18], header[19]]);
    if found != machine {
        bail!(
            "{} is an ELF file for machine {found}, not {name}: its lock functions cannot be probed",
            path.display()
        );
    }
    Ok(())
}

/// The largest ELF file read whole (probe placement, unwind tables, data
/// symbols). Debian's largest binaries are a few hundred MiB; a file a
/// traced process maps can be anything its owner made, a sparse 100 GiB
/// file among them, and it must not become the tracer's memory.
pub const MAX_ELF_BYTES: u64 = 512 << 20;

/// `path` read whole, refused when it is larger than [`MAX_ELF_BYTES`]
/// (asked of the open file, then enforced while reading: the file can
/// grow in between).
pub fn read_bounded(path: &Path) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context;
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    read_opened_bounded(file, path)
}

/// [`read_bounded`] of a file already open (`path` names it in errors).
pub fn read_opened_bounded(file: std::fs::File, path: &Path) -> anyhow::Result<Vec<u8>> {
    use anyhow::{bail, Context};
    let too_big = || {
        anyhow::anyhow!(
            "{} is larger than {} MiB: not read",
            path.display(),
            MAX_ELF_BYTES >> 20
        )
    };
    let len = file
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    if len > MAX_ELF_BYTES {
        return Err(too_big());
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(MAX_ELF_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() as u64 > MAX_ELF_BYTES {
        bail!(too_big());
    }
    Ok(bytes)
}

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
    if check_header(path).is_err() {
        return false;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_checked_before_anything_is_read_whole() {
        let dir = std::env::temp_dir().join(format!("locktrace-elf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Our own executable: an ELF file of this machine.
        check_header(&std::env::current_exe().unwrap()).unwrap();
        let text = dir.join("text");
        std::fs::write(&text, vec![b'x'; 100]).unwrap();
        assert!(check_header(&text)
            .unwrap_err()
            .to_string()
            .contains("not an ELF"));
        let short = dir.join("short");
        std::fs::write(&short, b"\x7fELF").unwrap();
        assert!(check_header(&short).is_err());
        let mut elf32 = vec![0u8; 64];
        elf32[..4].copy_from_slice(&object::elf::ELFMAG);
        elf32[4] = object::elf::ELFCLASS32;
        elf32[5] = object::elf::ELFDATA2LSB;
        let path32 = dir.join("elf32");
        std::fs::write(&path32, &elf32).unwrap();
        assert!(check_header(&path32)
            .unwrap_err()
            .to_string()
            .contains("32-bit"));
        let mut arm = elf32.clone();
        arm[4] = object::elf::ELFCLASS64;
        arm[18..20].copy_from_slice(&object::elf::EM_ARM.to_le_bytes());
        let path_arm = dir.join("arm");
        std::fs::write(&path_arm, &arm).unwrap();
        assert!(check_header(&path_arm)
            .unwrap_err()
            .to_string()
            .contains("machine 40"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
