//! `py_copy`, the program that copies the code objects an event's Python
//! frames name (tail-called by `emit_deps`), is loaded on demand: only a
//! process described as Python reaches it, and its verification was a
//! tenth of every `locktrace run`'s start-up, Python or not.
//!
//! With multi-uprobe links it is verified in the background once the
//! probes are armed, and installed in `TAILS` before the first Python
//! process is described to the kernel side (`Probes::set_python` waits for
//! it): until then `emit_deps` never tail-calls it. With single uprobes
//! (kernels before 6.6) it is loaded when the first Python process is
//! described.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use anyhow::{anyhow, Context, Result};
use aya::maps::ProgramArray;
use aya::programs::UProbe;
use tracing::debug;

use crate::kernel::catalogue::{PY_COPY, TAILS};
use crate::kernel::links::Attacher;
use crate::kernel::load::{ProbePrograms, Probes, PyCopy, EBPF_OBJECT};
use crate::kernel::multi;

impl Probes {
    /// Starts verifying `py_copy` on another thread (multi-uprobe links
    /// only: a single uprobe's program is aya's, loaded on this thread).
    pub(super) fn start_loading_py_copy(&mut self) -> Result<()> {
        if !matches!(self.py_copy, PyCopy::Absent)
            || !matches!(self.links.attacher, Attacher::Multi(_))
            || !matches!(self.programs, ProbePrograms::Tracer)
        {
            return Ok(());
        }
        // Descriptors of its own: the maps stay valid whatever happens to
        // `self` meanwhile.
        let mut maps = Vec::new();
        for (name, fd) in multi::map_fds(self.ebpf()) {
            // SAFETY: `fd` is one of aya's maps, open while `self` is.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()?;
            maps.push((name, fd));
        }
        self.py_copy = PyCopy::Loading(std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let raw: Vec<_> = maps
                .iter()
                .map(|(n, fd)| (n.clone(), fd.as_raw_fd()))
                .collect();
            let mut programs = multi::load_programs(EBPF_OBJECT, &raw, &[PY_COPY])?;
            debug!(elapsed = ?started.elapsed(), "{PY_COPY} loaded in the background");
            programs
                .remove(PY_COPY)
                .ok_or_else(|| anyhow!("program {PY_COPY} was not loaded"))
        }));
        Ok(())
    }

    /// Puts `py_copy` in `TAILS` if it is not there yet: before a process
    /// is described as Python, `emit_deps` never tail-calls it.
    pub(super) fn install_py_copy(&mut self) -> Result<()> {
        if !matches!(self.programs, ProbePrograms::Tracer) {
            self.py_copy = PyCopy::Installed;
        }
        if matches!(self.py_copy, PyCopy::Installed) {
            return Ok(());
        }
        let index = TAILS
            .iter()
            .position(|&p| p == PY_COPY)
            .expect("py_copy is tail-called") as u32;
        let context = || format!("cannot put program {PY_COPY} in map TAILS");
        if matches!(self.links.attacher, Attacher::Multi(_)) {
            self.start_loading_py_copy()?;
            let PyCopy::Loading(loading) = std::mem::take(&mut self.py_copy) else {
                unreachable!("started above");
            };
            let started = std::time::Instant::now();
            let fd = loading
                .join()
                .map_err(|_| anyhow!("the {PY_COPY} loader panicked"))?
                .with_context(|| format!("cannot load program {PY_COPY} for multi-uprobe links"))?;
            debug!(waited = ?started.elapsed(), "{PY_COPY} ready");
            let tails = multi::map_fds(self.ebpf())
                .into_iter()
                .find(|(map, _)| map == "TAILS")
                .ok_or_else(|| anyhow!("the eBPF object has no map TAILS"))?;
            multi::set_tail(tails.1, index, fd.as_fd()).with_context(context)?;
            // The map holds the program now.
            drop(fd);
        } else {
            let program: &mut UProbe = self.program(PY_COPY)?.try_into()?;
            program
                .load()
                .with_context(|| format!("cannot load program {PY_COPY}"))?;
            let fd = program.fd()?.try_clone()?;
            let mut tails = ProgramArray::try_from(self.map_mut("TAILS")?)?;
            tails.set(index, &fd, 0).with_context(context)?;
        }
        self.py_copy = PyCopy::Installed;
        Ok(())
    }
}
