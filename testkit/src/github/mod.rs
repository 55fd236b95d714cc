//! A stand-in for GitHub's REST API that octocrab (`.base_uri(url)`) talks to as if it were
//! api.github.com, plus a webhook sender with realistic payloads.
//!
//! # Using it
//!
//! ```no_run
//! # async fn demo() -> Result<(), trainyard_testkit::github::Error> {
//! use trainyard_testkit::github::{FaultKind, GithubServer, Permission};
//! let gh = GithubServer::builder().repo("acme", "models").token("ghp_test", "alice").start().await?;
//! gh.add_commit("0123456789abcdef0123456789abcdef01234567");
//! gh.open_pr(7, "0123456789abcdef0123456789abcdef01234567").author("bob").open()?;
//! gh.set_permission("bob", Permission::Write);
//! gh.fail_next(2, FaultKind::SecondaryRateLimit { retry_after: 1 });
//! // ... the code under test posts statuses and comments through gh.url() ...
//! assert_eq!(gh.comments(7).len(), 1);
//! # Ok(()) }
//! ```
//!
//! * One repository (`owner/name`); other repositories answer 404 like a private one you
//!   cannot see. Commits exist once the test registers them ([`GithubServer::add_commit`],
//!   pull-request heads and merge commits).
//! * Authentication: `Authorization: Bearer|token <t>` on every request (401 `Bad
//!   credentials` otherwise). Personal tokens come from [`GithubServerBuilder::token`].
//!   The App flow: a RS256 JWT signed with the App's key (by default [`TEST_APP_KEY`],
//!   verified against [`TEST_APP_PUBLIC_KEY`]) with `iss` = the App id, `iat` and an `exp`
//!   at most ten minutes ahead buys installation tokens (`ghs_…`) at
//!   `POST /app/installations/{id}/access_tokens`; they expire after the configured TTL
//!   and then answer 401. The JWT itself is good only for `/app…` endpoints and
//!   `GET /repos/{o}/{r}/installation`, as on GitHub. Installations act as `<slug>[bot]`.
//! * Endpoints: commit statuses (create, list newest first, combined), issue comments
//!   (create, list with `Link` pagination, get, PATCH, DELETE; POST to a comment's URL is
//!   404 as on GitHub), pull requests (get, `commits/{sha}/pulls` by head or merge commit),
//!   collaborator permission, check runs (create, PATCH appending annotations, get, list by
//!   ref with `check_name`/`filter`/`app_id`, annotations; written only by Apps, a personal
//!   token gets 403), `GET /user` (personal tokens only: GitHub answers 403 to
//!   installation tokens and to Actions' `GITHUB_TOKEN`), `GET /app`, `GET /repos/{o}/{r}/installation`.
//! * Validation answers as GitHub does: 422 `Validation Failed` with `errors` for a bad
//!   `state`, a description over 140 characters, a missing or over-65,536-character
//!   comment body; for check runs a missing `name`, `head_sha`, output `title` or `summary`,
//!   a summary or text over 65,535 characters, more than 50 annotations or 3 actions in one
//!   request, an incomplete annotation or one with columns over several lines, an action's
//!   label, description or identifier over 20, 40, 20 characters; 422 `No commit found for
//!   SHA: …` for unknown commits; 400 `Problems parsing JSON`.
//! * Limits: every answer carries `x-ratelimit-limit/remaining/reset/used/resource`; a
//!   token over its hourly budget gets 403 with `x-ratelimit-remaining: 0`; more than the
//!   configured content-creating requests (POST, PATCH, PUT, DELETE; default 80) per
//!   minute, or 500 per hour, per token get 403 (or 429, as GitHub also sends) with
//!   `retry-after` (GitHub's secondary limits). [`GithubServer::fail_next`] injects
//!   secondary/primary limits (403 or 429, with or without `retry-after`), 5xx, a stalled
//!   answer and 404.
//!
//! Choices where GitHub's behaviour varies: the collaborator-permission endpoint answers a
//! user the test never named with `read` on a public repository and `none` on a private
//! one (not 404); editing or deleting someone else's comment is refused with 403 unless the
//! caller has admin permission (on GitHub anyone with write access may, so a client must
//! keep its own rule about which comments it owns — [`GithubServer::comments`] keeps edit
//! counts to check it).

mod json;
mod server;
mod state;
mod webhook;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::Utc;
use serde_json::Value;
use tokio::task::JoinHandle;

pub use state::{
    ActionRecord, AnnotationRecord, CheckRunRecord, CommentRecord, PullRecord, StatusRecord,
};
pub use webhook::{
    WebhookError, check_run_requested_action_payload, issue_comment_payload, pull_request_payload,
    push_payload, send_webhook, send_webhook_signed, sign,
};

use json::Site;
use server::Shared;
use state::State;

/// The private key (PKCS#1 PEM) of the stand-in's default GitHub App, for clients to sign
/// their JWTs with. It protects nothing: it exists only for tests.
pub const TEST_APP_KEY: &str = include_str!("test_app_key.pem");

/// The public half of [`TEST_APP_KEY`], which the stand-in verifies App JWTs against.
pub const TEST_APP_PUBLIC_KEY: &str = include_str!("test_app_key.pub.pem");

/// Failures of the stand-in's controls.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listening socket could not be opened.
    #[error("cannot listen on 127.0.0.1: {0}")]
    Bind(#[source] std::io::Error),
    /// The App's public key is not an RSA public key in PEM.
    #[error("the App public key is not usable: {0}")]
    Key(String),
    /// A control named a pull request the test never opened.
    #[error("pull request #{0} does not exist")]
    NoSuchPull(u64),
    /// A pull request with that number already exists.
    #[error("pull request #{0} already exists")]
    PullExists(u64),
}

/// A repository role, as `set_permission` grants it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Full control.
    Admin,
    /// Write plus some settings.
    Maintain,
    /// Push access.
    Write,
    /// Manage issues and pull requests without write access.
    Triage,
    /// Read only.
    Read,
    /// No access.
    None,
}

impl Permission {
    /// GitHub's legacy `permission` field: maintain maps to write, triage to read.
    pub fn legacy(self) -> &'static str {
        match self {
            Permission::Admin => "admin",
            Permission::Maintain | Permission::Write => "write",
            Permission::Triage | Permission::Read => "read",
            Permission::None => "none",
        }
    }

    /// GitHub's `role_name` field.
    pub fn role_name(self) -> &'static str {
        match self {
            Permission::Admin => "admin",
            Permission::Maintain => "maintain",
            Permission::Write => "write",
            Permission::Triage => "triage",
            Permission::Read => "read",
            Permission::None => "none",
        }
    }

    fn rank(self) -> u8 {
        match self {
            Permission::Admin => 5,
            Permission::Maintain => 4,
            Permission::Write => 3,
            Permission::Triage => 2,
            Permission::Read => 1,
            Permission::None => 0,
        }
    }
}

/// What an injected fault answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultKind {
    /// 403 with `retry-after: <seconds>` and GitHub's secondary-rate-limit message.
    SecondaryRateLimit {
        /// Seconds for `retry-after`.
        retry_after: u64,
    },
    /// 403 `API rate limit exceeded` with `x-ratelimit-remaining: 0` and a reset this many
    /// seconds ahead.
    PrimaryRateLimit {
        /// Seconds until `x-ratelimit-reset`.
        reset_in: u64,
    },
    /// 429 with GitHub's secondary-rate-limit message, with or without `retry-after`
    /// (GitHub documents both 403 and 429 for secondary limits).
    TooManyRequests {
        /// Seconds for `retry-after`, when sent.
        retry_after: Option<u64>,
    },
    /// Holds the request this long, then answers 502: a stalled front end.
    Stall {
        /// Seconds before the answer.
        seconds: u64,
    },
    /// A bare 5xx from the front end (502 and 503 are what GitHub clients see).
    ServerError(u16),
    /// 404 `Not Found`.
    NotFound,
}

/// A failure to answer in place of the next matching requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// How many more requests get it.
    pub remaining: usize,
    /// The answer.
    pub kind: FaultKind,
    /// Only content-creating requests (POST, PATCH, PUT, DELETE).
    pub writes_only: bool,
    /// Only requests whose path starts with this (e.g. `/repos/acme/models/statuses`).
    pub path_prefix: Option<String>,
}

/// How a request authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenKind {
    /// No `Authorization` header.
    Missing,
    /// A header the stand-in did not accept (unknown or expired token, bad JWT).
    Rejected,
    /// A personal access token of this login.
    Personal(String),
    /// An installation access token of this installation.
    Installation(u64),
    /// Actions' `GITHUB_TOKEN` (an installation token of the GitHub Actions app).
    Actions,
    /// An App JWT.
    AppJwt,
}

/// One request as the stand-in saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestRecord {
    /// GET, POST, PATCH, ...
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query string, if any.
    pub query: Option<String>,
    /// The status answered.
    pub status: u16,
    /// How it authenticated.
    pub token: TokenKind,
    /// The JSON body it carried, if any.
    pub body: Option<Value>,
    /// Its `User-Agent` values, joined with ", " when it sent more than one.
    pub user_agent: Option<String>,
}

/// Builds a [`GithubServer`].
#[derive(Debug)]
pub struct GithubServerBuilder {
    owner: String,
    repo: String,
    private: bool,
    tokens: Vec<(String, String)>,
    actions_tokens: Vec<String>,
    app_id: u64,
    app_slug: String,
    installation_id: u64,
    app_public_key: String,
    token_ttl: Duration,
    rate_limit: u64,
    secondary_limit: usize,
    secondary_window: Duration,
    hourly_write_limit: usize,
    secondary_status: u16,
}

impl Default for GithubServerBuilder {
    fn default() -> Self {
        Self {
            owner: "acme".into(),
            repo: "models".into(),
            private: false,
            tokens: Vec::new(),
            actions_tokens: Vec::new(),
            app_id: 4242,
            app_slug: "trainyard".into(),
            installation_id: 777,
            app_public_key: TEST_APP_PUBLIC_KEY.into(),
            token_ttl: Duration::from_secs(3600),
            rate_limit: 5000,
            secondary_limit: 80,
            secondary_window: Duration::from_secs(60),
            hourly_write_limit: 500,
            secondary_status: 403,
        }
    }
}

impl GithubServerBuilder {
    /// The repository served (default `acme/models`).
    pub fn repo(mut self, owner: impl Into<String>, name: impl Into<String>) -> Self {
        self.owner = owner.into();
        self.repo = name.into();
        self
    }

    /// Makes the repository private (non-collaborators then have permission `none`).
    pub fn private(mut self) -> Self {
        self.private = true;
        self
    }

    /// Accepts `token` as a personal access token of `login`.
    pub fn token(mut self, token: impl Into<String>, login: impl Into<String>) -> Self {
        self.tokens.push((token.into(), login.into()));
        self
    }

    /// Accepts `token` as Actions' `GITHUB_TOKEN`: it writes as `github-actions[bot]` and,
    /// like every installation token, is refused `GET /user`.
    pub fn actions_token(mut self, token: impl Into<String>) -> Self {
        self.actions_tokens.push(token.into());
        self
    }

    /// The GitHub App (default id 4242, slug `trainyard`, installation 777).
    pub fn app(mut self, app_id: u64, slug: impl Into<String>, installation_id: u64) -> Self {
        self.app_id = app_id;
        self.app_slug = slug.into();
        self.installation_id = installation_id;
        self
    }

    /// The PEM public key App JWTs are verified against (default [`TEST_APP_PUBLIC_KEY`]).
    pub fn app_public_key(mut self, pem: impl Into<String>) -> Self {
        self.app_public_key = pem.into();
        self
    }

    /// How long installation tokens live (GitHub: one hour).
    pub fn installation_token_ttl(mut self, ttl: Duration) -> Self {
        self.token_ttl = ttl;
        self
    }

    /// Requests per hour per token (GitHub: 5,000 for tokens, more for large installations).
    pub fn rate_limit(mut self, per_hour: u64) -> Self {
        self.rate_limit = per_hour;
        self
    }

    /// Content-creating requests allowed per `window` per token before 403 with
    /// `retry-after` (GitHub: 80 per minute).
    pub fn secondary_limit(mut self, requests: usize, window: Duration) -> Self {
        self.secondary_limit = requests;
        self.secondary_window = window;
        self
    }

    /// Content-creating requests allowed per hour per token (GitHub: 500).
    pub fn hourly_write_limit(mut self, requests: usize) -> Self {
        self.hourly_write_limit = requests;
        self
    }

    /// Answers secondary limits with 429 instead of 403 (GitHub sends either).
    pub fn secondary_limit_answers_429(mut self) -> Self {
        self.secondary_status = 429;
        self
    }

    /// Starts listening on 127.0.0.1 with a random port.
    pub async fn start(self) -> Result<GithubServer, Error> {
        let decoding = jsonwebtoken::DecodingKey::from_rsa_pem(self.app_public_key.as_bytes())
            .map_err(|e| Error::Key(e.to_string()))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(Error::Bind)?;
        let addr = listener.local_addr().map_err(Error::Bind)?;
        let mut state = State::new();
        for (token, login) in self.tokens {
            state.tokens.insert(token, state::Principal::User(login));
        }
        for token in self.actions_tokens {
            state.tokens.insert(token, state::Principal::Actions);
        }
        let site = Site {
            api: format!("http://{addr}"),
            repo_id: json::user_id(&format!("{}/{}", self.owner, self.repo)),
            owner: self.owner,
            repo: self.repo,
            private: self.private,
            app_id: self.app_id,
            app_slug: self.app_slug,
            installation_id: self.installation_id,
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            site,
            decoding,
            token_ttl: self.token_ttl,
            rate_limit: self.rate_limit,
            secondary_limit: self.secondary_limit,
            secondary_window: self.secondary_window,
            hourly_write_limit: self.hourly_write_limit,
            secondary_status: self.secondary_status,
        });
        let app = axum::Router::new()
            .fallback(server::handle)
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::warn!(%err, "the stand-in GitHub stopped");
            }
        });
        Ok(GithubServer { shared, addr, task })
    }
}

/// A running stand-in GitHub. Dropping it stops the server.
pub struct GithubServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for GithubServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sets up a pull request; see [`GithubServer::open_pr`].
#[must_use = "nothing is opened until .open()"]
pub struct PullBuilder<'a> {
    server: &'a GithubServer,
    pull: PullRecord,
}

impl PullBuilder<'_> {
    /// The head branch (default `feature-<n>`).
    pub fn head_ref(mut self, name: impl Into<String>) -> Self {
        self.pull.head_ref = name.into();
        self
    }

    /// The base branch and its commit (default `main` at forty zeros).
    pub fn base(mut self, name: impl Into<String>, sha: impl Into<String>) -> Self {
        self.pull.base_ref = name.into();
        self.pull.base_sha = sha.into();
        self
    }

    /// The author's login (default `octocat`).
    pub fn author(mut self, login: impl Into<String>) -> Self {
        self.pull.author = login.into();
        self
    }

    /// The title.
    pub fn title(mut self, title: impl Into<String>) -> Self {
        self.pull.title = title.into();
        self
    }

    /// The head lives in the author's fork.
    pub fn from_fork(mut self) -> Self {
        self.pull.from_fork = true;
        self
    }

    /// Opens it; its head commit and base commit now exist.
    pub fn open(self) -> Result<PullRecord, Error> {
        let mut state = self.server.shared.state();
        if state.pulls.contains_key(&self.pull.number) {
            return Err(Error::PullExists(self.pull.number));
        }
        let mut pull = self.pull;
        pull.id = state.id();
        // As on GitHub, the base commit is the base branch's tip when the pull is opened.
        if pull.base_sha.bytes().all(|b| b == b'0')
            && let Some(tip) = state.branches.get(&pull.base_ref)
        {
            pull.base_sha = tip.clone();
        }
        state.commits.insert(pull.head_sha.clone());
        state.commits.insert(pull.base_sha.clone());
        state.pulls.insert(pull.number, pull.clone());
        Ok(pull)
    }
}

impl GithubServer {
    /// Starts a server with the defaults and no personal tokens.
    pub async fn start() -> Result<Self, Error> {
        Self::builder().start().await
    }

    /// A builder for the repository, tokens, App and limits.
    pub fn builder() -> GithubServerBuilder {
        GithubServerBuilder::default()
    }

    /// `http://127.0.0.1:<port>`, for octocrab's `base_uri`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The App's id.
    pub fn app_id(&self) -> u64 {
        self.shared.site.app_id
    }

    /// The App's installation id.
    pub fn installation_id(&self) -> u64 {
        self.shared.site.installation_id
    }

    /// The login the App's installation acts as (`<slug>[bot]`).
    pub fn bot_login(&self) -> String {
        json::bot_login(&self.shared.site.app_slug)
    }

    /// Registers a commit, so statuses may be posted to it.
    pub fn add_commit(&self, sha: &str) {
        self.shared.state().commits.insert(sha.to_string());
    }

    /// Points a branch at a commit (registering it), so refs resolve like shas.
    pub fn set_branch(&self, branch: &str, sha: &str) {
        let mut state = self.shared.state();
        state.commits.insert(sha.to_string());
        state.branches.insert(branch.to_string(), sha.to_string());
    }

    /// Starts setting up open pull request `number` with head commit `head_sha`.
    pub fn open_pr(&self, number: u64, head_sha: &str) -> PullBuilder<'_> {
        let now = Utc::now();
        PullBuilder {
            server: self,
            pull: PullRecord {
                number,
                id: 0,
                title: format!("Change #{number}"),
                author: "octocat".into(),
                head_sha: head_sha.into(),
                head_ref: format!("feature-{number}"),
                base_ref: "main".into(),
                base_sha: "0".repeat(40),
                from_fork: false,
                state: "open".into(),
                merged: false,
                merge_commit_sha: None,
                created_at: now,
                updated_at: now,
                closed_at: None,
            },
        }
    }

    /// The `pull_request` webhook payload GitHub sends for `action` on pull request
    /// `number` as it stands now: its real head, base and (once merged) merge commit.
    pub fn pull_request_event(&self, action: &str, number: u64) -> Result<Value, Error> {
        let pull = self.pull(number).ok_or(Error::NoSuchPull(number))?;
        let site = &self.shared.site;
        let mut payload = pull_request_payload(
            &format!("{}/{}", site.owner, site.repo),
            action,
            number,
            &pull.head_sha,
            &pull.head_ref,
            &pull.base_ref,
            pull.from_fork,
            &pull.author,
            pull.merged,
        );
        let pr = &mut payload["pull_request"];
        pr["base"]["sha"] = Value::from(pull.base_sha.clone());
        pr["merge_commit_sha"] = pull
            .merge_commit_sha
            .clone()
            .map_or(Value::Null, Value::from);
        pr["title"] = Value::from(pull.title.clone());
        pr["state"] = Value::from(pull.state.clone());
        pr["created_at"] = Value::from(pull.created_at.to_rfc3339());
        pr["updated_at"] = Value::from(pull.updated_at.to_rfc3339());
        pr["closed_at"] = pull
            .closed_at
            .map_or(Value::Null, |t| Value::from(t.to_rfc3339()));
        pr["merged_at"] = match (pull.merged, pull.closed_at) {
            (true, Some(t)) => Value::from(t.to_rfc3339()),
            _ => Value::Null,
        };
        Ok(payload)
    }

    /// Moves a pull request's head to a new commit, as a push to its branch does.
    pub fn push_to_pr(&self, number: u64, head_sha: &str) -> Result<(), Error> {
        let mut state = self.shared.state();
        state.commits.insert(head_sha.to_string());
        let pull = state
            .pulls
            .get_mut(&number)
            .ok_or(Error::NoSuchPull(number))?;
        pull.head_sha = head_sha.to_string();
        pull.updated_at = Utc::now();
        Ok(())
    }

    /// Merges a pull request with merge commit `merge_sha`, which becomes the base
    /// branch's head.
    pub fn merge_pr(&self, number: u64, merge_sha: &str) -> Result<(), Error> {
        let mut state = self.shared.state();
        let pull = state
            .pulls
            .get_mut(&number)
            .ok_or(Error::NoSuchPull(number))?;
        let now = Utc::now();
        pull.state = "closed".into();
        pull.merged = true;
        pull.merge_commit_sha = Some(merge_sha.to_string());
        pull.closed_at = Some(now);
        pull.updated_at = now;
        let base = pull.base_ref.clone();
        state.commits.insert(merge_sha.to_string());
        state.branches.insert(base, merge_sha.to_string());
        Ok(())
    }

    /// Closes a pull request without merging it.
    pub fn close_pr(&self, number: u64) -> Result<(), Error> {
        let mut state = self.shared.state();
        let pull = state
            .pulls
            .get_mut(&number)
            .ok_or(Error::NoSuchPull(number))?;
        let now = Utc::now();
        pull.state = "closed".into();
        pull.closed_at = Some(now);
        pull.updated_at = now;
        Ok(())
    }

    /// A pull request as held now.
    pub fn pull(&self, number: u64) -> Option<PullRecord> {
        self.shared.state().pulls.get(&number).cloned()
    }

    /// Gives `login` a role on the repository.
    pub fn set_permission(&self, login: &str, permission: Permission) {
        self.shared
            .state()
            .permissions
            .insert(login.to_string(), permission);
    }

    /// A comment written by a person (not through the API under test); returns its id.
    pub fn add_comment_as(&self, login: &str, pr: u64, body: &str) -> Result<u64, Error> {
        let mut state = self.shared.state();
        if !state.pulls.contains_key(&pr) {
            return Err(Error::NoSuchPull(pr));
        }
        let id = state.id();
        let now = Utc::now();
        state.comments.insert(
            id,
            CommentRecord {
                id,
                issue: pr,
                body: body.to_string(),
                author: login.to_string(),
                created_at: now,
                updated_at: now,
                edits: 0,
                via_app: None,
            },
        );
        Ok(id)
    }

    /// Posts a status on `sha` as `login` (another CI system, say), outside any request.
    pub fn add_status_as(
        &self,
        login: &str,
        sha: &str,
        context: &str,
        state: &str,
        description: &str,
    ) {
        let mut held = self.shared.state();
        let id = held.id();
        held.statuses.push(StatusRecord {
            id,
            sha: sha.to_string(),
            state: state.to_string(),
            context: context.to_string(),
            description: Some(description.to_string()),
            target_url: None,
            creator: login.to_string(),
            created_at: Utc::now(),
        });
    }

    /// The statuses posted on `sha`, oldest first.
    pub fn statuses(&self, sha: &str) -> Vec<StatusRecord> {
        let state = self.shared.state();
        state
            .statuses
            .iter()
            .filter(|s| s.sha == sha)
            .cloned()
            .collect()
    }

    /// The newest status per context on `sha`, by context.
    pub fn latest_statuses(&self, sha: &str) -> std::collections::BTreeMap<String, StatusRecord> {
        let mut out = std::collections::BTreeMap::new();
        for s in self.statuses(sha) {
            out.insert(s.context.clone(), s);
        }
        out
    }

    /// The check runs on `sha`, oldest first.
    pub fn check_runs(&self, sha: &str) -> Vec<CheckRunRecord> {
        let state = self.shared.state();
        state
            .check_runs
            .values()
            .filter(|r| r.head_sha == sha)
            .cloned()
            .collect()
    }

    /// The `check_run` webhook payload GitHub sends when `sender` presses the button
    /// `identifier` of check run `id`: the run as held now, with the open pull requests of
    /// its commit. `None` for a check run that does not exist.
    pub fn check_run_requested_action_event(
        &self,
        id: u64,
        identifier: &str,
        sender: &str,
    ) -> Option<Value> {
        let state = self.shared.state();
        let run = state.check_runs.get(&id)?;
        let pulls: Vec<(u64, String, String)> = state
            .pulls
            .values()
            .filter(|p| p.state == "open" && !p.from_fork && p.head_sha == run.head_sha)
            .map(|p| (p.number, p.head_sha.clone(), p.base_sha.clone()))
            .collect();
        let site = &self.shared.site;
        let mut payload = check_run_requested_action_payload(
            &site.full_name(),
            id,
            &run.name,
            &run.head_sha,
            &pulls,
            identifier,
            sender,
        );
        payload["check_run"]["status"] = Value::from(run.status.clone());
        payload["check_run"]["conclusion"] =
            run.conclusion.clone().map_or(Value::Null, Value::from);
        payload["check_run"]["external_id"] =
            Value::from(run.external_id.clone().unwrap_or_default());
        payload["check_run"]["app"]["slug"] = Value::from(run.app.clone());
        Some(payload)
    }

    /// The comments on pull request (or issue) `pr`, oldest first.
    pub fn comments(&self, pr: u64) -> Vec<CommentRecord> {
        let state = self.shared.state();
        state
            .comments
            .values()
            .filter(|c| c.issue == pr)
            .cloned()
            .collect()
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.state().records.clone()
    }

    /// Forgets the request records.
    pub fn clear_requests(&self) {
        self.shared.state().records.clear();
    }

    /// The next `n` requests get `kind` instead of an answer.
    pub fn fail_next(&self, n: usize, kind: FaultKind) {
        self.fail_next_matching(Fault {
            remaining: n,
            kind,
            writes_only: false,
            path_prefix: None,
        });
    }

    /// Like [`GithubServer::fail_next`], only for requests the fault matches.
    pub fn fail_next_matching(&self, fault: Fault) {
        self.shared.state().faults.push(fault);
    }

    /// Every installation token issued so far expires now (401 from here on).
    pub fn expire_installation_tokens(&self) {
        let now = std::time::Instant::now();
        for principal in self.shared.state().tokens.values_mut() {
            if let state::Principal::Installation { expires, .. } = principal {
                *expires = now;
            }
        }
    }

    /// From now on every list answers with a `next` link to page 2, whatever page it
    /// served, as a misbehaving server or proxy might: a client that follows it blindly
    /// never stops.
    pub fn repeat_next_links(&self) {
        self.shared.state().looping_links = true;
    }

    /// How many installation tokens were issued.
    pub fn installation_tokens_issued(&self) -> u64 {
        self.shared.state().issued
    }
}

impl Shared {
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        // A poisoned lock is taken over: state is never left half-written across a panic
        // point that matters to tests.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}
