//! End-to-end tests of `trainyard schema`: the JSON Schemas it prints are valid JSON and
//! are the ones committed under `schemas/`.

use serde_json::Value;
use trainyard_tests::{TestResult, trainyard, workspace_root};

/// Checks that `trainyard schema <args>` prints a JSON Schema equal to the committed `file`.
fn matches_committed(args: &[&str], file: &str) -> TestResult {
    let root = workspace_root();
    let run = trainyard(&root, args)?;
    assert_eq!(run.code, Some(0), "{run}");
    let printed = run.json()?;
    assert!(
        printed.get("$schema").is_some() || printed.get("$defs").is_some(),
        "not a JSON Schema: {printed:#}"
    );
    let committed: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("schemas").join(file))?)?;
    assert!(
        printed == committed,
        "schemas/{file} is out of date; regenerate it with `trainyard {}`",
        args.join(" ")
    );
    Ok(())
}

#[test]
fn the_document_schema_is_the_committed_one() -> TestResult {
    matches_committed(&["schema", "document"], "document.schema.json")
}

#[test]
fn the_settings_schema_is_the_committed_one() -> TestResult {
    matches_committed(&["schema", "settings"], "settings.schema.json")
}

#[test]
fn the_document_schema_is_the_default() -> TestResult {
    let root = workspace_root();
    let default = trainyard(&root, &["schema"])?;
    let document = trainyard(&root, &["schema", "document"])?;
    assert_eq!(default.code, Some(0), "{default}");
    assert_eq!(default.stdout, document.stdout);
    Ok(())
}

#[test]
fn an_unknown_schema_is_a_usage_error() -> TestResult {
    let run = trainyard(&workspace_root(), &["schema", "pipeline"])?;
    assert_eq!(run.code, Some(2), "{run}");
    assert_eq!(run.stdout, "");
    Ok(())
}
