//! `{{ ... }}` templates inside argv elements and env values: parsing and substitution.
//!
//! A template is replaced inside one argv element and never splits it, so no value can
//! inject arguments; nothing is ever passed through a shell.

use std::fmt;

/// What a `{{ }}` placeholder refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// `{{ params.NAME }}`
    Param(String),
    /// `{{ outputs.NAME }}`: a file the step itself writes.
    Output(String),
    /// `{{ steps.STEP.outputs.NAME }}`: a file an ancestor step wrote.
    StepOutput {
        /// The producing step.
        step: String,
        /// Its output.
        output: String,
    },
    /// `{{ run.id }}`
    RunId,
    /// `{{ run.scheduled_time }}`: RFC 3339, or the start time for unscheduled runs.
    RunScheduledTime,
    /// `{{ run.state }}`: how the DAG ended (`succeeded`, `failed` or `cancelled`); only
    /// finally steps, which start after it ended, may read it.
    RunState,
    /// `{{ matrix.NAME }}`: this instance's value of a matrix axis of its step.
    Matrix(String),
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Param(p) => write!(f, "params.{p}"),
            Reference::Output(o) => write!(f, "outputs.{o}"),
            Reference::StepOutput { step, output } => write!(f, "steps.{step}.outputs.{output}"),
            Reference::RunId => f.write_str("run.id"),
            Reference::RunScheduledTime => f.write_str("run.scheduled_time"),
            Reference::RunState => f.write_str("run.state"),
            Reference::Matrix(m) => write!(f, "matrix.{m}"),
        }
    }
}

/// A piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Literal text.
    Text(String),
    /// A placeholder.
    Ref(Reference),
}

/// Splits `text` into literal pieces and placeholders.
pub fn parse(text: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            pieces.push(Piece::Text(rest[..open].to_owned()));
        }
        let after = &rest[open + 2..];
        let close = after.find("}}").ok_or_else(|| {
            format!("unclosed template in {text:?}: `{{{{` has no matching `}}}}`")
        })?;
        pieces.push(Piece::Ref(parse_reference(after[..close].trim())?));
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_owned()));
    }
    Ok(pieces)
}

/// The references a template makes, for checks that only need those.
pub fn references(text: &str) -> Result<Vec<Reference>, String> {
    Ok(parse(text)?
        .into_iter()
        .filter_map(|p| match p {
            Piece::Ref(r) => Some(r),
            Piece::Text(_) => None,
        })
        .collect())
}

/// Replaces every placeholder with what `resolve` returns for it.
pub fn render<E>(
    pieces: &[Piece],
    mut resolve: impl FnMut(&Reference) -> Result<String, E>,
) -> Result<String, E> {
    let mut out = String::new();
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Ref(r) => out.push_str(&resolve(r)?),
        }
    }
    Ok(out)
}

fn parse_reference(expr: &str) -> Result<Reference, String> {
    let parts: Vec<&str> = expr.split('.').collect();
    let ok_name = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    match parts.as_slice() {
        ["params", name] if ok_name(name) => Ok(Reference::Param((*name).to_owned())),
        ["outputs", name] if ok_name(name) => Ok(Reference::Output((*name).to_owned())),
        ["steps", step, "outputs", output] if ok_name(step) && ok_name(output) => {
            Ok(Reference::StepOutput {
                step: (*step).to_owned(),
                output: (*output).to_owned(),
            })
        }
        ["run", "id"] => Ok(Reference::RunId),
        ["run", "scheduled_time"] => Ok(Reference::RunScheduledTime),
        ["run", "state"] => Ok(Reference::RunState),
        ["matrix", name] if ok_name(name) => Ok(Reference::Matrix((*name).to_owned())),
        _ => Err(format!(
            "unknown template `{{{{ {expr} }}}}`; use params.NAME, outputs.NAME, \
             steps.STEP.outputs.NAME, matrix.NAME, run.id, run.scheduled_time or run.state"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_inside_one_element_keep_the_surrounding_text() {
        let pieces = parse("--lr={{ params.lr }}/x").expect("valid");
        assert_eq!(
            pieces,
            vec![
                Piece::Text("--lr=".into()),
                Piece::Ref(Reference::Param("lr".into())),
                Piece::Text("/x".into()),
            ]
        );
        let rendered: Result<String, ()> = render(&pieces, |_| Ok("a b; rm -rf /".into()));
        assert_eq!(rendered, Ok("--lr=a b; rm -rf //x".into()));
    }

    #[test]
    fn every_documented_form_parses() {
        let refs = references(
            "{{params.a}}{{ outputs.b }}{{ steps.s-1.outputs.c }}{{ run.id }}{{ run.scheduled_time }}{{ run.state }}",
        )
        .expect("valid");
        assert_eq!(refs.len(), 6);
        assert_eq!(refs[5], Reference::RunState);
        assert_eq!(
            refs[2],
            Reference::StepOutput {
                step: "s-1".into(),
                output: "c".into()
            }
        );
    }

    #[test]
    fn unknown_and_unclosed_templates_are_errors() {
        assert!(parse("{{ param.x }}").is_err());
        assert!(parse("{{ steps.a.model }}").is_err());
        assert!(parse("{{ params.x ").is_err());
        assert!(parse("{{ }}").is_err());
    }
}
