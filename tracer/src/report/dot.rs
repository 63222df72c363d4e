//! The DOT printer (Graphviz): one digraph per finding. A lock-order cycle
//! is its locks (nodes) and dependencies (edges, labelled with the thread
//! and the call site that requested the next lock); a deadlock or hang is
//! its threads and locks, with `waits for` and `held by` edges.

use std::collections::BTreeSet;
use std::io::{self, Write};

use tracer_analysis::model::{Frame, Level};

use crate::report::escape;
use crate::report::findings::{Edge, Finding, Inversion, Lock, SameClassNesting, ThreadReport};

/// `s` as a DOT quoted string: `"` and `\` escaped, line breaks as `\n`
/// (a centred line in a label), other control characters dropped.
pub fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            c if c.is_control() => {}
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

/// A frame of the C library (glibc, musl), where every lock call goes
/// through: not the call site a programmer looks for.
fn in_libc(fr: &Frame) -> bool {
    let module = fr.module.as_deref().unwrap_or_default();
    let base = module.rsplit('/').next().unwrap_or(module);
    ["libc.so", "libc-", "libpthread", "ld-musl", "libc.musl"]
        .iter()
        .any(|p| base.starts_with(p))
}

/// Where a lock was requested: the first frame outside the C library with
/// a source line (libc with debug info has lines too), else any with a
/// line, else the first with a function, else the innermost address.
pub fn call_site(stack: &[Frame]) -> String {
    let with_line = |f: &&Frame| f.file.is_some() && f.line.is_some();
    let first = stack
        .iter()
        .filter(with_line)
        .find(|f| !in_libc(f))
        .or_else(|| stack.iter().find(with_line));
    if let Some(fr) = first {
        let file = fr.file.as_deref().unwrap_or_default();
        let file = file.rsplit('/').next().unwrap_or(file);
        let func = fr.function.as_deref().unwrap_or("??");
        return format!("{func} {file}:{}", fr.line.unwrap_or(0));
    }
    if let Some(fr) = stack.iter().find(|f| f.function.is_some()) {
        return fr.function.clone().unwrap_or_default();
    }
    stack
        .first()
        .map(|f| format!("{:#x}", f.addr))
        .unwrap_or_else(|| "(no stack)".into())
}

/// A lock node's label: name (or address), kind and address.
fn lock_label(l: &Lock) -> String {
    let mut s = match &l.name {
        Some(name) => format!("{name}\n{} {:#x}", l.kind, l.addr),
        None => format!("{:#x}\n{}", l.addr, l.kind),
    };
    if let Some(shared) = &l.shared {
        s.push_str(&format!("\nshared: {shared}"));
    }
    s
}

/// An edge's label: the thread (and its process when asked) and the call
/// site of the request (Python's innermost frame when it ran Python).
fn edge_label(e: &Edge, with_process: bool) -> String {
    let mut s = format!("thread {} [{}]", e.thread, e.tid);
    if with_process {
        s.push_str(&format!("\nof {} [{}]", e.comm, e.pid));
    }
    let site = match e.python_stack.first() {
        Some(py) => format!("{} {}:{}", py.function, py.file, py.line),
        None => call_site(&e.stack),
    };
    s.push_str(&format!("\nat {site}"));
    s
}

/// Lock nodes, by identity (address and name), numbered in order.
#[derive(Default)]
struct Locks(Vec<Lock>);

impl Locks {
    fn id(&mut self, out: &mut dyn Write, l: &Lock) -> io::Result<String> {
        let key = |x: &Lock| (x.addr, x.name.clone());
        let i = match self.0.iter().position(|x| key(x) == key(l)) {
            Some(i) => i,
            None => {
                self.0.push(l.clone());
                let i = self.0.len() - 1;
                writeln!(
                    out,
                    "  l{i} [shape=ellipse, label={}];",
                    quote(&lock_label(l))
                )?;
                i
            }
        };
        Ok(format!("l{i}"))
    }
}

fn header(out: &mut dyn Write, name: &str, title: &str) -> io::Result<()> {
    writeln!(out, "digraph {} {{", quote(name))?;
    writeln!(out, "  label={}; labelloc=t;", quote(title))?;
    writeln!(
        out,
        "  node [fontname=\"monospace\"]; edge [fontname=\"monospace\"];"
    )
}

fn inversion(out: &mut dyn Write, inv: &Inversion) -> io::Result<()> {
    let class = inv.level == Level::Class;
    let pids: BTreeSet<u32> = inv.cycle.iter().map(|e| e.pid).collect();
    let mut title = format!(
        "lock-order inversion #{}: {} locks in {} [{}]",
        inv.id,
        inv.locks.len(),
        inv.comm,
        inv.pid
    );
    if class {
        title.push_str(&format!("\nlock classes: {}", inv.classes.join(" -> ")));
    }
    if let Some(gate) = &inv.gate {
        title.push_str(&format!("\nguarded by {}: cannot deadlock", gate.label()));
    }
    header(out, &format!("finding {}", inv.id), &title)?;
    let mut locks = Locks::default();
    for l in &inv.locks {
        locks.id(out, l)?;
    }
    for e in &inv.cycle {
        let (from, to) = (locks.id(out, &e.from)?, locks.id(out, &e.to)?);
        let label = edge_label(e, class || pids.len() > 1);
        writeln!(out, "  {from} -> {to} [label={}];", quote(&label))?;
    }
    writeln!(out, "}}")
}

fn nesting(out: &mut dyn Write, n: &SameClassNesting) -> io::Result<()> {
    let title = format!(
        "same-class nesting #{}: lock class {} in {} [{}]",
        n.id, n.class, n.comm, n.pid
    );
    header(out, &format!("finding {}", n.id), &title)?;
    let mut locks = Locks::default();
    let (held, requested) = (locks.id(out, &n.held)?, locks.id(out, &n.requested)?);
    let label = format!(
        "thread {} [{}]\nat {}",
        n.thread,
        n.tid,
        call_site(&n.stack)
    );
    writeln!(out, "  {held} -> {requested} [label={}];", quote(&label))?;
    if let Some(o) = &n.opposite {
        let (from, to) = (locks.id(out, &o.from)?, locks.id(out, &o.to)?);
        let label = edge_label(o, o.pid != n.pid);
        writeln!(out, "  {from} -> {to} [label={}];", quote(&label))?;
    }
    writeln!(out, "}}")
}

/// Threads (boxes) and locks (ellipses): `thread -> lock` it waits for,
/// `lock -> thread` that holds it.
fn wait_graph(out: &mut dyn Write, threads: &[&ThreadReport]) -> io::Result<()> {
    let mut locks = Locks::default();
    let mut shown: BTreeSet<u32> = BTreeSet::new();
    let mut thread_node = |out: &mut dyn Write, tid: u32, label: String| -> io::Result<String> {
        if shown.insert(tid) {
            writeln!(out, "  t{tid} [shape=box, label={}];", quote(&label))?;
        }
        Ok(format!("t{tid}"))
    };
    let mut held_by: BTreeSet<(String, String)> = BTreeSet::new();
    for t in threads {
        let label = format!(
            "thread {} [{}]\n{} [{}], state {}",
            t.thread, t.tid, t.comm, t.pid, t.state
        );
        let node = thread_node(out, t.tid, label)?;
        for h in &t.holds {
            held_by.insert((locks.id(out, &h.lock)?, node.clone()));
        }
    }
    for t in threads {
        let Some(lock) = &t.waits_for else { continue };
        let lock_node = locks.id(out, lock)?;
        let mut label = "waits for".to_string();
        if let Some(s) = t.waiting_s {
            label.push_str(&format!(" {s:.1}s"));
        }
        label.push_str(&format!("\nat {}", call_site(&t.stack)));
        writeln!(
            out,
            "  t{} -> {lock_node} [style=dashed, label={}];",
            t.tid,
            quote(&label)
        )?;
        for &holder in &t.held_by {
            let node = thread_node(out, holder, format!("thread [{holder}]"))?;
            held_by.insert((lock_node.clone(), node));
        }
    }
    for (lock, thread) in held_by {
        writeln!(out, "  {lock} -> {thread} [label=\"held by\"];")?;
    }
    writeln!(out, "}}")
}

/// Writes `f` as one DOT digraph.
pub fn write(out: &mut dyn Write, f: &Finding) -> io::Result<()> {
    // Names escaped as in the text report (`quote` alone would drop ESC and
    // keep the rest of a forged sequence).
    let f = &escape::finding(f);
    match f {
        Finding::LockOrderInversion(inv) => inversion(out, inv),
        Finding::SameClassNesting(n) => nesting(out, n),
        Finding::Deadlock(d) => {
            let title = format!(
                "deadlock #{}: {} threads of {} [{}] wait for each other",
                d.id,
                d.threads.len(),
                d.comm,
                d.pid
            );
            header(out, &format!("finding {}", d.id), &title)?;
            wait_graph(out, &d.threads.iter().collect::<Vec<_>>())
        }
        Finding::LockWaitTimeout(t) => {
            let title = format!(
                "lock wait timeout #{}: thread [{}] of {} [{}]",
                t.id, t.waiter.tid, t.comm, t.pid
            );
            header(out, &format!("finding {}", t.id), &title)?;
            let threads: Vec<&ThreadReport> =
                std::iter::once(&t.waiter).chain(&t.holders).collect();
            wait_graph(out, &threads)
        }
        Finding::SelfDeadlock(d) => {
            let title = format!(
                "self-deadlock #{}: thread {} [{}] of {} [{}] requested a lock it holds",
                d.id, d.thread, d.tid, d.comm, d.pid
            );
            header(out, &format!("finding {}", d.id), &title)?;
            let mut locks = Locks::default();
            let lock = locks.id(out, &d.lock)?;
            let label = format!("thread {} [{}]", d.thread, d.tid);
            writeln!(out, "  t{} [shape=box, label={}];", d.tid, quote(&label))?;
            let label = format!("waits for\nat {}", call_site(&d.stack));
            writeln!(
                out,
                "  t{} -> {lock} [style=dashed, label={}];",
                d.tid,
                quote(&label)
            )?;
            let label = format!("held by\ntaken at {}", call_site(&d.held_stack));
            writeln!(out, "  {lock} -> t{} [label={}];", d.tid, quote(&label))?;
            writeln!(out, "}}")
        }
        Finding::BlockedThread(t) => {
            header(out, &format!("blocked {}", t.tid), "blocked thread")?;
            wait_graph(out, &[t])
        }
    }
}
