//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod canonical;
pub mod litemedsam;

use insitu::assets::{self, RemoteFile};
use insitu::engine::PreparedNetwork;
use insitu::models::{ModelError, ModelFiles, Network, Registry};
use insitu::pipeline::{self, SegmentOptions, Segmentation};
use insitu::volume::{self, Volume};
use std::path::PathBuf;
use std::time::Instant;

/// The data mirror (`$INSITU_MIRROR` or `../shared`); tests need it and fail loudly without it.
pub fn shared() -> PathBuf {
    insitu::assets::mirror_dir()
        .expect("test data mirror not found: set INSITU_MIRROR or put shared/ beside the repo")
}

pub fn data(rel: &str) -> PathBuf {
    shared().join("data").join(rel)
}

pub fn model_dir(folder: &str) -> PathBuf {
    shared().join("models/brainchop/meshnet").join(folder)
}

/// A registry model's files, from the mirror (sha256 checked).
pub fn model_files(model_id: &str) -> ModelFiles {
    let entry = Registry::builtin()
        .get(model_id)
        .expect("model in registry");
    let mut files = ModelFiles::new();
    for file in &entry.files {
        let bytes = assets::fetch(RemoteFile::model(file)).expect("model file from the mirror");
        files.insert(file.name.clone(), bytes);
    }
    files
}

/// Registry model `model_id`'s network, its files checked (from the mirror).
pub fn network(model_id: &str) -> Result<Network, ModelError> {
    let entry = Registry::builtin().get(model_id)?;
    entry.load_network(&model_files(model_id))
}

/// A 48³ crop of the sample t1_crop from (100, 100, 100): small, with tissue in it.
pub fn small_crop() -> Volume {
    let whole = volume::read(&std::fs::read(data("t1_crop.nii.gz")).unwrap()).unwrap();
    volume::crop(&whole, [100, 100, 100], [48, 48, 48]).unwrap()
}

/// The whole pipeline on `volume` with registry model `model_id` prepared as `network`.
pub fn segment_volume(
    model_id: &str,
    network: &PreparedNetwork,
    volume: &Volume,
    name: &str,
    options: &SegmentOptions,
) -> Segmentation {
    let entry = Registry::builtin()
        .get(model_id)
        .expect("model in registry");
    let clock = Instant::now();
    let now = || clock.elapsed().as_secs_f64() * 1000.0;
    pollster::block_on(pipeline::segment(
        volume,
        name,
        entry.input.normalization,
        network,
        options,
        &now,
        &mut |_| {},
    ))
    .expect("segmentation runs")
}
