//! The command line: a thin layer over the library modules.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Host-wide lock-order tracer: finds lock-order inversions (potential
/// deadlocks) in running programs, with the stacks of both sides, without
/// rebuilding or restarting them.
#[derive(Debug, Parser)]
#[command(name = "locktrace", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start CMD with the probes already attached, trace it and every process
    /// it forks, and stop when it exits. Exits with CMD's status (or with
    /// --exit-code when anything was reported).
    Run(RunArgs),
    /// Trace the whole host, or the processes named by --pid/--comm and their
    /// children, until Ctrl-C, SIGTERM or the end of --duration.
    Watch(WatchArgs),
    /// Print, once, every thread blocked on a lock, who holds that lock, and
    /// the deadlocks among them (like jstack or py-spy dump, for locks).
    /// Needs no probes: pthread mutexes only (their owner is in the mutex).
    Snapshot(SnapshotArgs),
    /// Trace the whole host as a service until SIGTERM: findings counted on
    /// a Prometheus endpoint and sent to Alertmanager. Settings come from
    /// the config file; a flag wins over its key.
    Agent(AgentArgs),
    /// Print the findings of a capture (what run or watch wrote with
    /// --format json -o FILE) again, filtered, as text, JSON or DOT graphs,
    /// with a summary of the capture. Reads nothing from the host.
    Report(ReportArgs),
}

/// `locktrace agent`: every option is also a key of the config file (named
/// after each flag's help); left out here, the file's value (or the
/// default) holds.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The TOML config file (default /etc/locktrace/locktrace.toml; a
    /// missing default file means all defaults).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// `[trace] comms`: trace processes with this command name (repeatable).
    #[arg(long = "comm", value_name = "NAME")]
    pub comms: Vec<String>,
    /// `[trace] cgroups`: trace the processes of this cgroup v2 directory
    /// (repeatable).
    #[arg(long = "cgroup", value_name = "DIR")]
    pub cgroups: Vec<PathBuf>,
    /// `[trace] pids`: trace this process and its children (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// `[trace] hang_threshold`: report a thread blocked on a lock longer
    /// than this (default 10s).
    #[arg(long, value_parser = parse_duration, value_name = "D")]
    pub hang_threshold: Option<Duration>,
    /// `[trace] watch_free`: probe `free` too (see `watch --watch-free`).
    #[arg(long)]
    pub watch_free: bool,
    /// `[trace] max_locks`: lock instances kept in the instance graph, in
    /// all (default 2,000,000); past it, new dependencies are counted, not
    /// kept there (the class graph still takes them).
    #[arg(long, value_name = "N")]
    pub max_locks: Option<usize>,
    /// `[trace] max_dependencies`: dependencies kept in the instance graph,
    /// in all (default 2,000,000).
    #[arg(long, value_name = "N")]
    pub max_dependencies: Option<usize>,
    /// `[metrics] listen`: address of /metrics, /healthz and /readyz
    /// (default 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// `[alertmanager] url`: Alertmanager to send every finding to, e.g.
    /// http://127.0.0.1:9093 (none by default).
    #[arg(long, value_name = "URL")]
    pub alertmanager_url: Option<String>,
    /// `[agent] host`: the `host` label of alerts (default: the hostname).
    #[arg(long, value_name = "NAME")]
    pub host: Option<String>,
    /// `[agent] state_dir`: where the fingerprints already alerted on and
    /// the active alerts are kept across restarts (default
    /// /var/lib/locktrace).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// `[report] output`: also write findings to FILE.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// `[report] format`: format of that file (default text).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// `[report] force`: write that file even if it exists and is not a
    /// regular file of root's with one name (a symlink is refused all the same).
    #[arg(long)]
    pub force: bool,
    /// More diagnostics on standard error.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The captures (JSON Lines), read in order.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// text: as the tracer prints them; json: JSON Lines (a capture again);
    /// dot: one Graphviz digraph per finding (render with `dot -Tsvg`);
    /// html: one self-contained page (pictures drawn by Graphviz if installed).
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    pub format: ReportFormat,
    /// Only findings of this type (repeatable).
    #[arg(long = "type", value_name = "TYPE",
          value_parser = clap::builder::PossibleValuesParser::new(crate::report::replay::TYPE_NAMES))]
    pub types: Vec<String>,
    /// Only findings about this process (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Only findings about processes with this command name (repeatable).
    #[arg(long = "comm", value_name = "NAME")]
    pub comms: Vec<String>,
    /// Only the findings with this fingerprint (repeatable): the
    /// `fingerprint` label of the agent's alerts and of each JSON finding.
    #[arg(long = "fingerprint", value_name = "HEX")]
    pub fingerprints: Vec<String>,
    /// Print the whole lock-order graph instead of the findings: every
    /// lock class and dependency the runs saw (their JSON captures' graph
    /// lines, merged), cycles highlighted; past 150 classes, only those on
    /// cycles are drawn.
    #[arg(long)]
    pub graph: bool,
    /// Print each finding's fingerprint, type and a one-line summary as a
    /// TOML array, `fingerprints = [...]`, to paste under `[suppress]` in
    /// the agent's config (each fingerprint once; the filters apply).
    #[arg(long, conflicts_with_all = ["graph", "format"])]
    pub print_fingerprints: bool,
    /// Only the findings reported at or after T: an RFC 3339 time
    /// (2026-12-07T17:04:21Z, or with an offset) or a duration before now
    /// (30m, 2h). A finding without a time (a capture written before
    /// findings had one) is dropped, with one warning counting them.
    /// Not with --graph (the graph is the whole run's).
    #[arg(long, value_name = "T", value_parser = parse_since, conflicts_with = "graph")]
    pub since: Option<crate::report::walltime::Since>,
    /// Write to FILE instead of standard output.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Write FILE even if it exists and is not a regular file of root's
    /// with one name (a symlink is refused all the same).
    #[arg(long)]
    pub force: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Text,
    Json,
    Dot,
    Html,
}

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// These processes (repeatable); all when none is given.
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Report format: human-readable text, or JSON Lines.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Write the report to FILE instead of standard output.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Write FILE even if it exists and is not a regular file of root's
    /// with one name (a symlink is refused all the same).
    #[arg(long)]
    pub force: bool,
    /// Exit with this status (1 to 255) when a deadlock is found.
    #[arg(long, value_name = "N", value_parser = parse_exit_code, allow_negative_numbers = true)]
    pub exit_code: Option<i32>,
    /// More diagnostics on standard error.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The command to run, after `--`.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Trace this process and its children (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Trace processes with this command name, running or started later
    /// (repeatable; names are cut to the kernel's 15 characters).
    #[arg(long = "comm", value_name = "NAME")]
    pub comms: Vec<String>,
    /// Trace the processes in this cgroup v2 directory, e.g.
    /// /sys/fs/cgroup/system.slice/apache2.service (repeatable; that cgroup
    /// itself, not its children; checked in the kernel).
    #[arg(long = "cgroup", value_name = "DIR")]
    pub cgroups: Vec<PathBuf>,
    /// Put the probes in every process, the programs filtering, instead of
    /// only in the traced ones: a process that starts later is then seen
    /// from its first instruction (short-lived workers, CGI), but every
    /// process on the host pays a trap per lock call. Without it, a process
    /// that starts later gets its probes when the tracer sees it (within
    /// tens of milliseconds: the delay is logged and counted).
    #[arg(long)]
    pub probe_all: bool,
    /// Keep the probes' estimated cost under PCT percent of the traced
    /// processes' CPU time, by probing their lock traffic in time slices
    /// (lock inits and destroys stay probed). For always-on tracing of
    /// lock-heavy servers: the lock orders of a service repeat, so slices
    /// learn them too, more slowly; the summary states the duty cycle and
    /// what the last slices still found.
    #[arg(long, value_name = "PCT", value_parser = parse_budget)]
    pub budget: Option<f64>,
    /// How long each slice of --budget probes (tests use short ones).
    #[arg(long, value_parser = parse_duration, value_name = "D", default_value = "1s", hide = true)]
    pub budget_slice: Duration,
    /// Stop after this long (e.g. 30s, 500ms, 5m, 1h; a bare number is seconds).
    #[arg(long, value_parser = parse_duration, value_name = "D")]
    pub duration: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Report format: human-readable text, or JSON Lines (one object per line).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Write the report to FILE instead of standard output.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Write FILE even if it exists and is not a regular file of root's
    /// with one name (a symlink is refused all the same).
    #[arg(long)]
    pub force: bool,
    /// Report a thread blocked on a lock for longer than this (a hang), once
    /// per wait, with its stack and what the lock's holders are doing.
    #[arg(long, value_parser = parse_duration, value_name = "D", default_value = "10s")]
    pub hang_threshold: Duration,
    /// Exit with this status (1 to 255) when anything was reported (for CI
    /// gating).
    #[arg(long, value_name = "N", value_parser = parse_exit_code, allow_negative_numbers = true)]
    pub exit_code: Option<i32>,
    /// Probe only this libc (repeatable), instead of every libc on the host
    /// and those that processes map later (containers, chroots, copies).
    #[arg(long, value_name = "PATH")]
    pub libc: Vec<PathBuf>,
    /// Also probe this program or library (repeatable): a statically linked
    /// program, or a library with its own copy of the lock functions.
    #[arg(long = "binary", value_name = "PATH")]
    pub binaries: Vec<PathBuf>,
    /// Treat this function as a lock wrapper (repeatable; `prefix*` for a
    /// family): locks taken or made through it are told apart by its
    /// caller. Short functions that only call a lock function, and those of
    /// APR, GLib, varnish, CPython and NSPR, are recognized already.
    #[arg(long = "wrapper", value_name = "SYMBOL")]
    pub wrappers: Vec<String>,
    /// Probe `free` in every traced process from the start. By default it
    /// is probed in a process from its first dependency on a heap lock (a
    /// lock freed without a destroy, its memory then a new lock with no
    /// init call, must not inherit the old one's dependencies), and that
    /// process's heap-lock dependencies recorded before are judged when
    /// they recur. Every `free` of a watched process pays a probe hit (see
    /// BENCHMARKS.md).
    #[arg(long)]
    pub watch_free: bool,
    /// Kernel BTF to require (default /sys/kernel/btf/vmlinux).
    #[arg(long, value_name = "PATH", hide = true)]
    pub kernel_btf: Option<PathBuf>,
    /// Put every probe on its function's first instruction instead of the
    /// first one the kernel emulates (slower; for comparisons).
    #[arg(long, hide = true)]
    pub probe_at_entry: bool,
    /// Attach empty programs at the same places instead of the real ones:
    /// the cost floor of a probe hit, for `cargo xtask bench`.
    #[arg(long, hide = true)]
    pub floor_probes: bool,
    /// Like `--floor-probes`, without the probe on `pthread_mutex_unlock`
    /// (which the real programs do without): one hit per mutex pair.
    #[arg(long, hide = true)]
    pub one_hit_floor_probes: bool,
    /// More diagnostics on standard error (-v: probe placement and progress,
    /// -vv: every event).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Text,
    Json,
}

impl From<Format> for crate::report::Format {
    fn from(f: Format) -> Self {
        match f {
            Format::Text => crate::report::Format::Text,
            Format::Json => crate::report::Format::Json,
        }
    }
}

/// A budget in percent: more than 0, at most 100.
pub fn parse_budget(s: &str) -> Result<f64, String> {
    let pct: f64 = s
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("`{s}` is not a percentage (example: 5)"))?;
    if !(pct > 0.0 && pct <= 100.0) {
        return Err(format!("`{s}` is not a budget between 0 and 100 percent"));
    }
    Ok(pct)
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (examples: 30s, 500ms, 5m, 1h)"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "`{s}` has an unknown unit `{unit}` (use ms, s, m or h)"
            ))
        }
    };
    if !seconds.is_finite() || seconds <= 0.0 {
        return Err(format!("`{s}` is not a positive duration"));
    }
    // Durations end up as nanoseconds in u64 (the kernel side's clocks):
    // a bound well inside that keeps every sum of them from wrapping.
    if seconds > MAX_DURATION.as_secs_f64() {
        return Err(format!(
            "`{s}` is out of range (at most {}h, about 10 years)",
            MAX_DURATION.as_secs() / 3600
        ));
    }
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("`{s}` is out of range"))
}

/// `--since`: an RFC 3339 time, or a duration before now (`30m`, `2h`).
pub fn parse_since(s: &str) -> Result<crate::report::walltime::Since, String> {
    use crate::report::walltime::{parse, Since};
    if let Some(t) = parse(s.trim()) {
        return Ok(Since::At(t));
    }
    parse_duration(s).map(Since::Ago).map_err(|_| {
        format!("`{s}` is neither an RFC 3339 time (2026-12-07T17:04:21Z) nor a duration (30m, 2h)")
    })
}

/// The longest duration any option takes.
pub const MAX_DURATION: Duration = Duration::from_secs(87_600 * 3600);

/// `--exit-code N`: the status to exit with when anything was reported,
/// 1 to 255 (what a process can exit with). 0 is refused: a gate that
/// exits 0 on findings never fails, and leaving the option out already
/// means "exit with the command's status".
pub fn parse_exit_code(s: &str) -> Result<i32, String> {
    match s.trim().parse::<i64>() {
        Ok(n) if (1..=255).contains(&n) => Ok(n as i32),
        Ok(0) => Err("0 would make findings look like success: use 1 to 255 (leave --exit-code out to exit with the command's own status)".into()),
        Ok(_) => Err(format!("`{s}` is not an exit status from 1 to 255")),
        Err(_) => Err(format!("`{s}` is not a number from 1 to 255")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("0").is_err());
        // Out of range: an error, not a panic.
        assert!(parse_duration("99999999999999999999999h")
            .unwrap_err()
            .contains("out of range"));
        assert!(parse_duration("1e400").is_err());
        assert!(parse_duration("87600h").is_ok());
        assert!(parse_duration("87601h").is_err());
    }

    #[test]
    fn since_is_a_time_or_a_duration() {
        let parse = |since: &str| {
            Cli::try_parse_from(["locktrace", "report", "--since", since, "cap.jsonl"]).map(|cli| {
                match cli.command {
                    Command::Report(r) => r.since,
                    _ => panic!(),
                }
            })
        };
        use crate::report::walltime::Since;
        assert_eq!(
            parse("2h").unwrap(),
            Some(Since::Ago(Duration::from_secs(7200)))
        );
        assert!(matches!(
            parse("2026-12-07T17:04:21Z").unwrap(),
            Some(Since::At(_))
        ));
        let err = parse("last tuesday").unwrap_err().to_string();
        assert!(err.contains("neither an RFC 3339 time"), "{err}");
        assert!(parse("2026-12-07").is_err());
        assert!(parse("0").is_err());
        assert!(
            Cli::try_parse_from(["locktrace", "report", "--graph", "--since", "2h", "c"]).is_err()
        );
    }

    #[test]
    fn exit_codes() {
        assert_eq!(parse_exit_code("1"), Ok(1));
        assert_eq!(parse_exit_code("255"), Ok(255));
        assert!(parse_exit_code("0").unwrap_err().contains("success"));
        assert!(parse_exit_code("-1").is_err());
        assert!(parse_exit_code("256").is_err());
        assert!(parse_exit_code("300").is_err());
        assert!(parse_exit_code("x").is_err());
        let err = Cli::try_parse_from(["locktrace", "run", "--exit-code", "-1", "--", "p"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("1 to 255"), "{err}");
    }

    #[test]
    fn run_takes_the_command_after_the_separator() {
        let cli = Cli::try_parse_from([
            "locktrace",
            "run",
            "--format",
            "json",
            "--",
            "prog",
            "-x",
            "--y",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!()
        };
        assert_eq!(run.command, ["prog", "-x", "--y"]);
        assert_eq!(run.common.format, Format::Json);
        assert!(Cli::try_parse_from(["locktrace", "run", "--format", "xml", "--", "p"]).is_err());
        assert!(Cli::try_parse_from(["locktrace", "run"]).is_err());
    }
}
