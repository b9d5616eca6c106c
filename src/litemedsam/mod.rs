//! LiteMedSAM, the distilled MedSAM (TinyViT image encoder + SAM prompt encoder and mask
//! decoder, box prompt, 256x256 input), as the CVPR 2024 reference pipeline runs it
//! (github bowang-lab/MedSAM, branch LiteMedSAM).
//!
//! - [`preprocess`]: the reference's exact pre-processing (CT window / MR percentiles to
//!   uint8, OpenCV's INTER_AREA resize, min-max, padding, the box transforms).
//! - [`decoder`]: the prompt encoder and mask decoder in burn, built from `lite_medsam.pth`,
//!   on any device: box + image embedding → 256x256 low-res logits and IoU prediction.
//! - [`encoder`]: the TinyViT image encoder in burn: encoder input → 1x256x64x64 embedding.
//! - [`postprocess`]: low-res logits → the slice's mask, as the reference computes it.
//! - [`pipeline`]: box prompts (2-D, or 3-D by the reference's propagation) on a whole volume
//!   → a label map on its grid, with the per-call embedding cache and encoder/decoder times.
//!
//! Axes follow the reference, which reads NIfTI arrays without reorientation: a 2-D image is
//! the volume's k-th plane with rows along j and columns along i, so a box
//! `[x_min, y_min, x_max, y_max]` is `[i0, j0, i1, j1]` in voxel indices.

pub mod decoder;
pub mod encoder;
pub mod pipeline;
pub mod postprocess;
pub mod preprocess;
mod weights;

use burn::tensor::Device;

use crate::models::ModelError;

/// The whole model on one device, from one read of `lite_medsam.pth`.
pub struct LiteMedSam {
    pub encoder: encoder::Encoder,
    pub decoder: decoder::Decoder,
}

impl LiteMedSam {
    /// Builds encoder and decoder from `lite_medsam.pth` (a PyTorch zip state dict).
    pub fn from_pth(bytes: &[u8], device: &Device) -> Result<LiteMedSam, ModelError> {
        let w = weights::Weights::read(bytes, "lite_medsam.pth")?;
        Ok(LiteMedSam {
            encoder: encoder::Encoder::new(&w, device)?,
            decoder: decoder::Decoder::new(&w, device)?,
        })
    }
}
