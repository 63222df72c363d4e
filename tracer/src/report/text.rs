//! The text printer: reports in the spirit of lockdep and ThreadSanitizer,
//! for the engineer on call.

use std::fmt;
use std::path::Path;

use tracer_analysis::model::{Frame, Level, PyFrame};

use crate::report::findings::{
    Deadlock, Finding, Inversion, Lock, LockWaitTimeout, Origin, SameClassNesting, SelfDeadlock,
    ThreadReport,
};

/// `apache2.service (cgroup /system.slice/apache2.service)`, `container
/// 0123456789ab (cgroup ...)`, or `cgroup /user.slice/...` without a unit or
/// container.
impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if let Some(unit) = &self.unit {
            // `docker-ID.scope` says no more than the container's id.
            if !self.container.as_ref().is_some_and(|c| unit.contains(c)) {
                parts.push(unit.clone());
            }
        }
        if let Some(id) = &self.container {
            parts.push(format!("container {}", id.get(..12).unwrap_or(id)));
        }
        if parts.is_empty() {
            write!(f, "cgroup {}", self.cgroup)
        } else {
            write!(f, "{} (cgroup {})", parts.join(", "), self.cgroup)
        }
    }
}

/// The line `{indent}in ORIGIN`, when the origin is known.
fn write_origin(f: &mut fmt::Formatter<'_>, indent: &str, origin: Option<&Origin>) -> fmt::Result {
    match origin {
        Some(o) => writeln!(f, "{indent}in {o}"),
        None => Ok(()),
    }
}

pub(crate) fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

impl fmt::Display for SameClassNesting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = if self.note { "NOTE" } else { "WARNING" };
        writeln!(
            f,
            "{level}: same-class nesting: thread {} [{}] of {} [{}] requested {} while holding {}, both of lock class {}",
            self.thread,
            self.tid,
            self.comm,
            self.pid,
            self.requested.label(),
            self.held.label(),
            self.class
        )?;
        write_origin(f, "  ", self.origin.as_ref())?;
        match &self.opposite {
            None => writeln!(
                f,
                "  (every nesting of this class so far went one address order, as an array locked \
                 in index order: it cannot deadlock while that holds)"
            )?,
            Some(o) => writeln!(
                f,
                "  and thread {} [{}] of {} [{}] nested two of them the other way: it requested {} \
                 while holding {} (deadlock-prone, as two accounts locked in a transfer)",
                o.thread,
                o.tid,
                o.comm,
                o.pid,
                o.to.label(),
                o.from.label()
            )?,
        }
        if let Some(o) = &self.opposite {
            if o.origin != self.origin {
                write_origin(f, &format!("  {} [{}] ", o.comm, o.pid), o.origin.as_ref())?;
            }
        }
        writeln!(f)?;
        writeln!(f, "     {} was taken at:", self.held.label())?;
        write_stack(f, "       ", &self.held_stack)?;
        if self.python_stack.is_empty() {
            writeln!(f, "     {} requested at:", self.requested.label())?;
            write_stack(f, "       ", &self.stack)?;
        } else {
            writeln!(f, "     {} requested at (Python):", self.requested.label())?;
            write_python_stack(f, "       ", &self.python_stack)?;
            if let Some(top) = self.stack.first() {
                write_frame(f, "       ", 0, top)?;
                writeln!(
                    f,
                    "       ({} native frames in --format json)",
                    self.stack.len()
                )?;
            }
        }
        if let Some(o) = &self.opposite {
            writeln!(f, "     {} was taken at:", o.from.label())?;
            write_stack(f, "       ", &o.held_stack)?;
            writeln!(f, "     {} requested at:", o.to.label())?;
            write_stack(f, "       ", &o.stack)?;
        }
        Ok(())
    }
}

impl ThreadReport {
    /// The thread, with its process's origin unless it is `shown` (the
    /// finding's, printed above).
    fn write(
        &self,
        f: &mut fmt::Formatter<'_>,
        indent: &str,
        shown: Option<&Origin>,
    ) -> fmt::Result {
        write!(
            f,
            "{indent}thread {} [{}] of {} [{}], state {}",
            self.thread, self.tid, self.comm, self.pid, self.state
        )?;
        match &self.waits_for {
            Some(lock) => {
                write!(
                    f,
                    ", waits for {} ({} {:#x})",
                    lock.label(),
                    lock.kind,
                    lock.addr
                )?;
                if let Some(s) = self.waiting_s {
                    write!(f, " for {s:.1}s")?;
                }
                if !self.held_by.is_empty() {
                    let by: Vec<String> = self.held_by.iter().map(|t| t.to_string()).collect();
                    write!(f, ", held by thread {}", by.join(", "))?;
                }
                writeln!(f)?;
            }
            None if self.refused_lock => writeln!(
                f,
                ", blocked for good in pthread_mutex_lock: the kernel refused its \
                 priority-inheritance mutex (a deadlock, or an owner that died; which mutex \
                 only a tracer that saw the request knows)"
            )?,
            None => writeln!(f, ", not waiting for a lock")?,
        }
        if self.origin.as_ref() != shown {
            write_origin(f, &format!("{indent}  "), self.origin.as_ref())?;
        }
        for h in &self.holds {
            let python = if h.taken_at_python.is_empty() {
                ""
            } else {
                " (Python)"
            };
            writeln!(
                f,
                "{indent}  holds {} ({} {:#x}), taken at{python}:",
                h.lock.label(),
                h.lock.kind,
                h.lock.addr
            )?;
            if h.taken_at.is_empty() {
                writeln!(f, "{indent}    (taken before tracing began)")?;
            }
            write_python_stack(f, &format!("{indent}    "), &h.taken_at_python)?;
            write_stack_if_any(f, &format!("{indent}    "), &h.taken_at)?;
        }
        if !self.python_stack.is_empty() {
            writeln!(f, "{indent}  Python stack:")?;
            write_python_stack(f, &format!("{indent}    "), &self.python_stack)?;
        }
        writeln!(f, "{indent}  stack:")?;
        write_stack(f, &format!("{indent}    "), &self.stack)
    }
}

fn write_stack_if_any(f: &mut fmt::Formatter<'_>, indent: &str, frames: &[Frame]) -> fmt::Result {
    if frames.is_empty() {
        return Ok(());
    }
    write_stack(f, indent, frames)
}

impl fmt::Display for Deadlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "ERROR: deadlock: {} of {} [{}] wait for each other",
            plural(self.threads.len() as u64, "thread", "threads"),
            self.comm,
            self.pid
        )?;
        write_origin(f, "  ", self.origin.as_ref())?;
        if let Some(id) = self.inversion {
            writeln!(f, "  (the lock-order inversion reported as finding #{id})")?;
        }
        writeln!(f)?;
        for t in &self.threads {
            t.write(f, "  ", self.origin.as_ref())?;
        }
        Ok(())
    }
}

impl fmt::Display for LockWaitTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lock = self
            .waiter
            .waits_for
            .as_ref()
            .map(Lock::label)
            .unwrap_or_default();
        writeln!(
            f,
            "WARNING: lock wait timeout: thread {} [{}] of {} [{}] has waited {:.1}s for {lock}",
            self.waiter.thread,
            self.waiter.tid,
            self.comm,
            self.pid,
            self.waiter.waiting_s.unwrap_or(0.0)
        )?;
        write_origin(f, "  ", self.origin.as_ref())?;
        writeln!(f)?;
        self.waiter.write(f, "  ", self.origin.as_ref())?;
        for h in &self.holders {
            writeln!(f, "  held by:")?;
            h.write(f, "    ", self.origin.as_ref())?;
        }
        Ok(())
    }
}

impl fmt::Display for SelfDeadlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lock = self.lock.label();
        writeln!(
            f,
            "WARNING: self-deadlock: thread {} [{}] of {} [{}] requested {lock} ({} {:#x}), which it already holds",
            self.thread, self.tid, self.comm, self.pid, self.lock.kind, self.lock.addr
        )?;
        write_origin(f, "  ", self.origin.as_ref())?;
        writeln!(f)?;
        writeln!(f, "     {lock} was taken at:")?;
        write_stack(f, "       ", &self.held_stack)?;
        writeln!(f, "     {lock} requested again at:")?;
        write_stack(f, "       ", &self.stack)
    }
}

/// `lib.so.6` for `/usr/lib/x86_64-linux-gnu/lib.so.6`.
fn basename(path: &str) -> &str {
    Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(path)
}

/// One frame: `0x55d0c0a00123  worker_ab+0x1a  /src/ab_ba.c:22  (ab_ba)`.
fn write_frame(f: &mut fmt::Formatter<'_>, indent: &str, i: usize, fr: &Frame) -> fmt::Result {
    let addr = format!("{:#x}", fr.addr);
    write!(f, "{indent}#{i:<2} {addr:<14}  ")?;
    match (&fr.function, fr.offset) {
        (Some(func), Some(off)) if off != 0 => write!(f, "{func}+{off:#x}")?,
        (Some(func), _) => write!(f, "{func}")?,
        (None, _) => write!(f, "??")?,
    }
    match (&fr.file, fr.line) {
        (Some(file), Some(line)) => write!(f, "  {file}:{line}")?,
        (Some(file), None) => write!(f, "  {file}")?,
        _ => {}
    }
    match (&fr.module, &fr.function, fr.offset) {
        (Some(module), None, Some(off)) => write!(f, "  ({}+{off:#x})", basename(module))?,
        (Some(module), _, _) => write!(f, "  ({})", basename(module))?,
        (None, _, _) => {}
    }
    writeln!(f)
}

fn write_python_stack(f: &mut fmt::Formatter<'_>, indent: &str, frames: &[PyFrame]) -> fmt::Result {
    for (i, fr) in frames.iter().enumerate() {
        writeln!(
            f,
            "{indent}#{i:<2} {}  {}:{}",
            fr.function, fr.file, fr.line
        )?;
    }
    Ok(())
}

fn write_stack(f: &mut fmt::Formatter<'_>, indent: &str, frames: &[Frame]) -> fmt::Result {
    if frames.is_empty() {
        return writeln!(f, "{indent}(no stack)");
    }
    for (i, fr) in frames.iter().enumerate() {
        write_frame(f, indent, i, fr)?;
    }
    Ok(())
}

impl fmt::Display for Inversion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Processes of the cycle, in order of appearance; those of
        // dependencies restored from the agent's state ran before it
        // restarted.
        let mut procs: Vec<(u32, &str, bool)> = Vec::new();
        for e in &self.cycle {
            if !procs.iter().any(|(p, _, _)| *p == e.pid) {
                procs.push((e.pid, &e.comm, e.restored.is_some()));
            }
        }
        if procs.is_empty() {
            procs.push((self.pid, &self.comm, false));
        }
        let where_: Vec<String> = procs
            .iter()
            .map(|(p, c, restored)| match restored {
                true => format!("{c} [{p}, before the agent restarted]"),
                false => format!("{c} [{p}]"),
            })
            .collect();
        match &self.gate {
            Some(gate) => writeln!(
                f,
                "NOTE: guarded lock-order inversion between {} in {}: every dependency was made \
                 while holding {}, so it cannot deadlock",
                plural(self.locks.len() as u64, "lock", "locks"),
                where_.join(", "),
                gate.label()
            )?,
            None if self.level == Level::Class => writeln!(
                f,
                "WARNING: potential deadlock: lock-order inversion between {} in {}",
                plural(self.locks.len() as u64, "lock class", "lock classes"),
                where_.join(", ")
            )?,
            None => writeln!(
                f,
                "WARNING: potential deadlock: lock-order inversion between {} in {}",
                plural(self.locks.len() as u64, "lock", "locks"),
                where_.join(", ")
            )?,
        }
        // One line when every process runs in one place (a process, or the
        // workers of one service), else one per process.
        let mut origins: Vec<(u32, &str, Option<&Origin>)> = Vec::new();
        for e in &self.cycle {
            if !origins.iter().any(|(p, _, _)| *p == e.pid) {
                origins.push((e.pid, &e.comm, e.origin.as_ref()));
            }
        }
        if origins.is_empty() {
            origins.push((self.pid, &self.comm, self.origin.as_ref()));
        }
        if origins.iter().all(|(_, _, o)| *o == origins[0].2) {
            write_origin(f, "  ", origins[0].2)?;
        } else {
            for (pid, comm, origin) in &origins {
                match origin {
                    Some(_) => write_origin(f, &format!("  {comm} [{pid}] "), *origin)?,
                    None => writeln!(f, "  {comm} [{pid}] in an unknown cgroup")?,
                }
            }
        }
        writeln!(f)?;

        if self.level == Level::Class {
            let first = self.classes.first().cloned().unwrap_or_default();
            writeln!(
                f,
                "  lock classes: {} -> {first}",
                self.classes.join(" -> ")
            )?;
        }
        let chain: Vec<String> = self
            .locks
            .iter()
            .map(|l| {
                let label = match &l.name {
                    Some(name) => format!("{name} ({} {:#x})", l.kind, l.addr),
                    None => format!("{} {:#x}", l.kind, l.addr),
                };
                match &l.shared {
                    Some(id) => format!("{label} [shared: {id}]"),
                    None => label,
                }
            })
            .collect();
        let first = self.locks.first().map(Lock::label).unwrap_or_default();
        writeln!(f, "  {} -> {first}", chain.join(" -> "))?;
        writeln!(f)?;

        let multi = procs.len() > 1;
        for (i, e) in self.cycle.iter().enumerate() {
            let (from, to) = (e.from.label(), e.to.label());
            write!(f, "  #{} thread {} [{}]", i + 1, e.thread, e.tid)?;
            if multi {
                write!(f, " of {} [{}]", e.comm, e.pid)?;
            }
            writeln!(f, " requested {to} while holding {from}")?;
            if let Some(restored) = &e.restored {
                writeln!(
                    f,
                    "     from the saved state: learned {} by the agent before it restarted",
                    restored.learned
                )?;
            }
            if e.python_stack.is_empty() {
                writeln!(f, "     {from} was taken at:")?;
                write_stack(f, "       ", &e.held_stack)?;
                writeln!(f, "     {to} requested at:")?;
                write_stack(f, "       ", &e.stack)?;
            } else {
                // The interpreter's native frames say nothing to a Python
                // programmer; the JSON report keeps them.
                if e.held_python_stack.is_empty() {
                    writeln!(f, "     {from} was taken at:")?;
                    write_stack(f, "       ", &e.held_stack)?;
                } else {
                    writeln!(f, "     {from} was taken at (Python):")?;
                    write_python_stack(f, "       ", &e.held_python_stack)?;
                    write_stack_if_any(f, "       ", &e.held_stack)?;
                }
                writeln!(f, "     {to} requested at (Python):")?;
                write_python_stack(f, "       ", &e.python_stack)?;
                if let Some(top) = e.stack.first() {
                    write_frame(f, "       ", 0, top)?;
                    writeln!(
                        f,
                        "       ({} native frames in --format json)",
                        e.stack.len()
                    )?;
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::LockOrderInversion(inv) => inv.fmt(f),
            Finding::SelfDeadlock(d) => d.fmt(f),
            Finding::Deadlock(d) => d.fmt(f),
            Finding::LockWaitTimeout(t) => t.fmt(f),
            Finding::SameClassNesting(n) => n.fmt(f),
            Finding::BlockedThread(t) => {
                writeln!(f, "BLOCKED:")?;
                t.write(f, "  ", None)
            }
        }
    }
}
