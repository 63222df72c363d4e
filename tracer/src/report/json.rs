//! The JSON Lines printer: one object per line, `type` first, for machines.

use std::io::{self, Write};

use serde::Serialize;

/// Writes one record as one line (compact JSON escapes newlines in
/// strings).
pub fn write<T: Serialize>(out: &mut dyn Write, value: &T) -> io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")
}
