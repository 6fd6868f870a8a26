//! `fairshared-test-hooks`: fairshared (src/main.rs, unchanged) built with
//! the test hooks of `fairshared::testhooks`, which make it slow or wedged
//! on purpose. For the end-to-end tests in tests/e2e/tests/sessions.rs only,
//! which build it themselves:
//!
//! ```text
//! cargo build --release -p fairshared --features test-hooks --bin fairshared-test-hooks
//! ```
//!
//! It exists only with the feature `test-hooks` (`required-features`), which
//! nothing that builds the shipped daemon turns on.

#[path = "../main.rs"]
mod daemon;

fn main() -> std::process::ExitCode {
    daemon::main()
}
