//! From a snapshot to a checked catalog: parse every file, check across documents, apply
//! policies, and place every finding on its line.
//!
//! The checker keeps the last evaluation, so the next one parses only files whose blob
//! changed and re-checks only the documents they touch (and the schedules of their
//! pipelines). A change to `trainyard.yaml` or to a repository policy re-checks everything,
//! because both feed every document's checks. With a cache directory ([`cache`]), what it
//! parsed and judged outlives the process, so a restart costs what changed meanwhile.

pub mod cache;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};
use git2::Oid;
use thiserror::Error;
use trainyard_policies::PolicyConfig;

use crate::policy::{PolicyEngine, PolicyError, RepoPolicy};
use crate::source::{ReadProblem, Snapshot, SourceError, SourceFile};
use crate::spec::catalog::{Assembly, DocumentKey, FileChanges, FileFindings};
use crate::spec::{
    self, Catalog, Diagnostic, Finding, ParsedFile, ParsedSettings, SETTINGS_FILE, Severity,
};

/// Files read and parsed together: enough to keep every core busy, few enough that their
/// text is a small part of the memory of a large repository.
const PARSE_BATCH: usize = 1024;

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
#[derive(Debug, Default)]
pub struct Evaluation {
    /// The valid documents (files with errors are left out and listed as failed).
    pub catalog: Catalog,
    /// Every finding, in file and line order.
    pub diagnostics: Vec<Diagnostic>,
    /// The documents this evaluation re-checked: those of changed files and the schedules of
    /// their pipelines (every document on a full evaluation). Anything else is as before.
    pub touched: BTreeSet<DocumentKey>,
    /// Files this evaluation parsed (the others came from the last one or the cache).
    pub parsed_files: usize,
    /// Documents whose policy verdict this evaluation computed (the others were known).
    pub judged_documents: usize,
}

impl Evaluation {
    /// Whether any diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }
}

/// What the last evaluation left to build the next one on.
struct State {
    /// The commit it evaluated, so a snapshot advanced from it is read by its delta.
    commit: Option<Oid>,
    /// Blob of every YAML document file.
    blobs: HashMap<Arc<str>, Oid>,
    /// Blob of `trainyard.yaml` and of each repository policy: a change re-checks everything.
    inputs: (Option<Oid>, Vec<(String, String)>),
    settings: ParsedSettings,
    settings_findings: FileFindings,
    assembly: Assembly,
    policy: HashMap<DocumentKey, FileFindings>,
}

/// The one checker of a service, shared by the loops that evaluate definitions (following
/// the branch, planning pull requests): one Rego engine and one cache of parsed files and
/// verdicts. Evaluations are incremental by blob, so interleaving revisions is correct;
/// each costs what differs from the one before.
#[derive(Clone)]
pub struct SharedDefinitions(Arc<Mutex<Definitions>>);

impl SharedDefinitions {
    /// Shares `definitions`.
    pub fn new(definitions: Definitions) -> Self {
        SharedDefinitions(Arc::new(Mutex::new(definitions)))
    }

    /// The checker, for one evaluation on a blocking thread.
    pub fn lock(&self) -> MutexGuard<'_, Definitions> {
        // An evaluation that panicked left the checker's caches as they were before it.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Parses and checks snapshots, building each evaluation on the last one.
pub struct Definitions {
    policy: PolicyEngine,
    state: Option<State>,
    /// Files parsed by [`Definitions::catalog`], reused by the next evaluation.
    parsed: HashMap<(Arc<str>, Oid), Arc<ParsedFile>>,
    /// The cache in the data directory, and the parsed files of the last evaluation by blob
    /// (with those read from the cache that it has not looked at yet).
    disk: Option<(cache::DiskCache, HashMap<Oid, Arc<ParsedFile>>)>,
}

impl Definitions {
    /// A checker with the platform's policy configuration.
    pub fn new(config: PolicyConfig) -> Result<Self, DefinitionsError> {
        Ok(Definitions {
            policy: PolicyEngine::new(config)?,
            state: None,
            parsed: HashMap::new(),
            disk: None,
        })
    }

    /// Keeps what evaluations parse and judge in `dir`, and starts from what an earlier
    /// process of the same binary kept there.
    pub fn with_cache(mut self, dir: &Path) -> Self {
        let (disk, loaded) = cache::DiskCache::open(dir, &cache::binary_identity());
        tracing::debug!(
            parsed = loaded.parsed.len(),
            verdicts = loaded.verdicts.len(),
            "read the definitions cache"
        );
        self.policy.keep(loaded.verdicts);
        self.disk = Some((disk, loaded.parsed));
        self
    }

    /// Parses, checks and applies policies to `snapshot`; `now` anchors cron-derived facts.
    pub fn evaluate(
        &mut self,
        snapshot: &Snapshot,
        now: DateTime<Utc>,
    ) -> Result<Evaluation, DefinitionsError> {
        let settings = read_settings(snapshot)?;
        let mut settings_findings: FileFindings = settings
            .findings
            .iter()
            .map(|f| (Arc::from(SETTINGS_FILE), f.clone()))
            .collect();
        let policies = repo_policies(snapshot, &settings, &mut settings_findings)?;
        let inputs = (
            snapshot.file(SETTINGS_FILE).map(|f| f.blob),
            policies
                .iter()
                .map(|p| (p.path.clone(), p.blob.clone()))
                .collect::<Vec<_>>(),
        );
        settings_findings.extend(self.policy.load(&policies)?);
        let mut state = match self.state.take() {
            Some(state) if state.inputs == inputs => state,
            _ => State {
                commit: None,
                blobs: HashMap::new(),
                inputs,
                settings: settings.clone(),
                settings_findings: Vec::new(),
                assembly: Assembly::new(settings.settings.clone()),
                policy: HashMap::new(),
            },
        };
        state.settings = settings;
        state.settings_findings = settings_findings;
        let (changes, newly_parsed) = self.changes(snapshot, &mut state.blobs, state.commit)?;
        state.commit = snapshot.commit;
        let touched = state.assembly.update(changes);
        let mut fresh = self.policy.check(state.assembly.catalog(), &touched, now)?;
        for key in &touched {
            match fresh.remove(key) {
                Some(findings) => state.policy.insert(key.clone(), findings),
                None => state.policy.remove(key),
            };
        }
        self.parsed.clear();
        let judged_documents = self.save(&state, &newly_parsed);
        let mut evaluation = finish(snapshot, &state, touched)?;
        evaluation.parsed_files = newly_parsed.len();
        evaluation.judged_documents = judged_documents;
        self.state = Some(state);
        Ok(evaluation)
    }

    /// Brings the cache up to date with an evaluation that parsed `newly_parsed`; returns
    /// how many verdicts it computed.
    fn save(&mut self, state: &State, newly_parsed: &[(Oid, Arc<ParsedFile>)]) -> usize {
        let fresh_verdicts = self.policy.take_fresh();
        let judged = fresh_verdicts.len();
        let Some((disk, by_blob)) = self.disk.as_mut() else {
            return judged;
        };
        by_blob.extend(newly_parsed.iter().cloned());
        let live: std::collections::HashSet<&Oid> = state.blobs.values().collect();
        by_blob.retain(|blob, _| live.contains(blob));
        disk.save_parsed(newly_parsed, by_blob.iter());
        disk.save_verdicts(&fresh_verdicts, self.policy.verdicts());
        judged
    }

    /// The valid documents of `snapshot`, without policies: enough to plan against. Does not
    /// change what the next evaluation builds on, but lends it the files it parsed.
    pub fn catalog(&mut self, snapshot: &Snapshot) -> Result<Catalog, DefinitionsError> {
        let settings = read_settings(snapshot)?;
        let mut blobs = HashMap::new();
        let (changes, _) = self.changes(snapshot, &mut blobs, None)?;
        for (path, parsed) in &changes {
            if let (Some(parsed), Some(blob)) = (parsed, blobs.get(path)) {
                self.parsed.insert((path.clone(), *blob), parsed.clone());
            }
        }
        let mut assembly = Assembly::new(settings.settings.clone());
        assembly.update(changes);
        let mut findings: FileFindings = settings
            .findings
            .iter()
            .map(|f| (Arc::from(SETTINGS_FILE), f.clone()))
            .collect();
        findings.extend(
            assembly
                .file_findings()
                .map(|(file, f)| (file.clone(), f.clone())),
        );
        findings.extend(assembly.cross_findings().cloned());
        let mut catalog = assembly.catalog().clone();
        catalog.drop_failed(failed_files(findings.iter().map(|(file, f)| (file, f))));
        Ok(catalog)
    }

    /// The files of `snapshot` that differ from `blobs` (which is brought up to date), parsed:
    /// `None` for files that are gone. When `snapshot` was advanced from `seen`, the commit
    /// `blobs` describes, only the paths it names are looked at. Also returns the files that
    /// had to be parsed (found neither in the lent ones nor in the cache), by blob.
    #[allow(clippy::type_complexity)]
    fn changes(
        &self,
        snapshot: &Snapshot,
        blobs: &mut HashMap<Arc<str>, Oid>,
        seen: Option<Oid>,
    ) -> Result<(FileChanges, Vec<(Oid, Arc<ParsedFile>)>), SourceError> {
        let is_document = |f: &&SourceFile| f.is_yaml() && f.path != SETTINGS_FILE;
        let mut changed = Vec::new();
        let candidates: Vec<&SourceFile> = match (&snapshot.changed_since, seen) {
            (Some((base, paths)), Some(seen)) if *base == seen => {
                let mut present = Vec::new();
                for path in paths {
                    match snapshot.file(path).filter(is_document) {
                        Some(file) => present.push(file),
                        None => {
                            if let Some((path, _)) = blobs.remove_entry(path.as_str()) {
                                changed.push((path, None));
                            }
                        }
                    }
                }
                present
            }
            _ => {
                let all: Vec<&SourceFile> = snapshot.files.iter().filter(is_document).collect();
                let gone: Vec<Arc<str>> = blobs
                    .keys()
                    .filter(|p| snapshot.file(p).filter(is_document).is_none())
                    .cloned()
                    .collect();
                for path in gone {
                    blobs.remove(&path);
                    changed.push((path, None));
                }
                all
            }
        };
        let mut cached = Vec::new();
        let mut to_parse = Vec::new();
        for file in candidates {
            if blobs.get(file.path.as_str()) == Some(&file.blob) {
                continue;
            }
            let path: Arc<str> = Arc::from(file.path.as_str());
            let kept = self
                .parsed
                .get(&(path.clone(), file.blob))
                .or_else(|| self.disk.as_ref()?.1.get(&file.blob));
            match kept {
                Some(parsed) => cached.push((path.clone(), Some(parsed.clone()))),
                None => to_parse.push((path.clone(), file)),
            }
            blobs.insert(path, file.blob);
        }
        // Read a batch at a time, so that no more than a batch of source text is held at
        // once however many files there are (their findings are placed later by reading
        // the few files that have any again).
        let mut newly_parsed = Vec::new();
        for batch in to_parse.chunks(PARSE_BATCH) {
            let contents = batch
                .iter()
                .map(|(_, file)| read_or_refuse(snapshot, file))
                .collect::<Result<Vec<_>, _>>()?;
            for (((path, file), content), parsed) in batch
                .iter()
                .zip(&contents)
                .zip(parse_in_parallel(&contents))
            {
                let parsed = Arc::new(parsed);
                // A file refused before parsing (too large, unreadable) says so afresh.
                if content.is_ok() {
                    newly_parsed.push((file.blob, parsed.clone()));
                }
                changed.push((path.clone(), Some(parsed)));
            }
        }
        changed.extend(cached);
        Ok((changed, newly_parsed))
    }
}

/// Places the findings of `state` on their lines and builds the catalog it declares.
fn finish(
    snapshot: &Snapshot,
    state: &State,
    touched: BTreeSet<DocumentKey>,
) -> Result<Evaluation, DefinitionsError> {
    let mut by_file: BTreeMap<Arc<str>, Vec<Finding>> = BTreeMap::new();
    let all = state
        .settings_findings
        .iter()
        .cloned()
        .chain(
            state
                .assembly
                .file_findings()
                .map(|(file, f)| (file.clone(), f.clone())),
        )
        .chain(state.assembly.cross_findings().cloned())
        .chain(state.policy.values().flatten().cloned());
    for (file, finding) in all {
        by_file.entry(file).or_default().push(finding);
    }
    let mut catalog = state.assembly.catalog().clone();
    catalog.settings = state.settings.settings.clone();
    catalog.drop_failed(failed_files(
        by_file
            .iter()
            .flat_map(|(file, list)| list.iter().map(move |f| (file, f))),
    ));
    let mut diagnostics = Vec::new();
    for (file, findings) in &by_file {
        let text = match snapshot.file(file).map(|f| snapshot.read(f)) {
            Some(Ok(bytes)) => Some(bytes),
            Some(Err(ReadProblem::Failed(error))) => return Err(error.into()),
            _ => None,
        };
        let text = text.as_deref().and_then(|b| std::str::from_utf8(b).ok());
        diagnostics.extend(Diagnostic::resolve(file, text, findings));
    }
    Ok(Evaluation {
        catalog,
        diagnostics,
        touched,
        parsed_files: 0,
        judged_documents: 0,
    })
}

fn failed_files<'a>(
    findings: impl Iterator<Item = (&'a Arc<str>, &'a Finding)>,
) -> BTreeSet<String> {
    findings
        .filter(|(_, f)| f.severity == Severity::Error)
        .map(|(file, _)| file.to_string())
        .collect()
}

fn read_settings(snapshot: &Snapshot) -> Result<ParsedSettings, SourceError> {
    Ok(match snapshot.file(SETTINGS_FILE) {
        None => ParsedSettings::default(),
        Some(file) => match read_or_refuse(snapshot, file)? {
            Ok(bytes) => spec::parse_settings(&bytes),
            Err(finding) => ParsedSettings {
                findings: vec![finding],
                ..ParsedSettings::default()
            },
        },
    })
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
    file: &SourceFile,
) -> Result<Result<Arc<[u8]>, Finding>, SourceError> {
    match snapshot.read(file) {
        Ok(bytes) => Ok(Ok(bytes)),
        Err(ReadProblem::Refused(finding)) => Ok(Err(finding)),
        Err(ReadProblem::Failed(error)) => Err(error),
    }
}

/// Reads the repository's Rego files named in settings; a missing one is a finding on
/// `trainyard.yaml`.
fn repo_policies(
    snapshot: &Snapshot,
    settings: &ParsedSettings,
    findings: &mut FileFindings,
) -> Result<Vec<RepoPolicy>, SourceError> {
    let mut policies = Vec::new();
    for (i, path) in settings.settings.policies.iter().enumerate() {
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
        let finding = Finding::error(
            "policy-missing",
            settings.line,
            format!("policies[{i}]"),
            problem,
        );
        findings.push((Arc::from(SETTINGS_FILE), finding));
    }
    Ok(policies)
}

#[cfg(test)]
mod tests {
    use super::*;
    use git2::{Repository, Signature};

    const DIGEST: &str = "4f3c9d2e8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e";

    fn pipeline(name: &str, default: u32, image: &str) -> String {
        format!(
            "apiVersion: trainyard.dev/v1\nkind: Pipeline\nmetadata: {{name: {name}, owner: team-a}}\n\
             spec:\n  image: {image}\n  params: {{e: {{type: int, default: {default}}}}}\n  steps: [{{name: s, run: [x]}}]\n"
        )
    }

    fn schedule(name: &str, target: &str) -> String {
        format!(
            "apiVersion: trainyard.dev/v1\nkind: Schedule\nmetadata: {{name: {name}}}\n\
             spec: {{pipeline: {target}, cron: '@daily', params: {{e: 5}}}}\n"
        )
    }

    fn commit(repo: &Repository, files: &[(&str, Option<String>)]) -> Snapshot {
        let root = repo.workdir().expect("work tree").to_owned();
        for (path, content) in files {
            let full = root.join(path);
            match content {
                Some(text) => {
                    std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
                    std::fs::write(&full, text).expect("write");
                }
                None => std::fs::remove_file(&full).expect("remove"),
            }
        }
        let mut index = repo.index().expect("index");
        index
            .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
            .expect("add");
        index.update_all(["*"], None).expect("update");
        index.write().expect("write index");
        let tree = repo
            .find_tree(index.write_tree().expect("tree"))
            .expect("tree");
        let sig = Signature::now("t", "t@example.com").expect("signature");
        let parent = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
        let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
        repo.commit(Some("HEAD"), &sig, &sig, "change", &tree, &parents)
            .expect("commit");
        Snapshot::at_revision(&crate::source::Repo::open(&root).expect("open"), "HEAD", "")
            .expect("snapshot")
    }

    /// Pipelines, schedules, failed files and diagnostics (file, line, column, code).
    type Outcome = (
        Vec<String>,
        Vec<String>,
        Vec<String>,
        Vec<(String, u32, u32, String)>,
    );

    /// What an evaluation decided, in a form two evaluations can be compared by.
    fn outcome(e: &Evaluation) -> Outcome {
        let docs = |m: Vec<(&Arc<str>, &Arc<str>, &Arc<str>)>| {
            m.into_iter()
                .map(|(n, f, v)| format!("{n} {f} {v}"))
                .collect()
        };
        let mut diagnostics: Vec<_> = e
            .diagnostics
            .iter()
            .map(|d| (d.file.clone(), d.line, d.column, d.code.clone()))
            .collect();
        diagnostics.sort();
        (
            docs(
                e.catalog
                    .pipelines
                    .iter()
                    .map(|(n, x)| (n, &x.file, &x.version))
                    .collect(),
            ),
            docs(
                e.catalog
                    .schedules
                    .iter()
                    .map(|(n, x)| (n, &x.file, &x.version))
                    .collect(),
            ),
            e.catalog.failed_files.iter().cloned().collect(),
            diagnostics,
        )
    }

    /// A history of commits (the files each one writes or removes) that exercises every kind
    /// of change: edits, duplicates, removals, broken files, policy denials, new rules.
    fn history() -> Vec<Vec<(String, Option<String>)>> {
        let pinned = format!("reg.example.com/ml@sha256:{DIGEST}");
        let mut first: Vec<(String, Option<String>)> = Vec::new();
        for i in 0..12 {
            first.push((
                format!("p/{i:02}.yaml"),
                Some(pipeline(&format!("p{i}"), 1, &pinned)),
            ));
            first.push((
                format!("s/{i:02}.yaml"),
                Some(schedule(&format!("s{i}"), &format!("p{i}"))),
            ));
        }
        first.push((
            "policies/owners.rego".into(),
            Some("package trainyard.repo.owners\n".into()),
        ));
        vec![
            first,
            // An edit to one pipeline.
            vec![("p/03.yaml".into(), Some(pipeline("p3", 2, &pinned)))],
            // A duplicate defined in a later file, then the first definition removed.
            vec![("p/99.yaml".into(), Some(pipeline("p4", 9, &pinned)))],
            vec![("p/04.yaml".into(), None)],
            // A broken file keeps nothing; a schedule of a missing pipeline is an error.
            vec![("p/05.yaml".into(), Some("apiVersion: [".into())), ("p/06.yaml".into(), None)],
            // A policy denial, and a param its schedule no longer matches.
            vec![("p/07.yaml".into(), Some(pipeline("p7", 1, "python:3"))), ("s/08.yaml".into(), Some(schedule("s8", "p9")))],
            vec![("p/09.yaml".into(), Some(pipeline("p9", 1, &pinned).replace("type: int", "type: string").replace("default: 1", "default: a")))],
            // Repository settings and rules change: everything is checked again.
            vec![
                ("trainyard.yaml".into(), Some("policies: [policies/owners.rego]\n".into())),
                ("policies/owners.rego".into(), Some("package trainyard.repo.owners\n\ndeny contains v if {\n  some p in input.pipelines\n  p.name == \"p1\"\n  v := {\"rule\": \"no-p1\", \"kind\": \"Pipeline\", \"name\": p.name, \"field\": null, \"msg\": \"no\"}\n}\n".into())),
            ],
            // Repairs bring documents back.
            vec![("p/05.yaml".into(), Some(pipeline("p5", 3, &pinned))), ("p/06.yaml".into(), Some(pipeline("p6", 1, &pinned)))],
        ]
    }

    #[test]
    fn evaluating_commit_after_commit_matches_evaluating_each_afresh() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repository::init(dir.path()).expect("init");
        let steps = history();
        let mut incremental = Definitions::new(PolicyConfig::default()).expect("policies load");
        let mut followed: Option<Snapshot> = None;
        let now = Utc::now();
        for (n, change) in steps.iter().enumerate() {
            let files: Vec<(&str, Option<String>)> = change
                .iter()
                .map(|(p, c)| (p.as_str(), c.clone()))
                .collect();
            let snapshot = commit(&repo, &files);
            // The incremental side follows the branch by tree diffs, as a service does.
            let advanced = match followed.take() {
                None => Snapshot::at_revision(
                    &crate::source::Repo::open(dir.path()).expect("open"),
                    "HEAD",
                    "",
                )
                .expect("snapshot"),
                Some(previous) => previous.advance("HEAD", "").expect("advance"),
            };
            let step = incremental.evaluate(&advanced, now).expect("evaluate");
            followed = Some(advanced);
            let fresh = Definitions::new(PolicyConfig::default())
                .expect("policies load")
                .evaluate(&snapshot, now)
                .expect("evaluate");
            assert_eq!(outcome(&step), outcome(&fresh), "after commit {n}");
            assert!(
                n == 0 || !outcome(&step).3.is_empty() || n == 1 || n == 3,
                "commit {n} should have diagnostics"
            );
        }
        let last = incremental
            .evaluate(&commit(&repo, &[]), now)
            .expect("evaluate");
        let codes: BTreeSet<String> = last.diagnostics.iter().map(|d| d.code.clone()).collect();
        assert!(
            codes.contains("policy/no-p1") && codes.contains("policy/image-pinned"),
            "{codes:?}"
        );
    }

    #[test]
    fn a_restarted_checker_parses_and_judges_only_what_changed_and_decides_the_same() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = tempfile::tempdir().expect("tempdir");
        let repo = Repository::init(dir.path()).expect("init");
        let restarted = || {
            Definitions::new(PolicyConfig::default())
                .expect("policies load")
                .with_cache(cache.path())
        };
        let now = Utc::now();
        for (n, change) in history().iter().enumerate() {
            let files: Vec<(&str, Option<String>)> = change
                .iter()
                .map(|(p, c)| (p.as_str(), c.clone()))
                .collect();
            let snapshot = commit(&repo, &files);
            // A service restarted at every commit, starting from what the last one kept.
            let step = restarted().evaluate(&snapshot, now).expect("evaluate");
            let fresh = Definitions::new(PolicyConfig::default())
                .expect("policies load")
                .evaluate(&snapshot, now)
                .expect("evaluate");
            assert_eq!(outcome(&step), outcome(&fresh), "after commit {n}");
            let written = files
                .iter()
                .filter(|(p, c)| c.is_some() && p.ends_with(".yaml") && *p != SETTINGS_FILE)
                .count();
            if n > 0 {
                assert!(
                    step.parsed_files <= written,
                    "commit {n} parsed {} files, wrote {written}",
                    step.parsed_files
                );
            }
            let again = restarted().evaluate(&snapshot, now).expect("evaluate");
            assert_eq!(
                outcome(&again),
                outcome(&fresh),
                "commit {n} after a restart"
            );
            assert_eq!(again.parsed_files, 0, "commit {n}: nothing parsed again");
            assert_eq!(
                again.judged_documents, 0,
                "commit {n}: nothing judged again"
            );
        }
        // A binary built differently trusts none of it.
        let snapshot = commit(&repo, &[]);
        let (_, loaded) = cache::DiskCache::open(cache.path(), "another build");
        assert!(loaded.parsed.is_empty());
        let evaluated = restarted().evaluate(&snapshot, now).expect("evaluate");
        assert!(
            evaluated.parsed_files > 20,
            "parsed {}",
            evaluated.parsed_files
        );
    }
}
