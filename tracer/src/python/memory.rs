//! Another process's memory, read within a budget.
//!
//! The frame reader follows pointers a traced process chooses: a process of
//! another user can forge an interpreter whose lists loop, whose sizes are
//! absurd, whose frames point at a million fake code objects. Every read
//! of a record (one event's frames, one thread list, one stack) goes
//! through one [`Reader`], which refuses to go past its bytes, reads and
//! time: the record then fails as [`Unparsable`], and the registry marks a
//! process that keeps doing that (`registry::Pythons`).
//!
//! [`Memory`] is the seam: the collector reads processes with
//! `process_vm_readv` ([`ProcessMemory`]); the fuzz target feeds a fake
//! address space.

use std::cell::Cell;
use std::collections::BTreeMap;

use crate::host::remote::{self, Outcome};
use std::time::{Duration, Instant};

/// Memory that can be read at any address.
pub trait Memory {
    /// Fills `buf` from `addr`: false if any byte of it cannot be read.
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool;

    /// Whether reads fail because the memory blocked a read in the kernel
    /// (see `host::remote`), rather than being unmapped.
    fn stalled(&self) -> bool {
        false
    }
}

/// Process `pid`'s memory, read with `process_vm_readv` (no descriptor to
/// keep open; works on stopped processes; needs ptrace rights, e.g. root),
/// by a helper process that may block in its place (`host::remote`).
#[derive(Clone, Copy)]
pub struct ProcessMemory(pub u32);

impl Memory for ProcessMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        remote::read(self.0, addr, buf) == Outcome::Read
    }

    fn stalled(&self) -> bool {
        remote::has_stalled(self.0)
    }
}

/// What one record may cost.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub bytes: u64,
    pub reads: u64,
    pub time: Duration,
}

/// One record: an event's frames (16 code objects at most, each with its
/// names and location table), a thread list, a blocked thread's stack. A
/// real CPython needs a few KiB and a few dozen reads; the bounds are
/// far above that, and far below what hurts the collector.
pub const RECORD: Limits = Limits {
    bytes: 8 << 20,
    reads: 65_536,
    time: Duration::from_millis(200),
};

/// A record whose memory does not parse as CPython's: a loop where a list
/// must end, a budget exhausted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unparsable(pub String);

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// Memory that cannot be read (unmapped, freed, the process gone): the
    /// frame or list is unknown, nothing is wrong with the process.
    #[error("cannot read {len} bytes at {addr:#x}")]
    Fault { addr: u64, len: u64 },
    #[error(transparent)]
    Unparsable(#[from] Unparsable),
}

/// Reads of one record, counted against its [`Limits`].
pub struct Reader<'a> {
    mem: &'a dyn Memory,
    limits: Limits,
    started: Instant,
    bytes: Cell<u64>,
    reads: Cell<u64>,
}

impl<'a> Reader<'a> {
    pub fn new(mem: &'a dyn Memory, limits: Limits) -> Self {
        Reader {
            mem,
            limits,
            started: Instant::now(),
            bytes: Cell::new(0),
            reads: Cell::new(0),
        }
    }

    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes.get()
    }

    /// `len` bytes at `addr`.
    pub fn bytes(&self, addr: u64, len: u64) -> Result<Vec<u8>, ReadError> {
        let (bytes, reads) = (self.bytes.get() + len, self.reads.get() + 1);
        if bytes > self.limits.bytes {
            return Err(Unparsable(format!(
                "more than {} KiB to read for one record",
                self.limits.bytes >> 10
            ))
            .into());
        }
        if reads > self.limits.reads {
            return Err(Unparsable(format!(
                "more than {} reads for one record",
                self.limits.reads
            ))
            .into());
        }
        if self.started.elapsed() > self.limits.time {
            return Err(Unparsable(format!(
                "more than {} ms of reading for one record",
                self.limits.time.as_millis()
            ))
            .into());
        }
        self.bytes.set(bytes);
        self.reads.set(reads);
        let fault = ReadError::Fault { addr, len };
        if addr.checked_add(len).is_none() {
            return Err(fault);
        }
        let mut buf = vec![0u8; len as usize];
        if !self.mem.read(addr, &mut buf) {
            if self.mem.stalled() {
                return Err(Unparsable(
                    "its memory blocked a read in the kernel (a file system that does not answer)"
                        .into(),
                )
                .into());
            }
            return Err(fault);
        }
        Ok(buf)
    }

    pub fn u64(&self, addr: u64) -> Result<u64, ReadError> {
        Ok(word(&self.bytes(addr, 8)?, 0))
    }

    pub fn u32(&self, addr: u64) -> Result<u32, ReadError> {
        let b = self.bytes(addr, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Several u64 fields of one struct, in one read.
    pub fn words<const N: usize>(&self, base: u64, offs: [u64; N]) -> Result<[u64; N], ReadError> {
        let lo = offs.iter().copied().min().unwrap_or(0);
        let hi = offs.iter().copied().max().unwrap_or(0).saturating_add(8);
        let buf = self.bytes(
            base.checked_add(lo).ok_or(ReadError::Fault {
                addr: base,
                len: hi,
            })?,
            hi - lo,
        )?;
        Ok(offs.map(|f| word(&buf, f - lo)))
    }
}

/// An address space made of byte segments (tests, the fuzz target).
#[derive(Clone, Debug, Default)]
pub struct Segments(pub Vec<(u64, Vec<u8>)>);

impl Segments {
    /// Writes `bytes` at `addr`, in a new segment or one that covers it.
    pub fn put(&mut self, addr: u64, bytes: &[u8]) {
        let end = addr + bytes.len() as u64;
        match self
            .0
            .iter_mut()
            .find(|(base, seg)| *base <= addr && end <= base + seg.len() as u64)
        {
            Some((base, seg)) => {
                let at = (addr - *base) as usize;
                seg[at..at + bytes.len()].copy_from_slice(bytes);
            }
            None => self.0.push((addr, bytes.to_vec())),
        }
    }

    pub fn put_u64(&mut self, addr: u64, v: u64) {
        self.put(addr, &v.to_le_bytes());
    }
}

impl Memory for Segments {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        let Some(end) = addr.checked_add(buf.len() as u64) else {
            return false;
        };
        self.0
            .iter()
            .find(|(base, seg)| *base <= addr && end <= base + seg.len() as u64)
            .map(|(base, seg)| {
                let at = (addr - base) as usize;
                buf.copy_from_slice(&seg[at..at + buf.len()]);
            })
            .is_some()
    }
}

/// Byte ranges of one process's memory as the kernel side copied them
/// (code objects and what names them, see `PyCodeSnapshot`), by address:
/// the newest copy of a range replaces an older one at the same address.
#[derive(Debug, Default)]
pub struct Snapshots {
    ranges: BTreeMap<u64, Vec<u8>>,
    bytes: usize,
}

impl Snapshots {
    /// Keeps `bytes` copied at `addr`; returns how many bytes more are kept.
    pub fn put(&mut self, addr: u64, bytes: Vec<u8>) -> isize {
        let added = bytes.len() as isize;
        let removed = self.ranges.insert(addr, bytes).map_or(0, |old| old.len()) as isize;
        self.bytes = (self.bytes as isize + added - removed) as usize;
        added - removed
    }

    /// Bytes kept.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Memory for Snapshots {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        let Some(end) = addr.checked_add(buf.len() as u64) else {
            return false;
        };
        // The range starting nearest below: ranges may overlap (a copied
        // string runs past its object), each is the memory it covers.
        let Some((base, range)) = self.ranges.range(..=addr).next_back() else {
            return false;
        };
        // (Addresses are the traced process's to choose: no overflow.)
        if base
            .checked_add(range.len() as u64)
            .is_none_or(|range_end| end > range_end)
        {
            return false;
        }
        let at = (addr - base) as usize;
        buf.copy_from_slice(&range[at..at + buf.len()]);
        true
    }
}

/// The kernel side's copies first (the memory as it was at the event: the
/// process may have freed it since, or exited), then the process.
pub struct CopiedFirst<'a, M: Memory> {
    pub copies: Option<&'a Snapshots>,
    pub process: M,
}

impl<M: Memory> Memory for CopiedFirst<'_, M> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        self.copies.is_some_and(|c| c.read(addr, buf)) || self.process.read(addr, buf)
    }

    fn stalled(&self) -> bool {
        self.process.stalled()
    }
}

/// Little-endian u64 at `off` in `buf`.
pub fn word(buf: &[u8], off: u64) -> u64 {
    u64::from_le_bytes(buf[off as usize..][..8].try_into().unwrap())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every address reads as its own low byte.
    struct Everywhere;

    impl Memory for Everywhere {
        fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = addr.wrapping_add(i as u64) as u8;
            }
            true
        }
    }

    #[test]
    fn copies_are_read_first_and_whole() {
        let mut copies = Snapshots::default();
        assert_eq!(copies.put(0x1000, vec![1; 16]), 16);
        assert_eq!(copies.put(0x1008, vec![2; 16]), 16);
        assert_eq!(copies.put(0x1000, vec![3; 8]), -8);
        assert_eq!(copies.bytes(), 24);
        let mem = CopiedFirst {
            copies: Some(&copies),
            process: Everywhere,
        };
        let mut buf = [0u8; 8];
        assert!(mem.read(0x1000, &mut buf));
        assert_eq!(buf, [3; 8]);
        assert!(mem.read(0x1010, &mut buf));
        assert_eq!(buf, [2; 8]);
        // Past every copy: the process's memory.
        assert!(mem.read(0x1014, &mut buf));
        assert_eq!(buf[0], 0x14);
        assert!(!copies.read(0x1014, &mut buf));
        assert!(!copies.read(0x0fff, &mut buf));
    }

    #[test]
    fn a_record_stops_at_its_budget() {
        let limits = Limits {
            bytes: 100,
            reads: 3,
            time: Duration::from_secs(60),
        };
        let r = Reader::new(&Everywhere, limits);
        assert!(r.bytes(0, 64).is_ok());
        assert!(matches!(r.bytes(0, 64), Err(ReadError::Unparsable(_))));
        assert!(r.u64(8).is_ok());
        assert!(r.u64(8).is_ok());
        assert!(matches!(r.u64(8), Err(ReadError::Unparsable(_))));
        let r = Reader::new(&Everywhere, limits);
        assert!(matches!(
            r.bytes(u64::MAX - 3, 8),
            Err(ReadError::Fault { .. })
        ));
    }
}
