//! The definitions loader on structure-aware YAML: a small arbitrary tree of Pipeline and
//! Schedule documents (names from a small pool so that needs, schedules and templates
//! refer to each other, plus free text), rendered to YAML and checked as a snapshot. Well-
//! formed documents must all parse, so the fuzzer spends its time in the semantic checks.
#![no_main]

use std::fmt::Write as _;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use trainyard::spec::{self, Document};
use trainyard_fuzz::{Files, check};

/// Names the documents share, so references often resolve.
const NAMES: &[&str] = &["train", "prepare", "eval", "a", "nightly", "x-1"];
const IMAGES: &[&str] = &[
    "img@sha256:0",
    "ghcr.io/acme/train:1.2",
    "python:3.12",
    "busybox",
];
const CRONS: &[&str] = &[
    "0 2 * * *",
    "*/5 * * * *",
    "0 0 6 * * 0",
    "@daily",
    "@midnight",
    "0 0 30 2 *",
    "* * * * * *",
    "30 2 * * *",
    "0 9 * * MON-FRI",
];
const ZONES: &[&str] = &[
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",
    "Asia/Kathmandu",
];
const DURATIONS: &[&str] = &["30s", "10m", "4h", "1h30m", "2d", "0s", "1.5h"];
const CPUS: &[&str] = &["500m", "8", "1.5", "0", "1e3", "64Gi"];
const MEMORY: &[&str] = &["512Mi", "64Gi", "512m", "1e3", "8"];
const PARAM_TYPES: &[&str] = &["int", "float", "string", "bool", "list"];

/// Text from a pool of meaningful values, or anything.
#[derive(Debug)]
enum Text<const POOL: usize> {
    Pool(u8),
    Free(String),
}

impl<'a, const POOL: usize> Arbitrary<'a> for Text<POOL> {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        if u.ratio(7, 8)? {
            Ok(Text::Pool(u.arbitrary()?))
        } else {
            Ok(Text::Free(u.arbitrary()?))
        }
    }
}

/// Which pool a [`Text`] draws from.
const P_NAME: usize = 0;
const P_IMAGE: usize = 1;
const P_CRON: usize = 2;
const P_ZONE: usize = 3;
const P_DURATION: usize = 4;
const P_CPU: usize = 5;
const P_MEMORY: usize = 6;
const P_TYPE: usize = 7;

fn pool(which: usize) -> &'static [&'static str] {
    match which {
        P_NAME => NAMES,
        P_IMAGE => IMAGES,
        P_CRON => CRONS,
        P_ZONE => ZONES,
        P_DURATION => DURATIONS,
        P_CPU => CPUS,
        P_MEMORY => MEMORY,
        _ => PARAM_TYPES,
    }
}

impl<const POOL: usize> Text<POOL> {
    fn get(&self) -> String {
        match self {
            Text::Pool(i) => {
                let values = pool(POOL);
                values[usize::from(*i) % values.len()].to_owned()
            }
            Text::Free(s) => s.clone(),
        }
    }
}

type Name = Text<P_NAME>;

/// A YAML scalar value for params and gates.
#[derive(Debug, Arbitrary)]
enum Value {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(Name),
    Null,
}

impl Value {
    fn yaml(&self) -> String {
        match self {
            Value::Int(i) => i.to_string(),
            Value::Float(f) if f.is_finite() => format!("{f:?}"),
            Value::Float(f) if f.is_nan() => ".nan".to_owned(),
            Value::Float(f) if *f > 0.0 => ".inf".to_owned(),
            Value::Float(_) => "-.inf".to_owned(),
            Value::Bool(b) => b.to_string(),
            Value::Str(s) => quote(&s.get()),
            Value::Null => "null".to_owned(),
        }
    }
}

/// One argv element or env value: literal text or a template.
#[derive(Debug, Arbitrary)]
enum Arg {
    Literal(Name),
    Param(Name),
    Output(Name),
    StepOutput(Name, Name),
    RunId,
    ScheduledTime,
    Broken(String),
}

impl Arg {
    fn text(&self) -> String {
        match self {
            Arg::Literal(s) => s.get(),
            Arg::Param(p) => format!("--p={{{{ params.{} }}}}", p.get()),
            Arg::Output(o) => format!("{{{{ outputs.{} }}}}", o.get()),
            Arg::StepOutput(s, o) => format!("{{{{ steps.{}.outputs.{} }}}}", s.get(), o.get()),
            Arg::RunId => "{{ run.id }}".to_owned(),
            Arg::ScheduledTime => "{{run.scheduled_time}}".to_owned(),
            Arg::Broken(s) => format!("{{{{ {s}"),
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Resources {
    cpu: Option<Text<P_CPU>>,
    memory: Option<Text<P_MEMORY>>,
    gpu: Option<u32>,
    gpu_type: Option<Name>,
}

#[derive(Debug, Arbitrary)]
struct Step {
    name: Name,
    image: Option<Text<P_IMAGE>>,
    needs: Vec<Name>,
    run: Vec<Arg>,
    outputs: Vec<Name>,
    env: Vec<(Name, Arg)>,
    secrets: Vec<Name>,
    resources: Option<Resources>,
    retries: Option<u32>,
    timeout: Option<Text<P_DURATION>>,
}

#[derive(Debug, Arbitrary)]
struct Param {
    name: Name,
    ty: Text<P_TYPE>,
    default: Option<Value>,
}

#[derive(Debug, Arbitrary)]
struct Gate {
    metric: Name,
    min: Option<f64>,
    max: Option<f64>,
    not_worse_than: Option<Name>,
    greater_is_better: Option<bool>,
}

#[derive(Debug, Arbitrary)]
struct Model {
    name: Name,
    artifact: (Name, Name),
    metrics: Option<(Name, Name)>,
    gates: Vec<Gate>,
    promote: Option<Name>,
}

#[derive(Debug, Arbitrary)]
struct Pipeline {
    name: Name,
    owner: Option<Name>,
    labels: Vec<(Name, Name)>,
    image: Option<Text<P_IMAGE>>,
    params: Vec<Param>,
    on_change: bool,
    steps: Vec<Step>,
    model: Option<Model>,
}

#[derive(Debug, Arbitrary)]
struct Schedule {
    name: Name,
    pipeline: Name,
    cron: Text<P_CRON>,
    timezone: Option<Text<P_ZONE>>,
    params: Vec<(Name, Value)>,
    concurrency: Option<u8>,
    catchup: Option<u8>,
    max_catchup: Option<u32>,
    starting_deadline: Option<Text<P_DURATION>>,
    pause_after_failures: Option<u32>,
    suspend: bool,
}

#[derive(Debug, Arbitrary)]
enum Doc {
    Pipeline(Pipeline),
    Schedule(Schedule),
}

#[derive(Debug, Arbitrary)]
struct Settings {
    image: Option<Text<P_IMAGE>>,
    allow_empty: bool,
    default_timeout: Option<Text<P_DURATION>>,
}

#[derive(Debug, Arbitrary)]
struct Snapshot {
    settings: Option<Settings>,
    files: Vec<Vec<Doc>>,
}

/// A YAML double-quoted scalar, escaping every character YAML does not allow printed (and
/// line breaks, which a double-quoted scalar would fold).
fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for ch in text.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' | '\u{a0}'..='\u{2027}' | '\u{202a}'..='\u{d7ff}' => out.push(ch),
            '\u{e000}'..='\u{fefe}' | '\u{ff00}'..='\u{fffd}' | '\u{10000}'.. => out.push(ch),
            _ if u32::from(ch) <= 0xffff => {
                let _ = write!(out, "\\u{:04x}", u32::from(ch));
            }
            _ => {
                let _ = write!(out, "\\U{:08x}", u32::from(ch));
            }
        }
    }
    out.push('"');
    out
}

fn float(f: f64) -> String {
    Value::Float(f).yaml()
}

fn list(items: impl IntoIterator<Item = String>) -> String {
    format!("[{}]", items.into_iter().collect::<Vec<_>>().join(", "))
}

fn render_pipeline(p: &Pipeline, out: &mut String) {
    out.push_str("apiVersion: trainyard.dev/v1\nkind: Pipeline\nmetadata:\n");
    let _ = writeln!(out, "  name: {}", quote(&p.name.get()));
    if let Some(owner) = &p.owner {
        let _ = writeln!(out, "  owner: {}", quote(&owner.get()));
    }
    if !p.labels.is_empty() {
        out.push_str("  labels:\n");
        for (k, v) in &p.labels {
            let _ = writeln!(out, "    {}: {}", quote(&k.get()), quote(&v.get()));
        }
    }
    out.push_str("spec:\n");
    if let Some(image) = &p.image {
        let _ = writeln!(out, "  image: {}", quote(&image.get()));
    }
    if p.on_change {
        out.push_str("  triggers: {on_change: true}\n");
    }
    if !p.params.is_empty() {
        out.push_str("  params:\n");
        for param in &p.params {
            let _ = write!(
                out,
                "    {}: {{type: {}",
                quote(&param.name.get()),
                quote(&param.ty.get())
            );
            if let Some(default) = &param.default {
                let _ = write!(out, ", default: {}", default.yaml());
            }
            out.push_str("}\n");
        }
    }
    out.push_str("  steps:\n");
    if p.steps.is_empty() {
        out.push_str("    []\n");
    }
    for step in &p.steps {
        let _ = writeln!(out, "    - name: {}", quote(&step.name.get()));
        if let Some(image) = &step.image {
            let _ = writeln!(out, "      image: {}", quote(&image.get()));
        }
        if !step.needs.is_empty() {
            let needs = list(step.needs.iter().map(|n| quote(&n.get())));
            let _ = writeln!(out, "      needs: {needs}");
        }
        let run = list(step.run.iter().map(|a| quote(&a.text())));
        let _ = writeln!(out, "      run: {run}");
        if !step.outputs.is_empty() {
            let outputs = list(step.outputs.iter().map(|n| quote(&n.get())));
            let _ = writeln!(out, "      outputs: {outputs}");
        }
        if !step.env.is_empty() {
            out.push_str("      env:\n");
            for (k, v) in &step.env {
                let _ = writeln!(out, "        {}: {}", quote(&k.get()), quote(&v.text()));
            }
        }
        if !step.secrets.is_empty() {
            let secrets = list(step.secrets.iter().map(|n| quote(&n.get())));
            let _ = writeln!(out, "      env_from_secrets: {secrets}");
        }
        if let Some(r) = &step.resources {
            out.push_str("      resources: {");
            let mut fields = Vec::new();
            if let Some(cpu) = &r.cpu {
                fields.push(format!("cpu: {}", quote(&cpu.get())));
            }
            if let Some(memory) = &r.memory {
                fields.push(format!("memory: {}", quote(&memory.get())));
            }
            if let Some(gpu) = r.gpu {
                fields.push(format!("gpu: {gpu}"));
            }
            if let Some(t) = &r.gpu_type {
                fields.push(format!("gpu_type: {}", quote(&t.get())));
            }
            out.push_str(&fields.join(", "));
            out.push_str("}\n");
        }
        if let Some(retries) = step.retries {
            let _ = writeln!(out, "      retries: {retries}");
        }
        if let Some(timeout) = &step.timeout {
            let _ = writeln!(out, "      timeout: {}", quote(&timeout.get()));
        }
    }
    if let Some(m) = &p.model {
        out.push_str("  model:\n");
        let _ = writeln!(out, "    name: {}", quote(&m.name.get()));
        let output =
            |(s, o): &(Name, Name)| quote(&format!("steps.{}.outputs.{}", s.get(), o.get()));
        let _ = writeln!(out, "    artifact: {}", output(&m.artifact));
        if let Some(metrics) = &m.metrics {
            let _ = writeln!(out, "    metrics: {}", output(metrics));
        }
        if let Some(promote) = &m.promote {
            let _ = writeln!(out, "    promote: {}", quote(&promote.get()));
        }
        if !m.gates.is_empty() {
            out.push_str("    gate:\n");
            for g in &m.gates {
                let _ = write!(out, "      - {{metric: {}", quote(&g.metric.get()));
                if let Some(min) = g.min {
                    let _ = write!(out, ", min: {}", float(min));
                }
                if let Some(max) = g.max {
                    let _ = write!(out, ", max: {}", float(max));
                }
                if let Some(alias) = &g.not_worse_than {
                    let _ = write!(out, ", not_worse_than: {}", quote(&alias.get()));
                }
                if let Some(b) = g.greater_is_better {
                    let _ = write!(out, ", greater_is_better: {b}");
                }
                out.push_str("}\n");
            }
        }
    }
}

fn render_schedule(s: &Schedule, out: &mut String) {
    out.push_str("apiVersion: trainyard.dev/v1\nkind: Schedule\nmetadata:\n");
    let _ = writeln!(out, "  name: {}", quote(&s.name.get()));
    out.push_str("spec:\n");
    let _ = writeln!(out, "  pipeline: {}", quote(&s.pipeline.get()));
    let _ = writeln!(out, "  cron: {}", quote(&s.cron.get()));
    if let Some(tz) = &s.timezone {
        let _ = writeln!(out, "  timezone: {}", quote(&tz.get()));
    }
    if !s.params.is_empty() {
        out.push_str("  params:\n");
        for (k, v) in &s.params {
            let _ = writeln!(out, "    {}: {}", quote(&k.get()), v.yaml());
        }
    }
    if let Some(c) = s.concurrency {
        let value = ["allow", "forbid", "replace", "sometimes"][usize::from(c) % 4];
        let _ = writeln!(out, "  concurrency: {value}");
    }
    if let Some(c) = s.catchup {
        let value = ["none", "latest", "all", "some"][usize::from(c) % 4];
        let _ = writeln!(out, "  catchup: {value}");
    }
    if let Some(n) = s.max_catchup {
        let _ = writeln!(out, "  max_catchup: {n}");
    }
    if let Some(d) = &s.starting_deadline {
        let _ = writeln!(out, "  starting_deadline: {}", quote(&d.get()));
    }
    if let Some(n) = s.pause_after_failures {
        let _ = writeln!(out, "  pause_after_failures: {n}");
    }
    if s.suspend {
        out.push_str("  suspend: true\n");
    }
}

fn render_settings(s: &Settings) -> String {
    let mut out = String::new();
    if let Some(image) = &s.image {
        let _ = writeln!(out, "image: {}", quote(&image.get()));
    }
    if s.allow_empty {
        out.push_str("allow_empty: true\n");
    }
    if let Some(t) = &s.default_timeout {
        let _ = writeln!(out, "default_timeout: {}", quote(&t.get()));
    }
    out
}

/// Whether a document's text can be read into the typed model: values of the wrong type
/// (free text where a number goes, an unknown enum) are refused by design, not a bug.
/// Keys given twice are refused too.
fn well_typed(doc: &Doc) -> bool {
    match doc {
        Doc::Pipeline(p) => {
            p.params.iter().all(
                |param| matches!(param.ty, Text::Pool(i) if usize::from(i) % PARAM_TYPES.len() < 4),
            ) && p.params.iter().all(|param| param.default.as_ref().is_none_or(finite))
                && unique(p.params.iter().map(|param| &param.name))
                && unique(p.labels.iter().map(|(k, _)| k))
                && p.steps
                    .iter()
                    .all(|step| unique(step.env.iter().map(|(k, _)| k)))
        }
        Doc::Schedule(s) => {
            s.concurrency.is_none_or(|c| c % 4 < 3)
                && s.catchup.is_none_or(|c| c % 4 < 3)
                && unique(s.params.iter().map(|(k, _)| k))
                && s.params.iter().all(|(_, value)| finite(value))
        }
    }
}

/// Whether `value` is one YAML reads into the model: `.nan` and `.inf` are refused by the
/// parser, with their line and column (found by fuzzing: the target took a schedule param
/// `.nan` for well typed).
fn finite(value: &Value) -> bool {
    !matches!(value, Value::Float(f) if !f.is_finite())
}

fn unique<'a>(mut keys: impl Iterator<Item = &'a Name>) -> bool {
    let mut seen = std::collections::HashSet::new();
    keys.all(|k| seen.insert(k.get()))
}

fuzz_target!(|snapshot: Snapshot| {
    let settings = snapshot.settings.as_ref().map(render_settings);
    let mut texts = Vec::new();
    for docs in snapshot.files.iter().take(8) {
        let mut text = String::from("# rendered by the fuzz target\n");
        for (i, doc) in docs.iter().enumerate() {
            if i > 0 {
                text.push_str("---\n");
            }
            match doc {
                Doc::Pipeline(p) => render_pipeline(p, &mut text),
                Doc::Schedule(s) => render_schedule(s, &mut text),
            }
        }
        let parsed = spec::parse_file(text.as_bytes());
        if docs.iter().all(well_typed) {
            // Every rendered document reads into the model; only the checks may object.
            assert_eq!(
                parsed.documents.len(),
                docs.len(),
                "{text}\n{:#?}",
                parsed.findings
            );
            for (doc, parsed) in docs.iter().zip(&parsed.documents) {
                let same_kind = matches!(
                    (doc, &parsed.document),
                    (Doc::Pipeline(_), Document::Pipeline(_))
                        | (Doc::Schedule(_), Document::Schedule(_))
                );
                assert!(same_kind, "{text}");
            }
        }
        texts.push(text);
    }
    let files = Files {
        settings: settings.as_deref().map(str::as_bytes),
        documents: texts
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("f{i}.yaml"), t.as_bytes()))
            .collect(),
    };
    check(&files);
});
