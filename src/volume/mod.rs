//! Volumes, their geometry, and the readers and writers for volume files.

mod bounded;
pub mod dicom;
mod geometry;
pub mod metaimage;
pub mod mgh;
pub mod modality;
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

/// One 3-D volume of an input that holds several: a 4-D NIfTI (fMRI, DWI) or MGH, or a DICOM
/// series with several volumes at the same slice positions (time points, echoes, b-values).
/// What DICOM says about each is kept where the files give it.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct VolumeChoice {
    /// From 0, as `--volume` and [`open_files`] take it.
    pub index: usize,
    /// What tells it apart from the others, e.g. "echo 2 (TE 4.92 ms), acquisition 1",
    /// "b = 1000 s/mm², gradient (1, 0, 0)", "volume 2 of 3, t = 2 s".
    pub description: String,
    /// DICOM EchoNumbers (0018,0086).
    pub echo_number: Option<i64>,
    /// DICOM EchoTime (0018,0081), or EffectiveEchoTime (0018,9082) of a multi-frame file.
    pub echo_time_ms: Option<f64>,
    /// DICOM DiffusionBValue (0018,9087) (Siemens: its private B_value).
    pub b_value: Option<f64>,
    /// DICOM DiffusionGradientOrientation (0018,9089) (Siemens: its private direction).
    pub gradient: Option<[f64; 3]>,
    /// DICOM AcquisitionNumber (0020,0012).
    pub acquisition_number: Option<i64>,
    /// DICOM TemporalPositionIdentifier (0020,0100), or TemporalPositionIndex (0020,9128).
    pub temporal_position: Option<i64>,
    /// DICOM TriggerTime (0018,1060), or NominalCardiacTriggerDelayTime (0020,9153).
    pub trigger_time_ms: Option<f64>,
    /// NIfTI: the volume's time, its index times the header's `pixdim[4]`, when the time unit
    /// is set.
    pub time_s: Option<f64>,
}

/// Most volumes an input may hold (a 4-D header claiming more is refused).
pub const MAX_VOLUMES: usize = 1 << 16;

/// `volume` (default 0) checked against the `count` volumes that `what` holds.
pub(crate) fn pick_volume(
    volume: Option<usize>,
    count: usize,
    what: &str,
) -> Result<usize, VolumeError> {
    let k = volume.unwrap_or(0);
    if k < count {
        return Ok(k);
    }
    Err(VolumeError::NoSuchVolume(match count {
        0 => format!("there is no volume {k}: {what} holds none"),
        1 => format!("there is no volume {k}: {what} holds a single volume (volume 0)"),
        n => format!(
            "there is no volume {k}: {what} holds {n} volumes, numbered 0 to {}",
            n - 1
        ),
    }))
}

/// The volume list of a NIfTI or MGH file with `frames` volumes.
fn numbered_volumes(
    frames: usize,
    seconds: Option<f64>,
    what: &str,
) -> Result<Vec<VolumeChoice>, VolumeError> {
    if frames > MAX_VOLUMES {
        return Err(VolumeError::TooLarge(format!(
            "{what} claims {frames} volumes: insitu reads files of at most {MAX_VOLUMES}"
        )));
    }
    Ok((0..frames)
        .map(|index| {
            let time_s = seconds.map(|s| s * index as f64);
            let mut description = format!("volume {} of {frames}", index + 1);
            if let Some(t) = time_s {
                description.push_str(&format!(", t = {} s", (t * 1e4).round() / 1e4));
            }
            VolumeChoice {
                index,
                description,
                time_s,
                ..VolumeChoice::default()
            }
        })
        .collect())
}

/// A volume opened from a selection of files, and the volumes it was chosen from.
#[derive(Clone, Debug)]
pub struct OpenedVolume {
    pub volume: Volume,
    pub format: Format,
    /// Files that were not used (name, why), e.g. non-DICOM files in a DICOM folder.
    pub skipped: Vec<(String, String)>,
    /// Every 3-D volume the input holds (a single entry for a 3-D input), in the order
    /// [`open_files`]'s `volume` numbers them.
    pub volumes: Vec<VolumeChoice>,
    /// Which of them `volume` is.
    pub chosen: usize,
}

/// What [`open_files`] found.
#[derive(Clone, Debug)]
pub enum Opened {
    Volume(OpenedVolume),
    /// Several DICOM series: let the user choose one, then call [`open_files`] with its UID.
    Series(dicom::SeriesList),
}

/// One file read as volume `volume` (default 0) of those it holds.
fn read_one_volume(
    name: &str,
    bytes: &[u8],
    volume: Option<usize>,
) -> Result<(Volume, Format, Vec<VolumeChoice>, usize), VolumeError> {
    let format = detect_format(Some(name), bytes)?;
    let (v, volumes, chosen) = match format {
        Format::Nifti | Format::NiftiGz => {
            let info = nifti::read_nifti_header(bytes)?;
            let volumes = numbered_volumes(info.frames, info.frame_seconds, "the NIfTI file")?;
            let k = pick_volume(volume, info.frames, "the NIfTI file")?;
            (nifti::read_nifti_volume(bytes, k)?, volumes, k)
        }
        Format::Mgh | Format::Mgz => {
            let frames = mgh::frame_count(bytes)?;
            let volumes = numbered_volumes(frames, None, "the MGH file")?;
            let k = pick_volume(volume, frames, "the MGH file")?;
            (mgh::read_mgh_frame(bytes, k)?, volumes, k)
        }
        Format::Dicom => dicom::read_dicom_volume(bytes, volume)?,
        _ => {
            pick_volume(volume, 1, &format!("the {} file", format.name()))?;
            let (v, _) = read_with_format(Some(name), bytes)?;
            (v, numbered_volumes(1, None, "")?, 0)
        }
    };
    Ok((v, format, volumes, chosen))
}

/// Reads a selection of files (name, bytes): a single volume file; a `.mhd` or `.nhdr` header
/// with its data file; or DICOM files of one series (several series give
/// [`Opened::Series`] unless `series` names the SeriesInstanceUID to read). Of an input holding
/// several 3-D volumes (a 4-D NIfTI or MGH, a DICOM series with several volumes at the same
/// positions) it reads volume `volume` (from 0; default the first, in dcm2niix's order for
/// DICOM) and lists them all ([`OpenedVolume::volumes`]); a volume it does not hold is a
/// [`VolumeError::NoSuchVolume`] saying how many there are. Files that are not DICOM in a DICOM
/// selection are skipped and listed. Errors name the file they concern.
pub fn open_files(
    files: &[(String, Vec<u8>)],
    series: Option<&str>,
    volume: Option<usize>,
) -> Result<Opened, VolumeError> {
    let base = |n: &str| n.rsplit(['/', '\\']).next().unwrap_or(n).to_string();
    let skipped_except = |used: &[&str]| -> Vec<(String, String)> {
        files
            .iter()
            .filter(|(n, _)| !used.contains(&n.as_str()))
            .map(|(n, _)| (n.clone(), "not part of the volume".to_string()))
            .collect()
    };
    // One file of the selection as the volume; the others are reported as skipped.
    let read_one = |name: &str, bytes: &[u8]| -> Result<Opened, VolumeError> {
        let (v, format, volumes, chosen) =
            read_one_volume(name, bytes, volume).map_err(|e| dicom::with_file(e, name))?;
        Ok(Opened::Volume(OpenedVolume {
            volume: v,
            format,
            skipped: skipped_except(&[name]),
            volumes,
            chosen,
        }))
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
        pick_volume(volume, 1, &format!("the {} file", format.name()))
            .map_err(|e| dicom::with_file(e, name))?;
        let v = match format {
            Format::MetaImage => metaimage::read_mhd(bytes, data),
            _ => nrrd::read_nrrd_detached(bytes, data),
        }
        .map_err(|e| dicom::with_file(e, name))?;
        return Ok(Opened::Volume(OpenedVolume {
            volume: v,
            format,
            skipped: skipped_except(&[name, data_file]),
            volumes: numbered_volumes(1, None, "")?,
            chosen: 0,
        }));
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
        (_, None) => return Ok(Opened::Series(list)),
    };
    let (v, volumes, k) = dicom::read_series_volume(files, &chosen.uid, volume)?;
    let others = list.series.iter().filter(|s| s.uid != chosen.uid);
    let mut skipped = list.skipped;
    for s in others {
        let why = format!("DICOM series \"{}\" (not the one opened)", s.description);
        skipped.extend(s.files.iter().map(|n| (n.clone(), why.clone())));
    }
    Ok(Opened::Volume(OpenedVolume {
        volume: v,
        format: Format::Dicom,
        skipped,
        volumes,
        chosen: k,
    }))
}

// ---------------------------------------------------------------------------------------------
// Memory an input needs, from its header alone

/// The heap of a wasm32 module can grow to at most 4 GiB.
pub const WASM32_MEMORY_LIMIT: u64 = 4 << 30;

/// What opening an input and segmenting it holds in memory at least, known from its header
/// before any voxel is read.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MemoryNeed {
    /// The grid of the one volume that is read.
    pub dims: [usize; 3],
    /// 3-D volumes the input holds (only one is read).
    pub volumes: usize,
    /// Bytes per voxel as stored (2 for int16, ...).
    pub stored_bytes_per_voxel: usize,
    /// The input file(s) themselves, held while they are read (compressed size for `.nii.gz`).
    pub file_bytes: u64,
    /// The volume read: one float32 per voxel.
    pub volume_bytes: u64,
    /// A label map on the volume's grid: one u16 per voxel.
    pub labels_bytes: u64,
    /// `file_bytes + volume_bytes + labels_bytes`. A model's activations come on top (the CPU
    /// path keeps them within `--max-memory` by running in slabs).
    pub total_bytes: u64,
}

/// `bytes` in the largest binary unit that keeps a number of at least 1 ("1.5 GiB").
pub fn human_bytes(bytes: u64) -> String {
    let units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{} {}", (v * 10.0).round() / 10.0, units[u])
    }
}

impl MemoryNeed {
    fn new(dims: [usize; 3], volumes: usize, stored: usize, file_bytes: u64) -> MemoryNeed {
        let voxels = dims.iter().map(|&d| d as u64).product::<u64>();
        let volume_bytes = voxels.saturating_mul(4);
        let labels_bytes = voxels.saturating_mul(2);
        MemoryNeed {
            dims,
            volumes,
            stored_bytes_per_voxel: stored,
            file_bytes,
            volume_bytes,
            labels_bytes,
            total_bytes: file_bytes
                .saturating_add(volume_bytes)
                .saturating_add(labels_bytes),
        }
    }

    /// "512 x 512 x 800 voxels: about 1.4 GiB (input 202.5 MiB, 800 MiB of float32 voxels,
    /// 400 MiB of labels)".
    pub fn describe(&self) -> String {
        let d = self.dims;
        let of = if self.volumes > 1 {
            format!(" (one of {} volumes)", self.volumes)
        } else {
            String::new()
        };
        format!(
            "{} x {} x {} voxels{of}: about {} (input {}, {} of float32 voxels, {} of labels)",
            d[0],
            d[1],
            d[2],
            human_bytes(self.total_bytes),
            human_bytes(self.file_bytes),
            human_bytes(self.volume_bytes),
            human_bytes(self.labels_bytes)
        )
    }

    /// An error (before anything is loaded) when the input needs more than `limit` bytes,
    /// giving its size and the limit.
    pub fn check(&self, limit: u64) -> Result<(), VolumeError> {
        if self.total_bytes <= limit {
            return Ok(());
        }
        Err(VolumeError::TooLarge(format!(
            "the volume is {}, more than the {} this can hold; open it with the insitu \
             command-line tool, or crop or downsample it first",
            self.describe(),
            human_bytes(limit)
        )))
    }
}

/// The memory opening a file needs, from its first bytes (`head`: e.g. the first
/// [`dicom::HEAD_BYTES`], or the whole file) and its size: NIfTI (`.nii`, and `.nii.gz` from
/// its first compressed bytes), MGH/MGZ and single DICOM files. A DICOM series is estimated
/// from its listing with [`memory_need_of_series`]. Other formats are an error (read them to
/// know).
pub fn memory_need(
    name: Option<&str>,
    head: &[u8],
    file_size: u64,
) -> Result<MemoryNeed, VolumeError> {
    match detect_format(name, head)? {
        Format::Nifti | Format::NiftiGz => {
            let info = nifti::read_nifti_header(head)?;
            Ok(MemoryNeed::new(
                info.geometry.dims,
                info.frames,
                info.bytes_per_voxel,
                file_size,
            ))
        }
        Format::Mgh | Format::Mgz => {
            let (dims, frames, stored) = mgh::grid(head)?;
            Ok(MemoryNeed::new(dims, frames, stored, file_size))
        }
        Format::Dicom => {
            let listing = dicom::list_series_heads(&[dicom::FileHead {
                name: name.unwrap_or("the file").to_string(),
                bytes: head.to_vec(),
                size: file_size,
            }])?;
            if !listing.need_more.is_empty() {
                return Err(VolumeError::Truncated(format!(
                    "the DICOM header goes on beyond the first {} bytes: pass more of the file",
                    head.len()
                )));
            }
            let series = listing.list.series.first().ok_or_else(|| {
                VolumeError::NotRecognized(
                    listing
                        .list
                        .skipped
                        .first()
                        .map(|(_, why)| why.clone())
                        .unwrap_or_else(|| "not a DICOM image".into()),
                )
            })?;
            Ok(memory_need_of_series(series, file_size))
        }
        other => Err(VolumeError::NotRecognized(format!(
            "insitu estimates memory from NIfTI, MGH and DICOM headers; a {} file has to be read \
             to know",
            other.name()
        ))),
    }
}

/// The memory reading one volume of a listed DICOM series needs; `file_bytes` is the total
/// size of its files (they are all held while the series is read).
pub fn memory_need_of_series(series: &dicom::SeriesInfo, file_bytes: u64) -> MemoryNeed {
    let volumes = series.volumes.len().max(1);
    let voxels = (series.frames as u64).max(1);
    let stored = (series.stored_bytes / voxels / (series.dims[0] * series.dims[1]).max(1) as u64)
        .max(1) as usize;
    MemoryNeed::new(series.dims, volumes, stored, file_bytes)
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
    /// The volume asked for (of a 4-D input) is not among those the input holds.
    NoSuchVolume(String),
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
            VolumeError::NoSuchVolume(m) => write!(f, "{m}"),
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
