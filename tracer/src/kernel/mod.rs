//! The kernel side, seen from the collector: the only code that names aya.
//! The probe catalogue and placement, the files to probe (and new ones to
//! follow), loading and attaching, typed map access, and the ring buffer's
//! records, decoded.

pub mod attach;
pub mod catalogue;
pub mod decode;
pub mod events;
pub mod features;
pub mod follow;
pub mod frees;
pub mod links;
pub mod load;
pub mod maps;
pub mod multi;
pub mod placement;
pub mod retrace;
pub mod slices;
pub mod targets;
