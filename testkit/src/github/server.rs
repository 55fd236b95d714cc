//! The HTTP side: authentication (personal tokens, App JWTs, installation tokens), rate
//! limits and injected faults, request records, and the REST endpoints ([`checks`] for
//! check runs).

mod checks;

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State as AxumState};
use axum::http::{HeaderValue, Method, header};
use axum::response::Response;
use chrono::Utc;
use serde_json::{Value, json};
use std::sync::Arc;

use super::json::{Site, bot_login};
use super::state::{CommentRecord, Principal, State, StatusRecord, parse_body};
use super::{FaultKind, Permission, RequestRecord, TokenKind};

/// GitHub's limit on a status description, in characters.
const MAX_DESCRIPTION: usize = 140;
/// GitHub's limit on a comment body, in characters.
const MAX_COMMENT: usize = 65_536;
/// GitHub keeps at most this many statuses per commit and context.
const MAX_STATUSES_PER_CONTEXT: usize = 1000;
/// An App JWT may live at most ten minutes.
const MAX_JWT_LIFETIME: u64 = 600;
const DOCS: &str = "https://docs.github.com/rest";

/// State shared by the handler and the test handle.
pub(crate) struct Shared {
    pub(crate) state: Mutex<State>,
    pub(crate) site: Site,
    pub(crate) decoding: jsonwebtoken::DecodingKey,
    pub(crate) token_ttl: Duration,
    pub(crate) rate_limit: u64,
    pub(crate) secondary_limit: usize,
    pub(crate) secondary_window: Duration,
    /// Content-creating requests per hour per token (GitHub: 500).
    pub(crate) hourly_write_limit: usize,
    /// What a secondary limit answers: GitHub documents 403 or 429.
    pub(crate) secondary_status: u16,
}

/// An answer before the rate-limit headers are added.
struct Reply {
    status: u16,
    body: Option<Value>,
    headers: Vec<(&'static str, String)>,
    /// How long to hold the answer back (a stalled front end).
    delay: Option<Duration>,
}

impl Reply {
    fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            body: Some(body),
            headers: Vec::new(),
            delay: None,
        }
    }

    fn message(status: u16, message: &str) -> Self {
        Self::json(
            status,
            json!({"message": message, "documentation_url": DOCS, "status": status.to_string()}),
        )
    }

    fn not_found() -> Self {
        Self::message(404, "Not Found")
    }

    fn invalid(resource: &str, code: &str, field: &str, message: Option<&str>) -> Self {
        let mut error = json!({"resource": resource, "code": code, "field": field});
        if let Some(m) = message {
            error["message"] = json!(m);
        }
        Self::json(
            422,
            json!({"message": "Validation Failed", "errors": [error], "documentation_url": DOCS, "status": "422"}),
        )
    }

    fn header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }
}

/// Who is calling.
struct Caller {
    /// The credential itself: rate limits are counted per credential.
    key: String,
    login: String,
    kind: TokenKind,
    app: Option<u64>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn is_write(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PATCH | Method::PUT | Method::DELETE
    )
}

pub(crate) async fn handle(AxumState(shared): AxumState<Arc<Shared>>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let agents: Vec<&str> = req
        .headers()
        .get_all(header::USER_AGENT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let user_agent = (!agents.is_empty()).then(|| agents.join(", "));
    let bytes = match to_bytes(req.into_body(), 32 * 1024 * 1024).await {
        Ok(b) => b,
        Err(_) => return finish(&shared, Reply::message(413, "Payload too large"), None),
    };
    let body = parse_body(&bytes);

    let caller = authenticate(&shared, auth.as_deref());
    let record = |status: u16, token: TokenKind| {
        shared.state().records.push(RequestRecord {
            method: method.to_string(),
            path: path.clone(),
            query: query.clone(),
            status,
            token,
            body: body.clone(),
            user_agent: user_agent.clone(),
        });
    };
    let (reply, key) = match caller {
        Err((kind, reply)) => {
            record(reply.status, kind);
            return finish(&shared, reply, None);
        }
        Ok(caller) => {
            let reply = limited(&shared, &method, &path, &caller).unwrap_or_else(|| {
                route(&shared, &method, &path, query.as_deref(), &bytes, &caller)
            });
            record(reply.status, caller.kind.clone());
            (reply, caller.key)
        }
    };
    if let Some(delay) = reply.delay {
        tokio::time::sleep(delay).await;
    }
    finish(&shared, reply, Some(&key))
}

/// Adds the rate-limit headers GitHub sends on every answer and builds the response.
fn finish(shared: &Shared, reply: Reply, key: Option<&str>) -> Response {
    let (used, reset) = match key {
        Some(key) => {
            let state = shared.state();
            let usage = state.usage.get(key);
            let used = usage.map(|u| u.used).unwrap_or(0);
            let reset = usage
                .and_then(|u| u.window_start)
                .map(|s| {
                    now_secs() + 3600u64.saturating_sub(Instant::now().duration_since(s).as_secs())
                })
                .unwrap_or_else(|| now_secs() + 3600);
            (used, reset)
        }
        None => (0, now_secs() + 3600),
    };
    let limit = shared.rate_limit;
    let mut builder = Response::builder()
        .status(reply.status)
        .header("x-github-media-type", "github.v3; format=json")
        .header("x-ratelimit-resource", "core");
    let has = |name: &str| reply.headers.iter().any(|(n, _)| *n == name);
    if !has("x-ratelimit-limit") {
        builder = builder.header("x-ratelimit-limit", limit.to_string());
    }
    if !has("x-ratelimit-remaining") {
        builder = builder.header(
            "x-ratelimit-remaining",
            limit.saturating_sub(used).to_string(),
        );
    }
    if !has("x-ratelimit-reset") {
        builder = builder.header("x-ratelimit-reset", reset.to_string());
    }
    if !has("x-ratelimit-used") {
        builder = builder.header("x-ratelimit-used", used.to_string());
    }
    for (name, value) in &reply.headers {
        if let Ok(v) = HeaderValue::from_str(value) {
            builder = builder.header(*name, v);
        }
    }
    let body = match reply.body {
        Some(v) => {
            builder = builder.header(header::CONTENT_TYPE, "application/json; charset=utf-8");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    builder
        .body(body)
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

fn authenticate(shared: &Shared, auth: Option<&str>) -> Result<Caller, (TokenKind, Reply)> {
    let Some(auth) = auth else {
        return Err((
            TokenKind::Missing,
            Reply::message(401, "Requires authentication"),
        ));
    };
    let credential = auth
        .strip_prefix("Bearer ")
        .or_else(|| auth.strip_prefix("bearer "))
        .or_else(|| auth.strip_prefix("token "))
        .map(str::trim);
    let rejected = || (TokenKind::Rejected, Reply::message(401, "Bad credentials"));
    let Some(credential) = credential.filter(|c| !c.is_empty()) else {
        return Err(rejected());
    };
    if credential.split('.').count() == 3 && credential.starts_with("eyJ") {
        return check_jwt(shared, credential)
            .map_err(|m| (TokenKind::Rejected, Reply::message(401, &m)));
    }
    let state = shared.state();
    match state.tokens.get(credential) {
        Some(Principal::User(login)) => Ok(Caller {
            key: credential.to_string(),
            login: login.clone(),
            kind: TokenKind::Personal(login.clone()),
            app: None,
        }),
        Some(Principal::Installation {
            installation,
            expires,
        }) if Instant::now() < *expires => Ok(Caller {
            key: credential.to_string(),
            login: bot_login(&shared.site.app_slug),
            kind: TokenKind::Installation(*installation),
            app: Some(shared.site.app_id),
        }),
        Some(Principal::Actions) => Ok(Caller {
            key: credential.to_string(),
            login: "github-actions[bot]".to_owned(),
            kind: TokenKind::Actions,
            app: None,
        }),
        _ => Err(rejected()),
    }
}

/// Checks an App JWT the way GitHub does: RS256 signature by the App's key, `iss` the App
/// id, `exp` in the future but at most ten minutes ahead.
fn check_jwt(shared: &Shared, jwt: &str) -> Result<Caller, String> {
    let undecodable = || "A JSON web token could not be decoded".to_string();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    // `iss` is checked below: octocrab sends it as a number, which jsonwebtoken's own
    // issuer check (strings only) would call missing.
    validation.required_spec_claims = std::iter::once("exp".to_string()).collect();
    validation.validate_exp = false;
    let data = jsonwebtoken::decode::<Value>(jwt, &shared.decoding, &validation)
        .map_err(|_| undecodable())?;
    let claims = data.claims;
    let iss = match &claims["iss"] {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    };
    if iss != Some(shared.site.app_id) {
        return Err("'Issuer' claim ('iss') must be an Integer".to_string());
    }
    let now = now_secs();
    let exp = claims["exp"].as_u64().ok_or_else(undecodable)?;
    if exp <= now {
        return Err(
            "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires"
                .to_string(),
        );
    }
    // GitHub allows some clock drift, but never a lifetime past ten minutes.
    if exp > now + MAX_JWT_LIFETIME + 60 {
        return Err("'Expiration time' claim ('exp') is too far in the future".to_string());
    }
    if let Some(iat) = claims["iat"].as_u64()
        && iat > now + 60
    {
        return Err("'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued".to_string());
    }
    Ok(Caller {
        key: format!("app:{}", shared.site.app_id),
        login: shared.site.app_slug.clone(),
        kind: TokenKind::AppJwt,
        app: Some(shared.site.app_id),
    })
}

/// Injected faults, then the hourly budget, then the secondary limit on writes.
fn limited(shared: &Shared, method: &Method, path: &str, caller: &Caller) -> Option<Reply> {
    let mut state = shared.state();
    let write = is_write(method);
    if let Some(fault) = state.faults.iter_mut().find(|f| {
        f.remaining > 0
            && (!f.writes_only || write)
            && f.path_prefix.as_deref().is_none_or(|p| path.starts_with(p))
    }) {
        fault.remaining -= 1;
        let kind = fault.kind.clone();
        state.faults.retain(|f| f.remaining > 0);
        return Some(fault_reply(shared, &kind));
    }
    let now = Instant::now();
    let usage = state.usage.entry(caller.key.clone()).or_default();
    if usage
        .window_start
        .is_none_or(|s| now.duration_since(s) >= Duration::from_secs(3600))
    {
        usage.window_start = Some(now);
        usage.used = 0;
    }
    if usage.used >= shared.rate_limit {
        let reset_in = usage
            .window_start
            .map(|s| 3600u64.saturating_sub(now.duration_since(s).as_secs()))
            .unwrap_or(3600);
        return Some(
            Reply::message(
                403,
                &format!(
                    "API rate limit exceeded for {}. (But here's the good news: Authenticated requests get a higher rate limit. Check out the documentation for more details.)",
                    caller.login
                ),
            )
            .header("x-ratelimit-remaining", "0".into())
            .header("x-ratelimit-reset", (now_secs() + reset_in).to_string()),
        );
    }
    usage.used += 1;
    // Minting installation tokens is not content creation.
    if write && caller.kind != TokenKind::AppJwt {
        const HOUR: Duration = Duration::from_secs(3600);
        // GitHub's two secondary limits on content creation: per minute and per hour.
        for (limit, window) in [
            (shared.secondary_limit, shared.secondary_window),
            (shared.hourly_write_limit, HOUR),
        ] {
            let (recent, oldest) = state.recent_writes(&caller.key, window, window.max(HOUR), now);
            if recent >= limit {
                let wait = window
                    .saturating_sub(oldest.map_or(Duration::ZERO, |t| now.duration_since(t)))
                    .as_secs()
                    .max(1);
                return Some(secondary(shared.secondary_status, Some(wait)));
            }
        }
        if let Some(u) = state.usage.get_mut(&caller.key) {
            u.writes.push_back(now);
        }
    }
    None
}

fn secondary(status: u16, retry_after: Option<u64>) -> Reply {
    let reply = Reply::message(
        status,
        "You have exceeded a secondary rate limit. Please wait a few minutes before you try again. If you reach out to GitHub Support for help, please include the request ID 0000:0000:0000000:0000000:00000000.",
    );
    match retry_after {
        Some(seconds) => reply.header("retry-after", seconds.to_string()),
        None => reply,
    }
}

fn fault_reply(shared: &Shared, kind: &FaultKind) -> Reply {
    match kind {
        FaultKind::SecondaryRateLimit { retry_after } => secondary(403, Some(*retry_after)),
        FaultKind::TooManyRequests { retry_after } => secondary(429, *retry_after),
        FaultKind::Stall { seconds } => Reply {
            delay: Some(Duration::from_secs(*seconds)),
            ..Reply::message(502, "Server Error")
        },
        FaultKind::PrimaryRateLimit { reset_in } => Reply::message(
            403,
            "API rate limit exceeded for installation ID. If you reach out to GitHub Support for help, please include the request ID 0000:0000:0000000:0000000:00000000.",
        )
        .header("x-ratelimit-remaining", "0".into())
        .header("x-ratelimit-used", shared.rate_limit.to_string())
        .header("x-ratelimit-reset", (now_secs() + reset_in).to_string()),
        FaultKind::ServerError(code) => Reply {
            status: *code,
            body: Some(json!({"message": "Server Error"})),
            headers: Vec::new(),
            delay: None,
        },
        FaultKind::NotFound => Reply::not_found(),
    }
}

fn route(
    shared: &Shared,
    method: &Method,
    path: &str,
    query: Option<&str>,
    bytes: &[u8],
    caller: &Caller,
) -> Reply {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let jwt = caller.kind == TokenKind::AppJwt;
    let needs_jwt = || Reply::message(401, "A JSON web token could not be decoded");
    let site = &shared.site;
    match segs.as_slice() {
        ["app"] if method == Method::GET => {
            if !jwt {
                return needs_jwt();
            }
            Reply::json(200, site.app())
        }
        ["app", "installations", id, "access_tokens"] if method == Method::POST => {
            if !jwt {
                return needs_jwt();
            }
            if id.parse::<u64>().ok() != Some(site.installation_id) {
                return Reply::not_found();
            }
            issue_installation_token(shared)
        }
        ["user"] if method == Method::GET => match caller.kind {
            TokenKind::Personal(_) => Reply::json(200, site.user(&caller.login)),
            TokenKind::AppJwt => needs_jwt_not_allowed(),
            _ => Reply::message(403, "Resource not accessible by integration"),
        },
        ["repos", owner, repo, rest @ ..] => {
            if !owner.eq_ignore_ascii_case(&site.owner) || !repo.eq_ignore_ascii_case(&site.repo) {
                return Reply::not_found();
            }
            if rest == ["installation"] {
                if method != Method::GET {
                    return Reply::not_found();
                }
                if !jwt {
                    return needs_jwt();
                }
                return Reply::json(200, site.installation());
            }
            if jwt {
                return needs_jwt_not_allowed();
            }
            repo_route(shared, method, rest, query, bytes, caller)
        }
        _ => Reply::not_found(),
    }
}

fn needs_jwt_not_allowed() -> Reply {
    Reply::message(
        403,
        "A JSON web token cannot be used to access this endpoint; use an installation access token",
    )
}

fn issue_installation_token(shared: &Shared) -> Reply {
    let mut state = shared.state();
    state.issued += 1;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let token = format!("ghs_{:016x}{:020}", nanos, state.issued);
    let expires = Instant::now() + shared.token_ttl;
    let expires_at = Utc::now()
        + chrono::Duration::from_std(shared.token_ttl).unwrap_or(chrono::Duration::hours(1));
    state.tokens.insert(
        token.clone(),
        Principal::Installation {
            installation: shared.site.installation_id,
            expires,
        },
    );
    Reply::json(
        201,
        json!({
            "token": token,
            "expires_at": super::json::time(expires_at),
            "permissions": shared.site.permissions(),
            "repository_selection": "selected"
        }),
    )
}

fn repo_route(
    shared: &Shared,
    method: &Method,
    rest: &[&str],
    query: Option<&str>,
    bytes: &[u8],
    caller: &Caller,
) -> Reply {
    let m = method.clone();
    match (m, rest) {
        (Method::POST, ["statuses", sha]) => create_status(shared, sha, bytes, caller),
        (Method::POST, ["check-runs"]) => checks::create(shared, bytes, caller),
        (Method::PATCH, ["check-runs", id]) => checks::update(shared, id, bytes, caller),
        (Method::GET, ["check-runs", id]) => checks::get(shared, id),
        (Method::GET, ["check-runs", id, "annotations"]) => {
            checks::annotations(shared, id, query, rest)
        }
        (Method::GET, ["commits", reference @ .., "check-runs"]) if !reference.is_empty() => {
            checks::list_for_ref(shared, &reference.join("/"), query, rest)
        }
        // A ref may hold slashes (`heads/main`, `feature/x`).
        (Method::GET, ["commits", reference @ .., "statuses"]) if !reference.is_empty() => {
            list_statuses(shared, &reference.join("/"), query, rest)
        }
        (Method::GET, ["commits", reference @ .., "status"]) if !reference.is_empty() => {
            combined_status(shared, &reference.join("/"), query, rest)
        }
        (Method::GET, ["commits", sha, "pulls"]) => pulls_of_commit(shared, sha, query, rest),
        (Method::GET, ["pulls", n]) => {
            let state = shared.state();
            match n.parse::<u64>().ok().and_then(|n| state.pulls.get(&n)) {
                Some(p) => Reply::json(200, shared.site.pull(p)),
                None => Reply::not_found(),
            }
        }
        (Method::GET, ["issues", n, "comments"]) => list_comments(shared, n, query, rest),
        (Method::POST, ["issues", n, "comments"]) => create_comment(shared, n, bytes, caller),
        (Method::GET, ["issues", "comments", id]) => {
            let state = shared.state();
            match id
                .parse::<u64>()
                .ok()
                .and_then(|id| state.comments.get(&id))
            {
                Some(c) => Reply::json(200, shared.site.comment(c)),
                None => Reply::not_found(),
            }
        }
        (Method::PATCH, ["issues", "comments", id]) => edit_comment(shared, id, bytes, caller),
        (Method::DELETE, ["issues", "comments", id]) => delete_comment(shared, id, caller),
        (Method::GET, ["collaborators", user, "permission"]) => permission(shared, user),
        _ => Reply::not_found(),
    }
}

fn object(bytes: &[u8]) -> Result<serde_json::Map<String, Value>, Reply> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(Reply::message(400, "Problems parsing JSON")),
    }
}

fn not_supplied(field: &str) -> Reply {
    Reply::message(
        422,
        &format!("Invalid request.\n\n\"{field}\" wasn't supplied."),
    )
}

fn create_status(shared: &Shared, sha: &str, bytes: &[u8], caller: &Caller) -> Reply {
    let body = match object(bytes) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let state_field = match body.get("state") {
        None | Some(Value::Null) => return not_supplied("state"),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Reply::message(
                422,
                &format!("Invalid request.\n\nFor 'properties/state', {other} is not a string."),
            );
        }
    };
    if !["pending", "success", "failure", "error"].contains(&state_field.as_str()) {
        return Reply::invalid(
            "Status",
            "custom",
            "state",
            Some("state is not included in the list"),
        );
    }
    let text = |field: &str| -> Result<Option<String>, Reply> {
        match body.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(Reply::message(
                422,
                &format!(
                    "Invalid request.\n\nFor 'properties/{field}', {other} is not a string or null."
                ),
            )),
        }
    };
    let (description, target_url, context) =
        match (text("description"), text("target_url"), text("context")) {
            (Ok(d), Ok(t), Ok(c)) => (d, t, c),
            (Err(r), _, _) | (_, Err(r), _) | (_, _, Err(r)) => return r,
        };
    if description
        .as_deref()
        .is_some_and(|d| d.chars().count() > MAX_DESCRIPTION)
    {
        return Reply::invalid(
            "Status",
            "custom",
            "description",
            Some("description is too long (maximum is 140 characters)"),
        );
    }
    let context = context.unwrap_or_else(|| "default".to_string());
    let mut state = shared.state();
    if !state.commits.contains(sha) {
        return Reply::message(422, &format!("No commit found for SHA: {sha}"));
    }
    let count = state
        .statuses
        .iter()
        .filter(|s| s.sha == sha && s.context == context)
        .count();
    if count >= MAX_STATUSES_PER_CONTEXT {
        return Reply::message(
            422,
            "This SHA and context has reached the maximum number of statuses.",
        );
    }
    let status = StatusRecord {
        id: state.id(),
        sha: sha.to_string(),
        state: state_field,
        context,
        description,
        target_url,
        creator: caller.login.clone(),
        created_at: Utc::now(),
    };
    state.statuses.push(status.clone());
    // GitHub answers a created status with its URL in `Location`, as for any creation.
    let location = format!("{}/statuses/{sha}", shared.site.repo_url());
    Reply::json(201, shared.site.status(&status)).header("location", location)
}

/// `per_page` (default 30, at most 100) and `page` (from 1).
fn page_params(query: Option<&str>) -> (usize, usize) {
    let mut per_page = 30;
    let mut page = 1;
    for pair in query.unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "per_page" => per_page = v.parse().unwrap_or(30),
            "page" => page = v.parse().unwrap_or(1),
            _ => {}
        }
    }
    (per_page.clamp(1, 100), page.max(1))
}

/// One page of `items` with GitHub's `Link` header (first/prev/next/last as they apply).
fn paginate(shared: &Shared, rest: &[&str], query: Option<&str>, items: Vec<Value>) -> Reply {
    let (per_page, page) = page_params(query);
    let last = items.len().div_ceil(per_page).max(1);
    let looping = shared.state().looping_links;
    let shown: Vec<Value> = items
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .collect();
    let base = format!("{}/{}", shared.site.repo_url(), rest.join("/"));
    let link =
        |p: usize, rel: &str| format!("<{base}?per_page={per_page}&page={p}>; rel=\"{rel}\"");
    let mut links = Vec::new();
    if page > 1 {
        links.push(link(page - 1, "prev"));
    }
    if looping {
        // A misbehaving server (or proxy): "next" is always page 2, for ever.
        links.push(link(2, "next"));
    } else if page < last {
        links.push(link(page + 1, "next"));
        links.push(link(last, "last"));
    }
    if page > 1 {
        links.push(link(1, "first"));
    }
    let mut reply = Reply::json(200, Value::Array(shown));
    if !links.is_empty() {
        reply = reply.header("link", links.join(", "));
    }
    reply
}

fn list_statuses(shared: &Shared, reference: &str, query: Option<&str>, rest: &[&str]) -> Reply {
    let items: Vec<Value> = {
        let state = shared.state();
        let Some(sha) = state.resolve(reference) else {
            return Reply::message(422, &format!("No commit found for SHA: {reference}"));
        };
        state
            .statuses
            .iter()
            .rev()
            .filter(|s| s.sha == sha)
            .map(|s| shared.site.status(s))
            .collect()
    };
    paginate(shared, rest, query, items)
}

/// The combined status: the latest status of each context, newest first, paged like a list
/// (`per_page` at most 100, `Link` header) with `total_count` counting every context, and
/// `state` combined over all of them, not only the page's.
fn combined_status(shared: &Shared, reference: &str, query: Option<&str>, rest: &[&str]) -> Reply {
    let site = &shared.site;
    let (sha, combined, items) = {
        let state = shared.state();
        let Some(sha) = state.resolve(reference) else {
            return Reply::message(422, &format!("No commit found for SHA: {reference}"));
        };
        let mut latest: Vec<&StatusRecord> = Vec::new();
        for s in state.statuses.iter().rev().filter(|s| s.sha == sha) {
            if !latest.iter().any(|l| l.context == s.context) {
                latest.push(s);
            }
        }
        let combined = if latest
            .iter()
            .any(|s| s.state == "error" || s.state == "failure")
        {
            "failure"
        } else if latest.is_empty() || latest.iter().any(|s| s.state == "pending") {
            "pending"
        } else {
            "success"
        };
        let items: Vec<Value> = latest.iter().map(|s| site.status(s)).collect();
        (sha.to_owned(), combined, items)
    };
    let total = items.len();
    let mut page = paginate(shared, rest, query, items);
    let shown = page.body.take().unwrap_or_else(|| json!([]));
    page.body = Some(json!({
        "state": combined,
        "statuses": shown,
        "sha": sha,
        "total_count": total,
        "repository": site.repository(&site.owner, false),
        "commit_url": format!("{}/commits/{sha}", site.repo_url()),
        "url": format!("{}/commits/{sha}/status", site.repo_url())
    }));
    page
}

fn pulls_of_commit(shared: &Shared, sha: &str, query: Option<&str>, rest: &[&str]) -> Reply {
    let items: Vec<Value> = {
        let state = shared.state();
        if !state.commits.contains(sha) {
            return Reply::message(422, &format!("No commit found for SHA: {sha}"));
        }
        state
            .pulls
            .values()
            .filter(|p| p.head_sha == sha || p.merge_commit_sha.as_deref() == Some(sha))
            .map(|p| shared.site.pull(p))
            .collect()
    };
    paginate(shared, rest, query, items)
}

fn list_comments(shared: &Shared, n: &str, query: Option<&str>, rest: &[&str]) -> Reply {
    let items: Vec<Value> = {
        let state = shared.state();
        let Some(n) = n
            .parse::<u64>()
            .ok()
            .filter(|n| state.pulls.contains_key(n))
        else {
            return Reply::not_found();
        };
        state
            .comments
            .values()
            .filter(|c| c.issue == n)
            .map(|c| shared.site.comment(c))
            .collect()
    };
    paginate(shared, rest, query, items)
}

/// The comment body from a create or edit request, checked as GitHub checks it.
fn comment_body(bytes: &[u8]) -> Result<String, Reply> {
    let body = object(bytes)?;
    let text = match body.get("body") {
        None | Some(Value::Null) => return Err(not_supplied("body")),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(Reply::message(
                422,
                &format!("Invalid request.\n\nFor 'properties/body', {other} is not a string."),
            ));
        }
    };
    if text.trim().is_empty() {
        return Err(Reply::invalid(
            "IssueComment",
            "missing_field",
            "body",
            None,
        ));
    }
    if text.chars().count() > MAX_COMMENT {
        return Err(Reply::invalid(
            "IssueComment",
            "unprocessable",
            "data",
            Some("Body is too long (maximum is 65536 characters)"),
        ));
    }
    Ok(text)
}

fn create_comment(shared: &Shared, n: &str, bytes: &[u8], caller: &Caller) -> Reply {
    let number = {
        let state = shared.state();
        match n
            .parse::<u64>()
            .ok()
            .filter(|n| state.pulls.contains_key(n))
        {
            Some(n) => n,
            None => return Reply::not_found(),
        }
    };
    let text = match comment_body(bytes) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let mut state = shared.state();
    let id = state.id();
    let now = Utc::now();
    let comment = CommentRecord {
        id,
        issue: number,
        body: text,
        author: caller.login.clone(),
        created_at: now,
        updated_at: now,
        edits: 0,
        via_app: caller.app,
    };
    state.comments.insert(id, comment.clone());
    Reply::json(201, shared.site.comment(&comment)).header(
        "location",
        format!("{}/issues/comments/{id}", shared.site.repo_url()),
    )
}

fn may_change(state: &State, comment: &CommentRecord, caller: &Caller) -> bool {
    comment.author == caller.login
        || state
            .permissions
            .get(&caller.login)
            .is_some_and(|p| p.rank() >= Permission::Admin.rank())
}

fn forbidden(caller: &Caller) -> Reply {
    if caller.app.is_some() {
        Reply::message(403, "Resource not accessible by integration")
    } else {
        Reply::message(403, "Must have admin rights to Repository.")
    }
}

fn edit_comment(shared: &Shared, id: &str, bytes: &[u8], caller: &Caller) -> Reply {
    let Some(id) = id.parse::<u64>().ok() else {
        return Reply::not_found();
    };
    {
        let state = shared.state();
        let Some(comment) = state.comments.get(&id) else {
            return Reply::not_found();
        };
        if !may_change(&state, comment, caller) {
            return forbidden(caller);
        }
    }
    let text = match comment_body(bytes) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let mut state = shared.state();
    let Some(comment) = state.comments.get_mut(&id) else {
        return Reply::not_found();
    };
    comment.body = text;
    comment.edits += 1;
    comment.updated_at = Utc::now();
    let comment = comment.clone();
    Reply::json(200, shared.site.comment(&comment))
}

fn delete_comment(shared: &Shared, id: &str, caller: &Caller) -> Reply {
    let Some(id) = id.parse::<u64>().ok() else {
        return Reply::not_found();
    };
    let mut state = shared.state();
    let Some(comment) = state.comments.get(&id) else {
        return Reply::not_found();
    };
    if !may_change(&state, comment, caller) {
        return forbidden(caller);
    }
    state.comments.remove(&id);
    Reply {
        status: 204,
        body: None,
        headers: Vec::new(),
        delay: None,
    }
}

fn permission(shared: &Shared, user: &str) -> Reply {
    let site = &shared.site;
    let state = shared.state();
    let permission = state
        .permissions
        .get(user)
        .copied()
        .unwrap_or(if site.private {
            Permission::None
        } else {
            Permission::Read
        });
    let mut user_json = site.user(user);
    user_json["permissions"] = json!({
        "admin": permission.rank() >= Permission::Admin.rank(),
        "maintain": permission.rank() >= Permission::Maintain.rank(),
        "push": permission.rank() >= Permission::Write.rank(),
        "triage": permission.rank() >= Permission::Triage.rank(),
        "pull": permission.rank() >= Permission::Read.rank()
    });
    user_json["role_name"] = json!(permission.role_name());
    Reply::json(
        200,
        json!({
            "permission": permission.legacy(),
            "role_name": permission.role_name(),
            "user": user_json
        }),
    )
}
