//! The host's own size: online CPUs and installed memory.
//!
//! Read with `sysconf` and `sysinfo(2)` rather than from /proc, which the
//! hardened unit hides (`ProcSubset=pid`).

use fairshare_policy::HostResources;
use fairshare_proto::units::{Bytes, Cpus};
use nix::unistd::{SysconfVar, sysconf};

/// Reads the host's CPUs (online) and memory (total RAM).
pub fn resources() -> HostResources {
    let cpus = sysconf(SysconfVar::_NPROCESSORS_ONLN)
        .ok()
        .flatten()
        .and_then(|n| u64::try_from(n).ok())
        .filter(|n| *n > 0)
        .unwrap_or(1);
    let mem = nix::sys::sysinfo::sysinfo()
        .map(|s| s.ram_total())
        .ok()
        .filter(|m| *m > 0)
        .unwrap_or(Bytes::GIB);
    HostResources {
        cpus: Cpus::whole(cpus),
        mem: Bytes(mem),
    }
}

/// Large buffers (the state file's encoding, a `list` answer: megabytes at
/// thousands of users) are given back to the system when freed, instead of
/// staying in the heap after glibc raises its mmap threshold to their size:
/// at 10 000 users that kept 8 MiB of RSS for good. Call before any thread
/// starts. Elsewhere than glibc this does nothing.
pub fn keep_heap_small() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before other
    // threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Returns the heap's free pages to the system (`malloc_trim`): after a
/// pass over every user, whose passing allocations would otherwise stay in
/// the daemon's resident memory.
pub fn give_back_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; safe at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_host_has_some() {
        let h = resources();
        assert!(h.cpus >= Cpus::whole(1));
        assert!(h.mem.get() > Bytes::MIB);
        // sysinfo and /proc/meminfo agree (to the kB)
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        let kb: u64 = meminfo
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(h.mem.get() / 1024, kb);
    }
}
