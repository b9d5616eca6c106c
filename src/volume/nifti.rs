//! NIfTI-1 and NIfTI-2 single-file images (`.nii`, and gzip-compressed `.nii.gz`).
//!
//! Reading follows nibabel: the affine is the sform when `sform_code != 0`, else the qform when
//! `qform_code != 0`, else nibabel's ANALYZE-style fallback (voxel sizes on the diagonal, x
//! flipped, origin at the centre of the grid). Header values are repaired the way nibabel repairs
//! them on load (zero voxel sizes become 1, negative ones their absolute value, a `qfac`
//! (`pixdim[0]`) other than ±1 becomes 1, unknown transform codes become 0), so that
//! `read_nifti(...).geometry.affine` equals nibabel's `img.affine`.
//!
//! Nothing read from a header is trusted for allocation: the voxel count is capped
//! ([`MAX_VOXELS`]), uncompressed files must hold all promised bytes before anything is
//! allocated, and gzip data is decompressed in bounded chunks that stop at the size the header
//! implies (never more than [`MAX_DECOMPRESSED_BYTES`]), so a gzip bomb cannot exhaust memory.
//! No input makes the reader panic.

use super::{Geometry, LabelMap, Volume, VolumeError};
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use std::io::{self, Read, Write};

/// Largest number of voxels (of the 3-D grid) a file may declare.
pub const MAX_VOXELS: usize = 1 << 30;

/// Largest number of bytes that are decompressed from a `.nii.gz` (header, extensions and voxels).
pub const MAX_DECOMPRESSED_BYTES: u64 = 4 << 30;

/// NIfTI intent code for a label (segmentation) volume.
pub const NIFTI_INTENT_LABEL: i16 = 1002;

/// `xyzt_units` written by the writers: millimetres and seconds.
const XYZT_UNITS_MM_SEC: u8 = 2 | 8;

const NIFTI1_HEADER_SIZE: usize = 348;
const NIFTI2_HEADER_SIZE: usize = 540;
/// The header plus the 4 extension-flag bytes that every single-file NIfTI carries.
const PREFIX_SIZE: usize = NIFTI2_HEADER_SIZE + 4;
/// Bytes converted per step when streaming decompressed voxels (a multiple of every voxel size).
const CHUNK_BYTES: usize = 1 << 20;
/// Deflate cannot expand input by more than about this factor; used only to bound a capacity hint.
const MAX_DEFLATE_RATIO: usize = 1032;
const NIFTI2_EOL_CHECK: [u8; 4] = [0x0d, 0x0a, 0x1a, 0x0a];

/// What a NIfTI header says, read without decoding (or even decompressing) the voxels.
#[derive(Clone, Debug, PartialEq)]
pub struct NiftiInfo {
    /// Grid and affine exactly as [`read_nifti`] would return them.
    pub geometry: Geometry,
    /// On-disk voxel type: "uint8", "int8", "int16", "uint16", "int32", "uint32", "int64",
    /// "uint64", "float32" or "float64".
    pub datatype: &'static str,
    /// Bytes per voxel of `datatype` on disk.
    pub bytes_per_voxel: usize,
    /// NIfTI version: 1 or 2.
    pub version: u8,
    /// `scl_slope` and `scl_inter` as stored; they are applied only when the slope is finite
    /// and non-zero.
    pub scl_slope: f64,
    pub scl_inter: f64,
    /// Number of 3-D volumes in the file (product of `dim[4..=dim[0]]`); [`read_nifti`] only
    /// accepts files with exactly one, [`read_nifti_volume`] reads any of them.
    pub frames: usize,
    /// The time between volumes in seconds (`pixdim[4]` in the units `xyzt_units` gives), for a
    /// 4-D file whose time unit is set.
    pub frame_seconds: Option<f64>,
}

/// Reads a NIfTI-1 or NIfTI-2 file (.nii, or gzip-compressed .nii.gz detected by magic bytes,
/// not by name).
pub fn read_nifti(bytes: &[u8]) -> Result<Volume, VolumeError> {
    read_frame(bytes, None)
}

/// Reads 3-D volume `volume` (from 0) of a NIfTI file holding any number of them (a 4-D
/// fMRI or DWI series: [`NiftiInfo::frames`]); only that volume's voxels are converted (of a
/// `.nii.gz`, the earlier ones are decompressed and dropped on the way).
pub fn read_nifti_volume(bytes: &[u8], volume: usize) -> Result<Volume, VolumeError> {
    read_frame(bytes, Some(volume))
}

fn read_frame(bytes: &[u8], volume: Option<usize>) -> Result<Volume, VolumeError> {
    if is_gzip(bytes) {
        let mut decoder = MultiGzDecoder::new(bytes);
        let prefix = read_prefix(&mut decoder)?;
        let header = parse_header(&prefix)?;
        let skip = header.frame_offset(volume)?;
        let within_cap = skip
            .checked_add(header.data_bytes as u64)
            .is_some_and(|end| end <= MAX_DECOMPRESSED_BYTES);
        if !within_cap {
            return Err(VolumeError::TooLarge(format!(
                "the header asks for {} bytes of voxels at offset {}: more than the {} bytes \
                     insitu decompresses",
                header.data_bytes, header.vox_offset, MAX_DECOMPRESSED_BYTES
            )));
        }
        let mut source = (&prefix[..]).chain(decoder);
        skip_to_voxels(&mut source, skip)?;
        // Capacity from the header, bounded by what the compressed size could possibly expand to.
        let hint = bytes.len().saturating_mul(MAX_DEFLATE_RATIO) / header.datatype.size();
        let mut data = Vec::with_capacity(header.nvox.min(hint));
        let mut buf = vec![0u8; CHUNK_BYTES.min(header.data_bytes)];
        let mut done = 0usize;
        while done < header.data_bytes {
            let want = CHUNK_BYTES.min(header.data_bytes - done);
            let chunk = buf.get_mut(..want).unwrap_or_default();
            let got = fill(&mut source, chunk).map_err(decompress_error)?;
            if got < want {
                return Err(header.truncated(done + got));
            }
            convert(
                chunk,
                header.datatype,
                header.big_endian,
                header.scale,
                &mut data,
            );
            done += want;
        }
        Ok(Volume {
            geometry: header.info.geometry,
            data,
        })
    } else {
        let header = parse_header(bytes)?;
        let skip = header.frame_offset(volume)?;
        let start = usize::try_from(skip)
            .ok()
            .filter(|&s| s <= bytes.len())
            .ok_or_else(|| {
                if header.vox_offset > bytes.len() as u64 {
                    header.offset_beyond_end(bytes.len() as u64)
                } else {
                    header.truncated(0)
                }
            })?;
        let voxels = bytes.get(start..).unwrap_or_default();
        let voxels = voxels
            .get(..header.data_bytes)
            .ok_or_else(|| header.truncated(voxels.len()))?;
        let mut data = Vec::with_capacity(header.nvox);
        convert(
            voxels,
            header.datatype,
            header.big_endian,
            header.scale,
            &mut data,
        );
        Ok(Volume {
            geometry: header.info.geometry,
            data,
        })
    }
}

/// Header-only peek (dims, datatype name, spacing, affine) without decoding voxels; allocates
/// nothing sized from header values. Applies every header check [`read_nifti`] applies except
/// the single-volume rule (see [`NiftiInfo::frames`]); it does not check that the voxel data
/// is all there.
pub fn read_nifti_header(bytes: &[u8]) -> Result<NiftiInfo, VolumeError> {
    if is_gzip(bytes) {
        let prefix = read_prefix(&mut MultiGzDecoder::new(bytes))?;
        Ok(parse_header(&prefix)?.info)
    } else {
        Ok(parse_header(bytes)?.info)
    }
}

/// Writes labels as NIfTI-1 with `labels.geometry` (sform and qform from the affine, codes kept;
/// intent code NIFTI_INTENT_LABEL=1002), uint8 when max label < 256 else uint16 (datatype 512).
/// gzip when `gzip`.
///
/// The transform codes are kept, except that when `sform_code` is 0 and the qform (or, with
/// `qform_code` 0 too, the ANALYZE fallback) would not reproduce the affine, the sform is
/// marked valid (the qform code, or 2 "aligned") so that readers see the affine. Grids with a
/// dimension above 32767 (not representable in NIfTI-1) are written as NIfTI-2.
pub fn write_labels(labels: &LabelMap, gzip: bool) -> Vec<u8> {
    let geometry = &labels.geometry;
    debug_assert_eq!(
        labels.labels.len(),
        geometry.voxel_count(),
        "label count != grid size"
    );
    let max = labels.max_label();
    let fields = HeaderFields {
        datatype: if max < 256 {
            DataType::U8
        } else {
            DataType::U16
        },
        compression: Compression::default(),
        intent_code: NIFTI_INTENT_LABEL,
        cal_max: f64::from(max),
        descrip: b"insitu labels",
    };
    let values = padded(&labels.labels, geometry.voxel_count(), 0u16);
    if max < 256 {
        write_file(geometry, &fields, gzip, values, |v, out| out.push(v as u8))
    } else {
        write_file(geometry, &fields, gzip, values, |v, out| {
            out.extend_from_slice(&v.to_le_bytes())
        })
    }
}

/// Writes a float32 intensity volume with its geometry (for debugging/conversion).
pub fn write_volume(volume: &Volume, gzip: bool) -> Vec<u8> {
    let geometry = &volume.geometry;
    debug_assert_eq!(
        volume.data.len(),
        geometry.voxel_count(),
        "value count != grid size"
    );
    let fields = HeaderFields {
        datatype: DataType::F32,
        compression: Compression::fast(),
        intent_code: 0,
        cal_max: 0.0,
        descrip: b"insitu",
    };
    let values = padded(&volume.data, geometry.voxel_count(), 0.0f32);
    write_file(geometry, &fields, gzip, values, |v, out| {
        out.extend_from_slice(&v.to_le_bytes())
    })
}

// ---------------------------------------------------------------------------------------------
// Data types

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DataType {
    U8,
    I8,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    F32,
    F64,
}

impl DataType {
    fn from_code(code: i16) -> Option<DataType> {
        Some(match code {
            2 => DataType::U8,
            4 => DataType::I16,
            8 => DataType::I32,
            16 => DataType::F32,
            64 => DataType::F64,
            256 => DataType::I8,
            512 => DataType::U16,
            768 => DataType::U32,
            1024 => DataType::I64,
            1280 => DataType::U64,
            _ => return None,
        })
    }

    fn code(self) -> i16 {
        match self {
            DataType::U8 => 2,
            DataType::I16 => 4,
            DataType::I32 => 8,
            DataType::F32 => 16,
            DataType::F64 => 64,
            DataType::I8 => 256,
            DataType::U16 => 512,
            DataType::U32 => 768,
            DataType::I64 => 1024,
            DataType::U64 => 1280,
        }
    }

    fn name(self) -> &'static str {
        match self {
            DataType::U8 => "uint8",
            DataType::I8 => "int8",
            DataType::I16 => "int16",
            DataType::U16 => "uint16",
            DataType::I32 => "int32",
            DataType::U32 => "uint32",
            DataType::I64 => "int64",
            DataType::U64 => "uint64",
            DataType::F32 => "float32",
            DataType::F64 => "float64",
        }
    }

    /// Bytes per voxel (always divides 8, hence [`CHUNK_BYTES`]).
    fn size(self) -> usize {
        match self {
            DataType::U8 | DataType::I8 => 1,
            DataType::I16 | DataType::U16 => 2,
            DataType::I32 | DataType::U32 | DataType::F32 => 4,
            DataType::I64 | DataType::U64 | DataType::F64 => 8,
        }
    }
}

/// Name of a NIfTI datatype code insitu does not read, for error messages.
fn unsupported_datatype_name(code: i16) -> &'static str {
    match code {
        0 => "unknown",
        1 => "binary",
        32 => "complex64",
        128 => "rgb24",
        1536 => "float128",
        1792 => "complex128",
        2048 => "complex256",
        2304 => "rgba32",
        _ => "not a NIfTI datatype",
    }
}

/// Appends the voxels in `bytes` (a whole number of voxels) to `out` as f32, scaled by
/// `scale = (slope, inter)` when given.
fn convert(
    bytes: &[u8],
    datatype: DataType,
    big_endian: bool,
    scale: Option<(f64, f64)>,
    out: &mut Vec<f32>,
) {
    macro_rules! run {
        ($t:ty, $n:literal) => {{
            let raw = bytes.chunks_exact($n).map(|c| {
                let mut a = [0u8; $n];
                a.copy_from_slice(c);
                a
            });
            match (big_endian, scale) {
                (false, None) => out.extend(raw.map(|a| <$t>::from_le_bytes(a) as f32)),
                (true, None) => out.extend(raw.map(|a| <$t>::from_be_bytes(a) as f32)),
                (false, Some((s, i))) => {
                    out.extend(raw.map(|a| (<$t>::from_le_bytes(a) as f64 * s + i) as f32))
                }
                (true, Some((s, i))) => {
                    out.extend(raw.map(|a| (<$t>::from_be_bytes(a) as f64 * s + i) as f32))
                }
            }
        }};
    }
    match datatype {
        DataType::U8 => match scale {
            None => out.extend(bytes.iter().map(|&b| f32::from(b))),
            Some((s, i)) => out.extend(bytes.iter().map(|&b| (f64::from(b) * s + i) as f32)),
        },
        DataType::I8 => match scale {
            None => out.extend(bytes.iter().map(|&b| f32::from(b as i8))),
            Some((s, i)) => out.extend(bytes.iter().map(|&b| (f64::from(b as i8) * s + i) as f32)),
        },
        DataType::I16 => run!(i16, 2),
        DataType::U16 => run!(u16, 2),
        DataType::I32 => run!(i32, 4),
        DataType::U32 => run!(u32, 4),
        DataType::I64 => run!(i64, 8),
        DataType::U64 => run!(u64, 8),
        DataType::F32 => run!(f32, 4),
        DataType::F64 => run!(f64, 8),
    }
}

// ---------------------------------------------------------------------------------------------
// Header parsing

/// A checked header: everything needed to decode the voxels.
struct Header {
    info: NiftiInfo,
    datatype: DataType,
    big_endian: bool,
    /// `dim[0]` and `dim[4]`, for the single-volume error message.
    ndim: i64,
    dim4: i64,
    vox_offset: u64,
    /// Voxels of the first 3-D volume, and their size on disk.
    nvox: usize,
    data_bytes: usize,
    scale: Option<(f64, f64)>,
}

impl Header {
    /// Where volume `volume` starts (None: the only one, checked).
    fn frame_offset(&self, volume: Option<usize>) -> Result<u64, VolumeError> {
        let k = match volume {
            None => {
                self.ensure_single_volume()?;
                0
            }
            Some(k) => super::pick_volume(Some(k), self.info.frames, "the NIfTI file")?,
        };
        (k as u64)
            .checked_mul(self.data_bytes as u64)
            .and_then(|o| o.checked_add(self.vox_offset))
            .ok_or_else(|| {
                VolumeError::TooLarge(format!(
                    "volume {k} of {} bytes lies beyond any file insitu reads",
                    self.data_bytes
                ))
            })
    }

    fn ensure_single_volume(&self) -> Result<(), VolumeError> {
        if self.info.frames == 1 {
            Ok(())
        } else if self.dim4 > 1 {
            Err(VolumeError::BadHeader(format!(
                "4-D volume with {} frames: insitu needs a single 3-D volume",
                self.dim4
            )))
        } else {
            Err(VolumeError::BadHeader(format!(
                "{}-D volume with {} values per voxel: insitu needs a single 3-D volume",
                self.ndim, self.info.frames
            )))
        }
    }

    fn truncated(&self, available: usize) -> VolumeError {
        let d = self.info.geometry.dims;
        VolumeError::Truncated(format!(
            "the header promises {}x{}x{} = {} voxels of {} ({} bytes) from offset {}, but only {} \
             bytes follow",
            d[0],
            d[1],
            d[2],
            self.nvox,
            self.datatype.name(),
            self.data_bytes,
            self.vox_offset,
            available
        ))
    }

    fn offset_beyond_end(&self, len: u64) -> VolumeError {
        VolumeError::BadHeader(format!(
            "vox_offset {} is beyond the end of the file ({len} bytes)",
            self.vox_offset
        ))
    }
}

fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x1f, 0x8b])
}

fn decompress_error(e: io::Error) -> VolumeError {
    VolumeError::Decompress(format!("gzip data is corrupt or truncated: {e}"))
}

/// Reads into `buf` until it is full or the source ends; returns the bytes read.
fn fill(source: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match source.read(buf.get_mut(n..).unwrap_or_default()) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The first bytes of a gzip stream: enough for either header version (less if the data is
/// shorter).
fn read_prefix(decoder: &mut impl Read) -> Result<Vec<u8>, VolumeError> {
    let mut prefix = vec![0u8; PREFIX_SIZE];
    let n = fill(decoder, &mut prefix).map_err(decompress_error)?;
    prefix.truncate(n);
    Ok(prefix)
}

/// Consumes `offset` bytes of the decompressed stream (header and extensions).
fn skip_to_voxels(source: &mut impl Read, offset: u64) -> Result<(), VolumeError> {
    let skipped = io::copy(&mut source.take(offset), &mut io::sink()).map_err(decompress_error)?;
    if skipped < offset {
        return Err(VolumeError::BadHeader(format!(
            "vox_offset {offset} is beyond the end of the decompressed file ({skipped} bytes)"
        )));
    }
    Ok(())
}

/// Fixed-offset field access into a header of known length; reads past the end give zeros
/// (callers check the length first, this only keeps the reader panic-free).
struct Fields<'a> {
    bytes: &'a [u8],
    big_endian: bool,
}

impl Fields<'_> {
    fn array<const N: usize>(&self, offset: usize) -> [u8; N] {
        let mut a = [0u8; N];
        if let Some(src) = offset
            .checked_add(N)
            .and_then(|end| self.bytes.get(offset..end))
        {
            a.copy_from_slice(src);
        }
        if self.big_endian {
            a.reverse();
        }
        a
    }
    fn i16(&self, offset: usize) -> i16 {
        i16::from_le_bytes(self.array(offset))
    }
    fn i32(&self, offset: usize) -> i32 {
        i32::from_le_bytes(self.array(offset))
    }
    fn i64(&self, offset: usize) -> i64 {
        i64::from_le_bytes(self.array(offset))
    }
    fn f32(&self, offset: usize) -> f64 {
        f64::from(f32::from_le_bytes(self.array(offset)))
    }
    fn f64(&self, offset: usize) -> f64 {
        f64::from_le_bytes(self.array(offset))
    }
}

/// The header fields insitu uses, in the widest types of either version.
struct RawHeader {
    version: u8,
    datatype: i16,
    dim: [i64; 8],
    pixdim: [f64; 8],
    /// NIfTI-1 stores vox_offset as a float; NIfTI-2 as an integer.
    vox_offset: f64,
    scl_slope: f64,
    scl_inter: f64,
    qform_code: i32,
    sform_code: i32,
    quatern: [f64; 3],
    qoffset: [f64; 3],
    srow: [[f64; 4]; 3],
    xyzt_units: i32,
}

fn raw_header_v1(f: &Fields) -> RawHeader {
    RawHeader {
        version: 1,
        datatype: f.i16(70),
        dim: std::array::from_fn(|i| i64::from(f.i16(40 + 2 * i))),
        pixdim: std::array::from_fn(|i| f.f32(76 + 4 * i)),
        vox_offset: f.f32(108),
        scl_slope: f.f32(112),
        scl_inter: f.f32(116),
        qform_code: i32::from(f.i16(252)),
        sform_code: i32::from(f.i16(254)),
        quatern: std::array::from_fn(|i| f.f32(256 + 4 * i)),
        qoffset: std::array::from_fn(|i| f.f32(268 + 4 * i)),
        srow: std::array::from_fn(|r| std::array::from_fn(|c| f.f32(280 + 16 * r + 4 * c))),
        xyzt_units: i32::from(f.array::<1>(123)[0]),
    }
}

fn raw_header_v2(f: &Fields) -> RawHeader {
    let vox_offset = f.i64(168);
    RawHeader {
        version: 2,
        datatype: f.i16(12),
        dim: std::array::from_fn(|i| f.i64(16 + 8 * i)),
        pixdim: std::array::from_fn(|i| f.f64(104 + 8 * i)),
        // Exact for every offset below 2^53, far beyond any file insitu accepts.
        vox_offset: if vox_offset < 0 {
            -1.0
        } else {
            vox_offset as f64
        },
        scl_slope: f.f64(176),
        scl_inter: f.f64(184),
        qform_code: f.i32(344),
        sform_code: f.i32(348),
        quatern: std::array::from_fn(|i| f.f64(352 + 8 * i)),
        qoffset: std::array::from_fn(|i| f.f64(376 + 8 * i)),
        srow: std::array::from_fn(|r| std::array::from_fn(|c| f.f64(400 + 32 * r + 8 * c))),
        xyzt_units: f.i32(500),
    }
}

/// Identifies the header version and byte order, checks the header and derives the geometry.
fn parse_header(bytes: &[u8]) -> Result<Header, VolumeError> {
    let first4: [u8; 4] = match bytes.get(..4) {
        Some(b) => [b[0], b[1], b[2], b[3]],
        None if bytes.is_empty() => {
            return Err(VolumeError::NotRecognized("the file is empty".into()))
        }
        None => {
            return Err(VolumeError::NotRecognized(format!(
                "{} bytes are too few for a NIfTI header",
                bytes.len()
            )))
        }
    };
    let le = i32::from_le_bytes(first4);
    let be = i32::from_be_bytes(first4);
    let (version, big_endian, size) = match (le, be) {
        (348, _) => (1u8, false, NIFTI1_HEADER_SIZE),
        (540, _) => (2, false, NIFTI2_HEADER_SIZE),
        (_, 348) => (1, true, NIFTI1_HEADER_SIZE),
        (_, 540) => (2, true, NIFTI2_HEADER_SIZE),
        _ => return Err(bad_sizeof_hdr(bytes, le)),
    };
    if bytes.len() < size {
        return Err(VolumeError::Truncated(format!(
            "a NIfTI-{version} header needs {size} bytes but the file has only {}",
            bytes.len()
        )));
    }
    let magic_at = if version == 1 { 344 } else { 4 };
    let magic = bytes.get(magic_at..magic_at + 4).unwrap_or_default();
    match (version, magic) {
        (1, b"n+1\0") | (2, b"n+2\0") => {}
        (1, b"ni1\0") | (2, b"ni2\0") => {
            return Err(VolumeError::BadHeader(format!(
                "this is the header of a NIfTI-{version} .hdr/.img pair; only single-file NIfTI \
                 (.nii, .nii.gz) is supported"
            )))
        }
        (1, _) => {
            return Err(VolumeError::NotRecognized(
                "the header has no NIfTI-1 magic \"n+1\" (ANALYZE 7.5 .hdr/.img files are not \
                 supported)"
                    .into(),
            ))
        }
        _ => {
            return Err(VolumeError::NotRecognized(
                "the 540-byte header has no NIfTI-2 magic \"n+2\"".into(),
            ))
        }
    }
    if version == 2 {
        let eol = bytes.get(8..12).unwrap_or_default();
        if eol != NIFTI2_EOL_CHECK && eol != [0u8; 4] {
            return Err(VolumeError::BadHeader(
                "the NIfTI-2 line-ending check bytes are altered: the file was probably \
                 transferred in text mode and is corrupt"
                    .into(),
            ));
        }
    }
    let fields = Fields { bytes, big_endian };
    let raw = if version == 1 {
        raw_header_v1(&fields)
    } else {
        raw_header_v2(&fields)
    };
    check_header(raw, big_endian, size)
}

fn bad_sizeof_hdr(bytes: &[u8], le: i32) -> VolumeError {
    let magic1 = bytes.get(344..348);
    let magic2 = bytes.get(4..8);
    if matches!(magic1, Some(b"n+1\0") | Some(b"ni1\0")) {
        VolumeError::BadHeader(format!(
            "sizeof_hdr is {le} (bytes {:02x?}) but a NIfTI-1 header must say 348",
            bytes.get(..4).unwrap_or_default()
        ))
    } else if matches!(magic2, Some(b"n+2\0") | Some(b"ni2\0")) {
        VolumeError::BadHeader(format!(
            "sizeof_hdr is {le} (bytes {:02x?}) but a NIfTI-2 header must say 540",
            bytes.get(..4).unwrap_or_default()
        ))
    } else {
        VolumeError::NotRecognized(
            "not a NIfTI file: the first 4 bytes (sizeof_hdr) are neither 348 nor 540 in either \
             byte order"
                .into(),
        )
    }
}

fn check_header(
    raw: RawHeader,
    big_endian: bool,
    header_size: usize,
) -> Result<Header, VolumeError> {
    let ndim = raw.dim[0];
    if !(1..=7).contains(&ndim) {
        return Err(VolumeError::BadHeader(format!(
            "dim[0] = {ndim}: the number of dimensions must be 1 to 7"
        )));
    }
    let ndim_usize = ndim as usize; // 1..=7
    let mut dim = [1i64; 8];
    for (k, (slot, &d)) in dim
        .iter_mut()
        .zip(&raw.dim)
        .enumerate()
        .take(ndim_usize + 1)
        .skip(1)
    {
        if d < 1 {
            return Err(VolumeError::BadHeader(format!(
                "dim[{k}] = {d}: dimensions must be positive"
            )));
        }
        *slot = d;
    }
    let datatype = DataType::from_code(raw.datatype).ok_or_else(|| {
        VolumeError::BadHeader(format!(
            "datatype {} ({}) is not supported: insitu reads uint8, int8, int16, uint16, int32, \
             uint32, int64, uint64, float32 and float64",
            raw.datatype,
            unsupported_datatype_name(raw.datatype)
        ))
    })?;

    let too_large = |what: String| {
        VolumeError::TooLarge(format!(
            "{what}: more than the {MAX_VOXELS} voxels insitu accepts"
        ))
    };
    let grid = format!("{}x{}x{}", dim[1], dim[2], dim[3]);
    let nvox = dim[1]
        .checked_mul(dim[2])
        .and_then(|n| n.checked_mul(dim[3]))
        .ok_or_else(|| too_large(format!("the grid is {grid}")))?;
    let nvox = usize::try_from(nvox)
        .ok()
        .filter(|&n| n <= MAX_VOXELS)
        .ok_or_else(|| too_large(format!("the grid is {grid} = {nvox} voxels")))?;
    let dims = [dim[1] as usize, dim[2] as usize, dim[3] as usize]; // each <= nvox
                                                                    // Both the on-disk voxels and the f32 output must be allocatable on this target.
    let fits = |bytes_per_voxel: usize| {
        nvox.checked_mul(bytes_per_voxel)
            .filter(|&b| b <= isize::MAX as usize)
    };
    let data_bytes = fits(std::mem::size_of::<f32>())
        .and(fits(datatype.size()))
        .ok_or_else(|| too_large(format!("the grid is {grid} = {nvox} voxels")))?;
    let frames = dim[4..]
        .iter()
        .try_fold(1usize, |acc, &d| {
            usize::try_from(d).ok().and_then(|d| acc.checked_mul(d))
        })
        .unwrap_or(usize::MAX);

    let min_offset = header_size + 4;
    if !(raw.vox_offset.is_finite() && raw.vox_offset >= 0.0) {
        return Err(VolumeError::BadHeader(format!(
            "vox_offset {} is not a valid byte offset",
            raw.vox_offset
        )));
    }
    // NIfTI-1 stores it as a float; nibabel truncates it to an integer.
    let vox_offset = raw.vox_offset.trunc() as u64;
    if vox_offset < min_offset as u64 {
        return Err(VolumeError::BadHeader(format!(
            "vox_offset {vox_offset} lies inside the header: a single-file NIfTI-{} keeps its \
             voxels at offset {min_offset} or later",
            raw.version
        )));
    }

    let slope_valid = raw.scl_slope.is_finite() && raw.scl_slope != 0.0;
    if slope_valid && !raw.scl_inter.is_finite() {
        return Err(VolumeError::BadHeader(format!(
            "scl_slope is {} but scl_inter is {}",
            raw.scl_slope, raw.scl_inter
        )));
    }
    let scale = (slope_valid && !(raw.scl_slope == 1.0 && raw.scl_inter == 0.0))
        .then_some((raw.scl_slope, raw.scl_inter));

    let geometry = geometry_of(&raw, dims)?;
    Ok(Header {
        info: NiftiInfo {
            geometry,
            datatype: datatype.name(),
            bytes_per_voxel: datatype.size(),
            version: raw.version,
            scl_slope: raw.scl_slope,
            scl_inter: raw.scl_inter,
            frames,
            frame_seconds: (ndim >= 4 && dim[4] > 1 && raw.pixdim[4] > 0.0)
                .then(|| match raw.xyzt_units & 0x38 {
                    8 => Some(raw.pixdim[4]),
                    16 => Some(raw.pixdim[4] / 1e3),
                    24 => Some(raw.pixdim[4] / 1e6),
                    _ => None,
                })
                .flatten(),
        },
        datatype,
        big_endian,
        ndim,
        dim4: dim[4],
        vox_offset,
        nvox,
        data_bytes,
        scale,
    })
}

// ---------------------------------------------------------------------------------------------
// Geometry

type Affine = [[f64; 4]; 4];

/// nibabel's accepted `xform_codes`; others are treated as 0 (nibabel's fix on load).
fn valid_xform_code(code: i32) -> i16 {
    if (0..=5).contains(&code) {
        code as i16
    } else {
        0
    }
}

fn geometry_of(raw: &RawHeader, dims: [usize; 3]) -> Result<Geometry, VolumeError> {
    // nibabel's load-time fixes: zero voxel sizes -> 1, negative -> abs; qfac not +-1 -> 1.
    let zooms: [f64; 3] = std::array::from_fn(|i| {
        let p = raw.pixdim[i + 1];
        if p == 0.0 {
            1.0
        } else {
            p.abs()
        }
    });
    let qfac = if raw.pixdim[0] == -1.0 { -1.0 } else { 1.0 };
    let sform_code = valid_xform_code(raw.sform_code);
    let qform_code = valid_xform_code(raw.qform_code);
    let (affine, source) = if sform_code != 0 {
        (sform_affine(&raw.srow), "sform")
    } else if qform_code != 0 {
        let threshold = if raw.version == 1 {
            3.0 * f64::from(f32::EPSILON)
        } else {
            3.0 * f64::EPSILON
        };
        (
            qform_affine(raw.quatern, raw.qoffset, zooms, qfac, threshold),
            "qform",
        )
    } else {
        let ndim = raw.dim[0].clamp(1, 3) as usize;
        let shape: [f64; 3] = std::array::from_fn(|i| if i < ndim { dims[i] as f64 } else { 1.0 });
        let z: [f64; 3] = std::array::from_fn(|i| if i < ndim { zooms[i] } else { 1.0 });
        (base_affine(shape, z), "pixdim")
    };
    if !affine.iter().flatten().all(|v| v.is_finite()) {
        return Err(VolumeError::BadHeader(format!(
            "the affine from the {source} has non-finite values"
        )));
    }
    Ok(Geometry {
        dims,
        spacing: zooms,
        affine,
        sform_code,
        qform_code,
    })
}

fn sform_affine(srow: &[[f64; 4]; 3]) -> Affine {
    [srow[0], srow[1], srow[2], [0.0, 0.0, 0.0, 1.0]]
}

/// NIfTI method 2 as nibabel computes it (`Nifti1Header.get_qform`).
fn qform_affine(
    bcd: [f64; 3],
    offset: [f64; 3],
    zooms: [f64; 3],
    qfac: f64,
    threshold: f64,
) -> Affine {
    let [mut b, mut c, mut d] = bcd;
    let norm2 = b * b + c * c + d * d;
    let w2 = 1.0 - norm2;
    let a = if w2.abs() < threshold {
        0.0
    } else if w2 < 0.0 {
        // Not a unit quaternion (nibabel raises here); normalize like nifti_quatern_to_mat44.
        let n = norm2.sqrt();
        b /= n;
        c /= n;
        d /= n;
        0.0
    } else {
        w2.sqrt()
    };
    let r = quat_to_mat(a, b, c, d);
    let v = [zooms[0], zooms[1], zooms[2] * qfac];
    let mut out = [[0.0; 4]; 4];
    for i in 0..3 {
        for j in 0..3 {
            out[i][j] = r[i][j] * v[j];
        }
        out[i][3] = offset[i];
    }
    out[3][3] = 1.0;
    out
}

/// nibabel's `quat2mat`: the rotation of a (not necessarily unit) quaternion.
fn quat_to_mat(w: f64, x: f64, y: f64, z: f64) -> [[f64; 3]; 3] {
    let nq = w * w + x * x + y * y + z * z;
    if nq < f64::EPSILON {
        return [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    }
    let s = 2.0 / nq;
    let (xs, ys, zs) = (x * s, y * s, z * s);
    let (wx, wy, wz) = (w * xs, w * ys, w * zs);
    let (xx, xy, xz) = (x * xs, x * ys, x * zs);
    let (yy, yz, zz) = (y * ys, y * zs, z * zs);
    [
        [1.0 - (yy + zz), xy - wz, xz + wy],
        [xy + wz, 1.0 - (xx + zz), yz - wx],
        [xz - wy, yz + wx, 1.0 - (xx + yy)],
    ]
}

/// nibabel's `shape_zoom_affine` with x flipped: the ANALYZE fallback, origin at the grid centre.
fn base_affine(shape: [f64; 3], zooms: [f64; 3]) -> Affine {
    let z = [-zooms[0], zooms[1], zooms[2]];
    let mut out = [[0.0; 4]; 4];
    for i in 0..3 {
        out[i][i] = z[i];
        out[i][3] = -(shape[i] - 1.0) / 2.0 * z[i];
    }
    out[3][3] = 1.0;
    out
}

/// The qform parameters of an affine (nifti_mat44_to_quatern, as nibabel's `set_qform`):
/// returns (quaternion b, c, d; column lengths; qfac).
fn affine_to_quatern(affine: &Affine) -> ([f64; 3], [f64; 3], f64) {
    let mut m = [[0.0; 3]; 3];
    let mut lengths = [0.0; 3];
    for (j, length) in lengths.iter_mut().enumerate() {
        let mut n = (0..3)
            .map(|i| affine[i][j] * affine[i][j])
            .sum::<f64>()
            .sqrt();
        if n == 0.0 || !n.is_finite() {
            // Degenerate column: patch it with the unit vector (nifti_mat44_to_quatern).
            for (i, row) in m.iter_mut().enumerate() {
                row[j] = if i == j { 1.0 } else { 0.0 };
            }
            n = 1.0;
        } else {
            for (i, row) in m.iter_mut().enumerate() {
                row[j] = affine[i][j] / n;
            }
        }
        *length = n;
    }
    let p = polar(m);
    let det = det3(&p);
    let mut r = p;
    let qfac = if det > 0.0 {
        1.0
    } else {
        for row in r.iter_mut() {
            row[2] = -row[2];
        }
        -1.0
    };
    let [[r11, r12, r13], [r21, r22, r23], [r31, r32, r33]] = r;
    let trace1 = r11 + r22 + r33 + 1.0;
    let (a, b, c, d) = if trace1 > 0.5 {
        let a = 0.5 * trace1.sqrt();
        (
            a,
            0.25 * (r32 - r23) / a,
            0.25 * (r13 - r31) / a,
            0.25 * (r21 - r12) / a,
        )
    } else {
        let xd = 1.0 + r11 - (r22 + r33);
        let yd = 1.0 + r22 - (r11 + r33);
        let zd = 1.0 + r33 - (r11 + r22);
        if xd > 1.0 {
            let b = 0.5 * xd.sqrt();
            (
                0.25 * (r32 - r23) / b,
                b,
                0.25 * (r12 + r21) / b,
                0.25 * (r13 + r31) / b,
            )
        } else if yd > 1.0 {
            let c = 0.5 * yd.sqrt();
            (
                0.25 * (r13 - r31) / c,
                0.25 * (r12 + r21) / c,
                c,
                0.25 * (r23 + r32) / c,
            )
        } else {
            let d = 0.5 * zd.sqrt();
            (
                0.25 * (r21 - r12) / d,
                0.25 * (r13 + r31) / d,
                0.25 * (r23 + r32) / d,
                d,
            )
        }
    };
    // q and -q are the same rotation; NIfTI stores the one with a >= 0.
    let sign = if a < 0.0 { -1.0 } else { 1.0 };
    ([sign * b, sign * c, sign * d], lengths, qfac)
}

fn det3(m: &[[f64; 3]; 3]) -> f64 {
    m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
}

fn inverse3(m: &[[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let det = det3(m);
    let cof =
        |r0: usize, r1: usize, c0: usize, c1: usize| m[r0][c0] * m[r1][c1] - m[r0][c1] * m[r1][c0];
    [
        [
            cof(1, 2, 1, 2) / det,
            -cof(0, 2, 1, 2) / det,
            cof(0, 1, 1, 2) / det,
        ],
        [
            -cof(1, 2, 0, 2) / det,
            cof(0, 2, 0, 2) / det,
            -cof(0, 1, 0, 2) / det,
        ],
        [
            cof(1, 2, 0, 1) / det,
            -cof(0, 2, 0, 1) / det,
            cof(0, 1, 0, 1) / det,
        ],
    ]
}

fn row_norm(m: &[[f64; 3]; 3]) -> f64 {
    m.iter()
        .map(|r| r.iter().map(|v| v.abs()).sum::<f64>())
        .fold(0.0, f64::max)
}

fn col_norm(m: &[[f64; 3]; 3]) -> f64 {
    (0..3)
        .map(|j| (0..3).map(|i| m[i][j].abs()).sum::<f64>())
        .fold(0.0, f64::max)
}

/// The orthogonal matrix closest to `a` (nifti_mat33_polar: scaled Newton iteration).
fn polar(a: [[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let mut x = a;
    let mut tries = 0;
    while det3(&x) == 0.0 && tries < 100 {
        let g = 0.00001 * (0.001 + row_norm(&x));
        for (i, row) in x.iter_mut().enumerate() {
            row[i] += g;
        }
        tries += 1;
    }
    let mut dif = 1.0;
    for _ in 0..100 {
        let y = inverse3(&x);
        let (gam, gmi) = if dif > 0.3 {
            let alp = (row_norm(&x) * col_norm(&x)).sqrt();
            let bet = (row_norm(&y) * col_norm(&y)).sqrt();
            let gam = (bet / alp).sqrt();
            (gam, 1.0 / gam)
        } else {
            (1.0, 1.0)
        };
        let mut z = [[0.0; 3]; 3];
        dif = 0.0;
        for i in 0..3 {
            for j in 0..3 {
                z[i][j] = 0.5 * (gam * x[i][j] + gmi * y[j][i]);
                dif += (z[i][j] - x[i][j]).abs();
            }
        }
        x = z;
        if !dif.is_finite() || dif < 1e-12 {
            break;
        }
    }
    x
}

// ---------------------------------------------------------------------------------------------
// Writing

struct HeaderFields {
    datatype: DataType,
    /// gzip level: labels compress well and are kept small; volumes are written fast.
    compression: Compression,
    intent_code: i16,
    cal_max: f64,
    descrip: &'static [u8],
}

/// The header fields derived from a geometry: what the writers store.
struct WrittenGeometry {
    dims: [usize; 3],
    pixdim: [f64; 4],
    quatern: [f64; 3],
    qoffset: [f64; 3],
    srow: [[f64; 4]; 3],
    sform_code: i16,
    qform_code: i16,
}

fn written_geometry(g: &Geometry) -> WrittenGeometry {
    let a = &g.affine;
    let (quatern, lengths, qfac) = affine_to_quatern(a);
    // pixdim from the spacing, unless it disagrees with the affine (then the affine wins, so
    // that the qform reproduces it).
    let zooms: [f64; 3] = std::array::from_fn(|i| {
        let s = g.spacing[i];
        if s.is_finite() && s > 0.0 && (s - lengths[i]).abs() <= 1e-4 * lengths[i].max(1.0) {
            s
        } else {
            lengths[i]
        }
    });
    let mut sform_code = valid_xform_code(i32::from(g.sform_code));
    let qform_code = valid_xform_code(i32::from(g.qform_code));
    if sform_code == 0 {
        // A reader would use the qform, or the ANALYZE fallback: make sure that is the affine.
        let implied = if qform_code != 0 {
            let q = quatern.map(|v| f64::from(v as f32));
            qform_affine(
                q,
                [a[0][3], a[1][3], a[2][3]],
                zooms,
                qfac,
                3.0 * f64::from(f32::EPSILON),
            )
        } else {
            base_affine(g.dims.map(|d| d as f64), zooms)
        };
        let close = implied
            .iter()
            .flatten()
            .zip(a.iter().flatten())
            .all(|(x, y)| (x - y).abs() <= 1e-4 * y.abs().max(1.0));
        if !close {
            sform_code = if qform_code != 0 { qform_code } else { 2 };
        }
    }
    WrittenGeometry {
        dims: g.dims,
        pixdim: [qfac, zooms[0], zooms[1], zooms[2]],
        quatern,
        qoffset: [a[0][3], a[1][3], a[2][3]],
        srow: [a[0], a[1], a[2]],
        sform_code,
        qform_code,
    }
}

/// Little-endian field writer into a zeroed header buffer.
struct Out(Vec<u8>);

impl Out {
    fn put(&mut self, offset: usize, bytes: &[u8]) {
        if let Some(dst) = self.0.get_mut(offset..offset + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
    }
}

fn header_v1(g: &WrittenGeometry, f: &HeaderFields) -> Vec<u8> {
    let mut h = Out(vec![0u8; NIFTI1_HEADER_SIZE + 4]);
    h.put(0, &(NIFTI1_HEADER_SIZE as i32).to_le_bytes());
    h.put(38, b"r"); // "regular", as nibabel writes
    let dim = [3, g.dims[0], g.dims[1], g.dims[2], 1, 1, 1, 1];
    for (i, d) in dim.iter().enumerate() {
        h.put(40 + 2 * i, &(*d as i16).to_le_bytes());
    }
    h.put(68, &f.intent_code.to_le_bytes());
    h.put(70, &f.datatype.code().to_le_bytes());
    h.put(72, &((f.datatype.size() * 8) as i16).to_le_bytes());
    let pixdim = [
        g.pixdim[0],
        g.pixdim[1],
        g.pixdim[2],
        g.pixdim[3],
        1.0,
        1.0,
        1.0,
        1.0,
    ];
    for (i, p) in pixdim.iter().enumerate() {
        h.put(76 + 4 * i, &(*p as f32).to_le_bytes());
    }
    h.put(108, &((NIFTI1_HEADER_SIZE + 4) as f32).to_le_bytes());
    h.put(112, &1.0f32.to_le_bytes()); // scl_slope
    h.put(116, &0.0f32.to_le_bytes()); // scl_inter
    h.put(123, &[XYZT_UNITS_MM_SEC]);
    h.put(124, &(f.cal_max as f32).to_le_bytes());
    h.put(128, &0.0f32.to_le_bytes());
    h.put(148, f.descrip);
    h.put(252, &g.qform_code.to_le_bytes());
    h.put(254, &g.sform_code.to_le_bytes());
    for i in 0..3 {
        h.put(256 + 4 * i, &(g.quatern[i] as f32).to_le_bytes());
        h.put(268 + 4 * i, &(g.qoffset[i] as f32).to_le_bytes());
    }
    for r in 0..3 {
        for c in 0..4 {
            h.put(280 + 16 * r + 4 * c, &(g.srow[r][c] as f32).to_le_bytes());
        }
    }
    h.put(344, b"n+1\0");
    h.0
}

fn header_v2(g: &WrittenGeometry, f: &HeaderFields) -> Vec<u8> {
    let mut h = Out(vec![0u8; NIFTI2_HEADER_SIZE + 4]);
    h.put(0, &(NIFTI2_HEADER_SIZE as i32).to_le_bytes());
    h.put(4, b"n+2\0");
    h.put(8, &NIFTI2_EOL_CHECK);
    h.put(12, &f.datatype.code().to_le_bytes());
    h.put(14, &((f.datatype.size() * 8) as i16).to_le_bytes());
    let dim = [3, g.dims[0], g.dims[1], g.dims[2], 1, 1, 1, 1];
    for (i, d) in dim.iter().enumerate() {
        h.put(16 + 8 * i, &(*d as i64).to_le_bytes());
    }
    let pixdim = [
        g.pixdim[0],
        g.pixdim[1],
        g.pixdim[2],
        g.pixdim[3],
        1.0,
        1.0,
        1.0,
        1.0,
    ];
    for (i, p) in pixdim.iter().enumerate() {
        h.put(104 + 8 * i, &p.to_le_bytes());
    }
    h.put(168, &((NIFTI2_HEADER_SIZE + 4) as i64).to_le_bytes());
    h.put(176, &1.0f64.to_le_bytes());
    h.put(184, &0.0f64.to_le_bytes());
    h.put(192, &f.cal_max.to_le_bytes());
    h.put(240, f.descrip);
    h.put(344, &i32::from(g.qform_code).to_le_bytes());
    h.put(348, &i32::from(g.sform_code).to_le_bytes());
    for i in 0..3 {
        h.put(352 + 8 * i, &g.quatern[i].to_le_bytes());
        h.put(376 + 8 * i, &g.qoffset[i].to_le_bytes());
    }
    for r in 0..3 {
        for c in 0..4 {
            h.put(400 + 32 * r + 8 * c, &g.srow[r][c].to_le_bytes());
        }
    }
    h.put(500, &i32::from(XYZT_UNITS_MM_SEC).to_le_bytes());
    h.put(504, &i32::from(f.intent_code).to_le_bytes());
    h.0
}

/// `values` cut or zero-padded to exactly `n` items (a mismatch is a caller bug; the file must
/// still be self-consistent).
fn padded<T: Copy>(values: &[T], n: usize, zero: T) -> impl Iterator<Item = T> + '_ {
    values
        .iter()
        .copied()
        .chain(std::iter::repeat(zero))
        .take(n)
}

fn write_file<T>(
    geometry: &Geometry,
    fields: &HeaderFields,
    gzip: bool,
    values: impl Iterator<Item = T>,
    encode: impl Fn(T, &mut Vec<u8>),
) -> Vec<u8> {
    let g = written_geometry(geometry);
    let header = if g.dims.iter().all(|&d| d <= i16::MAX as usize) {
        header_v1(&g, fields)
    } else {
        header_v2(&g, fields)
    };
    let data_bytes = geometry
        .voxel_count()
        .saturating_mul(fields.datatype.size());
    if !gzip {
        let mut out = header;
        out.reserve(data_bytes);
        for v in values {
            encode(v, &mut out);
        }
        return out;
    }
    let mut encoder = GzEncoder::new(
        Vec::with_capacity(data_bytes / 8 + 1024),
        fields.compression,
    );
    let mut chunk = Vec::with_capacity(1 << 16);
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(&header);
    let mut values = values.peekable();
    while values.peek().is_some() {
        chunk.clear();
        for v in values.by_ref().take((1 << 16) / fields.datatype.size()) {
            encode(v, &mut chunk);
        }
        let _ = encoder.write_all(&chunk);
    }
    encoder.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn approx(a: &Affine, b: &Affine, tol: f64) -> bool {
        a.iter()
            .flatten()
            .zip(b.iter().flatten())
            .all(|(x, y)| (x - y).abs() <= tol)
    }

    #[test]
    fn quaternion_round_trip_proper_and_improper() {
        let c = 30f64.to_radians().cos();
        let s = 30f64.to_radians().sin();
        for flip in [1.0, -1.0] {
            let affine = [
                [-1.5 * c, 0.0, -2.0 * s * flip, 10.0],
                [0.0, 1.2, 0.0, -20.0],
                [-1.5 * s, 0.0, 2.0 * c * flip, 30.0],
                [0.0, 0.0, 0.0, 1.0],
            ];
            let (q, lengths, qfac) = affine_to_quatern(&affine);
            let back = qform_affine(q, [10.0, -20.0, 30.0], lengths, qfac, 1e-12);
            assert!(approx(&back, &affine, 1e-9), "{back:?} != {affine:?}");
        }
    }

    #[test]
    fn polar_orthogonalizes() {
        let p = polar([[1.0, 0.1, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]);
        for i in 0..3 {
            for j in 0..3 {
                let dot: f64 = (0..3).map(|k| p[k][i] * p[k][j]).sum();
                assert!((dot - if i == j { 1.0 } else { 0.0 }).abs() < 1e-9);
            }
        }
    }
}
