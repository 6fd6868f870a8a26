//! `notices:`: what fairshare tells users by default (issue 14).
//!
//! ```yaml
//! notices:
//!   terminal: true     # live notices on the user's terminals (each user may turn theirs off)
//!   login_line: true   # the line an interactive login shows
//! ```

use serde_saphyr::Spanned;

use super::{Builder, File, join};
use crate::policy::NoticeDefaults;
use crate::raw::{Node, Scalar};

/// The keys of `notices:`.
const KEYS: &[&str] = &["terminal", "login_line"];

impl Builder {
    pub(super) fn notices_key(&mut self, file: &File, node: &Spanned<Node>) {
        let Some(entries) = self.mapping(file, "notices", node, "`terminal` and `login_line`")
        else {
            return;
        };
        for (key, value) in entries {
            let field = join("notices", &key.value);
            if !KEYS.contains(&key.value.as_str()) {
                self.unknown_key(file, key, "notices", &key.value, KEYS);
                continue;
            }
            let Some((v, o)) = self.scalar(file, &field, value) else {
                continue;
            };
            let Scalar::Bool(on) = v else {
                self.err(o, &field, format!("`{}` is not true or false", v.shown()));
                continue;
            };
            let n = self.notices.get_or_insert(NoticeDefaults::default());
            match key.value.as_str() {
                "terminal" => n.terminal = *on,
                _ => n.login_line = *on,
            }
        }
    }
}
