//! Trainyard: a GitOps reconciler for ML training. This crate holds the service's modules;
//! `main.rs` wires them into the `trainyard` binary.

pub mod spec;
