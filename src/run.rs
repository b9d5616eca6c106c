//! The one run path of the CLI and the page: a dense model, checked and loaded once, prepared
//! on the device [`crate::device::choose`] picked, run on a volume by [`crate::pipeline`];
//! when the GPU fails mid-run the run is retried on the CPU and the result says so.

use crate::device::DeviceChoice;
use crate::engine::{EngineError, PreparedNetwork};
use crate::models::{ModelEntry, ModelError, ModelFiles, Network, Registry};
use crate::pipeline::{self, PipelineError, SegmentOptions, Segmentation, Stage};
use crate::volume::Volume;

/// A dense model's network, its files checked against the registry.
pub struct DenseModel {
    pub entry: &'static ModelEntry,
    pub network: Network,
}

impl DenseModel {
    /// Checks `files` against the registry entry `id` and builds the network its `format` says.
    pub fn load(id: &str, files: &ModelFiles) -> Result<DenseModel, ModelError> {
        let entry = Registry::builtin().get(id)?;
        let in_model = |e: ModelError| match e {
            ModelError::BadFormat(m) => ModelError::BadFormat(format!("model {id}: {m}")),
            other => other,
        };
        let network = entry.load_network(files).map_err(in_model)?;
        Ok(DenseModel { entry, network })
    }
}

/// A model ready on one device.
pub struct Prepared {
    pub network: PreparedNetwork,
    pub device: DeviceChoice,
}

impl Prepared {
    pub fn new(model: &DenseModel, device: DeviceChoice) -> Prepared {
        Prepared {
            network: device.prepare(&model.network),
            device,
        }
    }
}

/// A finished run: the labels and where they were computed.
pub struct DenseRun {
    pub segmentation: Segmentation,
    /// The device that produced the labels (the CPU after a fallback).
    pub device: DeviceChoice,
    /// Why the run was retried on the CPU, when it was.
    pub fallback: Option<String>,
}

/// Segments `volume` (named `name` in errors) with `model` as prepared on a device. A GPU
/// run that fails on the device is run again on the CPU with `cpu_budget`.
#[allow(clippy::too_many_arguments)] // one flat call for both adapters
pub async fn segment(
    model: &DenseModel,
    prepared: &Prepared,
    cpu_budget: usize,
    volume: &Volume,
    name: &str,
    crop_to_foreground: bool,
    now: &dyn Fn() -> f64,
    progress: &mut dyn FnMut(Stage),
) -> Result<DenseRun, PipelineError> {
    let normalization = model.entry.input.normalization;
    let options = |device: &DeviceChoice| SegmentOptions {
        crop_to_foreground,
        max_tensor_bytes: Some(device.memory_budget),
    };
    let first = pipeline::segment(
        volume,
        name,
        normalization,
        &prepared.network,
        &options(&prepared.device),
        now,
        progress,
    )
    .await;
    match first {
        Err(PipelineError::Engine {
            error: EngineError::Execution(why),
            ..
        }) if prepared.device.is_gpu() => {
            let fallback = format!(
                "{} failed ({why}); the run was repeated on the CPU",
                prepared.device.describe()
            );
            let cpu = Prepared::new(model, DeviceChoice::cpu(cpu_budget, None));
            let segmentation = pipeline::segment(
                volume,
                name,
                normalization,
                &cpu.network,
                &options(&cpu.device),
                now,
                progress,
            )
            .await?;
            Ok(DenseRun {
                segmentation,
                device: cpu.device,
                fallback: Some(fallback),
            })
        }
        result => Ok(DenseRun {
            segmentation: result?,
            device: prepared.device.clone(),
            fallback: None,
        }),
    }
}
