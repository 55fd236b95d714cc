//! The stand-in kubelet: runs each pod bound to its node as local processes (init
//! containers in order, then the main containers, each in its own process group), maps
//! volumes and termination-message files to host directories, resolves env from Secrets
//! and ConfigMaps, captures output as the container log, reports status the way the
//! real kubelet does, and stops pods on graceful deletion.

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::controller::{self, container_names, container_status, pod_conditions};
use super::logs::{LogBuffer, tail_lines};
use super::resources;
use super::server::Shared;
use super::store::{KubeletWork, now_rfc3339};

/// Exit status of a container process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Exit {
    code: i64,
    signal: Option<i32>,
}

/// What the kubelet knows about a pod it runs.
#[derive(Debug, Default)]
struct RunningPod {
    /// Process group of the container running now.
    pgid: Option<i32>,
    /// The pod is being deleted: stop and remove it.
    deleting: bool,
    /// A SIGKILL sent now is an out-of-memory kill.
    oom: bool,
    /// A test set the final status; the kubelet must not overwrite it.
    overridden: bool,
    /// The run task has finished.
    finished: bool,
}

/// The kubelet's shared state.
#[derive(Debug)]
pub struct Kubelet {
    root: PathBuf,
    mappings: Mutex<Vec<(String, PathBuf)>>,
    pods: Mutex<HashMap<(String, String), RunningPod>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn signal_group(pgid: i32, signal: i32) {
    // SAFETY: kill(2) with a negative pid signals a process group; it has no memory effects.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// SIGKILLs a container whose first process leads group `pgid`: that group and every
/// process descended from its first process, whatever group it moved to. A real kubelet
/// kills a container through its cgroup, which holds them all; a program that put its
/// children in a group of their own (the launcher does) must not outlive its container.
fn kill_container(pgid: i32) {
    for pid in descendants(pgid) {
        // SAFETY: kill(2) only sends a signal.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    signal_group(pgid, libc::SIGKILL);
}

/// The processes descended from `root`, read from `/proc` (children before the walk ends
/// may be missed; a container forking while it is killed is not a case the tests need).
fn descendants(root: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The fields after the command name (in parentheses): state, then the parent.
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if let Some(parent) = parent {
            children.entry(parent).or_default().push(pid);
        }
    }
    let mut found = Vec::new();
    let mut next = vec![root];
    while let Some(pid) = next.pop() {
        for &child in children.get(&pid).into_iter().flatten() {
            found.push(child);
            next.push(child);
        }
    }
    found
}

impl Kubelet {
    /// A kubelet keeping pod directories under `root`.
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            mappings: Mutex::new(Vec::new()),
            pods: Mutex::new(HashMap::new()),
        }
    }

    /// Maps a path inside every container to a host path.
    pub fn map_path(&self, container_path: &str, host_path: PathBuf) {
        let mut mappings = lock(&self.mappings);
        mappings.retain(|(c, _)| c != container_path);
        mappings.push((container_path.to_string(), host_path));
    }

    /// The host directory of a pod.
    pub fn pod_dir(&self, pod: &str) -> PathBuf {
        self.root.join(pod)
    }

    /// Whether the kubelet runs this pod's processes now.
    pub fn is_running(&self, namespace: &str, pod: &str) -> bool {
        lock(&self.pods)
            .get(&(namespace.to_string(), pod.to_string()))
            .is_some_and(|p| !p.finished)
    }

    /// Kills the pod's running container with SIGKILL and reports it OOMKilled.
    pub fn oom_kill(&self, namespace: &str, pod: &str) -> bool {
        let mut pods = lock(&self.pods);
        let Some(running) = pods.get_mut(&(namespace.to_string(), pod.to_string())) else {
            return false;
        };
        running.oom = true;
        match running.pgid {
            Some(pgid) => {
                kill_container(pgid);
                true
            }
            None => false,
        }
    }

    /// Kills every process group the kubelet runs (the server is going away).
    pub fn kill_all(&self) {
        for running in lock(&self.pods).values() {
            if let Some(pgid) = running.pgid {
                kill_container(pgid);
            }
        }
    }

    /// Stops the pod's processes because a test sets its final status itself.
    pub fn take_over(&self, namespace: &str, pod: &str) {
        let mut pods = lock(&self.pods);
        if let Some(running) = pods.get_mut(&(namespace.to_string(), pod.to_string())) {
            running.overridden = true;
            if let Some(pgid) = running.pgid {
                kill_container(pgid);
            }
        }
    }
}

/// Runs the kubelet loop until the server stops.
pub async fn run(
    shared: Arc<Shared>,
    kubelet: Arc<Kubelet>,
    mut work: mpsc::UnboundedReceiver<KubeletWork>,
) {
    while let Some(item) = work.recv().await {
        match item {
            KubeletWork::Start { namespace, name } => {
                lock(&kubelet.pods)
                    .insert((namespace.clone(), name.clone()), RunningPod::default());
                tokio::spawn(run_pod(shared.clone(), kubelet.clone(), namespace, name));
            }
            KubeletWork::Forget { namespace, name } => {
                let mut pods = lock(&kubelet.pods);
                let key = (namespace, name);
                if pods.get(&key).is_some_and(|p| p.finished) {
                    pods.remove(&key);
                }
            }
            KubeletWork::Stop {
                namespace,
                name,
                grace_seconds,
            } => {
                let key = (namespace.clone(), name.clone());
                let (pgid, finished) = {
                    let mut pods = lock(&kubelet.pods);
                    let running = pods.entry(key).or_insert_with(|| RunningPod {
                        finished: true,
                        ..Default::default()
                    });
                    running.deleting = true;
                    (running.pgid, running.finished)
                };
                if finished {
                    remove_pod(&shared, &kubelet, &namespace, &name);
                    continue;
                }
                if let Some(pgid) = pgid {
                    if grace_seconds == 0 {
                        kill_container(pgid);
                    } else {
                        signal_group(pgid, libc::SIGTERM);
                    }
                }
                let kubelet = kubelet.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(grace_seconds)).await;
                    let pgid = lock(&kubelet.pods)
                        .get(&(namespace, name))
                        .and_then(|p| p.pgid);
                    if let Some(pgid) = pgid {
                        kill_container(pgid);
                    }
                });
            }
        }
    }
}

fn remove_pod(shared: &Shared, kubelet: &Kubelet, namespace: &str, name: &str) {
    lock(&kubelet.pods).remove(&(namespace.to_string(), name.to_string()));
    let mut store = shared.store();
    if let Some(removed) = store.remove(resources::pods(), namespace, name) {
        store.after_pod_removed(&removed);
    }
    controller::settle(&mut store);
    drop(store);
    shared.logs.forget_pod(namespace, name);
}

fn pod_state(kubelet: &Kubelet, namespace: &str, name: &str) -> (bool, bool, bool) {
    let pods = lock(&kubelet.pods);
    pods.get(&(namespace.to_string(), name.to_string()))
        .map(|p| (p.deleting, p.oom, p.overridden))
        .unwrap_or((true, false, false))
}

/// Writes the pod's status through the status subresource (no-op when it is gone).
fn set_status(
    shared: &Shared,
    kubelet: &Kubelet,
    namespace: &str,
    name: &str,
    f: impl FnOnce(&Value, &mut Value),
) {
    let (.., overridden) = pod_state(kubelet, namespace, name);
    if overridden {
        return;
    }
    let mut store = shared.store();
    let Some(stored) = store.get(resources::pods(), namespace, name) else {
        return;
    };
    let pod = stored.object.clone();
    store.modify(resources::pods(), namespace, name, |p| {
        let mut status = p.get("status").cloned().unwrap_or(json!({}));
        f(&pod, &mut status);
        p["status"] = status;
    });
    controller::settle(&mut store);
}

fn decode_base64(input: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len() * 3 / 4);
    let mut buf = 0u32;
    let mut bits = 0;
    for c in input
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
    {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32;
        buf = (buf << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
    }
    Some(out)
}

/// Values of a Secret (`data`, base64) or ConfigMap (`data`, plain).
fn source_values(object: &Value, secret: bool) -> Vec<(String, String)> {
    object
        .get("data")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| {
                    let raw = v.as_str()?;
                    let value = if secret {
                        String::from_utf8(decode_base64(raw)?).ok()?
                    } else {
                        raw.to_string()
                    };
                    Some((k.clone(), value))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The container's environment from env and envFrom, or the kubelet's config error.
fn resolve_env(
    shared: &Shared,
    pod: &Value,
    container: &Value,
) -> Result<Vec<(String, String)>, String> {
    let namespace = pod
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let store = shared.store();
    let lookup = |secret: bool, name: &str| {
        let r = if secret {
            resources::secrets()
        } else {
            resources::configmaps()
        };
        store.get(r, namespace, name).map(|s| s.object.clone())
    };
    let mut env = Vec::new();
    for from in container
        .get("envFrom")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let prefix = from.get("prefix").and_then(Value::as_str).unwrap_or("");
        for (key, secret) in [("secretRef", true), ("configMapRef", false)] {
            let Some(reference) = from.get(key) else {
                continue;
            };
            let name = reference.get("name").and_then(Value::as_str).unwrap_or("");
            let optional = reference
                .get("optional")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            match lookup(secret, name) {
                Some(object) => {
                    for (k, v) in source_values(&object, secret) {
                        env.push((format!("{prefix}{k}"), v));
                    }
                }
                None if optional => {}
                None => {
                    return Err(format!(
                        "{} \"{name}\" not found",
                        if secret { "secret" } else { "configmap" }
                    ));
                }
            }
        }
    }
    for var in container
        .get("env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = var
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if let Some(value) = var.get("value").and_then(Value::as_str) {
            env.push((name, expand(value, &env)));
            continue;
        }
        let Some(from) = var.get("valueFrom") else {
            env.push((name, String::new()));
            continue;
        };
        for (key, secret, kind) in [
            ("secretKeyRef", true, "Secret"),
            ("configMapKeyRef", false, "ConfigMap"),
        ] {
            let Some(reference) = from.get(key) else {
                continue;
            };
            let source = reference.get("name").and_then(Value::as_str).unwrap_or("");
            let wanted = reference.get("key").and_then(Value::as_str).unwrap_or("");
            let optional = reference
                .get("optional")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let Some(object) = lookup(secret, source) else {
                if optional {
                    continue;
                }
                return Err(format!(
                    "{} \"{source}\" not found",
                    if secret { "secret" } else { "configmap" }
                ));
            };
            match source_values(&object, secret)
                .into_iter()
                .find(|(k, _)| k == wanted)
            {
                Some((_, v)) => env.push((name.clone(), v)),
                None if optional => {}
                None => {
                    return Err(format!(
                        "couldn't find key {wanted} in {kind} {namespace}/{source}"
                    ));
                }
            }
        }
        if let Some(path) = from.pointer("/fieldRef/fieldPath").and_then(Value::as_str) {
            let value = match path {
                "status.podIP" | "status.hostIP" => "127.0.0.1".to_string(),
                other => pod
                    .pointer(&format!("/{}", other.replace('.', "/")))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            };
            env.push((name, value));
        }
    }
    Ok(env)
}

/// `$(VAR)` references to earlier variables, as the kubelet expands them.
fn expand(value: &str, env: &[(String, String)]) -> String {
    let mut out = value.to_string();
    for (k, v) in env.iter().rev() {
        out = out.replace(&format!("$({k})"), v);
    }
    out
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "/._-~".contains(c)
}

/// Rewrites every mapped container path in `value` to its host path: a mapped prefix
/// counts where it starts a path (at the start, or after a character that cannot be part
/// of a path, as in `--out=/mnt/x` or a `sh -c` script) and ends at a path boundary.
fn rewrite(value: &str, mappings: &[(String, PathBuf)]) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    let mut prev: Option<char> = None;
    'scan: while !rest.is_empty() {
        if prev.is_none_or(|p| !is_path_char(p)) {
            for (prefix, host) in mappings {
                if let Some(after) = rest.strip_prefix(prefix.as_str())
                    && after
                        .chars()
                        .next()
                        .is_none_or(|c| c == '/' || !is_path_char(c))
                {
                    out.push_str(&host.to_string_lossy());
                    prev = prefix.chars().last();
                    rest = after;
                    continue 'scan;
                }
            }
        }
        let c = rest.chars().next().unwrap_or_default();
        out.push(c);
        prev = Some(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Container-path → host-path pairs for one container, longest prefix first.
fn container_mappings(kubelet: &Kubelet, pod: &Value, container: &Value) -> Vec<(String, PathBuf)> {
    let pod_name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let dir = kubelet.pod_dir(pod_name);
    let volumes: HashMap<String, PathBuf> = pod
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| {
            let name = v.get("name").and_then(Value::as_str)?;
            let host = match v.pointer("/hostPath/path").and_then(Value::as_str) {
                Some(p) => PathBuf::from(p),
                None => dir.join("volumes").join(name),
            };
            Some((name.to_string(), host))
        })
        .collect();
    let mut out: Vec<(String, PathBuf)> = lock(&kubelet.mappings).clone();
    for mount in container
        .get("volumeMounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let (Some(name), Some(path)) = (
            mount.get("name").and_then(Value::as_str),
            mount.get("mountPath").and_then(Value::as_str),
        ) else {
            continue;
        };
        if let Some(host) = volumes.get(name) {
            let host = match mount.get("subPath").and_then(Value::as_str) {
                Some(sub) if !sub.is_empty() => host.join(sub),
                _ => host.clone(),
            };
            out.push((path.trim_end_matches('/').to_string(), host));
        }
    }
    let cname = container.get("name").and_then(Value::as_str).unwrap_or("");
    let term = container
        .get("terminationMessagePath")
        .and_then(Value::as_str)
        .unwrap_or("/dev/termination-log");
    out.push((
        term.to_string(),
        dir.join(format!("{cname}.termination-log")),
    ));
    out.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
    out
}

async fn run_pod(shared: Arc<Shared>, kubelet: Arc<Kubelet>, namespace: String, name: String) {
    let outcome = run_pod_inner(&shared, &kubelet, &namespace, &name).await;
    if let Err(message) = outcome {
        tracing::warn!(pod = %name, %message, "the stand-in kubelet could not run a pod");
    }
    let deleting = {
        let mut pods = lock(&kubelet.pods);
        match pods.get_mut(&(namespace.clone(), name.clone())) {
            Some(p) => {
                p.finished = true;
                p.pgid = None;
                p.deleting
            }
            None => true,
        }
    };
    if deleting {
        remove_pod(&shared, &kubelet, &namespace, &name);
    }
}

fn waiting_statuses(pod: &Value, list: &str, reason: &str, message: Option<&str>) -> Value {
    let statuses: Vec<Value> = container_names(pod, list)
        .iter()
        .map(|c| {
            let mut waiting = json!({"reason": reason});
            if let Some(m) = message {
                waiting["message"] = json!(m);
            }
            container_status(pod, c, json!({"waiting": waiting}), false)
        })
        .collect();
    json!(statuses)
}

fn set_container(status: &mut Value, list: &str, entry: Value) {
    let slot = status
        .as_object_mut()
        .map(|s| s.entry(list).or_insert(json!([])));
    if let Some(Value::Array(items)) = slot {
        match items.iter_mut().find(|s| s["name"] == entry["name"]) {
            Some(existing) => *existing = entry,
            None => items.push(entry),
        }
    }
}

fn read_termination_message(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]).into_owned()
}

async fn run_pod_inner(
    shared: &Arc<Shared>,
    kubelet: &Arc<Kubelet>,
    namespace: &str,
    name: &str,
) -> Result<(), String> {
    let pod = {
        let store = shared.store();
        store
            .get(resources::pods(), namespace, name)
            .map(|s| s.object.clone())
            .ok_or("the pod is gone")?
    };
    let dir = kubelet.pod_dir(name);
    for volume in pod
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if volume.get("hostPath").is_none() {
            let vname = volume
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("unnamed");
            std::fs::create_dir_all(dir.join("volumes").join(vname)).map_err(|e| e.to_string())?;
        }
    }
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let has_init = !container_names(&pod, "initContainers").is_empty();
    let now = now_rfc3339();
    set_status(shared, kubelet, namespace, name, |pod, status| {
        status["phase"] = json!("Pending");
        status["conditions"] = pod_conditions(true, !has_init, false);
        status["hostIP"] = json!("127.0.0.1");
        status["podIP"] = json!("127.0.0.1");
        status["startTime"] = json!(now);
        let main_reason = if has_init {
            "PodInitializing"
        } else {
            "ContainerCreating"
        };
        status["containerStatuses"] = waiting_statuses(pod, "containers", main_reason, None);
        if has_init {
            status["initContainerStatuses"] =
                waiting_statuses(pod, "initContainers", "PodInitializing", None);
        }
    });

    let init: Vec<Value> = pod
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for container in &init {
        let cname = container
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let exit =
            match run_container(shared, kubelet, &pod, container, "initContainerStatuses").await {
                Some(exit) => exit,
                None => return Ok(()),
            };
        if exit.code != 0 {
            let (.., overridden) = pod_state(kubelet, namespace, name);
            if !overridden {
                set_status(shared, kubelet, namespace, name, |pod, status| {
                    status["phase"] = json!("Failed");
                    status["conditions"] = pod_conditions(true, false, false);
                    status["containerStatuses"] =
                        waiting_statuses(pod, "containers", "PodInitializing", None);
                });
            }
            tracing::debug!(pod = name, container = %cname, "init container failed");
            return Ok(());
        }
    }
    let containers: Vec<Value> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let runs = containers
        .iter()
        .map(|c| run_container(shared, kubelet, &pod, c, "containerStatuses"));
    let exits = futures::future::join_all(runs).await;
    let (.., overridden) = pod_state(kubelet, namespace, name);
    if overridden || exits.iter().any(Option::is_none) {
        return Ok(());
    }
    let all_ok = exits.iter().all(|e| e.is_some_and(|e| e.code == 0));
    set_status(shared, kubelet, namespace, name, |_, status| {
        status["phase"] = json!(if all_ok { "Succeeded" } else { "Failed" });
        status["conditions"] = pod_conditions(true, true, false);
    });
    Ok(())
}

/// Runs one container to its end and reports its status; `None` when it never started
/// (the pod was deleted while its config could not be resolved).
async fn run_container(
    shared: &Arc<Shared>,
    kubelet: &Arc<Kubelet>,
    pod: &Value,
    container: &Value,
    list: &str,
) -> Option<Exit> {
    let namespace = pod
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let cname = container.get("name").and_then(Value::as_str).unwrap_or("");
    let env = loop {
        match resolve_env(shared, pod, container) {
            Ok(env) => break env,
            Err(message) => {
                set_status(shared, kubelet, namespace, name, |pod, status| {
                    let waiting = json!({"waiting": {"reason": "CreateContainerConfigError", "message": message}});
                    set_container(status, list, container_status(pod, cname, waiting, false));
                });
                let (deleting, ..) = pod_state(kubelet, namespace, name);
                if deleting {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let mappings = container_mappings(kubelet, pod, container);
    let term_file = kubelet
        .pod_dir(name)
        .join(format!("{cname}.termination-log"));
    let _ = std::fs::write(&term_file, b"");
    let mut argv: Vec<String> = container
        .get("command")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .chain(
            container
                .get("args")
                .and_then(Value::as_array)
                .into_iter()
                .flatten(),
        )
        .filter_map(Value::as_str)
        .map(|a| rewrite(&expand(a, &env), &mappings))
        .collect();
    let log = shared.logs.buffer(namespace, name, cname);
    let started = now_rfc3339();
    let exit = if argv.is_empty() {
        log.append(b"the stand-in kubelet runs no image entrypoints: set command or args\n");
        Exit {
            code: 128,
            signal: None,
        }
    } else {
        let program = argv.remove(0);
        let mut command = tokio::process::Command::new(&program);
        command
            .args(&argv)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        command.env("HOSTNAME", name);
        for (k, v) in &env {
            command.env(k, rewrite(v, &mappings));
        }
        if let Some(dir) = container.get("workingDir").and_then(Value::as_str) {
            command.current_dir(rewrite(dir, &mappings));
        }
        match command.spawn() {
            Ok(child) => run_child(shared, kubelet, pod, cname, list, child, &log, &started).await,
            Err(err) => {
                log.append(format!("exec: {program}: {err}\n").as_bytes());
                Exit {
                    code: 128,
                    signal: None,
                }
            }
        }
    };
    log.close();
    let (_, oom, overridden) = pod_state(kubelet, namespace, name);
    if overridden {
        return Some(exit);
    }
    let oom_killed = oom && exit.signal == Some(libc::SIGKILL);
    let reason = if oom_killed {
        "OOMKilled"
    } else if exit.code == 0 {
        "Completed"
    } else {
        "Error"
    };
    let mut message = read_termination_message(&term_file);
    let fallback = container
        .get("terminationMessagePolicy")
        .and_then(Value::as_str)
        == Some("FallbackToLogsOnError");
    if message.is_empty() && fallback && exit.code != 0 {
        let data = log.snapshot();
        let tail = tail_lines(&data, 80);
        let tail = &tail[tail.len().saturating_sub(2048)..];
        message = String::from_utf8_lossy(tail).into_owned();
    }
    let finished = now_rfc3339();
    set_status(shared, kubelet, namespace, name, |pod, status| {
        let mut terminated = json!({"exitCode": exit.code, "reason": reason, "startedAt": started,
                                    "finishedAt": finished, "containerID": format!("standin://{name}/{cname}")});
        if !message.is_empty() {
            terminated["message"] = json!(message);
        }
        if let Some(sig) = exit.signal.filter(|_| !oom_killed) {
            terminated["signal"] = json!(sig);
        }
        set_container(
            status,
            list,
            container_status(pod, cname, json!({"terminated": terminated}), false),
        );
    });
    Some(exit)
}

async fn pump(mut reader: impl tokio::io::AsyncRead + Unpin, log: Arc<LogBuffer>) {
    let mut buf = vec![0u8; 8192];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => log.append(&buf[..n]),
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_child(
    shared: &Arc<Shared>,
    kubelet: &Arc<Kubelet>,
    pod: &Value,
    cname: &str,
    list: &str,
    mut child: tokio::process::Child,
    log: &Arc<LogBuffer>,
    started: &str,
) -> Exit {
    let namespace = pod
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let pgid = child.id().map(|id| id as i32);
    let deleting = {
        let mut pods = lock(&kubelet.pods);
        let entry = pods
            .entry((namespace.to_string(), name.to_string()))
            .or_default();
        entry.pgid = pgid;
        entry.deleting
    };
    if let (true, Some(pgid)) = (deleting, pgid) {
        signal_group(pgid, libc::SIGTERM);
    }
    let out = child
        .stdout
        .take()
        .map(|s| tokio::spawn(pump(s, log.clone())));
    let err = child
        .stderr
        .take()
        .map(|s| tokio::spawn(pump(s, log.clone())));
    let main = list == "containerStatuses";
    let started = started.to_string();
    set_status(shared, kubelet, namespace, name, |pod, status| {
        let running = json!({"running": {"startedAt": started}});
        set_container(status, list, container_status(pod, cname, running, main));
        if main {
            status["phase"] = json!("Running");
            status["conditions"] = pod_conditions(true, true, true);
        }
    });
    let status = child.wait().await;
    {
        let mut pods = lock(&kubelet.pods);
        if let Some(entry) = pods.get_mut(&(namespace.to_string(), name.to_string())) {
            entry.pgid = None;
        }
    }
    // Output still buffered in pipes belongs to the log; a grandchild keeping the pipe open
    // would block forever, so the process group is killed once the leader exits.
    if let Some(pgid) = pgid {
        signal_group(pgid, libc::SIGKILL);
    }
    for pump in [out, err].into_iter().flatten() {
        let _ = pump.await;
    }
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => Exit {
                code: code.into(),
                signal: None,
            },
            (None, Some(sig)) => Exit {
                code: 128 + i64::from(sig),
                signal: Some(sig),
            },
            (None, None) => Exit {
                code: 128,
                signal: None,
            },
        },
        Err(_) => Exit {
            code: 128,
            signal: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_prefixes_rewrite_only_whole_path_components() {
        let mappings = vec![
            (
                "/mnt/data".to_string(),
                PathBuf::from("/tmp/pod/volumes/data"),
            ),
            (
                "/mnt".to_string(),
                PathBuf::from("/tmp/pod/volumes/scratch"),
            ),
        ];
        assert_eq!(rewrite("/mnt/data/x", &mappings), "/tmp/pod/volumes/data/x");
        assert_eq!(rewrite("/mnt/y", &mappings), "/tmp/pod/volumes/scratch/y");
        assert_eq!(rewrite("/mnt", &mappings), "/tmp/pod/volumes/scratch");
        assert_eq!(rewrite("/mntx", &mappings), "/mntx");
        assert_eq!(
            rewrite("--out=/mnt", &mappings),
            "--out=/tmp/pod/volumes/scratch"
        );
        assert_eq!(
            rewrite("echo 1 > /mnt/data/f; cat /mnt/f", &mappings),
            "echo 1 > /tmp/pod/volumes/data/f; cat /tmp/pod/volumes/scratch/f"
        );
        assert_eq!(rewrite("/home/mnt/x", &mappings), "/home/mnt/x");
    }

    #[test]
    fn base64_secret_values_decode() {
        assert_eq!(decode_base64("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(decode_base64("aGk=").unwrap(), b"hi");
        assert!(decode_base64("a*b").is_none());
    }

    #[test]
    fn env_references_expand_earlier_variables() {
        let env = vec![("A".to_string(), "1".to_string())];
        assert_eq!(expand("x$(A)y$(B)", &env), "x1y$(B)");
    }
}
