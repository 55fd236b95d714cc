//! From a snapshot to a checked catalog: parse every file (cached by blob id), check across
//! documents, apply policies, and place every finding on its line.
//!
//! A one-file commit parses one file and evaluates policies for its documents only.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use git2::Oid;
use thiserror::Error;
use trainyard_policies::PolicyConfig;

use crate::policy::{PolicyEngine, PolicyError, RepoPolicy};
use crate::source::{ReadProblem, Snapshot, SourceError};
use crate::spec::{
    self, Catalog, Diagnostic, Finding, ParsedFile, ParsedSettings, SETTINGS_FILE, Settings,
    Severity,
};

/// Errors that stop an evaluation (bad definitions never do: they become diagnostics).
#[derive(Debug, Error)]
pub enum DefinitionsError {
    /// The repository could not be read.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Policies could not be evaluated.
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

/// A checked revision.
#[derive(Debug)]
pub struct Evaluation {
    /// The valid documents (files with errors are left out and listed as failed).
    pub catalog: Catalog,
    /// Every finding, in file and line order.
    pub diagnostics: Vec<Diagnostic>,
}

impl Evaluation {
    /// Whether any diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }
}

/// Parses and checks snapshots, keeping what it parsed for the next one.
pub struct Definitions {
    parsed: HashMap<(String, Oid), Arc<ParsedFile>>,
    previous: HashSet<(String, Oid)>,
    policy: PolicyEngine,
}

/// Findings of one revision, by file.
type ByFile = BTreeMap<Arc<str>, Vec<Finding>>;

/// A catalog before policies: the line `trainyard.yaml`'s root starts on, findings so far,
/// and the (path, blob) of every file read.
type Assembled = (Catalog, u32, ByFile, HashSet<(String, Oid)>);

impl Definitions {
    /// A checker with the platform's policy configuration.
    pub fn new(config: PolicyConfig) -> Result<Self, DefinitionsError> {
        Ok(Definitions {
            parsed: HashMap::new(),
            previous: HashSet::new(),
            policy: PolicyEngine::new(config)?,
        })
    }

    /// Parses, checks and applies policies to `snapshot`; `now` anchors cron-derived facts.
    pub fn evaluate(
        &mut self,
        snapshot: &Snapshot,
        now: DateTime<Utc>,
    ) -> Result<Evaluation, DefinitionsError> {
        let (mut catalog, settings_line, mut findings, files) = self.assemble(snapshot)?;
        let policies = repo_policies(snapshot, &catalog.settings, settings_line, &mut findings)?;
        for (file, finding) in self.policy.check(&catalog, &policies, now)? {
            findings.entry(file).or_default().push(finding);
        }
        catalog.drop_failed(failed_files(&findings));
        let mut diagnostics = Vec::new();
        for (file, file_findings) in &findings {
            let text = match snapshot.file(file).map(|f| snapshot.read(f)) {
                Some(Ok(bytes)) => Some(bytes),
                Some(Err(ReadProblem::Failed(error))) => return Err(error.into()),
                _ => None,
            };
            let text = text.as_deref().and_then(|b| std::str::from_utf8(b).ok());
            diagnostics.extend(Diagnostic::resolve(file, text, file_findings));
        }
        self.keep_only(files);
        Ok(Evaluation {
            catalog,
            diagnostics,
        })
    }

    /// The valid documents of `snapshot`, without policies: enough to plan against.
    pub fn catalog(&mut self, snapshot: &Snapshot) -> Result<Catalog, DefinitionsError> {
        let (mut catalog, _, findings, files) = self.assemble(snapshot)?;
        catalog.drop_failed(failed_files(&findings));
        self.keep_only(files);
        Ok(catalog)
    }

    /// Parses every file (reusing earlier parses) and checks across documents.
    fn assemble(&mut self, snapshot: &Snapshot) -> Result<Assembled, DefinitionsError> {
        let mut findings: ByFile = BTreeMap::new();
        let mut settings = ParsedSettings::default();
        let mut yaml = Vec::new();
        let mut misses = Vec::new();
        for file in &snapshot.files {
            if file.path == SETTINGS_FILE {
                settings = match read_or_refuse(snapshot, file)? {
                    Ok(bytes) => spec::parse_settings(&bytes),
                    Err(finding) => ParsedSettings {
                        findings: vec![finding],
                        ..ParsedSettings::default()
                    },
                };
                if !settings.findings.is_empty() {
                    findings.insert(Arc::from(SETTINGS_FILE), settings.findings.clone());
                }
            } else if file.is_yaml() {
                let key = (file.path.clone(), file.blob);
                if !self.parsed.contains_key(&key) {
                    misses.push((key.clone(), read_or_refuse(snapshot, file)?));
                }
                yaml.push(key);
            }
        }
        let keys: Vec<_> = misses.iter().map(|(key, _)| key.clone()).collect();
        let contents: Vec<_> = misses.into_iter().map(|(_, content)| content).collect();
        for (key, parsed) in keys.into_iter().zip(parse_in_parallel(&contents)) {
            self.parsed.insert(key, Arc::new(parsed));
        }
        let mut parsed_files = Vec::with_capacity(yaml.len());
        for key in &yaml {
            let Some(parsed) = self.parsed.get(key) else {
                continue;
            };
            let path: Arc<str> = Arc::from(key.0.as_str());
            if !parsed.findings.is_empty() {
                findings.insert(path.clone(), parsed.findings.clone());
            }
            parsed_files.push((path, parsed.clone()));
        }
        let (catalog, cross) = Catalog::assemble(settings.settings, &parsed_files);
        for (file, finding) in cross {
            findings.entry(file).or_default().push(finding);
        }
        Ok((catalog, settings.line, findings, yaml.into_iter().collect()))
    }

    /// Forgets parses of files in neither this snapshot nor the one before it.
    fn keep_only(&mut self, current: HashSet<(String, Oid)>) {
        let previous = std::mem::replace(&mut self.previous, current);
        let current = &self.previous;
        self.parsed
            .retain(|key, _| current.contains(key) || previous.contains(key));
    }
}

/// Parses files on every core: parsing dominates a cold start.
fn parse_in_parallel(contents: &[Result<Arc<[u8]>, Finding>]) -> Vec<ParsedFile> {
    let parse = |content: &Result<Arc<[u8]>, Finding>| match content {
        Ok(bytes) => spec::parse_file(bytes),
        Err(finding) => ParsedFile {
            documents: Vec::new(),
            findings: vec![finding.clone()],
        },
    };
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    if workers < 2 || contents.len() < 64 {
        return contents.iter().map(parse).collect();
    }
    let per_worker = contents.len().div_ceil(workers);
    std::thread::scope(|scope| {
        let handles: Vec<_> = contents
            .chunks(per_worker)
            .map(|chunk| scope.spawn(move || chunk.iter().map(parse).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

fn read_or_refuse(
    snapshot: &Snapshot,
    file: &crate::source::SourceFile,
) -> Result<Result<Arc<[u8]>, Finding>, SourceError> {
    match snapshot.read(file) {
        Ok(bytes) => Ok(Ok(bytes)),
        Err(ReadProblem::Refused(finding)) => Ok(Err(finding)),
        Err(ReadProblem::Failed(error)) => Err(error),
    }
}

fn failed_files(findings: &ByFile) -> BTreeSet<String> {
    findings
        .iter()
        .filter(|(_, list)| list.iter().any(|f| f.severity == Severity::Error))
        .map(|(file, _)| file.to_string())
        .collect()
}

/// Reads the repository's Rego files named in settings; a missing one is a finding on
/// `trainyard.yaml`.
fn repo_policies(
    snapshot: &Snapshot,
    settings: &Settings,
    line: u32,
    findings: &mut ByFile,
) -> Result<Vec<RepoPolicy>, SourceError> {
    let mut policies = Vec::new();
    for (i, path) in settings.policies.iter().enumerate() {
        let problem = match snapshot
            .file(path)
            .map(|f| (f, read_or_refuse(snapshot, f)))
        {
            Some((file, Ok(Ok(bytes)))) => match String::from_utf8(bytes.to_vec()) {
                Ok(source) => {
                    policies.push(RepoPolicy {
                        path: path.clone(),
                        blob: file.blob.to_string(),
                        source,
                    });
                    continue;
                }
                Err(_) => format!("policy file {path:?} is not UTF-8 text"),
            },
            Some((_, Ok(Err(finding)))) => finding.message,
            Some((_, Err(error))) => return Err(error),
            None => format!("policy file {path:?} does not exist"),
        };
        findings
            .entry(Arc::from(SETTINGS_FILE))
            .or_default()
            .push(Finding::error(
                "policy-missing",
                line,
                format!("policies[{i}]"),
                problem,
            ));
    }
    Ok(policies)
}
