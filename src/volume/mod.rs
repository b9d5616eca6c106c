//! Volumes, their geometry, and the readers and writers for volume files.

mod bounded;
pub mod dicom;
mod geometry;
pub mod metaimage;
pub mod mgh;
pub mod nifti;
pub mod nrrd;
#[cfg(target_arch = "wasm32")]
mod wasm_libc;

pub use geometry::Geometry;

use std::fmt;

/// A volume file format insitu reads (and, except DICOM, writes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// `.nii`
    Nifti,
    /// `.nii.gz`
    NiftiGz,
    /// `.nrrd` (attached data) or `.nhdr` (detached).
    Nrrd,
    /// `.mgh`
    Mgh,
    /// `.mgz` (gzip-compressed MGH)
    Mgz,
    /// `.mha` (MetaImage, one file) or `.mhd` + data file.
    MetaImage,
    /// DICOM files (one series, or one multi-frame file).
    Dicom,
}

impl Format {
    /// A short name for messages: "NIfTI", "NRRD", "MGH", "MetaImage", "DICOM".
    pub fn name(self) -> &'static str {
        match self {
            Format::Nifti | Format::NiftiGz => "NIfTI",
            Format::Nrrd => "NRRD",
            Format::Mgh | Format::Mgz => "MGH",
            Format::MetaImage => "MetaImage",
            Format::Dicom => "DICOM",
        }
    }

    /// The file extension (with its dot) of what [`write_labels_like`] writes for this input
    /// format: the same format where insitu writes it, else `.nii.gz`.
    pub fn label_extension(self) -> &'static str {
        match self {
            Format::Nifti => ".nii",
            Format::NiftiGz | Format::Dicom => ".nii.gz",
            Format::Nrrd => ".nrrd",
            Format::Mgh => ".mgh",
            Format::Mgz => ".mgz",
            Format::MetaImage => ".mha",
        }
    }

    /// The format a file name's extension implies, if any (case-insensitive).
    pub fn from_name(name: &str) -> Option<Format> {
        let n = name.to_ascii_lowercase();
        let ends = |e: &str| n.ends_with(e);
        Some(if ends(".nii.gz") {
            Format::NiftiGz
        } else if ends(".nii") {
            Format::Nifti
        } else if ends(".nrrd") || ends(".nhdr") {
            Format::Nrrd
        } else if ends(".mgz") || ends(".mgh.gz") {
            Format::Mgz
        } else if ends(".mgh") {
            Format::Mgh
        } else if ends(".mha") || ends(".mhd") {
            Format::MetaImage
        } else if ends(".dcm") || ends(".dicom") || ends(".ima") {
            Format::Dicom
        } else {
            return None;
        })
    }
}

/// Which format `bytes` are in, from their content; `name` (a file name) breaks the tie for MGH,
/// which has no magic number. NIfTI and MGH inside gzip are told apart by peeking at the first
/// decompressed bytes.
pub fn detect_format(name: Option<&str>, bytes: &[u8]) -> Result<Format, VolumeError> {
    if bytes.is_empty() {
        return Err(VolumeError::NotRecognized("the file is empty".into()));
    }
    let hinted = name.and_then(Format::from_name);
    if dicom::is_dicom(bytes) {
        return Ok(Format::Dicom);
    }
    if bytes.starts_with(b"NRRD000") {
        return Ok(Format::Nrrd);
    }
    if metaimage::looks_like_metaimage(bytes) {
        return Ok(Format::MetaImage);
    }
    let gz = bounded::is_gzip(bytes);
    let head = if gz {
        bounded::inflate(bytes, bounded::Compression::Gzip, 0, 544).unwrap_or_default()
    } else {
        bytes
            .get(..bytes.len().min(544))
            .unwrap_or_default()
            .to_vec()
    };
    let first4 = head.get(..4).map(|b| [b[0], b[1], b[2], b[3]]);
    let nifti_size = first4.is_some_and(|b| {
        [348, 540].contains(&i32::from_le_bytes(b)) || [348, 540].contains(&i32::from_be_bytes(b))
    });
    match hinted {
        Some(Format::Mgh | Format::Mgz) => return Ok(if gz { Format::Mgz } else { Format::Mgh }),
        Some(Format::Nifti | Format::NiftiGz) => {
            return Ok(if gz { Format::NiftiGz } else { Format::Nifti })
        }
        _ => {}
    }
    if nifti_size {
        return Ok(if gz { Format::NiftiGz } else { Format::Nifti });
    }
    if mgh::looks_like_mgh(&head) {
        return Ok(if gz { Format::Mgz } else { Format::Mgh });
    }
    match hinted {
        Some(f) => Ok(f),
        None => Err(VolumeError::NotRecognized(format!(
            "the content is none of NIfTI, NRRD, MetaImage, MGH or DICOM (it starts with \
             {:02x?})",
            bytes.get(..bytes.len().min(8)).unwrap_or_default()
        ))),
    }
}

/// Reads a volume file of any supported single-file format from its bytes (format detected
/// from the content; see [`read_named`] to pass the file name as a hint).
pub fn read(bytes: &[u8]) -> Result<Volume, VolumeError> {
    read_with_format(None, bytes).map(|(v, _)| v)
}

/// Reads a volume file, using its name as a hint for formats without a magic number (MGH).
pub fn read_named(name: &str, bytes: &[u8]) -> Result<Volume, VolumeError> {
    read_with_format(Some(name), bytes).map(|(v, _)| v)
}

/// Reads a single volume file and says which format it was in.
pub fn read_with_format(name: Option<&str>, bytes: &[u8]) -> Result<(Volume, Format), VolumeError> {
    let format = detect_format(name, bytes)?;
    let volume = match format {
        Format::Nifti | Format::NiftiGz => nifti::read_nifti(bytes)?,
        Format::Nrrd => nrrd::read_nrrd(bytes)?,
        Format::Mgh | Format::Mgz => mgh::read_mgh(bytes)?,
        Format::MetaImage => metaimage::read_mha(bytes)?,
        Format::Dicom => dicom::read_dicom(bytes)?,
    };
    Ok((volume, format))
}

/// What a multi-file selection (a dropped folder, several files) holds.
#[derive(Clone, Debug)]
pub enum FilesContent {
    /// One volume.
    Volume {
        volume: Volume,
        format: Format,
        /// Files that were not used (name, why), e.g. non-DICOM files in a DICOM folder.
        skipped: Vec<(String, String)>,
    },
    /// Several DICOM series: let the user choose one, then call [`dicom::read_series`].
    Series(dicom::SeriesList),
}

/// Reads a selection of files (name, bytes): a single volume file; a `.mhd` or `.nhdr` header
/// with its data file; or DICOM files of one series (several series give
/// [`FilesContent::Series`] unless `series` names the SeriesInstanceUID to read). Files that
/// are not DICOM in a DICOM selection are skipped and listed. Errors name the file they concern.
pub fn read_files(
    files: &[(String, Vec<u8>)],
    series: Option<&str>,
) -> Result<FilesContent, VolumeError> {
    let base = |n: &str| n.rsplit(['/', '\\']).next().unwrap_or(n).to_string();
    let skipped_except = |used: &[&str]| -> Vec<(String, String)> {
        files
            .iter()
            .filter(|(n, _)| !used.contains(&n.as_str()))
            .map(|(n, _)| (n.clone(), "not part of the volume".to_string()))
            .collect()
    };
    // One file of the selection as the volume; the others are reported as skipped.
    let read_one = |name: &str, bytes: &[u8]| -> Result<FilesContent, VolumeError> {
        let (volume, format) =
            read_with_format(Some(name), bytes).map_err(|e| dicom::with_file(e, name))?;
        Ok(FilesContent::Volume {
            volume,
            format,
            skipped: skipped_except(&[name]),
        })
    };
    if let [(name, bytes)] = files {
        return read_one(name, bytes);
    }
    // A detached header and the data file it names.
    for (name, bytes) in files {
        let lower = name.to_ascii_lowercase();
        let (data_name, format) = if lower.ends_with(".mhd") {
            let data = metaimage::data_file_name(bytes).map_err(|e| dicom::with_file(e, name))?;
            (data, Format::MetaImage)
        } else if lower.ends_with(".nhdr") {
            let data = nrrd::data_file_name(bytes).map_err(|e| dicom::with_file(e, name))?;
            (data, Format::Nrrd)
        } else {
            continue;
        };
        let Some(data_name) = data_name else {
            return read_one(name, bytes);
        };
        let wanted = base(&data_name);
        let (data_file, data) = files
            .iter()
            .find(|(n, _)| base(n) == wanted)
            .or_else(|| {
                files
                    .iter()
                    .find(|(n, _)| base(n).eq_ignore_ascii_case(&wanted))
            })
            .ok_or_else(|| {
                VolumeError::NotRecognized(format!(
                    "{name}: its data file \"{data_name}\" is not among the selected files"
                ))
            })?;
        let volume = match format {
            Format::MetaImage => metaimage::read_mhd(bytes, data),
            _ => nrrd::read_nrrd_detached(bytes, data),
        }
        .map_err(|e| dicom::with_file(e, name))?;
        return Ok(FilesContent::Volume {
            volume,
            format,
            skipped: skipped_except(&[name, data_file]),
        });
    }
    let list = dicom::list_series(files)?;
    let chosen = match (list.series.as_slice(), series) {
        ([], _) => {
            // No DICOM: a single readable volume among other files (e.g. with a .json sidecar)?
            let readable: Vec<&(String, Vec<u8>)> = files
                .iter()
                .filter(|(n, b)| detect_format(Some(n), b).is_ok())
                .collect();
            if let [(name, bytes)] = readable.as_slice() {
                return read_one(name, bytes);
            }
            return Err(VolumeError::NotRecognized(format!(
                "none of the {} files is a DICOM image or a single volume file",
                files.len()
            )));
        }
        (all, Some(uid)) => all.iter().find(|s| s.uid == uid).ok_or_else(|| {
            VolumeError::NotRecognized(format!(
                "no DICOM series \"{uid}\" among the files (they hold {})",
                all.iter()
                    .map(|s| format!("\"{}\"", s.uid))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?,
        ([one], None) => one,
        (_, None) => return Ok(FilesContent::Series(list)),
    };
    let volume = dicom::read_series(files, &chosen.uid)?;
    let others = list.series.iter().filter(|s| s.uid != chosen.uid);
    let mut skipped = list.skipped;
    for s in others {
        let why = format!("DICOM series \"{}\" (not the one opened)", s.description);
        skipped.extend(s.files.iter().map(|n| (n.clone(), why.clone())));
    }
    Ok(FilesContent::Volume {
        volume,
        format: Format::Dicom,
        skipped,
    })
}

/// Writes a label map in the format of the input it was computed from (same geometry): NIfTI
/// for NIfTI and DICOM inputs, else the input's own format (`.mgz` and `.mgh`, `.nrrd` gzip,
/// `.mha` compressed). The extension to give the file is [`Format::label_extension`].
pub fn write_labels_like(format: Format, labels: &LabelMap) -> Vec<u8> {
    match format {
        Format::Nifti => nifti::write_labels(labels, false),
        Format::NiftiGz | Format::Dicom => nifti::write_labels(labels, true),
        Format::Nrrd => nrrd::write_labels(labels, true),
        Format::Mgh => mgh::write_labels(labels, false),
        Format::Mgz => mgh::write_labels(labels, true),
        Format::MetaImage => metaimage::write_mha_labels(labels, true),
    }
}

/// A scalar 3-D image: intensities in physical units (scl_slope/scl_inter applied).
#[derive(Clone, Debug)]
pub struct Volume {
    pub geometry: Geometry,
    /// Voxel values, x fastest, then y, then z (the NIfTI on-disk order).
    pub data: Vec<f32>,
}

/// A 3-D label map (segmentation) on some grid.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelMap {
    pub geometry: Geometry,
    /// Label per voxel, x fastest, then y, then z.
    pub labels: Vec<u16>,
}

impl LabelMap {
    /// Interprets an intensity volume (e.g. a reference label file) as labels.
    pub fn from_volume(volume: &Volume) -> Result<LabelMap, VolumeError> {
        let mut labels = Vec::with_capacity(volume.data.len());
        for &v in &volume.data {
            if !(v.is_finite() && v >= 0.0 && v <= u16::MAX as f32 && v.fract() == 0.0) {
                return Err(VolumeError::NotLabels(format!(
                    "voxel value {v} is not a non-negative integer label"
                )));
            }
            labels.push(v as u16);
        }
        Ok(LabelMap {
            geometry: volume.geometry.clone(),
            labels,
        })
    }

    pub fn max_label(&self) -> u16 {
        self.labels.iter().copied().max().unwrap_or(0)
    }
}

/// Why a volume could not be read or written. Messages name the problem; callers add the file name.
#[derive(Debug, Clone, PartialEq)]
pub enum VolumeError {
    /// The bytes are not a file of the expected format at all.
    NotRecognized(String),
    /// The header is present but inconsistent or unsupported.
    BadHeader(String),
    /// The header promises more data than the file holds.
    Truncated(String),
    /// Compressed data could not be decompressed.
    Decompress(String),
    /// A limit that protects memory was exceeded.
    TooLarge(String),
    /// Values that should be integer labels are not.
    NotLabels(String),
}

impl fmt::Display for VolumeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VolumeError::NotRecognized(m) => write!(f, "not a recognized volume file: {m}"),
            VolumeError::BadHeader(m) => write!(f, "bad header: {m}"),
            VolumeError::Truncated(m) => write!(f, "truncated file: {m}"),
            VolumeError::Decompress(m) => write!(f, "cannot decompress: {m}"),
            VolumeError::TooLarge(m) => write!(f, "too large: {m}"),
            VolumeError::NotLabels(m) => write!(f, "not a label volume: {m}"),
        }
    }
}

impl std::error::Error for VolumeError {}

/// The sub-volume `start .. start + size` (voxel indices), with the affine moved so every
/// kept voxel stays where it was in world space.
pub fn crop(volume: &Volume, start: [usize; 3], size: [usize; 3]) -> Result<Volume, VolumeError> {
    let dims = volume.geometry.dims;
    for a in 0..3 {
        if size[a] == 0
            || start[a]
                .checked_add(size[a])
                .is_none_or(|end| end > dims[a])
        {
            return Err(VolumeError::BadHeader(format!(
                "crop box start {start:?} size {size:?} does not fit inside dims {dims:?}"
            )));
        }
    }
    let mut data = Vec::with_capacity(size.iter().product());
    for k in start[2]..start[2] + size[2] {
        for j in start[1]..start[1] + size[1] {
            let row = (k * dims[1] + j) * dims[0];
            data.extend_from_slice(&volume.data[row + start[0]..row + start[0] + size[0]]);
        }
    }
    let mut geometry = volume.geometry.clone();
    let origin = geometry.voxel_to_world([start[0] as f64, start[1] as f64, start[2] as f64]);
    for (r, o) in origin.iter().enumerate() {
        geometry.affine[r][3] = *o;
    }
    geometry.dims = size;
    Ok(Volume { geometry, data })
}
