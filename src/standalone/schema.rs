//! The checks the API server makes from the CRD's OpenAPI schema before it runs the CEL rules:
//! enumerations, string lengths and list lengths. Standalone mode makes them first too, on the
//! document as read, so that a huge value is refused before defaulting and CEL evaluation copy
//! it over and over.
//!
//! Pure: a schema (the CRD's `openAPIV3Schema`, as JSON) and a document in, the first problem
//! out.

use serde_json::Value;

use crate::api::text::{cut, quote};

/// What is wrong, and where: `spec.members[0].state`.
#[derive(Debug, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

/// Checks a whole document against the CRD's root schema. `apiVersion`, `kind` and `metadata`
/// are the caller's to check: the root schema of a CRD leaves them out.
pub fn check(root: &Value, document: &Value) -> Result<(), Problem> {
    let (Some(properties), Some(fields)) = (
        root.get("properties").and_then(Value::as_object),
        document.as_object(),
    ) else {
        return Ok(());
    };
    for (name, value) in fields {
        if let Some(schema) = properties.get(name) {
            walk(schema, value, name.clone())?;
        }
    }
    Ok(())
}

fn walk(schema: &Value, value: &Value, path: String) -> Result<(), Problem> {
    if value.is_null() {
        // Whether a null is allowed is for deserialization to say.
        return Ok(());
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let names: Vec<String> = allowed.iter().map(show).collect();
        return Err(Problem {
            field: path,
            message: format!("must be one of {}; found {}", names.join(", "), show(value)),
        });
    }
    match value {
        Value::String(text) => {
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
                let length = text.chars().count();
                if u64::try_from(length).unwrap_or(u64::MAX) > max {
                    return Err(Problem {
                        field: path,
                        message: format!(
                            "may be at most {max} characters long; found {}",
                            quote(text)
                        ),
                    });
                }
            }
        }
        Value::Array(items) => {
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                && u64::try_from(items.len()).unwrap_or(u64::MAX) > max
            {
                return Err(Problem {
                    field: path,
                    message: format!("may hold at most {max} items; found {}", items.len()),
                });
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    walk(item_schema, item, format!("{path}[{i}]"))?;
                }
            }
        }
        Value::Object(fields) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|s| s.is_object());
            for (name, field) in fields {
                let field_schema = properties.and_then(|p| p.get(name)).or(additional);
                if let Some(field_schema) = field_schema {
                    walk(field_schema, field, format!("{path}.{name}"))?;
                }
            }
        }
        Value::Bool(_) | Value::Number(_) | Value::Null => {}
    }
    Ok(())
}

/// A value as a message shows it: strings quoted, anything else as JSON, cut when long.
fn show(value: &Value) -> String {
    match value {
        Value::String(text) => quote(text),
        other => cut(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "properties": {
                        "members": {
                            "type": "array",
                            "maxItems": 2,
                            "items": {
                                "type": "object",
                                "properties": {
                                    "url": {"type": "string", "maxLength": 10},
                                    "state": {"type": "string", "enum": ["Enabled", "Drain"]},
                                },
                            },
                        },
                        "labels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 3}},
                    },
                },
            },
        })
    }

    fn problem(document: Value) -> Problem {
        check(&schema(), &document).expect_err("a problem")
    }

    #[test]
    fn enumerations_lengths_and_list_sizes() {
        assert_eq!(
            check(
                &schema(),
                &json!({"spec": {"members": [{"url": "http://a", "state": "Drain"}]}})
            ),
            Ok(())
        );
        assert_eq!(
            problem(json!({"spec": {"members": [{"url": "a"}, {"state": "Sleepy"}]}})),
            Problem {
                field: "spec.members[1].state".into(),
                message: "must be one of \"Enabled\", \"Drain\"; found \"Sleepy\"".into(),
            }
        );
        assert_eq!(
            problem(json!({"spec": {"members": [{"state": 5}]}})).message,
            "must be one of \"Enabled\", \"Drain\"; found 5"
        );
        assert_eq!(
            problem(json!({"spec": {"members": [{"url": "http://long"}]}})),
            Problem {
                field: "spec.members[0].url".into(),
                message: "may be at most 10 characters long; found \"http://long\"".into(),
            }
        );
        assert_eq!(
            problem(json!({"spec": {"members": [{}, {}, {}]}})),
            Problem {
                field: "spec.members".into(),
                message: "may hold at most 2 items; found 3".into(),
            }
        );
        assert_eq!(
            problem(json!({"spec": {"labels": {"a": "long"}}})).field,
            "spec.labels.a"
        );
    }

    #[test]
    fn a_huge_value_is_shown_cut() {
        let huge = "x".repeat(1 << 20);
        let p = problem(json!({"spec": {"members": [{"state": huge}]}}));
        assert_eq!(
            p.message,
            format!(
                "must be one of \"Enabled\", \"Drain\"; found \"{}…\" (1048576 characters)",
                "x".repeat(100)
            )
        );
    }

    #[test]
    fn nulls_and_fields_without_a_schema_are_left_to_deserialization() {
        assert_eq!(
            check(
                &schema(),
                &json!({"spec": {"members": null, "other": "x".repeat(100)}, "metadata": {}})
            ),
            Ok(())
        );
    }
}
