//! Series of routes and targets a config no longer has. Each one is noted with the latest
//! version that prepared it; when that version leaves the history (no retained version has the
//! name any more), its series go, as the version's `tidegate_requests_total` series do. Without
//! this a process whose routes or models are renamed now and then exports every name it ever
//! ran, for good, and a target removed while its breaker was open reports
//! `tidegate_circuit_open 1` forever. A version rolled back to prepares its series afresh.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError};

use prometheus::core::{Collector, MetricVec, MetricVecBuilder};

use super::Metrics;

/// The latest version that prepared each route, target of a route, and target.
#[derive(Default)]
pub(super) struct Names {
    routes: HashMap<String, Arc<str>>,
    route_targets: HashMap<(String, String, String), Arc<str>>,
    targets: HashMap<(String, String), Arc<str>>,
}

impl Metrics {
    /// `version` has route `route`.
    pub fn note_route(&self, route: &str, version: &Arc<str>) {
        let mut n = self.names.lock().unwrap_or_else(PoisonError::into_inner);
        n.routes.insert(route.to_owned(), version.clone());
    }

    /// `version`'s route `route` has target `provider`/`model`.
    pub fn note_target(&self, route: &str, provider: &str, model: &str, version: &Arc<str>) {
        let mut n = self.names.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (route.to_owned(), provider.to_owned(), model.to_owned());
        n.route_targets.insert(key, version.clone());
        n.targets.insert((provider.to_owned(), model.to_owned()), version.clone());
    }

    /// Drops the series of every name `version` was the last to have.
    pub(super) fn forget_names(&self, version: &str) {
        let mut n = self.names.lock().unwrap_or_else(PoisonError::into_inner);
        let last = |v: &Arc<str>| &**v == version;
        let routes: Vec<String> = take_where(&mut n.routes, last);
        let route_targets = take_where(&mut n.route_targets, last);
        let targets = take_where(&mut n.targets, last);
        drop(n);
        for r in &routes {
            let by = [("route", r.as_str())];
            remove_matching(&self.request_duration, &by);
            remove_matching(&self.overhead, &by);
            remove_matching(&self.inflight, &by);
            remove_matching(&self.fallbacks, &by);
            remove_matching(&self.retries, &by);
            remove_matching(&self.stream_aborts, &by);
            remove_matching(&self.ceiling_rejections, &by);
            remove_matching(&self.idempotency, &by);
        }
        for (r, p, m) in &route_targets {
            let by = [("route", r.as_str()), ("provider", p.as_str()), ("model", m.as_str())];
            remove_matching(&self.tokens, &by);
            remove_matching(&self.truncations, &by);
            remove_matching(&self.cost_usd, &by);
        }
        for (p, m) in &targets {
            let by = [("provider", p.as_str()), ("model", m.as_str())];
            remove_matching(&self.upstream_attempts, &by);
            remove_matching(&self.upstream_duration, &by);
            remove_matching(&self.ttft, &by);
            remove_matching(&self.circuit_open, &by);
        }
    }
}

/// Removes and returns the keys whose version `last` picks.
fn take_where<K: Clone + Eq + std::hash::Hash>(
    map: &mut HashMap<K, Arc<str>>,
    last: impl Fn(&Arc<str>) -> bool,
) -> Vec<K> {
    let gone: Vec<K> = map.iter().filter(|(_, v)| last(v)).map(|(k, _)| k.clone()).collect();
    for k in &gone {
        map.remove(k);
    }
    gone
}

/// Removes every series of `vec` whose labels include all of `want`.
fn remove_matching<T: MetricVecBuilder>(vec: &MetricVec<T>, want: &[(&str, &str)]) {
    for family in vec.collect() {
        for m in family.get_metric() {
            let labels: HashMap<&str, &str> =
                m.get_label().iter().map(|l| (l.name(), l.value())).collect();
            if want.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                let _ = vec.remove(&labels);
            }
        }
    }
}
