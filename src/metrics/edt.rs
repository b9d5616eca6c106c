//! Exact Euclidean distance transform on an anisotropic 3-D grid.
//!
//! Separable Felzenszwalb–Huttenlocher transform ("Distance Transforms of Sampled Functions",
//! Theory of Computing 8, 2012): the squared distance is minimised one axis at a time, each line
//! by the lower envelope of parabolas `f(v) + ((q - v) * spacing)²`, which is O(n) per line and
//! exact (no chamfer or propagation approximation). The axes are processed in the order
//! i, j, k and each axis adds its own squared term, so the final value for the nearest feature
//! point is `((di·si)² + (dj·sj)²) + (dk·sk)²`, the same floating-point expression that
//! `scipy.ndimage.distance_transform_edt(..., sampling=...)` evaluates.

/// Squared distance transform in place.
///
/// `grid` holds `0.0` at feature points and `f64::INFINITY` elsewhere, laid out with axis 0 (i)
/// fastest, then j, then k, with `dims` voxels per axis and `spacing` mm per voxel along each
/// axis. On return every element holds the squared distance (mm²) to the nearest feature point,
/// or infinity when there is none.
pub(super) fn squared_edt(grid: &mut [f64], dims: [usize; 3], spacing: [f64; 3]) {
    let [nx, ny, nz] = dims;
    assert_eq!(
        grid.len(),
        nx * ny * nz,
        "grid size does not match its dimensions"
    );
    if grid.is_empty() {
        return;
    }

    // Axis i: only 0 / inf, so a forward and a backward scan find the nearest feature per line.
    for line in grid.chunks_exact_mut(nx) {
        binary_line(line, spacing[0]);
    }

    let mut lines = Lines::new(ny.max(nz));
    // Axis j: within each k-plane, the lines start at i = 0..nx and step by nx.
    if ny > 1 {
        for plane in grid.chunks_exact_mut(nx * ny) {
            lines.transform_axis(plane, nx, ny, nx, spacing[1]);
        }
    }
    // Axis k: the lines start at every (i, j) and step by nx * ny.
    if nz > 1 {
        lines.transform_axis(grid, nx * ny, nz, nx * ny, spacing[2]);
    }
}

/// How many neighbouring lines are gathered together: their elements are adjacent in memory, so
/// each cache line fetched serves the whole block instead of one element.
const BLOCK: usize = 32;

/// Scratch space for transforming lines in blocks.
struct Lines {
    envelope: Envelope,
    /// `BLOCK` gathered lines, line-major.
    buf: Vec<f64>,
    out: Vec<f64>,
}

impl Lines {
    fn new(longest: usize) -> Lines {
        Lines {
            envelope: Envelope::new(longest),
            buf: vec![0.0; BLOCK * longest],
            out: vec![0.0; longest],
        }
    }

    /// Transforms the `count` lines of `len` elements that start at `data[0..count]` and step by
    /// `stride`.
    fn transform_axis(
        &mut self,
        data: &mut [f64],
        count: usize,
        len: usize,
        stride: usize,
        s: f64,
    ) {
        let mut first = 0;
        while first < count {
            let width = BLOCK.min(count - first);
            // Gather: element t of line b goes to buf[b * len + t].
            let mut live = [false; BLOCK];
            for t in 0..len {
                let row = &data[first + t * stride..first + t * stride + width];
                for (b, &x) in row.iter().enumerate() {
                    self.buf[b * len + t] = x;
                    live[b] |= x.is_finite();
                }
            }
            for (b, _) in live[..width].iter().enumerate().filter(|(_, &l)| l) {
                // (Lines no feature reaches yet stay infinite.)
                let line = &mut self.buf[b * len..(b + 1) * len];
                self.envelope.transform(line, &mut self.out[..len], s);
                line.copy_from_slice(&self.out[..len]);
            }
            for t in 0..len {
                let row = &mut data[first + t * stride..first + t * stride + width];
                for (b, x) in row.iter_mut().enumerate() {
                    *x = self.buf[b * len + t];
                }
            }
            first += width;
        }
    }
}

/// First pass: `line` is 0 at features and inf elsewhere; writes `((q - v) * s)²` for the nearest
/// feature `v`, or leaves inf when the line has none.
fn binary_line(line: &mut [f64], s: f64) {
    // Forward: distance to the nearest feature at or before q.
    let mut last: Option<usize> = None;
    for (q, x) in line.iter_mut().enumerate() {
        if *x == 0.0 {
            last = Some(q);
        } else if let Some(v) = last {
            let d = (q - v) as f64 * s;
            *x = d * d;
        }
    }
    // Backward: a feature after q may be closer.
    let mut next: Option<usize> = None;
    for (q, x) in line.iter_mut().enumerate().rev() {
        if *x == 0.0 {
            next = Some(q);
        } else if let Some(v) = next {
            let d = (v - q) as f64 * s;
            let d2 = d * d;
            if d2 < *x {
                *x = d2;
            }
        }
    }
}

/// Scratch space for the lower envelope of parabolas along one line.
struct Envelope {
    /// Positions of the parabolas in the envelope.
    v: Vec<usize>,
    /// Boundaries between consecutive envelope parabolas (`z[k]..z[k+1]` belongs to `v[k]`).
    z: Vec<f64>,
}

impl Envelope {
    fn new(n: usize) -> Envelope {
        Envelope {
            v: vec![0; n.max(1)],
            z: vec![0.0; n.max(1) + 1],
        }
    }

    /// `out[q] = min_v f[v] + ((q - v) * s)²` over the finite `f[v]`; inf when none is finite.
    fn transform(&mut self, f: &[f64], out: &mut [f64], s: f64) {
        let n = f.len();
        let Some(first) = f.iter().position(|x| x.is_finite()) else {
            out.fill(f64::INFINITY);
            return;
        };
        let s2 = s * s;
        let (v, z) = (&mut self.v, &mut self.z);
        let mut k = 0usize;
        v[0] = first;
        z[0] = f64::NEG_INFINITY;
        z[1] = f64::INFINITY;
        for q in first + 1..n {
            let fq = f[q];
            if !fq.is_finite() {
                continue;
            }
            let qf = q as f64;
            loop {
                let p = v[k];
                let pf = p as f64;
                // Where the parabolas rooted at p and q intersect, in voxel units.
                let x = ((fq - f[p]) / s2 + (qf * qf - pf * pf)) / (2.0 * (qf - pf));
                if x <= z[k] {
                    // q's parabola hides v[k] entirely (z[0] is -inf, so k > 0 here).
                    k -= 1;
                    continue;
                }
                k += 1;
                v[k] = q;
                z[k] = x;
                z[k + 1] = f64::INFINITY;
                break;
            }
        }
        let mut k = 0usize;
        for (q, o) in out.iter_mut().enumerate() {
            let qf = q as f64;
            while z[k + 1] < qf {
                k += 1;
            }
            let d = (qf - v[k] as f64) * s;
            *o = f[v[k]] + d * d;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute force over all feature points.
    fn brute(features: &[[usize; 3]], dims: [usize; 3], s: [f64; 3]) -> Vec<f64> {
        let mut out = vec![f64::INFINITY; dims[0] * dims[1] * dims[2]];
        for k in 0..dims[2] {
            for j in 0..dims[1] {
                for i in 0..dims[0] {
                    let idx = i + dims[0] * (j + dims[1] * k);
                    for p in features {
                        let a = (i as f64 - p[0] as f64) * s[0];
                        let b = (j as f64 - p[1] as f64) * s[1];
                        let c = (k as f64 - p[2] as f64) * s[2];
                        let d = (a * a + b * b) + c * c;
                        if d < out[idx] {
                            out[idx] = d;
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn matches_brute_force_anisotropic() {
        let dims = [13, 9, 7];
        let s = [0.8, 1.0, 2.5];
        // A deterministic scatter of features.
        let mut features = Vec::new();
        let mut state = 12345u64;
        for _ in 0..9 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let r = (state >> 33) as usize;
            features.push([r % dims[0], (r / 13) % dims[1], (r / 117) % dims[2]]);
        }
        let mut grid = vec![f64::INFINITY; dims[0] * dims[1] * dims[2]];
        for p in &features {
            grid[p[0] + dims[0] * (p[1] + dims[1] * p[2])] = 0.0;
        }
        squared_edt(&mut grid, dims, s);
        let expected = brute(&features, dims, s);
        for (a, b) in grid.iter().zip(&expected) {
            assert!((a - b).abs() <= 1e-12 * b.max(1.0), "{a} vs {b}");
        }
    }

    #[test]
    fn no_features_stays_infinite() {
        let mut grid = vec![f64::INFINITY; 4 * 3 * 2];
        squared_edt(&mut grid, [4, 3, 2], [1.0, 1.0, 1.0]);
        assert!(grid.iter().all(|x| x.is_infinite()));
    }
}
