//! Resizes (`request_resources`, root's `set_user`) and releases.

use std::sync::Arc;
use std::time::Duration;

use fairshare_policy::Identity;
use fairshare_proto::units::format_duration;
use fairshare_proto::wire::{Resize, ResizeArgs, Response, Success, UserRef};

use super::{OnRefusal, Reply, Service, ServiceError};
use crate::admission::Peer;
use crate::ledger::{Actor, ResizeRequest};
use crate::systemd::{Systemd, slice_name};

impl<S: Systemd> Service<S> {
    /// Root sets (or with `release`, resets) another user's allocation.
    pub(super) async fn set_user(
        self: &Arc<Self>,
        peer: Peer,
        user: UserRef,
        args: ResizeArgs,
        release: bool,
        force: bool,
    ) -> Reply {
        let parsed = args.parse();
        let id = self.identities.resolve(&user).await;
        let resize = parsed.map_err(ServiceError::BadValue)?;
        let id = id?;
        match release {
            true => self.release(id, Actor::Root { force }, peer.uid).await,
            false => self.resize(id, resize, Actor::Root { force }).await,
        }
    }

    pub(super) async fn resize(self: &Arc<Self>, id: Identity, req: Resize, actor: Actor) -> Reply {
        if req.is_empty() {
            return Err(ServiceError::NothingToChange);
        }
        let policy = self.policy();
        let up = policy.for_user(&id);
        if let Some(ex) = &up.exempt {
            return Err(ServiceError::Exempt {
                name: id.name.clone(),
                reason: ex.to_string(),
            });
        }
        let guard = self.locks.lock(id.uid).await;
        let cap = policy.capacity(self.host);
        let now = self.now();
        let ask = ResizeRequest {
            uid: id.uid,
            name: &id.name,
            policy: &up,
            resize: req,
            actor,
            capacity: &cap,
            now,
            max_lease: policy.max_lease(),
        };
        let result = self.store.mutate(|l| {
            let prev = l.get(id.uid).cloned();
            l.resize(ask).map(|c| (prev, c))
        });
        let (prev, change) = match result {
            Ok(x) => x,
            Err(refusal) => {
                let by = match actor {
                    Actor::User(_) => "by the user",
                    Actor::Root { .. } => "by root",
                };
                tracing::info!(
                    uid = id.uid,
                    user = %id.name,
                    reason = %refusal,
                    "resize of {} (uid {}) asked {by} refused: {refusal}",
                    id.name,
                    id.uid
                );
                return Err(ServiceError::Refused {
                    refusal,
                    max: up.max,
                    capacity: self.store.read(|l| l.capacity(&cap)),
                });
            }
        };
        let undo = OnRefusal::Restore(prev);
        let by = match actor {
            Actor::User(u) => u,
            Actor::Root { .. } => 0,
        };
        let why = match actor {
            Actor::User(_) => "resize",
            Actor::Root { .. } => "set by root",
        };
        self.apply_change(&id, &change, undo, by, why).await?;
        // armed with the lock held, so timers follow the ledger's order
        self.rearm_lease(id.uid);
        self.save_unlocked(guard).await?;
        let (capacity, entry) = self
            .store
            .read(|l| (l.capacity(&cap), l.get(id.uid).cloned()));
        let left = |at: u64| format_duration(Duration::from_secs(at.saturating_sub(now).max(1)));
        let free = format!(
            "free on this host now: {} CPUs, {}",
            capacity.cpu_free,
            capacity.mem_free.human()
        );
        let message = match actor {
            Actor::User(_) => {
                let grant = entry.as_ref().and_then(|e| e.grant.as_ref());
                let until = match grant.and_then(|g| g.expires_at.map(|t| (t, g.since))) {
                    Some((t, Some(since))) if since < now => format!(
                        " for {} (the rest of the lease that began {} ago; resizing again does not extend it)",
                        left(t),
                        format_duration(Duration::from_secs(now - since))
                    ),
                    Some((t, _)) => format!(" for {}", left(t)),
                    None => String::new(),
                };
                // root's setting binds the user's resizes: that is their maximum
                let ceiling = entry.as_ref().map_or(up.max, |e| e.user_ceiling(&up));
                format!(
                    "Resources allocated: {} on {}{until} (your maximum: {ceiling}{}; {free})",
                    change.new,
                    slice_name(id.uid),
                    match ceiling == up.max {
                        true => "",
                        false => ", as root set it",
                    },
                )
            }
            Actor::Root { .. } => {
                let admin = entry.as_ref().and_then(|e| e.admin.as_ref());
                let until = match admin.and_then(|a| a.expires_at) {
                    Some(t) => format!(" for {} (then back to the default)", left(t)),
                    None => format!(" until `fairshare-ctl set {} --default`", id.name),
                };
                format!(
                    "{}'s allocation set to {} on {}{until}; {}'s own resizes and releases stay at or below it ({free})",
                    id.name,
                    change.new,
                    slice_name(id.uid),
                    id.name,
                )
            }
        };
        // the guarantee the slice gets, when less (capacity.mem_low), or
        // none while the user has no login session
        let held = entry.as_ref().is_some_and(|e| e.holds_guarantee());
        let message = match entry.as_ref().and_then(|e| e.granted_mem_low) {
            _ if !held && change.new.mem_low.is_some_and(|b| b.get() > 0) => format!(
                "{message}; no memory guarantee for now: one is held while {} logged in",
                match actor {
                    Actor::User(_) => "you are".to_string(),
                    Actor::Root { .. } => format!("{} is", id.name),
                }
            ),
            Some(g) => format!(
                "{message}; memory guarantee {} for now: the guarantees wanted exceed capacity.mem_low (see fairshare-ctl status)",
                g.human()
            ),
            None => message,
        };
        Ok(Response::Success(Success {
            message,
            allocation: Some(change.new),
            capacity: Some(capacity),
            ..Success::default()
        }))
    }

    /// Drops the user's own resize (`Actor::User`: back to root's setting,
    /// if any, else the default), or with root as `actor` root's setting
    /// too (`set --default`). `by`: who asked.
    pub(super) async fn release(self: &Arc<Self>, id: Identity, actor: Actor, by: u32) -> Reply {
        let policy = self.policy();
        let up = policy.for_user(&id);
        if let Some(ex) = &up.exempt {
            return Ok(Response::success(format!(
                "{} is not limited by fairshare ({ex}); nothing to release",
                id.name
            )));
        }
        let guard = self.locks.lock(id.uid).await;
        let (prev, change) = self
            .store
            .mutate(|l| (l.get(id.uid).cloned(), l.release(id.uid, &up, actor)));
        let undo = OnRefusal::Restore(prev);
        let why = match actor {
            Actor::User(_) => "release",
            Actor::Root { .. } => "reset by root",
        };
        self.apply_change(&id, &change, undo, by, why).await?;
        // armed with the lock held, so timers follow the ledger's order
        self.rearm_lease(id.uid);
        self.save_unlocked(guard).await?;
        let admin = self
            .store
            .read(|l| l.get(id.uid).and_then(|e| e.admin.clone()));
        let message = match (actor, admin) {
            (Actor::User(_), Some(a)) => format!(
                "Resources released: {} is back to root's setting for you: {}{}",
                slice_name(id.uid),
                change.new,
                match a.expires_at {
                    Some(t) => format!(
                        " (for another {}, then the default)",
                        format_duration(Duration::from_secs(t.saturating_sub(self.now()).max(1)))
                    ),
                    None => String::new(),
                }
            ),
            (Actor::User(_), None) => format!(
                "Resources released: {} is back to the default of {}",
                slice_name(id.uid),
                change.new
            ),
            (Actor::Root { .. }, _) => format!(
                "{}'s allocation is back to the policy default of {} on {} (root's setting and {}'s own resize, if any, ended)",
                id.name,
                change.new,
                slice_name(id.uid),
                id.name
            ),
        };
        Ok(Response::Success(Success {
            message,
            allocation: Some(change.new),
            capacity: Some(self.store.read(|l| l.capacity(&policy.capacity(self.host)))),
            ..Success::default()
        }))
    }
}
