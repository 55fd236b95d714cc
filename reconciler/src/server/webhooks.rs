//! GitHub webhooks: checking a delivery's signature and reading the few events Trainyard
//! acts on (pushes, pull requests, comments on pull requests, buttons pressed on check
//! runs) into [`ForgeEvent`]s, which
//! the store queues for the service's loop. A GitHub App receives the events of every
//! repository it is installed on: only those of the followed repository are queued; the
//! others are recorded as refused and never acted on.

use hmac::{Hmac, KeyInit as _, Mac as _};
use serde_json::Value;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};

use super::AppState;
use crate::report::{ForgeEvent, PrAction};
use crate::store::StoreError;
use sha2::Sha256;
use thiserror::Error;

/// Prefix of the `X-Hub-Signature-256` header's value.
const SIGNATURE_PREFIX: &str = "sha256=";
/// Bytes of an HMAC-SHA256.
const SIGNATURE_BYTES: usize = 32;

/// Errors of checking and reading a webhook delivery.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WebhookError {
    /// The delivery carries no `X-Hub-Signature-256` header.
    #[error("the delivery is not signed (no X-Hub-Signature-256 header)")]
    MissingSignature,
    /// The signature header is not `sha256=` followed by 64 hex digits.
    #[error("the X-Hub-Signature-256 header is not sha256= and 64 hex digits")]
    MalformedSignature,
    /// The signature does not match the body under the configured secret.
    #[error("the signature does not match the body (wrong secret, or the body was changed)")]
    SignatureMismatch,
    /// The body of an event Trainyard reads is not the JSON GitHub sends.
    #[error("malformed {event} payload: {field} {problem}")]
    Malformed {
        /// The event (`X-GitHub-Event`).
        event: String,
        /// Dotted path of the offending field (`pull_request.head.sha`), or `body`.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// Checks that `signature_header` (the value of `X-Hub-Signature-256`) is the HMAC-SHA256 of
/// `body` under `secret`, comparing in constant time.
pub fn verify(
    secret: &[u8],
    signature_header: Option<&str>,
    body: &[u8],
) -> Result<(), WebhookError> {
    let header = signature_header.ok_or(WebhookError::MissingSignature)?;
    let hex = header
        .trim()
        .strip_prefix(SIGNATURE_PREFIX)
        .ok_or(WebhookError::MalformedSignature)?;
    let expected = decode_hex(hex).ok_or(WebhookError::MalformedSignature)?;
    // HMAC accepts keys of any length, so this cannot fail; an error is still no panic.
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret).map_err(|_| WebhookError::SignatureMismatch)?;
    mac.update(body);
    mac.verify_slice(&expected)
        .map_err(|_| WebhookError::SignatureMismatch)
}

/// The `X-Hub-Signature-256` value GitHub sends for `body` under `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut out = String::with_capacity(SIGNATURE_PREFIX.len() + 2 * SIGNATURE_BYTES);
    out.push_str(SIGNATURE_PREFIX);
    // As in `verify`, HMAC takes keys of any length.
    if let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) {
        mac.update(body);
        for byte in mac.finalize().into_bytes() {
            out.push_str(&format!("{byte:02x}"));
        }
    }
    out
}

fn decode_hex(hex: &str) -> Option<[u8; SIGNATURE_BYTES]> {
    let digits = hex.as_bytes();
    if digits.len() != 2 * SIGNATURE_BYTES {
        return None;
    }
    let mut out = [0u8; SIGNATURE_BYTES];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let high = char::from(pair[0]).to_digit(16)?;
        let low = char::from(pair[1]).to_digit(16)?;
        *byte = u8::try_from(high * 16 + low).ok()?;
    }
    Some(out)
}

/// An event read from a delivery, with the repository it was sent for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// What happened.
    pub event: ForgeEvent,
    /// `repository.full_name` of the payload (`OWNER/NAME`); `None` only for a ping, which
    /// an App's own hook sends without one.
    pub repository: Option<String>,
}

impl Delivery {
    /// Whether the delivery was sent for `followed` (`OWNER/NAME`; GitHub compares
    /// repository names without regard to case). A ping is for whoever receives it.
    pub fn is_for(&self, followed: &str) -> bool {
        match &self.repository {
            Some(name) => name.eq_ignore_ascii_case(followed),
            None => matches!(self.event, ForgeEvent::Ping),
        }
    }
}

/// Reads a delivery of `event` (the `X-GitHub-Event` header). `None` for events and actions
/// Trainyard does not act on: other events, tag pushes, branch deletions, pull request
/// actions other than opened/synchronize/reopened/closed, comments that are not new, not on
/// a pull request, or written by a bot, check run events other than a pressed button (or one
/// on a check run of no pull request, as GitHub sends for a fork's).
pub fn parse(event: &str, body: &[u8]) -> Result<Option<Delivery>, WebhookError> {
    let payload = match event {
        "ping" => {
            return Ok(Some(Delivery {
                event: ForgeEvent::Ping,
                repository: None,
            }));
        }
        "push" | "pull_request" | "issue_comment" | "check_run" => Payload::read(event, body)?,
        _ => return Ok(None),
    };
    let read = match event {
        "push" => payload.push()?,
        "pull_request" => payload.pull_request()?,
        "check_run" => payload.check_run()?,
        _ => payload.issue_comment()?,
    };
    let Some(read) = read else { return Ok(None) };
    Ok(Some(Delivery {
        event: read,
        repository: Some(payload.repository()?),
    }))
}

/// A payload with the event it came as, to name fields in errors.
struct Payload<'a> {
    event: &'a str,
    json: Value,
}

impl<'a> Payload<'a> {
    fn read(event: &'a str, body: &[u8]) -> Result<Self, WebhookError> {
        let json: Value = serde_json::from_slice(body).map_err(|e| WebhookError::Malformed {
            event: event.to_owned(),
            field: "body".to_owned(),
            problem: format!("is not JSON: {e}"),
        })?;
        if !json.is_object() {
            return Err(WebhookError::Malformed {
                event: event.to_owned(),
                field: "body".to_owned(),
                problem: "is not a JSON object".to_owned(),
            });
        }
        Ok(Payload { event, json })
    }

    fn error(&self, path: &[&str], problem: &str) -> WebhookError {
        WebhookError::Malformed {
            event: self.event.to_owned(),
            field: path.join("."),
            problem: problem.to_owned(),
        }
    }

    /// The value at `path`; `None` when absent or null.
    fn get(&self, path: &[&str]) -> Option<&Value> {
        let mut value = &self.json;
        for key in path {
            value = value.get(key)?;
        }
        (!value.is_null()).then_some(value)
    }

    fn string(&self, path: &[&str]) -> Result<&str, WebhookError> {
        match self.get(path) {
            Some(Value::String(text)) => Ok(text),
            Some(_) => Err(self.error(path, "is not a string")),
            None => Err(self.error(path, "is missing")),
        }
    }

    fn number(&self, path: &[&str]) -> Result<u64, WebhookError> {
        match self.get(path) {
            Some(value) => value
                .as_u64()
                .ok_or_else(|| self.error(path, "is not a non-negative integer")),
            None => Err(self.error(path, "is missing")),
        }
    }

    /// A boolean that GitHub sometimes leaves out; absent counts as false.
    fn flag(&self, path: &[&str]) -> Result<bool, WebhookError> {
        match self.get(path) {
            Some(Value::Bool(flag)) => Ok(*flag),
            Some(_) => Err(self.error(path, "is not a boolean")),
            None => Ok(false),
        }
    }

    fn sha(&self, path: &[&str]) -> Result<String, WebhookError> {
        let sha = self.string(path)?;
        if is_object_id(sha) {
            Ok(sha.to_ascii_lowercase())
        } else {
            Err(self.error(path, "is not a commit id (40 or 64 hex digits)"))
        }
    }

    fn branch(&self, path: &[&str]) -> Result<String, WebhookError> {
        let name = self.string(path)?;
        if is_plausible_branch(name) {
            Ok(name.to_owned())
        } else {
            Err(self.error(path, "is not a valid branch name"))
        }
    }

    /// `repository.full_name`, which every repository event carries.
    fn repository(&self) -> Result<String, WebhookError> {
        let path = ["repository", "full_name"];
        let name = self.string(&path)?;
        match name.split_once('/') {
            Some((owner, repo)) if !owner.is_empty() && !repo.is_empty() && !repo.contains('/') => {
                Ok(name.to_owned())
            }
            _ => Err(self.error(&path, "is not OWNER/NAME")),
        }
    }

    fn push(&self) -> Result<Option<ForgeEvent>, WebhookError> {
        let reference = self.string(&["ref"])?;
        let Some(branch) = reference.strip_prefix("refs/heads/") else {
            return Ok(None);
        };
        if self.flag(&["deleted"])? {
            return Ok(None);
        }
        let after = self.sha(&["after"])?;
        if after.bytes().all(|b| b == b'0') {
            return Ok(None);
        }
        if !is_plausible_branch(branch) {
            return Err(self.error(&["ref"], "does not name a valid branch"));
        }
        Ok(Some(ForgeEvent::Push {
            branch: branch.to_owned(),
            after,
        }))
    }

    fn pull_request(&self) -> Result<Option<ForgeEvent>, WebhookError> {
        let action = match self.string(&["action"])? {
            "opened" => PrAction::Opened,
            "synchronize" => PrAction::Synchronize,
            "reopened" => PrAction::Reopened,
            "closed" => PrAction::Closed {
                merged: self.flag(&["pull_request", "merged"])?,
            },
            _ => return Ok(None),
        };
        let base_repo = self.string(&["pull_request", "base", "repo", "full_name"])?;
        // GitHub sends a null head repository once a fork has been deleted: still a fork.
        let from_fork = match self.get(&["pull_request", "head", "repo"]) {
            None => true,
            Some(_) => {
                let head_repo = self.string(&["pull_request", "head", "repo", "full_name"])?;
                !head_repo.eq_ignore_ascii_case(base_repo)
            }
        };
        Ok(Some(ForgeEvent::PullRequest {
            action,
            number: self.number(&["pull_request", "number"])?,
            head_sha: self.sha(&["pull_request", "head", "sha"])?,
            head_ref: self.branch(&["pull_request", "head", "ref"])?,
            base_ref: self.branch(&["pull_request", "base", "ref"])?,
            from_fork,
            author: self.string(&["pull_request", "user", "login"])?.to_owned(),
        }))
    }

    fn issue_comment(&self) -> Result<Option<ForgeEvent>, WebhookError> {
        if self.string(&["action"])? != "created" {
            return Ok(None);
        }
        // Comments on plain issues come through the same event; only pull requests count.
        if self.get(&["issue", "pull_request"]).is_none() {
            return Ok(None);
        }
        let is_bot = |path: &[&str]| -> Result<bool, WebhookError> {
            Ok(match self.get(path) {
                Some(Value::String(kind)) => kind == "Bot",
                Some(_) => return Err(self.error(path, "is not a string")),
                None => false,
            })
        };
        // Trainyard's own replies would otherwise come back as commands.
        if is_bot(&["sender", "type"])? || is_bot(&["comment", "user", "type"])? {
            return Ok(None);
        }
        Ok(Some(ForgeEvent::Comment {
            pr: self.number(&["issue", "number"])?,
            comment_id: self.number(&["comment", "id"])?,
            author: self.string(&["comment", "user", "login"])?.to_owned(),
            body: self.string(&["comment", "body"])?.to_owned(),
        }))
    }
}

impl Payload<'_> {
    fn check_run(&self) -> Result<Option<ForgeEvent>, WebhookError> {
        if self.string(&["action"])? != "requested_action" {
            return Ok(None);
        }
        let head_sha = self.sha(&["check_run", "head_sha"])?;
        let pr = match self.get(&["check_run", "pull_requests"]) {
            Some(Value::Array(pulls)) => pulls
                .iter()
                .filter(|p| {
                    p.pointer("/head/sha")
                        .and_then(Value::as_str)
                        .is_none_or(|sha| sha.eq_ignore_ascii_case(&head_sha))
                })
                .find_map(|p| p.get("number").and_then(Value::as_u64)),
            Some(_) => return Err(self.error(&["check_run", "pull_requests"], "is not an array")),
            None => None,
        };
        let Some(pr) = pr else { return Ok(None) };
        if matches!(self.get(&["sender", "type"]), Some(Value::String(kind)) if kind == "Bot") {
            return Ok(None);
        }
        Ok(Some(ForgeEvent::CheckRunAction {
            check_run_id: self.number(&["check_run", "id"])?,
            head_sha,
            pr,
            identifier: self.string(&["requested_action", "identifier"])?.to_owned(),
            sender: self.string(&["sender", "login"])?.to_owned(),
        }))
    }
}

/// Whether `text` is a full SHA-1 or SHA-256 object id.
fn is_object_id(text: &str) -> bool {
    (text.len() == 40 || text.len() == 64) && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A cheap subset of `git check-ref-format`: enough that a branch name from the network can
/// go into a refspec without being read as an option or a range.
fn is_plausible_branch(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with(['-', '/', '.'])
        && !name.ends_with(['/', '.'])
        && !name.ends_with(".lock")
        && !name.contains("..")
        && !name.contains("//")
        && !name.contains("@{")
        && !name
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\".contains(c))
}

/// A header's value as text, if present and readable.
fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// Checks the signature before reading anything else, queues the event and wakes the loop.
/// GitHub waits at most ten seconds for an answer, so nothing slow happens here.
pub(super) async fn github_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let Some(webhooks) = &state.webhooks else {
        return (StatusCode::NOT_FOUND, "webhooks are off\n".to_owned());
    };
    // A value that is not text cannot be a hex signature; "" makes verify say so.
    let signature = headers
        .get("x-hub-signature-256")
        .map(|value| value.to_str().unwrap_or_default());
    if let Err(error) = verify(&webhooks.secret, signature, &body) {
        tracing::warn!(%error, "refused a webhook delivery");
        return (StatusCode::UNAUTHORIZED, format!("{error}\n"));
    }
    let Some(event) = header(&headers, "x-github-event") else {
        return (
            StatusCode::BAD_REQUEST,
            "missing X-GitHub-Event header\n".to_owned(),
        );
    };
    let Some(delivery) = header(&headers, "x-github-delivery") else {
        return (
            StatusCode::BAD_REQUEST,
            "missing X-GitHub-Delivery header\n".to_owned(),
        );
    };
    let delivered = match parse(event, &body) {
        Ok(Some(Delivery {
            event: ForgeEvent::Ping,
            ..
        })) => return (StatusCode::OK, "pong\n".to_owned()),
        Ok(Some(delivered)) => delivered,
        Ok(None) => return (StatusCode::OK, "ignored\n".to_owned()),
        Err(error) => {
            tracing::warn!(%error, %delivery, "refused a malformed webhook delivery");
            return (StatusCode::BAD_REQUEST, format!("{error}\n"));
        }
    };
    if !delivered.is_for(&webhooks.repository) {
        // Recorded, so that an operator can see what was sent, but finished at once: the
        // loop never sees it, and nothing is checked or posted for it.
        let from = delivered.repository.as_deref().unwrap_or("no repository");
        let why = format!(
            "refused: sent for {from}, not the followed {}",
            webhooks.repository
        );
        tracing::warn!(%event, %delivery, repository = %from, "refused a webhook delivery for another repository");
        return match state
            .store
            .record_refused_forge_event(delivery, &delivered.event, &why, chrono::Utc::now())
            .await
        {
            Ok(_) => (StatusCode::OK, format!("{why}\n")),
            Err(error) => unqueued(delivery, &error),
        };
    }
    let parsed = delivered.event;
    match state
        .store
        .record_forge_event(delivery, &parsed, chrono::Utc::now())
        .await
    {
        Ok(true) => {
            tracing::info!(%event, %delivery, "queued a webhook event");
            webhooks.wake.forge_events();
            (StatusCode::ACCEPTED, "queued\n".to_owned())
        }
        Ok(false) => (StatusCode::OK, "duplicate delivery\n".to_owned()),
        Err(error) => unqueued(delivery, &error),
    }
}

/// The answer to a delivery the store could not record.
fn unqueued(delivery: &str, error: &StoreError) -> (StatusCode, String) {
    if let StoreError::Invalid(problem) = error {
        return (StatusCode::BAD_REQUEST, format!("{problem}\n"));
    }
    tracing::error!(%error, %delivery, "recording a webhook event failed");
    // 5xx: the delivery shows as failed in GitHub, where it can be redelivered.
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "the event could not be queued; redeliver it later\n".to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// The event of a delivery, without its repository.
    fn event_of(event: &str, body: &[u8]) -> Result<Option<ForgeEvent>, WebhookError> {
        parse(event, body).map(|read| read.map(|delivery| delivery.event))
    }

    const SECRET: &[u8] = b"It's a Secret to Everybody";
    const SHA: &str = "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c";
    const HEAD: &str = "ec26c3e57ca3a959ca5aad62de7213c562f8c821";

    #[test]
    fn githubs_documented_example_signature_verifies() {
        // The example in GitHub's "Validating webhook deliveries".
        let header = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(verify(SECRET, Some(header), b"Hello, World!"), Ok(()));
        assert_eq!(sign(SECRET, b"Hello, World!"), header);
    }

    #[test]
    fn uppercase_hex_and_surrounding_spaces_are_accepted() {
        let signature = sign(SECRET, b"{}");
        let upper = format!(" sha256={} ", signature[7..].to_ascii_uppercase());
        assert_eq!(verify(SECRET, Some(&upper), b"{}"), Ok(()));
    }

    #[test]
    fn a_signature_under_another_secret_or_body_is_refused() {
        let signature = sign(b"another secret", b"{}");
        assert_eq!(
            verify(SECRET, Some(&signature), b"{}"),
            Err(WebhookError::SignatureMismatch)
        );
        let signature = sign(SECRET, b"{}");
        assert_eq!(
            verify(SECRET, Some(&signature), b"{ }"),
            Err(WebhookError::SignatureMismatch)
        );
    }

    #[test]
    fn a_missing_signature_is_refused() {
        assert_eq!(
            verify(SECRET, None, b"{}"),
            Err(WebhookError::MissingSignature)
        );
    }

    #[test]
    fn malformed_signatures_are_refused() {
        let good = sign(SECRET, b"{}");
        let hex = &good[7..];
        for header in [
            format!("sha1={hex}"),
            hex.to_owned(),
            format!("sha256={}", &hex[1..]),
            format!("sha256={hex}0"),
            format!("sha256={}zz", &hex[2..]),
            format!("sha256={}é", &hex[2..]),
            "sha256=".to_owned(),
            String::new(),
        ] {
            assert_eq!(
                verify(SECRET, Some(&header), b"{}"),
                Err(WebhookError::MalformedSignature),
                "{header:?}"
            );
        }
    }

    fn body(value: Value) -> Vec<u8> {
        serde_json::to_vec(&value).unwrap()
    }

    fn push_payload(reference: &str, after: &str, deleted: bool) -> Vec<u8> {
        body(json!({
            "ref": reference,
            "before": "0000000000000000000000000000000000000000",
            "after": after,
            "created": false,
            "deleted": deleted,
            "forced": false,
            "base_ref": null,
            "compare": "https://github.com/octo/ml/compare/abc...def",
            "commits": [{"id": after, "message": "Train nightly", "distinct": true}],
            "head_commit": {"id": after},
            "repository": {"id": 1, "full_name": "octo/ml", "default_branch": "main"},
            "pusher": {"name": "octocat", "email": "octocat@example.com"},
            "sender": {"login": "octocat", "id": 1, "type": "User"}
        }))
    }

    fn pr_payload(action: &str, merged: bool, head_repo: Value) -> Vec<u8> {
        body(json!({
            "action": action,
            "number": 42,
            "pull_request": {
                "url": "https://api.github.com/repos/octo/ml/pulls/42",
                "id": 1,
                "number": 42,
                "state": if action == "closed" { "closed" } else { "open" },
                "title": "Nightly at two",
                "user": {"login": "alice", "id": 2, "type": "User"},
                "merged": merged,
                "merge_commit_sha": null,
                "head": {
                    "label": "alice:tune",
                    "ref": "tune/lr",
                    "sha": HEAD,
                    "user": {"login": "alice"},
                    "repo": head_repo
                },
                "base": {
                    "label": "octo:main",
                    "ref": "main",
                    "sha": SHA,
                    "user": {"login": "octo"},
                    "repo": {"id": 1, "name": "ml", "full_name": "octo/ml", "fork": false}
                }
            },
            "repository": {"id": 1, "full_name": "octo/ml"},
            "sender": {"login": "alice", "id": 2, "type": "User"}
        }))
    }

    fn own_repo() -> Value {
        json!({"id": 1, "name": "ml", "full_name": "octo/ml", "fork": false})
    }

    fn comment_payload(action: &str, on_pr: bool, sender_type: &str, text: &str) -> Vec<u8> {
        let mut issue = json!({
            "url": "https://api.github.com/repos/octo/ml/issues/42",
            "number": 42,
            "title": "Nightly at two",
            "user": {"login": "alice"},
            "state": "open"
        });
        if on_pr {
            issue["pull_request"] = json!({
                "url": "https://api.github.com/repos/octo/ml/pulls/42",
                "merged_at": null
            });
        }
        body(json!({
            "action": action,
            "issue": issue,
            "comment": {
                "id": 1_000_000_007_u64,
                "body": text,
                "user": {"login": "bob", "id": 3, "type": sender_type},
                "author_association": "MEMBER",
                "created_at": "2026-01-01T00:00:00Z"
            },
            "repository": {"id": 1, "full_name": "octo/ml"},
            "sender": {"login": "bob", "id": 3, "type": sender_type}
        }))
    }

    #[test]
    fn a_ping_is_read_whatever_its_body() {
        assert_eq!(
            event_of("ping", b"{\"zen\": \"Keep it logically awesome.\"}"),
            Ok(Some(ForgeEvent::Ping))
        );
        assert_eq!(event_of("ping", b""), Ok(Some(ForgeEvent::Ping)));
    }

    #[test]
    fn a_branch_push_is_read() {
        assert_eq!(
            event_of("push", &push_payload("refs/heads/main", SHA, false)),
            Ok(Some(ForgeEvent::Push {
                branch: "main".to_owned(),
                after: SHA.to_owned()
            }))
        );
        assert_eq!(
            event_of("push", &push_payload("refs/heads/team/nightly", SHA, false)),
            Ok(Some(ForgeEvent::Push {
                branch: "team/nightly".to_owned(),
                after: SHA.to_owned()
            }))
        );
    }

    #[test]
    fn tag_pushes_and_branch_deletions_are_ignored() {
        assert_eq!(
            event_of("push", &push_payload("refs/tags/v1", SHA, false)),
            Ok(None)
        );
        assert_eq!(
            event_of(
                "push",
                &push_payload("refs/heads/main", &"0".repeat(40), true)
            ),
            Ok(None)
        );
        assert_eq!(
            event_of("push", &push_payload("refs/heads/main", SHA, true)),
            Ok(None)
        );
    }

    #[test]
    fn a_push_with_a_bad_commit_id_names_the_field() {
        match event_of("push", &push_payload("refs/heads/main", "HEAD~1", false)) {
            Err(WebhookError::Malformed { event, field, .. }) => {
                assert_eq!((event.as_str(), field.as_str()), ("push", "after"));
            }
            other => panic!("expected a malformed payload, got {other:?}"),
        }
        match event_of(
            "push",
            &push_payload("refs/heads/--upload-pack=x", SHA, false),
        ) {
            Err(WebhookError::Malformed { field, .. }) => assert_eq!(field, "ref"),
            other => panic!("expected a malformed payload, got {other:?}"),
        }
    }

    #[test]
    fn pull_request_actions_are_read() {
        for (action, expected) in [
            ("opened", PrAction::Opened),
            ("synchronize", PrAction::Synchronize),
            ("reopened", PrAction::Reopened),
        ] {
            assert_eq!(
                event_of("pull_request", &pr_payload(action, false, own_repo())),
                Ok(Some(ForgeEvent::PullRequest {
                    action: expected,
                    number: 42,
                    head_sha: HEAD.to_owned(),
                    head_ref: "tune/lr".to_owned(),
                    base_ref: "main".to_owned(),
                    from_fork: false,
                    author: "alice".to_owned(),
                }))
            );
        }
    }

    #[test]
    fn a_closed_pull_request_says_whether_it_was_merged() {
        for merged in [true, false] {
            match event_of("pull_request", &pr_payload("closed", merged, own_repo())) {
                Ok(Some(ForgeEvent::PullRequest { action, .. })) => {
                    assert_eq!(action, PrAction::Closed { merged });
                }
                other => panic!("expected a pull request, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_pull_request_from_a_fork_or_a_deleted_fork_is_marked() {
        let fork = json!({"id": 9, "name": "ml", "full_name": "mallory/ml", "fork": true});
        for head_repo in [fork, Value::Null] {
            match event_of("pull_request", &pr_payload("opened", false, head_repo)) {
                Ok(Some(ForgeEvent::PullRequest { from_fork, .. })) => assert!(from_fork),
                other => panic!("expected a pull request, got {other:?}"),
            }
        }
    }

    #[test]
    fn other_pull_request_actions_are_ignored() {
        for action in [
            "edited",
            "labeled",
            "assigned",
            "review_requested",
            "ready_for_review",
        ] {
            assert_eq!(
                event_of("pull_request", &pr_payload(action, false, own_repo())),
                Ok(None),
                "{action}"
            );
        }
    }

    #[test]
    fn a_pull_request_missing_its_head_sha_names_the_field() {
        let mut payload: Value =
            serde_json::from_slice(&pr_payload("opened", false, own_repo())).unwrap();
        payload["pull_request"]["head"]
            .as_object_mut()
            .unwrap()
            .remove("sha");
        match event_of("pull_request", &body(payload)) {
            Err(error @ WebhookError::Malformed { .. }) => {
                assert_eq!(
                    error.to_string(),
                    "malformed pull_request payload: pull_request.head.sha is missing"
                );
            }
            other => panic!("expected a malformed payload, got {other:?}"),
        }
    }

    fn check_run_payload(action: &str, pulls: Value, sender_type: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "action": action,
            "check_run": {"id": 901, "name": "trainyard/plan", "head_sha": HEAD,
                          "status": "completed", "conclusion": "success",
                          "pull_requests": pulls},
            "requested_action": {"identifier": "preview"},
            "repository": {"full_name": "acme/ml"},
            "sender": {"login": "bob", "type": sender_type},
            "installation": {"id": 777}
        }))
        .expect("json")
    }

    #[test]
    fn a_pressed_check_run_button_is_read_with_its_pull_request() {
        let pulls = json!([{"number": 3, "head": {"sha": SHA}, "base": {"sha": SHA}},
                           {"number": 7, "head": {"sha": HEAD}, "base": {"sha": SHA}}]);
        let body = check_run_payload("requested_action", pulls.clone(), "User");
        let delivery = parse("check_run", &body).expect("reads").expect("an event");
        assert_eq!(delivery.repository.as_deref(), Some("acme/ml"));
        assert!(delivery.is_for("ACME/ml") && !delivery.is_for("acme/other"));
        assert_eq!(
            delivery.event,
            ForgeEvent::CheckRunAction {
                check_run_id: 901,
                head_sha: HEAD.to_owned(),
                pr: 7,
                identifier: "preview".to_owned(),
                sender: "bob".to_owned(),
            }
        );
        for ignored in [
            check_run_payload("created", pulls.clone(), "User"),
            check_run_payload("rerequested", pulls.clone(), "User"),
            check_run_payload("requested_action", json!([]), "User"),
            check_run_payload("requested_action", pulls, "Bot"),
        ] {
            assert_eq!(event_of("check_run", &ignored), Ok(None));
        }
        let mut broken: Value = serde_json::from_slice(&body).expect("json");
        broken["requested_action"] = json!({});
        let broken = serde_json::to_vec(&broken).expect("json");
        assert!(matches!(
            event_of("check_run", &broken),
            Err(WebhookError::Malformed { field, .. }) if field == "requested_action.identifier"
        ));
    }

    #[test]
    fn a_new_comment_on_a_pull_request_is_read() {
        assert_eq!(
            event_of(
                "issue_comment",
                &comment_payload("created", true, "User", "/trainyard plan")
            ),
            Ok(Some(ForgeEvent::Comment {
                pr: 42,
                comment_id: 1_000_000_007,
                author: "bob".to_owned(),
                body: "/trainyard plan".to_owned(),
            }))
        );
    }

    #[test]
    fn edits_deletions_issue_comments_and_bot_comments_are_ignored() {
        let text = "/trainyard plan";
        for payload in [
            comment_payload("edited", true, "User", text),
            comment_payload("deleted", true, "User", text),
            comment_payload("created", false, "User", text),
            comment_payload("created", true, "Bot", text),
        ] {
            assert_eq!(event_of("issue_comment", &payload), Ok(None));
        }
    }

    #[test]
    fn events_trainyard_does_not_act_on_are_ignored_unread() {
        for event in [
            "check_suite",
            "issues",
            "pull_request_review",
            "create",
            "star",
        ] {
            assert_eq!(event_of(event, b"not even JSON"), Ok(None), "{event}");
        }
    }

    #[test]
    fn a_body_that_is_not_a_json_object_is_malformed() {
        for bad in [&b"not json"[..], b"[]", b"null", b"\"text\"", b""] {
            match event_of("push", bad) {
                Err(WebhookError::Malformed { field, .. }) => assert_eq!(field, "body"),
                other => panic!("expected a malformed body for {bad:?}, got {other:?}"),
            }
        }
    }

    #[test]
    fn events_survive_their_stored_form() {
        let events = [
            ForgeEvent::Ping,
            ForgeEvent::Push {
                branch: "main".to_owned(),
                after: SHA.to_owned(),
            },
            ForgeEvent::PullRequest {
                action: PrAction::Closed { merged: true },
                number: 7,
                head_sha: HEAD.to_owned(),
                head_ref: "x".to_owned(),
                base_ref: "main".to_owned(),
                from_fork: true,
                author: "alice".to_owned(),
            },
            ForgeEvent::Comment {
                pr: 7,
                comment_id: 9,
                author: "bob".to_owned(),
                body: "/trainyard run train".to_owned(),
            },
        ];
        for event in events {
            let stored = serde_json::to_string(&event).unwrap();
            assert_eq!(serde_json::from_str::<ForgeEvent>(&stored).unwrap(), event);
        }
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_bytes_never_panics(
            event in prop::sample::select(vec!["push", "pull_request", "issue_comment", "ping", "x"]),
            body in prop::collection::vec(any::<u8>(), 0..512),
        ) {
            let _ = event_of(event, &body);
        }

        #[test]
        fn parsing_arbitrary_json_never_panics(
            event in prop::sample::select(vec!["push", "pull_request", "issue_comment"]),
            json in arbitrary_json(),
        ) {
            let _ = event_of(event, &body(json));
        }

        #[test]
        fn a_body_changed_after_signing_never_verifies(
            secret in prop::collection::vec(any::<u8>(), 0..80),
            body in prop::collection::vec(any::<u8>(), 0..256),
            other in prop::collection::vec(any::<u8>(), 0..256),
        ) {
            let signature = sign(&secret, &body);
            prop_assert_eq!(verify(&secret, Some(&signature), &body), Ok(()));
            if other != body {
                prop_assert_eq!(
                    verify(&secret, Some(&signature), &other),
                    Err(WebhookError::SignatureMismatch)
                );
            }
        }

        #[test]
        fn a_changed_signature_never_verifies(
            body in prop::collection::vec(any::<u8>(), 0..256),
            position in 0usize..64,
            digit in prop::sample::select(b"0123456789abcdef".to_vec()),
        ) {
            let signature = sign(SECRET, &body);
            let mut bytes = signature.into_bytes();
            let index = SIGNATURE_PREFIX.len() + position;
            prop_assume!(bytes[index] != digit);
            bytes[index] = digit;
            let changed = String::from_utf8(bytes).unwrap();
            prop_assert_eq!(
                verify(SECRET, Some(&changed), &body),
                Err(WebhookError::SignatureMismatch)
            );
        }

        #[test]
        fn arbitrary_signature_headers_never_panic(header in any::<String>()) {
            let _ = verify(SECRET, Some(&header), b"{}");
        }
    }

    /// JSON shaped like webhook payloads: the fields Trainyard reads, with any kind of value.
    fn arbitrary_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            "[a-z0-9/._-]{0,50}".prop_map(Value::from),
            Just(Value::from(SHA)),
            Just(Value::from("refs/heads/main")),
            prop::sample::select(vec!["opened", "closed", "created", "synchronize", "Bot"])
                .prop_map(Value::from),
        ];
        let keys = prop::sample::select(vec![
            "ref",
            "after",
            "deleted",
            "action",
            "number",
            "pull_request",
            "head",
            "base",
            "repo",
            "full_name",
            "sha",
            "user",
            "login",
            "merged",
            "issue",
            "comment",
            "id",
            "body",
            "sender",
            "type",
        ]);
        leaf.prop_recursive(5, 64, 8, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map(keys.clone(), inner, 0..8).prop_map(|map| {
                    Value::Object(map.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
                }),
            ]
        })
    }
}
