//! Putting a new policy in force (`reload`, SIGHUP).

use std::sync::{Arc, PoisonError};

use fairshare_policy::Policy;
use fairshare_proto::wire::Response;

use super::{OnRefusal, Reply, Service, ServiceError};
use crate::systemd::Systemd;

impl<S: Systemd> Service<S> {
    /// Re-reads the policy from where it was loaded; a bad one is refused
    /// with every error and the old one stays in force.
    pub async fn reload_from_disk(self: &Arc<Self>) -> Reply {
        let Some(path) = self.policy_path.clone() else {
            return Err(ServiceError::NoPolicyPath);
        };
        let loaded = tokio::task::spawn_blocking({
            let path = path.clone();
            move || Policy::load(&path)
        })
        .await
        .map_err(ServiceError::PolicyTask)?;
        match loaded {
            Ok(p) => {
                let changed = self.reload(p).await;
                tracing::info!(policy = %path.display(), changed, "policy reloaded");
                Ok(Response::success(format!(
                    "policy reloaded from {}; limits changed for {changed} user(s)",
                    path.display()
                )))
            }
            Err(errors) => {
                tracing::error!(policy = %path.display(), "policy not reloaded, the old one stays in force:\n{errors}");
                Err(ServiceError::InvalidPolicy(errors))
            }
        }
    }

    /// Puts a new policy in force and re-applies every tracked user's limits
    /// under it: resizes beyond a lowered maximum are clamped, users who became
    /// exempt are let go. Returns how many users' limits changed.
    pub async fn reload(self: &Arc<Self>, policy: Policy) -> usize {
        *self.policy.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(policy);
        let policy = self.policy();
        let uids: Vec<u32> = self.store.read(|l| l.entries().map(|(u, _)| *u).collect());
        let mut changed = 0;
        for uid in uids {
            let Ok(id) = self.identity(uid).await else {
                continue;
            };
            let up = policy.for_user(&id);
            let _guard = self.locks.lock(uid).await;
            if let Some(ex) = &up.exempt {
                tracing::info!(uid, user = %id.name, reason = %ex, "user is now exempt; lifting their limits");
                self.drop_user(uid).await;
                changed += 1;
                continue;
            }
            if let Some(c) = self.store.mutate(|l| l.repolicy(uid, &up)) {
                changed += 1;
                let _ = self
                    .commit(&id, &c, OnRefusal::Keep, 0, "policy reloaded")
                    .await;
            }
        }
        if let Err(e) = self.store.save().await {
            tracing::error!(error = %e, "could not save state after reload");
        }
        changed
    }
}
