//! The stand-in GitHub, driven by the real octocrab client: what it accepts, what it
//! refuses the way GitHub refuses it, and what it holds afterwards.

use std::time::Duration;

use octocrab::models::{AppId, InstallationId, StatusState};
use octocrab::service::middleware::retry::RetryConfig;
use octocrab::{Octocrab, models};
use serde_json::{Value, json};
use trainyard_testkit::github::{
    self, Fault, FaultKind, GithubServer, Permission, TEST_APP_KEY, TokenKind,
};

const SHA: &str = "1111111111111111111111111111111111111111";
const MERGE: &str = "2222222222222222222222222222222222222222";

fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

async fn server() -> GithubServer {
    init();
    let gh = GithubServer::builder()
        .token("ghp_alice", "alice")
        .token("ghp_admin", "boss")
        .start()
        .await
        .unwrap();
    gh.add_commit(SHA);
    gh
}

fn client(gh: &GithubServer, token: &str) -> Octocrab {
    Octocrab::builder()
        .base_uri(gh.url())
        .unwrap()
        .personal_token(token.to_string())
        .add_retry_config(RetryConfig::None)
        .build()
        .unwrap()
}

fn app_client(gh: &GithubServer) -> Octocrab {
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(TEST_APP_KEY.as_bytes()).unwrap();
    let app = Octocrab::builder()
        .base_uri(gh.url())
        .unwrap()
        .app(AppId(gh.app_id()), key)
        .add_retry_config(RetryConfig::None)
        .build()
        .unwrap();
    app.installation(InstallationId(gh.installation_id()))
        .unwrap()
}

/// The status and GitHub's error body of a failed call.
fn github_error<T: std::fmt::Debug>(result: octocrab::Result<T>) -> (u16, octocrab::GitHubError) {
    match result {
        Err(octocrab::Error::GitHub { source, .. }) => (source.status_code.as_u16(), *source),
        other => panic!("expected an error from GitHub, got {other:?}"),
    }
}

/// The seconds of a refusal's `retry-after` header.
fn retry_after(err: &octocrab::GitHubError) -> u64 {
    err.headers.as_ref().unwrap()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_status_is_created_listed_newest_first_and_combined() {
    let gh = server().await;
    let octo = client(&gh, "ghp_alice");
    let repos = octo.repos("acme", "models");
    let created = repos
        .create_status(SHA.into(), StatusState::Pending)
        .context("trainyard/plan".into())
        .description("planning".into())
        .target("https://trainyard.example/runs/1".into())
        .send()
        .await
        .unwrap();
    assert_eq!(created.state, StatusState::Pending);
    assert_eq!(created.creator.map(|c| c.login).as_deref(), Some("alice"));
    repos
        .create_status(SHA.into(), StatusState::Success)
        .context("trainyard/plan".into())
        .send()
        .await
        .unwrap();
    repos
        .create_status(SHA.into(), StatusState::Failure)
        .send()
        .await
        .unwrap();

    let listed = repos.list_statuses(SHA.into()).send().await.unwrap();
    let states: Vec<_> = listed.items.iter().map(|s| s.state).collect();
    assert_eq!(
        states,
        [
            StatusState::Failure,
            StatusState::Success,
            StatusState::Pending
        ]
    );
    assert_eq!(listed.items[0].context.as_deref(), Some("default"));

    gh.set_branch("main", SHA);
    let combined = repos
        .combined_status_for_ref(&octocrab::params::repos::Reference::Branch("main".into()))
        .await
        .unwrap();
    assert_eq!(combined.total_count, 2, "one per context");
    assert_eq!(combined.state, StatusState::Failure);

    let held = gh.latest_statuses(SHA);
    assert_eq!(held["trainyard/plan"].state, "success");
    assert_eq!(gh.statuses(SHA).len(), 3);
}

#[tokio::test]
async fn statuses_github_would_refuse_are_refused_with_422_and_not_stored() {
    let gh = server().await;
    let octo = client(&gh, "ghp_alice");
    let url = format!("/repos/acme/models/statuses/{SHA}");

    let bad_state: octocrab::Result<Value> = octo.post(&url, Some(&json!({"state": "done"}))).await;
    let (code, err) = github_error(bad_state);
    assert_eq!(code, 422);
    assert_eq!(err.message, "Validation Failed");
    assert_eq!(err.errors.unwrap()[0]["field"], "state");

    let missing: octocrab::Result<Value> = octo.post(&url, Some(&json!({"context": "x"}))).await;
    assert_eq!(github_error(missing).0, 422);

    let long = "é".repeat(141);
    let too_long = octo
        .repos("acme", "models")
        .create_status(SHA.into(), StatusState::Success)
        .description(long)
        .send()
        .await;
    let (code, err) = github_error(too_long);
    assert_eq!(code, 422);
    assert_eq!(err.errors.unwrap()[0]["field"], "description");

    let just_fits = octo
        .repos("acme", "models")
        .create_status(SHA.into(), StatusState::Success)
        .description("é".repeat(140))
        .send()
        .await;
    assert!(
        just_fits.is_ok(),
        "140 characters are allowed: {just_fits:?}"
    );

    let unknown = octo
        .repos("acme", "models")
        .create_status("3".repeat(40), StatusState::Success)
        .send()
        .await;
    let (code, err) = github_error(unknown);
    assert_eq!(code, 422);
    assert!(
        err.message.starts_with("No commit found for SHA"),
        "{}",
        err.message
    );

    assert_eq!(gh.statuses(SHA).len(), 1, "only the valid one is held");
}

#[tokio::test]
async fn requests_without_or_with_a_wrong_token_get_401_and_are_recorded() {
    let gh = server().await;
    let anonymous = Octocrab::builder()
        .base_uri(gh.url())
        .unwrap()
        .add_retry_config(RetryConfig::None)
        .build()
        .unwrap();
    let none = anonymous
        .repos("acme", "models")
        .create_status(SHA.into(), StatusState::Success)
        .send()
        .await;
    assert_eq!(github_error(none).0, 401);
    let wrong = client(&gh, "ghp_nobody")
        .issues("acme", "models")
        .list_comments(1)
        .send()
        .await;
    let (code, err) = github_error(wrong);
    assert_eq!((code, err.message.as_str()), (401, "Bad credentials"));
    let tokens: Vec<_> = gh.requests().into_iter().map(|r| r.token).collect();
    assert_eq!(tokens, [TokenKind::Missing, TokenKind::Rejected]);
    assert!(gh.statuses(SHA).is_empty());
}

#[tokio::test]
async fn comments_are_created_listed_across_pages_and_edited_only_with_patch() {
    let gh = server().await;
    gh.open_pr(5, SHA).author("bob").open().unwrap();
    let octo = client(&gh, "ghp_alice");
    let issues = octo.issues("acme", "models");
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            issues
                .create_comment(5, format!("comment {i}"))
                .await
                .unwrap()
                .id,
        );
    }

    let first = issues.list_comments(5).per_page(2).send().await.unwrap();
    assert_eq!(first.items.len(), 2);
    assert!(first.next.is_some() && first.last.is_some());
    let mut bodies: Vec<String> = first.items.iter().filter_map(|c| c.body.clone()).collect();
    let mut next = first.next.clone();
    while let Some(url) = next {
        let page: octocrab::Page<models::issues::Comment> =
            octo.get_page(&Some(url)).await.unwrap().unwrap();
        bodies.extend(page.items.iter().filter_map(|c| c.body.clone()));
        next = page.next;
    }
    let expected: Vec<String> = (0..5).map(|i| format!("comment {i}")).collect();
    assert_eq!(bodies, expected);

    // GitHub documents PATCH for edits; octocrab's update_comment POSTs, which GitHub
    // answers with 404.
    let posted = issues.update_comment(ids[0], "via POST").await;
    assert_eq!(github_error(posted).0, 404);
    let patched: models::issues::Comment = octo
        .patch(
            format!("/repos/acme/models/issues/comments/{}", ids[0]),
            Some(&json!({"body": "edited"})),
        )
        .await
        .unwrap();
    assert_eq!(patched.body.as_deref(), Some("edited"));

    let held = gh.comments(5);
    assert_eq!(held.len(), 5);
    assert_eq!(held[0].body, "edited");
    assert_eq!(held[0].edits, 1);
    assert_eq!(held[0].author, "alice");
    assert_eq!(held[1].edits, 0);
}

#[tokio::test]
async fn comment_bodies_are_checked_and_unknown_pull_requests_are_404() {
    let gh = server().await;
    gh.open_pr(5, SHA).open().unwrap();
    let issues_client = client(&gh, "ghp_alice");
    let issues = issues_client.issues("acme", "models");
    let limit = "x".repeat(65_536);
    assert!(issues.create_comment(5, &limit).await.is_ok());
    let (code, err) = github_error(issues.create_comment(5, format!("{limit}x")).await);
    assert_eq!(code, 422);
    assert!(
        err.errors.unwrap()[0]["message"]
            .as_str()
            .unwrap()
            .contains("65536")
    );
    assert_eq!(github_error(issues.create_comment(6, "hi").await).0, 404);
    let no_body: octocrab::Result<Value> = issues_client
        .post("/repos/acme/models/issues/5/comments", Some(&json!({})))
        .await;
    assert_eq!(github_error(no_body).0, 422);
    assert_eq!(gh.comments(5).len(), 1);
}

#[tokio::test]
async fn someone_elses_comment_cannot_be_edited_or_deleted_without_admin() {
    let gh = server().await;
    gh.open_pr(5, SHA).open().unwrap();
    let human = gh
        .add_comment_as("carol", 5, "<!-- trainyard:plan --> mine")
        .unwrap();
    let route = format!("/repos/acme/models/issues/comments/{human}");
    let alice = client(&gh, "ghp_alice");
    let edit: octocrab::Result<Value> = alice.patch(&route, Some(&json!({"body": "taken"}))).await;
    assert_eq!(github_error(edit).0, 403);
    let delete = alice
        .issues("acme", "models")
        .delete_comment(human.into())
        .await;
    assert_eq!(github_error(delete).0, 403);
    assert_eq!(gh.comments(5)[0].body, "<!-- trainyard:plan --> mine");
    assert_eq!(gh.comments(5)[0].edits, 0);

    gh.set_permission("boss", Permission::Admin);
    let boss = client(&gh, "ghp_admin");
    let edit: octocrab::Result<Value> = boss
        .patch(&route, Some(&json!({"body": "moderated"})))
        .await;
    assert!(edit.is_ok(), "{edit:?}");
    boss.issues("acme", "models")
        .delete_comment(human.into())
        .await
        .unwrap();
    assert!(gh.comments(5).is_empty());
}

#[tokio::test]
async fn an_app_exchanges_its_jwt_for_an_installation_token_and_acts_as_its_bot() {
    let gh = server().await;
    gh.open_pr(9, SHA).open().unwrap();
    let octo = app_client(&gh);
    let comment = octo
        .issues("acme", "models")
        .create_comment(9, "from the app")
        .await
        .unwrap();
    assert_eq!(comment.user.login, "trainyard[bot]");
    assert_eq!(gh.comments(9)[0].author, gh.bot_login());
    assert_eq!(gh.installation_tokens_issued(), 1);

    let kinds: Vec<_> = gh
        .requests()
        .into_iter()
        .map(|r| (r.method, r.path, r.status, r.token))
        .collect();
    assert_eq!(
        kinds[0],
        (
            "POST".into(),
            format!("/app/installations/{}/access_tokens", gh.installation_id()),
            201,
            TokenKind::AppJwt
        )
    );
    assert_eq!(kinds[1].3, TokenKind::Installation(gh.installation_id()));

    let key = jsonwebtoken::EncodingKey::from_rsa_pem(TEST_APP_KEY.as_bytes()).unwrap();
    let as_app = Octocrab::builder()
        .base_uri(gh.url())
        .unwrap()
        .app(AppId(gh.app_id()), key)
        .add_retry_config(RetryConfig::None)
        .build()
        .unwrap();
    let app = as_app.current().app().await.unwrap();
    assert_eq!(app.slug.as_deref(), Some("trainyard"));
    let installation = as_app.repos("acme", "models").installation().await.unwrap();
    assert_eq!(installation.id, InstallationId(gh.installation_id()));
    // The JWT is only for the App's own endpoints, and installation tokens cannot ask /user.
    let repo_call = as_app
        .issues("acme", "models")
        .list_comments(9)
        .send()
        .await;
    assert_eq!(github_error(repo_call).0, 403);
    let who: octocrab::Result<models::Author> = octo.get("/user", None::<&()>).await;
    assert_eq!(github_error(who).0, 403);
}

#[tokio::test]
async fn a_jwt_from_the_wrong_key_or_app_is_refused() {
    let gh = server().await;
    let stranger = jsonwebtoken::EncodingKey::from_rsa_pem(TEST_APP_KEY.as_bytes()).unwrap();
    let wrong_app = Octocrab::builder()
        .base_uri(gh.url())
        .unwrap()
        .app(AppId(gh.app_id() + 1), stranger)
        .add_retry_config(RetryConfig::None)
        .build()
        .unwrap();
    assert_eq!(github_error(wrong_app.current().app().await).0, 401);
    let tampered = {
        let jwt = octocrab::auth::create_jwt(
            AppId(gh.app_id()),
            &jsonwebtoken::EncodingKey::from_rsa_pem(TEST_APP_KEY.as_bytes()).unwrap(),
        )
        .unwrap();
        let mut parts: Vec<String> = jwt.split('.').map(str::to_string).collect();
        parts[2] = parts[2].chars().rev().collect();
        parts.join(".")
    };
    let forged = Octocrab::builder()
        .base_uri(gh.url())
        .unwrap()
        .personal_token(tampered)
        .add_retry_config(RetryConfig::None)
        .build()
        .unwrap();
    assert_eq!(github_error(forged.current().app().await).0, 401);
    assert_eq!(gh.installation_tokens_issued(), 0);
}

#[tokio::test]
async fn an_expired_installation_token_gets_401_and_octocrab_mints_a_new_one() {
    let gh = server().await;
    gh.open_pr(1, SHA).open().unwrap();
    let octo = app_client(&gh);
    assert!(
        octo.issues("acme", "models")
            .create_comment(1, "ok")
            .await
            .is_ok()
    );
    gh.expire_installation_tokens();
    gh.clear_requests();
    // octocrab still believes its cached token good for an hour; the 401 makes it mint
    // another and send the request again.
    octo.issues("acme", "models")
        .create_comment(1, "after expiry")
        .await
        .unwrap();
    let seen: Vec<_> = gh
        .requests()
        .into_iter()
        .map(|r| (r.method, r.status, r.token))
        .collect();
    assert_eq!(
        seen,
        [
            ("POST".to_string(), 401, TokenKind::Rejected),
            ("POST".to_string(), 201, TokenKind::AppJwt),
            (
                "POST".to_string(),
                201,
                TokenKind::Installation(gh.installation_id())
            ),
        ]
    );
    assert_eq!(gh.installation_tokens_issued(), 2);
    let bodies: Vec<_> = gh.comments(1).into_iter().map(|c| c.body).collect();
    assert_eq!(bodies, ["ok", "after expiry"]);
}

#[tokio::test]
async fn a_short_lived_installation_token_is_replaced_by_octocrab_before_each_call() {
    init();
    let gh = GithubServer::builder()
        .installation_token_ttl(Duration::from_secs(5))
        .start()
        .await
        .unwrap();
    gh.open_pr(1, SHA).open().unwrap();
    let octo = app_client(&gh);
    for body in ["a", "b"] {
        octo.issues("acme", "models")
            .create_comment(1, body)
            .await
            .unwrap();
    }
    // Tokens closer than 30 s to expiry are not reused by octocrab.
    assert_eq!(gh.installation_tokens_issued(), 2);
}

#[tokio::test]
async fn writes_past_the_secondary_limit_get_403_with_retry_after() {
    init();
    let gh = GithubServer::builder()
        .token("ghp_alice", "alice")
        .secondary_limit(3, Duration::from_secs(60))
        .start()
        .await
        .unwrap();
    gh.add_commit(SHA);
    let octo = client(&gh, "ghp_alice");
    let repos = octo.repos("acme", "models");
    for _ in 0..3 {
        repos
            .create_status(SHA.into(), StatusState::Success)
            .send()
            .await
            .unwrap();
    }
    let (code, err) = github_error(
        repos
            .create_status(SHA.into(), StatusState::Success)
            .send()
            .await,
    );
    assert_eq!(code, 403);
    assert!(err.message.contains("secondary rate limit"));
    let retry_after = retry_after(&err);
    assert!((1..=60).contains(&retry_after));
    // Reads are not content creation.
    assert!(repos.list_statuses(SHA.into()).send().await.is_ok());
    assert_eq!(gh.statuses(SHA).len(), 3);
}

#[tokio::test]
async fn the_hourly_content_limit_holds_across_minutes_and_may_answer_429() {
    init();
    let gh = GithubServer::builder()
        .token("ghp_alice", "alice")
        .secondary_limit(100, Duration::from_secs(1))
        .hourly_write_limit(4)
        .secondary_limit_answers_429()
        .start()
        .await
        .unwrap();
    gh.add_commit(SHA);
    let octo = client(&gh, "ghp_alice");
    let repos = octo.repos("acme", "models");
    for _ in 0..2 {
        repos
            .create_status(SHA.into(), StatusState::Success)
            .send()
            .await
            .unwrap();
    }
    // Past the per-"minute" window, the hour still remembers them.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..2 {
        repos
            .create_status(SHA.into(), StatusState::Success)
            .send()
            .await
            .unwrap();
    }
    let (code, err) = github_error(
        repos
            .create_status(SHA.into(), StatusState::Success)
            .send()
            .await,
    );
    assert_eq!(code, 429);
    assert!(err.message.contains("secondary rate limit"));
    let retry_after = retry_after(&err);
    assert!((3590..=3600).contains(&retry_after), "{retry_after}");
    assert_eq!(gh.statuses(SHA).len(), 4);
}

#[tokio::test]
async fn a_stalled_answer_arrives_late_as_a_bad_gateway() {
    let gh = server().await;
    gh.fail_next(1, FaultKind::Stall { seconds: 1 });
    let octo = client(&gh, "ghp_alice");
    let started = std::time::Instant::now();
    let (code, _) = github_error(
        octo.repos("acme", "models")
            .create_status(SHA.into(), StatusState::Success)
            .send()
            .await,
    );
    assert_eq!(code, 502);
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(gh.requests().len(), 1, "recorded once");
}

#[tokio::test]
async fn injected_faults_answer_in_place_of_matching_requests_then_stop() {
    let gh = server().await;
    gh.open_pr(5, SHA).open().unwrap();
    let octo = client(&gh, "ghp_alice");
    gh.fail_next_matching(Fault {
        remaining: 1,
        kind: FaultKind::ServerError(502),
        writes_only: true,
        path_prefix: Some("/repos/acme/models/statuses".into()),
    });
    gh.fail_next(1, FaultKind::PrimaryRateLimit { reset_in: 30 });
    // The primary-limit fault matches the first request (a read); the 502 waits for a status write.
    let (code, err) = github_error(octo.issues("acme", "models").list_comments(5).send().await);
    assert_eq!(code, 403);
    let headers = err.headers.unwrap();
    assert_eq!(headers["x-ratelimit-remaining"], "0");
    assert!(err.rate_limit_reset.is_some());
    assert!(
        octo.issues("acme", "models")
            .create_comment(5, "fine")
            .await
            .is_ok()
    );
    let failed = octo
        .repos("acme", "models")
        .create_status(SHA.into(), StatusState::Success)
        .send()
        .await;
    assert!(failed.is_err());
    assert!(
        octo.repos("acme", "models")
            .create_status(SHA.into(), StatusState::Success)
            .send()
            .await
            .is_ok()
    );
    gh.fail_next(1, FaultKind::NotFound);
    let (code, _) = github_error(octo.pulls("acme", "models").get(5).await);
    assert_eq!(code, 404);
    let statuses: Vec<u16> = gh.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [403, 201, 502, 201, 404]);
    assert_eq!(gh.statuses(SHA).len(), 1);
}

#[tokio::test]
async fn every_answer_carries_rate_limit_headers_that_count_down() {
    init();
    let gh = GithubServer::builder()
        .token("ghp_alice", "alice")
        .rate_limit(2)
        .start()
        .await
        .unwrap();
    gh.add_commit(SHA);
    let octo = client(&gh, "ghp_alice");
    let first = octo
        ._get(format!(
            "{}/repos/acme/models/commits/{SHA}/statuses",
            gh.url()
        ))
        .await
        .unwrap();
    assert_eq!(first.headers()["x-ratelimit-limit"], "2");
    assert_eq!(first.headers()["x-ratelimit-remaining"], "1");
    assert_eq!(first.headers()["x-ratelimit-used"], "1");
    assert!(first.headers().contains_key("x-ratelimit-reset"));
    octo.repos("acme", "models")
        .list_statuses(SHA.into())
        .send()
        .await
        .unwrap();
    let (code, err) = github_error(
        octo.repos("acme", "models")
            .list_statuses(SHA.into())
            .send()
            .await,
    );
    assert_eq!(code, 403);
    assert!(err.message.starts_with("API rate limit exceeded"));
    assert_eq!(err.headers.unwrap()["x-ratelimit-remaining"], "0");
}

#[tokio::test]
async fn the_pulls_of_a_commit_are_found_by_head_and_by_merge_commit() {
    let gh = server().await;
    gh.open_pr(7, SHA)
        .head_ref("tune-lr")
        .author("bob")
        .from_fork()
        .open()
        .unwrap();
    let octo = client(&gh, "ghp_alice");
    let repos = octo.repos("acme", "models");
    let by_head = repos.list_pulls(SHA.into()).send().await.unwrap();
    assert_eq!(by_head.items.len(), 1);
    let pr = &by_head.items[0];
    assert_eq!(pr.number, 7);
    assert_eq!(pr.head.ref_field, "tune-lr");
    let head_repo = pr.head.repo.as_ref().unwrap();
    assert_eq!(head_repo.full_name.as_deref(), Some("bob/models"));
    assert_eq!(head_repo.fork, Some(true));

    let (code, _) = github_error(repos.list_pulls(MERGE.into()).send().await);
    assert_eq!(code, 422, "the merge commit does not exist yet");
    gh.merge_pr(7, MERGE).unwrap();
    let by_merge = repos.list_pulls(MERGE.into()).send().await.unwrap();
    assert_eq!(by_merge.items.len(), 1);
    assert_eq!(by_merge.items[0].merge_commit_sha.as_deref(), Some(MERGE));
    assert!(by_merge.items[0].merged_at.is_some());
    let got = octo.pulls("acme", "models").get(7).await.unwrap();
    assert_eq!(got.state, Some(models::IssueState::Closed));
    let (code, _) = github_error(octo.pulls("acme", "models").get(8).await);
    assert_eq!(code, 404);
}

#[tokio::test]
async fn collaborator_permission_answers_with_githubs_legacy_and_role_names() {
    let gh = server().await;
    gh.set_permission("mia", Permission::Maintain);
    gh.set_permission("rex", Permission::Read);
    let octo = client(&gh, "ghp_alice");
    let get = |user: &'static str| {
        let octo = octo.clone();
        async move {
            let v: Value = octo
                .get(
                    format!("/repos/acme/models/collaborators/{user}/permission"),
                    None::<&()>,
                )
                .await
                .unwrap();
            (
                v["permission"].as_str().unwrap_or("").to_string(),
                v["role_name"].as_str().unwrap_or("").to_string(),
                v["user"]["login"].as_str().unwrap_or("").to_string(),
            )
        }
    };
    assert_eq!(
        get("mia").await,
        ("write".into(), "maintain".into(), "mia".into())
    );
    assert_eq!(
        get("rex").await,
        ("read".into(), "read".into(), "rex".into())
    );
    // A stranger on a public repository can read it.
    assert_eq!(get("zed").await.0, "read");
}

#[tokio::test]
async fn a_signed_webhook_arrives_with_githubs_headers_and_a_verifiable_signature() {
    init();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let tx = tx.clone();
                async move {
                    let h = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string()
                    };
                    let _ = tx.send((
                        h("x-github-event"),
                        h("x-github-delivery"),
                        h("x-hub-signature-256"),
                        body.to_vec(),
                    ));
                    (axum::http::StatusCode::ACCEPTED, "queued")
                }
            },
        ),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let payload = github::push_payload("acme/models", "main", &"0".repeat(40), SHA);
    let body = serde_json::to_vec(&payload).unwrap();
    let url = format!("http://{addr}/hook");
    let (status, text) = github::send_webhook(&url, b"s3cret", "push", "d-1", &body)
        .await
        .unwrap();
    assert_eq!((status, text.as_str()), (202, "queued"));
    let (event, delivery, signature, received) = rx.recv().await.unwrap();
    assert_eq!((event.as_str(), delivery.as_str()), ("push", "d-1"));
    assert_eq!(signature, github::sign(b"s3cret", &received));
    assert_ne!(signature, github::sign(b"other", &received));
    let parsed: Value = serde_json::from_slice(&received).unwrap();
    assert_eq!(parsed["ref"], "refs/heads/main");
    assert_eq!(parsed["after"], SHA);
    assert_eq!(parsed["repository"]["full_name"], "acme/models");
    // The payloads name the installation a default stand-in serves.
    let gh = GithubServer::start().await.unwrap();
    assert_eq!(parsed["installation"]["id"], gh.installation_id());

    github::send_webhook_signed(&url, None, "ping", "d-2", b"{}")
        .await
        .unwrap();
    let (_, _, signature, _) = rx.recv().await.unwrap();
    assert_eq!(
        signature, "",
        "an unsigned delivery carries no signature header"
    );
}
