//! What a loading error says: the file and line, the field, and what is wrong.

use std::fmt;
use std::sync::Arc;

/// The place a value came from: file and line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub file: Arc<str>,
    pub line: u32,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}", self.file, self.line)
        } else {
            write!(f, "{}", self.file)
        }
    }
}

/// One problem in a policy: where, which field, and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    pub origin: Origin,
    pub field: String,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.field.is_empty() {
            true => write!(f, "{}: {}", self.origin, self.message),
            false => write!(f, "{}: {}: {}", self.origin, self.field, self.message),
        }
    }
}

/// Every problem found while loading a policy (never empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

impl PolicyErrors {
    pub(crate) fn one(
        file: &str,
        line: u32,
        field: &str,
        message: impl Into<String>,
    ) -> PolicyErrors {
        PolicyErrors(vec![PolicyError {
            origin: Origin {
                file: file.into(),
                line,
            },
            field: field.into(),
            message: message.into(),
        }])
    }
}
