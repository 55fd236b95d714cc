//! The Rego input builder: a snapshot of files (split at NUL bytes) checked into a catalog,
//! each pipeline and schedule turned into its policy input, which must serialize to JSON and
//! carry the facts derived from the document; the input is then
//! evaluated with the platform bundle, which must not fail on any checked catalog.
#![no_main]

use std::cell::RefCell;

use chrono::{DateTime, Utc};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use trainyard::policy::{pipeline_input, schedule_input};
use trainyard_fuzz::{Files, check};
use trainyard_policies::{Evaluator, PolicyConfig};

thread_local! {
    static EVALUATOR: RefCell<Evaluator> = RefCell::new(
        Evaluator::new(&PolicyConfig::default()).expect("the platform bundle loads"),
    );
}

fuzz_target!(|data: &[u8]| {
    let checked = check(&Files::split(data));
    let catalog = &checked.catalog;
    let settings = &catalog.settings;
    let now = DateTime::<Utc>::from_timestamp(1_767_225_600, 0).expect("in range");
    let mut pipelines = Vec::new();
    for (name, entry) in &catalog.pipelines {
        let input = pipeline_input(entry, settings);
        assert_eq!(input["name"], json!(name.as_ref()));
        let gpus = entry
            .value
            .spec
            .steps
            .iter()
            .filter_map(|s| s.resources.as_ref().map(|r| r.gpu))
            .max()
            .unwrap_or(0);
        assert_eq!(input["facts"]["gpus"], json!(gpus));
        let images = input["facts"]["images"].as_array().expect("a list");
        assert!(images.len() <= entry.value.spec.steps.len());
        pipelines.push(round_trip(input));
    }
    let mut schedules = Vec::new();
    for (name, entry) in &catalog.schedules {
        let target = catalog.pipelines.get(entry.value.spec.pipeline.as_str());
        let input = schedule_input(entry, target, settings, now);
        assert_eq!(input["name"], json!(name.as_ref()));
        assert_eq!(input["pipeline"].is_null(), target.is_none());
        if let Some(seconds) = input["facts"]["min_interval_seconds"].as_u64() {
            assert!(seconds > 0, "{name}: fires twice in the same second");
        }
        schedules.push(round_trip(input));
    }
    let input = json!({"pipelines": pipelines, "schedules": schedules});
    let violations = EVALUATOR
        .with(|e| e.borrow_mut().evaluate(&input))
        .expect("the platform rules evaluate any checked catalog");
    for v in violations {
        let known = match v.kind.as_str() {
            "Pipeline" => catalog.pipelines.contains_key(v.name.as_str()),
            _ => catalog.schedules.contains_key(v.name.as_str()),
        };
        assert!(known, "a violation for a document not in the input: {v:?}");
    }
});

/// The input must serialize (the service logs it when a rule fails) and read back as JSON.
fn round_trip(input: Value) -> Value {
    let text = serde_json::to_string(&input).expect("serializes");
    let back: Value = serde_json::from_str(&text).expect("reads back");
    assert_eq!(back["name"], input["name"]);
    input
}
