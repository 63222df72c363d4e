//! A database: Debian's MariaDB server, a private mariadbd (its own datadir,
//! made by `mariadb-install-db`, in a scratch directory; 127.0.0.1 only;
//! never the system service) under Debian's sysbench `oltp_read_write`,
//! untraced, traced in full (`watch --pid`) and under `--budget 5`, in
//! interleaved rounds.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{
    free_port, run_bounded,
    server_rows::{self, ServerResults, Setup},
    signal_child, wait_for_exit, Options, ScratchDir,
};
use crate::{cmd, prereqs, step};

/// sysbench's tables: 8 of 10,000 rows (about 20 MiB, all in the buffer
/// pool: the load is the server's CPU, not the disk), 8 client threads.
const TABLES: u32 = 8;
const TABLE_SIZE: u32 = 10_000;
const THREADS: u32 = 8;

/// Our mariadbd, stopped (SIGTERM, then SIGKILL) when dropped, its
/// directory removed after it.
struct MariaDb {
    child: Child,
    port: u16,
    // Dropped after `child` is stopped (Drop::drop runs first).
    _dir: ScratchDir,
}

impl MariaDb {
    fn start() -> Result<MariaDb> {
        let dir = ScratchDir::new("mariadb")?;
        let data = dir.path().join("data");
        std::fs::create_dir(&data)?;
        // mariadbd runs as mysql (it refuses root): its datadir, socket,
        // pid file and log are mysql's.
        cmd::run(
            Command::new("chown")
                .args(["-R", "mysql:mysql"])
                .arg(dir.path()),
        )?;
        run_bounded(
            Command::new(prereqs::MARIADB_INSTALL_DB)
                .arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .args([
                    "--user=mysql",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                ])
                .stderr(Stdio::null()),
            Duration::from_secs(120),
        )
        .context("mariadb-install-db")?;
        let port = free_port()?;
        let log = dir.path().join("error.log");
        let child = Command::new(prereqs::MARIADBD)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!(
                "--socket={}",
                dir.path().join("mariadbd.sock").display()
            ))
            .arg(format!(
                "--pid-file={}",
                dir.path().join("mariadbd.pid").display()
            ))
            .arg(format!("--log-error={}", log.display()))
            .arg(format!("--port={port}"))
            .args([
                "--user=mysql",
                "--bind-address=127.0.0.1",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=256M",
                // Commits flushed once a second, not per commit: this VM's
                // disk is not what is measured.
                "--innodb-flush-log-at-trx-commit=2",
                "--max-connections=200",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start mariadbd")?;
        let mut server = MariaDb {
            child,
            port,
            _dir: dir,
        };
        let start = Instant::now();
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "mariadbd exited with {status} at start:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if server.sql("SELECT 1").is_ok() {
                return Ok(server);
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!(
                    "mariadbd did not answer on 127.0.0.1:{port} within 60 s:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn sql(&self, statement: &str) -> Result<String> {
        run_bounded(
            Command::new(prereqs::MARIADB)
                .args(["--no-defaults", "-h", "127.0.0.1", "-u", "root", "-P"])
                .arg(self.port.to_string())
                .args(["-e", statement])
                .stderr(Stdio::null()),
            Duration::from_secs(30),
        )
    }

    fn sysbench(&self, command: &str, extra: &[String], limit: Duration) -> Result<String> {
        run_bounded(
            Command::new(prereqs::SYSBENCH)
                .args([
                    "oltp_read_write",
                    "--db-driver=mysql",
                    "--mysql-host=127.0.0.1",
                    "--mysql-user=root",
                    "--mysql-db=sbtest",
                ])
                .arg(format!("--mysql-port={}", self.port))
                .arg(format!("--tables={TABLES}"))
                .arg(format!("--table-size={TABLE_SIZE}"))
                .args(extra)
                .arg(command)
                .stdin(Stdio::null()),
            limit,
        )
        .with_context(|| format!("sysbench oltp_read_write {command}"))
    }

    /// Transactions per second of one `sysbench run` of `seconds`.
    fn load(&self, seconds: u64) -> Result<f64> {
        let out = self.sysbench(
            "run",
            &[
                format!("--threads={THREADS}"),
                format!("--time={seconds}"),
                "--report-interval=0".to_owned(),
            ],
            Duration::from_secs(seconds + 60),
        )?;
        parse_tps(&out).with_context(|| format!("sysbench printed no transactions:\n{out}"))
    }

    fn version(&self) -> String {
        self.sql("SELECT VERSION()")
            .ok()
            .and_then(|v| v.lines().nth(1).map(|v| format!("MariaDB {}", v.trim())))
            .unwrap_or_else(|| "MariaDB".to_owned())
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        signal_child(&mut self.child, libc::SIGTERM);
        if wait_for_exit(&mut self.child, Duration::from_secs(60)).is_none() {
            step(format!(
                "mariadbd [{}] did not stop within 60 s of SIGTERM: killing it",
                self.child.id()
            ));
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// "    transactions:   6807   (1356.36 per sec.)"
fn parse_tps(out: &str) -> Option<f64> {
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("transactions:"))?;
    line.split('(')
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub fn mariadb_bench(locktrace: &Path, opts: &Options) -> Result<ServerResults> {
    let seconds = if opts.quick { 3 } else { 20 };
    let server = MariaDb::start()?;
    let version = server.version();
    let pid = server.child.id().to_string();
    step(format!(
        "mariadb: {version} on 127.0.0.1:{}, pid {pid}",
        server.port
    ));
    server.sql("CREATE DATABASE sbtest")?;
    server.sysbench(
        "prepare",
        &[format!("--threads={TABLES}")],
        Duration::from_secs(300),
    )?;
    server.load(2).context("sysbench warm-up run")?;
    let setups = [
        Setup::untraced(),
        Setup::traced("full (watch --pid)", &["--pid", &pid]),
        Setup::traced("budget 5%", &["--pid", &pid, "--budget", "5"]),
    ];
    let (rows, disturbed_by) =
        server_rows::measure(locktrace, "mariadb", &setups, opts, || server.load(seconds))?;
    Ok(ServerResults {
        server: version,
        load: format!(
            "sysbench oltp_read_write --tables={TABLES} --table-size={TABLE_SIZE} \
             --threads={THREADS} --time={seconds}"
        ),
        unit: "transactions/s",
        seconds,
        setups: rows,
        disturbed_by,
    })
}

pub fn render(r: &ServerResults, opts: &Options) -> String {
    format!(
        "MariaDB: {} (a private mariadbd on 127.0.0.1, its own datadir) under `{}`; traced \
         with `watch --pid` of mariadbd, in full and under `--budget 5`; median of {} \
         interleaved rounds.\n\n{}",
        r.server,
        r.load,
        opts.rounds,
        server_rows::render_table(r)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sysbench_report() {
        let out = "SQL statistics:\n    queries performed:\n        read: 95298\n\
                   \x20   transactions:                        6807   (1356.36 per sec.)\n\
                   \x20   queries:                             136140 (27127.13 per sec.)\n";
        assert_eq!(parse_tps(out), Some(1356.36));
        assert_eq!(parse_tps("FATAL: error 2013\n"), None);
    }
}
