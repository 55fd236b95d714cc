//! The catalog: every pipeline and schedule of a revision by name, and the checks that need
//! more than one document (duplicate names, schedule → pipeline, params, images).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::ParsedFile;
use super::check::resolve_params;
use super::diag::{Finding, did_you_mean};
use super::model::{Document, Pipeline, Schedule, Settings};

/// A document in the catalog, with where it came from.
#[derive(Debug)]
pub struct Entry<T> {
    /// File path relative to the tracked directory.
    pub file: Arc<str>,
    /// Line of the document's root node in that file.
    pub line: u32,
    /// Content version (sha256 of the canonical form).
    pub version: String,
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
    pub pipelines: BTreeMap<String, Entry<Pipeline>>,
    /// Schedules by name.
    pub schedules: BTreeMap<String, Entry<Schedule>>,
    /// Files with errors: their documents are not in this catalog (a service keeps their
    /// last good version).
    pub failed_files: BTreeSet<String>,
}

/// A file's findings from checks across documents.
pub type FileFindings = Vec<(Arc<str>, Finding)>;

impl Catalog {
    /// Collects the documents of `files` (in path order; the first definition of a name wins)
    /// and checks what needs several documents. Returns every candidate document: the caller
    /// removes files that turn out to have errors with [`Catalog::drop_failed`].
    pub fn assemble(
        settings: Settings,
        files: &[(Arc<str>, Arc<ParsedFile>)],
    ) -> (Catalog, FileFindings) {
        let mut catalog = Catalog {
            settings,
            ..Catalog::default()
        };
        let mut findings: FileFindings = Vec::new();
        for (path, parsed) in files {
            for doc in &parsed.documents {
                match &doc.document {
                    Document::Pipeline(p) => {
                        let entry = Entry {
                            file: path.clone(),
                            line: doc.line,
                            version: doc.version.clone(),
                            value: p.clone(),
                        };
                        insert_unique(
                            &mut catalog.pipelines,
                            "pipeline",
                            &p.metadata.name,
                            entry,
                            &mut findings,
                        );
                    }
                    Document::Schedule(s) => {
                        let entry = Entry {
                            file: path.clone(),
                            line: doc.line,
                            version: doc.version.clone(),
                            value: s.clone(),
                        };
                        insert_unique(
                            &mut catalog.schedules,
                            "schedule",
                            &s.metadata.name,
                            entry,
                            &mut findings,
                        );
                    }
                }
            }
        }
        for entry in catalog.pipelines.values() {
            check_images(&catalog.settings, entry, &mut findings);
        }
        for entry in catalog.schedules.values() {
            check_schedule_target(&catalog, entry, &mut findings);
        }
        (catalog, findings)
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
        self.pipelines
            .retain(|_, e| !failed.contains(e.file.as_ref()));
        self.schedules
            .retain(|_, e| !failed.contains(e.file.as_ref()));
        self.failed_files = failed;
    }
}

fn insert_unique<T>(
    map: &mut BTreeMap<String, Entry<T>>,
    what: &str,
    name: &str,
    entry: Entry<T>,
    findings: &mut FileFindings,
) {
    if let Some(first) = map.get(name) {
        let message = format!(
            "{what} {name:?} is already defined in {} (document at line {})",
            first.file, first.line
        );
        findings.push((
            entry.file.clone(),
            Finding::error("duplicate-name", entry.line, "metadata.name", message),
        ));
        return;
    }
    map.insert(name.to_owned(), entry);
}

fn check_images(settings: &Settings, entry: &Entry<Pipeline>, findings: &mut FileFindings) {
    let spec = &entry.value.spec;
    if spec.image.is_some() || settings.image.is_some() {
        return;
    }
    for (i, step) in spec.steps.iter().enumerate() {
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
                    format!("spec.steps[{i}]"),
                    message,
                ),
            ));
        }
    }
}

fn check_schedule_target(catalog: &Catalog, entry: &Entry<Schedule>, findings: &mut FileFindings) {
    let spec = &entry.value.spec;
    let Some(pipeline) = catalog.pipelines.get(&spec.pipeline) else {
        let hint = did_you_mean(&spec.pipeline, catalog.pipelines.keys().map(String::as_str));
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
