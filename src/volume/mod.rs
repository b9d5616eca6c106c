//! Volumes, their geometry, and the readers and writers for volume files.

mod geometry;
pub mod nifti;

pub use geometry::Geometry;

use std::fmt;

/// Reads a volume file of any supported format from its bytes.
pub fn read(bytes: &[u8]) -> Result<Volume, VolumeError> {
    nifti::read_nifti(bytes)
}

/// A scalar 3-D image: intensities in physical units (scl_slope/scl_inter applied).
#[derive(Clone, Debug)]
pub struct Volume {
    pub geometry: Geometry,
    /// Voxel values, x fastest, then y, then z (the NIfTI on-disk order).
    pub data: Vec<f32>,
}

/// A 3-D label map (segmentation) on some grid.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelMap {
    pub geometry: Geometry,
    /// Label per voxel, x fastest, then y, then z.
    pub labels: Vec<u16>,
}

impl LabelMap {
    /// Interprets an intensity volume (e.g. a reference label file) as labels.
    pub fn from_volume(volume: &Volume) -> Result<LabelMap, VolumeError> {
        let mut labels = Vec::with_capacity(volume.data.len());
        for &v in &volume.data {
            if !(v.is_finite() && v >= 0.0 && v <= u16::MAX as f32 && v.fract() == 0.0) {
                return Err(VolumeError::NotLabels(format!(
                    "voxel value {v} is not a non-negative integer label"
                )));
            }
            labels.push(v as u16);
        }
        Ok(LabelMap { geometry: volume.geometry.clone(), labels })
    }

    pub fn max_label(&self) -> u16 {
        self.labels.iter().copied().max().unwrap_or(0)
    }
}

/// Why a volume could not be read or written. Messages name the problem; callers add the file name.
#[derive(Debug, Clone, PartialEq)]
pub enum VolumeError {
    /// The bytes are not a file of the expected format at all.
    NotRecognized(String),
    /// The header is present but inconsistent or unsupported.
    BadHeader(String),
    /// The header promises more data than the file holds.
    Truncated(String),
    /// Compressed data could not be decompressed.
    Decompress(String),
    /// A limit that protects memory was exceeded.
    TooLarge(String),
    /// Values that should be integer labels are not.
    NotLabels(String),
}

impl fmt::Display for VolumeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VolumeError::NotRecognized(m) => write!(f, "not a recognized volume file: {m}"),
            VolumeError::BadHeader(m) => write!(f, "bad header: {m}"),
            VolumeError::Truncated(m) => write!(f, "truncated file: {m}"),
            VolumeError::Decompress(m) => write!(f, "cannot decompress: {m}"),
            VolumeError::TooLarge(m) => write!(f, "too large: {m}"),
            VolumeError::NotLabels(m) => write!(f, "not a label volume: {m}"),
        }
    }
}

impl std::error::Error for VolumeError {}

/// The sub-volume `start .. start + size` (voxel indices), with the affine moved so every
/// kept voxel stays where it was in world space.
pub fn crop(volume: &Volume, start: [usize; 3], size: [usize; 3]) -> Result<Volume, VolumeError> {
    let dims = volume.geometry.dims;
    for a in 0..3 {
        if size[a] == 0 || start[a].checked_add(size[a]).is_none_or(|end| end > dims[a]) {
            return Err(VolumeError::BadHeader(format!(
                "crop box start {start:?} size {size:?} does not fit inside dims {dims:?}"
            )));
        }
    }
    let mut data = Vec::with_capacity(size.iter().product());
    for k in start[2]..start[2] + size[2] {
        for j in start[1]..start[1] + size[1] {
            let row = (k * dims[1] + j) * dims[0];
            data.extend_from_slice(&volume.data[row + start[0]..row + start[0] + size[0]]);
        }
    }
    let mut geometry = volume.geometry.clone();
    let origin = geometry.voxel_to_world([start[0] as f64, start[1] as f64, start[2] as f64]);
    for (r, o) in origin.iter().enumerate() {
        geometry.affine[r][3] = *o;
    }
    geometry.dims = size;
    Ok(Volume { geometry, data })
}
