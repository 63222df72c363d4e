//! Multi-uprobe links (`BPF_TRACE_UPROBE_MULTI`, Linux 6.6+): one link puts
//! one program on every probed offset of one file, in every process or in one
//! process only (the kernel then inserts breakpoints only in that process's
//! memory). Closing a link removes all its breakpoints and waits for one
//! grace period; aya's single uprobes wait for one each (about 0.1 s per
//! probe in this VM, 6 s for one libc).
//!
//! aya 0.14 exposes neither the link nor the program load the kernel asks of
//! it (`expected_attach_type = BPF_TRACE_UPROBE_MULTI`, fixed when the
//! program is loaded), so both go through bpf(2) here. The programs are
//! parsed again with aya-obj and relocated against the maps aya created:
//! both copies share every map and every global.

use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    os::unix::ffi::OsStrExt,
    path::Path,
};

use anyhow::{anyhow, Context, Result};
use aya::{maps::Map, Ebpf};
use aya_obj::generated::{
    bpf_attach_type::BPF_TRACE_UPROBE_MULTI, bpf_attr, bpf_cmd, bpf_insn,
    bpf_prog_type::BPF_PROG_TYPE_KPROBE, BPF_F_UPROBE_MULTI_RETURN,
};

/// The kernel's limit on program names (with the NUL).
const OBJ_NAME_LEN: usize = 16;
/// Verifier log for a program the kernel refuses (its last lines are kept).
const LOG_SIZE: usize = 1 << 20;

/// The maps of `ebpf` by name, as raw descriptors (valid while `ebpf` is):
/// what [`load_programs`] relocates against, on another thread.
pub fn map_fds(ebpf: &Ebpf) -> Vec<(String, RawFd)> {
    ebpf.maps()
        .map(|(name, map)| (name.to_owned(), map_fd(map).as_raw_fd()))
        .collect()
}

/// Loads the uprobe programs `names` of `object` for multi-uprobe links,
/// relocated against `maps` (those aya created from the same object, see
/// [`map_fds`]).
pub fn load_programs(
    object: &[u8],
    maps: &[(String, RawFd)],
    names: &[&'static str],
) -> Result<HashMap<&'static str, OwnedFd>> {
    let mut obj = aya_obj::Object::parse(object).context("cannot parse the eBPF object")?;
    if obj.has_btf_relocations() {
        let btf = aya::Btf::from_sys_fs().context("cannot read the kernel's BTF")?;
        obj.relocate_btf(&btf)?;
    }
    let text_sections: HashSet<usize> = obj.functions.keys().map(|(s, _)| *s).collect();
    let obj_maps = std::mem::take(&mut obj.maps);
    let mut relocated = Vec::new();
    for (name, fd) in maps {
        let def = obj_maps
            .get(name)
            .ok_or_else(|| anyhow!("map {name} is not in the eBPF object"))?;
        relocated.push((name.as_str(), *fd, def));
    }
    obj.relocate_maps(relocated.into_iter(), &text_sections)?;
    obj.relocate_calls(&text_sections)?;
    // The verifier takes most of the time (up to 0.2 s for each program
    // that records acquisitions): one thread per program, on every CPU.
    let mut jobs = Vec::new();
    for &name in names {
        let program = obj
            .programs
            .get(name)
            .ok_or_else(|| anyhow!("the eBPF object has no program {name}"))?;
        let function = &obj.functions[&program.function_key()];
        jobs.push((name, &function.instructions, &program.license));
    }
    let loaded: Vec<(&'static str, Result<OwnedFd>)> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|(name, insns, license)| {
                (name, s.spawn(move || load_program(name, insns, license)))
            })
            .collect();
        handles
            .into_iter()
            .map(|(name, h)| (name, h.join().expect("loader thread")))
            .collect()
    });
    let mut fds = HashMap::new();
    for (name, fd) in loaded {
        let fd =
            fd.with_context(|| format!("cannot load program {name} for multi-uprobe links"))?;
        fds.insert(name, fd);
    }
    Ok(fds)
}

fn load_program(name: &str, insns: &[bpf_insn], license: &std::ffi::CStr) -> Result<OwnedFd> {
    // SAFETY: bpf_attr is plain data; all-zero is its default.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: the BPF_PROG_LOAD member of the union.
    let load = unsafe { &mut attr.__bindgen_anon_3 };
    load.prog_type = BPF_PROG_TYPE_KPROBE as u32;
    load.expected_attach_type = BPF_TRACE_UPROBE_MULTI as u32;
    load.insns = insns.as_ptr() as u64;
    load.insn_cnt = insns.len() as u32;
    load.license = license.as_ptr() as u64;
    for (dst, src) in load
        .prog_name
        .iter_mut()
        .zip(name.bytes().take(OBJ_NAME_LEN - 1))
    {
        *dst = src as _;
    }
    // The verifier's statistics only (BPF_LOG_STATS): its cost, for -v.
    let mut stats = [0u8; 512];
    // SAFETY: as above.
    let load = unsafe { &mut attr.__bindgen_anon_3 };
    load.log_level = 4;
    load.log_buf = stats.as_mut_ptr() as u64;
    load.log_size = stats.len() as u32;
    let started = std::time::Instant::now();
    if let Ok(fd) = bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr) {
        let stats = String::from_utf8_lossy(&stats);
        let stats = stats.trim_end_matches('\0').replace('\n', "; ");
        tracing::debug!(program = name, elapsed = ?started.elapsed(), %stats, "program verified");
        return Ok(fd);
    }
    // Again with the verifier's log, for the error.
    let mut log = vec![0u8; LOG_SIZE];
    // SAFETY: as above.
    let load = unsafe { &mut attr.__bindgen_anon_3 };
    load.log_level = 1;
    load.log_buf = log.as_mut_ptr() as u64;
    load.log_size = log.len() as u32;
    bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr).map_err(|e| {
        let text = String::from_utf8_lossy(&log);
        let text = text.trim_end_matches('\0');
        let tail: Vec<&str> = text.lines().rev().take(8).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        anyhow!("{e}; verifier: {}", tail.join(" / "))
    })
}

/// One program on `offsets` (file offsets) of the file at `path`, as return
/// probes when `is_return`, in process `pid` only when given. `cookies`
/// (one per offset, or empty) are what `bpf_get_attach_cookie` returns.
pub fn attach(
    program: BorrowedFd<'_>,
    path: &Path,
    offsets: &[u64],
    cookies: &[u64],
    is_return: bool,
    pid: Option<u32>,
) -> io::Result<OwnedFd> {
    assert!(cookies.is_empty() || cookies.len() == offsets.len());
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: plain data, as above.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: the BPF_LINK_CREATE member of the union.
    let link = unsafe { &mut attr.link_create };
    link.__bindgen_anon_1.prog_fd = program.as_raw_fd() as u32;
    link.attach_type = BPF_TRACE_UPROBE_MULTI as u32;
    // SAFETY: the uprobe_multi member, for this attach type.
    let multi = unsafe { &mut link.__bindgen_anon_3.uprobe_multi };
    multi.path = path.as_ptr() as u64;
    multi.offsets = offsets.as_ptr() as u64;
    multi.cookies = if cookies.is_empty() {
        0
    } else {
        cookies.as_ptr() as u64
    };
    multi.cnt = offsets.len() as u32;
    multi.flags = if is_return {
        BPF_F_UPROBE_MULTI_RETURN
    } else {
        0
    };
    multi.pid = pid.unwrap_or(0);
    bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr)
}

/// Whether the kernel has multi-uprobe links, asked with an empty program
/// before the real ones are loaded for them: on a kernel without, they
/// would be verified twice (for the links, then as single uprobes), and the
/// verifier is most of the start-up time (a minute on 6.1 under emulation).
pub fn probe_support() -> Result<()> {
    // r0 = 0; exit
    // SAFETY: bpf_insn is plain data; registers, offsets and immediates
    // all zero.
    let mut insns: [bpf_insn; 2] = unsafe { std::mem::zeroed() };
    insns[0].code = 0xb7;
    insns[1].code = 0x95;
    let program = load_program("probe_multi", &insns, c"GPL")?;
    check_support(program.as_fd())
        .map_err(|e| anyhow!("this kernel has no multi-uprobe links ({e})"))
}

/// Whether the kernel has multi-uprobe links: asked for one on `/`, which
/// is not a regular file, a kernel that knows them answers EBADF (as libbpf
/// probes it); an older one refuses the attach type (EINVAL).
pub fn check_support(program: BorrowedFd<'_>) -> io::Result<()> {
    match attach(program, Path::new("/"), &[0], &[], false, None) {
        Err(e) if e.raw_os_error() == Some(libc::EBADF) => Ok(()),
        Err(e) => Err(e),
        Ok(_) => Err(io::Error::other("a link on / was accepted")),
    }
}

/// Puts `program` at `index` of the program array `map` (for tail calls).
pub fn set_tail(map: RawFd, index: u32, program: BorrowedFd<'_>) -> io::Result<()> {
    let key = index;
    let value = program.as_raw_fd() as u32;
    // SAFETY: plain data, as above.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: the BPF_MAP_*_ELEM member of the union.
    let elem = unsafe { &mut attr.__bindgen_anon_2 };
    elem.map_fd = map as u32;
    elem.key = std::ptr::addr_of!(key) as u64;
    elem.__bindgen_anon_1.value = std::ptr::addr_of!(value) as u64;
    // SAFETY: `attr` is a valid bpf_attr for the command, and `key` and
    // `value` outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_MAP_UPDATE_ELEM as libc::c_long,
            &mut attr as *mut bpf_attr,
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Closes `links` on several threads at once: each close waits for a grace
/// period, and concurrent waits share one.
pub fn close_concurrently<T: Send>(links: Vec<T>) {
    const THREADS: usize = 32;
    if links.len() <= 1 {
        return;
    }
    let per_thread = links.len().div_ceil(THREADS);
    let mut links = links;
    std::thread::scope(|s| {
        while !links.is_empty() {
            let chunk: Vec<T> = links.drain(..per_thread.min(links.len())).collect();
            s.spawn(move || drop(chunk));
        }
    });
}

fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a valid bpf_attr for `cmd`, and every pointer in it
    // outlives the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut bpf_attr,
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new file descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as i32) })
}

/// The descriptor of one of aya's maps (aya 0.14 exposes it only on the
/// typed maps, and on the `MapData` inside each kind).
fn map_fd(map: &Map) -> BorrowedFd<'_> {
    let data = match map {
        Map::Array(d)
        | Map::ArrayOfMaps(d)
        | Map::BloomFilter(d)
        | Map::CgroupArray(d)
        | Map::CgroupStorage(d)
        | Map::CgrpStorage(d)
        | Map::CpuMap(d)
        | Map::DevMap(d)
        | Map::DevMapHash(d)
        | Map::HashMap(d)
        | Map::HashOfMaps(d)
        | Map::InodeStorage(d)
        | Map::LpmTrie(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuCgroupStorage(d)
        | Map::PerCpuHashMap(d)
        | Map::PerCpuLruHashMap(d)
        | Map::PerfEventArray(d)
        | Map::ProgramArray(d)
        | Map::Queue(d)
        | Map::ReusePortSockArray(d)
        | Map::RingBuf(d)
        | Map::SockHash(d)
        | Map::SockMap(d)
        | Map::SkStorage(d)
        | Map::Stack(d)
        | Map::StackTraceMap(d)
        | Map::Unsupported(d)
        | Map::XskMap(d) => d,
    };
    data.fd().as_fd()
}
