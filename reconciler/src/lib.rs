//! Trainyard: a GitOps reconciler for ML training. This crate holds the service's modules;
//! `main.rs` wires them into the `trainyard` binary.

pub mod apply;
/// The artifact store lives with the in-pod launcher, which builds without the service.
pub use trainyard_launch::artifacts;
pub mod config;
pub mod definitions;
pub mod execute;
pub mod leader;
pub mod metrics;
pub mod plan;
pub mod policy;
pub mod pulls;
pub mod registry;
pub mod report;
pub mod runtime;
pub mod schedule;
pub mod server;
pub mod source;
pub mod spec;
pub mod store;

/// The `User-Agent` of every request this service makes, to the cluster and to GitHub, so
/// that audit logs tell installations, replicas and versions apart:
/// `trainyard/<version> (<who>)`, `who` being the pod's name or the installation.
pub fn user_agent(who: &str) -> String {
    format!("trainyard/{} ({who})", env!("CARGO_PKG_VERSION"))
}
