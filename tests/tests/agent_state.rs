//! The agent's state across restarts: the lock order it learned (the class
//! graph between global locks of a binary with a build-id) is saved in
//! `state_dir` and restored at the next start, so that an order taken
//! before a restart and its opposite taken after it are one inversion.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use locktrace_e2e::records::{Inversion, Level, Record};
use locktrace_e2e::services::{agent_config, counter, free_port, http_get, poll, wait_ready};
use locktrace_e2e::tracer::{locktrace_report, JsonRun, Watcher};
use locktrace_e2e::{comm_of, copy_executable, fixture, require_root, Variant};

/// One agent run on `config`: `program ORDER` runs once traced, and the
/// agent stops once it took the dependency in (/metrics counts it); it
/// saves its state as it stops, where what the run learned must be
/// (`ORDER` is the function that took the second lock: it is in the saved
/// stack).
fn agent_round(
    config: &str,
    metrics: &str,
    program: &Path,
    order: &str,
    state: &Path,
) -> (JsonRun, u32) {
    let agent = Watcher::start_agent(&["--config", config], &[]);
    wait_ready(metrics);
    let child = Command::new(program).arg(order).spawn().unwrap();
    let pid = child.id();
    assert!(child.wait_with_output().unwrap().status.success());
    let taken = poll(Duration::from_secs(20), || {
        let text = http_get(metrics, "/metrics").1;
        (counter(&text, "locktrace_lock_dependencies") >= 1.0).then_some(())
    });
    let run = agent.stop();
    let saved = std::fs::read_to_string(state).unwrap_or_default();
    assert!(
        taken.is_some() && saved.contains(&format!("\"function\":\"{order}\"")),
        "{order} not saved in {}:\n{saved}\n{}",
        state.display(),
        run.describe()
    );
    (run, pid)
}

fn inversions(run: &JsonRun) -> Vec<&Inversion> {
    run.report
        .records
        .iter()
        .filter_map(|r| match r {
            Record::LockOrderInversion(i) => Some(i),
            _ => None,
        })
        .collect()
}

/// Run 1 sees `class_split x_then_y` only, and stops; run 2, on the same
/// state dir, sees `y_then_x` only: one class-level inversion, whose
/// x-then-y dependency is named as restored from the saved state (with when
/// it was learned, and run 1's process) in the JSON and the text report.
/// With the state deleted, the same run 2 finds nothing.
#[test]
fn a_restart_keeps_the_lock_order_learned() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("class_split_st");
    copy_executable(&fixture("class_split", Variant::Fp), &program);
    let comm = comm_of(&program);
    let metrics = format!("127.0.0.1:{}", free_port());
    let config = agent_config(dir.path(), "test-host", &metrics, None);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "[trace]\ncomms = [\"{comm}\"]\n[journald]\nenabled = false\n"
    ));
    std::fs::write(&config, text).unwrap();
    let state = dir.path().join("state/state.json");

    let (first, first_pid) = agent_round(&config, &metrics, &program, "x_then_y", &state);
    assert!(inversions(&first).is_empty(), "{}", first.describe());
    let saved = std::fs::read_to_string(&state).unwrap();
    eprintln!("state after run 1:\n{saved}");

    let (second, second_pid) = agent_round(&config, &metrics, &program, "y_then_x", &state);
    let found = inversions(&second);
    let [inv] = found[..] else {
        panic!("not one inversion\n{}", second.describe());
    };
    assert_eq!(inv.level, Level::Class, "{}", second.describe());
    assert_eq!(
        inv.classes,
        [format!("{comm}:mutex_x"), format!("{comm}:mutex_y")],
        "{}",
        second.describe()
    );
    // The finding is this run's process's; the other order is run 1's,
    // restored, saying when it was learned.
    assert_eq!((inv.pid, &inv.comm), (second_pid, &comm));
    let (restored, live): (Vec<_>, Vec<_>) = inv.cycle.iter().partition(|e| e.restored.is_some());
    assert_eq!(
        (restored.len(), live.len()),
        (1, 1),
        "{}",
        second.describe()
    );
    let (old, new) = (restored[0], live[0]);
    assert_eq!(
        (old.from.label(), old.to.label(), old.pid),
        ("mutex_x", "mutex_y", first_pid)
    );
    assert!(old
        .stack
        .iter()
        .any(|f| f.function.as_deref() == Some("x_then_y")));
    assert_eq!(
        (new.from.label(), new.to.label(), new.pid),
        ("mutex_y", "mutex_x", second_pid)
    );
    let learned = &old.restored.as_ref().unwrap().learned;
    assert!(
        saved.contains(&format!("\"learned\":\"{learned}\"")),
        "{learned} not in the state\n{saved}"
    );
    let capture = dir.path().join("second.jsonl");
    std::fs::write(&capture, &second.report.raw).unwrap();
    let text = locktrace_report(&[], &[&capture]);
    eprintln!("{}", text.stdout);
    assert!(
        text.stdout.contains(&format!(
            "from the saved state: learned {learned} by the agent before it restarted"
        )),
        "{}",
        text.describe()
    );
    assert!(
        text.stdout
            .contains(&format!("{comm} [{first_pid}, before the agent restarted]")),
        "{}",
        text.describe()
    );

    // Without the state: the restart forgot x then y.
    std::fs::remove_file(&state).unwrap();
    let (third, _) = agent_round(&config, &metrics, &program, "y_then_x", &state);
    assert!(inversions(&third).is_empty(), "{}", third.describe());
}
