//! A YAML document read into JSON values, as `serde_json::Value` reads it, except that a key
//! given twice in one mapping is refused rather than the first value silently dropped (the
//! API server's strict field validation refuses it too).

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::api::text::quote;

/// Reads one document. The YAML reader's errors say where: the field path and the line.
pub fn document<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
    Node.deserialize(deserializer)
}

struct Node;

impl<'de> DeserializeSeed<'de> for Node {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // JSON has no NaN or infinity; neither has any field of ours.
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(Node)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut fields = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if fields.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "the field {} is given twice",
                    quote(&key)
                )));
            }
            let value = map.next_value_seed(Node)?;
            fields.insert(key, value);
        }
        Ok(Value::Object(fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(yaml: &str) -> Result<Value, String> {
        let de = serde_norway::Deserializer::from_str(yaml)
            .next()
            .expect("a document");
        document(de).map_err(|e| e.to_string())
    }

    #[test]
    fn reads_what_serde_json_reads() {
        let yaml = "a: 1\nb: [true, -2, 2.5, ~, x]\nc: {d: 'e'}\n";
        let expected: Value = serde_norway::from_str(yaml).expect("YAML");
        assert_eq!(read(yaml), Ok(expected));
    }

    #[test]
    fn a_key_given_twice_is_refused_naming_where() {
        assert_eq!(
            read("spec:\n  lbMethod: bytraffic\n  members: []\n  lbMethod: byrequests\n"),
            Err("spec: the field \"lbMethod\" is given twice at line 2 column 3".to_owned())
        );
        assert_eq!(
            read("spec: {members: [{url: a, url: b}]}\n"),
            Err("spec.members[0]: the field \"url\" is given twice at line 1 column 18".to_owned())
        );
        assert_eq!(
            read("kind: a\nkind: b\n"),
            Err("the field \"kind\" is given twice".to_owned())
        );
    }
}
