//! The service's configuration, as the command line builds it: what to follow, where state
//! lives, how much runs at once, and the bounds of the reconcile loop.

use std::path::PathBuf;
use std::time::Duration;

use trainyard_policies::PolicyConfig;

/// Where the service reads, what it follows, and how much it runs at once.
#[derive(Debug, Clone)]
pub struct Config {
    /// Branch to follow; `None` follows the branch HEAD points at.
    pub branch: Option<String>,
    /// Tracked directory relative to the repository root (`""` for the root).
    pub subdir: String,
    /// Where checkouts of run commits are kept.
    pub data_dir: PathBuf,
    /// Prefix of status contexts, when several services follow one repository.
    pub instance: Option<String>,
    /// This installation's identity, carried by every Job it creates.
    pub installation: String,
    /// Steps running at once, across runs.
    pub max_parallel_steps: usize,
    /// Platform policy settings.
    pub policy: PolicyConfig,
    /// How often the branch is looked at when nothing says it moved.
    pub poll: Duration,
    /// How long an attempt may wait for the executor to accept it (a cluster refusing or
    /// failing its Job's create) before it fails with the executor's words.
    pub submit_deadline: Duration,
    /// How long a shutdown waits for local steps to finish before it stops them (and does
    /// not count the attempt against their retries).
    pub shutdown_grace: Duration,
}

impl Config {
    /// A configuration with the defaults the command line uses, following the branch HEAD
    /// points at in the whole repository.
    pub fn new(data_dir: PathBuf, installation: String) -> Config {
        Config {
            branch: None,
            subdir: String::new(),
            data_dir,
            instance: None,
            installation,
            max_parallel_steps: 8,
            policy: PolicyConfig::default(),
            poll: Duration::from_secs(60),
            submit_deadline: Duration::from_secs(300),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}
