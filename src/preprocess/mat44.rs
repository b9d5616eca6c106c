//! niimath's single-precision 4x4 matrix arithmetic (`mat44` of nifti_io.c / core.c).
//!
//! niimath does its geometry in f32; rounding the same way is what makes a port agree with it
//! voxel for voxel where a sample lands on a rounding boundary. The reference is the niimath
//! binary that brainchop installs (PyPI `niimath` 1.0.20261016, manylinux x86-64). It is built
//! with GCC's `-ffast-math`, which regroups sums: the groupings below are the ones read off
//! its machine code (they differ from the C source), and Rust never regroups or fuses them.

pub(crate) type Mat44 = [[f32; 4]; 4];

/// `f642f32mat44`: a double matrix rounded to float.
pub(crate) fn to_f32(m: &[[f64; 4]; 4]) -> Mat44 {
    m.map(|row| row.map(|v| v as f32))
}

pub(crate) fn to_f64(m: &Mat44) -> [[f64; 4]; 4] {
    m.map(|row| row.map(f64::from))
}

/// `nifti_mat44_mul` as inlined in niimath's `conform`:
/// `C[i][j] = (A[i][0] B[0][j] + A[i][1] B[1][j]) + (A[i][2] B[2][j] + A[i][3] B[3][j])`.
pub(crate) fn mul_conform(a: &Mat44, b: &Mat44) -> Mat44 {
    let mut c = [[0f32; 4]; 4];
    for (i, row) in c.iter_mut().enumerate() {
        for (j, out) in row.iter_mut().enumerate() {
            *out =
                (a[i][0] * b[0][j] + a[i][1] * b[1][j]) + (a[i][2] * b[2][j] + a[i][3] * b[3][j]);
        }
    }
    c
}

/// `nifti_mat44_mul` as inlined in niimath's `reslice` (`-reslice_nn`):
/// `C[i][j] = (A[i][0] B[0][j] + A[i][3] B[3][j]) + (A[i][1] B[1][j] + A[i][2] B[2][j])`.
pub(crate) fn mul_reslice(a: &Mat44, b: &Mat44) -> Mat44 {
    let mut c = [[0f32; 4]; 4];
    for (i, row) in c.iter_mut().enumerate() {
        for (j, out) in row.iter_mut().enumerate() {
            *out =
                (a[i][0] * b[0][j] + a[i][3] * b[3][j]) + (a[i][1] * b[1][j] + a[i][2] * b[2][j]);
        }
    }
    c
}

/// The world position of voxel (x, y, z) as niimath's `conformVox2Vox` computes the input's
/// centre: `(m[i][0] x + m[i][1] y) + (m[i][2] z + m[i][3])`.
pub(crate) fn apply(m: &Mat44, [x, y, z]: [f32; 3]) -> [f32; 3] {
    std::array::from_fn(|i| (m[i][0] * x + m[i][1] * y) + (m[i][2] * z + m[i][3]))
}

/// `nifti_mat44_inverse`: computed in double from the float elements, rounded to float.
/// A singular matrix gives all zeros (niimath's behaviour); callers validate first.
/// (The binary regroups these double-precision sums too; that changes the f32 results only
/// when a double lands within ~1e-16 of an f32 rounding boundary, so the source's grouping
/// is kept.)
pub(crate) fn inverse(r: &Mat44) -> Mat44 {
    let (r11, r12, r13) = (r[0][0] as f64, r[0][1] as f64, r[0][2] as f64);
    let (r21, r22, r23) = (r[1][0] as f64, r[1][1] as f64, r[1][2] as f64);
    let (r31, r32, r33) = (r[2][0] as f64, r[2][1] as f64, r[2][2] as f64);
    let (v1, v2, v3) = (r[0][3] as f64, r[1][3] as f64, r[2][3] as f64);
    let mut deti =
        r11 * r22 * r33 - r11 * r32 * r23 - r21 * r12 * r33 + r21 * r32 * r13 + r31 * r12 * r23
            - r31 * r22 * r13;
    let singular = deti == 0.0;
    if !singular {
        deti = 1.0 / deti;
    }
    let f = |x: f64| (deti * x) as f32;
    let mut q = [[0f32; 4]; 4];
    q[0][0] = f(r22 * r33 - r32 * r23);
    q[0][1] = f(-r12 * r33 + r32 * r13);
    q[0][2] = f(r12 * r23 - r22 * r13);
    q[0][3] = f(-r12 * r23 * v3 + r12 * v2 * r33 + r22 * r13 * v3
        - r22 * v1 * r33
        - r32 * r13 * v2
        + r32 * v1 * r23);
    q[1][0] = f(-r21 * r33 + r31 * r23);
    q[1][1] = f(r11 * r33 - r31 * r13);
    q[1][2] = f(-r11 * r23 + r21 * r13);
    q[1][3] = f(
        r11 * r23 * v3 - r11 * v2 * r33 - r21 * r13 * v3 + r21 * v1 * r33 + r31 * r13 * v2
            - r31 * v1 * r23,
    );
    q[2][0] = f(r21 * r32 - r31 * r22);
    q[2][1] = f(-r11 * r32 + r31 * r12);
    q[2][2] = f(r11 * r22 - r21 * r12);
    q[2][3] = f(-r11 * r22 * v3 + r11 * r32 * v2 + r21 * r12 * v3
        - r21 * r32 * v1
        - r31 * r12 * v2
        + r31 * r22 * v1);
    q[3][3] = if singular { 0.0 } else { 1.0 };
    q
}

/// `is_valid_mat44` (conform.c): finite, every row and column of the 3x3 block has an element
/// above 1e-6 in magnitude, and its f32 determinant is at least 1e-6 in magnitude.
pub(crate) fn is_valid(m: &Mat44) -> bool {
    const TOL: f32 = 1e-6;
    if m.iter().flatten().any(|v| !v.is_finite()) {
        return false;
    }
    if m.iter()
        .take(3)
        .any(|row| !row.iter().take(3).any(|v| v.abs() > TOL))
    {
        return false;
    }
    if (0..3).any(|c| !m.iter().take(3).any(|row| row[c].abs() > TOL)) {
        return false;
    }
    let det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
    det.abs() >= TOL
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_of_product_is_identity() {
        let a: Mat44 = [
            [-0.9, 0.1, 0.0, 12.5],
            [0.0, 0.0, 1.2, -30.0],
            [0.05, -1.1, 0.0, 44.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let p = mul_conform(&inverse(&a), &a);
        assert_eq!(mul_reslice(&inverse(&a), &a)[3], [0.0, 0.0, 0.0, 1.0]);
        for (r, row) in p.iter().enumerate() {
            for (c, &v) in row.iter().enumerate() {
                let want = if r == c { 1.0 } else { 0.0 };
                assert!((v - want).abs() < 1e-5, "{r},{c}: {v}");
            }
        }
        let v = apply(&a, [1.0, 2.0, 3.0]);
        assert!((v[0] - (-0.9 + 0.2 + 12.5)).abs() < 1e-5);
    }

    #[test]
    fn validity() {
        let mut a: Mat44 = [
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
            [0.0; 4],
        ];
        a[3][3] = 1.0;
        assert!(is_valid(&a));
        let mut b = a;
        b[1][1] = 0.0;
        assert!(!is_valid(&b));
        let mut c = a;
        c[0][3] = f32::NAN;
        assert!(!is_valid(&c));
        // rows and columns populated but singular
        let d: Mat44 = [
            [1.0, 1.0, 0.0, 0.0],
            [1.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        assert!(!is_valid(&d));
        assert_eq!(inverse(&[[0.0; 4]; 4])[3][3], 0.0);
    }
}
