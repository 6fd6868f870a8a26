//! Links the unwinder statically (`libgcc_eh.a`, found by the C compiler
//! that links the module) instead of through `libgcc_s.so.1`: a login
//! process (sshd, login) has no Rust in it, so loading libgcc_s for the
//! module cost every login about 110 µs of `dlopen` (measured, issue 12).
//! `catch_unwind` at the PAM boundary works the same; only `pam_sm_*` are
//! exported (rustc's version script), so the unwinder's symbols stay ours.

fn main() {
    // glibc targets only: others (musl) bring their own unwinder
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    if var("CARGO_CFG_TARGET_OS") == "linux" && var("CARGO_CFG_TARGET_ENV") == "gnu" {
        println!("cargo:rustc-link-lib=static:-bundle=gcc_eh");
        println!("cargo:rustc-cdylib-link-arg=-Wl,--exclude-libs,ALL");
    }
}
