//! Holds real responses to the schemas of the OpenAPI document.

use std::sync::OnceLock;

use serde_json::{Value, json};

fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let text = include_str!("../../openapi.json");
        serde_json::from_str(text).expect("openapi.json is JSON")
    })
}

/// Asserts that `value` matches `components/schemas/{name}`.
pub fn assert_schema(name: &str, value: &Value) {
    let doc = document();
    assert!(
        doc["components"]["schemas"].get(name).is_some(),
        "no schema {name}"
    );
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": format!("#/components/schemas/{name}"),
        "components": doc["components"],
    });
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("the schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{name} does not match:\n{}\n{value:#}",
        errors.join("\n")
    );
}
