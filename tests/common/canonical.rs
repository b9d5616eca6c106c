//! Closest canonical (RAS) orientation of a volume, as nibabel's `as_closest_canonical`.

use insitu::volume::Volume;

/// Reorients a volume to the closest canonical (RAS) orientation, as nibabel's
/// `as_closest_canonical` does: returns dims, affine and voxels.
#[allow(clippy::needless_range_loop)]
pub fn canonical(v: &Volume) -> ([usize; 3], [[f64; 4]; 4], Vec<f32>) {
    let a = v.geometry.affine;
    let d = v.geometry.dims;
    // For each world axis w: the voxel axis pointing most along it, and whether it is flipped.
    let mut axis_of = [0usize; 3];
    let mut flip = [false; 3];
    for c in 0..3 {
        let w = (0..3)
            .max_by(|&x, &y| a[x][c].abs().total_cmp(&a[y][c].abs()))
            .unwrap();
        axis_of[w] = c;
        flip[w] = a[w][c] < 0.0;
    }
    let nd = [d[axis_of[0]], d[axis_of[1]], d[axis_of[2]]];
    let mut out = vec![0f32; v.data.len()];
    for z in 0..nd[2] {
        for y in 0..nd[1] {
            for x in 0..nd[0] {
                let new = [x, y, z];
                let mut old = [0usize; 3];
                for w in 0..3 {
                    let c = axis_of[w];
                    old[c] = if flip[w] { nd[w] - 1 - new[w] } else { new[w] };
                }
                out[x + nd[0] * (y + nd[1] * z)] = v.data[old[0] + d[0] * (old[1] + d[1] * old[2])];
            }
        }
    }
    let mut na = [[0.0; 4]; 4];
    na[3][3] = 1.0;
    for r in 0..3 {
        let mut t = a[r][3];
        for w in 0..3 {
            let c = axis_of[w];
            let col = a[r][c];
            if flip[w] {
                t += col * (nd[w] - 1) as f64;
                na[r][w] = -col;
            } else {
                na[r][w] = col;
            }
        }
        na[r][3] = t;
    }
    (nd, na, out)
}
