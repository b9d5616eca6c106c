//! DICOM images: a series of single-slice files, or one multi-frame file, becomes one volume.
//!
//! Parsing is dicom-rs's (`dicom-object`), compressed pixel data is decoded by
//! `dicom-pixeldata`'s pure-Rust codecs (JPEG baseline, extended and lossless, RLE, JPEG 2000);
//! other compressed transfer syntaxes (JPEG-LS, JPEG XL, HTJ2K, video, deflate) fail with an error
//! that names the syntax.
//!
//! Geometry follows dcm2niix: frames are sorted by the projection of ImagePositionPatient onto
//! the slice normal (ImageOrientationPatient row x column direction), the slice step is taken
//! from the positions (first to last, divided by the count; not SliceThickness), and the affine
//! maps (column index, row index, slice) to DICOM's LPS world, then x and y are negated for
//! NIfTI's RAS+. Voxel values are the stored values times RescaleSlope plus RescaleIntercept.
//! Enhanced multi-frame files take these attributes from their functional groups.
//!
//! Nothing a header says is trusted for allocation: before dicom-rs parses a file, a pre-scan
//! of the element structure checks that every value length fits inside the file (dicom-rs
//! would otherwise allocate a value of the length an element header claims), and nesting is
//! limited; native pixel data must be all there before it is converted, compressed frames are
//! checked against the image size and a compression-ratio bound before a codec sees them.

use super::bounded::{check_grid, cross, dot, geometry_from_lps, norm};
use super::nifti::MAX_VOXELS;
use super::{pick_volume, Geometry, Volume, VolumeChoice, VolumeError};
use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::value::Value as DicomValue;
use dicom_core::{Tag, VR};
use dicom_dictionary_std::{tags, StandardDataDictionary};
use dicom_object::file::ReadPreamble;
use dicom_object::mem::InMemDicomObject;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use dicom_pixeldata::PixelDecoder;

/// Deepest nesting of sequences accepted.
const MAX_DEPTH: usize = 32;
/// Largest frame (rows x columns) accepted.
pub const MAX_FRAME_PIXELS: usize = 1 << 26;
/// Compressed pixel data may expand at most this much (plus [`RATIO_ALLOWANCE`] bytes).
const MAX_COMPRESSION_RATIO: usize = 1024;
const RATIO_ALLOWANCE: usize = 4 << 20;

const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
const EXPLICIT_BE: &str = "1.2.840.10008.1.2.2";
const DEFLATED: &str = "1.2.840.10008.1.2.1.99";

/// One series found among the files.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SeriesInfo {
    /// SeriesInstanceUID (may be empty in anonymized data); the key for [`read_series`].
    pub uid: String,
    pub description: String,
    pub number: Option<i64>,
    pub modality: String,
    /// Names of the files of the series.
    pub files: Vec<String>,
    /// Grid of one volume: columns, rows, slices (all frames of the series when it cannot be
    /// placed as volumes, see `problem`).
    pub dims: [usize; 3],
    /// Frames (slices) over all files: `dims[2]` times the number of volumes.
    pub frames: usize,
    /// The volumes at the same slice positions (one for a 3-D series), in the order
    /// [`read_series_volume`] numbers them; empty when `problem` says why there are none.
    pub volumes: Vec<VolumeChoice>,
    /// Bytes of pixel data the files hold, uncompressed (all volumes).
    pub stored_bytes: u64,
    /// Why the series cannot be read (e.g. uneven slices), found from the headers alone.
    pub problem: Option<String>,
}

/// The series in a set of files and the files that are not DICOM images.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SeriesList {
    pub series: Vec<SeriesInfo>,
    /// Names of the files that were skipped (not DICOM, DICOMDIR, no pixel data, ...), each with
    /// the reason.
    pub skipped: Vec<(String, String)>,
}

/// Whether the bytes are a DICOM file (the "DICM" marker after the 128-byte preamble).
pub fn is_dicom(bytes: &[u8]) -> bool {
    bytes.get(128..132) == Some(b"DICM")
}

/// Reads one DICOM file (a single slice or a multi-frame image) as a volume; of a multi-frame
/// file holding several volumes, the first (see [`read_dicom_volume`]).
pub fn read_dicom(bytes: &[u8]) -> Result<Volume, VolumeError> {
    Ok(read_dicom_volume(bytes, None)?.0)
}

/// Reads volume `volume` (default the first) of one DICOM file, with the list of the volumes
/// it holds and the index of the one read.
pub fn read_dicom_volume(
    bytes: &[u8],
    volume: Option<usize>,
) -> Result<(Volume, Vec<VolumeChoice>, usize), VolumeError> {
    let inst = Instance::parse("", bytes, bytes.len() as u64).map_err(VolumeError::from)?;
    read_planned(&[&inst], &[bytes], volume)
}

/// The first bytes of a file (or all of it), for listing series from headers alone.
#[derive(Clone, Debug)]
pub struct FileHead {
    pub name: String,
    /// The file's first bytes, e.g. `File.slice(0, HEAD_BYTES)`; the whole file when shorter.
    pub bytes: Vec<u8>,
    /// The file's size in bytes.
    pub size: u64,
}

/// Bytes of a file's start that hold the header of most DICOM files (PixelData comes after
/// the header; Siemens' private CSA headers can push it beyond 64 KiB, see
/// [`HeadListing::need_more`]).
pub const HEAD_BYTES: usize = 64 << 10;

/// The series found in the heads of files, and the files whose header runs past the bytes given.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct HeadListing {
    /// The series of every file whose header was complete, and the files skipped.
    pub list: SeriesList,
    /// Files whose header (everything before PixelData) goes on beyond the bytes given: call
    /// [`list_series_heads`] again with more of each (e.g. 4x as many bytes, or the whole file)
    /// and every other file as before; the list is then the one [`list_series`] gives.
    pub need_more: Vec<String>,
}

/// Lists the image series among `files` (name, bytes). Files that are not DICOM images are
/// skipped and listed in [`SeriesList::skipped`]; a file that is DICOM but broken is an error.
/// Only headers are read: pixel data is neither decoded nor copied.
pub fn list_series(files: &[(String, Vec<u8>)]) -> Result<SeriesList, VolumeError> {
    let heads = files
        .iter()
        .map(|(name, bytes)| (name.as_str(), bytes.as_slice(), bytes.len() as u64));
    Ok(list_impl(heads)?.list)
}

/// Lists the image series from the first bytes of each file ([`FileHead`]): the same list as
/// [`list_series`] on the whole files, except that files whose header is longer than the bytes
/// given are named in [`HeadListing::need_more`] instead.
pub fn list_series_heads(heads: &[FileHead]) -> Result<HeadListing, VolumeError> {
    list_impl(
        heads
            .iter()
            .map(|h| (h.name.as_str(), h.bytes.as_slice(), h.size)),
    )
}

fn list_impl<'a>(
    heads: impl Iterator<Item = (&'a str, &'a [u8], u64)>,
) -> Result<HeadListing, VolumeError> {
    let mut groups: Vec<(String, Vec<Instance>)> = Vec::new();
    let mut skipped = Vec::new();
    let mut need_more = Vec::new();
    for (name, bytes, size) in heads {
        let inst = match classify(name, bytes, size)? {
            Parsed::Image(inst) => inst,
            Parsed::Skip(reason) => {
                skipped.push((name.to_string(), reason));
                continue;
            }
            Parsed::NeedMore => {
                need_more.push(name.to_string());
                continue;
            }
        };
        match groups.iter_mut().find(|(uid, _)| *uid == inst.series_uid) {
            Some((_, list)) => list.push(inst),
            None => groups.push((inst.series_uid.clone(), vec![inst])),
        }
    }
    let mut series: Vec<SeriesInfo> = groups
        .iter()
        .map(|(uid, instances)| series_info(uid, instances))
        .collect();
    series.sort_by(|a, b| a.number.cmp(&b.number).then_with(|| a.uid.cmp(&b.uid)));
    Ok(HeadListing {
        list: SeriesList { series, skipped },
        need_more,
    })
}

fn series_info(uid: &str, instances: &[Instance]) -> SeriesInfo {
    let first = &instances[0];
    let frames: usize = instances.iter().map(|i| i.frames.len()).sum();
    let stored_bytes = instances
        .iter()
        .map(|i| (i.frames.len() * i.frame_pixels()) as u64 * u64::from(i.bits_allocated) / 8)
        .sum();
    let refs: Vec<&Instance> = instances.iter().collect();
    let (dims, volumes, problem) = match plan(&refs) {
        Ok(p) => (p.dims, p.choices, None),
        Err(e) => (
            [usize::from(first.cols), usize::from(first.rows), frames],
            Vec::new(),
            Some(e.to_string()),
        ),
    };
    SeriesInfo {
        uid: uid.to_string(),
        description: first.description.clone(),
        number: first.series_number,
        modality: first.modality.clone(),
        files: instances.iter().map(|i| i.name.clone()).collect(),
        dims,
        frames,
        volumes,
        stored_bytes,
        problem,
    }
}

/// Reads the series with SeriesInstanceUID `uid` from `files` as one volume (other files are
/// ignored); of a series holding several volumes, the first (see [`read_series_volume`]).
pub fn read_series(files: &[(String, Vec<u8>)], uid: &str) -> Result<Volume, VolumeError> {
    Ok(read_series_volume(files, uid, None)?.0)
}

/// Reads volume `volume` (default the first, in dcm2niix's order) of the series with
/// SeriesInstanceUID `uid`, with the list of its volumes and the index of the one read. Only the
/// chosen volume's pixel data is decoded, one file at a time, into the output.
pub fn read_series_volume(
    files: &[(String, Vec<u8>)],
    uid: &str,
    volume: Option<usize>,
) -> Result<(Volume, Vec<VolumeChoice>, usize), VolumeError> {
    let mut instances = Vec::new();
    let mut bytes = Vec::new();
    for (name, b) in files {
        if let Parsed::Image(inst) = classify(name, b, b.len() as u64)? {
            if inst.series_uid == uid {
                instances.push(inst);
                bytes.push(b.as_slice());
            }
        }
    }
    if instances.is_empty() {
        return Err(VolumeError::NotRecognized(format!(
            "no DICOM image of series \"{uid}\" among the {} files",
            files.len()
        )));
    }
    let refs: Vec<&Instance> = instances.iter().collect();
    read_planned(&refs, &bytes, volume)
}

/// What a file of a folder is.
enum Parsed {
    Image(Instance),
    /// Not DICOM, or DICOM without pixel data such as a DICOMDIR: skipped, with the reason.
    Skip(String),
    /// Only the first bytes were given and the header goes on past them.
    NeedMore,
}

/// Parses a file's header (`bytes` may be the first bytes of a file of `size` bytes); Err for
/// a broken DICOM image.
fn classify(name: &str, bytes: &[u8], size: u64) -> Result<Parsed, VolumeError> {
    // Fewer than 132 bytes of a longer file cannot tell yet (the marker ends at byte 132).
    if (bytes.len() >= 132 || bytes.len() as u64 == size) && !is_dicom(bytes) {
        return Ok(Parsed::Skip("not a DICOM file".into()));
    }
    match Instance::parse(name, bytes, size) {
        Ok(inst) => Ok(Parsed::Image(inst)),
        Err(Skip::NotImage(reason)) => Ok(Parsed::Skip(reason)),
        Err(Skip::NeedMore) => Ok(Parsed::NeedMore),
        Err(Skip::Error(e)) => Err(with_file(e, name)),
    }
}

/// Why a DICOM file is not read as an image.
enum Skip {
    /// Valid DICOM, but not an image (DICOMDIR, structured report, ...).
    NotImage(String),
    /// The bytes given end inside the header.
    NeedMore,
    Error(VolumeError),
}

impl From<VolumeError> for Skip {
    fn from(e: VolumeError) -> Skip {
        Skip::Error(e)
    }
}

impl From<Skip> for VolumeError {
    fn from(s: Skip) -> VolumeError {
        match s {
            Skip::Error(e) => e,
            Skip::NotImage(reason) => VolumeError::NotRecognized(reason),
            Skip::NeedMore => VolumeError::Truncated("the DICOM header is cut off".into()),
        }
    }
}

/// Name of a transfer syntax, for messages.
pub fn transfer_syntax_name(uid: &str) -> &'static str {
    match uid {
        IMPLICIT_LE => "Implicit VR Little Endian",
        EXPLICIT_LE => "Explicit VR Little Endian",
        EXPLICIT_BE => "Explicit VR Big Endian",
        DEFLATED => "Deflated Explicit VR Little Endian",
        "1.2.840.10008.1.2.1.98" => "Encapsulated Uncompressed Explicit VR Little Endian",
        "1.2.840.10008.1.2.4.50" => "JPEG Baseline (Process 1)",
        "1.2.840.10008.1.2.4.51" => "JPEG Extended (Process 2 & 4)",
        "1.2.840.10008.1.2.4.57" => "JPEG Lossless, Non-Hierarchical (Process 14)",
        "1.2.840.10008.1.2.4.70" => "JPEG Lossless, Non-Hierarchical, First-Order Prediction",
        "1.2.840.10008.1.2.4.80" => "JPEG-LS Lossless",
        "1.2.840.10008.1.2.4.81" => "JPEG-LS Lossy (Near-Lossless)",
        "1.2.840.10008.1.2.4.90" => "JPEG 2000 Image Compression (Lossless Only)",
        "1.2.840.10008.1.2.4.91" => "JPEG 2000 Image Compression",
        "1.2.840.10008.1.2.4.92" => "JPEG 2000 Part 2 Multi-component (Lossless Only)",
        "1.2.840.10008.1.2.4.93" => "JPEG 2000 Part 2 Multi-component",
        "1.2.840.10008.1.2.4.94" => "JPIP Referenced",
        "1.2.840.10008.1.2.4.100" | "1.2.840.10008.1.2.4.101" => "MPEG2 video",
        "1.2.840.10008.1.2.4.102"
        | "1.2.840.10008.1.2.4.103"
        | "1.2.840.10008.1.2.4.104"
        | "1.2.840.10008.1.2.4.105"
        | "1.2.840.10008.1.2.4.106" => "MPEG-4 AVC/H.264 video",
        "1.2.840.10008.1.2.4.107" | "1.2.840.10008.1.2.4.108" => "HEVC/H.265 video",
        "1.2.840.10008.1.2.4.110" => "JPEG XL Lossless",
        "1.2.840.10008.1.2.4.111" => "JPEG XL JPEG Recompression",
        "1.2.840.10008.1.2.4.112" => "JPEG XL",
        "1.2.840.10008.1.2.4.201" => "High-Throughput JPEG 2000 (Lossless Only)",
        "1.2.840.10008.1.2.4.202" => "High-Throughput JPEG 2000 with RPCL Options (Lossless Only)",
        "1.2.840.10008.1.2.4.203" => "High-Throughput JPEG 2000",
        "1.2.840.10008.1.2.5" => "RLE Lossless",
        _ => "unknown transfer syntax",
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PixelCodec {
    Native,
    Jpeg,
    Jpeg2000,
    Rle,
    /// Encapsulated but not compressed.
    Fragments,
}

fn pixel_codec(ts: &str) -> Result<PixelCodec, VolumeError> {
    Ok(match ts {
        IMPLICIT_LE | EXPLICIT_LE | EXPLICIT_BE => PixelCodec::Native,
        "1.2.840.10008.1.2.4.50"
        | "1.2.840.10008.1.2.4.51"
        | "1.2.840.10008.1.2.4.57"
        | "1.2.840.10008.1.2.4.70" => PixelCodec::Jpeg,
        "1.2.840.10008.1.2.4.90" | "1.2.840.10008.1.2.4.91" => PixelCodec::Jpeg2000,
        "1.2.840.10008.1.2.5" => PixelCodec::Rle,
        "1.2.840.10008.1.2.1.98" => PixelCodec::Fragments,
        other => {
            let name = transfer_syntax_name(other);
            let what = if name == "unknown transfer syntax" {
                format!("the transfer syntax {other} is unknown")
            } else {
                format!("the transfer syntax {name} ({other}) is not supported")
            };
            return Err(VolumeError::BadHeader(format!(
                "{what}: insitu decodes uncompressed, JPEG (baseline, extended, lossless), JPEG \
                 2000 and RLE pixel data; convert the series, e.g. with `gdcmconv --raw` or \
                 `dcmdjpeg`"
            )));
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Pre-scan: every element length checked against the file before dicom-rs allocates it.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Enc {
    ExplicitLe,
    ImplicitLe,
    ExplicitBe,
}

struct Scan<'a> {
    b: &'a [u8],
    /// Stop at the top-level PixelData element instead of walking it (header-only reading).
    stop_at_pixels: bool,
    /// The top-level PixelData element: where it starts, where its value starts, and its
    /// length (`UNDEFINED` for encapsulated data).
    pixels: std::cell::Cell<Option<(usize, usize, u32)>>,
}

const UNDEFINED: u32 = 0xFFFF_FFFF;
const ITEM: (u16, u16) = (0xFFFE, 0xE000);
const ITEM_END: (u16, u16) = (0xFFFE, 0xE00D);
const SEQ_END: (u16, u16) = (0xFFFE, 0xE0DD);

struct Head {
    tag: (u16, u16),
    vr: Option<VR>,
    len: u32,
    /// Bytes of the header.
    size: usize,
}

fn broken(m: String) -> VolumeError {
    VolumeError::BadHeader(m)
}

impl Scan<'_> {
    fn u16(&self, pos: usize, enc: Enc) -> Option<u16> {
        let s = self.b.get(pos..pos.checked_add(2)?)?;
        let a = [s[0], s[1]];
        Some(if enc == Enc::ExplicitBe {
            u16::from_be_bytes(a)
        } else {
            u16::from_le_bytes(a)
        })
    }

    fn u32(&self, pos: usize, enc: Enc) -> Option<u32> {
        let s = self.b.get(pos..pos.checked_add(4)?)?;
        let a = [s[0], s[1], s[2], s[3]];
        Some(if enc == Enc::ExplicitBe {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        })
    }

    fn head(&self, pos: usize, enc: Enc) -> Result<Head, VolumeError> {
        let cut = || {
            VolumeError::Truncated(format!(
                "the DICOM element header at byte {pos} is cut off by the end of the file \
                 ({} bytes)",
                self.b.len()
            ))
        };
        let group = self.u16(pos, enc).ok_or_else(cut)?;
        let element = self.u16(pos + 2, enc).ok_or_else(cut)?;
        let tag = (group, element);
        if group == 0xFFFE || enc == Enc::ImplicitLe {
            let len = self.u32(pos + 4, enc).ok_or_else(cut)?;
            let vr = (enc == Enc::ImplicitLe && group != 0xFFFE).then(|| {
                StandardDataDictionary
                    .by_tag(Tag(group, element))
                    .map(|e| e.vr().relaxed())
                    .unwrap_or(VR::UN)
            });
            return Ok(Head {
                tag,
                vr,
                len,
                size: 8,
            });
        }
        let code = self.b.get(pos + 4..pos + 6).ok_or_else(cut)?;
        let vr = VR::from_binary([code[0], code[1]]).unwrap_or(VR::UN);
        use VR::*;
        let short = matches!(
            vr,
            AE | AS
                | AT
                | CS
                | DA
                | DS
                | DT
                | FL
                | FD
                | IS
                | LO
                | LT
                | PN
                | SH
                | SL
                | SS
                | ST
                | TM
                | UI
                | UL
                | US
        );
        if short {
            let len = u32::from(self.u16(pos + 6, enc).ok_or_else(cut)?);
            Ok(Head {
                tag,
                vr: Some(vr),
                len,
                size: 8,
            })
        } else {
            let len = self.u32(pos + 8, enc).ok_or_else(cut)?;
            Ok(Head {
                tag,
                vr: Some(vr),
                len,
                size: 12,
            })
        }
    }

    /// End of a value of `len` bytes at `start`, checked against `end`.
    fn value_end(&self, h: &Head, start: usize, end: usize) -> Result<usize, VolumeError> {
        start
            .checked_add(h.len as usize)
            .filter(|&e| e <= end)
            .ok_or_else(|| {
                VolumeError::Truncated(format!(
                    "DICOM element ({:04X},{:04X}) at byte {} claims {} bytes but only {} remain",
                    h.tag.0,
                    h.tag.1,
                    start.saturating_sub(h.size),
                    h.len,
                    end.saturating_sub(start)
                ))
            })
    }

    /// Walks a data set from `pos` up to `end`. `item` is true inside an undefined-length item,
    /// which ends at its delimiter (returned position is after it).
    fn dataset(
        &self,
        mut pos: usize,
        end: usize,
        enc: Enc,
        depth: usize,
        item: bool,
    ) -> Result<usize, VolumeError> {
        if depth > MAX_DEPTH {
            return Err(broken(format!(
                "DICOM sequences are nested more than {MAX_DEPTH} deep"
            )));
        }
        while pos < end {
            let h = self.head(pos, enc)?;
            let start = pos + h.size;
            match h.tag {
                ITEM_END if item => return Ok(start),
                ITEM_END | SEQ_END | ITEM => {
                    return Err(broken(format!(
                        "unexpected DICOM delimiter ({:04X},{:04X}) at byte {pos}",
                        h.tag.0, h.tag.1
                    )))
                }
                _ => {}
            }
            if depth == 0 && !item && h.tag == (0x7FE0, 0x0010) {
                self.pixels.set(Some((pos, start, h.len)));
                if self.stop_at_pixels {
                    return Ok(pos);
                }
            }
            if h.len == UNDEFINED {
                if h.tag == (0x7FE0, 0x0010) {
                    pos = self.fragments(start, end, enc)?;
                } else {
                    pos = self.sequence(start, end, enc, depth + 1, true)?;
                }
            } else {
                let value_end = self.value_end(&h, start, end)?;
                check_value_multiple(&h)?;
                if h.vr == Some(VR::SQ) {
                    self.sequence(start, value_end, enc, depth + 1, false)?;
                }
                pos = value_end;
            }
        }
        if item {
            return Err(VolumeError::Truncated(
                "a DICOM sequence item has no end (item delimiter missing)".into(),
            ));
        }
        Ok(pos)
    }

    /// Walks the items of a sequence starting at `pos`. A defined-length sequence ends at `end`;
    /// an undefined one at its delimiter (the returned position is after it).
    fn sequence(
        &self,
        mut pos: usize,
        end: usize,
        enc: Enc,
        depth: usize,
        undefined: bool,
    ) -> Result<usize, VolumeError> {
        if depth > MAX_DEPTH {
            return Err(broken(format!(
                "DICOM sequences are nested more than {MAX_DEPTH} deep"
            )));
        }
        loop {
            if !undefined && pos >= end {
                return Ok(pos);
            }
            let h = self.head(pos, enc)?;
            let start = pos + h.size;
            match h.tag {
                SEQ_END if undefined => return Ok(start),
                ITEM if h.len == UNDEFINED => {
                    pos = self.dataset(start, end, enc, depth, true)?;
                }
                ITEM => {
                    let item_end = self.value_end(&h, start, end)?;
                    self.dataset(start, item_end, enc, depth, false)?;
                    pos = item_end;
                }
                _ => {
                    return Err(broken(format!(
                        "DICOM sequence holds ({:04X},{:04X}) at byte {pos} where an item \
                         should be",
                        h.tag.0, h.tag.1
                    )))
                }
            }
        }
    }

    /// Walks encapsulated pixel data fragments up to the sequence delimiter.
    fn fragments(&self, mut pos: usize, end: usize, enc: Enc) -> Result<usize, VolumeError> {
        loop {
            let h = self.head(pos, enc)?;
            let start = pos + h.size;
            match h.tag {
                SEQ_END => return Ok(start),
                ITEM if h.len != UNDEFINED => {
                    pos = self.value_end(&h, start, end)?;
                }
                _ => {
                    return Err(broken(format!(
                        "encapsulated pixel data holds ({:04X},{:04X}) at byte {pos} where a \
                         fragment should be",
                        h.tag.0, h.tag.1
                    )))
                }
            }
        }
    }
}

/// A binary value's length must be a whole number of its items. dicom-parser reads
/// `len / size` items but skips `len` bytes' worth of position, so a ragged length desyncs it
/// from the stream and it then takes value bytes for a header (and may allocate gigabytes).
fn check_value_multiple(h: &Head) -> Result<(), VolumeError> {
    use VR::*;
    let size = match h.vr {
        Some(SS | US | OW) => 2,
        Some(SL | UL | FL | OF | OL | AT) => 4,
        Some(FD | OD | SV | UV | OV) => 8,
        _ => return Ok(()),
    };
    if h.len % size == 0 {
        return Ok(());
    }
    Err(broken(format!(
        "DICOM element ({:04X},{:04X}) has VR {} but a length of {} bytes, not a multiple of {size}",
        h.tag.0,
        h.tag.1,
        h.vr.map(|v| v.to_string()).unwrap_or_default(),
        h.len
    )))
}

/// What the structure check found.
struct Prescan {
    ts: String,
    /// The top-level PixelData element: its start, its value's start and its length
    /// (`UNDEFINED` when encapsulated); None when the data set has none (or, header-only, when
    /// the bytes end before it).
    pixels: Option<(usize, usize, u32)>,
}

/// Checks the structure of a DICOM file and returns its transfer syntax UID and where its
/// pixel data is. With `header_only`, the walk stops at the top-level PixelData element: only
/// what comes before it must be in `bytes` (the first bytes of a file are enough).
fn prescan(bytes: &[u8], header_only: bool) -> Result<Prescan, VolumeError> {
    let scan = Scan {
        b: bytes,
        stop_at_pixels: header_only,
        pixels: std::cell::Cell::new(None),
    };
    let mut pos = 132usize;
    let mut ts = None;
    loop {
        if pos + 4 > bytes.len() {
            if ts.is_none() {
                return Err(VolumeError::Truncated(format!(
                    "the DICOM file meta information is cut off at byte {}",
                    bytes.len()
                )));
            }
            break;
        }
        let group = scan.u16(pos, Enc::ExplicitLe).unwrap_or(0);
        if group != 0x0002 {
            break;
        }
        let h = scan.head(pos, Enc::ExplicitLe)?;
        let start = pos + h.size;
        if h.len == UNDEFINED {
            return Err(broken(format!(
                "DICOM file meta element ({:04X},{:04X}) has an undefined length",
                h.tag.0, h.tag.1
            )));
        }
        let end = scan.value_end(&h, start, bytes.len())?;
        if h.tag == (0x0002, 0x0010) {
            let v = bytes.get(start..end).unwrap_or_default();
            ts = Some(
                String::from_utf8_lossy(v)
                    .trim_end_matches(['\0', ' '])
                    .trim()
                    .to_string(),
            );
        }
        pos = end;
    }
    let ts = ts.ok_or_else(|| {
        broken("the DICOM file meta information has no TransferSyntaxUID (0002,0010)".into())
    })?;
    let enc = match ts.as_str() {
        IMPLICIT_LE => Enc::ImplicitLe,
        EXPLICIT_BE => Enc::ExplicitBe,
        DEFLATED => {
            return Err(broken(format!(
                "the transfer syntax {} ({DEFLATED}) is not supported",
                transfer_syntax_name(DEFLATED)
            )))
        }
        _ => Enc::ExplicitLe,
    };
    scan.dataset(pos, bytes.len(), enc, 0, false)?;
    Ok(Prescan {
        ts,
        pixels: scan.pixels.get(),
    })
}

// ---------------------------------------------------------------------------------------------
// Instances

/// Where one frame is and how its values scale.
#[derive(Clone, Debug)]
struct Frame {
    position: Option<[f64; 3]>,
    orientation: Option<[f64; 6]>,
    /// PixelSpacing: between rows, between columns.
    spacing: Option<[f64; 2]>,
    slope: f64,
    intercept: f64,
    /// What tells volumes at the same position apart (see [`VolumeChoice`]).
    tags: FrameTags,
}

/// The attributes that tell the volumes of a 4-D series apart, per frame.
#[derive(Clone, Debug, Default, PartialEq)]
struct FrameTags {
    instance: Option<i64>,
    echo_number: Option<i64>,
    echo_time_ms: Option<f64>,
    b_value: Option<f64>,
    gradient: Option<[f64; 3]>,
    acquisition: Option<i64>,
    temporal_position: Option<i64>,
    trigger_time_ms: Option<f64>,
}

struct Instance {
    name: String,
    ts: String,
    /// The top-level PixelData element: its start, its value's start, its length (`UNDEFINED`
    /// when encapsulated).
    pixel_data: (usize, usize, u32),
    series_uid: String,
    description: String,
    series_number: Option<i64>,
    modality: String,
    rows: u16,
    cols: u16,
    bits_allocated: u16,
    bits_stored: u16,
    signed: bool,
    frames: Vec<Frame>,
    /// Slice gap for a single slice: SliceThickness, else SpacingBetweenSlices.
    thickness: Option<f64>,
}

fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    obj.get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches('\0').trim().to_string())
}

fn floats(obj: &InMemDicomObject, tag: Tag) -> Option<Vec<f64>> {
    obj.get(tag)
        .and_then(|e| e.to_multi_float64().ok())
        .filter(|v| v.iter().all(|x| x.is_finite()))
}

fn float(obj: &InMemDicomObject, tag: Tag) -> Option<f64> {
    floats(obj, tag).and_then(|v| v.first().copied())
}

fn int(obj: &InMemDicomObject, tag: Tag) -> Option<i64> {
    obj.get(tag).and_then(|e| e.to_int::<i64>().ok())
}

fn items(obj: &InMemDicomObject, tag: Tag) -> &[InMemDicomObject] {
    obj.get(tag).and_then(|e| e.items()).unwrap_or_default()
}

fn first_item(obj: &InMemDicomObject, tag: Tag) -> Option<&InMemDicomObject> {
    items(obj, tag).first()
}

fn arr<const N: usize>(v: Option<Vec<f64>>) -> Option<[f64; N]> {
    v.and_then(|v| v.get(..N).and_then(|s| s.try_into().ok()))
}

impl FrameTags {
    /// The attributes of a classic (one frame per file) image.
    fn top_level(obj: &InMemDicomObject) -> FrameTags {
        // Siemens keeps the b-value and gradient of classic DWI in its private block
        // (0019,10xx) when the creator (0019,0010) is "SIEMENS MR HEADER".
        let siemens = text(obj, Tag(0x0019, 0x0010)).is_some_and(|c| c == "SIEMENS MR HEADER");
        FrameTags {
            instance: int(obj, tags::INSTANCE_NUMBER),
            echo_number: int(obj, tags::ECHO_NUMBERS),
            echo_time_ms: float(obj, tags::ECHO_TIME),
            b_value: float(obj, Tag(0x0018, 0x9087))
                .or_else(|| siemens.then(|| float(obj, Tag(0x0019, 0x100C))).flatten()),
            gradient: arr::<3>(floats(obj, Tag(0x0018, 0x9089))).or_else(|| {
                siemens
                    .then(|| arr::<3>(floats(obj, Tag(0x0019, 0x100E))))
                    .flatten()
            }),
            acquisition: int(obj, tags::ACQUISITION_NUMBER),
            temporal_position: int(obj, tags::TEMPORAL_POSITION_IDENTIFIER),
            trigger_time_ms: float(obj, tags::TRIGGER_TIME),
        }
    }

    /// An enhanced multi-frame image's values for one frame (its per-frame functional group,
    /// else the shared one) over the top-level ones.
    fn per_frame(
        mut self,
        frame: Option<&InMemDicomObject>,
        shared: Option<&InMemDicomObject>,
    ) -> FrameTags {
        let groups = [frame, shared];
        let find = |seq: Tag, tag: Tag| -> Option<Vec<f64>> {
            groups
                .iter()
                .flatten()
                .find_map(|g| first_item(g, seq).and_then(|i| floats(i, tag)))
        };
        let first = |v: Option<Vec<f64>>| v.and_then(|v| v.first().copied());
        if let Some(te) = first(find(Tag(0x0018, 0x9114), Tag(0x0018, 0x9082))) {
            self.echo_time_ms = Some(te);
        }
        if let Some(b) = first(find(Tag(0x0018, 0x9117), Tag(0x0018, 0x9087))) {
            self.b_value = Some(b);
        }
        let gradient = groups.iter().flatten().find_map(|g| {
            let diffusion = first_item(g, Tag(0x0018, 0x9117))?;
            let direction = first_item(diffusion, Tag(0x0018, 0x9076))?;
            arr::<3>(floats(direction, Tag(0x0018, 0x9089)))
        });
        if gradient.is_some() {
            self.gradient = gradient;
        }
        if let Some(t) = first(find(Tag(0x0020, 0x9111), Tag(0x0020, 0x9128))) {
            self.temporal_position = Some(t as i64);
        }
        if let Some(t) = first(find(Tag(0x0018, 0x9118), Tag(0x0020, 0x9153))) {
            self.trigger_time_ms = Some(t);
        }
        self
    }
}

impl Instance {
    /// Reads the header of a DICOM file: every element before PixelData, which is neither
    /// decoded nor copied. `bytes` may be the first bytes of a file of `size` bytes: when the
    /// header runs past them the answer is [`Skip::NeedMore`].
    fn parse(name: &str, bytes: &[u8], size: u64) -> Result<Instance, Skip> {
        let prefix = (bytes.len() as u64) < size;
        if bytes.is_empty() && !prefix {
            return Err(VolumeError::NotRecognized("the file is empty".into()).into());
        }
        if bytes.len() < 132 && prefix {
            return Err(Skip::NeedMore);
        }
        if !is_dicom(bytes) {
            return Err(VolumeError::NotRecognized(
                "not a DICOM file: no \"DICM\" marker after the 128-byte preamble".into(),
            )
            .into());
        }
        let scan = match prescan(bytes, true) {
            Err(VolumeError::Truncated(_)) if prefix => return Err(Skip::NeedMore),
            other => other?,
        };
        let header = match scan.pixels {
            Some((_, value, _)) => bytes.get(..value).unwrap_or(bytes),
            None if prefix => return Err(Skip::NeedMore),
            None => bytes,
        };
        let obj = OpenFileOptions::new()
            .read_preamble(ReadPreamble::Always)
            .read_until(tags::PIXEL_DATA)
            .from_reader(header)
            .map_err(|e| broken(format!("DICOM parse error: {}", snafu_chain(&e))))?;
        let ts = scan.ts;
        let rows = int(&obj, tags::ROWS);
        let cols = int(&obj, tags::COLUMNS);
        let (Some(rows), Some(cols), Some(pixel_data)) = (rows, cols, scan.pixels) else {
            let what = if obj.get(tags::DIRECTORY_RECORD_SEQUENCE).is_some() {
                "a DICOMDIR".to_string()
            } else {
                format!(
                    "DICOM without an image (SOP class {})",
                    obj.meta()
                        .media_storage_sop_class_uid()
                        .trim_end_matches('\0')
                )
            };
            return Err(Skip::NotImage(what));
        };
        let dims_err = |what: &str, v: i64| {
            Skip::Error(broken(format!("{what} is {v}: it must be 1 to 65535")))
        };
        let rows = u16::try_from(rows)
            .ok()
            .filter(|&r| r > 0)
            .ok_or_else(|| dims_err("Rows", rows))?;
        let cols = u16::try_from(cols)
            .ok()
            .filter(|&c| c > 0)
            .ok_or_else(|| dims_err("Columns", cols))?;
        if usize::from(rows) * usize::from(cols) > MAX_FRAME_PIXELS {
            return Err(VolumeError::TooLarge(format!(
                "a frame of {rows} rows x {cols} columns is more than the {MAX_FRAME_PIXELS} \
                 pixels insitu accepts"
            ))
            .into());
        }
        let spp = int(&obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1);
        if spp != 1 {
            let pi = text(&obj, tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_default();
            return Err(broken(format!(
                "SamplesPerPixel is {spp} (PhotometricInterpretation {pi}): insitu reads \
                 grayscale images only"
            ))
            .into());
        }
        let bits_allocated = int(&obj, tags::BITS_ALLOCATED).unwrap_or(0);
        if ![1, 8, 16, 32].contains(&bits_allocated) {
            return Err(broken(format!(
                "BitsAllocated is {bits_allocated}: insitu reads 1, 8, 16 and 32"
            ))
            .into());
        }
        let bits_allocated = bits_allocated as u16;
        let bits_stored = int(&obj, tags::BITS_STORED).unwrap_or(i64::from(bits_allocated));
        let bits_stored = u16::try_from(bits_stored)
            .ok()
            .filter(|&b| b >= 1 && b <= bits_allocated)
            .ok_or_else(|| {
                broken(format!(
                    "BitsStored is {bits_stored} but BitsAllocated is {bits_allocated}"
                ))
            })?;
        let signed = match int(&obj, tags::PIXEL_REPRESENTATION).unwrap_or(0) {
            0 => false,
            1 => true,
            other => {
                return Err(
                    broken(format!("PixelRepresentation is {other}: it must be 0 or 1")).into(),
                )
            }
        };
        let nframes = match int(&obj, tags::NUMBER_OF_FRAMES) {
            None => 1,
            Some(n) if (1..=i64::from(u32::MAX)).contains(&n) => n as usize,
            Some(n) => {
                return Err(broken(format!("NumberOfFrames is {n}: it must be positive")).into())
            }
        };
        // Every frame needs pixel data: bound the frame count by the file before allocating
        // per-frame records (whether the pixel data is all there is checked when decoding).
        let native = matches!(pixel_codec(&ts), Ok(PixelCodec::Native));
        let frame_bytes = if native {
            (usize::from(rows) * usize::from(cols) * usize::from(bits_allocated) / 8).clamp(1, 8)
        } else {
            8 // a compressed frame needs at least an item header
        };
        if nframes > 1 && nframes.saturating_mul(frame_bytes) as u64 > size {
            return Err(VolumeError::Truncated(format!(
                "NumberOfFrames is {nframes} ({rows}x{cols} pixels of {bits_allocated} bits) \
                 but the file has only {size} bytes"
            ))
            .into());
        }

        // Geometry: functional groups (enhanced multi-frame), else the top level.
        let shared = first_item(&obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE);
        let per_frame = items(&obj, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE);
        let group_attr = |f: usize, seq: Tag, tag: Tag| -> Option<Vec<f64>> {
            let from = |g: &InMemDicomObject| first_item(g, seq).and_then(|i| floats(i, tag));
            per_frame
                .get(f)
                .and_then(from)
                .or_else(|| shared.and_then(from))
        };
        let top_position = arr::<3>(floats(&obj, tags::IMAGE_POSITION_PATIENT));
        let top_orientation = arr::<6>(floats(&obj, tags::IMAGE_ORIENTATION_PATIENT));
        let top_spacing = arr::<2>(floats(&obj, tags::PIXEL_SPACING))
            .or_else(|| arr::<2>(floats(&obj, tags::IMAGER_PIXEL_SPACING)));
        let top_slope = float(&obj, tags::RESCALE_SLOPE);
        let top_intercept = float(&obj, tags::RESCALE_INTERCEPT);
        let gap = float(&obj, tags::SPACING_BETWEEN_SLICES)
            .or_else(|| float(&obj, tags::SLICE_THICKNESS))
            .or_else(|| {
                shared.and_then(|s| {
                    first_item(s, tags::PIXEL_MEASURES_SEQUENCE).and_then(|m| {
                        float(m, tags::SPACING_BETWEEN_SLICES)
                            .or_else(|| float(m, tags::SLICE_THICKNESS))
                    })
                })
            });
        let thickness = float(&obj, tags::SLICE_THICKNESS)
            .or_else(|| float(&obj, tags::SPACING_BETWEEN_SLICES))
            .or(gap)
            .filter(|t| *t > 0.0);
        let top_tags = FrameTags::top_level(&obj);
        let mut frames = Vec::with_capacity(nframes.min(4096));
        for f in 0..nframes {
            let tags = top_tags.clone().per_frame(per_frame.get(f), shared);
            let orientation = arr::<6>(group_attr(
                f,
                tags::PLANE_ORIENTATION_SEQUENCE,
                tags::IMAGE_ORIENTATION_PATIENT,
            ))
            .or(top_orientation);
            let mut position = arr::<3>(group_attr(
                f,
                tags::PLANE_POSITION_SEQUENCE,
                tags::IMAGE_POSITION_PATIENT,
            ));
            if position.is_none() {
                // Legacy multi-frame: frames stacked along the normal from the top position.
                position = match (top_position, top_orientation) {
                    (Some(p), _) if f == 0 => Some(p),
                    (Some(p), Some(o)) => {
                        let n = cross([o[0], o[1], o[2]], [o[3], o[4], o[5]]);
                        let g = gap.unwrap_or(1.0) * f as f64;
                        Some([p[0] + n[0] * g, p[1] + n[1] * g, p[2] + n[2] * g])
                    }
                    _ => None,
                };
            }
            let spacing = arr::<2>(group_attr(
                f,
                tags::PIXEL_MEASURES_SEQUENCE,
                tags::PIXEL_SPACING,
            ))
            .or(top_spacing);
            let slope = group_attr(
                f,
                tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE,
                tags::RESCALE_SLOPE,
            )
            .and_then(|v| v.first().copied())
            .or(top_slope)
            .unwrap_or(1.0);
            let intercept = group_attr(
                f,
                tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE,
                tags::RESCALE_INTERCEPT,
            )
            .and_then(|v| v.first().copied())
            .or(top_intercept)
            .unwrap_or(0.0);
            frames.push(Frame {
                position,
                orientation,
                spacing,
                slope,
                intercept,
                tags,
            });
        }
        Ok(Instance {
            name: name.to_string(),
            pixel_data,
            series_uid: text(&obj, tags::SERIES_INSTANCE_UID).unwrap_or_default(),
            description: text(&obj, tags::SERIES_DESCRIPTION).unwrap_or_default(),
            series_number: int(&obj, tags::SERIES_NUMBER),
            modality: text(&obj, tags::MODALITY).unwrap_or_default(),
            ts,
            rows,
            cols,
            bits_allocated,
            bits_stored,
            signed,
            frames,
            thickness,
        })
    }

    fn label(&self) -> String {
        if self.name.is_empty() {
            String::new()
        } else {
            format!("{}: ", self.name)
        }
    }

    fn frame_pixels(&self) -> usize {
        usize::from(self.rows) * usize::from(self.cols)
    }

    /// The file's pixel data, ready to decode frame by frame: native little-endian samples
    /// straight from `bytes` (no copy); big-endian or encapsulated data through dicom-rs,
    /// after the structure check of the whole file.
    fn pixels<'a>(&self, bytes: &'a [u8]) -> Result<Pixels<'a>, VolumeError> {
        let n = self.frames.len();
        let px = self.frame_pixels();
        let codec = pixel_codec(&self.ts)?;
        let (at, value, len) = self.pixel_data;
        let native_le = codec == PixelCodec::Native && self.ts != EXPLICIT_BE;
        let samples: std::borrow::Cow<[u8]> = if native_le {
            if len == UNDEFINED {
                return Err(encapsulated_native());
            }
            let data = bytes
                .get(value..)
                .and_then(|rest| rest.get(..len as usize))
                .ok_or_else(|| {
                    VolumeError::Truncated(format!(
                        "DICOM element (7FE0,0010) at byte {at} claims {len} bytes but only {} \
                         remain",
                        bytes.len().saturating_sub(value)
                    ))
                })?;
            std::borrow::Cow::Borrowed(data)
        } else {
            prescan(bytes, false)?;
            let obj = OpenFileOptions::new()
                .read_preamble(ReadPreamble::Always)
                .from_reader(bytes)
                .map_err(|e| broken(format!("DICOM parse error: {}", snafu_chain(&e))))?;
            // Native big-endian values (dicom-rs hands them over native-endian), or None for
            // encapsulated data, checked before a codec sees it.
            let native: Option<Vec<u8>> = {
                let element = obj
                    .get(tags::PIXEL_DATA)
                    .ok_or_else(|| broken("the DICOM image has no PixelData (7FE0,0010)".into()))?;
                match (codec, element.value()) {
                    (PixelCodec::Native, DicomValue::Primitive(p)) => {
                        Some(p.to_bytes().into_owned())
                    }
                    (PixelCodec::Native, _) => return Err(encapsulated_native()),
                    (_, DicomValue::PixelSequence(seq)) => {
                        let fragments = seq.fragments();
                        let total: usize = fragments.iter().map(|f| f.len()).sum();
                        let decoded = n
                            .saturating_mul(px)
                            .saturating_mul(usize::from(self.bits_allocated.div_ceil(8)));
                        if decoded > total.saturating_mul(MAX_COMPRESSION_RATIO) + RATIO_ALLOWANCE {
                            return Err(VolumeError::TooLarge(format!(
                                "{n} frames of {}x{} pixels would expand from only {total} bytes \
                                 of {} data",
                                self.cols,
                                self.rows,
                                transfer_syntax_name(&self.ts)
                            )));
                        }
                        if fragments.len() < n && codec != PixelCodec::Fragments {
                            return Err(VolumeError::Truncated(format!(
                                "NumberOfFrames is {n} but the encapsulated pixel data has only \
                                 {} fragments",
                                fragments.len()
                            )));
                        }
                        for (i, fragment) in fragments.iter().enumerate() {
                            check_codestream(
                                codec,
                                fragment,
                                self.rows,
                                self.cols,
                                self.bits_allocated,
                            )
                            .map_err(|m| broken(format!("pixel data fragment {i}: {m}")))?;
                        }
                        if self.bits_allocated == 1 {
                            return Err(broken(
                                "1-bit pixel data must not be compressed (BitsAllocated 1)".into(),
                            ));
                        }
                        None
                    }
                    _ => {
                        return Err(broken(
                            "the DICOM PixelData element is not pixel data".into(),
                        ))
                    }
                }
            };
            match native {
                Some(b) => std::borrow::Cow::Owned(b),
                None => return Ok(Pixels::Encapsulated(Box::new(obj))),
            }
        };
        let bits = self.bits_allocated;
        let need_bits = (px * usize::from(bits)).saturating_mul(n);
        if need_bits.div_ceil(8) > samples.len() {
            return Err(VolumeError::Truncated(format!(
                "PixelData holds {} bytes but {n} frame(s) of {}x{} pixels at {bits} bits need {}",
                samples.len(),
                self.cols,
                self.rows,
                need_bits.div_ceil(8)
            )));
        }
        Ok(Pixels::Native(samples))
    }

    /// Frame `f`'s stored values (before rescaling) into `out` (one frame of pixels).
    fn decode_frame(&self, pixels: &Pixels, f: usize, out: &mut [f32]) -> Result<(), VolumeError> {
        let px = self.frame_pixels();
        match pixels {
            Pixels::Native(bytes) => {
                let frame_bits = px * usize::from(self.bits_allocated);
                if self.bits_allocated == 1 {
                    let start = f * frame_bits;
                    for (o, b) in out.iter_mut().zip(start..start + frame_bits) {
                        let byte = bytes.get(b / 8).copied().unwrap_or(0);
                        *o = f32::from((byte >> (b % 8)) & 1);
                    }
                } else {
                    let size = frame_bits / 8;
                    let data = bytes.get(f * size..(f + 1) * size).unwrap_or_default();
                    self.samples(data, out);
                }
                Ok(())
            }
            Pixels::Encapsulated(obj) => {
                let frame = obj.decode_pixel_data_frame(f as u32).map_err(|e| {
                    broken(format!(
                        "cannot decode frame {f} of the {} pixel data: {}",
                        transfer_syntax_name(&self.ts),
                        snafu_chain(&e)
                    ))
                })?;
                let data = frame.data();
                let need = px * usize::from(self.bits_allocated / 8);
                let data = data.get(..need).ok_or_else(|| {
                    VolumeError::Truncated(format!(
                        "frame {f} decodes to {} bytes but {}x{} pixels of {} bits need {need}",
                        data.len(),
                        self.cols,
                        self.rows,
                        self.bits_allocated
                    ))
                })?;
                self.samples(data, out);
                Ok(())
            }
        }
    }

    /// Converts stored little-endian samples (8, 16 or 32 bits) to values in `out`: the low
    /// BitsStored bits, sign-extended when PixelRepresentation is 1.
    fn samples(&self, data: &[u8], out: &mut [f32]) {
        let stored = u32::from(self.bits_stored);
        let shift = 32 - stored.min(32);
        let signed = self.signed;
        // Bits above BitsStored are not part of the value (overlays, burned-in markers): mask
        // them off, or sign-extend from the top stored bit (as pydicom and dcm2niix do).
        let fix = move |v: u32| -> f32 {
            if signed {
                ((v << shift) as i32 >> shift) as f32
            } else {
                ((v << shift) >> shift) as f32
            }
        };
        match self.bits_allocated {
            8 => {
                for (o, &b) in out.iter_mut().zip(data) {
                    *o = fix(u32::from(b));
                }
            }
            16 => {
                for (o, c) in out.iter_mut().zip(data.chunks_exact(2)) {
                    *o = fix(u32::from(u16::from_le_bytes([c[0], c[1]])));
                }
            }
            _ => {
                for (o, c) in out.iter_mut().zip(data.chunks_exact(4)) {
                    *o = fix(u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
                }
            }
        }
    }
}

fn encapsulated_native() -> VolumeError {
    broken("the pixel data is encapsulated (compressed) but the transfer syntax is not".into())
}

/// A file's pixel data, ready to decode frame by frame.
enum Pixels<'a> {
    /// Native little-endian samples of all frames.
    Native(std::borrow::Cow<'a, [u8]>),
    /// The whole file parsed by dicom-rs, for its codecs.
    Encapsulated(Box<DefaultDicomObject>),
}

/// The full chain of a snafu error's messages.
fn snafu_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    let mut depth = 0;
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
        depth += 1;
        if depth > 8 {
            break;
        }
    }
    s
}

/// Checks a compressed fragment's own image header against the DICOM grid before a codec
/// allocates from it. Fragments that do not start a frame (continuations) pass.
fn check_codestream(
    codec: PixelCodec,
    f: &[u8],
    rows: u16,
    cols: u16,
    bits_allocated: u16,
) -> Result<(), String> {
    let be16 = |o: usize| f.get(o..o + 2).map(|s| u16::from_be_bytes([s[0], s[1]]));
    let be32 = |o: usize| {
        f.get(o..o + 4)
            .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    };
    match codec {
        PixelCodec::Jpeg => {
            if !f.starts_with(&[0xFF, 0xD8]) {
                return Ok(());
            }
            let mut pos = 2usize;
            loop {
                // Skip fill bytes to the next marker.
                while f.get(pos) == Some(&0xFF) && f.get(pos + 1) == Some(&0xFF) {
                    pos += 1;
                }
                let (Some(0xFF), Some(&m)) = (f.get(pos), f.get(pos + 1)) else {
                    return Err("JPEG data has no frame header (SOF) before its end".into());
                };
                let len = usize::from(be16(pos + 2).ok_or("JPEG segment cut off")?);
                match m {
                    0xC0..=0xCF if m != 0xC4 && m != 0xC8 && m != 0xCC => {
                        let h = be16(pos + 5).ok_or("JPEG SOF cut off")?;
                        let w = be16(pos + 7).ok_or("JPEG SOF cut off")?;
                        let nc = f.get(pos + 9).copied().unwrap_or(0);
                        if h > rows || w > cols || w == 0 || nc == 0 || nc > 4 {
                            return Err(format!(
                                "the JPEG frame header says {w}x{h} pixels with {nc} components \
                                 but the image is {cols}x{rows}"
                            ));
                        }
                        return Ok(());
                    }
                    0xDA | 0xD9 => {
                        return Err("JPEG data has no frame header (SOF) before its scan".into())
                    }
                    _ => pos = pos + 2 + len,
                }
            }
        }
        PixelCodec::Jpeg2000 => {
            let head = f.get(..f.len().min(4096)).unwrap_or_default();
            let Some(at) = head.windows(4).position(|w| w == [0xFF, 0x4F, 0xFF, 0x51]) else {
                return Ok(());
            };
            let s = at + 4;
            let x = be32(s + 4).ok_or("JPEG 2000 SIZ cut off")?;
            let y = be32(s + 8).ok_or("JPEG 2000 SIZ cut off")?;
            let xo = be32(s + 12).ok_or("JPEG 2000 SIZ cut off")?;
            let yo = be32(s + 16).ok_or("JPEG 2000 SIZ cut off")?;
            let xt = be32(s + 20).ok_or("JPEG 2000 SIZ cut off")?;
            let yt = be32(s + 24).ok_or("JPEG 2000 SIZ cut off")?;
            let nc = be16(s + 36).ok_or("JPEG 2000 SIZ cut off")?;
            let w = x.saturating_sub(xo);
            let h = y.saturating_sub(yo);
            if w == 0
                || h == 0
                || w > u32::from(cols)
                || h > u32::from(rows)
                || nc == 0
                || nc > 4
                || xt == 0
                || yt == 0
            {
                return Err(format!(
                    "the JPEG 2000 header says {w}x{h} pixels with {nc} components but the image \
                     is {cols}x{rows}"
                ));
            }
            Ok(())
        }
        PixelCodec::Rle => {
            // The RLE header: segment count and 15 offsets; every segment the decoder reads must
            // expand to a full plane (the decoder indexes its output without checking).
            let le32 = |o: usize| {
                f.get(o..o + 4)
                    .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize)
            };
            let segments = le32(0).filter(|_| f.len() >= 64).ok_or_else(|| {
                format!(
                    "an RLE fragment of {} bytes is shorter than its 64-byte header",
                    f.len()
                )
            })?;
            let needed = usize::from(bits_allocated / 8).max(1);
            if !(needed..=15).contains(&segments) {
                return Err(format!(
                    "the RLE header declares {segments} segments; {needed} to 15 are needed"
                ));
            }
            let plane = usize::from(rows) * usize::from(cols);
            for k in 0..needed {
                let start = le32(4 + 4 * k).unwrap_or(0);
                let end = if k + 1 < segments {
                    le32(8 + 4 * k).unwrap_or(0)
                } else {
                    f.len()
                };
                let segment = f.get(start..end).ok_or_else(|| {
                    format!("RLE segment {k} spans bytes {start}..{end} of {}", f.len())
                })?;
                let produced = packbits_len(segment, plane);
                if produced < plane {
                    return Err(format!(
                        "RLE segment {k} decodes to {produced} bytes but the image has {plane} \
                         pixels"
                    ));
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// How many bytes a PackBits segment decodes to (counting stops at `limit`).
fn packbits_len(segment: &[u8], limit: usize) -> usize {
    let mut out = 0usize;
    let mut pos = 0usize;
    while out < limit {
        let Some(&h) = segment.get(pos) else { break };
        pos += 1;
        let n = h as i8;
        if n >= 0 {
            let literal = usize::from(h) + 1;
            let available = segment.len().saturating_sub(pos).min(literal);
            out += available;
            pos += literal;
        } else if n != -128 {
            if pos >= segment.len() {
                break;
            }
            pos += 1;
            out += (1 - i32::from(n)) as usize;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Assembling a volume

/// Frames closer than this along the slice normal (mm) are at the same position.
const SAME_POSITION_MM: f64 = 1e-3;

/// How a series' frames make volumes: the grid of one volume and, per volume, its frames.
struct Plan {
    dims: [usize; 3],
    geometry: Geometry,
    /// Per volume, its frames (instance, frame) in slice order.
    volumes: Vec<Vec<(usize, usize)>>,
    choices: Vec<VolumeChoice>,
}

/// Places every frame of the instances (headers alone): sorted along the slice normal, frames
/// at one position are the volumes of a 4-D series (time points, echoes, b-values), ordered as
/// dcm2niix orders them (echo, then InstanceNumber; dcm2niix writes one file per echo).
fn plan(instances: &[&Instance]) -> Result<Plan, VolumeError> {
    let first = instances
        .first()
        .ok_or_else(|| VolumeError::NotRecognized("no DICOM image".into()))?;
    // Every frame of every file, with its geometry.
    let mut frames: Vec<(usize, usize, &Frame)> = Vec::new();
    for (i, inst) in instances.iter().enumerate() {
        if (inst.rows, inst.cols) != (first.rows, first.cols) {
            return Err(broken(format!(
                "{}the image is {}x{} but {}is {}x{}: the files are not one series",
                inst.label(),
                inst.cols,
                inst.rows,
                first.label(),
                first.cols,
                first.rows
            )));
        }
        frames.extend(inst.frames.iter().enumerate().map(|(f, fr)| (i, f, fr)));
    }
    let label = |i: usize| instances.get(i).map(|x| x.label()).unwrap_or_default();

    let &(i0, _, f0) = frames
        .first()
        .ok_or_else(|| VolumeError::NotRecognized("no DICOM frame".into()))?;
    let o = f0.orientation.ok_or_else(|| {
        broken(format!(
            "{}no ImageOrientationPatient (0020,0037): the image cannot be placed in the world",
            label(i0)
        ))
    })?;
    let spacing = f0.spacing.unwrap_or([1.0, 1.0]);
    for &(i, _, fr) in &frames {
        let same_o = fr
            .orientation
            .is_some_and(|q| q.iter().zip(&o).all(|(a, b)| (a - b).abs() < 1e-4));
        if !same_o {
            return Err(broken(format!(
                "{}ImageOrientationPatient {:?} differs from {:?}: the files are not one series \
                 (or the series mixes orientations)",
                label(i),
                fr.orientation,
                o
            )));
        }
        let sp = fr.spacing.unwrap_or([1.0, 1.0]);
        if sp
            .iter()
            .zip(&spacing)
            .any(|(a, b)| (a - b).abs() > 1e-4 * b.abs().max(1.0))
        {
            return Err(broken(format!(
                "{}PixelSpacing {sp:?} differs from {spacing:?}: the files are not one series",
                label(i)
            )));
        }
    }
    if spacing.iter().any(|s| s.is_nan() || *s <= 0.0) {
        return Err(broken(format!("PixelSpacing {spacing:?} is not positive")));
    }
    let row_dir = [o[0], o[1], o[2]];
    let col_dir = [o[3], o[4], o[5]];
    let (rn, cn) = (norm(row_dir), norm(col_dir));
    if !((rn - 1.0).abs() < 1e-2 && (cn - 1.0).abs() < 1e-2 && dot(row_dir, col_dir).abs() < 1e-2) {
        return Err(broken(format!(
            "ImageOrientationPatient {o:?} is not two orthogonal unit vectors"
        )));
    }
    let row_dir = row_dir.map(|v| v / rn);
    let col_dir = col_dir.map(|v| v / cn);
    let normal = cross(row_dir, col_dir);

    // Sort frames along the normal, then group those at one position.
    struct Placed<'a> {
        d: f64,
        p: [f64; 3],
        i: usize,
        f: usize,
        tags: &'a FrameTags,
    }
    let mut placed = Vec::with_capacity(frames.len());
    for &(i, f, fr) in &frames {
        let p = fr.position.ok_or_else(|| {
            broken(format!(
                "{}frame {f} has no ImagePositionPatient (0020,0032): the slices cannot be \
                 ordered",
                label(i)
            ))
        })?;
        placed.push(Placed {
            d: dot(normal, p),
            p,
            i,
            f,
            tags: &fr.tags,
        });
    }
    placed.sort_by(|a, b| a.d.total_cmp(&b.d));
    let mut groups: Vec<Vec<Placed>> = Vec::new();
    for x in placed {
        match groups.last_mut() {
            Some(g) if x.d - g[0].d < SAME_POSITION_MM => g.push(x),
            _ => groups.push(vec![x]),
        }
    }
    let where_ = |x: &Placed| format!("{}frame {}", label(x.i), x.f);
    let m = groups.iter().map(|g| g.len()).max().unwrap_or(1);
    if let Some(short) = groups.iter().find(|g| g.len() != m) {
        let full = groups.iter().find(|g| g.len() == m).unwrap_or(short);
        let what = if m == 2 && short.len() == 1 {
            format!("{} and {}", where_(&full[0]), where_(&full[1]))
        } else {
            format!("{} frames (e.g. {})", m, where_(&full[0]))
        };
        return Err(broken(format!(
            "{what} are at the same position {:?} but position {:?} has {} frame(s): a series \
             of several volumes (time points, echoes, b-values) needs as many frames at every \
             position (a file missing, or one too many?)",
            full[0].p,
            short[0].p,
            short.len()
        )));
    }
    for g in &groups {
        for x in &g[1..] {
            let off = norm(std::array::from_fn(|r| x.p[r] - g[0].p[r]));
            if off > 0.01 {
                return Err(broken(format!(
                    "{} and {} are at the same slice position but {off:.3} mm apart in the \
                     plane: the files are not one series",
                    where_(&g[0]),
                    where_(x)
                )));
            }
        }
    }
    // dcm2niix's order of the volumes at each position: echo, then InstanceNumber (then file
    // name and frame, for files without one).
    for g in groups.iter_mut() {
        g.sort_by(|a, b| {
            let (ta, tb) = (a.tags, b.tags);
            ta.echo_number
                .unwrap_or(0)
                .cmp(&tb.echo_number.unwrap_or(0))
                .then_with(|| {
                    ta.echo_time_ms
                        .unwrap_or(0.0)
                        .total_cmp(&tb.echo_time_ms.unwrap_or(0.0))
                })
                .then_with(|| {
                    ta.instance
                        .unwrap_or(i64::MAX)
                        .cmp(&tb.instance.unwrap_or(i64::MAX))
                })
                .then_with(|| instances[a.i].name.cmp(&instances[b.i].name))
                .then_with(|| a.f.cmp(&b.f))
        });
    }
    let n = groups.len();
    let (dims, _, _) = check_grid(
        [i64::from(first.cols), i64::from(first.rows), n as i64],
        4,
        "DICOM Columns x Rows x slices",
    )?;
    let step = if n > 1 {
        let (d0, p0) = (groups[0][0].d, groups[0][0].p);
        let (dn, pn) = (groups[n - 1][0].d, groups[n - 1][0].p);
        let mean_gap = (dn - d0) / (n - 1) as f64;
        for w in groups.windows(2) {
            let gap = w[1][0].d - w[0][0].d;
            if (gap - mean_gap).abs() > 0.01 * mean_gap.abs() + 1e-3 {
                return Err(broken(format!(
                    "the slices are unevenly spaced: a gap of {gap:.4} mm where the mean is \
                     {mean_gap:.4} mm (missing slices?)"
                )));
            }
        }
        std::array::from_fn(|r| (pn[r] - p0[r]) / (n - 1) as f64)
    } else {
        let t = first.thickness.unwrap_or(1.0);
        normal.map(|v| v * t)
    };
    let columns = [
        row_dir.map(|v| v * spacing[1]),
        col_dir.map(|v| v * spacing[0]),
        step,
    ];
    let geometry = geometry_from_lps(
        dims,
        columns,
        groups[0][0].p,
        "DICOM ImageOrientationPatient/PixelSpacing/ImagePositionPatient",
    )?;
    let volumes: Vec<Vec<(usize, usize)>> = (0..m)
        .map(|v| groups.iter().map(|g| (g[v].i, g[v].f)).collect())
        .collect();
    let firsts: Vec<&FrameTags> = (0..m).map(|v| groups[0][v].tags).collect();
    let instance_range = |v: usize| {
        let nums: Vec<i64> = groups.iter().filter_map(|g| g[v].tags.instance).collect();
        Some((*nums.iter().min()?, *nums.iter().max()?)).filter(|_| nums.len() == n)
    };
    let choices = describe_volumes(&firsts, instance_range);
    Ok(Plan {
        dims,
        geometry,
        volumes,
        choices,
    })
}

/// Shortest decimal form of a number for descriptions (at most 4 decimals).
fn num(x: f64) -> String {
    let s = format!("{x:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}

/// One [`VolumeChoice`] per volume, described by what differs between them.
fn describe_volumes(
    tags: &[&FrameTags],
    instance_range: impl Fn(usize) -> Option<(i64, i64)>,
) -> Vec<VolumeChoice> {
    fn varies<T: PartialEq>(tags: &[&FrameTags], get: impl Fn(&FrameTags) -> Option<T>) -> bool {
        tags.iter().any(|t| get(*t) != get(tags[0]))
    }
    let echo = varies(tags, |t| t.echo_number) || varies(tags, |t| t.echo_time_ms);
    let diffusion = varies(tags, |t| t.b_value) || varies(tags, |t| t.gradient);
    let acquisition = varies(tags, |t| t.acquisition);
    let temporal = varies(tags, |t| t.temporal_position);
    let trigger = varies(tags, |t| t.trigger_time_ms);
    let count = tags.len();
    tags.iter()
        .enumerate()
        .map(|(index, t)| {
            let mut parts = Vec::new();
            if echo {
                let mut s = t
                    .echo_number
                    .map(|e| format!("echo {e}"))
                    .unwrap_or_default();
                if let Some(te) = t.echo_time_ms {
                    let te = format!("TE {} ms", num(te));
                    s = if s.is_empty() {
                        te
                    } else {
                        format!("{s} ({te})")
                    };
                }
                parts.push(s);
            }
            if diffusion {
                let mut s = t
                    .b_value
                    .map(|b| format!("b = {} s/mm²", num(b)))
                    .unwrap_or_default();
                if let Some(g) = t.gradient.filter(|g| g.iter().any(|x| *x != 0.0)) {
                    s.push_str(&format!(
                        "{}gradient ({}, {}, {})",
                        if s.is_empty() { "" } else { ", " },
                        num(g[0]),
                        num(g[1]),
                        num(g[2])
                    ));
                }
                parts.push(s);
            }
            if acquisition {
                if let Some(a) = t.acquisition {
                    parts.push(format!("acquisition {a}"));
                }
            }
            if temporal {
                if let Some(p) = t.temporal_position {
                    parts.push(format!("temporal position {p}"));
                }
            }
            if trigger {
                if let Some(tt) = t.trigger_time_ms {
                    parts.push(format!("trigger {} ms", num(tt)));
                }
            }
            parts.retain(|p| !p.is_empty());
            let description = if !parts.is_empty() {
                parts.join(", ")
            } else if let Some((lo, hi)) = instance_range(index) {
                format!("volume {} of {count} (instances {lo} to {hi})", index + 1)
            } else {
                format!("volume {} of {count}", index + 1)
            };
            VolumeChoice {
                index,
                description,
                echo_number: t.echo_number,
                echo_time_ms: t.echo_time_ms,
                b_value: t.b_value,
                gradient: t.gradient,
                acquisition_number: t.acquisition,
                temporal_position: t.temporal_position,
                trigger_time_ms: t.trigger_time_ms,
                time_s: None,
            }
        })
        .collect()
}

/// Plans the instances' frames and decodes volume `volume` (default 0): each file's pixel data
/// once, only the frames of that volume, straight into the output.
fn read_planned(
    instances: &[&Instance],
    bytes: &[&[u8]],
    volume: Option<usize>,
) -> Result<(Volume, Vec<VolumeChoice>, usize), VolumeError> {
    for inst in instances {
        pixel_codec(&inst.ts).map_err(|e| prefix(e, &inst.label()))?;
    }
    let plan = plan(instances)?;
    let chosen = pick_volume(volume, plan.volumes.len(), "the DICOM series")?;
    let frames = &plan.volumes[chosen];
    let px = instances[0].frame_pixels();
    let nvox = px * frames.len();
    debug_assert!(nvox <= MAX_VOXELS);
    let mut wanted: Vec<Vec<(usize, usize)>> = vec![Vec::new(); instances.len()];
    for (k, &(i, f)) in frames.iter().enumerate() {
        wanted[i].push((f, k));
    }
    let mut data = vec![0f32; nvox];
    for (i, list) in wanted.iter().enumerate() {
        if list.is_empty() {
            continue;
        }
        let inst = instances[i];
        let pixels = inst
            .pixels(bytes[i])
            .map_err(|e| prefix(e, &inst.label()))?;
        for &(f, k) in list {
            let out = &mut data[k * px..(k + 1) * px];
            inst.decode_frame(&pixels, f, out)
                .map_err(|e| prefix(e, &inst.label()))?;
            let fr = &inst.frames[f];
            if fr.slope != 1.0 || fr.intercept != 0.0 {
                for v in out.iter_mut() {
                    *v = (f64::from(*v) * fr.slope + fr.intercept) as f32;
                }
            }
        }
    }
    Ok((
        Volume {
            geometry: plan.geometry,
            data,
        },
        plan.choices,
        chosen,
    ))
}

fn prefix(e: VolumeError, label: &str) -> VolumeError {
    if label.is_empty() {
        return e;
    }
    match e {
        VolumeError::NotRecognized(m) => VolumeError::NotRecognized(format!("{label}{m}")),
        VolumeError::BadHeader(m) => VolumeError::BadHeader(format!("{label}{m}")),
        VolumeError::Truncated(m) => VolumeError::Truncated(format!("{label}{m}")),
        VolumeError::Decompress(m) => VolumeError::Decompress(format!("{label}{m}")),
        VolumeError::TooLarge(m) => VolumeError::TooLarge(format!("{label}{m}")),
        VolumeError::NotLabels(m) => VolumeError::NotLabels(format!("{label}{m}")),
        VolumeError::NoSuchVolume(m) => VolumeError::NoSuchVolume(format!("{label}{m}")),
    }
}

/// Labels errors of a multi-file read with the file they concern.
pub(crate) fn with_file(e: VolumeError, name: &str) -> VolumeError {
    prefix(e, &format!("{name}: "))
}
