//! The host's own size: online CPUs and installed memory.

use fairshare_policy::HostResources;
use fairshare_proto::units::{Bytes, Cpus};
use nix::unistd::{SysconfVar, sysconf};

/// Reads the host's CPUs (online) and memory (`MemTotal`).
pub fn resources() -> HostResources {
    let cpus = sysconf(SysconfVar::_NPROCESSORS_ONLN)
        .ok()
        .flatten()
        .and_then(|n| u64::try_from(n).ok())
        .filter(|n| *n > 0)
        .unwrap_or(1);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| mem_total(&t))
        .unwrap_or(Bytes(Bytes::GIB));
    HostResources {
        cpus: Cpus::whole(cpus),
        mem,
    }
}

fn mem_total(meminfo: &str) -> Option<Bytes> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(Bytes(kb.saturating_mul(1024)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_meminfo() {
        let t = "MemTotal:       24576000 kB\nMemFree:  1 kB\n";
        assert_eq!(mem_total(t), Some(Bytes(24_576_000 * 1024)));
        assert_eq!(mem_total("nothing"), None);
    }

    #[test]
    fn this_host_has_some() {
        let h = resources();
        assert!(h.cpus >= Cpus::whole(1));
        assert!(h.mem.get() > Bytes::MIB);
    }
}
