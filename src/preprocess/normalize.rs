//! brainchop's `qnormalize` (tiny_meshnet.py):
//!
//! ```python
//! qlow = np.quantile(img, qmin); qhigh = np.quantile(img, qmax)
//! img = np.clip((img - qlow) / (qhigh - qlow + eps), 0, 1)
//! ```
//!
//! `img` is a float32 array and numpy (2.x, NEP 50) keeps every step in float32: the quantile
//! is `lerp` in float32 with the interpolation weight rounded to float32, and the Python floats
//! `eps`, 0 and 1 are "weak" and become float32 too. This port does the same arithmetic, so
//! its output is bit-identical to numpy's (an f64 computation would differ in the last bit of
//! some voxels).
//!
//! NaN voxels are treated as the minimum of the volume (numpy would make every output NaN).

/// brainchop's qnormalize: `clip((x - q(qmin)) / (q(qmax) - q(qmin) + eps), 0, 1)` with
/// numpy's default ('linear') quantiles over all of `data`, bit-identical to numpy on float32.
///
/// O(n) for volumes whose values are all integers 0..=255 (the conformed uint8 volumes, via a
/// histogram), O(n) expected otherwise (quickselect). Empty input gives empty output.
pub fn quantile_normalize(data: &[f32], qmin: f64, qmax: f64, eps: f64) -> Vec<f32> {
    if data.is_empty() {
        return Vec::new();
    }
    let [qlow, qhigh] = quantiles(data, [qmin, qmax]);
    let nan_as = nan_replacement(data);
    let denominator = qhigh - qlow + eps as f32;
    data.iter()
        .map(|&v| {
            let v = if v.is_nan() { nan_as } else { v };
            // np.clip(x, 0, 1) = minimum(maximum(x, 0), 1)
            // NaN (only from a non-finite quantile) stays NaN, as with np.clip
            ((v - qlow) / denominator).clamp(0.0, 1.0)
        })
        .collect()
}

/// `np.quantile(data, q)` (method 'linear') for a float32 array and a Python-float `q`: the
/// result numpy gives, in float32. NaN values are treated as the minimum (see module docs).
/// Returns NaN for empty input; `q` is clamped to 0..=1.
pub fn numpy_quantile(data: &[f32], q: f64) -> f32 {
    if data.is_empty() {
        return f32::NAN;
    }
    quantiles(data, [q])[0]
}

/// Several quantiles of `data` from one pass (histogram) or one working copy (selection).
fn quantiles<const N: usize>(data: &[f32], qs: [f64; N]) -> [f32; N] {
    let n = data.len();
    let positions = qs.map(|q| Position::new(n, q));
    if let Some(hist) = byte_histogram(data) {
        return positions.map(|p| {
            let a = kth_from_histogram(&hist, p.previous);
            let b = kth_from_histogram(&hist, p.next);
            lerp(a, b, p.gamma)
        });
    }
    let nan_as = nan_replacement(data);
    let mut work: Vec<f32> = data
        .iter()
        .map(|&v| if v.is_nan() { nan_as } else { v })
        .collect();
    positions.map(|p| {
        let (_, &mut a, right) = work.select_nth_unstable_by(p.previous, f32::total_cmp);
        let b = if p.next == p.previous {
            a
        } else {
            // the next order statistic is the smallest value right of `previous`
            right.iter().copied().fold(f32::INFINITY, f32::min)
        };
        lerp(a, b, p.gamma)
    })
}

/// Where numpy's 'linear' method samples the sorted data: `virtual = (n - 1) * q`, its floor
/// and the next index (both clamped to the data), and the weight `gamma = virtual - previous`.
#[derive(Clone, Copy, Debug)]
struct Position {
    previous: usize,
    next: usize,
    gamma: f64,
}

impl Position {
    fn new(n: usize, q: f64) -> Position {
        let q = if q.is_nan() { 0.0 } else { q.clamp(0.0, 1.0) };
        let last = n - 1;
        let virtual_index = last as f64 * q;
        if virtual_index >= last as f64 {
            // numpy takes the last element (its gamma is then irrelevant: a == b)
            return Position {
                previous: last,
                next: last,
                gamma: 0.0,
            };
        }
        let previous = virtual_index.floor();
        Position {
            previous: previous as usize,
            next: previous as usize + 1,
            gamma: virtual_index - previous,
        }
    }
}

/// numpy's `_lerp(a, b, t)` on float32 with a weak (Python float) `t`.
fn lerp(a: f32, b: f32, t: f64) -> f32 {
    let diff = b - a;
    if t >= 0.5 {
        b - diff * ((1.0 - t) as f32)
    } else {
        a + diff * (t as f32)
    }
}

/// The value NaN voxels stand for: the smallest non-NaN value (0 if all are NaN).
fn nan_replacement(data: &[f32]) -> f32 {
    let min = data.iter().copied().fold(f32::INFINITY, f32::min);
    if min == f32::INFINITY && !data.contains(&f32::INFINITY) {
        0.0
    } else {
        min
    }
}

/// Counts per value when every value is an integer 0..=255 (a conformed volume), else None.
fn byte_histogram(data: &[f32]) -> Option<[usize; 256]> {
    let mut hist = [0usize; 256];
    for &v in data {
        // rejects NaN, fractions, negatives (including -0.0, kept exact by the general path)
        if !(0.0..=255.0).contains(&v) || v.is_sign_negative() {
            return None;
        }
        let byte = v as u8;
        if f32::from(byte) != v {
            return None;
        }
        hist[usize::from(byte)] += 1;
    }
    Some(hist)
}

/// The k-th smallest value (0-based) described by a byte histogram.
fn kth_from_histogram(hist: &[usize; 256], k: usize) -> f32 {
    let mut seen = 0usize;
    for (value, &count) in hist.iter().enumerate() {
        seen += count;
        if seen > k {
            return value as f32;
        }
    }
    255.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted_quantile(data: &[f32], q: f64) -> f32 {
        let mut s = data.to_vec();
        s.sort_by(f32::total_cmp);
        let p = Position::new(s.len(), q);
        lerp(s[p.previous], s[p.next], p.gamma)
    }

    #[test]
    fn small_known_values() {
        // np.quantile([1, 2, 3, 4], 0.5) == 2.5 ; 0.02 -> 1.06 ; 0.98 -> 3.94
        let d = [4.0f32, 1.0, 3.0, 2.0];
        assert_eq!(numpy_quantile(&d, 0.5), 2.5);
        assert_eq!(numpy_quantile(&d, 0.0), 1.0);
        assert_eq!(numpy_quantile(&d, 1.0), 4.0);
        assert!((numpy_quantile(&d, 0.02) - 1.06).abs() < 1e-6);
        assert!((numpy_quantile(&d, 0.98) - 3.94).abs() < 1e-6);
        assert_eq!(numpy_quantile(&[7.5], 0.3), 7.5);
    }

    #[test]
    fn histogram_and_selection_agree() {
        let bytes: Vec<f32> = (0..10_007u32)
            .map(|i| ((i * 7919 + i / 13) % 256) as f32)
            .collect();
        let mut floats = bytes.clone();
        floats[17] += 0.25; // forces the selection path
        for q in [0.0, 0.02, 0.3, 0.5, 0.98, 1.0] {
            assert_eq!(numpy_quantile(&bytes, q), sorted_quantile(&bytes, q));
            assert_eq!(numpy_quantile(&floats, q), sorted_quantile(&floats, q));
        }
    }

    #[test]
    fn normalized_range_and_nan() {
        let mut d: Vec<f32> = (0..1000).map(|i| i as f32 * 0.5).collect();
        d[10] = f32::NAN;
        let out = quantile_normalize(&d, 0.02, 0.98, 1e-3);
        assert_eq!(out.len(), d.len());
        assert!(out.iter().all(|v| (0.0..=1.0).contains(v)));
        assert_eq!(out[10], 0.0);
        assert_eq!(out[0], 0.0);
        assert_eq!(out[999], 1.0);
        assert!(quantile_normalize(&[], 0.02, 0.98, 1e-3).is_empty());
        // constant volume: (x - q) / eps = 0
        assert!(quantile_normalize(&[3.0; 10], 0.02, 0.98, 1e-3)
            .iter()
            .all(|&v| v == 0.0));
        assert!(numpy_quantile(&[f32::NAN; 3], 0.5) == 0.0);
    }
}
