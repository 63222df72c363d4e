//! The agent's metrics as a user reads them: the gauges of what is blocked
//! now and the lock wait time per class on /metrics, and Debian's
//! Prometheus (its own config and data directory, on loopback) scraping
//! the agent and evaluating the shipped alerting rules.

use std::process::{Command, Stdio};
use std::time::Duration;

use locktrace_e2e::services::{
    agent_config, free_port, http_get, poll, sample, wait_ready, Prometheus,
};
use locktrace_e2e::tracer::Watcher;
use locktrace_e2e::{comm_of, copy_executable, fixture, require_root, workspace_dir, Variant};
use serde_json::Value;

/// A thread waiting past the hang threshold is one
/// `locktrace_lock_waits_over_threshold` while it waits, and its wait time
/// is then in `locktrace_lock_wait_seconds_total` under its lock's class; a
/// real deadlock's two threads are `locktrace_deadlocked_threads` 2 until
/// the process is killed.
#[test]
fn blocked_threads_and_lock_wait_time_are_on_metrics() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let config = agent_config(dir.path(), "test-host", &metrics, None);
    let hang = dir.path().join("hang_gauge");
    copy_executable(&fixture("hang", Variant::Fp), &hang);
    let deadlock = dir.path().join("deadlock_gauge");
    copy_executable(&fixture("deadlock", Variant::Fp), &deadlock);
    let agent = Watcher::start_agent(
        &[
            "--config",
            &config,
            "--comm",
            &comm_of(&hang),
            "--comm",
            &comm_of(&deadlock),
            "--hang-threshold",
            "1s",
        ],
        &[],
    );
    wait_ready(&metrics);
    let read = |name: &str| sample(&http_get(&metrics, "/metrics").1, name);
    let over = "locktrace_lock_waits_over_threshold";
    let deadlocked = "locktrace_deadlocked_threads";
    let class = "locktrace_lock_wait_seconds_total{class=\"hang_gauge:mutex_a\"}";
    let before = http_get(&metrics, "/metrics").1;

    // Holds mutex_a 4 s while another thread waits for it, then lives 60 s.
    let mut hung = Command::new(&hang)
        .args(["4", "60"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let waiting = poll(Duration::from_secs(15), || {
        (read(over) == Some(1.0)).then_some(())
    });
    // The wait ends after 4 s; the wait time is read every 5 s.
    let ended = poll(Duration::from_secs(20), || {
        (read(over) == Some(0.0)).then_some(())?;
        read(class)
    });
    let after_hang = http_get(&metrics, "/metrics").1;
    let _ = hung.kill();
    let _ = hung.wait();

    let mut stuck = Command::new(&deadlock)
        .arg("30")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let in_deadlock = poll(Duration::from_secs(15), || {
        (read(deadlocked) == Some(2.0)).then_some(())
    });
    let _ = stuck.kill();
    let _ = stuck.wait();
    let cleared = poll(Duration::from_secs(10), || {
        (read(deadlocked) == Some(0.0) && read(over) == Some(0.0)).then_some(())
    });
    let last = http_get(&metrics, "/metrics").1;
    let health = http_get(&metrics, "/healthz");
    let run = agent.stop();
    eprintln!("/metrics after the hang:\n{after_hang}");

    let describe = || {
        format!(
            "before:\n{before}\nafter the hang:\n{after_hang}\nlast:\n{last}\n{}",
            run.run.describe()
        )
    };
    assert_eq!(sample(&before, over), Some(0.0), "{}", describe());
    assert_eq!(sample(&before, deadlocked), Some(0.0), "{}", describe());
    assert!(
        waiting.is_some(),
        "no wait over the threshold counted\n{}",
        describe()
    );
    // The waiter blocked past the 1 s threshold: at least that much.
    let waited =
        ended.unwrap_or_else(|| panic!("no wait time for mutex_a's class\n{}", describe()));
    assert!(waited >= 1.0, "{waited}\n{}", describe());
    assert!(
        in_deadlock.is_some(),
        "the deadlock's 2 threads not counted\n{}",
        describe()
    );
    assert!(
        cleared.is_some(),
        "still counted after the kill\n{}",
        describe()
    );
    assert_eq!(health.0, 200, "{}", health.1);
}

/// Debian's Prometheus scrapes the agent and loads the shipped rules: they
/// are listed, healthy; the counter the `LockOrderInversion` rule watches
/// is 0 before the AB/BA fixture runs and 1 after, and the rule's alert
/// fires (no `for:`, evaluated every second).
#[test]
fn prometheus_scrapes_the_agent_and_the_inversion_rule_fires() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let config = agent_config(dir.path(), "test-host", &metrics, None);
    let program = dir.path().join("ab_ba_scraped");
    copy_executable(&fixture("ab_ba", Variant::Fp), &program);
    let agent = Watcher::start_agent(&["--config", &config, "--comm", &comm_of(&program)], &[]);
    wait_ready(&metrics);
    let rules_file = workspace_dir().join("dist/prometheus/locktrace-rules.yml");
    let prometheus = Prometheus::start(&[&metrics], &rules_file, free_port());

    // Every alert of the shipped file, loaded and evaluated without error.
    let shipped: Vec<String> = std::fs::read_to_string(&rules_file)
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(str::to_string)
        .collect();
    assert_eq!(shipped.len(), 5, "{shipped:?}");
    let rules = poll(Duration::from_secs(30), || {
        let groups = prometheus.api("rules")["groups"].clone();
        let rules = groups[0]["rules"].as_array()?.clone();
        rules.iter().all(|r| r["health"] == "ok").then_some(groups)
    });
    let inversions = || {
        prometheus
            .query("locktrace_findings_total")
            .into_iter()
            .find(|(labels, _)| labels["type"] == "inversion")
            .map(|(_, v)| v)
    };
    let scraped_zero = poll(Duration::from_secs(30), || {
        (inversions() == Some(0.0)).then_some(())
    });

    let out = Command::new(&program).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let rose = poll(Duration::from_secs(30), || {
        (inversions() == Some(1.0)).then_some(())
    });
    let firing = poll(Duration::from_secs(30), || {
        prometheus.api("alerts")["alerts"]
            .as_array()?
            .iter()
            .find(|a| a["labels"]["alertname"] == "LockOrderInversion" && a["state"] == "firing")
            .cloned()
    });
    let metrics_text = http_get(&metrics, "/metrics").1;
    let run = agent.stop();
    eprintln!(
        "rules:\n{}\nalert:\n{}",
        serde_json::to_string_pretty(&rules).unwrap(),
        serde_json::to_string_pretty(&firing).unwrap()
    );

    let describe = || {
        format!(
            "{metrics_text}\n{}\n{}",
            prometheus.log(),
            run.run.describe()
        )
    };
    let groups = rules.unwrap_or_else(|| {
        panic!(
            "rules not all healthy: {}\n{}",
            prometheus.api("rules"),
            describe()
        )
    });
    assert_eq!(groups.as_array().unwrap().len(), 1, "{groups}");
    assert_eq!(groups[0]["name"], "locktrace", "{groups}");
    let loaded: Vec<&str> = groups[0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(loaded, shipped, "{groups}");
    assert!(
        rose.is_some(),
        "the inversion counter did not reach 1\n{}",
        describe()
    );
    let firing: Value = firing.unwrap_or_else(|| {
        panic!(
            "LockOrderInversion not firing: {}\n{}",
            prometheus.api("alerts"),
            describe()
        )
    });
    // A series born at 1 would never fire: `increase()` sees no rise.
    assert!(
        scraped_zero.is_some(),
        "no inversion counter at 0 before\n{}",
        describe()
    );
    assert_eq!(firing["labels"]["severity"], "warning", "{firing}");
    assert_eq!(firing["labels"]["instance"], metrics.as_str(), "{firing}");
    assert!(
        firing["annotations"]["summary"]
            .as_str()
            .is_some_and(|s| s.contains(&metrics)),
        "{firing}"
    );
}
