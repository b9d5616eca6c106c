//! LiteMedSAM's prompt encoder and mask decoder (SAM's, unchanged by the distillation), in
//! burn, built from the state dict at runtime.
//!
//! As the reference calls them (`CVPR24_LiteMedSAM_infer.py`, `medsam_inference`): one box
//! prompt, no points, no mask input, `multimask_output=False`. So:
//! - prompt encoder: the box's two corners (shifted by 0.5 to pixel centres, divided by the
//!   256 input size) through the random-Fourier positional encoding
//!   (`sin`/`cos` of `2π (2c - 1) G`, `G` the stored 2x128 Gaussian matrix), plus the learned
//!   corner embeddings `point_embeddings.2` / `.3`; the dense embedding is `no_mask_embed`
//!   at every position; the image positional encoding is the same Fourier map on the 64x64
//!   grid of cell centres. These are tiny and computed on the host in f32 (sin/cos in f64).
//! - mask decoder: tokens `[iou, 4 mask tokens, 2 corners]`; a two-way transformer of depth 2
//!   (token self-attention — without positional terms in the first layer —, token→image
//!   cross-attention, ReLU MLP, image→token cross-attention, each followed by a LayerNorm;
//!   cross-attentions project to 128 = 256 / downsample rate 2), a final token→image
//!   attention and LayerNorm; the image tokens upscaled 4x (ConvTranspose2d 2x2/2,
//!   LayerNorm2d, GELU, ConvTranspose2d 2x2/2, GELU) to 32 x 256 x 256; the first mask
//!   token's hypernetwork MLP (3 layers, ReLU) gives 32 weights whose dot product with each
//!   pixel is the low-res logit. The IoU head (3-layer MLP on the IoU token), first output.

use burn::tensor::activation::{gelu, relu, softmax};
use burn::tensor::module::conv_transpose2d;
use burn::tensor::ops::ConvTransposeOptions;
use burn::tensor::{Device, Tensor};

use super::weights::{upload, LayerNorm, Linear, Weights};
use crate::models::ModelError;

/// Channels of the image embedding and of the tokens.
pub const EMBED_DIM: usize = 256;
/// Side of the image embedding grid.
pub const EMBED_SIDE: usize = 64;
/// Side of the encoder input and of the low-res logits.
pub const INPUT_SIDE: usize = 256;
const POS_FEATS: usize = EMBED_DIM / 2;
const HEADS: usize = 8;
const DOWNSAMPLE: usize = 2;
const MLP_DIM: usize = 2048;
const DEPTH: usize = 2;
/// Mask tokens (1 single-mask + 3 multimask outputs); only the first is used here.
const MASK_TOKENS: usize = 4;

/// The prompt encoder's parameters (host side: they are a few kilobytes).
pub struct PromptEncoder {
    /// `positional_encoding_gaussian_matrix`, 2 x 128 row-major.
    gaussian: Vec<f32>,
    /// `point_embeddings.2` and `.3`: added to the top-left and bottom-right corner.
    corners: [Vec<f32>; 2],
    /// `no_mask_embed`, 256.
    no_mask: Vec<f32>,
}

impl PromptEncoder {
    fn new(w: &Weights) -> Result<PromptEncoder, ModelError> {
        let p = "prompt_encoder";
        Ok(PromptEncoder {
            gaussian: w
                .values(
                    &format!("{p}.pe_layer.positional_encoding_gaussian_matrix"),
                    &[2, POS_FEATS],
                )?
                .to_vec(),
            corners: [
                w.values(&format!("{p}.point_embeddings.2.weight"), &[1, EMBED_DIM])?
                    .to_vec(),
                w.values(&format!("{p}.point_embeddings.3.weight"), &[1, EMBED_DIM])?
                    .to_vec(),
            ],
            no_mask: w
                .values(&format!("{p}.no_mask_embed.weight"), &[1, EMBED_DIM])?
                .to_vec(),
        })
    }

    /// `PositionEmbeddingRandom._pe_encoding` of one point normalized to [0, 1]^2.
    fn fourier(&self, x: f32, y: f32, out: &mut [f32]) {
        let (cx, cy) = (2.0 * x - 1.0, 2.0 * y - 1.0);
        let two_pi = (2.0 * std::f64::consts::PI) as f32;
        for c in 0..POS_FEATS {
            let v = two_pi * (cx * self.gaussian[c] + cy * self.gaussian[POS_FEATS + c]);
            out[c] = (v as f64).sin() as f32;
            out[POS_FEATS + c] = (v as f64).cos() as f32;
        }
    }

    /// The sparse embedding of a box `[x0, y0, x1, y1]` in the 256 frame: 2 x 256 row-major.
    pub fn box_embedding(&self, box_256: [f32; 4]) -> Vec<f32> {
        let mut out = vec![0.0f32; 2 * EMBED_DIM];
        let side = INPUT_SIDE as f32;
        for (corner, row) in out.chunks_mut(EMBED_DIM).enumerate() {
            let x = (box_256[2 * corner] + 0.5) / side;
            let y = (box_256[2 * corner + 1] + 0.5) / side;
            self.fourier(x, y, row);
            for (v, e) in row.iter_mut().zip(&self.corners[corner]) {
                *v += e;
            }
        }
        out
    }

    /// `get_dense_pe()`, as `[64 * 64, 256]` rows (position-major, row `i * 64 + j`).
    pub fn dense_pe_rows(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; EMBED_SIDE * EMBED_SIDE * EMBED_DIM];
        let side = EMBED_SIDE as f32;
        for i in 0..EMBED_SIDE {
            for j in 0..EMBED_SIDE {
                let at = (i * EMBED_SIDE + j) * EMBED_DIM;
                // cumsum of ones - 0.5, divided by the side: exact as in torch
                let x = (j as f32 + 1.0 - 0.5) / side;
                let y = (i as f32 + 1.0 - 0.5) / side;
                self.fourier(x, y, &mut out[at..at + EMBED_DIM]);
            }
        }
        out
    }
}

/// SAM's `Attention` with its internal (downsampled) width.
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    internal: usize,
}

impl Attention {
    fn new(
        w: &Weights,
        prefix: &str,
        downsample: usize,
        device: &Device,
    ) -> Result<Attention, ModelError> {
        let internal = EMBED_DIM / downsample;
        Ok(Attention {
            q: w.linear(&format!("{prefix}.q_proj"), EMBED_DIM, internal, device)?,
            k: w.linear(&format!("{prefix}.k_proj"), EMBED_DIM, internal, device)?,
            v: w.linear(&format!("{prefix}.v_proj"), EMBED_DIM, internal, device)?,
            out: w.linear(&format!("{prefix}.out_proj"), internal, EMBED_DIM, device)?,
            internal,
        })
    }

    /// `q`: `[n, 256]`, `k`, `v`: `[m, 256]` → `[n, 256]`.
    fn forward(&self, q: Tensor<2>, k: Tensor<2>, v: Tensor<2>) -> Tensor<2> {
        let d = self.internal / HEADS;
        let heads = |x: Tensor<2>| {
            let n = x.dims()[0];
            x.reshape([n, HEADS, d]).swap_dims(0, 1)
        };
        let q = heads(self.q.forward(q));
        let k = heads(self.k.forward(k));
        let v = heads(self.v.forward(v));
        let n = q.dims()[1];
        let attn = q.matmul(k.swap_dims(1, 2)).div_scalar((d as f64).sqrt());
        let attn = softmax(attn, 2);
        let out = attn.matmul(v).swap_dims(0, 1).reshape([n, self.internal]);
        self.out.forward(out)
    }
}

struct TwoWayBlock {
    self_attn: Attention,
    norm1: LayerNorm,
    cross_token_to_image: Attention,
    norm2: LayerNorm,
    lin1: Linear,
    lin2: Linear,
    norm3: LayerNorm,
    norm4: LayerNorm,
    cross_image_to_token: Attention,
    skip_first_layer_pe: bool,
}

impl TwoWayBlock {
    fn new(
        w: &Weights,
        prefix: &str,
        first: bool,
        device: &Device,
    ) -> Result<TwoWayBlock, ModelError> {
        let norm = |n: &str| w.layer_norm(&format!("{prefix}.{n}"), EMBED_DIM, 1e-5, device);
        Ok(TwoWayBlock {
            self_attn: Attention::new(w, &format!("{prefix}.self_attn"), 1, device)?,
            norm1: norm("norm1")?,
            cross_token_to_image: Attention::new(
                w,
                &format!("{prefix}.cross_attn_token_to_image"),
                DOWNSAMPLE,
                device,
            )?,
            norm2: norm("norm2")?,
            lin1: w.linear(&format!("{prefix}.mlp.lin1"), EMBED_DIM, MLP_DIM, device)?,
            lin2: w.linear(&format!("{prefix}.mlp.lin2"), MLP_DIM, EMBED_DIM, device)?,
            norm3: norm("norm3")?,
            norm4: norm("norm4")?,
            cross_image_to_token: Attention::new(
                w,
                &format!("{prefix}.cross_attn_image_to_token"),
                DOWNSAMPLE,
                device,
            )?,
            skip_first_layer_pe: first,
        })
    }

    fn forward(
        &self,
        queries: Tensor<2>,
        keys: Tensor<2>,
        query_pe: &Tensor<2>,
        key_pe: &Tensor<2>,
    ) -> (Tensor<2>, Tensor<2>) {
        let queries = if self.skip_first_layer_pe {
            self.self_attn
                .forward(queries.clone(), queries.clone(), queries)
        } else {
            let q = queries.clone() + query_pe.clone();
            queries.clone() + self.self_attn.forward(q.clone(), q, queries)
        };
        let queries = self.norm1.forward(queries);

        let q = queries.clone() + query_pe.clone();
        let k = keys.clone() + key_pe.clone();
        let queries = queries + self.cross_token_to_image.forward(q, k, keys.clone());
        let queries = self.norm2.forward(queries);

        let mlp = self.lin2.forward(relu(self.lin1.forward(queries.clone())));
        let queries = self.norm3.forward(queries + mlp);

        let q = queries.clone() + query_pe.clone();
        let k = keys.clone() + key_pe.clone();
        let keys = keys + self.cross_image_to_token.forward(k, q, queries.clone());
        let keys = self.norm4.forward(keys);
        (queries, keys)
    }
}

/// SAM's `MLP`: ReLU between layers, none after the last.
struct Mlp {
    layers: Vec<Linear>,
}

impl Mlp {
    fn new(w: &Weights, prefix: &str, dims: &[usize], device: &Device) -> Result<Mlp, ModelError> {
        let layers = dims
            .windows(2)
            .enumerate()
            .map(|(i, io)| w.linear(&format!("{prefix}.layers.{i}"), io[0], io[1], device))
            .collect::<Result<_, _>>()?;
        Ok(Mlp { layers })
    }

    fn forward(&self, mut x: Tensor<2>) -> Tensor<2> {
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x);
            if i < last {
                x = relu(x);
            }
        }
        x
    }
}

/// The prompt encoder and mask decoder on one device, ready to decode boxes against image
/// embeddings.
pub struct Decoder {
    device: Device,
    prompt: PromptEncoder,
    /// `[iou_token; mask_tokens]`, `[5, 256]`.
    output_tokens: Tensor<2>,
    /// `no_mask_embed` as `[1, 256]`, added to every image position.
    no_mask: Tensor<2>,
    /// The dense positional encoding, `[4096, 256]`.
    image_pe: Tensor<2>,
    blocks: Vec<TwoWayBlock>,
    final_attn: Attention,
    norm_final: LayerNorm,
    upscale1: (Tensor<4>, Tensor<1>),
    upscale_norm: LayerNorm,
    upscale2: (Tensor<4>, Tensor<1>),
    hypernetwork: Mlp,
    iou_head: Mlp,
}

/// One box decoded: the low-res logits (`[1, 1, 256, 256]`, the 256 frame) and the IoU
/// prediction (`[1, 1]`), on the decoder's device.
pub struct Decoded {
    pub low_res_logits: Tensor<4>,
    pub iou_prediction: Tensor<2>,
}

impl Decoder {
    /// Builds the decoder from `lite_medsam.pth` (a PyTorch zip state dict).
    pub fn from_pth(bytes: &[u8], device: &Device) -> Result<Decoder, ModelError> {
        Decoder::new(&Weights::read(bytes, "lite_medsam.pth")?, device)
    }

    pub(crate) fn new(w: &Weights, device: &Device) -> Result<Decoder, ModelError> {
        let prompt = PromptEncoder::new(w)?;
        let m = "mask_decoder";
        let t = "mask_decoder.transformer";
        let mut tokens = w
            .values(&format!("{m}.iou_token.weight"), &[1, EMBED_DIM])?
            .to_vec();
        tokens.extend_from_slice(w.values(
            &format!("{m}.mask_tokens.weight"),
            &[MASK_TOKENS, EMBED_DIM],
        )?);
        let convt =
            |name: &str, i: usize, o: usize| -> Result<(Tensor<4>, Tensor<1>), ModelError> {
                Ok((
                    w.tensor(
                        &format!("{m}.output_upscaling.{name}.weight"),
                        [i, o, 2, 2],
                        device,
                    )?,
                    w.tensor(&format!("{m}.output_upscaling.{name}.bias"), [o], device)?,
                ))
            };
        let d8 = EMBED_DIM / 8;
        Ok(Decoder {
            device: device.clone(),
            output_tokens: upload(tokens, [1 + MASK_TOKENS, EMBED_DIM], device),
            no_mask: upload(prompt.no_mask.clone(), [1, EMBED_DIM], device),
            image_pe: upload(
                prompt.dense_pe_rows(),
                [EMBED_SIDE * EMBED_SIDE, EMBED_DIM],
                device,
            ),
            blocks: (0..DEPTH)
                .map(|i| TwoWayBlock::new(w, &format!("{t}.layers.{i}"), i == 0, device))
                .collect::<Result<_, _>>()?,
            final_attn: Attention::new(
                w,
                &format!("{t}.final_attn_token_to_image"),
                DOWNSAMPLE,
                device,
            )?,
            norm_final: w.layer_norm(&format!("{t}.norm_final_attn"), EMBED_DIM, 1e-5, device)?,
            upscale1: convt("0", EMBED_DIM, EMBED_DIM / 4)?,
            upscale_norm: w.layer_norm(
                &format!("{m}.output_upscaling.1"),
                EMBED_DIM / 4,
                1e-6,
                device,
            )?,
            upscale2: convt("3", EMBED_DIM / 4, d8)?,
            hypernetwork: Mlp::new(
                w,
                &format!("{m}.output_hypernetworks_mlps.0"),
                &[EMBED_DIM, EMBED_DIM, EMBED_DIM, d8],
                device,
            )?,
            iou_head: Mlp::new(
                w,
                &format!("{m}.iou_prediction_head"),
                &[EMBED_DIM, EMBED_DIM, EMBED_DIM, MASK_TOKENS],
                device,
            )?,
            prompt,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn prompt_encoder(&self) -> &PromptEncoder {
        &self.prompt
    }

    /// Decodes one box `[x0, y0, x1, y1]` (the 256 frame, as the reference's `box_256`)
    /// against an image embedding `[1, 256, 64, 64]` on this decoder's device.
    pub fn decode(&self, image_embedding: &Tensor<4>, box_256: [f32; 4]) -> Decoded {
        let n = EMBED_SIDE * EMBED_SIDE;
        assert_eq!(
            image_embedding.dims(),
            [1, EMBED_DIM, EMBED_SIDE, EMBED_SIDE]
        );
        let sparse = upload(
            self.prompt.box_embedding(box_256),
            [2, EMBED_DIM],
            &self.device,
        );
        let tokens = Tensor::cat(vec![self.output_tokens.clone(), sparse], 0);

        // image tokens: embedding + dense (no-mask) embedding, position-major
        let keys = image_embedding
            .clone()
            .reshape([EMBED_DIM, n])
            .swap_dims(0, 1)
            + self.no_mask.clone();
        let mut queries = tokens.clone();
        let mut keys = keys;
        for block in &self.blocks {
            (queries, keys) = block.forward(queries, keys, &tokens, &self.image_pe);
        }
        let q = queries.clone() + tokens;
        let k = keys.clone() + self.image_pe.clone();
        let queries = self
            .norm_final
            .forward(queries + self.final_attn.forward(q, k, keys.clone()));

        let src = keys
            .swap_dims(0, 1)
            .reshape([1, EMBED_DIM, EMBED_SIDE, EMBED_SIDE]);
        let options = ConvTransposeOptions::new([2, 2], [0, 0], [0, 0], [1, 1], 1);
        let x = conv_transpose2d(
            src,
            self.upscale1.0.clone(),
            Some(self.upscale1.1.clone()),
            options.clone(),
        );
        let x = gelu(self.upscale_norm.forward_channels(x));
        let x = gelu(conv_transpose2d(
            x,
            self.upscale2.0.clone(),
            Some(self.upscale2.1.clone()),
            options,
        ));
        let [_, c, h, w] = x.dims();

        let mask_token = queries.clone().narrow(0, 1, 1);
        let hyper = self.hypernetwork.forward(mask_token); // [1, 32]
        let logits = hyper.matmul(x.reshape([c, h * w])).reshape([1, 1, h, w]);
        let iou = self
            .iou_head
            .forward(queries.narrow(0, 0, 1))
            .narrow(1, 0, 1);
        Decoded {
            low_res_logits: logits,
            iou_prediction: iou,
        }
    }

    /// [`Decoder::decode`] read back to the host: (256 x 256 logits row-major, IoU prediction).
    pub async fn decode_to_host(
        &self,
        image_embedding: &Tensor<4>,
        box_256: [f32; 4],
    ) -> Result<(Vec<f32>, f32), String> {
        let out = self.decode(image_embedding, box_256);
        let logits = read_f32(out.low_res_logits).await?;
        let iou = read_f32(out.iou_prediction).await?;
        Ok((logits, iou[0]))
    }
}

/// Reads a device tensor back as f32 values.
pub(crate) async fn read_f32<const D: usize>(x: Tensor<D>) -> Result<Vec<f32>, String> {
    x.into_data_async()
        .await
        .map_err(|e| format!("{e:?}"))?
        .try_into_vec_as::<f32>()
        .map_err(|e| format!("{e:?}"))
}
