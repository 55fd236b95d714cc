//! The violations rules report.

use serde::{Deserialize, Serialize};

/// How serious a violation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// From a `deny` set: the document must not be accepted.
    Deny,
    /// From a `warn` set: the document is accepted, but the author should look at it.
    Warn,
}

/// Which set of rules reported a violation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Origin {
    /// The platform bundle embedded in Trainyard.
    Platform,
    /// A repository's own policies.
    Repository {
        /// The `.rego` file that declares the rule set, or the package name
        /// (e.g. `trainyard.repo.checks`) when several files of one package do.
        path: String,
    },
}

/// One rule violation of one document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Violation {
    /// Whether the violation came from a `deny` or a `warn` set.
    pub severity: Severity,
    /// The rule identifier, e.g. `image-pinned`.
    pub rule: String,
    /// The document kind, `Pipeline` or `Schedule`.
    pub kind: String,
    /// The document name.
    pub name: String,
    /// The offending field as a dotted path, e.g. `spec.steps[1].image`, if the rule names one.
    pub field: Option<String>,
    /// What is wrong and how to fix it.
    pub message: String,
    /// Which rules reported the violation.
    pub origin: Origin,
}
