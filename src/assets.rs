//! Finds model and sample files: the local mirror first, then the upstream URL.

use std::path::PathBuf;

/// Environment variable naming the mirror directory (holding `models/` and `data/`).
pub const MIRROR_ENV: &str = "INSITU_MIRROR";

/// The local mirror: `$INSITU_MIRROR`, else `../shared` when it exists.
pub fn mirror_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(MIRROR_ENV) {
        return Some(PathBuf::from(dir));
    }
    let default = PathBuf::from("../shared");
    default.is_dir().then_some(default)
}
