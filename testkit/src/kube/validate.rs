//! Defaulting and validation of incoming objects, worded as the real API server words it.

use serde_json::{Value, json};

use super::resources::ResourceType;
use super::status::Cause;

const DNS1123_SUBDOMAIN: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1123_LABEL: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const LABEL_VALUE: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";

/// Whether `name` is a DNS-1123 subdomain of at most 253 characters.
pub fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty() && name.len() <= 253 && name.split('.').all(is_dns_label)
}

/// Whether `name` is a DNS-1123 label (at most 63 characters).
pub fn is_dns_label(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn is_label_value(value: &str) -> bool {
    let b = value.as_bytes();
    b.is_empty()
        || (b
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric())
}

fn check_labels(labels: Option<&Value>, field: &str, causes: &mut Vec<Cause>) {
    let Some(Value::Object(map)) = labels else {
        return;
    };
    for (key, value) in map {
        let name = key.rsplit('/').next().unwrap_or(key);
        if name.is_empty() || name.len() > 63 {
            causes.push(Cause::invalid(
                field,
                key,
                "name part must be no more than 63 characters",
            ));
        }
        let Some(value) = value.as_str() else {
            causes.push(Cause::invalid(
                field.to_string(),
                key,
                "label values must be strings",
            ));
            continue;
        };
        if value.len() > 63 {
            causes.push(Cause::invalid(
                field,
                value,
                "must be no more than 63 characters",
            ));
        } else if !is_label_value(value) {
            causes.push(Cause::invalid(field, value, LABEL_VALUE));
        }
    }
}

/// Checks every object's metadata: name and labels.
pub fn metadata(resource: &ResourceType, object: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if name.is_empty() {
        causes.push(Cause::required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else {
        let ok = if resource.kind == "Namespace" {
            is_dns_label(name)
        } else {
            is_dns_subdomain(name)
        };
        if !ok {
            causes.push(Cause::invalid(
                "metadata.name",
                name,
                if resource.kind == "Namespace" {
                    DNS1123_LABEL
                } else {
                    DNS1123_SUBDOMAIN
                },
            ));
        }
    }
    check_labels(
        object.pointer("/metadata/labels"),
        "metadata.labels",
        &mut causes,
    );
    causes
}

/// Extended resources (`vendor/name`, outside kubernetes.io) cannot be overcommitted.
fn is_extended_resource(name: &str) -> bool {
    name.contains('/') && !name.contains("kubernetes.io/")
}

fn quantity_string(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Pod template defaults the real server applies: restartPolicy, grace period, dnsPolicy,
/// container terminationMessage* and imagePullPolicy, requests from limits.
pub fn default_pod_spec(spec: &mut Value) {
    let Some(map) = spec.as_object_mut() else {
        return;
    };
    map.entry("restartPolicy").or_insert(json!("Always"));
    map.entry("terminationGracePeriodSeconds")
        .or_insert(json!(30));
    map.entry("dnsPolicy").or_insert(json!("ClusterFirst"));
    map.entry("schedulerName")
        .or_insert(json!("default-scheduler"));
    map.entry("securityContext").or_insert(json!({}));
    for list in ["initContainers", "containers"] {
        let Some(Value::Array(containers)) = map.get_mut(list) else {
            continue;
        };
        for c in containers.iter_mut().filter_map(Value::as_object_mut) {
            c.entry("terminationMessagePath")
                .or_insert(json!("/dev/termination-log"));
            c.entry("terminationMessagePolicy").or_insert(json!("File"));
            let image = c.get("image").and_then(Value::as_str).unwrap_or("");
            let latest = !image.contains('@')
                && (image.ends_with(":latest")
                    || !image.rsplit('/').next().unwrap_or("").contains(':'));
            c.entry("imagePullPolicy").or_insert(json!(if latest {
                "Always"
            } else {
                "IfNotPresent"
            }));
            let resources = c.entry("resources").or_insert(json!({}));
            if let Some(limits) = resources
                .get("limits")
                .cloned()
                .and_then(|l| l.as_object().cloned())
            {
                let requests = resources
                    .as_object_mut()
                    .map(|r| r.entry("requests").or_insert(json!({})));
                if let Some(Value::Object(requests)) = requests {
                    for (k, v) in limits {
                        requests.entry(k).or_insert(v);
                    }
                }
            }
        }
    }
}

/// Validates a pod spec at `path` (`spec` for pods, `spec.template.spec` for jobs).
pub fn pod_spec(spec: &Value, path: &str, job: bool) -> Vec<Cause> {
    let mut causes = Vec::new();
    let restart = spec
        .get("restartPolicy")
        .and_then(Value::as_str)
        .unwrap_or("Always");
    let allowed: &[&str] = if job {
        &["OnFailure", "Never"]
    } else {
        &["Always", "OnFailure", "Never"]
    };
    if !allowed.contains(&restart) {
        causes.push(Cause::not_supported(
            format!("{path}.restartPolicy"),
            restart,
            allowed,
        ));
    }
    match spec.get("containers").and_then(Value::as_array) {
        Some(list) if !list.is_empty() => {}
        _ => causes.push(Cause::required(format!("{path}.containers"), "")),
    }
    for list in ["initContainers", "containers"] {
        let Some(containers) = spec.get(list).and_then(Value::as_array) else {
            continue;
        };
        for (i, c) in containers.iter().enumerate() {
            let at = format!("{path}.{list}[{i}]");
            match c.get("name").and_then(Value::as_str) {
                None | Some("") => causes.push(Cause::required(format!("{at}.name"), "")),
                Some(name) if !is_dns_label(name) => {
                    causes.push(Cause::invalid(format!("{at}.name"), name, DNS1123_LABEL))
                }
                Some(_) => {}
            }
            if c.get("image")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty()
            {
                causes.push(Cause::required(format!("{at}.image"), ""));
            }
            let limits = c.pointer("/resources/limits").and_then(Value::as_object);
            if let Some(requests) = c.pointer("/resources/requests").and_then(Value::as_object) {
                for (name, request) in requests.iter().filter(|(n, _)| is_extended_resource(n)) {
                    let request = quantity_string(request);
                    match limits.and_then(|l| l.get(name)) {
                        None => causes.push(Cause::required(
                            format!("{at}.resources.limits"),
                            "Limit must be set for non overcommitable resources",
                        )),
                        Some(limit) if quantity_string(limit) != request => {
                            causes.push(Cause::invalid(
                                format!("{at}.resources.requests[{name}]"),
                                &request,
                                &format!(
                                    "must be equal to {name} limit of {}",
                                    quantity_string(limit)
                                ),
                            ))
                        }
                        Some(_) => {}
                    }
                }
            }
        }
    }
    causes
}

/// Job defaults: counts, completion mode, selector and the job-name / controller-uid labels.
pub fn default_job(job: &mut Value, uid: &str) {
    let name = job
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let Some(spec) = job.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    spec.entry("completions").or_insert(json!(1));
    spec.entry("parallelism").or_insert(json!(1));
    spec.entry("backoffLimit").or_insert(json!(6));
    spec.entry("suspend").or_insert(json!(false));
    spec.entry("completionMode").or_insert(json!("NonIndexed"));
    spec.entry("podReplacementPolicy")
        .or_insert(json!("TerminatingOrFailed"));
    spec.entry("manualSelector").or_insert(json!(false));
    spec.entry("selector")
        .or_insert(json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}));
    let template = spec.entry("template").or_insert(json!({}));
    if let Some(t) = template.as_object_mut() {
        let meta = t.entry("metadata").or_insert(json!({}));
        if let Some(meta) = meta.as_object_mut() {
            let labels = meta.entry("labels").or_insert(json!({}));
            if let Some(labels) = labels.as_object_mut() {
                labels.insert("batch.kubernetes.io/job-name".into(), json!(name));
                labels.insert("job-name".into(), json!(name));
                labels.insert("batch.kubernetes.io/controller-uid".into(), json!(uid));
                labels.insert("controller-uid".into(), json!(uid));
            }
        }
        if let Some(pod_spec) = t.get_mut("spec") {
            default_pod_spec(pod_spec);
        }
    }
}

/// Validates a defaulted Job.
pub fn job(job: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    check_labels(
        job.pointer("/spec/template/metadata/labels"),
        "spec.template.labels",
        &mut causes,
    );
    match job.pointer("/spec/template/spec") {
        Some(spec) => causes.extend(pod_spec(spec, "spec.template.spec", true)),
        None => causes.push(Cause::required("spec.template.spec.containers", "")),
    }
    for field in [
        "backoffLimit",
        "completions",
        "parallelism",
        "activeDeadlineSeconds",
        "ttlSecondsAfterFinished",
    ] {
        if let Some(n) = job
            .pointer(&format!("/spec/{field}"))
            .and_then(Value::as_i64)
        {
            let positive = field == "activeDeadlineSeconds";
            if n < 0 || (positive && n == 0) {
                let detail = if positive {
                    "must be greater than 0"
                } else {
                    "must be greater than or equal to 0"
                };
                causes.push(Cause::invalid(
                    format!("spec.{field}"),
                    &n.to_string(),
                    detail,
                ));
            }
        }
    }
    causes
}

/// Rejects changes to a Job's immutable fields (the template may change only while suspended
/// and never started, as the real server allows for Kueue).
pub fn job_update(old: &Value, new: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    if old.pointer("/spec/selector") != new.pointer("/spec/selector") {
        causes.push(Cause::invalid(
            "spec.selector",
            &new.pointer("/spec/selector")
                .map(Value::to_string)
                .unwrap_or_default(),
            "field is immutable",
        ));
    }
    let suspended = old
        .pointer("/spec/suspend")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let started = old.pointer("/status/startTime").is_some();
    if old.pointer("/spec/template") != new.pointer("/spec/template") && (!suspended || started) {
        causes.push(Cause::invalid(
            "spec.template",
            "core.PodTemplateSpec{...}",
            "field is immutable",
        ));
    }
    for field in ["completions", "completionMode"] {
        if old.pointer(&format!("/spec/{field}")) != new.pointer(&format!("/spec/{field}")) {
            let v = new
                .pointer(&format!("/spec/{field}"))
                .map(Value::to_string)
                .unwrap_or_default();
            causes.push(Cause::invalid(
                format!("spec.{field}"),
                &v,
                "field is immutable",
            ));
        }
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn gpu_job(requests: Value, limits: Value) -> Value {
        let mut job = json!({
            "metadata": {"name": "train"},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{
                "name": "main", "image": "img:1", "resources": {"requests": requests, "limits": limits}
            }]}}}
        });
        default_job(&mut job, "uid-1");
        job
    }

    #[test]
    fn a_gpu_request_must_equal_its_limit() {
        let causes = job(&gpu_job(
            json!({"nvidia.com/gpu": "1"}),
            json!({"nvidia.com/gpu": "2"}),
        ));
        assert_eq!(causes.len(), 1);
        assert_eq!(
            causes[0].field,
            "spec.template.spec.containers[0].resources.requests[nvidia.com/gpu]"
        );
        assert_eq!(
            causes[0].message,
            "Invalid value: \"1\": must be equal to nvidia.com/gpu limit of 2"
        );
        let missing = job(&gpu_job(json!({"nvidia.com/gpu": 1}), json!({})));
        assert_eq!(
            missing[0].field,
            "spec.template.spec.containers[0].resources.limits"
        );
        assert!(
            job(&gpu_job(json!({}), json!({"nvidia.com/gpu": 2}))).is_empty(),
            "requests default to limits"
        );
    }

    #[test]
    fn job_defaults_add_the_controller_labels_and_counts() {
        let j = gpu_job(json!({}), json!({}));
        assert_eq!(j["spec"]["backoffLimit"], 6);
        assert_eq!(j["spec"]["completionMode"], "NonIndexed");
        assert_eq!(
            j["spec"]["template"]["metadata"]["labels"]["job-name"],
            "train"
        );
        assert_eq!(
            j["spec"]["template"]["metadata"]["labels"]["batch.kubernetes.io/controller-uid"],
            "uid-1"
        );
        assert_eq!(
            j["spec"]["template"]["spec"]["containers"][0]["terminationMessagePath"],
            "/dev/termination-log"
        );
    }

    #[test]
    fn a_job_that_restarts_always_or_has_no_containers_is_invalid() {
        let mut j =
            json!({"metadata": {"name": "x"}, "spec": {"template": {"spec": {"containers": []}}}});
        default_job(&mut j, "u");
        let fields: Vec<String> = job(&j)
            .into_iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        assert_eq!(
            fields,
            vec![
                "spec.template.spec.restartPolicy: Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\"",
                "spec.template.spec.containers: Required value",
            ]
        );
    }

    #[test]
    fn a_name_longer_than_a_label_value_fails_on_the_job_name_label() {
        let long = "a".repeat(64);
        let mut j = json!({"metadata": {"name": long}, "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "m", "image": "i"}]}}}});
        default_job(&mut j, "u");
        let causes = job(&j);
        assert!(causes.iter().any(|c| c.field == "spec.template.labels"
            && c.message.ends_with("must be no more than 63 characters")));
        let jobs = crate::kube::resources::jobs();
        assert!(
            metadata(jobs, &json!({"metadata": {"name": "Bad_Name"}}))[0]
                .message
                .contains("RFC 1123 subdomain")
        );
    }
}
