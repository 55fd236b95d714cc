//! The HTTP side: URL routing, authentication, RBAC, injected faults, request records,
//! and the verbs (get, list, watch, create, update, patch, delete, pods/log).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::chaos::{self, Draw};
use super::controller;
use super::logs::{Logs, tail_lines};
use super::patch::{self, PatchType};
use super::resources::{self, ALL, ResourceType};
use super::selector::{FieldSelector, LabelSelector};
use super::status::ApiError;
use super::store::{Broadcast, Deleted, Event, Store};

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// The authorizer's verb: get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: String,
    /// Plural resource, with the subresource as RBAC spells it (`pods/log`, `jobs/status`);
    /// empty for discovery.
    pub resource: String,
    /// API group (empty for core).
    pub group: String,
    /// Namespace, if the URL had one.
    pub namespace: Option<String>,
    /// Object name, if the URL had one.
    pub name: Option<String>,
    /// The HTTP status answered (200 for a watch that started streaming).
    pub status: u16,
    /// The client's `User-Agent`, if it sent one.
    pub user_agent: Option<String>,
    /// The connection was dropped instead of answering (by [`crate::kube::ApiServer::chaos`]);
    /// `status` is what the request did before that: 0 when it was dropped unanswered, the
    /// status it would have had when it took effect and only the answer was lost.
    pub dropped: bool,
}

/// A failure to answer in place of the next matching requests.
#[derive(Debug, Clone)]
pub struct Fault {
    /// How many more requests get it.
    pub remaining: usize,
    /// HTTP status.
    pub code: u16,
    /// Seconds for `Retry-After`.
    pub retry_after: Option<u64>,
    /// Only requests with this verb (get, list, watch, create, ...).
    pub verb: Option<String>,
    /// Only requests for this resource (plural, e.g. `jobs`).
    pub resource: Option<String>,
}

/// State shared by the HTTP handlers, the controllers and the test handle.
pub struct Shared {
    pub(crate) store: Mutex<Store>,
    pub(crate) logs: Arc<Logs>,
    pub(crate) token: Option<String>,
    pub(crate) user: String,
    pub(crate) faults: Mutex<Vec<Fault>>,
    pub(crate) chaos: super::chaos::Chaos,
    pub(crate) records: Mutex<Vec<RequestRecord>>,
    pub(crate) rbac: Mutex<Option<Value>>,
    pub(crate) bookmark_interval: Duration,
}

impl Shared {
    /// Locks the store; a poisoned lock is taken over, since the store is never left
    /// half-written across a panic point that matters to tests.
    pub(crate) fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a URL names.
#[derive(Debug)]
enum Target {
    Discovery(Value),
    Collection {
        resource: &'static ResourceType,
        namespace: Option<String>,
    },
    Object {
        resource: &'static ResourceType,
        namespace: String,
        name: String,
        sub: Option<String>,
    },
}

fn resource_list(group_version: &str, group: &str, version: &str) -> Value {
    let resources: Vec<Value> = ALL
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .flat_map(|r| {
            let mut out = vec![json!({
                "name": r.plural, "singularName": r.kind.to_ascii_lowercase(), "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
            })];
            if r.status_subresource {
                out.push(json!({"name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced,
                                "kind": r.kind, "verbs": ["get", "patch", "update"]}));
            }
            if r.kind == "Pod" {
                out.push(json!({"name": "pods/log", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get"]}));
            }
            out
        })
        .collect();
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources})
}

fn route(path: &str) -> Result<Target, ApiError> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => {
            return Ok(Target::Discovery(json!({
                "major": "1", "minor": "33", "gitVersion": "v1.33.0", "gitCommit": "standin",
                "gitTreeState": "clean", "buildDate": "2025-04-23T00:00:00Z", "goVersion": "go1.24.2",
                "compiler": "gc", "platform": "linux/amd64"
            })));
        }
        ["api"] => {
            return Ok(Target::Discovery(
                json!({"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
            ));
        }
        ["apis"] => {
            let mut groups: Vec<&str> = ALL
                .iter()
                .map(|r| r.group)
                .filter(|g| !g.is_empty())
                .collect();
            groups.dedup();
            let groups: Vec<Value> = groups
                .iter()
                .map(|g| {
                    let v = ALL
                        .iter()
                        .find(|r| r.group == *g)
                        .map(|r| r.version)
                        .unwrap_or("v1");
                    let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
                    json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
                })
                .collect();
            return Ok(Target::Discovery(
                json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
            ));
        }
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(ApiError::no_route()),
    };
    if rest.is_empty() {
        if !ALL.iter().any(|r| r.group == group && r.version == version) {
            return Err(ApiError::no_route());
        }
        let gv = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        return Ok(Target::Discovery(resource_list(&gv, group, version)));
    }
    let find =
        |plural: &str| resources::find(group, version, plural).ok_or_else(ApiError::no_route);
    match rest {
        ["namespaces", ns, plural] => {
            let resource = find(plural)?;
            if !resource.namespaced {
                return Err(ApiError::no_route());
            }
            Ok(Target::Collection {
                resource,
                namespace: Some(ns.to_string()),
            })
        }
        ["namespaces", ns, plural, name] => Ok(Target::Object {
            resource: find(plural)?,
            namespace: ns.to_string(),
            name: name.to_string(),
            sub: None,
        }),
        ["namespaces", ns, plural, name, sub] => Ok(Target::Object {
            resource: find(plural)?,
            namespace: ns.to_string(),
            name: name.to_string(),
            sub: Some(sub.to_string()),
        }),
        [plural] => Ok(Target::Collection {
            resource: find(plural)?,
            namespace: None,
        }),
        [plural, name] => {
            let resource = find(plural)?;
            if resource.namespaced {
                return Err(ApiError::no_route());
            }
            Ok(Target::Object {
                resource,
                namespace: String::new(),
                name: name.to_string(),
                sub: None,
            })
        }
        [plural, name, sub] => {
            let resource = find(plural)?;
            if resource.namespaced {
                return Err(ApiError::no_route());
            }
            Ok(Target::Object {
                resource,
                namespace: String::new(),
                name: name.to_string(),
                sub: Some(sub.to_string()),
            })
        }
        _ => Err(ApiError::no_route()),
    }
}

fn query_params(query: Option<&str>) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.insert(percent_decode(k), percent_decode(v));
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn json_response(code: u16, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() =
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn error_response(err: &ApiError) -> Response {
    let mut response = json_response(err.code, &err.to_status());
    if let Some(secs) = err.retry_after
        && let Ok(v) = HeaderValue::from_str(&secs.to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

/// The authorizer's verb for a request.
fn verb_of(method: &Method, target: &Target, params: &HashMap<String, String>) -> &'static str {
    let watching = matches!(params.get("watch").map(String::as_str), Some("true" | "1"));
    match (method, target) {
        (&Method::GET, Target::Collection { .. }) if watching => "watch",
        (&Method::GET, Target::Collection { .. }) => "list",
        (&Method::GET, _) if watching => "watch",
        (&Method::GET, _) => "get",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, Target::Collection { .. }) => "deletecollection",
        (&Method::DELETE, _) => "delete",
        _ => "unknown",
    }
}

fn record_of(verb: &str, target: &Target) -> RequestRecord {
    let (resource, group, namespace, name) = match target {
        Target::Discovery(_) => (String::new(), String::new(), None, None),
        Target::Collection {
            resource,
            namespace,
        } => (
            resource.plural.to_string(),
            resource.group.to_string(),
            namespace.clone(),
            None,
        ),
        Target::Object {
            resource,
            namespace,
            name,
            sub,
        } => {
            let plural = match sub {
                Some(s) => format!("{}/{s}", resource.plural),
                None => resource.plural.to_string(),
            };
            let ns = if namespace.is_empty() {
                None
            } else {
                Some(namespace.clone())
            };
            (plural, resource.group.to_string(), ns, Some(name.clone()))
        }
    };
    RequestRecord {
        verb: verb.to_string(),
        resource,
        group,
        namespace,
        name,
        status: 0,
        user_agent: None,
        dropped: false,
    }
}

fn rule_allows(rule: &Value, record: &RequestRecord) -> bool {
    let has = |key: &str, want: &str| {
        rule.get(key)
            .and_then(Value::as_array)
            .is_some_and(|l| l.iter().any(|x| x == "*" || x == want))
    };
    let names_ok = match rule.get("resourceNames").and_then(Value::as_array) {
        None => true,
        Some(list) if list.is_empty() => true,
        Some(list) => record
            .name
            .as_ref()
            .is_some_and(|n| list.iter().any(|x| x == n.as_str())),
    };
    has("apiGroups", &record.group)
        && has("resources", &record.resource)
        && has("verbs", &record.verb)
        && names_ok
}

fn forbidden(user: &str, record: &RequestRecord) -> ApiError {
    let qualified_name = if record.group.is_empty() {
        record.resource.clone()
    } else {
        format!("{}.{}", record.resource, record.group)
    };
    let subject = match &record.name {
        Some(n) => format!("{qualified_name} \"{n}\""),
        None => qualified_name,
    };
    let scope = match &record.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_string(),
    };
    let message = format!(
        "{subject} is forbidden: User \"{user}\" cannot {} resource \"{}\" in API group \"{}\" {scope}",
        record.verb, record.resource, record.group
    );
    ApiError::forbidden(
        message,
        &record.resource,
        &record.group,
        record.name.as_deref().unwrap_or(""),
    )
}

/// The single entry point for every request.
pub(crate) async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let params = query_params(request.uri().query());
    let headers = request.headers().clone();
    let target = match route(&path) {
        Ok(t) => t,
        Err(err) => {
            let mut record = RequestRecord {
                verb: method.as_str().to_ascii_lowercase(),
                resource: path.clone(),
                group: String::new(),
                namespace: None,
                name: None,
                status: 404,
                user_agent: None,
                dropped: false,
            };
            record.status = err.code;
            lock(&shared.records).push(record);
            return error_response(&err);
        }
    };
    let verb = verb_of(&method, &target, &params);
    let mut record = record_of(verb, &target);
    record.user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut outcome = pre_checks(&shared, &headers, &record);
    let mut draw = Draw::Pass;
    if outcome.is_ok() {
        draw = shared.chaos.draw();
        outcome = match draw {
            Draw::InternalError => Err(ApiError::injected(500, None)),
            Draw::TooManyRequests => Err(ApiError::injected(429, Some(1))),
            Draw::DropBefore => {
                record.dropped = true;
                lock(&shared.records).push(record);
                return chaos::dropped();
            }
            Draw::Pass | Draw::DropAfter => Ok(()),
        };
    }
    let response = match outcome {
        Err(err) => error_response(&err),
        Ok(()) => {
            let body = match to_bytes(request.into_body(), 64 << 20).await {
                Ok(b) => b,
                Err(_) => Bytes::new(),
            };
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            match dispatch(&shared, verb, target, &params, &content_type, &body).await {
                Ok(r) => r,
                Err(err) => error_response(&err),
            }
        }
    };
    record.status = response.status().as_u16();
    if draw == Draw::DropAfter {
        record.dropped = true;
        lock(&shared.records).push(record);
        return chaos::dropped();
    }
    lock(&shared.records).push(record);
    response
}

fn pre_checks(
    shared: &Shared,
    headers: &axum::http::HeaderMap,
    record: &RequestRecord,
) -> Result<(), ApiError> {
    if let Some(token) = &shared.token {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if presented != format!("Bearer {token}") {
            return Err(ApiError::unauthorized());
        }
    }
    {
        let mut faults = lock(&shared.faults);
        let hit = faults.iter_mut().find(|f| {
            f.remaining > 0
                && f.verb.as_deref().is_none_or(|v| v == record.verb)
                && f.resource.as_deref().is_none_or(|r| {
                    r == record.resource || r == record.resource.split('/').next().unwrap_or("")
                })
        });
        if let Some(fault) = hit {
            fault.remaining -= 1;
            let err = ApiError::injected(fault.code, fault.retry_after);
            faults.retain(|f| f.remaining > 0);
            return Err(err);
        }
    }
    if record.resource.is_empty() {
        return Ok(());
    }
    if let Some(rules) = lock(&shared.rbac).as_ref() {
        let allowed = rules
            .as_array()
            .is_some_and(|rs| rs.iter().any(|r| rule_allows(r, record)));
        if !allowed {
            return Err(forbidden(&shared.user, record));
        }
    }
    Ok(())
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("the body of the request could not be decoded: {e}"))
    })
}

fn parse_yaml_or_json(body: &[u8]) -> Result<Value, ApiError> {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return Ok(v);
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::bad_request("the apply body is not UTF-8"))?;
    serde_saphyr::from_str::<Value>(text)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
}

async fn dispatch(
    shared: &Arc<Shared>,
    verb: &str,
    target: Target,
    params: &HashMap<String, String>,
    content_type: &str,
    body: &[u8],
) -> Result<Response, ApiError> {
    let manager = params
        .get("fieldManager")
        .cloned()
        .unwrap_or_else(|| "unknown".to_string());
    match target {
        Target::Discovery(value) => {
            if verb != "get" && verb != "list" {
                return Err(ApiError::method_not_allowed(verb));
            }
            Ok(json_response(200, &value))
        }
        Target::Collection {
            resource,
            namespace,
        } => match verb {
            "list" => list(shared, resource, namespace.as_deref(), params),
            "watch" => watch(shared, resource, namespace, None, params),
            "create" => {
                let ns = match (&namespace, resource.namespaced) {
                    (Some(ns), true) => ns.clone(),
                    (None, false) => String::new(),
                    _ => return Err(ApiError::method_not_allowed("create")),
                };
                let object = parse_body(body)?;
                let mut store = shared.store();
                let created = store.create(resource, &ns, object, &manager)?;
                controller::settle(&mut store);
                Ok(json_response(201, &created))
            }
            "deletecollection" => {
                let label = LabelSelector::parse(
                    params
                        .get("labelSelector")
                        .map(String::as_str)
                        .unwrap_or(""),
                )?;
                let mut store = shared.store();
                let names: Vec<(String, String)> = store
                    .range(resource, namespace.as_deref(), None)
                    .filter(|o| label.matches(o))
                    .map(|o| {
                        let ns = o
                            .pointer("/metadata/namespace")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string();
                        let n = o
                            .pointer("/metadata/name")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string();
                        (ns, n)
                    })
                    .collect();
                let options = if body.is_empty() {
                    json!({})
                } else {
                    parse_body(body)?
                };
                for (ns, name) in names {
                    store.delete(resource, &ns, &name, &options)?;
                }
                controller::settle(&mut store);
                Ok(json_response(
                    200,
                    &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
                ))
            }
            _ => Err(ApiError::method_not_allowed(verb)),
        },
        Target::Object {
            resource,
            namespace,
            name,
            sub,
        } => {
            match sub.as_deref() {
                None | Some("status") => {}
                Some("log") if resource.kind == "Pod" && verb == "get" => {
                    return pod_log(shared, &namespace, &name, params).await;
                }
                Some(_) => return Err(ApiError::no_route()),
            }
            match verb {
                "get" => {
                    let store = shared.store();
                    let stored = store
                        .get(resource, &namespace, &name)
                        .ok_or_else(|| ApiError::not_found(resource, &name))?;
                    Ok(json_response(200, &stored.object))
                }
                "watch" => watch(
                    shared,
                    resource,
                    Some(namespace).filter(|n| !n.is_empty()),
                    Some(name),
                    params,
                ),
                "update" => {
                    let object = parse_body(body)?;
                    let mut store = shared.store();
                    let updated = store.update(
                        resource,
                        &namespace,
                        &name,
                        object,
                        sub.as_deref(),
                        None,
                        &manager,
                    )?;
                    controller::settle(&mut store);
                    Ok(json_response(200, &updated))
                }
                "patch" => {
                    let kind = PatchType::from_content_type(content_type)?;
                    let mut store = shared.store();
                    let result = if kind == PatchType::Apply {
                        if !params.contains_key("fieldManager") {
                            return Err(ApiError::invalid_options(
                                "PatchOptions",
                                &[super::status::Cause::required(
                                    "fieldManager",
                                    "is required for apply patch",
                                )],
                            ));
                        }
                        let config = parse_yaml_or_json(body)?;
                        if !config.is_object() {
                            return Err(ApiError::bad_request("an apply patch must be an object"));
                        }
                        let force = params.get("force").is_some_and(|f| f == "true");
                        let existed = store.get(resource, &namespace, &name).is_some();
                        let applied =
                            store.apply(resource, &namespace, &name, config, &manager, force)?;
                        controller::settle(&mut store);
                        return Ok(json_response(if existed { 200 } else { 201 }, &applied));
                    } else {
                        let stored = store
                            .get(resource, &namespace, &name)
                            .ok_or_else(|| ApiError::not_found(resource, &name))?;
                        let mut object = stored.object.clone();
                        let patch_body = parse_body(body)?;
                        match kind {
                            PatchType::Json => patch::json_patch(&mut object, &patch_body)?,
                            _ => {
                                if !patch_body.is_object() {
                                    return Err(ApiError::bad_request(
                                        "a merge patch must be a JSON object",
                                    ));
                                }
                                patch::merge(&mut object, &patch_body)
                            }
                        }
                        store.update(
                            resource,
                            &namespace,
                            &name,
                            object,
                            sub.as_deref(),
                            None,
                            &manager,
                        )?
                    };
                    controller::settle(&mut store);
                    Ok(json_response(200, &result))
                }
                "delete" => {
                    let mut options = if body.is_empty() {
                        json!({})
                    } else {
                        parse_body(body)?
                    };
                    if let Some(p) = params.get("propagationPolicy") {
                        options["propagationPolicy"] = json!(p);
                    }
                    if let Some(g) = params
                        .get("gracePeriodSeconds")
                        .and_then(|g| g.parse::<u64>().ok())
                    {
                        options["gracePeriodSeconds"] = json!(g);
                    }
                    let mut store = shared.store();
                    let outcome = store.delete(resource, &namespace, &name, &options)?;
                    controller::settle(&mut store);
                    match outcome {
                        Deleted::Object(o) => Ok(json_response(200, &o)),
                        Deleted::Status(s) => Ok(json_response(200, &s)),
                    }
                }
                _ => Err(ApiError::method_not_allowed(verb)),
            }
        }
    }
}

fn continue_token(rv: u64, key: &(String, String)) -> String {
    let raw = format!("{rv}\n{}\n{}", key.0, key.1);
    raw.bytes().map(|b| format!("{b:02x}")).collect()
}

fn parse_continue(token: &str) -> Option<(u64, (String, String))> {
    if !token.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
        .collect();
    let text = String::from_utf8(bytes?).ok()?;
    let mut parts = text.splitn(3, '\n');
    let rv = parts.next()?.parse().ok()?;
    Some((rv, (parts.next()?.to_string(), parts.next()?.to_string())))
}

fn strip_type_meta(mut object: Value) -> Value {
    if let Some(map) = object.as_object_mut() {
        map.remove("kind");
        map.remove("apiVersion");
    }
    object
}

fn list(
    shared: &Shared,
    resource: &'static ResourceType,
    namespace: Option<&str>,
    params: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let label = LabelSelector::parse(
        params
            .get("labelSelector")
            .map(String::as_str)
            .unwrap_or(""),
    )?;
    let field = FieldSelector::parse(
        params
            .get("fieldSelector")
            .map(String::as_str)
            .unwrap_or(""),
        resource.kind,
    )?;
    let limit = params
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let store = shared.store();
    let (list_rv, after) = match params.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let (rv, key) = parse_continue(token).ok_or_else(|| {
                ApiError::bad_request(
                    "continue key is not valid: illegal base64 data at input byte 0",
                )
            })?;
            if rv < store.compacted_rv() {
                return Err(ApiError::expired(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
                ));
            }
            (rv, Some(key))
        }
        None => {
            if params.get("resourceVersionMatch").map(String::as_str) == Some("Exact") {
                let want: u64 = params
                    .get("resourceVersion")
                    .and_then(|r| r.parse().ok())
                    .unwrap_or(0);
                if want < store.compacted_rv() {
                    return Err(ApiError::expired(format!(
                        "too old resource version: {want} ({})",
                        store.compacted_rv()
                    )));
                }
            }
            (store.current_rv(), None)
        }
    };
    let mut items = Vec::new();
    let mut more = None;
    let mut last_key = None;
    let exact = field.exact_name().map(str::to_string);
    let candidates: Box<dyn Iterator<Item = &Value>> = match (&exact, namespace) {
        (Some(name), Some(ns)) => {
            Box::new(store.get(resource, ns, name).map(|s| &s.object).into_iter())
        }
        _ => Box::new(store.range(resource, namespace, after)),
    };
    for object in candidates.filter(|o| label.matches(o) && field.matches(o)) {
        if limit.is_some_and(|l| items.len() >= l) {
            more = last_key.clone();
            break;
        }
        let ns = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        last_key = Some((ns, name));
        items.push(strip_type_meta(object.clone()));
    }
    let mut metadata = json!({"resourceVersion": list_rv.to_string()});
    if let Some(key) = more {
        metadata["continue"] = json!(continue_token(list_rv, &key));
    }
    let body = json!({
        "kind": format!("{}List", resource.kind),
        "apiVersion": resource.api_version(),
        "metadata": metadata,
        "items": items,
    });
    Ok(json_response(200, &body))
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut bytes =
        serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

fn bookmark(resource: &ResourceType, rv: u64, initial_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event_line(
        "BOOKMARK",
        &json!({"kind": resource.kind, "apiVersion": resource.api_version(), "metadata": metadata}),
    )
}

fn expired_line(want: u64, oldest: u64) -> Bytes {
    let err = ApiError::expired(format!("too old resource version: {want} ({oldest})"));
    event_line("ERROR", &err.to_status())
}

struct WatchFilter {
    resource: usize,
    namespace: Option<String>,
    name: Option<String>,
    label: LabelSelector,
    field: FieldSelector,
}

impl WatchFilter {
    fn matches(&self, event: &Event) -> bool {
        let o = &event.object;
        event.resource == self.resource
            && self.namespace.as_deref().is_none_or(|ns| {
                o.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns)
            })
            && self
                .name
                .as_deref()
                .is_none_or(|n| o.pointer("/metadata/name").and_then(Value::as_str) == Some(n))
            && self.label.matches(o)
            && self.field.matches(o)
    }
}

fn watch(
    shared: &Arc<Shared>,
    resource: &'static ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    params: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let filter = WatchFilter {
        resource: resource.index,
        namespace,
        name,
        label: LabelSelector::parse(
            params
                .get("labelSelector")
                .map(String::as_str)
                .unwrap_or(""),
        )?,
        field: FieldSelector::parse(
            params
                .get("fieldSelector")
                .map(String::as_str)
                .unwrap_or(""),
            resource.kind,
        )?,
    };
    let bookmarks = params
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true" || b == "1");
    let initial_events = params.get("sendInitialEvents").is_some_and(|b| b == "true");
    if initial_events
        && (!bookmarks
            || params.get("resourceVersionMatch").map(String::as_str) != Some("NotOlderThan"))
    {
        return Err(ApiError::invalid(
            resource,
            "",
            &[super::status::Cause::forbidden(
                "sendInitialEvents",
                "sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled and allowWatchBookmarks is true and resourceVersionMatch is NotOlderThan",
            )],
        ));
    }
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs);
    let requested = params
        .get("resourceVersion")
        .map(String::as_str)
        .unwrap_or("");
    let mut first: Vec<Bytes> = Vec::new();
    let mut ended = false;
    let (rx, mut last_rv) = {
        let store = shared.store();
        let current = store.current_rv();
        if requested.is_empty() || requested == "0" || initial_events {
            let objects: Vec<&Value> = store
                .range(resource, filter.namespace.as_deref(), None)
                .filter(|o| {
                    filter.name.as_deref().is_none_or(|n| {
                        o.pointer("/metadata/name").and_then(Value::as_str) == Some(n)
                    }) && filter.label.matches(o)
                        && filter.field.matches(o)
                })
                .collect();
            for o in objects {
                first.push(event_line("ADDED", o));
            }
            if initial_events {
                first.push(bookmark(resource, current, true));
            }
            (store.subscribe(), current)
        } else {
            let want: u64 = requested.parse().map_err(|_| {
                ApiError::bad_request(format!("invalid resource version: {requested}"))
            })?;
            match store.events_since(resource.index, want) {
                Some(events) => {
                    for e in events.iter().filter(|e| filter.matches(e)) {
                        first.push(e.line.clone());
                    }
                    (store.subscribe(), current.max(want))
                }
                None => {
                    first.push(expired_line(want, store.compacted_rv()));
                    ended = true;
                    (store.subscribe(), want)
                }
            }
        }
    };
    let (tx, out) = mpsc::channel::<Result<Bytes, Infallible>>(1024);
    let interval = shared.bookmark_interval;
    tokio::spawn(async move {
        for line in first {
            if tx.send(Ok(line)).await.is_err() {
                return;
            }
        }
        if ended {
            return;
        }
        let mut rx = rx;
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        loop {
            let sleep_until = deadline
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86_400));
            tokio::select! {
                message = rx.recv() => match message {
                    Ok(Broadcast::Event(event)) => {
                        if event.rv <= last_rv {
                            continue;
                        }
                        last_rv = event.rv;
                        if filter.matches(&event) && tx.send(Ok(event.line.clone())).await.is_err() {
                            return;
                        }
                    }
                    Ok(Broadcast::Compacted(rv)) => {
                        let _ = tx.send(Ok(expired_line(last_rv, rv))).await;
                        return;
                    }
                    Ok(Broadcast::CloseAll) | Err(broadcast::error::RecvError::Closed) => return,
                    // A watcher too slow for the server is dropped; the client resumes from its last version.
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                },
                _ = ticker.tick(), if bookmarks => {
                    if tx.send(Ok(bookmark(resource, last_rv, false))).await.is_err() {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(sleep_until) => {
                    if bookmarks {
                        let _ = tx.send(Ok(bookmark(resource, last_rv, false))).await;
                    }
                    return;
                }
                _ = tx.closed() => return,
            }
        }
    });
    let stream = futures::stream::unfold(out, |mut out| async move {
        out.recv().await.map(|item| (item, out))
    });
    let mut response = Response::new(Body::from_stream(stream));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

fn container_choice(pod: &Value, requested: Option<&String>) -> Result<String, ApiError> {
    let names = |list: &str| -> Vec<String> {
        pod.pointer(&format!("/spec/{list}"))
            .and_then(Value::as_array)
            .map(|cs| {
                cs.iter()
                    .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let main = names("containers");
    let init = names("initContainers");
    let pod_name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    match requested {
        Some(c) if main.contains(c) || init.contains(c) => Ok(c.clone()),
        Some(c) => Err(ApiError::bad_request(format!(
            "container {c} is not valid for pod {pod_name}"
        ))),
        None if main.len() == 1 => Ok(main[0].clone()),
        None => {
            let mut message = format!(
                "a container name must be specified for pod {pod_name}, choose one of: [{}]",
                main.join(" ")
            );
            if !init.is_empty() {
                message.push_str(&format!(
                    " or one of the init containers: [{}]",
                    init.join(" ")
                ));
            }
            Err(ApiError::bad_request(message))
        }
    }
}

/// Why a container's log cannot be read yet, worded as the kubelet words it.
fn not_started(pod: &Value, container: &str) -> Option<String> {
    let pod_name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let statuses = ["containerStatuses", "initContainerStatuses"]
        .iter()
        .filter_map(|k| {
            pod.pointer(&format!("/status/{k}"))
                .and_then(Value::as_array)
        })
        .flatten()
        .find(|s| s["name"] == container)
        .cloned();
    let is_init = pod
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .is_some_and(|l| l.iter().any(|c| c["name"] == container));
    match statuses {
        Some(status) => {
            let waiting = status
                .pointer("/state/waiting/reason")
                .and_then(Value::as_str)?;
            let reason = match waiting {
                "ErrImagePull" | "ImagePullBackOff" => "trying and failing to pull image",
                other => other,
            };
            Some(format!(
                "container \"{container}\" in pod \"{pod_name}\" is waiting to start: {reason}"
            ))
        }
        None => {
            let has_init = pod
                .pointer("/spec/initContainers")
                .and_then(Value::as_array)
                .is_some_and(|l| !l.is_empty());
            let reason = if has_init && !is_init {
                "PodInitializing"
            } else {
                "ContainerCreating"
            };
            Some(format!(
                "container \"{container}\" in pod \"{pod_name}\" is waiting to start: {reason}"
            ))
        }
    }
}

async fn pod_log(
    shared: &Arc<Shared>,
    namespace: &str,
    name: &str,
    params: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let pod = {
        let store = shared.store();
        store
            .get(resources::pods(), namespace, name)
            .map(|s| s.object.clone())
            .ok_or_else(|| ApiError::not_found(resources::pods(), name))?
    };
    let container = container_choice(&pod, params.get("container"))?;
    let buffer = shared.logs.existing(namespace, name, &container);
    let buffer = match buffer {
        Some(b) => b,
        None => {
            if let Some(message) = not_started(&pod, &container) {
                return Err(ApiError::bad_request(message));
            }
            shared.logs.buffer(namespace, name, &container)
        }
    };
    let mut data = buffer.snapshot();
    if let Some(n) = params
        .get("tailLines")
        .and_then(|t| t.parse::<usize>().ok())
    {
        data = tail_lines(&data, n).to_vec();
    }
    let limit = params
        .get("limitBytes")
        .and_then(|l| l.parse::<usize>().ok());
    let follow = params
        .get("follow")
        .is_some_and(|f| f == "true" || f == "1");
    let text_plain = |body: Body| {
        let mut r = Response::new(body);
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        r
    };
    if !follow || buffer.closed() {
        if let Some(l) = limit {
            data.truncate(l);
        }
        return Ok(text_plain(Body::from(data)));
    }
    let (tx, out) = mpsc::channel::<Result<Bytes, Infallible>>(64);
    let mut offset = buffer.snapshot().len();
    let mut sent = data.len();
    tokio::spawn(async move {
        let first = match limit {
            Some(l) => data[..data.len().min(l)].to_vec(),
            None => data,
        };
        if !first.is_empty() && tx.send(Ok(Bytes::from(first))).await.is_err() {
            return;
        }
        let mut changes = buffer.subscribe();
        loop {
            let more = buffer.read_from(offset);
            offset += more.len();
            let mut chunk = more;
            if let Some(l) = limit {
                chunk.truncate(l.saturating_sub(sent));
            }
            sent += chunk.len();
            if !chunk.is_empty() && tx.send(Ok(Bytes::from(chunk))).await.is_err() {
                return;
            }
            if limit.is_some_and(|l| sent >= l)
                || (buffer.closed() && buffer.read_from(offset).is_empty())
            {
                return;
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                _ = tx.closed() => return,
            }
        }
    });
    let stream = futures::stream::unfold(out, |mut out| async move {
        out.recv().await.map(|item| (item, out))
    });
    Ok(text_plain(Body::from_stream(stream)))
}

/// Message for a forbidden request, exposed for tests of the wording.
#[cfg(test)]
pub(crate) fn forbidden_message(
    user: &str,
    verb: &str,
    resource: &str,
    group: &str,
    ns: &str,
) -> String {
    let record = RequestRecord {
        verb: verb.into(),
        resource: resource.into(),
        group: group.into(),
        namespace: Some(ns.into()),
        name: None,
        status: 0,
        user_agent: None,
        dropped: false,
    };
    forbidden(user, &record).message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_route_to_collections_objects_and_subresources() {
        match route("/apis/batch/v1/namespaces/ns/jobs").unwrap() {
            Target::Collection {
                resource,
                namespace,
            } => {
                assert_eq!(resource.kind, "Job");
                assert_eq!(namespace.as_deref(), Some("ns"));
            }
            other => panic!("{other:?}"),
        }
        match route("/api/v1/namespaces/ns/pods/p/log").unwrap() {
            Target::Object { sub, name, .. } => {
                assert_eq!(sub.as_deref(), Some("log"));
                assert_eq!(name, "p");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            route("/api/v1/namespaces/x").unwrap(),
            Target::Object { .. }
        ));
        assert!(matches!(
            route("/apis/batch/v1/jobs").unwrap(),
            Target::Collection {
                namespace: None,
                ..
            }
        ));
        assert_eq!(
            route("/apis/apps/v1/namespaces/x/deployments")
                .unwrap_err()
                .code,
            404
        );
    }

    #[test]
    fn continue_tokens_round_trip() {
        let token = continue_token(42, &("ns".into(), "a-b".into()));
        assert_eq!(
            parse_continue(&token),
            Some((42, ("ns".into(), "a-b".into())))
        );
        assert_eq!(parse_continue("zz"), None);
    }

    #[test]
    fn forbidden_is_worded_like_the_rbac_authorizer() {
        assert_eq!(
            forbidden_message("system:serviceaccount:t:t", "create", "jobs", "batch", "x"),
            "jobs.batch is forbidden: User \"system:serviceaccount:t:t\" cannot create resource \"jobs\" in API group \"batch\" in the namespace \"x\""
        );
    }

    #[test]
    fn query_values_are_percent_decoded() {
        let q = query_params(Some("labelSelector=app%3Dx%2Cb+in+%28c%29&watch=1"));
        assert_eq!(q["labelSelector"], "app=x,b in (c)");
        assert_eq!(q["watch"], "1");
    }
}
