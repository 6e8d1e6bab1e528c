//! Agent call latencies and errors. The manager's `call` helper, which
//! every agent call with an answer goes through, records each call here;
//! a shim serves one pod, so the record is the process's. One fixed
//! histogram per call name (names are the code's own), so it never grows.

use super::text::{Exposition, Kind};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds: from a KVM guest's
/// sub-millisecond answers to a loaded TCG guest's seconds.
pub const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallStats {
    /// Calls per bucket (not cumulative); the last is above every bound.
    pub buckets: [u64; BUCKETS.len() + 1],
    pub seconds: f64,
    pub errors: u64,
}

impl CallStats {
    fn add(&mut self, elapsed: Duration, ok: bool) {
        let s = elapsed.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(BUCKETS.len());
        self.buckets[i] += 1;
        self.seconds += s;
        if !ok {
            self.errors += 1;
        }
    }

    /// Cumulative counts, as a Prometheus histogram's buckets are.
    pub fn cumulative(&self) -> Vec<u64> {
        self.buckets
            .iter()
            .scan(0u64, |acc, n| {
                *acc += n;
                Some(*acc)
            })
            .collect()
    }
}

static CALLS: Mutex<BTreeMap<&'static str, CallStats>> = Mutex::new(BTreeMap::new());

/// Records one agent call: `what` is the manager's name for it (its error
/// context, e.g. "husk create failed"), made into a label by [`label`].
pub fn record(what: &'static str, elapsed: Duration, ok: bool) {
    let mut calls = CALLS.lock().unwrap_or_else(|e| e.into_inner());
    calls.entry(what).or_default().add(elapsed, ok);
}

/// Every call recorded so far, by label.
pub fn snapshot() -> Vec<(String, CallStats)> {
    let calls = CALLS.lock().unwrap_or_else(|e| e.into_inner());
    let mut out: BTreeMap<String, CallStats> = BTreeMap::new();
    for (what, stats) in calls.iter() {
        let merged = out.entry(label(what)).or_default();
        for (m, s) in merged.buckets.iter_mut().zip(stats.buckets) {
            *m += s;
        }
        merged.seconds += stats.seconds;
        merged.errors += stats.errors;
    }
    out.into_iter().collect()
}

/// The call's label: the manager's context without "husk " and " failed",
/// in snake case ("husk create failed" -> "create", "watch OOM" ->
/// "watch_oom").
pub fn label(what: &str) -> String {
    let core = what.strip_prefix("husk ").unwrap_or(what);
    let core = core.strip_suffix(" failed").unwrap_or(core);
    core.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// The calls as two families, labelled with `pod`.
pub fn add_to(exp: &mut Exposition, pod: &str, calls: &[(String, CallStats)]) {
    let hist = exp.family(
        "husk_pod_agent_call_duration_seconds",
        "Time from request to answer of the shim's calls to the guest agent, by call.",
        Kind::Histogram,
    );
    for (call, stats) in calls {
        hist.histogram(
            &[("pod", pod), ("call", call)],
            &BUCKETS,
            &stats.cumulative(),
            stats.seconds,
        );
    }
    let errors = exp.family(
        "husk_pod_agent_call_errors_total",
        "Agent calls that failed or missed their deadline, by call.",
        Kind::Counter,
    );
    for (call, stats) in calls {
        errors.sample(&[("pod", pod), ("call", call)], stats.errors as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_snake_case_call_names() {
        assert_eq!(label("husk create failed"), "create");
        assert_eq!(label("watch OOM"), "watch_oom");
        assert_eq!(label("agent remove"), "agent_remove");
        assert_eq!(label("stats"), "stats");
    }

    #[test]
    fn a_call_lands_in_its_bucket_and_counts_errors() {
        let mut s = CallStats::default();
        s.add(Duration::from_micros(500), true);
        s.add(Duration::from_millis(30), false);
        s.add(Duration::from_secs(60), true);
        assert_eq!(s.buckets[0], 1);
        assert_eq!(s.buckets[5], 1, "30 ms is in the 0.05 s bucket");
        assert_eq!(s.buckets[BUCKETS.len()], 1, "above every bound");
        assert_eq!(s.errors, 1);
        let c = s.cumulative();
        assert_eq!(c.len(), BUCKETS.len() + 1);
        assert_eq!(*c.last().unwrap(), 3);
        assert!(c.windows(2).all(|w| w[0] <= w[1]));
        assert!((s.seconds - 60.0305).abs() < 1e-9);
    }

    #[test]
    fn recorded_calls_are_in_the_snapshot_and_the_exposition() {
        record("husk ops-test failed", Duration::from_millis(2), true);
        record("husk ops-test failed", Duration::from_millis(2), false);
        let snap = snapshot();
        let (_, s) = snap.iter().find(|(l, _)| l == "ops_test").unwrap();
        assert_eq!(*s.cumulative().last().unwrap(), 2);
        assert_eq!(s.errors, 1);
        let mut exp = Exposition::default();
        add_to(&mut exp, "p", &snap);
        let count = exp.find(
            "husk_pod_agent_call_duration_seconds_count",
            &[("call", "ops_test"), ("pod", "p")],
        );
        assert_eq!(count, vec![2.0]);
        let errors = exp.find("husk_pod_agent_call_errors_total", &[("call", "ops_test")]);
        assert_eq!(errors, vec![1.0]);
    }
}
