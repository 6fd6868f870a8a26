//! The request decoder: any bytes get a request or an error message, never a
//! panic; a decoded request's quantities validate without panicking.
#![no_main]

use fairshare_proto::wire::{Request, parse_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_request(data) {
        Ok(Request::RequestResources(a)) | Ok(Request::SetUser { args: a, .. }) => {
            let _ = a.parse();
        }
        Ok(_) => {}
        Err(e) => assert!(!e.is_empty()),
    }
});
