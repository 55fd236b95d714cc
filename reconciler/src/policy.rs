//! Policy checks of a catalog: builds the Rego input (documents plus derived facts such as
//! GPU counts and cron intervals), evaluates the platform and repository rules, and turns
//! violations into findings at the offending field.
//!
//! Verdicts are cached per document version, so a one-file change evaluates one document.
//! Their keys name the rules and settings they were made under (the scope), so verdicts
//! kept across restarts are trusted only under the same rules.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use thiserror::Error;
use trainyard_policies::{Evaluator, PolicyConfig, Severity as PolicySeverity, Violation};

use crate::spec::catalog::{DocumentKey, FileFindings};
use crate::spec::cron::{CronSchedule, parse_timezone};
use crate::spec::{Catalog, Entry, Finding, Kind, Pipeline, Schedule, Settings};

/// Documents evaluated in one call: bounds the memory of the Rego input.
const CHUNK: usize = 500;
/// Fire times sampled to find a schedule's shortest interval.
const INTERVAL_SAMPLES: usize = 16;

/// Errors evaluating policies.
#[derive(Debug, Error)]
pub enum PolicyError {
    /// The platform bundle or a rule failed to evaluate.
    #[error("policy evaluation failed: {0}")]
    Evaluation(#[from] trainyard_policies::Error),
}

/// A repository's own Rego file, as read from the snapshot.
pub struct RepoPolicy {
    /// Path relative to the tracked directory.
    pub path: String,
    /// Blob id, so the evaluator is rebuilt only when a rule changes.
    pub blob: String,
    /// Rego source.
    pub source: String,
}

/// Violations by verdict cache key.
type Verdicts = Vec<(String, Vec<Violation>)>;

/// A document waiting for its verdict.
#[derive(Clone, Copy)]
enum Pending<'c> {
    Pipeline(&'c Entry<Pipeline>),
    Schedule(&'c Entry<Schedule>, Option<&'c Entry<Pipeline>>),
}

/// Evaluates policies, remembering verdicts per document version.
pub struct PolicyEngine {
    config: PolicyConfig,
    evaluator: Evaluator,
    repo_policies: Vec<(String, String)>,
    /// Findings of the repository rules that did not load, repeated while they are current.
    load_findings: FileFindings,
    /// Repository settings the verdicts were made with (the default image feeds the rules).
    settings: Option<Settings>,
    /// Digest of the configuration, repository rules and settings: the first part of every
    /// verdict key.
    scope: String,
    verdicts: HashMap<String, Arc<[Violation]>>,
    /// Verdicts kept from an earlier life of the service, consulted before evaluating.
    kept: HashMap<String, Arc<[Violation]>>,
    /// Verdicts evaluated since [`PolicyEngine::take_fresh`] was last called.
    fresh: Vec<(String, Arc<[Violation]>)>,
}

impl PolicyEngine {
    /// An engine with the platform rules and `config` (allowed registries, GPU limits).
    pub fn new(config: PolicyConfig) -> Result<Self, PolicyError> {
        let evaluator = Evaluator::new(&config)?;
        let mut engine = PolicyEngine {
            config,
            evaluator,
            repo_policies: Vec::new(),
            load_findings: Vec::new(),
            settings: None,
            scope: String::new(),
            verdicts: HashMap::new(),
            kept: HashMap::new(),
            fresh: Vec::new(),
        };
        engine.rescope();
        Ok(engine)
    }

    /// Recomputes the scope after the rules or settings changed, forgetting verdicts made
    /// under another.
    fn rescope(&mut self) {
        let identity = serde_json::to_vec(&(&self.config, &self.repo_policies, &self.settings))
            .unwrap_or_default();
        let digest = Sha256::digest(identity);
        self.scope = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let scope = &self.scope;
        self.verdicts
            .retain(|key, _| key.starts_with(scope.as_str()));
    }

    /// Verdicts from an earlier life of the service (their keys carry the scope they were
    /// made under, so only those of the current rules and settings are ever used).
    pub fn keep(&mut self, verdicts: HashMap<String, Arc<[Violation]>>) {
        self.kept = verdicts;
    }

    /// The verdicts evaluated since the last call, to be kept for a later life.
    pub fn take_fresh(&mut self) -> Vec<(String, Arc<[Violation]>)> {
        std::mem::take(&mut self.fresh)
    }

    /// Every verdict of the current scope, by key.
    pub fn verdicts(&self) -> impl ExactSizeIterator<Item = (&String, &Arc<[Violation]>)> {
        self.verdicts.iter()
    }

    /// Loads the repository's rules, rebuilding the evaluator only when they changed.
    /// A rule file that does not load becomes a finding on that file.
    pub fn load(&mut self, policies: &[RepoPolicy]) -> Result<FileFindings, PolicyError> {
        let wanted: Vec<(String, String)> = policies
            .iter()
            .map(|p| (p.path.clone(), p.blob.clone()))
            .collect();
        if wanted == self.repo_policies {
            return Ok(self.load_findings.clone());
        }
        let mut evaluator = Evaluator::new(&self.config)?;
        let mut findings = Vec::new();
        for policy in policies {
            if let Err(error) = evaluator.add_repo_policy(&policy.path, &policy.source) {
                findings.push((
                    Arc::from(policy.path.as_str()),
                    Finding::file_error("policy-load", error.to_string()),
                ));
            }
        }
        self.evaluator = evaluator;
        self.repo_policies = wanted;
        self.load_findings = findings.clone();
        self.rescope();
        Ok(findings)
    }

    /// Evaluates the documents `keys` of `catalog` (keys without a document are skipped) and
    /// returns each one's findings. Verdicts are remembered by document version.
    pub fn check(
        &mut self,
        catalog: &Catalog,
        keys: &BTreeSet<DocumentKey>,
        now: DateTime<Utc>,
    ) -> Result<HashMap<DocumentKey, FileFindings>, PolicyError> {
        let settings = &catalog.settings;
        if self.settings.as_ref() != Some(settings) {
            self.settings = Some(settings.clone());
            self.rescope();
        }
        let scope = &self.scope;
        let documents: Vec<(DocumentKey, String, Pending<'_>)> = keys
            .iter()
            .filter_map(|key| match key.0 {
                Kind::Pipeline => {
                    let entry = catalog.pipelines.get(&key.1)?;
                    Some((
                        key.clone(),
                        pipeline_key(scope, entry),
                        Pending::Pipeline(entry),
                    ))
                }
                Kind::Schedule => {
                    let entry = catalog.schedules.get(&key.1)?;
                    let target = catalog.pipelines.get(entry.value.spec.pipeline.as_str());
                    Some((
                        key.clone(),
                        schedule_key(scope, entry, target),
                        Pending::Schedule(entry, target),
                    ))
                }
            })
            .collect();
        // Documents without a verdict; their Rego input is built one chunk at a time so that
        // memory stays bounded however large the catalog is.
        let mut todo: Vec<(String, Pending<'_>)> = Vec::new();
        for (_, cache_key, pending) in &documents {
            if self.verdicts.contains_key(cache_key) {
                continue;
            }
            match self.kept.remove(cache_key) {
                Some(kept) => {
                    self.verdicts.insert(cache_key.clone(), kept);
                }
                None => todo.push((cache_key.clone(), *pending)),
            }
        }
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per_worker = todo.len().div_ceil(workers).max(CHUNK);
        let verdicts: Vec<Result<Verdicts, PolicyError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = todo
                .chunks(per_worker)
                .map(|part| {
                    let mut evaluator = self.evaluator.clone();
                    scope.spawn(move || evaluate_part(&mut evaluator, part, settings, now))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        });
        for part in verdicts {
            for (key, violations) in part? {
                let violations: Arc<[Violation]> = violations.into();
                self.fresh.push((key.clone(), violations.clone()));
                self.verdicts.insert(key, violations);
            }
        }
        let mut findings = HashMap::new();
        for (key, cache_key, pending) in &documents {
            let Some(violations) = self.verdicts.get(cache_key) else {
                continue;
            };
            if violations.is_empty() {
                continue;
            }
            let (file, line) = match pending {
                Pending::Pipeline(entry) => (&entry.file, entry.line),
                Pending::Schedule(entry, _) => (&entry.file, entry.line),
            };
            let list: FileFindings = violations
                .iter()
                .map(|v| (file.clone(), finding(v, line)))
                .collect();
            findings.insert(key.clone(), list);
        }
        Ok(findings)
    }
}

/// Evaluates `part` a chunk at a time and returns each document's violations by cache key.
fn evaluate_part(
    evaluator: &mut Evaluator,
    part: &[(String, Pending<'_>)],
    settings: &Settings,
    now: DateTime<Utc>,
) -> Result<Verdicts, PolicyError> {
    let mut verdicts = Vec::with_capacity(part.len());
    for chunk in part.chunks(CHUNK) {
        let (mut pipelines, mut schedules) = (Vec::new(), Vec::new());
        let mut by_document: HashMap<(Kind, &str), usize> = HashMap::new();
        for (key, pending) in chunk {
            let (kind, name) = match pending {
                Pending::Pipeline(entry) => {
                    pipelines.push(pipeline_input(entry, settings));
                    (Kind::Pipeline, entry.value.metadata.name.as_str())
                }
                Pending::Schedule(entry, target) => {
                    schedules.push(schedule_input(entry, *target, settings, now));
                    (Kind::Schedule, entry.value.metadata.name.as_str())
                }
            };
            by_document.insert((kind, name), verdicts.len());
            verdicts.push((key.clone(), Vec::new()));
        }
        // Moved in, not serialized by reference as `json!` would: no second copy of the
        // chunk's documents.
        let input = Value::Object(serde_json::Map::from_iter([
            ("pipelines".to_owned(), Value::Array(pipelines)),
            ("schedules".to_owned(), Value::Array(schedules)),
        ]));
        for violation in evaluator.evaluate(&input)? {
            let kind = if violation.kind == "Pipeline" {
                Kind::Pipeline
            } else {
                Kind::Schedule
            };
            if let Some(&i) = by_document.get(&(kind, violation.name.as_str())) {
                verdicts[i].1.push(violation);
            }
        }
    }
    Ok(verdicts)
}

/// The verdict cache key of a pipeline: its version, under `scope`.
fn pipeline_key(scope: &str, entry: &Entry<Pipeline>) -> String {
    format!("{scope}:p:{}", entry.version)
}

/// A schedule's verdict depends on its pipeline too (GPU schedules fire less often).
fn schedule_key(scope: &str, entry: &Entry<Schedule>, target: Option<&Entry<Pipeline>>) -> String {
    format!(
        "{scope}:s:{}:{}",
        entry.version,
        target.map_or("", |p| p.version.as_ref())
    )
}

fn finding(violation: &Violation, line: u32) -> Finding {
    let f = Finding::error(
        &format!("policy/{}", violation.rule),
        line,
        violation.field.clone().unwrap_or_default(),
        violation.message.clone(),
    );
    match violation.severity {
        PolicySeverity::Deny => f,
        PolicySeverity::Warn => f.warning(),
    }
}

/// The Rego input for one pipeline: its document and facts derived from it. Public so the
/// fuzz targets can build it from arbitrary documents.
pub fn pipeline_input(entry: &Entry<Pipeline>, settings: &Settings) -> Value {
    let pipeline = &entry.value;
    json!({
        "name": pipeline.metadata.name,
        "owner": pipeline.metadata.owner,
        "file": entry.file.as_ref(),
        "metadata": pipeline.metadata,
        "spec": pipeline.spec,
        "facts": pipeline_facts(pipeline, settings),
    })
}

/// Facts rules need but cannot compute: the largest GPU count and each step's image.
fn pipeline_facts(pipeline: &Pipeline, settings: &Settings) -> Value {
    let lists = [
        ("steps", &pipeline.spec.steps),
        ("finally", &pipeline.spec.finally),
    ];
    let images: Vec<Value> = lists
        .into_iter()
        .flat_map(|(list, steps)| steps.iter().enumerate().map(move |(i, s)| (list, i, s)))
        .filter_map(|(list, i, step)| {
            let (image, field) = match (&step.image, &pipeline.spec.image, &settings.image) {
                (Some(image), _, _) => (image, Some(format!("spec.{list}[{i}].image"))),
                (None, Some(image), _) => (image, Some("spec.image".to_owned())),
                (None, None, Some(image)) => (image, None),
                (None, None, None) => return None,
            };
            Some(json!({"step": step.name, "image": image, "field": field}))
        })
        .collect();
    let gpus = pipeline
        .spec
        .all_steps()
        .filter_map(|s| s.resources.as_ref())
        .map(|r| r.gpu)
        .max()
        .unwrap_or(0);
    json!({"gpus": gpus, "images": images})
}

/// The Rego input for one schedule: its document, its pipeline's name, owner and facts, and
/// its shortest interval between fires. Public so the fuzz targets can build it.
pub fn schedule_input(
    entry: &Entry<Schedule>,
    target: Option<&Entry<Pipeline>>,
    settings: &Settings,
    now: DateTime<Utc>,
) -> Value {
    let spec = &entry.value.spec;
    let min_interval = parse_timezone(&spec.timezone)
        .ok()
        .and_then(|tz| CronSchedule::new(&spec.cron, tz).ok())
        .and_then(|s| s.min_interval(now, INTERVAL_SAMPLES))
        .map(|d| d.as_secs());
    json!({
        "name": entry.value.metadata.name,
        "file": entry.file.as_ref(),
        "metadata": entry.value.metadata,
        "spec": spec,
        "pipeline": target.map(|p| json!({
            "name": p.value.metadata.name,
            "owner": p.value.metadata.owner,
            "file": p.file.as_ref(),
            "facts": pipeline_facts(&p.value, settings),
        })),
        "facts": {"min_interval_seconds": min_interval},
    })
}
