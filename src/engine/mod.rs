//! The inference engine: runs a [`Network`] with burn on whichever device it is given
//! (burn's `flex` CPU backend natively and as the browser fallback; a GPU through wgpu, see
//! [`start_gpu`], on WebGPU in the browser and natively with the `gpu` feature).
//!
//! Memory is planned per run: when the largest activation of a pass would exceed the
//! budget (e.g. a GPU's maximum buffer size), the volume is processed in slabs along its
//! slowest axis, each slab with a halo as wide as the network's receptive radius, so the
//! interior of every slab is exactly what a whole-volume pass computes.

#[cfg(any(feature = "gpu", target_arch = "wasm32"))]
mod gpu;
mod plan;

#[cfg(any(feature = "gpu", target_arch = "wasm32"))]
pub use gpu::{start_gpu, Gpu};
pub use plan::{plan_slabs, Slab};

use crate::models::{Activation, AxisOrder, ConvLayer, Network, Normalization};
use burn::tensor::module::conv3d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{activation, Device, Int, Tensor, TensorData};
use std::fmt;

/// Why a run failed.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineError {
    /// The device failed to execute or read back a tensor.
    Execution(String),
    /// The run cannot fit the memory budget even when split into slabs.
    OutOfBudget(String),
    /// Input shape and data do not agree.
    BadInput(String),
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::Execution(m) => write!(f, "inference failed on the device: {m}"),
            EngineError::OutOfBudget(m) => write!(f, "not enough device memory: {m}"),
            EngineError::BadInput(m) => write!(f, "bad network input: {m}"),
        }
    }
}

impl std::error::Error for EngineError {}

/// A box of output voxels: `start..start + size` along (i, j, k).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutputBox {
    pub start: [usize; 3],
    pub size: [usize; 3],
}

impl OutputBox {
    pub fn whole(dims: [usize; 3]) -> OutputBox {
        OutputBox {
            start: [0; 3],
            size: dims,
        }
    }
}

/// Progress of a run, reported after each finished unit of work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerProgress {
    /// Layers finished so far, counted over all slabs.
    pub done: usize,
    pub total: usize,
}

/// What a run cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Floating-point operations of the convolutions, halos included.
    pub flops: u64,
    /// Bytes of the largest activation tensor held at once.
    pub peak_tensor_bytes: usize,
}

impl RunStats {
    fn add(&mut self, other: RunStats) {
        self.flops += other.flops;
        self.peak_tensor_bytes = self.peak_tensor_bytes.max(other.peak_tensor_bytes);
    }
}

/// A network whose weights live on a device, ready to run.
pub struct PreparedNetwork {
    device: Device,
    layers: Vec<PreparedLayer>,
    receptive_radius: usize,
    has_global_normalization: bool,
    widest_layer: usize,
}

struct PreparedLayer {
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

impl PreparedNetwork {
    /// Uploads the weights. Volumes are fed as `[1, 1, k, j, i]` tensors (the NIfTI memory
    /// order), so kernels of models trained on `(i, j, k)` axes are transposed here once.
    pub fn new(network: &Network, device: &Device) -> PreparedNetwork {
        let layers = network
            .layers
            .iter()
            .map(|layer| prepare_layer(layer, network.axis_order, device))
            .collect();
        PreparedNetwork {
            device: device.clone(),
            layers,
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

    pub fn layer_count(&self) -> usize {
        self.layers.len()
    }

    /// Bytes of the largest activation for a pass over `voxels` voxels (f32).
    pub fn peak_activation_bytes(&self, voxels: usize) -> usize {
        voxels.saturating_mul(self.widest_layer).saturating_mul(4)
    }

    /// Runs the network on a `dims = [ni, nj, nk]` volume (i fastest) and returns the argmax
    /// label of every voxel of `out` (the whole volume, or a part of it), i fastest.
    ///
    /// `max_tensor_bytes` bounds the largest single activation (None: no limit); the box is then
    /// split into slabs along k. Networks with whole-volume normalization cannot be split and
    /// fail with `OutOfBudget` instead.
    pub async fn segment(
        &self,
        input: &[f32],
        dims: [usize; 3],
        out: OutputBox,
        max_tensor_bytes: Option<usize>,
        progress: &mut dyn FnMut(LayerProgress),
    ) -> Result<(Vec<u16>, RunStats), EngineError> {
        let r = self.receptive_radius;
        // The input a pass over `out` reads: `out` grown by the halo, clipped to the volume.
        let [wi, wj, wk] = [0, 1, 2].map(|a| {
            let lo = out.start[a].saturating_sub(r);
            (out.start[a] + out.size[a] + r)
                .min(dims[a])
                .saturating_sub(lo)
        });
        let plane = wi * wj;
        let limit = max_tensor_bytes.map_or(usize::MAX, |b| b / (4 * self.widest_layer));
        if limit < plane * wk && self.has_global_normalization {
            return Err(EngineError::OutOfBudget(format!(
                "the model normalizes over the whole volume and needs {} MiB per activation; the device allows {} MiB",
                self.peak_activation_bytes(plane * wk) >> 20,
                max_tensor_bytes.unwrap_or(0) >> 20
            )));
        }
        let slices = out.start[2]..out.start[2] + out.size[2];
        let slabs = plan_slabs(slices, dims[2], plane, r, limit).ok_or_else(|| {
            EngineError::OutOfBudget(format!(
                "even a single slice with its {r}-voxel halo exceeds {} MiB",
                max_tensor_bytes.unwrap_or(0) >> 20
            ))
        })?;

        let total = slabs.len() * self.layers.len();
        let mut labels = Vec::with_capacity(out.size.iter().product());
        let mut stats = RunStats::default();
        for (n, slab) in slabs.iter().enumerate() {
            let offset = n * self.layers.len();
            let part = OutputBox {
                start: [out.start[0], out.start[1], slab.output_start],
                size: [
                    out.size[0],
                    out.size[1],
                    slab.output_end - slab.output_start,
                ],
            };
            let (slab_labels, slab_stats) = self
                .segment_box(input, dims, part, &mut |p| {
                    progress(LayerProgress {
                        done: offset + p.done,
                        total,
                    })
                })
                .await?;
            labels.extend(slab_labels);
            stats.add(slab_stats);
        }
        Ok((labels, stats))
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
        let [ni, nj, nk] = dims;
        if input.len() != ni * nj * nk
            || (0..3).any(|a| out.size[a] == 0 || out.start[a] + out.size[a] > dims[a])
        {
            return Err(EngineError::BadInput(format!(
                "box {out:?} outside a {ni}x{nj}x{nk} volume"
            )));
        }
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
            self.wait_for(&x).await?;
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

    /// Blocks (asynchronously) until `x` is computed, by reading back a single element.
    async fn wait_for(&self, x: &Tensor<5>) -> Result<(), EngineError> {
        let one = x.clone().slice([0..1, 0..1, 0..1, 0..1, 0..1]);
        one.into_data_async()
            .await
            .map(|_| ())
            .map_err(|e| EngineError::Execution(format!("{e:?}")))
    }
}

impl PreparedLayer {
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
        .map_err(|e| EngineError::Execution(format!("{e:?}")))?;
    let values = data
        .try_into_vec_as::<i64>()
        .map_err(|e| EngineError::Execution(format!("argmax readback: {e:?}")))?;
    Ok(values.into_iter().map(|v| v as u16).collect())
}

fn prepare_layer(layer: &ConvLayer, axis_order: AxisOrder, device: &Device) -> PreparedLayer {
    let k = layer.kernel_size;
    let weight = match axis_order {
        AxisOrder::Kji => layer.weight.clone(),
        AxisOrder::Ijk => {
            transpose_kernel(&layer.weight, layer.out_channels * layer.in_channels, k)
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
    PreparedLayer {
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

/// Swaps the first and last kernel axes of `[filters, k, k, k]` weights: a kernel trained
/// on (i, j, k) tensors applied to (k, j, i) tensors.
fn transpose_kernel(weight: &[f32], filters: usize, k: usize) -> Vec<f32> {
    let kk = k * k * k;
    let mut out = vec![0.0; weight.len()];
    for f in 0..filters {
        let src = &weight[f * kk..(f + 1) * kk];
        let dst = &mut out[f * kk..(f + 1) * kk];
        for a in 0..k {
            for b in 0..k {
                for c in 0..k {
                    dst[(c * k + b) * k + a] = src[(a * k + b) * k + c];
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposing_a_kernel_twice_is_the_identity() {
        let w: Vec<f32> = (0..2 * 27).map(|v| v as f32).collect();
        let t = transpose_kernel(&w, 2, 3);
        assert_ne!(t, w);
        assert_eq!(transpose_kernel(&t, 2, 3), w);
        // element (a=0, b=1, c=2) moves to (2, 1, 0)
        assert_eq!(t[2 * 9 + 3], w[5]);
    }
}
