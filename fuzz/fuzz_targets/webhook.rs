//! The webhook parser on arbitrary bodies under a valid signature: `verify` accepts what
//! `sign` produced (and refuses it under another secret or for another body), and `parse`
//! never panics for any event name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trainyard::server::webhooks::{WebhookError, parse, sign, verify};

const SECRET: &[u8] = b"fuzzing-webhook-secret";
const EVENTS: &[&str] = &[
    "push",
    "pull_request",
    "issue_comment",
    "ping",
    "installation",
    "",
    "unknown",
];

fuzz_target!(|body: &[u8]| {
    let signature = sign(SECRET, body);
    assert_eq!(verify(SECRET, Some(&signature), body), Ok(()));
    assert_eq!(
        verify(b"another secret", Some(&signature), body),
        Err(WebhookError::SignatureMismatch)
    );
    let mut changed = body.to_vec();
    changed.push(b' ');
    assert_eq!(
        verify(SECRET, Some(&signature), &changed),
        Err(WebhookError::SignatureMismatch)
    );
    // The body read as a header value must not panic either.
    if let Ok(text) = std::str::from_utf8(body) {
        let _ = verify(SECRET, Some(text), body);
    }
    for event in EVENTS {
        match parse(event, body) {
            Ok(Some(delivery)) => {
                if let Some(repository) = &delivery.repository {
                    assert!(delivery.is_for(repository));
                }
            }
            Ok(None) => {}
            Err(error) => {
                let _ = error.to_string();
            }
        }
    }
});
