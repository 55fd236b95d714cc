//! A cluster for end-to-end tests: the stand-in API server allowing only what the deployed
//! Role grants, whose kubelet runs each pod's containers as local processes (so the real
//! launcher moves every input and output), a real S3 server (moto) for artifacts, and the
//! settings and kubeconfig a cluster-mode service is started with.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};
use trainyard_testkit::kube::ApiServer;
use trainyard_testkit::s3::S3Server;

use trainyard::execute::kubernetes::manifest::IMAGE_BINARY;

use crate::{DataDir, Repo, Result, Service, launcher_bin, workspace_root};

/// The namespace the service runs its Jobs in.
pub const NAMESPACE: &str = "trainyard";
/// The Secret holding the object store's credentials, given to every step.
pub const SECRET: &str = "trainyard-s3";

/// Command-line arguments and environment variables of a service.
pub type Invocation = (Vec<String>, Vec<(String, String)>);

/// Everything a cluster-mode service runs against, torn down on drop.
pub struct Cluster {
    /// The stand-in API server, with its kubelet.
    pub api: ApiServer,
    /// The S3 server of the artifacts.
    pub s3: S3Server,
    /// Kubeconfig, cluster settings and the kubelet's pod directories.
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// A stand-in cluster that allows only what the deployed Role grants, whose kubelet runs
    /// the real static launcher, with the object store's credentials in a Secret (steps get them from
    /// it, as in the deployment) and a real S3 server.
    pub async fn start(queue: Option<&str>) -> Result<Cluster> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir()?;
        let api = ApiServer::builder()
            .kubelet(dir.path().join("kubelet"))
            .start()
            .await?;
        api.create_namespace(NAMESPACE)?;
        api.map_path(IMAGE_BINARY, launcher_bin()?);
        let text = std::fs::read_to_string(workspace_root().join("deploy/base/role.yaml"))?;
        let role: Value = serde_saphyr::from_str(&text)?;
        api.enforce_rbac(role["rules"].clone());
        let s3 = S3Server::start()?;
        let credentials: BTreeMap<String, String> = s3.env().into_iter().collect();
        api.put_object(json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": SECRET, "namespace": NAMESPACE},
            "stringData": credentials,
        }))?;
        api.write_kubeconfig(&dir.path().join("kubeconfig"))?;
        std::fs::write(
            dir.path().join("cluster.yaml"),
            format!(
                "namespace: {NAMESPACE}
image: registry.example.com/trainyard:test
{queue}
priority_class: training
env_from_secrets: [{SECRET}]
gpu_types:
  h100:
    node_selector: {{nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3}}
    tolerations:
      - {{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}}
shm_size: 1Gi
ttl_seconds_after_finished: 600
",
                queue = queue.map(|q| format!("queue: {q}")).unwrap_or_default(),
            ),
        )?;
        Ok(Cluster { api, s3, dir })
    }

    /// A service on `repo` running its steps on this cluster, polling every second.
    pub fn serve(&self, repo: &Repo, data: &DataDir) -> Result<Service> {
        let (mut args, env) = self.service_args()?;
        args.extend(["--poll-seconds".to_owned(), "1".to_owned()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Service::start_with_env(repo.path(), data, &args, &env)
    }

    /// The arguments and environment of a service on this cluster.
    pub fn service_args(&self) -> Result<Invocation> {
        let config = self.dir.path().join("cluster.yaml");
        let args = vec![
            "--executor".to_owned(),
            "kubernetes".to_owned(),
            "--cluster-config".to_owned(),
            path_text(&config)?,
            "--artifacts".to_owned(),
            format!("{}/trainyard", self.s3.url()),
        ];
        let mut env = self.s3.env();
        env.push((
            "KUBECONFIG".to_owned(),
            path_text(&self.dir.path().join("kubeconfig"))?,
        ));
        Ok((args, env))
    }

    /// Admits every suspended Job, as Kueue does when the queue has quota.
    pub fn admit_all(&self) -> Result<usize> {
        let mut admitted = 0;
        for job in self.api.list("jobs", Some(NAMESPACE)) {
            if job["spec"]["suspend"] == json!(true) {
                let name = job["metadata"]["name"]
                    .as_str()
                    .ok_or("a job has no name")?;
                self.api.admit(NAMESPACE, name)?;
                admitted += 1;
            }
        }
        Ok(admitted)
    }

    pub fn job(&self, name: &str) -> Result<Value> {
        Ok(self
            .api
            .get("jobs", NAMESPACE, name)
            .ok_or_else(|| format!("no Job {name}"))?)
    }

    /// Job creates the API server answered, by status (201 created, 409 already exists).
    /// Creates are POSTs to the collection: the record has no object name.
    pub fn job_creates(&self) -> BTreeMap<u16, usize> {
        let mut by_status = BTreeMap::new();
        for request in self.api.requests() {
            if request.verb == "create" && request.resource == "jobs" {
                *by_status.entry(request.status).or_default() += 1;
            }
        }
        by_status
    }
}

pub fn path_text(path: &Path) -> Result<String> {
    Ok(path.to_str().ok_or("test paths are UTF-8")?.to_owned())
}

/// A replica of the service in cluster mode, electing on a Lease.
pub fn replica(cluster: &Cluster, repo: &Repo, data: &DataDir, name: &str) -> Result<Service> {
    let (mut args, mut env) = cluster.service_args()?;
    args.extend(
        [
            "--poll-seconds",
            "1",
            "--leader-election",
            "--namespace",
            NAMESPACE,
            "--lease-duration-seconds",
            "4",
            "--lease-grace-seconds",
            "2",
        ]
        .map(str::to_owned),
    );
    env.push(("POD_NAME".to_owned(), name.to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Service::start_with_env(repo.path(), data, &args, &env)
}
