//! What the kernel side needs to read CPython stacks, and what it captures
//! of them.

/// Python frames captured with an event (innermost first); deeper stacks
/// are cut (the collector says so).
pub const PY_MAX_FRAMES: usize = 16;

/// Python frames captured when Python code creates a lock: its innermost
/// frames may be library wrappers (`threading.RLock()`), the caller names it.
pub const PY_CREATOR_FRAMES: usize = 4;

/// What the kernel side needs to read the Python stack of a thread of one
/// CPython process (map `PY_PROCESSES`, by tgid): addresses in the process
/// and struct offsets of its CPython version (the collector's table).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PyProcess {
    /// Address of `_PyRuntime.gilstate.tstate_current`: the `PyThreadState`
    /// of the thread holding the GIL.
    pub tstate_current: u64,
    /// Offsets in `PyThreadState`.
    pub tstate_native_thread_id: u64,
    pub tstate_cframe: u64,
    /// Offset in `_PyCFrame`.
    pub cframe_current_frame: u64,
    /// Offsets in `_PyInterpreterFrame`.
    pub frame_code: u64,
    pub frame_prev_instr: u64,
    pub frame_previous: u64,
    /// Offsets in `PyCodeObject`, `PyBytesObject` and `PyASCIIObject`, to
    /// copy a code object that may be freed before the collector reads it
    /// (see [`PyCodeCopy`]).
    pub code_filename: u64,
    pub code_qualname: u64,
    pub code_firstlineno: u64,
    pub code_linetable: u64,
    pub bytes_size: u64,
    pub bytes_data: u64,
    pub unicode_length: u64,
    pub unicode_state: u64,
    /// 0: no ASCII state to test (2.7's byte strings, whose length and
    /// characters the collector then puts at `unicode_length` and
    /// `unicode_ascii_data`).
    pub unicode_ascii_mask: u64,
    pub unicode_ascii_data: u64,
    /// Non-zero: the `PyThreadState` word at `tstate_cframe` is the current
    /// frame itself (3.13's `current_frame`, `frame` up to 3.10), not a
    /// `_PyCFrame` whose `current_frame` is the frame.
    pub tstate_frame_direct: u64,
    /// Non-zero: the word at `tstate_native_thread_id` is a `pthread_t`
    /// (`thread_id`: CPython before 3.11 keeps no Linux tid), and the tid is
    /// the `u32` at this offset in glibc's `struct pthread` it points to.
    pub pthread_tid: u64,
    /// Offset of `_PyInterpreterFrame.owner` and, if non-zero, the owner
    /// of the shim frames 3.12+ pushes where C calls Python
    /// (`FRAME_OWNED_BY_CSTACK`): those are skipped, they run no code.
    pub frame_owner: u64,
    pub frame_owner_cstack: u64,
    /// CPython 2.7: the address of `interpreter_lock`, the pointer to the
    /// GIL's semaphore (set when the first thread starts, and again in a
    /// forked child); 0 for other versions. A semaphore acquisition of that
    /// semaphore is not taken as a lock: it orders nothing (no Python code
    /// can deadlock on the GIL, a blocking acquire releases it first).
    pub gil_lock: u64,
    /// Bytes of a `PyCodeObject` before its instructions (`code_adaptive`):
    /// the part of a code object copied (see [`PyCodeSnapshot`]).
    pub code_header: u64,
    /// CPython 2.7: the address of `interp_head` (the pointer to the first
    /// `PyInterpreterState`), whose thread states (`tstate_head`, then
    /// `next`) are searched for a thread seen neither holding the GIL nor
    /// before (2.7 releases the GIL before every lock acquisition: a
    /// `thread.start_new_thread` thread whose first act is to take a lock
    /// is found only there). 0 for other versions: no search.
    pub interp_head: u64,
    /// Offsets of `PyInterpreterState.tstate_head` and `PyThreadState.next`.
    pub interp_tstate_head: u64,
    pub tstate_next: u64,
}

/// Bytes of a code object's location table copied (enough for a module's
/// top-level code of a few hundred lines; a longer table is cut).
pub const PY_LINETABLE_BYTES: usize = 512;
/// Bytes of its file name and qualified name copied (ASCII names only).
pub const PY_FILENAME_BYTES: usize = 128;
pub const PY_QUALNAME_BYTES: usize = 64;
/// Creating frames whose code object is copied.
pub const PY_CODE_COPIES: usize = 2;

/// What the collector needs of a code object, copied when a lock is
/// created: a module's top-level code, where global locks are made, is freed
/// as soon as the module ran.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PyCodeCopy {
    pub code: u64,
    pub prev_instr: u64,
    pub first_line: i32,
    /// The table's full length (only the first `PY_LINETABLE_BYTES` are
    /// here); the names' lengths (0 if not copied).
    pub linetable_len: u32,
    pub filename_len: u32,
    pub qualname_len: u32,
    pub filename: [u8; PY_FILENAME_BYTES],
    pub qualname: [u8; PY_QUALNAME_BYTES],
    pub linetable: [u8; PY_LINETABLE_BYTES],
}

/// One Python frame as captured: its code object and the instruction it is
/// at (the collector reads file, function and line from the code object).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PyFrameRaw {
    pub code: u64,
    pub prev_instr: u64,
}

/// The Python frames of the thread that made an event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PyStack {
    /// Valid entries of `frames`; 0 when the process runs no supported
    /// Python or the thread runs no Python code.
    pub depth: u32,
    pub _pad: u32,
    pub frames: [PyFrameRaw; PY_MAX_FRAMES],
}

#[cfg(feature = "user")]
// SAFETY: plain `#[repr(C)]` data, valid for any bit pattern.
unsafe impl aya::Pod for PyProcess {}

/// Bytes copied of a code object's header (at most: `PyProcess::code_header`
/// is 128 to 200 bytes), of each of its name objects (the `str` header and
/// its first characters) and of its location table (the `bytes` header and
/// the table: a function's table is a few hundred bytes).
pub const PY_SNAPSHOT_CODE: usize = 256;
pub const PY_SNAPSHOT_STR: usize = 256;
pub const PY_SNAPSHOT_TABLE: usize = 2048;

/// Raw memory of one code object of a process, copied by the kernel side
/// (`py_copy`) when an event first names it, before the event is sent: a
/// process that exits right after its event frees its code objects (an
/// interpreter frees them all at shutdown) before the collector reads them.
/// Each part is the bytes at its address as the process had them; the
/// collector reads a frame from these first (`memory::Snapshots`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PyCodeSnapshot {
    /// `EventKind::PyCode`.
    pub event: u32,
    pub pid: u32,
    /// Addresses: the code object, its file name, qualified name and
    /// location table objects.
    pub code: u64,
    pub filename: u64,
    pub qualname: u64,
    pub linetable: u64,
    /// Bytes copied of each (0: none).
    pub code_len: u32,
    pub filename_len: u32,
    pub qualname_len: u32,
    pub linetable_len: u32,
    pub code_bytes: [u8; PY_SNAPSHOT_CODE],
    pub filename_bytes: [u8; PY_SNAPSHOT_STR],
    pub qualname_bytes: [u8; PY_SNAPSHOT_STR],
    pub linetable_bytes: [u8; PY_SNAPSHOT_TABLE],
}

/// Key of the code objects already copied (map `PY_CODE_COPIED`): the
/// value is the code object's `[filename, qualname, linetable]` pointers
/// when it was, so that a code object freed and another made at its
/// address is copied again.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PyCodeKey {
    pub tgid: u32,
    pub _pad: u32,
    pub code: u64,
}
