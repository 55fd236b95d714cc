//! The job of one step attempt, built from the run and its pinned pipeline: argv and env with
//! their templates rendered, inputs and outputs placed, labels and annotations set. No I/O.
//!
//! A template that cannot be rendered is an error for that run, never literal text or an
//! empty argument: a program must not start with arguments it was not meant to get. A
//! finally step reading an output of a DAG step that did not succeed gets the path it would
//! have had, with no file there: it runs however the DAG ended, so it checks for the file.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::artifacts;
use crate::execute::{StepInput, StepJob, StepOutput, StepSource};
use crate::spec::Pipeline;
use crate::spec::model::instance_of;
use crate::spec::template::{self, Reference};
use crate::spec::units::parse_duration;
use crate::store::{RunRow, RunState};

/// What a finally step is told of the DAG that ended before it.
pub struct DagEnd<'a> {
    /// How the DAG ended, for `{{ run.state }}`.
    pub state: RunState,
    /// The DAG's steps that succeeded: only their outputs are placed for it to read.
    pub succeeded: &'a HashSet<&'a str>,
}

/// Where an attempt runs and what it inherits from the repository's settings.
pub struct Placement<'a> {
    /// The executor's directory for this job (see `Executor::job_dir`).
    pub job_dir: PathBuf,
    /// The step's working directory: its folder in the run's checkout, or in `source`.
    pub workdir: PathBuf,
    /// Where the step's files come from when it does not run beside the checkout.
    pub source: Option<StepSource>,
    /// The repository's default timeout (`trainyard.yaml`), for steps that set none.
    pub default_timeout: Option<&'a str>,
    /// The repository's default image, for steps and pipelines that set none.
    pub default_image: Option<&'a str>,
    /// This installation's identity.
    pub installation: &'a str,
}

/// The folder of the pipeline file `file`, where its steps run.
pub fn step_dir(file: &str) -> &Path {
    Path::new(file).parent().unwrap_or(Path::new(""))
}

/// The job of attempt `attempt` of `step` in `run`, named `name`; `dag_end` is set for a
/// finally step. `Err` says why it cannot be built (a template that does not render, a step
/// the pipeline does not declare).
pub fn build(
    run: &RunRow,
    pipeline: &Pipeline,
    step: &str,
    attempt: u32,
    name: &str,
    place: Placement<'_>,
    dag_end: Option<&DagEnd<'_>>,
) -> Result<StepJob, String> {
    let definition = pipeline
        .spec
        .step(step)
        .ok_or_else(|| format!("its pipeline version declares no step {step:?}"))?;
    let job_dir = place.job_dir;
    let outputs: Vec<StepOutput> = definition
        .outputs
        .iter()
        .map(|o| StepOutput {
            name: o.clone(),
            path: job_dir.join("outputs").join(o),
            key: artifacts::output_key(place.installation, run.id, step, o),
        })
        .collect();
    let mut inputs: Vec<StepInput> = Vec::new();
    let combination = match instance_of(step) {
        (_, Some(index)) => definition.combination(index),
        (_, None) => BTreeMap::new(),
    };
    let scheduled = run.scheduled_at.unwrap_or(run.created_at).to_rfc3339();
    let mut render = |what: &str, text: &str| -> Result<String, String> {
        let pieces = template::parse(text).map_err(|e| format!("{what} {text:?}: {e}"))?;
        template::render(&pieces, |reference| {
            Ok(match reference {
                Reference::Param(p) => match run.params.get(p) {
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                    None => return Err(format!("{what} {text:?}: param {p:?} has no value")),
                },
                Reference::Output(o) => {
                    if !definition.outputs.contains(o) {
                        return Err(format!(
                            "{what} {text:?}: the step declares no output {o:?}"
                        ));
                    }
                    job_dir.join("outputs").join(o).display().to_string()
                }
                Reference::StepOutput { step: from, output } => {
                    let path = job_dir.join("inputs").join(from).join(output);
                    let exists = dag_end.is_none_or(|end| end.succeeded.contains(from.as_str()));
                    if exists
                        && !inputs
                            .iter()
                            .any(|i| i.path == path || i.path.starts_with(&path))
                    {
                        match pipeline.spec.step(from).filter(|s| !s.matrix.is_empty()) {
                            // A matrix step's output is a directory: one file per
                            // instance, and the index of their values.
                            Some(producer) => {
                                for (i, instance) in producer.instance_names().iter().enumerate() {
                                    inputs.push(StepInput {
                                        key: artifacts::output_key(
                                            place.installation,
                                            run.id,
                                            instance,
                                            output,
                                        ),
                                        path: path.join(i.to_string()),
                                    });
                                }
                                inputs.push(StepInput {
                                    key: index_key(place.installation, run.id, from, output),
                                    path: path.join(INDEX_FILE),
                                });
                            }
                            None => inputs.push(StepInput {
                                key: artifacts::output_key(
                                    place.installation,
                                    run.id,
                                    from,
                                    output,
                                ),
                                path: path.clone(),
                            }),
                        }
                    }
                    path.display().to_string()
                }
                Reference::Matrix(axis) => match combination.get(axis) {
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                    None => {
                        return Err(format!(
                            "{what} {text:?}: step {step:?} has no matrix value {axis:?}"
                        ));
                    }
                },
                Reference::RunId => run.id.to_string(),
                Reference::RunScheduledTime => scheduled.clone(),
                Reference::RunState => match dag_end {
                    Some(end) => end.state.as_str().to_owned(),
                    None => {
                        return Err(format!(
                            "{what} {text:?}: run.state is known only to finally steps"
                        ));
                    }
                },
            })
        })
    };
    let argv = definition
        .run
        .iter()
        .enumerate()
        .map(|(i, a)| render(&format!("argument {}", i + 1), a))
        .collect::<Result<Vec<_>, _>>()?;
    let env = definition
        .env
        .iter()
        .map(|(k, v)| Ok((k.clone(), render(&format!("env {k}"), v)?)))
        .collect::<Result<BTreeMap<_, _>, String>>()?;
    let timeout = match definition.timeout.as_deref().or(place.default_timeout) {
        Some(text) => Some(timeout_of(text)?),
        None => None,
    };
    let image = definition
        .image
        .as_deref()
        .or(pipeline.spec.image.as_deref())
        .or(place.default_image)
        .unwrap_or_default()
        .to_owned();
    let labels = BTreeMap::from([
        ("trainyard.dev/run".to_owned(), run.id.to_string()),
        ("trainyard.dev/pipeline".to_owned(), run.pipeline.clone()),
        ("trainyard.dev/step".to_owned(), step.to_owned()),
    ]);
    let mut annotations = BTreeMap::from([
        ("trainyard.dev/commit".to_owned(), run.commit_sha.clone()),
        (
            "trainyard.dev/version".to_owned(),
            run.pipeline_version.clone(),
        ),
    ]);
    if let Some(schedule) = &run.schedule {
        annotations.insert("trainyard.dev/schedule".to_owned(), schedule.clone());
    }
    Ok(StepJob {
        name: name.to_owned(),
        instance: place.installation.to_owned(),
        run_id: run.id,
        step: step.to_owned(),
        attempt,
        argv,
        env,
        image,
        resources: definition.resources.clone(),
        timeout,
        job_dir,
        workdir: place.workdir,
        source: place.source,
        inputs,
        outputs,
        log_key: artifacts::log_key(name),
        labels,
        annotations,
        secrets: definition.env_from_secrets.clone(),
    })
}

/// The file beside the instances' files of a matrix step's output, mapping each file's name
/// to its instance's values.
pub const INDEX_FILE: &str = "index.json";

/// The key of the index of matrix step `step`'s output `output` in `run`.
pub fn index_key(installation: &str, run: i64, step: &str, output: &str) -> String {
    format!(
        "{}/{INDEX_FILE}",
        artifacts::output_key(installation, run, step, output)
    )
}

/// The indexes the job of `step` reads, as (key, content): one per output of a matrix step
/// its templates name. Their content follows from the pinned definition alone, so writing
/// one again writes the same bytes.
pub fn indexes(
    run: &RunRow,
    pipeline: &Pipeline,
    step: &str,
    installation: &str,
) -> Vec<(String, Vec<u8>)> {
    let Some(definition) = pipeline.spec.step(step) else {
        return Vec::new();
    };
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let texts = definition.run.iter().chain(definition.env.values());
    for reference in texts.filter_map(|t| template::references(t).ok()).flatten() {
        let Reference::StepOutput { step: from, output } = reference else {
            continue;
        };
        let Some(producer) = pipeline.spec.step(&from).filter(|s| !s.matrix.is_empty()) else {
            continue;
        };
        let key = index_key(installation, run.id, &from, &output);
        if out.iter().any(|(k, _)| *k == key) {
            continue;
        }
        let index: BTreeMap<String, BTreeMap<String, Value>> = (0..producer.instances())
            .map(|i| (i.to_string(), producer.combination(i)))
            .collect();
        // Maps of strings to JSON values always serialize.
        out.push((key, serde_json::to_vec_pretty(&index).unwrap_or_default()));
    }
    out
}

/// A step's timeout; validation refused any that does not parse, so one that does not is a
/// stored definition this version cannot read.
fn timeout_of(text: &str) -> Result<Duration, String> {
    parse_duration(text).map_err(|e| format!("timeout {text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::spec::parse_file;
    use crate::store::{RunState, Trigger};

    fn pipeline(steps: &str) -> Pipeline {
        let text = format!(
            "apiVersion: trainyard.dev/v1\nkind: Pipeline\nmetadata: {{name: p, owner: t}}\n\
             spec:\n  image: i\n  params: {{epochs: {{type: int, default: 3}}, name: {{type: string, default: x}}}}\n  steps:\n{steps}"
        );
        let parsed = parse_file(text.as_bytes());
        let doc = parsed.documents.into_iter().next().expect("a document");
        match doc.document {
            crate::spec::model::Document::Pipeline(p) => p.as_ref().clone(),
            other => panic!("a pipeline, got {other:?}"),
        }
    }

    fn run(params: &[(&str, Value)]) -> RunRow {
        RunRow {
            id: 7,
            pipeline: "p".to_owned(),
            pipeline_version: "v".to_owned(),
            commit_sha: "c".repeat(40),
            trigger: Trigger::Manual,
            schedule: None,
            scheduled_at: None,
            params: params
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            state: RunState::Pending,
            message: None,
            cancel_requested: false,
            dag_state: None,
            no_cache: false,
            created_at: Utc::now(),
            started_at: None,
            finished_at: None,
        }
    }

    fn place() -> Placement<'static> {
        Placement {
            job_dir: PathBuf::from("/work/ty-7-a-1"),
            workdir: PathBuf::from("/src"),
            source: None,
            default_timeout: None,
            default_image: None,
            installation: "abc",
        }
    }

    #[test]
    fn templates_are_rendered_inside_single_arguments() {
        let p = pipeline(
            "    - {name: a, run: [train, --epochs, '{{ params.epochs }}', 'out={{ outputs.m }}'], outputs: [m]}\n",
        );
        let job = build(
            &run(&[("epochs", Value::from(5)), ("name", Value::from("x"))]),
            &p,
            "a",
            1,
            "ty-abc-7-a-1",
            place(),
            None,
        )
        .expect("a job");
        assert_eq!(
            job.argv,
            ["train", "--epochs", "5", "out=/work/ty-7-a-1/outputs/m"]
        );
        assert_eq!(job.instance, "abc");
        assert_eq!(job.log_key, "jobs/ty-abc-7-a-1/log");
    }

    #[test]
    fn a_param_without_a_value_fails_the_attempt_instead_of_becoming_an_empty_argument() {
        let p = pipeline("    - {name: a, run: [train, '{{ params.epochs }}']}\n");
        let error =
            build(&run(&[]), &p, "a", 1, "ty-abc-7-a-1", place(), None).expect_err("no value");
        assert!(
            error.contains("argument 2") && error.contains("\"epochs\""),
            "{error}"
        );
    }

    fn finally_pipeline() -> Pipeline {
        let text = "apiVersion: trainyard.dev/v1\nkind: Pipeline\nmetadata: {name: p, owner: t}\n\
             spec:\n  image: i\n  steps:\n    - {name: a, run: [x], outputs: [m]}\n    - {name: b, run: [x], outputs: [n]}\n\
             \x20 finally:\n    - {name: f, run: [r, '{{ run.state }}', '{{ steps.a.outputs.m }}', '{{ steps.b.outputs.n }}']}\n";
        let parsed = parse_file(text.as_bytes());
        assert!(parsed.findings.is_empty(), "{:?}", parsed.findings);
        match parsed.documents.into_iter().next().map(|d| d.document) {
            Some(crate::spec::model::Document::Pipeline(p)) => p.as_ref().clone(),
            other => panic!("a pipeline, got {other:?}"),
        }
    }

    #[test]
    fn a_finally_step_reads_the_dag_s_state_and_gets_only_outputs_that_exist() {
        let p = finally_pipeline();
        let succeeded = HashSet::from(["a"]);
        let end = DagEnd {
            state: RunState::Failed,
            succeeded: &succeeded,
        };
        let job = build(&run(&[]), &p, "f", 1, "n", place(), Some(&end)).expect("a job");
        assert_eq!(
            job.argv,
            [
                "r",
                "failed",
                "/work/ty-7-a-1/inputs/a/m",
                "/work/ty-7-a-1/inputs/b/n"
            ]
        );
        let placed: Vec<&Path> = job.inputs.iter().map(|i| i.path.as_path()).collect();
        assert_eq!(placed, [Path::new("/work/ty-7-a-1/inputs/a/m")]);
    }

    #[test]
    fn run_state_outside_a_finally_step_is_an_error() {
        let p = finally_pipeline();
        let error = build(&run(&[]), &p, "f", 1, "n", place(), None).expect_err("no DAG end");
        assert!(error.contains("run.state"), "{error}");
    }

    #[test]
    fn a_step_the_version_does_not_declare_is_an_error() {
        let p = pipeline("    - {name: a, run: [x]}\n");
        let error = build(&run(&[]), &p, "b", 1, "n", place(), None).expect_err("unknown step");
        assert!(error.contains("\"b\""), "{error}");
    }

    #[test]
    fn an_instance_reads_its_values_and_the_next_step_a_directory_of_every_instance() {
        let p = pipeline(
            "    - {name: t, run: [x, '{{ matrix.lr }}', '{{ matrix.name }}'], matrix: {lr: [0.1, 0.01], name: [a, b]}, outputs: [m]}\n    - {name: u, needs: [t], run: [y, '{{ steps.t.outputs.m }}']}\n",
        );
        let third = build(&run(&[]), &p, "t.2", 1, "n", place(), None).expect("a job");
        assert_eq!(third.argv, ["x", "0.01", "a"]);
        assert_eq!(third.outputs[0].key, "abc/runs/7/t.2/m");
        let next = build(&run(&[]), &p, "u", 1, "n", place(), None).expect("a job");
        assert_eq!(next.argv, ["y", "/work/ty-7-a-1/inputs/t/m"]);
        let placed: Vec<(&str, &Path)> = next
            .inputs
            .iter()
            .map(|i| (i.key.as_str(), i.path.as_path()))
            .collect();
        assert_eq!(
            placed,
            [
                ("abc/runs/7/t.0/m", Path::new("/work/ty-7-a-1/inputs/t/m/0")),
                ("abc/runs/7/t.1/m", Path::new("/work/ty-7-a-1/inputs/t/m/1")),
                ("abc/runs/7/t.2/m", Path::new("/work/ty-7-a-1/inputs/t/m/2")),
                ("abc/runs/7/t.3/m", Path::new("/work/ty-7-a-1/inputs/t/m/3")),
                (
                    "abc/runs/7/t/m/index.json",
                    Path::new("/work/ty-7-a-1/inputs/t/m/index.json")
                ),
            ]
        );
        let written = indexes(&run(&[]), &p, "u", "abc");
        assert_eq!(written.len(), 1);
        assert_eq!(written[0].0, "abc/runs/7/t/m/index.json");
        let index: Value = serde_json::from_slice(&written[0].1).expect("JSON");
        assert_eq!(index["1"], serde_json::json!({"lr": 0.1, "name": "b"}));
        assert_eq!(index["2"], serde_json::json!({"lr": 0.01, "name": "a"}));
        assert!(indexes(&run(&[]), &p, "t.0", "abc").is_empty());
    }
}
