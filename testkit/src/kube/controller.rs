//! The Job controller, the TTL-after-finished controller and the pod status changes
//! the test controls make: what kube-controller-manager and a kubelet would do.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::resources;
use super::store::{Store, Timer, now_rfc3339};

fn str_at<'a>(object: &'a Value, pointer: &str) -> Option<&'a str> {
    object.pointer(pointer).and_then(Value::as_str)
}

fn has_condition(job: &Value, kind: &str) -> bool {
    job.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| c.iter().any(|x| x["type"] == kind && x["status"] == "True"))
}

fn condition(kind: &str, status: &str, reason: &str, message: &str) -> Value {
    let now = now_rfc3339();
    json!({"type": kind, "status": status, "reason": reason, "message": message,
           "lastProbeTime": now, "lastTransitionTime": now})
}

/// Whether a Job has finished (Complete or Failed).
pub fn job_finished(job: &Value) -> bool {
    has_condition(job, "Complete") || has_condition(job, "Failed")
}

fn pod_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| {
            c.iter()
                .any(|x| x["type"] == "Ready" && x["status"] == "True")
        })
}

/// Runs the Job controller for every Job touched since the last run.
pub fn settle(store: &mut Store) {
    let mut rounds = 0;
    while let Some(key) = store.dirty_jobs.pop_first() {
        reconcile_job(store, &key.0, &key.1);
        rounds += 1;
        if rounds > 10_000 {
            break;
        }
    }
}

/// Handles due deadlines and TTLs.
pub fn fire_timers(store: &mut Store, now: Instant) {
    for timer in store.due_timers(now) {
        match timer {
            Timer::JobDeadline {
                namespace,
                name,
                uid,
            } => {
                let Some(job) = store.get(resources::jobs(), &namespace, &name) else {
                    continue;
                };
                let job = job.object.clone();
                if str_at(&job, "/metadata/uid") != Some(uid.as_str())
                    || job_finished(&job)
                    || has_condition(&job, "FailureTarget")
                {
                    continue;
                }
                store.modify(resources::jobs(), &namespace, &name, |j| {
                    push_condition(
                        j,
                        condition(
                            "FailureTarget",
                            "True",
                            "DeadlineExceeded",
                            "Job was active longer than specified deadline",
                        ),
                    );
                });
            }
            Timer::JobTtl {
                namespace,
                name,
                uid,
            } => {
                let Some(job) = store.get(resources::jobs(), &namespace, &name) else {
                    continue;
                };
                if str_at(&job.object, "/metadata/uid") != Some(uid.as_str()) {
                    continue;
                }
                let _ = store.delete(
                    resources::jobs(),
                    &namespace,
                    &name,
                    &json!({"propagationPolicy": "Background"}),
                );
            }
            Timer::PodCreateRetry {
                namespace,
                name,
                uid,
            } => {
                let same = store
                    .get(resources::jobs(), &namespace, &name)
                    .is_some_and(|j| str_at(&j.object, "/metadata/uid") == Some(uid.as_str()));
                if same {
                    // The backoff is over: the next sync may create the pod.
                    if let Some((_, until)) = store.create_backoff.get_mut(&uid) {
                        *until = Instant::now();
                    }
                    store.dirty_jobs.insert((namespace, name));
                }
            }
        }
    }
    settle(store);
}

fn push_condition(job: &mut Value, cond: Value) {
    if !job.get("status").is_some_and(Value::is_object) {
        job["status"] = json!({});
    }
    let list = job["status"]
        .as_object_mut()
        .map(|s| s.entry("conditions").or_insert(json!([])));
    if let Some(Value::Array(list)) = list {
        list.retain(|c| c["type"] != cond["type"]);
        list.push(cond);
    }
}

fn reconcile_job(store: &mut Store, namespace: &str, name: &str) {
    let jobs = resources::jobs();
    let Some(stored) = store.get(jobs, namespace, name) else {
        return;
    };
    let job = stored.object.clone();
    if job.pointer("/metadata/deletionTimestamp").is_some() {
        return;
    }
    let uid = str_at(&job, "/metadata/uid").unwrap_or("").to_string();
    let pods: Vec<Value> = store
        .dependents_of(&uid)
        .iter()
        .filter_map(|(ns, pod)| {
            store
                .get(resources::pods(), ns, pod)
                .map(|s| s.object.clone())
        })
        .collect();
    let tally = store.tallies.entry(uid.clone()).or_default();
    for pod in &pods {
        let pod_uid = str_at(pod, "/metadata/uid").unwrap_or("").to_string();
        match str_at(pod, "/status/phase") {
            Some("Succeeded") => {
                tally.succeeded.insert(pod_uid);
            }
            Some("Failed") => {
                tally.failed.insert(pod_uid);
            }
            _ => {}
        }
    }
    let succeeded = tally.succeeded.len() as i64;
    let failed = tally.failed.len() as i64;
    let running: Vec<&Value> = pods
        .iter()
        .filter(|p| !matches!(str_at(p, "/status/phase"), Some("Succeeded" | "Failed")))
        .collect();
    let terminating = running
        .iter()
        .filter(|p| p.pointer("/metadata/deletionTimestamp").is_some())
        .count() as i64;
    let active: Vec<&Value> = running
        .iter()
        .copied()
        .filter(|p| p.pointer("/metadata/deletionTimestamp").is_none())
        .collect();
    let ready = active.iter().filter(|p| pod_ready(p)).count() as i64;

    let spec = |k: &str| job.pointer(&format!("/spec/{k}")).cloned();
    let completions = spec("completions").and_then(|v| v.as_i64()).unwrap_or(1);
    let backoff_limit = spec("backoffLimit").and_then(|v| v.as_i64()).unwrap_or(6);
    let suspended = spec("suspend").and_then(|v| v.as_bool()).unwrap_or(false);
    let mut status = job.get("status").cloned().unwrap_or(json!({}));
    let mut new_job = job.clone();
    let mut delete_active = false;
    let mut create_pod = false;

    if job_finished(&job) {
        // Finished Jobs only keep their counts current.
    } else if has_condition(&job, "FailureTarget") {
        delete_active = true;
        if running.is_empty() {
            let target = job
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|c| c.iter().find(|x| x["type"] == "FailureTarget"))
                .cloned()
                .unwrap_or(json!({}));
            new_job["status"] = status.clone();
            push_condition(
                &mut new_job,
                condition(
                    "Failed",
                    "True",
                    str_at(&target, "/reason").unwrap_or(""),
                    str_at(&target, "/message").unwrap_or(""),
                ),
            );
            status = new_job["status"].clone();
        }
    } else if suspended {
        delete_active = true;
        if !has_condition(&job, "Suspended") {
            new_job["status"] = status.clone();
            push_condition(
                &mut new_job,
                condition("Suspended", "True", "JobSuspended", "Job suspended"),
            );
            status = new_job["status"].clone();
        }
    } else {
        new_job["status"] = status.clone();
        if has_condition(&job, "Suspended") {
            push_condition(
                &mut new_job,
                condition("Suspended", "False", "JobResumed", "Job resumed"),
            );
            if let Some(s) = new_job["status"].as_object_mut() {
                s.remove("startTime");
            }
        }
        if new_job.pointer("/status/startTime").is_none() {
            new_job["status"]["startTime"] = json!(now_rfc3339());
            if let Some(secs) = spec("activeDeadlineSeconds").and_then(|v| v.as_u64()) {
                store.add_timer(
                    Instant::now() + Duration::from_secs(secs),
                    Timer::JobDeadline {
                        namespace: namespace.into(),
                        name: name.into(),
                        uid: uid.clone(),
                    },
                );
            }
        }
        if succeeded >= completions {
            push_condition(
                &mut new_job,
                condition(
                    "SuccessCriteriaMet",
                    "True",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                ),
            );
            push_condition(
                &mut new_job,
                condition(
                    "Complete",
                    "True",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                ),
            );
            new_job["status"]["completionTime"] = json!(now_rfc3339());
            delete_active = true;
        } else if failed > backoff_limit {
            push_condition(
                &mut new_job,
                condition(
                    "FailureTarget",
                    "True",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                ),
            );
            delete_active = true;
            if running.is_empty() {
                push_condition(
                    &mut new_job,
                    condition(
                        "Failed",
                        "True",
                        "BackoffLimitExceeded",
                        "Job has reached the specified backoff limit",
                    ),
                );
            }
        } else if running.is_empty() {
            create_pod = true;
        }
        status = new_job["status"].clone();
    }

    // A create the API refused (a quota, an admission webhook) is tried again after the
    // controller's backoff; until then the Job has no pod.
    let created = create_pod
        && store
            .create_backoff
            .get(&uid)
            .is_none_or(|(_, until)| Instant::now() >= *until)
        && create_job_pod(store, &job);
    let active_after = if delete_active || create_pod {
        if created { 1 } else { 0 }
    } else {
        active.len() as i64
    };
    status["active"] = json!(active_after);
    status["ready"] = json!(if delete_active { 0 } else { ready });
    status["terminating"] = json!(if delete_active {
        terminating + active.len() as i64
    } else {
        terminating
    });
    status["uncountedTerminatedPods"] = json!({});
    for (field, n) in [("succeeded", succeeded), ("failed", failed)] {
        if n > 0 {
            status[field] = json!(n);
        } else if let Some(s) = status.as_object_mut() {
            s.remove(field);
        }
    }
    if delete_active {
        for pod in &active {
            let (ns, pod_name) = (
                str_at(pod, "/metadata/namespace").unwrap_or(""),
                str_at(pod, "/metadata/name").unwrap_or(""),
            );
            store.delete_pod(ns, pod_name, &json!({}));
        }
    }
    let finished_now = {
        let mut probe = job.clone();
        probe["status"] = status.clone();
        job_finished(&probe) && !job_finished(&job)
    };
    if job.get("status") != Some(&status) {
        let _ = store.modify(jobs, namespace, name, |j| j["status"] = status);
    }
    if finished_now && let Some(ttl) = spec("ttlSecondsAfterFinished").and_then(|v| v.as_u64()) {
        store.add_timer(
            Instant::now() + Duration::from_secs(ttl),
            Timer::JobTtl {
                namespace: namespace.into(),
                name: name.into(),
                uid,
            },
        );
    }
}

/// Creates the Job's pod from its template; when the API refuses it, records a
/// `FailedCreate` event on the Job as kube-controller-manager does and backs off.
fn create_job_pod(store: &mut Store, job: &Value) -> bool {
    let name = str_at(job, "/metadata/name").unwrap_or("");
    let namespace = str_at(job, "/metadata/namespace")
        .unwrap_or("default")
        .to_string();
    let template = job.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let suffix = store.random_suffix(5);
    let mut metadata = template.get("metadata").cloned().unwrap_or(json!({}));
    metadata["name"] = json!(format!("{name}-{suffix}"));
    metadata["generateName"] = json!(format!("{name}-"));
    metadata["namespace"] = json!(namespace);
    metadata["ownerReferences"] = json!([{
        "apiVersion": "batch/v1", "kind": "Job", "name": name,
        "uid": str_at(job, "/metadata/uid").unwrap_or(""),
        "controller": true, "blockOwnerDeletion": true
    }]);
    let pod =
        json!({"metadata": metadata, "spec": template.get("spec").cloned().unwrap_or(json!({}))});
    let uid = str_at(job, "/metadata/uid").unwrap_or("").to_string();
    match store.create(resources::pods(), &namespace, pod, "job-controller") {
        Ok(_) => {
            store.create_backoff.remove(&uid);
            true
        }
        Err(err) => {
            let message = format!("Error creating: {}", err.message);
            record_warning(store, job, "FailedCreate", &message);
            let failures = store.create_backoff.get(&uid).map_or(0, |(n, _)| *n) + 1;
            let delay = Duration::from_secs(10)
                .saturating_mul(1 << (failures - 1).min(6))
                .min(Duration::from_secs(360));
            let until = Instant::now() + delay;
            store.create_backoff.insert(uid.clone(), (failures, until));
            store.add_timer(
                until,
                Timer::PodCreateRetry {
                    namespace,
                    name: name.to_string(),
                    uid,
                },
            );
            false
        }
    }
}

/// A Warning event about `object` as client-go's recorder writes it: one Event per
/// (object, reason, message), its `count` and `lastTimestamp` raised when it repeats.
fn record_warning(store: &mut Store, object: &Value, reason: &str, message: &str) {
    let events = resources::events();
    let namespace = str_at(object, "/metadata/namespace")
        .unwrap_or("default")
        .to_string();
    let uid = str_at(object, "/metadata/uid").unwrap_or("").to_string();
    let now = now_rfc3339();
    let existing = store
        .range(events, Some(&namespace), None)
        .find(|e| {
            str_at(e, "/involvedObject/uid") == Some(uid.as_str())
                && str_at(e, "/reason") == Some(reason)
                && str_at(e, "/message") == Some(message)
        })
        .cloned();
    if let Some(mut event) = existing {
        let name = str_at(&event, "/metadata/name").unwrap_or("").to_string();
        let count = event["count"].as_i64().unwrap_or(1) + 1;
        event["count"] = json!(count);
        event["lastTimestamp"] = json!(now);
        if let Some(m) = event["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        let _ = store.update(
            events,
            &namespace,
            &name,
            event,
            None,
            None,
            "job-controller",
        );
        return;
    }
    let suffix = store.random_suffix(16);
    let event = json!({
        "metadata": {
            "name": format!("{}.{suffix}", str_at(object, "/metadata/name").unwrap_or("")),
            "namespace": namespace,
        },
        "involvedObject": {
            "kind": object.get("kind"), "apiVersion": object.get("apiVersion"),
            "namespace": namespace, "name": object.pointer("/metadata/name"), "uid": uid,
            "resourceVersion": object.pointer("/metadata/resourceVersion"),
        },
        "reason": reason, "message": message, "type": "Warning",
        "source": {"component": "job-controller"},
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        "reportingComponent": "job-controller", "reportingInstance": "",
    });
    if let Err(err) = store.create(events, &namespace, event, "job-controller") {
        tracing::warn!(%err, "the stand-in job controller could not record an event");
    }
}

/// The newest pod of a Job that has not finished, else its newest pod.
pub fn job_pod(store: &Store, namespace: &str, job: &str) -> Option<Value> {
    let stored = store.get(resources::jobs(), namespace, job)?;
    let uid = str_at(&stored.object, "/metadata/uid")?.to_string();
    let mut pods: Vec<Value> = store
        .dependents_of(&uid)
        .iter()
        .filter_map(|(ns, p)| {
            store
                .get(resources::pods(), ns, p)
                .map(|s| s.object.clone())
        })
        .collect();
    pods.sort_by_key(super::store::rv_of);
    let live = pods
        .iter()
        .rev()
        .find(|p| !matches!(str_at(p, "/status/phase"), Some("Succeeded" | "Failed")))
        .cloned();
    live.or_else(|| pods.pop())
}

pub(crate) fn container_names(pod: &Value, list: &str) -> Vec<String> {
    pod.pointer(&format!("/spec/{list}"))
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn container_status(pod: &Value, name: &str, state: Value, ready: bool) -> Value {
    let image = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .chain(
            pod.pointer("/spec/initContainers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten(),
        )
        .find(|c| c["name"] == name)
        .and_then(|c| c.get("image").cloned())
        .unwrap_or(json!(""));
    let started = state.get("running").is_some();
    json!({"name": name, "image": image, "imageID": "", "ready": ready, "restartCount": 0,
           "started": started, "state": state})
}

/// Pod conditions as the kubelet reports them.
pub fn pod_conditions(scheduled: bool, initialized: bool, ready: bool) -> Value {
    let now = now_rfc3339();
    let c = |kind: &str, ok: bool| {
        let mut v = json!({"type": kind, "status": if ok {"True"} else {"False"}, "lastProbeTime": null, "lastTransitionTime": now});
        if !ok && kind != "PodScheduled" {
            v["reason"] = json!(if kind == "Initialized" {
                "ContainersNotInitialized"
            } else {
                "ContainersNotReady"
            });
        }
        v
    };
    json!([
        c("PodReadyToStartContainers", scheduled),
        c("Initialized", initialized),
        c("Ready", ready),
        c("ContainersReady", ready),
        c("PodScheduled", scheduled)
    ])
}

/// Moves a pod to Succeeded (exit 0) or Failed with its main containers terminated.
pub fn terminate_pod(
    store: &mut Store,
    namespace: &str,
    pod: &str,
    exit_code: i64,
    reason: &str,
    message: Option<&str>,
) {
    let Some(stored) = store.get(resources::pods(), namespace, pod) else {
        return;
    };
    let object = stored.object.clone();
    let now = now_rfc3339();
    let started = object
        .pointer("/status/startTime")
        .cloned()
        .unwrap_or(json!(now));
    let statuses: Vec<Value> = container_names(&object, "containers")
        .iter()
        .map(|c| {
            let mut terminated = json!({"exitCode": exit_code, "reason": reason, "startedAt": started, "finishedAt": now, "containerID": ""});
            if let Some(m) = message {
                terminated["message"] = json!(m);
            }
            container_status(&object, c, json!({"terminated": terminated}), false)
        })
        .collect();
    let init: Vec<Value> = container_names(&object, "initContainers")
        .iter()
        .map(|c| {
            let terminated = json!({"exitCode": 0, "reason": "Completed", "startedAt": started, "finishedAt": started, "containerID": ""});
            container_status(&object, c, json!({"terminated": terminated}), false)
        })
        .collect();
    store.modify(resources::pods(), namespace, pod, |p| {
        p["status"]["phase"] = json!(if exit_code == 0 {
            "Succeeded"
        } else {
            "Failed"
        });
        p["status"]["conditions"] = pod_conditions(true, true, false);
        p["status"]["startTime"] = started;
        p["status"]["containerStatuses"] = json!(statuses);
        if !init.is_empty() {
            p["status"]["initContainerStatuses"] = json!(init);
        }
    });
    settle(store);
}

/// Keeps a pod Pending with its main containers waiting for `reason`.
pub fn wait_pod(store: &mut Store, namespace: &str, pod: &str, reason: &str, message: &str) {
    let Some(stored) = store.get(resources::pods(), namespace, pod) else {
        return;
    };
    let object = stored.object.clone();
    let statuses: Vec<Value> = container_names(&object, "containers")
        .iter()
        .map(|c| {
            container_status(
                &object,
                c,
                json!({"waiting": {"reason": reason, "message": message}}),
                false,
            )
        })
        .collect();
    store.modify(resources::pods(), namespace, pod, |p| {
        p["status"]["phase"] = json!("Pending");
        p["status"]["conditions"] = pod_conditions(true, true, false);
        p["status"]["startTime"] = json!(now_rfc3339());
        p["status"]["containerStatuses"] = json!(statuses);
    });
    settle(store);
}

/// Marks a pod as not schedulable (PodScheduled False, reason Unschedulable).
pub fn unschedulable_pod(store: &mut Store, namespace: &str, pod: &str, message: &str) {
    let now = now_rfc3339();
    store.modify(resources::pods(), namespace, pod, |p| {
        p["status"]["phase"] = json!("Pending");
        p["status"]["conditions"] = json!([{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                            "message": message, "lastProbeTime": null, "lastTransitionTime": now}]);
    });
    settle(store);
}

/// Marks a pod Running with its containers started and ready.
pub fn run_pod(store: &mut Store, namespace: &str, pod: &str) {
    let Some(stored) = store.get(resources::pods(), namespace, pod) else {
        return;
    };
    let object = stored.object.clone();
    let now = now_rfc3339();
    let statuses: Vec<Value> = container_names(&object, "containers")
        .iter()
        .map(|c| container_status(&object, c, json!({"running": {"startedAt": now}}), true))
        .collect();
    store.modify(resources::pods(), namespace, pod, |p| {
        p["status"]["phase"] = json!("Running");
        p["status"]["conditions"] = pod_conditions(true, true, true);
        p["status"]["startTime"] = json!(now);
        p["status"]["containerStatuses"] = json!(statuses);
    });
    settle(store);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(store: &mut Store, name: &str, extra: Value) -> Value {
        let mut spec = json!({"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "busybox:1"}]}}});
        super::super::patch::merge(&mut spec, &extra);
        let created = store
            .create(
                resources::jobs(),
                "default",
                json!({"metadata": {"name": name}, "spec": spec}),
                "t",
            )
            .unwrap();
        settle(store);
        created
    }

    fn current(store: &Store, name: &str) -> Value {
        store
            .get(resources::jobs(), "default", name)
            .unwrap()
            .object
            .clone()
    }

    #[test]
    fn an_unsuspended_job_gets_one_owned_pod_and_completes_when_it_succeeds() {
        let mut store = Store::new(10_000);
        job(&mut store, "train", json!({}));
        let pod = job_pod(&store, "default", "train").unwrap();
        let pod_name = pod["metadata"]["name"].as_str().unwrap().to_string();
        assert!(pod_name.starts_with("train-") && pod_name.len() == "train-".len() + 5);
        assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "Job");
        assert_eq!(pod["metadata"]["labels"]["job-name"], "train");
        assert_eq!(current(&store, "train")["status"]["active"], 1);
        terminate_pod(&mut store, "default", &pod_name, 0, "Completed", None);
        let done = current(&store, "train");
        assert!(has_condition(&done, "Complete"));
        assert_eq!(done["status"]["succeeded"], 1);
        assert_eq!(done["status"]["active"], 0);
        assert!(done["status"]["completionTime"].is_string());
    }

    #[test]
    fn a_failed_pod_is_replaced_until_the_backoff_limit_is_passed() {
        let mut store = Store::new(10_000);
        job(&mut store, "retry", json!({"backoffLimit": 1}));
        let first = job_pod(&store, "default", "retry").unwrap()["metadata"]["name"]
            .as_str()
            .unwrap()
            .to_string();
        terminate_pod(&mut store, "default", &first, 2, "Error", None);
        let second = job_pod(&store, "default", "retry").unwrap()["metadata"]["name"]
            .as_str()
            .unwrap()
            .to_string();
        assert_ne!(first, second, "backoffLimit 1 allows a second pod");
        assert!(!job_finished(&current(&store, "retry")));
        terminate_pod(&mut store, "default", &second, 2, "Error", None);
        let failed = current(&store, "retry");
        assert!(has_condition(&failed, "Failed"));
        assert_eq!(failed["status"]["failed"], 2);
        let cond = failed["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Failed")
            .unwrap()
            .clone();
        assert_eq!(cond["reason"], "BackoffLimitExceeded");
        assert_eq!(
            cond["message"],
            "Job has reached the specified backoff limit"
        );
    }

    #[test]
    fn a_suspended_job_has_no_pod_until_it_is_resumed() {
        let mut store = Store::new(10_000);
        job(&mut store, "queued", json!({"suspend": true}));
        assert!(job_pod(&store, "default", "queued").is_none());
        assert!(has_condition(&current(&store, "queued"), "Suspended"));
        let mut resumed = current(&store, "queued");
        resumed["spec"]["suspend"] = json!(false);
        store
            .update(
                resources::jobs(),
                "default",
                "queued",
                resumed,
                None,
                None,
                "kueue",
            )
            .unwrap();
        settle(&mut store);
        assert!(job_pod(&store, "default", "queued").is_some());
        assert!(current(&store, "queued")["status"]["startTime"].is_string());
    }

    #[test]
    fn a_finished_job_is_deleted_with_its_pods_after_its_ttl() {
        let mut store = Store::new(10_000);
        job(
            &mut store,
            "short-lived",
            json!({"ttlSecondsAfterFinished": 1}),
        );
        let pod = job_pod(&store, "default", "short-lived").unwrap();
        let pod_name = pod["metadata"]["name"].as_str().unwrap().to_string();
        terminate_pod(&mut store, "default", &pod_name, 0, "Completed", None);
        fire_timers(&mut store, Instant::now());
        assert!(
            store
                .get(resources::jobs(), "default", "short-lived")
                .is_some(),
            "not before the TTL"
        );
        fire_timers(&mut store, Instant::now() + Duration::from_secs(2));
        assert!(
            store
                .get(resources::jobs(), "default", "short-lived")
                .is_none()
        );
        assert!(
            store.get(resources::pods(), "default", &pod_name).is_none(),
            "background propagation"
        );
    }

    #[test]
    fn a_foreground_delete_removes_the_pods_before_the_job() {
        let mut store = Store::new(10_000);
        job(&mut store, "fg", json!({}));
        let pod = job_pod(&store, "default", "fg").unwrap();
        let mut rx = store.subscribe();
        let answer = store
            .delete(
                resources::jobs(),
                "default",
                "fg",
                &json!({"propagationPolicy": "Foreground"}),
            )
            .unwrap();
        let super::super::store::Deleted::Object(marked) = answer else {
            panic!("expected the object")
        };
        assert_eq!(
            marked["metadata"]["finalizers"],
            json!(["foregroundDeletion"])
        );
        assert!(marked["metadata"]["deletionTimestamp"].is_string());
        let mut order = Vec::new();
        while let Ok(super::super::store::Broadcast::Event(e)) = rx.try_recv() {
            order.push((
                e.object["kind"].as_str().unwrap().to_string(),
                e.object["metadata"]["name"].as_str().unwrap().to_string(),
            ));
        }
        let pod_name = pod["metadata"]["name"].as_str().unwrap().to_string();
        let pod_gone = order
            .iter()
            .rposition(|(k, n)| k == "Pod" && *n == pod_name)
            .unwrap();
        let job_gone = order.iter().rposition(|(k, _)| k == "Job").unwrap();
        assert!(pod_gone < job_gone, "{order:?}");
        assert!(store.get(resources::jobs(), "default", "fg").is_none());
    }

    #[test]
    fn a_pod_a_quota_refuses_is_a_failed_create_event_retried_after_a_backoff() {
        let mut store = Store::new(10_000);
        store
            .create(
                resources::resource_quotas(),
                "default",
                json!({"metadata": {"name": "compute"}, "spec": {"hard": {"limits.cpu": "8", "requests.memory": "8Gi"}}}),
                "t",
            )
            .unwrap();
        let spec = json!({"template": {"spec": {"restartPolicy": "Never",
            "initContainers": [{"name": "install", "image": "x",
                "resources": {"limits": {"cpu": "1"}, "requests": {"memory": "1Mi"}}}],
            "containers": [{"name": "main", "image": "x", "resources": {"limits": {"cpu": "1"}}}]}}});
        job(&mut store, "quota", spec);
        assert!(job_pod(&store, "default", "quota").is_none());
        let events: Vec<Value> = store
            .range(resources::events(), Some("default"), None)
            .cloned()
            .collect();
        assert_eq!(events.len(), 1, "{events:?}");
        let message = events[0]["message"].as_str().unwrap();
        assert!(
            message.starts_with("Error creating: pods \"quota-")
                && message.ends_with(
                    "\" is forbidden: failed quota: compute: must specify requests.memory for: main"
                ),
            "{message}"
        );
        assert_eq!(events[0]["reason"], "FailedCreate");
        assert_eq!(events[0]["type"], "Warning");
        assert_eq!(events[0]["involvedObject"]["kind"], "Job");
        assert_eq!(events[0]["involvedObject"]["name"], "quota");
        assert_eq!(current(&store, "quota")["status"]["active"], 0);
        // Touching the Job before the backoff ends creates nothing and records nothing new.
        store.dirty_jobs.insert(("default".into(), "quota".into()));
        settle(&mut store);
        let count = |store: &Store| {
            store
                .range(resources::events(), Some("default"), None)
                .map(|e| e["count"].as_i64().unwrap())
                .sum::<i64>()
        };
        assert_eq!(count(&store), 1);
        fire_timers(&mut store, Instant::now() + Duration::from_secs(11));
        assert_eq!(
            count(&store),
            2,
            "tried again after 10 s; each try names its own pod, so it is an event of its own"
        );
    }

    #[test]
    fn a_passed_deadline_fails_the_job_and_removes_its_pods() {
        let mut store = Store::new(10_000);
        job(&mut store, "slow", json!({"activeDeadlineSeconds": 1}));
        assert!(job_pod(&store, "default", "slow").is_some());
        fire_timers(&mut store, Instant::now() + Duration::from_secs(2));
        let failed = current(&store, "slow");
        assert!(has_condition(&failed, "Failed"));
        assert!(
            failed["status"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["reason"] == "DeadlineExceeded")
        );
        assert!(
            job_pod(&store, "default", "slow").is_none(),
            "the pod was deleted"
        );
    }
}
