//! The `locktrace` binary: parses the command line and drives one session.

use std::{io::Write, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use clap::Parser;
use locktrace::{
    agent::{self, Agent},
    cli,
    cli::{
        AgentArgs, Cli, Command, CommonArgs, Format, ReportArgs, RunArgs, SnapshotArgs, WatchArgs,
    },
    enrich::Enricher,
    host::{descriptors, launch, outfile, preflight, proc, remote, spaces::AddressSpaces},
    kernel::{
        load::{Filter, ProbePlacement, ProbePrograms, Probes},
        targets::{self, Target},
    },
    report::{self, blocking, Reporter},
    session::{Session, Stop},
    symbolize::{wrappers::Wrappers, Symbolizer},
};
use nix::sys::wait::waitpid;
use tokio::signal::unix::{signal, SignalKind};

fn main() -> ExitCode {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == remote::SUBCOMMAND)
    {
        return remote::serve();
    }
    // Other processes' memory is read by helpers that may block in our
    // place (see `host::remote`).
    remote::use_helper(PathBuf::from("/proc/self/exe"));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let verbose = match &cli.command {
        Command::Run(a) => a.common.verbose,
        Command::Watch(a) => a.common.verbose,
        Command::Snapshot(a) => a.verbose,
        Command::Agent(a) => a.verbose,
        Command::Report(_) => 0,
    };
    init_logging(verbose);
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Watch(args) => watch(args),
        Command::Snapshot(args) => snapshot(args),
        Command::Agent(args) => run_agent(args),
        Command::Report(args) => replay(args),
    };
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("locktrace: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// A bad command line: clap's own help and version as clap prints them,
/// any other error as one `locktrace:` line (the first of clap's message),
/// exit status 2 as clap's.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let text = e.render().to_string();
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    eprintln!("locktrace: {}", first.trim_start_matches("error: "));
    ExitCode::from(2)
}

/// The processes `--pid` names: a thread id stands for its process, with a
/// note (tracing a single thread is not something the probes can do).
fn processes(pids: &[u32]) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    for &pid in pids {
        let process = preflight::process_of(pid)?;
        if process != pid {
            eprintln!(
                "locktrace: note: --pid {pid} is a thread of process {process}: tracing process {process}"
            );
        }
        out.push(process);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// `locktrace report`: the work is in [`report::replay`].
fn replay(args: ReportArgs) -> Result<i32> {
    use report::replay::{self, Filter, Output};
    let mut captures = Vec::new();
    for path in &args.files {
        let text =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let capture = replay::parse(&path.display().to_string(), &String::from_utf8_lossy(&text))?;
        captures.push(capture);
    }
    for warning in captures.iter().flat_map(|c| &c.warnings) {
        eprintln!("locktrace: warning: {warning}");
    }
    let filter = Filter {
        types: args.types,
        pids: args.pids,
        comms: args.comms,
        fingerprints: args.fingerprints,
        since: args
            .since
            .map(|since| since.at(std::time::SystemTime::now())),
    };
    let untimed = replay::untimed(&captures, &filter);
    if untimed > 0 {
        eprintln!(
            "locktrace: warning: --since: {untimed} {} no time (written by a locktrace before findings had one): dropped",
            if untimed == 1 { "finding has" } else { "findings have" }
        );
    }
    let output = match args.format {
        cli::ReportFormat::Text => Output::Text,
        cli::ReportFormat::Json => Output::Json,
        cli::ReportFormat::Dot => Output::Dot,
        cli::ReportFormat::Html => Output::Html,
    };
    let mut out: Box<dyn Write + Send> = match &args.output {
        Some(path) => Box::new(outfile::create(path, args.force)?),
        None => Box::new(std::io::stdout()),
    };
    if args.print_fingerprints {
        replay::print_fingerprints(&captures, &filter, &mut out)?;
        out.flush()?;
        return Ok(0);
    }
    if args.graph {
        let graphs: Vec<_> = captures.iter().flat_map(|c| &c.graphs).collect();
        if graphs.is_empty() {
            anyhow::bail!(
                "no lock graph in the captures: it is written in JSON captures (--format json) by this version on"
            );
        }
        let sources: Vec<String> = captures.iter().map(|c| c.name.clone()).collect();
        replay::print_graph(&graphs, output, &sources, out)?;
        return Ok(0);
    }
    replay::print(&captures, &filter, output, out)?;
    Ok(0)
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info,locktrace=debug",
        _ => "debug,locktrace=trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("LOCKTRACE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| report::escape::LogWriter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

/// Checks shared by every subcommand; returns the files to probe, and
/// whether to probe lock libraries mapped later too.
fn preflight(common: &CommonArgs) -> Result<(Vec<Target>, bool)> {
    preflight::check_privileges()?;
    let btf = common
        .kernel_btf
        .clone()
        .unwrap_or_else(|| PathBuf::from(preflight::DEFAULT_KERNEL_BTF));
    preflight::check_btf(&btf)?;
    let mut targets = Vec::new();
    for path in common.libc.iter().chain(&common.binaries) {
        targets.push(targets::check_explicit(path)?);
    }
    let follow = common.libc.is_empty();
    if follow {
        // Every libc some process maps now (the host's, containers',
        // chroots'); ours first, so that it is named by its own path.
        let ours = std::process::id();
        targets.extend(targets::discover(
            std::iter::once(ours).chain(proc::all_pids().into_iter().filter(|&p| p != ours)),
        ));
        if targets.is_empty() {
            anyhow::bail!("found no libc.so.6 mapped by any process: pass the file to probe with --libc or --binary");
        }
    }
    preflight::ensure_tracefs()?;
    Ok((targets, follow))
}

/// Loads the programs and puts the probes on every target. A discovered
/// file that cannot be probed (its process exited meanwhile) is skipped; a
/// file named on the command line, or no file probed at all, is an error. The caller arms
/// the kernel side once every process it traces is probed.
fn attach(common: &CommonArgs, filter: &Filter, targets: &[Target]) -> Result<Probes> {
    // After `run` forked its command, which keeps its own limit.
    descriptors::raise_soft_limit();
    let mut probes = Probes::load(
        filter,
        placement(common),
        programs(common),
        common.watch_free,
    )?;
    let mut first_error = None;
    for target in targets {
        if let Err(e) = probes.attach_file(target) {
            if common
                .libc
                .iter()
                .chain(&common.binaries)
                .any(|p| *p == target.open_path)
            {
                return Err(e);
            }
            tracing::warn!("skipping {}: {e:#}", target.name.display());
            first_error.get_or_insert(e);
        }
    }
    if probes.probed_files().next().is_none() {
        return Err(first_error.unwrap_or_else(|| anyhow::anyhow!("no file to probe")));
    }
    Ok(probes)
}

fn reporter(common: &CommonArgs) -> Result<Reporter> {
    open_reporter(common.output.as_ref(), common.format, common.force)
}

fn open_reporter(output: Option<&PathBuf>, format: Format, force: bool) -> Result<Reporter> {
    Reporter::open(output.map(PathBuf::as_path), format.into(), force)
}

fn placement(common: &CommonArgs) -> ProbePlacement {
    if common.probe_at_entry {
        ProbePlacement::Entry
    } else {
        ProbePlacement::Emulated
    }
}

fn programs(common: &CommonArgs) -> ProbePrograms {
    if common.one_hit_floor_probes {
        ProbePrograms::OneHitFloor
    } else if common.floor_probes {
        ProbePrograms::Floor
    } else {
        ProbePrograms::Tracer
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run(args: RunArgs) -> Result<i32> {
    // The signal handlers first (as `watch`): a SIGINT that arrives while the
    // probes are attached, or before the loop first looks, must be the
    // loop's to judge, not kill the tracer with the command still running.
    // (A current-thread runtime starts no thread: the fork below stays safe.)
    let rt = runtime()?;
    let (mut term, mut int) = stop_signals(&rt)?;
    let (mut targets, follow) = preflight(&args.common)?;
    if let Some(program) = targets::static_program(&args.command[0])? {
        targets.push(program);
    }
    let reporter = reporter(&args.common)?;
    // Fork before any thread exists; the child waits until the probes are live.
    let child = launch::spawn_suspended(&args.command)?;
    let pid = child.pid;
    let setup = (|| {
        let symbolizer = Symbolizer::new()?;
        let filter = Filter {
            pids: vec![pid.as_raw() as u32],
            comms: vec![],
            cgroups: vec![],
            cgroup_dirs: vec![],
            sliced: false,
            // Its children must be seen from their first instruction.
            per_process: false,
            reloadable: false,
        };
        let mut probes = attach(&args.common, &filter, &targets)?;
        probes.arm()?;
        Ok::<_, anyhow::Error>((symbolizer, probes))
    })();
    let (symbolizer, probes) = match setup {
        Ok(v) => v,
        Err(e) => {
            child.abort();
            return Err(e);
        }
    };
    let enricher = Enricher::new(symbolizer, Wrappers::new(&args.common.wrappers));
    let mut session = Session::new(probes, enricher, reporter, args.common.hang_threshold);
    session.follow_new_libraries(follow);
    let status = rt.block_on(async {
        let pid = child.release()?;
        // A Python program must be described to the kernel side before it
        // takes locks: look while it is held at its entry point (or, if it
        // could not be held, as soon as it runs its own program).
        let held = launch::run_to_entry(pid);
        if held.is_none() {
            launch::wait_for_exec(pid);
        }
        session.check_python_at_exec(pid.as_raw() as u32);
        // Before it runs its own code (its libc mapped): its heap locks are
        // judged from their first dependency on.
        session.watch_frees_from_start(pid.as_raw() as u32);
        drop(held);
        let exited = tokio::task::spawn_blocking(move || waitpid(pid, None));
        let mut status = None;
        let stop = async {
            tokio::pin!(exited);
            let mut interrupts = 0;
            loop {
                tokio::select! {
                    r = &mut exited => {
                        status = r.ok().and_then(|r| r.ok());
                        break Stop::Finished;
                    }
                    // The first SIGINT is the command's to act on (a
                    // server may shut down cleanly, a test may ignore it):
                    // it gets it from the terminal itself, or from us when
                    // it came from elsewhere (`kill -INT`); tracing goes on
                    // until it exits. A second one stops tracing.
                    _ = int.recv() => {
                        interrupts += 1;
                        if interrupts > 1 { break Stop::Signal; }
                        if !launch::in_terminal_foreground(pid) {
                            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
                        }
                    }
                    _ = term.recv() => {
                        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
                    }
                }
            }
        };
        session.run_until(stop).await?;
        Ok::<_, anyhow::Error>(status)
    })?;
    // Stopped by a second signal, the command still runs and the thread
    // waiting for it with it: dropping the runtime would wait for that
    // thread, keeping the probes attached until the command exits.
    rt.shutdown_background();
    let code = status.map_or(130, launch::exit_status);
    Ok(exit_code(&session, args.common.exit_code, code))
}

fn watch(args: WatchArgs) -> Result<i32> {
    // The signal handlers first: a SIGTERM or Ctrl-C while the probes are
    // being attached stops the tracer as cleanly as a later one.
    let rt = runtime()?;
    let (mut term, mut int) = stop_signals(&rt)?;
    let mut session = start_watch(&args, false, || reporter(&args.common))?;
    let duration = args.duration;
    rt.block_on(async {
        let stop = async {
            let sleep = tokio::time::sleep(duration.unwrap_or(Duration::MAX / 4));
            tokio::select! {
                _ = term.recv() => Stop::Signal,
                _ = int.recv() => Stop::Signal,
                // An operator who asked for N seconds gets the summary
                // within a second after them, as after a signal.
                _ = sleep => Stop::Signal,
            }
        };
        session.run_until(stop).await
    })?;
    Ok(exit_code(&session, args.common.exit_code, 0))
}

fn stop_signals(
    rt: &tokio::runtime::Runtime,
) -> Result<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)> {
    let _runtime = rt.enter();
    Ok((
        signal(SignalKind::terminate()).context("SIGTERM handler")?,
        signal(SignalKind::interrupt()).context("SIGINT handler")?,
    ))
}

/// `watch`'s session, probes attached and armed: the host, or the
/// processes the filters name. `reloadable`: the filter may change while
/// tracing (the agent's SIGHUP). `reporter` opens the report's output
/// (after the privilege checks).
fn start_watch(
    args: &WatchArgs,
    reloadable: bool,
    reporter: impl FnOnce() -> Result<Reporter>,
) -> Result<Session> {
    let named = processes(&args.pids)?;
    let (targets, follow) = preflight(&args.common)?;
    let reporter = reporter()?;
    let mut filter = Filter::naming(&named, &args.comms, &args.cgroups)?;
    let filtered = !args.pids.is_empty() || !args.comms.is_empty() || !args.cgroups.is_empty();
    filter.per_process = filtered && !args.probe_all;
    filter.sliced = args.budget.is_some();
    filter.reloadable = reloadable;
    let symbolizer = Symbolizer::new()?;
    let mut probes = attach(&args.common, &filter, &targets)?;
    // The children of the named processes that exist now are traced too
    // (listed after the filter holds their parents: the kernel side follows
    // later forks).
    for child in proc::descendants(&filter.pids) {
        if let Err(e) = probes.trace_pid(child) {
            // It exited meanwhile.
            tracing::debug!(child, "cannot trace a child: {e:#}");
        }
    }
    probes.arm()?;
    let enricher = Enricher::new(symbolizer, Wrappers::new(&args.common.wrappers));
    let mut session = Session::new(probes, enricher, reporter, args.common.hang_threshold);
    session.follow_new_libraries(follow);
    session.check_pythons(proc::all_pids());
    if let Some(pct) = args.budget {
        session.set_budget(pct, args.budget_slice);
    }
    Ok(session)
}

/// `locktrace agent`: `watch` until SIGTERM, findings counted on the
/// metrics endpoint and sent to Alertmanager.
fn run_agent(args: AgentArgs) -> Result<i32> {
    let config = agent::Config::load(&args)?;
    let watch = WatchArgs {
        common: CommonArgs {
            format: config.format,
            output: config.output.clone(),
            force: config.force,
            hang_threshold: config.hang_threshold,
            exit_code: None,
            libc: vec![],
            binaries: vec![],
            wrappers: vec![],
            kernel_btf: None,
            probe_at_entry: false,
            floor_probes: false,
            one_hit_floor_probes: false,
            watch_free: config.watch_free,
            verbose: args.verbose,
        },
        pids: config.pids.clone(),
        comms: config.comms.clone(),
        cgroups: config.cgroups.clone(),
        // A filtered agent still sees a process from its first instruction
        // (as the tests need: a fixture locks as soon as it starts).
        probe_all: true,
        budget: None,
        budget_slice: Duration::from_secs(1),
        duration: None,
    };
    let mut agent = Agent::start(&config)?;
    let rt = runtime()?;
    let (mut term, mut int) = stop_signals(&rt)?;
    // `systemctl reload` (or a stray `kill -HUP`): the config file is read
    // again (SIGHUP's default action, to terminate, would stop tracing).
    let mut hangup = {
        let _runtime = rt.enter();
        signal(SignalKind::hangup()).context("SIGHUP handler")?
    };
    // The findings file is appended to and rotated (`[report] max_size`).
    let format = match config.format {
        Format::Text => report::Format::Text,
        Format::Json => report::Format::Json,
    };
    let mut session = start_watch(&watch, true, || {
        Ok(Reporter::new(format, agent.report_output()?))
    })?;
    // The lock order earlier runs learned, and what this one learns, kept
    // across restarts (`state_dir`).
    session.restore_class_graph(agent.restored_class_graph());
    session.learn_class_dependencies();
    session.observe(agent.observer());
    session.take_changes(agent.changes());
    session.cap_instances(config.max_locks, config.max_dependencies);
    // Attached: what only the start needed goes (before READY, so that
    // what systemd and a test see after it is the final set).
    let kept = agent::privileges::drop_after_attach(session.probes.uses_multi_links())
        .context("cannot drop the capabilities not needed after the start")?;
    tracing::info!(
        "capabilities kept: {}",
        kept.iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    agent.ready();
    rt.block_on(async {
        let stop = async {
            let pings = agent::notify::watchdog_interval();
            let mut watchdog = tokio::time::interval(pings.unwrap_or(Duration::MAX / 4));
            loop {
                tokio::select! {
                    _ = term.recv() => break Stop::Signal,
                    _ = int.recv() => break Stop::Signal,
                    _ = hangup.recv() => match agent::Config::load(&args) {
                        Ok(new) => agent.reload(new),
                        // One line, naming the key: the old one goes on.
                        Err(e) => tracing::error!(
                            "SIGHUP: {e:#}; keeping the configuration in force"
                        ),
                    },
                    // The session's loop polls this future between slices:
                    // a ping says that loop turns.
                    _ = watchdog.tick(), if pings.is_some() => agent::notify::notify("WATCHDOG=1"),
                }
            }
        };
        session.run_until(stop).await
    })?;
    drop(session);
    agent.finish();
    Ok(0)
}

fn snapshot(args: SnapshotArgs) -> Result<i32> {
    preflight::check_privileges()?;
    let named = processes(&args.pids)?;
    let mut reporter = open_reporter(args.output.as_ref(), args.format, args.force)?;
    let pids = if named.is_empty() {
        proc::all_pids()
    } else {
        named
    };
    let mut enricher = Enricher::new(
        Symbolizer::with_spaces(AddressSpaces::proc_only()),
        Wrappers::new(&[]),
    );
    let records = blocking::snapshot(&pids, &mut enricher);
    let mut deadlocks = 0;
    for record in &records {
        if matches!(record, report::Finding::Deadlock(_)) {
            deadlocks += 1;
        }
        reporter
            .finding(record, &report::walltime::now())
            .context("cannot write the report")?;
    }
    Ok(match args.exit_code {
        Some(code) if deadlocks > 0 => code,
        _ => 0,
    })
}

fn exit_code(session: &Session, on_findings: Option<i32>, otherwise: i32) -> i32 {
    match on_findings {
        Some(code) if session.alarms > 0 => code,
        _ => otherwise,
    }
}
