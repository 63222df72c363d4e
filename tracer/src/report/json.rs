//! The JSON Lines printer: one object per line, `type` first, for machines.

use std::io::{self, Write};

use serde::Serialize;

use crate::report::findings::Finding;
use crate::report::fingerprint::fingerprint;
use crate::report::summary::Summary;

/// The version of the JSON Lines layout, written on the summary line
/// (`"schema": 1`). Adding a field or a record type keeps it; renaming,
/// removing or changing the meaning of one bumps it, and `locktrace report`
/// refuses a capture of a newer schema.
pub const SCHEMA: u64 = 1;

/// Writes one record as one line (compact JSON escapes newlines in
/// strings).
pub fn write<T: Serialize>(out: &mut dyn Write, value: &T) -> io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")
}

/// A finding's line: its fields (`type` first), the wall-clock time it was
/// reported (RFC 3339, UTC, milliseconds: `walltime::millis`), then its
/// fingerprint, the one the agent's alerts carry (so an alert leads to its
/// report line). Read back, the fingerprint is computed again from the
/// finding; the time is kept as written.
#[derive(Serialize)]
struct FindingLine<'a> {
    #[serde(flatten)]
    finding: &'a Finding,
    #[serde(skip_serializing_if = "Option::is_none")]
    time: Option<&'a str>,
    fingerprint: String,
}

/// Writes one finding as one line, with its time (`None`: a finding read
/// from a capture written before findings had one) and fingerprint (a
/// snapshot's blocked thread is not a finding and has neither).
pub fn write_finding(out: &mut dyn Write, finding: &Finding, time: Option<&str>) -> io::Result<()> {
    if matches!(finding, Finding::BlockedThread(_)) {
        return write(out, finding);
    }
    write(
        out,
        &FindingLine {
            finding,
            time,
            fingerprint: fingerprint(finding),
        },
    )
}

/// The summary line: the summary's fields, then the schema version.
#[derive(Serialize)]
struct SummaryLine<'a> {
    #[serde(flatten)]
    summary: &'a Summary,
    schema: u64,
}

/// Writes the summary line, with [`SCHEMA`].
pub fn write_summary(out: &mut dyn Write, summary: &Summary) -> io::Result<()> {
    write(
        out,
        &SummaryLine {
            summary,
            schema: SCHEMA,
        },
    )
}
