//! Indentation mistakes that the YAML parser lets through, found from its events and spans.
//!
//! serde-saphyr's parser (granit-parser 2.2) enforces indentation in block context but not
//! in two places, so a misplaced line parses into a different document and surfaces later as
//! a misleading semantic error, or not at all:
//!
//! - Continuation lines of a flow collection (`[a,` / `{a: 1,`) or of a multi-line quoted
//!   scalar may start anywhere, even left of the block they belong to. YAML 1.2 requires them
//!   to be indented more than that block (`s-flow-line-prefix(n)`; test suite cases 9C9N,
//!   QB6E, DK95/01). libyaml is as lax as serde-saphyr here, and files commonly close a flow
//!   collection at the column of its key (`env: {` … `}`), so only lines indented *less* than
//!   their block are refused: those are never valid YAML, and they are what a user gets when
//!   a line meant for an outer block is swallowed by an unclosed `[` or `"`.
//! - A tab in the indentation in front of a nested block collection (`a:\n  \tb: 1`, or
//!   `-\tb: 1`) is accepted, while YAML and libyaml allow only spaces there. The parser
//!   refuses such a tab in front of later entries of a block, and when the spaces before it
//!   do not indent the block past its parent, but not otherwise.
//!
//! Only these rules are checked; everything else is the parser's job. A parse error ends the
//! check.

use serde_saphyr::granit_parser::{Event, Parser, ScalarStyle, Span, StrInput, StructureStyle};

/// One indentation problem, at a 1-based line and column (in characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line.
    pub line: u32,
    /// 1-based column, in characters.
    pub column: u32,
    /// One sentence saying what is wrong.
    pub message: String,
    /// How to fix it, when there is something useful to say.
    pub hint: Option<String>,
}

/// A block collection: the column its entries start at (0-based) and the line it starts on.
#[derive(Debug, Clone, Copy)]
struct Block {
    column: usize,
    line: usize,
}

enum Frame {
    Block(Block),
    Flow,
}

/// A flow collection that is not inside another one, while its events are read.
struct FlowRegion {
    what: &'static str,
    start_line: usize,
    block: Option<Block>,
    /// Lines inside multi-line quoted scalars of the collection: there `#` is text, not a
    /// comment.
    quoted_lines: Vec<usize>,
}

/// The lines of a text as the parser counts them (`\n`, `\r\n` and `\r` end a line).
struct Lines<'a> {
    lines: Vec<&'a str>,
}

impl<'a> Lines<'a> {
    fn new(text: &'a str) -> Self {
        let mut lines = Vec::new();
        let mut start = 0;
        let bytes = text.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'\n' => {
                    lines.push(&text[start..i]);
                    start = i + 1;
                }
                b'\r' => {
                    lines.push(&text[start..i]);
                    if bytes.get(i + 1) == Some(&b'\n') {
                        i += 1;
                    }
                    start = i + 1;
                }
                _ => {}
            }
            i += 1;
        }
        lines.push(&text[start..]);
        Lines { lines }
    }

    /// Line `line` (1-based), or "" past the end.
    fn get(&self, line: usize) -> &'a str {
        line.checked_sub(1)
            .and_then(|i| self.lines.get(i))
            .copied()
            .unwrap_or("")
    }
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Finds the indentation problems of `text`, in file order. Empty for valid YAML.
pub fn check(text: &str) -> Vec<Problem> {
    let lines = Lines::new(text);
    let mut problems = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut region: Option<FlowRegion> = None;
    let parser: Parser<'_, StrInput<'_>> = Parser::new_from_str(text);
    for item in parser {
        let (event, span) = match item {
            Ok(item) => item,
            // A file without problems of ours leaves its syntax error to the deserializer,
            // which reports it the same way; one with problems reports the parser's error
            // too, since its documents will not be read.
            Err(error) => {
                if !problems.is_empty() {
                    problems.push(Problem {
                        line: to_u32(error.marker().line()),
                        column: to_u32(error.marker().col() + 1),
                        message: error.info(),
                        hint: None,
                    });
                }
                break;
            }
        };
        let enclosing = match stack.last() {
            Some(Frame::Block(block)) => Some(*block),
            _ => None,
        };
        let in_flow = matches!(stack.last(), Some(Frame::Flow));
        match event {
            Event::DocumentStart(..) => {
                stack.clear();
                region = None;
            }
            Event::MappingStart(style, ..) | Event::SequenceStart(style, ..) => {
                let mapping = matches!(event, Event::MappingStart(..));
                match style {
                    StructureStyle::Block => {
                        if enclosing.is_some()
                            && let Some(problem) = tab_before(&lines, &span)
                        {
                            problems.push(problem);
                        }
                        stack.push(Frame::Block(Block {
                            column: span.start.col(),
                            line: span.start.line(),
                        }));
                    }
                    StructureStyle::Flow => {
                        if !in_flow {
                            region = Some(FlowRegion {
                                what: if mapping {
                                    "flow mapping"
                                } else {
                                    "flow sequence"
                                },
                                start_line: span.start.line(),
                                block: enclosing,
                                quoted_lines: Vec::new(),
                            });
                        }
                        stack.push(Frame::Flow);
                    }
                }
            }
            Event::MappingEnd | Event::SequenceEnd => {
                let closed_flow = matches!(stack.pop(), Some(Frame::Flow));
                let still_in_flow = matches!(stack.last(), Some(Frame::Flow));
                if closed_flow
                    && !still_in_flow
                    && let Some(flow) = region.take()
                {
                    let continuation = flow.start_line + 1..=span.end.line();
                    let is_comment = |line: usize| {
                        !flow.quoted_lines.contains(&line)
                            && lines
                                .get(line)
                                .trim_start_matches([' ', '\t'])
                                .starts_with('#')
                    };
                    problems.extend(under_indented(
                        &lines,
                        continuation,
                        flow.block,
                        flow.what,
                        flow.start_line,
                        is_comment,
                    ));
                }
            }
            Event::Scalar(_, style, ..) if span.end.line() > span.start.line() => {
                let what = match style {
                    ScalarStyle::Plain => "plain scalar",
                    ScalarStyle::SingleQuoted | ScalarStyle::DoubleQuoted => "quoted scalar",
                    // Block scalars end at the first line indented less than their content.
                    _ => continue,
                };
                let continuation = span.start.line() + 1..=span.end.line();
                if let Some(flow) = region.as_mut().filter(|_| in_flow) {
                    if what == "quoted scalar" {
                        flow.quoted_lines.extend(continuation);
                    }
                } else {
                    // Inside a scalar every line is text: none is a comment.
                    problems.extend(under_indented(
                        &lines,
                        continuation,
                        enclosing,
                        what,
                        span.start.line(),
                        |_| false,
                    ));
                }
            }
            _ => {}
        }
    }
    problems.sort_by_key(|p| (p.line, p.column));
    problems
}

/// The first line of `continuation` that starts left of `block`, ignoring blank lines and
/// lines `is_comment` accepts. Top-level values have no block and may use any indentation.
fn under_indented(
    lines: &Lines<'_>,
    continuation: std::ops::RangeInclusive<usize>,
    block: Option<Block>,
    what: &str,
    start_line: usize,
    is_comment: impl Fn(usize) -> bool,
) -> Option<Problem> {
    let block = block?;
    continuation.into_iter().find_map(|line| {
        let text = lines.get(line);
        // Only spaces indent: a tab after fewer spaces does not make up for them.
        let spaces = text.len() - text.trim_start_matches(' ').len();
        let blank = text.trim_start_matches([' ', '\t']).is_empty();
        (spaces < block.column && !blank && !is_comment(line)).then(|| Problem {
            line: to_u32(line),
            column: to_u32(spaces + 1),
            message: format!(
                "this line is indented less than the block it belongs to (line {}); \
                 it continues the {what} that starts on line {start_line}",
                block.line
            ),
            hint: Some(format!(
                "indent it further than line {}, or close the {what} on the line it starts",
                block.line
            )),
        })
    })
}

/// A tab in the indentation in front of the first entry of a nested block collection:
/// between the start of its line, or the `-`, `?` or `:` indicator before it, and the entry.
fn tab_before(lines: &Lines<'_>, span: &Span) -> Option<Problem> {
    let column = span.start.col();
    let before: Vec<char> = lines.get(span.start.line()).chars().take(column).collect();
    let gap = before
        .iter()
        .rev()
        .take_while(|c| **c == ' ' || **c == '\t')
        .count();
    let gap_start = before.len() - gap;
    let after_indicator = gap_start == 0 || matches!(before[gap_start - 1], '-' | '?' | ':');
    let tab = before[gap_start..].iter().position(|c| *c == '\t')?;
    after_indicator.then(|| Problem {
        line: to_u32(span.start.line()),
        column: to_u32(gap_start + tab + 1),
        message: "a tab indents this block; YAML indents with spaces only".to_owned(),
        hint: Some("replace the tab with spaces".to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Vec<(u32, u32)> {
        check(text).iter().map(|p| (p.line, p.column)).collect()
    }

    #[test]
    fn lines_are_split_like_the_parser_splits_them() {
        let lines = Lines::new("a\r\nb\rc\n\nd");
        assert_eq!(lines.lines, ["a", "b", "c", "", "d"]);
        assert_eq!(lines.get(0), "");
        assert_eq!(lines.get(9), "");
    }

    #[test]
    fn flow_and_quoted_continuations_left_of_their_block_are_found() {
        assert_eq!(at("a:\n  b: [1,\n 2]\n"), [(3, 2)]);
        assert_eq!(at("a:\n  b: {x: 1,\ny: 2}\n"), [(3, 1)]);
        assert_eq!(at("a:\n  b: \"x\n y\"\n"), [(3, 2)]);
        assert_eq!(at("a:\n  b: 'x\n\ty'\n"), [(3, 1)]);
        // Nested flow collections are one region: its first bad line is reported once.
        assert_eq!(at("a:\n  b: [[1,\n 2],\n 3]\n"), [(3, 2)]);
        // A `#` inside a quoted scalar is text, even inside a flow collection.
        assert_eq!(at("a:\n  b: [\"x\n#y\"]\n"), [(3, 1)]);
    }

    #[test]
    fn legal_continuations_are_not_reported() {
        for text in [
            "a:\n  b: [1,\n   2]\n",
            // At the block's column: not YAML 1.2, but libyaml and common style accept it.
            "a:\n  b: {\n    x: 1\n  }\n",
            "{x: 1,\ny: 2}\n",
            "- [1,\n  2]\n",
            "a:\n  b: [1,\n# comment\n\n   2]\n",
            "a:\n  b: \"x\n\n   y\"\n",
            "a:\n  b: x\n   y\n",
            "a:\n  b: |\n    x\n   y\n",
            "\"x\ny\"\n",
        ] {
            assert_eq!(at(text), [], "{text:?}");
        }
    }

    #[test]
    fn tabs_in_front_of_a_nested_block_are_found() {
        assert_eq!(at("a:\n  \tb: 1\n"), [(2, 3)]);
        assert_eq!(at("a:\n  \t- c\n"), [(2, 3)]);
        assert_eq!(at("a:\n  -\tb: 1\n"), [(2, 4)]);
        assert_eq!(at("a:\n  - \tb: 1\n"), [(2, 5)]);
        // With a problem of ours, the parser's own error after it is reported as well.
        assert_eq!(at("a:\n  \tb: 1\n c: 2\n"), [(2, 3), (3, 2)]);
        assert_eq!(at("a: 1\n b: 2\n"), []);
        for text in [
            " \tfoo: 1\n",
            "a:\n  - \tb\n",
            "a:\t1\n",
            "a:\n  &x\tb: 1\n",
            "a: 1\n\t\nb: 2\n",
        ] {
            assert_eq!(at(text), [], "{text:?}");
        }
    }
}
