//! A private Apache + mod_wsgi instance serving the lock scenarios of
//! `tests/wsgi` with the config `tests/apache/httpd.conf` (Debian's
//! `apache2` and `libapache2-mod-wsgi-py3`; the system service is never
//! used). The instance runs in its own process group with a temp ServerRoot;
//! dropping it kills every process of that group.

use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::{group_members, stop_group, workspace_dir};

pub const APACHE2: &str = "/usr/sbin/apache2";
pub const MOD_WSGI: &str = "/usr/lib/apache2/modules/mod_wsgi.so";

/// How long a freshly started Apache may take to answer.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// Grace after SIGTERM before the group is SIGKILLed. Apache itself waits
/// ~10 s for workers stuck on a deadlocked daemon; we do not.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// Where the WSGI app runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WsgiMode {
    /// One daemon group `g` of `processes` processes (8 threads each). Use 1
    /// for a deterministic deadlock: with more, concurrent requests may land
    /// in different processes (each has its own import and registry locks).
    Daemon { processes: u32 },
    /// `/a...` in daemon group `ga`, `/b...` in group `gb` (1 process each):
    /// the two halves of the cycle run in different processes.
    TwoDaemonGroups,
    /// No daemon: the app runs in the (single) apache2 worker process.
    Embedded,
}

impl WsgiMode {
    fn define(self) -> &'static str {
        match self {
            WsgiMode::Daemon { .. } => "WSGI_DAEMON",
            WsgiMode::TwoDaemonGroups => "WSGI_TWO_GROUPS",
            WsgiMode::Embedded => "WSGI_EMBEDDED",
        }
    }

    fn processes(self) -> u32 {
        match self {
            WsgiMode::Daemon { processes } => processes.max(1),
            _ => 1,
        }
    }
}

/// Why a GET did not return 200.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// No complete answer within the timeout (e.g. a deadlocked daemon).
    Timeout,
    /// Answered, but not with 200.
    Status(u16, String),
    /// Connection refused, reset, malformed answer...
    Io(String),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Timeout => write!(f, "timed out"),
            HttpError::Status(code, body) => write!(f, "HTTP {code}: {body}"),
            HttpError::Io(e) => write!(f, "{e}"),
        }
    }
}

/// One process of the instance.
#[derive(Debug, Clone)]
pub struct ApacheProcess {
    pub pid: u32,
    /// Always `apache2`: mod_wsgi daemons change argv, not comm.
    pub comm: String,
    /// NUL-separated args joined with spaces; daemons show `(wsgi:GROUP)`.
    pub cmdline: String,
}

impl ApacheProcess {
    /// The mod_wsgi daemon group this process serves, if it is a daemon.
    pub fn wsgi_group(&self) -> Option<&str> {
        let rest = self.cmdline.strip_prefix("(wsgi:")?;
        rest.split(')').next()
    }
}

/// `/pid` answer: which process and thread served the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub pid: u32,
    pub tid: u32,
    /// mod_wsgi process group ("" in embedded mode).
    pub group: String,
}

/// A running instance. Dropping it stops Apache and leaves no process.
pub struct Apache {
    child: Option<Child>,
    pid: u32,
    port: u16,
    root: tempfile::TempDir,
}

impl Apache {
    /// Starts an instance on a free loopback port and waits until it serves
    /// a static file. `slow_import` is both the import time of slow_models
    /// and the registry work of `/a` (`$LOCKTRACE_SLOW_IMPORT`): concurrent
    /// first requests to `/a` and `/b` less than that apart deadlock.
    pub fn start(mode: WsgiMode, slow_import: Duration) -> Apache {
        require_installed();
        // The port is free when picked, not necessarily when Apache binds it.
        let mut last_error = String::new();
        for _ in 0..3 {
            match Self::try_start(mode, slow_import) {
                Ok(apache) => return apache,
                Err(e) => last_error = e,
            }
        }
        panic!("Apache did not start:\n{last_error}");
    }

    fn try_start(mode: WsgiMode, slow_import: Duration) -> Result<Apache, String> {
        let root = tempfile::Builder::new()
            .prefix("locktrace-apache-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        // The children run as www-data and connect to the daemon sockets in
        // run/: the root must be traversable (tempdir makes it 0700).
        fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("chmod: {e}"))?;
        fs::create_dir(root.path().join("run")).map_err(|e| format!("mkdir run: {e}"))?;
        let port = free_port();
        let out = fs::File::create(root.path().join("stdout.log")).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(APACHE2)
            .arg("-f")
            .arg(config_path())
            .args(["-D", "FOREGROUND", "-D", mode.define()])
            // A clean environment: no pyenv/PYTHONPATH leaking into mod_wsgi.
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LANG", "C")
            .env("LT_ROOT", root.path())
            .env("LT_PORT", port.to_string())
            .env("LT_WSGI_DIR", wsgi_dir())
            .env("LT_PROCESSES", mode.processes().to_string())
            .env(
                "LOCKTRACE_SLOW_IMPORT",
                format!("{:.3}", slow_import.as_secs_f64()),
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own group: daemons and workers inherit it; Drop kills it.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot run {APACHE2}: {e}"))?;
        let mut apache = Apache {
            pid: child.id(),
            child: Some(child),
            port,
            root,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if apache
                .get("/static/hello.txt", Duration::from_secs(1))
                .is_ok()
            {
                return Ok(apache);
            }
            let exited = apache
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() >= deadline {
                let logs = apache.logs();
                apache.kill_all();
                return Err(format!("exit status {exited:?}\n{logs}"));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The private ServerRoot (error.log, stdout.log, run/).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The Apache parent (root; workers and daemons run as www-data).
    pub fn parent_pid(&self) -> u32 {
        self.pid
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// GET `path` (HTTP/1.0, no keep-alive); the body on 200.
    pub fn get(&self, path: &str, timeout: Duration) -> Result<String, HttpError> {
        http_get(self.port, path, timeout)
    }

    /// GET `path` (e.g. `/pid`, `/a/pid`) and parse the `/pid` answer.
    pub fn served_by(&self, path: &str, timeout: Duration) -> Result<Served, HttpError> {
        let body = self.get(path, timeout)?;
        parse_served(&body).ok_or_else(|| HttpError::Io(format!("bad /pid answer {body:?}")))
    }

    /// Every live process of the instance: parent, workers, wsgi daemons.
    pub fn processes(&self) -> Vec<ApacheProcess> {
        let mut found: Vec<ApacheProcess> = group_members(self.pid)
            .into_iter()
            .map(|(pid, comm)| {
                let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|raw| {
                        let s = String::from_utf8_lossy(&raw).replace('\0', " ");
                        s.trim_end().to_string()
                    })
                    .unwrap_or_default();
                ApacheProcess { pid, comm, cmdline }
            })
            .collect();
        found.sort_by_key(|p| p.pid);
        found
    }

    pub fn pids(&self) -> Vec<u32> {
        self.processes().iter().map(|p| p.pid).collect()
    }

    /// Pids of the mod_wsgi daemons of `group` (`g`, `ga`, `gb`).
    pub fn daemon_pids(&self, group: &str) -> Vec<u32> {
        self.processes()
            .iter()
            .filter(|p| p.wsgi_group() == Some(group))
            .map(|p| p.pid)
            .collect()
    }

    /// error.log and the parent's stdout/stderr, for failure messages.
    pub fn logs(&self) -> String {
        let read = |name: &str| fs::read_to_string(self.root().join(name)).unwrap_or_default();
        format!(
            "--- error.log\n{}--- stdout/stderr\n{}",
            read("error.log"),
            read("stdout.log")
        )
    }

    /// Stops Apache; true if it exited on SIGTERM within the grace period
    /// (false when it had to be killed, e.g. workers stuck on a deadlocked
    /// daemon). Either way no process of the instance is left.
    pub fn stop(mut self) -> bool {
        self.kill_all()
    }

    fn kill_all(&mut self) -> bool {
        // Whatever is left in the group after the grace period (a deadlocked
        // daemon, stuck workers) is killed.
        let graceful = stop_group(self.pid, &mut self.child, libc::SIGTERM, STOP_GRACE);
        // Orphaned daemons are reaped by init; wait until they are gone.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !group_members(self.pid).is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        let left = group_members(self.pid);
        graceful && left.is_empty()
    }
}

impl Drop for Apache {
    fn drop(&mut self) {
        if self.child.is_some() || !group_members(self.pid).is_empty() {
            self.kill_all();
        }
    }
}

/// Fails (no silent skip) unless Debian's apache2 and mod_wsgi are installed.
pub fn require_installed() {
    for path in [APACHE2, MOD_WSGI] {
        assert!(
            Path::new(path).exists(),
            "{path} is missing: apt-get install -y apache2 libapache2-mod-wsgi-py3 \
             (and keep the system service stopped)"
        );
    }
}

/// `tests/wsgi`: app.wsgi, views.py, registry.py, slow_models.py, static/.
pub fn wsgi_dir() -> PathBuf {
    workspace_dir().join("tests/wsgi")
}

pub fn config_path() -> PathBuf {
    workspace_dir().join("tests/apache/httpd.conf")
}

fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a loopback port");
    listener.local_addr().expect("local addr").port()
}

fn parse_served(body: &str) -> Option<Served> {
    let mut served = Served {
        pid: 0,
        tid: 0,
        group: String::new(),
    };
    for field in body.split_whitespace() {
        match field.split_once('=')? {
            ("pid", v) => served.pid = v.parse().ok()?,
            ("tid", v) => served.tid = v.parse().ok()?,
            ("group", v) => served.group = v.to_string(),
            _ => {}
        }
    }
    (served.pid != 0).then_some(served)
}

/// A minimal HTTP/1.0 GET against 127.0.0.1:`port` (no curl dependency).
pub fn http_get(port: u16, path: &str, timeout: Duration) -> Result<String, HttpError> {
    let deadline = Instant::now() + timeout;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let io = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => HttpError::Timeout,
        _ => HttpError::Io(e.to_string()),
    };
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .map_err(io)?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HttpError::Timeout);
        }
        stream.set_read_timeout(Some(left)).map_err(io)?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io(e)),
        }
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| HttpError::Io(format!("malformed answer {text:?}")))?;
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| HttpError::Io(format!("bad status line in {head:?}")))?;
    if code == 200 {
        Ok(body.to_string())
    } else {
        Err(HttpError::Status(code, body.trim().to_string()))
    }
}
