//! Reading the YAML tree: mappings, single values and lists of names, each
//! checked for its shape, with unknown and repeated keys reported; and the
//! errors of a file that is not YAML at all.

use std::collections::HashSet;
use std::sync::Arc;

use serde_saphyr::Spanned;

use super::{Builder, File, join};
use crate::error::Origin;
use crate::raw::{Entry, Node, Scalar};

impl Builder {
    /// A file that is not valid YAML. A tab in the indentation is reported at
    /// its own line: the parser notices it only at the end of the line before.
    pub(super) fn yaml_error(&mut self, file: &Arc<str>, text: &str, e: &serde_saphyr::Error) {
        let (line, col) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
        let message = clean_yaml_message(&e.without_snippet().to_string());
        if message.contains("tab") {
            let tabs: Vec<usize> = text
                .lines()
                .enumerate()
                .filter(|(_, l)| {
                    let indent = &l[..l.len() - l.trim_start().len()];
                    indent.contains('\t') && !l.trim().is_empty()
                })
                .map(|(i, _)| i + 1)
                .collect();
            if !tabs.is_empty() {
                for n in tabs {
                    let origin = Origin {
                        file: file.clone(),
                        line: n as u32,
                    };
                    self.err(
                        origin,
                        &key_path_at(text, n),
                        "a tab in the indentation: YAML indents with spaces only; replace the tab with spaces",
                    );
                }
                return;
            }
        }
        let message = match col {
            0 => message,
            c => format!("{message} (column {c})"),
        };
        let origin = Origin {
            file: file.clone(),
            line: line as u32,
        };
        self.err(origin, &key_path_at(text, line as usize), message);
    }

    /// The entries of a mapping. `~` (or nothing) is an empty mapping; anything
    /// else is an error. A key given twice is an error, and only the first
    /// one counts.
    pub(super) fn mapping<'n>(
        &mut self,
        file: &File,
        field: &str,
        node: &'n Spanned<Node>,
        expected: &str,
    ) -> Option<Vec<&'n Entry>> {
        let entries = match &node.value {
            Node::Null => return Some(Vec::new()),
            Node::Map(entries) => entries,
            other => {
                let what = match field.is_empty() {
                    true => "the policy must be",
                    false => "must be",
                };
                self.err(
                    file.at(node),
                    field,
                    format!("{what} a mapping of {expected}, not {}", other.kind()),
                );
                return None;
            }
        };
        let mut seen: HashSet<&str> = HashSet::with_capacity(entries.len());
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let (key, _) = entry;
            if !seen.insert(key.value.as_str()) {
                self.err(
                    file.at(key),
                    &join(field, &key.value),
                    format!(
                        "duplicate mapping key: `{}` is given twice in the same place; keep one",
                        key.value
                    ),
                );
                continue;
            }
            out.push(entry);
        }
        Some(out)
    }

    pub(super) fn unknown_key(
        &mut self,
        file: &File,
        key: &Spanned<String>,
        parent: &str,
        name: &str,
        known: &[&str],
    ) {
        let hint = match known.iter().find(|k| similar(name, k)) {
            Some(k) => format!("; did you mean `{k}`?"),
            None => String::new(),
        };
        self.err(
            file.at(key),
            &join(parent, name),
            format!(
                "unknown field `{name}`, expected one of {}{hint}",
                known.join(", ")
            ),
        );
    }

    /// A single value; `None` when it is empty (not set) or not a scalar
    /// (an error).
    pub(super) fn scalar<'n>(
        &mut self,
        file: &File,
        field: &str,
        node: &'n Spanned<Node>,
    ) -> Option<(&'n Scalar, Origin)> {
        match &node.value {
            Node::Null => None,
            Node::Scalar(s) => Some((s, file.at(node))),
            other => {
                self.err(
                    file.at(node),
                    field,
                    format!(
                        "expected a single value (a number or a string), not {}",
                        other.kind()
                    ),
                );
                None
            }
        }
    }

    /// A list of user or group names.
    pub(super) fn names(
        &mut self,
        file: &File,
        field: &str,
        node: &Spanned<Node>,
    ) -> Vec<(String, Origin)> {
        let items = match &node.value {
            Node::Null => return Vec::new(),
            Node::Seq(items) => items,
            other => {
                self.err(
                    file.at(node),
                    field,
                    format!(
                        "expected a list of names such as [alice, bob], not {}",
                        other.kind()
                    ),
                );
                return Vec::new();
            }
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            match &item.value {
                Node::Scalar(s @ (Scalar::Str(_) | Scalar::UInt(_))) => {
                    out.push((s.shown(), file.at(item)))
                }
                other => self.err(
                    file.at(item),
                    field,
                    format!("expected a user or group name, not {}", other.kind()),
                ),
            }
        }
        out
    }
}

/// Whether an unknown key is probably a misspelling of `known`: one letter
/// added, missing, changed or two swapped, or one a prefix of the other.
fn similar(unknown: &str, known: &str) -> bool {
    (unknown.len() >= 3 && (known.starts_with(unknown) || unknown.starts_with(known)))
        || strsim::osa_distance(unknown, known) <= 1
}

/// The dotted path of the key on a line (`defaults.cpu`), found by walking up
/// to less indented lines; used to name the field of a YAML-level error.
fn key_path_at(text: &str, line: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let Some(idx) = line.checked_sub(1).filter(|i| *i < lines.len()) else {
        return String::new();
    };
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut path = Vec::new();
    if let Some(k) = key_on_line(lines[idx]) {
        path.push(k);
    }
    let mut level = indent(lines[idx]);
    for l in lines[..idx].iter().rev() {
        let t = l.trim_start();
        if t.is_empty() || t.starts_with('#') || indent(l) >= level {
            continue;
        }
        if let Some(k) = key_on_line(l) {
            path.push(k);
        }
        level = indent(l);
        if level == 0 {
            break;
        }
    }
    path.reverse();
    path.join(".")
}

/// The first key on a YAML line, for naming the field of a syntax error.
fn key_on_line(line: &str) -> Option<String> {
    let t = line.trim_start().trim_start_matches("- ");
    let key = t.split(':').next()?.trim();
    let ok = !key.is_empty()
        && t.contains(':')
        && key
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'));
    ok.then(|| key.to_string())
}

/// serde's messages end in "at line N, column M", which we print ourselves.
fn clean_yaml_message(msg: &str) -> String {
    let msg = match msg.rfind(" at line ") {
        Some(i) => &msg[..i],
        None => msg,
    };
    msg.replace(
        "data did not match any variant of untagged enum Scalar",
        "expected a single value (a number or a string)",
    )
    .replace(
        "data did not match any variant of untagged enum RawOvercommit",
        "expected a number, or {cpu: N, mem: N}",
    )
}
