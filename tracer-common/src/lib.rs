//! Types shared by the kernel side (`tracer-ebpf`) and the collector (`tracer`).
//!
//! Everything here is `#[repr(C)]` and plain old data: the kernel writes these
//! bytes into maps and the ring buffer, the collector reads them back.
//! Naming follows the lockdep design document: a *lock instance* is one lock
//! object (here: its address in one process); a *dependency* `A -> B` means
//! that B was requested while A was held; the *chain key* is a fingerprint of
//! the locks a thread holds.
//!
//! Every item is re-exported at the crate root (`tracer_common::NAME`).
#![no_std]

pub mod abi;
pub mod counters;
pub mod dependency;
pub mod events;
pub mod lock;
pub mod maps;
pub mod python;

pub use abi::*;
pub use counters::*;
pub use dependency::*;
pub use events::*;
pub use lock::*;
pub use maps::*;
pub use python::*;
