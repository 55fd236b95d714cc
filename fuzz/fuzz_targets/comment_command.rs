//! The comment-command parser on arbitrary text: it never panics, and a command it reads,
//! written back with `Display`, reads back as the same command, alone or inside a comment.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trainyard::pulls::commands::parse;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    let Some(Ok(command)) = parse(body) else {
        return;
    };
    let written = command.to_string();
    assert_eq!(
        parse(&written),
        Some(Ok(command.clone())),
        "{body:?} read as {command:?}, written as {written:?}"
    );
    let comment = format!("Looks good.\n\n{written}\nthanks");
    assert_eq!(parse(&comment), Some(Ok(command)), "{comment:?}");
});
