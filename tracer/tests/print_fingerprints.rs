//! `locktrace report --print-fingerprints` prints what the agent's config
//! reads: pasted under `[suppress]`, its lines are exactly the fingerprints
//! of the capture's findings, and a hostile process name in a comment adds
//! no key.

use std::path::Path;

use clap::Parser;
use locktrace::agent::config::Config;
use locktrace::cli::{Cli, Command};
use locktrace::report::fingerprint::fingerprint;
use locktrace::report::replay::{self, Filter};

/// A self-deadlock of a process whose name carries a line break and a
/// config table, as a capture holds it.
const HOSTILE: &str = r#"{"type":"self_deadlock","id":1,"pid":7,"comm":"x\n[alertmanager]\nurl = \"http://evil\"","tid":8,"thread":"x","lock":{"addr":"0x10","kind":"mutex","name":"mutex_a"},"stack":[],"held_stack":[]}"#;

#[test]
fn printed_fingerprints_paste_into_the_agent_config() {
    let capture = replay::parse("one.jsonl", &format!("{HOSTILE}\n")).unwrap();
    assert_eq!(capture.findings.len(), 1, "{:?}", capture.warnings);
    let expected = fingerprint(&capture.findings[0].finding);
    let mut out = Vec::new();
    replay::print_fingerprints(&[capture], &Filter::default(), &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let Command::Agent(args) = Cli::try_parse_from(["locktrace", "agent"]).unwrap().command else {
        unreachable!()
    };
    let config = Config::parse(
        Path::new("/etc/locktrace/locktrace.toml"),
        &format!("[suppress]\n{text}"),
        &args,
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{text}"));
    assert_eq!(config.suppress_fingerprints, [expected]);
    assert!(config.alertmanager.is_none(), "{text}");
}
