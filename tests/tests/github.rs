//! End to end with GitHub: the real binary follows a remote repository (a bare repository
//! reached over `file://`, whose `refs/pull/N/head` the test sets as GitHub does), takes
//! signed webhooks, and reports to the stand-in GitHub API. Assertions are on what the
//! stand-in holds at the end: statuses and check runs per commit and comments per pull
//! request. The service signs in with a token, or as the stand-in's GitHub App.

use std::path::Path;
use std::time::Duration;

use git2::{Oid, Repository, Signature};
use trainyard::store::{RunState, Store, Trigger};
use trainyard_testkit::github::{
    CheckRunRecord, CommentRecord, Fault, FaultKind, GithubServer, Permission, TEST_APP_KEY,
    issue_comment_payload, pull_request_payload, push_payload, send_webhook, send_webhook_signed,
};
use trainyard_tests::{DataDir, PINNED_IMAGE, Result, Service, TestResult, temp_dir, wait_for};

const REPO: &str = "acme/models";
const TOKEN: &str = "ghp_trainyard_test";
const SECRET: &[u8] = b"it is a secret to everybody";
const MAIN: &str = "main";
/// How long a webhook may take to show up on the stand-in.
const LIMIT: Duration = Duration::from_secs(60);

fn pipeline(epochs: u32) -> String {
    format!(
        "apiVersion: trainyard.dev/v1
kind: Pipeline
metadata: {{name: churn, owner: team-a}}
spec:
  image: {PINNED_IMAGE}
  triggers: {{on_change: true}}
  params:
    epochs: {{type: int, default: {epochs}}}
  steps:
    - name: train
      run: [python3, -c, \"print('trained')\"]
"
    )
}

const SCHEDULE: &str = "apiVersion: trainyard.dev/v1
kind: Schedule
metadata: {name: nightly}
spec: {pipeline: churn, cron: '0 2 * * *'}
";

/// The remote repository: a bare repository whose commits the test writes directly.
struct Remote {
    dir: tempfile::TempDir,
    repo: Repository,
}

impl Remote {
    fn new() -> Result<Remote> {
        let dir = temp_dir()?;
        let repo = Repository::init_bare(dir.path().join("models.git"))?;
        repo.set_head(&format!("refs/heads/{MAIN}"))?;
        Ok(Remote { dir, repo })
    }

    fn url(&self) -> String {
        format!("file://{}", self.dir.path().join("models.git").display())
    }

    /// A commit of `files` over `parents[0]`'s tree (files at the root), pointed at by
    /// `reference` when given.
    fn commit(
        &self,
        parents: &[Oid],
        files: &[(&str, &str)],
        reference: Option<&str>,
    ) -> Result<Oid> {
        let parents: Vec<git2::Commit<'_>> = parents
            .iter()
            .map(|p| self.repo.find_commit(*p))
            .collect::<std::result::Result<_, _>>()?;
        let base = parents.first().map(|p| p.tree()).transpose()?;
        let mut tree = self.repo.treebuilder(base.as_ref())?;
        for (path, content) in files {
            let blob = self.repo.blob(content.as_bytes())?;
            tree.insert(path, blob, 0o100644)?;
        }
        let tree = self.repo.find_tree(tree.write()?)?;
        let signature = Signature::now("Test", "test@example.com")?;
        let parents: Vec<&git2::Commit<'_>> = parents.iter().collect();
        let id = self
            .repo
            .commit(None, &signature, &signature, "change", &tree, &parents)?;
        if let Some(reference) = reference {
            self.repo.reference(reference, id, true, "test")?;
        }
        Ok(id)
    }
}

/// A free local port for the service's HTTP server.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A service following `remote`, reporting to `gh`, taking webhooks on its own port; the
/// branch is polled only hourly, so a commit shows up at once only through a webhook.
struct Setup {
    gh: GithubServer,
    remote: Remote,
    data: DataDir,
    service: Option<Service>,
    hook: String,
    /// The service's arguments after `--repo`, for a restart.
    args: Vec<String>,
    _files: tempfile::TempDir,
}

impl Setup {
    async fn start(gh: GithubServer, remote: Remote, main: Oid) -> Result<Setup> {
        Setup::start_signed_in(gh, remote, main, false).await
    }

    async fn start_signed_in(
        gh: GithubServer,
        remote: Remote,
        main: Oid,
        app: bool,
    ) -> Result<Setup> {
        gh.set_branch(MAIN, &main.to_string());
        let files = temp_dir()?;
        let secret = files.path().join("webhook-secret");
        std::fs::write(&secret, SECRET)?;
        let token = files.path().join("token");
        std::fs::write(&token, TOKEN)?;
        let key = files.path().join("app-key.pem");
        std::fs::write(&key, TEST_APP_KEY)?;
        let data = DataDir::new()?;
        let port = free_port()?;
        let listen = format!("127.0.0.1:{port}");
        let args = vec![
            "--listen".to_owned(),
            listen.clone(),
            "--poll-seconds".to_owned(),
            "3600".to_owned(),
            "--webhook-secret-file".to_owned(),
            path(&secret),
            "--github-repo".to_owned(),
            REPO.to_owned(),
            "--github-api-url".to_owned(),
            gh.url(),
        ];
        let mut args = args;
        if app {
            args.extend([
                "--github-app-id".to_owned(),
                gh.app_id().to_string(),
                "--github-private-key-file".to_owned(),
                path(&key),
                "--github-installation-id".to_owned(),
                gh.installation_id().to_string(),
            ]);
        } else {
            args.extend(["--github-token-file".to_owned(), path(&token)]);
        }
        let mut setup = Setup {
            gh,
            remote,
            data,
            service: None,
            hook: format!("http://{listen}/webhooks/github"),
            args,
            _files: files,
        };
        setup.restart()?;
        Ok(setup)
    }

    /// Starts the service (again) on the same store, repository and GitHub.
    fn restart(&mut self) -> Result<()> {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.service = Some(Service::start_following(
            &self.remote.url(),
            self._files.path(),
            &self.data,
            &args,
            &[],
        )?);
        Ok(())
    }

    async fn send(&self, event: &str, delivery: &str, body: &serde_json::Value) -> Result<u16> {
        let bytes = serde_json::to_vec(body)?;
        // The service may still be starting: connection refused is retried.
        for _ in 0..200 {
            match send_webhook(&self.hook, SECRET, event, delivery, &bytes).await {
                Ok((status, _)) => return Ok(status),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        Err("the service never answered its webhook".into())
    }

    async fn store(&self) -> Result<Store> {
        self.data.store().await
    }

    /// Pull request `pr`'s comments carrying the marker of `key`.
    fn sticky(&self, pr: u64, key: &str) -> Vec<CommentRecord> {
        let marker = format!("<!-- trainyard:{key} -->");
        self.gh
            .comments(pr)
            .into_iter()
            .filter(|c| c.body.contains(&marker))
            .collect()
    }

    async fn wait_for_status(&self, sha: Oid, context: &str, state: &str) -> Result<()> {
        let sha = sha.to_string();
        wait_for(LIMIT, &format!("{context} {state} on {sha}"), async || {
            Ok(self
                .gh
                .latest_statuses(&sha)
                .get(context)
                .is_some_and(|s| s.state == state))
        })
        .await
    }

    /// The newest check run `name` on `sha` once it is completed as `conclusion`.
    async fn wait_for_check_run(
        &self,
        sha: Oid,
        name: &str,
        conclusion: &str,
    ) -> Result<CheckRunRecord> {
        let sha = sha.to_string();
        let newest = || {
            self.gh
                .check_runs(&sha)
                .into_iter()
                .rfind(|r| r.name == name)
        };
        wait_for(
            LIMIT,
            &format!("check run {name} {conclusion} on {sha}"),
            async || {
                Ok(newest().is_some_and(|r| {
                    r.status == "completed" && r.conclusion.as_deref() == Some(conclusion)
                }))
            },
        )
        .await?;
        newest().ok_or_else(|| format!("check run {name}").into())
    }

    async fn wait_for_comment(&self, pr: u64, key: &str, text: &str) -> Result<CommentRecord> {
        wait_for(
            LIMIT,
            &format!("comment {key} saying {text:?}"),
            async || Ok(self.sticky(pr, key).iter().any(|c| c.body.contains(text))),
        )
        .await?;
        let found = self.sticky(pr, key);
        assert_eq!(found.len(), 1, "one comment {key}: {found:#?}");
        Ok(found[0].clone())
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(service) = self.service.take() {
            let _ = service.stop();
        }
    }
}

/// The stand-in GitHub of `acme/models`, with the service's token.
async fn standin() -> Result<GithubServer> {
    Ok(GithubServer::builder()
        .repo("acme", "models")
        .token(TOKEN, "trainyard-bot")
        .start()
        .await?)
}

/// The service following a repository whose main holds the churn pipeline, once the run of
/// that commit has succeeded and said so on it; returns the commit too.
async fn following_churn(gh: GithubServer) -> Result<(Setup, Oid)> {
    following_churn_signed_in(gh, false).await
}

async fn following_churn_signed_in(gh: GithubServer, app: bool) -> Result<(Setup, Oid)> {
    let remote = Remote::new()?;
    let main = remote.commit(
        &[],
        &[("churn.yaml", &pipeline(1))],
        Some("refs/heads/main"),
    )?;
    let setup = Setup::start_signed_in(gh, remote, main, app).await?;
    setup
        .wait_for_status(main, "trainyard/run/churn", "success")
        .await?;
    Ok((setup, main))
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_push_runs_at_once_and_bad_or_replayed_deliveries_do_nothing() -> TestResult {
    let (setup, first) = following_churn(standin().await?).await?;

    let second = setup.remote.commit(
        &[first],
        &[("churn.yaml", &pipeline(2))],
        Some("refs/heads/main"),
    )?;
    setup.gh.set_branch(MAIN, &second.to_string());
    let push = serde_json::to_vec(&push_payload(
        REPO,
        MAIN,
        &first.to_string(),
        &second.to_string(),
    ))?;
    let (status, _) = send_webhook_signed(
        &setup.hook,
        Some("sha256=0000000000000000000000000000000000000000000000000000000000000000"),
        "push",
        "delivery-bad",
        &push,
    )
    .await?;
    assert_eq!(status, 401, "a bad signature is refused");
    let (status, _) =
        send_webhook_signed(&setup.hook, None, "push", "delivery-none", &push).await?;
    assert_eq!(status, 401, "a missing signature is refused");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        setup.gh.statuses(&second.to_string()).is_empty(),
        "nothing happened for refused deliveries"
    );

    let (status, _) = send_webhook(&setup.hook, SECRET, "push", "delivery-1", &push).await?;
    assert!((200..300).contains(&status), "accepted: {status}");
    setup
        .wait_for_status(second, "trainyard/validate", "success")
        .await?;
    setup
        .wait_for_status(second, "trainyard/run/churn", "success")
        .await?;
    let store = setup.store().await?;
    let runs = store
        .list_runs(None, 10)
        .await?
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    assert_eq!(runs.len(), 2, "one run per applied commit: {runs:?}");
    let posted = setup.gh.statuses(&second.to_string()).len();

    let (status, _) = send_webhook(&setup.hook, SECRET, "push", "delivery-1", &push).await?;
    assert!(
        (200..300).contains(&status),
        "a replay is acknowledged: {status}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        store
            .list_runs(None, 10)
            .await?
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?
            .len(),
        2,
        "a replay runs nothing"
    );
    assert_eq!(
        setup.gh.statuses(&second.to_string()).len(),
        posted,
        "a replay posts nothing"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_request_keeps_one_plan_comment_and_previews_run_only_for_writers() -> TestResult {
    let (setup, main) = following_churn(standin().await?).await?;

    // Opened: one plan comment, both statuses on the head.
    let head = setup.remote.commit(
        &[main],
        &[("churn.yaml", &pipeline(2)), ("nightly.yaml", SCHEDULE)],
        Some("refs/pull/7/head"),
    )?;
    setup
        .gh
        .open_pr(7, &head.to_string())
        .author("bob")
        .open()?;
    setup
        .send(
            "pull_request",
            "pr-1",
            &setup.gh.pull_request_event("opened", 7)?,
        )
        .await?;
    setup
        .wait_for_status(head, "trainyard/validate", "success")
        .await?;
    setup
        .wait_for_status(head, "trainyard/plan", "success")
        .await?;
    let plan = setup
        .wait_for_comment(7, "plan", &head.to_string()[..12])
        .await?;
    assert!(plan.body.contains("`nightly`"), "{}", plan.body);
    assert!(
        setup.gh.check_runs(&head.to_string()).is_empty(),
        "a token gets statuses, no check runs"
    );

    // Synchronized twice: the same comment, edited.
    let mut latest = head;
    for (n, epochs) in [(2, 3), (3, 4)] {
        latest = setup.remote.commit(
            &[latest],
            &[("churn.yaml", &pipeline(epochs))],
            Some("refs/pull/7/head"),
        )?;
        setup.gh.push_to_pr(7, &latest.to_string())?;
        setup
            .send(
                "pull_request",
                &format!("pr-{n}"),
                &setup.gh.pull_request_event("synchronize", 7)?,
            )
            .await?;
    }
    setup
        .wait_for_status(latest, "trainyard/plan", "success")
        .await?;
    let edited = setup
        .wait_for_comment(7, "plan", &latest.to_string()[..12])
        .await?;
    assert_eq!(edited.id, plan.id, "the plan comment is edited in place");
    assert!(edited.edits >= 1, "{edited:?}");

    // A reader asks for a run: refused with the reason, nothing runs.
    setup.gh.set_permission("carol", Permission::Read);
    let asked = "/trainyard run churn epochs=5";
    let carol = setup.gh.add_comment_as("carol", 7, asked)?;
    setup
        .send(
            "issue_comment",
            "c-1",
            &issue_comment_payload(REPO, 7, carol, "carol", asked),
        )
        .await?;
    setup
        .wait_for_comment(7, &format!("command-{carol}"), "write permission")
        .await?;
    let store = setup.store().await?;
    let previews = |runs: Vec<trainyard::store::RunRow>| {
        runs.into_iter()
            .filter(|r| r.trigger == Trigger::Preview)
            .collect::<Vec<_>>()
    };
    assert!(
        previews(
            store
                .list_runs(None, 20)
                .await?
                .into_iter()
                .collect::<Result<Vec<_>, _>>()?
        )
        .is_empty()
    );

    // A writer asks: a preview of the head's version, its result in its own comment; with
    // --no-cache, a run that reuses nothing.
    setup.gh.set_permission("bob", Permission::Write);
    let asked_fresh = format!("{asked} --no-cache");
    let bob = setup.gh.add_comment_as("bob", 7, &asked_fresh)?;
    setup
        .send(
            "issue_comment",
            "c-2",
            &issue_comment_payload(REPO, 7, bob, "bob", &asked_fresh),
        )
        .await?;
    let found = async || -> Result<Vec<trainyard::store::RunRow>> {
        Ok(previews(
            store
                .list_runs(None, 20)
                .await?
                .into_iter()
                .collect::<Result<Vec<_>, _>>()?,
        ))
    };
    wait_for(LIMIT, "a preview run", async || {
        Ok(!found().await?.is_empty())
    })
    .await?;
    let preview = found().await?.remove(0);
    assert_eq!(preview.commit_sha, latest.to_string());
    assert!(preview.no_cache, "{preview:?}");
    assert_eq!(
        serde_json::to_value(&preview.params)?,
        serde_json::json!({"epochs": 5})
    );
    let current = store.current_pipeline("churn").await?.ok_or("churn")?;
    assert_ne!(
        current.version, preview.pipeline_version,
        "the preview runs the head's version; the branch keeps its own"
    );
    let result = setup
        .wait_for_comment(7, &format!("run-{}", preview.id), "succeeded")
        .await?;
    assert!(result.body.contains("Preview run"), "{}", result.body);
    assert_eq!(
        store.run(preview.id).await?.map(|r| r.state),
        Some(RunState::Succeeded)
    );
    assert!(
        setup.sticky(7, &format!("command-{bob}")).is_empty(),
        "an allowed command needs no reply"
    );

    // Merged: the merge commit's run and its results go back to the pull request.
    let merge = setup.remote.commit(
        &[main, latest],
        &[("churn.yaml", &pipeline(4)), ("nightly.yaml", SCHEDULE)],
        Some("refs/heads/main"),
    )?;
    setup.gh.merge_pr(7, &merge.to_string())?;
    setup
        .send(
            "pull_request",
            "pr-4",
            &setup.gh.pull_request_event("closed", 7)?,
        )
        .await?;
    setup
        .send(
            "push",
            "push-1",
            &push_payload(REPO, MAIN, &main.to_string(), &merge.to_string()),
        )
        .await?;
    setup
        .wait_for_status(merge, "trainyard/run/churn", "success")
        .await?;
    let results = setup.wait_for_comment(7, "results", "succeeded").await?;
    assert!(results.body.contains("of `churn`"), "{}", results.body);
    assert_eq!(setup.sticky(7, "plan").len(), 1, "still one plan comment");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_github_gets_everything_later_in_order_and_once() -> TestResult {
    let gh = GithubServer::builder()
        .repo("acme", "models")
        .token(TOKEN, "trainyard-bot")
        .start()
        .await?;
    let remote = Remote::new()?;
    let main = remote.commit(
        &[],
        &[("churn.yaml", &pipeline(1))],
        Some("refs/heads/main"),
    )?;
    let head = remote.commit(
        &[main],
        &[("churn.yaml", &pipeline(2))],
        Some("refs/pull/9/head"),
    )?;
    gh.open_pr(9, &head.to_string()).author("bob").open()?;
    gh.fail_next(4, FaultKind::SecondaryRateLimit { retry_after: 2 });
    let setup = Setup::start(gh, remote, main).await?;
    setup
        .send(
            "pull_request",
            "pr-9",
            &setup.gh.pull_request_event("opened", 9)?,
        )
        .await?;
    setup
        .wait_for_status(main, "trainyard/run/churn", "success")
        .await?;
    setup
        .wait_for_status(head, "trainyard/plan", "success")
        .await?;
    setup
        .wait_for_comment(9, "plan", &head.to_string()[..12])
        .await?;
    let refused = setup
        .gh
        .requests()
        .iter()
        .filter(|r| r.status == 403)
        .count();
    assert!(refused >= 1, "the limit was hit");
    for sha in [main, head] {
        let statuses = setup.gh.statuses(&sha.to_string());
        let contexts: Vec<&str> = statuses.iter().map(|s| s.context.as_str()).collect();
        let distinct: std::collections::BTreeSet<&str> = contexts.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            contexts.len(),
            "no status twice: {statuses:#?}"
        );
        let validate = contexts.iter().position(|c| *c == "trainyard/validate");
        assert_eq!(
            validate,
            Some(0),
            "validate first, as enqueued: {contexts:?}"
        );
    }
    assert_eq!(setup.gh.comments(9).len(), 1, "one comment");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_for_another_repository_are_recorded_as_refused_and_change_nothing() -> TestResult
{
    let (setup, main) = following_churn(standin().await?).await?;
    // The followed repository has an open pull request 7, and bob may write to it.
    let head = setup.remote.commit(
        &[main],
        &[("churn.yaml", &pipeline(2))],
        Some("refs/pull/7/head"),
    )?;
    setup
        .gh
        .open_pr(7, &head.to_string())
        .author("bob")
        .open()?;
    setup.gh.set_permission("bob", Permission::Write);
    let requests_before = setup.gh.requests().len();

    // The App is installed on another repository too: its pull request 7 and bob's command
    // there are signed with the same secret, and must not touch the followed one.
    let other = "mallory/models";
    let asked = "/trainyard run churn epochs=5";
    for (event, delivery, body) in [
        (
            "pull_request",
            "other-pr",
            pull_request_payload(
                other,
                "opened",
                7,
                &head.to_string(),
                "feature",
                MAIN,
                false,
                "bob",
                false,
            ),
        ),
        (
            "issue_comment",
            "other-comment",
            issue_comment_payload(other, 7, 4_242, "bob", asked),
        ),
        (
            "push",
            "other-push",
            push_payload(other, MAIN, &main.to_string(), &head.to_string()),
        ),
    ] {
        assert_eq!(setup.send(event, delivery, &body).await?, 200, "{delivery}");
    }

    // A delivery of the followed repository, queued after them, is answered: once its
    // reply is there, the loop has been past the refused ones, had they been queued.
    // carol asks for help, which plans nothing and checks no permission: whatever is
    // posted on pull request 7 besides the help came from a refused delivery.
    let carol = setup.gh.add_comment_as("carol", 7, "/trainyard help")?;
    assert_eq!(
        setup
            .send(
                "issue_comment",
                "own-comment",
                &issue_comment_payload(REPO, 7, carol, "carol", "/trainyard help"),
            )
            .await?,
        202
    );
    setup
        .wait_for_comment(7, &format!("command-{carol}"), "validates and plans")
        .await?;

    let store = setup.store().await?;
    let history: Vec<_> = store
        .forge_event_history(10)
        .await?
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    for delivery in ["other-pr", "other-comment", "other-push"] {
        let row = history
            .iter()
            .find(|row| row.delivery == delivery)
            .ok_or_else(|| format!("{delivery} is recorded: {history:#?}"))?;
        assert_eq!(
            row.outcome.as_deref(),
            Some("refused: sent for mallory/models, not the followed acme/models"),
            "{row:?}"
        );
    }
    let runs = store
        .list_runs(None, 20)
        .await?
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    assert!(
        runs.iter().all(|run| run.trigger != Trigger::Preview),
        "no preview ran: {runs:#?}"
    );
    assert!(
        setup.sticky(7, "command-4242").is_empty() && setup.sticky(7, "plan").is_empty(),
        "nothing was posted on the followed pull request 7 for the other repository's: {:#?}",
        setup.gh.comments(7)
    );
    assert!(
        setup.gh.statuses(&head.to_string()).is_empty(),
        "no status was posted on the head for the other repository's pull request"
    );
    // What the service asked GitHub for after the refused deliveries: only what the
    // reply to carol needs.
    let asked_for: Vec<_> = setup.gh.requests()[requests_before..]
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(
        asked_for.iter().all(|r| !r.contains("/collaborators/")
            && !r.starts_with("POST /repos/acme/models/statuses")),
        "no permission was checked and no status posted: {asked_for:#?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_does_not_wait_for_a_stalled_github_and_the_report_survives_it() -> TestResult {
    let gh = standin().await?;
    // The first status write is held for longer than the service may take to stop.
    gh.fail_next_matching(Fault {
        remaining: 1,
        kind: FaultKind::Stall { seconds: 120 },
        writes_only: true,
        path_prefix: Some("/repos/acme/models/statuses".to_owned()),
    });
    let remote = Remote::new()?;
    let main = remote.commit(
        &[],
        &[("churn.yaml", &pipeline(1))],
        Some("refs/heads/main"),
    )?;
    let mut setup = Setup::start(gh, remote, main).await?;
    let stalled = |setup: &Setup| {
        setup
            .gh
            .requests()
            .iter()
            .filter(|r| r.method == "POST" && r.path.starts_with("/repos/acme/models/statuses"))
            .count()
    };
    wait_for(LIMIT, "a status write in flight", async || {
        Ok(stalled(&setup) == 1)
    })
    .await?;

    // SIGINT while the write hangs: the service stops (within the harness's limit, far
    // below the stall and the delivery timeout) and cleanly.
    let service = setup.service.take().ok_or("the service runs")?;
    assert_eq!(service.stop()?, Some(0), "{}", setup.data.service_output());
    assert!(
        setup.gh.statuses(&main.to_string()).is_empty(),
        "the stalled write never landed"
    );

    // The report was not lost with the interrupted delivery: after a restart it arrives.
    setup.restart()?;
    setup
        .wait_for_status(main, "trainyard/validate", "success")
        .await?;
    setup
        .wait_for_status(main, "trainyard/run/churn", "success")
        .await?;
    Ok(())
}

/// Pipeline `name` with a misspelt field (`timout`) on line 9, column 7.
fn misspelt(name: &str) -> String {
    format!(
        "apiVersion: trainyard.dev/v1
kind: Pipeline
metadata: {{name: {name}, owner: team-a}}
spec:
  image: {PINNED_IMAGE}
  steps:
    - name: train
      run: [python3, -c, \"print('trained')\"]
      timout: 1h
"
    )
}

/// The check-run writes GitHub accepted.
fn check_run_writes(gh: &GithubServer) -> usize {
    gh.requests()
        .iter()
        .filter(|r| matches!(r.method.as_str(), "POST" | "PATCH"))
        .filter(|r| r.path.contains("/check-runs"))
        .filter(|r| (200..300).contains(&r.status))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_app_every_finding_is_an_annotation_on_its_line_once() -> TestResult {
    let (setup, main) = following_churn_signed_in(standin().await?, true).await?;
    // Sixty broken files: more annotations than one request carries.
    let names: Vec<String> = (0..60).map(|n| format!("bad-{n:02}")).collect();
    let files: Vec<(String, String)> = names
        .iter()
        .map(|name| (format!("{name}.yaml"), misspelt(name)))
        .collect();
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    let head = setup
        .remote
        .commit(&[main], &files, Some("refs/pull/7/head"))?;
    setup
        .gh
        .open_pr(7, &head.to_string())
        .author("bob")
        .open()?;
    setup
        .send(
            "pull_request",
            "pr-1",
            &setup.gh.pull_request_event("opened", 7)?,
        )
        .await?;
    let validate = setup
        .wait_for_check_run(head, "trainyard/validate", "failure")
        .await?;
    assert_eq!(validate.annotations.len(), 60, "every finding arrives");
    let on_seven: Vec<_> = validate
        .annotations
        .iter()
        .filter(|a| a.path == "bad-07.yaml")
        .collect();
    assert_eq!(on_seven.len(), 1, "{:#?}", validate.annotations);
    let annotation = on_seven[0];
    assert_eq!((annotation.start_line, annotation.end_line), (9, 9));
    assert_eq!(annotation.start_column, Some(7));
    assert_eq!(annotation.level, "failure");
    assert!(
        annotation.message.contains("timout"),
        "{}",
        annotation.message
    );
    let plan = setup
        .wait_for_check_run(head, "trainyard/plan", "failure")
        .await?;
    assert!(
        plan.actions.is_empty(),
        "nothing to preview in a broken head"
    );
    assert!(
        plan.summary
            .as_deref()
            .unwrap_or("")
            .contains("Trainyard plan"),
        "{:?}",
        plan.summary
    );
    let statuses = setup.gh.latest_statuses(&head.to_string());
    assert!(
        !statuses.contains_key("trainyard/validate") && !statuses.contains_key("trainyard/plan"),
        "an App reports check runs instead of statuses: {statuses:?}"
    );
    setup
        .wait_for_comment(7, "plan", &head.to_string()[..12])
        .await?;

    // Redelivered, and planned again on request: nothing new on GitHub.
    let writes = check_run_writes(&setup.gh);
    setup
        .send(
            "pull_request",
            "pr-2",
            &setup.gh.pull_request_event("synchronize", 7)?,
        )
        .await?;
    let replan = "/trainyard plan";
    let comment = setup.gh.add_comment_as("bob", 7, replan)?;
    setup
        .send(
            "issue_comment",
            "c-1",
            &issue_comment_payload(REPO, 7, comment, "bob", replan),
        )
        .await?;
    let store = setup.store().await?;
    wait_for(LIMIT, "the redelivered events handled", async || {
        let reports = store
            .reports_of_commit::<serde_json::Value>(&head.to_string())
            .await?;
        let check_runs = reports
            .iter()
            .filter(|r| r.key == "trainyard/validate")
            .count();
        Ok(check_runs >= 3
            && reports
                .iter()
                .all(|r| r.state != trainyard::store::ReportState::Pending))
    })
    .await?;
    let runs = setup.gh.check_runs(&head.to_string());
    assert_eq!(runs.len(), 2, "one check run per name: {runs:#?}");
    assert_eq!(check_run_writes(&setup.gh), writes, "nothing written again");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_app_a_long_plan_is_cut_within_githubs_summary_limit() -> TestResult {
    let (setup, main) = following_churn_signed_in(standin().await?, true).await?;
    // Six hundred pipelines with long names, in one file: a plan of about 70,000 characters.
    let many: String = (0..600)
        .map(|n| {
            pipeline(1).replace(
                "name: churn",
                &format!("name: a-pipeline-with-a-long-name-number-{n:03}"),
            )
        })
        .collect::<Vec<_>>()
        .join("---\n");
    let head = setup
        .remote
        .commit(&[main], &[("many.yaml", &many)], Some("refs/pull/8/head"))?;
    setup
        .gh
        .open_pr(8, &head.to_string())
        .author("bob")
        .open()?;
    setup
        .send(
            "pull_request",
            "pr-1",
            &setup.gh.pull_request_event("opened", 8)?,
        )
        .await?;
    let plan = setup
        .wait_for_check_run(head, "trainyard/plan", "success")
        .await?;
    let summary = plan.summary.unwrap_or_default();
    assert!(
        summary.chars().count() <= 65_535,
        "{}",
        summary.chars().count()
    );
    assert!(
        summary.contains("Trainyard cut this summary"),
        "{}",
        &summary[summary.len() - 300..]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plan_check_runs_button_starts_a_preview_for_writers_only() -> TestResult {
    let (setup, main) = following_churn_signed_in(standin().await?, true).await?;
    let head = setup.remote.commit(
        &[main],
        &[("churn.yaml", &pipeline(3))],
        Some("refs/pull/7/head"),
    )?;
    setup
        .gh
        .open_pr(7, &head.to_string())
        .author("bob")
        .open()?;
    setup
        .send(
            "pull_request",
            "pr-1",
            &setup.gh.pull_request_event("opened", 7)?,
        )
        .await?;
    let plan = setup
        .wait_for_check_run(head, "trainyard/plan", "success")
        .await?;
    assert_eq!(
        plan.actions
            .iter()
            .map(|a| a.identifier.as_str())
            .collect::<Vec<_>>(),
        ["preview"],
        "the head changes churn: it can be previewed"
    );
    let store = setup.store().await?;
    let previews = async || -> Result<Vec<trainyard::store::RunRow>> {
        Ok(store
            .list_runs(None, 20)
            .await?
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|r| r.trigger == Trigger::Preview)
            .collect())
    };

    // A reader presses it: refused with the reason, nothing runs.
    setup.gh.set_permission("carol", Permission::Read);
    let pressed = |who: &str| {
        setup
            .gh
            .check_run_requested_action_event(plan.id, "preview", who)
            .ok_or("the check run")
    };
    setup.send("check_run", "a-1", &pressed("carol")?).await?;
    setup
        .wait_for_comment(7, &format!("action-{}", plan.id), "write permission")
        .await?;
    assert!(previews().await?.is_empty(), "a reader starts nothing");

    // A writer presses it: a preview of the head's churn with its defaults.
    setup.gh.set_permission("bob", Permission::Write);
    setup.send("check_run", "a-2", &pressed("bob")?).await?;
    wait_for(LIMIT, "a preview run", async || {
        Ok(!previews().await?.is_empty())
    })
    .await?;
    // Pressed again (or the event handled twice): still one preview.
    setup.send("check_run", "a-3", &pressed("bob")?).await?;
    let found = previews().await?;
    assert_eq!(found.len(), 1, "{found:?}");
    let preview = &found[0];
    assert_eq!(preview.commit_sha, head.to_string());
    assert_eq!(
        serde_json::to_value(&preview.params)?,
        serde_json::json!({"epochs": 3})
    );
    let result = setup
        .wait_for_comment(7, &format!("run-{}", preview.id), "succeeded")
        .await?;
    assert!(result.body.contains("Preview run"), "{}", result.body);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        previews().await?.len(),
        1,
        "pressing again starts nothing new"
    );
    Ok(())
}
