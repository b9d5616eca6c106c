//! The inference engine: runs a [`Network`] on the CPU with our own kernels ([`cpu`]:
//! natively on every core, in the browser as wasm simd128) or on a GPU with burn's wgpu
//! runtime (see [`start_gpu`]: WebGPU in the browser, natively with the `gpu` feature).
//!
//! Memory is planned per run: when the largest activation of a pass would exceed the
//! budget (e.g. a GPU's maximum buffer size), the volume is processed in slabs along its
//! slowest axis, each slab with a halo as wide as the network's receptive radius, so the
//! interior of every slab is exactly what a whole-volume pass computes.

mod cpu;
#[cfg(any(feature = "gpu", target_arch = "wasm32"))]
mod gpu;
#[cfg(any(feature = "gpu", target_arch = "wasm32"))]
mod gpu_network;
mod plan;

#[cfg(any(feature = "gpu", target_arch = "wasm32"))]
pub use gpu::{start_gpu, Gpu};
pub use plan::{plan_slabs, Slab};

use crate::models::{Network, Normalization};
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
    /// Activation memory held at once, as [`PreparedNetwork::pass_bytes`] counts it.
    pub peak_tensor_bytes: usize,
}

impl RunStats {
    fn add(&mut self, other: RunStats) {
        self.flops += other.flops;
        self.peak_tensor_bytes = self.peak_tensor_bytes.max(other.peak_tensor_bytes);
    }
}

/// A network prepared for one device, ready to run.
pub struct PreparedNetwork {
    executor: Executor,
    layer_count: usize,
    receptive_radius: usize,
    has_global_normalization: bool,
}

enum Executor {
    Cpu(cpu::CpuNetwork),
    #[cfg(any(feature = "gpu", target_arch = "wasm32"))]
    Gpu(gpu_network::GpuNetwork),
}

impl PreparedNetwork {
    /// On the CPU: our own kernels ([`cpu`]), natively and in wasm.
    pub fn cpu(network: &Network) -> PreparedNetwork {
        PreparedNetwork::with(network, Executor::Cpu(cpu::CpuNetwork::new(network)))
    }

    /// On a GPU started by [`start_gpu`]; the weights are uploaded now.
    #[cfg(any(feature = "gpu", target_arch = "wasm32"))]
    pub fn gpu(network: &Network, device: &burn::tensor::Device) -> PreparedNetwork {
        let executor = Executor::Gpu(gpu_network::GpuNetwork::new(network, device));
        PreparedNetwork::with(network, executor)
    }

    fn with(network: &Network, executor: Executor) -> PreparedNetwork {
        PreparedNetwork {
            executor,
            layer_count: network.layers.len(),
            receptive_radius: network.receptive_radius(),
            has_global_normalization: network
                .layers
                .iter()
                .any(|l| !matches!(l.normalization, Normalization::None)),
        }
    }

    pub fn layer_count(&self) -> usize {
        self.layer_count
    }

    /// The memory a pass over an input box of `box_dims` voxels holds at once, as the
    /// budget `max_tensor_bytes` counts it: on the CPU both activations it holds, on a GPU
    /// its largest single tensor (what the device's buffer limit bounds).
    pub fn pass_bytes(&self, box_dims: [usize; 3]) -> usize {
        match &self.executor {
            Executor::Cpu(network) => network.pass_bytes(box_dims),
            #[cfg(any(feature = "gpu", target_arch = "wasm32"))]
            Executor::Gpu(network) => network.pass_bytes(box_dims),
        }
    }

    /// The input a pass over `out` reads: `out` grown by the receptive radius, clipped to the
    /// volume.
    fn input_box(&self, out: OutputBox, dims: [usize; 3]) -> [usize; 3] {
        let r = self.receptive_radius;
        [0, 1, 2].map(|a| {
            let lo = out.start[a].saturating_sub(r);
            (out.start[a] + out.size[a] + r).min(dims[a]) - lo
        })
    }

    /// [`pass_bytes`](Self::pass_bytes) of labelling `out` of a `dims` volume in one pass.
    pub fn unsplit_bytes(&self, out: OutputBox, dims: [usize; 3]) -> usize {
        self.pass_bytes(self.input_box(out, dims))
    }

    /// Runs the network on a `dims = [ni, nj, nk]` volume (i fastest) and returns the argmax
    /// label of every voxel of `out` (the whole volume, or a part of it), i fastest.
    ///
    /// `max_tensor_bytes` bounds [`pass_bytes`](Self::pass_bytes) (None: no limit); the box is
    /// then split into slabs along k. Networks with whole-volume normalization cannot be split
    /// and fail with `OutOfBudget` instead.
    pub async fn segment(
        &self,
        input: &[f32],
        dims: [usize; 3],
        out: OutputBox,
        max_tensor_bytes: Option<usize>,
        progress: &mut dyn FnMut(LayerProgress),
    ) -> Result<(Vec<u16>, RunStats), EngineError> {
        let r = self.receptive_radius;
        let [wi, wj, _] = self.input_box(out, dims);
        let budget = max_tensor_bytes.unwrap_or(usize::MAX);
        let needed = self.unsplit_bytes(out, dims);
        if needed > budget && self.has_global_normalization {
            return Err(EngineError::OutOfBudget(format!(
                "the model normalizes over the whole volume and needs {} MiB at once; the budget is {} MiB",
                needed >> 20,
                budget >> 20
            )));
        }
        let slice_bytes = self.pass_bytes([wi, wj, 1]).max(1);
        let slices = out.start[2]..out.start[2] + out.size[2];
        let slabs = plan_slabs(slices, dims[2], 1, r, budget / slice_bytes).ok_or_else(|| {
            EngineError::OutOfBudget(format!(
                "even a single slice with its {r}-voxel halo needs more than {} MiB",
                budget >> 20
            ))
        })?;

        let total = slabs.len() * self.layer_count;
        let mut labels = Vec::with_capacity(out.size.iter().product());
        let mut stats = RunStats::default();
        for (n, slab) in slabs.iter().enumerate() {
            let offset = n * self.layer_count;
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
        match &self.executor {
            Executor::Cpu(network) => network.segment_box(input, dims, out, progress),
            #[cfg(any(feature = "gpu", target_arch = "wasm32"))]
            Executor::Gpu(network) => network.segment_box(input, dims, out, progress).await,
        }
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
