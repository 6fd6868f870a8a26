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

/// The fields an override can set, as named in the policy; besides these,
/// `tier` and the IO limits of every target the policy names
/// (`defaults.io./home.write_bw`).
const FIELDS: [&str; 16] = [
    "defaults.cpu",
    "defaults.mem",
    "defaults.mem_high",
    "defaults.tasks",
    "defaults.weight",
    "defaults.io_weight",
    "defaults.mem_low",
    "defaults.swap",
    "defaults.burst",
    "max.cpu",
    "max.mem",
    "max.tasks",
    "max.weight",
    "max.io_weight",
    "max.mem_low",
    "max.swap",
];

/// The pseudo-field naming a group's or user's tier.
const TIER: &str = "tier";

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
    /// `defaults.cpu`, `max.mem`, `defaults.io./home.write_bw`, `tier`, ...
    pub field: String,
    /// The setting in force.
    pub winner: Setting,
    /// Groups of this user that set the field to another value, earlier in
    /// the policy, so that the winner replaced them.
    pub overridden: Vec<Setting>,
}

/// What one partial sets for `field`, shown as written.
fn value_of(p: &Partial, field: &str) -> Option<(String, Origin)> {
    let rel = field
        .strip_prefix("defaults.")
        .or_else(|| field.strip_prefix("max."))
        .unwrap_or(field);
    if let Some(io) = rel.strip_prefix("io.") {
        let (target, f) = io.rsplit_once('.')?;
        return p
            .io
            .iter()
            .find(|(t, _)| t.to_string() == target)
            .and_then(|(_, l)| l.shown(f));
    }
    fn s<T: std::fmt::Display>(v: &Option<(T, Origin)>) -> Option<(String, Origin)> {
        v.as_ref().map(|(v, o)| (v.to_string(), o.clone()))
    }
    let name = rel;
    match name {
        "weight" => return s(&p.weight),
        "io_weight" => return s(&p.io_weight),
        "mem_low" => return s(&p.mem_low),
        "swap" => {
            return p
                .swap
                .as_ref()
                .map(|(v, o)| (crate::fair::show_swap(v), o.clone()));
        }
        "burst" => return s(&p.burst),
        _ => {}
    }
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

/// What a group, user or tier sets for `field` (its tier included).
fn setting_of(o: &Override, field: &str) -> Option<(String, Origin)> {
    match field {
        TIER => o.tier.clone(),
        _ => value_of(part(o, field), field),
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

    /// Every field the policy can set for someone: the fixed ones, `tier`,
    /// and the IO limits of each target named anywhere.
    fn field_names(&self) -> Vec<String> {
        let mut out: Vec<String> = FIELDS.iter().map(|f| f.to_string()).collect();
        out.push(TIER.to_string());
        let mut targets = std::collections::BTreeSet::new();
        let all = [&self.tiers, &self.groups, &self.users];
        for p in [&self.defaults, &self.max].into_iter().chain(
            all.iter()
                .flat_map(|m| m.values().flat_map(|o| [&o.defaults, &o.max])),
        ) {
            targets.extend(p.io.keys().map(|t| t.to_string()));
        }
        for side in ["defaults", "max"] {
            for t in &targets {
                for f in crate::policy::IO_FIELDS {
                    out.push(format!("{side}.io.{t}.{f}"));
                }
            }
        }
        out
    }

    /// Where each field of this user's limits comes from, in the order of
    /// [`FIELDS`](crate::FIELDS): the base (`defaults`/`max`), then their
    /// tier, then each of their groups in policy order, then their own
    /// `users:` entry. Fields that nothing sets (a `max` left to follow the
    /// default) are left out.
    pub fn explain(&self, who: &Identity) -> Vec<FieldSource> {
        let mut out = Vec::new();
        let tier = self
            .tier_of(who)
            .and_then(|(name, _)| self.tiers.get(name.as_str()).map(|t| (name.clone(), t)));
        for field in self.field_names() {
            let field = field.as_str();
            let base = match field.starts_with("max.") {
                true => ("max", &self.max),
                false => ("defaults", &self.defaults),
            };
            let mut winner: Option<Setting> = match field {
                TIER => None,
                _ => value_of(base.1, field).map(|(value, origin)| Setting {
                    source: base.0.to_string(),
                    value,
                    origin,
                }),
            };
            if let Some((name, t)) = &tier
                && field != TIER
                && let Some((value, origin)) = setting_of(t, field)
            {
                winner = Some(Setting {
                    source: format!("tier {name}"),
                    value,
                    origin,
                });
            }
            let mut overridden: Vec<Setting> = Vec::new();
            let mut groups_setting: Vec<Setting> = Vec::new();
            for (name, o) in self.matching_groups(who) {
                if let Some((value, origin)) = setting_of(o, field) {
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
                && let Some((value, origin)) = setting_of(o, field)
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
                field: field.to_string(),
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
        if let Some((tier, by)) = self.tier_of(who) {
            sources.push(format!("tier {tier} (from {by})"));
        }
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
        for field in self.field_names() {
            let field = field.as_str();
            let setters: Vec<(&String, String, Origin)> = self
                .groups
                .iter()
                .filter_map(|(n, o)| setting_of(o, field).map(|(v, orig)| (n, v, orig)))
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
            // groups naming different tiers is what tiers are for: only a
            // user in several of them is worth a warning
            if field == TIER && caught.is_empty() {
                continue;
            }
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
