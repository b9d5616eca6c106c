//! NRRD volumes (`.nrrd` with attached data, `.nhdr` with a detached data file), as 3D Slicer,
//! ITK and pynrrd write them.
//!
//! Supported: encodings `raw`, `gzip` and `ascii`; every integer and float type; `endian`;
//! `line skip` and `byte skip` (including `-1` for raw data); `space` (RAS, LAS and LPS, named
//! or abbreviated; an unnamed space is taken as LPS like ITK does), `space directions` (any
//! non-axis-aligned directions) and `space origin`; without them, `spacings` on the diagonal of
//! an LPS grid (ITK's reading). A grid is 2-D or 3-D; extra axes are allowed only with size 1.

use super::bounded::{
    check_grid, convert, exactly, fmt_f64, geometry_from_lps, gzip, inflate, label_bytes, lps_axes,
    Compression, Scalar,
};
use super::{LabelMap, Volume, VolumeError};

/// Longest header accepted (Slicer's segmentation headers carry many key/value lines).
pub const MAX_HEADER_BYTES: usize = 1 << 20;

/// Reads an NRRD file with its data attached (`.nrrd`).
pub fn read_nrrd(bytes: &[u8]) -> Result<Volume, VolumeError> {
    let header = parse_header(bytes)?;
    if let Some(file) = &header.data_file {
        return Err(VolumeError::BadHeader(format!(
            "the NRRD header keeps its voxels in the separate file \"{file}\": open the header \
             together with that file"
        )));
    }
    let data = bytes.get(header.header_len..).unwrap_or_default();
    decode(&header, data)
}

/// Reads a detached-header NRRD (`.nhdr`) given the bytes of the header and of its data file.
pub fn read_nrrd_detached(header_bytes: &[u8], data: &[u8]) -> Result<Volume, VolumeError> {
    let header = parse_header(header_bytes)?;
    decode(&header, data)
}

/// The name of the data file a detached header (`.nhdr`) refers to, if it names one.
pub fn data_file_name(header_bytes: &[u8]) -> Result<Option<String>, VolumeError> {
    Ok(parse_header(header_bytes)?.data_file)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encoding {
    Raw,
    Gzip,
    Ascii,
}

#[derive(Debug)]
struct Header {
    /// Bytes of header text including the blank line that ends it.
    header_len: usize,
    scalar: Scalar,
    big_endian: bool,
    encoding: Encoding,
    dims: [usize; 3],
    nvox: usize,
    data_bytes: usize,
    line_skip: usize,
    byte_skip: i64,
    data_file: Option<String>,
    geometry: super::Geometry,
}

fn bad(m: String) -> VolumeError {
    VolumeError::BadHeader(m)
}

fn scalar_of(t: &str) -> Option<Scalar> {
    Some(match t {
        "signed char" | "int8" | "int8_t" => Scalar::I8,
        "uchar" | "unsigned char" | "uint8" | "uint8_t" => Scalar::U8,
        "short" | "short int" | "signed short" | "signed short int" | "int16" | "int16_t" => {
            Scalar::I16
        }
        "ushort" | "unsigned short" | "unsigned short int" | "uint16" | "uint16_t" => Scalar::U16,
        "int" | "signed int" | "int32" | "int32_t" => Scalar::I32,
        "uint" | "unsigned int" | "uint32" | "uint32_t" => Scalar::U32,
        "longlong"
        | "long long"
        | "long long int"
        | "signed long long"
        | "signed long long int"
        | "int64"
        | "int64_t" => Scalar::I64,
        "ulonglong" | "unsigned long long" | "unsigned long long int" | "uint64" | "uint64_t" => {
            Scalar::U64
        }
        "float" => Scalar::F32,
        "double" => Scalar::F64,
        _ => return None,
    })
}

/// Parses "(x,y,z)" into a vector, or None for "none".
fn parse_vector(s: &str, field: &str) -> Result<Option<Vec<f64>>, VolumeError> {
    let s = s.trim();
    if s == "none" {
        return Ok(None);
    }
    let inner = s
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| bad(format!("{field}: \"{s}\" is not a vector \"(x,y,z)\"")))?;
    inner
        .split(',')
        .map(|v| {
            v.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| bad(format!("{field}: \"{}\" is not a finite number", v.trim())))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Splits a `space directions` value into its vectors (each "(...)" or "none").
fn split_vectors(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("none") {
            out.push("none");
            rest = r.trim_start();
        } else if let Some(end) = rest.find(')') {
            let (v, r) = rest.split_at(end + 1);
            out.push(v);
            rest = r.trim_start();
        } else {
            out.push(rest);
            break;
        }
    }
    out
}

fn parse_header(bytes: &[u8]) -> Result<Header, VolumeError> {
    if bytes.is_empty() {
        return Err(VolumeError::NotRecognized("the file is empty".into()));
    }
    let magic = bytes.get(..8).unwrap_or_default();
    if !(magic.starts_with(b"NRRD000") && magic.get(7).is_some_and(|v| (b'1'..=b'5').contains(v))) {
        return Err(VolumeError::NotRecognized(format!(
            "not an NRRD file: the file does not start with \"NRRD0001\"..\"NRRD0005\" (it \
             starts with {:02x?})",
            magic
        )));
    }
    // The header ends at the first empty line (or the end of a detached header).
    let limit = bytes.len().min(MAX_HEADER_BYTES);
    let mut pos = 0usize;
    let mut lines = Vec::new();
    let mut header_len = None;
    while pos < limit {
        let rest = bytes.get(pos..limit).unwrap_or_default();
        let (line, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (rest.get(..i).unwrap_or_default(), pos + i + 1),
            None => (rest, limit),
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        pos = next;
        if line.is_empty() {
            header_len = Some(pos);
            break;
        }
        lines.push(line);
    }
    let header_len = match header_len {
        Some(h) => h,
        None if bytes.len() > MAX_HEADER_BYTES => {
            return Err(VolumeError::TooLarge(format!(
                "no end of the NRRD header (an empty line) within its first {MAX_HEADER_BYTES} \
                 bytes"
            )))
        }
        None => bytes.len(),
    };

    let mut fields: Vec<(String, String)> = Vec::new();
    for line in lines.iter().skip(1) {
        if line.starts_with(b"#") {
            continue;
        }
        let text = String::from_utf8_lossy(line);
        if text.contains(":=") {
            continue; // key/value pair: metadata only
        }
        let Some((k, v)) = text.split_once(": ") else {
            return Err(bad(format!(
                "NRRD header line \"{}\" is not \"field: value\"",
                text.chars().take(80).collect::<String>()
            )));
        };
        fields.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let get = |names: &[&str]| {
        fields
            .iter()
            .find(|(k, _)| names.contains(&k.as_str()))
            .map(|(_, v)| v.as_str())
    };

    let type_name = get(&["type"]).ok_or_else(|| bad("the NRRD header has no \"type\"".into()))?;
    let scalar = scalar_of(type_name).ok_or_else(|| {
        bad(format!(
            "NRRD type \"{type_name}\" is not supported: insitu reads 8- to 64-bit integers, \
             float and double"
        ))
    })?;
    let dimension: usize = get(&["dimension"])
        .ok_or_else(|| bad("the NRRD header has no \"dimension\"".into()))?
        .parse()
        .ok()
        .filter(|d| (1..=16).contains(d))
        .ok_or_else(|| {
            bad(format!(
                "NRRD dimension \"{}\" must be 1 to 16",
                get(&["dimension"]).unwrap_or_default()
            ))
        })?;
    let sizes_text =
        get(&["sizes"]).ok_or_else(|| bad("the NRRD header has no \"sizes\"".into()))?;
    let sizes: Vec<i64> = sizes_text
        .split_whitespace()
        .map(|s| s.parse::<i64>())
        .collect::<Result<_, _>>()
        .map_err(|_| bad(format!("NRRD sizes \"{sizes_text}\" are not integers")))?;
    if sizes.len() != dimension {
        return Err(bad(format!(
            "NRRD sizes \"{sizes_text}\" has {} values but dimension is {dimension}",
            sizes.len()
        )));
    }
    if let Some(s) = sizes.iter().find(|&&s| s < 1) {
        return Err(bad(format!(
            "NRRD sizes \"{sizes_text}\": size {s} is not positive"
        )));
    }

    let encoding = match get(&["encoding"]).unwrap_or("") {
        "raw" => Encoding::Raw,
        "gzip" | "gz" => Encoding::Gzip,
        "ascii" | "text" | "txt" => Encoding::Ascii,
        "" => return Err(bad("the NRRD header has no \"encoding\"".into())),
        other => {
            return Err(bad(format!(
                "NRRD encoding \"{other}\" is not supported: insitu reads raw, gzip and ascii"
            )))
        }
    };
    let big_endian = match get(&["endian"]) {
        Some("big") => true,
        Some("little") => false,
        None if scalar.size() == 1 || encoding == Encoding::Ascii => false,
        None => {
            return Err(bad(format!(
                "the NRRD header has no \"endian\", needed for {} data",
                scalar.name()
            )))
        }
        Some(other) => return Err(bad(format!("NRRD endian \"{other}\" is not big or little"))),
    };

    // Space: which world frame the directions and origin are in.
    let space = get(&["space"]);
    let flip = match space.map(|s| s.to_ascii_lowercase()) {
        None => [1.0, 1.0, 1.0], // unnamed: ITK reads it as LPS
        Some(s) => match s.as_str() {
            "left-posterior-superior" | "lps" => [1.0, 1.0, 1.0],
            "right-anterior-superior" | "ras" => [-1.0, -1.0, 1.0],
            "left-anterior-superior" | "las" => [1.0, -1.0, 1.0],
            _ => {
                return Err(bad(format!(
                    "NRRD space \"{s}\" is not supported: insitu reads right-anterior-superior, \
                     left-anterior-superior and left-posterior-superior"
                )))
            }
        },
    };
    let _space_dim = match (space, get(&["space dimension"])) {
        (Some(_), _) => 3,
        (None, Some(d)) => d
            .parse::<usize>()
            .ok()
            .filter(|&d| d == 3)
            .ok_or_else(|| bad(format!("NRRD space dimension \"{d}\": insitu needs 3")))?,
        (None, None) => 0,
    };

    // Which axes are spatial: with space directions, those not "none"; else all of them.
    let directions: Option<Vec<Option<Vec<f64>>>> = match get(&["space directions"]) {
        Some(text) => {
            let parts = split_vectors(text);
            if parts.len() != dimension {
                return Err(bad(format!(
                    "NRRD space directions \"{text}\" has {} entries but dimension is \
                     {dimension}",
                    parts.len()
                )));
            }
            Some(
                parts
                    .iter()
                    .map(|p| parse_vector(p, "NRRD space directions"))
                    .collect::<Result<_, _>>()?,
            )
        }
        None => None,
    };
    let spatial: Vec<usize> = match &directions {
        Some(d) => (0..dimension)
            .filter(|&i| d.get(i).is_some_and(|v| v.is_some()))
            .collect(),
        None => (0..dimension).collect(),
    };
    for (i, &s) in sizes.iter().enumerate() {
        if !spatial.contains(&i) && s != 1 {
            return Err(bad(format!(
                "NRRD axis {i} (size {s}) is not spatial: insitu needs a single 3-D volume, \
                 sizes are \"{sizes_text}\""
            )));
        }
    }
    if spatial.len() > 3 {
        return Err(bad(format!(
            "NRRD has {} spatial axes: insitu reads 2-D and 3-D grids",
            spatial.len()
        )));
    }
    let mut grid = [1i64; 3];
    for (slot, &axis) in grid.iter_mut().zip(&spatial) {
        *slot = sizes.get(axis).copied().unwrap_or(1);
    }
    let (dims, nvox, data_bytes) = check_grid(grid, scalar.size(), "NRRD sizes")?;

    // Voxel axes in LPS.
    let to_lps = |v: &[f64]| -> Result<[f64; 3], VolumeError> {
        if v.len() != 3 {
            return Err(bad(format!(
                "NRRD vector {v:?} has {} components: insitu needs 3-D space",
                v.len()
            )));
        }
        Ok([v[0] * flip[0], v[1] * flip[1], v[2] * flip[2]])
    };
    let mut columns = [[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]]; // unit RAS axes in LPS
    let mut origin = [0.0; 3];
    if let Some(dirs) = &directions {
        for (k, &axis) in spatial.iter().enumerate() {
            if let (Some(Some(v)), Some(col)) = (dirs.get(axis), columns.get_mut(k)) {
                *col = to_lps(v)?;
            }
        }
        if spatial.len() < 3 {
            // A 2-D grid in 3-D space: the missing axis is the unit normal.
            let n = super::bounded::cross(columns[0], columns[1]);
            let len = super::bounded::norm(n);
            columns[2] = if len > 0.0 {
                n.map(|v| v / len)
            } else {
                [0.0, 0.0, 1.0]
            };
        }
    } else {
        // ITK without space directions: identity directions in LPS with the spacings.
        columns = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
        if let Some(text) = get(&["spacings"]) {
            let values: Vec<&str> = text.split_whitespace().collect();
            for (k, &axis) in spatial.iter().enumerate() {
                let s = values
                    .get(axis)
                    .and_then(|s| s.parse::<f64>().ok())
                    .filter(|s| s.is_finite() && *s != 0.0)
                    .unwrap_or(1.0);
                if let Some(col) = columns.get_mut(k) {
                    *col = col.map(|v| v * s.abs());
                }
            }
        }
    }
    if let Some(text) = get(&["space origin"]) {
        let v = parse_vector(text, "NRRD space origin")?
            .ok_or_else(|| bad("NRRD space origin is \"none\"".into()))?;
        origin = to_lps(&v)?;
    }
    let geometry = geometry_from_lps(dims, columns, origin, "NRRD space directions/origin")?;

    let parse_skip = |names: &[&str]| -> Result<i64, VolumeError> {
        match get(names) {
            None => Ok(0),
            Some(v) => v
                .parse::<i64>()
                .ok()
                .filter(|&v| v >= -1)
                .ok_or_else(|| bad(format!("NRRD {} \"{v}\" is not a valid count", names[0]))),
        }
    };
    let line_skip = parse_skip(&["line skip", "lineskip"])?;
    let byte_skip = parse_skip(&["byte skip", "byteskip"])?;
    if line_skip < 0 {
        return Err(bad("NRRD line skip -1 is not valid".into()));
    }
    if byte_skip == -1 && encoding != Encoding::Raw {
        return Err(bad(
            "NRRD byte skip -1 is only valid with raw encoding".into()
        ));
    }
    let data_file = get(&["data file", "datafile"]).map(str::to_string);
    if let Some(f) = &data_file {
        if f.starts_with("LIST") || f.split_whitespace().count() > 1 {
            return Err(bad(format!(
                "NRRD data file \"{f}\": data split over several files is not supported"
            )));
        }
    }
    Ok(Header {
        header_len,
        scalar,
        big_endian,
        encoding,
        dims,
        nvox,
        data_bytes,
        line_skip: line_skip as usize,
        byte_skip,
        data_file,
        geometry,
    })
}

/// Skips `n` lines of `data`.
fn skip_lines(data: &[u8], n: usize) -> Result<&[u8], VolumeError> {
    let mut rest = data;
    for i in 0..n {
        let nl = rest.iter().position(|&b| b == b'\n').ok_or_else(|| {
            VolumeError::Truncated(format!("NRRD line skip {n}: the data ends after {i} lines"))
        })?;
        rest = rest.get(nl + 1..).unwrap_or_default();
    }
    Ok(rest)
}

fn decode(h: &Header, data: &[u8]) -> Result<Volume, VolumeError> {
    let data = skip_lines(data, h.line_skip)?;
    let truncated = |got: usize| {
        let d = h.dims;
        VolumeError::Truncated(format!(
            "the NRRD header promises {}x{}x{} voxels of {} ({} bytes), but only {got} bytes \
             of data follow",
            d[0],
            d[1],
            d[2],
            h.scalar.name(),
            h.data_bytes
        ))
    };
    let values = match h.encoding {
        Encoding::Raw => {
            let start = if h.byte_skip == -1 {
                data.len()
                    .checked_sub(h.data_bytes)
                    .ok_or_else(|| truncated(data.len()))?
            } else {
                usize::try_from(h.byte_skip).unwrap_or(usize::MAX)
            };
            let rest = data.get(start..).ok_or_else(|| {
                VolumeError::Truncated(format!(
                    "NRRD byte skip {} is beyond the end of the data ({} bytes)",
                    h.byte_skip,
                    data.len()
                ))
            })?;
            let raw = rest
                .get(..h.data_bytes)
                .ok_or_else(|| truncated(rest.len()))?;
            convert(raw, h.scalar, h.big_endian, None)
        }
        Encoding::Gzip => {
            let skip = u64::try_from(h.byte_skip).unwrap_or(0);
            let raw = inflate(data, Compression::Gzip, skip, h.data_bytes)?;
            if raw.len() < h.data_bytes {
                return Err(truncated(raw.len()));
            }
            convert(&raw, h.scalar, h.big_endian, None)
        }
        Encoding::Ascii => {
            let mut out = Vec::new();
            for token in data
                .split(|b| b.is_ascii_whitespace() || *b == b',')
                .filter(|t| !t.is_empty())
                .take(h.nvox)
            {
                let text = std::str::from_utf8(token).unwrap_or("");
                let v: f64 = text.parse().map_err(|_| {
                    bad(format!(
                        "NRRD ascii value \"{}\" is not a number",
                        String::from_utf8_lossy(token)
                            .chars()
                            .take(40)
                            .collect::<String>()
                    ))
                })?;
                out.push(v as f32);
            }
            if out.len() < h.nvox {
                let d = h.dims;
                return Err(VolumeError::Truncated(format!(
                    "the NRRD header promises {}x{}x{} = {} ascii values but the data holds {}",
                    d[0],
                    d[1],
                    d[2],
                    h.nvox,
                    out.len()
                )));
            }
            out
        }
    };
    Ok(Volume {
        geometry: h.geometry.clone(),
        data: values,
    })
}

/// Writes labels as NRRD with the label map's geometry (`space: left-posterior-superior`,
/// uint8 or uint16, little-endian), gzip-encoded when `gzip`.
pub fn write_labels(labels: &LabelMap, gzip: bool) -> Vec<u8> {
    let values = exactly(&labels.labels, labels.geometry.voxel_count());
    let (data, scalar) = label_bytes(&values);
    finish(&labels.geometry, scalar, data, gzip)
}

/// Writes a float32 intensity volume as NRRD with its geometry.
pub fn write_volume(volume: &Volume, gzip: bool) -> Vec<u8> {
    let values = exactly(&volume.data, volume.geometry.voxel_count());
    let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    finish(&volume.geometry, Scalar::F32, data, gzip)
}

fn finish(g: &super::Geometry, scalar: Scalar, data: Vec<u8>, compress: bool) -> Vec<u8> {
    let (columns, origin) = lps_axes(g);
    let vector = |v: [f64; 3]| format!("({},{},{})", fmt_f64(v[0]), fmt_f64(v[1]), fmt_f64(v[2]));
    let type_name = match scalar {
        Scalar::U8 => "uint8",
        Scalar::U16 => "uint16",
        _ => "float",
    };
    let mut text = String::from("NRRD0004\n# Complete NRRD file format specification at:\n# http://teem.sourceforge.net/nrrd/format.html\n");
    text.push_str(&format!(
        "type: {type_name}\ndimension: 3\nspace: left-posterior-superior\n"
    ));
    text.push_str(&format!(
        "sizes: {} {} {}\n",
        g.dims[0], g.dims[1], g.dims[2]
    ));
    text.push_str(&format!(
        "space directions: {} {} {}\n",
        vector(columns[0]),
        vector(columns[1]),
        vector(columns[2])
    ));
    text.push_str("kinds: domain domain domain\n");
    if scalar.size() > 1 {
        text.push_str("endian: little\n");
    }
    text.push_str(if compress {
        "encoding: gzip\n"
    } else {
        "encoding: raw\n"
    });
    text.push_str(&format!("space origin: {}\n\n", vector(origin)));
    let mut out = text.into_bytes();
    if compress {
        out.extend_from_slice(&gzip(&data));
    } else {
        out.extend_from_slice(&data);
    }
    out
}
