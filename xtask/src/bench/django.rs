//! A real WSGI application: the Django view of `xtask/bench/django`
//! (Debian's python3-django, DEBUG off, no database, a template rendered
//! per request) under Debian's Apache + mod_wsgi in daemon mode
//! (`xtask/bench/django.conf`), loaded by wrk on loopback. Untraced against
//! `watch --comm apache2`, the README's way to trace a running mod_wsgi site
//! ("Diagnosing a hung mod_wsgi site": Apache, its workers and its mod_wsgi
//! daemons, which keep the comm apache2; wrk is not traced).

use std::path::Path;

use anyhow::{Context, Result};

use super::{
    run_wrk,
    server_rows::{self, ServerResults, Setup},
    web_seconds, Apache, Options, ScratchDir, WRK_CONNECTIONS, WRK_THREADS,
};
use crate::{prereqs, step, workspace_root};

/// The view's URL: customer 42's orders, page 2.
const VIEW_PATH: &str = "/orders/42/?page=2";

/// Copies `xtask/bench/django` into `to` (readable by www-data: the
/// scratch directory is 0755, the files 0644).
fn copy_project(to: &Path) -> Result<()> {
    let from = workspace_root().join("xtask/bench/django");
    for entry in walk(&from)? {
        let rel = entry.strip_prefix(&from)?;
        let dest = to.join(rel);
        if entry.is_dir() {
            std::fs::create_dir_all(&dest)?;
        } else {
            std::fs::copy(&entry, &dest)
                .with_context(|| format!("cannot copy {}", entry.display()))?;
        }
    }
    Ok(())
}

/// Every directory and file under `dir`, parents first (no __pycache__).
fn walk(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        if path.file_name().is_some_and(|n| n == "__pycache__") {
            continue;
        }
        out.push(path.clone());
        if path.is_dir() {
            out.extend(walk(&path)?);
        }
    }
    Ok(out)
}

pub fn django_bench(locktrace: &Path, opts: &Options) -> Result<ServerResults> {
    let seconds = web_seconds(opts);
    let dir = ScratchDir::new("django")?;
    copy_project(dir.path())?;
    // Ready once the view answers 200 (Django imported and configured).
    let apache = Apache::start_conf(dir, "django.conf", VIEW_PATH)?;
    let django_version = std::fs::read_to_string(prereqs::DJANGO)
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VERSION = ("))
                // "3, 2, 25, 'final', 0)": the first three numbers.
                .map(|v| v.split(", ").take(3).collect::<Vec<_>>().join("."))
        })
        .unwrap_or_default();
    let server = format!(
        "{} + mod_wsgi (daemon mode, 2 processes of 8 threads), Django {django_version}",
        apache.version()
    );
    step(format!("django: {server} on {}", apache.url()));
    run_wrk(&apache.url(), 2).context("wrk warm-up run")?;
    let setups = [
        Setup::untraced(),
        Setup::traced("locktrace (watch --comm apache2)", &["--comm", "apache2"]),
    ];
    let url = apache.url();
    let (rows, disturbed_by) = server_rows::measure(locktrace, "django", &setups, opts, || {
        let sample = run_wrk(&url, seconds)?;
        if sample.socket_errors > 0 {
            step(format!(
                "django: wrk: {}",
                sample.socket_errors_line.as_deref().unwrap_or_default()
            ));
        }
        Ok(sample.requests_per_s)
    })?;
    Ok(ServerResults {
        server,
        load: format!("wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{seconds}s {VIEW_PATH}"),
        unit: "requests/s",
        seconds,
        setups: rows,
        disturbed_by,
    })
}

pub fn render(r: &ServerResults, opts: &Options) -> String {
    format!(
        "A Django view: {} serving `{VIEW_PATH}` (a template of 50 rows rendered per request, \
         DEBUG off, no database) on loopback to `{}`; traced with `watch --comm apache2` (Apache, \
         its workers and its mod_wsgi daemons; not wrk); median of {} interleaved rounds.\n\n{}",
        r.server,
        r.load,
        opts.rounds,
        server_rows::render_table(r)
    )
}
