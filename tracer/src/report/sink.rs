//! Where findings go: a [`Reporter`] writes each finding as soon as it is
//! made, and the summary at the end, in one format.

use std::io::{self, Write};
use std::path::Path;

use crate::report::escape;
use crate::report::findings::Finding;
use crate::report::graph::LockGraph;
use crate::report::json;
use crate::report::summary::Summary;

/// Output format of a [`Reporter`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// Human-readable reports.
    #[default]
    Text,
    /// JSON Lines: one object per line.
    Json,
}

/// Writes findings and the summary to `out`, flushing after each record so
/// that findings appear while tracing goes on.
pub struct Reporter {
    format: Format,
    out: Box<dyn Write + Send>,
}

impl Reporter {
    pub fn new(format: Format, out: Box<dyn Write + Send>) -> Self {
        Self { format, out }
    }

    /// A reporter writing to the file `output` (made as
    /// [`crate::host::outfile::create`] says), or to standard output.
    pub fn open(output: Option<&Path>, format: Format, force: bool) -> anyhow::Result<Self> {
        let out: Box<dyn Write + Send> = match output {
            Some(path) => Box::new(crate::host::outfile::create(path, force)?),
            None => Box::new(io::stdout()),
        };
        Ok(Reporter::new(format, out))
    }

    /// The output, for what follows the findings.
    pub fn into_inner(self) -> Box<dyn Write + Send> {
        self.out
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// A finding reported now, at `time` (`walltime::now()`): its JSON line
    /// carries the time; the live text report does not show it.
    pub fn finding(&mut self, f: &Finding, time: &str) -> io::Result<()> {
        self.write(f, Some(time), false)
    }

    /// A finding read from a capture, with the time it was reported (none
    /// in a capture written before findings had one): its JSON line is
    /// written again as read, and the text shows the time under the
    /// headline.
    pub fn replayed(&mut self, f: &Finding, time: Option<&str>) -> io::Result<()> {
        self.write(f, time, true)
    }

    fn write(&mut self, f: &Finding, time: Option<&str>, show_time: bool) -> io::Result<()> {
        match self.format {
            // The text of a finding ends with a newline; one more separates
            // findings. Names from traced processes escaped (see `escape`).
            Format::Text => {
                let text = escape::finding(f).to_string();
                let mut text = escape::rest(&text).into_owned();
                if let (true, Some(time)) = (show_time, time) {
                    let at = text.find('\n').map_or(text.len(), |i| i + 1);
                    text.insert_str(at, &format!("  reported {}\n", escape::name(time)));
                }
                writeln!(self.out, "{text}")?
            }
            Format::Json => json::write_finding(&mut self.out, f, time)?,
        }
        self.out.flush()
    }

    /// The whole class graph, a `lock_graph` line, in JSON only (for
    /// `locktrace report --graph`; a terminal has no use for it).
    pub fn graph(&mut self, g: &LockGraph) -> io::Result<()> {
        if self.format == Format::Json {
            json::write(&mut self.out, g)?;
            self.out.flush()?;
        }
        Ok(())
    }

    pub fn summary(&mut self, s: &Summary) -> io::Result<()> {
        match self.format {
            Format::Text => {
                let text = escape::summary(s).to_string();
                writeln!(self.out, "{}", escape::rest(&text))?
            }
            Format::Json => json::write_summary(&mut self.out, s)?,
        }
        self.out.flush()
    }
}
