//! The GPU path: each layer as burn's generic `conv3d` on a wgpu device (WebGPU in the
//! browser, Vulkan/Metal/DX12 natively), the activations as device tensors.

use super::{EngineError, LayerProgress, OutputBox, RunStats};
use crate::models::{Activation, AxisOrder, ConvLayer, Network, Normalization};
use burn::tensor::module::conv3d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{activation, Device, Int, Tensor, TensorData};

/// A network whose weights live on a GPU, ready to run.
pub struct GpuNetwork {
    device: Device,
    layers: Vec<GpuLayer>,
    receptive_radius: usize,
    has_global_normalization: bool,
    widest_layer: usize,
}

struct GpuLayer {
    /// How far (voxels) this layer reaches along each axis.
    halo: usize,
    macs_per_voxel: usize,
    widest: usize,
    weight: Tensor<5>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<3>,
    normalization: Option<InstanceNorm>,
    activation: Activation,
}

struct InstanceNorm {
    eps: f32,
    weight: Option<Tensor<1>>,
    bias: Option<Tensor<1>>,
}

impl GpuNetwork {
    /// Uploads the weights. Volumes are fed as `[1, 1, k, j, i]` tensors (the NIfTI memory
    /// order), so kernels of models trained on `(i, j, k)` axes are transposed here once.
    pub fn new(network: &Network, device: &Device) -> GpuNetwork {
        GpuNetwork {
            device: device.clone(),
            layers: network
                .layers
                .iter()
                .map(|layer| prepare_layer(layer, network.axis_order, device))
                .collect(),
            receptive_radius: network.receptive_radius(),
            has_global_normalization: network
                .layers
                .iter()
                .any(|l| !matches!(l.normalization, Normalization::None)),
            widest_layer: network
                .layers
                .iter()
                .map(|l| l.out_channels.max(l.in_channels))
                .max()
                .unwrap_or(1),
        }
    }

    /// Bytes of the largest activation of a pass over an input box (the device's buffer
    /// limit bounds single tensors).
    pub fn pass_bytes(&self, box_dims: [usize; 3]) -> usize {
        box_dims
            .iter()
            .product::<usize>()
            .saturating_mul(self.widest_layer)
            .saturating_mul(4)
    }

    /// Labels for the voxels of `out` only, computed from `out` grown by the receptive
    /// radius (clipped to the volume): exactly what a whole-volume pass gives there, for
    /// networks without whole-volume normalization.
    pub async fn segment_box(
        &self,
        input: &[f32],
        dims: [usize; 3],
        out: OutputBox,
        progress: &mut dyn FnMut(LayerProgress),
    ) -> Result<(Vec<u16>, RunStats), EngineError> {
        let [ni, nj, _] = dims;
        let r = self.receptive_radius;
        let lo = [0, 1, 2].map(|a| out.start[a].saturating_sub(r));
        let hi = [0, 1, 2].map(|a| (out.start[a] + out.size[a] + r).min(dims[a]));
        let [bi, bj, bk] = [0, 1, 2].map(|a| hi[a] - lo[a]);
        let mut values = Vec::with_capacity(bi * bj * bk);
        for k in lo[2]..hi[2] {
            for j in lo[1]..hi[1] {
                let row = (k * nj + j) * ni;
                values.extend_from_slice(&input[row + lo[0]..row + hi[0]]);
            }
        }
        let mut x =
            Tensor::<5>::from_data(TensorData::new(values, [1, 1, bk, bj, bi]), &self.device);
        let mut stats = RunStats::default();
        let (mut cur_lo, mut cur_hi) = (lo, hi);
        let mut remaining = r;
        let total = self.layers.len();
        for (done, layer) in self.layers.iter().enumerate() {
            let voxels: usize = (0..3).map(|a| cur_hi[a] - cur_lo[a]).product();
            stats.flops += 2 * (voxels * layer.macs_per_voxel) as u64;
            stats.peak_tensor_bytes = stats.peak_tensor_bytes.max(voxels * layer.widest * 4);
            x = layer.forward(x);
            // Each layer leaves exact values only `halo` voxels further in from the cut
            // edges; keep just what the remaining layers need. (Not with whole-volume
            // normalization: its statistics would change with the box.)
            remaining -= layer.halo;
            if !self.has_global_normalization {
                let new_lo = [0, 1, 2].map(|a| out.start[a].saturating_sub(remaining));
                let new_hi =
                    [0, 1, 2].map(|a| (out.start[a] + out.size[a] + remaining).min(dims[a]));
                for (a, axis) in [(0, 4), (1, 3), (2, 2)] {
                    x = x.narrow(axis, new_lo[a] - cur_lo[a], new_hi[a] - new_lo[a]);
                }
                (cur_lo, cur_hi) = (new_lo, new_hi);
            }
            // Wait for the layer so progress means finished work, not queued work.
            wait_for(&x).await?;
            progress(LayerProgress {
                done: done + 1,
                total,
            });
        }
        let keep = x
            .narrow(2, out.start[2] - cur_lo[2], out.size[2])
            .narrow(3, out.start[1] - cur_lo[1], out.size[1])
            .narrow(4, out.start[0] - cur_lo[0], out.size[0]);
        Ok((argmax_labels(keep).await?, stats))
    }
}

/// Blocks (asynchronously) until `x` is computed, by reading back a single element.
async fn wait_for(x: &Tensor<5>) -> Result<(), EngineError> {
    let one = x.clone().slice([0..1, 0..1, 0..1, 0..1, 0..1]);
    one.into_data_async()
        .await
        .map(|_| ())
        .map_err(|e| execution_error("", e))
}

/// burn's execution errors print as a chain of "Caused by:" blocks and a backtrace note:
/// one line of the distinct causes, for a message the page can show.
fn execution_error(context: &str, error: impl std::fmt::Debug) -> EngineError {
    let text = format!("{error:?}");
    let mut causes: Vec<&str> = Vec::new();
    for line in text.lines().map(str::trim) {
        let noise = line.is_empty() || line == "Caused by:" || line.starts_with("Backtrace");
        if !noise && line != "No backtrace available" && !causes.contains(&line) {
            causes.push(line);
        }
    }
    EngineError::Execution(format!("{context}{}", causes.join(": ")))
}

impl GpuLayer {
    fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let x = conv3d(
            x,
            self.weight.clone(),
            self.bias.clone(),
            self.options.clone(),
        );
        let x = match &self.normalization {
            None => x,
            Some(norm) => instance_norm(x, norm.eps, &norm.weight, &norm.bias),
        };
        match self.activation {
            Activation::None => x,
            Activation::Relu => activation::relu(x),
            // ELU with alpha 1, as tinygrad and Keras define it.
            Activation::Elu => x.clone().clamp_min(0.0) + (x.clamp_max(0.0).exp() - 1.0),
            // tinygrad's gelu is the tanh approximation; brainchop's models were run with it.
            Activation::Gelu => activation::gelu_approximate(x),
        }
    }
}

/// Per-channel normalization over all positions (GroupNorm with one channel per group).
fn instance_norm(
    x: Tensor<5>,
    eps: f32,
    weight: &Option<Tensor<1>>,
    bias: &Option<Tensor<1>>,
) -> Tensor<5> {
    let [b, c, d, h, w] = x.dims();
    let flat = x.reshape([b, c, d * h * w]);
    let mean = flat.clone().mean_dim(2);
    let centered = flat - mean;
    let var = centered.clone().square().mean_dim(2);
    let mut y = centered / (var + eps as f64).sqrt();
    if let Some(weight) = weight {
        y = y * weight.clone().reshape([1, c, 1]);
    }
    if let Some(bias) = bias {
        y = y + bias.clone().reshape([1, c, 1]);
    }
    y.reshape([b, c, d, h, w])
}

async fn argmax_labels(logits: Tensor<5>) -> Result<Vec<u16>, EngineError> {
    let indices: Tensor<5, Int> = logits.argmax(1);
    let data = indices
        .into_data_async()
        .await
        .map_err(|e| execution_error("", e))?;
    let values = data
        .try_into_vec_as::<i64>()
        .map_err(|e| execution_error("argmax readback: ", e))?;
    Ok(values.into_iter().map(|v| v as u16).collect())
}

fn prepare_layer(layer: &ConvLayer, axis_order: AxisOrder, device: &Device) -> GpuLayer {
    let k = layer.kernel_size;
    let weight = match axis_order {
        AxisOrder::Kji => layer.weight.clone(),
        AxisOrder::Ijk => {
            super::transpose_kernel(&layer.weight, layer.out_channels * layer.in_channels, k)
        }
    };
    let weight = Tensor::<5>::from_data(
        TensorData::new(weight, [layer.out_channels, layer.in_channels, k, k, k]),
        device,
    );
    let vector =
        |v: &Vec<f32>| Tensor::<1>::from_data(TensorData::new(v.clone(), [v.len()]), device);
    let normalization = match &layer.normalization {
        Normalization::None => None,
        Normalization::Instance { eps, weight, bias } => Some(InstanceNorm {
            eps: *eps,
            weight: weight.as_ref().map(vector),
            bias: bias.as_ref().map(vector),
        }),
    };
    let p = layer.padding;
    GpuLayer {
        halo: layer.dilation * (k - 1) / 2,
        macs_per_voxel: layer.in_channels * layer.out_channels * k * k * k,
        widest: layer.in_channels.max(layer.out_channels),
        weight,
        bias: layer.bias.as_ref().map(vector),
        options: ConvOptions::new([1, 1, 1], [p, p, p], [layer.dilation; 3], 1),
        normalization,
        activation: layer.activation,
    }
}
