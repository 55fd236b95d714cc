//! The stand-in GitHub's check runs, driven by the real octocrab client: only Apps write
//! them, annotations sent on an update are appended, GitHub's limits are refused with 422,
//! and check-run writes count against the content-creation limits.

use std::time::Duration;

use octocrab::Octocrab;
use octocrab::models::{AppId, InstallationId};
use octocrab::service::middleware::retry::RetryConfig;
use serde_json::{Value, json};
use trainyard_testkit::github::{GithubServer, TEST_APP_KEY};

const SHA: &str = "1111111111111111111111111111111111111111";
const RUNS: &str = "/repos/acme/models/check-runs";

fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

async fn server_with(builder: trainyard_testkit::github::GithubServerBuilder) -> GithubServer {
    init();
    let gh = builder.token("ghp_alice", "alice").start().await.unwrap();
    gh.add_commit(SHA);
    gh
}

async fn server() -> GithubServer {
    server_with(GithubServer::builder()).await
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

/// Sends one request and answers its status, headers and JSON body.
async fn call(
    octo: &Octocrab,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, axum::http::HeaderMap, Value) {
    let response = match method {
        "POST" => octo._post(path, body).await,
        "PATCH" => octo._patch(path, body).await,
        _ => octo._get(path).await,
    }
    .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = octo.body_to_string(response).await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, headers, json)
}

fn annotations(n: usize, from: usize) -> Vec<Value> {
    (from..from + n)
        .map(|i| {
            json!({"path": "pipelines/churn.yaml", "start_line": i + 1, "end_line": i + 1,
                   "annotation_level": "failure", "message": format!("problem {i}")})
        })
        .collect()
}

fn run_body(name: &str, annotations: Vec<Value>) -> Value {
    json!({
        "name": name, "head_sha": SHA, "status": "completed", "conclusion": "failure",
        "output": {"title": "1 error", "summary": "## Validation", "annotations": annotations}
    })
}

#[tokio::test]
async fn an_app_creates_a_check_run_and_updates_append_its_annotations() {
    let gh = server().await;
    gh.open_pr(7, SHA).open().unwrap();
    let app = app_client(&gh);
    let mut body = run_body("trainyard/validate", annotations(50, 0));
    body["status"] = json!("in_progress");
    body.as_object_mut().unwrap().remove("conclusion");
    body["external_id"] = json!("fingerprint");
    body["actions"] = json!([{"label": "Preview run", "description": "Run the changed pipelines",
                              "identifier": "preview"}]);
    let (status, headers, created) = call(&app, "POST", RUNS, Some(&body)).await;
    assert_eq!(status, 201, "{created}");
    assert!(headers.contains_key("location"));
    let id = created["id"].as_u64().unwrap();
    assert_eq!(created["status"], "in_progress");
    assert_eq!(created["conclusion"], Value::Null);
    assert_eq!(created["output"]["annotations_count"], 50);
    assert_eq!(created["app"]["slug"], "trainyard");
    assert_eq!(created["external_id"], "fingerprint");
    assert_eq!(created["pull_requests"][0]["number"], 7);
    assert!(
        created["html_url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/runs/{id}"))
    );

    let more = json!({"conclusion": "failure",
                      "output": {"title": "80 errors", "summary": "## Validation",
                                 "annotations": annotations(30, 50)}});
    let (status, _, updated) = call(&app, "PATCH", &format!("{RUNS}/{id}"), Some(&more)).await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["status"], "completed", "a conclusion completes it");
    assert_eq!(updated["conclusion"], "failure");
    assert_eq!(updated["output"]["annotations_count"], 80);
    assert_eq!(updated["output"]["title"], "80 errors");

    let held = gh.check_runs(SHA);
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].annotations.len(), 80);
    assert_eq!(held[0].annotations[79].message, "problem 79");
    assert_eq!(held[0].actions[0].identifier, "preview");
    assert_eq!(held[0].updates, 1);

    let path = format!("{RUNS}/{id}/annotations?per_page=100");
    let (status, _, listed) = call(&app, "GET", &path, None).await;
    assert_eq!(status, 200);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 80);
    assert_eq!(listed[0]["path"], "pipelines/churn.yaml");
    assert_eq!(listed[0]["start_line"], 1);
    assert_eq!(listed[0]["annotation_level"], "failure");
}

#[tokio::test]
async fn a_personal_token_may_read_check_runs_but_not_write_them() {
    let gh = server().await;
    let pat = client(&gh, "ghp_alice");
    let (status, _, err) = call(&pat, "POST", RUNS, Some(&run_body("x", Vec::new()))).await;
    assert_eq!(status, 403);
    assert_eq!(
        err["message"],
        "Resource not accessible by personal access token"
    );
    assert!(gh.check_runs(SHA).is_empty());

    let app = app_client(&gh);
    let (_, _, created) = call(&app, "POST", RUNS, Some(&run_body("x", Vec::new()))).await;
    let id = created["id"].as_u64().unwrap();
    let patch = json!({"conclusion": "success"});
    let (status, _, _) = call(&pat, "PATCH", &format!("{RUNS}/{id}"), Some(&patch)).await;
    assert_eq!(status, 403);
    let (status, _, listed) = call(
        &pat,
        "GET",
        &format!("/repos/acme/models/commits/{SHA}/check-runs"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(listed["total_count"], 1);
}

#[tokio::test]
async fn requests_past_githubs_limits_are_refused_with_422_and_change_nothing() {
    let gh = server().await;
    let app = app_client(&gh);
    let mut refused = Vec::new();
    let mut over_annotations = run_body("v", annotations(51, 0));
    refused.push(("51 annotations", over_annotations.clone()));
    over_annotations["output"]["annotations"] = json!([]);
    over_annotations["output"]["summary"] = json!("é".repeat(65_536));
    refused.push(("a long summary", over_annotations.clone()));
    over_annotations["output"]["summary"] = json!("ok");
    over_annotations["output"]["text"] = json!("x".repeat(65_536));
    refused.push(("a long text", over_annotations));
    let mut four = run_body("v", Vec::new());
    four["actions"] = json!(
        (0..4)
            .map(|i| json!({"label": "l", "description": "d", "identifier": format!("a{i}")}))
            .collect::<Vec<_>>()
    );
    refused.push(("4 actions", four.clone()));
    four["actions"] = json!([{"label": "x".repeat(21), "description": "d", "identifier": "a"}]);
    refused.push(("a long label", four.clone()));
    four["actions"] = json!([{"label": "l", "description": "x".repeat(41), "identifier": "a"}]);
    refused.push(("a long description", four.clone()));
    four["actions"] = json!([{"label": "l", "description": "d", "identifier": "x".repeat(21)}]);
    refused.push(("a long identifier", four));
    let mut columns = run_body("v", Vec::new());
    columns["output"]["annotations"] = json!([{"path": "a.yaml", "start_line": 1, "end_line": 2,
        "start_column": 3, "end_column": 4, "annotation_level": "warning", "message": "m"}]);
    refused.push(("columns over two lines", columns.clone()));
    columns["output"]["annotations"] = json!([{"path": "a.yaml", "start_line": 1,
        "annotation_level": "warning", "message": "m"}]);
    refused.push(("no end_line", columns.clone()));
    columns["output"]["annotations"] = json!([{"path": "a.yaml", "start_line": 1, "end_line": 1,
        "annotation_level": "error", "message": "m"}]);
    refused.push(("an unknown level", columns));
    let mut plain = run_body("v", Vec::new());
    plain.as_object_mut().unwrap().remove("conclusion");
    refused.push(("completed without a conclusion", plain.clone()));
    plain["conclusion"] = json!("great");
    refused.push(("an unknown conclusion", plain.clone()));
    plain["conclusion"] = json!("success");
    plain["output"].as_object_mut().unwrap().remove("title");
    refused.push(("an output without a title", plain.clone()));
    plain.as_object_mut().unwrap().remove("output");
    plain.as_object_mut().unwrap().remove("name");
    refused.push(("no name", plain.clone()));
    plain["name"] = json!("v");
    plain["head_sha"] = json!("0".repeat(40));
    refused.push(("an unknown commit", plain));
    for (what, body) in refused {
        let (status, _, err) = call(&app, "POST", RUNS, Some(&body)).await;
        assert_eq!(status, 422, "{what}: {err}");
        let message = err["message"].as_str().unwrap_or_default();
        assert!(
            message == "Validation Failed"
                || message.starts_with("Invalid request.")
                || message.starts_with("No commit found"),
            "{what}: {err}"
        );
        assert!(err["documentation_url"].is_string(), "{what}: {err}");
        if message == "Validation Failed" {
            assert!(err["errors"].is_array(), "{what}: {err}");
        }
    }
    assert!(gh.check_runs(SHA).is_empty());

    // The limits themselves pass.
    let mut at_limits = run_body("v", annotations(50, 0));
    at_limits["output"]["summary"] = json!("é".repeat(65_535));
    at_limits["output"]["annotations"][0]["start_column"] = json!(2);
    at_limits["output"]["annotations"][0]["end_column"] = json!(5);
    at_limits["actions"] = json!((0..3).map(|i| json!({"label": "x".repeat(20), "description": "y".repeat(40), "identifier": format!("{i}").repeat(20)})).collect::<Vec<_>>());
    let (status, _, created) = call(&app, "POST", RUNS, Some(&at_limits)).await;
    assert_eq!(status, 201, "{created}");
    // An update is held to the same limits, and a refused one appends nothing.
    let id = created["id"].as_u64().unwrap();
    let over = json!({"output": {"title": "t", "summary": "s", "annotations": annotations(51, 0)}});
    let (status, _, _) = call(&app, "PATCH", &format!("{RUNS}/{id}"), Some(&over)).await;
    assert_eq!(status, 422);
    assert_eq!(gh.check_runs(SHA)[0].annotations.len(), 50);
    let (status, _, _) = call(&app, "PATCH", &format!("{RUNS}/999"), Some(&json!({}))).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn listing_by_ref_keeps_the_latest_of_each_name_unless_all_are_asked_for() {
    let gh = server().await;
    gh.set_branch("main", SHA);
    let app = app_client(&gh);
    for name in ["trainyard/validate", "trainyard/plan", "trainyard/validate"] {
        let (status, _, _) = call(&app, "POST", RUNS, Some(&run_body(name, Vec::new()))).await;
        assert_eq!(status, 201);
    }
    let list = |query: &str| format!("/repos/acme/models/commits/{SHA}/check-runs{query}");
    let (_, _, latest) = call(&app, "GET", &list(""), None).await;
    assert_eq!(latest["total_count"], 2);
    let (_, _, named) = call(&app, "GET", &list("?check_name=trainyard%2Fvalidate"), None).await;
    assert_eq!(named["total_count"], 1);
    let newest = gh.check_runs(SHA)[2].id;
    assert_eq!(named["check_runs"][0]["id"], newest);
    let (_, _, all) = call(
        &app,
        "GET",
        &list("?check_name=trainyard/validate&filter=all"),
        None,
    )
    .await;
    assert_eq!(all["total_count"], 2);
    let app_id = gh.app_id();
    let (_, _, other_app) =
        call(&app, "GET", &list(&format!("?app_id={}", app_id + 1)), None).await;
    assert_eq!(other_app["total_count"], 0);
    let (_, _, by_branch) = call(
        &app,
        "GET",
        "/repos/acme/models/commits/main/check-runs?per_page=1",
        None,
    )
    .await;
    assert_eq!(by_branch["total_count"], 2);
    assert_eq!(by_branch["check_runs"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn check_run_writes_count_against_the_secondary_limit() {
    let gh = server_with(GithubServer::builder().secondary_limit(2, Duration::from_secs(60))).await;
    let app = app_client(&gh);
    for _ in 0..2 {
        let (status, _, _) = call(&app, "POST", RUNS, Some(&run_body("v", Vec::new()))).await;
        assert_eq!(status, 201);
    }
    let (status, headers, err) = call(&app, "POST", RUNS, Some(&run_body("v", Vec::new()))).await;
    assert_eq!(status, 403);
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("secondary rate limit")
    );
    assert!(headers.contains_key("retry-after"));
    assert_eq!(gh.check_runs(SHA).len(), 2);
}

#[tokio::test]
async fn a_requested_action_event_describes_the_run_and_its_pull_request() {
    let gh = server().await;
    gh.open_pr(7, SHA).open().unwrap();
    let app = app_client(&gh);
    let (_, _, created) = call(
        &app,
        "POST",
        RUNS,
        Some(&run_body("trainyard/plan", Vec::new())),
    )
    .await;
    let id = created["id"].as_u64().unwrap();
    let event = gh
        .check_run_requested_action_event(id, "preview", "bob")
        .unwrap();
    assert_eq!(event["action"], "requested_action");
    assert_eq!(event["requested_action"]["identifier"], "preview");
    assert_eq!(event["check_run"]["name"], "trainyard/plan");
    assert_eq!(event["check_run"]["head_sha"], SHA);
    assert_eq!(event["check_run"]["conclusion"], "failure");
    assert_eq!(event["check_run"]["pull_requests"][0]["number"], 7);
    assert_eq!(event["check_run"]["pull_requests"][0]["head"]["sha"], SHA);
    assert_eq!(event["sender"]["login"], "bob");
    assert!(
        gh.check_run_requested_action_event(id + 100, "preview", "bob")
            .is_none()
    );
}
