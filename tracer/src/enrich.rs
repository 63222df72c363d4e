//! Enrichment: a decoded kernel record becomes a detection event, once.
//! Python frames are resolved as soon as a record is read (code objects may
//! not outlive the moment: a module's top-level code is freed once the
//! module ran); stacks are unwound when the record is processed. The
//! [`Enricher`] also answers what detection asks of the host ([`Facts`]) and
//! what building findings asks of symbolization ([`Resolve`]).

use std::path::Path;

use tracer_analysis::model::{CodeSite, HeldAt, LockInstance, PyFrame, Request, SharedLock};
use tracer_analysis::{Event, GlobalSymbol, Host, InitStack};
use tracer_common::HeldLock;

use crate::kernel::decode::{lock_kind, RawRequest, Record};
use crate::kernel::load::Probes;
use crate::python::registry::Pythons;
use crate::symbolize::wrappers::Wrappers;
use crate::symbolize::{ImageLock, Resolve, Symbolizer};

pub struct Enricher {
    pub symbolizer: Symbolizer,
    pub pythons: Pythons,
    pub wrappers: Wrappers,
}

/// A record whose Python frames are resolved, waiting to be processed.
pub enum Pending {
    Request {
        raw: Box<RawRequest>,
        python: Vec<PyFrame>,
        /// Where Python code took each lock of `raw.from` (in its order).
        held_python: Vec<Option<PyFrame>>,
        self_deadlock: bool,
    },
    LockReset {
        lock: LockInstance,
        init_site: Option<u64>,
        /// The frames of Python code that created it (empty: not Python).
        creator: Vec<Option<PyFrame>>,
        init_stack: Option<InitStack>,
    },
    ProcessExit {
        pid: u32,
    },
    ProcessExec {
        pid: u32,
        /// When (CLOCK_MONOTONIC ns; 0: unknown).
        at_ns: u64,
    },
    MemoryFreed {
        pid: u32,
        start: u64,
        end: u64,
    },
}

impl Pending {
    /// The process it belongs to.
    pub fn pid(&self) -> u32 {
        match self {
            Pending::Request { raw, .. } => raw.pid,
            Pending::LockReset { lock, .. } => lock.pid,
            Pending::ProcessExit { pid }
            | Pending::ProcessExec { pid, .. }
            | Pending::MemoryFreed { pid, .. } => *pid,
        }
    }

    /// About the bytes it keeps while it waits (for
    /// `tracer_analysis::limits::PENDING_BYTES`).
    pub fn footprint(&self) -> usize {
        use std::mem::size_of;
        size_of::<Self>()
            + match self {
                Pending::Request {
                    raw,
                    python,
                    held_python,
                    ..
                } => {
                    size_of::<RawRequest>()
                        + raw.stack.len()
                        + raw.thread.len()
                        + raw.from.len() * size_of::<HeldLock>()
                        + raw.held.len() * 8
                        + raw.python.len() * size_of::<tracer_common::PyFrameRaw>()
                        + python.len() * (size_of::<PyFrame>() + 64)
                        + held_python.len() * (size_of::<Option<PyFrame>>() + 64)
                }
                Pending::LockReset {
                    creator,
                    init_stack,
                    ..
                } => {
                    creator.len() * (size_of::<Option<PyFrame>>() + 64)
                        + init_stack.as_ref().map_or(0, |s| s.bytes.len())
                }
                Pending::ProcessExit { .. }
                | Pending::ProcessExec { .. }
                | Pending::MemoryFreed { .. } => 0,
            }
    }

    /// A dependency record (the only kind ever dropped: the others free
    /// what the collector keeps, or are rare).
    pub fn is_dependency(&self) -> bool {
        matches!(
            self,
            Pending::Request {
                self_deadlock: false,
                ..
            }
        )
    }
}

impl Enricher {
    pub fn new(symbolizer: Symbolizer, wrappers: Wrappers) -> Self {
        Enricher {
            symbolizer,
            pythons: Pythons::new(),
            wrappers,
        }
    }

    /// The first pass, as soon as a record is read: its Python frames.
    pub fn resolve_python(&mut self, record: Record) -> Pending {
        match record {
            Record::Dependency(raw) => self.request_python(raw, false),
            Record::SelfDeadlock(raw) => self.request_python(raw, true),
            Record::LockReset {
                pid,
                addr,
                init_site,
                py_creator,
                py_code,
                init_stack,
            } => Pending::LockReset {
                lock: LockInstance { pid, addr },
                init_site,
                creator: self.pythons.creating_frames(pid, &py_creator, &py_code),
                init_stack,
            },
            Record::ProcessExit { pid } => Pending::ProcessExit { pid },
            Record::ProcessExec { pid, at_ns } => Pending::ProcessExec { pid, at_ns },
            Record::MemoryFreed { pid, start, end } => Pending::MemoryFreed { pid, start, end },
            // The session keeps these (`Pythons::note_code_copy`) before
            // any record reaches here; one that did is kept now, and the
            // record that follows is all the same an exit of no process.
            Record::PyCode { pid, parts } => {
                self.pythons.note_code_copy(pid, parts);
                Pending::MemoryFreed {
                    pid,
                    start: 0,
                    end: 0,
                }
            }
        }
    }

    /// A request's Python frames, and where Python code took each lock it
    /// held.
    fn request_python(&mut self, raw: RawRequest, self_deadlock: bool) -> Pending {
        let python = self.pythons.resolve(raw.pid, &raw.python);
        let held_python = raw
            .from
            .iter()
            .map(|h| self.pythons.resolve_held(raw.pid, h))
            .collect();
        // While the process surely runs: a finding about this dependency may
        // be built after it exited.
        self.symbolizer.spaces().note_origin(raw.pid, raw.cgroup_id);
        Pending::Request {
            raw: Box::new(raw),
            python,
            held_python,
            self_deadlock,
        }
    }

    /// The second pass: the detection event (stacks unwound; the Python
    /// registry learns which locks Python code made).
    pub fn event(&mut self, pending: Pending) -> Event {
        match pending {
            Pending::Request {
                raw,
                python,
                held_python,
                self_deadlock,
            } => {
                let request = self.request(*raw, python, held_python);
                if self_deadlock {
                    Event::SelfDeadlock(request)
                } else {
                    Event::Request(request)
                }
            }
            Pending::LockReset {
                lock,
                init_site,
                creator,
                init_stack,
            } => {
                if creator.is_empty() {
                    self.pythons.forget_lock(lock);
                } else {
                    self.pythons.note_created(lock, &creator);
                }
                match init_site {
                    Some(site) => Event::LockInit {
                        lock,
                        site,
                        stack: init_stack,
                    },
                    None => Event::LockDestroy { lock },
                }
            }
            Pending::ProcessExit { pid } => {
                self.pythons.forget_process(pid);
                Event::ProcessExit { pid }
            }
            Pending::ProcessExec { pid, at_ns } => {
                self.pythons.forget_exec(pid, at_ns);
                Event::ProcessExec { pid }
            }
            Pending::MemoryFreed { pid, start, end } => Event::MemoryFreed { pid, start, end },
        }
    }

    fn request(
        &mut self,
        raw: RawRequest,
        python: Vec<PyFrame>,
        held_python: Vec<Option<PyFrame>>,
    ) -> Request {
        let mut stack = self
            .symbolizer
            .unwind(raw.pid, raw.ip, raw.sp, raw.bp, &raw.stack);
        if raw.entry_ip != 0 {
            // Made at a function's return: the unwound stack starts at the
            // return address in the caller; with the lock function first it
            // reads like any other request.
            stack.insert(0, raw.entry_ip);
        }
        let to = self.held_at(raw.pid, &raw.to, None);
        let mut held_python = held_python.into_iter();
        let from = raw
            .from
            .iter()
            .map(|h| self.held_at(raw.pid, h, held_python.next().flatten()))
            .collect();
        Request {
            pid: raw.pid,
            tid: raw.tid,
            thread: raw.thread,
            timestamp_ns: raw.timestamp_ns,
            to,
            from,
            held: raw.held,
            stack,
            python,
            handoff: raw.handoff,
        }
    }

    /// A lock as the kernel side saw it taken, with where: its call site,
    /// and, when that is in a lock wrapper, the wrapper's callers (unwound
    /// from the stack words the kernel kept) up to the first one outside
    /// wrappers.
    fn held_at(&mut self, pid: u32, h: &HeldLock, python: Option<PyFrame>) -> HeldAt {
        HeldAt {
            addr: h.addr,
            kind: lock_kind(h.kind),
            taken_at: self.taken_at(pid, h),
            python,
        }
    }

    fn taken_at(&mut self, pid: u32, h: &HeldLock) -> Vec<u64> {
        let mut chain = vec![h.callsite];
        if h.callsite == 0
            || !self
                .wrappers
                .is_wrapper(&mut self.symbolizer, pid, h.callsite)
        {
            return chain;
        }
        // After the lock function returns: the wrapper runs at the call
        // site, with the stack one word above the probe's.
        let bytes: Vec<u8> = h.above.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let frames = self
            .symbolizer
            .unwind(pid, h.callsite, h.sp + 8, h.bp, &bytes);
        for &caller in frames.iter().skip(1) {
            if caller == 0 {
                break;
            }
            chain.push(caller);
            if !self.wrappers.is_wrapper(&mut self.symbolizer, pid, caller) {
                break;
            }
        }
        chain
    }

    /// The file name of the module mapped at `addr` of `pid`.
    fn module_of(&mut self, pid: u32, addr: u64) -> Option<String> {
        let m = self.symbolizer.spaces().find(pid, addr)?;
        Some(
            Path::new(&m.path)
                .file_name()?
                .to_string_lossy()
                .into_owned(),
        )
    }
}

impl Resolve for Enricher {
    fn frames(
        &mut self,
        pid: u32,
        addrs: &[u64],
        first_is_ip: bool,
    ) -> Vec<tracer_analysis::model::Frame> {
        self.symbolizer.frames(pid, addrs, first_is_ip)
    }

    fn lock_name(&mut self, pid: u32, addr: u64) -> Option<String> {
        // A lock made by `threading.Lock()` lives on the heap: where Python
        // code created it names it.
        self.pythons
            .lock_name(LockInstance { pid, addr })
            .or_else(|| self.symbolizer.lock_symbol(pid, addr))
    }

    fn process_name(&mut self, pid: u32) -> String {
        self.symbolizer.process_name(pid)
    }

    fn shared_identity(&mut self, pid: u32, addr: u64) -> Option<String> {
        self.symbolizer
            .shared_lock(pid, addr)
            .map(|s| s.to_string())
    }

    fn image_lock(&mut self, pid: u32, addr: u64) -> Option<ImageLock> {
        if self.pythons.lock_name(LockInstance { pid, addr }).is_some() {
            return None;
        }
        self.symbolizer.image_lock(pid, addr)
    }

    fn origin(&mut self, pid: u32) -> Option<crate::host::proc::Origin> {
        self.symbolizer.spaces().origin(pid)
    }
}

/// What detection asks the host, answered from the symbolizer, the Python
/// registry and the kernel side's maps.
pub struct Facts<'a> {
    pub enricher: &'a mut Enricher,
    pub probes: &'a Probes,
}

impl Host for Facts<'_> {
    fn code_site(&mut self, pid: u32, addr: u64) -> Option<CodeSite> {
        let m = self.enricher.symbolizer.spaces().find(pid, addr)?.clone();
        let module = Path::new(&m.path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let function = self
            .enricher
            .symbolizer
            .frames(pid, &[addr], false)
            .into_iter()
            .next()
            .and_then(|f| f.function);
        let build = self.enricher.symbolizer.build_id(pid, &m);
        Some(CodeSite {
            module,
            offset: m.file_offset_of(addr),
            function,
            build,
        })
    }

    fn makes_locks_for_callers(&mut self, pid: u32, addr: u64) -> bool {
        let in_library = self
            .enricher
            .module_of(pid, addr)
            .is_some_and(|name| name.contains(".so"));
        in_library || self.is_wrapper(pid, addr)
    }

    fn is_wrapper(&mut self, pid: u32, addr: u64) -> bool {
        let en = &mut *self.enricher;
        en.wrappers.is_wrapper(&mut en.symbolizer, pid, addr)
    }

    fn init_callers(&mut self, pid: u32, site: u64, stack: &InitStack) -> Vec<u64> {
        // `stack.sp` points at `site` (the init function's return address):
        // unwind from the frame above it.
        let Some(above) = stack.bytes.get(8..) else {
            return Vec::new();
        };
        let frames = self
            .enricher
            .symbolizer
            .unwind(pid, site, stack.sp + 8, stack.bp, above);
        frames.into_iter().skip(1).take_while(|&a| a != 0).collect()
    }

    fn global_symbol(&mut self, lock: LockInstance) -> Option<GlobalSymbol> {
        let image = self.enricher.symbolizer.image_lock(lock.pid, lock.addr)?;
        let module = self
            .enricher
            .module_of(lock.pid, lock.addr)
            .unwrap_or_default();
        Some(GlobalSymbol {
            module,
            symbol: image.symbol?,
            build: image.build_id,
        })
    }

    fn shared_lock(&mut self, lock: LockInstance) -> Option<SharedLock> {
        self.enricher.symbolizer.shared_lock(lock.pid, lock.addr)
    }

    fn python_creation(&mut self, lock: LockInstance) -> Option<Option<PyFrame>> {
        self.enricher.pythons.creation(lock)
    }

    fn wakeup_mutex_owner(&mut self, pid: u32, addr: u64) -> Option<u32> {
        self.probes.wakeup_mutex_owner(pid, addr)
    }
}
