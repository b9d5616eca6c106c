//! File in, segmentation out: read → conform → normalize → network → argmax →
//! largest component → back onto the input's own grid. The same path serves the CLI,
//! the tests, the benchmarks and the browser.

use crate::engine::{EngineError, OutputBox, PreparedNetwork};
use crate::models::InputNormalization;
use crate::preprocess::{self, PreprocessError};
use crate::volume::{self, LabelMap, Volume, VolumeError};
use std::fmt;

/// A named step of a run, for progress bars.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Conform,
    Normalize,
    /// `done` of `total` layers finished (counted over all slabs).
    Layer {
        done: usize,
        total: usize,
    },
    Postprocess,
    Native,
}

impl Stage {
    /// Stable machine name (the browser's progress protocol uses it).
    pub fn name(&self) -> &'static str {
        match self {
            Stage::Conform => "conform",
            Stage::Normalize => "normalize",
            Stage::Layer { .. } => "layer",
            Stage::Postprocess => "postprocess",
            Stage::Native => "native",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct SegmentOptions {
    /// Run the network only on the bounding box of the head (grown by the network's receptive
    /// radius) instead of the whole conformed 256³ grid, and call everything outside it
    /// background. Identical to a whole-grid run inside the box for models without
    /// whole-volume normalization; much faster for small inputs.
    pub crop_to_foreground: bool,
    /// Largest single activation the device may hold (None: unlimited).
    pub max_tensor_bytes: Option<usize>,
}

/// Milliseconds spent in each part of a run.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Timings {
    pub conform: f64,
    pub inference: f64,
    pub native: f64,
    pub total: f64,
}

pub struct Segmentation {
    /// Labels on the model's conformed 256³ 1 mm grid.
    pub conformed: LabelMap,
    /// Labels on the input's own grid (overlays the original file).
    pub native: LabelMap,
    pub timings: Timings,
    /// Floating-point operations of the network's convolutions.
    pub flops: u64,
    /// Activation memory the run held at once (see `PreparedNetwork::pass_bytes`).
    pub peak_tensor_bytes: usize,
    /// The part of the conformed grid the network labelled (outside it: background).
    pub region: OutputBox,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PipelineError {
    Read {
        file: String,
        error: VolumeError,
    },
    Preprocess {
        file: String,
        error: PreprocessError,
    },
    Engine {
        file: String,
        error: EngineError,
    },
}

impl fmt::Display for PipelineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PipelineError::Read { file, error } => write!(f, "{file}: {error}"),
            PipelineError::Preprocess { file, error } => write!(f, "{file}: {error}"),
            PipelineError::Engine { file, error } => write!(f, "{file}: {error}"),
        }
    }
}

impl std::error::Error for PipelineError {}

/// Reads a volume file from bytes; errors name the file.
pub fn read_volume(bytes: &[u8], file: &str) -> Result<Volume, PipelineError> {
    volume::read(bytes).map_err(|error| PipelineError::Read {
        file: file.to_string(),
        error,
    })
}

/// Segments `volume` (read from `file`, named in errors). `now` returns milliseconds
/// from any fixed origin (std's clock is unavailable in the browser).
pub async fn segment(
    volume: &Volume,
    file: &str,
    normalization: InputNormalization,
    network: &PreparedNetwork,
    options: &SegmentOptions,
    now: &dyn Fn() -> f64,
    progress: &mut dyn FnMut(Stage),
) -> Result<Segmentation, PipelineError> {
    let preprocess_error = |error| PipelineError::Preprocess {
        file: file.to_string(),
        error,
    };
    let start = now();
    progress(Stage::Conform);
    let conformed = preprocess::conform(volume).map_err(preprocess_error)?;
    let grid = conformed.volume.geometry.clone();

    progress(Stage::Normalize);
    // Always over the whole conformed grid, so cropping cannot change the intensities.
    let normalized = normalize(&conformed.volume.data, normalization);
    let region = if options.crop_to_foreground {
        foreground_box(&conformed.volume)
    } else {
        OutputBox::whole(grid.dims)
    };
    let after_conform = now();

    let (region_labels, stats) = network
        .segment(
            &normalized,
            grid.dims,
            region,
            options.max_tensor_bytes,
            &mut |p| {
                progress(Stage::Layer {
                    done: p.done,
                    total: p.total,
                })
            },
        )
        .await
        .map_err(|error| PipelineError::Engine {
            file: file.to_string(),
            error,
        })?;
    let after_inference = now();

    progress(Stage::Postprocess);
    let mut labels = vec![0u16; grid.voxel_count()];
    insert_box(region, &region_labels, &mut labels, grid.dims);
    preprocess::keep_largest_component(&mut labels, grid.dims);
    let conformed_labels = LabelMap {
        geometry: grid,
        labels,
    };

    progress(Stage::Native);
    let native = preprocess::labels_to_native(
        &conformed_labels,
        &volume.geometry,
        &conformed.vox2vox_native_from_conformed,
    );
    let end = now();
    Ok(Segmentation {
        conformed: conformed_labels,
        native,
        timings: Timings {
            conform: after_conform - start,
            inference: after_inference - after_conform,
            native: end - after_inference,
            total: end - start,
        },
        flops: stats.flops,
        peak_tensor_bytes: stats.peak_tensor_bytes,
        region,
    })
}

/// Scales conformed intensities the way the model expects.
pub fn normalize(values: &[f32], normalization: InputNormalization) -> Vec<f32> {
    match normalization {
        InputNormalization::Quantile2To98 => {
            preprocess::quantile_normalize(values, 0.02, 0.98, 1e-3)
        }
        InputNormalization::MinMax => {
            let (lo, hi) = values
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                    (lo.min(v), hi.max(v))
                });
            let range = if hi > lo { hi - lo } else { 1.0 };
            values.iter().map(|&v| (v - lo) / range).collect()
        }
    }
}

/// Writes the labels of `region` (i fastest) into the whole grid.
fn insert_box(region: OutputBox, values: &[u16], out: &mut [u16], dims: [usize; 3]) {
    let [si, sj, sk] = region.start;
    let [ri, rj, rk] = region.size;
    let mut rows = values.chunks_exact(ri);
    for k in sk..sk + rk {
        for j in sj..sj + rj {
            let row = (k * dims[1] + j) * dims[0] + si;
            if let Some(line) = rows.next() {
                out[row..row + ri].copy_from_slice(line);
            }
        }
    }
}

/// Bounding box of the non-zero voxels (the head: conform fills the rest with 0); the whole
/// grid when all are zero. Outside it the network is not run and labels are background.
fn foreground_box(volume: &Volume) -> OutputBox {
    let dims = volume.geometry.dims;
    let mut lo = dims;
    let mut hi = [0usize; 3];
    for k in 0..dims[2] {
        for j in 0..dims[1] {
            let row = (k * dims[1] + j) * dims[0];
            for (i, &v) in volume.data[row..row + dims[0]].iter().enumerate() {
                if v > 0.0 {
                    for (a, c) in [i, j, k].into_iter().enumerate() {
                        lo[a] = lo[a].min(c);
                        hi[a] = hi[a].max(c + 1);
                    }
                }
            }
        }
    }
    if (0..3).any(|a| lo[a] >= hi[a]) {
        return OutputBox::whole(dims);
    }
    OutputBox {
        start: lo,
        size: [0, 1, 2].map(|a| hi[a] - lo[a]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::Geometry;

    fn grid(dims: [usize; 3]) -> Geometry {
        Geometry {
            dims,
            spacing: [1.0; 3],
            affine: [
                [1.0, 0.0, 0.0, 0.0],
                [0.0, 1.0, 0.0, 0.0],
                [0.0, 0.0, 1.0, 0.0],
                [0.0, 0.0, 0.0, 1.0],
            ],
            sform_code: 1,
            qform_code: 1,
        }
    }

    #[test]
    fn foreground_box_and_insert() {
        let dims = [6, 5, 4];
        let mut data = vec![0.0f32; 120];
        data[(2 * 5 + 1) * 6 + 3] = 7.0; // (i=3, j=1, k=2)
        data[(3 * 5 + 2) * 6 + 4] = 9.0; // (i=4, j=2, k=3)
        let volume = Volume {
            geometry: grid(dims),
            data,
        };
        let region = foreground_box(&volume);
        assert_eq!(
            region,
            OutputBox {
                start: [3, 1, 2],
                size: [2, 2, 2]
            }
        );
        let mut out = vec![0u16; 120];
        insert_box(region, &[1, 2, 3, 4, 5, 6, 7, 8], &mut out, dims);
        assert_eq!(out[(2 * 5 + 1) * 6 + 3], 1);
        assert_eq!(out[(3 * 5 + 2) * 6 + 4], 8);
        assert_eq!(out.iter().filter(|&&v| v != 0).count(), 8);
    }

    #[test]
    fn empty_volume_keeps_the_whole_grid() {
        let volume = Volume {
            geometry: grid([3, 3, 3]),
            data: vec![0.0; 27],
        };
        assert_eq!(foreground_box(&volume), OutputBox::whole([3, 3, 3]));
    }
}
