//! Stand-ins for the outside services Trainyard talks to, faithful enough that the real
//! clients (kube, object_store) run against them unchanged.

pub mod kube;
