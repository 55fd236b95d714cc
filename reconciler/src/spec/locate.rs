//! Maps field paths such as `spec.steps[1].needs[0]` to line and column in a YAML file.
//!
//! Built from the parser's events only for files that have something to report, so valid
//! files are parsed once. serde-saphyr exposes locations for its own errors but not a path
//! map for semantic ones, hence this small index.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_saphyr::granit_parser::{Event, Parser, Span, StrInput};

/// A position in a file: line and column, both counted from 1, columns in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Position {
    /// 1-based line.
    pub line: u32,
    /// 1-based column, in characters.
    pub column: u32,
}

/// Where a node sits: its value, the key that introduced it (for mapping values), and how
/// many characters of the line the value covers (for carets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node {
    /// Start of the value.
    pub value: Position,
    /// Characters the value spans on its first line, when it is a one-line scalar.
    pub width: Option<u32>,
    /// Start of the key, for mapping values.
    pub key: Option<Position>,
}

/// The nodes of every document in one file.
#[derive(Debug, Default)]
pub struct Index {
    documents: Vec<DocumentNodes>,
}

#[derive(Debug, Default)]
struct DocumentNodes {
    root_line: u32,
    nodes: HashMap<String, Node>,
}

enum Frame {
    Mapping {
        path: String,
        key: Option<(String, Position)>,
    },
    Sequence {
        path: String,
        next: usize,
    },
}

fn position(span: &Span) -> Position {
    Position {
        line: u32::try_from(span.start.line()).unwrap_or(u32::MAX),
        column: u32::try_from(span.start.col() + 1).unwrap_or(u32::MAX),
    }
}

fn width(span: &Span) -> Option<u32> {
    (span.start.line() == span.end.line())
        .then(|| u32::try_from(span.end.col().saturating_sub(span.start.col())).ok())
        .flatten()
        .filter(|w| *w > 0)
}

impl Index {
    /// Indexes `text`. A syntax error stops indexing there; what came before stays usable.
    pub fn build(text: &str) -> Index {
        let mut index = Index::default();
        let mut stack: Vec<Frame> = Vec::new();
        let parser: Parser<'_, StrInput<'_>> = Parser::new_from_str(text);
        for item in parser {
            let Ok((event, span)) = item else { break };
            match event {
                Event::DocumentStart(..) => {
                    stack.clear();
                    index.documents.push(DocumentNodes::default());
                }
                Event::Scalar(ref value, ..) => {
                    if let Some(Frame::Mapping {
                        key: key @ None, ..
                    }) = stack.last_mut()
                    {
                        *key = Some((value.to_string(), position(&span)));
                        continue;
                    }
                    index.record(&mut stack, &span, width(&span));
                }
                Event::Alias(_) => {
                    index.record(&mut stack, &span, width(&span));
                }
                Event::MappingStart(..) => {
                    let path = index.record(&mut stack, &span, None);
                    stack.push(Frame::Mapping { path, key: None });
                }
                Event::SequenceStart(..) => {
                    let path = index.record(&mut stack, &span, None);
                    stack.push(Frame::Sequence { path, next: 0 });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                    if let Some(Frame::Mapping { key, .. }) = stack.last_mut() {
                        *key = None;
                    }
                }
                _ => {}
            }
        }
        index
    }

    /// Records a value node under the path its parent frame gives it; returns that path.
    fn record(&mut self, stack: &mut [Frame], span: &Span, width: Option<u32>) -> String {
        let (path, key) = match stack.last_mut() {
            None => (String::new(), None),
            Some(Frame::Sequence { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                (p, None)
            }
            Some(Frame::Mapping { path, key }) => match key.take() {
                Some((k, at)) if path.is_empty() => (k, Some(at)),
                Some((k, at)) => (format!("{path}.{k}"), Some(at)),
                // A collection used as a key: give its contents a path nobody asks for.
                None => (format!("{path}.?"), None),
            },
        };
        let Some(doc) = self.documents.last_mut() else {
            return path;
        };
        if path.is_empty() {
            doc.root_line = position(span).line;
        }
        doc.nodes.entry(path.clone()).or_insert(Node {
            value: position(span),
            width,
            key,
        });
        path
    }

    /// The ordinal of the document whose root starts on `line`.
    pub fn document_at_line(&self, line: u32) -> Option<usize> {
        // Documents are indexed in file order, so their root lines ascend (an empty document
        // has none and breaks the order: then look at each).
        match self.documents.binary_search_by_key(&line, |d| d.root_line) {
            Ok(found) => Some(found),
            Err(_) => self.documents.iter().position(|d| d.root_line == line),
        }
    }

    /// The node at `path` in document `doc`, or its nearest recorded ancestor.
    pub fn find(&self, doc: usize, path: &str) -> Option<Node> {
        let nodes = &self.documents.get(doc)?.nodes;
        let mut path = path;
        loop {
            if let Some(node) = nodes.get(path) {
                return Some(*node);
            }
            if path.is_empty() {
                return None;
            }
            path = match path.rfind(['.', '[']) {
                Some(cut) => &path[..cut],
                None => "",
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "\
apiVersion: trainyard.dev/v1
kind: Pipeline
spec:
  steps:
    - name: prepare
    - name: train
      needs: [prepped, other]
---
kind: Schedule
spec: {cron: '* * *'}
";

    #[test]
    fn paths_resolve_to_the_value_with_one_based_line_and_column() {
        let index = Index::build(YAML);
        let node = index.find(0, "spec.steps[1].needs[0]").expect("found");
        assert_eq!(
            node.value,
            Position {
                line: 7,
                column: 15
            }
        );
        assert_eq!(node.width, Some(7));
        let name = index.find(0, "spec.steps[0].name").expect("found");
        assert_eq!(name.key, Some(Position { line: 5, column: 7 }));
        assert_eq!(
            name.value,
            Position {
                line: 5,
                column: 13
            }
        );
    }

    #[test]
    fn documents_are_told_apart_by_the_line_of_their_root() {
        let index = Index::build(YAML);
        assert_eq!(index.document_at_line(1), Some(0));
        assert_eq!(index.document_at_line(9), Some(1));
        let cron = index.find(1, "spec.cron").expect("found");
        assert_eq!(
            cron.value,
            Position {
                line: 10,
                column: 14
            }
        );
    }

    #[test]
    fn a_missing_path_falls_back_to_its_nearest_ancestor() {
        let index = Index::build(YAML);
        let node = index
            .find(0, "spec.steps[1].resources.gpu")
            .expect("ancestor");
        assert_eq!(node.value.line, 6);
    }

    #[test]
    fn broken_yaml_keeps_what_came_before_the_error() {
        let index = Index::build("a: 1\nb: [\n");
        assert_eq!(index.find(0, "a").map(|n| n.value.line), Some(1));
    }
}
