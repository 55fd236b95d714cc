//! The repository format: parsing YAML files into typed documents and checking them, with
//! every problem placed at its file, line and column. No I/O: callers hand in bytes.

pub mod catalog;
pub mod check;
pub mod cron;
pub mod diag;
pub mod layout;
pub mod locate;
pub mod model;
pub mod schema;
pub mod template;
pub mod units;

use serde_saphyr::{Budget, DuplicateKeyPolicy, Options, Spanned};
use std::sync::Arc;

use sha2::{Digest, Sha256};

pub use catalog::{Catalog, Entry};
pub use diag::{At, Diagnostic, Finding, Severity};
pub use locate::Position;
pub use model::{API_VERSION, CachePolicy, Document, Kind, Pipeline, Schedule, Settings};

use model::RawDocument;

/// Largest file read; larger ones are refused before parsing.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Name of the repository settings file at the root of the tracked path.
pub const SETTINGS_FILE: &str = "trainyard.yaml";
/// Deepest nesting of YAML collections accepted.
pub const MAX_DEPTH: usize = 64;

/// A document that parsed, with where it starts and its content version.
#[derive(Debug, Clone)]
pub struct ParsedDocument {
    /// Line of the document's root node, which identifies it within the file.
    pub line: u32,
    /// The typed document.
    pub document: Document,
    /// sha256 of the document's canonical JSON form: formatting and comments do not change it.
    pub version: Arc<str>,
}

/// One file, parsed and checked on its own.
#[derive(Debug, Clone, Default)]
pub struct ParsedFile {
    /// Documents that deserialized, in file order.
    pub documents: Vec<ParsedDocument>,
    /// Problems found in the file itself.
    pub findings: Vec<Finding>,
}

impl ParsedFile {
    /// Whether any finding is an error.
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Error)
    }

    fn refused(finding: Finding) -> Self {
        ParsedFile {
            documents: Vec::new(),
            findings: vec![finding],
        }
    }
}

fn options() -> Options {
    let mut budget = Budget::default();
    budget.max_depth = MAX_DEPTH;
    budget.max_aliases = 1_000;
    budget.max_anchors = 1_000;
    budget.max_events = 500_000;
    budget.max_documents = 10_000;
    budget.max_total_scalar_bytes = MAX_FILE_BYTES as usize;
    budget.max_reader_input_bytes = Some(MAX_FILE_BYTES as usize);
    let mut options = Options::default();
    options.budget = Some(budget);
    options.duplicate_keys = DuplicateKeyPolicy::Error;
    options.with_snippet = false;
    options.alias_limits.max_total_replayed_events = 100_000;
    options.alias_limits.max_alias_expansions_per_anchor = 1_000;
    options
}

/// The text of a file, or a finding saying why it is not readable text.
pub fn decode(bytes: &[u8]) -> Result<&str, Finding> {
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(Finding::file_error(
            "file-too-large",
            format!(
                "file is {} bytes; the limit is {MAX_FILE_BYTES} bytes",
                bytes.len()
            ),
        ));
    }
    std::str::from_utf8(bytes).map_err(|e| {
        let valid = &bytes[..e.valid_up_to()];
        let line = valid.iter().filter(|b| **b == b'\n').count() + 1;
        let line_start = valid.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
        let column = String::from_utf8_lossy(&valid[line_start..])
            .chars()
            .count()
            + 1;
        Finding {
            at: At::Position(Position {
                line: u32::try_from(line).unwrap_or(u32::MAX),
                column: u32::try_from(column).unwrap_or(u32::MAX),
            }),
            ..Finding::file_error("not-utf8", "file is not UTF-8 text")
        }
    })
}

/// Turns a serde-saphyr error into a finding at its position.
fn yaml_finding(error: &serde_saphyr::Error) -> Finding {
    let error = error.without_snippet();
    let mut message = error.to_string();
    // The position goes into the diagnostic's prefix; keep the message a plain sentence.
    if let Some(cut) = message.find(" at line ") {
        message.truncate(cut);
    }
    use serde_saphyr::Error as E;
    let code = match error {
        E::Budget { .. }
        | E::AliasReplayCounterOverflow { .. }
        | E::AliasReplayLimitExceeded { .. }
        | E::AliasExpansionLimitExceeded { .. }
        | E::AliasReplayStackDepthExceeded { .. } => "yaml-limit",
        // Limits reported as plain messages: the scanner's nesting guard (hit before the
        // depth budget on very deep input) and alias replay in the streaming reader.
        _ if message.contains("limit exceeded") || message.contains("budget breached") => {
            "yaml-limit"
        }
        E::SerdeUnknownField { .. } => "unknown-field",
        _ => "yaml",
    };
    let at = match error.location() {
        Some(loc) if loc.line() > 0 => At::Position(Position {
            line: u32::try_from(loc.line()).unwrap_or(u32::MAX),
            column: u32::try_from(loc.column()).unwrap_or(u32::MAX).max(1),
        }),
        _ => At::File,
    };
    Finding {
        at,
        ..Finding::file_error(code, message)
    }
}

/// Turns an indentation problem the parser let through into a syntax finding.
fn layout_finding(problem: layout::Problem) -> Finding {
    Finding {
        at: At::Position(Position {
            line: problem.line,
            column: problem.column,
        }),
        hint: problem.hint,
        ..Finding::file_error("yaml", problem.message)
    }
}

/// The syntax errors of `text` that the parser does not report itself (see [`layout`]).
/// A file with any of them yields only them: what the parser made of the misplaced lines is
/// not what the author meant, so its semantic findings would point elsewhere.
fn layout_findings(text: &str) -> Vec<Finding> {
    layout::check(text)
        .into_iter()
        .map(layout_finding)
        .collect()
}

/// The version of a document: the sha256 of its canonical JSON form.
pub fn version_of(document: &Document) -> String {
    let json = match document {
        Document::Pipeline(p) => serde_json::to_vec(&("Pipeline", p.as_ref())),
        Document::Schedule(s) => serde_json::to_vec(&("Schedule", s.as_ref())),
    };
    let digest = Sha256::digest(json.unwrap_or_default());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Deserializes every document of `text`. The string API is about twice as fast as the
/// streaming one, so it is tried first; only a file with an error is read again document by
/// document, so that one bad document does not hide the problems of the next.
fn deserialize_documents(text: &str, findings: &mut Vec<Finding>) -> Vec<Spanned<RawDocument>> {
    if let Ok(documents) = serde_saphyr::from_multiple_with_options(text, options()) {
        return documents;
    }
    let mut reader = text.as_bytes();
    let mut documents = Vec::new();
    for item in serde_saphyr::read_with_options::<_, Spanned<RawDocument>>(&mut reader, options()) {
        match item {
            Ok(document) => documents.push(document),
            Err(error) => findings.push(yaml_finding(&error)),
        }
    }
    documents
}

/// Parses and checks one YAML file of documents.
pub fn parse_file(bytes: &[u8]) -> ParsedFile {
    let text = match decode(bytes) {
        Ok(text) => text,
        Err(finding) => return ParsedFile::refused(finding),
    };
    let misplaced = layout_findings(text);
    if !misplaced.is_empty() {
        return ParsedFile {
            documents: Vec::new(),
            findings: misplaced,
        };
    }
    let mut parsed = ParsedFile::default();
    for raw in deserialize_documents(text, &mut parsed.findings) {
        let line = u32::try_from(raw.referenced.line()).unwrap_or(u32::MAX);
        let RawDocument {
            api_version,
            kind,
            document,
        } = raw.value;
        match api_version.as_deref() {
            Some(API_VERSION) => {}
            Some(other) => parsed.findings.push(Finding::error(
                "api-version",
                line,
                "apiVersion",
                format!("apiVersion {other:?} is not supported; use {API_VERSION}"),
            )),
            None => parsed.findings.push(Finding::error(
                "api-version",
                line,
                "",
                format!("document has no apiVersion; add `apiVersion: {API_VERSION}`"),
            )),
        }
        let Some(document) = document else {
            let message = match kind {
                Some(kind) => {
                    format!("unknown kind {kind:?}; Trainyard reads Pipeline and Schedule")
                }
                None => "document has no kind; add `kind: Pipeline` or `kind: Schedule`".to_owned(),
            };
            let path = if message.starts_with("unknown") {
                "kind"
            } else {
                ""
            };
            parsed
                .findings
                .push(Finding::error("unknown-kind", line, path, message));
            continue;
        };
        match &document {
            Document::Pipeline(p) => check::check_pipeline(p, line, &mut parsed.findings),
            Document::Schedule(s) => check::check_schedule(s, line, &mut parsed.findings),
        }
        let version = Arc::from(version_of(&document));
        parsed.documents.push(ParsedDocument {
            line,
            document,
            version,
        });
    }
    parsed
}

/// `trainyard.yaml`, parsed and checked.
#[derive(Debug, Clone, Default)]
pub struct ParsedSettings {
    /// The settings, or defaults when the file is empty or unreadable.
    pub settings: Settings,
    /// Line of the root node, for findings about its fields.
    pub line: u32,
    /// Problems found.
    pub findings: Vec<Finding>,
}

/// Parses and checks `trainyard.yaml`.
pub fn parse_settings(bytes: &[u8]) -> ParsedSettings {
    let text = match decode(bytes) {
        Ok(text) => text,
        Err(finding) => {
            return ParsedSettings {
                findings: vec![finding],
                ..ParsedSettings::default()
            };
        }
    };
    let misplaced = layout_findings(text);
    if !misplaced.is_empty() {
        return ParsedSettings {
            findings: misplaced,
            ..ParsedSettings::default()
        };
    }
    match serde_saphyr::from_str_with_options::<Option<Spanned<Settings>>>(text, options()) {
        Ok(None) => ParsedSettings::default(),
        Ok(Some(settings)) => {
            let mut findings = Vec::new();
            let line = u32::try_from(settings.referenced.line()).unwrap_or(u32::MAX);
            check::check_settings(&settings.value, line, &mut findings);
            ParsedSettings {
                settings: settings.value,
                line,
                findings,
            }
        }
        Err(error) => ParsedSettings {
            findings: vec![yaml_finding(&error)],
            ..ParsedSettings::default()
        },
    }
}

#[cfg(test)]
mod tests;
