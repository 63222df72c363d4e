//! `locktrace_lock_wait_seconds_total{class}`: lock wait time per lock
//! class, for the classes waited on longest only, so that the label's
//! cardinality stays bounded on a host with thousands of classes: the
//! [`TOP`] classes by wait time so far have a series each, the rest add up
//! in `class="other"` (with waits on locks no class names yet).
//!
//! Each wait is counted once, in the series of the label its class has
//! when it is read: a class entering the top starts its series then (its
//! earlier waits stay in `other`), one leaving it adds to `other` from
//! then on, and every series only grows (no false counter reset for
//! `rate()`).

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::registry::Unit;

use crate::report::class_waits::ClassWaitNs;

/// Classes with a series of their own.
pub const TOP: usize = 20;
/// Classes whose wait time is tracked to rank them; past this, new classes
/// count in `other` only (memory bounded over a month).
const TRACKED: usize = 10_000;
/// Labels keep their counter once given one (a class back in the top
/// continues its series); past this many, those out of the top are
/// dropped.
const LABELS_KEPT: usize = 1_000;
/// A class label's length at most, in bytes (a class name is a file name
/// and offset, or a wrapper's chain: usually far shorter).
const LABEL_MAX: usize = 160;
pub const OTHER: &str = "other";

#[derive(Debug, Default)]
pub struct ClassContention {
    inner: Mutex<Tallies>,
}

#[derive(Debug, Default)]
struct Tallies {
    /// Wait time by class so far, nanoseconds: the ranking.
    by_class: HashMap<String, u64>,
    /// Each label's counter, nanoseconds (a class, or `other`).
    by_label: HashMap<String, u64>,
    /// The labels shown: the top classes now.
    top: Vec<String>,
}

impl ClassContention {
    /// Adds the wait time read since the last call.
    pub fn add(&self, waits: &ClassWaitNs) {
        if waits.is_empty() {
            return;
        }
        let mut t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        t.add(waits);
    }
}

impl Tallies {
    fn add(&mut self, waits: &ClassWaitNs) {
        let waits: Vec<(Option<String>, u64)> = waits
            .iter()
            .map(|(class, ns)| (class.as_deref().map(bounded_label), *ns))
            .collect();
        for (class, ns) in &waits {
            let Some(class) = class else { continue };
            if let Some(total) = self.by_class.get_mut(class) {
                *total += ns;
            } else if self.by_class.len() < TRACKED {
                self.by_class.insert(class.clone(), *ns);
            }
        }
        let mut ranked: Vec<(&String, &u64)> = self.by_class.iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        self.top = ranked
            .into_iter()
            .take(TOP)
            .map(|(c, _)| c.clone())
            .collect();
        for (class, ns) in waits {
            let label = match class {
                Some(c) if self.top.contains(&c) => c,
                _ => OTHER.to_string(),
            };
            *self.by_label.entry(label).or_default() += ns;
        }
        if self.by_label.len() > LABELS_KEPT {
            let top = &self.top;
            self.by_label
                .retain(|label, _| label == OTHER || top.contains(label));
        }
    }

    /// The series shown: the top classes, most waited first, then `other`
    /// (always there, 0 at first), in seconds.
    fn samples(&self) -> Vec<(String, f64)> {
        let seconds = |label: &str| self.by_label.get(label).copied().unwrap_or(0) as f64 / 1e9;
        self.top
            .iter()
            .filter(|c| self.by_label.contains_key(*c))
            .map(|c| (c.clone(), seconds(c)))
            .chain(std::iter::once((OTHER.to_string(), seconds(OTHER))))
            .collect()
    }
}

/// A class name as a label value: at most [`LABEL_MAX`] bytes (cut at a
/// character boundary, marked with `...`), control characters replaced.
/// Quotes and backslashes are escaped by the encoder.
fn bounded_label(class: &str) -> String {
    let clean: String = class
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if clean.len() <= LABEL_MAX {
        return clean;
    }
    let mut end = LABEL_MAX - 3;
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &clean[..end])
}

impl Collector for ClassContention {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let samples = self
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .samples();
        let mut family = encoder.encode_descriptor(
            "lock_wait",
            "Time traced threads waited for locks (futex waits in lock functions), by lock class: the 20 classes waited on longest, the rest in class=\"other\"",
            Some(&Unit::Seconds),
            ConstCounter::<f64>::new(0.0).metric_type(),
        )?;
        for (class, seconds) in samples {
            let labels = vec![("class", class)];
            ConstCounter::new(seconds).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waits(list: &[(&str, u64)]) -> ClassWaitNs {
        list.iter()
            .map(|(c, ns)| ((!c.is_empty()).then(|| c.to_string()), *ns))
            .collect()
    }

    #[test]
    fn top_classes_get_a_series_and_the_rest_add_up_in_other() {
        let mut t = Tallies::default();
        // TOP + 5 classes, class i waited i seconds; an unnamed lock 1 s.
        let mut first: Vec<(String, u64)> = (1..=TOP as u64 + 5)
            .map(|i| (format!("app:lock_{i}"), i * 1_000_000_000))
            .collect();
        first.push((String::new(), 1_000_000_000));
        let first: Vec<(&str, u64)> = first.iter().map(|(c, n)| (c.as_str(), *n)).collect();
        t.add(&waits(&first));
        let s = t.samples();
        assert_eq!(s.len(), TOP + 1, "{s:?}");
        assert_eq!(s[0], ("app:lock_25".to_string(), 25.0));
        assert!(!s.iter().any(|(c, _)| c == "app:lock_5"), "{s:?}");
        // Classes 1..=5 (15 s) and the unnamed lock (1 s).
        assert_eq!(s[TOP], (OTHER.to_string(), 16.0));

        // lock_1 gets hot: it enters the top with only its new waits; the
        // class it pushes out (lock_6) adds to `other` from now on, and no
        // series shrinks.
        t.add(&waits(&[("app:lock_1", 100_000_000_000)]));
        let s = t.samples();
        let value = |s: &[(String, f64)], c: &str| s.iter().find(|(l, _)| l == c).map(|(_, v)| *v);
        assert_eq!(value(&s, "app:lock_1"), Some(100.0));
        assert_eq!(value(&s, "app:lock_6"), None, "{s:?}");
        assert_eq!(value(&s, OTHER), Some(16.0));
        t.add(&waits(&[("app:lock_6", 500_000_000)]));
        let s = t.samples();
        assert_eq!(value(&s, OTHER), Some(16.5));
        assert_eq!(s.len(), TOP + 1);
    }

    #[test]
    fn labels_are_bounded_and_escaped() {
        let c = ClassContention::default();
        let long = format!("init@{}", "é".repeat(200));
        c.add(&waits(&[("a\"b\\c\nd", 1_000_000_000), (&long, 1)]));
        let mut registry = prometheus_client::registry::Registry::with_prefix("locktrace");
        registry.register_collector(Box::new(c));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("locktrace_lock_wait_seconds_total{class=\"a\\\"b\\\\c?d\"} 1.0"),
            "{text}"
        );
        let line = text.lines().find(|l| l.contains("init@")).unwrap();
        let label = line.split('"').nth(1).unwrap();
        assert!(label.len() <= LABEL_MAX && label.ends_with("..."), "{line}");
        assert!(
            text.contains("locktrace_lock_wait_seconds_total{class=\"other\"} 0.0"),
            "{text}"
        );
    }
}
