//! The catalog: every pipeline and schedule of a revision by name, and the checks that need
//! more than one document (duplicate names, schedule → pipeline, params, images).
//!
//! An [`Assembly`] keeps what it needs to update a catalog when some files change, so a
//! one-file commit re-checks the documents of that file and the schedules of its pipelines
//! instead of the whole repository. Assembling from scratch is the same update with every
//! file new.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use super::ParsedFile;
use super::check::resolve_params;
use super::diag::{Finding, did_you_mean};
use super::model::{Document, Kind, Pipeline, Schedule, Settings};

/// A document in the catalog, with where it came from.
#[derive(Debug)]
pub struct Entry<T> {
    /// File path relative to the tracked directory.
    pub file: Arc<str>,
    /// Line of the document's root node in that file.
    pub line: u32,
    /// Content version (sha256 of the canonical form).
    pub version: Arc<str>,
    /// The document.
    pub value: Arc<T>,
}

impl<T> Clone for Entry<T> {
    fn clone(&self) -> Self {
        Entry {
            file: self.file.clone(),
            line: self.line,
            version: self.version.clone(),
            value: self.value.clone(),
        }
    }
}

/// What a revision declares.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// `trainyard.yaml`, or defaults.
    pub settings: Settings,
    /// Pipelines by name.
    pub pipelines: BTreeMap<Arc<str>, Entry<Pipeline>>,
    /// Schedules by name.
    pub schedules: BTreeMap<Arc<str>, Entry<Schedule>>,
    /// Files with errors: their documents are not in this catalog (a service keeps their
    /// last good version).
    pub failed_files: BTreeSet<String>,
}

/// Findings from checks across documents, with the file each belongs to.
pub type FileFindings = Vec<(Arc<str>, Finding)>;

/// Files to replace (`Some`) or remove (`None`) in an assembly.
pub type FileChanges = Vec<(Arc<str>, Option<Arc<ParsedFile>>)>;

/// A document's identity in a catalog.
pub type DocumentKey = (Kind, Arc<str>);

impl Catalog {
    /// The catalog of files given as (path, YAML), with default settings: for tests.
    #[cfg(test)]
    pub(crate) fn of_files(files: &[(&str, &str)]) -> Catalog {
        let parsed: Vec<_> = files
            .iter()
            .map(|(path, yaml)| {
                (
                    Arc::from(*path),
                    Arc::new(crate::spec::parse_file(yaml.as_bytes())),
                )
            })
            .collect();
        Catalog::assemble(crate::spec::Settings::default(), &parsed).0
    }

    /// Collects the documents of `files` (the first definition of a name in path order wins)
    /// and checks what needs several documents. Returns every candidate document: the caller
    /// removes files that turn out to have errors with [`Catalog::drop_failed`].
    pub fn assemble(
        settings: Settings,
        files: &[(Arc<str>, Arc<ParsedFile>)],
    ) -> (Catalog, FileFindings) {
        let mut assembly = Assembly::new(settings);
        assembly.update(
            files
                .iter()
                .map(|(path, parsed)| (path.clone(), Some(parsed.clone())))
                .collect(),
        );
        let findings = assembly
            .cross_findings()
            .map(|(file, f)| (file.clone(), f.clone()))
            .collect();
        (assembly.catalog, findings)
    }

    /// What a service runs after this revision: its documents, plus the last good version
    /// (from `previous`) of documents whose file now fails.
    pub fn with_last_good(&self, previous: &Catalog) -> Catalog {
        let mut effective = self.clone();
        for (name, entry) in &previous.pipelines {
            if self.failed_files.contains(entry.file.as_ref()) {
                effective
                    .pipelines
                    .entry(name.clone())
                    .or_insert_with(|| entry.clone());
            }
        }
        for (name, entry) in &previous.schedules {
            if self.failed_files.contains(entry.file.as_ref()) {
                effective
                    .schedules
                    .entry(name.clone())
                    .or_insert_with(|| entry.clone());
            }
        }
        effective
    }

    /// Removes the documents of `failed` files and records them as failed.
    pub fn drop_failed(&mut self, failed: BTreeSet<String>) {
        if !failed.is_empty() {
            self.pipelines
                .retain(|_, e| !failed.contains(e.file.as_ref()));
            self.schedules
                .retain(|_, e| !failed.contains(e.file.as_ref()));
        }
        self.failed_files = failed;
    }
}

/// A catalog under construction, updated file by file.
#[derive(Debug, Default)]
pub struct Assembly {
    files: BTreeMap<Arc<str>, Arc<ParsedFile>>,
    /// Files with findings of their own, so reporting does not scan every file.
    with_findings: BTreeSet<Arc<str>>,
    /// The files defining each document, in path order: the first one wins.
    definers: HashMap<DocumentKey, BTreeSet<Arc<str>>>,
    /// Schedules by the pipeline they start, to re-check them when it changes.
    referrers: HashMap<Arc<str>, BTreeSet<Arc<str>>>,
    catalog: Catalog,
    cross: HashMap<DocumentKey, FileFindings>,
}

impl Assembly {
    /// An empty assembly under `settings`.
    pub fn new(settings: Settings) -> Self {
        Assembly {
            catalog: Catalog {
                settings,
                ..Catalog::default()
            },
            ..Assembly::default()
        }
    }

    /// The candidate catalog: every winning document, before failed files are dropped.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The findings each file has on its own.
    pub fn file_findings(&self) -> impl Iterator<Item = (&Arc<str>, &Finding)> {
        self.with_findings
            .iter()
            .filter_map(|path| self.files.get_key_value(path))
            .flat_map(|(path, parsed)| parsed.findings.iter().map(move |f| (path, f)))
    }

    /// Every finding of the checks across documents.
    pub fn cross_findings(&self) -> impl Iterator<Item = &(Arc<str>, Finding)> {
        self.cross.values().flatten()
    }

    /// Replaces (`Some`) or removes (`None`) files and re-checks what they touch. Returns the
    /// documents whose candidate or cross-document findings were recomputed: those of the
    /// changed files and the schedules of their pipelines.
    pub fn update(&mut self, changes: FileChanges) -> BTreeSet<DocumentKey> {
        let mut affected = BTreeSet::new();
        for (path, parsed) in changes {
            if let Some(old) = self.files.remove(&path) {
                for key in keys_of(&old) {
                    if let Some(set) = self.definers.get_mut(&key) {
                        set.remove(&path);
                    }
                    affected.insert(key);
                }
            }
            self.with_findings.remove(&path);
            if let Some(new) = parsed {
                if !new.findings.is_empty() {
                    self.with_findings.insert(path.clone());
                }
                for key in keys_of(&new) {
                    self.definers
                        .entry(key.clone())
                        .or_default()
                        .insert(path.clone());
                    affected.insert(key);
                }
                self.files.insert(path, new);
            }
        }
        for key in &affected {
            self.elect(key);
        }
        let mut recheck = affected.clone();
        for (kind, name) in &affected {
            if *kind == Kind::Pipeline
                && let Some(schedules) = self.referrers.get(name)
            {
                recheck.extend(schedules.iter().map(|s| (Kind::Schedule, s.clone())));
            }
        }
        for key in &recheck {
            self.check(key);
        }
        recheck
    }

    /// Makes the first definer of `key` the candidate, or removes the candidate.
    fn elect(&mut self, key: &DocumentKey) {
        let winner =
            self.definers
                .get(key)
                .and_then(|set| set.first())
                .and_then(|path| {
                    let parsed = self.files.get(path)?;
                    let doc = parsed.documents.iter().find(|d| {
                        d.document.kind() == key.0 && d.document.name() == key.1.as_ref()
                    })?;
                    Some((path.clone(), doc.clone()))
                });
        let (kind, name) = key;
        match (kind, winner) {
            (Kind::Pipeline, Some((file, ref doc))) => {
                if let Document::Pipeline(p) = &doc.document {
                    let entry = Entry {
                        file,
                        line: doc.line,
                        version: doc.version.clone(),
                        value: p.clone(),
                    };
                    self.catalog.pipelines.insert(name.clone(), entry);
                }
            }
            (Kind::Schedule, Some((file, ref doc))) => {
                if let Document::Schedule(s) = &doc.document {
                    self.unrefer(name);
                    self.referrers
                        .entry(Arc::from(s.spec.pipeline.as_str()))
                        .or_default()
                        .insert(name.clone());
                    let entry = Entry {
                        file,
                        line: doc.line,
                        version: doc.version.clone(),
                        value: s.clone(),
                    };
                    self.catalog.schedules.insert(name.clone(), entry);
                }
            }
            (Kind::Pipeline, None) => {
                self.catalog.pipelines.remove(name);
            }
            (Kind::Schedule, None) => {
                self.unrefer(name);
                self.catalog.schedules.remove(name);
            }
        }
        if self.definers.get(key).is_some_and(BTreeSet::is_empty) {
            self.definers.remove(key);
        }
    }

    fn unrefer(&mut self, schedule: &Arc<str>) {
        if let Some(old) = self.catalog.schedules.get(schedule) {
            let target = old.value.spec.pipeline.as_str();
            if let Some(set) = self.referrers.get_mut(target) {
                set.remove(schedule);
                if set.is_empty() {
                    self.referrers.remove(target);
                }
            }
        }
    }

    /// Recomputes the cross-document findings of one document.
    fn check(&mut self, key: &DocumentKey) {
        let mut findings = FileFindings::new();
        let (kind, name) = key;
        let what = match kind {
            Kind::Pipeline => "pipeline",
            Kind::Schedule => "schedule",
        };
        // Every definition after the first is a duplicate, reported where it stands.
        let mut first: Option<(Arc<str>, u32)> = None;
        for path in self.definers.get(key).into_iter().flatten() {
            let Some(parsed) = self.files.get(path) else {
                continue;
            };
            for doc in parsed
                .documents
                .iter()
                .filter(|d| d.document.kind() == *kind && d.document.name() == name.as_ref())
            {
                match &first {
                    None => first = Some((path.clone(), doc.line)),
                    Some((file, line)) => {
                        let message = format!(
                            "{what} {name:?} is already defined in {file} (document at line {line})"
                        );
                        findings.push((
                            path.clone(),
                            Finding::error("duplicate-name", doc.line, "metadata.name", message),
                        ));
                    }
                }
            }
        }
        match kind {
            Kind::Pipeline => {
                if let Some(entry) = self.catalog.pipelines.get(name) {
                    check_images(&self.catalog.settings, entry, &mut findings);
                }
            }
            Kind::Schedule => {
                if let Some(entry) = self.catalog.schedules.get(name) {
                    check_schedule_target(&self.catalog, entry, &mut findings);
                }
            }
        }
        if findings.is_empty() {
            self.cross.remove(key);
        } else {
            self.cross.insert(key.clone(), findings);
        }
    }
}

fn keys_of(parsed: &ParsedFile) -> BTreeSet<DocumentKey> {
    parsed
        .documents
        .iter()
        .map(|d| (d.document.kind(), Arc::from(d.document.name())))
        .collect()
}

fn check_images(settings: &Settings, entry: &Entry<Pipeline>, findings: &mut FileFindings) {
    let spec = &entry.value.spec;
    if spec.image.is_some() || settings.image.is_some() {
        return;
    }
    let lists = [("steps", &spec.steps), ("finally", &spec.finally)];
    let steps = lists
        .into_iter()
        .flat_map(|(list, steps)| steps.iter().enumerate().map(move |(i, s)| (list, i, s)));
    for (list, i, step) in steps {
        if step.image.is_none() {
            let message = format!(
                "step {:?} has no image; set its image, the pipeline's spec.image, or image in trainyard.yaml",
                step.name
            );
            findings.push((
                entry.file.clone(),
                Finding::error(
                    "missing-image",
                    entry.line,
                    format!("spec.{list}[{i}]"),
                    message,
                ),
            ));
        }
    }
}

fn check_schedule_target(catalog: &Catalog, entry: &Entry<Schedule>, findings: &mut FileFindings) {
    let spec = &entry.value.spec;
    let Some(pipeline) = catalog.pipelines.get(spec.pipeline.as_str()) else {
        let hint = did_you_mean(&spec.pipeline, catalog.pipelines.keys().map(AsRef::as_ref));
        let message = format!(
            "schedule {:?} starts unknown pipeline {:?}",
            entry.value.metadata.name, spec.pipeline
        );
        findings.push((
            entry.file.clone(),
            Finding::error("unknown-pipeline", entry.line, "spec.pipeline", message)
                .with_hint(hint),
        ));
        return;
    };
    if let Err(problems) = resolve_params(&pipeline.value, &spec.params) {
        for problem in problems {
            let path = match problem.param {
                Some(name) => format!("spec.params.{name}"),
                None => "spec.params".to_owned(),
            };
            findings.push((
                entry.file.clone(),
                Finding::error("schedule-param", entry.line, path, problem.message)
                    .with_hint(problem.hint),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse_file;

    fn file(yaml: &str) -> Option<Arc<ParsedFile>> {
        Some(Arc::new(parse_file(yaml.as_bytes())))
    }

    fn pipeline(name: &str, image: &str) -> String {
        format!(
            "apiVersion: trainyard.dev/v1\nkind: Pipeline\nmetadata: {{name: {name}, owner: t}}\nspec: {{image: {image}, params: {{e: {{type: int, default: 1}}}}, steps: [{{name: s, run: [x]}}]}}\n"
        )
    }

    fn schedule(name: &str, pipeline: &str) -> String {
        format!(
            "apiVersion: trainyard.dev/v1\nkind: Schedule\nmetadata: {{name: {name}}}\nspec: {{pipeline: {pipeline}, cron: '@daily', params: {{e: 2}}}}\n"
        )
    }

    fn codes(assembly: &Assembly) -> BTreeSet<(String, String)> {
        assembly
            .cross_findings()
            .map(|(file, f)| (file.to_string(), f.code.clone()))
            .collect()
    }

    #[test]
    fn removing_the_first_definition_promotes_the_duplicate() {
        let mut a = Assembly::new(Settings::default());
        a.update(vec![
            (Arc::from("a.yaml"), file(&pipeline("p", "one"))),
            (Arc::from("b.yaml"), file(&pipeline("p", "two"))),
        ]);
        assert_eq!(
            codes(&a),
            BTreeSet::from([("b.yaml".to_owned(), "duplicate-name".to_owned())])
        );
        assert_eq!(a.catalog().pipelines["p"].file.as_ref(), "a.yaml");
        a.update(vec![(Arc::from("a.yaml"), None)]);
        assert!(codes(&a).is_empty());
        assert_eq!(a.catalog().pipelines["p"].file.as_ref(), "b.yaml");
    }

    #[test]
    fn a_schedule_is_rechecked_when_its_pipeline_changes() {
        let mut a = Assembly::new(Settings::default());
        a.update(vec![
            (Arc::from("p.yaml"), file(&pipeline("p", "i"))),
            (Arc::from("s.yaml"), file(&schedule("s", "p"))),
        ]);
        assert!(codes(&a).is_empty());
        let without_param =
            pipeline("p", "i").replace("params: {e: {type: int, default: 1}}, ", "");
        let touched = a.update(vec![(Arc::from("p.yaml"), file(&without_param))]);
        assert!(touched.contains(&(Kind::Schedule, Arc::from("s"))));
        assert_eq!(
            codes(&a),
            BTreeSet::from([("s.yaml".to_owned(), "schedule-param".to_owned())])
        );
        a.update(vec![(Arc::from("p.yaml"), None)]);
        assert_eq!(
            codes(&a),
            BTreeSet::from([("s.yaml".to_owned(), "unknown-pipeline".to_owned())])
        );
    }

    #[test]
    fn a_schedule_that_changes_target_leaves_its_old_pipeline() {
        let mut a = Assembly::new(Settings::default());
        a.update(vec![
            (
                Arc::from("p.yaml"),
                file(&format!(
                    "{}---\n{}",
                    pipeline("p", "i"),
                    pipeline("q", "i")
                )),
            ),
            (Arc::from("s.yaml"), file(&schedule("s", "p"))),
        ]);
        a.update(vec![(Arc::from("s.yaml"), file(&schedule("s", "q")))]);
        let touched = a.update(vec![(Arc::from("p.yaml"), file(&pipeline("q", "i")))]);
        assert!(
            touched.contains(&(Kind::Schedule, Arc::from("s"))),
            "q changed, so s is re-checked"
        );
        assert!(codes(&a).is_empty(), "{:?}", codes(&a));
    }
}
