//! What a step attempt reads and writes: the artifacts it fetches before its program starts,
//! the files it must write, and what was stored of them.

use std::path::PathBuf;

/// An artifact a step reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepInput {
    /// Its key in the artifact store.
    pub key: String,
    /// Where the program expects the file.
    pub path: PathBuf,
}

/// A file a step writes and the store keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepOutput {
    /// The output's name as declared in the pipeline (`model`).
    pub name: String,
    /// Where the program writes the file.
    pub path: PathBuf,
    /// Its key in the artifact store.
    pub key: String,
}

/// An output stored after a successful attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducedArtifact {
    /// The output's declared name.
    pub output: String,
    /// Where it was stored.
    pub uri: String,
    /// Lowercase hex sha256 of its content.
    pub sha256: String,
    /// Its length in bytes.
    pub size: u64,
}
