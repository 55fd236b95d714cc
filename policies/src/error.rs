//! Errors of loading policies and evaluating them.

/// Why policies could not be loaded or evaluated.
#[derive(thiserror::Error, Debug)]
pub enum Error {
    /// A built-in platform policy could not be loaded; this is a defect in Trainyard itself.
    #[error("built-in platform policy {file} could not be loaded: {message}")]
    Platform {
        /// The embedded file name.
        file: String,
        /// What the policy engine reported.
        message: String,
    },
    /// The policy configuration could not be passed to the policies.
    #[error("the policy configuration could not be loaded: {message}")]
    Config {
        /// What went wrong.
        message: String,
    },
    /// A repository policy file is not valid Rego.
    #[error("repository policy {path} is not valid Rego:\n{message}")]
    InvalidRepoPolicy {
        /// The policy file.
        path: String,
        /// The parser's report, with the file, line and column.
        message: String,
    },
    /// A repository policy declares a package outside `trainyard.repo`.
    #[error(
        "repository policy {path} declares `package {package}`, which is not allowed; \
         repository policies must use `package trainyard.repo` or a package below it \
         (such as `package trainyard.repo.checks`) and cannot add to or change the platform rules"
    )]
    ForbiddenPackage {
        /// The policy file.
        path: String,
        /// The package it declares.
        package: String,
    },
    /// The same repository policy path was added twice.
    #[error("repository policy {path} was already added")]
    DuplicateRepoPolicy {
        /// The policy file.
        path: String,
    },
    /// Evaluating a rule set failed, e.g. because a built-in function was called with a wrong type.
    #[error("evaluating {rules} failed: {message}")]
    Evaluation {
        /// The rule set, e.g. `data.trainyard.platform.deny`.
        rules: String,
        /// What the policy engine reported.
        message: String,
    },
    /// A rule set holds something that is not a violation object.
    #[error(
        "{rules} contains {value}, which is not a violation: {problem}; each entry must be an \
         object with the strings \"rule\", \"kind\", \"name\" and \"msg\" and a string or null \"field\""
    )]
    MalformedViolation {
        /// The rule set, e.g. `data.trainyard.repo.deny`.
        rules: String,
        /// The offending entry as JSON.
        value: String,
        /// What is wrong with it.
        problem: String,
    },
}
