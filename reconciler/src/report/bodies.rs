//! What Trainyard writes on the forge, as reports for the outbox: commit statuses (or check
//! runs with annotations, on a forge that shows them), and the bodies of its sticky comments (a pull request's plan, a preview run's progress, the
//! results of a merged change).
//!
//! Every comment starts with the hidden marker of its key, so the forge finds and edits the
//! one comment instead of adding another.

use std::fmt::Write as _;

use crate::plan::{Plan, render_markdown};
use crate::spec::Severity;
use crate::spec::check::Params;
use crate::store::{
    ModelState, ModelVersionRow, NewReport, ReportKind, RunRow, RunState, StepRow, Store,
    StoreError, Trigger,
};

use super::{
    Annotation, AnnotationLevel, CheckAction, CheckRun, Conclusion, Report, Status, StatusState,
    context, fit_description, marker,
};

/// A report as the outbox holds it.
pub type Outgoing = NewReport<Report>;

/// The sticky comment holding a pull request's plan.
pub const PLAN_KEY: &str = "plan";
/// The sticky comment holding the results of the runs a merged change started.
pub const RESULTS_KEY: &str = "results";

/// The identifier of the plan check run's button that starts preview runs.
pub const PREVIEW_ACTION: &str = "preview";

/// The sticky comment of preview run `run`.
pub fn run_key(run: i64) -> String {
    format!("run-{run}")
}

/// The sticky comment answering command comment `comment`.
pub fn command_key(comment: u64) -> String {
    format!("command-{comment}")
}

/// The first 12 characters of a commit id.
pub fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// A comment report for the outbox: on pull request `pr` when known, else on the pull
/// request of `commit`.
pub fn comment_report(commit: &str, pr: Option<u64>, key: &str, body: &str) -> Outgoing {
    NewReport {
        commit_sha: commit.to_owned(),
        kind: ReportKind::Comment,
        key: key.to_owned(),
        payload: Report::Comment {
            commit: commit.to_owned(),
            pr,
            key: key.to_owned(),
            body: body.to_owned(),
        },
    }
}

/// A comment body: the hidden marker of `key` (so the forge finds the comment again), then
/// `text`.
pub fn sticky(key: &str, text: &str) -> String {
    format!("{}\n{text}", marker(key))
}

/// What a plan says, in the words both statuses and check runs use.
struct Verdicts {
    validate: StatusState,
    validated: String,
    planned: StatusState,
    summary: String,
}

fn verdicts(plan: &Plan) -> Verdicts {
    let errors: Vec<String> = plan
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| match d.line {
            0 => format!("{}: {}", d.file, d.message),
            line => format!("{}:{line}: {}", d.file, d.message),
        })
        .collect();
    let warnings = plan
        .diagnostics
        .iter()
        .filter(|d| d.severity != Severity::Error)
        .count();
    let (validate, validated) = if errors.is_empty() {
        let mut text = "valid".to_owned();
        if warnings > 0 {
            let _ = write!(text, ", {}", plural(warnings, "warning"));
        }
        (StatusState::Success, text)
    } else {
        (
            StatusState::Failure,
            format!("{}: {}", plural(errors.len(), "error"), errors.join("; ")),
        )
    };
    let (added, changed, removed) = plan.counts();
    let hours = &plan.gpu_hours;
    let (planned, summary) = if errors.is_empty() {
        (
            StatusState::Success,
            format!(
                "{added} to add, {changed} to change, {removed} to remove; GPU-hours/month ≤ {:.0} → {:.0}",
                hours.before, hours.after
            ),
        )
    } else {
        (
            StatusState::Failure,
            format!("cannot be applied as is: {}", plural(errors.len(), "error")),
        )
    };
    Verdicts {
        validate,
        validated,
        planned,
        summary,
    }
}

fn plan_comment(pr: u64, head: &str, base_ref: &str, plan: &Plan) -> Outgoing {
    let body = sticky(
        PLAN_KEY,
        &format!(
            "**Trainyard** planned head `{}` of #{pr} against `{base_ref}`; this comment follows \
             every push.\n\n{}",
            short(head),
            render_markdown(plan)
        ),
    );
    comment_report(head, Some(pr), PLAN_KEY, &body)
}

/// What the plan of pull request `pr`'s head `head` against `base_ref` posts: the
/// `validate` and `plan` statuses on the head and the sticky plan comment.
pub fn plan_reports(
    pr: u64,
    head: &str,
    base_ref: &str,
    plan: &Plan,
    instance: Option<&str>,
) -> Vec<Outgoing> {
    let v = verdicts(plan);
    vec![
        status_report(
            head,
            &context(instance, "validate", None),
            v.validate,
            &v.validated,
        ),
        status_report(
            head,
            &context(instance, "plan", None),
            v.planned,
            &v.summary,
        ),
        plan_comment(pr, head, base_ref, plan),
    ]
}

/// What the plan posts on a forge with check runs: the `validate` check run with one
/// annotation per diagnostic (on its file under `subdir`, the tracked directory), the `plan`
/// check run with the plan as its summary and, when `previewable` names pipelines, the
/// button that starts their previews; and the sticky plan comment.
pub fn plan_check_reports(
    pr: u64,
    head: &str,
    base_ref: &str,
    plan: &Plan,
    instance: Option<&str>,
    subdir: &str,
    previewable: &[String],
) -> Vec<Outgoing> {
    let v = verdicts(plan);
    let conclusion = |state| match state {
        StatusState::Success => Conclusion::Success,
        _ => Conclusion::Failure,
    };
    let annotations: Vec<Annotation> = plan
        .diagnostics
        .iter()
        .map(|d| annotation(d, subdir))
        .collect();
    let mut validation = format!("## Validation of `{}`\n\n", short(head));
    if plan.diagnostics.is_empty() {
        validation.push_str("No findings.\n");
    }
    for d in &plan.diagnostics {
        let icon = if d.severity == Severity::Error {
            "❌"
        } else {
            "⚠️"
        };
        let place = match d.line {
            0 => repo_path(subdir, &d.file),
            line => format!("{}:{line}", repo_path(subdir, &d.file)),
        };
        let _ = write!(validation, "- {icon} `{place}` {}", d.message);
        if let Some(hint) = &d.hint {
            let _ = write!(validation, " ({hint})");
        }
        validation.push('\n');
    }
    let mut plan_summary = format!(
        "Head `{}` of #{pr} against `{base_ref}`.\n\n{}",
        short(head),
        render_markdown(plan)
    );
    let mut actions = Vec::new();
    if !previewable.is_empty() {
        let names: Vec<String> = previewable.iter().map(|p| format!("`{p}`")).collect();
        let _ = write!(
            plan_summary,
            "\n\n**Preview run** starts a preview of {} with default params (or comment \
             `/trainyard run PIPELINE key=value …`).\n",
            names.join(", ")
        );
        actions.push(CheckAction {
            label: "Preview run".to_owned(),
            description: "Run the changed pipelines as previews".to_owned(),
            identifier: PREVIEW_ACTION.to_owned(),
        });
    }
    vec![
        check_report(CheckRun {
            commit: head.to_owned(),
            name: context(instance, "validate", None),
            conclusion: conclusion(v.validate),
            title: fit_description(&v.validated),
            summary: validation,
            annotations,
            actions: Vec::new(),
        }),
        check_report(CheckRun {
            commit: head.to_owned(),
            name: context(instance, "plan", None),
            conclusion: conclusion(v.planned),
            title: fit_description(&v.summary),
            summary: plan_summary,
            annotations: Vec::new(),
            actions,
        }),
        plan_comment(pr, head, base_ref, plan),
    ]
}

/// A path of the tracked directory `subdir` as a path from the repository's root.
fn repo_path(subdir: &str, file: &str) -> String {
    let subdir = subdir.trim_matches('/');
    if subdir.is_empty() {
        file.to_owned()
    } else {
        format!("{subdir}/{file}")
    }
}

/// A diagnostic as an annotation on its file: on its line (the first, for a finding about
/// the whole file), with its columns when it has them.
fn annotation(d: &crate::spec::Diagnostic, subdir: &str) -> Annotation {
    let line = d.line.max(1);
    let columns = (d.line > 0 && d.column > 0)
        .then(|| (d.column, d.column.saturating_add(d.width.max(1) - 1)));
    let message = match &d.hint {
        Some(hint) => format!("{}\n\n{hint}", d.message),
        None => d.message.clone(),
    };
    Annotation {
        path: repo_path(subdir, &d.file),
        start_line: line,
        end_line: line,
        columns,
        level: match d.severity {
            Severity::Error => AnnotationLevel::Failure,
            Severity::Warning => AnnotationLevel::Warning,
        },
        title: (!d.code.is_empty()).then(|| d.code.clone()),
        message,
    }
}

/// A check run report for the outbox; the newest per (commit, name) is delivered.
pub fn check_report(check: CheckRun) -> Outgoing {
    NewReport {
        commit_sha: check.commit.clone(),
        kind: ReportKind::CheckRun,
        key: check.name.clone(),
        payload: Report::CheckRun(check),
    }
}

pub fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// A commit status report for the outbox, its description cut to what forges accept.
pub fn status_report(
    commit: &str,
    context: &str,
    state: StatusState,
    description: &str,
) -> Outgoing {
    NewReport {
        commit_sha: commit.to_owned(),
        kind: ReportKind::Status,
        key: context.to_owned(),
        payload: Report::Status(Status {
            commit: commit.to_owned(),
            context: context.to_owned(),
            state,
            description: fit_description(description),
            target_url: None,
        }),
    }
}

/// Params as a comment shows them: `epochs=3, lr=0.1`.
fn shown_params(params: &Params) -> String {
    params
        .iter()
        .map(|(name, value)| match value {
            serde_json::Value::String(text) => format!("{name}={text}"),
            other => format!("{name}={other}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn state_icon(state: RunState) -> &'static str {
    match state {
        RunState::Pending => "⏳",
        RunState::Running => "🔄",
        RunState::Succeeded => "✅",
        RunState::Failed => "❌",
        RunState::Cancelled => "⏹️",
    }
}

/// Escapes text for a Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// The sticky comment of preview run `run`: its state, params and steps, and `message` (the
/// outcome, or what it is waiting for).
pub fn preview_comment(run: &RunRow, state: RunState, steps: &[StepRow], message: &str) -> String {
    let mut out = format!(
        "### {} Preview run {} of `{}`: {state}\n\nHead `{}` · params `{}` · nothing is \
         promoted and no schedule changes.\n\n",
        state_icon(state),
        run.id,
        run.pipeline,
        short(&run.commit_sha),
        shown_params(&run.params)
    );
    if !steps.is_empty() {
        out.push_str("| Step | State | Attempts | |\n|---|---|---|---|\n");
        for step in steps {
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} |",
                cell(&step.name),
                step.state,
                step.attempt,
                cell(step.message.as_deref().unwrap_or(""))
            );
        }
        out.push('\n');
    }
    if !message.is_empty() {
        let _ = writeln!(out, "{message}");
    }
    sticky(&run_key(run.id), &out)
}

/// One run that applying a commit started, as the results comment shows it.
pub struct RunResult {
    /// The run, as it is or as it ends.
    pub run: RunRow,
    /// Models it registered.
    pub models: Vec<ModelVersionRow>,
}

/// The sticky results comment of merged `commit`: every run applying it started, with the
/// models they registered (version, gate results against the champion, metrics).
pub fn results_comment(commit: &str, results: &[RunResult]) -> String {
    let mut out = format!(
        "### Results of `{}` on the followed branch\n\n",
        short(commit)
    );
    for RunResult { run, models } in results {
        let _ = writeln!(
            out,
            "- {} run {} of `{}`: {}{}",
            state_icon(run.state),
            run.id,
            run.pipeline,
            run.state,
            run.message
                .as_deref()
                .filter(|m| !m.is_empty())
                .map(|m| format!(" ({})", cell(m)))
                .unwrap_or_default()
        );
        for model in models {
            let verdict = match (model.state, model.version) {
                (ModelState::Accepted, Some(version)) => format!("accepted as version {version}"),
                _ => "rejected".to_owned(),
            };
            let _ = writeln!(out, "  - model `{}` {verdict}", model.model);
            for check in &model.gates {
                let _ = writeln!(
                    out,
                    "    - {} {}",
                    if check.passed { "✅" } else { "❌" },
                    cell(&check.detail)
                );
            }
            if !model.metrics.is_empty() {
                let shown: Vec<String> = model
                    .metrics
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                let _ = writeln!(out, "    - metrics: `{}`", shown.join(", "));
            }
        }
    }
    sticky(RESULTS_KEY, &out)
}

/// The sticky comment of preview run `run` once its first step started; nothing for other
/// runs.
pub async fn started_run_reports(store: &Store, run: &RunRow) -> Result<Vec<Outgoing>, StoreError> {
    if run.trigger != Trigger::Preview {
        return Ok(Vec::new());
    }
    let Some(pr) = store.pull_request_of_preview(run.id).await? else {
        return Ok(Vec::new());
    };
    let steps = store.steps(run.id).await?;
    let body = preview_comment(run, RunState::Running, &steps, "Running.");
    Ok(vec![comment_report(
        &run.commit_sha,
        Some(pr),
        &run_key(run.id),
        &body,
    )])
}

/// The comment reports a run finishing as `state` adds besides its status: a preview's
/// sticky comment, or the results comment of the commit whose change started the run.
pub async fn finished_run_reports(
    store: &Store,
    run: &RunRow,
    state: RunState,
    message: &str,
) -> Result<Vec<Outgoing>, StoreError> {
    match run.trigger {
        Trigger::Preview => {
            let Some(pr) = store.pull_request_of_preview(run.id).await? else {
                return Ok(Vec::new());
            };
            let steps = store.steps(run.id).await?;
            let body = preview_comment(run, state, &steps, message);
            Ok(vec![comment_report(
                &run.commit_sha,
                Some(pr),
                &run_key(run.id),
                &body,
            )])
        }
        Trigger::Change => {
            let mut results = Vec::new();
            for other in store.runs_of_commit(&run.commit_sha).await? {
                // A run that cannot be read is left out of the comment; its own status
                // says what became of it.
                let Ok(mut other) = other else { continue };
                if other.id == run.id {
                    other.state = state;
                    other.message = Some(message.to_owned());
                }
                let models = store.models_of_run(other.id).await?;
                results.push(RunResult { run: other, models });
            }
            let body = results_comment(&run.commit_sha, &results);
            Ok(vec![comment_report(
                &run.commit_sha,
                None,
                RESULTS_KEY,
                &body,
            )])
        }
        Trigger::Schedule | Trigger::Manual | Trigger::Backfill => Ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests {

    use chrono::Utc;
    use serde_json::Value;

    use super::*;
    use crate::plan::Planner;
    use crate::registry::{GateCheck, Limit};
    use crate::spec::Catalog;

    const HEAD: &str = "1111111111111111111111111111111111111111";

    fn catalog(files: &[(&str, &str)]) -> Catalog {
        Catalog::of_files(files)
    }

    fn pipeline(name: &str, gpus: u32) -> String {
        format!(
            "apiVersion: trainyard.dev/v1\nkind: Pipeline\nmetadata: {{name: {name}, owner: t}}\n\
             spec: {{image: i, params: {{epochs: {{type: int, default: 3}}, lr: {{type: float}}}}, \
             steps: [{{name: train, run: [x], resources: {{gpu: {gpus}}}, timeout: 1h}}]}}\n"
        )
    }

    fn schedule(name: &str, pipeline: &str) -> String {
        format!(
            "apiVersion: trainyard.dev/v1\nkind: Schedule\nmetadata: {{name: {name}}}\n\
             spec: {{pipeline: {pipeline}, cron: '0 2 * * *', params: {{lr: 0.1}}}}\n"
        )
    }

    fn payloads(reports: &[Outgoing]) -> Vec<(String, Value)> {
        reports
            .iter()
            .map(|r| {
                let payload = serde_json::to_value(&r.payload).expect("a report is JSON");
                (r.key.clone(), payload)
            })
            .collect()
    }

    #[test]
    fn a_pull_request_gets_both_statuses_and_one_plan_comment_on_its_head() {
        let base = catalog(&[("a.yaml", &pipeline("churn", 1))]);
        let head = catalog(&[
            ("a.yaml", &pipeline("churn", 2)),
            ("s.yaml", &schedule("nightly", "churn")),
        ]);
        let plan = Planner::default().plan("base", "head", &base, &head, Vec::new(), Utc::now());
        let reports = plan_reports(7, HEAD, "main", &plan, Some("eu"));
        let found = payloads(&reports);
        assert_eq!(
            found.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["trainyard/eu/validate", "trainyard/eu/plan", "plan"]
        );
        assert!(reports.iter().all(|r| r.commit_sha == HEAD));
        assert_eq!(found[0].1["state"], "success");
        assert_eq!(found[1].1["state"], "success");
        assert_eq!(
            found[1].1["description"],
            "1 to add, 1 to change, 0 to remove; GPU-hours/month ≤ 0 → 60"
        );
        let comment: Report = serde_json::from_value(found[2].1.clone()).expect("a comment");
        let Report::Comment { pr, key, body, .. } = comment else {
            panic!("a comment, got {comment:?}");
        };
        assert_eq!((pr, key.as_str()), (Some(7), "plan"));
        assert!(body.starts_with("<!-- trainyard:plan -->\n"), "{body}");
        assert!(
            body.contains("head `111111111111` of #7 against `main`"),
            "{body}"
        );
        assert!(
            body.contains("| `nightly` |"),
            "the schedule is listed: {body}"
        );
        assert!(body.contains("next: "), "next fire times are shown: {body}");
    }

    #[test]
    fn a_head_with_errors_fails_both_statuses_and_names_the_line() {
        let base = catalog(&[("a.yaml", &pipeline("churn", 1))]);
        let head = catalog(&[("a.yaml", &pipeline("churn", 1))]);
        let diagnostic = crate::spec::Diagnostic {
            severity: Severity::Error,
            file: "b.yaml".to_owned(),
            line: 4,
            column: 2,
            code: "yaml".into(),
            message: "unknown field `stepz`".into(),
            hint: None,
            source_line: None,
            width: 1,
        };
        let plan = Planner::default().plan("b", "h", &base, &head, vec![diagnostic], Utc::now());
        let found = payloads(&plan_reports(7, HEAD, "main", &plan, None));
        assert_eq!(found[0].0, "trainyard/validate");
        assert_eq!(found[0].1["state"], "failure");
        assert_eq!(
            found[0].1["description"],
            "1 error: b.yaml:4: unknown field `stepz`"
        );
        assert_eq!(found[1].1["state"], "failure");
        let body = found[2].1["body"].as_str().unwrap_or_default();
        assert!(body.contains("b.yaml:4"), "{body}");
    }

    #[test]
    fn with_check_runs_each_diagnostic_is_an_annotation_on_its_file_from_the_root() {
        let base = catalog(&[("a.yaml", &pipeline("churn", 1))]);
        let head = catalog(&[("a.yaml", &pipeline("churn", 2))]);
        let diagnostic = |severity, line, column| crate::spec::Diagnostic {
            severity,
            file: "b.yaml".to_owned(),
            line,
            column,
            code: "yaml".into(),
            message: "unknown field `stepz`".into(),
            hint: Some("did you mean `steps`?".into()),
            source_line: None,
            width: 5,
        };
        let diagnostics = vec![
            diagnostic(Severity::Error, 4, 2),
            diagnostic(Severity::Warning, 0, 0),
        ];
        let plan = Planner::default().plan("b", "h", &base, &head, diagnostics, Utc::now());
        let reports = plan_check_reports(7, HEAD, "main", &plan, Some("eu"), "ml/", &[]);
        assert_eq!(
            reports.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
            ["trainyard/eu/validate", "trainyard/eu/plan", "plan"]
        );
        assert_eq!(reports[0].kind, ReportKind::CheckRun);
        let Report::CheckRun(validate) = &reports[0].payload else {
            panic!("a check run: {:?}", reports[0].payload);
        };
        assert_eq!(validate.conclusion, Conclusion::Failure);
        assert_eq!(validate.annotations.len(), 2);
        let error = &validate.annotations[0];
        assert_eq!(error.path, "ml/b.yaml");
        assert_eq!((error.start_line, error.end_line), (4, 4));
        assert_eq!(error.columns, Some((2, 6)));
        assert_eq!(error.level, AnnotationLevel::Failure);
        assert!(
            error.message.ends_with("did you mean `steps`?"),
            "{}",
            error.message
        );
        let warning = &validate.annotations[1];
        assert_eq!((warning.start_line, warning.columns), (1, None));
        assert_eq!(warning.level, AnnotationLevel::Warning);
        assert!(
            validate.summary.contains("`ml/b.yaml:4`"),
            "{}",
            validate.summary
        );
        let Report::CheckRun(planned) = &reports[1].payload else {
            panic!("a check run");
        };
        assert_eq!(planned.conclusion, Conclusion::Failure);
        assert!(planned.actions.is_empty(), "nothing to preview");
        assert!(
            planned.summary.contains("of #7 against `main`"),
            "{}",
            planned.summary
        );
    }

    #[test]
    fn the_plan_check_run_offers_a_preview_when_one_is_possible() {
        let base = catalog(&[("a.yaml", &pipeline("churn", 1))]);
        let head = catalog(&[("a.yaml", &pipeline("churn", 2))]);
        let plan = Planner::default().plan("b", "h", &base, &head, Vec::new(), Utc::now());
        let reports = plan_check_reports(7, HEAD, "main", &plan, None, "", &["churn".to_owned()]);
        let Report::CheckRun(planned) = &reports[1].payload else {
            panic!("a check run");
        };
        assert_eq!(planned.name, "trainyard/plan");
        assert_eq!(planned.conclusion, Conclusion::Success);
        assert_eq!(planned.actions.len(), 1);
        let action = &planned.actions[0];
        assert_eq!(action.identifier, PREVIEW_ACTION);
        assert!(action.label.chars().count() <= 20 && action.description.chars().count() <= 40);
        assert!(planned.summary.contains("`churn`"), "{}", planned.summary);
        let Report::CheckRun(validate) = &reports[0].payload else {
            panic!("a check run");
        };
        assert_eq!(validate.conclusion, Conclusion::Success);
        assert!(validate.annotations.is_empty());
    }

    fn run(id: i64, state: RunState, trigger: Trigger) -> RunRow {
        RunRow {
            id,
            pipeline: "churn".to_owned(),
            pipeline_version: "v1".to_owned(),
            commit_sha: HEAD.to_owned(),
            trigger,
            schedule: None,
            scheduled_at: None,
            params: [("epochs".to_owned(), serde_json::json!(3))].into(),
            state,
            message: Some(format!("run {id} {state}")),
            cancel_requested: false,
            dag_state: None,
            no_cache: false,
            created_at: Utc::now(),
            started_at: None,
            finished_at: None,
        }
    }

    #[test]
    fn a_preview_comment_is_sticky_per_run_and_shows_its_steps() {
        let step = StepRow {
            run_id: 12,
            name: "train".to_owned(),
            finally: false,
            state: crate::store::StepState::Failed,
            attempt: 2,
            failures: 2,
            job: None,
            retry_at: None,
            started_at: None,
            finished_at: None,
            exit_code: Some(1),
            message: Some("exit | 1".to_owned()),
        };
        let body = preview_comment(
            &run(12, RunState::Failed, Trigger::Preview),
            RunState::Failed,
            &[step],
            "step train failed",
        );
        assert!(body.starts_with("<!-- trainyard:run-12 -->\n"), "{body}");
        assert!(body.contains("Preview run 12 of `churn`: failed"), "{body}");
        assert!(
            body.contains("| `train` | failed | 2 | exit \\| 1 |"),
            "{body}"
        );
        assert!(body.ends_with("step train failed\n"), "{body}");
    }

    #[test]
    fn the_results_comment_lists_every_run_and_model_of_the_commit() {
        let model = ModelVersionRow {
            id: 1,
            model: "churn-model".to_owned(),
            version: Some(4),
            run_id: 3,
            state: ModelState::Accepted,
            metrics: [("auc".to_owned(), 0.91)].into(),
            gates: vec![GateCheck {
                metric: "auc".to_owned(),
                bound: "not worse than champion (0.90)".to_owned(),
                limit: Limit::NotWorseThan {
                    alias: "champion".to_owned(),
                    baseline: Some(0.90),
                },
                value: Some(0.91),
                passed: true,
                detail: "auc 0.91 ≥ champion 0.90".to_owned(),
            }],
            reasons: Vec::new(),
            artifact_uri: String::new(),
            artifact_sha256: String::new(),
            selected: None,
            commit_sha: HEAD.to_owned(),
            pipeline: "churn".to_owned(),
            pipeline_version: "v1".to_owned(),
            params: Params::new(),
            created_at: Utc::now(),
        };
        let body = results_comment(
            HEAD,
            &[
                RunResult {
                    run: run(3, RunState::Succeeded, Trigger::Change),
                    models: vec![model],
                },
                RunResult {
                    run: run(4, RunState::Running, Trigger::Change),
                    models: Vec::new(),
                },
            ],
        );
        assert!(body.starts_with("<!-- trainyard:results -->\n"), "{body}");
        assert!(body.contains("✅ run 3 of `churn`: succeeded"), "{body}");
        assert!(
            body.contains("model `churn-model` accepted as version 4"),
            "{body}"
        );
        assert!(body.contains("✅ auc 0.91 ≥ champion 0.90"), "{body}");
        assert!(body.contains("metrics: `auc=0.91`"), "{body}");
        assert!(body.contains("🔄 run 4 of `churn`: running"), "{body}");
    }
}
