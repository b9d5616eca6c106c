//! MetaImage volumes as ITK writes them: `.mha` (header and data in one file) and `.mhd` (a
//! text header naming a separate `.raw` / `.zraw` data file).
//!
//! The header is `Key = Value` lines ending with `ElementDataFile`. Geometry follows ITK's
//! `MetaImageIO`: world coordinates are LPS, `TransformMatrix` lists the direction of voxel
//! axis 0, then axis 1, then axis 2 (each a column of ITK's direction matrix), `Offset` is the
//! world position of voxel 0 and `ElementSpacing` the voxel size. `CompressedData = True` data is
//! a zlib stream. `AnatomicalOrientation` is informational (ITK ignores it too).

use super::bounded::{
    check_grid, convert, direction_and_length, exactly, fmt_f64, geometry_from_lps, inflate,
    label_bytes, lps_axes, zlib, Compression, Scalar,
};
use super::{LabelMap, Volume, VolumeError};

/// Longest header accepted.
pub const MAX_HEADER_BYTES: usize = 1 << 20;

/// Reads a MetaImage with its data in the same file (`.mha`, `ElementDataFile = LOCAL`).
pub fn read_mha(bytes: &[u8]) -> Result<Volume, VolumeError> {
    let h = parse_header(bytes)?;
    if !h.local {
        return Err(VolumeError::BadHeader(format!(
            "the MetaImage header keeps its voxels in the separate file \"{}\": open the header \
             (.mhd) together with that file",
            h.data_file
        )));
    }
    let data = bytes.get(h.header_len..).unwrap_or_default();
    decode(&h, data)
}

/// Reads a MetaImage whose header (`.mhd`) names a separate data file, given both files' bytes.
pub fn read_mhd(header: &[u8], data: &[u8]) -> Result<Volume, VolumeError> {
    let h = parse_header(header)?;
    if h.local {
        return read_mha(header);
    }
    decode(&h, data)
}

/// The data file a `.mhd` header names (`None` when the data is in the same file).
pub fn data_file_name(header: &[u8]) -> Result<Option<String>, VolumeError> {
    let h = parse_header(header)?;
    Ok((!h.local).then_some(h.data_file))
}

/// Whether the bytes start like a MetaImage header (first key a MetaImage key).
pub(crate) fn looks_like_metaimage(bytes: &[u8]) -> bool {
    let head = bytes.get(..bytes.len().min(64)).unwrap_or_default();
    let first = head.split(|&b| b == b'=').next().unwrap_or_default();
    let key = String::from_utf8_lossy(first);
    matches!(
        key.trim(),
        "ObjectType" | "NDims" | "Comment" | "ObjectSubType" | "TransformType" | "Name"
    ) && head.contains(&b'=')
}

#[derive(Debug)]
struct Header {
    header_len: usize,
    local: bool,
    data_file: String,
    scalar: Scalar,
    big_endian: bool,
    compressed: bool,
    /// Bytes to skip at the start of the data file; -1: the data is at its end.
    header_size: i64,
    dims: [usize; 3],
    data_bytes: usize,
    geometry: super::Geometry,
}

fn bad(m: String) -> VolumeError {
    VolumeError::BadHeader(m)
}

fn scalar_of(t: &str) -> Option<Scalar> {
    Some(match t {
        "MET_CHAR" => Scalar::I8,
        "MET_UCHAR" => Scalar::U8,
        "MET_SHORT" => Scalar::I16,
        "MET_USHORT" => Scalar::U16,
        "MET_INT" | "MET_LONG" => Scalar::I32,
        "MET_UINT" | "MET_ULONG" => Scalar::U32,
        "MET_LONG_LONG" => Scalar::I64,
        "MET_ULONG_LONG" => Scalar::U64,
        "MET_FLOAT" => Scalar::F32,
        "MET_DOUBLE" => Scalar::F64,
        _ => return None,
    })
}

fn numbers(key: &str, value: &str) -> Result<Vec<f64>, VolumeError> {
    value
        .split_whitespace()
        .map(|v| {
            v.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| {
                    bad(format!(
                        "MetaImage {key} value \"{v}\" is not a finite number"
                    ))
                })
        })
        .collect()
}

fn boolean(key: &str, value: &str) -> Result<bool, VolumeError> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(bad(format!(
            "MetaImage {key} = \"{value}\" is not True or False"
        ))),
    }
}

fn parse_header(bytes: &[u8]) -> Result<Header, VolumeError> {
    if bytes.is_empty() {
        return Err(VolumeError::NotRecognized("the file is empty".into()));
    }
    if !looks_like_metaimage(bytes) {
        return Err(VolumeError::NotRecognized(
            "not a MetaImage file: it does not start with a \"Key = Value\" header line such as \
             \"ObjectType = Image\""
                .into(),
        ));
    }
    let limit = bytes.len().min(MAX_HEADER_BYTES);
    let mut pos = 0usize;
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut end = None;
    while pos < limit {
        let rest = bytes.get(pos..limit).unwrap_or_default();
        let (line, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (rest.get(..i).unwrap_or_default(), pos + i + 1),
            None => (rest, limit),
        };
        pos = next;
        let text = String::from_utf8_lossy(line);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let Some((k, v)) = text.split_once('=') else {
            return Err(bad(format!(
                "MetaImage header line \"{}\" is not \"Key = Value\"",
                text.chars().take(80).collect::<String>()
            )));
        };
        let key = k.trim().to_string();
        let is_last = key.eq_ignore_ascii_case("ElementDataFile");
        fields.push((key, v.trim().to_string()));
        if is_last {
            end = Some(pos);
            break;
        }
    }
    let header_len = end.ok_or_else(|| {
        if bytes.len() > MAX_HEADER_BYTES {
            VolumeError::TooLarge(format!(
                "no ElementDataFile line within the first {MAX_HEADER_BYTES} bytes of the \
                 MetaImage header"
            ))
        } else {
            bad("the MetaImage header has no ElementDataFile line".into())
        }
    })?;
    let get = |names: &[&str]| {
        fields
            .iter()
            .find(|(k, _)| names.iter().any(|n| k.eq_ignore_ascii_case(n)))
            .map(|(_, v)| v.as_str())
    };

    if let Some(t) = get(&["ObjectType"]) {
        if !t.eq_ignore_ascii_case("Image") {
            return Err(bad(format!("MetaImage ObjectType \"{t}\" is not Image")));
        }
    }
    let ndims_text =
        get(&["NDims"]).ok_or_else(|| bad("the MetaImage header has no NDims".into()))?;
    let ndims: usize = ndims_text
        .parse()
        .ok()
        .filter(|n| (1..=16).contains(n))
        .ok_or_else(|| bad(format!("MetaImage NDims \"{ndims_text}\" must be 1 to 16")))?;
    let dim_text =
        get(&["DimSize"]).ok_or_else(|| bad("the MetaImage header has no DimSize".into()))?;
    let sizes: Vec<i64> = dim_text
        .split_whitespace()
        .map(str::parse::<i64>)
        .collect::<Result<_, _>>()
        .map_err(|_| bad(format!("MetaImage DimSize \"{dim_text}\" are not integers")))?;
    if sizes.len() != ndims {
        return Err(bad(format!(
            "MetaImage DimSize \"{dim_text}\" has {} values but NDims is {ndims}",
            sizes.len()
        )));
    }
    if let Some(s) = sizes.iter().find(|&&s| s < 1) {
        return Err(bad(format!(
            "MetaImage DimSize \"{dim_text}\": size {s} is not positive"
        )));
    }
    if let Some((axis, s)) = sizes.iter().enumerate().skip(3).find(|(_, &s)| s != 1) {
        return Err(bad(format!(
            "MetaImage axis {axis} has size {s} (DimSize \"{dim_text}\"): insitu needs a single \
             3-D volume"
        )));
    }
    if let Some(c) = get(&["ElementNumberOfChannels"]) {
        if c.trim() != "1" {
            return Err(bad(format!(
                "MetaImage ElementNumberOfChannels = {c}: insitu reads single-channel images"
            )));
        }
    }
    let type_text = get(&["ElementType"])
        .ok_or_else(|| bad("the MetaImage header has no ElementType".into()))?;
    let scalar = scalar_of(type_text).ok_or_else(|| {
        bad(format!(
            "MetaImage ElementType \"{type_text}\" is not supported: insitu reads MET_CHAR, \
             MET_UCHAR, MET_SHORT, MET_USHORT, MET_INT, MET_UINT, MET_LONG, MET_ULONG, \
             MET_LONG_LONG, MET_ULONG_LONG, MET_FLOAT and MET_DOUBLE"
        ))
    })?;
    let mut grid = [1i64; 3];
    for (slot, s) in grid.iter_mut().zip(&sizes) {
        *slot = *s;
    }
    let (dims, _, data_bytes) = check_grid(grid, scalar.size(), "MetaImage DimSize")?;
    let big_endian = match get(&["BinaryDataByteOrderMSB", "ElementByteOrderMSB"]) {
        Some(v) => boolean("BinaryDataByteOrderMSB", v)?,
        None => false,
    };
    if let Some(v) = get(&["BinaryData"]) {
        if !boolean("BinaryData", v)? {
            return Err(bad(
                "MetaImage BinaryData = False (text data) is not supported".into(),
            ));
        }
    }
    let compressed = match get(&["CompressedData"]) {
        Some(v) => boolean("CompressedData", v)?,
        None => false,
    };

    // Geometry (only the first three axes; a 2-D image gets a unit third axis).
    let n3 = ndims.min(3);
    let vector = |names: &[&str], default: f64| -> Result<Vec<f64>, VolumeError> {
        match get(names) {
            None => Ok(vec![default; ndims]),
            Some(v) => {
                let vals = numbers(names[0], v)?;
                if vals.len() < n3 {
                    return Err(bad(format!(
                        "MetaImage {} \"{v}\" has {} values but NDims is {ndims}",
                        names[0],
                        vals.len()
                    )));
                }
                Ok(vals)
            }
        }
    };
    let spacing = match get(&["ElementSpacing"]) {
        Some(_) => vector(&["ElementSpacing"], 1.0)?,
        None => vector(&["ElementSize"], 1.0)?,
    };
    let offset = vector(&["Offset", "Origin", "Position"], 0.0)?;
    let matrix = match get(&["TransformMatrix", "Rotation", "Orientation"]) {
        None => None,
        Some(v) => {
            let vals = numbers("TransformMatrix", v)?;
            if vals.len() != ndims * ndims {
                return Err(bad(format!(
                    "MetaImage TransformMatrix has {} values but NDims {ndims} needs {}",
                    vals.len(),
                    ndims * ndims
                )));
            }
            Some(vals)
        }
    };
    let mut columns = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    for (k, col) in columns.iter_mut().enumerate().take(n3) {
        if let Some(m) = &matrix {
            for (r, c) in col.iter_mut().enumerate().take(n3) {
                *c = m.get(k * ndims + r).copied().unwrap_or(0.0);
            }
            for c in col.iter_mut().skip(n3) {
                *c = 0.0;
            }
        }
        let s = spacing.get(k).copied().unwrap_or(1.0);
        *col = col.map(|v| v * s);
    }
    if n3 < 3 {
        let n = super::bounded::cross(columns[0], columns[1]);
        let (unit, _) = direction_and_length(n, 2);
        columns[2] = unit;
    }
    let origin = std::array::from_fn(|r| {
        if r < n3 {
            offset.get(r).copied().unwrap_or(0.0)
        } else {
            0.0
        }
    });
    let geometry = geometry_from_lps(
        dims,
        columns,
        origin,
        "MetaImage TransformMatrix/ElementSpacing/Offset",
    )?;

    let data_file = get(&["ElementDataFile"]).unwrap_or_default().to_string();
    let local = data_file.eq_ignore_ascii_case("LOCAL");
    if !local
        && (data_file.starts_with("LIST") || data_file.contains('%') || data_file.contains(' '))
    {
        return Err(bad(format!(
            "MetaImage ElementDataFile \"{data_file}\": data split over several files is not \
             supported"
        )));
    }
    if data_file.is_empty() {
        return Err(bad("MetaImage ElementDataFile is empty".into()));
    }
    let header_size = match get(&["HeaderSize"]) {
        None => 0,
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|&v| v >= -1)
            .ok_or_else(|| bad(format!("MetaImage HeaderSize \"{v}\" is not a valid count")))?,
    };
    Ok(Header {
        header_len,
        local,
        data_file,
        scalar,
        big_endian,
        compressed,
        header_size: if local { 0 } else { header_size },
        dims,
        data_bytes,
        geometry,
    })
}

fn decode(h: &Header, data: &[u8]) -> Result<Volume, VolumeError> {
    let d = h.dims;
    let truncated = |got: usize| {
        VolumeError::Truncated(format!(
            "the MetaImage header promises {}x{}x{} voxels of {} ({} bytes), but only {got} \
             bytes of data {}",
            d[0],
            d[1],
            d[2],
            h.scalar.name(),
            h.data_bytes,
            if h.compressed { "decompress" } else { "follow" }
        ))
    };
    let raw = if h.compressed {
        let raw = inflate(data, Compression::Zlib, 0, h.data_bytes)?;
        if raw.len() < h.data_bytes {
            return Err(truncated(raw.len()));
        }
        std::borrow::Cow::Owned(raw)
    } else {
        let start = if h.header_size == -1 {
            data.len()
                .checked_sub(h.data_bytes)
                .ok_or_else(|| truncated(data.len()))?
        } else {
            usize::try_from(h.header_size).unwrap_or(usize::MAX)
        };
        let rest = data.get(start..).ok_or_else(|| {
            VolumeError::Truncated(format!(
                "MetaImage HeaderSize {} is beyond the end of the data file ({} bytes)",
                h.header_size,
                data.len()
            ))
        })?;
        // Converted straight from the file's bytes (no copy of the raw voxels).
        std::borrow::Cow::Borrowed(
            rest.get(..h.data_bytes)
                .ok_or_else(|| truncated(rest.len()))?,
        )
    };
    Ok(Volume {
        geometry: h.geometry.clone(),
        data: convert(&raw, h.scalar, h.big_endian, None),
    })
}

/// Writes labels as a single-file MetaImage (`.mha`) with the label map's geometry (MET_UCHAR or
/// MET_USHORT), zlib-compressed when `compress`.
pub fn write_mha_labels(labels: &LabelMap, compress: bool) -> Vec<u8> {
    let values = exactly(&labels.labels, labels.geometry.voxel_count());
    let (data, scalar) = label_bytes(&values);
    finish(&labels.geometry, scalar, data, compress)
}

/// Writes a float32 intensity volume as a single-file MetaImage (`.mha`).
pub fn write_mha_volume(volume: &Volume, compress: bool) -> Vec<u8> {
    let values = exactly(&volume.data, volume.geometry.voxel_count());
    let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    finish(&volume.geometry, Scalar::F32, data, compress)
}

fn finish(g: &super::Geometry, scalar: Scalar, data: Vec<u8>, compress: bool) -> Vec<u8> {
    let (columns, origin) = lps_axes(g);
    let axes: [([f64; 3], f64); 3] = std::array::from_fn(|k| direction_and_length(columns[k], k));
    let join = |v: &[f64]| v.iter().map(|&x| fmt_f64(x)).collect::<Vec<_>>().join(" ");
    let matrix: Vec<f64> = axes.iter().flat_map(|(d, _)| d.iter().copied()).collect();
    let spacing: Vec<f64> = axes.iter().map(|(_, l)| *l).collect();
    let payload = if compress { zlib(&data) } else { data };
    let mut text = String::from(
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n",
    );
    text.push_str(&format!(
        "CompressedData = {}\n",
        if compress { "True" } else { "False" }
    ));
    if compress {
        text.push_str(&format!("CompressedDataSize = {}\n", payload.len()));
    }
    text.push_str(&format!("TransformMatrix = {}\n", join(&matrix)));
    text.push_str(&format!("Offset = {}\n", join(&origin)));
    text.push_str("CenterOfRotation = 0 0 0\n");
    text.push_str(&format!("ElementSpacing = {}\n", join(&spacing)));
    text.push_str(&format!(
        "DimSize = {} {} {}\n",
        g.dims[0], g.dims[1], g.dims[2]
    ));
    text.push_str(&format!(
        "ElementType = {}\n",
        if scalar == Scalar::U8 {
            "MET_UCHAR"
        } else if scalar == Scalar::U16 {
            "MET_USHORT"
        } else {
            "MET_FLOAT"
        }
    ));
    text.push_str("ElementDataFile = LOCAL\n");
    let mut out = text.into_bytes();
    out.extend_from_slice(&payload);
    out
}
