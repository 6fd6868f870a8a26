//! fairshare-ctl: the command-line client of fairshared.
//!
//! [`cli`] holds the command line (shared with the man page and completion
//! generators); [`format`] turns answers into text for people, [`events`]
//! the event history; [`textfile`] writes the metrics file for
//! node_exporter; [`top`] is the live view.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod cli;
pub mod events;
pub mod format;
pub mod textfile;
pub mod top;
