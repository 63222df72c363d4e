//! The HTML printer of `locktrace report --format html`: one self-contained
//! page (inline CSS, no script, no fetched resource) with each finding's
//! headline, its picture (the DOT printer's graph laid out by Graphviz as
//! inline SVG when `dot` is installed, else a table of its edges), both
//! stacks of every edge, the Python frames, and what the captures hold.
//! Made for a laptop screen and for paper.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::process::{Command, Stdio};

use tracer_analysis::model::{Frame, PyFrame};

use crate::report::dot;
use crate::report::escape;
use crate::report::findings::{Edge, Entry, Finding, Inversion, Lock, ThreadReport};

/// Findings with more locks or threads than this get the table, not a
/// picture: laying out a huge graph (a damaged or hostile capture) could
/// take Graphviz minutes.
const MAX_PICTURE_NODES: usize = 64;

/// The page's Content-Security-Policy: no fetch of any kind (no script,
/// no image but inline data), inline styles only. The agent's `/report`
/// also sends it as a header.
pub const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:";

const STYLE: &str = "
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 72rem; padding: 1rem 1.5rem; color: #1b1b1b; }
h1 { font-size: 1.5rem; margin-bottom: .2rem; }
h2 { font-size: 1.15rem; margin: 0 0 .6rem; }
h3 { font-size: 1rem; margin: 1rem 0 .3rem; }
h4 { font-size: .9rem; margin: .6rem 0 .2rem; color: #444; }
article { border: 1px solid #ccc; border-left: 6px solid #888; border-radius: 4px; padding: .8rem 1rem; margin: 1.2rem 0; break-inside: avoid-page; }
article.error { border-left-color: #b00020; }
article.warning { border-left-color: #d98200; }
article.note { border-left-color: #2a7ab0; }
.level { font-weight: bold; }
.error .level { color: #b00020; }
.warning .level { color: #a35f00; }
.note .level { color: #2a7ab0; }
figure { margin: .5rem 0; overflow-x: auto; }
figure svg { max-width: 100%; height: auto; }
table { border-collapse: collapse; font-size: .85rem; margin: .2rem 0; }
td, th { padding: .1rem .6rem .1rem 0; text-align: left; vertical-align: top; }
th { color: #555; font-weight: 600; }
code, .stack td { font-family: ui-monospace, monospace; }
.stacks { display: grid; grid-template-columns: repeat(auto-fit, minmax(24rem, 1fr)); gap: .2rem 1.5rem; }
.stacks > div { min-width: 0; }
.stack .n, .stack .fn, .stack .mod { white-space: nowrap; }
.stack .at { overflow-wrap: anywhere; }
.muted { color: #666; }
nav ol { padding-left: 1.5rem; }
@media print { body { max-width: none; font-size: 11px; } nav { display: none; } article { border-left-width: 3px; } }
";

/// `s` for HTML text and attribute values, control characters escaped
/// first as the text report escapes them.
fn esc(s: &str) -> String {
    let s = escape::name(s);
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The page's head, its style and its policy, and its first heading.
fn head(title: &str) -> String {
    let mut page = String::new();
    page.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    page.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
    // No fetch of any kind, even if a name slipped through unescaped.
    let _ = write!(
        page,
        "<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">"
    );
    let _ = write!(page, "<title>{title}</title><style>");
    page.push_str(STYLE);
    let _ = writeln!(page, "</style></head><body>\n<h1>{title}</h1>");
    page
}

/// Writes the page for `shown`, the findings that passed the filter, read
/// from the captures `sources`; `held` says what the captures hold (the
/// text report's closing summary).
pub fn write(
    out: &mut dyn Write,
    sources: &[String],
    shown: &[&Entry],
    held: &str,
) -> io::Result<()> {
    let mut page = head("locktrace report");
    let names: Vec<String> = sources.iter().map(|n| esc(n)).collect();
    let _ = writeln!(
        page,
        "<p class=\"muted\">{} shown, from {}</p>",
        plural(shown.len(), "finding", "findings"),
        names.join(", ")
    );
    if shown.len() > 1 {
        page.push_str("<nav><ol>");
        for (i, e) in shown.iter().enumerate() {
            let _ = write!(
                page,
                "<li><a href=\"#finding-{i}\">{}</a></li>",
                esc(&headline(&e.finding))
            );
        }
        page.push_str("</ol></nav>\n");
    }
    for (i, e) in shown.iter().enumerate() {
        finding(
            &mut page,
            i,
            &escape::finding(&e.finding),
            e.time.as_deref(),
        );
    }
    page.push_str("<h2>What the captures hold</h2>\n<pre>");
    page.push_str(&esc_lines(held));
    page.push_str("</pre>\n</body></html>\n");
    out.write_all(page.as_bytes())?;
    out.flush()
}

fn plural(n: usize, one: &str, many: &str) -> String {
    crate::report::text::plural(n as u64, one, many)
}

/// Text with its line breaks kept, everything else escaped.
fn esc_lines(text: &str) -> String {
    text.split('\n').map(esc).collect::<Vec<_>>().join("\n")
}

/// The finding's `type`, as its JSON says.
fn type_of(f: &Finding) -> String {
    serde_json::to_value(f)
        .ok()
        .and_then(|v| v.get("type")?.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The first line of the text report: `WARNING: potential deadlock: ...`.
fn headline(f: &Finding) -> String {
    f.to_string().lines().next().unwrap_or_default().to_string()
}

fn finding(page: &mut String, i: usize, f: &Finding, time: Option<&str>) {
    let head = headline(f);
    let (level, rest) = head.split_once(": ").unwrap_or(("", &head));
    let class = match level {
        "ERROR" => "error",
        "NOTE" => "note",
        "WARNING" => "warning",
        _ => "blocked",
    };
    let _ = write!(
        page,
        "<article class=\"{class}\" id=\"finding-{i}\" data-type=\"{}\">\n<h2><span class=\"level\">{}</span> {}</h2>\n",
        type_of(f),
        esc(level),
        esc(rest)
    );
    if !matches!(f, Finding::BlockedThread(_)) {
        let when = match time {
            Some(t) => format!("reported <time datetime=\"{0}\">{0}</time> · ", esc(t)),
            None => String::new(),
        };
        let _ = writeln!(
            page,
            "<p class=\"muted\">{when}fingerprint <code>{}</code></p>",
            crate::report::fingerprint::fingerprint(f)
        );
    }
    picture(page, f);
    match f {
        Finding::LockOrderInversion(inv) => inversion(page, inv),
        Finding::SameClassNesting(n) => {
            let _ = writeln!(page, "<p>Lock class <code>{}</code>.</p>", esc(&n.class));
            stacks(
                page,
                (&format!("{} was taken at", n.held.label()), &n.held_stack),
                (&format!("{} requested at", n.requested.label()), &n.stack),
            );
            if let Some(o) = &n.opposite {
                page.push_str("<h3>The other way</h3>\n");
                edge(page, o, true);
            }
        }
        Finding::SelfDeadlock(d) => stacks(
            page,
            (&format!("{} was taken at", d.lock.label()), &d.held_stack),
            (&format!("{} requested again at", d.lock.label()), &d.stack),
        ),
        Finding::Deadlock(d) => {
            if let Some(id) = d.inversion {
                let _ = writeln!(
                    page,
                    "<p>The lock-order inversion reported as finding #{id}.</p>"
                );
            }
            for t in &d.threads {
                thread(page, t);
            }
        }
        Finding::LockWaitTimeout(t) => {
            thread(page, &t.waiter);
            for h in &t.holders {
                page.push_str("<h3>Held by</h3>\n");
                thread(page, h);
            }
        }
        Finding::BlockedThread(t) => thread(page, t),
    }
    page.push_str("</article>\n");
}

fn lock_cell(l: &Lock) -> String {
    let mut s = format!(
        "<code>{}</code> <span class=\"muted\">{} {:#x}",
        esc(&l.label()),
        l.kind,
        l.addr
    );
    if let Some(shared) = &l.shared {
        let _ = write!(s, ", shared: {}", esc(shared));
    }
    s.push_str("</span>");
    s
}

fn inversion(page: &mut String, inv: &Inversion) {
    if !inv.classes.is_empty() {
        let _ = writeln!(
            page,
            "<p>Lock classes: <code>{}</code></p>",
            esc(&inv.classes.join(" → "))
        );
    }
    page.push_str("<table><tr><th>lock</th></tr>");
    for l in &inv.locks {
        let _ = write!(page, "<tr><td>{}</td></tr>", lock_cell(l));
    }
    page.push_str("</table>\n");
    for (i, e) in inv.cycle.iter().enumerate() {
        let _ = write!(page, "<h3>#{} ", i + 1);
        edge(page, e, false);
    }
}

/// One dependency: its heading (already opened by an inversion's `#N`),
/// and where each of its two locks was taken.
fn edge(page: &mut String, e: &Edge, open_heading: bool) {
    if open_heading {
        page.push_str("<h3>");
    }
    let _ = writeln!(
        page,
        "thread {} [{}] of {} [{}] requested <code>{}</code> while holding <code>{}</code></h3>",
        esc(&e.thread),
        e.tid,
        esc(&e.comm),
        e.pid,
        esc(&e.to.label()),
        esc(&e.from.label())
    );
    if let Some(restored) = &e.restored {
        let _ = writeln!(
            page,
            "<p>From the saved state: learned {} by the agent before it restarted.</p>",
            esc(&restored.learned)
        );
    }
    page.push_str("<div class=\"stacks\">");
    page.push_str("<div>");
    let _ = write!(page, "<h4>{} was taken at</h4>", esc(&e.from.label()));
    if !e.held_python_stack.is_empty() {
        python_stack(page, &e.held_python_stack);
        page.push_str("<h4>native frames</h4>");
    }
    stack(page, &e.held_stack);
    page.push_str("</div><div>");
    let _ = write!(page, "<h4>{} requested at</h4>", esc(&e.to.label()));
    if !e.python_stack.is_empty() {
        python_stack(page, &e.python_stack);
        page.push_str("<h4>native frames</h4>");
    }
    stack(page, &e.stack);
    page.push_str("</div></div>\n");
}

fn stacks(page: &mut String, left: (&str, &[Frame]), right: (&str, &[Frame])) {
    page.push_str("<div class=\"stacks\">");
    for (title, frames) in [left, right] {
        let _ = write!(page, "<div><h4>{}</h4>", esc(title));
        stack(page, frames);
        page.push_str("</div>");
    }
    page.push_str("</div>\n");
}

fn thread(page: &mut String, t: &ThreadReport) {
    let _ = write!(
        page,
        "<h3>thread {} [{}] of {} [{}], state {}",
        esc(&t.thread),
        t.tid,
        esc(&t.comm),
        t.pid,
        esc(&t.state)
    );
    match &t.waits_for {
        Some(l) => {
            let _ = write!(page, ", waits for <code>{}</code>", esc(&l.label()));
            if let Some(s) = t.waiting_s {
                let _ = write!(page, " for {s:.1}s");
            }
            if !t.held_by.is_empty() {
                let by: Vec<String> = t.held_by.iter().map(|x| x.to_string()).collect();
                let _ = write!(page, ", held by thread {}", by.join(", "));
            }
        }
        None => page.push_str(", not waiting for a lock"),
    }
    page.push_str("</h3>\n");
    if !t.holds.is_empty() {
        page.push_str("<div class=\"stacks\">");
    }
    for h in &t.holds {
        let _ = write!(page, "<div><h4>holds {}, taken at</h4>", lock_cell(&h.lock));
        if !h.taken_at_python.is_empty() {
            python_stack(page, &h.taken_at_python);
        }
        if h.taken_at.is_empty() {
            page.push_str("<p class=\"muted\">(taken before tracing began)</p>");
        } else {
            stack(page, &h.taken_at);
        }
        page.push_str("</div>");
    }
    if !t.holds.is_empty() {
        page.push_str("</div>");
    }
    // Its own stacks at full width: beside the held locks' call sites,
    // a deep stack's columns would be squeezed.
    page.push_str("<div>");
    if !t.python_stack.is_empty() {
        page.push_str("<h4>Python stack</h4>");
        python_stack(page, &t.python_stack);
    }
    page.push_str("<h4>stack</h4>");
    stack(page, &t.stack);
    page.push_str("</div>\n");
}

fn stack(page: &mut String, frames: &[Frame]) {
    if frames.is_empty() {
        page.push_str("<p class=\"muted\">(no stack)</p>");
        return;
    }
    page.push_str("<table class=\"stack\">");
    for (i, fr) in frames.iter().enumerate() {
        let func = match (&fr.function, fr.offset) {
            (Some(f), Some(off)) if off != 0 => format!("{}+{off:#x}", esc(f)),
            (Some(f), _) => esc(f),
            (None, _) => format!("{:#x}", fr.addr),
        };
        let place = match (&fr.file, fr.line) {
            (Some(file), Some(line)) => format!("{}:{line}", esc(file)),
            (Some(file), None) => esc(file),
            _ => String::new(),
        };
        let module = fr
            .module
            .as_deref()
            .map(|m| esc(m.rsplit('/').next().unwrap_or(m)))
            .unwrap_or_default();
        let _ = write!(
            page,
            "<tr><td class=\"n muted\">#{i}</td><td class=\"fn\">{func}</td><td class=\"at\">{place}</td><td class=\"mod muted\">{module}</td></tr>"
        );
    }
    page.push_str("</table>");
}

fn python_stack(page: &mut String, frames: &[PyFrame]) {
    page.push_str("<table class=\"stack python\">");
    for (i, fr) in frames.iter().enumerate() {
        let _ = write!(
            page,
            "<tr><td class=\"n muted\">#{i}</td><td class=\"fn\">{}</td><td class=\"at\">{}:{}</td></tr>",
            esc(&fr.function),
            esc(&fr.file),
            fr.line
        );
    }
    page.push_str("</table>");
}

/// The finding's graph as inline SVG, laid out by Graphviz; without
/// Graphviz (or for a graph too big to lay out quickly), a table of its
/// edges says the same.
fn picture(page: &mut String, f: &Finding) {
    let nodes = match f {
        Finding::LockOrderInversion(inv) => inv.locks.len(),
        Finding::Deadlock(d) => d.threads.len() * 2,
        Finding::LockWaitTimeout(t) => (t.holders.len() + 1) * 2,
        _ => 2,
    };
    if nodes <= MAX_PICTURE_NODES {
        if let Some(svg) = svg_of(f) {
            let _ = writeln!(page, "<figure>{svg}</figure>");
            return;
        }
    }
    if let Finding::LockOrderInversion(inv) = f {
        page.push_str("<table><tr><th>held</th><th>then requested</th><th>by</th></tr>");
        for e in &inv.cycle {
            let _ = write!(
                page,
                "<tr><td><code>{}</code></td><td><code>{}</code></td><td>thread {} [{}] of {} [{}] at <code>{}</code></td></tr>",
                esc(&e.from.label()),
                esc(&e.to.label()),
                esc(&e.thread),
                e.tid,
                esc(&e.comm),
                e.pid,
                esc(&dot::call_site(&e.stack))
            );
        }
        page.push_str("</table>\n");
    }
}

/// `dot -Tsvg` of the finding's DOT, without its XML prologue (an `<svg>`
/// element to inline), or `None` when Graphviz is absent or fails.
fn svg_of(f: &Finding) -> Option<String> {
    let mut graph = Vec::new();
    dot::write(&mut graph, f).ok()?;
    svg(graph)
}

/// `dot -Tsvg` of `graph`, without its XML prologue, or `None` when
/// Graphviz is absent or fails.
fn svg(graph: Vec<u8>) -> Option<String> {
    let mut child = Command::new("dot")
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut stdin = child.stdin.take()?;
    let feeder = std::thread::spawn(move || stdin.write_all(&graph));
    let output = child.wait_with_output().ok()?;
    feeder.join().ok()?.ok()?;
    if !output.status.success() {
        return None;
    }
    let svg = String::from_utf8(output.stdout).ok()?;
    let start = svg.find("<svg")?;
    Some(svg[start..].to_string())
}

/// The page of the whole lock-order graph (`report --graph`): its picture
/// (`graph`, DOT, laid out by Graphviz when installed) and its text.
pub fn write_graph(
    out: &mut dyn Write,
    sources: &[String],
    graph: &[u8],
    text: &str,
) -> io::Result<()> {
    let mut page = head("locktrace lock-order graph");
    let names: Vec<String> = sources.iter().map(|n| esc(n)).collect();
    let _ = writeln!(
        page,
        "<p class=\"muted\">The lock classes and dependencies of {}; cycles in red.</p>",
        names.join(", ")
    );
    if let Some(svg) = svg(graph.to_vec()) {
        let _ = writeln!(page, "<figure>{svg}</figure>");
    }
    page.push_str("<pre>");
    page.push_str(&esc_lines(text));
    page.push_str("</pre>\n</body></html>\n");
    out.write_all(page.as_bytes())?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_open_markup() {
        assert_eq!(
            esc("<script>\"x\" & 'y'\x1b"),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;\\x1b"
        );
    }
}
