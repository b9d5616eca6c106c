//! LiteMedSAM, the distilled MedSAM (TinyViT image encoder + SAM prompt encoder and mask
//! decoder, box prompt, 256x256 input), as the CVPR 2024 reference pipeline runs it
//! (github bowang-lab/MedSAM, branch LiteMedSAM).
//!
//! - [`preprocess`]: the reference's exact pre-processing (CT window / MR percentiles to
//!   uint8, OpenCV's INTER_AREA resize, min-max, padding, the box transforms).
//! - [`decoder`]: the prompt encoder and mask decoder in burn, built from `lite_medsam.pth`,
//!   on any device: box + image embedding → 256x256 low-res logits and IoU prediction.
//!
//! Axes follow the reference, which reads NIfTI arrays without reorientation: a 2-D image is
//! the volume's k-th plane with rows along j and columns along i, so a box
//! `[x_min, y_min, x_max, y_max]` is `[i0, j0, i1, j1]` in voxel indices.

pub mod decoder;
pub mod preprocess;
mod weights;
