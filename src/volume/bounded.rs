//! Helpers shared by the NRRD, MGH, MetaImage and DICOM readers and writers: bounded
//! decompression, checked grid sizes, voxel conversion and LPS <-> RAS geometry.
//!
//! The rules every reader follows (the NIfTI reader's): nothing read from a header is trusted for
//! allocation. Grids are capped at [`MAX_VOXELS`](super::nifti::MAX_VOXELS) before anything is
//! allocated, uncompressed data must be present in full before it is converted, and compressed
//! data is inflated into buffers that grow only as decompressed bytes actually arrive and stop
//! at the size the header implies, so neither a header's word nor a compression bomb can make a
//! reader allocate gigabytes.

use super::nifti::MAX_VOXELS;
use super::{Geometry, VolumeError};
use flate2::read::{MultiGzDecoder, ZlibDecoder};
use std::io::{self, Read};

/// Largest number of bytes decompressed from one file (header and voxels), as for `.nii.gz`.
pub(crate) const MAX_DECOMPRESSED_BYTES: u64 = super::nifti::MAX_DECOMPRESSED_BYTES;

pub(crate) fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x1f, 0x8b])
}

/// A compression wrapper around voxel data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Compression {
    Gzip,
    Zlib,
}

impl Compression {
    fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zlib => "zlib",
        }
    }
}

/// Decompresses `compressed`, skipping the first `skip` decompressed bytes and returning at most
/// the `n` that follow (fewer when the stream ends early: the caller reports that as truncation).
/// The output grows only as data arrives; `n` is checked against the decompression cap first.
pub(crate) fn inflate(
    compressed: &[u8],
    codec: Compression,
    skip: u64,
    n: usize,
) -> Result<Vec<u8>, VolumeError> {
    let within_cap = u64::try_from(n)
        .ok()
        .and_then(|n| n.checked_add(skip))
        .is_some_and(|end| end <= MAX_DECOMPRESSED_BYTES);
    if !within_cap {
        return Err(VolumeError::TooLarge(format!(
            "{n} bytes of voxels after {skip} bytes: more than the {MAX_DECOMPRESSED_BYTES} \
             bytes insitu decompresses"
        )));
    }
    let error = |e: io::Error| {
        VolumeError::Decompress(format!(
            "{} data is corrupt or truncated: {e}",
            codec.name()
        ))
    };
    let mut reader: Box<dyn Read + '_> = match codec {
        Compression::Gzip => Box::new(MultiGzDecoder::new(compressed)),
        Compression::Zlib => Box::new(ZlibDecoder::new(compressed)),
    };
    let skipped = io::copy(&mut reader.by_ref().take(skip), &mut io::sink()).map_err(error)?;
    if skipped < skip {
        return Err(VolumeError::Truncated(format!(
            "{} data holds {skipped} bytes, fewer than the {skip} to skip before the voxels",
            codec.name()
        )));
    }
    read_up_to(&mut reader, n).map_err(error)
}

/// Reads at most `n` bytes; the buffer grows with the data, never to `n` on the header's word.
pub(crate) fn read_up_to(reader: &mut impl Read, n: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    reader
        .take(u64::try_from(n).unwrap_or(u64::MAX))
        .read_to_end(&mut out)?;
    Ok(out)
}

/// A voxel type on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scalar {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
}

impl Scalar {
    pub(crate) fn size(self) -> usize {
        match self {
            Scalar::U8 | Scalar::I8 => 1,
            Scalar::U16 | Scalar::I16 => 2,
            Scalar::U32 | Scalar::I32 | Scalar::F32 => 4,
            Scalar::U64 | Scalar::I64 | Scalar::F64 => 8,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Scalar::U8 => "uint8",
            Scalar::I8 => "int8",
            Scalar::U16 => "uint16",
            Scalar::I16 => "int16",
            Scalar::U32 => "uint32",
            Scalar::I32 => "int32",
            Scalar::U64 => "uint64",
            Scalar::I64 => "int64",
            Scalar::F32 => "float32",
            Scalar::F64 => "float64",
        }
    }
}

/// Converts whole voxels of `bytes` to f32 (a trailing partial voxel is ignored), applying
/// `value * slope + inter` when `scale` is given.
pub(crate) fn convert(
    bytes: &[u8],
    scalar: Scalar,
    big_endian: bool,
    scale: Option<(f64, f64)>,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(bytes.len() / scalar.size());
    macro_rules! run {
        ($t:ty, $n:literal) => {{
            let raw = bytes.chunks_exact($n).map(|c| {
                let mut a = [0u8; $n];
                a.copy_from_slice(c);
                if big_endian {
                    <$t>::from_be_bytes(a)
                } else {
                    <$t>::from_le_bytes(a)
                }
            });
            match scale {
                None => out.extend(raw.map(|v| v as f32)),
                Some((s, i)) => out.extend(raw.map(|v| (v as f64 * s + i) as f32)),
            }
        }};
    }
    match scalar {
        Scalar::U8 => run!(u8, 1),
        Scalar::I8 => run!(i8, 1),
        Scalar::U16 => run!(u16, 2),
        Scalar::I16 => run!(i16, 2),
        Scalar::U32 => run!(u32, 4),
        Scalar::I32 => run!(i32, 4),
        Scalar::U64 => run!(u64, 8),
        Scalar::I64 => run!(i64, 8),
        Scalar::F32 => run!(f32, 4),
        Scalar::F64 => run!(f64, 8),
    }
    out
}

/// Checks a grid from a header: every size at least 1, at most [`MAX_VOXELS`] voxels, and the
/// f32 output as well as `bytes_per_voxel`-sized data addressable. Returns (dims, voxels, bytes).
pub(crate) fn check_grid(
    sizes: [i64; 3],
    bytes_per_voxel: usize,
    field: &str,
) -> Result<([usize; 3], usize, usize), VolumeError> {
    for (axis, &s) in sizes.iter().enumerate() {
        if s < 1 {
            return Err(VolumeError::BadHeader(format!(
                "{field}: size {s} of axis {axis} is not positive"
            )));
        }
    }
    let grid = format!("{}x{}x{}", sizes[0], sizes[1], sizes[2]);
    let too_large = || {
        VolumeError::TooLarge(format!(
            "{field}: the grid is {grid}, more than the {MAX_VOXELS} voxels insitu accepts"
        ))
    };
    let nvox = sizes[0]
        .checked_mul(sizes[1])
        .and_then(|n| n.checked_mul(sizes[2]))
        .and_then(|n| usize::try_from(n).ok())
        .filter(|&n| n <= MAX_VOXELS)
        .ok_or_else(too_large)?;
    let fits = |b: usize| nvox.checked_mul(b).filter(|&b| b <= isize::MAX as usize);
    let bytes = fits(4).and(fits(bytes_per_voxel)).ok_or_else(too_large)?;
    // Each size is at most nvox, so these conversions are exact.
    Ok((sizes.map(|s| s as usize), nvox, bytes))
}

/// Euclidean length of a 3-vector.
pub(crate) fn norm(v: [f64; 3]) -> f64 {
    (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt()
}

pub(crate) fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

pub(crate) fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// The geometry of a grid whose voxel axes step by `columns[i]` (mm, in LPS world coordinates,
/// as DICOM, ITK and NRRD "left-posterior-superior" use) from `origin` (the centre of voxel 0,
/// LPS). The affine is converted to NIfTI's RAS+ by negating x and y; `field` names the header
/// fields for error messages.
pub(crate) fn geometry_from_lps(
    dims: [usize; 3],
    columns: [[f64; 3]; 3],
    origin: [f64; 3],
    field: &str,
) -> Result<Geometry, VolumeError> {
    let flip = [-1.0, -1.0, 1.0];
    let ras_columns = columns.map(|c| [c[0] * flip[0], c[1] * flip[1], c[2] * flip[2]]);
    let ras_origin = [
        origin[0] * flip[0],
        origin[1] * flip[1],
        origin[2] * flip[2],
    ];
    geometry_from_ras(dims, ras_columns, ras_origin, field)
}

/// As [`geometry_from_lps`] with the columns and origin already in RAS+.
pub(crate) fn geometry_from_ras(
    dims: [usize; 3],
    columns: [[f64; 3]; 3],
    origin: [f64; 3],
    field: &str,
) -> Result<Geometry, VolumeError> {
    if !columns
        .iter()
        .flatten()
        .chain(&origin)
        .all(|v| v.is_finite())
    {
        return Err(VolumeError::BadHeader(format!(
            "{field}: the voxel-to-world transform has non-finite values (axes {columns:?}, \
             origin {origin:?})"
        )));
    }
    let spacing = columns.map(norm);
    if let Some(axis) = spacing.iter().position(|&s| !(s.is_finite() && s > 1e-9)) {
        return Err(VolumeError::BadHeader(format!(
            "{field}: voxel axis {axis} has length {} mm (axes {columns:?})",
            spacing[axis]
        )));
    }
    // Axes that are (nearly) parallel make a singular transform: no place in the world.
    let unit = |c: [f64; 3], s: f64| [c[0] / s, c[1] / s, c[2] / s];
    let det = dot(
        cross(unit(columns[0], spacing[0]), unit(columns[1], spacing[1])),
        unit(columns[2], spacing[2]),
    );
    if det.is_nan() || det.abs() <= 1e-6 {
        return Err(VolumeError::BadHeader(format!(
            "{field}: the voxel axes {columns:?} are parallel or degenerate"
        )));
    }
    let mut affine = [[0.0; 4]; 4];
    for (r, row) in affine.iter_mut().take(3).enumerate() {
        for (c, col) in columns.iter().enumerate() {
            row[c] = col[r];
        }
        row[3] = origin[r];
    }
    affine[3][3] = 1.0;
    Ok(Geometry {
        dims,
        spacing,
        affine,
        // Scanner-anatomical coordinates, as dcm2niix writes them.
        sform_code: 1,
        qform_code: 1,
    })
}

/// The affine's voxel axes and origin in LPS (for writers of LPS formats), with each axis's
/// length. A zero-length axis (a caller's broken geometry) gets the unit vector and length 1.
pub(crate) fn lps_axes(geometry: &Geometry) -> ([[f64; 3]; 3], [f64; 3]) {
    let a = &geometry.affine;
    let flip = [-1.0, -1.0, 1.0];
    let columns = std::array::from_fn(|c| std::array::from_fn(|r| a[r][c] * flip[r]));
    let origin = std::array::from_fn(|r| a[r][3] * flip[r]);
    (columns, origin)
}

/// Splits a voxel axis into unit direction and length (unit vector along the axis index for a
/// zero or non-finite axis).
pub(crate) fn direction_and_length(axis: [f64; 3], index: usize) -> ([f64; 3], f64) {
    let n = norm(axis);
    if n.is_finite() && n > 0.0 {
        (axis.map(|v| v / n), n)
    } else {
        let mut unit = [0.0; 3];
        if let Some(u) = unit.get_mut(index) {
            *u = 1.0;
        }
        (unit, 1.0)
    }
}

/// Formats a float for text headers so that it reads back exactly.
pub(crate) fn fmt_f64(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else {
        format!("{v:?}")
    }
}

/// The smallest unsigned voxel type that holds `max`: 1 or 2 bytes.
pub(crate) fn label_bytes(labels: &[u16]) -> (Vec<u8>, Scalar) {
    let max = labels.iter().copied().max().unwrap_or(0);
    if max < 256 {
        (labels.iter().map(|&v| v as u8).collect(), Scalar::U8)
    } else {
        (
            labels.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Scalar::U16,
        )
    }
}

/// `values` cut or zero-padded to exactly `n` items (a mismatch is a caller bug; the file must
/// still be self-consistent).
pub(crate) fn exactly<T: Copy + Default>(values: &[T], n: usize) -> Vec<T> {
    let mut v: Vec<T> = values.iter().copied().take(n).collect();
    v.resize(n, T::default());
    v
}

/// gzip-compresses `bytes` (writing into memory cannot fail).
pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = enc.write_all(bytes);
    enc.finish().unwrap_or_default()
}

/// zlib-compresses `bytes`.
pub(crate) fn zlib(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = enc.write_all(bytes);
    enc.finish().unwrap_or_default()
}
