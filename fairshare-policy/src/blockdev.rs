//! The disk behind an IO limit's target: a device node, or a path whose
//! file system's disk is found from `st_dev` through `/sys/dev/block`.
//!
//! The kernel takes IO limits per whole disk (`io.max` and
//! `blkio.throttle.*` are keyed by the disk's `MAJ:MIN`), and systemd
//! resolves a partition to its disk the same way. Two targets on one disk
//! (`/home` and `/tmp` on the root file system) must be merged before they
//! reach systemd: it applies same-disk entries one after the other, each
//! writing every limit of the disk, so the last entry wins and the others
//! are lost (measured; docs/design/fair-share.md).
//!
//! This is the one module of the crate that looks at the system; the daemon
//! calls it when it applies a policy, `--check` to say where each limit goes.

use std::fmt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::fair::IoTarget;

/// A whole disk.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Disk {
    pub major: u32,
    pub minor: u32,
    /// The kernel's name (`vda`, `nvme0n1`).
    pub name: String,
}

impl fmt::Display for Disk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}:{})", self.name, self.major, self.minor)
    }
}

/// glibc's `major()` and `minor()` of a `dev_t`.
pub fn split_dev(dev: u64) -> (u32, u32) {
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff);
    (major as u32, minor as u32)
}

/// The disk an IO limit on `target` applies to. `sys_dev_block` is normally
/// `/sys/dev/block`. The error says why no limit can apply there.
pub fn resolve(target: &IoTarget, sys_dev_block: &Path) -> Result<Disk, String> {
    let path = target.path();
    if let IoTarget::Path(_) = target {
        only_root_can_move(path, &[0]).map_err(|e| format!("{target}: {e}"))?;
    }
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        // fairshared's sandbox (PrivateDevices=yes) has no disk nodes in
        // /dev: the kernel's name is enough (/dev/sdb is sysfs's sdb)
        Err(_) if matches!(target, IoTarget::Device(_)) => {
            return by_name(target, sys_dev_block);
        }
        Err(e) => return Err(format!("cannot look at {target}: {e}")),
    };
    let dev = match target {
        IoTarget::Device(_) if meta.file_type().is_block_device() => meta.rdev(),
        IoTarget::Device(_) => {
            return Err(format!(
                "{target} is not a block device; name a disk such as /dev/sda, or a directory on it"
            ));
        }
        IoTarget::Path(_) => meta.dev(),
    };
    let (major, minor) = split_dev(dev);
    whole_disk(sys_dev_block, major, minor).map_err(|e| match target {
        IoTarget::Path(_) => format!(
            "{target} is on device {major}:{minor}, which is not a disk ({e}): a tmpfs, network, btrfs subvolume or other virtual file system; an IO limit cannot apply there"
        ),
        IoTarget::Device(_) => format!("{target} ({major}:{minor}): {e}"),
    })
}

/// Whether only `owners` (root) can make `path` lead somewhere else: every
/// component from `/` is owned by one of `owners` and no symbolic link, and
/// every directory on the way is writable by nobody else, or sticky (then
/// only the owner of an entry may rename it). systemd looks the path
/// up again each time it applies the limit: a path a user could swap for a
/// link to another disk (or to a tmpfs, where no limit applies) would let
/// them take their IO limit elsewhere.
pub fn only_root_can_move(path: &Path, owners: &[u32]) -> Result<(), String> {
    if !path.is_absolute() {
        return Err("not an absolute path".into());
    }
    let mut at = std::path::PathBuf::from("/");
    let mut parts = vec![at.clone()];
    for c in path.components().skip(1) {
        at.push(c);
        parts.push(at.clone());
    }
    let last = parts.len() - 1;
    for (i, p) in parts.iter().enumerate() {
        let m = std::fs::symlink_metadata(p)
            .map_err(|e| format!("cannot look at {}: {e}", p.display()))?;
        if m.file_type().is_symlink() {
            return Err(format!(
                "{} is a symbolic link, which could be pointed elsewhere; name the directory it leads to",
                p.display()
            ));
        }
        if !owners.contains(&m.uid()) {
            return Err(format!(
                "{} belongs to uid {}, who could replace it with a link to another disk; name a directory only root can change (e.g. /home, not a user's own directory)",
                p.display(),
                m.uid()
            ));
        }
        let shared = m.mode() & 0o022 != 0 && m.mode() & 0o1000 == 0;
        if i < last && m.is_dir() && shared {
            return Err(format!(
                "{} is writable by others (mode {:o}, not sticky), who could replace what is below it; name a directory only root can change",
                p.display(),
                m.mode() & 0o7777
            ));
        }
    }
    Ok(())
}

/// The disk of a device node that is not there to look at, by its kernel
/// name (`/dev/sdb` → `/sys/class/block/sdb/dev`, beside `sys_dev_block`).
fn by_name(target: &IoTarget, sys_dev_block: &Path) -> Result<Disk, String> {
    let name = target
        .path()
        .strip_prefix("/dev")
        .ok()
        .filter(|n| n.components().count() == 1)
        .and_then(|n| n.to_str())
        .ok_or_else(|| {
            format!("cannot look at {target}: name a disk as /dev/NAME (e.g. /dev/sdb), or a directory on it")
        })?;
    let class = sys_dev_block
        .join("../../class/block")
        .join(name)
        .join("dev");
    let dev = std::fs::read_to_string(&class)
        .map_err(|_| format!("{target}: no block device {name} on this host"))?;
    let (major, minor) = dev
        .trim()
        .split_once(':')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .ok_or_else(|| format!("{} says `{}`, not MAJ:MIN", class.display(), dev.trim()))?;
    whole_disk(sys_dev_block, major, minor)
}

/// The whole disk of block device `major:minor`: itself, or the disk a
/// partition belongs to.
pub fn whole_disk(sys_dev_block: &Path, major: u32, minor: u32) -> Result<Disk, String> {
    let link = sys_dev_block.join(format!("{major}:{minor}"));
    let dir =
        std::fs::canonicalize(&link).map_err(|_| format!("no {} in sysfs", link.display()))?;
    let disk_dir = match dir.join("partition").exists() {
        true => dir
            .parent()
            .ok_or_else(|| format!("partition {} has no parent disk", dir.display()))?
            .to_path_buf(),
        false => dir,
    };
    let dev = std::fs::read_to_string(disk_dir.join("dev"))
        .map_err(|e| format!("cannot read {}/dev: {e}", disk_dir.display()))?;
    let (ma, mi) = dev
        .trim()
        .split_once(':')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .ok_or_else(|| {
            format!(
                "{}/dev says `{}`, not MAJ:MIN",
                disk_dir.display(),
                dev.trim()
            )
        })?;
    let name = disk_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Disk {
        major: ma,
        minor: mi,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_numbers_split_like_glibc() {
        // 254:0 as st_dev on x86_64 (stat -c %d /home printed 65024)
        assert_eq!(split_dev(65024), (254, 0));
        assert_eq!(split_dev(0x0803), (8, 3));
        // a large minor, as glibc's makedev(259, 65536) encodes it
        let (major, minor) = (259u64, 65536u64);
        let dev = ((major & 0xfff) << 8) | ((minor & !0xff) << 12) | (minor & 0xff);
        assert_eq!(split_dev(dev), (259, 65536));
    }

    /// A sysfs tree like the kernel's: /sys/dev/block/MAJ:MIN links into
    /// /sys/devices, partitions inside their disk's directory.
    #[test]
    fn partitions_resolve_to_their_disk() {
        let t = tempfile::tempdir().unwrap();
        let devices = t.path().join("devices/pci0/virtio1/block/vda");
        std::fs::create_dir_all(devices.join("vda1")).unwrap();
        std::fs::write(devices.join("dev"), "254:0\n").unwrap();
        std::fs::write(devices.join("vda1/dev"), "254:1\n").unwrap();
        std::fs::write(devices.join("vda1/partition"), "1\n").unwrap();
        let block = t.path().join("dev/block");
        std::fs::create_dir_all(&block).unwrap();
        std::os::unix::fs::symlink(&devices, block.join("254:0")).unwrap();
        std::os::unix::fs::symlink(devices.join("vda1"), block.join("254:1")).unwrap();
        let vda = Disk {
            major: 254,
            minor: 0,
            name: "vda".into(),
        };
        assert_eq!(whole_disk(&block, 254, 1), Ok(vda.clone()));
        assert_eq!(whole_disk(&block, 254, 0), Ok(vda.clone()));
        assert_eq!(vda.to_string(), "vda (254:0)");
        // a device node that is not there (fairshared's PrivateDevices):
        // found by its kernel name
        let class = t.path().join("class/block");
        std::fs::create_dir_all(&class).unwrap();
        std::os::unix::fs::symlink(devices.join("vda1"), class.join("vda1")).unwrap();
        assert_eq!(
            resolve(&IoTarget::Device("/dev/vda1".into()), &block),
            Ok(vda.clone())
        );
        let e = resolve(&IoTarget::Device("/dev/nosuch".into()), &block).unwrap_err();
        assert!(e.contains("no block device nosuch"), "{e}");
        let e = resolve(&IoTarget::Device("/dev/disk/by-id/x".into()), &block).unwrap_err();
        assert!(e.contains("/dev/NAME"), "{e}");
        // tmpfs and friends: an anonymous device, not in /sys/dev/block
        let e = whole_disk(&block, 0, 45).unwrap_err();
        assert!(e.contains("0:45"), "{e}");
    }

    #[test]
    fn a_path_on_a_virtual_file_system_is_refused_with_why() {
        let t = tempfile::tempdir().unwrap();
        // /proc is never on a disk
        let e = resolve(&IoTarget::Path("/proc".into()), t.path()).unwrap_err();
        assert!(e.contains("an IO limit cannot apply there"), "{e}");
        let e = resolve(&IoTarget::Device("/dev/null".into()), t.path()).unwrap_err();
        assert!(e.contains("not a block device"), "{e}");
    }
}

#[cfg(test)]
mod move_tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_target_someone_else_could_swap_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path();
        // root owns what is above the temporary directory, the test's user
        // what is in it
        let trusted = [0, std::fs::metadata(base).unwrap().uid()];
        let data = base.join("data");
        std::fs::create_dir(&data).unwrap();
        assert_eq!(only_root_can_move(&data, &trusted), Ok(()));
        // a symbolic link on the way
        std::os::unix::fs::symlink(&data, base.join("link")).unwrap();
        let e = only_root_can_move(&base.join("link"), &trusted).unwrap_err();
        assert!(e.contains("is a symbolic link"), "{e}");
        // a directory on the way writable by others, not sticky
        let open = base.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::create_dir(open.join("x")).unwrap();
        let e = only_root_can_move(&open.join("x"), &trusted).unwrap_err();
        assert!(e.contains("writable by others (mode 777"), "{e}");
        // the target itself may be (it cannot be swapped from below it)
        assert_eq!(only_root_can_move(&open, &trusted), Ok(()));
        // sticky: only an entry's owner may rename it
        let sticky = base.join("sticky");
        std::fs::create_dir(&sticky).unwrap();
        std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1777)).unwrap();
        std::fs::create_dir(sticky.join("x")).unwrap();
        assert_eq!(only_root_can_move(&sticky.join("x"), &trusted), Ok(()));
        // a component of an owner not trusted
        let e = only_root_can_move(&data, &[trusted[1].wrapping_add(1)]).unwrap_err();
        assert!(e.contains("belongs to uid"), "{e}");
        assert!(only_root_can_move(Path::new("relative"), &[0]).is_err());
    }
}
