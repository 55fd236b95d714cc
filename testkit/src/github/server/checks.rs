//! Check runs: create, update (annotations sent on an update are appended, which is how more
//! than 50 reach a run), get, list by ref (`check_name`, `filter`, `app_id`, paged) and list
//! annotations. Only GitHub Apps write them: a personal access token gets 403. Requests are
//! checked against GitHub's limits (50 annotations and 3 actions per request, 65,535
//! characters of summary or text) and refused with 422 as GitHub refuses them.

use chrono::Utc;
use serde_json::{Map, Value, json};

use super::{Caller, Reply, Shared, not_supplied, object, paginate};
use crate::github::TokenKind;
use crate::github::json::user_id;
use crate::github::state::{ActionRecord, AnnotationRecord, CheckRunRecord, State};

/// Most characters of an output's summary, and of its text.
pub(crate) const MAX_OUTPUT: usize = 65_535;
/// Most annotations one request may carry.
pub(crate) const MAX_ANNOTATIONS: usize = 50;
/// Most actions a check run may offer.
const MAX_ACTIONS: usize = 3;
const MAX_LABEL: usize = 20;
const MAX_ACTION_DESCRIPTION: usize = 40;
const MAX_IDENTIFIER: usize = 20;
const STATUSES: [&str; 3] = ["queued", "in_progress", "completed"];
const CONCLUSIONS: [&str; 7] = [
    "action_required",
    "cancelled",
    "failure",
    "neutral",
    "success",
    "skipped",
    "timed_out",
];
const LEVELS: [&str; 3] = ["notice", "warning", "failure"];
/// The slug of Actions' app, whose `GITHUB_TOKEN` may write check runs too.
const ACTIONS_APP: &str = "github-actions";

/// The App a caller writes check runs as; GitHub's 403 for anyone else.
fn writer(caller: &Caller) -> Result<String, Reply> {
    match &caller.kind {
        TokenKind::Installation(_) => Ok(caller.login.trim_end_matches("[bot]").to_owned()),
        TokenKind::Actions => Ok(ACTIONS_APP.to_owned()),
        TokenKind::Personal(_) => Err(Reply::message(
            403,
            "Resource not accessible by personal access token",
        )),
        _ => Err(Reply::message(
            403,
            "Resource not accessible by integration",
        )),
    }
}

fn failed(field: &str, message: &str) -> Reply {
    Reply::invalid("CheckRun", "custom", field, Some(message))
}

fn not_one_of(field: &str, value: &str, allowed: &[&str]) -> Reply {
    let list: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
    Reply::message(
        422,
        &format!(
            "Invalid request.\n\nFor 'properties/{field}', \"{value}\" is not one of [{}].",
            list.join(", ")
        ),
    )
}

fn text(map: &Map<String, Value>, field: &str) -> Result<Option<String>, Reply> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(Reply::message(
            422,
            &format!("Invalid request.\n\nFor 'properties/{field}', {other} is not a string."),
        )),
    }
}

fn required_text(map: &Map<String, Value>, field: &str) -> Result<String, Reply> {
    text(map, field)?.ok_or_else(|| not_supplied(field))
}

fn required_line(map: &Map<String, Value>, field: &str) -> Result<u64, Reply> {
    optional_number(map, field)?.ok_or_else(|| not_supplied(field))
}

fn optional_number(map: &Map<String, Value>, field: &str) -> Result<Option<u64>, Reply> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value.as_u64().map(Some).ok_or_else(|| {
            Reply::message(
                422,
                &format!(
                    "Invalid request.\n\nFor 'properties/{field}', {value} is not an integer."
                ),
            )
        }),
    }
}

fn too_long(field: &str, text: &str, max: usize) -> Result<(), Reply> {
    let count = text.chars().count();
    if count > max {
        return Err(failed(
            field,
            &format!("Only {max} characters are allowed; {count} were supplied."),
        ));
    }
    Ok(())
}

/// An `output` object: title and summary required, summary and text within
/// [`MAX_OUTPUT`], at most [`MAX_ANNOTATIONS`] annotations, each complete and consistent.
struct Output {
    title: String,
    summary: String,
    text: Option<String>,
    annotations: Vec<AnnotationRecord>,
}

fn output(value: &Value) -> Result<Output, Reply> {
    let Value::Object(map) = value else {
        return Err(Reply::message(
            422,
            &format!("Invalid request.\n\nFor 'properties/output', {value} is not an object."),
        ));
    };
    let title = required_text(map, "title")?;
    let summary = required_text(map, "summary")?;
    let body = text(map, "text")?;
    too_long("output.summary", &summary, MAX_OUTPUT)?;
    if let Some(body) = &body {
        too_long("output.text", body, MAX_OUTPUT)?;
    }
    let annotations = match map.get("annotations") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => {
            if items.len() > MAX_ANNOTATIONS {
                return Err(failed(
                    "output.annotations",
                    &format!(
                        "Only {MAX_ANNOTATIONS} annotations are allowed per request; {} were supplied.",
                        items.len()
                    ),
                ));
            }
            items.iter().map(annotation).collect::<Result<_, _>>()?
        }
        Some(other) => {
            return Err(Reply::message(
                422,
                &format!(
                    "Invalid request.\n\nFor 'properties/annotations', {other} is not an array."
                ),
            ));
        }
    };
    Ok(Output {
        title,
        summary,
        text: body,
        annotations,
    })
}

fn annotation(value: &Value) -> Result<AnnotationRecord, Reply> {
    let Value::Object(map) = value else {
        return Err(Reply::message(
            422,
            &format!("Invalid request.\n\nFor 'items', {value} is not an object."),
        ));
    };
    let path = required_text(map, "path")?;
    let start_line = required_line(map, "start_line")?;
    let end_line = required_line(map, "end_line")?;
    let level = required_text(map, "annotation_level")?;
    let message = required_text(map, "message")?;
    if !LEVELS.contains(&level.as_str()) {
        return Err(not_one_of("annotation_level", &level, &LEVELS));
    }
    if start_line == 0 || end_line < start_line {
        return Err(failed(
            "annotations",
            "start_line must be at least 1 and end_line at least start_line",
        ));
    }
    let start_column = optional_number(map, "start_column")?;
    let end_column = optional_number(map, "end_column")?;
    if (start_column.is_some() || end_column.is_some()) && start_line != end_line {
        return Err(failed(
            "annotations",
            "start_column and end_column may only be used when start_line and end_line are the same",
        ));
    }
    Ok(AnnotationRecord {
        path,
        start_line,
        end_line,
        start_column,
        end_column,
        level,
        message,
        title: text(map, "title")?,
        raw_details: text(map, "raw_details")?,
    })
}

fn actions(value: &Value) -> Result<Vec<ActionRecord>, Reply> {
    let Value::Array(items) = value else {
        return Err(Reply::message(
            422,
            &format!("Invalid request.\n\nFor 'properties/actions', {value} is not an array."),
        ));
    };
    if items.len() > MAX_ACTIONS {
        return Err(failed(
            "actions",
            &format!(
                "Only {MAX_ACTIONS} actions are allowed; {} were supplied.",
                items.len()
            ),
        ));
    }
    items
        .iter()
        .map(|item| {
            let Value::Object(map) = item else {
                return Err(Reply::message(
                    422,
                    &format!("Invalid request.\n\nFor 'items', {item} is not an object."),
                ));
            };
            let action = ActionRecord {
                label: required_text(map, "label")?,
                description: required_text(map, "description")?,
                identifier: required_text(map, "identifier")?,
            };
            too_long("actions.label", &action.label, MAX_LABEL)?;
            too_long(
                "actions.description",
                &action.description,
                MAX_ACTION_DESCRIPTION,
            )?;
            too_long("actions.identifier", &action.identifier, MAX_IDENTIFIER)?;
            Ok(action)
        })
        .collect()
}

/// What a create or update request asks for, checked.
struct Change {
    name: Option<String>,
    head_sha: Option<String>,
    status: Option<String>,
    conclusion: Option<String>,
    external_id: Option<String>,
    details_url: Option<String>,
    output: Option<Output>,
    actions: Option<Vec<ActionRecord>>,
}

fn change(bytes: &[u8]) -> Result<Change, Reply> {
    let map = object(bytes)?;
    let status = text(&map, "status")?;
    if let Some(status) = &status
        && !STATUSES.contains(&status.as_str())
    {
        return Err(not_one_of("status", status, &STATUSES));
    }
    let conclusion = text(&map, "conclusion")?;
    if let Some(conclusion) = &conclusion
        && !CONCLUSIONS.contains(&conclusion.as_str())
    {
        return Err(not_one_of("conclusion", conclusion, &CONCLUSIONS));
    }
    let output = match map.get("output") {
        None | Some(Value::Null) => None,
        Some(value) => Some(output(value)?),
    };
    let actions = match map.get("actions") {
        None | Some(Value::Null) => None,
        Some(value) => Some(actions(value)?),
    };
    Ok(Change {
        name: text(&map, "name")?,
        head_sha: text(&map, "head_sha")?,
        status,
        conclusion,
        external_id: text(&map, "external_id")?,
        details_url: text(&map, "details_url")?,
        output,
        actions,
    })
}

/// Applies `change` to `run`: a conclusion completes it, annotations are appended.
fn apply(run: &mut CheckRunRecord, change: Change) -> Result<(), Reply> {
    let now = Utc::now();
    match (change.status.as_deref(), change.conclusion) {
        (_, Some(conclusion)) => {
            run.status = "completed".to_owned();
            run.conclusion = Some(conclusion);
            run.completed_at = Some(now);
        }
        (Some("completed"), None) => {
            if run.conclusion.is_none() {
                return Err(Reply::invalid(
                    "CheckRun",
                    "missing_field",
                    "conclusion",
                    Some("conclusion must be given when status is completed"),
                ));
            }
        }
        (Some(status), None) => {
            run.status = status.to_owned();
            run.conclusion = None;
            run.completed_at = None;
        }
        (None, None) => {}
    }
    if let Some(name) = change.name {
        if name.trim().is_empty() {
            return Err(failed("name", "name can't be blank"));
        }
        run.name = name;
    }
    if let Some(id) = change.external_id {
        run.external_id = Some(id);
    }
    if let Some(url) = change.details_url {
        run.details_url = Some(url);
    }
    if let Some(output) = change.output {
        run.title = Some(output.title);
        run.summary = Some(output.summary);
        if output.text.is_some() {
            run.text = output.text;
        }
        run.annotations.extend(output.annotations);
    }
    if let Some(actions) = change.actions {
        run.actions = actions;
    }
    Ok(())
}

pub(super) fn create(shared: &Shared, bytes: &[u8], caller: &Caller) -> Reply {
    let app = match writer(caller) {
        Ok(app) => app,
        Err(reply) => return reply,
    };
    let mut change = match change(bytes) {
        Ok(change) => change,
        Err(reply) => return reply,
    };
    let Some(name) = change.name.take() else {
        return not_supplied("name");
    };
    let Some(head_sha) = change.head_sha.take() else {
        return not_supplied("head_sha");
    };
    if name.trim().is_empty() {
        return failed("name", "name can't be blank");
    }
    let mut state = shared.state();
    if !state.commits.contains(&head_sha) {
        return Reply::message(422, &format!("No commit found for SHA: {head_sha}"));
    }
    let mut run = CheckRunRecord {
        id: 0,
        name,
        head_sha,
        status: "queued".to_owned(),
        conclusion: None,
        external_id: None,
        details_url: None,
        title: None,
        summary: None,
        text: None,
        annotations: Vec::new(),
        actions: Vec::new(),
        app,
        created_at: Utc::now(),
        completed_at: None,
        updates: 0,
    };
    if let Err(reply) = apply(&mut run, change) {
        return reply;
    }
    run.id = state.id();
    let body = check_run_json(shared, &state, &run);
    let location = format!("{}/check-runs/{}", shared.site.repo_url(), run.id);
    state.check_runs.insert(run.id, run);
    Reply::json(201, body).header("location", location)
}

pub(super) fn update(shared: &Shared, id: &str, bytes: &[u8], caller: &Caller) -> Reply {
    let app = match writer(caller) {
        Ok(app) => app,
        Err(reply) => return reply,
    };
    let Some(id) = id.parse::<u64>().ok() else {
        return Reply::not_found();
    };
    let mut change = match change(bytes) {
        Ok(change) => change,
        Err(reply) => return reply,
    };
    // A check run stays on its commit.
    change.head_sha = None;
    let mut state = shared.state();
    let Some(held) = state.check_runs.get(&id) else {
        return Reply::not_found();
    };
    if held.app != app {
        return Reply::message(403, "Resource not accessible by integration");
    }
    let mut run = held.clone();
    if let Err(reply) = apply(&mut run, change) {
        return reply;
    }
    run.updates += 1;
    let body = check_run_json(shared, &state, &run);
    state.check_runs.insert(id, run);
    Reply::json(200, body)
}

pub(super) fn get(shared: &Shared, id: &str) -> Reply {
    let state = shared.state();
    match id
        .parse::<u64>()
        .ok()
        .and_then(|id| state.check_runs.get(&id))
    {
        Some(run) => Reply::json(200, check_run_json(shared, &state, run)),
        None => Reply::not_found(),
    }
}

/// `GET /repos/{o}/{r}/commits/{ref}/check-runs`: newest first; `filter=latest` (the
/// default) keeps the newest run of each name and App; `check_name`, `status` and `app_id`
/// narrow it; paged, with `total_count` over every page.
pub(super) fn list_for_ref(
    shared: &Shared,
    reference: &str,
    query: Option<&str>,
    rest: &[&str],
) -> Reply {
    let param = |name: &str| {
        query.unwrap_or("").split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == name).then(|| decode(v))
        })
    };
    let check_name = param("check_name");
    let status = param("status");
    let app_id = param("app_id").and_then(|v| v.parse::<u64>().ok());
    let latest = param("filter").is_none_or(|f| f != "all");
    let items: Vec<Value> = {
        let state = shared.state();
        let Some(sha) = state.resolve(reference) else {
            return Reply::message(422, &format!("No commit found for SHA: {reference}"));
        };
        let mut seen: Vec<(&str, &str)> = Vec::new();
        let mut runs = Vec::new();
        for run in state
            .check_runs
            .values()
            .rev()
            .filter(|r| r.head_sha == sha)
        {
            if latest {
                if seen.contains(&(run.name.as_str(), run.app.as_str())) {
                    continue;
                }
                seen.push((&run.name, &run.app));
            }
            let wanted = check_name.as_deref().is_none_or(|n| n == run.name)
                && status.as_deref().is_none_or(|s| s == run.status)
                && app_id.is_none_or(|id| id == app_id_of(shared, &run.app));
            if wanted {
                runs.push(check_run_json(shared, &state, run));
            }
        }
        runs
    };
    let total = items.len();
    let mut page = paginate(shared, rest, query, items);
    let shown = page.body.take().unwrap_or_else(|| json!([]));
    page.body = Some(json!({"total_count": total, "check_runs": shown}));
    page
}

pub(super) fn annotations(shared: &Shared, id: &str, query: Option<&str>, rest: &[&str]) -> Reply {
    let items: Vec<Value> = {
        let state = shared.state();
        let Some(run) = id
            .parse::<u64>()
            .ok()
            .and_then(|id| state.check_runs.get(&id))
        else {
            return Reply::not_found();
        };
        run.annotations
            .iter()
            .map(|a| annotation_json(shared, run, a))
            .collect()
    };
    paginate(shared, rest, query, items)
}

/// `%XX` and `+` in a query value.
fn decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 3)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (bytes[i], escaped) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 2;
            }
            (other, _) => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn app_id_of(shared: &Shared, slug: &str) -> u64 {
    if slug == shared.site.app_slug {
        shared.site.app_id
    } else {
        // Actions' app id on github.com.
        15368
    }
}

fn app_json(shared: &Shared, slug: &str) -> Value {
    if slug == shared.site.app_slug {
        return shared.site.app();
    }
    let mut app = shared.site.app();
    app["id"] = json!(app_id_of(shared, slug));
    app["slug"] = json!(slug);
    app["name"] = json!("GitHub Actions");
    app["owner"] = shared.site.user("github");
    app
}

/// A check run as GitHub returns it, with the open pull requests of its commit in the same
/// repository (GitHub leaves out those from forks).
fn check_run_json(shared: &Shared, state: &State, run: &CheckRunRecord) -> Value {
    let site = &shared.site;
    let repo_url = site.repo_url();
    let html = format!("{}/{}/runs/{}", site.web(), site.full_name(), run.id);
    let minimal_repo = json!({"id": site.repo_id, "url": repo_url, "name": site.repo});
    let pulls: Vec<Value> = state
        .pulls
        .values()
        .filter(|p| p.state == "open" && !p.from_fork && p.head_sha == run.head_sha)
        .map(|p| {
            json!({
                "url": format!("{repo_url}/pulls/{}", p.number),
                "id": p.id,
                "number": p.number,
                "head": {"ref": p.head_ref, "sha": p.head_sha, "repo": minimal_repo},
                "base": {"ref": p.base_ref, "sha": p.base_sha, "repo": minimal_repo}
            })
        })
        .collect();
    json!({
        "id": run.id,
        "node_id": format!("CR_kwDO{:08}", run.id),
        "head_sha": run.head_sha,
        "external_id": run.external_id.clone().unwrap_or_default(),
        "url": format!("{repo_url}/check-runs/{}", run.id),
        "html_url": html,
        "details_url": run.details_url.clone().unwrap_or_else(|| html.clone()),
        "status": run.status,
        "conclusion": run.conclusion,
        "started_at": super::super::json::time(run.created_at),
        "completed_at": run.completed_at.map(super::super::json::time),
        "output": {
            "title": run.title,
            "summary": run.summary,
            "text": run.text,
            "annotations_count": run.annotations.len(),
            "annotations_url": format!("{repo_url}/check-runs/{}/annotations", run.id)
        },
        "name": run.name,
        "check_suite": {"id": user_id(&format!("{}@{}", run.head_sha, run.app))},
        "app": app_json(shared, &run.app),
        "pull_requests": pulls
    })
}

fn annotation_json(shared: &Shared, run: &CheckRunRecord, a: &AnnotationRecord) -> Value {
    let site = &shared.site;
    json!({
        "path": a.path,
        "start_line": a.start_line,
        "end_line": a.end_line,
        "start_column": a.start_column,
        "end_column": a.end_column,
        "annotation_level": a.level,
        "title": a.title,
        "message": a.message,
        "raw_details": a.raw_details,
        "blob_href": format!("{}/{}/blob/{}/{}", site.web(), site.full_name(), run.head_sha, a.path)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(decode("trainyard%2Fvalidate"), "trainyard/validate");
        assert_eq!(decode("a+b"), "a b");
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz"), "%zz");
    }
}
