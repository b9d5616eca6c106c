//! FreeSurfer MGH volumes (`.mgh`, and gzip-compressed `.mgz`).
//!
//! The format has no magic number: a big-endian 284-byte header (version 1, the grid, the voxel
//! type, voxel sizes, direction cosines and the world position of the grid centre) followed by
//! big-endian voxels and an optional footer of scan parameters. The affine is nibabel's
//! (`MGHHeader.get_affine`): `Mdc.T * delta` for the axes and `Pxyz_c - axes . dims / 2` for the
//! origin; when `goodRASFlag` is 0 the direction cosines and voxel sizes are nibabel's defaults
//! (a coronal 1 mm grid, `Pxyz_c` kept). FreeSurfer's world coordinates are RAS+ like NIfTI's.
//!
//! Voxel types: uchar (0), int (1), float (3), short (4) and ushort (10); label volumes such as
//! `aparc+aseg.mgz` are int or uchar.

use super::bounded::{
    check_grid, convert, direction_and_length, exactly, geometry_from_ras, gzip, inflate, is_gzip,
    Compression, Scalar, MAX_DECOMPRESSED_BYTES,
};
use super::{LabelMap, Volume, VolumeError};

/// Bytes before the voxels.
pub const HEADER_SIZE: usize = 284;
/// The footer this writer appends: TR, flip angle, TE, TI, FoV (all 0), as nibabel writes.
const FOOTER_SIZE: usize = 20;

/// What an MGH header says.
#[derive(Clone, Debug)]
struct Header {
    dims: [usize; 3],
    frames: usize,
    scalar: Scalar,
    data_bytes: usize,
    geometry: super::Geometry,
}

/// Reads an MGH (`.mgh`) or gzip-compressed MGH (`.mgz`, detected by the gzip magic) file
/// holding one 3-D volume (a file with several frames is an error; see [`read_mgh_frame`]).
pub fn read_mgh(bytes: &[u8]) -> Result<Volume, VolumeError> {
    read(bytes, None)
}

/// Reads frame `frame` (from 0) of an MGH file with any number of frames.
pub fn read_mgh_frame(bytes: &[u8], frame: usize) -> Result<Volume, VolumeError> {
    read(bytes, Some(frame))
}

/// The number of frames an MGH file holds (its header's `nframes`, checked).
pub fn frame_count(bytes: &[u8]) -> Result<usize, VolumeError> {
    if is_gzip(bytes) {
        Ok(parse_header(&inflate(bytes, Compression::Gzip, 0, HEADER_SIZE)?)?.frames)
    } else {
        Ok(parse_header(bytes)?.frames)
    }
}

/// The grid, the number of frames and the bytes per stored voxel, from the header alone (the
/// first bytes of an `.mgh`, or of an `.mgz`'s compressed stream, are enough).
pub fn grid(bytes: &[u8]) -> Result<([usize; 3], usize, usize), VolumeError> {
    let header = if is_gzip(bytes) {
        parse_header(&inflate(bytes, Compression::Gzip, 0, HEADER_SIZE)?)?
    } else {
        parse_header(bytes)?
    };
    Ok((header.dims, header.frames, header.scalar.size()))
}

fn read(bytes: &[u8], frame: Option<usize>) -> Result<Volume, VolumeError> {
    if bytes.is_empty() {
        return Err(VolumeError::NotRecognized("the file is empty".into()));
    }
    let head = if is_gzip(bytes) {
        inflate(bytes, Compression::Gzip, 0, HEADER_SIZE)?
    } else {
        bytes
            .get(..HEADER_SIZE.min(bytes.len()))
            .unwrap_or_default()
            .to_vec()
    };
    let header = parse_header(&head)?;
    let k = match frame {
        None if header.frames > 1 => {
            return Err(VolumeError::BadHeader(format!(
                "4-D MGH volume with {} frames: insitu needs a single 3-D volume",
                header.frames
            )))
        }
        None => 0,
        Some(k) if k < header.frames => k,
        Some(k) => {
            return Err(VolumeError::BadHeader(format!(
                "frame {k} asked for but the MGH file has {} frames",
                header.frames
            )))
        }
    };
    // The frame's data starts after the header and k earlier frames (k < frames <= 2^16,
    // data_bytes < 2^34: no overflow in u64).
    let skip = HEADER_SIZE as u64 + k as u64 * header.data_bytes as u64;
    let data: std::borrow::Cow<[u8]> = if is_gzip(bytes) {
        inflate(bytes, Compression::Gzip, skip, header.data_bytes)?.into()
    } else {
        // Converted straight from the file's bytes (no copy of the raw voxels).
        let rest = usize::try_from(skip)
            .ok()
            .and_then(|s| bytes.get(s..))
            .unwrap_or_default();
        rest.get(..header.data_bytes).unwrap_or(rest).into()
    };
    if data.len() < header.data_bytes {
        let d = header.dims;
        return Err(VolumeError::Truncated(format!(
            "the MGH header promises {}x{}x{} voxels of {} ({} bytes per frame, {} frame(s)) \
             after the {HEADER_SIZE}-byte header, but frame {k} has only {} bytes",
            d[0],
            d[1],
            d[2],
            header.scalar.name(),
            header.data_bytes,
            header.frames,
            data.len()
        )));
    }
    Ok(Volume {
        data: convert(&data, header.scalar, true, None),
        geometry: header.geometry,
    })
}

/// Whether the first bytes (decompressed) look like an MGH header: version 1, a plausible grid,
/// one frame or a few, and a known voxel type. Used for content sniffing, which MGH's lack of a
/// magic number makes a heuristic.
pub(crate) fn looks_like_mgh(head: &[u8]) -> bool {
    if head.len() < 30 {
        return false;
    }
    let i = |o: usize| be_i32(head, o);
    let dims_ok = (1..4).all(|k| (1..=1 << 16).contains(&i(4 * k)));
    i(0) == 1 && dims_ok && (1..=1 << 16).contains(&i(16)) && scalar_of(i(20)).is_some()
}

fn be_i32(b: &[u8], o: usize) -> i32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(o..o + 4) {
        a.copy_from_slice(s);
    }
    i32::from_be_bytes(a)
}

fn be_f32(b: &[u8], o: usize) -> f64 {
    f64::from(f32::from_bits(be_i32(b, o) as u32))
}

fn scalar_of(code: i32) -> Option<Scalar> {
    Some(match code {
        0 => Scalar::U8,
        1 => Scalar::I32,
        3 => Scalar::F32,
        4 => Scalar::I16,
        10 => Scalar::U16,
        _ => return None,
    })
}

fn parse_header(h: &[u8]) -> Result<Header, VolumeError> {
    if h.is_empty() {
        return Err(VolumeError::NotRecognized("the file is empty".into()));
    }
    if h.len() < HEADER_SIZE {
        return Err(VolumeError::Truncated(format!(
            "an MGH header needs {HEADER_SIZE} bytes but the file has only {}",
            h.len()
        )));
    }
    let version = be_i32(h, 0);
    if version != 1 {
        return Err(VolumeError::NotRecognized(format!(
            "not an MGH file: version is {version} (bytes {:02x?}), MGH files say 1",
            h.get(..4).unwrap_or_default()
        )));
    }
    let raw_dims = [be_i32(h, 4), be_i32(h, 8), be_i32(h, 12)];
    let frames = be_i32(h, 16);
    if frames < 1 {
        return Err(VolumeError::BadHeader(format!(
            "nframes = {frames}: the number of frames must be positive"
        )));
    }
    let frames = usize::try_from(frames).unwrap_or(usize::MAX);
    let code = be_i32(h, 20);
    let scalar = scalar_of(code).ok_or_else(|| {
        let name = match code {
            2 => " (MRI_LONG)",
            5 => " (MRI_BITMAP)",
            6 => " (MRI_TENSOR)",
            7 => " (MRI_FLOAT_COMPLEX)",
            8 => " (MRI_DOUBLE_COMPLEX)",
            9 => " (MRI_RGB)",
            _ => "",
        };
        VolumeError::BadHeader(format!(
            "MGH type {code}{name} is not supported: insitu reads uchar (0), int (1), float (3), \
             short (4) and ushort (10)"
        ))
    })?;
    let (dims, _, data_bytes) = check_grid(raw_dims.map(i64::from), scalar.size(), "MGH dims")?;
    let good_ras = i16::from_be_bytes([h[28], h[29]]) != 0;
    let (delta, mdc) = if good_ras {
        (
            [be_f32(h, 30), be_f32(h, 34), be_f32(h, 38)],
            std::array::from_fn(|r| std::array::from_fn(|c| be_f32(h, 42 + 12 * r + 4 * c))),
        )
    } else {
        // nibabel's _set_affine_default.
        (
            [1.0; 3],
            [[-1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]],
        )
    };
    let centre = [be_f32(h, 78), be_f32(h, 82), be_f32(h, 86)];
    if let Some(k) = delta.iter().position(|d| !(d.is_finite() && *d > 0.0)) {
        return Err(VolumeError::BadHeader(format!(
            "MGH voxel size delta[{k}] = {} (delta {delta:?}) is not a positive number",
            delta[k]
        )));
    }
    // Row k of Mdc is the direction of voxel axis k.
    let columns: [[f64; 3]; 3] =
        std::array::from_fn(|k| std::array::from_fn(|r| mdc[k][r] * delta[k]));
    let origin: [f64; 3] = std::array::from_fn(|r| {
        centre[r] - (0..3).map(|k| columns[k][r] * dims[k] as f64).sum::<f64>() / 2.0
    });
    let geometry = geometry_from_ras(dims, columns, origin, "MGH Mdc/delta/Pxyz_c")?;
    let all_frames = frames
        .checked_mul(data_bytes)
        .filter(|&b| b as u64 <= MAX_DECOMPRESSED_BYTES);
    if all_frames.is_none() {
        return Err(VolumeError::TooLarge(format!(
            "MGH nframes = {frames} frames of {data_bytes} bytes is more than insitu reads"
        )));
    }
    Ok(Header {
        dims,
        frames,
        scalar,
        data_bytes,
        geometry,
    })
}

/// Writes labels as MGH with the label map's geometry: uchar when every label is below 256,
/// else int (as FreeSurfer stores `aseg`); gzip-compressed (`.mgz`) when `gzip`.
pub fn write_labels(labels: &LabelMap, gzip: bool) -> Vec<u8> {
    let n = labels.geometry.voxel_count();
    let values = exactly(&labels.labels, n);
    let (code, data) = if labels.max_label() < 256 {
        (0, values.iter().map(|&v| v as u8).collect())
    } else {
        (
            1,
            values
                .iter()
                .flat_map(|&v| i32::from(v).to_be_bytes())
                .collect(),
        )
    };
    finish(&labels.geometry, code, data, gzip)
}

/// Writes a float intensity volume as MGH (type float) with its geometry.
pub fn write_volume(volume: &Volume, gzip: bool) -> Vec<u8> {
    let n = volume.geometry.voxel_count();
    let data = exactly(&volume.data, n)
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect();
    finish(&volume.geometry, 3, data, gzip)
}

fn finish(g: &super::Geometry, code: i32, data: Vec<u8>, compress: bool) -> Vec<u8> {
    let a = &g.affine;
    let mut out = Vec::with_capacity(HEADER_SIZE + data.len() + FOOTER_SIZE);
    let mut put = |b: &[u8]| out.extend_from_slice(b);
    put(&1i32.to_be_bytes());
    for d in g.dims {
        put(&(i32::try_from(d).unwrap_or(i32::MAX)).to_be_bytes());
    }
    put(&1i32.to_be_bytes()); // frames
    put(&code.to_be_bytes());
    put(&0i32.to_be_bytes()); // dof
    put(&1i16.to_be_bytes()); // goodRASFlag
    let axes: [([f64; 3], f64); 3] =
        std::array::from_fn(|k| direction_and_length([a[0][k], a[1][k], a[2][k]], k));
    for (_, len) in &axes {
        put(&(*len as f32).to_be_bytes());
    }
    for (dir, _) in &axes {
        for v in dir {
            put(&(*v as f32).to_be_bytes());
        }
    }
    // World position of voxel dims/2.
    for row in a.iter().take(3) {
        let c = row[3] + (0..3).map(|k| row[k] * g.dims[k] as f64 / 2.0).sum::<f64>();
        put(&(c as f32).to_be_bytes());
    }
    out.resize(HEADER_SIZE, 0);
    out.extend_from_slice(&data);
    out.extend_from_slice(&[0u8; FOOTER_SIZE]);
    if compress {
        gzip(&out)
    } else {
        out
    }
}
