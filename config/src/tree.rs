//! The TOML document as a plain tree that remembers the line of every key and value.
//!
//! `toml_edit` parses the text and knows each byte span; this tree keeps only what checking
//! needs (values, lines, document order) and can drop a bad key, so that checking can go on
//! after the first problem and report the next one.

use std::collections::HashMap;
use std::fmt::Write as _;

use toml_edit::{ImDocument, Item};

/// A value and the line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub value: Value,
    pub line: Option<usize>,
}

impl Node {
    /// The value at `key`, if this is a table that has it.
    pub(crate) fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Table(entries) => entries.iter().find(|e| e.key == key).map(|e| &e.node),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Datetime(String),
    Array(Vec<Node>),
    Table(Vec<Entry>),
}

/// One `key = value` of a table, in document order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub key: String,
    /// Line of the key itself.
    pub line: Option<usize>,
    pub node: Node,
}

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// A TOML syntax error: the file cannot be read any further.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub line: Option<usize>,
    pub message: String,
}

/// Parses TOML text into a tree whose root is a table.
pub(crate) fn parse(text: &str) -> Result<Node, SyntaxError> {
    let index = LineIndex::new(text);
    let doc = ImDocument::parse(text).map_err(|e| SyntaxError {
        line: e.span().map(|s| index.line(s.start)),
        message: e.message().trim().to_string(),
    })?;
    Ok(Node {
        value: Value::Table(table(doc.as_table(), &index)),
        line: None,
    })
}

fn table(t: &toml_edit::Table, index: &LineIndex) -> Vec<Entry> {
    t.iter()
        .filter_map(|(k, _)| {
            let (key, item) = t.get_key_value(k)?;
            Some(Entry {
                key: k.to_string(),
                line: index.span(key.span()),
                node: self::item(item, index)?,
            })
        })
        .collect()
}

fn item(item: &Item, index: &LineIndex) -> Option<Node> {
    match item {
        Item::None => None,
        Item::Value(v) => Some(value(v, index)),
        Item::Table(t) => Some(Node {
            value: Value::Table(table(t, index)),
            line: index.span(t.span()),
        }),
        Item::ArrayOfTables(a) => Some(Node {
            value: Value::Array(
                a.iter()
                    .map(|t| Node {
                        value: Value::Table(table(t, index)),
                        line: index.span(t.span()),
                    })
                    .collect(),
            ),
            line: index.span(a.span()),
        }),
    }
}

fn value(v: &toml_edit::Value, index: &LineIndex) -> Node {
    use toml_edit::Value as V;
    let value = match v {
        V::String(s) => Value::Str(s.value().clone()),
        V::Integer(i) => Value::Int(*i.value()),
        V::Float(f) => Value::Float(*f.value()),
        V::Boolean(b) => Value::Bool(*b.value()),
        V::Datetime(d) => Value::Datetime(d.value().to_string()),
        V::Array(a) => Value::Array(a.iter().map(|v| value(v, index)).collect()),
        V::InlineTable(t) => Value::Table(
            t.iter()
                .filter_map(|(k, _)| {
                    let (key, item) = t.get_key_value(k)?;
                    Some(Entry {
                        key: k.to_string(),
                        line: index.span(key.span()),
                        node: self::item(item, index)?,
                    })
                })
                .collect(),
        ),
    };
    Node {
        value,
        line: index.span(v.span()),
    }
}

/// Byte offset to 1-based line.
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex { starts }
    }

    fn line(&self, offset: usize) -> usize {
        self.starts.partition_point(|&start| start <= offset)
    }

    fn span(&self, span: Option<std::ops::Range<usize>>) -> Option<usize> {
        span.map(|s| self.line(s.start))
    }
}

/// Writes a key path as problems show it: `listen[1].address`.
pub(crate) fn path_string(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                let bare = !key.is_empty()
                    && key
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if bare {
                    out.push_str(key);
                } else {
                    let _ = write!(out, "{key:?}");
                }
            }
            Seg::Index(i) => {
                let _ = write!(out, "[{i}]");
            }
        }
    }
    out
}

/// The line of every key path in the tree (the key's own line; the header line for a table
/// in an array of tables).
pub(crate) fn line_map(root: &Node) -> HashMap<String, usize> {
    fn walk(node: &Node, path: &mut Vec<Seg>, out: &mut HashMap<String, usize>) {
        match &node.value {
            Value::Table(entries) => {
                for entry in entries {
                    path.push(Seg::Key(entry.key.clone()));
                    if let Some(line) = entry.line.or(entry.node.line) {
                        out.insert(path_string(path), line);
                    }
                    walk(&entry.node, path, out);
                    path.pop();
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    path.push(Seg::Index(i));
                    if let Some(line) = item.line {
                        out.insert(path_string(path), line);
                    }
                    walk(item, path, out);
                    path.pop();
                }
            }
            _ => {}
        }
    }
    let mut out = HashMap::new();
    walk(root, &mut Vec::new(), &mut out);
    out
}

/// Drops the key that `path` points at or into (an element of a plain array takes its whole
/// key with it, so the indexes of later problems still match the file). Returns whether
/// something was removed.
pub(crate) fn remove(root: &mut Node, path: &[Seg]) -> bool {
    let Some(last_key) = path.iter().rposition(|s| matches!(s, Seg::Key(_))) else {
        return false;
    };
    let Seg::Key(key) = &path[last_key] else {
        return false;
    };
    let mut node = root;
    for seg in &path[..last_key] {
        node = match (seg, &mut node.value) {
            (Seg::Key(k), Value::Table(entries)) => {
                match entries.iter_mut().find(|e| &e.key == k) {
                    Some(entry) => &mut entry.node,
                    None => return false,
                }
            }
            (Seg::Index(i), Value::Array(items)) => match items.get_mut(*i) {
                Some(item) => item,
                None => return false,
            },
            _ => return false,
        };
    }
    match &mut node.value {
        Value::Table(entries) => {
            let before = entries.len();
            entries.retain(|e| &e.key != key);
            entries.len() != before
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "top = 1\n\n[server]\ndomain = \"x\"\n\n[[listen]]\naddress = \"a\"\n\
                        [[listen]]\naddress = \"b\"\nlist = [1,\n  2]\n";

    #[test]
    fn lines_of_keys_and_tables() {
        let root = parse(TEXT).unwrap();
        let lines = line_map(&root);
        assert_eq!(lines["top"], 1);
        assert_eq!(lines["server"], 3);
        assert_eq!(lines["server.domain"], 4);
        assert_eq!(lines["listen[0]"], 6);
        assert_eq!(lines["listen[1].address"], 9);
        assert_eq!(lines["listen[1].list[1]"], 11);
    }

    #[test]
    fn syntax_error_has_its_line() {
        let err = parse("a = 1\nb = = 2\n").unwrap_err();
        assert_eq!(err.line, Some(2), "{err:?}");
    }

    #[test]
    fn remove_drops_the_whole_key() {
        let mut root = parse(TEXT).unwrap();
        let path = [
            Seg::Key("listen".into()),
            Seg::Index(1),
            Seg::Key("list".into()),
            Seg::Index(0),
        ];
        assert!(remove(&mut root, &path));
        assert!(!line_map(&root).contains_key("listen[1].list"));
        assert!(line_map(&root).contains_key("listen[1].address"));
        assert!(!remove(&mut root, &path));
    }

    #[test]
    fn quoted_keys_in_paths() {
        let path = [Seg::Key("a b".into()), Seg::Index(0), Seg::Key("c".into())];
        assert_eq!(path_string(&path), "\"a b\"[0].c");
    }
}
