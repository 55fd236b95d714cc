//! The cluster settings file: where and how step Jobs run (namespace, images, GPU types,
//! queues, limits on the API), read from YAML with errors that point at file:line:col.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::{Deserialize, Deserializer};

use crate::spec::units::parse_duration;

/// What can go wrong reading a settings file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not valid settings.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the problem (0 when the parser gave none).
        line: u64,
        /// 1-based column of the problem.
        column: u64,
        /// What is wrong.
        message: String,
    },
}

/// How the service runs steps on a cluster.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// The namespace the step Jobs are created and watched in.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The Trainyard image; its `/usr/local/bin/trainyard` is copied into every step pod.
    pub image: String,
    /// Per `gpu_type` a step may name: where such GPUs are (node selector, tolerations).
    #[serde(default)]
    pub gpu_types: BTreeMap<String, GpuType>,
    /// The Kueue LocalQueue of steps that ask for no GPU type, and of GPU types that name no
    /// queue of their own: their Jobs are created suspended with
    /// `kueue.x-k8s.io/queue-name`, and Kueue admits them within the queue's quota. None:
    /// such steps start at once.
    #[serde(default)]
    pub queue: Option<String>,
    /// Requests and limits of the init container that installs the launcher (a namespace
    /// with a compute ResourceQuota admits only pods whose every container sets them).
    #[serde(default = "default_init_resources")]
    pub init_resources: ResourceRequirements,
    /// A PriorityClass for step pods.
    #[serde(default)]
    pub priority_class: Option<String>,
    /// How long finished Jobs (and their pods and logs) stay on the cluster.
    #[serde(default = "default_ttl")]
    pub ttl_seconds_after_finished: i32,
    /// Secrets whose keys every step gets as environment variables (for example the object
    /// store's credentials); names only.
    #[serde(default)]
    pub env_from_secrets: Vec<String>,
    /// The ServiceAccount step pods run as; its token is not mounted.
    #[serde(default)]
    pub service_account: Option<String>,
    /// How long a step's program gets after SIGTERM (on cancel, or a deadline) to stop
    /// before it is killed; none means Kubernetes' default of 30 seconds.
    #[serde(default)]
    pub termination_grace_period_seconds: Option<i64>,
    /// The user id steps run as (never root).
    #[serde(default = "default_run_as_user")]
    pub run_as_user: i64,
    /// Size limit of the in-memory `/dev/shm` of GPU steps, as a quantity (`16Gi`); none
    /// means the node's default (half its memory).
    #[serde(default)]
    pub shm_size: Option<String>,
    /// How long a pod may wait on an image that cannot be pulled, a missing secret or a
    /// node that can take it before the attempt is failed with that reason (`10m`).
    #[serde(
        default = "default_pending_timeout",
        deserialize_with = "duration_text"
    )]
    pub pending_timeout: Duration,
    /// Sustained API requests per second this service makes.
    #[serde(default = "default_api_qps")]
    pub api_qps: f64,
    /// Requests that may be made at once above the sustained rate.
    #[serde(default = "default_api_burst")]
    pub api_burst: u32,
}

/// Where steps of one GPU type run.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuType {
    /// Node labels that select nodes with these GPUs
    /// (`nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3`).
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// Taints of those nodes that step pods tolerate, as Kubernetes writes tolerations.
    #[serde(default)]
    pub tolerations: Vec<Toleration>,
    /// The Kueue LocalQueue of steps that ask for these GPUs (instead of `queue`).
    #[serde(default)]
    pub queue: Option<String>,
}

fn default_namespace() -> String {
    "default".to_owned()
}

fn default_ttl() -> i32 {
    3600
}

fn default_run_as_user() -> i64 {
    1000
}

fn default_pending_timeout() -> Duration {
    Duration::from_secs(600)
}

/// A few hundred requests a second sustained: a thousand Jobs of one busy second go out in
/// a few seconds, and the API server's Priority and Fairness (which answers 429 with
/// Retry-After when a flow exceeds its share) is what paces a shared cluster, not a
/// guess made here.
fn default_api_qps() -> f64 {
    200.0
}

/// About a thousand at once: the burst of a thousand schedules due in the same second.
fn default_api_burst() -> u32 {
    1000
}

/// Enough to copy a binary of some tens of MiB (the page cache counts against the limit).
fn default_init_resources() -> ResourceRequirements {
    let amounts = |cpu: &str, memory: &str| {
        BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.to_owned())),
            ("memory".to_owned(), Quantity(memory.to_owned())),
        ])
    };
    ResourceRequirements {
        requests: Some(amounts("100m", "64Mi")),
        limits: Some(amounts("1", "256Mi")),
        ..ResourceRequirements::default()
    }
}

fn duration_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

impl ClusterSettings {
    /// Settings with every default, for `image`.
    pub fn new(image: impl Into<String>) -> Self {
        ClusterSettings {
            namespace: default_namespace(),
            image: image.into(),
            gpu_types: BTreeMap::new(),
            queue: None,
            init_resources: default_init_resources(),
            priority_class: None,
            ttl_seconds_after_finished: default_ttl(),
            env_from_secrets: Vec::new(),
            service_account: None,
            termination_grace_period_seconds: None,
            run_as_user: default_run_as_user(),
            shm_size: None,
            pending_timeout: default_pending_timeout(),
            api_qps: default_api_qps(),
            api_burst: default_api_burst(),
        }
    }

    /// Reads settings from the YAML file at `path`.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses settings from YAML `text`; `path` only names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, Error> {
        let settings: ClusterSettings = serde_saphyr::from_str(text).map_err(|error| {
            let error = error.without_snippet();
            let (line, column) = error
                .location()
                .map_or((0, 0), |loc| (loc.line(), loc.column().max(1)));
            let mut message = error.to_string();
            // The position goes into the prefix; keep the message a plain sentence.
            if let Some(cut) = message.find(" at line ") {
                message.truncate(cut);
            }
            Error::Invalid {
                path: path.to_owned(),
                line,
                column,
                message,
            }
        })?;
        let invalid = |message: String| Error::Invalid {
            path: path.to_owned(),
            line: 0,
            column: 0,
            message,
        };
        if !(settings.api_qps > 0.0 && settings.api_qps.is_finite()) || settings.api_burst == 0 {
            return Err(invalid(
                "api_qps and api_burst must be greater than 0".to_owned(),
            ));
        }
        if settings.ttl_seconds_after_finished < 0 {
            return Err(invalid(
                "ttl_seconds_after_finished must not be negative".to_owned(),
            ));
        }
        if settings.run_as_user <= 0 {
            return Err(invalid(
                "run_as_user must be a user other than root (greater than 0)".to_owned(),
            ));
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ClusterSettings, Error> {
        ClusterSettings::parse(text, Path::new("cluster.yaml"))
    }

    #[test]
    fn a_minimal_file_takes_the_defaults() {
        let settings = parse("image: ghcr.io/acme/trainyard:1.0\n").expect("valid");
        assert_eq!(settings, ClusterSettings::new("ghcr.io/acme/trainyard:1.0"));
        assert_eq!(settings.ttl_seconds_after_finished, 3600);
        assert_eq!(settings.run_as_user, 1000);
        assert_eq!(settings.pending_timeout, Duration::from_secs(600));
        assert_eq!((settings.api_qps, settings.api_burst), (200.0, 1000));
    }

    #[test]
    fn the_init_containers_resources_and_per_gpu_queues_are_read() {
        let settings = parse(
            "image: t\ninit_resources:\n  requests: {cpu: 50m, memory: 32Mi}\n  limits: {cpu: 200m, memory: 128Mi}\ngpu_types:\n  h100: {queue: gpu}\n",
        )
        .expect("valid");
        let limits = settings.init_resources.limits.expect("limits");
        assert_eq!(limits["cpu"].0, "200m");
        assert_eq!(limits["memory"].0, "128Mi");
        assert_eq!(settings.gpu_types["h100"].queue.as_deref(), Some("gpu"));
        assert_eq!(settings.queue, None);
    }

    #[test]
    fn gpu_types_read_kubernetes_tolerations() {
        let settings = parse(
            "image: t\nnamespace: ml\npending_timeout: 90s\nqueue: gpu\ngpu_types:\n  h100:\n    node_selector: {nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3}\n    tolerations:\n      - {key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}\n",
        )
        .expect("valid");
        assert_eq!(settings.namespace, "ml");
        assert_eq!(settings.pending_timeout, Duration::from_secs(90));
        assert_eq!(settings.queue.as_deref(), Some("gpu"));
        let h100 = &settings.gpu_types["h100"];
        assert_eq!(
            h100.node_selector["nvidia.com/gpu.product"],
            "NVIDIA-H100-80GB-HBM3"
        );
        assert_eq!(h100.tolerations[0].operator.as_deref(), Some("Exists"));
        assert_eq!(h100.tolerations[0].effect.as_deref(), Some("NoSchedule"));
    }

    #[test]
    fn an_unknown_field_is_named_with_its_line_and_column() {
        let error = parse("image: t\nnamespce: ml\n").expect_err("unknown field");
        let text = error.to_string();
        assert!(text.starts_with("cluster.yaml:2:1: "), "{text}");
        assert!(text.contains("namespce"), "{text}");
    }

    #[test]
    fn a_missing_image_and_a_bad_duration_are_refused() {
        let missing = parse("namespace: ml\n").expect_err("image is required");
        assert!(missing.to_string().contains("image"), "{missing}");
        let duration = parse("image: t\npending_timeout: soon\n").expect_err("bad duration");
        assert!(
            duration.to_string().starts_with("cluster.yaml:2:"),
            "{duration}"
        );
    }

    #[test]
    fn root_and_a_zero_rate_are_refused() {
        assert!(parse("image: t\nrun_as_user: 0\n").is_err());
        assert!(parse("image: t\napi_qps: 0\n").is_err());
    }
}
