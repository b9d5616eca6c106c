//! The one run path of the CLI and the page: a model of either family ([`Model`]), checked
//! and loaded once. A dense model is prepared on the device [`crate::device::choose`] picked
//! and run on a volume by [`crate::pipeline`]; when the GPU fails mid-run the run is retried
//! on the CPU and the result says so. A promptable model is built on its device by
//! [`PromptModel::on_device`] and run by [`crate::litemedsam::pipeline`].

use crate::device::DeviceChoice;
use crate::engine::{EngineError, PreparedNetwork};
use crate::litemedsam::LiteMedSam;
use crate::models::{ModelEntry, ModelError, ModelFiles, ModelFormat, Network, Registry};
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

/// A promptable model (LiteMedSAM): its weights file, checked against the registry, built
/// on a device when a run needs it there.
pub struct PromptModel {
    pub entry: &'static ModelEntry,
    pth: Vec<u8>,
}

impl PromptModel {
    /// The whole model on `device`.
    pub fn on_device(&self, device: &DeviceChoice) -> Result<LiteMedSam, ModelError> {
        LiteMedSam::from_pth(&self.pth, &device.burn_device()).map_err(|e| match e {
            ModelError::BadFormat(m) => {
                ModelError::BadFormat(format!("model {}: {m}", self.entry.id))
            }
            other => other,
        })
    }
}

/// A model of any family, its files checked against the registry.
pub enum Model {
    /// Labels every voxel (MeshNet): [`segment`].
    Dense(DenseModel),
    /// Segments what a box points at: [`crate::litemedsam::pipeline::segment`].
    Promptable(PromptModel),
}

impl Model {
    /// Checks `files` against the registry entry `id` and loads the family its `format` says.
    pub fn load(id: &str, mut files: ModelFiles) -> Result<Model, ModelError> {
        let entry = Registry::builtin().get(id)?;
        match entry.format {
            ModelFormat::LiteMedSamPth => {
                entry.check_files(&files)?;
                let main = entry.format.main_file();
                let pth = files.remove(main).ok_or_else(|| {
                    ModelError::MissingFile(format!("{main} (model {})", entry.id))
                })?;
                Ok(Model::Promptable(PromptModel { entry, pth }))
            }
            _ => DenseModel::load(id, &files).map(Model::Dense),
        }
    }

    pub fn entry(&self) -> &'static ModelEntry {
        match self {
            Model::Dense(m) => m.entry,
            Model::Promptable(m) => m.entry,
        }
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
