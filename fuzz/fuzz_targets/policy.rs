//! The policy loader: any text is a policy or a list of errors, each naming a
//! file, and a loaded policy resolves every user without panicking.
#![no_main]

use fairshare_policy::{HostResources, Identity, Policy};
use fairshare_proto::units::{Bytes, Cpus};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Half the input as a first drop-in, the rest as a second one.
    let cut = text.char_indices().nth(text.chars().count() / 2).map_or(text.len(), |(i, _)| i);
    let sources = vec![
        ("00-a.yaml".to_string(), text[..cut].to_string()),
        ("10-b.yaml".to_string(), text[cut..].to_string()),
    ];
    match Policy::from_sources(&sources) {
        Ok(p) => {
            for groups in [vec![], vec!["students".to_string(), "admins".to_string()]] {
                let u = p.for_user(&Identity { uid: 1000, name: "alice".into(), groups });
                assert!(u.default.cpu <= u.max.cpu);
                assert!(u.default.mem <= u.max.mem);
            }
            let _ = p.capacity(HostResources { cpus: Cpus::whole(2), mem: Bytes(8 << 30) });
            let _ = p.summary();
        }
        Err(e) => {
            assert!(!e.0.is_empty());
            for err in &e.0 {
                assert!(err.origin.file.ends_with(".yaml") || err.origin.file.contains(", "));
            }
        }
    }
});
