//! The CPU engine: MeshNet's layers as direct convolutions written for their shapes (1 to 30
//! channels, 3x3x3 kernels with dilations up to 16, then a 1x1x1 classifier), in SIMD
//! registers (AVX2 natively when the CPU has it, simd128 in the browser), on every core.
//!
//! Activations are stored `[k][channel][j][i]` with zero columns on both sides of every row,
//! so a tap's shift along i never needs a bounds check; taps outside the volume along j or k
//! are skipped (zero padding). Each output row is a tile of up to six channels by 16 or 32
//! voxels held in registers while all input channels and taps stream past; bias and
//! activation follow in the same pass over the row. The last layer never materializes its
//! logits: each row's are reduced to labels at once.
//!
//! Every voxel's sum is taken in one fixed order (channel, then kz, ky, kx) with a separate
//! multiply and add (no FMA), and the activations use our own exp: the same input gives
//! bit-identical results natively and in wasm, with any number of threads.

use super::{EngineError, LayerProgress, OutputBox, RunStats};
use crate::models::{Activation, AxisOrder, ConvLayer, Network, Normalization};

/// Output channels computed together: with two or four vectors per channel the tile fits
/// the 16 vector registers of AVX2 (and of the x86 JITs that run wasm).
const MAX_TILE_CHANNELS: usize = 6;
/// Rows are computed in whole 32-voxel steps (the widest tile), up to this rounding.
const ROW_STEP: usize = 32;

/// A network prepared for [`segment_box`](CpuNetwork::segment_box) on the CPU.
pub struct CpuNetwork {
    layers: Vec<CpuLayer>,
    /// Zero columns on each side of a row: the widest reach of any layer along i.
    row_pad: usize,
    /// Channels of the widest hidden activation (the stored ones; the logits are not).
    widest_stored: usize,
    receptive_radius: usize,
    has_global_normalization: bool,
}

struct CpuLayer {
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    dilation: usize,
    halo: usize,
    /// Output channels per tile (the last tile may hold fewer real ones).
    tile: usize,
    /// Per tile: weights as `[in_channel][kz][ky][kx][tile channel]`, zero for missing channels.
    tiles: Vec<Vec<f32>>,
    bias: Vec<f32>,
    normalization: Option<InstanceNorm>,
    activation: Activation,
}

struct InstanceNorm {
    eps: f32,
    weight: Option<Vec<f32>>,
    bias: Option<Vec<f32>>,
}

/// Voxels of a frame: ranges along i, j, k.
type Region = [std::ops::Range<usize>; 3];

/// Where the rows of one stored activation live: `[k][channel][j][row_pad + i + ...]`.
#[derive(Clone, Copy)]
struct Frame {
    /// Voxels along i, j, k.
    dims: [usize; 3],
    channels: usize,
    row_pad: usize,
    /// The computed length of a row: `dims[0]` rounded up to [`ROW_STEP`].
    row_len: usize,
    stride: usize,
}

impl Frame {
    fn new(dims: [usize; 3], channels: usize, row_pad: usize) -> Frame {
        let row_len = dims[0].div_ceil(ROW_STEP) * ROW_STEP;
        Frame {
            dims,
            channels,
            row_pad,
            row_len,
            stride: row_pad + row_len + row_pad,
        }
    }

    fn slice_len(&self) -> usize {
        self.channels * self.dims[1] * self.stride
    }

    fn len(&self) -> usize {
        self.dims[2] * self.slice_len()
    }

    /// Offset of voxel i = 0 of row (channel, j) within a slice.
    fn row_in_slice(&self, channel: usize, j: usize) -> usize {
        (channel * self.dims[1] + j) * self.stride + self.row_pad
    }
}

impl CpuNetwork {
    pub fn new(network: &Network) -> CpuNetwork {
        let layers: Vec<CpuLayer> = network
            .layers
            .iter()
            .map(|l| CpuLayer::new(l, network.axis_order))
            .collect();
        let hidden = &layers[..layers.len().saturating_sub(1)];
        CpuNetwork {
            row_pad: layers
                .iter()
                .map(|l| l.halo)
                .max()
                .unwrap_or(0)
                .next_multiple_of(8),
            widest_stored: hidden
                .iter()
                .map(|l| l.out_channels)
                .chain([1])
                .max()
                .unwrap_or(1),
            receptive_radius: network.receptive_radius(),
            has_global_normalization: layers.iter().any(|l| l.normalization.is_some()),
            layers,
        }
    }

    /// Bytes a pass holds for a `[ni, nj, nk]` input box: two activations (the one read and
    /// the one written), rows padded.
    pub fn pass_bytes(&self, box_dims: [usize; 3]) -> usize {
        2 * 4 * Frame::new(box_dims, self.widest_stored, self.row_pad).len()
    }

    /// Labels for the voxels of `out` only, computed from `out` grown by the receptive radius
    /// (clipped to the volume): exactly what a whole-volume pass gives there, for networks
    /// without whole-volume normalization (for those, pass the whole volume).
    pub fn segment_box(
        &self,
        input: &[f32],
        dims: [usize; 3],
        out: OutputBox,
        progress: &mut dyn FnMut(LayerProgress),
    ) -> Result<(Vec<u16>, RunStats), EngineError> {
        let Some(last) = self.layers.last() else {
            return Err(EngineError::BadInput("the network has no layers".into()));
        };
        if last.normalization.is_some() {
            return Err(EngineError::BadInput(
                "the last layer normalizes over the volume, which the CPU engine does not support"
                    .into(),
            ));
        }
        let r = self.receptive_radius;
        let lo = [0, 1, 2].map(|a| out.start[a].saturating_sub(r));
        let hi = [0, 1, 2].map(|a| (out.start[a] + out.size[a] + r).min(dims[a]));
        let frame = Frame::new(
            [0, 1, 2].map(|a| hi[a] - lo[a]),
            self.widest_stored,
            self.row_pad,
        );
        let mut current = vec![0.0f32; frame.len()];
        let mut next = vec![0.0f32; frame.len()];
        for (z, slice) in current.chunks_exact_mut(frame.slice_len()).enumerate() {
            for j in 0..frame.dims[1] {
                let src = ((lo[2] + z) * dims[1] + lo[1] + j) * dims[0] + lo[0];
                let dst = frame.row_in_slice(0, j);
                slice[dst..dst + frame.dims[0]].copy_from_slice(&input[src..src + frame.dims[0]]);
            }
        }
        let mut stats = RunStats {
            flops: 0,
            peak_tensor_bytes: 2 * 4 * frame.len(),
        };
        // The part of the frame a layer must compute so that the remaining layers can still
        // compute `out` exactly (all of it with whole-volume normalization, whose statistics
        // would change with the part).
        let needed = |remaining: usize| -> Region {
            if self.has_global_normalization {
                return frame.dims.map(|n| 0..n);
            }
            [0, 1, 2].map(|a| {
                let start = out.start[a].saturating_sub(remaining) - lo[a];
                let end = (out.start[a] + out.size[a] + remaining).min(dims[a]) - lo[a];
                start..end
            })
        };
        let total = self.layers.len();
        let mut remaining = r;
        for (done, layer) in self.layers[..total - 1].iter().enumerate() {
            remaining -= layer.halo;
            let region = needed(remaining);
            stats.flops += layer.flops(region.iter().map(|r| r.len()).product());
            layer.forward(&frame, &current, &mut next, region);
            std::mem::swap(&mut current, &mut next);
            progress(LayerProgress {
                done: done + 1,
                total,
            });
        }
        stats.flops += last.flops(out.size.iter().product());
        let labels = last.classify(&frame, &current, needed(0));
        progress(LayerProgress { done: total, total });
        Ok((labels, stats))
    }
}

impl CpuLayer {
    fn new(layer: &ConvLayer, axis_order: AxisOrder) -> CpuLayer {
        let k = layer.kernel_size;
        let taps = k * k * k;
        let weight = match axis_order {
            AxisOrder::Kji => layer.weight.clone(),
            AxisOrder::Ijk => {
                super::transpose_kernel(&layer.weight, layer.out_channels * layer.in_channels, k)
            }
        };
        let n_tiles = layer.out_channels.div_ceil(MAX_TILE_CHANNELS);
        let tile = layer.out_channels.div_ceil(n_tiles);
        let tiles = (0..n_tiles)
            .map(|t| {
                let mut w = vec![0.0f32; layer.in_channels * taps * tile];
                for o in t * tile..((t + 1) * tile).min(layer.out_channels) {
                    for c in 0..layer.in_channels {
                        for tap in 0..taps {
                            w[(c * taps + tap) * tile + o - t * tile] =
                                weight[(o * layer.in_channels + c) * taps + tap];
                        }
                    }
                }
                w
            })
            .collect();
        CpuLayer {
            in_channels: layer.in_channels,
            out_channels: layer.out_channels,
            kernel: k,
            dilation: layer.dilation,
            halo: layer.dilation * (k - 1) / 2,
            tile,
            tiles,
            bias: layer
                .bias
                .clone()
                .unwrap_or_else(|| vec![0.0; layer.out_channels]),
            normalization: match &layer.normalization {
                Normalization::None => None,
                Normalization::Instance { eps, weight, bias } => Some(InstanceNorm {
                    eps: *eps,
                    weight: weight.clone(),
                    bias: bias.clone(),
                }),
            },
            activation: layer.activation,
        }
    }

    /// Each tile's first output channel, its number of real channels, and its weights.
    fn tile_channels(&self) -> impl Iterator<Item = (usize, usize, &[f32])> {
        self.tiles.iter().enumerate().map(|(t, weights)| {
            let first = t * self.tile;
            (
                first,
                self.tile.min(self.out_channels - first),
                &weights[..],
            )
        })
    }

    fn flops(&self, voxels: usize) -> u64 {
        2 * (voxels * self.in_channels * self.out_channels * self.kernel.pow(3)) as u64
    }

    /// Computes `region` of this layer's output into `dst` (same frame). Columns beside the
    /// region in the same vector steps get values that no later exact voxel reads.
    fn forward(&self, frame: &Frame, src: &[f32], dst: &mut [f32], region: Region) {
        let [columns, rows_j, rows_k] = region;
        let defer_activation = self.normalization.is_some();
        let slices = dst
            .chunks_exact_mut(frame.slice_len())
            .enumerate()
            .skip(rows_k.start)
            .take(rows_k.len());
        parallel::for_each(slices, |(z, slice)| {
            for j in rows_j.clone() {
                for (first, count, weights) in self.tile_channels() {
                    let row = frame.row_in_slice(first, j);
                    let channel_stride = frame.dims[1] * frame.stride;
                    kernel::conv_row(
                        self,
                        weights,
                        frame,
                        src,
                        [j, z],
                        columns.clone(),
                        &mut slice[row..],
                        channel_stride,
                        count,
                    );
                    for o in first..first + count {
                        let at = frame.row_in_slice(o, j);
                        let row = &mut slice[at..at + frame.row_len];
                        add_bias(&mut row[columns.clone()], self.bias[o]);
                        if !defer_activation {
                            activate(self.activation, &mut row[columns.clone()]);
                        }
                        // Beyond the row's end: zero again, the next layer reads it as padding.
                        row[frame.dims[0]..].fill(0.0);
                    }
                }
            }
        });
        if let Some(norm) = &self.normalization {
            self.normalize(norm, frame, dst, [columns, rows_j, rows_k]);
        }
    }

    /// Per-channel normalization over `region`, then the activation.
    fn normalize(&self, norm: &InstanceNorm, frame: &Frame, data: &mut [f32], region: Region) {
        let [columns, rows_j, rows_k] = region;
        let ni = columns.len();
        let rows = || {
            rows_k.clone().flat_map({
                let rows_j = rows_j.clone();
                move |z| rows_j.clone().map(move |j| (z, j))
            })
        };
        for o in 0..self.out_channels {
            let row_at = |(z, j): (usize, usize)| {
                z * frame.slice_len() + frame.row_in_slice(o, j) + columns.start
            };
            // In f64 and in row order: the same statistics on every target.
            let n = (ni * rows_j.len() * rows_k.len()) as f64;
            let mean = rows()
                .map(|r| {
                    data[row_at(r)..row_at(r) + ni]
                        .iter()
                        .map(|&v| v as f64)
                        .sum::<f64>()
                })
                .sum::<f64>()
                / n;
            let var = rows()
                .map(|r| {
                    data[row_at(r)..row_at(r) + ni]
                        .iter()
                        .map(|&v| (v as f64 - mean).powi(2))
                        .sum::<f64>()
                })
                .sum::<f64>()
                / n;
            let scale = (1.0 / (var + norm.eps as f64).sqrt()) as f32;
            let gain = norm.weight.as_ref().map_or(1.0, |w| w[o]);
            let shift = norm.bias.as_ref().map_or(0.0, |b| b[o]);
            let mean = mean as f32;
            for r in rows() {
                let row = &mut data[row_at(r)..row_at(r) + ni];
                for v in row.iter_mut() {
                    *v = (*v - mean) * scale * gain + shift;
                }
                activate(self.activation, row);
            }
        }
    }

    /// The last layer: labels (argmax over channels, first maximum wins) of the voxels of
    /// `region`, i fastest.
    fn classify(&self, frame: &Frame, src: &[f32], region: Region) -> Vec<u16> {
        let [columns, rows_j, rows_k] = region;
        let ni = columns.len();
        let plane = ni * rows_j.len();
        let mut labels = vec![0u16; plane * rows_k.len()];
        // Scratch logits of one row: `[tile channels][row]`, the same row layout as a frame.
        let scratch_frame = Frame::new([frame.dims[0], 1, 1], self.tile, frame.row_pad);
        let slices = labels
            .chunks_exact_mut(plane)
            .zip(rows_k.clone())
            .collect::<Vec<_>>();
        parallel::for_each(slices.into_iter(), |(slice_labels, z)| {
            let mut logits = vec![0.0f32; scratch_frame.len()];
            let mut best = vec![f32::NEG_INFINITY; ni];
            for (row_labels, j) in slice_labels.chunks_exact_mut(ni).zip(rows_j.clone()) {
                best.fill(f32::NEG_INFINITY);
                row_labels.fill(0);
                for (first, count, weights) in self.tile_channels() {
                    kernel::conv_row(
                        self,
                        weights,
                        frame,
                        src,
                        [j, z],
                        columns.clone(),
                        &mut logits[scratch_frame.row_pad..],
                        scratch_frame.stride,
                        count,
                    );
                    for c in 0..count {
                        let at = scratch_frame.row_in_slice(c, 0);
                        let row = &mut logits[at + columns.start..at + columns.end];
                        add_bias(row, self.bias[first + c]);
                        activate(self.activation, row);
                        for ((label, best), &v) in row_labels.iter_mut().zip(&mut best).zip(&*row) {
                            if v > *best {
                                *best = v;
                                *label = (first + c) as u16;
                            }
                        }
                    }
                }
            }
        });
        labels
    }
}

fn add_bias(row: &mut [f32], bias: f32) {
    for v in row {
        *v += bias;
    }
}

fn activate(activation: Activation, row: &mut [f32]) {
    match activation {
        Activation::None => {}
        Activation::Relu => row.iter_mut().for_each(|v| *v = v.max(0.0)),
        // ELU with alpha 1, as tinygrad and Keras define it.
        Activation::Elu => row
            .iter_mut()
            .for_each(|v| *v = if *v > 0.0 { *v } else { exp(*v) - 1.0 }),
        // The tanh approximation, as tinygrad's gelu (brainchop's models were run with it):
        // 0.5 x (1 + tanh(u)) = x (1 - 1 / (exp(2u) + 1)).
        Activation::Gelu => row.iter_mut().for_each(|v| {
            let x = *v;
            let u = 0.797_884_6 * (x + 0.044_715 * x * x * x);
            *v = x * (1.0 - 1.0 / (exp(2.0 * u) + 1.0));
        }),
    }
}

/// e^x within 2 ulp, from adds, multiplies and bit operations only: vectorizes, and gives
/// the same bits on every target (a libm's exp differs between them).
fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // x = n ln2 + r, |r| <= ln2 / 2; n rounded to nearest by the 1.5 * 2^23 trick.
    const ROUND: f32 = 12_582_912.0;
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    // ln 2 in two parts (Cody-Waite): n times the first is exact.
    let r = (x - n * 0.693_359_4) + n * 2.121_944_4e-4;
    // Cephes' expf polynomial.
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5.000_000_1e-1;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// The inner loop: one row of a convolution for a tile of output channels.
mod kernel {
    use super::{CpuLayer, Frame};

    /// Vector operations the kernel needs; `mul_add` multiplies and adds with two roundings,
    /// so every implementation gives the same bits.
    pub(super) trait Lanes: Copy {
        const N: usize;
        unsafe fn zero() -> Self;
        unsafe fn splat(v: f32) -> Self;
        unsafe fn load(p: *const f32) -> Self;
        unsafe fn store(self, p: *mut f32);
        unsafe fn mul_add(self, a: Self, b: Self) -> Self;
    }

    /// Computes `count` channels (of the layer's tile `weights`) of output row (j, k) for
    /// i in `columns`, widened to whole vector steps, before bias and activation. `dst`
    /// starts at i = 0 of the first channel; channels are `channel_stride` apart.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn conv_row(
        layer: &CpuLayer,
        weights: &[f32],
        frame: &Frame,
        src: &[f32],
        [j, k]: [usize; 2],
        columns: std::ops::Range<usize>,
        dst: &mut [f32],
        channel_stride: usize,
        count: usize,
    ) {
        assert!(
            columns.end <= frame.dims[0]
                && count >= 1
                && count <= layer.tile
                && dst.len() >= (count - 1) * channel_stride + frame.row_len
                && weights.len() == layer.in_channels * layer.kernel.pow(3) * layer.tile
                && src.len() >= frame.len()
                && layer.halo <= frame.row_pad
                && frame.channels >= layer.in_channels
        );
        let row = Row {
            layer,
            weights,
            frame,
            src,
            j,
            k,
            columns,
            dst: dst.as_mut_ptr(),
            channel_stride,
            count,
        };
        // SAFETY: the assertion above bounds every access (see `Row::run`).
        unsafe { dispatch(&row) }
    }

    pub(super) struct Row<'a> {
        layer: &'a CpuLayer,
        weights: &'a [f32],
        frame: &'a Frame,
        src: &'a [f32],
        j: usize,
        k: usize,
        columns: std::ops::Range<usize>,
        dst: *mut f32,
        channel_stride: usize,
        count: usize,
    }

    macro_rules! for_tile {
        ($lanes:ty, $row:expr) => {
            match $row.layer.tile {
                1 => $row.run::<$lanes, 1, 4>(),
                2 => $row.run::<$lanes, 2, 4>(),
                3 => $row.run::<$lanes, 3, 4>(),
                4 => $row.run::<$lanes, 4, 2>(),
                5 => $row.run::<$lanes, 5, 2>(),
                6 => $row.run::<$lanes, 6, 2>(),
                n => unreachable!("tile of {n} channels"),
            }
        };
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn dispatch(row: &Row) {
        if std::arch::is_x86_feature_detected!("avx2") {
            avx2::run(row)
        } else {
            for_tile!(portable::F32x4, row)
        }
    }

    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    unsafe fn dispatch(row: &Row) {
        for_tile!(simd128::F32x4, row)
    }

    #[cfg(not(any(
        target_arch = "x86_64",
        all(target_arch = "wasm32", target_feature = "simd128")
    )))]
    unsafe fn dispatch(row: &Row) {
        for_tile!(portable::F32x4, row)
    }

    impl Row<'_> {
        /// `C` output channels by `V` vectors of voxels per step along the row.
        ///
        /// Reads stay inside `src`: rows outside the frame along j and k are skipped, and
        /// along i a tap reaches at most `halo <= row_pad` voxels beyond `0..row_len`, into
        /// the zero columns. Writes stay inside `dst`: `count` channels of `row_len` voxels.
        #[inline(always)]
        unsafe fn run<L: Lanes, const C: usize, const V: usize>(&self) {
            let layer = self.layer;
            let frame = self.frame;
            let taps = layer.kernel;
            let d = layer.dilation;
            let reach = (taps / 2) * d;
            // Input rows of each (channel, kz, ky) tap row, None outside the frame; pointer
            // arithmetic below is wrapping so that no per-tap check remains in the loop.
            let rows: Vec<Option<*const f32>> = (0..layer.in_channels)
                .flat_map(|c| (0..taps).flat_map(move |tz| (0..taps).map(move |ty| (c, tz, ty))))
                .map(|(c, tz, ty)| {
                    let z = (self.k + tz * d)
                        .checked_sub(reach)
                        .filter(|&z| z < frame.dims[2])?;
                    let y = (self.j + ty * d)
                        .checked_sub(reach)
                        .filter(|&y| y < frame.dims[1])?;
                    let at = z * frame.slice_len() + frame.row_in_slice(c, y) - reach;
                    Some(self.src.as_ptr().wrapping_add(at))
                })
                .collect();
            let step = V * L::N;
            // Steps divide ROW_STEP, so whole steps end within `row_len`.
            let mut i0 = self.columns.start / step * step;
            while i0 < self.columns.end {
                let mut acc = [[L::zero(); V]; C];
                let mut w = self.weights.as_ptr();
                for row in &rows {
                    let Some(row) = row else {
                        w = w.wrapping_add(taps * C);
                        continue;
                    };
                    let mut p = row.wrapping_add(i0);
                    for _ in 0..taps {
                        let mut x = [L::zero(); V];
                        for (v, x) in x.iter_mut().enumerate() {
                            *x = L::load(p.wrapping_add(v * L::N));
                        }
                        for (o, acc) in acc.iter_mut().enumerate() {
                            let weight = L::splat(*w.wrapping_add(o));
                            for v in 0..V {
                                acc[v] = acc[v].mul_add(weight, x[v]);
                            }
                        }
                        w = w.wrapping_add(C);
                        p = p.wrapping_add(d);
                    }
                }
                for (o, acc) in acc.iter().enumerate().take(self.count) {
                    for (v, value) in acc.iter().enumerate() {
                        let at = o * self.channel_stride + i0 + v * L::N;
                        value.store(self.dst.wrapping_add(at));
                    }
                }
                i0 += step;
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    mod avx2 {
        use super::{Lanes, Row};
        use std::arch::x86_64::*;

        #[derive(Clone, Copy)]
        pub struct F32x8(__m256);

        impl Lanes for F32x8 {
            const N: usize = 8;
            #[inline(always)]
            unsafe fn zero() -> Self {
                F32x8(_mm256_setzero_ps())
            }
            #[inline(always)]
            unsafe fn splat(v: f32) -> Self {
                F32x8(_mm256_set1_ps(v))
            }
            #[inline(always)]
            unsafe fn load(p: *const f32) -> Self {
                F32x8(_mm256_loadu_ps(p))
            }
            #[inline(always)]
            unsafe fn store(self, p: *mut f32) {
                _mm256_storeu_ps(p, self.0)
            }
            #[inline(always)]
            unsafe fn mul_add(self, a: Self, b: Self) -> Self {
                F32x8(_mm256_add_ps(self.0, _mm256_mul_ps(a.0, b.0)))
            }
        }

        #[target_feature(enable = "avx2")]
        pub unsafe fn run(row: &Row) {
            for_tile!(F32x8, row)
        }
    }

    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    mod simd128 {
        use super::Lanes;
        use std::arch::wasm32::*;

        #[derive(Clone, Copy)]
        pub struct F32x4(v128);

        impl Lanes for F32x4 {
            const N: usize = 4;
            #[inline(always)]
            unsafe fn zero() -> Self {
                F32x4(f32x4_splat(0.0))
            }
            #[inline(always)]
            unsafe fn splat(v: f32) -> Self {
                F32x4(f32x4_splat(v))
            }
            #[inline(always)]
            unsafe fn load(p: *const f32) -> Self {
                F32x4(v128_load(p as *const v128))
            }
            #[inline(always)]
            unsafe fn store(self, p: *mut f32) {
                v128_store(p as *mut v128, self.0)
            }
            #[inline(always)]
            unsafe fn mul_add(self, a: Self, b: Self) -> Self {
                F32x4(f32x4_add(self.0, f32x4_mul(a.0, b.0)))
            }
        }
    }

    #[allow(dead_code)] // unused where a SIMD implementation always applies
    mod portable {
        use super::Lanes;

        #[derive(Clone, Copy)]
        pub struct F32x4([f32; 4]);

        impl Lanes for F32x4 {
            const N: usize = 4;
            #[inline(always)]
            unsafe fn zero() -> Self {
                F32x4([0.0; 4])
            }
            #[inline(always)]
            unsafe fn splat(v: f32) -> Self {
                F32x4([v; 4])
            }
            #[inline(always)]
            unsafe fn load(p: *const f32) -> Self {
                F32x4(std::ptr::read_unaligned(p as *const [f32; 4]))
            }
            #[inline(always)]
            unsafe fn store(self, p: *mut f32) {
                std::ptr::write_unaligned(p as *mut [f32; 4], self.0)
            }
            #[inline(always)]
            unsafe fn mul_add(self, a: Self, b: Self) -> Self {
                F32x4(std::array::from_fn(|n| self.0[n] + a.0[n] * b.0[n]))
            }
        }
    }
}

/// Work over output slices, on every core natively; in wasm on the calling thread.
mod parallel {
    #[cfg(not(target_arch = "wasm32"))]
    pub fn for_each<T: Send>(items: impl Iterator<Item = T>, work: impl Fn(T) + Sync) {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut queues: Vec<Vec<T>> = (0..threads).map(|_| Vec::new()).collect();
        // Round robin: neighbouring slices cost about the same.
        for (n, item) in items.enumerate() {
            queues[n % threads].push(item);
        }
        std::thread::scope(|scope| {
            for queue in queues {
                let work = &work;
                scope.spawn(move || queue.into_iter().for_each(work));
            }
        });
    }

    #[cfg(target_arch = "wasm32")]
    pub fn for_each<T>(items: impl Iterator<Item = T>, work: impl Fn(T)) {
        items.for_each(work)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_std() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let ours = exp(x) as f64;
            let exact = (x as f64).exp();
            worst = worst.max(((ours - exact) / exact).abs());
            x += 0.0137;
        }
        assert!(worst < 2.5e-7, "relative error {worst:e}");
        assert_eq!(exp(-200.0), exp(-87.0));
        assert!(exp(0.0) == 1.0);
    }

    fn noise(n: usize, seed: u32) -> Vec<f32> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 8) as f32 / (1u32 << 23) as f32 - 1.0
            })
            .collect()
    }

    fn layer(
        cin: usize,
        cout: usize,
        k: usize,
        dilation: usize,
        normalization: Normalization,
        activation: Activation,
    ) -> ConvLayer {
        ConvLayer {
            in_channels: cin,
            out_channels: cout,
            kernel_size: k,
            dilation,
            padding: dilation * (k - 1) / 2,
            weight: noise(cout * cin * k * k * k, 7 + cin as u32),
            bias: Some(noise(cout, 3)),
            normalization,
            activation,
        }
    }

    /// A plain convolution in f64 with zero padding, `[c][k][j][i]` in and out.
    fn reference_conv(l: &ConvLayer, input: &[Vec<f64>], dims: [usize; 3]) -> Vec<Vec<f64>> {
        let [ni, nj, nk] = dims;
        let k = l.kernel_size;
        let h = (l.dilation * (k - 1) / 2) as isize;
        (0..l.out_channels)
            .map(|o| {
                let mut out = vec![0.0; ni * nj * nk];
                for z in 0..nk {
                    for y in 0..nj {
                        for x in 0..ni {
                            let mut sum = l.bias.as_ref().unwrap()[o] as f64;
                            for c in 0..l.in_channels {
                                for (tz, ty, tx) in (0..k).flat_map(|a| {
                                    (0..k).flat_map(move |b| (0..k).map(move |t| (a, b, t)))
                                }) {
                                    let d = l.dilation as isize;
                                    let [zz, yy, xx] = [(z, tz), (y, ty), (x, tx)]
                                        .map(|(p, t)| p as isize + t as isize * d - h);
                                    if zz < 0
                                        || yy < 0
                                        || xx < 0
                                        || zz >= nk as isize
                                        || yy >= nj as isize
                                        || xx >= ni as isize
                                    {
                                        continue;
                                    }
                                    let w = l.weight
                                        [(((o * l.in_channels + c) * k + tz) * k + ty) * k + tx];
                                    sum += w as f64
                                        * input[c]
                                            [(zz as usize * nj + yy as usize) * ni + xx as usize];
                                }
                            }
                            out[(z * nj + y) * ni + x] = sum;
                        }
                    }
                }
                out
            })
            .collect()
    }

    fn reference_activation(activation: Activation, x: f64) -> f64 {
        match activation {
            Activation::None => x,
            Activation::Relu => x.max(0.0),
            Activation::Elu => {
                if x > 0.0 {
                    x
                } else {
                    x.exp() - 1.0
                }
            }
            Activation::Gelu => {
                0.5 * x * (1.0 + (0.797_884_560_8 * (x + 0.044_715 * x.powi(3))).tanh())
            }
        }
    }

    /// Runs `layers` (all but the last through `forward`) and compares every stored channel
    /// with the f64 reference, then the labels where the reference's winner is clear.
    fn check_network(layers: Vec<ConvLayer>, dims: [usize; 3]) {
        let network = Network {
            layers,
            axis_order: AxisOrder::Kji,
        };
        let cpu = CpuNetwork::new(&network);
        let [ni, nj, nk] = dims;
        let n = ni * nj * nk;
        let input = noise(n, 11);
        let mut reference = vec![input.iter().map(|&v| v as f64).collect::<Vec<_>>()];
        let frame = Frame::new(dims, cpu.widest_stored, cpu.row_pad);
        let mut current = vec![0.0f32; frame.len()];
        let mut next = vec![0.0f32; frame.len()];
        for z in 0..nk {
            for y in 0..nj {
                let at = z * frame.slice_len() + frame.row_in_slice(0, y);
                current[at..at + ni].copy_from_slice(&input[(z * nj + y) * ni..][..ni]);
            }
        }
        let (hidden, last) = network.layers.split_at(network.layers.len() - 1);
        for (l, prepared) in hidden.iter().zip(&cpu.layers) {
            let mut out = reference_conv(l, &reference, dims);
            if let Normalization::Instance { eps, .. } = l.normalization {
                for channel in &mut out {
                    let mean = channel.iter().sum::<f64>() / n as f64;
                    let var = channel.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
                    channel
                        .iter_mut()
                        .for_each(|v| *v = (*v - mean) / (var + eps as f64).sqrt());
                }
            }
            out.iter_mut()
                .flatten()
                .for_each(|v| *v = reference_activation(l.activation, *v));
            prepared.forward(&frame, &current, &mut next, [0..ni, 0..nj, 0..nk]);
            std::mem::swap(&mut current, &mut next);
            let mut worst = 0.0f64;
            for (o, channel) in out.iter().enumerate() {
                for z in 0..nk {
                    for y in 0..nj {
                        let at = z * frame.slice_len() + frame.row_in_slice(o, y);
                        for x in 0..frame.row_len {
                            let ours = current[at + x] as f64;
                            if x >= ni {
                                assert_eq!(ours, 0.0, "the row's tail must stay zero");
                                continue;
                            }
                            worst = worst.max((ours - channel[(z * nj + y) * ni + x]).abs());
                        }
                    }
                }
            }
            assert!(worst < 1e-4, "layer {l:?}: max abs difference {worst:e}");
            reference = out;
        }
        let labels = cpu
            .segment_box(&input, dims, OutputBox::whole(dims), &mut |_| {})
            .unwrap()
            .0;
        let logits = reference_conv(&last[0], &reference, dims);
        let mut clear = 0;
        for (v, &label) in labels.iter().enumerate() {
            let mut order: Vec<(f64, usize)> =
                logits.iter().enumerate().map(|(c, l)| (l[v], c)).collect();
            order.sort_by(|a, b| b.0.total_cmp(&a.0));
            // Only where the winner is clear of rounding.
            if order[0].0 - order[1].0 > 1e-3 {
                assert_eq!(label as usize, order[0].1, "voxel {v}");
                clear += 1;
            }
        }
        assert!(clear > n * 9 / 10, "{clear} of {n} clear voxels");
    }

    #[test]
    fn layers_equal_a_plain_convolution_with_tails_tiles_and_dilations() {
        // 7 outputs: two tiles (4 + 3); 37 voxels: rows with a tail; dilation 4 near edges.
        check_network(
            vec![
                layer(1, 7, 3, 1, Normalization::None, Activation::Elu),
                layer(7, 7, 3, 4, Normalization::None, Activation::Relu),
                layer(7, 3, 3, 2, Normalization::None, Activation::Gelu),
                layer(3, 13, 1, 1, Normalization::None, Activation::None),
            ],
            [37, 11, 9],
        );
    }

    #[test]
    fn instance_normalization_and_gelu_equal_the_reference() {
        let norm = || Normalization::Instance {
            eps: 1e-5,
            weight: None,
            bias: None,
        };
        check_network(
            vec![
                layer(1, 5, 3, 2, norm(), Activation::Gelu),
                layer(5, 5, 3, 1, norm(), Activation::Gelu),
                layer(5, 2, 1, 1, Normalization::None, Activation::None),
            ],
            [20, 13, 6],
        );
    }

    #[test]
    fn a_box_gives_the_whole_volume_labels_there() {
        let network = Network {
            layers: vec![
                layer(1, 5, 3, 1, Normalization::None, Activation::Elu),
                layer(5, 5, 3, 2, Normalization::None, Activation::Elu),
                layer(5, 3, 1, 1, Normalization::None, Activation::None),
            ],
            axis_order: AxisOrder::Kji,
        };
        let cpu = CpuNetwork::new(&network);
        let dims = [30, 24, 20];
        let input = noise(dims.iter().product(), 5);
        let run = |out| cpu.segment_box(&input, dims, out, &mut |_| {}).unwrap().0;
        let whole = run(OutputBox::whole(dims));
        let part = OutputBox {
            start: [4, 10, 7],
            size: [9, 5, 13],
        };
        let labels = run(part);
        let mut n = 0;
        for z in 0..13 {
            for y in 0..5 {
                for x in 0..9 {
                    let at = ((z + 7) * 24 + y + 10) * 30 + x + 4;
                    assert_eq!(labels[n], whole[at], "voxel ({x}, {y}, {z}) of the box");
                    n += 1;
                }
            }
        }
    }
}
