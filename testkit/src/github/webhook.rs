//! Webhook deliveries as GitHub sends them: signed with `X-Hub-Signature-256`, with the
//! payload fields GitHub includes for `push`, `pull_request`, `issue_comment` and
//! `check_run` (`requested_action`).

use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

/// Failures sending a webhook.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The HTTP client could not be built.
    #[error("cannot build an HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// The request did not get an answer.
    #[error("webhook delivery to {url} failed: {source}")]
    Send {
        /// The receiver.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
}

/// `sha256=<hex HMAC-SHA256 of body keyed by secret>`, the `X-Hub-Signature-256` value.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(7 + digest.len() * 2);
    hex.push_str("sha256=");
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// POSTs `body` to `url` as GitHub delivers event `event` with delivery id `delivery`,
/// signed with `secret`; returns the answer's status and body.
pub async fn send_webhook(
    url: &str,
    secret: &[u8],
    event: &str,
    delivery: &str,
    body: &[u8],
) -> Result<(u16, String), WebhookError> {
    let signature = sign(secret, body);
    send_webhook_signed(url, Some(&signature), event, delivery, body).await
}

/// Like [`send_webhook`] with the `X-Hub-Signature-256` value given (or left out), for
/// deliveries a receiver must refuse.
pub async fn send_webhook_signed(
    url: &str,
    signature: Option<&str>,
    event: &str,
    delivery: &str,
    body: &[u8],
) -> Result<(u16, String), WebhookError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .build()
        .map_err(WebhookError::Client)?;
    let mut request = client
        .post(url)
        .header("content-type", "application/json")
        .header("user-agent", "GitHub-Hookshot/standin")
        .header("x-github-event", event)
        .header("x-github-delivery", delivery)
        .header("x-github-hook-id", "123456")
        .header("x-github-hook-installation-target-type", "repository")
        .body(body.to_vec());
    if let Some(signature) = signature {
        request = request.header("x-hub-signature-256", signature);
    }
    let send = |source| WebhookError::Send {
        url: url.to_string(),
        source,
    };
    let response = request.send().await.map_err(send)?;
    let status = response.status().as_u16();
    let text = response.text().await.map_err(send)?;
    Ok((status, text))
}

fn split(repo: &str) -> (&str, &str) {
    repo.split_once('/').unwrap_or(("acme", repo))
}

fn user(login: &str) -> Value {
    json!({
        "login": login,
        "id": super::json::user_id(login),
        "node_id": format!("U_kgDO{:08}", super::json::user_id(login)),
        "type": if login.ends_with("[bot]") { "Bot" } else { "User" },
        "site_admin": false,
        "html_url": format!("https://github.com/{login}"),
        "url": format!("https://api.github.com/users/{login}")
    })
}

fn repository(repo: &str) -> Value {
    let (owner, name) = split(repo);
    json!({
        "id": super::json::user_id(repo),
        "node_id": format!("R_kgDO{:08}", super::json::user_id(repo)),
        "name": name,
        "full_name": repo,
        "private": false,
        "owner": user(owner),
        "html_url": format!("https://github.com/{repo}"),
        "url": format!("https://api.github.com/repos/{repo}"),
        "clone_url": format!("https://github.com/{repo}.git"),
        "default_branch": "main",
        "fork": false
    })
}

fn installation() -> Value {
    json!({"id": super::GithubServerBuilder::default().installation_id,
           "node_id": "MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9uNzc3"})
}

/// A `push` payload for `branch` moving from `before` to `after` in `repo` (`owner/name`);
/// `installation.id` is the stand-in's default installation.
pub fn push_payload(repo: &str, branch: &str, before: &str, after: &str) -> Value {
    let (owner, _) = split(repo);
    let deleted = after.chars().all(|c| c == '0');
    json!({
        "ref": format!("refs/heads/{branch}"),
        "before": before,
        "after": after,
        "created": before.chars().all(|c| c == '0'),
        "deleted": deleted,
        "forced": false,
        "base_ref": null,
        "compare": format!("https://github.com/{repo}/compare/{}...{}", &before[..before.len().min(12)], &after[..after.len().min(12)]),
        "commits": if deleted { json!([]) } else { json!([{
            "id": after, "tree_id": after, "distinct": true, "message": "Change",
            "timestamp": "2025-01-01T00:00:00Z",
            "url": format!("https://github.com/{repo}/commit/{after}"),
            "author": {"name": owner, "email": format!("{owner}@example.com"), "username": owner},
            "committer": {"name": owner, "email": format!("{owner}@example.com"), "username": owner},
            "added": [], "removed": [], "modified": []
        }]) },
        "head_commit": if deleted { Value::Null } else { json!({"id": after, "message": "Change",
            "timestamp": "2025-01-01T00:00:00Z", "url": format!("https://github.com/{repo}/commit/{after}")}) },
        "repository": repository(repo),
        "pusher": {"name": owner, "email": format!("{owner}@example.com")},
        "sender": user(owner),
        "installation": installation()
    })
}

/// A `pull_request` payload: `action` is `opened`, `synchronize`, `reopened`, `closed`
/// (with `merged`), ...; a fork's head lives in `<author>/<name>`.
#[allow(clippy::too_many_arguments)]
pub fn pull_request_payload(
    repo: &str,
    action: &str,
    number: u64,
    head_sha: &str,
    head_ref: &str,
    base_ref: &str,
    fork: bool,
    author: &str,
    merged: bool,
) -> Value {
    let (owner, name) = split(repo);
    let head_repo = if fork {
        let mut r = repository(&format!("{author}/{name}"));
        r["fork"] = json!(true);
        r
    } else {
        repository(repo)
    };
    let closed = action == "closed";
    let head_owner = if fork { author } else { owner };
    json!({
        "action": action,
        "number": number,
        "pull_request": {
            "url": format!("https://api.github.com/repos/{repo}/pulls/{number}"),
            "id": super::json::user_id(&format!("{repo}#{number}")),
            "node_id": format!("PR_kwDO{number:08}"),
            "html_url": format!("https://github.com/{repo}/pull/{number}"),
            "number": number,
            "state": if closed { "closed" } else { "open" },
            "locked": false,
            "title": format!("Change #{number}"),
            "user": user(author),
            "body": null,
            "created_at": "2025-01-01T00:00:00Z",
            "updated_at": "2025-01-01T00:00:00Z",
            "closed_at": if closed { json!("2025-01-02T00:00:00Z") } else { Value::Null },
            "merged_at": if closed && merged { json!("2025-01-02T00:00:00Z") } else { Value::Null },
            "merge_commit_sha": null,
            "draft": false,
            "merged": closed && merged,
            "head": {"label": format!("{head_owner}:{head_ref}"), "ref": head_ref, "sha": head_sha,
                     "user": user(head_owner), "repo": head_repo},
            "base": {"label": format!("{owner}:{base_ref}"), "ref": base_ref,
                     "sha": "0000000000000000000000000000000000000000",
                     "user": user(owner), "repo": repository(repo)},
            "author_association": if fork { "CONTRIBUTOR" } else { "MEMBER" }
        },
        "repository": repository(repo),
        "sender": user(author),
        "installation": installation()
    })
}

/// An `issue_comment` `created` payload for a comment on pull request `pr`.
pub fn issue_comment_payload(
    repo: &str,
    pr: u64,
    comment_id: u64,
    author: &str,
    body: &str,
) -> Value {
    json!({
        "action": "created",
        "issue": {
            "url": format!("https://api.github.com/repos/{repo}/issues/{pr}"),
            "id": super::json::user_id(&format!("{repo}#{pr}")),
            "node_id": format!("PR_kwDO{pr:08}"),
            "number": pr,
            "title": format!("Change #{pr}"),
            "user": user(author),
            "state": "open",
            "locked": false,
            "comments": 1,
            "pull_request": {
                "url": format!("https://api.github.com/repos/{repo}/pulls/{pr}"),
                "html_url": format!("https://github.com/{repo}/pull/{pr}")
            },
            "created_at": "2025-01-01T00:00:00Z",
            "updated_at": "2025-01-01T00:00:00Z"
        },
        "comment": {
            "id": comment_id,
            "node_id": format!("IC_kwDO{comment_id:08}"),
            "url": format!("https://api.github.com/repos/{repo}/issues/comments/{comment_id}"),
            "html_url": format!("https://github.com/{repo}/pull/{pr}#issuecomment-{comment_id}"),
            "body": body,
            "user": user(author),
            "created_at": "2025-01-01T00:00:00Z",
            "updated_at": "2025-01-01T00:00:00Z",
            "author_association": "CONTRIBUTOR"
        },
        "repository": repository(repo),
        "sender": user(author),
        "installation": installation()
    })
}

/// A `check_run` `requested_action` payload: `sender` pressed the button `identifier` of
/// check run `id` (`name` on `head_sha`), whose commit heads the pull requests `pulls`
/// (number, head sha, base sha). As on GitHub, `pull_requests` lists only those in the
/// repository itself, never a fork's.
pub fn check_run_requested_action_payload(
    repo: &str,
    id: u64,
    name: &str,
    head_sha: &str,
    pulls: &[(u64, String, String)],
    identifier: &str,
    sender: &str,
) -> Value {
    let (owner, _) = split(repo);
    let minimal_repo = json!({
        "id": super::json::user_id(repo),
        "url": format!("https://api.github.com/repos/{repo}"),
        "name": split(repo).1
    });
    let pull_requests: Vec<Value> = pulls
        .iter()
        .map(|(number, head, base)| {
            json!({
                "url": format!("https://api.github.com/repos/{repo}/pulls/{number}"),
                "id": super::json::user_id(&format!("{repo}#{number}")),
                "number": number,
                "head": {"ref": format!("feature-{number}"), "sha": head, "repo": minimal_repo},
                "base": {"ref": "main", "sha": base, "repo": minimal_repo}
            })
        })
        .collect();
    let suite = super::json::user_id(&format!("{head_sha}@suite"));
    json!({
        "action": "requested_action",
        "check_run": {
            "id": id,
            "node_id": format!("CR_kwDO{id:08}"),
            "name": name,
            "head_sha": head_sha,
            "external_id": "",
            "url": format!("https://api.github.com/repos/{repo}/check-runs/{id}"),
            "html_url": format!("https://github.com/{repo}/runs/{id}"),
            "details_url": format!("https://github.com/{repo}/runs/{id}"),
            "status": "completed",
            "conclusion": "success",
            "started_at": "2025-01-01T00:00:00Z",
            "completed_at": "2025-01-01T00:00:00Z",
            "output": {"title": name, "summary": "", "text": null, "annotations_count": 0,
                       "annotations_url": format!("https://api.github.com/repos/{repo}/check-runs/{id}/annotations")},
            "check_suite": {"id": suite, "head_sha": head_sha, "status": "completed",
                            "conclusion": "success", "pull_requests": pull_requests.clone()},
            "app": {"id": super::GithubServerBuilder::default().app_id, "slug": "trainyard",
                    "owner": user(owner), "name": "trainyard"},
            "pull_requests": pull_requests
        },
        "requested_action": {"identifier": identifier},
        "repository": repository(repo),
        "sender": user(sender),
        "installation": installation()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_matches_githubs_documented_example() {
        // From GitHub's "Validating webhook deliveries" page.
        assert_eq!(
            sign(b"It's a Secret to Everybody", b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[test]
    fn a_fork_pull_request_names_the_authors_repository_as_head() {
        let p = pull_request_payload(
            "acme/models",
            "opened",
            3,
            "abc",
            "fix",
            "main",
            true,
            "mallory",
            false,
        );
        assert_eq!(
            p["pull_request"]["head"]["repo"]["full_name"],
            "mallory/models"
        );
        assert_eq!(p["pull_request"]["head"]["repo"]["fork"], true);
        assert_eq!(p["repository"]["full_name"], "acme/models");
        assert_eq!(p["sender"]["login"], "mallory");
    }

    #[test]
    fn a_requested_action_names_the_button_the_run_and_its_pull_requests() {
        let p = check_run_requested_action_payload(
            "acme/models",
            42,
            "trainyard/plan",
            "abc",
            &[(7, "abc".to_owned(), "def".to_owned())],
            "preview",
            "bob",
        );
        assert_eq!(p["action"], "requested_action");
        assert_eq!(p["requested_action"]["identifier"], "preview");
        assert_eq!(p["check_run"]["id"], 42);
        assert_eq!(p["check_run"]["name"], "trainyard/plan");
        assert_eq!(p["check_run"]["pull_requests"][0]["number"], 7);
        assert_eq!(p["check_run"]["pull_requests"][0]["base"]["sha"], "def");
        assert_eq!(p["sender"]["login"], "bob");
        assert_eq!(p["repository"]["full_name"], "acme/models");
    }

    #[test]
    fn a_merged_close_says_merged_and_an_unmerged_one_does_not() {
        let args = |merged| {
            pull_request_payload(
                "acme/models",
                "closed",
                3,
                "abc",
                "fix",
                "main",
                false,
                "bob",
                merged,
            )
        };
        assert_eq!(args(true)["pull_request"]["merged"], true);
        assert_eq!(args(false)["pull_request"]["merged"], false);
        assert_eq!(args(false)["pull_request"]["state"], "closed");
    }
}
