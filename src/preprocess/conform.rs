//! Port of niimath's `-conform` followed by `-odt char` (niimath src/conform.c, src/core.c),
//! which is how brainchop brings every input onto the network's grid.
//!
//! 1. `voxelIntensityScale(f_high = 0.98)`: a 1000-bin histogram gives a robust maximum (the
//!    98th percentile of the non-zero voxels, FSL style); intensities are mapped linearly so
//!    that the minimum becomes 0 and the robust maximum 255, then clamped to 0..255.
//! 2. The output grid: 256³ voxels of 1 mm, oriented LIA (FreeSurfer's conformed space), its
//!    centre on the centre of the input (`conformVox2Vox` with `isRAS = 0`).
//! 3. Trilinear reslice. An output voxel whose 2x2x2 input neighbourhood is not entirely inside
//!    the input keeps the minimum of the *scaled* input.
//! 4. `-odt char`: each value becomes `clamp_u8(round(v))`.
//!
//! niimath does all of this in f32 (`float` images, `mat44` matrices), and so does this port,
//! operation by operation, because rounding at a different precision moves samples across
//! integer boundaries. The reference is the binary brainchop installs (PyPI niimath
//! 1.0.20261016, manylinux x86-64), which is built with `-ffast-math`: where GCC regrouped the
//! source's arithmetic (histogram bin width, trilinear weights, the order of sums), this port
//! follows the machine code, not the C source; with that the output is bit-identical to the
//! binary's, before and after the uint8 rounding, on every input tested.
//!
//! NaN input voxels are clamped to 0 by the intensity scaling (as niimath's `fmax` does), i.e.
//! they are treated as the minimum intensity.

use super::mat44::{self, Mat44};
use super::PreprocessError;
use crate::volume::{Geometry, Volume};

/// Edge length of the conformed grid in voxels (its voxels are 1 mm).
pub const CONFORMED_DIM: usize = 256;

/// niimath's `f_high`: the robust maximum is the 98th percentile of non-zero voxels.
const F_HIGH: f32 = 0.98;
const HISTOGRAM_BINS: usize = 1000;
const DST_MIN: f32 = 0.0;
const DST_MAX: f32 = 255.0;

/// The network's view of an input volume.
#[derive(Clone, Debug)]
pub struct Conformed {
    /// 256³ voxels of 1 mm, LIA; values are the uint8 intensities 0..=255 stored as f32.
    pub volume: Volume,
    /// Maps a conformed voxel index (i, j, k, 1) to the (fractional) native voxel index:
    /// niimath's `inv_vox2vox`, exactly the matrix the reslice sampled with.
    pub vox2vox_native_from_conformed: [[f64; 4]; 4],
}

/// Conforms `volume` exactly as `niimath in -conform out -odt char` does.
///
/// The voxel-to-world transform used is `volume.geometry.affine` (the reader's choice of
/// sform/qform; [`niimath_affine`] reproduces niimath's own choice for readers that want it).
pub fn conform(volume: &Volume) -> Result<Conformed, PreprocessError> {
    let geometry = &volume.geometry;
    let dims = geometry.dims;
    let nvox = check_dims(dims, volume.data.len())?;

    let in_affine = mat44::to_f32(&geometry.affine);
    if !mat44::is_valid(&in_affine) {
        return Err(PreprocessError::InvalidAffine);
    }

    // 1. robust intensity scaling, applied to each voxel as the reslice samples it (niimath
    // scales a copy first: the same values, without a second whole-volume f32 buffer)
    let (src_min, scale) = get_scale(&volume.data, nvox);
    let scaled = |v: f32| scale_crop(v, src_min, scale);
    // the minimum after scaling fills the voxels the reslice cannot sample (MIN(a, mn) keeps
    // mn on ties; no NaN survives the scaling)
    let first = scaled(volume.data[0]);
    let mn = volume.data.iter().fold(first, |mn, &v| {
        let v = scaled(v);
        if v > mn {
            mn
        } else {
            v
        }
    });

    // 2. output grid and the matrix from output voxels to input voxels
    let (out_affine, inv_vox2vox) = conform_vox2vox(dims, &in_affine);

    // 3 + 4. trilinear reslice and uint8 rounding
    let data = reslice_trilinear(&volume.data, scaled, mn, dims, &inv_vox2vox);

    let code = geometry.sform_code.max(geometry.qform_code);
    let out_geometry = Geometry {
        dims: [CONFORMED_DIM; 3],
        spacing: [1.0; 3],
        affine: mat44::to_f64(&out_affine),
        sform_code: code,
        qform_code: code,
    };
    Ok(Conformed {
        volume: Volume {
            geometry: out_geometry,
            data,
        },
        vox2vox_native_from_conformed: mat44::to_f64(&inv_vox2vox),
    })
}

/// niimath's choice of transform for conform: the qform when its code is higher than the
/// sform's, otherwise the sform; the other one when the first is invalid (`is_valid_mat44`).
///
/// Pass what niimath's reader holds: `sform` is the srow matrix when `sform_code > 0` (niimath
/// leaves it all zeros otherwise, which is invalid); `qform` is the quaternion matrix when
/// `qform_code > 0`, otherwise `diag(pixdim[1], pixdim[2], pixdim[3])` with no offset.
/// Returns None when both are invalid ("NIfTI sform and qform invalid").
pub fn niimath_affine(
    sform: &[[f64; 4]; 4],
    sform_code: i16,
    qform: &[[f64; 4]; 4],
    qform_code: i16,
) -> Option<[[f64; 4]; 4]> {
    let (primary, secondary) = if qform_code > sform_code {
        (qform, sform)
    } else {
        (sform, qform)
    };
    [primary, secondary]
        .into_iter()
        .find(|m| mat44::is_valid(&mat44::to_f32(m)))
        .copied()
}

/// Validates the grid: non-empty, data length matching, 32-bit indexable (as niimath's
/// `int` indices require).
fn check_dims(dims: [usize; 3], len: usize) -> Result<usize, PreprocessError> {
    if dims.contains(&0) {
        return Err(PreprocessError::EmptyVolume { dims });
    }
    let nvox = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= i32::MAX as usize)
        .ok_or(PreprocessError::TooLarge { dims })?;
    if len != nvox {
        if len > nvox && len % nvox == 0 {
            return Err(PreprocessError::NotThreeD {
                volumes: len / nvox,
            });
        }
        return Err(PreprocessError::DataLength { dims, len });
    }
    Ok(nvox)
}

/// C's `(int)x` for a float as x86-64 executes it (`cvttss2si`): truncation, and the
/// "integer indefinite" value i32::MIN for NaN and out-of-range values.
#[inline]
fn c_trunc_i32(x: f32) -> i32 {
    if !(-2_147_483_648.0..2_147_483_648.0).contains(&x) {
        i32::MIN
    } else {
        x as i32
    }
}

/// `getscale` (conform.c) with dst 0..255, f_low 0 and f_high 0.98: returns (src_min, scale).
///
/// Follows the arithmetic of niimath's `-ffast-math` build: the bin width is
/// `range * 0.001f`, a voxel's bin is `(v - src_min) * (1 / bin_size)`, the share of negative
/// voxels is compared as `nltz / n < 0.02`, and the scale is `255 / (idx * bin_size)`.
fn get_scale(img: &[f32], voxnum: usize) -> (f32, f32) {
    // min / max with C's fmin/fmax: a NaN operand is ignored
    let mut src_min = img[0];
    let mut src_max = img[0];
    let mut nz = 0usize;
    let mut nltz = 0usize;
    for &v in img {
        src_max = fmax(v, src_max);
        src_min = fmin(v, src_min);
        nz += usize::from((v as f64).abs() >= 1e-15);
        nltz += usize::from(v < 0.0);
    }
    if src_min < 0.0 && (nltz as f64 / voxnum as f64) < 0.02 {
        src_min = 0.0; // fewer than 2 % negative voxels: they are ignored
    }
    // histogram of HISTOGRAM_BINS bins, in f32 as niimath computes it
    let bin_size: f32 = (src_max - src_min) * 0.001;
    let inv_bin_size: f32 = 1.0 / bin_size;
    let mut hist = [0usize; HISTOGRAM_BINS];
    for &v in img {
        let bin = c_trunc_i32((v - src_min) * inv_bin_size).clamp(0, HISTOGRAM_BINS as i32 - 1);
        hist[bin as usize] += 1;
    }
    let mut cs = [0usize; HISTOGRAM_BINS];
    let mut acc = 0usize;
    for (c, h) in cs.iter_mut().zip(hist) {
        acc += h;
        *c = acc;
    }
    // lower limit: f_low = 0 gives nth = 0, which the first bin always satisfies
    let f_low: f32 = 0.0;
    let nth = (f_low * voxnum as f32) as usize;
    let idx = cs.iter().position(|&c| c >= nth).unwrap_or(HISTOGRAM_BINS);
    src_min += idx as f32 * bin_size;
    // upper limit
    let nth = voxnum - ((1.0 - F_HIGH as f64) * nz as f64) as usize;
    let mut idx = 0usize;
    while idx < HISTOGRAM_BINS - 1 {
        if cs[idx + 1] >= nth {
            break;
        }
        idx += 1;
    }
    let range = idx as f32 * bin_size;
    let src_max = src_min + range;
    let scale = if src_min != src_max {
        (DST_MAX - DST_MIN) / range
    } else {
        1.0
    };
    (src_min, scale)
}

/// C's `fmax`: the larger operand, ignoring a NaN.
#[inline]
fn fmax(a: f32, b: f32) -> f32 {
    a.max(b)
}

/// C's `fmin`: the smaller operand, ignoring a NaN.
#[inline]
fn fmin(a: f32, b: f32) -> f32 {
    a.min(b)
}

/// `scalecrop` for one value: `min(max((v - src_min) * scale, 0), 255)` (the binary drops
/// the `dst_min + ` of the source, dst_min being 0).
#[inline]
fn scale_crop(v: f32, src_min: f32, scale: f32) -> f32 {
    let val = (v - src_min) * scale;
    fmin(fmax(val, DST_MIN), DST_MAX)
}

/// `conformVox2Vox` with 1 mm voxels and LIA orientation: returns (out_affine, inv_vox2vox),
/// inv_vox2vox mapping output voxel indices to input voxel indices.
fn conform_vox2vox(in_dims: [usize; 3], affine: &Mat44) -> (Mat44, Mat44) {
    let half = [
        in_dims[0] as f32 * 0.5,
        in_dims[1] as f32 * 0.5,
        in_dims[2] as f32 * 0.5,
    ];
    let pxyz_c = mat44::apply(affine, half);
    let delta = [1f32; 3];
    // Mdc for LIA: x -> -R, y -> -S, z -> +A
    let mdc: Mat44 = [
        [-1.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 1.0, 0.0],
        [0.0, -1.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    // scaleMat44: row r multiplied by delta[r]
    let mut mdc_d = mdc;
    for (row, d) in mdc_d.iter_mut().take(3).zip(delta) {
        for v in row.iter_mut() {
            *v *= d;
        }
    }
    let n = CONFORMED_DIM as f32;
    // exact in any grouping: each row of Mdc has a single +-1
    let vol_center = mat44::apply(&mdc_d, [n, n, n]).map(|v| v * 0.5);
    let mut out_affine = mdc_d;
    for r in 0..3 {
        out_affine[r][3] = pxyz_c[r] - vol_center[r];
    }
    let inv_out_affine = mat44::inverse(&out_affine);
    let vox2vox = mat44::mul_conform(&inv_out_affine, affine);
    let inv_vox2vox = mat44::inverse(&vox2vox);
    (out_affine, inv_vox2vox)
}

/// `doReslice` with `isLinear = 1` onto the 256³ grid, then `-odt char` rounding.
///
/// `mn` is the minimum of `img`: output voxels whose 2x2x2 input neighbourhood is not
/// entirely inside the input keep it.
fn reslice_trilinear(
    img: &[f32],
    scaled: impl Fn(f32) -> f32,
    mn: f32,
    in_dims: [usize; 3],
    m: &Mat44,
) -> Vec<f32> {
    let [dim_x, dim_y, dim_z] = in_dims;
    let dim_xy = dim_x * dim_y;
    // niimath: fx = (int)floorf(ix); outside when fx < 0 or fx + 1 >= dimX. For an integer k,
    // floor(ix) < 0 <=> ix < 0 and floor(ix) >= k <=> ix >= k, so the test needs no floor
    // (and a NaN coordinate fails `ix >= 0` as niimath's INT_MIN index fails `fx >= 0`).
    let limit = [dim_x, dim_y, dim_z].map(|d| d as f32 - 1.0);
    let fill = to_u8(mn);
    // offsets of the 8 neighbours from the (fx, fy, fz) corner
    let (o100, o010, o001) = (1, dim_x, dim_xy);
    let span = o100 + o010 + o001 + 1;

    let n = CONFORMED_DIM;
    let mut out = vec![fill; n * n * n];
    for (z, slice) in out.chunks_exact_mut(n * n).enumerate() {
        let zf = z as f32;
        // the binary hoists z * m[r][2] + m[r][3] out of the y loop
        let ix_z = zf * m[0][2] + m[0][3];
        let iy_z = zf * m[1][2] + m[1][3];
        let iz_z = zf * m[2][2] + m[2][3];
        for (y, row) in slice.chunks_exact_mut(n).enumerate() {
            let yf = y as f32;
            let ix_yz = yf * m[0][1] + ix_z;
            let iy_yz = yf * m[1][1] + iy_z;
            let iz_yz = yf * m[2][1] + iz_z;
            for (x, o) in row.iter_mut().enumerate() {
                let xf = x as f32;
                let ix = xf * m[0][0] + ix_yz;
                let iy = xf * m[1][0] + iy_yz;
                let iz = xf * m[2][0] + iz_yz;
                let inside = ix >= 0.0
                    && iy >= 0.0
                    && iz >= 0.0
                    && ix < limit[0]
                    && iy < limit[1]
                    && iz < limit[2];
                if !inside {
                    continue;
                }
                // non-negative and below the dimension: truncation is floor
                let (fx, fy, fz) = (ix as usize, iy as usize, iz as usize);
                let (fxf, fyf, fzf) = (fx as f32, fy as f32, fz as f32);
                let (dx, dy, dz) = (ix - fxf, iy - fyf, iz - fzf);
                // the lower weights are (f + 1) - i, not 1 - d
                let wx0 = (fxf + 1.0) - ix;
                let wy0 = (fyf + 1.0) - iy;
                let wz0 = (fzf + 1.0) - iz;
                let i000 = fx + fy * dim_x + fz * dim_xy;
                let cell = &img[i000..i000 + span];
                let c = |k: usize| scaled(cell[k]);
                // niimath's (fast-math) evaluation order, read off its machine code
                let dx_dz = dx * dz;
                let dx_wz0 = dx * wz0;
                let a = c(o010 + o001) * dz + c(o010) * wz0;
                let b = c(o001) * dz + c(0) * wz0;
                let x0 = a * dy + b * wy0;
                let c1 = c(o100 + o010 + o001) * dx_dz + c(o100 + o010) * dx_wz0;
                let c0 = c(o100 + o001) * dx_dz + c(o100) * dx_wz0;
                *o = to_u8((wx0 * x0 + dy * c1) + wy0 * c0);
            }
        }
    }
    out
}

/// `-odt char`: `clamp_u8(round(v))` (round half away from zero), as an f32.
/// (v * scl_slope + scl_inter with slope 1 and intercept 0 leaves v unchanged.)
#[inline]
fn to_u8(v: f32) -> f32 {
    if (0.0..=255.0).contains(&v) {
        // 0 <= v <= 255: truncation is floor and v - t is exact
        let t = v as u32 as f32;
        if v - t >= 0.5 {
            t + 1.0
        } else {
            t
        }
    } else if v > 255.0 {
        255.0
    } else {
        0.0 // negative, or NaN (which conform's scaling never produces)
    }
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
            qform_code: 0,
        }
    }

    fn lia(offset: [f64; 3]) -> [[f64; 4]; 4] {
        [
            [-1.0, 0.0, 0.0, offset[0]],
            [0.0, 0.0, 1.0, offset[1]],
            [0.0, -1.0, 0.0, offset[2]],
            [0.0, 0.0, 0.0, 1.0],
        ]
    }

    #[test]
    fn uint8_rounding_is_c_round_and_clamp() {
        let cases = [
            (0.499_999_97f32, 0.0f32),
            (0.5, 1.0),
            (1.5, 2.0),
            (2.5, 3.0),
            (254.499_98, 254.0),
            (254.5, 255.0),
            (255.2, 255.0),
            (1e9, 255.0),
            (-0.0, 0.0),
            (-3.0, 0.0),
            (f32::NAN, 0.0),
        ];
        for (v, want) in cases {
            assert_eq!(to_u8(v), want, "{v}");
        }
    }

    #[test]
    fn scale_of_uniform_ramp() {
        // values 0..1000: robust max is the 98th percentile of the 999 non-zero values
        let img: Vec<f32> = (0..1001).map(|v| v as f32).collect();
        let (src_min, scale) = get_scale(&img, img.len());
        assert_eq!(src_min, 0.0);
        let nth = 1001 - (0.019999980926513672f64 * 1000.0) as usize; // 982
                                                                      // cs[i] = i + 1 for bins of width 1 (the last bin also holds 1000)
        let idx = nth - 2;
        assert_eq!(scale, 255.0 / (idx as f32));
    }

    #[test]
    fn scale_ignores_few_negatives_and_nan() {
        let mut img: Vec<f32> = (0..1000).map(|v| (v % 100) as f32).collect();
        img[3] = -50.0; // 0.1 % negative: src_min reset to 0
        img[5] = f32::NAN;
        let (src_min, scale) = get_scale(&img, img.len());
        assert_eq!(src_min, 0.0);
        assert!(scale.is_finite() && scale > 0.0);
        assert_eq!(scale_crop(f32::NAN, src_min, scale), 0.0);
        assert_eq!(scale_crop(-50.0, src_min, scale), 0.0);
        assert_eq!(scale_crop(1e9, src_min, scale), 255.0);
    }

    #[test]
    fn constant_and_zero_volumes() {
        for value in [0.0f32, 7.0] {
            let vol = Volume {
                geometry: geometry([4, 5, 6], lia([2.0, -3.0, 2.5])),
                data: vec![value; 120],
            };
            let c = conform(&vol).unwrap();
            assert_eq!(c.volume.data.len(), 256 * 256 * 256);
            // scale 1 from src_min = value: every voxel becomes 0
            assert!(c.volume.data.iter().all(|&v| v == 0.0));
        }
    }

    #[test]
    fn identity_grid_is_a_copy() {
        // a 256³ LIA 1 mm volume with the conformed centre maps onto itself
        let n = 256usize;
        let mut data = vec![0f32; n * n * n];
        for (i, v) in data.iter_mut().enumerate() {
            *v = ((i * 7919) % 251) as f32;
        }
        let vol = Volume {
            geometry: geometry([n; 3], lia([127.6, -133.48, 134.48])),
            data,
        };
        let c = conform(&vol).unwrap();
        let m = c.vox2vox_native_from_conformed;
        for r in 0..3 {
            for col in 0..4 {
                let want = if r == col { 1.0 } else { 0.0 };
                assert!((m[r][col] - want).abs() < 1e-4, "{m:?}");
            }
        }
        assert_eq!(c.volume.geometry.orientation_code(), "LIA");
        // the last row/column/slice has no upper neighbour: filled with the minimum (0)
        assert_eq!(c.volume.data[255], 0.0);
    }

    #[test]
    fn rejects_bad_input() {
        let good = geometry([2, 2, 2], lia([0.0; 3]));
        let empty = Volume {
            geometry: geometry([0, 2, 2], lia([0.0; 3])),
            data: vec![],
        };
        assert_eq!(
            conform(&empty).unwrap_err(),
            PreprocessError::EmptyVolume { dims: [0, 2, 2] }
        );
        let series = Volume {
            geometry: good.clone(),
            data: vec![1.0; 24],
        };
        assert_eq!(
            conform(&series).unwrap_err(),
            PreprocessError::NotThreeD { volumes: 3 }
        );
        let short = Volume {
            geometry: good.clone(),
            data: vec![1.0; 5],
        };
        assert!(matches!(
            conform(&short).unwrap_err(),
            PreprocessError::DataLength { .. }
        ));
        let mut singular = good.clone();
        singular.affine[1] = [0.0, 0.0, 0.0, 4.0];
        let bad = Volume {
            geometry: singular,
            data: vec![1.0; 8],
        };
        assert_eq!(conform(&bad).unwrap_err(), PreprocessError::InvalidAffine);
        assert!(!conform(&bad).unwrap_err().to_string().is_empty());
    }

    #[test]
    fn affine_choice() {
        let s = lia([1.0, 2.0, 3.0]);
        let q = lia([4.0, 5.0, 6.0]);
        let zero = [[0.0; 4]; 4];
        assert_eq!(niimath_affine(&s, 1, &q, 1), Some(s));
        assert_eq!(niimath_affine(&s, 1, &q, 2), Some(q));
        assert_eq!(niimath_affine(&zero, 0, &q, 1), Some(q));
        assert_eq!(niimath_affine(&zero, 2, &q, 1), Some(q));
        assert_eq!(niimath_affine(&zero, 0, &zero, 0), None);
    }
}
