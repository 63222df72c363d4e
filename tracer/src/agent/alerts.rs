//! A finding as an Alertmanager alert (API v2): its labels, annotations and
//! stable fingerprint.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::report::findings::Origin;
pub use crate::report::fingerprint::fingerprint;
use crate::report::oneline::{self, pid_comm};
use crate::report::Finding;

/// The text report in `description` is cut to this many bytes.
const MAX_DESCRIPTION: usize = 4000;

/// One alert as `POST /api/v2/alerts` takes it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Alert {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    #[serde(rename = "startsAt")]
    pub starts_at: String,
    #[serde(rename = "endsAt")]
    pub ends_at: String,
}

/// Where the alert comes from and how long it stays active.
pub struct Context<'a> {
    pub host: &'a str,
    pub runbook_url: &'a str,
    pub active_for: Duration,
}

/// The `type` label of `locktrace_findings_total` and the alert's name;
/// `None` for a record that is not a finding.
pub fn kind(finding: &Finding) -> Option<(&'static str, &'static str)> {
    Some(match finding {
        Finding::LockOrderInversion(_) => ("inversion", "LockOrderInversion"),
        Finding::Deadlock(_) => ("deadlock", "Deadlock"),
        Finding::LockWaitTimeout(_) => ("lock_wait_timeout", "LockWaitTimeout"),
        Finding::SelfDeadlock(_) => ("self_deadlock", "SelfDeadlock"),
        Finding::SameClassNesting(_) => ("same_class_nesting", "SameClassNesting"),
        Finding::BlockedThread(_) => return None,
    })
}

pub fn alert(finding: &Finding, ctx: &Context<'_>, now: SystemTime) -> Option<Alert> {
    let (_, alertname) = kind(finding)?;
    let severity = match finding {
        Finding::Deadlock(_) | Finding::SelfDeadlock(_) => "critical",
        _ => "warning",
    };
    let (_, comm) = pid_comm(finding);
    let origin = origin(finding);
    let labels = BTreeMap::from([
        ("alertname".to_string(), alertname.to_string()),
        ("severity".to_string(), severity.to_string()),
        ("fingerprint".to_string(), fingerprint(finding)),
        ("host".to_string(), ctx.host.to_string()),
        ("service".to_string(), service(origin, comm)),
    ]);
    // The text report's form: names escaped, as a mail or chat message of
    // the alert shows it to a person.
    let mut description = crate::report::escape::finding(finding).to_string();
    if description.len() > MAX_DESCRIPTION {
        let mut cut = MAX_DESCRIPTION;
        while !description.is_char_boundary(cut) {
            cut -= 1;
        }
        description.truncate(cut);
        description.push_str("\n[cut]");
    }
    let mut annotations = BTreeMap::from([
        ("summary".to_string(), oneline::summary(finding)),
        ("description".to_string(), description),
        ("runbook_url".to_string(), ctx.runbook_url.to_string()),
    ]);
    // Annotations, not labels: labels are the alert's identity, and a
    // container id (new at every container restart) or a session's cgroup
    // would split one bug into many alerts.
    if let Some(o) = origin {
        let esc = |s: &str| crate::report::escape::name(s).into_owned();
        annotations.insert("cgroup".to_string(), esc(&o.cgroup));
        if let Some(unit) = &o.unit {
            annotations.insert("unit".to_string(), esc(unit));
        }
        if let Some(id) = &o.container {
            annotations.insert("container".to_string(), esc(id));
        }
    }
    Some(Alert {
        labels,
        annotations,
        starts_at: rfc3339(now),
        ends_at: rfc3339(now + ctx.active_for),
    })
}

/// The origin of the finding's own process (of its first edge, for a
/// cycle), as read when the finding was built.
fn origin(finding: &Finding) -> Option<&Origin> {
    match finding {
        Finding::LockOrderInversion(f) => f.origin.as_ref(),
        Finding::Deadlock(f) => f.origin.as_ref(),
        Finding::LockWaitTimeout(f) => f.origin.as_ref(),
        Finding::SelfDeadlock(f) => f.origin.as_ref(),
        Finding::SameClassNesting(f) => f.origin.as_ref(),
        Finding::BlockedThread(t) => t.origin.as_ref(),
    }
}

/// The `service` label, from the finding's origin: its systemd
/// `*.service`, else its container id cut to 12 like `docker ps`
/// (`container:0123456789ab`), else its `*.scope` unit (`systemd-run
/// --scope`, a login session), else its command name.
pub fn service(origin: Option<&Origin>, comm: &str) -> String {
    let unit = origin.and_then(|o| o.unit.as_deref());
    if let Some(unit) = unit.filter(|u| u.ends_with(".service")) {
        return unit.to_string();
    }
    if let Some(id) = origin.and_then(|o| o.container.as_deref()) {
        return format!("container:{}", id.get(..12).unwrap_or(id));
    }
    unit.unwrap_or(comm).to_string()
}

/// `2026-12-07T05:31:48Z`.
pub fn rfc3339(t: SystemTime) -> String {
    crate::report::walltime::seconds(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Lock;
    use tracer_analysis::model::Frame;

    #[test]
    fn timestamps() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_621_508);
        assert_eq!(rfc3339(t), "2026-12-07T05:31:48Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn services_from_origins() {
        use crate::host::proc::origin_of_path;
        let service_of = |path: &str| service(Some(&origin_of_path(path)), "prog");
        assert_eq!(
            service_of("/system.slice/apache2.service"),
            "apache2.service"
        );
        let id = "a".repeat(64);
        assert_eq!(
            service_of(&format!("/system.slice/docker-{id}.scope")),
            "container:aaaaaaaaaaaa"
        );
        // A service inside a container is the service.
        assert_eq!(
            service_of(&format!(
                "/system.slice/docker-{id}.scope/system.slice/nginx.service"
            )),
            "nginx.service"
        );
        assert_eq!(
            service_of("/user.slice/user-0.slice/session-1.scope"),
            "session-1.scope"
        );
        assert_eq!(service_of("/"), "prog");
        assert_eq!(service(None, "prog"), "prog");
    }

    use crate::report::{Edge, Inversion};
    use tracer_analysis::model::Level;

    /// The AB/BA inversion of a process `pid` whose program lies at `path`
    /// and whose locks are `a` and `b`.
    fn ab_ba(pid: u32, path: &str, base: u64, a: &str, b: &str) -> Finding {
        let lock = |name: &str, addr| Lock {
            addr,
            kind: "mutex",
            name: Some(name.to_string()),
            shared: None,
            build_id: None,
            file_offset: None,
            pid,
        };
        let frame = |function: &str, addr| Frame {
            addr,
            module: Some(path.to_string()),
            function: Some(function.to_string()),
            offset: Some(34),
            ..Frame::default()
        };
        let libc = Frame {
            addr: 0x7f00_0000_1000,
            module: Some("/usr/lib/x86_64-linux-gnu/libc.so.6".into()),
            function: Some("___pthread_mutex_lock".into()),
            offset: Some(14),
            ..Frame::default()
        };
        let edge = |from: &Lock, to: &Lock, function: &str| Edge {
            from: from.clone(),
            to: to.clone(),
            pid,
            tid: pid + 1,
            comm: "prog".into(),
            origin: None,
            thread: "prog".into(),
            stack: vec![libc.clone(), frame(function, base + 0x1100)],
            held_stack: vec![frame(function, base + 0x10f0)],
            held_python_stack: vec![],
            python_stack: vec![],
            restored: None,
        };
        let (la, lb) = (lock(a, base + 0x4080), lock(b, base + 0x40c0));
        Finding::LockOrderInversion(Inversion {
            id: 1,
            pid,
            comm: "prog".into(),
            origin: None,
            locks: vec![la.clone(), lb.clone()],
            cycle: vec![edge(&la, &lb, "lock_ab"), edge(&lb, &la, "lock_ba")],
            guarded: false,
            gate: None,
            level: Level::Instance,
            classes: vec![],
        })
    }

    #[test]
    fn fingerprints_ignore_pids_addresses_and_paths() {
        let one = fingerprint(&ab_ba(
            100,
            "/opt/a/prog",
            0x5500_0000_0000,
            "mutex_a",
            "mutex_b",
        ));
        let other = fingerprint(&ab_ba(
            2000,
            "/srv/b/prog2",
            0x5611_0000_0000,
            "mutex_a",
            "mutex_b",
        ));
        assert_eq!(one, other);
        assert_eq!(one.len(), 16);
        let renamed = fingerprint(&ab_ba(
            100,
            "/opt/a/prog",
            0x5500_0000_0000,
            "mutex_a",
            "mutex_c",
        ));
        assert_ne!(one, renamed);
    }

    /// `finding` (of [`ab_ba`]) as a program whose file has build-id `id`
    /// and is loaded at `base`: its frames and locks keyed by build-id and
    /// file offset.
    fn built(finding: Finding, id: &str, base: u64) -> Finding {
        let Finding::LockOrderInversion(mut f) = finding else {
            unreachable!()
        };
        let key_lock = |l: &mut Lock| {
            l.build_id = Some(id.to_string());
            l.file_offset = Some(l.addr - base);
        };
        f.locks.iter_mut().for_each(key_lock);
        for e in &mut f.cycle {
            key_lock(&mut e.from);
            key_lock(&mut e.to);
            for frame in e.stack.iter_mut().chain(e.held_stack.iter_mut()) {
                if frame.addr >= base && frame.addr < base + 0x10_0000 {
                    frame.build_id = Some(id.to_string());
                    frame.file_offset = Some(frame.addr - base);
                }
            }
        }
        Finding::LockOrderInversion(f)
    }

    #[test]
    fn fingerprints_follow_the_build_id() {
        let (a, b) = (0x5500_0000_0000, 0x5611_0000_0000);
        let one = fingerprint(&built(
            ab_ba(100, "/opt/a/prog", a, "mutex_a", "mutex_b"),
            "0123abcd",
            a,
        ));
        // The same build elsewhere, in another process.
        let same = fingerprint(&built(
            ab_ba(2000, "/srv/b/prog2", b, "mutex_a", "mutex_b"),
            "0123abcd",
            b,
        ));
        assert_eq!(one, same);
        // The same code, rebuilt: another build-id, another bug to judge.
        let rebuilt = fingerprint(&built(
            ab_ba(100, "/opt/a/prog", a, "mutex_a", "mutex_b"),
            "4567ef01",
            a,
        ));
        assert_ne!(one, rebuilt);
        // Keyed by build-id and offset, not by the symbols' names.
        let renamed = fingerprint(&built(
            ab_ba(100, "/opt/a/prog", a, "mutex_x", "mutex_y"),
            "0123abcd",
            a,
        ));
        assert_eq!(one, renamed);
    }

    #[test]
    fn an_inversion_alert() {
        let finding = ab_ba(100, "/opt/a/prog", 0x5500_0000_0000, "mutex_a", "mutex_b");
        let ctx = Context {
            host: "web1",
            runbook_url: "file:///r",
            active_for: Duration::from_secs(60),
        };
        let alert = alert(&finding, &ctx, SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(alert.labels["alertname"], "LockOrderInversion");
        assert_eq!(alert.labels["severity"], "warning");
        assert_eq!(alert.labels["host"], "web1");
        assert_eq!(
            alert.annotations["summary"],
            "lock-order inversion mutex_a -> mutex_b -> mutex_a at lock_ab, lock_ba in prog (pid 100)"
        );
        assert_eq!(alert.ends_at, "1970-01-01T00:01:00Z");
    }

    #[test]
    fn an_alert_says_where_it_ran() {
        let Finding::LockOrderInversion(mut inv) =
            ab_ba(100, "/opt/a/prog", 0x5500_0000_0000, "mutex_a", "mutex_b")
        else {
            unreachable!()
        };
        let ctx = Context {
            host: "web1",
            runbook_url: "file:///r",
            active_for: Duration::from_secs(60),
        };
        let without = alert(
            &Finding::LockOrderInversion(inv.clone()),
            &ctx,
            SystemTime::UNIX_EPOCH,
        )
        .unwrap();
        assert_eq!(without.labels["service"], "prog");
        assert!(!without.annotations.contains_key("cgroup"));

        // A cgroup named by whoever could create it: escaped.
        inv.origin = Some(crate::host::proc::origin_of_path(
            "/system.slice/app.service/evil\n\u{1b}[2J",
        ));
        for e in &mut inv.cycle {
            e.origin = inv.origin.clone();
        }
        let with = alert(
            &Finding::LockOrderInversion(inv),
            &ctx,
            SystemTime::UNIX_EPOCH,
        )
        .unwrap();
        assert_eq!(with.labels["service"], "app.service");
        assert_eq!(with.labels.len(), 5, "no new labels: {:?}", with.labels);
        assert_eq!(with.annotations["unit"], "app.service");
        assert_eq!(
            with.annotations["cgroup"],
            "/system.slice/app.service/evil\\n\\x1b[2J"
        );
        assert!(!with.annotations.contains_key("container"));
        assert!(
            with.annotations["description"].contains(
                "\n  in app.service (cgroup /system.slice/app.service/evil\\n\\x1b[2J)\n"
            ),
            "{}",
            with.annotations["description"]
        );
    }
}
