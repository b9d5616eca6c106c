//! brainchop's label post-processing (`bwlabel` in brainchop/niimath/__init__.py):
//!
//! ```python
//! clusters = niimath(labels, "-bwlabel 26", "-odt char")      # uint8 cluster ids
//! largest = np.bincount(clusters.ravel())[1:].argmax() + 1
//! labels[clusters != largest] = 0
//! ```
//!
//! What niimath's `-bwlabel 26` does (src/bwlabel.c, `bwlabel(img, 26, dim, false, true)`):
//!
//! 1. **Bubble filling**: the background (label 0) is split into 6-connected components; when
//!    there is more than one, every background component that touches no face of the volume
//!    (a cavity) joins the foreground. Filled cavities count towards their cluster's size and
//!    can connect foreground pieces they separate, but their voxels stay label 0 in the output.
//! 2. **Labelling**: 26-connected components of the foreground, numbered 1, 2, ... in the
//!    order their first voxel appears in a raster scan (x fastest, then y, then z).
//! 3. **`-odt char`**: cluster ids are written as uint8, `clamp_u8`: ids from 255 on all
//!    become 255, so brainchop counts clusters 255, 256, ... as one "cluster 255".
//!
//! Then brainchop keeps the clamped id with the most voxels (ties: the lowest id) and zeroes
//! every label outside it. This module reproduces all three quirks.

/// Zeroes every label outside the largest 26-connected cluster of non-zero labels, exactly as
/// brainchop's `bwlabel` post-processing does (see the module docs for niimath's cavity
/// filling and uint8 cluster ids). Iterative (no recursion), O(voxels) time; the work is done
/// on the bounding box of the non-zero labels.
///
/// An all-zero volume is left as it is (brainchop itself would fail there: niimath exits with
/// an error when it finds no cluster). If `labels.len()` does not equal the product of `dims`
/// the labels are left unchanged (a caller bug; checked by a debug assertion), and so are
/// volumes whose bounding box holds 2^32 voxels or more.
pub fn keep_largest_component(labels: &mut [u16], dims: [usize; 3]) {
    let n = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    debug_assert_eq!(n, Some(labels.len()), "labels do not match dims {dims:?}");
    if n != Some(labels.len()) || labels.is_empty() {
        return;
    }
    let Some(bbox) = BoundingBox::of_nonzero(labels, dims) else {
        return; // no foreground
    };
    let Some(mut grid) = PaddedGrid::new(labels, dims, &bbox) else {
        return;
    };
    // niimath fills cavities only when the background has more than one 6-connected
    // component. Background on a face of the volume is one component; when there is none,
    // the cavities themselves must number at least two.
    grid.fill_cavities(has_border_background(labels, dims));
    let sizes = grid.label_clusters();
    // np.bincount(clusters)[1:].argmax() + 1: the first maximum wins
    let mut largest = 1usize;
    for id in 2..sizes.len() {
        if sizes[id] > sizes[largest] {
            largest = id;
        }
    }
    grid.keep_cluster(labels, dims, &bbox, largest as u8);
}

/// The smallest box holding every non-zero voxel: `lo..=hi` per axis.
struct BoundingBox {
    lo: [usize; 3],
    hi: [usize; 3],
}

impl BoundingBox {
    fn of_nonzero(labels: &[u16], dims: [usize; 3]) -> Option<BoundingBox> {
        let [nx, ny, _] = dims;
        let mut lo = [usize::MAX; 3];
        let mut hi = [0usize; 3];
        for (row_index, row) in labels.chunks_exact(nx).enumerate() {
            let Some(first) = row.iter().position(|&l| l != 0) else {
                continue;
            };
            let last = row.iter().rposition(|&l| l != 0).unwrap_or(first);
            let (y, z) = (row_index % ny, row_index / ny);
            lo = [lo[0].min(first), lo[1].min(y), lo[2].min(z)];
            hi = [hi[0].max(last), hi[1].max(y), hi[2].max(z)];
        }
        (lo[0] != usize::MAX).then_some(BoundingBox { lo, hi })
    }
}

/// Whether any voxel on a face of the volume is background.
fn has_border_background(labels: &[u16], dims: [usize; 3]) -> bool {
    let [nx, ny, nz] = dims;
    let nxy = nx * ny;
    let slice_has_zero = |z: usize| labels[z * nxy..(z + 1) * nxy].contains(&0);
    if slice_has_zero(0) || slice_has_zero(nz - 1) {
        return true;
    }
    for z in 0..nz {
        for y in 0..ny {
            let row = &labels[z * nxy + y * nx..z * nxy + (y + 1) * nx];
            let on_face = y == 0 || y + 1 == ny;
            if (on_face && row.contains(&0)) || row[0] == 0 || row[nx - 1] == 0 {
                return true;
            }
        }
    }
    false
}

const BACKGROUND: u8 = 0;
const FOREGROUND: u8 = 1;
/// Background 6-connected to the outside of the volume.
const OUTSIDE: u8 = 2;

/// The bounding box with one voxel of margin on every side. The margin stands for the
/// outside of the volume (everything beyond the box is background and reaches a face of the
/// volume in a straight line), so only interior voxels are ever visited and neighbour offsets
/// never leave the grid: no bounds checks, no coordinate arithmetic.
struct PaddedGrid {
    dims: [usize; 3],
    state: Vec<u8>,
    /// Cluster id (clamped to 255) of each foreground voxel, 0 elsewhere.
    cluster: Vec<u8>,
}

impl PaddedGrid {
    fn new(labels: &[u16], dims: [usize; 3], bbox: &BoundingBox) -> Option<PaddedGrid> {
        let pdims: [usize; 3] = std::array::from_fn(|a| bbox.hi[a] - bbox.lo[a] + 3);
        let len = pdims[0] * pdims[1] * pdims[2];
        if len > u32::MAX as usize {
            return None;
        }
        let mut state = vec![OUTSIDE; len];
        for z in bbox.lo[2]..=bbox.hi[2] {
            for y in bbox.lo[1]..=bbox.hi[1] {
                let src = (z * dims[1] + y) * dims[0];
                let dst = ((z - bbox.lo[2] + 1) * pdims[1] + (y - bbox.lo[1] + 1)) * pdims[0] + 1;
                let row = &labels[src + bbox.lo[0]..=src + bbox.hi[0]];
                for (s, &l) in state[dst..dst + row.len()].iter_mut().zip(row) {
                    *s = if l != 0 { FOREGROUND } else { BACKGROUND };
                }
            }
        }
        Some(PaddedGrid {
            dims: pdims,
            state,
            cluster: Vec::new(),
        })
    }

    fn offsets_6(&self) -> [isize; 6] {
        let (sx, sy) = (
            self.dims[0] as isize,
            (self.dims[0] * self.dims[1]) as isize,
        );
        [-1, 1, -sx, sx, -sy, sy]
    }

    fn offsets_26(&self) -> [isize; 26] {
        let (sx, sy) = (
            self.dims[0] as isize,
            (self.dims[0] * self.dims[1]) as isize,
        );
        let mut out = [0isize; 26];
        let mut k = 0;
        for dz in -1..=1isize {
            for dy in -1..=1isize {
                for dx in -1..=1isize {
                    if (dx, dy, dz) != (0, 0, 0) {
                        out[k] = dz * sy + dy * sx + dx;
                        k += 1;
                    }
                }
            }
        }
        out
    }

    /// Calls `f` with the index of every interior (non-margin) voxel, in raster order.
    fn for_interior(&self, mut f: impl FnMut(usize)) {
        let p = self.dims;
        for z in 1..p[2] - 1 {
            for y in 1..p[1] - 1 {
                let row = (z * p[1] + y) * p[0];
                (row + 1..row + p[0] - 1).for_each(&mut f);
            }
        }
    }

    /// niimath's bubble filling on the box: background not 6-connected to the outside
    /// becomes foreground, provided the background has at least two components.
    fn fill_cavities(&mut self, border_background: bool) {
        let offsets = self.offsets_6();
        let mut stack: Vec<u32> = Vec::new();
        // background voxels next to the margin are outside; flood from them
        let mut seeds = Vec::new();
        self.for_interior(|i| {
            if self.state[i] == BACKGROUND
                && offsets.iter().any(|&o| self.state[offset(i, o)] == OUTSIDE)
            {
                seeds.push(i as u32);
            }
        });
        for &i in &seeds {
            self.state[i as usize] = OUTSIDE;
        }
        stack.extend(seeds);
        flood(&mut self.state, &mut stack, &offsets, BACKGROUND, OUTSIDE);
        let Some(first_cavity) = self.state.iter().position(|&s| s == BACKGROUND) else {
            return; // no cavities
        };
        if !border_background {
            // All background is enclosed: niimath counts the components. Mark the first cavity
            // and see whether any other remains.
            self.state[first_cavity] = OUTSIDE;
            stack.push(first_cavity as u32);
            flood(&mut self.state, &mut stack, &offsets, BACKGROUND, OUTSIDE);
            if !self.state.contains(&BACKGROUND) {
                return; // a single background component: nothing is filled
            }
            // fill every enclosed voxel, the first cavity included (the margin is not volume)
            let mut state = std::mem::take(&mut self.state);
            self.for_interior(|i| state[i] = FOREGROUND);
            self.state = state;
            return;
        }
        for s in &mut self.state {
            if *s == BACKGROUND {
                *s = FOREGROUND;
            }
        }
    }

    /// 26-connected clusters of the foreground, numbered in raster order of first appearance
    /// and clamped to 255 as `-odt char` does. Returns the voxel count per id 0..=255.
    fn label_clusters(&mut self) -> [u64; 256] {
        let offsets = self.offsets_26();
        let mut cluster = vec![0u8; self.state.len()];
        let mut sizes = [0u64; 256];
        let mut stack: Vec<u32> = Vec::new();
        let mut next_id = 1usize;
        // the margin is never foreground, so a raster scan of the whole grid visits the box's
        // voxels in the volume's raster order
        for seed in 0..self.state.len() {
            if self.state[seed] != FOREGROUND || cluster[seed] != 0 {
                continue;
            }
            let id = next_id.min(255) as u8;
            next_id += 1;
            cluster[seed] = id;
            stack.push(seed as u32);
            let mut size = 0u64;
            while let Some(i) = stack.pop() {
                size += 1;
                for &o in &offsets {
                    let j = offset(i as usize, o);
                    if self.state[j] == FOREGROUND && cluster[j] == 0 {
                        cluster[j] = id;
                        stack.push(j as u32);
                    }
                }
            }
            sizes[usize::from(id)] += size;
        }
        self.cluster = cluster;
        sizes
    }

    /// Zeroes the labels of every voxel (in the box) outside cluster `keep`.
    fn keep_cluster(&self, labels: &mut [u16], dims: [usize; 3], bbox: &BoundingBox, keep: u8) {
        let p = self.dims;
        for z in bbox.lo[2]..=bbox.hi[2] {
            for y in bbox.lo[1]..=bbox.hi[1] {
                let src = (z * dims[1] + y) * dims[0];
                let pad = ((z - bbox.lo[2] + 1) * p[1] + (y - bbox.lo[1] + 1)) * p[0] + 1;
                let row = &mut labels[src + bbox.lo[0]..=src + bbox.hi[0]];
                for (l, &c) in row.iter_mut().zip(&self.cluster[pad..]) {
                    if c != keep {
                        *l = 0;
                    }
                }
            }
        }
    }
}

#[inline]
fn offset(i: usize, o: isize) -> usize {
    i.wrapping_add_signed(o)
}

/// Depth-first flood from the stacked voxels through voxels in state `from`, marking `to`.
/// Only interior voxels are ever stacked (margin voxels are never in state `from`), so every
/// neighbour lies inside the padded grid.
fn flood(state: &mut [u8], stack: &mut Vec<u32>, offsets: &[isize], from: u8, to: u8) {
    while let Some(i) = stack.pop() {
        for &o in offsets {
            let j = offset(i as usize, o);
            if state[j] == from {
                state[j] = to;
                stack.push(j as u32);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(d: [usize; 3], x: usize, y: usize, z: usize) -> usize {
        x + d[0] * (y + d[1] * z)
    }

    #[test]
    fn keeps_the_bigger_blob() {
        let d = [10, 10, 10];
        let mut l = vec![0u16; 1000];
        l[idx(d, 1, 1, 1)] = 3; // small blob first in scan order
        for x in 4..8 {
            for y in 4..8 {
                l[idx(d, x, y, 5)] = 2;
            }
        }
        l[idx(d, 4, 4, 5)] = 7; // labels differ but all are foreground
        keep_largest_component(&mut l, d);
        assert_eq!(l[idx(d, 1, 1, 1)], 0);
        assert_eq!(l[idx(d, 4, 4, 5)], 7);
        assert_eq!(l.iter().filter(|&&v| v != 0).count(), 16);
    }

    #[test]
    fn diagonal_is_connected_and_ties_keep_first() {
        let d = [6, 6, 6];
        let mut l = vec![0u16; 216];
        // a corner-touching pair (26-connected) and a separate pair later in scan order
        l[idx(d, 1, 1, 1)] = 1;
        l[idx(d, 2, 2, 2)] = 1;
        l[idx(d, 4, 4, 4)] = 5;
        l[idx(d, 4, 4, 5)] = 5;
        let mut a = l.clone();
        keep_largest_component(&mut a, d);
        assert_eq!(a[idx(d, 2, 2, 2)], 1);
        assert_eq!(a[idx(d, 4, 4, 4)], 0);
    }

    #[test]
    fn empty_and_mismatched_are_untouched() {
        let mut l = vec![0u16; 27];
        keep_largest_component(&mut l, [3, 3, 3]);
        assert!(l.iter().all(|&v| v == 0));
        let mut e: Vec<u16> = vec![];
        keep_largest_component(&mut e, [0, 4, 4]);
    }

    #[test]
    fn cavity_joins_a_shell_to_its_core() {
        // a hollow cube shell with a core that touches it only through the cavity
        let d = [11, 11, 11];
        let mut l = vec![0u16; 11 * 11 * 11];
        for z in 1..10 {
            for y in 1..10 {
                for x in 1..10 {
                    let shell = x == 1 || x == 9 || y == 1 || y == 9 || z == 1 || z == 9;
                    if shell {
                        l[idx(d, x, y, z)] = 1;
                    }
                }
            }
        }
        l[idx(d, 5, 5, 5)] = 2; // core, separated from the shell by the cavity
                                // a bigger separate object outside the shell would win without the cavity filling:
                                // the shell has 9^3 - 7^3 = 386 voxels, the core 1, the cavity 7^3 - 1 = 342
        let mut big = l.clone();
        keep_largest_component(&mut big, d);
        assert_eq!(
            big[idx(d, 5, 5, 5)],
            2,
            "core joined through the filled cavity"
        );
        assert_eq!(big.iter().filter(|&&v| v != 0).count(), 387);
    }

    #[test]
    fn ids_from_255_share_one_count() {
        // a 10-voxel bar (id 1), then 300 isolated voxels (ids 2..=301): ids 255..=301 pool
        // 47 voxels into one "255", which beats the bar
        let d = [40, 40, 3];
        let mut l = vec![0u16; 40 * 40 * 3];
        for x in 0..10 {
            l[idx(d, x, 0, 0)] = 4;
        }
        let mut placed = 0;
        'outer: for y in (0..40).step_by(2) {
            for x in (0..40).step_by(2) {
                l[idx(d, x, y, 2)] = 1;
                placed += 1;
                if placed == 300 {
                    break 'outer;
                }
            }
        }
        keep_largest_component(&mut l, d);
        assert_eq!(l[idx(d, 0, 0, 0)], 0);
        assert_eq!(l.iter().filter(|&&v| v != 0).count(), 47);
    }
}
