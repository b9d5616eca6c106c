//! Where voxels are in the world.

/// The voxel grid and its placement in world space (NIfTI convention: RAS+ millimetres).
#[derive(Clone, Debug, PartialEq)]
pub struct Geometry {
    /// Number of voxels along i, j, k.
    pub dims: [usize; 3],
    /// Voxel size in mm along i, j, k (pixdim[1..4]).
    pub spacing: [f64; 3],
    /// Row-major 4x4 voxel-index -> world (mm) transform; last row is 0 0 0 1.
    pub affine: [[f64; 4]; 4],
    /// NIfTI sform_code / qform_code of the source (kept so written files say the same).
    pub sform_code: i16,
    pub qform_code: i16,
}

impl Geometry {
    pub fn voxel_count(&self) -> usize {
        self.dims.iter().product()
    }

    /// Maps a (possibly fractional) voxel index to world mm.
    pub fn voxel_to_world(&self, ijk: [f64; 3]) -> [f64; 3] {
        let a = &self.affine;
        let mut out = [0.0; 3];
        for (r, o) in out.iter_mut().enumerate() {
            *o = a[r][0] * ijk[0] + a[r][1] * ijk[1] + a[r][2] * ijk[2] + a[r][3];
        }
        out
    }

    /// Inverse of the affine, or None when it is singular.
    pub fn world_to_voxel_affine(&self) -> Option<[[f64; 4]; 4]> {
        invert_affine(&self.affine)
    }

    /// Orientation code such as "LIA": the world direction each voxel axis points to.
    pub fn orientation_code(&self) -> String {
        (0..3)
            .map(|c| {
                let col = [self.affine[0][c], self.affine[1][c], self.affine[2][c]];
                let r = (0..3)
                    .max_by(|&a, &b| col[a].abs().total_cmp(&col[b].abs()))
                    .unwrap_or(0);
                let positive = col[r] >= 0.0;
                match (r, positive) {
                    (0, true) => 'R',
                    (0, false) => 'L',
                    (1, true) => 'A',
                    (1, false) => 'P',
                    (2, true) => 'S',
                    _ => 'I',
                }
            })
            .collect()
    }
}

/// Inverts a 4x4 affine whose last row is 0 0 0 1.
pub fn invert_affine(a: &[[f64; 4]; 4]) -> Option<[[f64; 4]; 4]> {
    let m = [
        [a[0][0], a[0][1], a[0][2]],
        [a[1][0], a[1][1], a[1][2]],
        [a[2][0], a[2][1], a[2][2]],
    ];
    let det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
    if !det.is_finite() || det.abs() < 1e-12 {
        return None;
    }
    let inv = [
        [
            (m[1][1] * m[2][2] - m[1][2] * m[2][1]) / det,
            (m[0][2] * m[2][1] - m[0][1] * m[2][2]) / det,
            (m[0][1] * m[1][2] - m[0][2] * m[1][1]) / det,
        ],
        [
            (m[1][2] * m[2][0] - m[1][0] * m[2][2]) / det,
            (m[0][0] * m[2][2] - m[0][2] * m[2][0]) / det,
            (m[0][2] * m[1][0] - m[0][0] * m[1][2]) / det,
        ],
        [
            (m[1][0] * m[2][1] - m[1][1] * m[2][0]) / det,
            (m[0][1] * m[2][0] - m[0][0] * m[2][1]) / det,
            (m[0][0] * m[1][1] - m[0][1] * m[1][0]) / det,
        ],
    ];
    let t = [a[0][3], a[1][3], a[2][3]];
    let mut out = [[0.0; 4]; 4];
    for r in 0..3 {
        for c in 0..3 {
            out[r][c] = inv[r][c];
        }
        out[r][3] = -(inv[r][0] * t[0] + inv[r][1] * t[1] + inv[r][2] * t[2]);
    }
    out[3][3] = 1.0;
    Some(out)
}
