//! insitu core: plain Rust that knows nothing of the browser.
//!
//! - [`volume`]: volume geometry and file I/O (NIfTI, ...).
//! - [`preprocess`]: brainchop-compatible conform, intensity normalization, label post-processing.
//! - [`models`]: the model registry and the loaders for the model file formats.
//! - [`litemedsam`]: the LiteMedSAM family (promptable, box prompts): its exact pre-processing.
//! - [`engine`]: runs a loaded network with our CPU kernels or burn on a GPU.
//! - [`device`]: where a model runs: one policy (auto / gpu / cpu) and its memory budgets.
//! - [`pipeline`]: file in, segmentation out, with named progress stages.
//! - [`run`]: the one run path of the CLI and the page: a dense model on a chosen device,
//!   retried on the CPU when the GPU fails.
//! - [`metrics`]: segmentation quality against reference labels.
//! - [`assets`]: finds model and sample files in the local mirror (native only).

pub mod device;
pub mod engine;
pub mod litemedsam;
pub mod metrics;
pub mod models;
pub mod pipeline;
pub mod preprocess;
pub mod run;
pub mod volume;

#[cfg(not(target_arch = "wasm32"))]
pub mod assets;

#[cfg(target_arch = "wasm32")]
pub mod wasm;
