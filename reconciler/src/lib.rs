//! Trainyard: a GitOps reconciler for ML training. This crate holds the service's modules;
//! `main.rs` wires them into the `trainyard` binary.

pub mod definitions;
pub mod plan;
pub mod policy;
pub mod source;
pub mod spec;
