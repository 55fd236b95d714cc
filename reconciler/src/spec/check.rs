//! Checks of one document on its own: names, the step DAG, templates, params, units, cron,
//! time zones and the model block. Each problem becomes a `Finding` at the offending field.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::cron::{CronSchedule, parse_timezone};
use super::diag::{Finding, did_you_mean};
use super::model::{ModelSpec, Pipeline, PipelineSpec, Schedule, Settings, Step};
use super::template::{self, Reference};
use super::units::{QuantityKind, parse_duration, parse_quantity};

/// Most GPUs one step may ask for: a step runs on one node.
pub const MAX_GPUS_PER_STEP: u32 = 16;
/// Most retries of one step.
pub const MAX_RETRIES: u32 = 10;
/// Longest `cache_version`.
pub const MAX_CACHE_VERSION: usize = 100;
/// Most instances one matrix step may run in a run (a platform policy may allow fewer).
pub const MAX_MATRIX_INSTANCES: usize = 64;
/// Most ticks `catchup: all` may replay.
pub const MAX_CATCHUP: u32 = 1000;

/// Why `name` is not a valid document, step or model name, if it is not.
pub fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > 40 {
        return Some(format!("name {name:?} must be 1 to 40 characters long"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Some(format!(
            "name {name:?} may only contain lowercase letters, digits and '-'"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Some(format!(
            "name {name:?} must start and end with a letter or digit"
        ));
    }
    None
}

fn is_identifier(name: &str, allow_upper: bool) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| {
        c == '_' || c.is_ascii_lowercase() || allow_upper && c.is_ascii_uppercase()
    }) && chars.all(|c| {
        c == '_'
            || c.is_ascii_lowercase()
            || c.is_ascii_digit()
            || allow_upper && c.is_ascii_uppercase()
    })
}

/// A Kubernetes DNS-1123 label: 1 to 63 of `[a-z0-9-]`, starting and ending alphanumeric.
fn is_dns_label(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// A Kubernetes DNS-1123 subdomain: dot-separated labels, at most 253 characters.
fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns_label)
}

/// Collects findings for one document that starts on `line`.
struct Checker<'a> {
    line: u32,
    out: &'a mut Vec<Finding>,
}

impl Checker<'_> {
    fn error(&mut self, code: &str, path: impl Into<String>, message: impl Into<String>) {
        self.out
            .push(Finding::error(code, self.line, path, message));
    }

    fn error_hint(
        &mut self,
        code: &str,
        path: impl Into<String>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        self.out
            .push(Finding::error(code, self.line, path, message).with_hint(hint));
    }

    fn name(&mut self, path: &str, name: &str) {
        if let Some(problem) = name_problem(name) {
            self.error("invalid-name", path, problem);
        }
    }

    fn duration(&mut self, path: &str, text: Option<&str>) {
        if let Some(Err(problem)) = text.map(parse_duration) {
            self.error("invalid-duration", path, problem);
        }
    }

    fn cache_version(&mut self, path: &str, version: Option<&str>) {
        let Some(version) = version else { return };
        if version.is_empty() || version.len() > MAX_CACHE_VERSION {
            self.error(
                "invalid-cache-version",
                path,
                format!("cache_version must be 1 to {MAX_CACHE_VERSION} characters"),
            );
        }
    }
}

/// Checks a pipeline on its own.
pub fn check_pipeline(pipeline: &Pipeline, line: u32, out: &mut Vec<Finding>) {
    let mut c = Checker { line, out };
    let spec = &pipeline.spec;
    c.name("metadata.name", &pipeline.metadata.name);
    match pipeline.metadata.owner.as_deref() {
        None => c.error(
            "missing-owner",
            "metadata",
            format!(
                "pipeline {:?} has no metadata.owner; policies and quotas key on it",
                pipeline.metadata.name
            ),
        ),
        Some(owner) if owner.trim().is_empty() => {
            c.error("missing-owner", "metadata.owner", "metadata.owner is empty")
        }
        Some(_) => {}
    }
    check_params(&mut c, pipeline);
    if let Some(image) = &spec.image {
        check_image(&mut c, "spec.image", image);
    }
    if spec.steps.is_empty() {
        c.error(
            "no-steps",
            "spec.steps",
            format!("pipeline {:?} has no steps", pipeline.metadata.name),
        );
        return;
    }
    let (index, finally) = check_step_names(&mut c, spec);
    check_needs(&mut c, &spec.steps, &index, &finally);
    let ancestors = ancestors(&spec.steps, &index);
    let names = Names {
        dag: &index,
        finally: &finally,
    };
    for (i, step) in spec.steps.iter().enumerate() {
        let at = format!("spec.steps[{i}]");
        check_step(
            &mut c,
            pipeline,
            &at,
            step,
            names,
            Reads::Ancestors(&ancestors[i]),
        );
    }
    for (i, step) in spec.finally.iter().enumerate() {
        let at = format!("spec.finally[{i}]");
        if !step.needs.is_empty() {
            c.error(
                "finally-needs",
                format!("{at}.needs"),
                format!(
                    "finally step {:?} has needs; finally steps all start once the DAG has \
                     ended and cannot be ordered",
                    step.name
                ),
            );
        }
        if !step.matrix.is_empty() {
            c.error(
                "matrix-in-finally",
                format!("{at}.matrix"),
                format!(
                    "finally step {:?} has a matrix; finally steps run once, after the DAG",
                    step.name
                ),
            );
        }
        if step.cache == Some(true) {
            c.error_hint(
                "cached-finally-step",
                format!("{at}.cache"),
                format!(
                    "finally step {:?} sets cache: true; finally steps report how a run \
                     ended, so they always run",
                    step.name
                ),
                Some("remove cache from it".to_owned()),
            );
        }
        check_step(&mut c, pipeline, &at, step, names, Reads::Dag);
    }
    c.duration("spec.cache_max_age", spec.cache_max_age.as_deref());
    c.cache_version("spec.cache_version", spec.cache_version.as_deref());
    if let Some(model) = &spec.model {
        c.name("spec.model.name", &model.name);
        check_output_ref(
            &mut c,
            "spec.model.artifact",
            &model.artifact,
            &spec.steps,
            &index,
        );
        if let Some(metrics) = &model.metrics {
            check_output_ref(&mut c, "spec.model.metrics", metrics, &spec.steps, &index);
        }
        for (g, gate) in model.gate.iter().enumerate() {
            let path = format!("spec.model.gate[{g}]");
            let bounds = [
                gate.min.is_some(),
                gate.max.is_some(),
                gate.not_worse_than.is_some(),
            ];
            match bounds.iter().filter(|b| **b).count() {
                0 => c.error(
                    "gate-without-bound",
                    &path,
                    format!(
                        "gate on {:?} has no bound; set one of min, max or not_worse_than",
                        gate.metric
                    ),
                ),
                1 => {}
                _ => c.error(
                    "gate-with-several-bounds",
                    &path,
                    format!(
                        "gate on {:?} sets several bounds; write one gate per bound",
                        gate.metric
                    ),
                ),
            }
            if gate.metric.trim().is_empty() {
                c.error(
                    "gate-without-metric",
                    format!("{path}.metric"),
                    "gate metric is empty",
                );
            }
            if let Some(alias) = &gate.not_worse_than {
                c.name(&format!("{path}.not_worse_than"), alias);
            }
            if model.metrics.is_none() {
                c.error(
                    "gate-without-metrics",
                    &path,
                    "gates read the metrics file, but spec.model.metrics is not set",
                );
            }
        }
        if let Some(alias) = &model.promote {
            c.name("spec.model.promote", alias);
        }
        check_select(&mut c, spec, model);
    }
    if spec.triggers.on_change {
        for (name, param) in &spec.params {
            if param.default.is_none() {
                c.error(
                    "required-param-on-change",
                    format!("spec.params.{name}"),
                    format!("param {name:?} has no default, but on_change runs use defaults; give it a default"),
                );
            }
        }
    }
}

fn check_params(c: &mut Checker<'_>, pipeline: &Pipeline) {
    for (name, param) in &pipeline.spec.params {
        if !is_identifier(name, false) {
            c.error("invalid-param-name", format!("spec.params.{name}"), format!("param name {name:?} must be lowercase letters, digits and '_', starting with a letter or '_'"));
        }
        if let Some(default) = &param.default
            && !param.ty.accepts(default)
        {
            c.error(
                "param-type",
                format!("spec.params.{name}.default"),
                format!(
                    "default {default} of param {name:?} is not of type {}",
                    param.ty
                ),
            );
        }
    }
}

fn check_image(c: &mut Checker<'_>, path: &str, image: &str) {
    if image.trim().is_empty() || image.chars().any(char::is_whitespace) {
        c.error(
            "invalid-image",
            path,
            format!("image reference {image:?} is empty or contains whitespace"),
        );
    }
}

/// Checks the names of the DAG's steps and the finally steps, unique across both; returns
/// each list's index by name.
fn check_step_names<'s>(
    c: &mut Checker<'_>,
    spec: &'s PipelineSpec,
) -> (HashMap<&'s str, usize>, HashMap<&'s str, usize>) {
    let mut index = HashMap::new();
    let mut finally = HashMap::new();
    let lists = [("steps", &spec.steps), ("finally", &spec.finally)];
    for (list, steps) in lists {
        for (i, step) in steps.iter().enumerate() {
            let path = format!("spec.{list}[{i}].name");
            c.name(&path, &step.name);
            let seen =
                index.contains_key(step.name.as_str()) || finally.contains_key(step.name.as_str());
            if seen {
                c.error(
                    "duplicate-step",
                    path,
                    format!("step {:?} is defined twice", step.name),
                );
            } else if list == "steps" {
                index.insert(step.name.as_str(), i);
            } else {
                finally.insert(step.name.as_str(), i);
            }
        }
    }
    (index, finally)
}

fn check_needs(
    c: &mut Checker<'_>,
    steps: &[Step],
    index: &HashMap<&str, usize>,
    finally: &HashMap<&str, usize>,
) {
    for (i, step) in steps.iter().enumerate() {
        let mut seen = HashSet::new();
        for (n, need) in step.needs.iter().enumerate() {
            let path = format!("spec.steps[{i}].needs[{n}]");
            if need == &step.name {
                c.error(
                    "self-need",
                    path,
                    format!("step {:?} needs itself", step.name),
                );
            } else if finally.contains_key(need.as_str()) {
                c.error(
                    "needs-finally-step",
                    path,
                    format!(
                        "step {:?} needs finally step {need:?}, which runs only after the DAG \
                         has ended",
                        step.name
                    ),
                );
            } else if !index.contains_key(need.as_str()) {
                let hint = did_you_mean(need, index.keys().copied());
                c.error_hint(
                    "unknown-step",
                    path,
                    format!("step {:?} needs unknown step {need:?}", step.name),
                    hint,
                );
            } else if !seen.insert(need) {
                c.error(
                    "duplicate-need",
                    path,
                    format!("step {:?} needs {need:?} twice", step.name),
                );
            }
        }
    }
    for cycle in cycles(steps, index) {
        let names: Vec<&str> = cycle.iter().map(|&i| steps[i].name.as_str()).collect();
        let first = cycle[0];
        let next = &steps[cycle[1 % cycle.len()]].name;
        let n = steps[first]
            .needs
            .iter()
            .position(|x| x == next)
            .unwrap_or(0);
        c.error(
            "cycle",
            format!("spec.steps[{first}].needs[{n}]"),
            format!("steps form a cycle: {} → {}", names.join(" → "), names[0]),
        );
    }
}

/// Every elementary cycle found by a depth-first walk, each reported once, as step indices
/// in `needs` order (a needs b needs c needs a).
fn cycles(steps: &[Step], index: &HashMap<&str, usize>) -> Vec<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    fn visit(
        at: usize,
        steps: &[Step],
        index: &HashMap<&str, usize>,
        marks: &mut [Mark],
        stack: &mut Vec<usize>,
        found: &mut Vec<Vec<usize>>,
    ) {
        marks[at] = Mark::Active;
        stack.push(at);
        for need in &steps[at].needs {
            let Some(&next) = index.get(need.as_str()) else {
                continue;
            };
            if next == at {
                continue;
            }
            match marks[next] {
                Mark::New => visit(next, steps, index, marks, stack, found),
                Mark::Active => {
                    if let Some(start) = stack.iter().position(|&s| s == next) {
                        found.push(stack[start..].to_vec());
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks[at] = Mark::Done;
    }
    let mut marks = vec![Mark::New; steps.len()];
    let mut found = Vec::new();
    for start in 0..steps.len() {
        if marks[start] == Mark::New {
            visit(start, steps, index, &mut marks, &mut Vec::new(), &mut found);
        }
    }
    found
}

/// For each step, the set of steps it transitively needs.
fn ancestors<'s>(steps: &'s [Step], index: &HashMap<&str, usize>) -> Vec<HashSet<&'s str>> {
    (0..steps.len())
        .map(|start| {
            let mut seen: HashSet<&str> = HashSet::new();
            let mut todo = vec![start];
            while let Some(at) = todo.pop() {
                for need in &steps[at].needs {
                    if let Some(&i) = index.get(need.as_str())
                        && seen.insert(steps[i].name.as_str())
                    {
                        todo.push(i);
                    }
                }
            }
            seen
        })
        .collect()
}

/// The pipeline's step names by list, for checks of references.
#[derive(Clone, Copy)]
struct Names<'a> {
    dag: &'a HashMap<&'a str, usize>,
    finally: &'a HashMap<&'a str, usize>,
}

/// Whose outputs a step may read.
#[derive(Clone, Copy)]
enum Reads<'a> {
    /// A DAG step: those of the steps it transitively needs.
    Ancestors(&'a HashSet<&'a str>),
    /// A finally step: those of any DAG step (the ones that succeeded, at run time).
    Dag,
}

fn check_step(
    c: &mut Checker<'_>,
    pipeline: &Pipeline,
    at: &str,
    step: &Step,
    names: Names<'_>,
    reads: Reads<'_>,
) {
    if let Some(image) = &step.image {
        check_image(c, &format!("{at}.image"), image);
    }
    let mut outputs = HashSet::new();
    for (o, output) in step.outputs.iter().enumerate() {
        let path = format!("{at}.outputs[{o}]");
        if output.contains(['/', '\\']) || output.contains("..") {
            c.error("output-escapes", path, format!("output name {output:?} could escape the step's directory; use letters, digits, '_' and '-'"));
        } else if output.is_empty()
            || output.len() > 63
            || !output
                .chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_' || ch == '-')
        {
            c.error(
                "invalid-output-name",
                path,
                format!(
                    "output name {output:?} must be 1 to 63 lowercase letters, digits, '_' or '-'"
                ),
            );
        } else if !outputs.insert(output.as_str()) {
            c.error(
                "duplicate-output",
                path,
                format!("step {:?} declares output {output:?} twice", step.name),
            );
        }
    }
    if step.run.is_empty() {
        c.error(
            "empty-run",
            format!("{at}.run"),
            format!("step {:?} has an empty run list", step.name),
        );
    }
    let templates = step
        .run
        .iter()
        .enumerate()
        .map(|(a, arg)| (format!("{at}.run[{a}]"), arg))
        .chain(step.env.iter().map(|(k, v)| (format!("{at}.env.{k}"), v)));
    for (path, text) in templates {
        let refs = match template::references(text) {
            Ok(refs) => refs,
            Err(problem) => {
                c.error("invalid-template", path, problem);
                continue;
            }
        };
        for reference in refs {
            check_reference(c, &path, pipeline, step, &reference, names, reads);
        }
    }
    for key in step.env.keys() {
        if !is_identifier(key, true) {
            c.error("invalid-env-name", format!("{at}.env.{key}"), format!("environment variable name {key:?} must be letters, digits and '_', not starting with a digit"));
        }
    }
    for (s, secret) in step.env_from_secrets.iter().enumerate() {
        if !is_dns_subdomain(secret) {
            c.error(
                "invalid-secret-name",
                format!("{at}.env_from_secrets[{s}]"),
                format!("secret name {secret:?} is not a valid Kubernetes name"),
            );
        }
    }
    if let Some(res) = &step.resources {
        if let Some(Err(problem)) = res
            .cpu
            .as_deref()
            .map(|q| parse_quantity(q, QuantityKind::Cpu))
        {
            c.error("invalid-quantity", format!("{at}.resources.cpu"), problem);
        }
        if let Some(Err(problem)) = res
            .memory
            .as_deref()
            .map(|q| parse_quantity(q, QuantityKind::Memory))
        {
            c.error(
                "invalid-quantity",
                format!("{at}.resources.memory"),
                problem,
            );
        }
        if res.gpu > MAX_GPUS_PER_STEP {
            c.error("gpu-count", format!("{at}.resources.gpu"), format!("step {:?} asks for {} GPUs; a step runs on one node, at most {MAX_GPUS_PER_STEP}", step.name, res.gpu));
        }
        if let Some(gpu_type) = &res.gpu_type {
            if res.gpu == 0 {
                c.error("gpu-type-without-gpu", format!("{at}.resources.gpu_type"), format!("step {:?} names gpu_type {gpu_type:?} but asks for no GPU; set resources.gpu", step.name));
            }
            if let Some(problem) = name_problem(gpu_type) {
                c.error("invalid-name", format!("{at}.resources.gpu_type"), problem);
            }
        }
    }
    if step.retries > MAX_RETRIES {
        c.error(
            "too-many-retries",
            format!("{at}.retries"),
            format!(
                "step {:?} retries {} times; at most {MAX_RETRIES}",
                step.name, step.retries
            ),
        );
    }
    c.duration(&format!("{at}.timeout"), step.timeout.as_deref());
    c.duration(
        &format!("{at}.cache_max_age"),
        step.cache_max_age.as_deref(),
    );
    check_matrix(c, at, step);
    c.cache_version(
        &format!("{at}.cache_version"),
        step.cache_version.as_deref(),
    );
}

/// Checks a step's matrix: named axes of distinct scalar values, a bounded product, and
/// `max_parallel` only with a matrix.
fn check_matrix(c: &mut Checker<'_>, at: &str, step: &Step) {
    for (axis, values) in &step.matrix {
        let path = format!("{at}.matrix.{axis}");
        if !is_identifier(axis, false) {
            c.error(
                "invalid-matrix-name",
                &path,
                format!("matrix axis {axis:?} must be letters, digits and '_'"),
            );
        }
        if values.is_empty() {
            c.error(
                "empty-matrix-axis",
                &path,
                format!("matrix axis {axis:?} has no values"),
            );
        }
        for (v, value) in values.iter().enumerate() {
            let scalar = value.is_string() || value.is_boolean() || value.is_number();
            if !scalar {
                c.error(
                    "invalid-matrix-value",
                    format!("{path}[{v}]"),
                    format!("matrix axis {axis:?} value {value} is not a string, number or bool"),
                );
            } else if values[..v].contains(value) {
                c.error(
                    "duplicate-matrix-value",
                    format!("{path}[{v}]"),
                    format!("matrix axis {axis:?} lists {value} twice"),
                );
            }
        }
    }
    let instances = step.instances();
    if instances > MAX_MATRIX_INSTANCES {
        c.error(
            "too-many-instances",
            format!("{at}.matrix"),
            format!(
                "step {:?} has {instances} matrix instances; at most {MAX_MATRIX_INSTANCES}",
                step.name
            ),
        );
    }
    match step.max_parallel {
        Some(_) if step.matrix.is_empty() => c.error(
            "max-parallel-without-matrix",
            format!("{at}.max_parallel"),
            format!("step {:?} sets max_parallel but has no matrix", step.name),
        ),
        Some(0) => c.error(
            "invalid-max-parallel",
            format!("{at}.max_parallel"),
            "max_parallel must be at least 1",
        ),
        _ => {}
    }
}

fn check_reference(
    c: &mut Checker<'_>,
    path: &str,
    pipeline: &Pipeline,
    step: &Step,
    reference: &Reference,
    names: Names<'_>,
    reads: Reads<'_>,
) {
    let params = &pipeline.spec.params;
    let index = names.dag;
    match reference {
        Reference::Matrix(axis) if !step.matrix.contains_key(axis) => {
            let hint = did_you_mean(axis, step.matrix.keys().map(String::as_str));
            c.error_hint(
                "unknown-matrix-value",
                path,
                format!("step {:?} has no matrix axis {axis:?}", step.name),
                hint,
            );
        }
        Reference::RunState if matches!(reads, Reads::Ancestors(_)) => c.error_hint(
            "run-state-outside-finally",
            path,
            format!(
                "step {:?} reads run.state, which only finally steps can: the run's outcome \
                 is known once the DAG has ended",
                step.name
            ),
            Some(format!("move {:?} to spec.finally", step.name)),
        ),
        Reference::StepOutput { step: from, .. } if names.finally.contains_key(from.as_str()) => c
            .error(
                "reads-finally-step",
                path,
                format!(
                    "step {:?} reads an output of finally step {from:?}; finally steps run \
                     last and all at once, so nothing can read their outputs",
                    step.name
                ),
            ),
        Reference::Param(p) if !params.contains_key(p) => {
            let hint = did_you_mean(p, params.keys().map(String::as_str));
            c.error_hint(
                "unknown-param",
                path,
                format!("template uses undeclared param {p:?}"),
                hint,
            );
        }
        Reference::Output(o) if !step.outputs.contains(o) => {
            let hint = did_you_mean(o, step.outputs.iter().map(String::as_str));
            c.error_hint(
                "unknown-output",
                path,
                format!(
                    "template uses output {o:?}, which step {:?} does not declare in outputs",
                    step.name
                ),
                hint,
            );
        }
        Reference::StepOutput { step: from, output } => match index.get(from.as_str()) {
            None => {
                let hint = did_you_mean(from, index.keys().copied());
                c.error_hint(
                    "unknown-step",
                    path,
                    format!("template reads from unknown step {from:?}"),
                    hint,
                );
            }
            Some(&i) => {
                let producer = &pipeline.spec.steps[i];
                let readable = match reads {
                    Reads::Ancestors(ancestors) => ancestors.contains(from.as_str()),
                    Reads::Dag => true,
                };
                if !readable {
                    c.error_hint(
                        "not-an-ancestor",
                        path,
                        format!(
                            "step {:?} reads an output of {from:?}, which it does not need",
                            step.name
                        ),
                        Some(format!("add {from:?} to the needs of {:?}", step.name)),
                    );
                } else if !producer.outputs.contains(output) {
                    let hint = did_you_mean(output, producer.outputs.iter().map(String::as_str));
                    c.error_hint(
                        "unknown-output",
                        path,
                        format!("step {from:?} has no output {output:?}"),
                        hint,
                    );
                }
            }
        },
        _ => {}
    }
}

/// Checks `steps.S.outputs.Y` references of the model block.
fn check_output_ref(
    c: &mut Checker<'_>,
    path: &str,
    text: &str,
    steps: &[Step],
    index: &HashMap<&str, usize>,
) {
    let parts: Vec<&str> = text.split('.').collect();
    let ["steps", step, "outputs", output] = parts.as_slice() else {
        c.error(
            "invalid-output-ref",
            path,
            format!("{text:?} is not of the form steps.STEP.outputs.NAME"),
        );
        return;
    };
    match index.get(step) {
        None => {
            let hint = did_you_mean(step, index.keys().copied());
            c.error_hint(
                "unknown-step",
                path,
                format!("{text:?} names unknown step {step:?}"),
                hint,
            );
        }
        Some(&i) if !steps[i].outputs.iter().any(|o| o == output) => {
            let hint = did_you_mean(output, steps[i].outputs.iter().map(String::as_str));
            c.error_hint(
                "unknown-output",
                path,
                format!("step {step:?} has no output {output:?}"),
                hint,
            );
        }
        Some(_) => {}
    }
}

/// A model made by a matrix step needs `select` (which instance to register), reading the
/// metrics of the same step's instances; `select` needs a matrix step.
fn check_select(c: &mut Checker<'_>, spec: &PipelineSpec, model: &ModelSpec) {
    let producer = |reference: &str| {
        let step = reference.split('.').nth(1)?;
        spec.steps.iter().find(|s| s.name == step)
    };
    let from_matrix = producer(&model.artifact).is_some_and(|s| !s.matrix.is_empty());
    match &model.select {
        None if from_matrix => c.error_hint(
            "matrix-model-without-select",
            "spec.model.artifact",
            format!(
                "{} is made by every instance of a matrix step; say which one to register",
                model.artifact
            ),
            Some("add select: {metric: NAME, greater_is_better: true}".to_owned()),
        ),
        None => {}
        Some(_) if !from_matrix => c.error(
            "select-without-matrix",
            "spec.model.select",
            format!(
                "select picks among the instances of a matrix step, but {} is not made by one",
                model.artifact
            ),
        ),
        Some(select) => {
            let same = model
                .metrics
                .as_deref()
                .and_then(producer)
                .zip(producer(&model.artifact))
                .is_some_and(|(m, a)| m.name == a.name);
            if !same {
                c.error(
                    "select-metrics-elsewhere",
                    "spec.model.select",
                    "select compares the instances' metrics: spec.model.metrics must be an \
                     output of the same matrix step as the artifact",
                );
            }
            if select.metric.trim().is_empty() {
                c.error(
                    "select-without-metric",
                    "spec.model.select.metric",
                    "select metric is empty",
                );
            }
        }
    }
}

/// Checks a schedule on its own (its pipeline reference is checked with the catalog).
pub fn check_schedule(schedule: &Schedule, line: u32, out: &mut Vec<Finding>) {
    let mut c = Checker { line, out };
    let spec = &schedule.spec;
    c.name("metadata.name", &schedule.metadata.name);
    c.name("spec.pipeline", &spec.pipeline);
    let tz = match parse_timezone(&spec.timezone) {
        Ok(tz) => tz,
        Err((message, hint)) => {
            c.error_hint("unknown-timezone", "spec.timezone", message, hint);
            chrono_tz::UTC
        }
    };
    if let Err(problem) = CronSchedule::new(&spec.cron, tz) {
        c.error("invalid-cron", "spec.cron", problem);
    }
    c.duration("spec.starting_deadline", spec.starting_deadline.as_deref());
    if spec.max_catchup == 0 || spec.max_catchup > MAX_CATCHUP {
        c.error(
            "invalid-max-catchup",
            "spec.max_catchup",
            format!("max_catchup must be 1 to {MAX_CATCHUP}"),
        );
    }
    if spec.pause_after_failures == Some(0) {
        c.error(
            "invalid-pause-after-failures",
            "spec.pause_after_failures",
            "pause_after_failures must be at least 1; leave it out to never pause",
        );
    }
    for name in spec.params.keys() {
        if !is_identifier(name, false) {
            c.error(
                "invalid-param-name",
                format!("spec.params.{name}"),
                format!("param name {name:?} is not a valid param name"),
            );
        }
    }
}

/// Checks `trainyard.yaml`.
pub fn check_settings(settings: &Settings, line: u32, out: &mut Vec<Finding>) {
    let mut c = Checker { line, out };
    if let Some(image) = &settings.image {
        check_image(&mut c, "image", image);
    }
    for (i, path) in settings.policies.iter().enumerate() {
        if path.starts_with('/') || path.split(['/', '\\']).any(|part| part == "..") {
            c.error(
                "path-escapes",
                format!("policies[{i}]"),
                format!("policy path {path:?} must stay inside the repository"),
            );
        } else if !path.ends_with(".rego") {
            c.error(
                "invalid-policy-path",
                format!("policies[{i}]"),
                format!("policy file {path:?} must end in .rego"),
            );
        }
    }
    c.duration("default_timeout", settings.default_timeout.as_deref());
}

/// What is wrong with one param of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamProblem {
    /// The param given, when the problem is with a given value (not a missing one).
    pub param: Option<String>,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

/// A run's parameters, resolved: every declared param with its value (a JSON number,
/// string or boolean).
pub type Params = BTreeMap<String, serde_json::Value>;

/// Values given as text (`epochs=3` on a command line or in a comment) typed as `pipeline`
/// declares them: a text that does not read as its param's type stays text, for
/// [`resolve_params`] to refuse with the param's type.
pub fn typed_params(
    pipeline: &Pipeline,
    given: &BTreeMap<String, String>,
) -> BTreeMap<String, serde_json::Value> {
    use crate::spec::model::ParamType;
    given
        .iter()
        .map(|(name, text)| {
            let value = match pipeline.spec.params.get(name).map(|p| p.ty) {
                Some(ParamType::Int) => text.parse::<i64>().map(serde_json::Value::from).ok(),
                Some(ParamType::Float) => text
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                    .map(serde_json::Value::Number),
                Some(ParamType::Bool) => text.parse::<bool>().map(serde_json::Value::from).ok(),
                _ => None,
            };
            (
                name.clone(),
                value.unwrap_or_else(|| serde_json::Value::from(text.as_str())),
            )
        })
        .collect()
}

/// The params a run of `pipeline` would get from `overrides`, or what is wrong with them.
/// Shared by schedule checks and manual runs.
pub fn resolve_params(
    pipeline: &Pipeline,
    overrides: &BTreeMap<String, serde_json::Value>,
) -> Result<Params, Vec<ParamProblem>> {
    let declared = &pipeline.spec.params;
    let mut problems = Vec::new();
    for (name, value) in overrides {
        match declared.get(name) {
            None => problems.push(ParamProblem {
                param: Some(name.clone()),
                message: format!(
                    "pipeline {:?} has no param {name:?}",
                    pipeline.metadata.name
                ),
                hint: did_you_mean(name, declared.keys().map(String::as_str)),
            }),
            Some(p) if !p.ty.accepts(value) => problems.push(ParamProblem {
                param: Some(name.clone()),
                message: format!(
                    "param {name:?} of pipeline {:?} is {}, but {value} is not",
                    pipeline.metadata.name, p.ty
                ),
                hint: None,
            }),
            Some(_) => {}
        }
    }
    let mut resolved = BTreeMap::new();
    for (name, p) in declared {
        match overrides.get(name).or(p.default.as_ref()) {
            Some(v) => {
                resolved.insert(name.clone(), v.clone());
            }
            None => problems.push(ParamProblem {
                param: None,
                message: format!(
                    "param {name:?} of pipeline {:?} has no default and is not set",
                    pipeline.metadata.name
                ),
                hint: Some(format!("set {name} in spec.params")),
            }),
        }
    }
    if problems.is_empty() {
        Ok(resolved)
    } else {
        Err(problems)
    }
}
