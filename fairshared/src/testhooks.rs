//! Hooks that make the daemon slow or wedged on purpose, for the end-to-end
//! tests (`tests/e2e/tests/sessions.rs`). Compiled only with the cargo
//! feature `test-hooks`, which nothing that builds the shipped daemon turns
//! on (`make`, `make deb`, the package): there, none of this exists, and the
//! variables and the signal below do nothing.
//!
//! * `FAIRSHARE_TEST_SAVE_DELAY_MS=N`: every write of the state file takes N
//!   ms longer (a slow disk).
//! * `FAIRSHARE_TEST_ADOPT_DELAY_MS=N`: every move of a session process into
//!   a user's slice waits N ms first (a daemon late to adopt).
//! * `SIGUSR1`: every thread of the blocking pool blocks for good (a wedged
//!   daemon, for the watchdog).

use std::time::Duration;

fn delay(var: &str) -> Option<Duration> {
    let ms: u64 = std::env::var(var).ok()?.parse().ok()?;
    Some(Duration::from_millis(ms))
}

/// Says loudly that this daemon is a test build.
pub fn announce() {
    tracing::warn!(
        "built with the test hooks (feature test-hooks): not for production; FAIRSHARE_TEST_SAVE_DELAY_MS={:?} FAIRSHARE_TEST_ADOPT_DELAY_MS={:?}",
        delay("FAIRSHARE_TEST_SAVE_DELAY_MS"),
        delay("FAIRSHARE_TEST_ADOPT_DELAY_MS")
    );
}

/// In the blocking task that writes the state file.
pub fn slow_save() {
    if let Some(d) = delay("FAIRSHARE_TEST_SAVE_DELAY_MS") {
        std::thread::sleep(d);
    }
}

/// Before a session process is moved into a user's slice.
pub async fn before_adopt() {
    if let Some(d) = delay("FAIRSHARE_TEST_ADOPT_DELAY_MS") {
        tokio::time::sleep(d).await;
    }
}

/// On SIGUSR1, fills all `threads` threads of the blocking pool with tasks
/// that never end.
pub fn wedge_on_sigusr1(threads: usize) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut usr1) = signal(SignalKind::user_defined1()) else {
        return;
    };
    tokio::spawn(async move {
        if usr1.recv().await.is_some() {
            tracing::warn!(
                "SIGUSR1: wedging all {threads} threads of the blocking pool (test hook)"
            );
            for _ in 0..threads {
                tokio::task::spawn_blocking(|| {
                    loop {
                        std::thread::park();
                    }
                });
            }
        }
    });
}
