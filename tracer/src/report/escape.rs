//! Names that come from traced processes (process and thread names, paths,
//! symbols, Python file and function names, lock names) are chosen by those
//! processes, which may be another user's: printed raw, a thread named
//! `"\r\nERROR: ..."` forges a line of the report, and an escape sequence
//! rewrites the operator's terminal. The text printers (`text`, `dot`, the
//! summary and `locktrace report`'s description) print findings through
//! [`finding`] and [`summary`], so no field can be forgotten; JSON escapes
//! on its own.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde::Deserialize;

use crate::report::findings::Finding;
use crate::report::summary::Summary;

/// Whether `c` must not reach a terminal as it is: C0 controls (line
/// breaks and ESC among them), DEL, C1 controls (U+0080-U+009F: 0x9b is a
/// CSI on some terminals), the Unicode line separators, and the
/// bidirectional overrides that make text read in another order.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every unsafe character written as an escape: `\n`, `\r`, `\t`,
/// `\x1b` (C0 and DEL), `\u{9b}` (others). Backslashes stay as they are:
/// names are for reading, and a literal `\x1b` in a name is harmless.
pub fn name(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 && is_unsafe(c) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if is_unsafe(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// `f` with every string in it escaped with [`name`]. Through its
/// serialized form, which names every field: a field added later is
/// escaped without anyone remembering to (`locktrace report` reads the
/// same form back, so the round trip holds; the lock's process, not
/// written, is not printed either).
pub fn finding(f: &Finding) -> Finding {
    let escaped = serde_json::to_value(f).map(|mut v| {
        escape_strings(&mut v);
        v
    });
    match escaped.map(|v| Finding::deserialize(&v)) {
        Ok(Ok(f)) => f,
        // Cannot happen (the tests read every kind back); the text is
        // still screened line by line by [`rest`].
        _ => f.clone(),
    }
}

fn escape_strings(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::String(s) => {
            if let Cow::Owned(e) = name(s) {
                *s = e;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(escape_strings),
        Value::Object(fields) => fields.values_mut().for_each(escape_strings),
        _ => {}
    }
}

/// The summary with the names in it escaped (by hand: it is never read
/// back, so it has no deserializer for [`finding`]'s way).
pub fn summary(s: &Summary) -> Summary {
    let mut s = s.clone();
    let esc = |t: &mut String| {
        if let Cow::Owned(e) = name(t) {
            *t = e;
        }
    };
    s.probed_files.iter_mut().for_each(esc);
    for c in &mut s.contention {
        esc(&mut c.comm);
        c.name.iter_mut().for_each(esc);
    }
    for u in &mut s.coverage.untraced {
        esc(&mut u.comm);
        u.name.iter_mut().for_each(esc);
        for fr in &mut u.site {
            fr.module.iter_mut().for_each(esc);
            fr.function.iter_mut().for_each(esc);
            fr.file.iter_mut().for_each(esc);
        }
    }
    s
}

/// Text already printed, screened once more: every unsafe character but
/// the printer's own line breaks escaped. Whatever a printer forgot to pass
/// through [`name`] can then still break a line, never drive the terminal.
pub fn rest(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| c != '\n' && is_unsafe(c)) {
        return Cow::Borrowed(text);
    }
    let lines: Vec<Cow<str>> = text.split('\n').map(name).collect();
    Cow::Owned(lines.join("\n"))
}

/// One log event as the logger writes it (`-v`), with `\r` and every line
/// break but the last escaped: a name logged in a field cannot start a
/// forged log line. tracing-subscriber already escapes ESC and C1 in field
/// values (and the logger's own colours are ESC sequences, kept).
pub fn log_event(event: &[u8]) -> Cow<'_, [u8]> {
    let body = event.strip_suffix(b"\n").unwrap_or(event);
    if !body.iter().any(|&b| b == b'\n' || b == b'\r') {
        return Cow::Borrowed(event);
    }
    let mut out = Vec::with_capacity(event.len() + 8);
    for &b in body {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b => out.push(b),
        }
    }
    out.extend_from_slice(&event[body.len()..]);
    Cow::Owned(out)
}

/// Standard error for the logger, each event passed through [`log_event`].
/// The logger formats an event whole and writes it with one `write_all`,
/// so one `write` call here is one event.
pub struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::stderr().write_all(&log_event(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(name("worker-1"), "worker-1");
        assert!(matches!(name("worker-1"), Cow::Borrowed(_)));
        assert_eq!(
            name("\r\nERROR: forged\x1b[2J"),
            "\\r\\nERROR: forged\\x1b[2J"
        );
        assert_eq!(name("a\tb\x7fc\x00"), "a\\tb\\x7fc\\x00");
        assert_eq!(name("csi\u{9b}2J"), "csi\\u{9b}2J");
        assert_eq!(name("abc\u{202e}fed"), "abc\\u{202e}fed");
        // Printable Unicode and backslashes stay.
        assert_eq!(name("été\\x1b"), "été\\x1b");
    }

    #[test]
    fn a_log_event_keeps_only_its_last_line_break() {
        assert_eq!(&*log_event(b"INFO probed libc\n"), b"INFO probed libc\n");
        assert_eq!(
            &*log_event(b"INFO comm=\"x\r\nERROR forged\"\n"),
            b"INFO comm=\"x\\r\\nERROR forged\"\n"
        );
        assert_eq!(&*log_event(b"no newline\rat end"), b"no newline\\rat end");
    }

    #[test]
    fn the_rest_keeps_line_breaks() {
        assert_eq!(rest("a\nb\n"), "a\nb\n");
        assert_eq!(rest("a\x1b[2J\nb\r\n"), "a\\x1b[2J\nb\\r\n");
    }
}
