//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

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
