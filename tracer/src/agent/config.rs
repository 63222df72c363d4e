//! The agent's settings: the TOML config file, overridden by flags. An
//! error names the key and its line, in one line, so that a service that
//! fails to start says why in `systemctl status`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use serde::Deserialize;
use toml::Spanned;

use tracer_analysis::limits;

use crate::cli::{parse_duration, AgentArgs, Format};

/// Where the agent looks for its config when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "/etc/locktrace/locktrace.toml";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";
/// Where the agent keeps what it remembers across restarts (the unit's
/// `StateDirectory=locktrace`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/locktrace";
const DEFAULT_HANG_THRESHOLD: Duration = Duration::from_secs(10);
/// Alerts kept while Alertmanager cannot be reached; older ones are
/// dropped (and counted as failed) beyond this.
const DEFAULT_ALERT_QUEUE: usize = 1000;
/// How long an inversion's alert stays active: it is a property of the
/// code, not of a moment, but it should not fire forever after a fix.
const DEFAULT_INVERSION_ACTIVE: Duration = Duration::from_secs(24 * 3600);
/// How often still-active alerts are sent again: Alertmanager keeps alerts
/// in memory only, so a restarted one learns them from the next re-send
/// (Prometheus re-sends its firing alerts every minute too).
const DEFAULT_RESEND_INTERVAL: Duration = Duration::from_secs(60);
/// The findings file is rotated once it reaches this size...
const DEFAULT_MAX_SIZE: u64 = 64 << 20;
/// ... keeping this many older files (`FILE.1` ... `FILE.5`).
const DEFAULT_KEEP: usize = 5;
/// Findings kept for the webhook while it cannot be reached.
const DEFAULT_WEBHOOK_QUEUE: usize = 1000;

/// The file as written: every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    agent: AgentSection,
    #[serde(default)]
    trace: TraceSection,
    #[serde(default)]
    metrics: MetricsSection,
    #[serde(default)]
    alertmanager: AlertmanagerSection,
    #[serde(default)]
    report: ReportSection,
    #[serde(default)]
    suppress: SuppressSection,
    #[serde(default)]
    webhook: WebhookSection,
    #[serde(default)]
    journald: JournaldSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookSection {
    url: Option<Spanned<String>>,
    queue: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct JournaldSection {
    enabled: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SuppressSection {
    #[serde(default)]
    fingerprints: Vec<String>,
    #[serde(default)]
    frames: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentSection {
    host: Option<String>,
    state_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TraceSection {
    #[serde(default)]
    comms: Vec<String>,
    #[serde(default)]
    cgroups: Vec<PathBuf>,
    #[serde(default)]
    pids: Vec<u32>,
    #[serde(default, deserialize_with = "duration")]
    hang_threshold: Option<Duration>,
    watch_free: Option<bool>,
    max_locks: Option<Spanned<usize>>,
    max_dependencies: Option<Spanned<usize>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsSection {
    listen: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertmanagerSection {
    url: Option<Spanned<String>>,
    queue: Option<usize>,
    #[serde(default, deserialize_with = "duration")]
    inversion_active: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    resend_interval: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportSection {
    output: Option<PathBuf>,
    format: Option<Format>,
    force: Option<bool>,
    #[serde(default, deserialize_with = "size")]
    max_size: Option<u64>,
    keep: Option<usize>,
}

/// A size: a number of bytes, or a string with a binary unit
/// (`"64MiB"`, `"512KiB"`, `"1GiB"`).
fn size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Bytes(n) => Ok(Some(n)),
        Size::Text(t) => parse_size(&t).map(Some).map_err(serde::de::Error::custom),
    }
}

fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size like 64MiB"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        u => {
            return Err(format!(
                "`{text}` has an unknown unit `{u}` (use B, KiB, MiB or GiB)"
            ))
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("`{text}` is too large"))
}

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// The settings in force: the file's, each overridden by its flag.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub host: String,
    pub state_dir: PathBuf,
    pub comms: Vec<String>,
    pub cgroups: Vec<PathBuf>,
    pub pids: Vec<u32>,
    pub hang_threshold: Duration,
    /// Probe `free` too (`[trace] watch_free`).
    pub watch_free: bool,
    /// The instance graph's caps: lock instances and dependencies kept
    /// (`[trace] max_locks`, `max_dependencies`).
    pub max_locks: usize,
    pub max_dependencies: usize,
    pub metrics_listen: SocketAddr,
    pub alertmanager: Option<Alertmanager>,
    pub output: Option<PathBuf>,
    pub format: Format,
    /// Write `output` even if it exists and is not root's (see `host::outfile`).
    pub force: bool,
    /// Findings counted but not alerted on: by fingerprint, and by frame
    /// globs (function, source file or module).
    pub suppress_fingerprints: Vec<String>,
    pub suppress_frames: Vec<String>,
    /// The findings file is rotated at this size, `keep` older ones kept.
    pub max_size: u64,
    pub keep: usize,
    /// `[webhook]`: each finding alerted on POSTed there.
    pub webhook: Option<Webhook>,
    /// `[journald] enabled` (default): findings to the journal when its
    /// socket exists.
    pub journald: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Webhook {
    /// `http://host:port/path`.
    pub url: String,
    pub queue: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Alertmanager {
    /// `http://host:port`, without a trailing slash.
    pub base: String,
    pub queue: usize,
    pub inversion_active: Duration,
    /// Active alerts are sent again this often.
    pub resend_interval: Duration,
}

impl Config {
    /// Reads `--config` (or the default file, if it exists) and applies
    /// the flags.
    pub fn load(args: &AgentArgs) -> Result<Config> {
        let (path, text) = match &args.config {
            Some(path) => (path.clone(), read(path)?),
            None if Path::new(DEFAULT_CONFIG).exists() => (
                PathBuf::from(DEFAULT_CONFIG),
                read(Path::new(DEFAULT_CONFIG))?,
            ),
            None => (PathBuf::from(DEFAULT_CONFIG), String::new()),
        };
        Self::parse(&path, &text, args)
    }

    pub fn parse(path: &Path, text: &str, args: &AgentArgs) -> Result<Config> {
        let at = |span: std::ops::Range<usize>, message: &str| {
            anyhow!("{}", located(path, text, span, message))
        };
        let file: File = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            at(span, e.message())
        })?;
        let listen = match (&args.metrics_listen, &file.metrics.listen) {
            (Some(flag), _) => flag.parse().map_err(|_| {
                anyhow!("--metrics-listen: `{flag}` is not an address like {DEFAULT_LISTEN}")
            })?,
            (None, Some(key)) => key.get_ref().parse().map_err(|_| {
                at(
                    key.span(),
                    &format!(
                        "`{}` is not an address like {DEFAULT_LISTEN}",
                        key.get_ref()
                    ),
                )
            })?,
            (None, None) => DEFAULT_LISTEN.parse().expect("the default address"),
        };
        let url = match (&args.alertmanager_url, &file.alertmanager.url) {
            (Some(flag), _) => {
                Some(alertmanager_base(flag).map_err(|e| anyhow!("--alertmanager-url: {e}"))?)
            }
            (None, Some(key)) => {
                Some(alertmanager_base(key.get_ref()).map_err(|e| at(key.span(), &e.to_string()))?)
            }
            (None, None) => None,
        };
        let alertmanager = url.map(|base| Alertmanager {
            base,
            queue: file
                .alertmanager
                .queue
                .unwrap_or(DEFAULT_ALERT_QUEUE)
                .max(1),
            inversion_active: file
                .alertmanager
                .inversion_active
                .unwrap_or(DEFAULT_INVERSION_ACTIVE),
            resend_interval: file
                .alertmanager
                .resend_interval
                .unwrap_or(DEFAULT_RESEND_INTERVAL)
                .max(Duration::from_secs(1)),
        });
        let cap = |flag: Option<usize>,
                   key: &Option<Spanned<usize>>,
                   name: &str,
                   default: usize| match (flag, key) {
            (Some(0), _) => Err(anyhow!("--{name}: must be at least 1")),
            (Some(n), _) => Ok(n),
            (None, Some(k)) if *k.get_ref() == 0 => Err(at(k.span(), "must be at least 1")),
            (None, Some(k)) => Ok(*k.get_ref()),
            (None, None) => Ok(default),
        };
        let max_locks = cap(
            args.max_locks,
            &file.trace.max_locks,
            "max-locks",
            limits::LOCKS.total,
        )?;
        let max_dependencies = cap(
            args.max_dependencies,
            &file.trace.max_dependencies,
            "max-dependencies",
            limits::DEPENDENCIES.total,
        )?;
        let webhook = match &file.webhook.url {
            Some(key) => Some(Webhook {
                url: http_url(key.get_ref()).map_err(|e| at(key.span(), &e.to_string()))?,
                queue: file.webhook.queue.unwrap_or(DEFAULT_WEBHOOK_QUEUE).max(1),
            }),
            None => None,
        };
        for pattern in &file.suppress.frames {
            crate::agent::suppress::check_glob(pattern.get_ref())
                .map_err(|e| at(pattern.span(), &e))?;
        }
        Ok(Config {
            suppress_fingerprints: file.suppress.fingerprints,
            suppress_frames: file
                .suppress
                .frames
                .into_iter()
                .map(Spanned::into_inner)
                .collect(),
            host: args
                .host
                .clone()
                .or(file.agent.host)
                .unwrap_or_else(hostname),
            state_dir: args
                .state_dir
                .clone()
                .or(file.agent.state_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            comms: or_file(&args.comms, file.trace.comms),
            cgroups: or_file(&args.cgroups, file.trace.cgroups),
            pids: or_file(&args.pids, file.trace.pids),
            hang_threshold: args
                .hang_threshold
                .or(file.trace.hang_threshold)
                .unwrap_or(DEFAULT_HANG_THRESHOLD),
            watch_free: args.watch_free || file.trace.watch_free.unwrap_or(false),
            max_locks,
            max_dependencies,
            metrics_listen: listen,
            alertmanager,
            output: args.output.clone().or(file.report.output),
            format: args.format.or(file.report.format).unwrap_or(Format::Text),
            force: args.force || file.report.force.unwrap_or(false),
            max_size: file.report.max_size.unwrap_or(DEFAULT_MAX_SIZE).max(1),
            keep: file.report.keep.unwrap_or(DEFAULT_KEEP).max(1),
            webhook,
            journald: file.journald.enabled.unwrap_or(true),
        })
    }
}

/// A list flag given replaces the file's list.
fn or_file<T: Clone>(flag: &[T], key: Vec<T>) -> Vec<T> {
    if flag.is_empty() {
        key
    } else {
        flag.to_vec()
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| anyhow!("cannot read the config file {}: {e}", path.display()))
}

/// Only plain HTTP: Alertmanager is expected on the host or behind a local
/// proxy.
fn alertmanager_base(url: &str) -> Result<String> {
    Ok(http_url(url)?.trim_end_matches('/').to_string())
}

/// `http://host:port[/path]` (plain HTTP only), as given.
fn http_url(url: &str) -> Result<String> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("`{url}` is not an http:// URL (https is not supported)");
    };
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() || !authority.contains(':') {
        bail!("`{url}` has no host:port");
    }
    Ok(url.to_string())
}

/// `FILE:LINE: key `K`: MESSAGE` on one line: the key is read from the
/// line the error points to, with its table.
fn located(path: &Path, text: &str, span: std::ops::Range<usize>, message: &str) -> String {
    let start = span.start.min(text.len());
    let line_no = text[..start].matches('\n').count() + 1;
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|l| l.trim_matches(['[', ']']).trim());
    let message = message.lines().next().unwrap_or("").trim();
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim())
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    let key = match (table, key) {
        (Some(t), Some(k)) => format!(" key `{t}.{k}`:"),
        (None, Some(k)) => format!(" key `{k}`:"),
        _ => String::new(),
    };
    format!("config {}:{line_no}:{key} {message}", path.display())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(flags: &[&str]) -> AgentArgs {
        let cli = crate::cli::Cli::try_parse_from(
            ["locktrace", "agent"].iter().chain(flags.iter()).copied(),
        )
        .unwrap();
        match cli.command {
            crate::cli::Command::Agent(a) => a,
            _ => unreachable!(),
        }
    }

    fn parse(text: &str, flags: &[&str]) -> Result<Config> {
        Config::parse(Path::new("/etc/l.toml"), text, &args(flags))
    }

    #[test]
    fn defaults_without_a_file() {
        let c = parse("", &[]).unwrap();
        assert_eq!(c.metrics_listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.hang_threshold, DEFAULT_HANG_THRESHOLD);
        assert_eq!(c.alertmanager, None);
        assert!(c.comms.is_empty());
    }

    #[test]
    fn keys_are_read_and_flags_win() {
        let text = "[agent]\nhost = \"web1\"\n[trace]\ncomms = [\"a\"]\nhang_threshold = \"2s\"\n\
                    [metrics]\nlisten = \"127.0.0.1:9999\"\n\
                    [alertmanager]\nurl = \"http://127.0.0.1:9093/\"\nqueue = 5\n";
        let c = parse(text, &[]).unwrap();
        assert_eq!(c.host, "web1");
        assert_eq!(c.comms, ["a"]);
        assert_eq!(c.hang_threshold, Duration::from_secs(2));
        assert_eq!(c.metrics_listen.port(), 9999);
        let am = c.alertmanager.unwrap();
        assert_eq!((am.base.as_str(), am.queue), ("http://127.0.0.1:9093", 5));
        let c = parse(
            text,
            &[
                "--comm",
                "b",
                "--hang-threshold",
                "1s",
                "--metrics-listen",
                "127.0.0.1:1",
            ],
        )
        .unwrap();
        assert_eq!(c.comms, ["b"]);
        assert_eq!(c.hang_threshold, Duration::from_secs(1));
        assert_eq!(c.metrics_listen.port(), 1);
    }

    #[test]
    fn the_report_file_is_forced_by_key_or_flag() {
        assert!(
            !parse("[report]\noutput = \"/var/lib/l\"\n", &[])
                .unwrap()
                .force
        );
        assert!(parse("[report]\nforce = true\n", &[]).unwrap().force);
        assert!(parse("", &["--force"]).unwrap().force);
    }

    #[test]
    fn the_caps_are_read_and_flags_win() {
        let c = parse("", &[]).unwrap();
        assert_eq!(
            (c.max_locks, c.max_dependencies),
            (limits::LOCKS.total, limits::DEPENDENCIES.total)
        );
        let text = "[trace]\nmax_locks = 100\nmax_dependencies = 50\n";
        let c = parse(text, &[]).unwrap();
        assert_eq!((c.max_locks, c.max_dependencies), (100, 50));
        let c = parse(text, &["--max-dependencies", "7"]).unwrap();
        assert_eq!((c.max_locks, c.max_dependencies), (100, 7));
    }

    #[test]
    fn sinks_are_read() {
        let c = parse("", &[]).unwrap();
        assert_eq!((c.max_size, c.keep), (DEFAULT_MAX_SIZE, DEFAULT_KEEP));
        assert_eq!(c.webhook, None);
        assert!(c.journald);
        let c = parse(
            "[report]\nmax_size = \"2MiB\"\nkeep = 2\n\
             [webhook]\nurl = \"http://127.0.0.1:8080/hook\"\n\
             [journald]\nenabled = false\n",
            &[],
        )
        .unwrap();
        assert_eq!((c.max_size, c.keep), (2 << 20, 2));
        assert_eq!(c.webhook.unwrap().url, "http://127.0.0.1:8080/hook");
        assert!(!c.journald);
        assert_eq!(
            parse("[report]\nmax_size = 1000\n", &[]).unwrap().max_size,
            1000
        );
    }

    #[test]
    fn frees_are_watched_by_key_or_flag() {
        assert!(!parse("", &[]).unwrap().watch_free);
        assert!(
            parse("[trace]\nwatch_free = true\n", &[])
                .unwrap()
                .watch_free
        );
        assert!(parse("", &["--watch-free"]).unwrap().watch_free);
    }

    #[test]
    fn errors_name_the_key_and_line_in_one_line() {
        let cases = [
            (
                "[trace]\nhang_threshold = \"5y\"\n",
                "/etc/l.toml:2: key `trace.hang_threshold`:",
            ),
            (
                "[metrics]\n\nlisten = \"nowhere\"\n",
                "/etc/l.toml:3: key `metrics.listen`:",
            ),
            (
                "[alertmanager]\nurl = \"https://a:1\"\n",
                "/etc/l.toml:2: key `alertmanager.url`:",
            ),
            (
                "[trace]\ncomm = [\"x\"]\n",
                "/etc/l.toml:2: key `trace.comm`: unknown field",
            ),
            (
                "[trace]\npids = \"x\"\n",
                "/etc/l.toml:2: key `trace.pids`:",
            ),
            (
                "[trace]\nmax_locks = 0\n",
                "/etc/l.toml:2: key `trace.max_locks`: must be at least 1",
            ),
            (
                "[report]\nmax_size = \"5MB\"\n",
                "/etc/l.toml:2: key `report.max_size`: `5MB` has an unknown unit `MB`",
            ),
            (
                "[webhook]\nurl = \"https://h:1/x\"\n",
                "/etc/l.toml:2: key `webhook.url`:",
            ),
            (
                "[suppress]\nframes = [\"a[\"]\n",
                "/etc/l.toml:2: key `suppress.frames`: `a[` is not a glob",
            ),
        ];
        for (text, expected) in cases {
            let e = parse(text, &[]).unwrap_err().to_string();
            assert!(e.contains(expected), "{text:?}: {e}");
            assert!(!e.contains('\n'), "{text:?}: {e}");
        }
        let e = parse("", &["--alertmanager-url", "ftp://x"]).unwrap_err();
        assert!(e.to_string().starts_with("--alertmanager-url:"), "{e}");
    }
}
