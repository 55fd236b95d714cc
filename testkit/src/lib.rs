//! Stand-ins for the outside services Trainyard talks to, faithful enough that the real
//! clients (kube, object_store, octocrab) run against them unchanged.

pub mod github;
pub mod kube;
pub mod s3;
