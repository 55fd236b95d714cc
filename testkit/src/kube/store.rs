//! The object store: objects per resource type and namespace, one global resourceVersion,
//! the event history watches resume from, compaction, and the writes every verb shares.
//!
//! The store is a plain struct behind one `std::sync::Mutex`; nothing holds that lock
//! across an await. Watches get events through a `broadcast` channel that the store
//! sends on while locked, so a watch that subscribes under the lock sees no gap.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chrono::{SecondsFormat, Utc};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::logs::Logs;
use super::patch::{self, Managers};
use super::resources::{self, ALL, ResourceType};
use super::status::ApiError;
use super::validate;

/// Watch event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// An object appeared (or is sent as part of the initial state).
    Added,
    /// An object changed.
    Modified,
    /// An object was removed.
    Deleted,
}

impl EventType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One change, kept in the history and fanned out to watches.
#[derive(Debug)]
pub struct Event {
    /// The resourceVersion this change created.
    pub rv: u64,
    /// Index of the resource type.
    pub resource: usize,
    /// What selectors look at: kind, namespace, name, labels, and for pods status.phase
    /// and spec.nodeName. The full object is only in `line`, so history stays small.
    pub object: Value,
    /// `{"type":..,"object":..}\n`, serialized once for every watch.
    pub line: Bytes,
}

/// What the store broadcasts to open watches.
#[derive(Debug, Clone)]
pub enum Broadcast {
    /// A change.
    Event(Arc<Event>),
    /// History up to this version was compacted: watches end with a 410 ERROR event.
    Compacted(u64),
    /// Every open watch stream ends, as on an API server restart.
    CloseAll,
}

/// Work the stand-in kubelet is asked to do.
#[derive(Debug, Clone)]
pub enum KubeletWork {
    /// A pod bound to the node: start it.
    Start { namespace: String, name: String },
    /// A pod object is gone: forget what the kubelet kept about it once it has stopped.
    Forget { namespace: String, name: String },
    /// A pod was deleted gracefully: stop it within the grace period, then remove it.
    Stop {
        namespace: String,
        name: String,
        grace_seconds: u64,
    },
}

/// A timed controller action.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Timer {
    /// activeDeadlineSeconds of a Job (with its uid, so a recreated Job is not hit).
    JobDeadline {
        namespace: String,
        name: String,
        uid: String,
    },
    /// ttlSecondsAfterFinished of a Job.
    JobTtl {
        namespace: String,
        name: String,
        uid: String,
    },
    /// The Job controller tries again to create a Job's pod after its backoff.
    PodCreateRetry {
        namespace: String,
        name: String,
        uid: String,
    },
}

/// A stored object with its field ownership.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The object as served.
    pub object: Value,
    /// Server-side apply ownership of its fields.
    pub managers: Managers,
}

/// Outcome of a delete: the object (still terminating, or removed and returned) or a
/// `Status` success.
#[derive(Debug)]
pub enum Deleted {
    /// 200 with the object.
    Object(Value),
    /// 200 with `Status` success.
    Status(Value),
}

/// Dependent handling on delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// Dependents lose their owner reference and stay.
    Orphan,
    /// The owner goes now; dependents are deleted after.
    Background,
    /// Dependents are deleted first; the owner waits with a `foregroundDeletion` finalizer.
    Foreground,
}

/// Counts a Job keeps about pods it has already seen finish, by pod uid.
#[derive(Debug, Default, Clone)]
pub struct JobTally {
    /// Pods that succeeded.
    pub succeeded: BTreeSet<String>,
    /// Pods that failed.
    pub failed: BTreeSet<String>,
}

/// Everything the API server keeps.
pub struct Store {
    rv: u64,
    objects: Vec<BTreeMap<(String, String), Stored>>,
    history: VecDeque<Arc<Event>>,
    history_limit: usize,
    compacted: u64,
    tx: broadcast::Sender<Broadcast>,
    /// Jobs whose controller must run before the lock is released.
    pub(crate) dirty_jobs: BTreeSet<(String, String)>,
    /// Timed controller actions.
    pub(crate) timers: BTreeMap<(Instant, u64), Timer>,
    timer_seq: u64,
    /// Pods per owner uid, so owners find dependents without a scan.
    dependents: HashMap<String, BTreeSet<(String, String)>>,
    /// Finished pods a Job has counted.
    pub(crate) tallies: HashMap<String, JobTally>,
    /// Per Job uid: how many pod creates failed in a row, and until when the controller
    /// waits before it tries again (10 s, doubling up to 6 min, as kube-controller-manager).
    pub(crate) create_backoff: HashMap<String, (u32, Instant)>,
    /// Where pods bound to the node are announced, when a kubelet runs.
    pub(crate) kubelet: Option<mpsc::UnboundedSender<KubeletWork>>,
    /// Node name pods are bound to when a kubelet runs.
    pub(crate) node_name: Option<String>,
    /// Container logs, which go with their pod.
    pub(crate) logs: Option<Arc<Logs>>,
    rng: u64,
}

/// RFC 3339 now, seconds precision, as metav1.Time.
pub fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn key_of(object: &Value) -> (String, String) {
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
    (ns, name)
}

/// The resourceVersion of an object as a number (0 when absent).
pub fn rv_of(object: &Value) -> u64 {
    object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn str_at<'a>(object: &'a Value, pointer: &str) -> Option<&'a str> {
    object.pointer(pointer).and_then(Value::as_str)
}

impl Store {
    /// An empty store with the `default`, `kube-system` and `kube-public` namespaces.
    pub fn new(history_limit: usize) -> Self {
        let (tx, _) = broadcast::channel(65_536);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15)
            | 1;
        let mut store = Self {
            rv: 0,
            objects: ALL.iter().map(|_| BTreeMap::new()).collect(),
            history: VecDeque::new(),
            history_limit,
            compacted: 0,
            tx,
            dirty_jobs: BTreeSet::new(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            dependents: HashMap::new(),
            tallies: HashMap::new(),
            create_backoff: HashMap::new(),
            kubelet: None,
            node_name: None,
            logs: None,
            rng: seed,
        };
        for ns in ["default", "kube-system", "kube-public"] {
            let _ = store.create(
                resources::namespaces(),
                "",
                json!({"metadata": {"name": ns}}),
                "standin",
            );
        }
        store
    }

    /// The current (latest) resourceVersion.
    pub fn current_rv(&self) -> u64 {
        self.rv
    }

    /// The newest compacted resourceVersion; watches and continue tokens at or before it get 410.
    pub fn compacted_rv(&self) -> u64 {
        self.compacted
    }

    /// A receiver for live changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Broadcast> {
        self.tx.subscribe()
    }

    /// Drops history up to now, as an etcd compaction does, and tells open watches.
    pub fn compact(&mut self) {
        self.compacted = self.rv;
        self.history.clear();
        let _ = self.tx.send(Broadcast::Compacted(self.rv));
    }

    /// Ends every open watch.
    pub fn close_watches(&self) {
        let _ = self.tx.send(Broadcast::CloseAll);
    }

    /// Events after `rv` for one resource type, or `None` when `rv` was compacted away.
    pub fn events_since(&self, resource: usize, rv: u64) -> Option<Vec<Arc<Event>>> {
        if rv < self.compacted {
            return None;
        }
        let start = self.history.partition_point(|e| e.rv <= rv);
        Some(
            self.history
                .range(start..)
                .filter(|e| e.resource == resource)
                .cloned()
                .collect(),
        )
    }

    /// A random lower-case alphanumeric string, for generated names and uids.
    pub fn random_suffix(&mut self, len: usize) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        (0..len)
            .map(|_| {
                self.rng ^= self.rng << 13;
                self.rng ^= self.rng >> 7;
                self.rng ^= self.rng << 17;
                ALPHABET[(self.rng % ALPHABET.len() as u64) as usize] as char
            })
            .collect()
    }

    fn uid(&mut self) -> String {
        let hex: String = (0..32)
            .map(|_| {
                self.rng ^= self.rng << 13;
                self.rng ^= self.rng >> 7;
                self.rng ^= self.rng << 17;
                char::from_digit((self.rng % 16) as u32, 16).unwrap_or('0')
            })
            .collect();
        format!(
            "{}-{}-{}-{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..]
        )
    }

    /// Schedules a controller action.
    pub fn add_timer(&mut self, at: Instant, timer: Timer) {
        self.timer_seq += 1;
        self.timers.insert((at, self.timer_seq), timer);
    }

    /// Removes and returns the timers due at `now`.
    pub fn due_timers(&mut self, now: Instant) -> Vec<Timer> {
        let later = self.timers.split_off(&(now, u64::MAX));
        let due = std::mem::replace(&mut self.timers, later);
        due.into_values().collect()
    }

    fn emit(&mut self, resource: &ResourceType, kind: EventType, object: Value) {
        let rv = rv_of(&object);
        let line = match serde_json::to_vec(&json!({"type": kind.as_str(), "object": &object})) {
            Ok(mut bytes) => {
                bytes.push(b'\n');
                Bytes::from(bytes)
            }
            Err(_) => return,
        };
        let meta = &object["metadata"];
        let skeleton = json!({
            "kind": object.get("kind"),
            "metadata": {"namespace": meta.get("namespace"), "name": meta.get("name"), "labels": meta.get("labels")},
            "status": {"phase": object.pointer("/status/phase")},
            "spec": {"nodeName": object.pointer("/spec/nodeName")},
        });
        let event = Arc::new(Event {
            rv,
            resource: resource.index,
            object: skeleton,
            line,
        });
        self.history.push_back(event.clone());
        if self.history.len() > self.history_limit
            && let Some(old) = self.history.pop_front()
        {
            self.compacted = old.rv;
        }
        let _ = self.tx.send(Broadcast::Event(event));
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// One object.
    pub fn get(&self, resource: &ResourceType, namespace: &str, name: &str) -> Option<&Stored> {
        self.objects[resource.index].get(&(namespace.to_string(), name.to_string()))
    }

    /// Objects of a type in one namespace (or all), in key order, starting after `after`.
    pub fn range<'a>(
        &'a self,
        resource: &ResourceType,
        namespace: Option<&'a str>,
        after: Option<(String, String)>,
    ) -> impl Iterator<Item = &'a Value> + 'a {
        use std::ops::Bound;
        let map = &self.objects[resource.index];
        let start = match (&after, namespace) {
            (Some(key), _) => Bound::Excluded(key.clone()),
            (None, Some(ns)) => Bound::Included((ns.to_string(), String::new())),
            (None, None) => Bound::Unbounded,
        };
        map.range((start, Bound::Unbounded))
            .take_while(move |((ns, _), _)| namespace.is_none_or(|want| want == ns))
            .map(|(_, stored)| &stored.object)
    }

    /// Pods owned by the object with this uid.
    pub fn dependents_of(&self, uid: &str) -> Vec<(String, String)> {
        self.dependents
            .get(uid)
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn index_owners(&mut self, object: &Value, add: bool) {
        let key = key_of(object);
        let Some(refs) = object
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
        else {
            return;
        };
        for uid in refs
            .iter()
            .filter_map(|r| r.get("uid").and_then(Value::as_str))
        {
            if add {
                self.dependents
                    .entry(uid.to_string())
                    .or_default()
                    .insert(key.clone());
            } else if let Some(set) = self.dependents.get_mut(uid) {
                set.remove(&key);
                if set.is_empty() {
                    self.dependents.remove(uid);
                }
            }
        }
    }

    /// POST: validates, defaults, stores and announces a new object.
    pub fn create(
        &mut self,
        resource: &'static ResourceType,
        namespace: &str,
        mut object: Value,
        manager: &str,
    ) -> Result<Value, ApiError> {
        if !object.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request must be an object",
            ));
        }
        if resource.namespaced {
            let in_body = str_at(&object, "/metadata/namespace").unwrap_or(namespace);
            if in_body != namespace {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            if self.get(resources::namespaces(), "", namespace).is_none() {
                return Err(ApiError::not_found(resources::namespaces(), namespace));
            }
        }
        object["apiVersion"] = json!(resource.api_version());
        object["kind"] = json!(resource.kind);
        if !object.get("metadata").is_some_and(Value::is_object) {
            object["metadata"] = json!({});
        }
        if str_at(&object, "/metadata/name").unwrap_or("").is_empty()
            && let Some(prefix) = str_at(&object, "/metadata/generateName").map(str::to_string)
        {
            let suffix = self.random_suffix(5);
            object["metadata"]["name"] = json!(format!("{prefix}{suffix}"));
        }
        let name = str_at(&object, "/metadata/name").unwrap_or("").to_string();
        let causes = validate::metadata(resource, &object);
        if !causes.is_empty() {
            return Err(ApiError::invalid(resource, &name, &causes));
        }
        if self
            .get(
                resource,
                if resource.namespaced { namespace } else { "" },
                &name,
            )
            .is_some()
        {
            return Err(ApiError::already_exists(resource, &name));
        }
        let uid = self.uid();
        if let Some(meta) = object["metadata"].as_object_mut() {
            for server_owned in [
                "resourceVersion",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "managedFields",
            ] {
                meta.remove(server_owned);
            }
            if resource.namespaced {
                meta.insert("namespace".into(), json!(namespace));
            } else {
                meta.remove("namespace");
            }
            meta.insert("uid".into(), json!(uid));
            meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        }
        match resource.kind {
            "Job" => {
                validate::default_job(&mut object, &uid);
                let causes = validate::job(&object);
                if !causes.is_empty() {
                    return Err(ApiError::invalid(resource, &name, &causes));
                }
                object["metadata"]["generation"] = json!(1);
                object["status"] = json!({});
            }
            "Pod" => {
                if let Some(spec) = object.get_mut("spec") {
                    validate::default_pod_spec(spec);
                }
                let causes = object
                    .get("spec")
                    .map(|s| validate::pod_spec(s, "spec", false))
                    .unwrap_or_else(|| vec![super::status::Cause::required("spec.containers", "")]);
                if !causes.is_empty() {
                    return Err(ApiError::invalid(resource, &name, &causes));
                }
                self.admit_quota(namespace, &name, &object)?;
                object["metadata"]["generation"] = json!(1);
                object["status"] = json!({"phase": "Pending", "qosClass": qos_class(&object)});
                if let Some(node) = self.node_name.clone() {
                    object["spec"]["nodeName"] = json!(node);
                }
            }
            "Namespace" => {
                object["spec"] = json!({"finalizers": ["kubernetes"]});
                object["status"] = json!({"phase": "Active"});
                let labels = object["metadata"]
                    .as_object_mut()
                    .map(|m| m.entry("labels").or_insert(json!({})));
                if let Some(Value::Object(labels)) = labels {
                    labels.insert("kubernetes.io/metadata.name".into(), json!(name));
                }
            }
            "Secret" => {
                if object.get("type").is_none() {
                    object["type"] = json!("Opaque");
                }
                fold_string_data(&mut object);
            }
            _ => {}
        }
        let rv = self.next_rv();
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let mut managers = Managers::new();
        patch::record_update(&mut managers, &Value::Null, &object, manager);
        let key = (
            if resource.namespaced {
                namespace.to_string()
            } else {
                String::new()
            },
            name.clone(),
        );
        self.objects[resource.index].insert(
            key.clone(),
            Stored {
                object: object.clone(),
                managers,
            },
        );
        self.index_owners(&object, true);
        self.emit(resource, EventType::Added, object.clone());
        self.after_change(resource, &key, &object);
        if resource.kind == "Pod"
            && let Some(kubelet) = &self.kubelet
        {
            let _ = kubelet.send(KubeletWork::Start {
                namespace: key.0.clone(),
                name: key.1.clone(),
            });
        }
        Ok(object)
    }

    /// The ResourceQuota admission plugin's check that every container of a pod states the
    /// compute resources a quota of its namespace limits: a quota on `limits.cpu` admits only
    /// pods whose every container (init containers too) sets a CPU limit. Usage against
    /// `hard` is not tracked.
    fn admit_quota(&self, namespace: &str, name: &str, pod: &Value) -> Result<(), ApiError> {
        const COMPUTE: [(&str, &str, &str); 6] = [
            ("cpu", "requests", "cpu"),
            ("limits.cpu", "limits", "cpu"),
            ("limits.memory", "limits", "memory"),
            ("memory", "requests", "memory"),
            ("requests.cpu", "requests", "cpu"),
            ("requests.memory", "requests", "memory"),
        ];
        let containers: Vec<&Value> = ["initContainers", "containers"]
            .iter()
            .filter_map(|list| {
                pod.pointer(&format!("/spec/{list}"))
                    .and_then(Value::as_array)
            })
            .flatten()
            .collect();
        for quota in self.range(resources::resource_quotas(), Some(namespace), None) {
            let Some(hard) = quota.pointer("/spec/hard").and_then(Value::as_object) else {
                continue;
            };
            let mut missing = Vec::new();
            for (quota_key, section, resource) in COMPUTE {
                if !hard.contains_key(quota_key) {
                    continue;
                }
                let lacking: Vec<&str> = containers
                    .iter()
                    .filter(|c| {
                        c.pointer(&format!("/resources/{section}/{resource}"))
                            .is_none()
                    })
                    .filter_map(|c| c.get("name").and_then(Value::as_str))
                    .collect();
                if !lacking.is_empty() {
                    let shown = if quota_key.contains('.') {
                        quota_key.to_string()
                    } else {
                        format!("requests.{quota_key}")
                    };
                    missing.push(format!("{shown} for: {}", lacking.join(",")));
                }
            }
            if !missing.is_empty() {
                let quota_name = str_at(quota, "/metadata/name").unwrap_or("");
                return Err(ApiError::forbidden(
                    format!(
                        "pods \"{name}\" is forbidden: failed quota: {quota_name}: must specify {}",
                        missing.join("; ")
                    ),
                    "pods",
                    "",
                    name,
                ));
            }
        }
        Ok(())
    }

    fn after_change(&mut self, resource: &ResourceType, key: &(String, String), object: &Value) {
        match resource.kind {
            "Job" => {
                self.dirty_jobs.insert(key.clone());
            }
            "Pod" => {
                for owner in object
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if owner.get("kind").and_then(Value::as_str) == Some("Job")
                        && let Some(job) = owner.get("name").and_then(Value::as_str)
                    {
                        self.dirty_jobs.insert((key.0.clone(), job.to_string()));
                    }
                }
            }
            _ => {}
        }
    }

    /// PUT and PATCH after the new object is computed: preconditions, the status
    /// subresource split, immutable fields, generation, resourceVersion and the event.
    /// An update that changes nothing keeps the version and sends no event, like the real one.
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &mut self,
        resource: &'static ResourceType,
        namespace: &str,
        name: &str,
        mut new: Value,
        subresource: Option<&str>,
        managers: Option<Managers>,
        manager: &str,
    ) -> Result<Value, ApiError> {
        let key = (namespace.to_string(), name.to_string());
        let Some(stored) = self.objects[resource.index].get(&key) else {
            return Err(ApiError::not_found(resource, name));
        };
        let old = stored.object.clone();
        let mut owners = managers.unwrap_or_else(|| stored.managers.clone());
        if !new.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request must be an object",
            ));
        }
        if let Some(want) = str_at(&new, "/metadata/resourceVersion")
            && !want.is_empty()
            && want != str_at(&old, "/metadata/resourceVersion").unwrap_or("")
        {
            return Err(ApiError::conflict(resource, name));
        }
        if str_at(&new, "/metadata/name").is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(
                "the name of the object does not match the name on the URL",
            ));
        }
        if resource.status_subresource {
            match subresource {
                Some("status") => {
                    let status = new.get("status").cloned().unwrap_or(json!({}));
                    new = old.clone();
                    new["status"] = status;
                }
                _ => {
                    new["status"] = old.get("status").cloned().unwrap_or(json!({}));
                }
            }
        }
        new["apiVersion"] = json!(resource.api_version());
        new["kind"] = json!(resource.kind);
        if !new.get("metadata").is_some_and(Value::is_object) {
            new["metadata"] = json!({});
        }
        for server_owned in [
            "uid",
            "creationTimestamp",
            "namespace",
            "name",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "generateName",
        ] {
            match old["metadata"].get(server_owned) {
                Some(v) => new["metadata"][server_owned] = v.clone(),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove(server_owned);
                    }
                }
            }
        }
        let causes = validate::metadata(resource, &new);
        if !causes.is_empty() {
            return Err(ApiError::invalid(resource, name, &causes));
        }
        if resource.kind == "Secret" {
            fold_string_data(&mut new);
        }
        if resource.kind == "Job" {
            let causes = validate::job_update(&old, &new);
            if !causes.is_empty() {
                return Err(ApiError::invalid(resource, name, &causes));
            }
            let causes = validate::job(&new);
            if !causes.is_empty() {
                return Err(ApiError::invalid(resource, name, &causes));
            }
        }
        if resource.kind == "Pod" && old.get("spec") != new.get("spec") {
            return Err(ApiError::invalid(
                resource,
                name,
                &[super::status::Cause::forbidden(
                    "spec",
                    "pod updates may not change fields other than `spec.containers[*].image`, `spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations` (only additions to existing tolerations), `spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
                )],
            ));
        }
        // Clearing the last finalizer of a terminating object removes it.
        let terminating = old.pointer("/metadata/deletionTimestamp").is_some();
        let no_finalizers = new
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_none_or(|f| f.is_empty());
        let mut compare_old = old.clone();
        compare_old["metadata"]["resourceVersion"] = Value::Null;
        new["metadata"]["resourceVersion"] = Value::Null;
        if compare_old == new {
            return Ok(old);
        }
        if old.get("spec") != new.get("spec")
            && let Some(g) = old.pointer("/metadata/generation").and_then(Value::as_i64)
        {
            new["metadata"]["generation"] = json!(g + 1);
        }
        if subresource != Some("status") {
            patch::record_update(&mut owners, &old, &new, manager);
        }
        let rv = self.next_rv();
        new["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.index_owners(&old, false);
        self.index_owners(&new, true);
        self.objects[resource.index].insert(
            key.clone(),
            Stored {
                object: new.clone(),
                managers: owners,
            },
        );
        self.emit(resource, EventType::Modified, new.clone());
        self.after_change(resource, &key, &new);
        if terminating && no_finalizers && !(resource.kind == "Pod" && self.node_name.is_some()) {
            self.remove(resource, namespace, name);
        }
        Ok(new)
    }

    /// Server-side apply on an existing object, or create when absent.
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        &mut self,
        resource: &'static ResourceType,
        namespace: &str,
        name: &str,
        config: Value,
        manager: &str,
        force: bool,
    ) -> Result<Value, ApiError> {
        let key = (namespace.to_string(), name.to_string());
        let Some(stored) = self.objects[resource.index].get(&key) else {
            let mut created = config.clone();
            created["metadata"]["name"] = json!(name);
            let object = self.create(resource, namespace, created, manager)?;
            if let Some(stored) = self.objects[resource.index].get_mut(&key) {
                let mut owners = Managers::new();
                let mut scratch = stored.object.clone();
                let _ = patch::apply(&mut scratch, &mut owners, &config, manager, true);
                stored.managers = owners;
            }
            return Ok(object);
        };
        if let Some(want) = str_at(&config, "/metadata/resourceVersion")
            && want != str_at(&stored.object, "/metadata/resourceVersion").unwrap_or("")
        {
            return Err(ApiError::conflict(resource, name));
        }
        let mut live = stored.object.clone();
        let mut owners = stored.managers.clone();
        if let Err(conflicts) = patch::apply(&mut live, &mut owners, &config, manager, force) {
            return Err(ApiError::apply_conflict(resource, name, &conflicts));
        }
        if let Some(m) = live["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        self.update(resource, namespace, name, live, None, Some(owners), manager)
    }

    /// Removes an object now and sends DELETED with a new resourceVersion.
    pub fn remove(
        &mut self,
        resource: &ResourceType,
        namespace: &str,
        name: &str,
    ) -> Option<Value> {
        let key = (namespace.to_string(), name.to_string());
        let mut object = self.objects[resource.index].remove(&key)?.object;
        self.index_owners(&object, false);
        let rv = self.next_rv();
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.emit(resource, EventType::Deleted, object.clone());
        self.after_change(resource, &key, &object);
        if resource.kind == "Pod" {
            if let Some(logs) = &self.logs {
                logs.forget_pod(namespace, name);
            }
            if let Some(kubelet) = &self.kubelet {
                let _ = kubelet.send(KubeletWork::Forget {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                });
            }
        }
        if resource.kind == "Job"
            && let Some(uid) = str_at(&object, "/metadata/uid")
        {
            self.tallies.remove(uid);
        }
        Some(object)
    }

    /// DELETE: preconditions, graceful pod deletion, and dependents by propagation policy.
    pub fn delete(
        &mut self,
        resource: &'static ResourceType,
        namespace: &str,
        name: &str,
        options: &Value,
    ) -> Result<Deleted, ApiError> {
        let Some(stored) = self.get(resource, namespace, name) else {
            return Err(ApiError::not_found(resource, name));
        };
        let object = stored.object.clone();
        if let Some(want) = options
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
        {
            let have = str_at(&object, "/metadata/resourceVersion").unwrap_or("");
            if want != have {
                return Err(ApiError::precondition_failed(
                    resource,
                    name,
                    format!(
                        "Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {have}"
                    ),
                ));
            }
        }
        if let Some(want) = options
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
        {
            let have = str_at(&object, "/metadata/uid").unwrap_or("");
            if want != have {
                return Err(ApiError::precondition_failed(
                    resource,
                    name,
                    format!(
                        "Precondition failed: UID in precondition: {want}, UID in object meta: {have}"
                    ),
                ));
            }
        }
        let orphan_flag = options.get("orphanDependents").and_then(Value::as_bool);
        let policy = match options.get("propagationPolicy").and_then(Value::as_str) {
            Some("Orphan") => Propagation::Orphan,
            Some("Background") => Propagation::Background,
            Some("Foreground") => Propagation::Foreground,
            Some(other) => {
                return Err(ApiError::invalid(
                    resource,
                    name,
                    &[super::status::Cause::not_supported(
                        "propagationPolicy",
                        other,
                        &["Foreground", "Background", "Orphan"],
                    )],
                ));
            }
            None => match orphan_flag {
                Some(true) => Propagation::Orphan,
                Some(false) => Propagation::Background,
                // batch/v1 Jobs keep the historical default: their pods are orphaned.
                None if resource.kind == "Job" => Propagation::Orphan,
                None => Propagation::Background,
            },
        };
        if object.pointer("/metadata/deletionTimestamp").is_some() {
            return Ok(Deleted::Object(object));
        }
        if resource.kind == "Pod" {
            return Ok(Deleted::Object(self.delete_pod(namespace, name, options)));
        }
        let uid = str_at(&object, "/metadata/uid").unwrap_or("").to_string();
        let dependents = self.dependents_of(&uid);
        match policy {
            Propagation::Orphan => {
                let marked = self.mark_deleting(resource, namespace, name, "orphan");
                for (ns, pod) in dependents {
                    self.drop_owner_ref(&ns, &pod, &uid);
                }
                self.remove(resource, namespace, name);
                Ok(Deleted::Object(marked))
            }
            Propagation::Foreground => {
                let marked = self.mark_deleting(resource, namespace, name, "foregroundDeletion");
                for (ns, pod) in dependents {
                    self.delete_pod(&ns, &pod, &json!({}));
                }
                self.finish_foreground(resource, namespace, name);
                Ok(Deleted::Object(marked))
            }
            Propagation::Background => {
                self.remove(resource, namespace, name);
                for (ns, pod) in dependents {
                    self.delete_pod(&ns, &pod, &json!({}));
                }
                Ok(Deleted::Status(json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                    "details": {"name": name, "group": resource.group, "kind": resource.plural, "uid": uid}
                })))
            }
        }
    }

    /// Removes an owner waiting in foreground deletion once its dependents are gone.
    pub fn finish_foreground(&mut self, resource: &ResourceType, namespace: &str, name: &str) {
        let Some(stored) = self.get(resource, namespace, name) else {
            return;
        };
        let waiting = stored
            .object
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| f.iter().any(|x| x == "foregroundDeletion"));
        let uid = str_at(&stored.object, "/metadata/uid")
            .unwrap_or("")
            .to_string();
        if waiting && self.dependents_of(&uid).is_empty() {
            self.remove(resource, namespace, name);
        }
    }

    fn mark_deleting(
        &mut self,
        resource: &ResourceType,
        namespace: &str,
        name: &str,
        finalizer: &str,
    ) -> Value {
        let key = (namespace.to_string(), name.to_string());
        let rv = self.next_rv();
        let Some(stored) = self.objects[resource.index].get_mut(&key) else {
            return Value::Null;
        };
        let object = &mut stored.object;
        object["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
        object["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        let finalizers = object["metadata"]
            .as_object_mut()
            .map(|m| m.entry("finalizers").or_insert(json!([])));
        if let Some(Value::Array(list)) = finalizers {
            list.push(json!(finalizer));
        }
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let snapshot = object.clone();
        self.emit(resource, EventType::Modified, snapshot.clone());
        snapshot
    }

    fn drop_owner_ref(&mut self, namespace: &str, pod: &str, owner_uid: &str) {
        let Some(stored) = self.get(resources::pods(), namespace, pod) else {
            return;
        };
        let mut object = stored.object.clone();
        if let Some(Value::Array(refs)) = object.pointer_mut("/metadata/ownerReferences") {
            refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(owner_uid));
        }
        let _ = self.update(
            resources::pods(),
            namespace,
            pod,
            object,
            None,
            None,
            "garbage-collector",
        );
    }

    /// Deletes a pod: at once when it is not on a node or already finished, otherwise
    /// gracefully (deletionTimestamp now, the kubelet stops it and removes it).
    pub fn delete_pod(&mut self, namespace: &str, name: &str, options: &Value) -> Value {
        let pods = resources::pods();
        let Some(stored) = self.get(pods, namespace, name) else {
            return Value::Null;
        };
        let object = stored.object.clone();
        if object.pointer("/metadata/deletionTimestamp").is_some() {
            return object;
        }
        let phase = str_at(&object, "/status/phase").unwrap_or("Pending");
        let on_node = object.pointer("/spec/nodeName").is_some();
        let grace = options
            .get("gracePeriodSeconds")
            .and_then(Value::as_u64)
            .or_else(|| {
                object
                    .pointer("/spec/terminationGracePeriodSeconds")
                    .and_then(Value::as_u64)
            })
            .unwrap_or(30);
        let kubelet = self.kubelet.clone();
        match kubelet {
            Some(kubelet) if on_node && grace == 0 && !matches!(phase, "Succeeded" | "Failed") => {
                // A forced delete removes the object now; the kubelet kills what is left.
                let _ = kubelet.send(KubeletWork::Stop {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    grace_seconds: 0,
                });
                let removed = self.remove(pods, namespace, name).unwrap_or(Value::Null);
                self.after_pod_removed(&removed);
                removed
            }
            Some(kubelet) if on_node && !matches!(phase, "Succeeded" | "Failed") => {
                let key = (namespace.to_string(), name.to_string());
                let rv = self.next_rv();
                let Some(stored) = self.objects[pods.index].get_mut(&key) else {
                    return Value::Null;
                };
                let until = Utc::now() + chrono::Duration::seconds(grace as i64);
                stored.object["metadata"]["deletionTimestamp"] =
                    json!(until.to_rfc3339_opts(SecondsFormat::Secs, true));
                stored.object["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                stored.object["metadata"]["resourceVersion"] = json!(rv.to_string());
                let snapshot = stored.object.clone();
                self.emit(pods, EventType::Modified, snapshot.clone());
                self.after_change(pods, &key, &snapshot);
                let _ = kubelet.send(KubeletWork::Stop {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    grace_seconds: grace,
                });
                snapshot
            }
            _ => {
                let removed = self.remove(pods, namespace, name).unwrap_or(Value::Null);
                self.after_pod_removed(&removed);
                removed
            }
        }
    }

    /// Lets owners waiting in foreground deletion go once their last pod is removed.
    pub fn after_pod_removed(&mut self, pod: &Value) {
        let (namespace, _) = key_of(pod);
        for owner in pod
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let (Some("Job"), Some(name)) = (
                owner.get("kind").and_then(Value::as_str),
                owner.get("name").and_then(Value::as_str),
            ) {
                let name = name.to_string();
                self.finish_foreground(resources::jobs(), &namespace, &name);
            }
        }
    }

    /// Writes a controller's or kubelet's change through `f` on the status subresource
    /// path (no ownership changes); returns the new object.
    pub fn modify(
        &mut self,
        resource: &'static ResourceType,
        namespace: &str,
        name: &str,
        f: impl FnOnce(&mut Value),
    ) -> Option<Value> {
        let mut object = self.get(resource, namespace, name)?.object.clone();
        f(&mut object);
        if let Some(m) = object["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        let sub = if resource.status_subresource {
            Some("status")
        } else {
            None
        };
        self.update(
            resource,
            namespace,
            name,
            object,
            sub,
            None,
            "standin-controller",
        )
        .ok()
    }
}

/// `stringData` is write-only: the server folds it into `data`, base64-encoded.
fn fold_string_data(secret: &mut Value) {
    let Some(Value::Object(strings)) = secret.as_object_mut().and_then(|m| m.remove("stringData"))
    else {
        return;
    };
    if !secret.get("data").is_some_and(Value::is_object) {
        secret["data"] = json!({});
    }
    for (k, v) in strings {
        secret["data"][k] = json!(encode_base64(v.as_str().unwrap_or("").as_bytes()));
    }
}

/// Standard base64 with padding.
pub fn encode_base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Guaranteed, Burstable or BestEffort, from the containers' requests and limits.
fn qos_class(pod: &Value) -> &'static str {
    let containers = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut any = false;
    let mut guaranteed = !containers.is_empty();
    for c in &containers {
        let requests = c.pointer("/resources/requests").and_then(Value::as_object);
        let limits = c.pointer("/resources/limits").and_then(Value::as_object);
        any |= requests.is_some_and(|r| !r.is_empty()) || limits.is_some_and(|l| !l.is_empty());
        let full = |r: &str| limits.is_some_and(|l| l.contains_key(r));
        guaranteed &= full("cpu")
            && full("memory")
            && requests.is_none_or(|req| {
                req.iter()
                    .all(|(k, v)| limits.and_then(|l| l.get(k)) == Some(v))
            });
    }
    if guaranteed {
        "Guaranteed"
    } else if any {
        "Burstable"
    } else {
        "BestEffort"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(name: &str) -> Value {
        json!({"metadata": {"name": name}, "spec": {"holderIdentity": "a"}})
    }

    #[test]
    fn every_write_takes_the_next_global_resource_version_and_a_noop_takes_none() {
        let mut store = Store::new(1000);
        let leases = resources::by_name("leases").unwrap();
        let first = store.create(leases, "default", lease("a"), "m").unwrap();
        let second = store.create(leases, "default", lease("b"), "m").unwrap();
        assert_eq!(rv_of(&second), rv_of(&first) + 1);
        let same = store
            .update(leases, "default", "a", first.clone(), None, None, "m")
            .unwrap();
        assert_eq!(
            rv_of(&same),
            rv_of(&first),
            "an unchanged object keeps its version"
        );
        let mut changed = first.clone();
        changed["spec"]["holderIdentity"] = json!("b");
        let updated = store
            .update(leases, "default", "a", changed.clone(), None, None, "m")
            .unwrap();
        assert_eq!(rv_of(&updated), rv_of(&second) + 1);
        let stale = store
            .update(leases, "default", "a", changed, None, None, "m")
            .unwrap_err();
        assert_eq!(stale.code, 409);
    }

    #[test]
    fn secret_string_data_is_folded_into_base64_data() {
        let mut store = Store::new(1000);
        let secret =
            json!({"metadata": {"name": "s"}, "stringData": {"token": "hello", "k": "hi"}});
        let created = store
            .create(resources::secrets(), "default", secret, "m")
            .unwrap();
        assert_eq!(created["data"], json!({"token": "aGVsbG8=", "k": "aGk="}));
        assert!(created.get("stringData").is_none());
        assert_eq!(encode_base64(b"abc"), "YWJj");
    }

    #[test]
    fn a_create_in_a_missing_namespace_is_not_found() {
        let mut store = Store::new(1000);
        let err = store
            .create(
                resources::by_name("leases").unwrap(),
                "nope",
                lease("a"),
                "m",
            )
            .unwrap_err();
        assert_eq!(err.code, 404);
        assert_eq!(err.message, "namespaces \"nope\" not found");
    }

    #[test]
    fn history_after_a_version_is_replayed_until_it_is_compacted() {
        let mut store = Store::new(1000);
        let leases = resources::by_name("leases").unwrap();
        let a = store.create(leases, "default", lease("a"), "m").unwrap();
        store.create(leases, "default", lease("b"), "m").unwrap();
        let since = store.events_since(leases.index, rv_of(&a)).unwrap();
        assert_eq!(since.len(), 1);
        assert_eq!(since[0].object["metadata"]["name"], "b");
        store.compact();
        assert!(store.events_since(leases.index, rv_of(&a)).is_none());
        assert!(
            store
                .events_since(leases.index, store.current_rv())
                .unwrap()
                .is_empty()
        );
    }
}
