//! Checks of the manifests in `deploy/`: they parse as the Kubernetes objects they claim to
//! be, the kustomizations list exactly their files, the Role grants exactly what the code
//! uses and nothing cluster-wide, the Deployment runs locked down and probes endpoints the
//! real binary serves, and the image puts the binary where step pods copy it from.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use serde_json::Value;
use trainyard::execute::kubernetes::manifest::IMAGE_BINARY as INIT_CONTAINER_SOURCE;
use trainyard::execute::kubernetes::{ClusterSettings, REQUIRED_RULES as EXECUTOR_RULES};
use trainyard::leader;
use trainyard::server::{HEALTHZ, READYZ};
use trainyard_tests::{
    DataDir, LAUNCHER_TARGET, Repo, Result, TestResult, free_port, http_get, workspace_root,
};

/// Where the image keeps the service's binary, its entrypoint.
const SERVICE_BINARY: &str = "/usr/local/bin/trainyard";

fn deploy_dir() -> PathBuf {
    workspace_root().join("deploy")
}

/// Every YAML file under `deploy/`, relative to it.
fn yaml_files() -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, root: &Path, found: &mut Vec<PathBuf>) -> Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                walk(&path, root, found)?;
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                found.push(path.strip_prefix(root)?.to_owned());
            }
        }
        Ok(())
    }
    let mut found = Vec::new();
    walk(&deploy_dir(), &deploy_dir(), &mut found)?;
    found.sort();
    Ok(found)
}

/// The documents of a file under `deploy/`, as JSON.
fn documents(path: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(deploy_dir().join(path))?;
    let documents: Vec<Value> =
        serde_saphyr::from_multiple(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(documents.into_iter().filter(|d| !d.is_null()).collect())
}

/// Every Kubernetes object under `deploy/` (kustomizations left out), with its file.
fn objects() -> Result<Vec<(PathBuf, Value)>> {
    let mut all = Vec::new();
    for path in yaml_files()? {
        if path.file_name().is_some_and(|n| n == "kustomization.yaml") {
            continue;
        }
        for document in documents(&path)? {
            all.push((path.clone(), document));
        }
    }
    Ok(all)
}

/// The one object of `kind` in a file under `deploy/`, typed.
fn object<T: serde::de::DeserializeOwned>(path: &str, kind: &str) -> Result<T> {
    let found: Vec<Value> = documents(Path::new(path))?
        .into_iter()
        .filter(|d| d["kind"] == kind)
        .collect();
    match found.as_slice() {
        [one] => Ok(serde_json::from_value(one.clone())?),
        other => Err(format!("{path}: {} objects of kind {kind}", other.len()).into()),
    }
}

/// `value` read as `T` and written back: the same JSON unless `value` has fields `T` does
/// not know (a typo the API server would reject or, worse, drop silently).
fn round_trips<T: serde::de::DeserializeOwned + serde::Serialize>(value: &Value) -> Result<()> {
    let typed: T = serde_json::from_value(value.clone())?;
    let back = serde_json::to_value(&typed)?;
    if &back != value {
        return Err(format!(
            "does not survive a round trip through its type:\n{value:#}\nbecame\n{back:#}"
        )
        .into());
    }
    Ok(())
}

#[test]
fn every_manifest_parses_as_the_object_it_claims_to_be() -> TestResult {
    let mut kinds = BTreeSet::new();
    for (path, object) in objects()? {
        let kind = object["kind"].as_str().unwrap_or_default().to_owned();
        let api = object["apiVersion"].as_str().unwrap_or_default().to_owned();
        let checked = match (api.as_str(), kind.as_str()) {
            ("v1", "Namespace") => round_trips::<Namespace>(&object),
            ("v1", "ServiceAccount") => round_trips::<ServiceAccount>(&object),
            ("v1", "ConfigMap") => round_trips::<ConfigMap>(&object),
            ("v1", "Secret") => round_trips::<Secret>(&object),
            ("v1", "Service") => round_trips::<Service>(&object),
            ("apps/v1", "Deployment") => round_trips::<Deployment>(&object),
            ("rbac.authorization.k8s.io/v1", "Role") => round_trips::<Role>(&object),
            ("rbac.authorization.k8s.io/v1", "RoleBinding") => round_trips::<RoleBinding>(&object),
            // Kueue's kinds have no Rust types here: check the shape they all share.
            ("kueue.x-k8s.io/v1beta2", "ResourceFlavor" | "ClusterQueue" | "LocalQueue") => {
                match (
                    object["metadata"]["name"].as_str(),
                    object["spec"].is_object(),
                ) {
                    (Some(_), true) => Ok(()),
                    _ => Err("needs metadata.name and a spec".into()),
                }
            }
            other => Err(format!("unexpected kind {other:?}").into()),
        };
        checked.map_err(|e| format!("{}: {kind}: {e}", path.display()))?;
        kinds.insert(kind);
    }
    for expected in [
        "Namespace",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Deployment",
        "Service",
        "Secret",
        "ResourceFlavor",
        "ClusterQueue",
        "LocalQueue",
    ] {
        assert!(kinds.contains(expected), "no {expected} under deploy/");
    }
    Ok(())
}

/// Resources and patches a kustomization names, relative to `deploy/`.
fn listed(kustomization: &str) -> Result<BTreeSet<PathBuf>> {
    let [document] = documents(Path::new(kustomization))?
        .try_into()
        .map_err(|_| format!("{kustomization}: not one document"))?;
    let dir = Path::new(kustomization)
        .parent()
        .ok_or("kustomization at the root")?;
    let mut names = Vec::new();
    for key in ["resources", "patches"] {
        for entry in document[key].as_array().into_iter().flatten() {
            let name = entry.as_str().or(entry["path"].as_str());
            names.push(name.ok_or_else(|| format!("{kustomization}: {key} entry {entry}"))?);
        }
    }
    Ok(names.into_iter().map(|name| dir.join(name)).collect())
}

#[test]
fn the_kustomizations_list_exactly_the_manifests_beside_them() -> TestResult {
    let base = listed("base/kustomization.yaml")?;
    let files: BTreeSet<PathBuf> = yaml_files()?.into_iter().collect();
    let beside = |dir: &str| -> BTreeSet<PathBuf> {
        files
            .iter()
            .filter(|f| f.parent() == Some(Path::new(dir)))
            .filter(|f| !f.ends_with("kustomization.yaml"))
            .cloned()
            .collect()
    };
    let mut expected = beside("base");
    // Secrets are made by hand, never applied from Git.
    assert!(expected.remove(Path::new("base/secret.example.yaml")));
    assert_eq!(base, expected);
    let mut kueue = listed("overlays/kueue/kustomization.yaml")?;
    assert!(
        kueue.remove(Path::new("overlays/kueue/../../base")),
        "the overlay builds on the base"
    );
    assert_eq!(kueue, beside("overlays/kueue"));
    for file in base.iter().chain(&kueue) {
        assert!(
            deploy_dir().join(file).is_file(),
            "{} is missing",
            file.display()
        );
    }
    Ok(())
}

#[test]
fn nothing_is_granted_cluster_wide() -> TestResult {
    for (path, object) in objects()? {
        let kind = object["kind"].as_str().unwrap_or_default();
        assert!(
            !matches!(kind, "ClusterRole" | "ClusterRoleBinding"),
            "{}: {kind}",
            path.display()
        );
    }
    let binding: RoleBinding = object("base/rolebinding.yaml", "RoleBinding")?;
    assert_eq!(binding.role_ref.kind, "Role");
    Ok(())
}

/// (group, resource, verb) triples of rules.
fn triples(rules: &[(&str, &str, &[&str])]) -> BTreeSet<(String, String, String)> {
    rules
        .iter()
        .flat_map(|(group, resource, verbs)| {
            verbs
                .iter()
                .map(move |verb| (group.to_string(), resource.to_string(), verb.to_string()))
        })
        .collect()
}

#[test]
fn the_role_grants_exactly_what_the_code_uses() -> TestResult {
    let role: Role = object("base/role.yaml", "Role")?;
    let mut granted = BTreeSet::new();
    for rule in role.rules.unwrap_or_default() {
        assert!(
            rule.resource_names.is_none() && rule.non_resource_urls.is_none(),
            "{rule:?}"
        );
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    assert!(!verb.contains('*') && !resource.contains('*'), "{rule:?}");
                    granted.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    let mut required = triples(leader::REQUIRED_RULES);
    required.extend(triples(EXECUTOR_RULES));
    assert_eq!(granted, required);
    Ok(())
}

fn container() -> Result<(Deployment, Container)> {
    let deployment: Deployment = object("base/deployment.yaml", "Deployment")?;
    let pod = deployment.spec.template.spec.clone().ok_or("no pod spec")?;
    let [container] = pod.containers.try_into().map_err(|_| "not one container")?;
    Ok((deployment, container))
}

/// The value of `--flag` in the container's arguments.
fn flag<'a>(container: &'a Container, name: &str) -> Option<&'a str> {
    let args = container.args.as_deref().unwrap_or_default();
    let at = args.iter().position(|a| a == name)?;
    args.get(at + 1).map(String::as_str)
}

#[test]
fn the_deployment_runs_two_locked_down_replicas_with_references_to_its_secrets() -> TestResult {
    let (deployment, container) = container()?;
    let spec = &deployment.spec;
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.as_ref().ok_or("no pod spec")?;
    assert_eq!(pod.service_account_name.as_deref(), Some("trainyard"));
    let pod_security = pod
        .security_context
        .as_ref()
        .ok_or("no pod securityContext")?;
    assert_eq!(pod_security.run_as_non_root, Some(true));
    assert!(pod_security.run_as_user.is_some_and(|uid| uid > 0));
    let security = container
        .security_context
        .as_ref()
        .ok_or("no securityContext")?;
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    let dropped = security
        .capabilities
        .as_ref()
        .and_then(|c| c.drop.clone())
        .unwrap_or_default();
    assert_eq!(dropped, ["ALL"]);
    let requests = container
        .resources
        .as_ref()
        .and_then(|r| r.requests.clone())
        .unwrap_or_default();
    assert!(requests.contains_key("cpu") && requests.contains_key("memory"));

    let env: BTreeMap<&str, _> = container
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.as_str(), e))
        .collect();
    assert!(
        !env.contains_key("KUBECONFIG"),
        "in-cluster config, not a kubeconfig"
    );
    for (name, field) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        let from = env[name]
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref());
        assert_eq!(from.map(|f| f.field_path.as_str()), Some(field), "{name}");
    }
    let database = env["TRAINYARD_DATABASE_URL"];
    assert!(database.value.is_none(), "credentials only by reference");
    assert!(
        database
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .is_some()
    );
    let from_secrets: Vec<_> = container
        .env_from
        .iter()
        .flatten()
        .filter_map(|e| e.secret_ref.as_ref())
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(from_secrets, ["trainyard-s3"]);
    // Every Secret referenced is documented in the example.
    let example: Vec<String> = documents(Path::new("base/secret.example.yaml"))?
        .iter()
        .filter_map(|d| d["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    let referenced = database
        .value_from
        .as_ref()
        .and_then(|v| v.secret_key_ref.as_ref())
        .map(|s| s.name.clone());
    assert!(referenced.is_some_and(|name| example.contains(&name)));
    assert!(example.iter().any(|name| name == "trainyard-s3"));

    // The data directory is on an emptyDir: the root file system is read-only.
    let data_dir = env["TRAINYARD_DATA_DIR"]
        .value
        .as_deref()
        .ok_or("no data dir")?;
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == data_dir)
        .ok_or("the data dir is not mounted")?;
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .ok_or("no volume for the data dir")?;
    assert!(volume.empty_dir.is_some());

    assert_eq!(flag(&container, "--executor"), Some("kubernetes"));
    assert_eq!(
        flag(&container, "--cluster-config"),
        Some("/etc/trainyard/cluster.yaml")
    );
    assert!(
        container
            .args
            .iter()
            .flatten()
            .any(|a| a == "--leader-election")
    );
    Ok(())
}

#[test]
fn the_deployments_flags_are_flags_of_serve() -> TestResult {
    let (_, container) = container()?;
    let help = trainyard_tests::trainyard(&workspace_root(), &["serve", "--help"])?;
    assert_eq!(help.code, Some(0), "{help}");
    for arg in container
        .args
        .iter()
        .flatten()
        .filter(|a| a.starts_with("--"))
    {
        assert!(
            help.stdout.contains(&format!("{arg} ")) || help.stdout.contains(&format!("{arg}\n")),
            "serve has no {arg}:\n{}",
            help.stdout
        );
    }
    Ok(())
}

#[test]
fn the_probes_reach_the_endpoints_the_binary_serves() -> TestResult {
    let (_, container) = container()?;
    let port = container
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("http"))
        .ok_or("no http port")?;
    let listen = flag(&container, "--listen").ok_or("no --listen")?;
    assert_eq!(listen, format!("0.0.0.0:{}", port.container_port));
    let probe_path = |probe: &Option<k8s_openapi::api::core::v1::Probe>| {
        let get = probe.as_ref().and_then(|p| p.http_get.clone());
        let port = get.as_ref().map(|g| g.port.clone());
        assert_eq!(
            port,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("http".into()))
        );
        get.and_then(|g| g.path).unwrap_or_default()
    };
    let liveness = probe_path(&container.liveness_probe);
    let readiness = probe_path(&container.readiness_probe);
    assert_eq!((liveness.as_str(), readiness.as_str()), (HEALTHZ, READYZ));

    // The real binary answers both, on the port it is told.
    let repo = Repo::from_examples()?;
    repo.commit("sample")?;
    let data = DataDir::new()?;
    let port = free_port()?;
    let address = format!("127.0.0.1:{port}");
    let service = trainyard_tests::Service::start(
        repo.path(),
        &data,
        &["--listen", &address, "--poll-seconds", "1"],
    )?;
    let started = std::time::Instant::now();
    let mut answers = Vec::new();
    for path in [&liveness, &readiness] {
        let answer = loop {
            match http_get(port, path) {
                Ok(answer) => break answer,
                Err(_) if started.elapsed() < Duration::from_secs(30) => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(error) => return Err(format!("GET {path}: {error}").into()),
            }
        };
        answers.push(answer);
    }
    assert_eq!(
        answers,
        [(200, "ok\n".to_owned()), (200, "ready\n".to_owned())]
    );
    assert_eq!(http_get(port, "/nothing-here")?.0, 404);
    assert_eq!(service.stop()?, Some(0));
    assert!(
        http_get(port, HEALTHZ).is_err(),
        "the server stops with the service"
    );
    Ok(())
}

#[test]
fn the_cluster_settings_name_the_roles_namespace_and_the_overlay_queues_only_gpu_steps()
-> TestResult {
    let settings = |path: &str| -> Result<Value> {
        let config: ConfigMap = object(path, "ConfigMap")?;
        let text = config
            .data
            .and_then(|d| d.get("cluster.yaml").cloned())
            .ok_or_else(|| format!("{path}: no cluster.yaml"))?;
        // What the service will load with --cluster-config: unknown fields are errors.
        ClusterSettings::parse(&text, Path::new(path))?;
        Ok(serde_saphyr::from_str(&text)?)
    };
    let base = settings("base/configmap.yaml")?;
    let role: Role = object("base/role.yaml", "Role")?;
    assert_eq!(
        base["namespace"].as_str(),
        role.metadata.namespace.as_deref()
    );
    assert!(
        base["gpu_types"]["h100"]["node_selector"].is_object(),
        "{base}"
    );
    assert!(base.get("queue").is_none());
    let mut kueue = settings("overlays/kueue/configmap-queue.yaml")?;
    assert!(
        kueue.get("queue").is_none(),
        "CPU steps are not sent to the GPU ClusterQueue: {kueue}"
    );
    let queue = kueue["gpu_types"]["h100"]
        .as_object_mut()
        .and_then(|m| m.remove("queue"))
        .ok_or("the overlay sets no queue for h100")?;
    assert_eq!(kueue, base, "the overlay changes only the queue");
    let local: Value = documents(Path::new("overlays/kueue/localqueue.yaml"))?
        .pop()
        .ok_or("no LocalQueue")?;
    assert_eq!(queue, local["metadata"]["name"]);
    assert_eq!(local["metadata"]["namespace"], base["namespace"]);
    // The ClusterQueue the LocalQueue feeds has a GPU quota on the flavor of its nodes.
    let cluster_queue = documents(Path::new("overlays/kueue/clusterqueue.yaml"))?
        .pop()
        .ok_or("no ClusterQueue")?;
    assert_eq!(
        local["spec"]["clusterQueue"],
        cluster_queue["metadata"]["name"]
    );
    let group = &cluster_queue["spec"]["resourceGroups"][0];
    // Every resource a step of the queue's GPU type asks for is covered, or Kueue never
    // admits it.
    for resource in ["cpu", "memory", "nvidia.com/gpu"] {
        assert!(
            group["coveredResources"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r == resource),
            "{resource} not covered: {group}"
        );
    }
    let flavor = &group["flavors"][0];
    let gpus = flavor["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["name"] == "nvidia.com/gpu")
        .ok_or("no GPU quota")?;
    assert!(gpus["nominalQuota"].as_u64().is_some_and(|n| n > 0));
    let resource_flavor = documents(Path::new("overlays/kueue/resourceflavor.yaml"))?
        .pop()
        .ok_or("no ResourceFlavor")?;
    assert_eq!(flavor["name"], resource_flavor["metadata"]["name"]);
    assert_eq!(
        resource_flavor["spec"]["nodeLabels"],
        base["gpu_types"]["h100"]["node_selector"]
    );
    Ok(())
}

#[test]
fn the_image_runs_as_a_numeric_non_root_user_with_the_launcher_where_steps_copy_it_from()
-> TestResult {
    let text = std::fs::read_to_string(deploy_dir().join("Dockerfile"))?;
    let instructions: Vec<(String, String)> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(' '))
        .map(|(word, rest)| (word.to_uppercase(), rest.trim().to_owned()))
        .collect();
    let stages = instructions.iter().filter(|(w, _)| w == "FROM").count();
    assert!(stages >= 2, "a multi-stage build");
    let last = instructions
        .iter()
        .rposition(|(w, _)| w == "FROM")
        .ok_or("no FROM")?;
    let runtime = &instructions[last..];
    let user = runtime
        .iter()
        .rev()
        .find(|(w, _)| w == "USER")
        .map(|(_, u)| u.clone())
        .ok_or("the runtime stage sets no USER")?;
    let uid = user.split(':').next().unwrap_or_default();
    assert!(
        uid.parse::<u32>().is_ok_and(|uid| uid > 0),
        "USER {user} is not a numeric non-root uid"
    );
    let (_, deployment_container) = container()?;
    let deployment: Deployment = object("base/deployment.yaml", "Deployment")?;
    let pod_uid = deployment
        .spec
        .template
        .spec
        .and_then(|p| p.security_context)
        .and_then(|c| c.run_as_user);
    assert_eq!(pod_uid.map(|u| u.to_string()).as_deref(), Some(uid));
    for path in [INIT_CONTAINER_SOURCE, SERVICE_BINARY] {
        assert!(
            runtime.iter().any(|(w, rest)| w == "COPY"
                && rest.starts_with("--from=")
                && rest.ends_with(&format!(" {path}"))),
            "nothing is copied to {path}"
        );
    }
    // The launcher the steps copy is the static one: built for musl, taken from that
    // target's output.
    let commands = text.replace("\\\n", " ");
    let builds_static_launcher = commands.lines().any(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        words.first() == Some(&"RUN")
            && words.windows(2).any(|w| w == ["-p", "trainyard-launch"])
            && words.windows(2).any(|w| w == ["--target", LAUNCHER_TARGET])
            && words.iter().any(|w| {
                w.starts_with(&format!(
                    "target/{LAUNCHER_TARGET}/release/trainyard-launch"
                ))
            })
    });
    assert!(
        builds_static_launcher,
        "the build stage does not build and take trainyard-launch for {LAUNCHER_TARGET}"
    );
    let entrypoint = runtime
        .iter()
        .find(|(w, _)| w == "ENTRYPOINT")
        .map(|(_, e)| e.clone())
        .ok_or("no ENTRYPOINT")?;
    let entrypoint: Vec<String> = serde_json::from_str(&entrypoint)?;
    assert_eq!(entrypoint, [SERVICE_BINARY]);
    // The Deployment's arguments go to that entrypoint.
    assert_eq!(deployment_container.command, None);
    assert_eq!(
        deployment_container
            .args
            .as_deref()
            .and_then(|a| a.first())
            .map(String::as_str),
        Some("serve")
    );
    Ok(())
}
