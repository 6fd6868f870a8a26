//! Memory guarantees within `capacity.mem_low` (issue 15): who gets how
//! much `MemoryLow` when the guarantees wanted add up to more than the host
//! hands out. Pure: no I/O; the ledger calls [`share`] at every login,
//! logout, resize and reload ([`crate::ledger::Ledger::regrant`]).
//!
//! Who counts: users with a session, and users whose guarantee was set
//! explicitly (root's `fairshare-ctl set --mem-low`, a reservation even
//! while they are away, or their own resize). Root's guarantees are honoured first: root's `set` was checked
//! against what was free (or forced), so a later login does not shrink it.
//! Everyone else (the policy's `mem_low`, or the user's own resize) shares
//! what is left by `capacity.mem_low.when_full`:
//!
//! * `scale`: every guarantee shrinks in proportion, so that they add up to
//!   what is left; they grow back as users leave;
//! * `first_come`: in login order (the start of the user's continuous run of
//!   sessions); a newcomer gets what is left, possibly nothing, and gets
//!   more as earlier users leave.
//!
//! A user's own resize gets no priority over the policy's defaults: a
//! resize to one's own default would otherwise put a user ahead of everyone
//! at no cost. Root's guarantees, should they alone exceed the total (a
//! `--force`, a reload that lowered it), share it by the same rule among
//! themselves. Logins are never refused.

use fairshare_policy::{WhenFull, grant_mem_low};
use fairshare_proto::units::Bytes;

/// The memory guarantees the host hands out in total, and what to do when
/// more is wanted (`capacity.mem_low`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    pub total: Bytes,
    pub mode: WhenFull,
}

/// One user's wanted guarantee.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Want {
    pub uid: u32,
    /// What their limits say (policy default, their resize, root's setting).
    pub want: Bytes,
    /// Root's setting: honoured first.
    pub rooted: bool,
    /// Unix time their run of sessions began (login order for
    /// `first_come`); `u64::MAX` without a session.
    pub since: u64,
}

/// What each user gets: the same users, in no particular order; the sum
/// never exceeds `pool.total`, and nobody gets more than they want. A
/// guarantee cut down is rounded down to a whole MiB.
pub fn share(pool: Pool, wants: &[Want]) -> Vec<(u32, Bytes)> {
    let mut order: Vec<&Want> = wants.iter().collect();
    order.sort_by_key(|w| (!w.rooted, w.since, w.uid));
    let rooted: Vec<(u32, Bytes)> = order
        .iter()
        .filter(|w| w.rooted)
        .map(|w| (w.uid, w.want))
        .collect();
    let rest: Vec<(u32, Bytes)> = order
        .iter()
        .filter(|w| !w.rooted)
        .map(|w| (w.uid, w.want))
        .collect();
    let mut out = grant_mem_low(pool.total, pool.mode, &rooted);
    let used = out
        .iter()
        .fold(Bytes::default(), |t, (_, b)| t.saturating_add(*b));
    out.extend(grant_mem_low(
        pool.total.saturating_sub(used),
        pool.mode,
        &rest,
    ));
    // a guarantee cut down goes to whole MiB (the kernel keeps pages);
    // `grant_mem_low` answers in the order asked
    for ((_, got), (_, wanted)) in out.iter_mut().zip(rooted.iter().chain(&rest)) {
        if *got < *wanted {
            *got = Bytes(got.get() - got.get() % MIB);
        }
    }
    out
}

const MIB: u64 = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 1 << 20;

    fn want(uid: u32, mib: u64, since: u64) -> Want {
        Want {
            uid,
            want: Bytes(mib * M),
            rooted: false,
            since,
        }
    }

    fn got(pool: Pool, wants: &[Want]) -> Vec<(u32, u64)> {
        let mut g: Vec<(u32, u64)> = share(pool, wants)
            .into_iter()
            .map(|(u, b)| (u, b.get() / M))
            .collect();
        g.sort();
        g
    }

    fn pool(mib: u64, mode: WhenFull) -> Pool {
        Pool {
            total: Bytes(mib * M),
            mode,
        }
    }

    #[test]
    fn within_the_total_everyone_gets_what_they_want_in_either_mode() {
        let w = [want(1001, 1024, 20), want(1002, 512, 10)];
        for mode in [WhenFull::Scale, WhenFull::FirstCome] {
            assert_eq!(got(pool(2048, mode), &w), vec![(1001, 1024), (1002, 512)]);
        }
    }

    #[test]
    fn scale_shrinks_everyone_in_proportion() {
        let w = [
            want(1001, 1024, 10),
            want(1002, 1024, 20),
            want(1003, 2048, 30),
        ];
        assert_eq!(
            got(pool(2048, WhenFull::Scale), &w),
            vec![(1001, 512), (1002, 512), (1003, 1024)]
        );
    }

    #[test]
    fn first_come_goes_by_login_order_not_by_uid() {
        // 1003 logged in first, then 1001, then 1002
        let w = [
            want(1001, 1024, 20),
            want(1002, 1024, 30),
            want(1003, 1536, 10),
        ];
        assert_eq!(
            got(pool(2048, WhenFull::FirstCome), &w),
            vec![(1001, 512), (1002, 0), (1003, 1536)]
        );
        // the same second: the lower uid first
        let tie = [want(1002, 1024, 10), want(1001, 1024, 10)];
        assert_eq!(
            got(pool(1024, WhenFull::FirstCome), &tie),
            vec![(1001, 1024), (1002, 0)]
        );
    }

    #[test]
    fn a_logout_frees_for_those_left_and_a_larger_total_for_everyone() {
        let three = [
            want(1001, 1024, 10),
            want(1002, 1024, 20),
            want(1003, 1024, 30),
        ];
        assert_eq!(
            got(pool(2048, WhenFull::FirstCome), &three),
            vec![(1001, 1024), (1002, 1024), (1003, 0)]
        );
        // the first user leaves: the last one gets theirs
        assert_eq!(
            got(pool(2048, WhenFull::FirstCome), &three[1..]),
            vec![(1002, 1024), (1003, 1024)]
        );
        assert_eq!(
            got(pool(1536, WhenFull::Scale), &three[1..]),
            vec![(1002, 768), (1003, 768)]
        );
        // a reload that raises the total: nobody scaled any more
        assert_eq!(
            got(pool(3072, WhenFull::Scale), &three),
            vec![(1001, 1024), (1002, 1024), (1003, 1024)]
        );
        // one that lowers it: everyone shrinks
        assert_eq!(
            got(pool(1536, WhenFull::Scale), &three),
            vec![(1001, 512), (1002, 512), (1003, 512)]
        );
    }

    #[test]
    fn roots_guarantees_come_first_and_the_rest_share_what_is_left() {
        let mut r = want(1009, 1024, u64::MAX);
        r.rooted = true;
        let w = [want(1001, 1024, 10), want(1002, 1024, 20), r];
        assert_eq!(
            got(pool(2048, WhenFull::Scale), &w),
            vec![(1001, 512), (1002, 512), (1009, 1024)]
        );
        assert_eq!(
            got(pool(2048, WhenFull::FirstCome), &w),
            vec![(1001, 1024), (1002, 0), (1009, 1024)]
        );
        // root's alone beyond the total: shared among them, nothing left
        let mut r2 = want(1010, 2048, u64::MAX);
        r2.rooted = true;
        assert_eq!(
            got(pool(2048, WhenFull::Scale), &[w[0], r, r2]),
            vec![(1001, 0), (1009, 682), (1010, 1365)]
        );
    }

    #[test]
    fn the_grants_never_exceed_the_total_nor_anyones_want() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..500 {
            let n = next(8) as usize;
            let w: Vec<Want> = (0..n)
                .map(|i| Want {
                    uid: 1000 + i as u32,
                    want: Bytes(next(4096) * M),
                    rooted: next(4) == 0,
                    since: next(100),
                })
                .collect();
            let mode = match next(2) {
                0 => WhenFull::Scale,
                _ => WhenFull::FirstCome,
            };
            let p = pool(next(8192), mode);
            let g = share(p, &w);
            assert_eq!(g.len(), w.len());
            let sum: u64 = g.iter().map(|(_, b)| b.get()).sum();
            assert!(sum <= p.total.get(), "{sum} > {:?}", p.total);
            for (uid, b) in &g {
                let asked = w.iter().find(|x| x.uid == *uid).unwrap().want;
                assert!(*b <= asked);
            }
        }
    }
}
