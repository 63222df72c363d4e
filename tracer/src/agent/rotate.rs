//! The agent's findings file (`[report] output`), rotated by size: before
//! a record is written to a file of `max_size` bytes or more, `FILE`
//! becomes `FILE.1`
//! (`FILE.1` becomes `FILE.2`, ... up to `FILE.<keep>`, the oldest
//! dropped) and a new `FILE` is created. The agent appends to a file it
//! finds at start, so that a restart keeps what earlier runs wrote.
//!
//! A failed write never stops tracing (the other sinks go on): it is
//! counted, once per record, in `locktrace_sink_failures_total{sink="file"}`,
//! logged once until a write succeeds again, and the file is opened again
//! for the next record.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use prometheus_client::metrics::counter::Counter;
use tracing::{info, warn};

use crate::host::outfile;

/// The findings output as the session's reporter holds it: a SIGHUP puts
/// another in its place (another file, other rotation limits) between two
/// records (the reporter writes and flushes each record at once, on the
/// thread that handles the SIGHUP).
#[derive(Clone)]
pub struct Switchable(Arc<Mutex<Box<dyn Write + Send>>>);

impl Switchable {
    pub fn new(out: Box<dyn Write + Send>) -> Switchable {
        Switchable(Arc::new(Mutex::new(out)))
    }

    /// Findings go to `out` from the next record on (the old output is
    /// flushed and closed).
    pub fn switch(&self, out: Box<dyn Write + Send>) {
        let mut now = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let _ = now.flush();
        *now = out;
    }
}

impl Write for Switchable {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).flush()
    }
}

pub struct RotatingFile {
    path: PathBuf,
    max_size: u64,
    keep: usize,
    force: bool,
    /// `None` after a failure: opened again at the next record.
    file: Option<File>,
    /// Bytes in `file`.
    size: u64,
    /// A write of the record being written failed.
    record_failed: bool,
    /// The next write starts a record (the reporter flushes after each).
    at_record_start: bool,
    /// Failures are being logged (the first one only, until a success).
    failing: bool,
    failures: Counter,
}

impl RotatingFile {
    /// Opens `path` for appending (created 0600 if missing; refused as
    /// `outfile` refuses a file, unless `force`): an error here stops the
    /// agent at start, as a bad `--output` stops `watch`.
    pub fn open(
        path: &Path,
        max_size: u64,
        keep: usize,
        force: bool,
        failures: Counter,
    ) -> Result<RotatingFile> {
        let file = outfile::append(path, force)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(RotatingFile {
            path: path.to_path_buf(),
            max_size: max_size.max(1),
            keep: keep.max(1),
            force,
            file: Some(file),
            size,
            record_failed: false,
            at_record_start: true,
            failing: false,
            failures,
        })
    }

    /// `FILE.<n>`.
    fn numbered(&self, n: usize) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    /// Shifts the numbered files up by one (the oldest is replaced), moves
    /// the current file to `.1` and creates a new one (0600, `O_EXCL`, never
    /// through a symlink: `outfile::create`). `rename` moves a symlink
    /// planted at a numbered name, never what it points to.
    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        let full = self.size;
        for n in (1..self.keep).rev() {
            match std::fs::rename(self.numbered(n), self.numbered(n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(&self.path, self.numbered(1))?;
        self.reopen()?;
        info!(
            "rotated {} ({full} bytes) to {}",
            self.path.display(),
            self.numbered(1).display()
        );
        Ok(())
    }

    fn reopen(&mut self) -> io::Result<()> {
        let file = outfile::append(&self.path, self.force).map_err(io::Error::other)?;
        self.size = file.metadata()?.len();
        self.file = Some(file);
        Ok(())
    }

    fn failed(&mut self, e: &io::Error) {
        self.record_failed = true;
        self.file = None;
        if !self.failing {
            warn!(
                "cannot write the findings file {} (counted, retried at the next record): {e}",
                self.path.display()
            );
        }
        self.failing = true;
    }
}

impl Write for RotatingFile {
    /// Always takes the whole buffer: a failure is counted, not returned
    /// (the session stops on a report it cannot write).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.record_failed {
            return Ok(buf.len());
        }
        // A full file is rotated between records, never inside one; the
        // current file always holds the last record (a summary at exit).
        if std::mem::take(&mut self.at_record_start)
            && self.file.is_some()
            && self.size >= self.max_size
        {
            if let Err(e) = self.rotate() {
                self.failed(&e);
                return Ok(buf.len());
            }
        }
        if self.file.is_none() {
            if let Err(e) = self.reopen() {
                self.failed(&e);
                return Ok(buf.len());
            }
        }
        let result = self.file.as_mut().expect("opened").write_all(buf);
        match result {
            Ok(()) => self.size += buf.len() as u64,
            Err(e) => self.failed(&e),
        }
        Ok(buf.len())
    }

    /// The end of a record (the reporter flushes after each): counts it if
    /// it failed.
    fn flush(&mut self) -> io::Result<()> {
        self.at_record_start = true;
        if std::mem::take(&mut self.record_failed) {
            self.failures.inc();
            return Ok(());
        }
        if self.failing {
            info!("writing the findings file {} again", self.path.display());
            self.failing = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A record written after a switch goes to the new output only; the
    /// reporter's handle (a clone) sees the switch.
    #[test]
    fn a_switch_takes_the_next_record() {
        let dir = tempfile_dir("switch");
        let (one, two) = (dir.join("one.jsonl"), dir.join("two.jsonl"));
        let open = |p: &Path| -> Box<dyn Write + Send> {
            Box::new(RotatingFile::open(p, 1 << 20, 2, false, Counter::default()).unwrap())
        };
        let running = Switchable::new(open(&one));
        let mut reporter = running.clone();
        writeln!(reporter, "first").unwrap();
        reporter.flush().unwrap();
        running.switch(open(&two));
        writeln!(reporter, "second").unwrap();
        reporter.flush().unwrap();
        assert_eq!(lines_of(&one), ["first"]);
        assert_eq!(lines_of(&two), ["second"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("locktrace-rotate-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn lines_of(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .map(|t| t.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    #[test]
    fn records_rotate_by_size_and_the_oldest_beyond_keep_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("findings.jsonl");
        std::fs::write(&path, "old\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let failures = Counter::default();
        let mut f = RotatingFile::open(&path, 5, 2, false, failures.clone()).unwrap();
        for i in 0..5 {
            // Two writes for one record, as a reporter may make.
            write!(f, "record").unwrap();
            writeln!(f, " {i}").unwrap();
            f.flush().unwrap();
        }
        // Appended to "old", then one record per file (each over 5 bytes);
        // "old" and records 0 to 2 went beyond `keep`.
        assert_eq!(lines_of(&path), ["record 4"]);
        assert_eq!(lines_of(&f.numbered(1)), ["record 3"]);
        assert_eq!(lines_of(&f.numbered(2)), ["record 2"]);
        assert!(!f.numbered(3).exists());
        for p in [path.clone(), f.numbered(1), f.numbered(2)] {
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", p.display());
        }
        assert_eq!(failures.get(), 0);
    }

    #[test]
    fn an_existing_file_is_appended_to() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("findings.jsonl");
        std::fs::write(&path, "earlier run\n").unwrap();
        let mut f = RotatingFile::open(&path, 1 << 20, 3, false, Counter::default()).unwrap();
        writeln!(f, "this run").unwrap();
        f.flush().unwrap();
        assert_eq!(lines_of(&path), ["earlier run", "this run"]);
    }

    #[test]
    fn a_failed_write_is_counted_once_per_record_and_retried() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("findings.jsonl");
        let failures = Counter::default();
        let mut f = RotatingFile::open(&path, 1 << 20, 3, false, failures.clone()).unwrap();
        // The directory goes: the next reopen fails.
        f.file = None;
        std::fs::remove_dir_all(dir.path()).unwrap();
        write!(f, "a").unwrap();
        writeln!(f, "b").unwrap();
        f.flush().unwrap();
        assert_eq!(failures.get(), 1);
        std::fs::create_dir(dir.path()).unwrap();
        writeln!(f, "c").unwrap();
        f.flush().unwrap();
        assert_eq!(failures.get(), 1);
        assert_eq!(lines_of(&path), ["c"]);
    }
}
