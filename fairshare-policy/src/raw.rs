//! The policy file as written: a tree of YAML nodes, each kept with the line
//! it came from, nothing validated yet.
//!
//! The file is read into this generic tree rather than into structs with
//! `deny_unknown_fields`, because serde stops at the first unknown key or
//! wrongly shaped value; the builder walks the tree instead and reports every
//! mistake of a file at once, each with its line and field.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// A single YAML value; quantities are validated later, with their field
/// name, so that errors can say which field was wrong.
#[derive(Debug, Clone)]
pub(crate) enum Scalar {
    UInt(u64),
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
}

impl Scalar {
    pub(crate) fn shown(&self) -> String {
        match self {
            Scalar::UInt(v) => v.to_string(),
            Scalar::Int(v) => v.to_string(),
            Scalar::Float(v) => v.to_string(),
            Scalar::Bool(v) => v.to_string(),
            Scalar::Str(v) => v.clone(),
        }
    }
}

/// One key of a mapping and its value, each with its place.
pub(crate) type Entry = (Spanned<String>, Spanned<Node>);

/// Any YAML node. `~` and an empty value are `Null`, which the policy treats
/// as "not set".
#[derive(Debug)]
pub(crate) enum Node {
    Null,
    Scalar(Scalar),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<Entry>),
}

impl Node {
    /// What the node is, for "expected X, not Y" messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Node::Null => "empty",
            Node::Scalar(Scalar::Str(_)) => "a string",
            Node::Scalar(Scalar::Bool(_)) => "a boolean",
            Node::Scalar(_) => "a number",
            Node::Seq(_) => "a list",
            Node::Map(_) => "a mapping",
        }
    }
}

/// Reads a whole file; `None` for a file that is empty or only comments.
pub(crate) fn parse(text: &str) -> Result<Option<Spanned<Node>>, serde_saphyr::Error> {
    let mut options = serde_saphyr::Options::default();
    // NaN and infinities reach the builder, which names the field they are in.
    options.non_finite_float_policy = serde_saphyr::NonFiniteFloatPolicy::PassThrough;
    // Repeated keys reach the builder too, which reports them with their field.
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::PassThrough;
    serde_saphyr::from_str_with_options(text, options)
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Scalar(Scalar::UInt(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Scalar(match u64::try_from(v) {
            Ok(u) => Scalar::UInt(u),
            Err(_) => Scalar::Int(v),
        }))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Node, E> {
        Ok(Node::Scalar(match u64::try_from(v) {
            Ok(u) => Scalar::UInt(u),
            Err(_) => Scalar::Str(v.to_string()),
        }))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Node, E> {
        Ok(Node::Scalar(match i64::try_from(v) {
            Ok(i) => Scalar::Int(i),
            Err(_) => Scalar::Str(v.to_string()),
        }))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Scalar(Scalar::Float(v)))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Scalar(Scalar::Bool(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Scalar(Scalar::Str(v.to_string())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Node::Scalar(Scalar::Str(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = a.next_element()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = a.next_key()? {
            entries.push((key, a.next_value()?));
        }
        Ok(Node::Map(entries))
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}
