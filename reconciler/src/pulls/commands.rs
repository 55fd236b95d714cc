//! Commands in pull request comments: finding the `/trainyard …` line in a comment's
//! markdown and reading it into a [`Command`], or into a [`CommandError`] whose message can be
//! posted back as the reply.

use std::collections::BTreeMap;
use std::fmt;

use thiserror::Error;

use crate::spec::check::name_problem;

/// The word that starts a command line.
const PREFIX: &str = "/trainyard";
/// Comments longer than this are not read past it, and a command in one is refused.
pub const MAX_BODY: usize = 64 * 1024;

/// The word of a run command that skips the step cache.
const NO_CACHE: &str = "--no-cache";

/// What a comment asks Trainyard to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run a preview of the pull request head's version of a pipeline.
    Run {
        /// The pipeline.
        pipeline: String,
        /// Parameters as written (typed against the pipeline's declaration later).
        params: BTreeMap<String, String>,
        /// `--no-cache`: run every step, reusing nothing from the step cache.
        no_cache: bool,
    },
    /// Validate and plan the pull request again.
    Plan,
    /// Explain the commands.
    Help,
}

/// The reply to `/trainyard help`, and the hint after a refused command.
pub const HELP: &str = "Commands, on a line of their own:\n\
    - `/trainyard run PIPELINE [key=value …] [--no-cache]` runs a preview of this pull \
    request's version of PIPELINE (quote values with spaces: `key=\"a b\"`; `--no-cache` \
    runs every step, even cached ones);\n\
    - `/trainyard plan` validates and plans this pull request again;\n\
    - `/trainyard help` shows this.";

/// Why a command line could not be read; the message is a sentence for the reply.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CommandError {
    /// The comment is longer than [`MAX_BODY`].
    #[error("The comment is longer than {limit} bytes, so its command was not read.")]
    TooLong {
        /// The limit in bytes.
        limit: usize,
    },
    /// `/trainyard` alone.
    #[error("`/trainyard` needs a command: `run PIPELINE [key=value …]`, `plan` or `help`.")]
    MissingSubcommand,
    /// A subcommand Trainyard does not know.
    #[error("`{0}` is not a Trainyard command; use `run`, `plan` or `help`.")]
    UnknownSubcommand(String),
    /// `run` without a pipeline.
    #[error("`/trainyard run` needs a pipeline name: `/trainyard run PIPELINE [key=value …]`.")]
    MissingPipeline,
    /// The pipeline name is not one a pipeline can have.
    #[error("`{name}` is not a pipeline name: {problem}.")]
    InvalidPipeline {
        /// The name given.
        name: String,
        /// What is wrong with it.
        problem: String,
    },
    /// An argument after the pipeline is not `key=value`.
    #[error("`{0}` is not a parameter; write parameters as `key=value`.")]
    NotKeyValue(String),
    /// A parameter name that no pipeline can declare.
    #[error(
        "`{0}` is not a parameter name: use lowercase letters, digits and '_', starting with a letter or '_'."
    )]
    InvalidKey(String),
    /// A parameter given twice.
    #[error("Parameter `{0}` is given twice; give each parameter once.")]
    DuplicateKey(String),
    /// A `"` without its closing partner.
    #[error("A quoted value is not closed; end it with `\"`.")]
    UnclosedQuote,
    /// Arguments after a command that takes none.
    #[error("`/trainyard {command}` takes no arguments, but got `{extra}`.")]
    UnexpectedArguments {
        /// The command.
        command: &'static str,
        /// The first extra argument.
        extra: String,
    },
}

/// Finds the command in a comment: the first line that starts with `/trainyard` (after at
/// most three spaces, as markdown allows before a paragraph), outside fenced or indented
/// code blocks and block quotes. `None` when there is none; only the first such line counts.
pub fn parse(body: &str) -> Option<Result<Command, CommandError>> {
    let too_long = body.len() > MAX_BODY;
    let mut end = body.len().min(MAX_BODY);
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    let line = command_line(&body[..end])?;
    if too_long {
        return Some(Err(CommandError::TooLong { limit: MAX_BODY }));
    }
    Some(parse_line(line))
}

/// The arguments of the first command line of `text`.
fn command_line(text: &str) -> Option<&str> {
    let mut fence: Option<(char, usize)> = None;
    for line in text.lines() {
        let indent = line.len() - line.trim_start_matches(' ').len();
        let trimmed = &line[indent..];
        if let Some((marker, length)) = fence {
            let run = trimmed.chars().take_while(|&c| c == marker).count();
            if indent <= 3 && run >= length && trimmed[run..].trim().is_empty() {
                fence = None;
            }
            continue;
        }
        if indent > 3 || trimmed.starts_with('\t') {
            continue;
        }
        for marker in ['`', '~'] {
            let run = trimmed.chars().take_while(|&c| c == marker).count();
            if run >= 3 {
                fence = Some((marker, run));
            }
        }
        if fence.is_some() {
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix(PREFIX)
            && (rest.is_empty() || rest.starts_with(char::is_whitespace))
        {
            return Some(rest);
        }
    }
    None
}

fn parse_line(args: &str) -> Result<Command, CommandError> {
    let words = split_words(args)?;
    let mut words = words.into_iter();
    let Some(sub) = words.next() else {
        return Err(CommandError::MissingSubcommand);
    };
    if sub.quoted {
        return Err(CommandError::UnknownSubcommand(sub.text));
    }
    match sub.text.as_str() {
        "run" => {
            let pipeline = words.next().ok_or(CommandError::MissingPipeline)?;
            if pipeline.text.contains('=') && !pipeline.quoted {
                return Err(CommandError::MissingPipeline);
            }
            if let Some(problem) = name_problem(&pipeline.text) {
                return Err(CommandError::InvalidPipeline {
                    name: pipeline.text,
                    problem,
                });
            }
            let mut params = BTreeMap::new();
            let mut no_cache = false;
            for word in words {
                if !word.quoted && word.text == NO_CACHE {
                    no_cache = true;
                    continue;
                }
                let Some((key, value)) = word.text.split_once('=') else {
                    return Err(CommandError::NotKeyValue(word.text));
                };
                if !is_param_name(key) {
                    return Err(CommandError::InvalidKey(key.to_owned()));
                }
                if params.insert(key.to_owned(), value.to_owned()).is_some() {
                    return Err(CommandError::DuplicateKey(key.to_owned()));
                }
            }
            Ok(Command::Run {
                pipeline: pipeline.text,
                params,
                no_cache,
            })
        }
        "plan" => no_more(words, "plan").map(|()| Command::Plan),
        "help" => no_more(words, "help").map(|()| Command::Help),
        _ => Err(CommandError::UnknownSubcommand(sub.text)),
    }
}

fn no_more(
    mut words: impl Iterator<Item = Word>,
    command: &'static str,
) -> Result<(), CommandError> {
    match words.next() {
        Some(extra) => Err(CommandError::UnexpectedArguments {
            command,
            extra: extra.text,
        }),
        None => Ok(()),
    }
}

/// A parameter name as pipelines declare them.
fn is_param_name(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c == '_' || c.is_ascii_lowercase())
        && chars.all(|c| c == '_' || c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// One argument, with its quotes removed.
struct Word {
    text: String,
    /// Whether any part of it was quoted.
    quoted: bool,
}

/// Splits on whitespace; `"…"` keeps whitespace inside a word, and within quotes `\"` and
/// `\\` stand for `"` and `\`.
fn split_words(line: &str) -> Result<Vec<Word>, CommandError> {
    let mut words = Vec::new();
    let mut current: Option<Word> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c.is_whitespace() {
            words.extend(current.take());
            continue;
        }
        let word = current.get_or_insert_with(|| Word {
            text: String::new(),
            quoted: false,
        });
        if c != '"' {
            word.text.push(c);
            continue;
        }
        word.quoted = true;
        loop {
            match chars.next() {
                None => return Err(CommandError::UnclosedQuote),
                Some('"') => break,
                Some('\\') => match chars.next() {
                    Some(escaped @ ('"' | '\\')) => word.text.push(escaped),
                    Some(other) => {
                        word.text.push('\\');
                        word.text.push(other);
                    }
                    None => return Err(CommandError::UnclosedQuote),
                },
                Some(other) => word.text.push(other),
            }
        }
    }
    words.extend(current);
    Ok(words)
}

/// Writes `value` so that [`parse`] reads it back unchanged.
fn write_value(out: &mut fmt::Formatter<'_>, value: &str) -> fmt::Result {
    let plain = !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '\\');
    if plain {
        return out.write_str(value);
    }
    out.write_str("\"")?;
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.write_str("\\")?;
        }
        write!(out, "{c}")?;
    }
    out.write_str("\"")
}

/// The command line that asks for this command, such as
/// `/trainyard run train lr=0.1 note="first try"`. Values holding line breaks cannot be
/// written on one line and do not read back.
impl fmt::Display for Command {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Run {
                pipeline,
                params,
                no_cache,
            } => {
                write!(out, "{PREFIX} run {pipeline}")?;
                for (key, value) in params {
                    write!(out, " {key}=")?;
                    write_value(out, value)?;
                }
                if *no_cache {
                    write!(out, " {NO_CACHE}")?;
                }
                Ok(())
            }
            Command::Plan => write!(out, "{PREFIX} plan"),
            Command::Help => write!(out, "{PREFIX} help"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(pipeline: &str, params: &[(&str, &str)]) -> Command {
        Command::Run {
            pipeline: pipeline.to_owned(),
            params: params
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            no_cache: false,
        }
    }

    #[test]
    fn no_cache_is_a_flag_anywhere_after_the_pipeline() {
        let fresh = Command::Run {
            pipeline: "iris".to_owned(),
            params: BTreeMap::from([("lr".to_owned(), "0.1".to_owned())]),
            no_cache: true,
        };
        for line in [
            "/trainyard run iris --no-cache lr=0.1",
            "/trainyard run iris lr=0.1 --no-cache",
        ] {
            assert_eq!(parse(line), Some(Ok(fresh.clone())), "{line}");
        }
        assert_eq!(fresh.to_string(), "/trainyard run iris lr=0.1 --no-cache");
        // Quoted, it is a word like any other, and not key=value.
        assert!(matches!(
            parse("/trainyard run iris \"--no-cache\""),
            Some(Err(CommandError::NotKeyValue(_)))
        ));
    }

    #[test]
    fn a_comment_without_a_command_holds_none() {
        for body in [
            "",
            "LGTM",
            "Try trainyard run train",
            "see /trainyard run train in the docs",
            "/trainyardrun train",
        ] {
            assert_eq!(parse(body), None, "{body:?}");
        }
    }

    #[test]
    fn run_plan_and_help_are_read() {
        assert_eq!(parse("/trainyard run train"), Some(Ok(run("train", &[]))));
        assert_eq!(parse("/trainyard plan"), Some(Ok(Command::Plan)));
        assert_eq!(parse("/trainyard help\r\n"), Some(Ok(Command::Help)));
        assert_eq!(
            parse("/trainyard   run  churn-model  lr=0.01   epochs=3 "),
            Some(Ok(run("churn-model", &[("epochs", "3"), ("lr", "0.01")])))
        );
    }

    #[test]
    fn quoted_values_keep_their_spaces_and_escapes() {
        assert_eq!(
            parse(r#"/trainyard run train note="first try" path="C:\\x" say="\"hi\"" empty="""#),
            Some(Ok(run(
                "train",
                &[
                    ("empty", ""),
                    ("note", "first try"),
                    ("path", "C:\\x"),
                    ("say", "\"hi\"")
                ]
            )))
        );
        assert_eq!(
            parse("/trainyard run train expr=a=b"),
            Some(Ok(run("train", &[("expr", "a=b")])))
        );
    }

    #[test]
    fn the_first_command_line_wins_and_may_be_indented_a_little() {
        let body = "Thanks!\n\n   /trainyard run train seed=1\n/trainyard plan\n";
        assert_eq!(parse(body), Some(Ok(run("train", &[("seed", "1")]))));
    }

    #[test]
    fn code_blocks_and_quotes_do_not_count() {
        let body = "> /trainyard run train\n\
                    ```\n/trainyard run train\n```\n\
                    ~~~~sh\n/trainyard run train\n~~~\n/trainyard run train\n~~~~\n\
                    \x20   /trainyard run train\n\
                    \t/trainyard run train\n\
                    /trainyard plan";
        assert_eq!(parse(body), Some(Ok(Command::Plan)));
        assert_eq!(parse("```\n/trainyard plan"), None);
    }

    #[test]
    fn malformed_commands_say_what_is_wrong() {
        let cases = [
            ("/trainyard", CommandError::MissingSubcommand),
            (
                "/trainyard deploy",
                CommandError::UnknownSubcommand("deploy".into()),
            ),
            (
                "/trainyard \"run\" x",
                CommandError::UnknownSubcommand("run".into()),
            ),
            ("/trainyard run", CommandError::MissingPipeline),
            ("/trainyard run lr=1", CommandError::MissingPipeline),
            (
                "/trainyard run train lr",
                CommandError::NotKeyValue("lr".into()),
            ),
            (
                "/trainyard run train LR=1",
                CommandError::InvalidKey("LR".into()),
            ),
            (
                "/trainyard run train =1",
                CommandError::InvalidKey(String::new()),
            ),
            (
                "/trainyard run train a=1 a=2",
                CommandError::DuplicateKey("a".into()),
            ),
            (
                "/trainyard run train note=\"open",
                CommandError::UnclosedQuote,
            ),
            (
                "/trainyard run train note=\"open\\",
                CommandError::UnclosedQuote,
            ),
            (
                "/trainyard plan now",
                CommandError::UnexpectedArguments {
                    command: "plan",
                    extra: "now".into(),
                },
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(parse(body), Some(Err(expected)), "{body:?}");
        }
        match parse("/trainyard run Train_Model") {
            Some(Err(error @ CommandError::InvalidPipeline { .. })) => {
                assert!(
                    error
                        .to_string()
                        .starts_with("`Train_Model` is not a pipeline name: ")
                );
            }
            other => panic!("expected an invalid pipeline, got {other:?}"),
        }
        let sentence = CommandError::DuplicateKey("a".into()).to_string();
        assert!(sentence.ends_with('.'), "{sentence}");
    }

    #[test]
    fn a_command_in_an_oversized_comment_is_refused_and_the_rest_is_not_read() {
        let mut body = String::from("/trainyard plan\n");
        body.push_str(&"x".repeat(MAX_BODY));
        assert_eq!(
            parse(&body),
            Some(Err(CommandError::TooLong { limit: MAX_BODY }))
        );
        let mut late = "é".repeat(MAX_BODY / 2 + 1);
        late.push_str("\n/trainyard plan");
        assert_eq!(parse(&late), None);
    }

    #[test]
    fn a_command_writes_the_line_that_asks_for_it() {
        let command = run(
            "train",
            &[("lr", "0.1"), ("note", "a \"b\" \\c"), ("x", "")],
        );
        assert_eq!(
            command.to_string(),
            r#"/trainyard run train lr=0.1 note="a \"b\" \\c" x="""#
        );
        assert_eq!(parse(&command.to_string()), Some(Ok(command)));
    }

    fn pipeline_name() -> impl Strategy<Value = String> {
        "[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?"
    }

    fn params() -> impl Strategy<Value = BTreeMap<String, String>> {
        prop::collection::btree_map("[a-z_][a-z0-9_]{0,15}", "[^\n\r]{0,24}", 0..6)
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_text_never_panics(body in any::<String>()) {
            let _ = parse(&body);
        }

        #[test]
        fn parsing_arbitrary_command_lines_never_panics(
            args in "[ a-z=\"\\\\\t`>~é-]{0,60}",
            lead in prop::sample::select(vec!["", " ", "    ", "> ", "```\n", "x\n"]),
        ) {
            let _ = parse(&format!("{lead}/trainyard{args}"));
        }

        #[test]
        fn a_written_run_command_reads_back_the_same(
            pipeline in pipeline_name(),
            params in params(),
            no_cache in any::<bool>(),
            before in "[a-zA-Z .,!]{0,40}",
        ) {
            let command = Command::Run { pipeline, params, no_cache };
            let body = format!("{before}\n{command}\nthanks");
            prop_assert_eq!(parse(&body), Some(Ok(command)));
        }
    }
}
