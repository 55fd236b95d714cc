//! Applying a commit of the followed branch: from its evaluation to the store's declared
//! state, in one `ApplyCommit` the store writes in one transaction.
//!
//! The rules users rely on (DESIGN.md §3, "never prune on error"): a file with errors keeps
//! its documents at their last good version; a removed document is retired (runs in flight
//! finish); a commit that would remove every schedule is refused unless `allow_empty`;
//! pipelines with `triggers.on_change` whose version changed run once for the commit.

use chrono::{DateTime, Utc};

use crate::definitions::Evaluation;
use crate::report::{self, Report, StatusState, status_report};
use crate::spec::check::resolve_params;
use crate::spec::{Catalog, Severity};
use crate::store::{ApplyCommit, CommitOutcome, NewRun, PipelineUpsert, ScheduleUpsert, Trigger};

/// The declared state after `commit` and what to write for it, given the state it follows.
pub struct Decision {
    /// What the store writes, in one transaction.
    pub apply: ApplyCommit<Report>,
    /// The declared state the service runs from now on (the previous one if refused).
    pub declared: Catalog,
}

/// Decides what applying `evaluation` of `commit` does to `previous`, the declared state.
/// `instance` prefixes status contexts when several services follow one repository.
pub fn decide(
    commit: &str,
    at: DateTime<Utc>,
    previous: &Catalog,
    evaluation: &Evaluation,
    instance: Option<&str>,
) -> Decision {
    let declared = evaluation.catalog.with_last_good(previous);
    let errors: Vec<String> = evaluation
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| {
            if d.line == 0 {
                format!("{}: {}", d.file, d.message)
            } else {
                format!("{}:{}: {}", d.file, d.line, d.message)
            }
        })
        .collect();
    let context = report::context(instance, "validate", None);
    let validate =
        |state, description: String| status_report(commit, &context, state, &description);
    let empties_schedules = !previous.schedules.is_empty()
        && declared.schedules.is_empty()
        && !declared.settings.allow_empty;
    if empties_schedules {
        let summary = format!(
            "refused: it removes every schedule ({}); set allow_empty: true in trainyard.yaml to allow it",
            previous.schedules.len()
        );
        return Decision {
            apply: ApplyCommit {
                sha: commit.to_owned(),
                at,
                outcome: CommitOutcome::Rejected,
                summary: summary.clone(),
                pipelines: Vec::new(),
                retire_pipelines: Vec::new(),
                schedules: Vec::new(),
                retire_schedules: Vec::new(),
                runs: Vec::new(),
                reports: vec![validate(StatusState::Failure, summary)],
            },
            declared: previous.clone(),
        };
    }
    let mut pipelines = Vec::new();
    let mut runs = Vec::new();
    for (name, entry) in &declared.pipelines {
        if previous
            .pipelines
            .get(name)
            .is_some_and(|p| p.version == entry.version)
        {
            continue;
        }
        pipelines.push(PipelineUpsert {
            name: name.to_string(),
            version: entry.version.to_string(),
            file: entry.file.to_string(),
            definition: entry.value.clone(),
        });
        let spec = &entry.value.spec;
        // Only a version this commit made valid runs: a last good version kept for a failing
        // file already ran when it was applied.
        let from_this_commit = evaluation.catalog.pipelines.contains_key(name);
        if spec.triggers.on_change
            && from_this_commit
            && let Ok(params) = resolve_params(&entry.value, &Default::default())
        {
            runs.push(NewRun::of(
                &entry.value,
                &entry.version,
                commit,
                Trigger::Change,
                params,
            ));
        }
    }
    let schedules = declared
        .schedules
        .iter()
        .filter(|(name, entry)| {
            previous
                .schedules
                .get(*name)
                .is_none_or(|p| p.version != entry.version)
        })
        .map(|(name, entry)| ScheduleUpsert {
            name: name.to_string(),
            pipeline: entry.value.spec.pipeline.clone(),
            version: entry.version.to_string(),
            file: entry.file.to_string(),
            definition: entry.value.clone(),
            suspended: entry.value.spec.suspend,
        })
        .collect();
    let retired = |old: Vec<&str>, new: &dyn Fn(&str) -> bool| {
        old.into_iter()
            .filter(|n| !new(n))
            .map(str::to_owned)
            .collect()
    };
    let retire_pipelines = retired(
        previous.pipelines.keys().map(AsRef::as_ref).collect(),
        &|n| declared.pipelines.contains_key(n),
    );
    let retire_schedules = retired(
        previous.schedules.keys().map(AsRef::as_ref).collect(),
        &|n| declared.schedules.contains_key(n),
    );
    let summary = if errors.is_empty() {
        format!(
            "{} pipelines, {} schedules",
            declared.pipelines.len(),
            declared.schedules.len()
        )
    } else {
        let kept = if evaluation.catalog.failed_files.is_empty() {
            String::new()
        } else {
            format!(
                "; {} kept at their last good version",
                plural(evaluation.catalog.failed_files.len(), "file")
            )
        };
        format!(
            "{}{kept}: {}",
            plural(errors.len(), "error"),
            errors.join("; ")
        )
    };
    let state = if errors.is_empty() {
        StatusState::Success
    } else {
        StatusState::Failure
    };
    Decision {
        apply: ApplyCommit {
            sha: commit.to_owned(),
            at,
            outcome: CommitOutcome::Applied,
            summary: summary.clone(),
            pipelines,
            retire_pipelines,
            schedules,
            retire_schedules,
            runs,
            reports: vec![validate(state, summary)],
        },
        declared,
    }
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::spec::Diagnostic;

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    fn catalog(files: &[(&str, &str)]) -> Catalog {
        Catalog::of_files(files)
    }

    fn pipeline(name: &str, on_change: bool, default: u32) -> String {
        format!(
            "apiVersion: trainyard.dev/v1\nkind: Pipeline\nmetadata: {{name: {name}, owner: t}}\n\
             spec: {{image: i, triggers: {{on_change: {on_change}}}, params: {{e: {{type: int, default: {default}}}}}, steps: [{{name: a, run: [x]}}, {{name: b, needs: [a], run: [y]}}]}}\n"
        )
    }

    fn schedule(name: &str) -> String {
        format!(
            "apiVersion: trainyard.dev/v1\nkind: Schedule\nmetadata: {{name: {name}}}\nspec: {{pipeline: p, cron: '@daily'}}\n"
        )
    }

    fn evaluation(catalog: Catalog, errors: &[(&str, &str)]) -> Evaluation {
        let diagnostics = errors
            .iter()
            .map(|(file, message)| Diagnostic {
                severity: Severity::Error,
                file: (*file).to_owned(),
                line: 3,
                column: 1,
                code: "yaml".into(),
                message: (*message).into(),
                hint: None,
                source_line: None,
                width: 1,
            })
            .collect();
        Evaluation {
            catalog,
            diagnostics,
            ..Evaluation::default()
        }
    }

    fn status_of(apply: &ApplyCommit<Report>) -> (String, String) {
        match &apply.reports[0].payload {
            Report::Status(status) => {
                (status.state.as_str().to_owned(), status.description.clone())
            }
            other => panic!("a status, got {other:?}"),
        }
    }

    #[test]
    fn a_new_on_change_pipeline_runs_once_with_its_defaults() {
        let new = catalog(&[
            ("p.yaml", &pipeline("p", true, 3)),
            ("q.yaml", &pipeline("q", false, 1)),
        ]);
        let d = decide(
            SHA,
            Utc::now(),
            &Catalog::default(),
            &evaluation(new, &[]),
            None,
        );
        assert_eq!(d.apply.outcome, CommitOutcome::Applied);
        assert_eq!(d.apply.pipelines.len(), 2);
        assert_eq!(d.apply.runs.len(), 1);
        assert_eq!(d.apply.runs[0].pipeline, "p");
        assert_eq!(
            d.apply.runs[0].params,
            [("e".to_owned(), serde_json::json!(3))].into()
        );
        assert_eq!(d.apply.runs[0].steps, ["a", "b"]);
        assert_eq!(
            status_of(&d.apply),
            ("success".to_owned(), "2 pipelines, 0 schedules".to_owned())
        );
        assert_eq!(d.apply.reports[0].key, "trainyard/validate");
    }

    #[test]
    fn an_unchanged_pipeline_is_neither_written_nor_run_again() {
        let old = catalog(&[("p.yaml", &pipeline("p", true, 3))]);
        let d = decide(SHA, Utc::now(), &old, &evaluation(old.clone(), &[]), None);
        assert!(d.apply.pipelines.is_empty() && d.apply.runs.is_empty());
        let changed = catalog(&[("p.yaml", &pipeline("p", true, 4))]);
        let d = decide(SHA, Utc::now(), &old, &evaluation(changed, &[]), None);
        assert_eq!((d.apply.pipelines.len(), d.apply.runs.len()), (1, 1));
    }

    #[test]
    fn a_failing_file_keeps_its_last_good_documents_and_reports_the_errors() {
        let old = catalog(&[
            ("p.yaml", &pipeline("p", true, 3)),
            ("s.yaml", &schedule("s")),
        ]);
        let mut new = catalog(&[("s.yaml", &schedule("s"))]);
        new.failed_files.insert("p.yaml".into());
        let d = decide(
            SHA,
            Utc::now(),
            &old,
            &evaluation(new, &[("p.yaml", "bad yaml")]),
            Some("eu"),
        );
        assert_eq!(d.apply.outcome, CommitOutcome::Applied);
        assert!(
            d.apply.retire_pipelines.is_empty(),
            "the failing file's pipeline is kept"
        );
        assert!(d.apply.runs.is_empty());
        assert!(d.declared.pipelines.contains_key("p"));
        let (state, description) = status_of(&d.apply);
        assert_eq!(state, "failure");
        assert_eq!(
            description,
            "1 error; 1 file kept at their last good version: p.yaml:3: bad yaml"
        );
        assert_eq!(d.apply.reports[0].key, "trainyard/eu/validate");
    }

    #[test]
    fn removed_documents_are_retired() {
        let old = catalog(&[
            ("p.yaml", &pipeline("p", false, 3)),
            ("s.yaml", &schedule("s")),
            ("t.yaml", &schedule("t")),
        ]);
        let new = catalog(&[
            ("p.yaml", &pipeline("p", false, 3)),
            ("s.yaml", &schedule("s")),
        ]);
        let d = decide(SHA, Utc::now(), &old, &evaluation(new, &[]), None);
        assert_eq!(d.apply.retire_schedules, ["t"]);
        assert!(d.apply.retire_pipelines.is_empty());
    }

    #[test]
    fn removing_every_schedule_is_refused_unless_allowed() {
        let old = catalog(&[
            ("p.yaml", &pipeline("p", false, 3)),
            ("s.yaml", &schedule("s")),
        ]);
        let mut new = catalog(&[("p.yaml", &pipeline("p", false, 4))]);
        let d = decide(SHA, Utc::now(), &old, &evaluation(new.clone(), &[]), None);
        assert_eq!(d.apply.outcome, CommitOutcome::Rejected);
        assert!(d.apply.pipelines.is_empty() && d.apply.retire_schedules.is_empty());
        assert_eq!(
            d.declared.schedules.len(),
            1,
            "the declared state stays as it was"
        );
        assert_eq!(status_of(&d.apply).0, "failure");
        new.settings.allow_empty = true;
        let d = decide(SHA, Utc::now(), &old, &evaluation(new, &[]), None);
        assert_eq!(d.apply.outcome, CommitOutcome::Applied);
        assert_eq!(d.apply.retire_schedules, ["s"]);
    }

    #[tokio::test]
    async fn the_store_accepts_the_decision_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::store::Store::connect(&dir.path().join("t.db").display().to_string())
            .await
            .expect("store");
        let new = catalog(&[
            ("p.yaml", &pipeline("p", true, 3)),
            ("s.yaml", &schedule("s")),
        ]);
        let d = decide(
            SHA,
            Utc::now(),
            &Catalog::default(),
            &evaluation(new, &[]),
            None,
        );
        let first = store.apply_commit(&d.apply).await.expect("applied");
        let again = store.apply_commit(&d.apply).await.expect("applied");
        assert!(first.first_time && !again.first_time);
        assert_eq!(first.run_ids.len(), 1);
        assert_eq!(again.run_ids, first.run_ids);
        assert_eq!(store.active_schedules().await.expect("schedules").len(), 1);
    }
}
