//! Check runs on GitHub, for a forge signed in as an App: the summary cut to GitHub's
//! 65,535 characters, annotations sent 50 a request (the run is created with the first 50
//! while in progress, and each update appends 50 more; the last one completes it), buttons,
//! and no second run for what GitHub already shows.
//!
//! Every run carries a fingerprint of what it shows in `external_id`: of its annotations and
//! of all of it. A run with this name on the commit whose fingerprint matches is left alone;
//! one whose annotations match but whose summary or conclusion changed is updated in place;
//! one left in progress by an interrupted delivery gets the annotations it lacks. GitHub
//! keeps a run's annotations, so a run whose annotations would change is replaced by a new
//! one, which GitHub shows in its place.

use axum::http::Method;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{Inner, commit_id, decode};
use crate::report::{ANNOTATIONS_PER_REQUEST, Annotation, CheckRun, ForgeError, fit_summary};

/// Check runs remembered per (commit, name); past this the memory starts over.
const REMEMBERED_CHECK_RUNS: usize = 4096;
/// What `external_id` starts with on Trainyard's check runs.
const FINGERPRINT_PREFIX: &str = "trainyard:";

/// A check run as GitHub holds it, as far as deciding what to send goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Held {
    id: u64,
    /// Its `external_id`.
    fingerprint: String,
    /// Annotations it has.
    annotations: usize,
    /// Whether it is completed.
    completed: bool,
}

#[derive(Deserialize)]
struct Output {
    #[serde(default)]
    annotations_count: usize,
}

#[derive(Deserialize)]
struct AppRef {
    id: u64,
}

#[derive(Deserialize)]
struct GithubCheckRun {
    id: u64,
    #[serde(default)]
    external_id: Option<String>,
    status: String,
    output: Output,
    #[serde(default)]
    app: Option<AppRef>,
}

impl From<GithubCheckRun> for Held {
    fn from(run: GithubCheckRun) -> Held {
        Held {
            id: run.id,
            fingerprint: run.external_id.unwrap_or_default(),
            annotations: run.output.annotations_count,
            completed: run.status == "completed",
        }
    }
}

#[derive(Deserialize)]
struct CheckRunList {
    check_runs: Vec<GithubCheckRun>,
}

/// `external_id`: `trainyard:<annotations>:<everything>`, 16 hex digits each.
fn fingerprint(check: &CheckRun, summary: &str) -> String {
    let hash = |value: &Value| {
        let digest = Sha256::digest(value.to_string().as_bytes());
        digest[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let annotations = hash(&json!(check.annotations));
    let all = hash(&json!({
        "name": check.name,
        "conclusion": check.conclusion,
        "title": check.title,
        "summary": summary,
        "annotations": check.annotations,
        "actions": check.actions,
    }));
    format!("{FINGERPRINT_PREFIX}{annotations}:{all}")
}

/// The part of a fingerprint that covers the annotations.
fn annotations_part(fingerprint: &str) -> Option<&str> {
    fingerprint
        .strip_prefix(FINGERPRINT_PREFIX)?
        .split(':')
        .next()
}

fn annotation_json(annotation: &Annotation) -> Value {
    let mut value = json!({
        "path": annotation.path,
        "start_line": annotation.start_line,
        "end_line": annotation.end_line,
        "annotation_level": annotation.level.as_str(),
        "message": annotation.message,
    });
    if let Some((start, end)) = annotation.columns
        && annotation.start_line == annotation.end_line
    {
        value["start_column"] = json!(start);
        value["end_column"] = json!(end);
    }
    if let Some(title) = &annotation.title {
        value["title"] = json!(title);
    }
    value
}

/// `check_name`'s value in a query: everything but unreserved characters escaped.
fn query_value(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

impl Inner {
    fn lock_checks(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<(String, String), Held>> {
        self.checks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn remember_check(&self, commit: &str, name: &str, held: Held) {
        let mut checks = self.lock_checks();
        if checks.len() >= REMEMBERED_CHECK_RUNS {
            checks.clear();
        }
        checks.insert((commit.to_owned(), name.to_owned()), held);
    }

    /// The newest check run named `name` that this App made on `commit`, if any.
    async fn find_check_run(
        &self,
        commit: &str,
        name: &str,
        app_id: u64,
    ) -> Result<Option<Held>, ForgeError> {
        let path = self.repo_path(&format!(
            "commits/{commit}/check-runs?check_name={}&app_id={app_id}&filter=latest&per_page=100",
            query_value(name)
        ));
        let (list, _) = self.get::<CheckRunList>(&path).await?;
        Ok(list
            .check_runs
            .into_iter()
            .filter(|run| run.app.as_ref().is_none_or(|app| app.id == app_id))
            .max_by_key(|run| run.id)
            .map(Held::from))
    }

    /// Creates or updates the check run `check`; a forge signed in with a token sets the
    /// status that says the same instead.
    pub(super) async fn upsert_check_run(&self, check: &CheckRun) -> Result<(), ForgeError> {
        let Some(app_id) = self.app_id else {
            return self.set_status(&check.as_status()).await;
        };
        let commit = commit_id(&check.commit)?;
        let summary = fit_summary(&check.summary);
        let fingerprint = fingerprint(check, &summary);
        let key = (commit.to_owned(), check.name.clone());
        let remembered = self.lock_checks().get(&key).cloned();
        let held = match remembered {
            Some(held) => Some(held),
            None => self.find_check_run(commit, &check.name, app_id).await?,
        };
        let total = check.annotations.len();
        let same_annotations = held.as_ref().is_some_and(|held| {
            annotations_part(&held.fingerprint) == annotations_part(&fingerprint)
                && held.annotations <= total
        });
        let (id, from) = match held {
            Some(held) if held.fingerprint == fingerprint && held.completed => {
                self.remember_check(commit, &check.name, held);
                return Ok(());
            }
            Some(held) if same_annotations => (Some(held.id), held.annotations),
            _ => (None, 0),
        };
        let rest = &check.annotations[from.min(total)..];
        let batches: Vec<&[Annotation]> = if rest.is_empty() {
            vec![&[]]
        } else {
            rest.chunks(ANNOTATIONS_PER_REQUEST).collect()
        };
        let mut id = id;
        let mut sent = from;
        for (n, batch) in batches.iter().enumerate() {
            let last = n + 1 == batches.len();
            let mut body = json!({
                "name": check.name,
                "external_id": fingerprint,
                "output": {
                    "title": check.title,
                    "summary": summary,
                },
            });
            if !batch.is_empty() {
                body["output"]["annotations"] =
                    Value::Array(batch.iter().map(annotation_json).collect());
            }
            if last {
                body["status"] = json!("completed");
                body["conclusion"] = json!(check.conclusion.as_str());
                body["actions"] = json!(check.actions);
            } else {
                body["status"] = json!("in_progress");
            }
            let answer = match id {
                None => {
                    body["head_sha"] = json!(commit);
                    let path = self.repo_path("check-runs");
                    let answer = self.write(Method::POST, &path, &body).await?;
                    decode::<GithubCheckRun>(&format!("POST {path}"), &answer.body)?
                }
                Some(run) => {
                    let path = self.repo_path(&format!("check-runs/{run}"));
                    let answer = self.write(Method::PATCH, &path, &body).await;
                    match answer {
                        Ok(answer) => {
                            decode::<GithubCheckRun>(&format!("PATCH {path}"), &answer.body)?
                        }
                        Err(error) => {
                            // What GitHub holds is unknown now: read it again next time.
                            self.lock_checks().remove(&key);
                            return Err(error);
                        }
                    }
                }
            };
            sent += batch.len();
            id = Some(answer.id);
            self.remember_check(
                commit,
                &check.name,
                Held {
                    id: answer.id,
                    fingerprint: fingerprint.clone(),
                    annotations: sent,
                    completed: last,
                },
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{AnnotationLevel, CheckAction, Conclusion};

    fn check(annotations: usize) -> CheckRun {
        CheckRun {
            commit: "1".repeat(40),
            name: "trainyard/validate".to_owned(),
            conclusion: Conclusion::Failure,
            title: "errors".to_owned(),
            summary: "## Validation".to_owned(),
            annotations: (0..annotations)
                .map(|i| Annotation {
                    path: "a.yaml".to_owned(),
                    start_line: u32::try_from(i).unwrap_or(0) + 1,
                    end_line: u32::try_from(i).unwrap_or(0) + 1,
                    columns: Some((1, 3)),
                    level: AnnotationLevel::Failure,
                    title: None,
                    message: format!("problem {i}"),
                })
                .collect(),
            actions: Vec::new(),
        }
    }

    #[test]
    fn the_fingerprint_tells_annotations_apart_from_the_rest() {
        let a = check(3);
        let mut b = a.clone();
        b.title = "other".to_owned();
        b.actions.push(CheckAction {
            label: "l".to_owned(),
            description: "d".to_owned(),
            identifier: "i".to_owned(),
        });
        let (fa, fb) = (fingerprint(&a, &a.summary), fingerprint(&b, &b.summary));
        assert_ne!(fa, fb);
        assert_eq!(annotations_part(&fa), annotations_part(&fb));
        assert_ne!(
            annotations_part(&fa),
            annotations_part(&fingerprint(&check(4), "## Validation"))
        );
        assert_eq!(fa, fingerprint(&a.clone(), &a.summary), "stable");
        assert!(fa.starts_with("trainyard:"), "{fa}");
        assert_eq!(annotations_part("someone else's"), None);
    }

    #[test]
    fn columns_go_only_on_one_line_annotations() {
        let mut annotation = check(1).annotations.remove(0);
        let one = annotation_json(&annotation);
        assert_eq!(
            (one["start_column"].as_u64(), one["end_column"].as_u64()),
            (Some(1), Some(3))
        );
        annotation.end_line = 4;
        let two = annotation_json(&annotation);
        assert!(two.get("start_column").is_none() && two.get("end_column").is_none());
    }

    #[test]
    fn names_are_escaped_in_queries() {
        assert_eq!(query_value("trainyard/eu west"), "trainyard%2Feu%20west");
    }

    mod against_the_stand_in {
        use std::time::Duration;

        use trainyard_testkit::github::{Fault, FaultKind, GithubServer, TEST_APP_KEY};

        use super::*;
        use crate::report::github::{GithubAuth, GithubConfig, GithubForge};
        use crate::report::{Forge, SUMMARY_CHARS, StatusState};

        const HEAD: &str = "1111111111111111111111111111111111111111";

        async fn server() -> GithubServer {
            let server = GithubServer::builder()
                .token("ghp_t", "trainyard-ci")
                .start()
                .await
                .expect("the stand-in starts");
            server.add_commit(HEAD);
            server
        }

        fn forge(server: &GithubServer, app: bool) -> GithubForge {
            let auth = if app {
                GithubAuth::App {
                    app_id: server.app_id(),
                    private_key_pem: TEST_APP_KEY.to_owned(),
                    installation_id: server.installation_id(),
                }
            } else {
                GithubAuth::Token("ghp_t".to_owned())
            };
            let mut config = GithubConfig::new("acme", "models", auth);
            config.api_url = server.url();
            config.min_write_interval = Duration::from_millis(2);
            GithubForge::new(config).expect("forge")
        }

        fn check_writes(server: &GithubServer) -> Vec<String> {
            server
                .requests()
                .into_iter()
                .filter(|r| matches!(r.method.as_str(), "POST" | "PATCH"))
                .filter(|r| r.path.contains("/check-runs"))
                .filter(|r| (200..300).contains(&r.status))
                .map(|r| r.method)
                .collect()
        }

        #[tokio::test]
        async fn more_than_fifty_annotations_arrive_in_full_in_batches() {
            let server = server().await;
            let forge = forge(&server, true);
            assert!(forge.has_check_runs());
            forge
                .upsert_check_run(&check(120))
                .await
                .expect("delivered");
            assert_eq!(check_writes(&server), ["POST", "PATCH", "PATCH"]);
            let runs = server.check_runs(HEAD);
            assert_eq!(runs.len(), 1);
            let run = &runs[0];
            assert_eq!(
                (run.status.as_str(), run.conclusion.as_deref()),
                ("completed", Some("failure"))
            );
            assert_eq!(run.annotations.len(), 120);
            let messages: Vec<_> = run.annotations.iter().map(|a| a.message.clone()).collect();
            let expected: Vec<_> = (0..120).map(|i| format!("problem {i}")).collect();
            assert_eq!(messages, expected, "each once, in order");
            assert_eq!(run.annotations[0].start_column, Some(1));
            assert!(server.statuses(HEAD).is_empty(), "no status besides");
        }

        #[tokio::test]
        async fn the_same_check_run_again_writes_nothing_even_after_a_restart() {
            let server = server().await;
            forge(&server, true)
                .upsert_check_run(&check(3))
                .await
                .expect("delivered");
            let again = forge(&server, true);
            again.upsert_check_run(&check(3)).await.expect("again");
            again.upsert_check_run(&check(3)).await.expect("and again");
            assert_eq!(check_writes(&server), ["POST"]);
            assert_eq!(server.check_runs(HEAD).len(), 1);
        }

        #[tokio::test]
        async fn a_new_summary_updates_the_run_and_new_annotations_replace_it() {
            let server = server().await;
            let forge = forge(&server, true);
            forge.upsert_check_run(&check(3)).await.expect("delivered");
            let mut retitled = check(3);
            retitled.summary = "## Validation, again".to_owned();
            forge.upsert_check_run(&retitled).await.expect("updated");
            let runs = server.check_runs(HEAD);
            assert_eq!(runs.len(), 1, "updated in place");
            assert_eq!(
                runs[0].annotations.len(),
                3,
                "its annotations are not sent twice"
            );
            assert_eq!(runs[0].summary.as_deref(), Some("## Validation, again"));
            forge.upsert_check_run(&check(2)).await.expect("replaced");
            let runs = server.check_runs(HEAD);
            assert_eq!(
                runs.len(),
                2,
                "GitHub keeps annotations: a new run shows the new ones"
            );
            assert_eq!(runs[1].annotations.len(), 2);
        }

        #[tokio::test]
        async fn an_interrupted_delivery_sends_only_the_annotations_github_lacks() {
            let server = server().await;
            server.fail_next_matching(Fault {
                remaining: 1,
                kind: FaultKind::ServerError(502),
                writes_only: true,
                path_prefix: Some("/repos/acme/models/check-runs/".to_owned()),
            });
            let err = forge(&server, true)
                .upsert_check_run(&check(120))
                .await
                .expect_err("the first update fails");
            assert!(matches!(err, ForgeError::Transient { .. }), "{err:?}");
            assert_eq!(server.check_runs(HEAD)[0].status, "in_progress");
            forge(&server, true)
                .upsert_check_run(&check(120))
                .await
                .expect("resumed after a restart");
            let runs = server.check_runs(HEAD);
            assert_eq!(runs.len(), 1);
            assert_eq!(runs[0].annotations.len(), 120);
            assert_eq!(runs[0].status, "completed");
        }

        #[tokio::test]
        async fn a_long_summary_is_cut_within_githubs_limit() {
            let server = server().await;
            let mut long = check(0);
            long.summary = format!("## Plan\n```diff\n{}", "+ line\n".repeat(20_000));
            forge(&server, true)
                .upsert_check_run(&long)
                .await
                .expect("accepted");
            let held = server.check_runs(HEAD)[0]
                .summary
                .clone()
                .unwrap_or_default();
            assert!(held.chars().count() <= SUMMARY_CHARS);
            assert!(
                held.contains("Trainyard cut this summary"),
                "{}",
                &held[held.len() - 200..]
            );
        }

        #[tokio::test]
        async fn a_token_sets_the_status_that_says_the_same() {
            let server = server().await;
            let forge = forge(&server, false);
            assert!(!forge.has_check_runs());
            forge
                .upsert_check_run(&check(3))
                .await
                .expect("as a status");
            assert!(server.check_runs(HEAD).is_empty());
            let statuses = server.latest_statuses(HEAD);
            let status = &statuses["trainyard/validate"];
            assert_eq!(status.state, StatusState::Failure.as_str());
            assert_eq!(status.description.as_deref(), Some("errors"));
        }
    }
}
