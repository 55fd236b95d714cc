//! The typed form of what users write: `Pipeline` and `Schedule` documents and `trainyard.yaml`.
//!
//! These types only describe shape; every rule about values (names, references, cron, units)
//! lives in `check` so that it can point at the offending line.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

/// The only `apiVersion` this release reads.
pub const API_VERSION: &str = "trainyard.dev/v1";

/// One YAML document of the repository, by kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Document {
    /// A DAG of containerized steps.
    Pipeline(Arc<Pipeline>),
    /// A cron entry that starts a pipeline.
    Schedule(Arc<Schedule>),
}

impl Document {
    /// The document's `kind` as written in YAML.
    pub fn kind(&self) -> Kind {
        match self {
            Document::Pipeline(_) => Kind::Pipeline,
            Document::Schedule(_) => Kind::Schedule,
        }
    }

    /// The document's `metadata.name`.
    pub fn name(&self) -> &str {
        match self {
            Document::Pipeline(p) => &p.metadata.name,
            Document::Schedule(s) => &s.metadata.name,
        }
    }
}

/// The kinds of document Trainyard reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Kind {
    /// `kind: Pipeline`
    Pipeline,
    /// `kind: Schedule`
    Schedule,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Pipeline => "Pipeline",
            Kind::Schedule => "Schedule",
        })
    }
}

/// `kind: Pipeline`: metadata and spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// Name, owner and labels.
    pub metadata: Metadata,
    /// Steps, params, triggers and the model to register.
    pub spec: PipelineSpec,
}

/// `kind: Schedule`: metadata and spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Name and labels.
    pub metadata: Metadata,
    /// Which pipeline to start, when, and how ticks are handled.
    pub spec: ScheduleSpec,
}

/// Identity of a document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// `[a-z0-9-]`, 1 to 40 characters, unique per kind in the repository.
    pub name: String,
    /// The team that pays for the runs; policies and quotas key on it. Required on pipelines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Free text shown in plans and the UI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Free-form labels, copied onto runs and Kubernetes Jobs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// What a pipeline runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// Parameters that templates and schedules may set.
    #[serde(default)]
    pub params: BTreeMap<String, ParamSpec>,
    /// Default image for steps that name none.
    #[serde(default)]
    pub image: Option<String>,
    /// What starts a run besides schedules and manual requests.
    #[serde(default)]
    pub triggers: Triggers,
    /// The DAG of steps; order in the file does not matter, `needs` does.
    pub steps: Vec<Step>,
    /// Steps that run once the DAG has ended, whatever its outcome (succeeded, failed or
    /// cancelled), all at once and without `needs`; they may read `{{ run.state }}`.
    // Left out of the serialized form when empty so that the content version of every
    // pipeline written before this field existed stays the same.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finally: Vec<Step>,
    /// Register the result as a model version behind gates.
    #[serde(default)]
    pub model: Option<ModelSpec>,
    /// Reuse the outputs of an earlier attempt with the same cache key for every DAG step
    /// that does not set `cache` itself (see [`Step::cache`]).
    // The cache fields are left out of the serialized form when unset, for the same reason
    // as `finally`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cache: bool,
    /// How old a reused attempt may be, such as `7d`; unset: any age.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_max_age: Option<String>,
    /// Part of every cache key: change it to stop reusing what the steps made before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_version: Option<String>,
}

/// How one step is cached: the pipeline's settings with the step's own over them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachePolicy<'a> {
    /// How old a reused attempt may be (a duration as written), if bounded.
    pub max_age: Option<&'a str>,
    /// The user's cache version, part of the key.
    pub version: &'a str,
}

impl PipelineSpec {
    /// The DAG's steps, then the finally steps.
    pub fn all_steps(&self) -> impl Iterator<Item = &Step> {
        self.steps.iter().chain(&self.finally)
    }

    /// The step named `name`, of the DAG or finally; an instance's name (`train.3`) names
    /// its matrix step.
    pub fn step(&self, name: &str) -> Option<&Step> {
        let (name, _) = instance_of(name);
        self.all_steps().find(|s| s.name == name)
    }

    /// How `step` is cached, or `None` when it is not: a step's `cache` decides, else the
    /// pipeline's; finally steps never are (they report how a run ended).
    pub fn cache_of<'a>(&'a self, step: &'a Step) -> Option<CachePolicy<'a>> {
        let finally = self.finally.iter().any(|f| f.name == step.name);
        if finally || !step.cache.unwrap_or(self.cache) {
            return None;
        }
        Some(CachePolicy {
            max_age: step
                .cache_max_age
                .as_deref()
                .or(self.cache_max_age.as_deref()),
            version: step
                .cache_version
                .as_deref()
                .or(self.cache_version.as_deref())
                .unwrap_or_default(),
        })
    }
}

/// A declared parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    /// The value's type.
    #[serde(rename = "type")]
    pub ty: ParamType,
    /// Used when neither the schedule nor the caller sets the parameter; without it the
    /// parameter is required.
    #[serde(default)]
    pub default: Option<serde_json::Value>,
    /// Shown in plans and in `trainyard run --help`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Types a parameter can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    /// A whole number.
    Int,
    /// A number; whole numbers are accepted too.
    Float,
    /// Any text.
    String,
    /// `true` or `false`.
    Bool,
}

impl ParamType {
    /// Whether a YAML value is acceptable for this type.
    pub fn accepts(self, value: &serde_json::Value) -> bool {
        match self {
            ParamType::Int => value.is_i64() || value.is_u64(),
            ParamType::Float => value.is_number(),
            ParamType::String => value.is_string(),
            ParamType::Bool => value.is_boolean(),
        }
    }
}

impl fmt::Display for ParamType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ParamType::Int => "int",
            ParamType::Float => "float",
            ParamType::String => "string",
            ParamType::Bool => "bool",
        })
    }
}

/// Events that start a run of the pipeline.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Triggers {
    /// Run once for each commit on the tracked branch that changes this pipeline.
    #[serde(default)]
    pub on_change: bool,
}

/// One containerized step of the DAG.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// `[a-z0-9-]`, 1 to 40 characters, unique in the pipeline.
    pub name: String,
    /// Overrides the pipeline's image.
    #[serde(default)]
    pub image: Option<String>,
    /// Steps that must succeed before this one starts.
    #[serde(default)]
    pub needs: Vec<String>,
    /// The command as an argv list; never passed through a shell.
    #[serde(deserialize_with = "argv")]
    #[schemars(with = "Vec<String>")]
    pub run: Vec<String>,
    /// Files this step writes; each becomes an artifact.
    #[serde(default)]
    pub outputs: Vec<String>,
    /// Environment variables; values may use templates.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Kubernetes Secrets whose keys become environment variables (names only).
    #[serde(default)]
    pub env_from_secrets: Vec<String>,
    /// CPU, memory and GPUs.
    #[serde(default)]
    pub resources: Option<Resources>,
    /// How many times a failed attempt is retried.
    #[serde(default)]
    pub retries: u32,
    /// Wall-clock limit of one attempt, such as `30m` or `4h`.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Whether a new attempt may reuse the outputs of an earlier succeeded one with the same
    /// cache key (image, rendered command and env, secret names, the files of the step's
    /// folder at the run's commit, the sha256 of its inputs, outputs and `cache_version`) instead of
    /// running; unset: the pipeline's `cache`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<bool>,
    /// How old a reused attempt may be, such as `7d`; unset: the pipeline's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_max_age: Option<String>,
    /// Part of the cache key; unset: the pipeline's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_version: Option<String>,
    /// Run the step once per combination of these values (`{lr: [0.1, 0.01], seed: [1, 2]}`
    /// runs four instances), each reading its own as `{{ matrix.NAME }}`, with its own
    /// attempts and retries. Steps that need it start once every instance succeeded, and
    /// read each of its outputs as a directory: one file per instance and `index.json`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(with = "BTreeMap<String, Vec<serde_json::Value>>")]
    pub matrix: BTreeMap<String, Vec<serde_json::Value>>,
    /// How many instances of a matrix step run at once; unset: as many as the service runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u32>,
}

impl Step {
    /// How many instances the step runs: the product of its matrix axes' lengths, 1 without
    /// a matrix.
    pub fn instances(&self) -> usize {
        self.matrix
            .values()
            .fold(1usize, |n, values| n.saturating_mul(values.len()))
    }

    /// The values of instance `index`: axes in name order, the last one varying fastest.
    pub fn combination(&self, index: usize) -> BTreeMap<String, serde_json::Value> {
        let mut rest = index;
        let mut values = BTreeMap::new();
        for (axis, options) in self.matrix.iter().rev() {
            let len = options.len().max(1);
            if let Some(value) = options.get(rest % len) {
                values.insert(axis.clone(), value.clone());
            }
            rest /= len;
        }
        values
    }

    /// The names its instances have in a run: the step's own without a matrix, else
    /// `STEP.0`, `STEP.1`, ... (a step name has no `.`, so these name nothing else).
    pub fn instance_names(&self) -> Vec<String> {
        if self.matrix.is_empty() {
            return vec![self.name.clone()];
        }
        (0..self.instances())
            .map(|i| format!("{}.{i}", self.name))
            .collect()
    }
}

/// The step a run's step row belongs to, and which instance it is: `train.3` → (`train`,
/// Some(3)), `train` → (`train`, None).
pub fn instance_of(name: &str) -> (&str, Option<usize>) {
    match name.split_once('.') {
        Some((step, index)) => (step, index.parse().ok()),
        None => (name, None),
    }
}

/// What a step asks of the machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Kubernetes CPU quantity, such as `500m` or `8`.
    #[serde(default)]
    pub cpu: Option<String>,
    /// Kubernetes memory quantity, such as `512Mi` or `64Gi`.
    #[serde(default)]
    pub memory: Option<String>,
    /// Whole GPUs.
    #[serde(default)]
    pub gpu: u32,
    /// A GPU type configured on the service (such as `h100`); needs `gpu` > 0.
    #[serde(default)]
    pub gpu_type: Option<String>,
}

/// The `model:` block: which artifact to register, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Registered model name, `[a-z0-9-]`.
    pub name: String,
    /// `steps.<step>.outputs.<output>` holding the model.
    pub artifact: String,
    /// `steps.<step>.outputs.<output>` holding a JSON object of numbers.
    #[serde(default)]
    pub metrics: Option<String>,
    /// Every gate must pass for the version to be accepted.
    #[serde(default)]
    pub gate: Vec<Gate>,
    /// Alias moved to the new version when it passes its gates.
    #[serde(default)]
    pub promote: Option<String>,
    /// For a model made by a matrix step: which instance's model is gated and registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select: Option<Select>,
}

/// Picks the best instance of a matrix step by one of its metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Select {
    /// A metric every instance writes to the model's `metrics` file.
    pub metric: String,
    /// Whether a larger value is better (accuracy) or a smaller one (loss).
    #[serde(default = "larger_is_better")]
    pub greater_is_better: bool,
}

fn larger_is_better() -> bool {
    true
}

/// One condition on a metric; exactly one bound is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Gate {
    /// Key of the metrics JSON object.
    pub metric: String,
    /// The metric must be at least this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// The metric must be at most this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// The metric must not be worse than the version behind this alias.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_worse_than: Option<String>,
    /// Whether a higher value is better, for not_worse_than; false for losses.
    // Left out of the serialized form at its default so that the content version of every
    // pipeline written before this field existed stays the same.
    #[serde(default = "higher_is_better", skip_serializing_if = "is_true")]
    pub greater_is_better: bool,
}

fn higher_is_better() -> bool {
    true
}

fn is_true(value: &bool) -> bool {
    *value
}

/// When and how a pipeline is started on a clock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Name of the pipeline to start.
    pub pipeline: String,
    /// 5 fields, 6 with seconds first, or `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`.
    pub cron: String,
    /// IANA time zone the cron is read in.
    #[serde(default = "utc")]
    pub timezone: String,
    /// Parameter values for the runs; they override the pipeline's defaults.
    #[serde(default)]
    pub params: BTreeMap<String, serde_json::Value>,
    /// What to do when a tick comes while a run of this schedule is active.
    #[serde(default)]
    pub concurrency: Concurrency,
    /// Which missed ticks to run after downtime.
    #[serde(default)]
    pub catchup: Catchup,
    /// Upper bound on ticks replayed by `catchup: all`.
    #[serde(default = "default_max_catchup")]
    pub max_catchup: u32,
    /// A tick that cannot start within this delay is recorded as missed.
    #[serde(default)]
    pub starting_deadline: Option<String>,
    /// Stop firing after this many failed runs in a row.
    #[serde(default)]
    pub pause_after_failures: Option<u32>,
    /// No ticks while set; re-enabling does not replay the suspended period.
    #[serde(default)]
    pub suspend: bool,
}

fn utc() -> String {
    "UTC".to_owned()
}

fn default_max_catchup() -> u32 {
    10
}

/// Overlap policy of a schedule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Concurrency {
    /// Start the new run alongside the active one.
    Allow,
    /// Skip the tick while a run is active.
    #[default]
    Forbid,
    /// Cancel the active run and start the new one.
    Replace,
}

/// Catch-up policy of a schedule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Catchup {
    /// Missed ticks are recorded as missed.
    None,
    /// Only the most recent missed tick runs.
    #[default]
    Latest,
    /// Every missed tick runs, up to `max_catchup`.
    All,
}

/// `trainyard.yaml` at the root of the tracked path: repository-wide settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Image for steps whose pipeline and step name none.
    #[serde(default)]
    pub image: Option<String>,
    /// Extra Rego files of this repository, relative to the tracked path.
    #[serde(default)]
    pub policies: Vec<String>,
    /// Accept a commit that removes every schedule.
    #[serde(default)]
    pub allow_empty: bool,
    /// Timeout of steps that set none; bounds GPU-hours in plans.
    #[serde(default)]
    pub default_timeout: Option<String>,
    /// Who may start preview runs from pull requests.
    #[serde(default)]
    pub previews: Previews,
}

/// Preview runs asked for in pull-request comments. Read from the base branch's
/// `trainyard.yaml` only: a pull request cannot widen who may run its own code.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Previews {
    /// Maintainers (forge user names) who may start a preview of a pull request from a
    /// fork; without any, nothing from a fork runs.
    #[serde(default)]
    pub fork_approvers: Vec<String>,
}

/// A document as read, before its `kind` is known to be valid.
///
/// Written by hand rather than derived because serde's internally tagged enums buffer the
/// whole document, which would lose the line and column of errors inside `spec`.
#[derive(Debug)]
pub(crate) struct RawDocument {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub document: Option<Document>,
}

const DOCUMENT_FIELDS: &[&str] = &["apiVersion", "kind", "metadata", "spec"];

impl<'de> Deserialize<'de> for RawDocument {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(RawDocumentVisitor)
    }
}

struct RawDocumentVisitor;

enum PendingSpec {
    Pipeline(PipelineSpec),
    Schedule(ScheduleSpec),
    /// `spec` came before `kind`; kept untyped until the kind is known.
    Untyped(serde_json::Value),
}

impl<'de> Visitor<'de> for RawDocumentVisitor {
    type Value = RawDocument;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Trainyard document with apiVersion, kind, metadata and spec")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawDocument, A::Error> {
        let mut api_version: Option<String> = None;
        let mut kind: Option<String> = None;
        let mut metadata: Option<Metadata> = None;
        let mut spec: Option<PendingSpec> = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "apiVersion" => api_version = Some(map.next_value()?),
                "kind" => kind = Some(map.next_value()?),
                "metadata" => metadata = Some(map.next_value()?),
                "spec" => {
                    spec = Some(match kind.as_deref() {
                        Some("Pipeline") => PendingSpec::Pipeline(map.next_value()?),
                        Some("Schedule") => PendingSpec::Schedule(map.next_value()?),
                        _ => PendingSpec::Untyped(map.next_value()?),
                    })
                }
                other => return Err(de::Error::unknown_field(other, DOCUMENT_FIELDS)),
            }
        }
        let known_kind = matches!(kind.as_deref(), Some("Pipeline" | "Schedule"));
        if !known_kind {
            return Ok(RawDocument {
                api_version,
                kind,
                document: None,
            });
        }
        let metadata = metadata.ok_or_else(|| de::Error::missing_field("metadata"))?;
        let spec = spec.ok_or_else(|| de::Error::missing_field("spec"))?;
        let document = match (kind.as_deref(), spec) {
            (_, PendingSpec::Pipeline(spec)) => {
                Document::Pipeline(Arc::new(Pipeline { metadata, spec }))
            }
            (_, PendingSpec::Schedule(spec)) => {
                Document::Schedule(Arc::new(Schedule { metadata, spec }))
            }
            (Some("Pipeline"), PendingSpec::Untyped(value)) => {
                Document::Pipeline(Arc::new(Pipeline {
                    metadata,
                    spec: serde_json::from_value(value)
                        .map_err(|e| de::Error::custom(format!("spec: {e}")))?,
                }))
            }
            (_, PendingSpec::Untyped(value)) => Document::Schedule(Arc::new(Schedule {
                metadata,
                spec: serde_json::from_value(value)
                    .map_err(|e| de::Error::custom(format!("spec: {e}")))?,
            })),
        };
        Ok(RawDocument {
            api_version,
            kind,
            document: Some(document),
        })
    }
}

/// Reads `run:` as an argv list of scalars, refusing a shell string with a useful message.
fn argv<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    struct ArgvVisitor;
    impl<'de> Visitor<'de> for ArgvVisitor {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an argv list such as [python3, train.py, --epochs, \"3\"]")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Err(E::custom(format!(
                "`run` must be an argv list, not the string {v:?}: Trainyard never runs a shell; \
                 write it as [{}]",
                v.split_whitespace().collect::<Vec<_>>().join(", ")
            )))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut argv = Vec::new();
            while let Some(arg) = seq.next_element::<String>()? {
                argv.push(arg);
            }
            Ok(argv)
        }
    }
    deserializer.deserialize_any(ArgvVisitor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<RawDocument, serde_saphyr::Error> {
        serde_saphyr::from_str(yaml)
    }

    #[test]
    fn a_pipeline_document_reads_into_typed_fields() {
        let doc = parse(
            "apiVersion: trainyard.dev/v1\nkind: Pipeline\nmetadata: {name: a, owner: t}\n\
             spec:\n  steps:\n    - {name: s, run: [python3, x.py, 3], resources: {cpu: 8}}\n",
        )
        .expect("parses");
        let Some(Document::Pipeline(p)) = doc.document else {
            panic!("expected a pipeline, got {doc:?}");
        };
        assert_eq!(p.spec.steps[0].run, ["python3", "x.py", "3"]);
        let cpu = p.spec.steps[0]
            .resources
            .as_ref()
            .and_then(|r| r.cpu.clone());
        assert_eq!(cpu.as_deref(), Some("8"));
    }

    #[test]
    fn spec_before_kind_still_reads() {
        let doc = parse(
            "spec: {pipeline: a, cron: '@daily'}\nmetadata: {name: n}\nkind: Schedule\n\
             apiVersion: trainyard.dev/v1\n",
        )
        .expect("parses");
        let Some(Document::Schedule(s)) = doc.document else {
            panic!("expected a schedule, got {doc:?}");
        };
        assert_eq!(s.spec.timezone, "UTC");
        assert_eq!(s.spec.max_catchup, 10);
    }

    #[test]
    fn unknown_fields_are_errors_with_a_location() {
        let err = parse(
            "apiVersion: trainyard.dev/v1\nkind: Pipeline\nmetadata: {name: a}\nspec:\n  stepz: []\n",
        )
        .expect_err("stepz is a typo");
        let loc = err.location().expect("has a location");
        assert_eq!((loc.line(), loc.column()), (5, 3));
        assert!(err.to_string().contains("stepz"), "{err}");
    }

    #[test]
    fn a_gate_reads_higher_is_better_by_default_and_serializes_as_before() {
        let gate: Gate =
            serde_saphyr::from_str("{metric: auc, not_worse_than: champion}").expect("parses");
        assert!(gate.greater_is_better);
        assert_eq!(
            serde_json::to_string(&gate).expect("serializes"),
            r#"{"metric":"auc","not_worse_than":"champion"}"#
        );
        let loss: Gate = serde_saphyr::from_str(
            "{metric: loss, not_worse_than: champion, greater_is_better: false}",
        )
        .expect("parses");
        assert!(!loss.greater_is_better);
        assert!(
            serde_json::to_string(&loss)
                .expect("serializes")
                .contains(r#""greater_is_better":false"#)
        );
    }

    #[test]
    fn a_shell_string_in_run_is_refused_with_the_argv_form() {
        let err = parse(
            "apiVersion: trainyard.dev/v1\nkind: Pipeline\nmetadata: {name: a}\n\
             spec: {steps: [{name: s, run: python3 train.py}]}\n",
        )
        .expect_err("run must be a list");
        assert!(err.to_string().contains("[python3, train.py]"), "{err}");
    }
}
