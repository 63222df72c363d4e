//! The kernel features the probes need, asked of the kernel itself (as
//! bpftool's feature probes do) rather than read off its version number:
//! distributions backport features, and a kernel without one would
//! otherwise refuse the programs with a verifier dump. The oldest kernel
//! with all of them is Linux 5.15.
//!
//! Multi-uprobe links (6.6) are optional: without them the probes are
//! single uprobes (see `load::attacher`).

use std::{
    io,
    os::fd::{FromRawFd, OwnedFd},
};

use anyhow::{bail, Result};
use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_map_type::BPF_MAP_TYPE_RINGBUF};

/// The oldest Linux release with every feature of [`check`].
pub const OLDEST_KERNEL: &str = "5.15";

/// BPF helpers the programs call, by number (`enum bpf_func_id`), with the
/// release that brought each to kprobe programs. Older helpers
/// (`bpf_get_current_cgroup_id`, 4.18) come with these.
const HELPERS: &[(i32, &str, &str)] = &[
    (112, "bpf_probe_read_user", "5.5"),
    (120, "bpf_get_ns_current_pid_tgid", "5.7"),
    (174, "bpf_get_attach_cookie", "5.15"),
];

const BPF_PROG_TYPE_KPROBE: u32 = 2;

/// Fails with one line naming the first missing feature.
pub fn check() -> Result<()> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    let refuse = |what: String| -> Result<()> {
        bail!(
            "this kernel ({release}) lacks {what}: locktrace needs Linux {OLDEST_KERNEL} or later"
        )
    };
    if !has_ring_buffer() {
        return refuse("BPF ring buffers (Linux 5.8)".into());
    }
    for &(id, name, since) in HELPERS {
        if !has_helper(id) {
            return refuse(format!("the BPF helper {name} (Linux {since})"));
        }
    }
    Ok(())
}

/// A ring buffer map can be made (one page).
fn has_ring_buffer() -> bool {
    // SAFETY: bpf_attr is plain data; all-zero is its default.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: the BPF_MAP_CREATE member of the union.
    let create = unsafe { &mut attr.__bindgen_anon_1 };
    create.map_type = BPF_MAP_TYPE_RINGBUF as u32;
    create.max_entries = page_size();
    bpf(bpf_cmd::BPF_MAP_CREATE, &mut attr).is_ok()
}

/// A kprobe program calling helper `id` is not refused for the helper: an
/// older kernel's verifier says "invalid func" or "unknown func". Refused
/// for anything else (its arguments are not set up), the helper is there.
fn has_helper(id: i32) -> bool {
    // call id; r0 = 0; exit
    let insns: [u64; 3] = [
        insn(0x85, 0, 0, id),
        insn(0xb7, 0, 0, 0),
        insn(0x95, 0, 0, 0),
    ];
    let license = c"GPL";
    let mut log = vec![0u8; 4096];
    // SAFETY: as above.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: the BPF_PROG_LOAD member of the union.
    let load = unsafe { &mut attr.__bindgen_anon_3 };
    load.prog_type = BPF_PROG_TYPE_KPROBE;
    load.insns = insns.as_ptr() as u64;
    load.insn_cnt = insns.len() as u32;
    load.license = license.as_ptr() as u64;
    load.log_level = 1;
    load.log_buf = log.as_mut_ptr() as u64;
    load.log_size = log.len() as u32;
    if bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr).is_ok() {
        return true;
    }
    let text = String::from_utf8_lossy(&log);
    !(text.contains("invalid func ") || text.contains("unknown func "))
}

/// One instruction, as the kernel reads it (little-endian): opcode,
/// registers, offset, immediate.
fn insn(code: u8, dst: u8, src: u8, imm: i32) -> u64 {
    u64::from(code) | u64::from(dst | (src << 4)) << 8 | u64::from(imm as u32) << 32
}

fn page_size() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as u32
    } else {
        4096
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_instructions_as_the_kernel_reads_them() {
        // call 174: opcode 0x85, no registers, imm 174.
        assert_eq!(insn(0x85, 0, 0, 174), 0x0000_00ae_0000_0085);
        assert_eq!(insn(0xb7, 1, 2, -1), 0xffff_ffff_0000_21b7);
    }
}
