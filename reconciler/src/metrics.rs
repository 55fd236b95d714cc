//! The service's Prometheus metrics, in one registry: what the loops count and time, and what
//! `/metrics` serves as OpenMetrics text. Label sets are bounded (a loop, a state, an
//! outcome): never a run id.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Which loop a sample is about.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoopLabel {
    /// `follow`, `forge_events`, `ticks`, `runs`, `register` or `deliver`.
    pub reconciler: &'static str,
}

/// Every metric of the service; cheap to clone (clones share the samples).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Passes of each sub-reconciler. An idle service makes none.
    pub passes: Family<LoopLabel, Counter>,
    /// Objects whose reconcile failed in a pass, per sub-reconciler.
    pub errors: Family<LoopLabel, Counter>,
    /// 1 while this replica leads (or runs without an election), else 0.
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("trainyard");
        let passes = Family::<LoopLabel, Counter>::default();
        registry.register(
            "reconcile_passes",
            "Passes of each sub-reconciler of the loop",
            passes.clone(),
        );
        let errors = Family::<LoopLabel, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Objects whose reconcile failed, per sub-reconciler",
            errors.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "Whether this replica acts (1) or stands by (0)",
            leader.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            passes,
            errors,
            leader,
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Counts one pass of `reconciler`.
    pub fn pass(&self, reconciler: &'static str) {
        self.passes.get_or_create(&LoopLabel { reconciler }).inc();
    }

    /// Counts `n` objects `reconciler` failed on.
    pub fn failed(&self, reconciler: &'static str, n: u64) {
        if n > 0 {
            self.errors
                .get_or_create(&LoopLabel { reconciler })
                .inc_by(n);
        }
    }

    /// Every sample as OpenMetrics text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_are_counted_per_reconciler_and_rendered_as_openmetrics() {
        let metrics = Metrics::default();
        metrics.pass("ticks");
        metrics.pass("ticks");
        metrics.pass("runs");
        let text = metrics.render();
        assert!(
            text.contains("trainyard_reconcile_passes_total{reconciler=\"ticks\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("trainyard_reconcile_passes_total{reconciler=\"runs\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
