//! The kernel side's streams: the event ring buffer, read as decoded
//! records, and the kernel-side log (aya-log), printed as it comes.

use anyhow::{anyhow, Result};
use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use tracing::warn;

use crate::kernel::decode::{self, Record};
use crate::kernel::load::Probes;

type Logger = aya_log::EbpfLogger<&'static dyn log::Log>;

pub struct KernelStreams {
    ring: AsyncFd<RingBuf<MapData>>,
    logger: Option<AsyncFd<Logger>>,
    /// Records read, and those that did not decode (dropped, counted).
    pub records: u64,
    pub undecodable: u64,
}

impl KernelStreams {
    /// Takes the ring buffer and the logger from the loaded object (once).
    pub fn open(probes: &mut Probes) -> Result<Self> {
        let ring = probes.take_events()?;
        // SAFETY (both): the map owns its file descriptor for as long as the
        // AsyncFd owns the map.
        let ring = unsafe { AsyncFd::register(ring) }
            .map_err(|_| anyhow!("cannot poll the ring buffer"))?;
        let logger = match probes.take_logger() {
            Some(l) => Some(
                unsafe { AsyncFd::register(l) }
                    .map_err(|_| anyhow!("cannot poll the kernel log"))?,
            ),
            None => None,
        };
        Ok(KernelStreams {
            ring,
            logger,
            records: 0,
            undecodable: 0,
        })
    }

    /// Waits until records may be read (kernel log lines are printed
    /// meanwhile). Cancel-safe.
    pub async fn ready(&mut self) -> Result<()> {
        loop {
            tokio::select! {
                guard = self.ring.readable_mut() => {
                    // Cleared before the caller drains: a record that
                    // arrives after the drain signals again.
                    guard?.clear_ready();
                    return Ok(());
                }
                Some(guard) = async {
                    match self.logger.as_mut() {
                        Some(l) => Some(l.readable_mut().await),
                        None => None,
                    }
                } => {
                    let mut guard = guard?;
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            }
        }
    }

    /// Reads up to `max` records now in the ring buffer, decoded, into
    /// `each`; returns how many came. Bounded: under a flood the kernel
    /// side writes records as fast as they are read.
    pub fn read(&mut self, max: usize, mut each: impl FnMut(Record)) -> usize {
        let mut n = 0;
        let ring = self.ring.get_mut();
        while n < max {
            let Some(item) = ring.next() else {
                break;
            };
            n += 1;
            match decode::decode(&item) {
                Ok(record) => each(record),
                Err(e) => {
                    self.undecodable += 1;
                    warn!("dropping a ring-buffer record: {e:#}");
                }
            }
        }
        self.records += n as u64;
        n
    }

    /// Counts the records left in the ring buffer, unread, until it looks
    /// empty or `deadline`.
    pub fn discard(&mut self, deadline: std::time::Instant) -> usize {
        let mut n = 0;
        let ring = self.ring.get_mut();
        while std::time::Instant::now() < deadline {
            let mut batch = 0;
            while batch < 4096 && ring.next().is_some() {
                batch += 1;
            }
            n += batch;
            if batch < 4096 {
                break;
            }
        }
        self.records += n as u64;
        n
    }

    /// Prints what the kernel side logged and nobody read yet.
    pub fn flush_log(&mut self) {
        if let Some(l) = self.logger.as_mut() {
            l.get_mut().flush();
        }
    }
}
