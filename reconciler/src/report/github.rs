//! The GitHub forge: commit statuses, check runs ([`checks`], signed in as an App), sticky
//! pull-request comments, the pull request of a commit and a user's permission, through
//! GitHub's REST API (octocrab), authenticated by a token or as a GitHub App installation,
//! paced under GitHub's secondary rate limits.
//!
//! Requests go out once: octocrab's own retries are off, because the outbox already retries
//! with backoff and an inner retry of a write would both break the pacing and risk a second
//! comment. Errors are sorted into [`ForgeError::Transient`] (with how long GitHub asked to
//! wait) and [`ForgeError::Permanent`] (with GitHub's message).

mod checks;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{self, HeaderMap, Method, StatusCode};
use octocrab::Octocrab;
use octocrab::models::{AppId, InstallationId};
use octocrab::service::middleware::retry::RetryConfig;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use thiserror::Error;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::{
    COMMENT_CHARS, CheckRun, Forge, ForgeError, Permission, Status, StatusState,
    fit_comment_within, fit_description, marker,
};

/// GitHub's public API.
pub const DEFAULT_API_URL: &str = "https://api.github.com";
/// Content-creating requests GitHub allows are about 80 a minute; one a second stays under.
pub const DEFAULT_MIN_WRITE_INTERVAL: Duration = Duration::from_secs(1);
/// Content-creating requests GitHub allows an hour (its second secondary limit); a write
/// past it is held back without being sent.
pub const DEFAULT_MAX_WRITES_PER_HOUR: usize = 500;
/// GitHub's advice for a secondary rate limit that does not say how long to wait.
const SECONDARY_LIMIT_WAIT: Duration = Duration::from_secs(60);
/// Most items GitHub returns on one page.
const PER_PAGE: usize = 100;
/// Most pages one paged read follows (5,000 items): a server that keeps saying "next", or
/// a pull request with more comments than anyone reads, costs a bounded number of requests.
const MAX_PAGES: u32 = 50;
/// Commits whose statuses are remembered; past this the memory starts over (a forgotten
/// commit costs one read).
const REMEMBERED_COMMITS: usize = 4096;
/// Remembered sticky comment ids, likewise.
const REMEMBERED_COMMENTS: usize = 4096;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// How Trainyard signs in to GitHub.
#[derive(Clone)]
pub enum GithubAuth {
    /// A personal access token (or any token GitHub takes as `Bearer`).
    Token(String),
    /// A GitHub App installation: the app's JWT is exchanged for installation tokens, which
    /// octocrab renews before they expire.
    App {
        /// The app's id.
        app_id: u64,
        /// The app's private key, PEM.
        private_key_pem: String,
        /// The installation on the followed repository's owner.
        installation_id: u64,
    },
}

impl fmt::Debug for GithubAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GithubAuth::Token(_) => f.write_str("Token(…)"),
            GithubAuth::App {
                app_id,
                installation_id,
                ..
            } => f
                .debug_struct("App")
                .field("app_id", app_id)
                .field("installation_id", installation_id)
                .finish_non_exhaustive(),
        }
    }
}

/// Where the forge reports and how.
#[derive(Debug, Clone)]
pub struct GithubConfig {
    /// The API's base: [`DEFAULT_API_URL`], or `https://HOST/api/v3` for GitHub Enterprise.
    pub api_url: String,
    /// The repository's owner.
    pub owner: String,
    /// The repository's name.
    pub repo: String,
    /// How to sign in.
    pub auth: GithubAuth,
    /// Where Trainyard's pages are reachable, such as `https://trainyard.example.com`; a
    /// status whose `target_url` is a path (`/runs/12`) links there, and without it has no link.
    pub public_url: Option<String>,
    /// The least time between two writes.
    pub min_write_interval: Duration,
    /// The most writes sent in any hour.
    pub max_writes_per_hour: usize,
    /// The `User-Agent` of every request (GitHub refuses requests without one).
    pub user_agent: String,
    /// The login the token writes as, for tokens that may not read `GET /user` (an
    /// installation token given as a token, or Actions' `GITHUB_TOKEN`:
    /// `github-actions[bot]`). Without it, a token's login comes from `GET /user` and an
    /// App's from `GET /app`.
    pub login: Option<String>,
}

impl GithubConfig {
    /// A configuration for `owner/repo` on github.com with default pacing and no public URL.
    pub fn new(owner: &str, repo: &str, auth: GithubAuth) -> GithubConfig {
        GithubConfig {
            api_url: DEFAULT_API_URL.to_owned(),
            owner: owner.to_owned(),
            repo: repo.to_owned(),
            auth,
            public_url: None,
            min_write_interval: DEFAULT_MIN_WRITE_INTERVAL,
            max_writes_per_hour: DEFAULT_MAX_WRITES_PER_HOUR,
            user_agent: crate::user_agent(&format!("{owner}/{repo}")),
            login: None,
        }
    }
}

/// Why a GitHub forge could not be built.
#[derive(Debug, Error)]
pub enum Error {
    /// The owner or repository name is not one GitHub allows.
    #[error("{0:?} is not a GitHub owner or repository name")]
    Name(String),
    /// The API URL does not parse.
    #[error("the GitHub API URL {url:?} is not usable: {message}")]
    ApiUrl {
        /// The URL given.
        url: String,
        /// Why.
        message: String,
    },
    /// The app's private key is not an RSA key in PEM form.
    #[error("the GitHub App private key is not an RSA private key in PEM form: {0}")]
    PrivateKey(String),
    /// octocrab refused the configuration.
    #[error("cannot build the GitHub client: {0}")]
    Client(String),
}

/// A status as GitHub holds it, to skip writing the same one again.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Posted {
    state: StatusState,
    description: String,
    target_url: Option<String>,
}

/// The GitHub forge, one per followed repository; clones share its clients, pacing and memory.
#[derive(Clone)]
pub struct GithubForge {
    inner: Arc<Inner>,
}

/// What a [`GithubForge`] holds.
struct Inner {
    /// Signed in as the token or the app installation.
    api: Octocrab,
    /// Signed in as the app itself (its JWT), to learn the app's bot login.
    app: Option<Octocrab>,
    /// The App's id, when signed in as one: only Apps write check runs.
    app_id: Option<u64>,
    owner: String,
    repo: String,
    public_url: Option<String>,
    min_write_interval: Duration,
    max_writes_per_hour: usize,
    /// When the writes of the last hour started; held across a write so writes go out one
    /// at a time.
    writes: tokio::sync::Mutex<VecDeque<Instant>>,
    /// Per commit (present once its statuses were read), the latest status per context.
    statuses: Mutex<HashMap<String, HashMap<String, Posted>>>,
    /// The id of the sticky comment per (pull request, key).
    comments: Mutex<HashMap<(u64, String), u64>>,
    /// The check run Trainyard last wrote per (commit, name).
    checks: Mutex<HashMap<(String, String), checks::Held>>,
    /// The login comments are written under.
    login: OnceCell<String>,
    /// Whether the last answer was 401: the first one may be an expired token, the second is not.
    unauthorized: AtomicBool,
}

impl fmt::Debug for GithubForge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GithubForge")
            .field("owner", &self.inner.owner)
            .field("repo", &self.inner.repo)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Account {
    login: String,
}

#[derive(Deserialize)]
struct App {
    slug: String,
}

/// `GET /repos/{owner}/{repo}/commits/{ref}/status`: the latest status of each context.
#[derive(Deserialize)]
struct CombinedStatus {
    statuses: Vec<CommitStatus>,
    /// Contexts in all, over every page.
    total_count: usize,
}

#[derive(Deserialize)]
struct CommitStatus {
    state: StatusState,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    target_url: Option<String>,
    context: String,
}

#[derive(Deserialize)]
struct Comment {
    id: u64,
    #[serde(default)]
    body: Option<String>,
    user: Option<Account>,
}

#[derive(Deserialize)]
struct PullHead {
    sha: String,
}

#[derive(Deserialize)]
struct Pull {
    number: u64,
    state: String,
    head: PullHead,
    #[serde(default)]
    merge_commit_sha: Option<String>,
    #[serde(default)]
    merged_at: Option<String>,
}

#[derive(Deserialize)]
struct CollaboratorPermission {
    permission: String,
    #[serde(default)]
    role_name: Option<String>,
}

/// A request's answer: status, headers and body text.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl GithubForge {
    /// A forge for `config`; must be called inside a Tokio runtime (octocrab starts its
    /// client's worker task here).
    pub fn new(config: GithubConfig) -> Result<GithubForge, Error> {
        for name in [&config.owner, &config.repo] {
            let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
            if name.is_empty() || name == "." || name == ".." || !name.chars().all(allowed) {
                return Err(Error::Name(name.clone()));
            }
        }
        let api_url = config.api_url.trim_end_matches('/').to_owned();
        let builder = || -> Result<_, Error> {
            Octocrab::builder()
                .base_uri(api_url.as_str())
                .map_err(|e| Error::ApiUrl {
                    url: config.api_url.clone(),
                    message: e.to_string(),
                })
                .map(|b| {
                    // Sent after octocrab's own `User-Agent: octocrab`, which it always
                    // adds; replacing it would mean building octocrab's HTTP stack here.
                    b.add_header(http::header::USER_AGENT, config.user_agent.clone())
                        .add_retry_config(RetryConfig::None)
                        .set_connect_timeout(Some(CONNECT_TIMEOUT))
                        .set_read_timeout(Some(IO_TIMEOUT))
                        .set_write_timeout(Some(IO_TIMEOUT))
                })
        };
        let app_id = match &config.auth {
            GithubAuth::App { app_id, .. } => Some(*app_id),
            GithubAuth::Token(_) => None,
        };
        let (api, app) = match &config.auth {
            GithubAuth::Token(token) => {
                let api = builder()?
                    .personal_token(token.trim().to_owned())
                    .build()
                    .map_err(|e| Error::Client(e.to_string()))?;
                (api, None)
            }
            GithubAuth::App {
                app_id,
                private_key_pem,
                installation_id,
            } => {
                let app = builder()?
                    .app_from_rsa_pem(AppId(*app_id), private_key_pem.as_bytes())
                    .map_err(|e| Error::PrivateKey(e.to_string()))?
                    .build()
                    .map_err(|e| Error::Client(e.to_string()))?;
                let api = app
                    .installation(InstallationId(*installation_id))
                    .map_err(|e| Error::Client(e.to_string()))?;
                (api, Some(app))
            }
        };
        Ok(GithubForge {
            inner: Arc::new(Inner {
                api,
                app,
                app_id,
                owner: config.owner,
                repo: config.repo,
                public_url: config
                    .public_url
                    .map(|url| url.trim_end_matches('/').to_owned()),
                min_write_interval: config.min_write_interval,
                max_writes_per_hour: config.max_writes_per_hour.max(1),
                writes: tokio::sync::Mutex::new(VecDeque::new()),
                statuses: Mutex::new(HashMap::new()),
                comments: Mutex::new(HashMap::new()),
                checks: Mutex::new(HashMap::new()),
                login: OnceCell::new_with(config.login),
                unauthorized: AtomicBool::new(false),
            }),
        })
    }

    /// The repository as `owner/name`.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.inner.owner, self.inner.repo)
    }
}

impl Forge for GithubForge {
    async fn set_status(&self, status: &Status) -> Result<(), ForgeError> {
        self.inner.set_status(status).await
    }

    async fn upsert_comment(&self, pr: u64, key: &str, body: &str) -> Result<(), ForgeError> {
        self.inner.upsert_comment(pr, key, body).await
    }

    async fn pull_request_of(&self, commit: &str) -> Result<Option<u64>, ForgeError> {
        self.inner.pull_request_of(commit).await
    }

    async fn permission_of(&self, user: &str) -> Result<Permission, ForgeError> {
        self.inner.permission_of(user).await
    }

    fn has_check_runs(&self) -> bool {
        self.inner.app_id.is_some()
    }

    async fn upsert_check_run(&self, check: &CheckRun) -> Result<(), ForgeError> {
        self.inner.upsert_check_run(check).await
    }
}

impl Inner {
    fn repo_path(&self, rest: &str) -> String {
        format!("/repos/{}/{}/{rest}", self.owner, self.repo)
    }

    /// The link GitHub shows for a status: absolute URLs as they are, paths under the public
    /// URL, nothing when there is no public URL to put a path under.
    fn link(&self, target_url: Option<&str>) -> Option<String> {
        let url = target_url?;
        if url.starts_with("http://") || url.starts_with("https://") {
            return Some(url.to_owned());
        }
        let base = self.public_url.as_ref()?;
        Some(format!("{base}/{}", url.trim_start_matches('/')))
    }

    /// Sends one request on `client` and reads the answer, sorting failures into forge errors.
    async fn send(
        &self,
        client: &Octocrab,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Answer, ForgeError> {
        let what = format!("{method} {path}");
        let sent = match method {
            Method::POST => client._post(path, body).await,
            Method::PATCH => client._patch(path, body).await,
            _ => client._get(path).await,
        };
        let response = sent.map_err(|e| self.client_error(&what, e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = client
            .body_to_string(response)
            .await
            .map_err(|e| self.client_error(&what, e))?;
        let answer = Answer {
            status,
            headers,
            body,
        };
        if status.is_success() {
            self.unauthorized.store(false, Ordering::Relaxed);
            return Ok(answer);
        }
        Err(self.refused(&what, &answer))
    }

    /// Sends a write: after the previous one by at least the write interval, one at a time.
    async fn write(
        &self,
        method: Method,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<Answer, ForgeError> {
        const HOUR: Duration = Duration::from_secs(3600);
        let mut writes = self.writes.lock().await;
        if let Some(previous) = writes.back() {
            tokio::time::sleep_until(*previous + self.min_write_interval).await;
        }
        let now = Instant::now();
        while writes
            .front()
            .is_some_and(|t| now.duration_since(*t) >= HOUR)
        {
            writes.pop_front();
        }
        if writes.len() >= self.max_writes_per_hour
            && let Some(oldest) = writes.front()
        {
            return Err(ForgeError::Transient {
                message: format!(
                    "holding writes back: {} went out in the last hour, GitHub's limit for \
                     content-creating requests",
                    writes.len()
                ),
                retry_after: Some(HOUR.saturating_sub(now.duration_since(*oldest))),
            });
        }
        writes.push_back(now);
        self.send(&self.api, method, path, Some(body)).await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<(T, HeaderMap), ForgeError> {
        let answer = self.send(&self.api, Method::GET, path, None).await?;
        let value = decode(&format!("GET {path}"), &answer.body)?;
        Ok((value, answer.headers))
    }

    /// A GitHub error answer as a forge error.
    fn refused(&self, what: &str, answer: &Answer) -> ForgeError {
        let message = format!(
            "GitHub answered {} to {what}: {}",
            answer.status.as_u16(),
            github_message(&answer.body)
        );
        if answer.status == StatusCode::UNAUTHORIZED {
            // An installation token can expire between octocrab's check and GitHub's; once is
            // worth another try, twice in a row is a bad credential.
            return if self.unauthorized.swap(true, Ordering::Relaxed) {
                ForgeError::Permanent { message }
            } else {
                ForgeError::Transient {
                    message,
                    retry_after: None,
                }
            };
        }
        self.unauthorized.store(false, Ordering::Relaxed);
        classify(answer.status, &answer.headers, &answer.body, message)
    }

    /// A failure before GitHub answered (or while getting an installation token).
    fn client_error(&self, what: &str, error: octocrab::Error) -> ForgeError {
        match error {
            octocrab::Error::GitHub { source, .. } => {
                let answer = Answer {
                    status: source.status_code,
                    headers: source.headers.clone().unwrap_or_default(),
                    body: serde_json::json!({ "message": source.message }).to_string(),
                };
                self.refused(&format!("{what} (signing in)"), &answer)
            }
            octocrab::Error::JWT { source, .. } => ForgeError::Permanent {
                message: format!("{what}: cannot sign as the GitHub App: {source}"),
            },
            other => ForgeError::Transient {
                message: format!("{what}: {}", error_chain(&other)),
                retry_after: None,
            },
        }
    }

    /// Reads the latest status per context of `commit` once, unless already known.
    async fn known_statuses(&self, commit: &str) -> Result<(), ForgeError> {
        if self.lock_statuses().contains_key(commit) {
            return Ok(());
        }
        // The combined status holds one (the latest) status per context, however many
        // statuses the commit has; its contexts are paged.
        let mut latest: HashMap<String, Posted> = HashMap::new();
        let mut page = 1;
        loop {
            let path = self.repo_path(&format!(
                "commits/{commit}/status?per_page={PER_PAGE}&page={page}"
            ));
            let (combined, headers) = self.get::<CombinedStatus>(&path).await?;
            let count = combined.statuses.len();
            for status in combined.statuses {
                latest.entry(status.context).or_insert(Posted {
                    state: status.state,
                    description: status.description.unwrap_or_default(),
                    target_url: status.target_url,
                });
            }
            if count == 0 || latest.len() >= combined.total_count {
                break;
            }
            match next_page(&headers, page) {
                Some(next) => page = next,
                None => {
                    tracing::warn!(
                        commit,
                        read = latest.len(),
                        total = combined.total_count,
                        "stopped reading a commit's statuses before the last context"
                    );
                    break;
                }
            }
        }
        let mut statuses = self.lock_statuses();
        if statuses.len() >= REMEMBERED_COMMITS {
            statuses.clear();
        }
        statuses.entry(commit.to_owned()).or_insert(latest);
        Ok(())
    }

    fn lock_statuses(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<String, Posted>>> {
        self.statuses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_comments(&self) -> std::sync::MutexGuard<'_, HashMap<(u64, String), u64>> {
        self.comments
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The login Trainyard's comments carry: the token's user, or the app's bot.
    async fn own_login(&self) -> Result<&str, ForgeError> {
        let login = self
            .login
            .get_or_try_init(|| async {
                match &self.app {
                    Some(app) => {
                        let answer = self.send(app, Method::GET, "/app", None).await?;
                        let app: App = decode("GET /app", &answer.body)?;
                        Ok::<_, ForgeError>(format!("{}[bot]", app.slug))
                    }
                    None => match self.get::<Account>("/user").await {
                        Ok((account, _)) => Ok(account.login),
                        // GitHub refuses `GET /user` to installation and Actions tokens.
                        Err(ForgeError::Permanent { message }) => Err(ForgeError::Permanent {
                            message: format!(
                                "{message}; this token cannot say whose it is, so give the \
                                 login its comments carry with --github-login (Actions' \
                                 GITHUB_TOKEN writes as github-actions[bot])"
                            ),
                        }),
                        Err(error) => Err(error),
                    },
                }
            })
            .await?;
        Ok(login.as_str())
    }

    /// The id of Trainyard's comment marked `key` on `pr`, looking through every page.
    async fn find_comment(&self, pr: u64, key: &str) -> Result<Option<u64>, ForgeError> {
        let login = self.own_login().await?.to_owned();
        let mark = marker(key);
        let mut page = 1;
        loop {
            let path = self.repo_path(&format!(
                "issues/{pr}/comments?per_page={PER_PAGE}&page={page}"
            ));
            let (comments, headers) = self.get::<Vec<Comment>>(&path).await?;
            let count = comments.len();
            let found = comments.into_iter().find(|c| {
                c.user.as_ref().is_some_and(|u| u.login == login)
                    && c.body.as_deref().is_some_and(|b| b.contains(&mark))
            });
            if let Some(comment) = found {
                return Ok(Some(comment.id));
            }
            if count == 0 {
                return Ok(None);
            }
            match next_page(&headers, page) {
                Some(next) => page = next,
                None => return Ok(None),
            }
        }
    }

    fn remember_comment(&self, pr: u64, key: &str, id: u64) {
        let mut comments = self.lock_comments();
        if comments.len() >= REMEMBERED_COMMENTS {
            comments.clear();
        }
        comments.insert((pr, key.to_owned()), id);
    }

    async fn set_status(&self, status: &Status) -> Result<(), ForgeError> {
        let commit = commit_id(&status.commit)?;
        let posted = Posted {
            state: status.state,
            description: fit_description(&status.description),
            target_url: self.link(status.target_url.as_deref()),
        };
        self.known_statuses(commit).await?;
        let held = self
            .lock_statuses()
            .get(commit)
            .and_then(|contexts| contexts.get(&status.context))
            .cloned();
        if held.as_ref() == Some(&posted) {
            return Ok(());
        }
        let mut body = serde_json::json!({
            "state": posted.state.as_str(),
            "description": posted.description,
            "context": status.context,
        });
        if let Some(url) = &posted.target_url {
            body["target_url"] = serde_json::Value::String(url.clone());
        }
        let path = self.repo_path(&format!("statuses/{commit}"));
        self.write(Method::POST, &path, &body).await?;
        let mut statuses = self.lock_statuses();
        if let Some(contexts) = statuses.get_mut(commit) {
            contexts.insert(status.context.clone(), posted);
        }
        Ok(())
    }

    async fn upsert_comment(&self, pr: u64, key: &str, body: &str) -> Result<(), ForgeError> {
        let text = sticky_body(key, body);
        let payload = serde_json::json!({ "body": text });
        let remembered = self.lock_comments().get(&(pr, key.to_owned())).copied();
        let existing = match remembered {
            Some(id) => Some(id),
            None => self.find_comment(pr, key).await?,
        };
        if let Some(id) = existing {
            let path = self.repo_path(&format!("issues/comments/{id}"));
            match self.write(Method::PATCH, &path, &payload).await {
                Ok(_) => {
                    self.remember_comment(pr, key, id);
                    return Ok(());
                }
                // Deleted by someone since: write a new one below.
                Err(ForgeError::Permanent { message })
                    if message.starts_with("GitHub answered 404") && remembered.is_some() =>
                {
                    self.lock_comments().remove(&(pr, key.to_owned()));
                    if let Some(id) = self.find_comment(pr, key).await? {
                        let path = self.repo_path(&format!("issues/comments/{id}"));
                        self.write(Method::PATCH, &path, &payload).await?;
                        self.remember_comment(pr, key, id);
                        return Ok(());
                    }
                }
                Err(e) => return Err(e),
            }
        }
        let path = self.repo_path(&format!("issues/{pr}/comments"));
        let answer = self.write(Method::POST, &path, &payload).await?;
        let created: Comment = decode(&format!("POST {path}"), &answer.body)?;
        self.remember_comment(pr, key, created.id);
        Ok(())
    }

    async fn pull_request_of(&self, commit: &str) -> Result<Option<u64>, ForgeError> {
        let commit = commit_id(commit)?;
        let path = self.repo_path(&format!("commits/{commit}/pulls?per_page={PER_PAGE}"));
        let (pulls, _) = self.get::<Vec<Pull>>(&path).await?;
        let open = pulls
            .iter()
            .find(|p| p.state == "open" && p.head.sha.eq_ignore_ascii_case(commit));
        let merged = || {
            pulls.iter().find(|p| {
                p.merged_at.is_some()
                    && p.merge_commit_sha
                        .as_deref()
                        .is_some_and(|sha| sha.eq_ignore_ascii_case(commit))
            })
        };
        Ok(open.or_else(merged).map(|p| p.number))
    }

    async fn permission_of(&self, user: &str) -> Result<Permission, ForgeError> {
        let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_');
        let login = user.strip_suffix("[bot]").unwrap_or(user);
        if login.is_empty() || !login.chars().all(valid) {
            return Ok(Permission::None);
        }
        let user = user.replace('[', "%5B").replace(']', "%5D");
        let path = self.repo_path(&format!("collaborators/{user}/permission"));
        match self.get::<CollaboratorPermission>(&path).await {
            Ok((answer, _)) => Ok(permission(&answer)),
            // Not a user GitHub knows in this repository; denying is the safe answer.
            Err(ForgeError::Permanent { message })
                if message.starts_with("GitHub answered 404") =>
            {
                Ok(Permission::None)
            }
            Err(e) => Err(e),
        }
    }
}

/// The sticky comment's text: the marker on the first line, then the body, all within
/// GitHub's limit. A body that already starts with the marker keeps it as is.
pub fn sticky_body(key: &str, body: &str) -> String {
    let mark = marker(key);
    if body.starts_with(&mark) {
        return fit_comment_within(body, COMMENT_CHARS);
    }
    let room = COMMENT_CHARS - mark.chars().count() - 1;
    format!("{mark}\n{}", fit_comment_within(body, room))
}

/// Maps GitHub's answer for a collaborator to a permission; `role_name` tells maintainers
/// and triagers apart where `permission` folds them into write and read.
fn permission(answer: &CollaboratorPermission) -> Permission {
    let named = |name: &str| match name {
        "admin" => Some(Permission::Admin),
        "maintain" => Some(Permission::Maintain),
        "write" | "push" => Some(Permission::Write),
        "triage" => Some(Permission::Triage),
        "read" | "pull" => Some(Permission::Read),
        "none" => Some(Permission::None),
        _ => None,
    };
    answer
        .role_name
        .as_deref()
        .and_then(named)
        .or_else(|| named(&answer.permission))
        .unwrap_or(Permission::None)
}

/// `commit` if it is a full commit id: an abbreviation could name another commit later.
fn commit_id(commit: &str) -> Result<&str, ForgeError> {
    if matches!(commit.len(), 40 | 64) && commit.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(commit)
    } else {
        Err(ForgeError::Permanent {
            message: format!("{commit:?} is not a full commit id"),
        })
    }
}

/// Sorts a GitHub error answer: rate limits and server errors pass, the rest will fail the
/// same way again.
fn classify(status: StatusCode, headers: &HeaderMap, body: &str, message: String) -> ForgeError {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let retry_after = header("retry-after").map(Duration::from_secs);
    let limited = status == StatusCode::FORBIDDEN || status == StatusCode::TOO_MANY_REQUESTS;
    if limited {
        if retry_after.is_some() {
            return ForgeError::Transient {
                message,
                retry_after,
            };
        }
        if header("x-ratelimit-remaining") == Some(0)
            && let Some(reset) = header("x-ratelimit-reset")
        {
            let now = chrono::Utc::now().timestamp().max(0) as u64;
            let wait = Duration::from_secs(reset.saturating_sub(now).max(1));
            return ForgeError::Transient {
                message,
                retry_after: Some(wait),
            };
        }
        let secondary = github_message(body)
            .to_ascii_lowercase()
            .contains("secondary rate limit");
        if status == StatusCode::TOO_MANY_REQUESTS || secondary {
            return ForgeError::Transient {
                message,
                retry_after: Some(SECONDARY_LIMIT_WAIT),
            };
        }
        return ForgeError::Permanent { message };
    }
    if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
        return ForgeError::Transient {
            message,
            retry_after,
        };
    }
    ForgeError::Permanent { message }
}

/// GitHub's `message`, with the field errors of a 422 when it gives them.
fn github_message(body: &str) -> String {
    #[derive(Deserialize)]
    struct Problem {
        message: String,
        #[serde(default)]
        errors: Vec<serde_json::Value>,
    }
    match serde_json::from_str::<Problem>(body) {
        Ok(problem) => {
            let details: Vec<String> = problem
                .errors
                .iter()
                .map(|e| match e {
                    serde_json::Value::String(s) => s.clone(),
                    other => other
                        .get("message")
                        .and_then(serde_json::Value::as_str)
                        .map(str::to_owned)
                        .unwrap_or_else(|| other.to_string()),
                })
                .collect();
            if details.is_empty() {
                problem.message
            } else {
                format!("{} ({})", problem.message, details.join("; "))
            }
        }
        Err(_) => body.chars().take(200).collect(),
    }
}

fn decode<T: DeserializeOwned>(what: &str, body: &str) -> Result<T, ForgeError> {
    serde_json::from_str(body).map_err(|e| ForgeError::Permanent {
        message: format!("{what}: GitHub's answer did not read as expected: {e}"),
    })
}

/// Whether a `Link` header points to a next page.
/// The page to read after `page`: the one the `Link` header's `rel="next"` names, only when
/// it is `page + 1` and within [`MAX_PAGES`]. A missing link ends the read; so does a link
/// that repeats a page or jumps (a server in a loop), and so does the cap.
fn next_page(headers: &HeaderMap, page: u32) -> Option<u32> {
    let next = headers
        .get_all(http::header::LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find(|link| link.contains("rel=\"next\""))?;
    let url = next
        .split(';')
        .next()?
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>');
    let (_, query) = url.split_once('?')?;
    let named = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("page="))?
        .parse::<u32>()
        .ok()?;
    let wanted = page.checked_add(1)?;
    (named == wanted && wanted <= MAX_PAGES).then_some(wanted)
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::has_marker;

    fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().expect("header value"));
        }
        map
    }

    fn sort(status: u16, pairs: &[(&'static str, String)], body: &str) -> ForgeError {
        let status = StatusCode::from_u16(status).expect("status code");
        classify(status, &headers(pairs), body, "m".to_owned())
    }

    #[test]
    fn a_secondary_limit_with_retry_after_is_transient_for_that_long() {
        let body = r#"{"message":"You have exceeded a secondary rate limit."}"#;
        let err = sort(403, &[("retry-after", "42".to_owned())], body);
        assert_eq!(
            err,
            ForgeError::Transient {
                message: "m".to_owned(),
                retry_after: Some(Duration::from_secs(42))
            }
        );
        let err = sort(403, &[], body);
        assert!(matches!(
            err,
            ForgeError::Transient { retry_after: Some(wait), .. } if wait == SECONDARY_LIMIT_WAIT
        ));
    }

    #[test]
    fn an_exhausted_primary_limit_waits_until_the_reset() {
        let reset = chrono::Utc::now().timestamp() + 120;
        let err = sort(
            403,
            &[
                ("x-ratelimit-remaining", "0".to_owned()),
                ("x-ratelimit-reset", reset.to_string()),
            ],
            r#"{"message":"API rate limit exceeded"}"#,
        );
        let ForgeError::Transient {
            retry_after: Some(wait),
            ..
        } = err
        else {
            panic!("transient with a wait: {err:?}");
        };
        assert!((118..=120).contains(&wait.as_secs()), "{wait:?}");
    }

    #[test]
    fn a_plain_forbidden_not_found_or_invalid_request_is_permanent() {
        for status in [403, 404, 422] {
            let err = sort(status, &[], r#"{"message":"Not allowed"}"#);
            assert!(matches!(err, ForgeError::Permanent { .. }), "{status}");
        }
    }

    #[test]
    fn server_errors_and_too_many_requests_are_transient() {
        for status in [500, 502, 503, 504, 429] {
            let err = sort(status, &[], "<html>bad gateway</html>");
            assert!(matches!(err, ForgeError::Transient { .. }), "{status}");
        }
    }

    #[test]
    fn githubs_message_includes_the_field_errors_of_a_validation_failure() {
        let body = r#"{"message":"Validation Failed","errors":[{"resource":"Status","code":"custom","field":"description","message":"description is too long (maximum is 140 characters)"}]}"#;
        assert_eq!(
            github_message(body),
            "Validation Failed (description is too long (maximum is 140 characters))"
        );
        assert_eq!(
            github_message(r#"{"message":"No commit found for SHA: abc"}"#),
            "No commit found for SHA: abc"
        );
        assert_eq!(github_message("not json"), "not json");
    }

    #[test]
    fn permissions_read_the_role_name_before_the_folded_permission() {
        let of = |permission: &str, role: Option<&str>| {
            super::permission(&CollaboratorPermission {
                permission: permission.to_owned(),
                role_name: role.map(str::to_owned),
            })
        };
        assert_eq!(of("write", Some("maintain")), Permission::Maintain);
        assert_eq!(of("read", Some("triage")), Permission::Triage);
        assert_eq!(of("admin", Some("admin")), Permission::Admin);
        assert_eq!(of("write", Some("custom-deployer")), Permission::Write);
        assert_eq!(of("none", None), Permission::None);
        assert_eq!(of("something-new", None), Permission::None);
    }

    #[test]
    fn a_sticky_body_starts_with_its_marker_and_stays_within_githubs_limit() {
        let short = sticky_body("plan", "## Plan\nno changes");
        assert_eq!(short, "<!-- trainyard:plan -->\n## Plan\nno changes");
        assert_eq!(sticky_body("plan", &short), short, "not marked twice");

        let long = sticky_body("run-12", &"x".repeat(70_000));
        assert!(long.starts_with("<!-- trainyard:run-12 -->\n"));
        assert!(has_marker(&long, "run-12"));
        // The cut leaves room for a closing fence, unused here.
        let kept = long.chars().count();
        assert!(
            (COMMENT_CHARS - 4..=COMMENT_CHARS).contains(&kept),
            "{kept}"
        );
        assert!(
            long.contains("it was 70000 characters long"),
            "{}",
            &long[long.len() - 200..]
        );
    }

    #[test]
    fn only_a_next_link_to_the_following_page_is_followed() {
        let link = |value: &str| headers(&[("link", value.to_owned())]);
        let next = link(
            "<https://api.github.com/x?per_page=100&page=2>; rel=\"next\", \
             <https://api.github.com/x?per_page=100&page=5>; rel=\"last\"",
        );
        assert_eq!(next_page(&next, 1), Some(2));
        let last = link(
            "<https://api.github.com/x?page=1>; rel=\"first\", \
             <https://api.github.com/x?page=4>; rel=\"prev\"",
        );
        assert_eq!(next_page(&last, 5), None);
        assert_eq!(next_page(&HeaderMap::new(), 1), None);
        // A server that repeats the link it just gave, or jumps, is not followed.
        let again = link("<https://api.github.com/x?page=2>; rel=\"next\"");
        assert_eq!(next_page(&again, 2), None);
        assert_eq!(next_page(&again, 0), None);
        // However honest the server, the read stops at the cap.
        let far = link(&format!(
            "<https://api.github.com/x?page={}>; rel=\"next\"",
            MAX_PAGES + 1
        ));
        assert_eq!(next_page(&far, MAX_PAGES), None);
    }

    #[tokio::test]
    async fn status_links_that_are_paths_go_under_the_public_url_or_nowhere() {
        let mut config = GithubConfig::new("acme", "ml", GithubAuth::Token("t".to_owned()));
        let without = GithubForge::new(config.clone()).expect("forge");
        assert_eq!(without.inner.link(Some("/runs/12")), None);
        assert_eq!(
            without
                .inner
                .link(Some("https://ci.example.com/x"))
                .as_deref(),
            Some("https://ci.example.com/x")
        );
        config.public_url = Some("https://trainyard.example.com/".to_owned());
        let with = GithubForge::new(config).expect("forge");
        assert_eq!(
            with.inner.link(Some("/runs/12")).as_deref(),
            Some("https://trainyard.example.com/runs/12")
        );
        assert_eq!(with.inner.link(None), None);
    }

    #[tokio::test]
    async fn names_github_would_not_take_are_refused_when_building() {
        for (owner, repo) in [("acme", "a/b"), ("", "ml"), ("acme", ".."), ("ac me", "ml")] {
            let config = GithubConfig::new(owner, repo, GithubAuth::Token("t".to_owned()));
            assert!(
                matches!(GithubForge::new(config), Err(Error::Name(_))),
                "{owner}/{repo}"
            );
        }
        let mut app = GithubConfig::new(
            "acme",
            "ml",
            GithubAuth::App {
                app_id: 1,
                private_key_pem: "not a key".to_owned(),
                installation_id: 2,
            },
        );
        assert!(matches!(
            GithubForge::new(app.clone()),
            Err(Error::PrivateKey(_))
        ));
        app.auth = GithubAuth::Token("t".to_owned());
        app.api_url = "not a url with spaces".to_owned();
        assert!(matches!(GithubForge::new(app), Err(Error::ApiUrl { .. })));
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let token = format!("{:?}", GithubAuth::Token("ghp_secret".to_owned()));
        assert!(!token.contains("ghp_secret"), "{token}");
        let app = format!(
            "{:?}",
            GithubAuth::App {
                app_id: 7,
                private_key_pem: "-----BEGIN RSA PRIVATE KEY-----".to_owned(),
                installation_id: 9,
            }
        );
        assert!(!app.contains("PRIVATE"), "{app}");
        assert!(app.contains('7') && app.contains('9'), "{app}");
    }

    mod against_the_stand_in {
        use std::sync::Arc;

        use trainyard_testkit::github::{
            FaultKind, GithubServer, Permission as Role, TEST_APP_KEY, TokenKind,
        };

        use super::*;
        use crate::report::suite::{Fixture, ForgeProbe, forge_suite};

        const TOKEN: &str = "ghp_trainyard";
        const LOGIN: &str = "trainyard-ci";
        const HEAD: &str = "1111111111111111111111111111111111111111";
        const OTHER: &str = "2222222222222222222222222222222222222222";
        const MERGE: &str = "3333333333333333333333333333333333333333";

        /// The forge with the stand-in it talks to, which shows what GitHub holds.
        struct Probed {
            forge: GithubForge,
            server: Arc<GithubServer>,
        }

        impl Forge for Probed {
            async fn set_status(&self, status: &Status) -> Result<(), ForgeError> {
                self.forge.set_status(status).await
            }

            async fn upsert_comment(
                &self,
                pr: u64,
                key: &str,
                body: &str,
            ) -> Result<(), ForgeError> {
                self.forge.upsert_comment(pr, key, body).await
            }

            async fn pull_request_of(&self, commit: &str) -> Result<Option<u64>, ForgeError> {
                self.forge.pull_request_of(commit).await
            }

            async fn permission_of(&self, user: &str) -> Result<Permission, ForgeError> {
                self.forge.permission_of(user).await
            }
        }

        impl ForgeProbe for Probed {
            fn statuses(&self, commit: &str) -> Vec<Status> {
                self.server
                    .latest_statuses(commit)
                    .into_values()
                    .map(|held| Status {
                        commit: commit.to_owned(),
                        context: held.context,
                        state: serde_json::from_value(serde_json::Value::String(held.state))
                            .expect("GitHub's states"),
                        description: held.description.unwrap_or_default(),
                        target_url: held.target_url,
                    })
                    .collect()
            }

            /// Writes GitHub accepted.
            fn writes(&self) -> usize {
                accepted_writes(&self.server)
            }
        }

        fn accepted_writes(server: &GithubServer) -> usize {
            server
                .requests()
                .iter()
                .filter(|r| matches!(r.method.as_str(), "POST" | "PATCH"))
                .filter(|r| r.path.starts_with("/repos/"))
                .filter(|r| (200..300).contains(&r.status))
                .count()
        }

        async fn server() -> Arc<GithubServer> {
            let server = GithubServer::builder()
                .repo("acme", "models")
                .token(TOKEN, LOGIN)
                .start()
                .await
                .expect("the stand-in starts");
            server.add_commit(HEAD);
            server.add_commit(OTHER);
            Arc::new(server)
        }

        fn config(server: &GithubServer, interval: Duration) -> GithubConfig {
            let mut config =
                GithubConfig::new("acme", "models", GithubAuth::Token(TOKEN.to_owned()));
            config.api_url = server.url();
            config.min_write_interval = interval;
            config
        }

        fn forge(server: &GithubServer) -> GithubForge {
            GithubForge::new(config(server, Duration::from_millis(5))).expect("forge")
        }

        async fn github_fixture() -> Fixture<Probed> {
            let server = server().await;
            Fixture {
                forge: Probed {
                    forge: forge(&server),
                    server: server.clone(),
                },
                commit: HEAD.to_owned(),
                other_commit: OTHER.to_owned(),
                unknown_commit: "0123456789abcdef0123456789abcdef01234567".to_owned(),
                _keep: Box::new(server),
            }
        }

        forge_suite!(github_fixture);

        fn status(context: &str, state: StatusState, description: &str) -> Status {
            Status {
                commit: HEAD.to_owned(),
                context: context.to_owned(),
                state,
                description: description.to_owned(),
                target_url: None,
            }
        }

        #[tokio::test]
        async fn a_status_github_already_shows_is_not_posted_again_after_a_restart() {
            let server = server().await;
            let s = status("trainyard/validate", StatusState::Success, "ok");
            forge(&server).set_status(&s).await.expect("set");
            let restarted = forge(&server);
            restarted.set_status(&s).await.expect("set again");
            assert_eq!(server.statuses(HEAD).len(), 1);
            assert_eq!(accepted_writes(&server), 1);
        }

        #[tokio::test]
        async fn a_status_among_more_than_a_hundred_contexts_is_not_posted_again() {
            let server = server().await;
            let ours = status("trainyard/validate", StatusState::Success, "ok");
            forge(&server).set_status(&ours).await.expect("set");
            // Other systems post 129 contexts after it: ours is now the oldest, on the
            // second page of the combined status.
            for n in 0..129 {
                server.add_status_as("ci-bot", HEAD, &format!("ci/{n:03}"), "success", "ok");
            }
            server.clear_requests();
            let restarted = forge(&server);
            restarted.set_status(&ours).await.expect("set again");
            assert_eq!(server.statuses(HEAD).len(), 130);
            let reads = server
                .requests()
                .into_iter()
                .filter(|r| r.method == "GET" && r.path.ends_with("/status"))
                .count();
            assert_eq!(reads, 2, "two pages of the combined status");
        }

        #[tokio::test]
        async fn a_server_that_repeats_its_next_link_is_read_a_bounded_number_of_times() {
            let server = server().await;
            server.open_pr(7, HEAD).open().expect("pr");
            for n in 0..250 {
                server
                    .add_comment_as("someone", 7, &format!("comment {n}"))
                    .expect("comment");
            }
            server.repeat_next_links();
            forge(&server)
                .upsert_comment(7, "plan", "## Plan")
                .await
                .expect("posted");
            let listed = server
                .requests()
                .into_iter()
                .filter(|r| r.method == "GET" && r.path.ends_with("/comments"))
                .count();
            assert_eq!(listed, 2, "the repeated link is not followed");
        }

        #[tokio::test]
        async fn a_sticky_comment_is_edited_in_place_even_by_a_restarted_forge() {
            let server = server().await;
            server.open_pr(7, HEAD).open().expect("pr");
            let first = forge(&server);
            first
                .upsert_comment(7, "plan", "## Plan\none")
                .await
                .expect("created");
            first
                .upsert_comment(7, "plan", "## Plan\ntwo")
                .await
                .expect("edited");
            forge(&server)
                .upsert_comment(7, "plan", "## Plan\nthree")
                .await
                .expect("edited after a restart");
            let comments = server.comments(7);
            assert_eq!(comments.len(), 1, "{comments:?}");
            assert_eq!(comments[0].author, LOGIN);
            assert_eq!(comments[0].edits, 2);
            assert_eq!(comments[0].body, "<!-- trainyard:plan -->\n## Plan\nthree");
            let posts = server
                .requests()
                .iter()
                .filter(|r| r.method == "POST" && r.path.ends_with("/comments"))
                .count();
            assert_eq!(posts, 1, "edits are PATCHes");
        }

        #[tokio::test]
        async fn every_request_names_trainyard_and_who_sent_it_once() {
            let server = server().await;
            server.open_pr(7, HEAD).open().expect("pr");
            let mut config = config(&server, Duration::from_millis(5));
            config.user_agent = crate::user_agent("trainyard-0");
            let forge = GithubForge::new(config).expect("forge");
            forge
                .set_status(&status("trainyard/plan", StatusState::Pending, "x"))
                .await
                .expect("status");
            forge
                .upsert_comment(7, "plan", "## Plan")
                .await
                .expect("comment");
            let requests = server.requests();
            assert!(requests.len() >= 3, "{requests:?}");
            // octocrab always sends its own `User-Agent: octocrab` first and appends extra
            // headers after it; GitHub reads the two as one list.
            let expected = format!(
                "octocrab, trainyard/{} (trainyard-0)",
                env!("CARGO_PKG_VERSION")
            );
            for request in &requests {
                assert_eq!(
                    request.user_agent.as_deref(),
                    Some(expected.as_str()),
                    "{} {}",
                    request.method,
                    request.path
                );
            }
        }

        #[tokio::test]
        async fn an_actions_token_finds_its_comments_once_told_its_login() {
            const ACTIONS: &str = "ghs_actions";
            let server = GithubServer::builder()
                .repo("acme", "models")
                .actions_token(ACTIONS)
                .start()
                .await
                .expect("the stand-in starts");
            server.add_commit(HEAD);
            server.open_pr(7, HEAD).open().expect("pr");
            let actions = |login: Option<&str>| {
                let mut config =
                    GithubConfig::new("acme", "models", GithubAuth::Token(ACTIONS.to_owned()));
                config.api_url = server.url();
                config.min_write_interval = Duration::from_millis(5);
                config.login = login.map(str::to_owned);
                GithubForge::new(config).expect("forge")
            };

            // GitHub refuses `GET /user` to this token: the error says what to do.
            let refused = actions(None)
                .upsert_comment(7, "plan", "## Plan")
                .await
                .expect_err("its own login is unknown");
            assert!(
                matches!(&refused, ForgeError::Permanent { message }
                    if message.contains("403") && message.contains("--github-login")),
                "{refused:?}"
            );
            assert!(server.comments(7).is_empty(), "nothing was posted blind");
            server.clear_requests();

            let told = Some("github-actions[bot]");
            actions(told)
                .upsert_comment(7, "plan", "## Plan one")
                .await
                .expect("created");
            actions(told)
                .upsert_comment(7, "plan", "## Plan two")
                .await
                .expect("found again by a new forge and edited");
            let comments = server.comments(7);
            assert_eq!(comments.len(), 1, "{comments:?}");
            assert_eq!(comments[0].author, "github-actions[bot]");
            assert!(comments[0].body.ends_with("## Plan two"));
            assert!(
                server.requests().iter().all(|r| r.path != "/user"),
                "a told login is not asked for"
            );
        }

        #[tokio::test]
        async fn a_persons_comment_with_the_marker_is_not_taken_over() {
            let server = server().await;
            server.open_pr(7, HEAD).open().expect("pr");
            let quoted = "Why does <!-- trainyard:plan --> show up here?";
            let theirs = server
                .add_comment_as("mallory", 7, quoted)
                .expect("comment");
            let forge = forge(&server);
            forge
                .upsert_comment(7, "plan", "## Plan")
                .await
                .expect("created");
            forge
                .upsert_comment(7, "plan", "## Plan 2")
                .await
                .expect("edited");
            let comments = server.comments(7);
            assert_eq!(comments.len(), 2, "{comments:?}");
            let held = comments.iter().find(|c| c.id == theirs).expect("kept");
            assert_eq!((held.body.as_str(), held.edits), (quoted, 0));
            let ours = comments.iter().find(|c| c.id != theirs).expect("ours");
            assert_eq!(ours.author, LOGIN);
            assert!(ours.body.ends_with("## Plan 2"), "{}", ours.body);
        }

        #[tokio::test]
        async fn the_sticky_comment_is_found_beyond_the_first_page() {
            let server = server().await;
            server.open_pr(7, HEAD).open().expect("pr");
            for i in 0..150 {
                server
                    .add_comment_as("bob", 7, &format!("comment {i}"))
                    .expect("comment");
            }
            // GitHub lists oldest first: ours comes after a full page of others.
            forge(&server)
                .upsert_comment(7, "run-12", "queued")
                .await
                .expect("created");
            forge(&server)
                .upsert_comment(7, "run-12", "succeeded")
                .await
                .expect("edited by a forge that has to look for it");
            let ours: Vec<_> = server
                .comments(7)
                .into_iter()
                .filter(|c| c.author == LOGIN)
                .collect();
            assert_eq!(ours.len(), 1, "{ours:?}");
            assert_eq!(ours[0].edits, 1);
            assert!(ours[0].body.ends_with("succeeded"), "{}", ours[0].body);
            let pages: Vec<_> = server
                .requests()
                .into_iter()
                .filter(|r| r.method == "GET" && r.path.ends_with("/issues/7/comments"))
                .filter_map(|r| r.query)
                .collect();
            assert!(pages.iter().any(|q| q.contains("page=2")), "{pages:?}");
        }

        #[tokio::test]
        async fn a_body_over_githubs_limit_is_cut_with_a_note() {
            let server = server().await;
            server.open_pr(7, HEAD).open().expect("pr");
            let body = format!("## Logs\n```\n{}", "line\n".repeat(20_000));
            forge(&server)
                .upsert_comment(7, "run-3", &body)
                .await
                .expect("accepted");
            let held = &server.comments(7)[0];
            assert!(held.body.chars().count() <= COMMENT_CHARS);
            assert!(held.body.starts_with("<!-- trainyard:run-3 -->\n## Logs"));
            assert!(
                held.body
                    .contains("```\n\n---\n*Trainyard cut this comment: it was 100012"),
                "{}",
                &held.body[held.body.len() - 300..]
            );
        }

        #[tokio::test]
        async fn a_secondary_rate_limit_is_transient_for_as_long_as_github_asks() {
            let server = server().await;
            let forge = forge(&server);
            let s = status("trainyard/plan", StatusState::Pending, "planning");
            server.fail_next(1, FaultKind::SecondaryRateLimit { retry_after: 7 });
            let err = forge.set_status(&s).await.expect_err("limited");
            assert!(
                matches!(&err, ForgeError::Transient { retry_after: Some(w), .. } if *w == Duration::from_secs(7)),
                "{err:?}"
            );
            server.fail_next(1, FaultKind::ServerError(502));
            let err = forge.set_status(&s).await.expect_err("bad gateway");
            assert!(matches!(err, ForgeError::Transient { .. }), "{err:?}");
            forge.set_status(&s).await.expect("later it goes through");
            assert_eq!(server.statuses(HEAD).len(), 1);
        }

        #[tokio::test]
        async fn a_429_secondary_limit_without_retry_after_waits_a_minute() {
            let server = server().await;
            server.fail_next(1, FaultKind::TooManyRequests { retry_after: None });
            let err = forge(&server)
                .set_status(&status("trainyard/plan", StatusState::Pending, "x"))
                .await
                .expect_err("limited");
            assert!(
                matches!(&err, ForgeError::Transient { retry_after: Some(w), .. } if *w == SECONDARY_LIMIT_WAIT),
                "{err:?}"
            );
        }

        #[tokio::test]
        async fn writes_past_the_hourly_budget_are_held_back_unsent() {
            let server = server().await;
            let mut config = config(&server, Duration::from_millis(1));
            config.max_writes_per_hour = 2;
            let forge = GithubForge::new(config).expect("forge");
            for (i, context) in ["trainyard/a", "trainyard/b", "trainyard/c"]
                .into_iter()
                .enumerate()
            {
                let result = forge
                    .set_status(&status(context, StatusState::Pending, "x"))
                    .await;
                if i < 2 {
                    result.expect("within the budget");
                    continue;
                }
                let err = result.expect_err("over the budget");
                let ForgeError::Transient {
                    retry_after: Some(wait),
                    message,
                } = &err
                else {
                    panic!("{err:?}");
                };
                assert!(
                    wait.as_secs() >= 3590,
                    "until the oldest is an hour old: {wait:?}"
                );
                assert!(message.contains("last hour"), "{message}");
            }
            let posted = server
                .requests()
                .iter()
                .filter(|r| r.method == "POST")
                .count();
            assert_eq!(posted, 2, "the third was never sent");
        }

        #[tokio::test]
        async fn an_exhausted_primary_limit_is_transient_until_the_reset() {
            let server = server().await;
            server.fail_next(1, FaultKind::PrimaryRateLimit { reset_in: 90 });
            let err = forge(&server)
                .set_status(&status("trainyard/plan", StatusState::Pending, "x"))
                .await
                .expect_err("limited");
            let ForgeError::Transient {
                retry_after: Some(wait),
                ..
            } = err
            else {
                panic!("{err:?}");
            };
            assert!((85..=91).contains(&wait.as_secs()), "{wait:?}");
        }

        #[tokio::test]
        async fn a_missing_repository_or_an_invalid_status_is_permanent_with_githubs_message() {
            let server = server().await;
            let forge = forge(&server);
            server.fail_next(1, FaultKind::NotFound);
            let err = forge
                .set_status(&status("trainyard/plan", StatusState::Success, "x"))
                .await
                .expect_err("gone");
            assert!(
                matches!(&err, ForgeError::Permanent { message } if message.contains("404") && message.contains("Not Found")),
                "{err:?}"
            );
            let mut other_repo = config(&server, Duration::from_millis(5));
            other_repo.repo = "elsewhere".to_owned();
            let err = GithubForge::new(other_repo)
                .expect("forge")
                .set_status(&status("trainyard/plan", StatusState::Success, "x"))
                .await
                .expect_err("no such repository");
            assert!(matches!(err, ForgeError::Permanent { .. }), "{err:?}");
            assert!(server.statuses(HEAD).is_empty());
        }

        #[tokio::test]
        async fn bad_credentials_are_transient_once_then_permanent() {
            let server = server().await;
            let mut wrong = config(&server, Duration::from_millis(5));
            wrong.auth = GithubAuth::Token("ghp_wrong".to_owned());
            let forge = GithubForge::new(wrong).expect("forge");
            let s = status("trainyard/plan", StatusState::Success, "x");
            let first = forge.set_status(&s).await.expect_err("401");
            assert!(matches!(first, ForgeError::Transient { .. }), "{first:?}");
            let second = forge.set_status(&s).await.expect_err("401 again");
            assert!(
                matches!(&second, ForgeError::Permanent { message } if message.contains("Bad credentials")),
                "{second:?}"
            );
        }

        #[tokio::test]
        async fn writes_are_paced_at_least_the_interval_apart() {
            let server = server().await;
            let interval = Duration::from_millis(300);
            let forge = GithubForge::new(config(&server, interval)).expect("forge");
            // Concurrent writers share the pacing.
            let writes = (0..3).map(|i| {
                let forge = forge.clone();
                async move {
                    forge
                        .set_status(&status(
                            &format!("trainyard/run/p{i}"),
                            StatusState::Pending,
                            "queued",
                        ))
                        .await
                }
            });
            for result in futures::future::join_all(writes).await {
                result.expect("set");
            }
            let mut times: Vec<_> = server.statuses(HEAD).iter().map(|s| s.created_at).collect();
            times.sort();
            assert_eq!(times.len(), 3);
            for pair in times.windows(2) {
                let gap = (pair[1] - pair[0]).to_std().expect("ordered");
                // Arrival times jitter by a little against the client's send times.
                assert!(gap >= interval - Duration::from_millis(30), "{gap:?}");
            }
        }

        #[tokio::test]
        async fn an_app_installation_token_is_bought_with_the_apps_jwt_and_renewed() {
            let server = server().await;
            server.open_pr(7, HEAD).open().expect("pr");
            let mut app = config(&server, Duration::from_millis(5));
            app.auth = GithubAuth::App {
                app_id: server.app_id(),
                private_key_pem: TEST_APP_KEY.to_owned(),
                installation_id: server.installation_id(),
            };
            let forge = GithubForge::new(app).expect("forge");
            let s = status("trainyard/validate", StatusState::Success, "ok");
            forge.set_status(&s).await.expect("set as the app");
            forge
                .upsert_comment(7, "plan", "## Plan")
                .await
                .expect("comment");
            assert_eq!(server.installation_tokens_issued(), 1);
            let held = &server.statuses(HEAD)[0];
            assert_eq!(held.creator, server.bot_login());
            assert_eq!(server.comments(7)[0].author, server.bot_login());
            let requests = server.requests();
            let exchange = requests
                .iter()
                .find(|r| r.path.ends_with("/access_tokens"))
                .expect("a token exchange");
            assert_eq!(exchange.token, TokenKind::AppJwt);
            assert!(requests.iter().any(|r| r.method == "POST"
                && r.path.contains("/statuses/")
                && r.token == TokenKind::Installation(server.installation_id())));

            server.expire_installation_tokens();
            let changed = status("trainyard/validate", StatusState::Failure, "1 error");
            forge
                .set_status(&changed)
                .await
                .expect("set with a new token");
            forge
                .upsert_comment(7, "plan", "## Plan 2")
                .await
                .expect("edited with the new token");
            assert_eq!(server.installation_tokens_issued(), 2);
            assert_eq!(server.comments(7).len(), 1);
            assert_eq!(
                server.latest_statuses(HEAD)["trainyard/validate"].state,
                "failure"
            );
        }

        #[tokio::test]
        async fn the_pull_request_of_a_head_or_a_merge_commit_is_found() {
            let server = server().await;
            server.open_pr(7, HEAD).open().expect("pr");
            server.open_pr(8, OTHER).open().expect("pr");
            let forge = forge(&server);
            assert_eq!(forge.pull_request_of(HEAD).await, Ok(Some(7)));
            server.merge_pr(8, MERGE).expect("merged");
            assert_eq!(forge.pull_request_of(MERGE).await, Ok(Some(8)));
            server.add_commit(&"4".repeat(40));
            assert_eq!(forge.pull_request_of(&"4".repeat(40)).await, Ok(None));
            let err = forge.pull_request_of("abc123").await.expect_err("short id");
            assert!(matches!(err, ForgeError::Permanent { .. }), "{err:?}");
        }

        #[tokio::test]
        async fn permissions_come_from_the_repositorys_collaborators() {
            let server = server().await;
            server.set_permission("ann", Role::Admin);
            server.set_permission("max", Role::Maintain);
            server.set_permission("bob", Role::Write);
            server.set_permission("tia", Role::Triage);
            let forge = forge(&server);
            assert_eq!(forge.permission_of("ann").await, Ok(Permission::Admin));
            assert_eq!(forge.permission_of("max").await, Ok(Permission::Maintain));
            assert_eq!(forge.permission_of("bob").await, Ok(Permission::Write));
            assert_eq!(forge.permission_of("tia").await, Ok(Permission::Triage));
            // A public repository: anyone else reads.
            assert_eq!(forge.permission_of("eve").await, Ok(Permission::Read));
            assert_eq!(
                forge.permission_of("../../admin").await,
                Ok(Permission::None),
                "a name GitHub cannot have is asked nothing"
            );
            let asked = server
                .requests()
                .iter()
                .filter(|r| r.path.contains("/collaborators/"))
                .count();
            assert_eq!(asked, 5);
        }
    }
}
