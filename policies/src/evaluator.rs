//! Loading the platform and repository policies and evaluating them over documents.

use std::collections::HashMap;

use regorus::{Engine, Value};
use serde::Deserialize;

use crate::bundle::{platform_modules, platform_path};
use crate::{Error, Origin, PolicyConfig, Severity, Violation};

/// The package of the platform rules.
const PLATFORM_PACKAGE: &str = "data.trainyard.platform";

/// The leading package components every repository policy must declare.
const REPO_PACKAGE_ROOT: [&str; 2] = ["trainyard", "repo"];

/// Evaluates the platform rules and a repository's own rules over pipeline and schedule documents.
#[derive(Clone)]
pub struct Evaluator {
    engine: Engine,
    /// The repository packages added so far, in the order they were first seen.
    repo_packages: Vec<RepoPackage>,
}

/// One repository package and the files that declare it.
#[derive(Clone)]
struct RepoPackage {
    /// The package components, e.g. `["trainyard", "repo", "checks"]`.
    components: Vec<String>,
    files: Vec<RepoFile>,
}

/// One repository policy file and which violation sets it adds to.
#[derive(Clone)]
struct RepoFile {
    path: String,
    declares_deny: bool,
    declares_warn: bool,
}

impl Evaluator {
    /// Loads the embedded platform bundle and the config as `data.trainyard.config`.
    pub fn new(config: &PolicyConfig) -> Result<Self, Error> {
        Ok(Self {
            engine: load_platform(platform_modules(), config)?,
            repo_packages: Vec::new(),
        })
    }

    /// Adds a repository's own rule file.
    ///
    /// Its package must be `trainyard.repo` or start with `trainyard.repo.`;
    /// anything else (in particular anything that would add to or override
    /// `trainyard.platform`) is refused. A file that is not valid Rego is
    /// refused with an error naming the file, line and column. Several files
    /// may share a package; rules in one file may use rules of another, so
    /// mistakes that span files are only reported by [`Evaluator::evaluate`].
    pub fn add_repo_policy(&mut self, path: &str, rego: &str) -> Result<(), Error> {
        let taken = self
            .engine
            .get_policies()
            .map_err(|err| invalid_repo_policy(path, err))?
            .iter()
            .any(|source| source.get_path() == path);
        if taken {
            return Err(Error::DuplicateRepoPolicy {
                path: path.to_owned(),
            });
        }

        // Load into a copy so that a refused file leaves this evaluator unchanged.
        let mut engine = self.engine.clone();
        let invalid = |err| invalid_repo_policy(path, err);
        engine
            .add_policy(path.to_owned(), rego.to_owned())
            .map_err(invalid)?;
        let components = engine
            .get_policy_package_components()
            .map_err(invalid)?
            .pop()
            .map(|package| package.components)
            .unwrap_or_default();
        if components.len() < REPO_PACKAGE_ROOT.len()
            || components
                .iter()
                .zip(REPO_PACKAGE_ROOT)
                .any(|(c, r)| c != r)
        {
            return Err(Error::ForbiddenPackage {
                path: path.to_owned(),
                package: package_name(&components),
            });
        }
        let file = RepoFile {
            path: path.to_owned(),
            declares_deny: engine
                .has_declared_rule_rooted_at(path, "deny")
                .map_err(invalid)?,
            declares_warn: engine
                .has_declared_rule_rooted_at(path, "warn")
                .map_err(invalid)?,
        };

        self.engine = engine;
        match self
            .repo_packages
            .iter_mut()
            .find(|package| package.components == components)
        {
            Some(package) => package.files.push(file),
            None => self.repo_packages.push(RepoPackage {
                components,
                files: vec![file],
            }),
        }
        Ok(())
    }

    /// Evaluates every platform and repository rule over `input` and returns
    /// all violations, sorted by kind, name, rule, field and message.
    pub fn evaluate(&mut self, input: &serde_json::Value) -> Result<Vec<Violation>, Error> {
        self.engine.set_input(convert_input(input));
        let result = self.collect_all();
        // Do not keep a possibly large input alive between evaluations.
        self.engine.set_input(Value::new_object());
        let mut violations = result?;
        violations.sort_by(|a, b| {
            (&a.kind, &a.name, &a.rule, &a.field, &a.message)
                .cmp(&(&b.kind, &b.name, &b.rule, &b.field, &b.message))
        });
        Ok(violations)
    }

    /// Collects the `deny` and `warn` sets of the platform and of every repository package.
    fn collect_all(&mut self) -> Result<Vec<Violation>, Error> {
        let mut violations = Vec::new();
        for severity in [Severity::Deny, Severity::Warn] {
            collect(
                &mut self.engine,
                format!("{PLATFORM_PACKAGE}.{}", set_name(severity)),
                severity,
                &Origin::Platform,
                &mut violations,
            )?;
        }
        for package in &self.repo_packages {
            for severity in [Severity::Deny, Severity::Warn] {
                let declaring: Vec<&str> = package
                    .files
                    .iter()
                    .filter(|file| match severity {
                        Severity::Deny => file.declares_deny,
                        Severity::Warn => file.declares_warn,
                    })
                    .map(|file| file.path.as_str())
                    .collect();
                let path = match declaring.as_slice() {
                    [] => continue,
                    [file] => (*file).to_owned(),
                    _ => package_name(&package.components),
                };
                collect(
                    &mut self.engine,
                    format!("{}.{}", rule_path(&package.components), set_name(severity)),
                    severity,
                    &Origin::Repository { path },
                    &mut violations,
                )?;
            }
        }
        Ok(violations)
    }
}

/// An engine holding the given platform modules and `config` as `data.trainyard.config`.
pub(crate) fn load_platform(
    modules: &[(&str, &str)],
    config: &PolicyConfig,
) -> Result<Engine, Error> {
    let mut engine = Engine::new();
    for (file, source) in modules {
        engine
            .add_policy(platform_path(file), (*source).to_owned())
            .map_err(|err| Error::Platform {
                file: (*file).to_owned(),
                message: err.to_string().trim_start().to_owned(),
            })?;
    }
    let config = serde_json::to_value(config).map_err(|err| Error::Config {
        message: err.to_string(),
    })?;
    let data = Value::deserialize(serde_json::json!({ "trainyard": { "config": config } }))
        .map_err(|err| Error::Config {
            message: err.to_string(),
        })?;
    engine.add_data(data).map_err(|err| Error::Config {
        message: err.to_string(),
    })?;
    Ok(engine)
}

/// Converts the input document to the engine's representation.
///
/// Object keys are shared, and a schedule's `pipeline` that equals an entry of
/// `pipelines` shares that entry's converted value: the input is mostly
/// pipelines, each usually present twice, and conversion time is dominated by
/// allocation.
fn convert_input(input: &serde_json::Value) -> Value {
    let mut converter = Converter::default();
    let Some(object) = input.as_object() else {
        return converter.convert(input);
    };
    let mut pipelines: HashMap<&str, (&serde_json::Value, Value)> = HashMap::new();
    let mut converted = std::collections::BTreeMap::new();
    if let Some(serde_json::Value::Array(list)) = object.get("pipelines") {
        let values = list
            .iter()
            .map(|pipeline| {
                let value = converter.convert(pipeline);
                if let Some(name) = pipeline.get("name").and_then(serde_json::Value::as_str) {
                    pipelines.insert(name, (pipeline, value.clone()));
                }
                value
            })
            .collect::<Vec<_>>();
        converted.insert(converter.key("pipelines"), Value::from(values));
    }
    for (key, value) in object {
        let value = match (key.as_str(), value) {
            ("pipelines", serde_json::Value::Array(_)) => continue,
            ("schedules", serde_json::Value::Array(schedules)) => Value::from(
                schedules
                    .iter()
                    .map(|schedule| converter.convert_schedule(schedule, &pipelines))
                    .collect::<Vec<_>>(),
            ),
            _ => converter.convert(value),
        };
        converted.insert(converter.key(key), value);
    }
    Value::from(converted)
}

/// Converts JSON values, sharing the strings of repeated object keys.
#[derive(Default)]
struct Converter<'a> {
    keys: HashMap<&'a str, Value>,
}

impl<'a> Converter<'a> {
    fn key(&mut self, key: &'a str) -> Value {
        self.keys
            .entry(key)
            .or_insert_with(|| Value::from(key))
            .clone()
    }

    fn convert(&mut self, value: &'a serde_json::Value) -> Value {
        match value {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::from(*b),
            serde_json::Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    Value::from(u)
                } else if let Some(i) = n.as_i64() {
                    Value::from(i)
                } else {
                    // serde_json numbers are u64, i64 or finite f64.
                    Value::from(n.as_f64().unwrap_or_default())
                }
            }
            serde_json::Value::String(s) => Value::from(s.as_str()),
            serde_json::Value::Array(items) => Value::from(
                items
                    .iter()
                    .map(|item| self.convert(item))
                    .collect::<Vec<_>>(),
            ),
            serde_json::Value::Object(entries) => Value::from(
                entries
                    .iter()
                    .map(|(key, value)| (self.key(key), self.convert(value)))
                    .collect::<std::collections::BTreeMap<_, _>>(),
            ),
        }
    }

    /// Converts a schedule, reusing the converted pipeline it embeds when that
    /// pipeline is also in `pipelines`, unchanged.
    fn convert_schedule(
        &mut self,
        schedule: &'a serde_json::Value,
        pipelines: &HashMap<&str, (&serde_json::Value, Value)>,
    ) -> Value {
        let serde_json::Value::Object(entries) = schedule else {
            return self.convert(schedule);
        };
        Value::from(
            entries
                .iter()
                .map(|(key, value)| {
                    let shared = (key == "pipeline")
                        .then(|| value.get("name").and_then(serde_json::Value::as_str))
                        .flatten()
                        .and_then(|name| pipelines.get(name))
                        .filter(|(json, _)| *json == value)
                        .map(|(_, converted)| converted.clone());
                    let value = shared.unwrap_or_else(|| self.convert(value));
                    (self.key(key), value)
                })
                .collect::<std::collections::BTreeMap<_, _>>(),
        )
    }
}

/// Evaluates one violation set and appends its entries to `violations`.
fn collect(
    engine: &mut Engine,
    rules: String,
    severity: Severity,
    origin: &Origin,
    violations: &mut Vec<Violation>,
) -> Result<(), Error> {
    let value = engine
        .eval_rule(rules.clone())
        .map_err(|err| Error::Evaluation {
            rules: rules.clone(),
            message: err.to_string().trim_start().to_owned(),
        })?;
    if value == Value::Undefined {
        return Ok(());
    }
    let entries = value.as_set().map_err(|_| Error::MalformedViolation {
        rules: rules.clone(),
        value: value.to_json_str().unwrap_or_else(|_| format!("{value:?}")),
        problem: "the rule is not a set".to_owned(),
    })?;
    for entry in entries {
        violations.push(violation(entry, severity, origin).map_err(|problem| {
            Error::MalformedViolation {
                rules: rules.clone(),
                value: entry.to_json_str().unwrap_or_else(|_| format!("{entry:?}")),
                problem,
            }
        })?);
    }
    Ok(())
}

/// Reads one violation object, or says what is wrong with it.
fn violation(entry: &Value, severity: Severity, origin: &Origin) -> Result<Violation, String> {
    let object = entry
        .as_object()
        .map_err(|_| "it is not an object".to_owned())?;
    let string = |key: &str| -> Result<String, String> {
        match object.get(&Value::from(key)) {
            Some(Value::String(s)) => Ok(s.to_string()),
            Some(_) => Err(format!("\"{key}\" is not a string")),
            None => Err(format!("\"{key}\" is missing")),
        }
    };
    let field = match object.get(&Value::from("field")) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.to_string()),
        Some(_) => return Err("\"field\" is neither a string nor null".to_owned()),
    };
    Ok(Violation {
        severity,
        rule: string("rule")?,
        kind: string("kind")?,
        name: string("name")?,
        field,
        message: string("msg")?,
        origin: origin.clone(),
    })
}

/// The name of the set a severity's violations are collected from.
fn set_name(severity: Severity) -> &'static str {
    match severity {
        Severity::Deny => "deny",
        Severity::Warn => "warn",
    }
}

fn is_identifier(component: &str) -> bool {
    let mut chars = component.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A package as written after `package`, e.g. `trainyard.repo.checks`.
fn package_name(components: &[String]) -> String {
    join_components(String::new(), components)
}

/// The path of a package in the data document, e.g. `data.trainyard.repo["team-a"]`.
fn rule_path(components: &[String]) -> String {
    join_components(String::from("data"), components)
}

/// Appends package components to `path`, using brackets for those that are not identifiers.
fn join_components(mut path: String, components: &[String]) -> String {
    for component in components {
        if is_identifier(component) {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(component);
        } else {
            path.push('[');
            path.push_str(&serde_json::Value::from(component.as_str()).to_string());
            path.push(']');
        }
    }
    path
}

/// The error for a repository policy the engine refused, with the engine's report.
fn invalid_repo_policy(path: &str, err: impl std::fmt::Display) -> Error {
    Error::InvalidRepoPolicy {
        path: path.to_owned(),
        message: err.to_string().trim_start().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value as Json, json};

    use super::*;

    const DIGEST: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn pinned(name: &str) -> String {
        format!("{name}@sha256:{DIGEST}")
    }

    /// A pipeline that passes every platform rule.
    fn pipeline(name: &str) -> Json {
        let image = pinned("reg.example.com/ml/churn");
        json!({
            "name": name,
            "owner": "team-growth",
            "file": format!("pipelines/{name}.yaml"),
            "spec": {
                "image": image,
                "params": {"epochs": {"type": "int", "default": 3}},
                "triggers": {"on_change": true},
                "steps": [
                    {"name": "prepare", "image": null, "run": ["python3", "prepare.py"], "needs": [],
                     "outputs": ["dataset"], "resources": null, "retries": 0, "timeout": null,
                     "env": {}, "env_from_secrets": []},
                    {"name": "train", "image": null, "run": ["python3", "train.py"], "needs": ["prepare"],
                     "outputs": ["model", "metrics"],
                     "resources": {"cpu": "8", "memory": "64Gi", "gpu": 1, "gpu_type": "h100"},
                     "retries": 2, "timeout": "4h", "env": {}, "env_from_secrets": []}
                ],
                "model": {"name": "churn-classifier", "artifact": "steps.train.outputs.model",
                          "metrics": "steps.train.outputs.metrics",
                          "gate": [{"metric": "auc", "min": 0.8}], "promote": "champion"}
            },
            "facts": {
                "gpus": 1,
                "images": [
                    {"step": "prepare", "image": image, "field": "spec.image"},
                    {"step": "train", "image": image, "field": "spec.image"}
                ]
            }
        })
    }

    /// A clean pipeline whose train step requests `gpus` GPUs.
    fn gpu_pipeline(name: &str, gpus: u32) -> Json {
        let mut p = pipeline(name);
        p["spec"]["steps"][1]["resources"]["gpu"] = json!(gpus);
        p["facts"]["gpus"] = json!(gpus);
        p
    }

    /// A clean pipeline whose train step runs `image`, set in the step.
    fn pipeline_with_train_image(name: &str, image: &str) -> Json {
        let mut p = pipeline(name);
        p["spec"]["steps"][1]["image"] = json!(image);
        p["facts"]["images"][1] =
            json!({"step": "train", "image": image, "field": "spec.steps[1].image"});
        p
    }

    /// A schedule of `pipeline` whose fire times are at least `interval` seconds apart.
    fn schedule(name: &str, pipeline: &Json, cron: &str, interval: u64) -> Json {
        json!({
            "name": name,
            "file": "schedules.yaml",
            "spec": {"pipeline": pipeline["name"], "cron": cron, "timezone": "Europe/Berlin",
                     "params": {"epochs": 10}, "concurrency": "forbid", "catchup": "latest",
                     "suspend": false},
            "pipeline": pipeline,
            "facts": {"min_interval_seconds": interval}
        })
    }

    fn input(pipelines: Vec<Json>, schedules: Vec<Json>) -> Json {
        json!({"pipelines": pipelines, "schedules": schedules})
    }

    fn evaluate(config: &PolicyConfig, input: &Json) -> Vec<Violation> {
        Evaluator::new(config).unwrap().evaluate(input).unwrap()
    }

    /// (severity, rule, kind, name, field) of each violation, in order.
    fn summary(violations: &[Violation]) -> Vec<(Severity, &str, &str, &str, Option<&str>)> {
        violations
            .iter()
            .map(|v| {
                (
                    v.severity,
                    v.rule.as_str(),
                    v.kind.as_str(),
                    v.name.as_str(),
                    v.field.as_deref(),
                )
            })
            .collect()
    }

    fn repo_origin(path: &str) -> Origin {
        Origin::Repository {
            path: path.to_owned(),
        }
    }

    #[test]
    fn clean_documents_have_no_violations() {
        let p = pipeline("churn");
        let input = input(
            vec![p.clone()],
            vec![schedule("churn-nightly", &p, "0 2 * * *", 86_400)],
        );
        assert_eq!(evaluate(&PolicyConfig::default(), &input), vec![]);
    }

    #[test]
    fn empty_input_has_no_violations() {
        assert_eq!(evaluate(&PolicyConfig::default(), &json!({})), vec![]);
        let empty = input(vec![], vec![]);
        assert_eq!(evaluate(&PolicyConfig::default(), &empty), vec![]);
    }

    #[test]
    fn unpinned_image_is_denied() {
        let input = input(
            vec![pipeline_with_train_image("churn", "python:3.12")],
            vec![],
        );
        let violations = evaluate(&PolicyConfig::default(), &input);
        assert_eq!(
            violations,
            vec![Violation {
                severity: Severity::Deny,
                rule: "image-pinned".into(),
                kind: "Pipeline".into(),
                name: "churn".into(),
                field: Some("spec.steps[1].image".into()),
                message: "image \"python:3.12\" of step \"train\" is not pinned by digest; \
                          use an image reference ending in @sha256:<digest>"
                    .into(),
                origin: Origin::Platform,
            }]
        );
    }

    #[test]
    fn image_from_repository_settings_is_reported_on_spec() {
        let mut p = pipeline("churn");
        p["facts"]["images"][0] =
            json!({"step": "prepare", "image": "reg.example.com/ml/base:1.0", "field": null});
        let violations = evaluate(&PolicyConfig::default(), &input(vec![p], vec![]));
        assert_eq!(
            summary(&violations),
            vec![(
                Severity::Deny,
                "image-pinned",
                "Pipeline",
                "churn",
                Some("spec")
            )]
        );
    }

    #[test]
    fn image_from_unlisted_registry_is_denied_only_when_registries_are_configured() {
        let input = input(
            vec![pipeline_with_train_image(
                "churn",
                &pinned("ghcr.io/acme/train"),
            )],
            vec![],
        );
        assert_eq!(evaluate(&PolicyConfig::default(), &input), vec![]);

        let config = PolicyConfig {
            allowed_registries: vec!["reg.example.com".into()],
            ..PolicyConfig::default()
        };
        let violations = evaluate(&config, &input);
        assert_eq!(
            summary(&violations),
            vec![(
                Severity::Deny,
                "allowed-registries",
                "Pipeline",
                "churn",
                Some("spec.steps[1].image")
            )]
        );
        assert!(violations[0].message.contains("\"ghcr.io\""));

        let config = PolicyConfig {
            allowed_registries: vec!["reg.example.com".into(), "ghcr.io".into()],
            ..PolicyConfig::default()
        };
        assert_eq!(evaluate(&config, &input), vec![]);
    }

    #[test]
    fn gpu_request_over_the_limit_is_denied() {
        let input = input(vec![gpu_pipeline("churn", 12)], vec![]);
        let violations = evaluate(&PolicyConfig::default(), &input);
        assert_eq!(
            summary(&violations),
            vec![(
                Severity::Deny,
                "gpu-limit",
                "Pipeline",
                "churn",
                Some("spec.steps[1].resources.gpu")
            )]
        );
        assert!(violations[0].message.contains("12 GPUs"));
    }

    #[test]
    fn config_changes_the_gpu_limits() {
        let input = input(vec![gpu_pipeline("churn", 12)], vec![]);
        let mut config = PolicyConfig::default();
        config
            .max_gpus_per_step
            .owners
            .insert("team-growth".into(), 16);
        assert_eq!(evaluate(&config, &input), vec![]);

        let config = PolicyConfig {
            max_gpus_per_step: crate::GpuLimits {
                default: 2,
                ..crate::GpuLimits::default()
            },
            ..PolicyConfig::default()
        };
        let input = super::tests::input(vec![gpu_pipeline("churn", 4)], vec![]);
        assert_eq!(
            summary(&evaluate(&config, &input)),
            vec![(
                Severity::Deny,
                "gpu-limit",
                "Pipeline",
                "churn",
                Some("spec.steps[1].resources.gpu")
            )]
        );
    }

    #[test]
    fn frequent_gpu_schedule_is_denied() {
        let p = gpu_pipeline("train", 2);
        let input = input(
            vec![],
            vec![schedule("train-often", &p, "*/5 * * * *", 300)],
        );
        let violations = evaluate(&PolicyConfig::default(), &input);
        assert_eq!(
            summary(&violations),
            vec![(
                Severity::Deny,
                "gpu-schedule-frequency",
                "Schedule",
                "train-often",
                Some("spec.cron")
            )]
        );
    }

    #[test]
    fn config_changes_the_gpu_schedule_interval() {
        let p = gpu_pipeline("train", 2);
        let input = input(
            vec![],
            vec![schedule("train-often", &p, "*/5 * * * *", 300)],
        );
        let config = PolicyConfig {
            gpu_schedule_min_interval_seconds: 300,
            ..PolicyConfig::default()
        };
        assert_eq!(evaluate(&config, &input), vec![]);
    }

    #[test]
    fn frequent_cpu_schedule_is_allowed() {
        let p = gpu_pipeline("etl", 0);
        let input = input(vec![], vec![schedule("etl-often", &p, "* * * * *", 60)]);
        assert_eq!(evaluate(&PolicyConfig::default(), &input), vec![]);
    }

    #[test]
    fn promotion_without_gate_is_denied() {
        let mut p = pipeline("churn");
        p["spec"]["model"]["gate"] = json!([]);
        let violations = evaluate(&PolicyConfig::default(), &input(vec![p], vec![]));
        assert_eq!(
            summary(&violations),
            vec![(
                Severity::Deny,
                "promote-needs-gate",
                "Pipeline",
                "churn",
                Some("spec.model.promote")
            )]
        );
    }

    #[test]
    fn gpu_step_without_timeout_is_only_a_warning() {
        let mut p = gpu_pipeline("churn", 2);
        p["spec"]["steps"][1]["timeout"] = Json::Null;
        let violations = evaluate(&PolicyConfig::default(), &input(vec![p], vec![]));
        assert_eq!(
            summary(&violations),
            vec![(
                Severity::Warn,
                "gpu-step-timeout",
                "Pipeline",
                "churn",
                Some("spec.steps[1]")
            )]
        );
    }

    #[test]
    fn documents_are_judged_one_by_one_and_sorted() {
        let mut ungated = pipeline("b-ungated");
        ungated["spec"]["model"]["gate"] = json!([]);
        let mut many = gpu_pipeline("a-many", 12);
        many["spec"]["steps"][1]["timeout"] = Json::Null;
        many["facts"]["images"][0] =
            json!({"step": "prepare", "image": "python:3.12", "field": "spec.image"});
        let gpu = gpu_pipeline("c-gpu", 1);
        let input = input(
            vec![ungated, pipeline("d-clean"), many, gpu.clone()],
            vec![
                schedule("z-often", &gpu, "*/5 * * * *", 300),
                schedule("y-daily", &gpu, "0 1 * * *", 86_400),
            ],
        );
        let violations = evaluate(&PolicyConfig::default(), &input);
        assert_eq!(
            summary(&violations),
            vec![
                (
                    Severity::Deny,
                    "gpu-limit",
                    "Pipeline",
                    "a-many",
                    Some("spec.steps[1].resources.gpu")
                ),
                (
                    Severity::Warn,
                    "gpu-step-timeout",
                    "Pipeline",
                    "a-many",
                    Some("spec.steps[1]")
                ),
                (
                    Severity::Deny,
                    "image-pinned",
                    "Pipeline",
                    "a-many",
                    Some("spec.image")
                ),
                (
                    Severity::Deny,
                    "promote-needs-gate",
                    "Pipeline",
                    "b-ungated",
                    Some("spec.model.promote")
                ),
                (
                    Severity::Deny,
                    "gpu-schedule-frequency",
                    "Schedule",
                    "z-often",
                    Some("spec.cron")
                ),
            ]
        );
        assert!(violations.iter().all(|v| v.origin == Origin::Platform));
    }

    #[test]
    fn evaluating_again_gives_the_same_result() {
        let mut evaluator = Evaluator::new(&PolicyConfig::default()).unwrap();
        let bad = input(vec![gpu_pipeline("churn", 12)], vec![]);
        let good = input(vec![pipeline("churn")], vec![]);
        let first = evaluator.evaluate(&bad).unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(evaluator.evaluate(&good).unwrap(), vec![]);
        assert_eq!(evaluator.evaluate(&bad).unwrap(), first);
    }

    #[test]
    fn repo_policy_adds_a_violation() {
        let mut evaluator = Evaluator::new(&PolicyConfig::default()).unwrap();
        evaluator
            .add_repo_policy(
                "policies/owners.rego",
                r#"package trainyard.repo

deny contains v if {
	some p in input.pipelines
	not startswith(p.owner, "team-")
	v := {"rule": "owner-is-a-team", "kind": "Pipeline", "name": p.name, "field": "owner",
	      "msg": sprintf("owner %q is not a team", [p.owner])}
}

warn contains v if {
	some s in input.schedules
	s.spec.suspend
	v := {"rule": "suspended", "kind": "Schedule", "name": s.name, "msg": "schedule is suspended"}
}
"#,
            )
            .unwrap();
        let mut lonely = pipeline("lonely");
        lonely["owner"] = json!("alice");
        let mut paused = schedule("paused", &pipeline("churn"), "0 2 * * *", 86_400);
        paused["spec"]["suspend"] = json!(true);
        let violations = evaluator
            .evaluate(&input(vec![pipeline("churn"), lonely], vec![paused]))
            .unwrap();
        assert_eq!(
            violations,
            vec![
                Violation {
                    severity: Severity::Deny,
                    rule: "owner-is-a-team".into(),
                    kind: "Pipeline".into(),
                    name: "lonely".into(),
                    field: Some("owner".into()),
                    message: "owner \"alice\" is not a team".into(),
                    origin: repo_origin("policies/owners.rego"),
                },
                Violation {
                    severity: Severity::Warn,
                    rule: "suspended".into(),
                    kind: "Schedule".into(),
                    name: "paused".into(),
                    field: None,
                    message: "schedule is suspended".into(),
                    origin: repo_origin("policies/owners.rego"),
                },
            ]
        );
    }

    #[test]
    fn repo_policies_in_sub_packages_are_evaluated() {
        let mut evaluator = Evaluator::new(&PolicyConfig::default()).unwrap();
        for (path, package) in [
            ("a.rego", "trainyard.repo.team_a"),
            ("b.rego", r#"trainyard.repo["team-b"]"#),
        ] {
            let rego = format!(
                "package {package}\n\ndeny contains {{\"rule\": \"{path}\", \"kind\": \"Pipeline\", \"name\": p.name, \"field\": null, \"msg\": \"no\"}} if {{\n\tsome p in input.pipelines\n}}\n"
            );
            evaluator.add_repo_policy(path, &rego).unwrap();
        }
        let violations = evaluator
            .evaluate(&input(vec![pipeline("churn")], vec![]))
            .unwrap();
        let found: Vec<(&str, &Origin)> = violations
            .iter()
            .map(|v| (v.rule.as_str(), &v.origin))
            .collect();
        assert_eq!(
            found,
            vec![
                ("a.rego", &repo_origin("a.rego")),
                ("b.rego", &repo_origin("b.rego"))
            ]
        );
    }

    #[test]
    fn repo_package_split_over_files_names_the_declaring_file() {
        let mut evaluator = Evaluator::new(&PolicyConfig::default()).unwrap();
        // The rules use a helper from a file that is added later.
        evaluator
            .add_repo_policy(
                "policy/rules.rego",
                "package trainyard.repo\n\ndeny contains v if {\n\tsome p in input.pipelines\n\tnot approved(p)\n\tv := {\"rule\": \"approved-owner\", \"kind\": \"Pipeline\", \"name\": p.name, \"field\": \"owner\", \"msg\": \"owner not approved\"}\n}\n",
            )
            .unwrap();
        evaluator
            .add_repo_policy(
                "policy/lib.rego",
                "package trainyard.repo\n\napproved(p) if p.owner in {\"team-ml\"}\n",
            )
            .unwrap();
        let violations = evaluator
            .evaluate(&input(vec![pipeline("churn")], vec![]))
            .unwrap();
        assert_eq!(
            summary(&violations),
            vec![(
                Severity::Deny,
                "approved-owner",
                "Pipeline",
                "churn",
                Some("owner")
            )]
        );
        assert_eq!(violations[0].origin, repo_origin("policy/rules.rego"));

        // A second file adding to `deny` makes the package the origin.
        evaluator
            .add_repo_policy(
                "policy/more.rego",
                "package trainyard.repo\n\ndeny contains {\"rule\": \"more\", \"kind\": \"Pipeline\", \"name\": \"churn\", \"msg\": \"more\"} if true\n",
            )
            .unwrap();
        let violations = evaluator
            .evaluate(&input(vec![pipeline("churn")], vec![]))
            .unwrap();
        assert_eq!(violations.len(), 2);
        assert!(
            violations
                .iter()
                .all(|v| v.origin == repo_origin("trainyard.repo"))
        );
    }

    #[test]
    fn repo_policy_in_the_platform_package_is_refused() {
        let mut evaluator = Evaluator::new(&PolicyConfig::default()).unwrap();
        let err = evaluator
            .add_repo_policy(
                "policies/override.rego",
                "package trainyard.platform\n\nwarn contains \"x\" if true\n",
            )
            .unwrap_err();
        assert!(
            matches!(&err, Error::ForbiddenPackage { path, package }
                if path == "policies/override.rego" && package == "trainyard.platform"),
            "{err:?}"
        );
        assert!(err.to_string().contains("policies/override.rego"), "{err}");
        // Nothing of the refused file was loaded.
        assert_eq!(
            evaluator
                .evaluate(&input(vec![pipeline("churn")], vec![]))
                .unwrap(),
            vec![]
        );
    }

    #[test]
    fn repo_policy_outside_trainyard_repo_is_refused() {
        let mut evaluator = Evaluator::new(&PolicyConfig::default()).unwrap();
        for package in [
            "trainyard",
            "trainyard.repository",
            "trainyard.platform.extra",
            "trainyard.config",
            "repo",
            "other.trainyard.repo",
        ] {
            let err = evaluator
                .add_repo_policy("p.rego", &format!("package {package}\n"))
                .unwrap_err();
            assert!(
                matches!(&err, Error::ForbiddenPackage { package: p, .. } if p == package),
                "{package}: {err:?}"
            );
        }
        // The path is still free after the refusals.
        evaluator
            .add_repo_policy("p.rego", "package trainyard.repo\n")
            .unwrap();
    }

    #[test]
    fn repo_policy_with_a_syntax_error_names_the_file_and_position() {
        let mut evaluator = Evaluator::new(&PolicyConfig::default()).unwrap();
        let err = evaluator
            .add_repo_policy(
                "policies/broken.rego",
                "package trainyard.repo\n\ndeny contains v if {\n\tv := \n}\n",
            )
            .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidRepoPolicy { path, .. } if path == "policies/broken.rego"),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(message.contains("policies/broken.rego:4:"), "{message}");
    }

    #[test]
    fn repo_policy_added_twice_is_refused() {
        let mut evaluator = Evaluator::new(&PolicyConfig::default()).unwrap();
        evaluator
            .add_repo_policy("p.rego", "package trainyard.repo\n")
            .unwrap();
        let err = evaluator
            .add_repo_policy("p.rego", "package trainyard.repo\n")
            .unwrap_err();
        assert!(matches!(err, Error::DuplicateRepoPolicy { .. }), "{err:?}");
    }

    #[test]
    fn repo_rules_cannot_remove_platform_violations() {
        let mut evaluator = Evaluator::new(&PolicyConfig::default()).unwrap();
        // Attempts that are refused outright.
        for rego in [
            "package trainyard.platform\n\ndeny := set()\n",
            "package trainyard.repo\n\ndata.trainyard.platform.deny := set()\n",
        ] {
            assert!(evaluator.add_repo_policy("attempt.rego", rego).is_err());
        }
        // Attempts that load but only define rules inside the repository package.
        for (path, rego) in [
            (
                "alias.rego",
                "package trainyard.repo\n\nplatform.deny := set()\n",
            ),
            (
                "config.rego",
                "package trainyard.repo\n\nconfig := {\"max_gpus_per_step\": {\"default\": 100}}\n",
            ),
            ("shadow.rego", "package trainyard.repo\n\ndeny := set()\n"),
        ] {
            evaluator.add_repo_policy(path, rego).unwrap();
        }
        let violations = evaluator
            .evaluate(&input(vec![gpu_pipeline("churn", 12)], vec![]))
            .unwrap();
        assert_eq!(
            summary(&violations),
            vec![(
                Severity::Deny,
                "gpu-limit",
                "Pipeline",
                "churn",
                Some("spec.steps[1].resources.gpu")
            )]
        );
        assert_eq!(violations[0].origin, Origin::Platform);
    }

    #[test]
    fn malformed_repo_violation_is_an_error() {
        let mut evaluator = Evaluator::new(&PolicyConfig::default()).unwrap();
        evaluator
            .add_repo_policy(
                "p.rego",
                "package trainyard.repo\n\ndeny contains \"pipelines need owners\" if true\n",
            )
            .unwrap();
        let err = evaluator.evaluate(&input(vec![], vec![])).unwrap_err();
        assert!(
            matches!(&err, Error::MalformedViolation { rules, .. } if rules == "data.trainyard.repo.deny"),
            "{err:?}"
        );
        assert!(err.to_string().contains("pipelines need owners"), "{err}");
    }

    #[test]
    fn failing_repo_rule_is_an_evaluation_error() {
        let mut evaluator = Evaluator::new(&PolicyConfig::default()).unwrap();
        evaluator
            .add_repo_policy(
                "p.rego",
                "package trainyard.repo\n\nwarn contains v if {\n\tsome p in input.pipelines\n\tv := to_number(p.name)\n}\n",
            )
            .unwrap();
        let err = evaluator
            .evaluate(&input(vec![pipeline("churn")], vec![]))
            .unwrap_err();
        assert!(
            matches!(&err, Error::Evaluation { rules, .. } if rules == "data.trainyard.repo.warn"),
            "{err:?}"
        );
    }

    #[test]
    fn violation_serializes_with_lowercase_severity_and_tagged_origin() {
        let violation = Violation {
            severity: Severity::Warn,
            rule: "r".into(),
            kind: "Pipeline".into(),
            name: "n".into(),
            field: None,
            message: "m".into(),
            origin: repo_origin("p.rego"),
        };
        assert_eq!(
            serde_json::to_value(&violation).unwrap(),
            json!({"severity": "warn", "rule": "r", "kind": "Pipeline", "name": "n", "field": null,
                   "message": "m", "origin": {"type": "repository", "path": "p.rego"}})
        );
        assert_eq!(
            serde_json::to_value(Origin::Platform).unwrap(),
            json!({"type": "platform"})
        );
    }

    #[test]
    fn platform_modules_are_listed_with_their_sources() {
        let files: Vec<&str> = platform_modules().iter().map(|(file, _)| *file).collect();
        assert_eq!(
            files,
            [
                "common.rego",
                "gpus.rego",
                "images.rego",
                "models.rego",
                "sweeps.rego"
            ]
        );
        assert!(
            platform_modules()
                .iter()
                .any(|(_, source)| source.contains("\"image-pinned\""))
        );
    }
}
