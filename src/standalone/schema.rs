//! The checks the API server makes from the CRD's OpenAPI schema before it runs the CEL rules,
//! with strict field validation (`kubectl apply`'s default): no field the schema does not know,
//! no required field missing, then types, enumerations, string lengths and list lengths. Standalone mode makes them first too, on
//! the document as read, so that a misspelt field is named rather than ignored, and a huge
//! value is refused before defaulting and CEL evaluation copy it over and over.
//!
//! The known fields come from the schema, that is from the Rust types: a field added to the
//! types is known here at once. `metadata` is checked against Kubernetes' ObjectMeta.
//!
//! Pure: a schema (the CRD's `openAPIV3Schema`, as JSON) and a document in, the first problem
//! out.

use std::sync::OnceLock;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use crate::api::text::{cut, quote};

/// What is wrong, and where: `spec.members[0].state`.
#[derive(Debug, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

/// The fields every Kubernetes object has, which a CRD's root schema leaves out.
const OBJECT_FIELDS: [&str; 3] = ["apiVersion", "kind", "metadata"];

/// Checks a whole document against the CRD's root schema. The values of `apiVersion` and
/// `kind` are the caller's to check.
pub fn check(root: &Value, document: &Value) -> Result<(), Problem> {
    let Some(fields) = document.as_object() else {
        return Ok(());
    };
    let properties = root.get("properties").and_then(Value::as_object);
    for (name, value) in fields {
        if name == "metadata" {
            walk(metadata_schema(), value, name.clone())?;
        } else if let Some(schema) = properties.and_then(|p| p.get(name)) {
            walk(schema, value, name.clone())?;
        } else if !OBJECT_FIELDS.contains(&name.as_str()) {
            let known = OBJECT_FIELDS.into_iter().chain(
                properties
                    .into_iter()
                    .flat_map(|p| p.keys().map(String::as_str)),
            );
            return Err(unknown(name, name, known));
        }
    }
    missing(root, fields, "")
}

/// The first field `schema` requires that `fields` lacks.
fn missing(
    schema: &Value,
    fields: &serde_json::Map<String, Value>,
    path: &str,
) -> Result<(), Problem> {
    let required = schema.get("required").and_then(Value::as_array);
    for name in required.into_iter().flatten().filter_map(Value::as_str) {
        if !fields.contains_key(name) {
            return Err(Problem {
                field: if path.is_empty() {
                    name.to_owned()
                } else {
                    format!("{path}.{name}")
                },
                message: "is missing".to_owned(),
            });
        }
    }
    Ok(())
}

/// Whether `value` has the type `schema` gives, and if not what it should be, in words.
fn wrong_type(schema: &Value, value: &Value) -> Option<&'static str> {
    if schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        let fits = value.is_string() || value.is_i64() || value.is_u64();
        return (!fits).then_some("a whole number or a name");
    }
    let (fits, expected) = match schema.get("type").and_then(Value::as_str)? {
        "string" => (value.is_string(), "a string"),
        "integer" => (value.is_i64() || value.is_u64(), "a whole number"),
        "number" => (value.is_number(), "a number"),
        "boolean" => (value.is_boolean(), "true or false"),
        "array" => (value.is_array(), "a list"),
        "object" => (value.is_object(), "a mapping of fields"),
        _ => return None,
    };
    (!fits).then_some(expected)
}

/// A value found where another was expected, in words: strings quoted, numbers as written.
fn describe(value: &Value) -> String {
    match value {
        Value::String(text) => quote(text),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "nothing".to_owned(),
        Value::Array(_) => "a list".to_owned(),
        Value::Object(_) => "a mapping".to_owned(),
    }
}

/// ObjectMeta's schema, with its nested types written out in place, as the walk reads it.
fn metadata_schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let generator = schemars::generate::SchemaSettings::openapi3()
            .with(|s| {
                s.inline_subschemas = true;
                s.meta_schema = None;
            })
            .into_generator();
        serde_json::to_value(generator.into_root_schema_for::<ObjectMeta>()).unwrap_or(Value::Null)
    })
}

/// The problem of a field the schema does not know, with the known field it most likely
/// meant, or else the fields known there.
fn unknown<'a>(path: &str, name: &str, known: impl Iterator<Item = &'a str>) -> Problem {
    let mut known: Vec<&str> = known.collect();
    known.sort_unstable();
    let message = match closest(name, &known) {
        Some(meant) => format!("unknown field; did you mean `{meant}`?"),
        None if known.is_empty() => "unknown field; this object has no fields".to_owned(),
        None => format!("unknown field; the fields here are {}", known.join(", ")),
    };
    Problem {
        field: path.to_owned(),
        message,
    }
}

/// The known name `name` is most likely a misspelling of: the same letters in another case
/// (`lbmethod`), or a few letters apart (`helthCheck`, `timeout`).
fn closest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    let length = name.chars().count();
    // Short names have few letters to spare: `tls` is not a misspelling of `ttl`.
    let allowed = (length / 4).clamp(1, 3);
    let name = name.to_lowercase();
    known
        .iter()
        // Lengths further apart than that cannot be close (and a huge name costs nothing).
        .filter(|k| k.chars().count().abs_diff(length) <= allowed)
        .map(|k| (edit_distance(&name, &k.to_lowercase()), *k))
        .filter(|&(d, _)| d <= allowed)
        .min_by_key(|&(d, _)| d)
        .map(|(_, k)| k)
}

/// The fewest single-character insertions, deletions, substitutions and swaps of neighbours
/// that turn one into the other (optimal string alignment distance).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    // Three rows of the table: the one being filled, and the two before it.
    let mut before: Vec<usize> = Vec::new();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut row = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let substitution = previous[j - 1] + usize::from(a[i - 1] != b[j - 1]);
            row[j] = (previous[j] + 1).min(row[j - 1] + 1).min(substitution);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                row[j] = row[j].min(before[j - 2] + 1);
            }
        }
        before = std::mem::replace(&mut previous, row);
    }
    previous[b.len()]
}

fn walk(schema: &Value, value: &Value, path: String) -> Result<(), Problem> {
    if value.is_null() {
        // Whether a null is allowed is for deserialization to say.
        return Ok(());
    }
    if let Some(expected) = wrong_type(schema, value) {
        return Err(Problem {
            field: path,
            message: format!("must be {expected}; found {}", describe(value)),
        });
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let names: Vec<String> = allowed.iter().map(show).collect();
        return Err(Problem {
            field: path,
            message: format!(
                "must be one of {}; found {}",
                names.join(", "),
                describe(value)
            ),
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
            if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
                return Ok(());
            }
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|s| s.is_object());
            for (name, field) in fields {
                let field_path = format!("{path}.{name}");
                match properties.and_then(|p| p.get(name)).or(additional) {
                    Some(field_schema) => walk(field_schema, field, field_path)?,
                    // Where any name goes (additionalProperties), none is unknown.
                    None if schema.get("additionalProperties") == Some(&Value::Bool(true)) => {}
                    None => {
                        let known = properties.into_iter().flat_map(|p| p.keys());
                        return Err(unknown(&field_path, name, known.map(String::as_str)));
                    }
                }
            }
            missing(schema, fields, &path)?;
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
                                "required": ["url"],
                                "properties": {
                                    "url": {"type": "string", "maxLength": 10},
                                    "port": {"x-kubernetes-int-or-string": true},
                                    "weight": {"type": "integer"},
                                    "on": {"type": "boolean"},
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
            problem(json!({"spec": {"members": [{"url": "a"}, {"url": "b", "state": "Sleepy"}]}})),
            Problem {
                field: "spec.members[1].state".into(),
                message: "must be one of \"Enabled\", \"Drain\"; found \"Sleepy\"".into(),
            }
        );
        assert_eq!(
            problem(json!({"spec": {"members": [{"url": "a", "state": 5}]}})).message,
            "must be a string; found 5"
        );
        assert_eq!(
            problem(json!({"spec": {"members": [{"url": "http://long"}]}})),
            Problem {
                field: "spec.members[0].url".into(),
                message: "may be at most 10 characters long; found \"http://long\"".into(),
            }
        );
        assert_eq!(
            problem(json!({"spec": {"members": [{"url": "a"}, {"url": "b"}, {"url": "c"}]}})),
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
    fn types_and_required_fields() {
        let member = |m: Value| problem(json!({"spec": {"members": [m]}}));
        assert_eq!(
            member(json!({"port": 80})),
            Problem {
                field: "spec.members[0].url".into(),
                message: "is missing".into(),
            }
        );
        assert_eq!(
            member(json!({"url": 5})).message,
            "must be a string; found 5"
        );
        assert_eq!(
            member(json!({"url": "a", "weight": "heavy"})).message,
            "must be a whole number; found \"heavy\""
        );
        assert_eq!(
            member(json!({"url": "a", "weight": 1.5})).message,
            "must be a whole number; found 1.5"
        );
        assert_eq!(
            member(json!({"url": "a", "on": "yes please"})).message,
            "must be true or false; found \"yes please\""
        );
        assert_eq!(
            member(json!({"url": "a", "port": [80]})).message,
            "must be a whole number or a name; found a list"
        );
        assert_eq!(
            problem(json!({"spec": {"members": {"url": "a"}}})),
            Problem {
                field: "spec.members".into(),
                message: "must be a list; found a mapping".into(),
            }
        );
        assert_eq!(
            problem(json!({"spec": "none"})).message,
            "must be a mapping of fields; found \"none\""
        );
        for fine in [
            json!({"url": "a", "port": 80}),
            json!({"url": "a", "port": "http"}),
        ] {
            assert_eq!(
                check(&schema(), &json!({"spec": {"members": [fine]}})),
                Ok(())
            );
        }
        let root = json!({"required": ["spec"], "properties": {"spec": {"type": "object"}}});
        assert_eq!(
            check(&root, &json!({"metadata": {"name": "a"}})),
            Err(Problem {
                field: "spec".into(),
                message: "is missing".into(),
            })
        );
    }

    #[test]
    fn a_huge_value_is_shown_cut() {
        let huge = "x".repeat(1 << 20);
        let p = problem(json!({"spec": {"members": [{"url": "a", "state": huge}]}}));
        assert_eq!(
            p.message,
            format!(
                "must be one of \"Enabled\", \"Drain\"; found \"{}…\" (1048576 characters)",
                "x".repeat(100)
            )
        );
    }

    #[test]
    fn nulls_are_left_to_deserialization() {
        assert_eq!(
            check(
                &schema(),
                &json!({"spec": {"members": null}, "metadata": {"name": "web"}})
            ),
            Ok(())
        );
    }

    #[test]
    fn unknown_fields_are_named_with_the_field_meant() {
        assert_eq!(
            problem(json!({"spec": {"members": [{"url": "a", "URL": "a"}]}})),
            Problem {
                field: "spec.members[0].URL".into(),
                message: "unknown field; did you mean `url`?".into(),
            }
        );
        assert_eq!(
            problem(json!({"spec": {"member": []}})).message,
            "unknown field; did you mean `members`?"
        );
        assert_eq!(
            problem(json!({"spec": {"tls": {}}})),
            Problem {
                field: "spec.tls".into(),
                message: "unknown field; the fields here are labels, members".into(),
            }
        );
        assert_eq!(
            problem(json!({"spec": {}, "sepc": {}})),
            Problem {
                field: "sepc".into(),
                message: "unknown field; did you mean `spec`?".into(),
            }
        );
        assert_eq!(
            problem(json!({"spec": {}, "metadata": {"name": "web", "label": {"a": "b"}}})),
            Problem {
                field: "metadata.label".into(),
                message: "unknown field; did you mean `labels`?".into(),
            }
        );
        // The names of a map are the user's own.
        assert_eq!(
            check(&schema(), &json!({"spec": {"labels": {"anything": "x"}}})),
            Ok(())
        );
        assert_eq!(
            check(
                &schema(),
                &json!({"apiVersion": "v", "kind": "k", "metadata": {"name": "n", "namespace": "s", "labels": {"a": "b"}, "annotations": {"c": "d"}}})
            ),
            Ok(())
        );
    }

    #[test]
    fn closeness() {
        let known = [
            "lbMethod",
            "loadFactor",
            "stickySession",
            "timeouts",
            "hash",
        ];
        assert_eq!(closest("lbmethod", &known), Some("lbMethod"));
        assert_eq!(closest("loadfactor", &known), Some("loadFactor"));
        assert_eq!(closest("stickysession", &known), Some("stickySession"));
        assert_eq!(closest("timeout", &known), Some("timeouts"));
        assert_eq!(closest("lbMethd", &known), Some("lbMethod"));
        assert_eq!(closest("tls", &known), None);
        assert_eq!(closest("weight", &known), None);
        assert_eq!(closest("sepc", &["spec", "status"]), Some("spec"));
        assert_eq!(closest(&"x".repeat(1 << 20), &known), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("ab", "ba"), 1);
        assert_eq!(edit_distance("same", "same"), 0);
    }
}
