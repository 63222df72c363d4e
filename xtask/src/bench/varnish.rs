//! An HTTP cache: Debian's varnish, a private varnishd (its own `-n`
//! workdir in a scratch directory, listening on 127.0.0.1 only, never the
//! system service) in front of the benchmark's Apache serving a 1 KiB
//! static file (cached by varnish after the first request: the backend
//! never limits the load), under wrk; untraced, traced in full
//! (`watch --pid` of varnishd's manager, whose cache child exists at start
//! and is traced with it) and under `--budget 5`, in interleaved rounds.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{
    free_port, http_get_ok, run_wrk,
    server_rows::{self, ServerResults, Setup},
    signal_child, wait_for_exit, web_seconds, Apache, Options, ScratchDir, WEB_FILE,
    WRK_CONNECTIONS, WRK_THREADS,
};
use crate::{prereqs, step};

/// Our varnishd (its manager process; it stops its cache child), stopped
/// when dropped, its workdir removed after it.
struct Varnish {
    child: Child,
    port: u16,
    // Dropped after `child` is stopped (Drop::drop runs first).
    _dir: ScratchDir,
}

impl Varnish {
    fn start(backend_port: u16) -> Result<Varnish> {
        let dir = ScratchDir::new("varnish")?;
        let port = free_port()?;
        let log = dir.path().join("varnishd.log");
        let child = Command::new(prereqs::VARNISHD)
            // In the foreground, as our child: no daemon left behind.
            .arg("-F")
            .arg("-n")
            .arg(dir.path().join("work"))
            .arg("-a")
            .arg(format!("127.0.0.1:{port}"))
            .arg("-b")
            .arg(format!("127.0.0.1:{backend_port}"))
            .args(["-s", "malloc,64m"])
            // The management interface on loopback too (a free port).
            .arg("-T")
            .arg(format!("127.0.0.1:{}", free_port()?))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", prereqs::VARNISHD))?;
        let mut varnish = Varnish {
            child,
            port,
            _dir: dir,
        };
        let start = Instant::now();
        loop {
            if let Some(status) = varnish.child.try_wait()? {
                bail!(
                    "varnishd exited with {status} at start:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if varnish.cache_child().is_some() && varnish.get_ok() {
                return Ok(varnish);
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!(
                    "varnishd did not serve {} within 60 s:\n{}",
                    varnish.url(),
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/{WEB_FILE}", self.port)
    }

    /// The cache process (the manager's child), once it runs.
    fn cache_child(&self) -> Option<u32> {
        let parent = self.child.id().to_string();
        std::fs::read_dir("/proc").ok()?.find_map(|e| {
            let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?;
            (ppid == parent).then_some(pid)
        })
    }

    fn get_ok(&self) -> bool {
        http_get_ok(self.port, &format!("/{WEB_FILE}"))
    }

    /// "varnishd (varnish-7.1.1 revision ...)", which `-V` prints to stderr.
    fn version(&self) -> String {
        Command::new(prereqs::VARNISHD)
            .arg("-V")
            .output()
            .ok()
            .and_then(|o| {
                let text = String::from_utf8_lossy(&o.stderr).into_owned();
                let line = text.lines().next()?;
                Some(
                    line.split_whitespace()
                        .nth(1)?
                        .trim_start_matches('(')
                        .to_owned(),
                )
            })
            .unwrap_or_else(|| "varnish".to_owned())
    }
}

impl Drop for Varnish {
    fn drop(&mut self) {
        signal_child(&mut self.child, libc::SIGTERM);
        if wait_for_exit(&mut self.child, Duration::from_secs(30)).is_none() {
            step(format!(
                "varnishd [{}] did not stop within 30 s of SIGTERM: killing it",
                self.child.id()
            ));
            if let Some(cache) = self.cache_child() {
                // SAFETY: kill has no memory-safety preconditions; the pid
                // is our varnishd's child.
                unsafe {
                    libc::kill(cache as libc::pid_t, libc::SIGKILL);
                }
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn varnish_bench(locktrace: &Path, opts: &Options) -> Result<ServerResults> {
    let seconds = web_seconds(opts);
    let backend = Apache::start()?;
    let varnish = Varnish::start(backend.port)?;
    let version = varnish.version();
    let pid = varnish.child.id().to_string();
    step(format!(
        "varnish: {version} on {}, pid {pid} (cache process {}), backend Apache pid {}",
        varnish.url(),
        varnish
            .cache_child()
            .map_or("?".to_owned(), |p| p.to_string()),
        backend.pid()
    ));
    run_wrk(&varnish.url(), 2).context("wrk warm-up run")?;
    let setups = [
        Setup::untraced(),
        Setup::traced("full (watch --pid)", &["--pid", &pid]),
        Setup::traced("budget 5%", &["--pid", &pid, "--budget", "5"]),
    ];
    let url = varnish.url();
    let (rows, disturbed_by) = server_rows::measure(locktrace, "varnish", &setups, opts, || {
        Ok(run_wrk(&url, seconds)?.requests_per_s)
    })?;
    drop(varnish);
    drop(backend);
    Ok(ServerResults {
        server: version,
        load: format!("wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{seconds}s"),
        unit: "requests/s",
        seconds,
        setups: rows,
        disturbed_by,
    })
}

pub fn render(r: &ServerResults, opts: &Options) -> String {
    format!(
        "varnish: {} (a private varnishd on 127.0.0.1, its own workdir, `-s malloc,64m`) caching \
         a 1 KiB static file of the benchmark's Apache, under `{}`; traced with `watch --pid` of \
         varnishd (its cache process included), in full and under `--budget 5`; median of {} \
         interleaved rounds.\n\n{}",
        r.server,
        r.load,
        opts.rounds,
        server_rows::render_table(r)
    )
}
