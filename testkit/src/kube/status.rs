//! The API server's failure answers: `Status` objects with the codes, reasons and
//! wording the real Kubernetes API server uses.

use serde_json::{Value, json};

use super::resources::ResourceType;

/// A failed request as the real API server reports it: a `Status` body and an HTTP code.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    /// HTTP status code, also `Status.code`.
    pub code: u16,
    /// `Status.reason` (NotFound, AlreadyExists, Conflict, Invalid, Expired, ...).
    pub reason: &'static str,
    /// `Status.message`, worded as the real server words it.
    pub message: String,
    /// `Status.details`, when the real server sends them.
    pub details: Option<Value>,
    /// Seconds for a `Retry-After` header (429 and some 5xx).
    pub retry_after: Option<u64>,
}

/// One field-level problem in a 422 Invalid answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Cause {
    /// `FieldValueInvalid`, `FieldValueRequired`, `FieldValueNotSupported`, ...
    pub reason: &'static str,
    /// Field path such as `spec.template.spec.containers[0].image`.
    pub field: String,
    /// The message without the field path, e.g. `Required value`.
    pub message: String,
}

impl Cause {
    /// `field: Invalid value: "value": detail`.
    pub fn invalid(field: impl Into<String>, value: &str, detail: &str) -> Self {
        Self {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: {}: {detail}", quote(value)),
        }
    }

    /// `field: Required value` (with an optional detail).
    pub fn required(field: impl Into<String>, detail: &str) -> Self {
        let message = if detail.is_empty() {
            "Required value".to_string()
        } else {
            format!("Required value: {detail}")
        };
        Self {
            reason: "FieldValueRequired",
            field: field.into(),
            message,
        }
    }

    /// `field: Unsupported value: "v": supported values: "a", "b"`.
    pub fn not_supported(field: impl Into<String>, value: &str, supported: &[&str]) -> Self {
        let list: Vec<String> = supported.iter().map(|s| quote(s)).collect();
        Self {
            reason: "FieldValueNotSupported",
            field: field.into(),
            message: format!(
                "Unsupported value: {}: supported values: {}",
                quote(value),
                list.join(", ")
            ),
        }
    }

    /// `field: Forbidden: detail`.
    pub fn forbidden(field: impl Into<String>, detail: &str) -> Self {
        Self {
            reason: "FieldValueForbidden",
            field: field.into(),
            message: format!("Forbidden: {detail}"),
        }
    }

    fn rendered(&self) -> String {
        format!("{}: {}", self.field, self.message)
    }
}

/// Go's `%q` for the strings validation messages quote.
fn quote(value: &str) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| format!("\"{value}\""))
}

/// `jobs.batch`, `pods`, `leases.coordination.k8s.io`: how messages name a resource.
pub fn qualified(resource: &ResourceType) -> String {
    if resource.group.is_empty() {
        resource.plural.to_string()
    } else {
        format!("{}.{}", resource.plural, resource.group)
    }
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: String, details: Option<Value>) -> Self {
        Self {
            code,
            reason,
            message,
            details,
            retry_after: None,
        }
    }

    fn details(resource: &ResourceType, name: &str) -> Value {
        json!({"name": name, "group": resource.group, "kind": resource.plural})
    }

    /// 404: `jobs.batch "x" not found`.
    pub fn not_found(resource: &ResourceType, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", qualified(resource)),
            Some(Self::details(resource, name)),
        )
    }

    /// 404 for a path the server does not serve.
    pub fn no_route() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
            Some(json!({})),
        )
    }

    /// 409 on create: `jobs.batch "x" already exists`.
    pub fn already_exists(resource: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", qualified(resource)),
            Some(Self::details(resource, name)),
        )
    }

    /// 409 on a stale resourceVersion precondition.
    pub fn conflict(resource: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                qualified(resource)
            ),
            Some(Self::details(resource, name)),
        )
    }

    /// 409 when a DeleteOptions precondition does not hold.
    pub fn precondition_failed(resource: &ResourceType, name: &str, detail: String) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {detail}",
                qualified(resource)
            ),
            Some(Self::details(resource, name)),
        )
    }

    /// 409 from server-side apply when fields belong to another manager.
    pub fn apply_conflict(
        resource: &ResourceType,
        name: &str,
        conflicts: &[(String, String)],
    ) -> Self {
        let causes: Vec<Value> = conflicts
            .iter()
            .map(|(manager, field)| {
                json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{manager}\""), "field": field})
            })
            .collect();
        let lines: Vec<String> = conflicts
            .iter()
            .map(|(manager, field)| format!("conflict with \"{manager}\": {field}"))
            .collect();
        let message = if lines.len() == 1 {
            format!("Apply failed with 1 conflict: {}", lines[0])
        } else {
            format!(
                "Apply failed with {} conflicts: {}",
                lines.len(),
                lines.join("\n")
            )
        };
        let mut details = Self::details(resource, name);
        details["causes"] = Value::Array(causes);
        Self::new(409, "Conflict", message, Some(details))
    }

    /// 422 with field causes: `Job.batch "x" is invalid: [...]`.
    pub fn invalid(resource: &ResourceType, name: &str, causes: &[Cause]) -> Self {
        let kind_group = if resource.group.is_empty() {
            resource.kind.to_string()
        } else {
            format!("{}.{}", resource.kind, resource.group)
        };
        Self::invalid_kind(&kind_group, resource.group, resource.kind, name, causes)
    }

    /// 422 for invalid request options, e.g. `PatchOptions.meta.k8s.io "" is invalid: ...`.
    pub fn invalid_options(options_kind: &str, causes: &[Cause]) -> Self {
        Self::invalid_kind(
            &format!("{options_kind}.meta.k8s.io"),
            "meta.k8s.io",
            options_kind,
            "",
            causes,
        )
    }

    fn invalid_kind(
        kind_group: &str,
        group: &str,
        kind: &str,
        name: &str,
        causes: &[Cause],
    ) -> Self {
        let rendered: Vec<String> = causes.iter().map(Cause::rendered).collect();
        let list = if rendered.len() == 1 {
            rendered[0].clone()
        } else {
            format!("[{}]", rendered.join(", "))
        };
        let causes: Vec<Value> = causes
            .iter()
            .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
            .collect();
        Self::new(
            422,
            "Invalid",
            format!("{kind_group} \"{name}\" is invalid: {list}"),
            Some(json!({"name": name, "group": group, "kind": kind, "causes": causes})),
        )
    }

    /// 400 for a request the server cannot decode or does not accept.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message.into(), None)
    }

    /// 410 for a watch or list from a resourceVersion that was compacted away.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message.into(), None)
    }

    /// 401 for a request without the expected bearer token.
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized".into(), None)
    }

    /// 403 from the RBAC authorizer.
    pub fn forbidden(message: String, resource: &str, group: &str, name: &str) -> Self {
        Self::new(
            403,
            "Forbidden",
            message,
            Some(json!({"name": name, "group": group, "kind": resource})),
        )
    }

    /// 405 for a verb a resource does not support.
    pub fn method_not_allowed(verb: &str) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({verb})"),
            None,
        )
    }

    /// 415 for a patch type the server does not know.
    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {content_type})"
            ),
            None,
        )
    }

    /// An injected failure with any code, worded like the real server's.
    pub fn injected(code: u16, retry_after: Option<u64>) -> Self {
        let (reason, message) = match code {
            429 => (
                "TooManyRequests",
                "Too many requests, please try again later.",
            ),
            500 => ("InternalError", "Internal error occurred: injected failure"),
            503 => (
                "ServiceUnavailable",
                "The server is currently unable to handle the request",
            ),
            504 => (
                "Timeout",
                "Timeout: request did not complete within the allotted timeout",
            ),
            401 => ("Unauthorized", "Unauthorized"),
            403 => ("Forbidden", "forbidden"),
            404 => (
                "NotFound",
                "the server could not find the requested resource",
            ),
            409 => (
                "Conflict",
                "the object has been modified; please apply your changes to the latest version and try again",
            ),
            410 => ("Expired", "the resource version is too old"),
            _ => ("InternalError", "injected failure"),
        };
        let details = retry_after.map(|s| json!({"retryAfterSeconds": s}));
        Self {
            code,
            reason,
            message: message.into(),
            details,
            retry_after,
        }
    }

    /// The `Status` object for this failure.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::resources;

    #[test]
    fn an_invalid_answer_with_one_cause_is_worded_without_brackets() {
        let jobs = resources::find("batch", "v1", "jobs").unwrap();
        let err = ApiError::invalid(
            jobs,
            "x",
            &[Cause::required("spec.template.spec.containers", "")],
        );
        assert_eq!(
            err.message,
            "Job.batch \"x\" is invalid: spec.template.spec.containers: Required value"
        );
        let two = ApiError::invalid(
            jobs,
            "x",
            &[
                Cause::required("a", ""),
                Cause::invalid("b", "1", "must be equal to nvidia.com/gpu limit of 2"),
            ],
        );
        assert_eq!(
            two.message,
            "Job.batch \"x\" is invalid: [a: Required value, b: Invalid value: \"1\": must be equal to nvidia.com/gpu limit of 2]"
        );
        assert_eq!(two.to_status()["details"]["causes"][1]["field"], "b");
    }

    #[test]
    fn a_conflict_names_the_qualified_resource() {
        let leases = resources::find("coordination.k8s.io", "v1", "leases").unwrap();
        let status = ApiError::conflict(leases, "leader").to_status();
        assert_eq!(status["code"], 409);
        assert_eq!(status["reason"], "Conflict");
        assert!(status["message"].as_str().unwrap().starts_with(
            "Operation cannot be fulfilled on leases.coordination.k8s.io \"leader\": the object has been modified"
        ));
    }
}
