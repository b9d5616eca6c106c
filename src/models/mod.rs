//! Models: the registry of known models and the loaders that turn model files into a [`Network`].
//!
//! A [`Network`] is plain data (weights as `f32` vectors, layer hyper-parameters); the
//! [`crate::engine`] turns it into burn tensors on whatever device runs it.

pub mod fit;
mod meshnet_json;
pub(crate) mod pth;
pub mod registry;
mod tfjs;

pub use registry::{ModelEntry, ModelFormat, Registry, TaskKind};

use std::collections::BTreeMap;
use std::fmt;

/// Activation after a convolution (and its normalization, if any).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    None,
    Relu,
    Elu,
    Gelu,
}

/// Normalization after a convolution that cannot be folded into its weights.
#[derive(Clone, Debug, PartialEq)]
pub enum Normalization {
    None,
    /// Per-channel normalization over all spatial positions of the *whole* volume
    /// (brainchop-cli's `GroupNorm(num_groups = channels)`), optionally with a learned affine.
    Instance {
        eps: f32,
        weight: Option<Vec<f32>>,
        bias: Option<Vec<f32>>,
    },
}

/// One 3-D convolution layer: `out = act(norm(conv3d(in, weight, dilation) + bias))`.
/// Inference-time batch norm is already folded into `weight` and `bias` by the loaders.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvLayer {
    pub in_channels: usize,
    pub out_channels: usize,
    /// Cubic kernel edge (3 or 1).
    pub kernel_size: usize,
    pub dilation: usize,
    /// Zero padding on every side ("same" padding: dilation * (kernel_size - 1) / 2).
    pub padding: usize,
    /// `[out, in, kd, kh, kw]`, row-major, where d/h/w are the tensor axes the model was
    /// trained with (see [`Network::axis_order`]).
    pub weight: Vec<f32>,
    pub bias: Option<Vec<f32>>,
    pub normalization: Normalization,
    pub activation: Activation,
}

/// How a model's tensor axes (d, h, w) relate to the NIfTI voxel axes (i, j, k).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AxisOrder {
    /// d = i, h = j, w = k (brainchop-cli: `data.permute(2,1,0)` of the (k,j,i) array).
    Ijk,
    /// d = k, h = j, w = i (a volume read as a (k, j, i) array without permuting).
    Kji,
}

/// A MeshNet-style fully convolutional network, ready for any backend.
#[derive(Clone, Debug, PartialEq)]
pub struct Network {
    pub layers: Vec<ConvLayer>,
    pub axis_order: AxisOrder,
}

impl Network {
    pub fn n_classes(&self) -> usize {
        self.layers.last().map(|l| l.out_channels).unwrap_or(0)
    }

    pub fn parameter_count(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.weight.len() + l.bias.as_ref().map_or(0, Vec::len))
            .sum()
    }

    /// Multiply-accumulates per output voxel (FLOPs per voxel = 2 x this).
    pub fn macs_per_voxel(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.in_channels * l.out_channels * l.kernel_size.pow(3))
            .sum()
    }

    /// How far (in voxels) an output voxel sees along each axis: the halo a tile needs.
    pub fn receptive_radius(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.dilation * (l.kernel_size - 1) / 2)
            .sum()
    }
}

/// How a model expects the conformed intensities to be scaled before the first layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum InputNormalization {
    /// brainchop-cli's `qnormalize`: (x - q2%) / (q98% - q2% + 1e-3), clipped to [0, 1].
    #[serde(rename = "quantile-2-98")]
    Quantile2To98,
    /// (x - min) / (max - min).
    #[serde(rename = "min-max")]
    MinMax,
}

/// Model files by name (e.g. "model.json", "model.bin"), as bytes.
pub type ModelFiles = BTreeMap<String, Vec<u8>>;

/// Why a model could not be loaded.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelError {
    MissingFile(String),
    BadFormat(String),
    UnsupportedLayer(String),
    ChecksumMismatch {
        file: String,
        expected: String,
        actual: String,
    },
    UnknownModel(String),
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelError::MissingFile(m) => write!(f, "missing model file: {m}"),
            ModelError::BadFormat(m) => write!(f, "bad model file: {m}"),
            ModelError::UnsupportedLayer(m) => write!(f, "unsupported layer: {m}"),
            ModelError::ChecksumMismatch {
                file,
                expected,
                actual,
            } => {
                write!(f, "{file}: sha256 is {actual}, registry expects {expected}")
            }
            ModelError::UnknownModel(m) => write!(f, "unknown model: {m}"),
        }
    }
}

impl std::error::Error for ModelError {}

/// Builds a dense network from the files of one model in `format` (the registry entry's; see
/// [`ModelEntry::load_network`], which also checks the files).
pub fn load_network(format: ModelFormat, files: &ModelFiles) -> Result<Network, ModelError> {
    let json = || {
        let bytes = files
            .get("model.json")
            .ok_or_else(|| ModelError::MissingFile("model.json".into()))?;
        serde_json::from_slice::<serde_json::Value>(bytes)
            .map_err(|e| ModelError::BadFormat(format!("model.json is not JSON: {e}")))
    };
    match format {
        ModelFormat::TfjsLayers => tfjs::load(&json()?, files),
        ModelFormat::MeshnetJson => meshnet_json::load(&json()?, files),
        ModelFormat::LiteMedSamPth => Err(ModelError::BadFormat(
            "LiteMedSAM is promptable: it segments what a box points at, not every voxel \
             (use `insitu prompt`)"
                .into(),
        )),
    }
}
