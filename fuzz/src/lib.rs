//! Helpers the fuzz targets share: checking a set of files the way the service checks a
//! snapshot (each file on its own, then the catalog across files), with the invariants every
//! result must keep whatever the input.

use std::sync::Arc;

use trainyard::spec::{self, Catalog, Diagnostic, ParsedFile, Severity};

/// A snapshot as the targets build it: `trainyard.yaml` (if any) and document files.
pub struct Files<'a> {
    /// Content of `trainyard.yaml`.
    pub settings: Option<&'a [u8]>,
    /// Document files as (path, content).
    pub documents: Vec<(String, &'a [u8])>,
}

impl<'a> Files<'a> {
    /// Splits `data` at NUL bytes: the first part is `trainyard.yaml` when it is not empty,
    /// the next (at most eight) are document files.
    pub fn split(data: &'a [u8]) -> Self {
        let mut parts = data.split(|b| *b == 0);
        let settings = parts.next().filter(|p| !p.is_empty());
        let documents = parts
            .take(8)
            .enumerate()
            .map(|(i, part)| (format!("pipelines/f{i}.yaml"), part))
            .collect();
        Files {
            settings,
            documents,
        }
    }
}

/// What checking a snapshot gave.
pub struct Checked {
    /// The catalog after files with errors were dropped.
    pub catalog: Catalog,
    /// Every file parsed, by path.
    pub parsed: Vec<(Arc<str>, Arc<ParsedFile>)>,
    /// Every finding placed on its line.
    pub diagnostics: Vec<Diagnostic>,
}

/// Parses and checks `files` as the service does (without Git and policies), asserting the
/// invariants of the result.
pub fn check(files: &Files<'_>) -> Checked {
    let settings = files.settings.map(spec::parse_settings).unwrap_or_default();
    let parsed: Vec<(Arc<str>, Arc<ParsedFile>)> = files
        .documents
        .iter()
        .map(|(path, bytes)| (Arc::from(path.as_str()), Arc::new(spec::parse_file(bytes))))
        .collect();
    for (_, file) in &parsed {
        for doc in &file.documents {
            // The version is a sha256 in hex, and formatting-independent: the same document
            // always has the same version.
            assert_eq!(doc.version.len(), 64);
            assert_eq!(&*doc.version, spec::version_of(&doc.document));
        }
    }
    let (mut catalog, cross) = Catalog::assemble(settings.settings.clone(), &parsed);
    let mut findings: Vec<(Arc<str>, spec::Finding)> = settings
        .findings
        .iter()
        .map(|f| (Arc::from(spec::SETTINGS_FILE), f.clone()))
        .collect();
    for (path, file) in &parsed {
        findings.extend(file.findings.iter().map(|f| (path.clone(), f.clone())));
    }
    findings.extend(cross);
    let failed = findings
        .iter()
        .filter(|(_, f)| f.severity == Severity::Error)
        .map(|(file, _)| file.to_string())
        .collect();
    catalog.drop_failed(failed);
    // Nothing from a file with errors is in the catalog, and every entry names a given file.
    for entry in catalog.pipelines.values() {
        assert!(!catalog.failed_files.contains(entry.file.as_ref()));
        assert!(parsed.iter().any(|(p, _)| p == &entry.file));
    }
    for entry in catalog.schedules.values() {
        assert!(!catalog.failed_files.contains(entry.file.as_ref()));
        assert!(parsed.iter().any(|(p, _)| p == &entry.file));
    }
    let mut diagnostics = Vec::new();
    let mut contents: Vec<(&str, &[u8])> = files
        .documents
        .iter()
        .map(|(p, b)| (p.as_str(), *b))
        .collect();
    if let Some(bytes) = files.settings {
        contents.push((spec::SETTINGS_FILE, bytes));
    }
    for (path, bytes) in contents {
        let mine: Vec<spec::Finding> = findings
            .iter()
            .filter(|(p, _)| p.as_ref() == path)
            .map(|(_, f)| f.clone())
            .collect();
        if mine.is_empty() {
            continue;
        }
        let text = std::str::from_utf8(bytes).ok();
        let placed = Diagnostic::resolve(path, text, &mine);
        assert_eq!(placed.len(), mine.len());
        if let Some(text) = text {
            // Lines as YAML counts them: `\r\n`, `\n` or a lone `\r` ends one.
            let lines = text.replace("\r\n", "\n").split(['\n', '\r']).count() as u32;
            for d in &placed {
                assert!(
                    d.line <= lines,
                    "{d:?} is past the end of a {lines}-line file"
                );
                if d.line > 0 && d.line < lines {
                    assert!(d.source_line.is_some(), "{d:?} shows no source line");
                }
            }
        }
        diagnostics.extend(placed);
    }
    Checked {
        catalog,
        parsed,
        diagnostics,
    }
}
