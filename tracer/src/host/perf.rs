//! The perf side-band: a software dummy perf event per online CPU
//! (host-wide, `pid = -1`) that only emits MMAP2, COMM (exec), FORK and EXIT
//! records, read from its ring buffers. [`super::spaces::AddressSpaces`]
//! replays them.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;

use crate::host::mapping::Mapping;

/// Side-band ring bytes in all, split between the CPUs: a busy host (a
/// build starting hundreds of compilers) fills 1 MiB per CPU between two
/// drains, and a lost MMAP record leaves a short-lived process
/// unsymbolized.
const RING_BYTES_TOTAL: usize = 16 << 20;
/// Per CPU, at least and at most.
const RING_BYTES_MIN: usize = 512 << 10;
const RING_BYTES_MAX: usize = 8 << 20;

/// Data pages per CPU ring (a power of two), for `cpus` online CPUs.
fn ring_pages(cpus: usize, page: usize) -> usize {
    let per_cpu = (RING_BYTES_TOTAL / cpus.max(1)).clamp(RING_BYTES_MIN, RING_BYTES_MAX);
    // The largest power of two of pages that fits.
    let pages = (per_cpu / page).max(1);
    1 << (usize::BITS - 1 - pages.leading_zeros())
}

const PERF_TYPE_SOFTWARE: u32 = 1;
const PERF_COUNT_SW_DUMMY: u64 = 9;
const PERF_SAMPLE_TID: u64 = 1 << 1;
const PERF_SAMPLE_TIME: u64 = 1 << 2;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;

// perf_event_attr flag bits.
const ATTR_MMAP: u64 = 1 << 8;
const ATTR_COMM: u64 = 1 << 9;
const ATTR_TASK: u64 = 1 << 13;
const ATTR_WATERMARK: u64 = 1 << 14;
const ATTR_MMAP_DATA: u64 = 1 << 17;
const ATTR_SAMPLE_ID_ALL: u64 = 1 << 18;
const ATTR_MMAP2: u64 = 1 << 23;
const ATTR_COMM_EXEC: u64 = 1 << 24;
const ATTR_USE_CLOCKID: u64 = 1 << 25;

const PERF_RECORD_MMAP: u32 = 1;
const PERF_RECORD_LOST: u32 = 2;
const PERF_RECORD_COMM: u32 = 3;
const PERF_RECORD_EXIT: u32 = 4;
const PERF_RECORD_FORK: u32 = 7;
const PERF_RECORD_MMAP2: u32 = 10;
const PERF_RECORD_MISC_COMM_EXEC: u16 = 1 << 13;
const PERF_RECORD_MISC_MMAP_BUILD_ID: u16 = 1 << 14;

/// `struct perf_event_attr` up to `config2` (PERF_ATTR_SIZE_VER1, 72 bytes)
/// plus the later fields, zeroed (VER5, 112 bytes).
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    type_: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_watermark: u32,
    bp_type: u32,
    config1: u64,
    config2: u64,
    branch_sample_type: u64,
    sample_regs_user: u64,
    sample_stack_user: u32,
    clockid: i32,
    sample_regs_intr: u64,
    aux_watermark: u32,
    sample_max_stack: u16,
    reserved_2: u16,
    aux_sample_size: u32,
    reserved_3: u32,
}

/// Offsets in `struct perf_event_mmap_page`.
const DATA_HEAD: usize = 1024;
const DATA_TAIL: usize = 1032;
const DATA_OFFSET: usize = 1040;
const DATA_SIZE: usize = 1048;

pub struct Ring {
    _fd: OwnedFd,
    base: *mut u8,
    len: usize,
    data_offset: usize,
    data_size: usize,
}

// SAFETY: the mapping is owned by this value and only accessed through
// `&mut self`; the kernel is the only other writer.
unsafe impl Send for Ring {}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` come from a successful mmap.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

fn online_cpus() -> anyhow::Result<Vec<u32>> {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .context("reading /sys/devices/system/cpu/online")?;
    let mut cpus = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<u32>()?..=b.parse::<u32>()?),
            None => cpus.push(part.parse()?),
        }
    }
    Ok(cpus)
}

pub fn open_rings() -> anyhow::Result<Vec<Ring>> {
    let cpus = online_cpus()?;
    let pages = ring_pages(cpus.len(), page_size());
    let mut rings = Vec::with_capacity(cpus.len());
    for cpu in cpus {
        rings
            .push(Ring::open(cpu, pages).with_context(|| format!("perf_event_open on cpu {cpu}"))?);
    }
    Ok(rings)
}

impl Ring {
    fn open(cpu: u32, pages: usize) -> anyhow::Result<Self> {
        let page = page_size();
        let attr = PerfEventAttr {
            type_: PERF_TYPE_SOFTWARE,
            size: std::mem::size_of::<PerfEventAttr>() as u32,
            config: PERF_COUNT_SW_DUMMY,
            sample_period: 1,
            sample_type: PERF_SAMPLE_TID | PERF_SAMPLE_TIME,
            flags: ATTR_MMAP
                | ATTR_MMAP_DATA
                | ATTR_MMAP2
                | ATTR_COMM
                | ATTR_COMM_EXEC
                | ATTR_TASK
                | ATTR_SAMPLE_ID_ALL
                | ATTR_WATERMARK
                | ATTR_USE_CLOCKID,
            // Record times comparable with the collector's clock (how late
            // a forked child got its probes).
            clockid: libc::CLOCK_MONOTONIC,
            // We never poll: wake-ups are irrelevant, keep them rare.
            wakeup_watermark: (pages * page / 2) as u32,
            ..Default::default()
        };
        // SAFETY: a valid perf_event_attr of the declared size.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                &attr as *const PerfEventAttr,
                -1 as libc::pid_t,
                cpu as libc::c_int,
                -1 as libc::c_int,
                PERF_FLAG_FD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error().into());
        }
        // SAFETY: a fresh fd that we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let len = (pages + 1) * page;
        // SAFETY: mapping a perf fd as documented in perf_event_open(2).
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error()).context("mmap of the perf ring buffer");
        }
        let base = base.cast::<u8>();
        // SAFETY: the header page is mapped.
        let (data_offset, data_size) = unsafe {
            (
                std::ptr::read_volatile(base.add(DATA_OFFSET) as *const u64) as usize,
                std::ptr::read_volatile(base.add(DATA_SIZE) as *const u64) as usize,
            )
        };
        // Kernels before 4.1 leave these 0: the data follows the first page.
        let (data_offset, data_size) = if data_size == 0 {
            (page, pages * page)
        } else {
            (data_offset, data_size)
        };
        Ok(Ring {
            _fd: fd,
            base,
            len,
            data_offset,
            data_size,
        })
    }

    fn head(&self) -> &AtomicU64 {
        // SAFETY: aligned u64 inside the mapped header page.
        unsafe { &*(self.base.add(DATA_HEAD) as *const AtomicU64) }
    }

    fn tail(&self) -> &AtomicU64 {
        // SAFETY: as for `head`.
        unsafe { &*(self.base.add(DATA_TAIL) as *const AtomicU64) }
    }

    /// Copy `len` bytes at ring position `pos` (wrapping) into `out`.
    fn copy(&self, pos: u64, len: usize, out: &mut Vec<u8>) {
        out.clear();
        let size = self.data_size;
        let at = (pos % size as u64) as usize;
        let first = len.min(size - at);
        // SAFETY: both ranges lie inside the data area.
        unsafe {
            let data = self.base.add(self.data_offset);
            out.extend_from_slice(std::slice::from_raw_parts(data.add(at), first));
            out.extend_from_slice(std::slice::from_raw_parts(data, len - first));
        }
    }

    /// Parse every record between tail and head, then release them.
    pub fn drain(&mut self, out: &mut Vec<Record>) {
        let head = self.head().load(Ordering::Acquire);
        let mut tail = self.tail().load(Ordering::Relaxed);
        let mut buf = Vec::with_capacity(256);
        while tail + 8 <= head {
            self.copy(tail, 8, &mut buf);
            let size = u16::from_ne_bytes([buf[6], buf[7]]) as usize;
            if size < 8 || tail + size as u64 > head {
                break;
            }
            self.copy(tail, size, &mut buf);
            if let Some(r) = parse_record(&buf) {
                out.push(r);
            }
            tail += size as u64;
        }
        self.tail().store(tail, Ordering::Release);
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

#[derive(Debug)]
pub struct Record {
    pub pid: u32,
    pub time: u64,
    pub kind: RecordKind,
}

#[derive(Debug)]
pub enum RecordKind {
    Mmap(Mapping),
    Comm { exec: bool, tid: u32, name: String },
    Fork { ppid: u32 },
    Exit { tid: u32 },
    Lost(u64),
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

fn cstr_at(b: &[u8], off: usize) -> Option<&[u8]> {
    let s = b.get(off..)?;
    Some(&s[..s.iter().position(|&c| c == 0).unwrap_or(s.len())])
}

fn bytes_to_path(b: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt as _;
    Path::new(std::ffi::OsStr::from_bytes(b)).to_path_buf()
}

/// Parse one record (header included). With `sample_id_all` and
/// `sample_type = TID | TIME`, every non-sample record ends with
/// `{ u32 pid, tid; u64 time }`.
fn parse_record(b: &[u8]) -> Option<Record> {
    let ty = u32_at(b, 0)?;
    let misc = u16::from_ne_bytes([b[4], b[5]]);
    let trailer_time = || u64_at(b, b.len().checked_sub(8)?);
    let (pid, kind) = match ty {
        PERF_RECORD_MMAP2 | PERF_RECORD_MMAP => {
            let pid = u32_at(b, 8)?;
            let start = u64_at(b, 16)?;
            let len = u64_at(b, 24)?;
            let pgoff = u64_at(b, 32)?;
            let (dev, inode, executable, shared, name_off) = if ty == PERF_RECORD_MMAP2 {
                let (dev, inode) = if misc & PERF_RECORD_MISC_MMAP_BUILD_ID != 0 {
                    (0, 0)
                } else {
                    (
                        libc::makedev(u32_at(b, 40)?, u32_at(b, 44)?),
                        u64_at(b, 48)?,
                    )
                };
                let prot = u32_at(b, 64)?;
                let flags = u32_at(b, 68)?;
                (
                    dev,
                    inode,
                    prot & libc::PROT_EXEC as u32 != 0,
                    flags & libc::MAP_SHARED as u32 != 0,
                    72,
                )
            } else {
                (0, 0, true, false, 40)
            };
            let name = cstr_at(b, name_off)?;
            let path = bytes_to_path(name);
            let anon = !path.is_absolute();
            Some((
                pid,
                RecordKind::Mmap(Mapping {
                    start,
                    end: start.checked_add(len)?,
                    file_offset: if anon { 0 } else { pgoff },
                    path,
                    dev,
                    // Old MMAP records carry no inode: fake one for files.
                    inode: if ty == PERF_RECORD_MMAP && !anon {
                        1
                    } else {
                        inode
                    },
                    executable,
                    shared,
                }),
            ))
        }
        PERF_RECORD_COMM => {
            let pid = u32_at(b, 8)?;
            let tid = u32_at(b, 12)?;
            let name = String::from_utf8_lossy(cstr_at(b, 16)?).into_owned();
            Some((
                pid,
                RecordKind::Comm {
                    exec: misc & PERF_RECORD_MISC_COMM_EXEC != 0,
                    tid,
                    name,
                },
            ))
        }
        PERF_RECORD_FORK | PERF_RECORD_EXIT => {
            let pid = u32_at(b, 8)?;
            let ppid = u32_at(b, 12)?;
            let tid = u32_at(b, 16)?;
            let time = u64_at(b, 24)?;
            let kind = if ty == PERF_RECORD_FORK {
                RecordKind::Fork { ppid }
            } else {
                RecordKind::Exit { tid }
            };
            return Some(Record { pid, time, kind });
        }
        PERF_RECORD_LOST => Some((0, RecordKind::Lost(u64_at(b, 16)?))),
        _ => None,
    }?;
    Some(Record {
        pid,
        time: trailer_time()?,
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_share_a_budget_within_bounds() {
        // 2 CPUs: 8 MiB each; 64: the 512 KiB floor; 1: the 8 MiB cap.
        assert_eq!(ring_pages(2, 4096) * 4096, 8 << 20);
        assert_eq!(ring_pages(64, 4096) * 4096, 512 << 10);
        assert_eq!(ring_pages(1, 4096) * 4096, 8 << 20);
        // 3 CPUs: 5.3 MiB rounds down to a power of two of pages.
        assert_eq!(ring_pages(3, 4096) * 4096, 4 << 20);
    }
}
