//! A YAML document as a tree of located nodes, read with hard limits on size and depth.
//!
//! The funnel parser walks this tree itself instead of deriving `Deserialize` for the funnel
//! types, so that one run reports every unknown key and wrong type, not only the first.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use super::diag::Pos;

/// Funnel files larger than this are refused before parsing.
pub const MAX_FILE_BYTES: usize = 1024 * 1024;
/// Deeper nesting than this is refused by the parser (a funnel needs fewer than 16 levels).
pub const MAX_DEPTH: usize = 32;
/// Reading nested YAML recurses; the parse runs on its own thread with this much stack, so it
/// cannot overflow whatever thread calls it (a test thread has 2 MiB).
const PARSE_STACK_BYTES: usize = 64 * 1024 * 1024;

/// A YAML value with the position where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

/// The shapes a YAML value can take once its plain scalars are resolved.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Keys keep their own positions so an unknown key can be pointed at.
    Map(Vec<(Key, Node)>),
}

/// A mapping key and where it stands.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub pos: Pos,
    pub name: String,
}

impl Value {
    /// The word used in "expected X, found Y" messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "nothing",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "a number",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// Why a document could not be read as YAML at all.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Parses one YAML document into a located tree; an empty document is `Value::Null`.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("yaml-parse".into())
            .stack_size(PARSE_STACK_BYTES)
            .spawn_scoped(scope, || parse_here(text))
            .map_err(|e| SyntaxError {
                pos: Pos::START,
                message: format!("cannot start the parser: {e}"),
            })?
            .join()
            .unwrap_or_else(|_| {
                Err(SyntaxError {
                    pos: Pos::START,
                    message: "the YAML parser failed".into(),
                })
            })
    })
}

fn parse_here(text: &str) -> Result<Node, SyntaxError> {
    if text.len() > MAX_FILE_BYTES {
        return Err(SyntaxError {
            pos: Pos::START,
            message: format!(
                "file is {} bytes; funnel files may be at most {} bytes",
                text.len(),
                MAX_FILE_BYTES
            ),
        });
    }
    if text.trim().is_empty() {
        return Ok(Node {
            pos: Pos::START,
            value: Value::Null,
        });
    }
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: MAX_DEPTH,
            max_documents: 1,
            max_nodes: 200_000,
        },
        with_snippet: false,
        // YAML 1.2 booleans only: `on:` is a key, and `no` is Norway, not false.
        strict_booleans: true,
    };
    let spanned: Spanned<RawNode> =
        serde_saphyr::from_str_with_options(text, options).map_err(|e| {
            let pos = e
                .location()
                .map(|l| Pos::new(l.line() as u32, l.column() as u32))
                .unwrap_or(Pos::START);
            SyntaxError {
                pos,
                message: clean_message(&e.to_string()),
            }
        })?;
    Ok(into_node(spanned))
}

/// Strips the location the YAML library appends, since diagnostics print their own.
fn clean_message(raw: &str) -> String {
    let first = raw.lines().next().unwrap_or(raw).trim();
    let first = match first.find(" at line ") {
        Some(i) => &first[..i],
        None => first,
    };
    let msg = first.trim_start_matches("error: ").trim();
    if msg.contains("Depth") || msg.contains("recursion limit") {
        return format!("invalid YAML: nested more than {MAX_DEPTH} levels deep");
    }
    if let Some(what) = msg.strip_prefix("budget breached: ") {
        return format!("invalid YAML: too large ({what})");
    }
    if let Some(key) = msg.strip_prefix("duplicate mapping key: ") {
        let key = key.split(", set ").next().unwrap_or(key);
        return format!("duplicate key \"{key}\"");
    }
    if msg.is_empty() {
        "invalid YAML".to_string()
    } else {
        format!("invalid YAML: {msg}")
    }
}

fn pos_of<T>(s: &Spanned<T>) -> Pos {
    Pos::new(s.referenced.line() as u32, s.referenced.column() as u32)
}

fn into_node(s: Spanned<RawNode>) -> Node {
    let pos = pos_of(&s);
    let value = match s.value {
        RawNode::Null => Value::Null,
        RawNode::Bool(b) => Value::Bool(b),
        RawNode::Int(i) => Value::Int(i),
        RawNode::Float(f) => Value::Float(f),
        RawNode::Str(s) => Value::Str(s),
        RawNode::Seq(items) => Value::Seq(items.into_iter().map(into_node).collect()),
        RawNode::Map(entries) => Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| {
                    (
                        Key {
                            pos: pos_of(&k),
                            name: k.value.0,
                        },
                        into_node(v),
                    )
                })
                .collect(),
        ),
    };
    Node { pos, value }
}

/// The tree as the YAML library hands it over; converted into [`Node`] right away.
enum RawNode {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<RawNode>>),
    Map(Vec<(Spanned<KeyText>, Spanned<RawNode>)>),
}

/// A mapping key: numbers and booleans used as keys are kept as their text.
struct KeyText(String);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a plain mapping key")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<KeyText, E> {
                Ok(KeyText(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<KeyText, E> {
                Ok(KeyText("null".to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for RawNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawNode;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<RawNode, E> {
                Ok(RawNode::Null)
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<RawNode, E> {
                Ok(RawNode::Null)
            }
            fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<RawNode, D2::Error> {
                RawNode::deserialize(d)
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<RawNode, E> {
                Ok(RawNode::Bool(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawNode, E> {
                Ok(RawNode::Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawNode, E> {
                Ok(i64::try_from(v)
                    .map(RawNode::Int)
                    .unwrap_or(RawNode::Float(v as f64)))
            }
            fn visit_i128<E: serde::de::Error>(self, v: i128) -> Result<RawNode, E> {
                Ok(i64::try_from(v)
                    .map(RawNode::Int)
                    .unwrap_or(RawNode::Float(v as f64)))
            }
            fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<RawNode, E> {
                Ok(i64::try_from(v)
                    .map(RawNode::Int)
                    .unwrap_or(RawNode::Float(v as f64)))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<RawNode, E> {
                Ok(RawNode::Float(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawNode, E> {
                Ok(RawNode::Str(v.to_string()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<RawNode, E> {
                Ok(RawNode::Str(v))
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<RawNode, E> {
                Ok(RawNode::Str(String::from_utf8_lossy(v).into_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawNode, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<RawNode>>()? {
                    items.push(item);
                }
                Ok(RawNode::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawNode, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<Spanned<KeyText>>()? {
                    let value = map.next_value::<Spanned<RawNode>>()?;
                    entries.push((key, value));
                }
                Ok(RawNode::Map(entries))
            }
        }
        d.deserialize_any(V)
    }
}
