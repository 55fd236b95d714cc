//! The four patch types the API server accepts, and the field ownership that makes
//! server-side apply answer 409 when another field manager owns a field.
//!
//! Strategic merge patches are applied as JSON merge patches: maps merge, `null` deletes,
//! and lists are replaced whole (the real server merges some lists by key, e.g.
//! containers by name; callers that patch such lists should send the whole list).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::status::ApiError;

/// Which patch a request carries, from its Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/merge-patch+json` (RFC 7386).
    Merge,
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// `application/json-patch+json` (RFC 6902).
    Json,
    /// `application/apply-patch+yaml` (server-side apply).
    Apply,
}

impl PatchType {
    /// The patch type for a Content-Type header, or 415.
    pub fn from_content_type(content_type: &str) -> Result<Self, ApiError> {
        let media = content_type.split(';').next().unwrap_or("").trim();
        match media {
            "application/merge-patch+json" => Ok(Self::Merge),
            "application/strategic-merge-patch+json" => Ok(Self::Strategic),
            "application/json-patch+json" => Ok(Self::Json),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Ok(Self::Apply),
            other => Err(ApiError::unsupported_media_type(other)),
        }
    }
}

/// RFC 7386: maps merge recursively, `null` removes, anything else replaces.
pub fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(patch_map) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(target_map) = target {
                for (key, value) in patch_map {
                    if value.is_null() {
                        target_map.remove(key);
                    } else {
                        merge(target_map.entry(key.clone()).or_insert(Value::Null), value);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Server-side apply's effect on the object: set every field the configuration names.
fn apply_config(target: &mut Value, config: &Value) {
    match config {
        Value::Object(config_map) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(target_map) = target {
                for (key, value) in config_map {
                    apply_config(target_map.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn split_pointer(path: &str) -> Result<(String, String), ApiError> {
    let idx = path
        .rfind('/')
        .ok_or_else(|| ApiError::bad_request(format!("invalid JSON pointer {path:?}")))?;
    Ok((path[..idx].to_string(), unescape(&path[idx + 1..])))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), ApiError> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = split_pointer(path)?;
    let missing = || {
        ApiError::bad_request(format!(
            "add operation does not apply: doc is missing path: \"{path}\""
        ))
    };
    match doc.pointer_mut(&parent).ok_or_else(missing)? {
        Value::Object(map) => {
            map.insert(last, value);
            Ok(())
        }
        Value::Array(list) => {
            let idx = if last == "-" {
                list.len()
            } else {
                last.parse::<usize>().map_err(|_| missing())?
            };
            if idx > list.len() {
                return Err(missing());
            }
            list.insert(idx, value);
            Ok(())
        }
        _ => Err(missing()),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, ApiError> {
    let (parent, last) = split_pointer(path)?;
    let missing = || {
        ApiError::bad_request(format!(
            "remove operation does not apply: doc is missing path: \"{path}\""
        ))
    };
    match doc.pointer_mut(&parent).ok_or_else(missing)? {
        Value::Object(map) => map.remove(&last).ok_or_else(missing),
        Value::Array(list) => {
            let idx = last.parse::<usize>().map_err(|_| missing())?;
            if idx >= list.len() {
                return Err(missing());
            }
            Ok(list.remove(idx))
        }
        _ => Err(missing()),
    }
}

/// RFC 6902 operations: add, remove, replace, move, copy, test.
pub fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), ApiError> {
    let ops = ops
        .as_array()
        .ok_or_else(|| ApiError::bad_request("json patch must be a list of operations"))?;
    for op in ops {
        let kind = op.get("op").and_then(Value::as_str).unwrap_or("");
        let path = op.get("path").and_then(Value::as_str).unwrap_or("");
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| ApiError::bad_request(format!("{kind} operation without value")))
        };
        match kind {
            "add" => add(doc, path, value()?)?,
            "remove" => {
                remove(doc, path)?;
            }
            "replace" => {
                if doc.pointer(path).is_none() {
                    return Err(ApiError::bad_request(format!(
                        "replace operation does not apply: doc is missing key: {path}"
                    )));
                }
                if let Some(slot) = doc.pointer_mut(path) {
                    *slot = value()?;
                }
            }
            "move" | "copy" => {
                let from = op.get("from").and_then(Value::as_str).unwrap_or("");
                let moved = if kind == "move" {
                    remove(doc, from)?
                } else {
                    doc.pointer(from).cloned().ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "copy operation does not apply: doc is missing from path: {from}"
                        ))
                    })?
                };
                add(doc, path, moved)?;
            }
            "test" => {
                if doc.pointer(path) != Some(&value()?) {
                    return Err(ApiError::bad_request(format!(
                        "testing value {path} failed: test failed"
                    )));
                }
            }
            other => return Err(ApiError::bad_request(format!("Unexpected kind: {other}"))),
        }
    }
    Ok(())
}

/// Fields that are the server's, not any manager's.
fn owned_paths_skip(path: &str) -> bool {
    matches!(path, ".apiVersion" | ".kind" | ".status")
        || path.starts_with(".status.")
        || (path.starts_with(".metadata.")
            && !path.starts_with(".metadata.labels.")
            && !path.starts_with(".metadata.annotations.")
            && !path.starts_with(".metadata.finalizers")
            && !path.starts_with(".metadata.ownerReferences"))
}

/// Leaf field paths (`.spec.holderIdentity`) of a value; lists count as one leaf.
pub fn leaves(value: &Value) -> BTreeMap<String, Value> {
    fn walk(prefix: &str, value: &Value, out: &mut BTreeMap<String, Value>) {
        match value {
            Value::Object(map) if !map.is_empty() => {
                for (k, v) in map {
                    walk(&format!("{prefix}.{k}"), v, out);
                }
            }
            other => {
                if !owned_paths_skip(prefix) && !prefix.is_empty() {
                    out.insert(prefix.to_string(), other.clone());
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", value, &mut out);
    out
}

/// Field ownership per object: leaf path → manager.
pub type Managers = BTreeMap<String, String>;

/// After an update (PUT or a non-apply PATCH) by `manager`: it owns what it changed, and
/// fields that disappeared are nobody's.
pub fn record_update(managers: &mut Managers, old: &Value, new: &Value, manager: &str) {
    let before = leaves(old);
    let after = leaves(new);
    managers.retain(|path, _| after.contains_key(path));
    for (path, value) in &after {
        if before.get(path) != Some(value) {
            managers.insert(path.clone(), manager.to_string());
        }
    }
}

/// Server-side apply: merge `config` into `live` as `manager`. Fails with the conflicting
/// (manager, field) pairs when another manager owns a field this would change, unless forced.
pub fn apply(
    live: &mut Value,
    managers: &mut Managers,
    config: &Value,
    manager: &str,
    force: bool,
) -> Result<(), Vec<(String, String)>> {
    let wanted = leaves(config);
    let current = leaves(live);
    let conflicts: Vec<(String, String)> = wanted
        .iter()
        .filter_map(|(path, value)| {
            let owner = managers.get(path)?;
            let differs = current.get(path).is_some_and(|v| v != value);
            (owner != manager && differs).then(|| (owner.clone(), path.clone()))
        })
        .collect();
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    apply_config(live, config);
    for path in wanted.keys() {
        managers.insert(path.clone(), manager.to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_merge_patch_merges_maps_deletes_nulls_and_replaces_lists() {
        let mut doc = json!({"spec": {"a": 1, "b": 2, "list": [1, 2]}, "keep": true});
        merge(&mut doc, &json!({"spec": {"a": null, "c": 3, "list": [9]}}));
        assert_eq!(
            doc,
            json!({"spec": {"b": 2, "c": 3, "list": [9]}, "keep": true})
        );
    }

    #[test]
    fn json_patch_applies_each_operation_and_fails_a_test_op() {
        let mut doc = json!({"spec": {"suspend": true, "items": [1, 2]}});
        json_patch(
            &mut doc,
            &json!([
                {"op": "replace", "path": "/spec/suspend", "value": false},
                {"op": "add", "path": "/spec/items/-", "value": 3},
                {"op": "remove", "path": "/spec/items/0"},
                {"op": "copy", "from": "/spec/suspend", "path": "/spec/copy"},
                {"op": "test", "path": "/spec/copy", "value": false}
            ]),
        )
        .unwrap();
        assert_eq!(
            doc,
            json!({"spec": {"suspend": false, "items": [2, 3], "copy": false}})
        );
        let err = json_patch(
            &mut doc,
            &json!([{"op": "test", "path": "/spec/copy", "value": true}]),
        )
        .unwrap_err();
        assert_eq!(err.code, 400);
        assert!(
            json_patch(
                &mut doc,
                &json!([{"op": "replace", "path": "/nope", "value": 1}])
            )
            .is_err()
        );
    }

    #[test]
    fn an_apply_over_a_field_another_manager_set_conflicts_until_that_field_is_cleared() {
        let mut live = json!({"metadata": {"name": "l"}, "spec": {}});
        let mut managers = Managers::new();
        apply(
            &mut live,
            &mut managers,
            &json!({"spec": {"holderIdentity": "a", "renewTime": "t1"}}),
            "mgr-a",
            false,
        )
        .unwrap();
        let err = apply(
            &mut live,
            &mut managers,
            &json!({"spec": {"holderIdentity": "b"}}),
            "mgr-b",
            false,
        )
        .unwrap_err();
        assert_eq!(
            err,
            vec![("mgr-a".to_string(), ".spec.holderIdentity".to_string())]
        );
        // The same value is no conflict: both managers then share it in the real server.
        apply(
            &mut live,
            &mut managers,
            &json!({"spec": {"renewTime": "t1"}}),
            "mgr-b",
            false,
        )
        .unwrap();
        // Clearing the field through an update frees it.
        let old = live.clone();
        merge(&mut live, &json!({"spec": {"holderIdentity": null}}));
        record_update(&mut managers, &old, &live, "mgr-b");
        apply(
            &mut live,
            &mut managers,
            &json!({"spec": {"holderIdentity": "b"}}),
            "mgr-b",
            false,
        )
        .unwrap();
        assert_eq!(live["spec"]["holderIdentity"], "b");
    }
}
