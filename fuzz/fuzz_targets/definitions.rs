//! The definitions loader on arbitrary bytes: one file parsed and checked on its own, the
//! same bytes read as `trainyard.yaml`, and split at NUL bytes into a snapshot of files
//! checked across documents, with findings placed on their lines.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trainyard::spec;
use trainyard_fuzz::{Files, check};

fuzz_target!(|data: &[u8]| {
    let parsed = spec::parse_file(data);
    if std::str::from_utf8(data).is_err() {
        assert!(
            parsed.has_errors(),
            "bytes that are not UTF-8 must be refused"
        );
        assert!(parsed.documents.is_empty());
    }
    let _ = spec::parse_settings(data);
    check(&Files::split(data));
});
