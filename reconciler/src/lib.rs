//! Trainyard: a GitOps reconciler for ML training. This crate holds the service's modules;
//! `main.rs` wires them into the `trainyard` binary.

pub mod apply;
pub mod artifacts;
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
