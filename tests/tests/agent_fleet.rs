//! A fleet: two agents (two hosts, as far as their alerts say) report the
//! same inversion to one Debian Alertmanager (its own config and data
//! directory, on loopback), routed by the shipped example route.

use std::process::Command;
use std::time::Duration;

use locktrace_e2e::services::{agent_config, free_port, poll, Alertmanager, Receiver};
use locktrace_e2e::tracer::Watcher;
use locktrace_e2e::{comm_of, copy_executable, fixture, require_root, workspace_dir, Variant};
use serde_json::Value;

/// Two agents (their own state dirs, `host` labels and metrics ports),
/// each tracing its own copy of the AB/BA fixture (one build: one
/// fingerprint), report the inversion to one Alertmanager whose route is
/// `dist/alertmanager/locktrace-route.yml` as shipped: the receiver gets
/// one notification, for the group {alertname, fingerprint}, listing both
/// hosts.
#[test]
fn two_hosts_one_inversion_one_notification() {
    require_root();
    let receiver = Receiver::start();
    let route =
        std::fs::read_to_string(workspace_dir().join("dist/alertmanager/locktrace-route.yml"))
            .unwrap();
    // The shipped route as one of the site's routes, verbatim; its
    // `locktrace` receiver is the test's webhook.
    let indented: String = route.lines().map(|l| format!("      {l}\n")).collect();
    let config = format!(
        "route:\n  receiver: default\n  routes:\n    -\n{indented}\
         receivers:\n  - name: default\n  - name: locktrace\n    webhook_configs:\n      \
         - url: {}\n",
        receiver.url()
    );
    let alertmanager = Alertmanager::with_config(&config, free_port());

    let hosts = ["fleet-a", "fleet-b"];
    let mut agents = Vec::new();
    let mut programs = Vec::new();
    let dirs: Vec<tempfile::TempDir> = hosts.iter().map(|_| tempfile::tempdir().unwrap()).collect();
    for (host, dir) in hosts.iter().zip(&dirs) {
        let metrics = format!("127.0.0.1:{}", free_port());
        let config = agent_config(dir.path(), host, &metrics, Some(&alertmanager.url));
        // Each host's own copy of one build.
        let program = dir.path().join(format!("ab_ba_{host}"));
        copy_executable(&fixture("ab_ba", Variant::Fp), &program);
        agents.push(Watcher::start_agent(
            &["--config", &config, "--comm", &comm_of(&program)],
            &[],
        ));
        locktrace_e2e::services::wait_ready(&metrics);
        programs.push(program);
    }
    for program in &programs {
        let out = Command::new(program).output().unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    // The route waits 30 s (group_wait) for the rest of the fleet.
    let first = poll(Duration::from_secs(60), || {
        receiver.notifications().first().cloned()
    });
    // Anything else would come after group_interval (5 m): a few seconds
    // show that no second notification was sent at once.
    std::thread::sleep(Duration::from_secs(3));
    let notifications = receiver.notifications();
    let runs: Vec<_> = agents.into_iter().map(|a| a.stop()).collect();
    eprintln!(
        "notifications:\n{}",
        serde_json::to_string_pretty(&notifications).unwrap()
    );

    let describe = || {
        format!(
            "{notifications:#?}\n{}\n{}",
            alertmanager.log(),
            runs.iter()
                .map(|r| r.run.describe())
                .collect::<Vec<_>>()
                .join("\n")
        )
    };
    let first: Value = first.unwrap_or_else(|| panic!("no notification\n{}", describe()));
    assert_eq!(notifications.len(), 1, "one notification\n{}", describe());
    let group = first["groupLabels"].as_object().unwrap();
    let mut keys: Vec<&String> = group.keys().collect();
    keys.sort();
    assert_eq!(keys, ["alertname", "fingerprint"], "{first}");
    assert_eq!(group["alertname"], "LockOrderInversion", "{first}");
    assert_eq!(
        first["receiver"], "locktrace",
        "the shipped route's\n{first}"
    );
    let alerts = first["alerts"].as_array().unwrap();
    let mut reported: Vec<&str> = alerts
        .iter()
        .map(|a| a["labels"]["host"].as_str().unwrap())
        .collect();
    reported.sort();
    assert_eq!(
        reported,
        hosts,
        "both hosts in the one notification\n{}",
        describe()
    );
    for alert in alerts {
        assert_eq!(
            alert["labels"]["fingerprint"], group["fingerprint"],
            "{alert}"
        );
    }
}
