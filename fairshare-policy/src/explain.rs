//! Which part of the policy gave which field: for users in several groups,
//! whose overrides apply one after the other in the order the policy lists
//! the groups (files in name order, groups in the order written), so the
//! last group to set a field wins it.
//!
//! [`Policy::explain`] says where each field of one user's limits came
//! from; [`Policy::overlaps`] finds groups that set the same field to
//! different values, for `fairshared --check` and `fairshare-ctl check`.

use std::collections::BTreeMap;

use crate::error::Origin;
use crate::policy::{MemHigh, Override, Partial, Policy};
use crate::{Identity, policy::Exemption};

/// The fields an override can set, as named in the policy.
const FIELDS: [&str; 7] = [
    "defaults.cpu",
    "defaults.mem",
    "defaults.mem_high",
    "defaults.tasks",
    "max.cpu",
    "max.mem",
    "max.tasks",
];

/// One setting of a field: who set it, to what, where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    /// `defaults`, `max`, `group NAME` or `user NAME`.
    pub source: String,
    /// The value as written (`2`, `8G`, `90%`).
    pub value: String,
    pub origin: Origin,
}

/// Where one field of a user's limits came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldSource {
    /// `defaults.cpu`, `max.mem`, ...
    pub field: &'static str,
    /// The setting in force.
    pub winner: Setting,
    /// Groups of this user that set the field to another value, earlier in
    /// the policy, so that the winner replaced them.
    pub overridden: Vec<Setting>,
}

/// What one partial sets for `field`, shown as written.
fn value_of(p: &Partial, field: &str) -> Option<(String, Origin)> {
    let name = field.rsplit('.').next().unwrap_or(field);
    match name {
        "cpu" => p.cpu.as_ref().map(|(v, o)| (v.to_string(), o.clone())),
        "mem" => p.mem.as_ref().map(|(v, o)| (v.to_string(), o.clone())),
        "mem_high" => p.mem_high.as_ref().map(|(v, o)| {
            let shown = match v {
                MemHigh::Percent(p) => format!("{p}%"),
                MemHigh::Size(s) => s.to_string(),
            };
            (shown, o.clone())
        }),
        _ => p.tasks.as_ref().map(|(v, o)| (v.to_string(), o.clone())),
    }
}

fn part<'a>(o: &'a Override, field: &str) -> &'a Partial {
    match field.starts_with("max.") {
        true => &o.max,
        false => &o.defaults,
    }
}

impl Policy {
    /// The group overrides that apply to this user, in the order applied.
    pub(crate) fn matching_groups<'a>(
        &'a self,
        who: &'a Identity,
    ) -> impl Iterator<Item = (&'a String, &'a Override)> + 'a {
        self.groups
            .iter()
            .filter(|(name, _)| who.groups.iter().any(|g| g == *name))
    }

    /// Where each field of this user's limits comes from, in the order of
    /// [`FIELDS`](crate::FIELDS): the base (`defaults`/`max`), then each of
    /// their groups in policy order, then their own `users:` entry. Fields
    /// that nothing sets (a `max` left to follow the default) are left out.
    pub fn explain(&self, who: &Identity) -> Vec<FieldSource> {
        let mut out = Vec::new();
        for field in FIELDS {
            let base = match field.starts_with("max.") {
                true => ("max", &self.max),
                false => ("defaults", &self.defaults),
            };
            let mut winner: Option<Setting> =
                value_of(base.1, field).map(|(value, origin)| Setting {
                    source: base.0.to_string(),
                    value,
                    origin,
                });
            let mut overridden: Vec<Setting> = Vec::new();
            let mut groups_setting: Vec<Setting> = Vec::new();
            for (name, o) in self.matching_groups(who) {
                if let Some((value, origin)) = value_of(part(o, field), field) {
                    let s = Setting {
                        source: format!("group {name}"),
                        value,
                        origin,
                    };
                    groups_setting.push(s.clone());
                    winner = Some(s);
                }
            }
            if let Some(o) = self.users.get(&who.name)
                && let Some((value, origin)) = value_of(part(o, field), field)
            {
                winner = Some(Setting {
                    source: format!("user {}", who.name),
                    value,
                    origin,
                });
            }
            let Some(winner) = winner else { continue };
            for s in groups_setting {
                if s.source != winner.source && s.value != winner.value {
                    overridden.push(s);
                }
            }
            out.push(FieldSource {
                field,
                winner,
                overridden,
            });
        }
        out
    }

    /// The `sources` of a user's limits: `defaults`, each of their groups,
    /// their user entry. A user in several groups gets, for each group,
    /// which fields it gave and which a later group replaced.
    pub(crate) fn sources(&self, who: &Identity) -> Vec<String> {
        let groups: Vec<&String> = self.matching_groups(who).map(|(n, _)| n).collect();
        let mut sources = vec!["defaults".to_string()];
        if groups.len() < 2 {
            sources.extend(groups.iter().map(|g| format!("group {g}")));
        } else {
            let fields = self.explain(who);
            for g in groups {
                let me = format!("group {g}");
                let gave: Vec<String> = fields
                    .iter()
                    .filter(|f| f.winner.source == me)
                    .map(|f| format!("{} {}", f.field, f.winner.value))
                    .collect();
                // what later parts replaced, grouped by the part that won
                let mut lost: Vec<(&str, Vec<String>)> = Vec::new();
                for f in &fields {
                    for s in f.overridden.iter().filter(|s| s.source == me) {
                        let item = format!("{} {}", f.field, s.value);
                        match lost.iter_mut().find(|(w, _)| *w == f.winner.source) {
                            Some((_, items)) => items.push(item),
                            None => lost.push((&f.winner.source, vec![item])),
                        }
                    }
                }
                let lost: Vec<String> = lost
                    .into_iter()
                    .map(|(winner, items)| {
                        let why = match winner.starts_with("user ") {
                            true => "which applies last",
                            false => "later in the policy",
                        };
                        format!("{} lost to {winner}, {why}", items.join(", "))
                    })
                    .collect();
                let gave = match gave.is_empty() {
                    true => "gives nothing".to_string(),
                    false => format!("gives {}", gave.join(", ")),
                };
                match lost.is_empty() {
                    true => sources.push(format!("{me} ({gave})")),
                    false => sources.push(format!("{me} ({gave}; {})", lost.join("; "))),
                }
            }
        }
        if self.users.contains_key(&who.name) {
            sources.push(format!("user {}", who.name));
        }
        sources
    }

    /// What `--check` says about groups that overlap: a warning for each
    /// field that several groups set to different values (a user in more
    /// than one of them gets the last one's), and for each user in several
    /// of the policy's groups, which group gave which field. `members`
    /// names the members of a group (from the group database); users found
    /// there are named in the warnings, at most `MAX_NAMED` of them.
    pub fn overlaps(&self, members: impl Fn(&str) -> Vec<String>) -> Vec<String> {
        const MAX_NAMED: usize = 10;
        // user -> the policy's groups they are in, in policy order
        let mut user_groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut all_groups: Vec<&String> = self.groups.keys().collect();
        all_groups.extend(self.exempt_groups.keys());
        for g in all_groups {
            for u in members(g) {
                let list = user_groups.entry(u).or_default();
                if !list.contains(g) {
                    list.push(g.clone());
                }
            }
        }
        let mut out = Vec::new();
        for field in FIELDS {
            let setters: Vec<(&String, String, Origin)> = self
                .groups
                .iter()
                .filter_map(|(n, o)| value_of(part(o, field), field).map(|(v, orig)| (n, v, orig)))
                .collect();
            let mut values: Vec<&String> = setters.iter().map(|(_, v, _)| v).collect();
            values.sort();
            values.dedup();
            if values.len() < 2 {
                continue;
            }
            let listed: Vec<String> = setters
                .iter()
                .map(|(n, v, o)| format!("{n} ({v} at {o})"))
                .collect();
            let names: Vec<&String> = setters.iter().map(|(n, _, _)| *n).collect();
            let caught: Vec<String> = user_groups
                .iter()
                .filter_map(|(u, gs)| {
                    let mine: Vec<&String> =
                        names.iter().copied().filter(|n| gs.contains(*n)).collect();
                    let vals: Vec<&String> = setters
                        .iter()
                        .filter(|(n, _, _)| mine.contains(n))
                        .map(|(_, v, _)| v)
                        .collect();
                    let differ = vals.windows(2).any(|w| w[0] != w[1]);
                    if mine.len() < 2 || !differ {
                        return None;
                    }
                    let who = Identity {
                        uid: u32::MAX,
                        name: u.clone(),
                        groups: gs.clone(),
                    };
                    let winner = self
                        .explain(&who)
                        .into_iter()
                        .find(|f| f.field == field)?
                        .winner;
                    Some(format!("{u} gets {} from {}", winner.value, winner.source))
                })
                .collect();
            let who = match caught.len() {
                0 => "no user is in more than one of them now".to_string(),
                n if n <= MAX_NAMED => caught.join(", "),
                n => format!(
                    "{} and {} more",
                    caught[..MAX_NAMED].join(", "),
                    n - MAX_NAMED
                ),
            };
            out.push(format!(
                "warning: groups {} set {field} to different values; a user in several of them gets the last one's, as groups apply in policy order (files by name, then as written): {who}",
                and_list(&listed),
            ));
        }
        let several: Vec<(&String, &Vec<String>)> = user_groups
            .iter()
            .filter(|(_, gs)| gs.iter().filter(|g| self.groups.contains_key(*g)).count() >= 2)
            .collect();
        for (shown, (user, groups)) in several.iter().enumerate() {
            if shown == MAX_NAMED {
                out.push(format!(
                    "and {} more users in several groups (fairshare-ctl status --user NAME shows each)",
                    several.len() - shown
                ));
                break;
            }
            let who = Identity {
                uid: u32::MAX,
                name: (*user).clone(),
                groups: (*groups).clone(),
            };
            let in_groups = groups.join(", ");
            if let Some(ex) = self
                .exemption(&who)
                .filter(|e| !matches!(e, Exemption::SystemUid { .. }))
            {
                out.push(format!(
                    "user {user} (groups {in_groups}): not limited, {ex}"
                ));
                continue;
            }
            let given: Vec<String> = self
                .explain(&who)
                .into_iter()
                .filter(|f| f.winner.source.starts_with("group ") || !f.overridden.is_empty())
                .map(|f| {
                    let group = f
                        .winner
                        .source
                        .strip_prefix("group ")
                        .unwrap_or(&f.winner.source);
                    let over: Vec<String> = f
                        .overridden
                        .iter()
                        .map(|s| {
                            format!("{} from {}", s.value, s.source.trim_start_matches("group "))
                        })
                        .collect();
                    match over.is_empty() {
                        true => format!("{} {} from {group}", f.field, f.winner.value),
                        false => format!(
                            "{} {} from {group} (not {})",
                            f.field,
                            f.winner.value,
                            over.join(", ")
                        ),
                    }
                })
                .collect();
            let given = match given.is_empty() {
                true => "no field from these groups is in force".to_string(),
                false => given.join(", "),
            };
            out.push(format!("user {user} (groups {in_groups}): {given}"));
        }
        out
    }
}

/// `a`, `a and b`, `a, b and c`.
fn and_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}
