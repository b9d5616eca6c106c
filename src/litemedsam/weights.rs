//! LiteMedSAM's weights: the flat PyTorch state dict (`lite_medsam.pth`) read with
//! [`crate::models::pth`], and the small layers (linear, layer norm) shared by the encoder and
//! the decoder, as burn tensors on any [`Device`].

use std::collections::HashMap;

use burn::tensor::{Device, Tensor, TensorData};

use crate::models::pth::{self, NamedTensor};
use crate::models::ModelError;

/// The state dict by name; every lookup checks the shape.
pub(crate) struct Weights {
    file: String,
    tensors: HashMap<String, NamedTensor>,
}

impl Weights {
    /// Reads a PyTorch zip state dict; `file` names it in errors.
    pub(crate) fn read(bytes: &[u8], file: &str) -> Result<Weights, ModelError> {
        let dict = pth::read_state_dict(bytes, file)?;
        Ok(Weights {
            file: file.to_string(),
            tensors: dict
                .tensors
                .into_iter()
                .map(|t| (t.name.clone(), t))
                .collect(),
        })
    }

    /// The values of `name`, which must have exactly `shape`.
    pub(crate) fn values(&self, name: &str, shape: &[usize]) -> Result<&[f32], ModelError> {
        let t = self.tensors.get(name).ok_or_else(|| {
            ModelError::BadFormat(format!("{}: tensor '{name}' is missing", self.file))
        })?;
        if t.shape != shape {
            return Err(ModelError::BadFormat(format!(
                "{}: tensor '{name}' has shape {:?}, expected {shape:?}",
                self.file, t.shape
            )));
        }
        Ok(&t.data)
    }

    /// `name` (of exactly `shape`) as a device tensor.
    pub(crate) fn tensor<const D: usize>(
        &self,
        name: &str,
        shape: [usize; D],
        device: &Device,
    ) -> Result<Tensor<D>, ModelError> {
        let values = self.values(name, &shape)?;
        Ok(upload(values.to_vec(), shape, device))
    }

    /// `nn.Linear(input, output)` at `prefix` (`.weight` `[output, input]`, `.bias`).
    pub(crate) fn linear(
        &self,
        prefix: &str,
        input: usize,
        output: usize,
        device: &Device,
    ) -> Result<Linear, ModelError> {
        let w = self.values(&format!("{prefix}.weight"), &[output, input])?;
        let mut transposed = vec![0.0f32; w.len()];
        for o in 0..output {
            for i in 0..input {
                transposed[i * output + o] = w[o * input + i];
            }
        }
        Ok(Linear {
            weight_t: upload(transposed, [input, output], device),
            bias: self
                .tensor(&format!("{prefix}.bias"), [output], device)?
                .reshape([1, output]),
        })
    }

    /// `nn.LayerNorm(dim)` at `prefix` (also used for `LayerNorm2d`, over channels).
    pub(crate) fn layer_norm(
        &self,
        prefix: &str,
        dim: usize,
        eps: f64,
        device: &Device,
    ) -> Result<LayerNorm, ModelError> {
        Ok(LayerNorm {
            weight: self.tensor(&format!("{prefix}.weight"), [dim], device)?,
            bias: self.tensor(&format!("{prefix}.bias"), [dim], device)?,
            eps,
        })
    }
}

pub(crate) fn upload<const D: usize>(
    values: Vec<f32>,
    shape: [usize; D],
    device: &Device,
) -> Tensor<D> {
    Tensor::<D>::from_data(TensorData::new(values, shape), device)
}

/// `y = x W^T + b` on rows: `[n, input]` → `[n, output]`.
pub(crate) struct Linear {
    /// `W^T`, `[input, output]`.
    weight_t: Tensor<2>,
    /// `[1, output]`.
    bias: Tensor<2>,
}

impl Linear {
    pub(crate) fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        x.matmul(self.weight_t.clone()) + self.bias.clone()
    }
}

/// Layer normalization with a learned affine.
pub(crate) struct LayerNorm {
    weight: Tensor<1>,
    bias: Tensor<1>,
    eps: f64,
}

impl LayerNorm {
    /// Over the last dimension of `[n, c]` rows (`nn.LayerNorm`).
    pub(crate) fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let c = x.dims()[1];
        let mean = x.clone().mean_dim(1);
        let centered = x - mean;
        let var = centered.clone().square().mean_dim(1);
        let y = centered / (var + self.eps).sqrt();
        y * self.weight.clone().reshape([1, c]) + self.bias.clone().reshape([1, c])
    }

    /// Over the channels of `[b, c, h, w]` (SAM's `LayerNorm2d`).
    pub(crate) fn forward_channels(&self, x: Tensor<4>) -> Tensor<4> {
        let c = x.dims()[1];
        let mean = x.clone().mean_dim(1);
        let centered = x - mean;
        let var = centered.clone().square().mean_dim(1);
        let y = centered / (var + self.eps).sqrt();
        y * self.weight.clone().reshape([1, c, 1, 1]) + self.bias.clone().reshape([1, c, 1, 1])
    }
}
