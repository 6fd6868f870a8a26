//! Medians and percentiles of samples (nearest rank, no interpolation).

/// The `p`-th percentile (0..=100) of `samples`, by nearest rank.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut s: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return None;
    }
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    Some(s[rank.clamp(1, s.len()) - 1])
}

/// The median; for an even count, the mean of the two middle samples.
pub fn median(samples: &[f64]) -> Option<f64> {
    let mut s: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return None;
    }
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

/// Resamples behind the intervals the notes give.
pub const BOOTSTRAP_REPS: usize = 2000;

/// How far a figure computed from two sets of samples (`stat(a)` against
/// `stat(b)`, combined by `f`: a difference, a ratio) could move by chance:
/// the central `conf` (0..1) interval of `f` over `reps` bootstrap resamples
/// (each set drawn again with replacement, to its own size). Deterministic:
/// a fixed seed, so one set of samples always gives one interval.
pub fn bootstrap(
    a: &[f64],
    b: &[f64],
    stat: impl Fn(&[f64]) -> Option<f64>,
    f: impl Fn(f64, f64) -> f64,
    reps: usize,
    conf: f64,
) -> Option<(f64, f64)> {
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let (mut ra, mut rb) = (vec![0.0; a.len()], vec![0.0; b.len()]);
    resampled(reps, conf, |draw| {
        for x in ra.iter_mut() {
            *x = a[draw(a.len())];
        }
        for x in rb.iter_mut() {
            *x = b[draw(b.len())];
        }
        Some(f(stat(&ra)?, stat(&rb)?))
    })
}

/// [`bootstrap`] for samples taken in pairs (`a[i]` and `b[i]` from one
/// round): the rounds are drawn again, each with both its samples.
pub fn bootstrap_paired(
    a: &[f64],
    b: &[f64],
    stat: impl Fn(&[f64]) -> Option<f64>,
    f: impl Fn(f64, f64) -> f64,
    reps: usize,
    conf: f64,
) -> Option<(f64, f64)> {
    let n = a.len().min(b.len());
    if n == 0 {
        return None;
    }
    let (mut ra, mut rb) = (vec![0.0; n], vec![0.0; n]);
    resampled(reps, conf, |draw| {
        for (x, y) in ra.iter_mut().zip(rb.iter_mut()) {
            let i = draw(n);
            (*x, *y) = (a[i], b[i]);
        }
        Some(f(stat(&ra)?, stat(&rb)?))
    })
}

/// The central `conf` interval of `reps` values of `figure`, each computed
/// from one resample that `figure` builds with the draw it is given (an
/// index below its argument, uniformly, from a fixed seed).
fn resampled(
    reps: usize,
    conf: f64,
    mut figure: impl FnMut(&mut dyn FnMut(usize) -> usize) -> Option<f64>,
) -> Option<(f64, f64)> {
    // xorshift64*: enough for drawing indices, and no dependency
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut draw = |n: usize| {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as usize % n
    };
    let out: Vec<f64> = (0..reps).filter_map(|_| figure(&mut draw)).collect();
    let tail = (1.0 - conf) / 2.0 * 100.0;
    Some((percentile(&out, tail)?, percentile(&out, 100.0 - tail)?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn medians_and_percentiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&s, 99.0), Some(99.0));
        assert_eq!(percentile(&s, 100.0), Some(100.0));
        assert_eq!(percentile(&s, 50.0), Some(50.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
    }

    #[test]
    fn a_bootstrap_interval_holds_the_true_difference_and_narrows_with_more_samples() {
        // two spread-out sets whose medians differ by 2
        let set = |n: usize, shift: f64| -> Vec<f64> {
            (0..n)
                .map(|i| ((i * 37) % n) as f64 / n as f64 * 40.0 + shift)
                .collect()
        };
        let width = |n: usize| {
            let (lo, hi) =
                bootstrap(&set(n, 2.0), &set(n, 0.0), median, |a, b| a - b, 500, 0.9).unwrap();
            assert!(lo <= 2.0 && 2.0 <= hi, "{lo}..{hi} at n={n}");
            hi - lo
        };
        assert!(width(1000) < width(100) / 2.0);
        // the same samples give the same interval
        let (a, b) = (set(50, 1.0), set(60, 0.0));
        assert_eq!(
            bootstrap(&a, &b, median, |x, y| x / y, 200, 0.9),
            bootstrap(&a, &b, median, |x, y| x / y, 200, 0.9)
        );
        assert_eq!(bootstrap(&[], &b, median, |x, y| x - y, 10, 0.9), None);
        // paired: rounds whose two samples move together give a narrow ratio
        let with: Vec<f64> = (0..11).map(|i| 100.0 + 10.0 * i as f64).collect();
        let without: Vec<f64> = with.iter().map(|x| x / 1.1).collect();
        let (lo, hi) = bootstrap_paired(&with, &without, median, |a, b| a / b, 500, 0.9).unwrap();
        assert!(
            (lo - 1.1).abs() < 1e-9 && (hi - 1.1).abs() < 1e-9,
            "{lo}..{hi}"
        );
        let (lo, hi) = bootstrap(&with, &without, median, |a, b| a / b, 500, 0.9).unwrap();
        assert!(lo < 1.05 && hi > 1.15, "unpaired {lo}..{hi}");
    }
}
