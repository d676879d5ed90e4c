//! A serde deserializer over [`tree::Node`](crate::tree::Node) whose errors say which key
//! failed and on which line, so the file structs (with `deny_unknown_fields`) can be filled
//! one problem at a time: report the failing key, drop it from the tree, try again.

use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer, Unexpected, Visitor};
use serde::forward_to_deserialize_any;

use crate::tree::{Entry, Node, Seg, Value};

/// A failed key: where it is and what is wrong with it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DeError {
    /// Path from the root to the failing key or value.
    pub path: Vec<Seg>,
    pub line: Option<usize>,
    pub message: String,
}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError {
            path: Vec::new(),
            line: None,
            message: msg.to_string(),
        }
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl DeError {
    fn inside(mut self, seg: Seg, line: Option<usize>) -> Self {
        self.path.insert(0, seg);
        self.line = self.line.or(line);
        self
    }

    /// The message in TOML words rather than serde's Rust words.
    pub(crate) fn friendly_message(&self) -> String {
        let mut msg = self.message.replace("unknown field", "unknown key");
        msg = msg.replace(", there are no fields", "");
        for (rust, toml) in [
            ("invalid type: map", "invalid type: table"),
            ("invalid type: sequence", "invalid type: array"),
            ("expected a map", "expected a table"),
            ("expected a sequence", "expected an array"),
            ("expected u8", "expected a non-negative integer"),
            ("expected u16", "expected a non-negative integer"),
            ("expected u32", "expected a non-negative integer"),
            ("expected u64", "expected a non-negative integer"),
            ("expected usize", "expected a non-negative integer"),
            ("expected i64", "expected an integer"),
        ] {
            msg = msg.replace(rust, toml);
        }
        if msg.starts_with("invalid type: integer") && msg.ends_with("expected a string") {
            msg.push_str(" (put it in quotes)");
        }
        if let Some(at) = msg.find("expected struct ") {
            msg.truncate(at);
            msg.push_str("expected a table");
        }
        msg
    }
}

/// Deserializes one node.
pub(crate) struct NodeDe<'a>(pub &'a Node);

impl<'de> de::Deserializer<'de> for NodeDe<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.0.value {
            Value::Str(s) => visitor.visit_str(s),
            Value::Int(i) => visitor.visit_i64(*i),
            Value::Float(f) => visitor.visit_f64(*f),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Datetime(_) => Err(de::Error::invalid_type(
                Unexpected::Other("date-time"),
                &visitor,
            )),
            Value::Array(items) => visitor.visit_seq(SeqDe {
                items: items.iter().enumerate(),
            }),
            Value::Table(entries) => visitor.visit_map(MapDe {
                entries: entries.iter(),
                current: None,
            }),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match &self.0.value {
            Value::Str(s) => visitor.visit_enum(s.as_str().into_deserializer()),
            _ => self.deserialize_any(visitor),
        }
    }

    /// Only a table fills a struct (serde would also take an array, field by field, which
    /// is never what a `[[server]]` meant).
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        if let Value::Array(_) = self.0.value {
            return Err(de::Error::invalid_type(Unexpected::Seq, &visitor));
        }
        self.deserialize_any(visitor)
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map identifier ignored_any
    }
}

struct SeqDe<'a> {
    items: std::iter::Enumerate<std::slice::Iter<'a, Node>>,
}

impl<'de> de::SeqAccess<'de> for SeqDe<'_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        let Some((i, node)) = self.items.next() else {
            return Ok(None);
        };
        seed.deserialize(NodeDe(node))
            .map(Some)
            .map_err(|e| e.inside(Seg::Index(i), node.line))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct MapDe<'a> {
    entries: std::slice::Iter<'a, Entry>,
    current: Option<&'a Entry>,
}

impl<'de> de::MapAccess<'de> for MapDe<'_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some(entry) = self.entries.next() else {
            return Ok(None);
        };
        self.current = Some(entry);
        let key: de::value::StrDeserializer<'_, DeError> = entry.key.as_str().into_deserializer();
        seed.deserialize(key)
            .map(Some)
            .map_err(|e| e.inside(Seg::Key(entry.key.clone()), entry.line))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let entry = self
            .current
            .take()
            .ok_or_else(|| de::Error::custom("value asked for before its key"))?;
        seed.deserialize(NodeDe(&entry.node))
            .map_err(|e| e.inside(Seg::Key(entry.key.clone()), entry.node.line.or(entry.line)))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::tree::{parse, path_string};

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        inner: Option<Vec<Inner>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        n: Option<u32>,
        s: Option<String>,
    }

    fn error(text: &str) -> (String, Option<usize>, String) {
        let root = parse(text).unwrap();
        let e = Outer::deserialize(NodeDe(&root)).unwrap_err();
        (path_string(&e.path), e.line, e.friendly_message())
    }

    #[test]
    fn unknown_key_names_path_and_line() {
        let (path, line, msg) = error("[[inner]]\nn = 1\n[[inner]]\n\nbogus = 2\n");
        assert_eq!(path, "inner[1].bogus");
        assert_eq!(line, Some(5));
        assert!(msg.starts_with("unknown key `bogus`, expected"), "{msg}");
    }

    #[test]
    fn wrong_type_names_path_and_line() {
        let (path, line, msg) = error("[[inner]]\nn = -1\n");
        assert_eq!((path.as_str(), line), ("inner[0].n", Some(2)));
        assert_eq!(
            msg,
            "invalid value: integer `-1`, expected a non-negative integer"
        );
        let (path, _, msg) = error("inner = [{ s = 5 }]\n");
        assert_eq!(path, "inner[0].s");
        assert_eq!(
            msg,
            "invalid type: integer `5`, expected a string (put it in quotes)"
        );
        let (path, _, msg) = error("inner = 3\n");
        assert_eq!(path, "inner");
        assert_eq!(msg, "invalid type: integer `3`, expected an array");
    }
}
