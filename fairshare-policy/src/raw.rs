//! The policy file as written: every field optional, every value kept with
//! the place it came from, nothing validated yet.

use indexmap::IndexMap;
use serde::Deserialize;
use serde_saphyr::Spanned;

/// Any single YAML value; quantities are validated later, with their field
/// name, so that errors can say which field was wrong.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
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

pub(crate) type Field = Option<Spanned<Scalar>>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFile {
    #[serde(default)]
    pub defaults: Option<RawLimits>,
    #[serde(default)]
    pub max: Option<RawLimits>,
    #[serde(default)]
    pub exempt: Option<RawExempt>,
    #[serde(default)]
    pub capacity: Option<RawCapacity>,
    #[serde(default)]
    pub groups: Option<IndexMap<Spanned<String>, Option<RawOverride>>>,
    #[serde(default)]
    pub users: Option<IndexMap<Spanned<String>, Option<RawOverride>>>,
    #[serde(default)]
    pub leases: Option<RawLeases>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    #[serde(default)]
    pub cpu: Field,
    #[serde(default)]
    pub mem: Field,
    #[serde(default)]
    pub mem_high: Field,
    #[serde(default)]
    pub tasks: Field,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOverride {
    #[serde(default)]
    pub defaults: Option<RawLimits>,
    #[serde(default)]
    pub max: Option<RawLimits>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawExempt {
    #[serde(default)]
    pub users: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub groups: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub uid_below: Field,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCapacity {
    #[serde(default)]
    pub cpu: Field,
    #[serde(default)]
    pub mem: Field,
    #[serde(default)]
    pub overcommit: Option<Spanned<RawOvercommit>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawOvercommit {
    Both(Scalar),
    Each(RawOvercommitEach),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOvercommitEach {
    #[serde(default)]
    pub cpu: Option<Scalar>,
    #[serde(default)]
    pub mem: Option<Scalar>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLeases {
    #[serde(default)]
    pub max_duration: Field,
}
