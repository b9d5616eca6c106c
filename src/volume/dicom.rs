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
use super::{Volume, VolumeError};
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
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesInfo {
    /// SeriesInstanceUID (may be empty in anonymized data); the key for [`read_series`].
    pub uid: String,
    pub description: String,
    pub number: Option<i64>,
    pub modality: String,
    /// Names of the files of the series.
    pub files: Vec<String>,
    /// Grid: columns, rows, frames (slices) over all files.
    pub dims: [usize; 3],
}

/// The series in a set of files and the files that are not DICOM images.
#[derive(Clone, Debug, PartialEq)]
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

/// Reads one DICOM file (a single slice or a multi-frame image) as a volume.
pub fn read_dicom(bytes: &[u8]) -> Result<Volume, VolumeError> {
    let inst = Instance::parse("", bytes, true)?;
    assemble(&[inst])
}

/// Lists the image series among `files` (name, bytes). Files that are not DICOM images are
/// skipped and listed in [`SeriesList::skipped`]; a file that is DICOM but broken is an error.
pub fn list_series(files: &[(String, Vec<u8>)]) -> Result<SeriesList, VolumeError> {
    let mut series: Vec<SeriesInfo> = Vec::new();
    let mut skipped = Vec::new();
    for (name, bytes) in files {
        let inst = match classify(name, bytes, false)? {
            Ok(inst) => inst,
            Err(reason) => {
                skipped.push((name.clone(), reason));
                continue;
            }
        };
        let frames = inst.frames.len();
        match series.iter_mut().find(|s| s.uid == inst.series_uid) {
            Some(s) => {
                s.dims[2] += frames;
                s.files.push(name.clone());
            }
            None => series.push(SeriesInfo {
                uid: inst.series_uid.clone(),
                description: inst.description.clone(),
                number: inst.series_number,
                modality: inst.modality.clone(),
                files: vec![name.clone()],
                dims: [usize::from(inst.cols), usize::from(inst.rows), frames],
            }),
        }
    }
    series.sort_by(|a, b| a.number.cmp(&b.number).then_with(|| a.uid.cmp(&b.uid)));
    Ok(SeriesList { series, skipped })
}

/// Reads the series with SeriesInstanceUID `uid` from `files` as one volume (other files are
/// ignored).
pub fn read_series(files: &[(String, Vec<u8>)], uid: &str) -> Result<Volume, VolumeError> {
    let mut instances = Vec::new();
    for (name, bytes) in files {
        if let Ok(inst) = classify(name, bytes, true)? {
            if inst.series_uid == uid {
                instances.push(inst);
            }
        }
    }
    if instances.is_empty() {
        return Err(VolumeError::NotRecognized(format!(
            "no DICOM image of series \"{uid}\" among the {} files",
            files.len()
        )));
    }
    assemble(&instances)
}

/// Parses a file of a folder: Ok(Ok(instance)) for an image, Ok(Err(reason)) for a file to skip
/// (not DICOM, or DICOM without pixel data such as a DICOMDIR), Err for a broken DICOM image.
fn classify(
    name: &str,
    bytes: &[u8],
    pixels: bool,
) -> Result<Result<Instance, String>, VolumeError> {
    if !is_dicom(bytes) {
        return Ok(Err("not a DICOM file".into()));
    }
    match Instance::parse(name, bytes, pixels) {
        Ok(inst) => Ok(Ok(inst)),
        Err(Skip::NotImage(reason)) => Ok(Err(reason)),
        Err(Skip::Error(e)) => Err(with_file(e, name)),
    }
}

/// Why a DICOM file is not read as an image.
enum Skip {
    /// Valid DICOM, but not an image (DICOMDIR, structured report, ...).
    NotImage(String),
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

/// Checks the structure of a DICOM file and returns its transfer syntax UID.
fn prescan(bytes: &[u8]) -> Result<String, VolumeError> {
    let scan = Scan { b: bytes };
    let mut pos = 132usize;
    let mut ts = None;
    loop {
        if pos + 4 > bytes.len() {
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
    Ok(ts)
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
}

struct Instance {
    name: String,
    obj: DefaultDicomObject,
    ts: String,
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

impl Instance {
    fn parse(name: &str, bytes: &[u8], pixels: bool) -> Result<Instance, Skip> {
        if bytes.is_empty() {
            return Err(VolumeError::NotRecognized("the file is empty".into()).into());
        }
        if !is_dicom(bytes) {
            return Err(VolumeError::NotRecognized(
                "not a DICOM file: no \"DICM\" marker after the 128-byte preamble".into(),
            )
            .into());
        }
        let ts = prescan(bytes)?;
        let options = OpenFileOptions::new().read_preamble(ReadPreamble::Always);
        let options = if pixels {
            options
        } else {
            options.read_until(tags::PIXEL_DATA)
        };
        let obj = options
            .from_reader(bytes)
            .map_err(|e| broken(format!("DICOM parse error: {}", snafu_chain(&e))))?;
        let has_pixels = !pixels || obj.get(tags::PIXEL_DATA).is_some();
        let rows = int(&obj, tags::ROWS);
        let cols = int(&obj, tags::COLUMNS);
        let (Some(rows), Some(cols), true) = (rows, cols, has_pixels) else {
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
        if nframes > 1 && nframes.saturating_mul(frame_bytes) > bytes.len() {
            return Err(VolumeError::Truncated(format!(
                "NumberOfFrames is {nframes} ({rows}x{cols} pixels of {bits_allocated} bits) \
                 but the file has only {} bytes",
                bytes.len()
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
        let mut frames = Vec::with_capacity(nframes.min(4096));
        for f in 0..nframes {
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
            });
        }
        if pixels {
            pixel_codec(&ts)?;
        }
        Ok(Instance {
            name: name.to_string(),
            series_uid: text(&obj, tags::SERIES_INSTANCE_UID).unwrap_or_default(),
            description: text(&obj, tags::SERIES_DESCRIPTION).unwrap_or_default(),
            series_number: int(&obj, tags::SERIES_NUMBER),
            modality: text(&obj, tags::MODALITY).unwrap_or_default(),
            obj,
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

    /// All frames' stored values (before rescaling) in file order.
    fn decode(&self) -> Result<Vec<Vec<f32>>, VolumeError> {
        let n = self.frames.len();
        let px = self.frame_pixels();
        let codec = pixel_codec(&self.ts)?;
        let element = self
            .obj
            .get(tags::PIXEL_DATA)
            .ok_or_else(|| broken("the DICOM image has no PixelData (7FE0,0010)".into()))?;
        let (bytes, bits): (std::borrow::Cow<[u8]>, u16) = match (codec, element.value()) {
            (PixelCodec::Native, DicomValue::Primitive(p)) => (p.to_bytes(), self.bits_allocated),
            (PixelCodec::Native, _) => {
                return Err(broken(
                    "the pixel data is encapsulated (compressed) but the transfer syntax is not"
                        .into(),
                ))
            }
            (_, DicomValue::PixelSequence(seq)) => {
                let fragments = seq.fragments();
                let total: usize = fragments.iter().map(|f| f.len()).sum();
                let decoded = n
                    .saturating_mul(px)
                    .saturating_mul(usize::from(self.bits_allocated.div_ceil(8)));
                if decoded > total.saturating_mul(MAX_COMPRESSION_RATIO) + RATIO_ALLOWANCE {
                    return Err(VolumeError::TooLarge(format!(
                        "{n} frames of {}x{} pixels would expand from only {total} bytes of \
                         {} data",
                        self.cols,
                        self.rows,
                        transfer_syntax_name(&self.ts)
                    )));
                }
                if fragments.len() < n && codec != PixelCodec::Fragments {
                    return Err(VolumeError::Truncated(format!(
                        "NumberOfFrames is {n} but the encapsulated pixel data has only {} \
                         fragments",
                        fragments.len()
                    )));
                }
                for (i, fragment) in fragments.iter().enumerate() {
                    check_codestream(codec, fragment, self.rows, self.cols, self.bits_allocated)
                        .map_err(|m| broken(format!("pixel data fragment {i}: {m}")))?;
                }
                if self.bits_allocated == 1 {
                    return Err(broken(
                        "1-bit pixel data must not be compressed (BitsAllocated 1)".into(),
                    ));
                }
                let mut out = Vec::with_capacity(n.min(4096));
                for f in 0..n {
                    let frame = self.obj.decode_pixel_data_frame(f as u32).map_err(|e| {
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
                            "frame {f} decodes to {} bytes but {}x{} pixels of {} bits need \
                             {need}",
                            data.len(),
                            self.cols,
                            self.rows,
                            self.bits_allocated
                        ))
                    })?;
                    out.push(self.samples(data, false));
                }
                return Ok(out);
            }
            _ => {
                return Err(broken(
                    "the DICOM PixelData element is not pixel data".into(),
                ))
            }
        };
        let big_endian = false; // dicom-rs hands over native-endian values
        let frame_bits = px * usize::from(bits);
        let need_bits = frame_bits.saturating_mul(n);
        if need_bits.div_ceil(8) > bytes.len() {
            return Err(VolumeError::Truncated(format!(
                "PixelData holds {} bytes but {n} frame(s) of {}x{} pixels at {bits} bits need {}",
                bytes.len(),
                self.cols,
                self.rows,
                need_bits.div_ceil(8)
            )));
        }
        let mut out = Vec::with_capacity(n.min(4096));
        for f in 0..n {
            if bits == 1 {
                let start = f * frame_bits;
                out.push(
                    (start..start + frame_bits)
                        .map(|b| {
                            let byte = bytes.get(b / 8).copied().unwrap_or(0);
                            f32::from((byte >> (b % 8)) & 1)
                        })
                        .collect(),
                );
            } else {
                let size = frame_bits / 8;
                let data = bytes.get(f * size..(f + 1) * size).unwrap_or_default();
                out.push(self.samples(data, big_endian));
            }
        }
        Ok(out)
    }

    /// Converts stored samples (8, 16 or 32 bits) to values: the low BitsStored bits, sign-extended
    /// when PixelRepresentation is 1.
    fn samples(&self, data: &[u8], big_endian: bool) -> Vec<f32> {
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
            8 => data.iter().map(|&b| fix(u32::from(b))).collect(),
            16 => data
                .chunks_exact(2)
                .map(|c| {
                    let a = [c[0], c[1]];
                    fix(u32::from(if big_endian {
                        u16::from_be_bytes(a)
                    } else {
                        u16::from_le_bytes(a)
                    }))
                })
                .collect(),
            _ => data
                .chunks_exact(4)
                .map(|c| {
                    let a = [c[0], c[1], c[2], c[3]];
                    fix(if big_endian {
                        u32::from_be_bytes(a)
                    } else {
                        u32::from_le_bytes(a)
                    })
                })
                .collect(),
        }
    }
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

fn assemble(instances: &[Instance]) -> Result<Volume, VolumeError> {
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
    let n = frames.len();
    let (dims, nvox, _) = check_grid(
        [i64::from(first.cols), i64::from(first.rows), n as i64],
        4,
        "DICOM Columns x Rows x frames",
    )?;
    debug_assert!(nvox <= MAX_VOXELS);
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

    // Sort frames along the normal.
    let mut placed = Vec::with_capacity(n);
    for &(i, f, fr) in &frames {
        let p = fr.position.ok_or_else(|| {
            broken(format!(
                "{}frame {f} has no ImagePositionPatient (0020,0032): the slices cannot be \
                 ordered",
                label(i)
            ))
        })?;
        placed.push((dot(normal, p), p, i, f));
    }
    placed.sort_by(|a, b| a.0.total_cmp(&b.0));
    let step = if n > 1 {
        let (d0, p0) = (placed[0].0, placed[0].1);
        let (dn, pn) = (placed[n - 1].0, placed[n - 1].1);
        let mean_gap = (dn - d0) / (n - 1) as f64;
        for w in placed.windows(2) {
            let gap = w[1].0 - w[0].0;
            if gap.abs() < 1e-3 {
                let where_ = |k: usize| {
                    let (i, f) = (w[k].2, w[k].3);
                    format!("{}frame {f}", label(i))
                };
                return Err(broken(format!(
                    "{} and {} are at the same position {:?}: the series holds several volumes \
                     (time points, echoes or mixed series); insitu reads one 3-D volume",
                    where_(0),
                    where_(1),
                    w[0].1
                )));
            }
        }
        for w in placed.windows(2) {
            let gap = w[1].0 - w[0].0;
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
        placed[0].1,
        "DICOM ImageOrientationPatient/PixelSpacing/ImagePositionPatient",
    )?;

    // Voxels: decode each file once, place its frames in sorted order.
    let mut slot: Vec<Vec<usize>> = instances
        .iter()
        .map(|inst| vec![usize::MAX; inst.frames.len()])
        .collect();
    for (k, &(_, _, i, f)) in placed.iter().enumerate() {
        if let Some(s) = slot.get_mut(i).and_then(|v| v.get_mut(f)) {
            *s = k;
        }
    }
    let px = first.frame_pixels();
    let mut slices: Vec<Option<Vec<f32>>> = vec![None; n];
    for (i, inst) in instances.iter().enumerate() {
        let decoded = inst.decode().map_err(|e| prefix(e, &inst.label()))?;
        for (f, mut values) in decoded.into_iter().enumerate() {
            let Some(fr) = inst.frames.get(f) else {
                break;
            };
            if fr.slope != 1.0 || fr.intercept != 0.0 {
                for v in values.iter_mut() {
                    *v = (f64::from(*v) * fr.slope + fr.intercept) as f32;
                }
            }
            values.resize(px, 0.0);
            if let Some(k) = slot.get(i).and_then(|s| s.get(f)) {
                if let Some(s) = slices.get_mut(*k) {
                    *s = Some(values);
                }
            }
        }
    }
    let mut data = Vec::with_capacity(nvox);
    for s in slices {
        data.extend(s.unwrap_or_else(|| vec![0.0; px]));
    }
    Ok(Volume { geometry, data })
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
    }
}

/// Labels errors of a multi-file read with the file they concern.
pub(crate) fn with_file(e: VolumeError, name: &str) -> VolumeError {
    prefix(e, &format!("{name}: "))
}
