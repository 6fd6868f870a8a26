//! Sizes, CPU counts, task counts, weights, IO rates and durations: never a panic, and whatever
//! parses shows the same value again.
#![no_main]

use fairshare_proto::units::{
    Bandwidth, Bytes, Cpus, Iops, Tasks, Weight, format_duration, parse_duration,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(b) = s.parse::<Bytes>() {
        assert!(b.get() > 0);
        assert_eq!(b.to_string().parse::<Bytes>(), Ok(b));
        let _ = b.human();
    }
    if let Ok(c) = s.parse::<Cpus>() {
        assert!(c >= Cpus::MIN && c <= Cpus::MAX);
        assert_eq!(c.to_string().parse::<Cpus>(), Ok(c));
    }
    if let Ok(t) = s.parse::<Tasks>() {
        assert!(t.get() > 0 && t <= Tasks::MAX);
        assert_eq!(t.to_string().parse::<Tasks>(), Ok(t));
    }
    if let Ok(w) = s.parse::<Weight>() {
        assert!(w >= Weight::MIN && w <= Weight::MAX);
        assert_eq!(w.to_string().parse::<Weight>(), Ok(w));
    }
    if let Ok(b) = s.parse::<Bandwidth>() {
        assert!(b >= Bandwidth::MIN && b <= Bandwidth::MAX);
        assert_eq!(b.to_string().parse::<Bandwidth>(), Ok(b));
    }
    if let Ok(i) = s.parse::<Iops>() {
        assert!(i <= Iops::MAX && i.get() > 0);
        assert_eq!(i.to_string().parse::<Iops>(), Ok(i));
    }
    if let Ok(d) = parse_duration(s) {
        assert_eq!(parse_duration(&format_duration(d)), Ok(d));
    }
});
