//! The real services the agent's tests run around it, each started by the
//! test on a free loopback port with its own config and data directory
//! (never a system service): Debian's Alertmanager notifying a webhook
//! [`Receiver`] of the test's, and Debian's Prometheus scraping the agent.
//! Also the plain HTTP the tests speak to them and to the agent.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const ALERTMANAGER: &str = "/usr/bin/prometheus-alertmanager";
pub const PROMETHEUS: &str = "/usr/bin/prometheus";

/// A loopback port free now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` over HTTP/1.0: the status and body ((0, "") if nothing
/// answers).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let (status, _, body) = http_get_with_headers(addr, path);
    (status, body)
}

/// `GET path` over HTTP/1.0: the status, the header lines (names in lower
/// case) and the body.
pub fn http_get_with_headers(addr: &str, path: &str) -> (u16, Vec<(String, String)>, String) {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return (0, Vec::new(), String::new());
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let _ = write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

/// Waits for the agent's /readyz: the probes are attached (the session is
/// set up just after they are armed).
pub fn wait_ready(metrics: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_get(metrics, "/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "/readyz not 200 within 10s");
        thread::sleep(Duration::from_millis(50));
    }
}

/// The value of the sample `name` (with its labels) in a metrics text.
pub fn counter(text: &str, name: &str) -> f64 {
    sample(text, name).unwrap_or_else(|| panic!("no sample {name} in\n{text}"))
}

/// The value of the sample `name` (with its labels), if there is one.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Alertmanager's webhook receiver: keeps every notification's JSON.
pub struct Receiver {
    port: u16,
    received: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    pub fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let kept = received.clone();
        thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                if let Some(body) = read_post(stream) {
                    kept.lock().unwrap().push(body);
                }
            }
        });
        Receiver { port, received }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    pub fn notifications(&self) -> Vec<Value> {
        self.received.lock().unwrap().clone()
    }
}

/// One request: its JSON body, answered 200.
fn read_post(mut stream: TcpStream) -> Option<Value> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    serde_json::from_slice(&body).ok()
}

/// A server process of the test's with its own directory, killed when
/// dropped; its stderr is kept in `NAME.log` there.
struct Server {
    child: Child,
    dir: tempfile::TempDir,
    name: &'static str,
}

impl Server {
    fn start(name: &'static str, dir: tempfile::TempDir, command: &mut Command) -> Server {
        let log = std::fs::File::create(dir.path().join(format!("{name}.log"))).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Server { child, dir, name }
    }

    fn log(&self) -> String {
        let path = self.dir.path().join(format!("{}.log", self.name));
        format!(
            "--- {} log ---\n{}",
            self.name,
            std::fs::read_to_string(path).unwrap_or_default()
        )
    }

    /// Waits for `GET path` on `addr` to answer 200.
    fn wait_for(&self, addr: &str, path: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(addr, path).0 != 200 {
            assert!(
                Instant::now() < deadline,
                "{} not ready within 30s\n{}",
                self.name,
                self.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Debian's Alertmanager on a loopback port.
pub struct Alertmanager {
    server: Server,
    pub url: String,
}

impl Alertmanager {
    /// With a route that groups by alert name and fingerprint and notifies
    /// `webhook` after 1s.
    pub fn start(webhook: &str, port: u16) -> Alertmanager {
        Self::with_config(
            &format!(
                "route:\n  receiver: test\n  group_by: [alertname, fingerprint]\n  \
                 group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n\
                 receivers:\n  - name: test\n    webhook_configs:\n      - url: {webhook}\n        \
                 send_resolved: true\n"
            ),
            port,
        )
    }

    /// With `config` as its `alertmanager.yml`.
    pub fn with_config(config: &str, port: u16) -> Alertmanager {
        assert!(
            Path::new(ALERTMANAGER).exists(),
            "{ALERTMANAGER} is missing: `cargo xtask test` installs prometheus-alertmanager"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("alertmanager.yml");
        std::fs::write(&file, config).unwrap();
        let addr = format!("127.0.0.1:{port}");
        let data = dir.path().join("data");
        let mut command = Command::new(ALERTMANAGER);
        command
            .arg(format!("--config.file={}", file.display()))
            .arg(format!("--storage.path={}", data.display()))
            .arg(format!("--web.listen-address={addr}"))
            // No cluster: no gossip port.
            .arg("--cluster.listen-address=");
        let server = Server::start("alertmanager", dir, &mut command);
        server.wait_for(&addr, "/-/ready");
        Alertmanager {
            server,
            url: format!("http://{addr}"),
        }
    }

    pub fn log(&self) -> String {
        self.server.log()
    }
}

/// Debian's Prometheus on a loopback port, scraping `targets` and
/// evaluating `rule_file` every second.
pub struct Prometheus {
    server: Server,
    pub addr: String,
}

impl Prometheus {
    pub fn start(targets: &[&str], rule_file: &Path, port: u16) -> Prometheus {
        assert!(
            Path::new(PROMETHEUS).exists(),
            "{PROMETHEUS} is missing: `cargo xtask test` installs prometheus"
        );
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: locktrace\n    static_configs:\n      \
                 - targets: [{}]\n",
                rule_file.display(),
                targets.join(", ")
            ),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{port}");
        let data = dir.path().join("data");
        let mut command = Command::new(PROMETHEUS);
        command
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address={addr}"));
        let server = Server::start("prometheus", dir, &mut command);
        server.wait_for(&addr, "/-/ready");
        Prometheus { server, addr }
    }

    /// `GET /api/v1/PATH`'s `data`, which must be there (status success).
    pub fn api(&self, path: &str) -> Value {
        let (status, body) = http_get(&self.addr, &format!("/api/v1/{path}"));
        let reply: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{path}: {status} {e}: {body}\n{}", self.log()));
        assert_eq!(reply["status"], "success", "{path}: {reply}");
        reply["data"].clone()
    }

    /// The instant vector of `metric` (a bare name: no URL encoding
    /// needed), as (labels, value).
    pub fn query(&self, metric: &str) -> Vec<(Value, f64)> {
        assert!(
            metric
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "a bare metric name: {metric}"
        );
        self.api(&format!("query?query={metric}"))["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let value = r["value"][1].as_str().unwrap().parse().unwrap();
                (r["metric"].clone(), value)
            })
            .collect()
    }

    pub fn log(&self) -> String {
        self.server.log()
    }
}

/// A config file for an agent in `dir` (its state in `dir/state`): its
/// `host` label, metrics address and, if any, Alertmanager. Its path.
pub fn agent_config(dir: &Path, host: &str, metrics: &str, alertmanager: Option<&str>) -> String {
    let config = dir.join("locktrace.toml");
    let alerts = alertmanager.map_or(String::new(), |url| {
        format!("[alertmanager]\nurl = \"{url}\"\n")
    });
    std::fs::write(
        &config,
        format!(
            "[agent]\nhost = \"{host}\"\nstate_dir = \"{}\"\n\
             [metrics]\nlisten = \"{metrics}\"\n{alerts}",
            dir.join("state").display()
        ),
    )
    .unwrap();
    config.to_str().unwrap().to_string()
}

/// Polls `check` every 100 ms until it gives a value, for at most `limit`;
/// None if it never did.
pub fn poll<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(100));
    }
}
