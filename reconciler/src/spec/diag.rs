//! Diagnostics: what is wrong, where (file, line, column), and how to fix it; rendered in
//! the GNU/rustc short form for people and as JSON for tools.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::locate::{Index, Position};

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Blocks the commit: the file keeps its last good version.
    Error,
    /// Reported, changes nothing.
    Warning,
}

/// Where a finding points before it is resolved to a line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum At {
    /// The whole file.
    File,
    /// A position the parser reported.
    Position(Position),
    /// A field of a document, as a path like `spec.steps[0]`.
    Field {
        /// The line the document's root node starts on, which tells documents of a file apart.
        doc_line: u32,
        /// Dotted path with `[i]` for sequence items.
        path: String,
    },
}

/// A problem found in one file, before it is placed on a line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// Error or warning.
    pub severity: Severity,
    /// Stable identifier of the check, for tools and suppression (`unknown-step`).
    pub code: String,
    /// One sentence saying what is wrong, naming the offending value.
    pub message: String,
    /// How to fix it, when there is something useful to say.
    pub hint: Option<String>,
    /// Where.
    pub at: At,
}

impl Finding {
    /// An error at a field.
    pub fn error(
        code: &str,
        doc_line: u32,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Finding {
            severity: Severity::Error,
            code: code.to_owned(),
            message: message.into(),
            hint: None,
            at: At::Field {
                doc_line,
                path: path.into(),
            },
        }
    }

    /// An error about the whole file.
    pub fn file_error(code: &str, message: impl Into<String>) -> Self {
        Finding {
            severity: Severity::Error,
            code: code.to_owned(),
            message: message.into(),
            hint: None,
            at: At::File,
        }
    }

    /// Adds a hint.
    pub fn with_hint(mut self, hint: Option<String>) -> Self {
        self.hint = hint;
        self
    }

    /// Turns the finding into a warning.
    pub fn warning(mut self) -> Self {
        self.severity = Severity::Warning;
        self
    }
}

/// The lines of `text`, counted as YAML counts them: a lone `\r` ends a line too, so a file
/// with old Mac line endings shows the line its positions point at. Built once per file, so
/// placing many findings costs one pass over the text, not one per finding.
fn yaml_lines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let end = rest.find(['\n', '\r']).unwrap_or(rest.len());
        lines.push(&rest[..end]);
        let width = if rest[end..].starts_with("\r\n") {
            2
        } else {
            1
        };
        rest = rest.get(end + width..).unwrap_or("");
    }
    lines
}

/// A finding placed in its file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// Path relative to the tracked directory.
    pub file: String,
    /// 1-based line; 0 when the finding is about the whole file.
    pub line: u32,
    /// 1-based column in characters; 0 when the finding is about the whole file.
    pub column: u32,
    /// Identifier of the check.
    pub code: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// The source line, for the caret display.
    #[serde(skip)]
    pub source_line: Option<String>,
    /// Characters under the caret.
    #[serde(skip)]
    pub width: u32,
}

impl Diagnostic {
    /// Places findings of `file` on lines, indexing `text` only when a finding needs it;
    /// the result is in line order.
    pub fn resolve(file: &str, text: Option<&str>, findings: &[Finding]) -> Vec<Diagnostic> {
        let needs_index = findings.iter().any(|f| matches!(f.at, At::Field { .. }));
        let index = match (needs_index, text) {
            (true, Some(text)) => Some(Index::build(text)),
            _ => None,
        };
        let lines = text.map(yaml_lines).unwrap_or_default();
        let mut diagnostics: Vec<Diagnostic> = findings
            .iter()
            .map(|f| {
                let (pos, width) = match &f.at {
                    At::File => (None, 0),
                    At::Position(p) => (Some(*p), 1),
                    At::Field { doc_line, path } => {
                        let node = index.as_ref().and_then(|i| {
                            i.document_at_line(*doc_line).and_then(|d| i.find(d, path))
                        });
                        match node {
                            Some(node) => (Some(node.value), node.width.unwrap_or(1)),
                            None => (None, 0),
                        }
                    }
                };
                let source_line = pos
                    .and_then(|p| lines.get(usize::try_from(p.line).ok()?.checked_sub(1)?))
                    .map(|line| (*line).to_owned());
                Diagnostic {
                    severity: f.severity,
                    file: file.to_owned(),
                    line: pos.map_or(0, |p| p.line),
                    column: pos.map_or(0, |p| p.column),
                    code: f.code.clone(),
                    message: f.message.clone(),
                    hint: f.hint.clone(),
                    source_line,
                    width,
                }
            })
            .collect();
        diagnostics.sort_by_key(|d| (d.line, d.column));
        diagnostics
    }

    /// `file:line:col: error: message`, the source line with a caret, and the hint.
    pub fn render(&self) -> String {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let mut out = if self.line == 0 {
            format!("{}: {severity}: {}\n", self.file, self.message)
        } else {
            format!(
                "{}:{}:{}: {severity}: {}\n",
                self.file, self.line, self.column, self.message
            )
        };
        if let Some(source) = &self.source_line {
            let gutter = " ".repeat(self.line.to_string().len());
            let pad: String = source
                .chars()
                .take(self.column.saturating_sub(1) as usize)
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            let _ = writeln!(out, "{gutter} |");
            let _ = writeln!(out, "{} | {source}", self.line);
            let _ = writeln!(
                out,
                "{gutter} | {pad}{}",
                "^".repeat(self.width.max(1) as usize)
            );
        }
        if let Some(hint) = &self.hint {
            let _ = writeln!(out, "  = help: {hint}");
        }
        out
    }
}

/// The closest candidate to `wanted`, when it is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    wanted: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(wanted, c), c))
        .filter(|(similarity, _)| *similarity >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| format!("did you mean `{c}`?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_lines_are_counted_as_yaml_counts_them() {
        // Lines ended by a lone CR (old Mac files): YAML, and so every position, counts them.
        let text = "a: 1\rb: [\r\nc: 2\n";
        let at = |line| Finding {
            at: At::Position(Position { line, column: 1 }),
            ..Finding::file_error("yaml", "bad")
        };
        let lines: Vec<Option<String>> =
            Diagnostic::resolve("p.yaml", Some(text), &[at(2), at(3), at(4)])
                .into_iter()
                .map(|d| d.source_line)
                .collect();
        assert_eq!(
            lines,
            [Some("b: [".to_owned()), Some("c: 2".to_owned()), None]
        );
    }

    #[test]
    fn findings_of_many_documents_are_each_placed_in_their_own_document() {
        let mut text = String::from("---\n---\n");
        for i in 0..300 {
            text.push_str(&format!("---\nkind: Pipeline\nspec:\n  image: i{i}\n\n"));
        }
        let findings: Vec<Finding> = (0..300u32)
            .map(|i| Finding::error("image", 3 + 5 * i + 1, "spec.image", format!("bad {i}")))
            .collect();
        let placed = Diagnostic::resolve("p.yaml", Some(&text), &findings);
        assert_eq!(placed.len(), 300);
        for (i, d) in placed.iter().enumerate() {
            assert_eq!(d.line, 6 + 5 * i as u32, "{d:?}");
            assert_eq!(
                d.source_line.as_deref(),
                Some(format!("  image: i{i}").as_str())
            );
        }
    }

    #[test]
    fn lines_end_at_lf_crlf_and_lone_cr_and_a_final_newline_adds_none() {
        assert_eq!(yaml_lines("a\nb\r\nc\rd"), ["a", "b", "c", "d"]);
        assert_eq!(yaml_lines("a\n\n"), ["a", ""]);
        assert_eq!(yaml_lines("a\r\n"), ["a"]);
        assert!(yaml_lines("").is_empty());
    }

    #[test]
    fn rendering_uses_the_gnu_short_form_with_a_caret_under_the_value() {
        let text = "steps:\n  - name: train\n    needs: [prepped]\n";
        let finding = Finding::error(
            "unknown-step",
            1,
            "steps[0].needs[0]",
            "step \"train\" needs unknown step \"prepped\"",
        )
        .with_hint(Some("did you mean `prepare`?".into()));
        let diags = Diagnostic::resolve("p.yaml", Some(text), &[finding]);
        assert_eq!(
            diags[0].render(),
            "p.yaml:3:13: error: step \"train\" needs unknown step \"prepped\"\n  |\n3 |     needs: [prepped]\n  |             ^^^^^^^\n  = help: did you mean `prepare`?\n"
        );
    }

    #[test]
    fn file_level_findings_have_no_line() {
        let diags = Diagnostic::resolve(
            "big.yaml",
            None,
            &[Finding::file_error("too-large", "too big")],
        );
        assert_eq!(diags[0].render(), "big.yaml: error: too big\n");
        assert_eq!((diags[0].line, diags[0].column), (0, 0));
    }

    #[test]
    fn did_you_mean_only_suggests_close_names() {
        assert_eq!(
            did_you_mean("prepped", ["prepare", "train"]).as_deref(),
            Some("did you mean `prepare`?")
        );
        assert_eq!(did_you_mean("zzz", ["prepare", "train"]), None);
    }
}
