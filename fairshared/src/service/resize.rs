//! Resizes (`request_resources`, root's `set_user`) and releases.

use std::sync::Arc;
use std::time::Duration;

use fairshare_policy::{Identity, UserPolicy};
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
            true => self.release(id, Some(peer.uid)).await,
            false => self.resize(id, resize, Actor::Root { force }).await,
        }
    }

    /// When a resize lapses: what was asked, capped by the policy for users.
    fn lease_end(
        &self,
        up: &UserPolicy,
        req: &Resize,
        actor: Actor,
    ) -> Result<Option<u64>, ServiceError> {
        let max = self.policy().max_lease();
        let above = req.cpu.is_some_and(|c| c > up.default.cpu)
            || req.mem.is_some_and(|m| m > up.default.mem)
            || req.tasks.is_some_and(|t| t > up.default.tasks);
        let lasting = match (actor, req.duration, max) {
            (Actor::User(_), Some(asked), Some(max)) if asked > max => {
                return Err(ServiceError::LeaseTooLong { max, asked });
            }
            (_, Some(d), _) => Some(d),
            (Actor::User(_), None, Some(m)) if above => Some(m),
            _ => None,
        };
        Ok(lasting.map(|d| self.now().saturating_add(d.as_secs())))
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
        let expires = self.lease_end(&up, &req, actor)?;
        let _guard = self.locks.lock(id.uid).await;
        let cap = policy.capacity(self.host);
        let ask = ResizeRequest {
            uid: id.uid,
            name: &id.name,
            policy: &up,
            resize: req,
            actor,
            capacity: &cap,
            now: self.now(),
            expires_at: expires,
        };
        let result = self.store.mutate(|l| {
            let prev = l.get(id.uid).cloned();
            l.resize(ask).map(|c| (prev, c))
        });
        let (prev, change) = match result {
            Ok(x) => x,
            Err(refusal) => {
                tracing::info!(uid = id.uid, user = %id.name, reason = %refusal, "resize refused");
                return Err(ServiceError::Refused {
                    refusal,
                    max: up.max,
                    capacity: self.store.read(|l| l.capacity(&cap)),
                });
            }
        };
        let by = match actor {
            Actor::User(u) => u,
            Actor::Root { .. } => 0,
        };
        let undo = OnRefusal::Restore(prev);
        self.commit(&id, &change, undo, by, "resize").await?;
        if let Some(at) = expires {
            self.schedule_lease(id.uid, at);
        }
        let capacity = self.store.read(|l| l.capacity(&cap));
        let until = expires
            .map(|at| {
                let left = Duration::from_secs(at.saturating_sub(self.now()));
                format!(" for {}", format_duration(left))
            })
            .unwrap_or_default();
        Ok(Response::Success(Success {
            message: format!(
                "Resources allocated: {} on {}{until} (max {}; free on this host now: {} CPUs, {})",
                change.new,
                slice_name(id.uid),
                up.max,
                capacity.cpu_free,
                capacity.mem_free.human()
            ),
            allocation: Some(change.new),
            capacity: Some(capacity),
        }))
    }

    /// Back to the policy default; `by_root`: root's uid when root asked.
    pub(super) async fn release(&self, id: Identity, by_root: Option<u32>) -> Reply {
        let policy = self.policy();
        let up = policy.for_user(&id);
        if let Some(ex) = &up.exempt {
            return Ok(Response::success(format!(
                "{} is not limited by fairshare ({ex}); nothing to release",
                id.name
            )));
        }
        let _guard = self.locks.lock(id.uid).await;
        let (prev, change) = self
            .store
            .mutate(|l| (l.get(id.uid).cloned(), l.release(id.uid, &up)));
        let by = by_root.unwrap_or(id.uid);
        let undo = OnRefusal::Restore(prev);
        self.commit(&id, &change, undo, by, "release").await?;
        Ok(Response::Success(Success {
            message: format!(
                "Resources released: {} is back to the default of {}",
                slice_name(id.uid),
                change.new
            ),
            allocation: Some(change.new),
            capacity: Some(self.store.read(|l| l.capacity(&policy.capacity(self.host)))),
        }))
    }
}
