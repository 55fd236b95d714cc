//! Settings of the platform rules, handed to the policies as `data.trainyard.config`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Limits and allow-lists the platform rules enforce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Registries images may come from, e.g. `reg.example.com`; empty allows any registry.
    pub allowed_registries: Vec<String>,
    /// The largest number of GPUs a single pipeline step may request.
    pub max_gpus_per_step: GpuLimits,
    /// The shortest allowed gap, in seconds, between two runs of a scheduled GPU pipeline.
    pub gpu_schedule_min_interval_seconds: u64,
    /// The most instances a matrix step may run per run (the format allows at most 64).
    pub max_matrix_instances: u32,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            allowed_registries: Vec::new(),
            max_gpus_per_step: GpuLimits::default(),
            gpu_schedule_min_interval_seconds: 900,
            max_matrix_instances: 64,
        }
    }
}

/// Per-step GPU limits: one default and optional overrides per pipeline owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpuLimits {
    /// The limit for owners without an override.
    pub default: u32,
    /// Limits for particular owners (the pipeline's `owner`), replacing the default.
    pub owners: BTreeMap<String, u32>,
}

impl Default for GpuLimits {
    fn default() -> Self {
        Self {
            default: 8,
            owners: BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_config_gets_the_documented_defaults() {
        let config: PolicyConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(config, PolicyConfig::default());
        assert!(config.allowed_registries.is_empty());
        assert_eq!(config.max_gpus_per_step.default, 8);
        assert_eq!(config.gpu_schedule_min_interval_seconds, 900);
    }

    #[test]
    fn a_partial_gpu_limit_keeps_the_default() {
        let config: PolicyConfig =
            serde_json::from_str(r#"{"max_gpus_per_step": {"owners": {"team-vision": 16}}}"#)
                .unwrap();
        assert_eq!(config.max_gpus_per_step.default, 8);
        assert_eq!(config.max_gpus_per_step.owners["team-vision"], 16);
    }

    #[test]
    fn unknown_config_fields_are_rejected() {
        let err = serde_json::from_str::<PolicyConfig>(r#"{"allowed_registry": []}"#).unwrap_err();
        assert!(err.to_string().contains("allowed_registry"), "{err}");
        let err = serde_json::from_str::<PolicyConfig>(r#"{"max_gpus_per_step": {"max": 2}}"#)
            .unwrap_err();
        assert!(err.to_string().contains("max"), "{err}");
    }
}
