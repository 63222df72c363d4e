//! Host access: every `/proc` read, process address spaces and the perf
//! side-band, ELF helpers, starting the traced command, opening the files
//! the tracer writes (`outfile`), bounded opening of traced processes'
//! files (`files`), the checks made before tracing, and the
//! blocked threads of the wait-for graph.

pub mod cgroups;
pub mod descriptors;
pub mod elf;
pub mod files;
pub mod launch;
pub mod mapping;
pub mod outfile;
pub mod perf;
pub mod preflight;
pub mod proc;
pub mod remote;
pub mod spaces;
pub mod waitfor;
