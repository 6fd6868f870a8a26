//! Telling users what their limits did to them (issue 14): OOM kills caused
//! by their memory limit, sustained CPU throttling, stalls above their soft
//! memory limit; a notice on their terminals, their event history, and the
//! line at login. The design, and the measurements it rests on, are in
//! `docs/design/notices.md`.
//!
//! The pure parts, then the I/O around them: [`watch`] (one task per
//! logged-in user on their slice's event files), [`kernel_log`] (victims'
//! names from `/dev/kmsg`) and [`hub`] (the owner of the history, choices,
//! bursts, watchers and counters). The service decides what a notice says
//! and writes it to the user's terminals ([`crate::tty`]) in
//! `service/notices.rs`.
//!
//! * [`counters`]: the cgroup files per layout and what is in them.
//! * [`oom`]: which kills the slice's own limit caused (v2 counters, v1
//!   eventfd and `failcnt`).
//! * [`kmsg`]: the victims' pids and names from the kernel's report.
//! * [`throttle`]: sustained throttling from counter samples, one finding
//!   per burst.
//! * [`coalesce`]: which events reach the terminal (once per burst, a
//!   minimum interval).
//! * [`history`]: each user's recent events and their notices choice.
//! * [`notice`]: the notice and login line texts, with the resize that
//!   would help.
//! * [`watch`], [`kernel_log`], [`hub`]: see above.

pub mod coalesce;
pub mod counters;
pub mod history;
pub mod hub;
pub mod kernel_log;
pub mod kmsg;
pub mod notice;
pub mod oom;
pub mod throttle;
pub mod watch;
