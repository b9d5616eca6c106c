//! brainchop-compatible pre- and post-processing.
//!
//! brainchop (the reference this crate reproduces) shells out to niimath for the spatial
//! steps and uses numpy for the intensity normalization. Each step is ported here so that a
//! segmentation made by insitu matches the brainchop CLI voxel for voxel:
//!
//! - [`conform`]: niimath `-conform -odt char` (robust 0..255 intensity scaling, trilinear
//!   reslice onto a 256³ 1 mm LIA grid, uint8 rounding), computed in f32 as niimath does.
//! - [`quantile_normalize`]: brainchop's `qnormalize` (numpy `quantile`, 'linear' method).
//! - [`keep_largest_component`]: brainchop's `bwlabel` post-processing (niimath
//!   `-bwlabel 26`, then zero everything outside the largest cluster).
//! - [`labels_to_native`]: niimath `-reslice_nn` (brainchop's `--inverse-conform`): the
//!   labels mapped back onto the input's own grid by nearest neighbour.

mod components;
mod conform;
mod mat44;
mod normalize;
mod resample;

pub use components::keep_largest_component;
pub use conform::{conform, niimath_affine, Conformed, CONFORMED_DIM};
pub use normalize::{numpy_quantile, quantile_normalize};
pub use resample::labels_to_native;

use std::fmt;

/// Why a volume could not be preprocessed.
#[derive(Debug, Clone, PartialEq)]
pub enum PreprocessError {
    /// A dimension is zero: there are no voxels to work with.
    EmptyVolume { dims: [usize; 3] },
    /// The data length does not match the dimensions (e.g. a 4-D series was passed as 3-D).
    DataLength { dims: [usize; 3], len: usize },
    /// The volume has more than one 3-D volume (time series); conform needs one 3-D volume.
    NotThreeD { volumes: usize },
    /// The voxel-to-world transform is unusable (non-finite, an empty row or column, or
    /// singular), so the volume cannot be placed in world space.
    InvalidAffine,
    /// The volume is too large for the 32-bit voxel indexing niimath uses.
    TooLarge { dims: [usize; 3] },
}

impl fmt::Display for PreprocessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PreprocessError::EmptyVolume { dims } => {
                write!(
                    f,
                    "empty volume: dimensions {}x{}x{} hold no voxels",
                    dims[0], dims[1], dims[2]
                )
            }
            PreprocessError::DataLength { dims, len } => write!(
                f,
                "volume data holds {len} values but its dimensions {}x{}x{} need {}",
                dims[0],
                dims[1],
                dims[2],
                dims.iter().product::<usize>()
            ),
            PreprocessError::NotThreeD { volumes } => write!(
                f,
                "conform needs a single 3-D volume, not a 4-D series of {volumes} volumes"
            ),
            PreprocessError::InvalidAffine => write!(
                f,
                "the NIfTI sform and qform are both invalid (non-finite, degenerate or singular): \
                 cannot place the volume in world space"
            ),
            PreprocessError::TooLarge { dims } => write!(
                f,
                "volume of {}x{}x{} voxels is too large to conform",
                dims[0], dims[1], dims[2]
            ),
        }
    }
}

impl std::error::Error for PreprocessError {}
