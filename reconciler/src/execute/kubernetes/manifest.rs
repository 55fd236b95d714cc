//! The batch/v1 Job of one step attempt, built from a [`StepJob`] and the cluster settings
//! without any I/O; and the way back, from a Job found on the cluster to what the executor
//! needs to know about it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvFromSource, EnvVar, PodSecurityContext,
    PodSpec, PodTemplateSpec, ResourceRequirements, SeccompProfile, SecretEnvSource,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::settings::ClusterSettings;
use crate::artifacts;
use crate::execute::{
    ExecError, MAX_INSTANCE, Owner, StepJob, StepOutput, is_instance, is_job_name,
};

/// The label that marks everything this service creates; the watches select on it.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "trainyard";
/// The installation a Job belongs to; the watches select on it, so that installations
/// sharing a namespace never see (or adopt) each other's Jobs.
pub const INSTANCE_LABEL: &str = "trainyard.dev/instance";
/// The run a Job belongs to.
pub const RUN_LABEL: &str = "trainyard.dev/run";
/// The step a Job runs.
pub const STEP_LABEL: &str = "trainyard.dev/step";
/// The attempt a Job is.
pub const ATTEMPT_LABEL: &str = "trainyard.dev/attempt";
/// Where the attempt's log is stored once it ends.
pub const LOG_KEY_ANNOTATION: &str = "trainyard.dev/log-key";
/// The step's declared outputs as a JSON list of names, so that a Job adopted after a
/// restart can be judged like one this process submitted.
pub const OUTPUTS_ANNOTATION: &str = "trainyard.dev/outputs";
/// Kueue's label naming the LocalQueue a Job waits in.
pub const QUEUE_LABEL: &str = "kueue.x-k8s.io/queue-name";
/// The label the Job controller puts on the pods of a Job.
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
/// The GPU resource of NVIDIA's device plugin.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// The container that runs the step.
pub const MAIN_CONTAINER: &str = "main";
/// The init container that copies the launcher into the pod.
pub const INIT_CONTAINER: &str = "install-trainyard";
/// Where the launcher lives in the Trainyard image: `trainyard-launch`, a static binary that
/// needs nothing from the step's image, so any image of the node's architecture can run it.
pub const IMAGE_BINARY: &str = "/usr/local/bin/trainyard-launch";
/// The shared directory the init container copies the launcher into.
pub const TOOLS_DIR: &str = "/trainyard/bin";
/// The launcher's path in the step's container.
pub const LAUNCHER: &str = "/trainyard/bin/trainyard-launch";
/// Where every job keeps its inputs and outputs inside the pod.
pub const WORK_DIR: &str = "/trainyard/work";
/// Where `trainyard-launch` writes why the step ended, for the pod's status.
pub const TERMINATION_LOG: &str = trainyard_launch::launch::TERMINATION_LOG;

const TOOLS_VOLUME: &str = "trainyard-tools";
const WORK_VOLUME: &str = "trainyard-work";
const SHM_VOLUME: &str = "dshm";

/// The label selector of everything installation `instance` creates.
pub fn selector(instance: &str) -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY},{INSTANCE_LABEL}={instance}")
}

/// The work directory of job `name` inside its pod.
pub fn job_dir(name: &str) -> PathBuf {
    Path::new(WORK_DIR).join(name)
}

/// The Job that runs `job` in `settings.namespace`; `launch_args` are the arguments of
/// `trainyard-launch` in the main container.
pub fn build_job(
    job: &StepJob,
    settings: &ClusterSettings,
    launch_args: Vec<String>,
) -> Result<Job, ExecError> {
    let invalid = |reason: String| ExecError::InvalidJob {
        name: job.name.clone(),
        reason,
    };
    if !is_job_name(&job.name) {
        return Err(invalid(
            "the name is not a DNS-1123 label; build it with `job_name`".to_owned(),
        ));
    }
    if job.argv.is_empty() {
        return Err(invalid("argv is empty".to_owned()));
    }
    if job.image.is_empty() {
        return Err(invalid(
            "no image: set `image` on the step, its pipeline or the repository settings".to_owned(),
        ));
    }
    let gpus = job.resources.as_ref().map_or(0, |r| r.gpu);
    let gpu_type = match job.resources.as_ref().and_then(|r| r.gpu_type.as_deref()) {
        None => None,
        Some(name) => Some(settings.gpu_types.get(name).ok_or_else(|| {
            let known: Vec<&str> = settings.gpu_types.keys().map(String::as_str).collect();
            invalid(format!(
                "gpu_type {name:?} is not configured on this cluster (configured: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ))
        })?),
    };

    if !is_instance(&job.instance) {
        return Err(invalid(format!(
            "installation {:?} is not a DNS-1123 label of at most {MAX_INSTANCE} characters",
            job.instance
        )));
    }
    // What says whose attempt a Job is comes from the attempt itself, never from the
    // labels a caller passed.
    let mut labels = job.labels.clone();
    for (key, value) in [
        (MANAGED_BY_LABEL, MANAGED_BY.to_owned()),
        (INSTANCE_LABEL, job.instance.clone()),
        (RUN_LABEL, job.run_id.to_string()),
        (STEP_LABEL, job.step.clone()),
        (ATTEMPT_LABEL, job.attempt.to_string()),
    ] {
        labels.insert(key.to_owned(), value);
    }
    let template_labels = labels.clone();
    let queue = match gpu_type {
        Some(gpu) => gpu.queue.as_ref().or(settings.queue.as_ref()),
        None => settings.queue.as_ref(),
    };
    if let Some(queue) = queue {
        labels.insert(QUEUE_LABEL.to_owned(), queue.clone());
    }
    let mut annotations = job.annotations.clone();
    annotations.insert(LOG_KEY_ANNOTATION.to_owned(), job.log_key.clone());
    let outputs: Vec<&str> = job.outputs.iter().map(|o| o.name.as_str()).collect();
    annotations.insert(
        OUTPUTS_ANNOTATION.to_owned(),
        serde_json::to_string(&outputs).unwrap_or_else(|_| "[]".to_owned()),
    );

    let mut amounts = BTreeMap::new();
    if let Some(resources) = &job.resources {
        if let Some(cpu) = &resources.cpu {
            amounts.insert("cpu".to_owned(), Quantity(cpu.clone()));
        }
        if let Some(memory) = &resources.memory {
            amounts.insert("memory".to_owned(), Quantity(memory.clone()));
        }
    }
    if gpus > 0 {
        amounts.insert(GPU_RESOURCE.to_owned(), Quantity(gpus.to_string()));
    }
    // Limits equal to requests: a training step gets exactly what it asked for (and the API
    // refuses extended resources such as GPUs otherwise).
    let resources = (!amounts.is_empty()).then(|| ResourceRequirements {
        limits: Some(amounts.clone()),
        requests: Some(amounts),
        ..ResourceRequirements::default()
    });

    let tools_mount = VolumeMount {
        name: TOOLS_VOLUME.to_owned(),
        mount_path: TOOLS_DIR.to_owned(),
        ..VolumeMount::default()
    };
    let mut main_mounts = vec![
        tools_mount.clone(),
        VolumeMount {
            name: WORK_VOLUME.to_owned(),
            mount_path: WORK_DIR.to_owned(),
            ..VolumeMount::default()
        },
    ];
    let mut volumes = vec![
        empty_dir(TOOLS_VOLUME, None, None),
        empty_dir(WORK_VOLUME, None, None),
    ];
    if gpus > 0 {
        // Data loaders share batches through /dev/shm, which is 64 MiB in a container.
        volumes.push(empty_dir(
            SHM_VOLUME,
            Some("Memory"),
            settings.shm_size.clone(),
        ));
        main_mounts.push(VolumeMount {
            name: SHM_VOLUME.to_owned(),
            mount_path: "/dev/shm".to_owned(),
            ..VolumeMount::default()
        });
    }

    let env: Vec<EnvVar> = job
        .env
        .iter()
        .map(|(name, value)| EnvVar {
            name: name.clone(),
            value: Some(value.clone()),
            ..EnvVar::default()
        })
        .collect();
    let mut secret_names: Vec<&String> = settings.env_from_secrets.iter().collect();
    for name in &job.secrets {
        if !secret_names.contains(&name) {
            secret_names.push(name);
        }
    }
    let env_from: Vec<EnvFromSource> = secret_names
        .into_iter()
        .map(|name| EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: name.clone(),
                optional: None,
            }),
            ..EnvFromSource::default()
        })
        .collect();

    let security = container_security(settings);
    let init = Container {
        name: INIT_CONTAINER.to_owned(),
        image: Some(settings.image.clone()),
        command: Some(vec![
            "cp".to_owned(),
            IMAGE_BINARY.to_owned(),
            LAUNCHER.to_owned(),
        ]),
        volume_mounts: Some(vec![tools_mount]),
        security_context: Some(security.clone()),
        // A namespace with a compute quota refuses pods whose containers set none.
        resources: Some(settings.init_resources.clone()),
        ..Container::default()
    };
    let main = Container {
        name: MAIN_CONTAINER.to_owned(),
        image: Some(job.image.clone()),
        command: Some(vec![LAUNCHER.to_owned()]),
        args: Some(launch_args),
        env: (!env.is_empty()).then_some(env),
        env_from: (!env_from.is_empty()).then_some(env_from),
        resources,
        volume_mounts: Some(main_mounts),
        termination_message_path: Some(TERMINATION_LOG.to_owned()),
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        security_context: Some(security),
        ..Container::default()
    };
    let pod = PodSpec {
        restart_policy: Some("Never".to_owned()),
        init_containers: Some(vec![init]),
        containers: vec![main],
        volumes: Some(volumes),
        node_selector: gpu_type
            .filter(|t| !t.node_selector.is_empty())
            .map(|t| t.node_selector.clone()),
        tolerations: gpu_type
            .filter(|t| !t.tolerations.is_empty())
            .map(|t| t.tolerations.clone()),
        priority_class_name: settings.priority_class.clone(),
        termination_grace_period_seconds: settings.termination_grace_period_seconds,
        service_account_name: settings.service_account.clone(),
        // Steps run user code: they get no credentials for the cluster's API.
        automount_service_account_token: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(settings.run_as_user),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        ..PodSpec::default()
    };
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(job.name.clone()),
            namespace: Some(settings.namespace.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            // Trainyard owns retries: one attempt is one pod.
            backoff_limit: Some(0),
            active_deadline_seconds: job
                .timeout
                .map(|t| i64::try_from(t.as_secs().max(1)).unwrap_or(i64::MAX)),
            ttl_seconds_after_finished: Some(settings.ttl_seconds_after_finished),
            suspend: queue.map(|_| true),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(template_labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..JobSpec::default()
        }),
        status: None,
    })
}

fn container_security(settings: &ClusterSettings) -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(settings.run_as_user),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

fn empty_dir(name: &str, medium: Option<&str>, size_limit: Option<String>) -> Volume {
    Volume {
        name: name.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: medium.map(str::to_owned),
            size_limit: size_limit.map(Quantity),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// Whose attempt a Job is, from its labels; None when they do not say.
pub fn owner_of(job: &Job) -> Option<Owner> {
    let labels = job.metadata.labels.as_ref()?;
    Some(Owner {
        instance: labels.get(INSTANCE_LABEL)?.clone(),
        run_id: labels.get(RUN_LABEL)?.parse().ok()?,
        step: labels.get(STEP_LABEL)?.clone(),
        attempt: labels.get(ATTEMPT_LABEL)?.parse().ok()?,
    })
}

/// What the executor needs of a Job it finds on the cluster (perhaps submitted by an
/// earlier process): the attempt it runs, its outputs and where its log goes. None for a
/// labelled Job that does not say whose attempt it is.
pub fn step_job_of(job: &Job) -> Option<StepJob> {
    let name = job.metadata.name.clone()?;
    let owner = owner_of(job)?;
    let annotations = job.metadata.annotations.clone().unwrap_or_default();
    let log_key = annotations
        .get(LOG_KEY_ANNOTATION)
        .cloned()
        .unwrap_or_else(|| artifacts::log_key(&name));
    let output_names: Vec<String> = annotations
        .get(OUTPUTS_ANNOTATION)
        .and_then(|o| serde_json::from_str(o).ok())
        .unwrap_or_default();
    let dir = job_dir(&name);
    let outputs = output_names
        .into_iter()
        .map(|output| StepOutput {
            path: dir.join("outputs").join(&output),
            key: artifacts::output_key(&owner.instance, owner.run_id, &owner.step, &output),
            name: output,
        })
        .collect();
    let image = job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers.iter().find(|c| c.name == MAIN_CONTAINER))
        .and_then(|c| c.image.clone())
        .unwrap_or_default();
    let mut job_labels = job.metadata.labels.clone().unwrap_or_default();
    job_labels.remove(MANAGED_BY_LABEL);
    job_labels.remove(QUEUE_LABEL);
    Some(StepJob {
        name,
        instance: owner.instance,
        run_id: owner.run_id,
        step: owner.step,
        attempt: owner.attempt,
        argv: Vec::new(),
        env: BTreeMap::new(),
        image,
        resources: None,
        timeout: None,
        job_dir: dir.clone(),
        workdir: dir,
        source: None,
        inputs: Vec::new(),
        outputs,
        log_key,
        labels: job_labels,
        annotations,
        secrets: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{Value, json};

    use super::*;
    use crate::execute::job_name;
    use crate::spec::model::Resources;

    fn settings() -> ClusterSettings {
        let mut settings = ClusterSettings::new("ghcr.io/acme/trainyard:1.4");
        settings.namespace = "ml".to_owned();
        settings.gpu_types.insert(
            "h100".to_owned(),
            serde_json::from_value(json!({
                "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
            }))
            .expect("gpu type"),
        );
        settings
    }

    fn step() -> StepJob {
        StepJob {
            name: job_name("prod", 42, "train", 2),
            instance: "prod".to_owned(),
            run_id: 42,
            step: "train".to_owned(),
            attempt: 2,
            argv: vec!["python".to_owned(), "train.py".to_owned()],
            env: BTreeMap::from([("LR".to_owned(), "0.1".to_owned())]),
            image: "ghcr.io/acme/train:3".to_owned(),
            resources: None,
            timeout: Some(Duration::from_secs(4 * 3600)),
            job_dir: job_dir("ty-prod-42-train-2"),
            workdir: job_dir("ty-prod-42-train-2"),
            source: None,
            inputs: Vec::new(),
            outputs: vec![StepOutput {
                name: "model".to_owned(),
                path: job_dir("ty-prod-42-train-2").join("outputs/model"),
                key: artifacts::output_key("prod", 42, "train", "model"),
            }],
            log_key: artifacts::log_key("ty-prod-42-train-2"),
            labels: BTreeMap::from([
                ("trainyard.dev/pipeline".to_owned(), "churn".to_owned()),
                // What the attempt is comes from its fields, whatever a caller passes.
                ("trainyard.dev/run".to_owned(), "7".to_owned()),
            ]),
            annotations: BTreeMap::from([("trainyard.dev/commit".to_owned(), "abc123".to_owned())]),
            secrets: vec!["wandb".to_owned()],
        }
    }

    fn gpu_step() -> StepJob {
        let mut job = step();
        job.resources = Some(Resources {
            cpu: Some("8".to_owned()),
            memory: Some("64Gi".to_owned()),
            gpu: 2,
            gpu_type: Some("h100".to_owned()),
        });
        job
    }

    fn build(job: &StepJob, settings: &ClusterSettings) -> Value {
        let args = vec![
            "--run".to_owned(),
            "42".to_owned(),
            "--".to_owned(),
            "python".to_owned(),
        ];
        let job = build_job(job, settings, args).expect("valid job");
        serde_json::to_value(job).expect("serializes")
    }

    fn main_container(job: &Value) -> &Value {
        &job["spec"]["template"]["spec"]["containers"][0]
    }

    #[test]
    fn a_job_is_named_and_labelled_for_its_attempt() {
        let job = build(&step(), &settings());
        assert_eq!(job["metadata"]["name"], "ty-prod-42-train-2");
        assert_eq!(job["metadata"]["namespace"], "ml");
        for labels in [
            &job["metadata"]["labels"],
            &job["spec"]["template"]["metadata"]["labels"],
        ] {
            assert_eq!(labels["app.kubernetes.io/managed-by"], "trainyard");
            assert_eq!(labels["trainyard.dev/instance"], "prod");
            assert_eq!(labels["trainyard.dev/run"], "42");
            assert_eq!(labels["trainyard.dev/pipeline"], "churn");
            assert_eq!(labels["trainyard.dev/step"], "train");
            assert_eq!(labels["trainyard.dev/attempt"], "2");
        }
        let annotations = &job["metadata"]["annotations"];
        assert_eq!(annotations["trainyard.dev/commit"], "abc123");
        assert_eq!(
            annotations["trainyard.dev/log-key"],
            "jobs/ty-prod-42-train-2/log"
        );
        assert_eq!(annotations["trainyard.dev/outputs"], r#"["model"]"#);
    }

    #[test]
    fn trainyard_owns_retries_deadlines_and_cleanup() {
        let job = build(&step(), &settings());
        let spec = &job["spec"];
        assert_eq!(spec["backoffLimit"], 0);
        assert_eq!(spec["activeDeadlineSeconds"], 4 * 3600);
        assert_eq!(spec["ttlSecondsAfterFinished"], 3600);
        assert_eq!(spec["template"]["spec"]["restartPolicy"], "Never");
        assert!(spec.get("suspend").is_none(), "{spec}");
        assert_eq!(
            spec["template"]["spec"]["automountServiceAccountToken"],
            false
        );
        let mut untimed = step();
        untimed.timeout = None;
        assert!(
            build(&untimed, &settings())["spec"]
                .get("activeDeadlineSeconds")
                .is_none()
        );
    }

    #[test]
    fn the_init_container_installs_the_binary_the_main_container_launches() {
        let job = build(&step(), &settings());
        let pod = &job["spec"]["template"]["spec"];
        let init = &pod["initContainers"][0];
        assert_eq!(init["name"], "install-trainyard");
        assert_eq!(init["image"], "ghcr.io/acme/trainyard:1.4");
        assert_eq!(
            init["command"],
            json!([
                "cp",
                "/usr/local/bin/trainyard-launch",
                "/trainyard/bin/trainyard-launch"
            ])
        );
        assert_eq!(
            init["volumeMounts"],
            json!([{"name": "trainyard-tools", "mountPath": "/trainyard/bin"}])
        );
        assert_eq!(
            init["resources"],
            json!({"requests": {"cpu": "100m", "memory": "64Mi"},
                   "limits": {"cpu": "1", "memory": "256Mi"}}),
            "a namespace with a compute quota admits only containers that set both"
        );
        let main = main_container(&job);
        assert_eq!(main["name"], "main");
        assert_eq!(main["image"], "ghcr.io/acme/train:3");
        assert_eq!(main["command"], json!(["/trainyard/bin/trainyard-launch"]));
        assert_eq!(main["args"], json!(["--run", "42", "--", "python"]));
        assert_eq!(main["env"], json!([{"name": "LR", "value": "0.1"}]));
        assert_eq!(main["terminationMessagePath"], "/dev/termination-log");
        assert_eq!(main["terminationMessagePolicy"], "FallbackToLogsOnError");
        assert_eq!(
            main["volumeMounts"],
            json!([{"name": "trainyard-tools", "mountPath": "/trainyard/bin"},
                   {"name": "trainyard-work", "mountPath": "/trainyard/work"}])
        );
        assert_eq!(
            pod["volumes"],
            json!([{"name": "trainyard-tools", "emptyDir": {}}, {"name": "trainyard-work", "emptyDir": {}}])
        );
    }

    #[test]
    fn steps_run_as_a_non_root_user_without_privileges() {
        let job = build(&step(), &settings());
        let pod = &job["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(pod["securityContext"]["runAsUser"], 1000);
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        for container in [&pod["initContainers"][0], &pod["containers"][0]] {
            let security = &container["securityContext"];
            assert_eq!(security["runAsNonRoot"], true);
            assert_eq!(security["allowPrivilegeEscalation"], false);
            assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
        }
    }

    #[test]
    fn secrets_are_referenced_by_name_only() {
        let mut settings = settings();
        settings.env_from_secrets = vec!["s3-credentials".to_owned(), "wandb".to_owned()];
        let job = build(&step(), &settings);
        assert_eq!(
            main_container(&job)["envFrom"],
            json!([{"secretRef": {"name": "s3-credentials"}}, {"secretRef": {"name": "wandb"}}])
        );
        let text = job.to_string();
        assert!(
            !text.contains("secretKeyRef") && !text.contains("\"data\""),
            "{text}"
        );
    }

    #[test]
    fn a_gpu_step_gets_gpu_limits_its_nodes_and_shared_memory() {
        let mut settings = settings();
        settings.shm_size = Some("16Gi".to_owned());
        let job = build(&gpu_step(), &settings);
        let resources = &main_container(&job)["resources"];
        let expected = json!({"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "2"});
        assert_eq!(resources["limits"], expected);
        assert_eq!(resources["requests"], expected);
        let pod = &job["spec"]["template"]["spec"];
        assert_eq!(
            pod["nodeSelector"],
            json!({"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"})
        );
        assert_eq!(
            pod["tolerations"],
            json!([{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
        );
        assert_eq!(
            pod["volumes"][2],
            json!({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}})
        );
        assert_eq!(
            main_container(&job)["volumeMounts"][2],
            json!({"name": "dshm", "mountPath": "/dev/shm"})
        );
        let cpu_only = build(&step(), &settings);
        assert!(
            cpu_only["spec"]["template"]["spec"]
                .get("nodeSelector")
                .is_none()
        );
        assert!(cpu_only.to_string().find("dshm").is_none());
    }

    #[test]
    fn an_unknown_gpu_type_is_refused_by_name() {
        let mut job = gpu_step();
        if let Some(resources) = &mut job.resources {
            resources.gpu_type = Some("a100".to_owned());
        }
        let error = build_job(&job, &settings(), Vec::new()).expect_err("unknown gpu type");
        let text = error.to_string();
        assert!(matches!(error, ExecError::InvalidJob { .. }), "{error:?}");
        assert!(
            text.contains(r#""a100""#) && text.contains("h100"),
            "{text}"
        );
    }

    #[test]
    fn a_gpu_types_queue_suspends_its_steps_for_kueue_and_cpu_steps_go_to_their_own() {
        let mut settings = settings();
        let gpu_queue = |settings: &ClusterSettings| {
            let job = build(&gpu_step(), settings);
            let label = job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"].clone();
            (label, job["spec"]["suspend"].clone())
        };
        let cpu_queue = |settings: &ClusterSettings| {
            let job = build(&step(), settings);
            let label = job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"].clone();
            (label, job["spec"]["suspend"].clone())
        };
        if let Some(h100) = settings.gpu_types.get_mut("h100") {
            h100.queue = Some("h100".to_owned());
        }
        assert_eq!(gpu_queue(&settings), (json!("h100"), json!(true)));
        assert_eq!(
            cpu_queue(&settings),
            (Value::Null, Value::Null),
            "CPU steps are not queued where no queue is set for them"
        );
        settings.queue = Some("cpu".to_owned());
        assert_eq!(gpu_queue(&settings), (json!("h100"), json!(true)));
        assert_eq!(cpu_queue(&settings), (json!("cpu"), json!(true)));
        if let Some(h100) = settings.gpu_types.get_mut("h100") {
            h100.queue = None;
        }
        assert_eq!(
            gpu_queue(&settings),
            (json!("cpu"), json!(true)),
            "a GPU type without a queue of its own uses the general one"
        );
    }

    #[test]
    fn a_queue_suspends_the_job_for_kueue_and_a_priority_class_is_passed_on() {
        let mut settings = settings();
        settings.queue = Some("team-gpu".to_owned());
        settings.priority_class = Some("training".to_owned());
        settings.service_account = Some("steps".to_owned());
        settings.ttl_seconds_after_finished = 600;
        let job = build(&gpu_step(), &settings);
        assert_eq!(
            job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"],
            "team-gpu"
        );
        assert!(
            job["spec"]["template"]["metadata"]["labels"]
                .get("kueue.x-k8s.io/queue-name")
                .is_none()
        );
        assert_eq!(job["spec"]["suspend"], true);
        assert_eq!(job["spec"]["ttlSecondsAfterFinished"], 600);
        let pod = &job["spec"]["template"]["spec"];
        assert_eq!(pod["priorityClassName"], "training");
        assert_eq!(pod["serviceAccountName"], "steps");
    }

    #[test]
    fn names_that_are_not_labels_and_empty_commands_are_refused() {
        let mut bad_instance = step();
        bad_instance.instance = "Prod_EU".to_owned();
        assert!(build_job(&bad_instance, &settings(), Vec::new()).is_err());
        let mut bad_name = step();
        bad_name.name = "Ty_42".to_owned();
        assert!(build_job(&bad_name, &settings(), Vec::new()).is_err());
        let mut no_argv = step();
        no_argv.argv.clear();
        assert!(build_job(&no_argv, &settings(), Vec::new()).is_err());
        let mut no_image = step();
        no_image.image.clear();
        assert!(build_job(&no_image, &settings(), Vec::new()).is_err());
    }

    #[test]
    fn a_job_read_back_from_the_cluster_describes_the_same_attempt() {
        let built = build_job(&step(), &settings(), Vec::new()).expect("valid");
        let back = step_job_of(&built).expect("labelled");
        let original = step();
        assert_eq!(back.name, original.name);
        assert_eq!((back.run_id, back.attempt), (42, 2));
        assert_eq!(back.instance, "prod");
        assert_eq!(
            owner_of(&built),
            Some(Owner {
                instance: "prod".to_owned(),
                run_id: 42,
                step: "train".to_owned(),
                attempt: 2
            })
        );
        assert_eq!(back.step, "train");
        assert_eq!(back.log_key, original.log_key);
        assert_eq!(back.outputs, original.outputs);
        assert_eq!(back.image, original.image);
    }
}
