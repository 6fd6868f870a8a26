//! PAM session module (see the PAM issue); placeholder crate for now.
