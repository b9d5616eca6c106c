//! Labels from the conformed grid back onto the input's own grid: brainchop's
//! `--inverse-conform`, i.e. `niimath conformed_labels -reslice_nn input` (nearest neighbour,
//! niimath src/conform.c `reslice` with `isLinear = 0`).
//!
//! niimath computes, in f32, `vox2vox = inv(A_native) * A_conformed` and samples each native
//! voxel at `round(inv(vox2vox) * [i, j, k, 1])` (`roundf`: halves away from zero); a sample
//! outside the conformed grid gets the minimum label of the conformed volume (0 whenever any
//! voxel is background). This port repeats that arithmetic so that samples that land exactly
//! half-way between two conformed voxels (common when the native voxels are 2 mm or 0.5 mm)
//! round the way niimath's do.

use super::mat44::{self, Mat44};
use crate::volume::{Geometry, LabelMap};

/// Maps `conformed_labels` (on the conformed grid) onto the `native` grid by nearest neighbour,
/// as `niimath -reslice_nn` does for brainchop's `--inverse-conform`.
///
/// The sampling matrix is niimath's, computed in f32 from `conformed_labels.geometry.affine`
/// and `native.affine`. `vox2vox_native_from_conformed` (from [`super::Conformed`]) is the
/// same mapping in the other direction; it is used instead when the geometries' affines are
/// unusable (non-finite or singular). Native voxels that fall outside the conformed grid get
/// the smallest label present (0 for any real segmentation).
pub fn labels_to_native(
    conformed_labels: &LabelMap,
    native: &Geometry,
    vox2vox_native_from_conformed: &[[f64; 4]; 4],
) -> LabelMap {
    let out_dims = native.dims;
    let out_len = out_dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .unwrap_or(0);
    let in_dims = conformed_labels.geometry.dims;
    let in_len = in_dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .unwrap_or(0);
    let fill = conformed_labels.labels.iter().copied().min().unwrap_or(0);
    let mut labels = vec![fill; out_len];
    if out_len == 0 || in_len == 0 || conformed_labels.labels.len() != in_len {
        return LabelMap {
            geometry: native.clone(),
            labels,
        };
    }

    let Some(m) = sampling_matrix(
        &conformed_labels.geometry,
        native,
        vox2vox_native_from_conformed,
    ) else {
        return LabelMap {
            geometry: native.clone(),
            labels,
        };
    };

    let in_xy = in_dims[0] * in_dims[1];
    let src = &conformed_labels.labels;
    let [nx, ny, _] = out_dims;
    for (z, slice) in labels.chunks_exact_mut(nx * ny).enumerate() {
        let zf = z as f32;
        // grouped as niimath's binary does: x m0 + (y m1 + (z m2 + m3))
        let ix_z = zf * m[0][2] + m[0][3];
        let iy_z = zf * m[1][2] + m[1][3];
        let iz_z = zf * m[2][2] + m[2][3];
        for (y, row) in slice.chunks_exact_mut(nx).enumerate() {
            let yf = y as f32;
            let ix_yz = yf * m[0][1] + ix_z;
            let iy_yz = yf * m[1][1] + iy_z;
            let iz_yz = yf * m[2][1] + iz_z;
            for (x, out) in row.iter_mut().enumerate() {
                let xf = x as f32;
                let (Some(ix), Some(iy), Some(iz)) = (
                    round_index(xf * m[0][0] + ix_yz, in_dims[0]),
                    round_index(xf * m[1][0] + iy_yz, in_dims[1]),
                    round_index(xf * m[2][0] + iz_yz, in_dims[2]),
                ) else {
                    continue;
                };
                *out = src[ix + iy * in_dims[0] + iz * in_xy];
            }
        }
    }
    LabelMap {
        geometry: native.clone(),
        labels,
    }
}

/// The f32 matrix from native voxel indices to conformed voxel indices: niimath's
/// `inv(inv(A_native) * A_conformed)`, or the inverse of the given vox2vox when an affine is
/// unusable. None when neither gives a usable matrix.
fn sampling_matrix(
    conformed: &Geometry,
    native: &Geometry,
    vox2vox_native_from_conformed: &[[f64; 4]; 4],
) -> Option<Mat44> {
    let a_conf = mat44::to_f32(&conformed.affine);
    let a_native = mat44::to_f32(&native.affine);
    if mat44::is_valid(&a_conf) && mat44::is_valid(&a_native) {
        let vox2vox = mat44::mul_reslice(&mat44::inverse(&a_native), &a_conf);
        let m = mat44::inverse(&vox2vox);
        if m.iter().flatten().all(|v| v.is_finite()) && m[3][3] == 1.0 {
            return Some(m);
        }
    }
    let m = mat44::inverse(&mat44::to_f32(vox2vox_native_from_conformed));
    if m[3][3] != 1.0 {
        return None;
    }
    m.iter().flatten().all(|v| v.is_finite()).then_some(m)
}

/// `roundf(v)` (halves away from zero) as an index below `len`, or None outside (NaN too).
#[inline]
fn round_index(v: f32, len: usize) -> Option<usize> {
    // -0.5 < v rounds to >= 0 exactly when v > -0.5; large values are outside anyway
    if !(v > -0.5 && v < len as f32) {
        return None;
    }
    let r = if v <= 0.0 {
        0 // -0.5 < v <= 0 rounds to (minus) zero
    } else {
        // 0 < v: truncation is floor, and v - t is exact (v >= 2^23 is an integer)
        let t = v as usize;
        if v - t as f32 >= 0.5 {
            t + 1
        } else {
            t
        }
    };
    (r < len).then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry(dims: [usize; 3], affine: [[f64; 4]; 4]) -> Geometry {
        Geometry {
            dims,
            spacing: [1.0; 3],
            affine,
            sform_code: 1,
            qform_code: 1,
        }
    }

    #[test]
    fn rounding_is_roundf() {
        assert_eq!(round_index(-0.5, 10), None); // roundf(-0.5) = -1
        assert_eq!(round_index(-0.499_999_97, 10), Some(0));
        assert_eq!(round_index(-0.0, 10), Some(0));
        assert_eq!(round_index(0.5, 10), Some(1));
        assert_eq!(round_index(1.5, 10), Some(2));
        assert_eq!(round_index(2.499_999_8, 10), Some(2));
        assert_eq!(round_index(9.499_999, 10), Some(9));
        assert_eq!(round_index(9.5, 10), None);
        assert_eq!(round_index(f32::NAN, 10), None);
        assert_eq!(round_index(f32::INFINITY, 10), None);
        assert_eq!(round_index(3e9, 100), None);
        assert_eq!(round_index(16_777_216.0, 1 << 25), Some(1 << 24));
    }

    #[test]
    fn identity_copies() {
        let a = [
            [-1.0, 0.0, 0.0, 10.0],
            [0.0, 0.0, 1.0, -5.0],
            [0.0, -1.0, 0.0, 7.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let g = geometry([4, 3, 2], a);
        let labels: Vec<u16> = (0..24).collect();
        let map = LabelMap {
            geometry: g.clone(),
            labels: labels.clone(),
        };
        let ident = [
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let out = labels_to_native(&map, &g, &ident);
        assert_eq!(out.labels, labels);
        assert_eq!(out.geometry, g);
    }

    #[test]
    fn shifted_grid_fills_outside_with_minimum() {
        let conf = geometry(
            [4, 4, 4],
            [
                [1.0, 0.0, 0.0, 0.0],
                [0.0, 1.0, 0.0, 0.0],
                [0.0, 0.0, 1.0, 0.0],
                [0.0, 0.0, 0.0, 1.0],
            ],
        );
        // native voxels of 2 mm starting 1 mm to the left: x = 2i - 1
        let native = geometry(
            [3, 1, 1],
            [
                [2.0, 0.0, 0.0, -1.0],
                [0.0, 1.0, 0.0, 0.0],
                [0.0, 0.0, 1.0, 0.0],
                [0.0, 0.0, 0.0, 1.0],
            ],
        );
        let labels: Vec<u16> = (1..=64).collect();
        let map = LabelMap {
            geometry: conf,
            labels,
        };
        let ident = [
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let out = labels_to_native(&map, &native, &ident);
        // x = -1 is outside (minimum label 1), x = 1 -> label 2, x = 3 -> label 4
        assert_eq!(out.labels, vec![1, 2, 4]);
    }

    #[test]
    fn degenerate_inputs_do_not_panic() {
        let conf = geometry(
            [0, 4, 4],
            [
                [1.0, 0.0, 0.0, 0.0],
                [0.0, 1.0, 0.0, 0.0],
                [0.0, 0.0, 1.0, 0.0],
                [0.0, 0.0, 0.0, 1.0],
            ],
        );
        let map = LabelMap {
            geometry: conf.clone(),
            labels: vec![],
        };
        let native = geometry([2, 2, 2], conf.affine);
        let out = labels_to_native(&map, &native, &[[0.0; 4]; 4]);
        assert_eq!(out.labels, vec![0; 8]);
        let empty_native = geometry([0, 0, 0], conf.affine);
        assert!(labels_to_native(&map, &empty_native, &[[0.0; 4]; 4])
            .labels
            .is_empty());
    }
}
