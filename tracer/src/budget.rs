//! The overhead budget (`watch --budget PCT`): the lock traffic is probed in
//! slices (see `kernel::slices`), the time between them set so that the
//! probes' estimated cost stays under the budget.
//!
//! The cost of a slice is estimated from what it measured: probe hits (the
//! kernel's acquisition and release counters) times the cost of one hit,
//! against the CPU time the traced processes used meanwhile. A service
//! whose lock traffic would cost 40 % of its CPU gets a duty cycle of
//! 5/40 = 12.5 % with a 5 % budget; one that takes few locks stays probed.
//! The gaps between slices are jittered, so that a workload with a period
//! of its own is not always probed in the same phase.
//!
//! Periods that teach something are preferred: a slice that found new
//! dependencies is followed by another at once (up to [`MAX_RUN`] in a
//! row), and the gap after the run pays for all of it, so the duty cycle
//! is the same while the probing lands where the graph still grows (a
//! service's start, a burst of a rare request) and a dependency whose two
//! acquisitions are far apart is less often cut by a switch.

use std::collections::VecDeque;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::kernel::load::Probes;

/// The cost of one probe hit as a busy server feels it: the trap, the
/// emulation and the program (0.5-1 µs in `cargo xtask bench`'s floor rows)
/// and the collector's share of the records. Calibrated on memcached under
/// memcaslap here: full tracing cost it 56 % of its throughput at about
/// 450 k hits/s, which 1 µs per hit estimated at 30 %. The estimate must
/// not understate the cost.
const HIT_COST: Duration = Duration::from_micros(2);
/// The longest gap between slices, whatever the cost: a service with very
/// hot locks is still probed once a minute.
const MAX_GAP: Duration = Duration::from_secs(60);
/// Slices whose new dependencies the summary reports.
const RECENT: usize = 10;
/// The most slices probed in a row because each found new dependencies.
const MAX_RUN: u32 = 4;

/// The duty-cycle controller: pure arithmetic, no I/O.
#[derive(Debug)]
pub struct Controller {
    budget: f64,
    /// Estimated cost while probed, as a fraction of the traced CPU time
    /// (a moving average over slices).
    cost: Option<f64>,
    slices: u64,
    probed: Duration,
    recent_new: VecDeque<u64>,
    /// The slices probed in a row since the last gap, and their length.
    run_slices: u32,
    run: Duration,
    /// xorshift state for the jitter.
    seed: u64,
}

impl Controller {
    pub fn new(budget_pct: f64) -> Self {
        Controller {
            budget: budget_pct / 100.0,
            cost: None,
            slices: 0,
            probed: Duration::ZERO,
            recent_new: VecDeque::new(),
            run_slices: 0,
            run: Duration::ZERO,
            seed: 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()),
        }
    }

    /// After a slice of `length` that saw `hits` probe hits while the
    /// traced processes used `cpu`, and found `new_dependencies`: how long
    /// to leave the traffic unprobed (zero: probe on).
    pub fn after_slice(
        &mut self,
        length: Duration,
        hits: u64,
        cpu: Duration,
        new_dependencies: u64,
    ) -> Duration {
        self.slices += 1;
        self.probed += length;
        self.recent_new.push_back(new_dependencies);
        if self.recent_new.len() > RECENT {
            self.recent_new.pop_front();
        }
        let spent = HIT_COST.as_secs_f64() * hits as f64;
        // Idle processes (no CPU time measured) cost nothing either way.
        let cost = if spent == 0.0 {
            0.0
        } else {
            (spent / cpu.as_secs_f64().max(spent)).min(1.0)
        };
        let smoothed = match self.cost {
            Some(old) => 0.5 * old + 0.5 * cost,
            None => cost,
        };
        self.cost = Some(smoothed);
        self.run_slices += 1;
        self.run += length;
        if smoothed <= self.budget {
            self.end_run();
            return Duration::ZERO;
        }
        // duty = budget / cost = run / (run + gap)
        let gap_per_probed = smoothed / self.budget - 1.0;
        let learning = new_dependencies > 0 && self.run_slices < MAX_RUN;
        // Probing on must leave a gap that pays for it within MAX_GAP
        // (with the jitter's 20 %), or the budget would be overspent.
        let next_gap = (self.run + length).as_secs_f64() * gap_per_probed * 1.2;
        if learning && next_gap <= MAX_GAP.as_secs_f64() {
            return Duration::ZERO;
        }
        let gap = self.run.as_secs_f64() * gap_per_probed;
        self.end_run();
        let jitter = 0.8 + 0.4 * self.random();
        Duration::from_secs_f64(gap * jitter).min(MAX_GAP)
    }

    fn end_run(&mut self) {
        self.run_slices = 0;
        self.run = Duration::ZERO;
    }

    fn random(&mut self) -> f64 {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        (self.seed >> 11) as f64 / (1u64 << 53) as f64
    }

    /// What the summary says, after `elapsed` of tracing.
    pub fn stats(&self, elapsed: Duration) -> BudgetStats {
        BudgetStats {
            budget_pct: self.budget * 100.0,
            duty_cycle: if elapsed.is_zero() {
                1.0
            } else {
                (self.probed.as_secs_f64() / elapsed.as_secs_f64()).min(1.0)
            },
            slices: self.slices,
            estimated_cost_pct: self.cost.map_or(0.0, |c| c * 100.0),
            new_dependencies_last_slices: self.recent_new.iter().copied().collect(),
        }
    }
}

/// The budget mode in the summary.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BudgetStats {
    pub budget_pct: f64,
    /// The fraction of the time the lock traffic was probed.
    pub duty_cycle: f64,
    /// Slices ended.
    pub slices: u64,
    /// The probes' estimated cost while probing, in percent of the traced
    /// processes' CPU time (a moving average).
    pub estimated_cost_pct: f64,
    /// New dependencies found by each of the last slices, oldest first: all
    /// zero once the graph has converged.
    pub new_dependencies_last_slices: Vec<u64>,
}

/// Where the slicing is.
enum Phase {
    /// Probing since `since`, from these counts.
    On {
        since: Instant,
        hits: u64,
        cpu: Duration,
        dependencies: u64,
    },
    /// The traffic links are closing; then unprobed until `until`.
    Closing {
        closer: JoinHandle<()>,
        until: Instant,
    },
    Off {
        until: Instant,
    },
}

/// Drives the slices of a session.
pub struct Slicer {
    pub controller: Controller,
    /// How long one slice probes the lock traffic (1 s by default: a
    /// switch costs a grace period, and a second covers the period of
    /// most request loops).
    slice: Duration,
    phase: Phase,
}

impl Slicer {
    /// Starts with the traffic probed (it is, once attached).
    pub fn new(budget_pct: f64, slice: Duration, probes: &Probes, dependencies: u64) -> Self {
        Slicer {
            controller: Controller::new(budget_pct),
            slice,
            phase: Phase::On {
                since: Instant::now(),
                hits: hits(probes),
                cpu: traced_cpu(probes),
                dependencies,
            },
        }
    }

    /// Whether held-lock state may be stale now (the traffic links are
    /// closing): the wait-for graph must not be read.
    pub fn held_state_unsure(&self) -> bool {
        matches!(self.phase, Phase::Closing { .. })
    }

    /// Moves the slicing on; `dependencies` is the graph's count now.
    pub fn step(&mut self, probes: &mut Probes, dependencies: u64) {
        let now = Instant::now();
        let phase = std::mem::replace(&mut self.phase, Phase::Off { until: now });
        self.phase = match phase {
            Phase::On {
                since,
                hits: hits_then,
                cpu: cpu_then,
                dependencies: deps_then,
            } if now - since >= self.slice => {
                let (hits_now, cpu_now) = (hits(probes), traced_cpu(probes));
                let gap = self.controller.after_slice(
                    now - since,
                    hits_now.saturating_sub(hits_then),
                    cpu_now.saturating_sub(cpu_then),
                    dependencies.saturating_sub(deps_then),
                );
                if gap.is_zero() {
                    Phase::On {
                        since: now,
                        hits: hits_now,
                        cpu: cpu_now,
                        dependencies,
                    }
                } else {
                    tracing::debug!(gap_ms = gap.as_millis() as u64, "lock traffic unprobed");
                    Phase::Closing {
                        closer: probes.traffic_off(),
                        until: now + gap,
                    }
                }
            }
            Phase::Closing { closer, until } if closer.is_finished() => {
                let _ = closer.join();
                // No traffic program runs now: what the held stacks say may
                // be stale (releases unseen), forget it.
                if let Err(e) = probes.forget_thread_state() {
                    tracing::warn!("cannot forget held-lock state: {e:#}");
                }
                Phase::Off { until }
            }
            Phase::Off { until } if now >= until => match probes.traffic_on() {
                Ok(()) => Phase::On {
                    since: now,
                    hits: hits(probes),
                    cpu: traced_cpu(probes),
                    dependencies,
                },
                Err(e) => {
                    tracing::warn!("cannot probe the lock traffic again: {e:#}");
                    Phase::Off {
                        until: now + self.slice,
                    }
                }
            },
            other => other,
        };
    }
}

/// Probe hits so far (acquisitions and releases).
fn hits(probes: &Probes) -> u64 {
    use tracer_common::Counter;
    probes
        .counters()
        .map(|all| {
            all.iter()
                .filter(|(c, _)| matches!(c, Counter::Acquire | Counter::Release))
                .map(|(_, n)| n)
                .sum()
        })
        .unwrap_or(0)
}

/// CPU time used so far by the traced processes (host-wide: by the host).
fn traced_cpu(probes: &Probes) -> Duration {
    let ticks = procfs::ticks_per_second() as f64;
    let total: u64 = if probes.is_host_wide() {
        use procfs::{CurrentSI, KernelStats};
        KernelStats::current()
            .map(|k| {
                let t = k.total;
                t.user + t.nice + t.system + t.irq.unwrap_or(0) + t.softirq.unwrap_or(0)
            })
            .unwrap_or(0)
    } else {
        probes
            .traced_pids()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|pid| procfs::process::Process::new(pid as i32).ok()?.stat().ok())
            .map(|s| s.utime + s.stime)
            .sum()
    };
    Duration::from_secs_f64(total as f64 / ticks)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn cheap_traffic_stays_probed() {
        let mut c = Controller::new(5.0);
        // 1,000 hits (2 ms) in 250 ms of CPU: 0.8 %.
        assert_eq!(c.after_slice(250 * MS, 1000, 250 * MS, 3), Duration::ZERO);
        assert_eq!(c.stats(250 * MS).duty_cycle, 1.0);
    }

    #[test]
    fn costly_traffic_gets_the_budget_as_duty_cycle() {
        let mut c = Controller::new(5.0);
        // 50,000 hits (0.1 s) in 0.25 s of CPU: 40 % while probed, so
        // 12.5 % duty: a gap of 7 slices, jittered by at most 20 %.
        let gap = c.after_slice(250 * MS, 50_000, 250 * MS, 0);
        assert!(gap >= 1400 * MS && gap <= 2100 * MS, "{gap:?}");
        let stats = c.stats(250 * MS + gap);
        assert!((stats.estimated_cost_pct - 40.0).abs() < 1e-9);
        assert!(
            stats.duty_cycle > 0.10 && stats.duty_cycle < 0.16,
            "{stats:?}"
        );
    }

    #[test]
    fn slices_that_learn_are_extended_and_paid_for_after() {
        let mut c = Controller::new(5.0);
        // 40 % while probed: one slice of 250 ms would be followed by
        // 1.75 s. Each of these found new dependencies: probed on.
        for _ in 0..MAX_RUN - 1 {
            assert_eq!(c.after_slice(250 * MS, 50_000, 250 * MS, 7), Duration::ZERO);
        }
        // The run is long enough: the gap pays for all four slices.
        let gap = c.after_slice(250 * MS, 50_000, 250 * MS, 7);
        assert!(gap >= 5600 * MS && gap <= 8400 * MS, "{gap:?}");
        let stats = c.stats(1000 * MS + gap);
        assert!(
            stats.duty_cycle > 0.10 && stats.duty_cycle < 0.16,
            "{stats:?}"
        );
        // A slice that learns nothing is not extended.
        assert!(c.after_slice(250 * MS, 50_000, 250 * MS, 0) > Duration::ZERO);
    }

    #[test]
    fn a_run_stops_where_its_gap_would_pass_the_longest() {
        let mut c = Controller::new(1.0);
        // 100 % while probed against 1 %: a 1 s slice needs a 99 s gap,
        // so even a learning slice is not extended (the gap is cut to a
        // minute, which already overspends).
        let gap = c.after_slice(1000 * MS, 10_000_000, 1000 * MS, 5);
        assert_eq!(gap, MAX_GAP);
    }

    #[test]
    fn gaps_are_bounded_and_idle_processes_cost_nothing() {
        let mut c = Controller::new(0.01);
        assert!(c.after_slice(250 * MS, 1_000_000, 250 * MS, 0) <= MAX_GAP);
        let mut idle = Controller::new(5.0);
        assert_eq!(
            idle.after_slice(250 * MS, 0, Duration::ZERO, 0),
            Duration::ZERO
        );
    }

    #[test]
    fn recent_slices_are_kept() {
        let mut c = Controller::new(100.0);
        for n in 0..15 {
            c.after_slice(250 * MS, 0, 250 * MS, n);
        }
        assert_eq!(
            c.stats(Duration::from_secs(4)).new_dependencies_last_slices,
            (5..15).collect::<Vec<u64>>()
        );
    }
}
