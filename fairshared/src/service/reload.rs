//! Putting a new policy in force (`reload`, `fairshared --reload`, SIGHUP).

use std::sync::{Arc, PoisonError};

use fairshare_policy::Policy;
use fairshare_proto::wire::Response;

use super::{Reply, Service, ServiceError};
use crate::systemd::Systemd;

/// At most this many names in a reload's answer (all of them are in the
/// journal).
const NAMES_SHOWN: usize = 20;

/// `alice, bob and 3 more`
pub fn name_list(names: &[String]) -> String {
    let shown: Vec<&str> = names.iter().take(NAMES_SHOWN).map(String::as_str).collect();
    match names.len().saturating_sub(NAMES_SHOWN) {
        0 => shown.join(", "),
        more => format!("{} and {more} more", shown.join(", ")),
    }
}

/// What `systemctl status` shows (nothing outside systemd).
fn status_line(line: &str) {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(line)]);
}

impl<S: Systemd> Service<S> {
    /// Re-reads the policy from where it was loaded; a bad one is refused
    /// with every error and the old one stays in force, its drop-ins
    /// untouched.
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
                self.set_policy_problem(None);
                status_line("serving");
                self.keep_last_good().await;
                let names = name_list(&changed);
                tracing::info!(policy = %path.display(), changed = changed.len(), users = %names, "policy reloaded from {}; limits changed for {} user(s){}{names}", path.display(), changed.len(), if changed.is_empty() { "" } else { ": " });
                Ok(Response::success(format!(
                    "policy reloaded from {}; limits changed for {} user(s){}{names}",
                    path.display(),
                    changed.len(),
                    if changed.is_empty() { "" } else { ": " },
                )))
            }
            Err(errors) => {
                tracing::error!(policy = %path.display(), "policy not reloaded, the old one stays in force (and so do the drop-ins):\n{errors}");
                self.set_policy_problem(Some(format!(
                    "the policy at {} has errors; fairshared keeps the last policy that loaded until it is fixed (`fairshared --check` shows the errors, then `systemctl reload fairshared`)",
                    path.display()
                )));
                status_line(
                    "serving with the LAST GOOD policy: the policy on disk has errors (fairshared --check)",
                );
                Err(ServiceError::InvalidPolicy(errors))
            }
        }
    }

    /// Keeps a copy of the policy in force beside the state: what
    /// fairshared starts with when the policy on disk is broken.
    pub async fn keep_last_good(&self) {
        let Some(dir) = self.last_good.clone() else {
            return;
        };
        let policy = self.policy();
        match tokio::task::spawn_blocking(move || crate::lastgood::save(&dir, &policy)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not keep a copy of the policy as the last good one")
            }
            Err(e) => tracing::warn!(error = %e, "keeping the last good policy"),
        }
    }

    /// Puts a new policy in force: its drop-ins written, every running
    /// slice whose values change set (one call each, the changed keys
    /// only), every tracked user re-evaluated (resizes beyond a lowered
    /// maximum clamped, users who became exempt let go), and every user
    /// logind knows counted (a user no longer exempt is limited now).
    /// Returns the names of the users whose limits changed.
    pub async fn reload(self: &Arc<Self>, policy: Policy) -> Vec<String> {
        *self.policy.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(policy);
        // group memberships may have changed too (`gpasswd`, then reload)
        self.identities.forget();
        // and the disks behind IO limits (a file system mounted since)
        crate::iodisk::forget();
        let changed = self.refresh().await;
        if let Err(e) = self.store.save().await {
            tracing::error!(error = %e, "could not save state after reload");
        }
        // Users logind knows but the ledger does not (they were exempt):
        // counted now, and limited.
        self.reconcile(None).await;
        // bursting may have been turned on
        self.bursting.poke();
        changed
    }
}
