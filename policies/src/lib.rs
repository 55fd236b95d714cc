//! Trainyard's Rego policy bundle and the evaluator that checks pipeline and
//! schedule documents against it.
//!
//! The platform rules live in `package trainyard.platform` and are embedded in
//! this crate (see [`platform_modules`]). A repository may add rules of its own
//! in `package trainyard.repo` or below; those can add violations but never
//! change or remove platform rules. Every rule adds violation objects to a set
//! named `deny` or `warn`; [`Evaluator::evaluate`] collects them all.

#![warn(missing_docs)]

mod bundle;
mod config;
mod error;
mod evaluator;
mod violation;

pub use bundle::platform_modules;
pub use config::{GpuLimits, PolicyConfig};
pub use error::Error;
pub use evaluator::Evaluator;
pub use violation::{Origin, Severity, Violation};
