//! JSON Schemas of the documents and of `trainyard.yaml`, for editors (yaml-language-server).

use schemars::generate::SchemaSettings;
use serde_json::{Value, json};

use super::model::{API_VERSION, Metadata, PipelineSpec, ScheduleSpec, Settings};

fn document(kind: &str, metadata: Value, spec: Value) -> Value {
    json!({
        "type": "object",
        "title": kind,
        "additionalProperties": false,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": API_VERSION},
            "kind": {"const": kind},
            "metadata": metadata,
            "spec": spec,
        }
    })
}

/// The schema of one Trainyard document: a `Pipeline` or a `Schedule`.
pub fn documents() -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .for_deserialize()
        .into_generator();
    let metadata = generator.subschema_for::<Metadata>().to_value();
    let pipeline = generator.subschema_for::<PipelineSpec>().to_value();
    let schedule = generator.subschema_for::<ScheduleSpec>().to_value();
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://trainyard.dev/schemas/document.schema.json",
        "title": "Trainyard document",
        "oneOf": [
            document("Pipeline", metadata.clone(), pipeline),
            document("Schedule", metadata, schedule),
        ],
        "$defs": generator.take_definitions(true),
    })
}

/// The schema of `trainyard.yaml`.
pub fn settings() -> Value {
    let mut schema = SchemaSettings::draft2020_12()
        .for_deserialize()
        .into_generator()
        .into_root_schema_for::<Settings>()
        .to_value();
    if let Some(object) = schema.as_object_mut() {
        object.insert(
            "$id".into(),
            json!("https://trainyard.dev/schemas/settings.schema.json"),
        );
    }
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_schema_lists_both_kinds_and_forbids_unknown_fields() {
        let schema = documents();
        let kinds: Vec<&str> = schema["oneOf"]
            .as_array()
            .expect("oneOf")
            .iter()
            .filter_map(|d| d["properties"]["kind"]["const"].as_str())
            .collect();
        assert_eq!(kinds, ["Pipeline", "Schedule"]);
        assert_eq!(
            schema["$defs"]["Step"]["additionalProperties"],
            json!(false)
        );
        assert!(schema["$defs"]["Step"]["properties"]["run"].is_object());
    }

    #[test]
    fn committed_schemas_match_the_code() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas/");
        for (file, schema) in [
            ("document.schema.json", documents()),
            ("settings.schema.json", settings()),
        ] {
            let expected = serde_json::to_string_pretty(&schema).expect("serializes") + "\n";
            let committed = std::fs::read_to_string(format!("{root}{file}")).unwrap_or_default();
            assert!(
                committed == expected,
                "schemas/{file} is out of date; regenerate with `cargo run -- schema {}`",
                file.trim_end_matches(".schema.json")
            );
        }
    }
}
