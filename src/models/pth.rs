//! Readers for the weight files that brainchop ships as `model.pth`, without PyTorch.
//!
//! Despite the name, brainchop-models' `model.pth` files come in two containers:
//! - a PyTorch `torch.save` zip archive (`<dir>/data.pkl` + `<dir>/data/<key>` storages), as
//!   in `mindgrab/`;
//! - a **safetensors** file (8-byte little-endian header length, JSON header, raw data), as in
//!   `model5_gw_ae/`, `model21_104class/`, `subcortical/`, ... (written by brainchop-cli's
//!   `convert_tfjs_to_pth.py` with tinygrad's `safe_save`). brainchop-cli's `load_meshnet` tries
//!   `safe_load` first and falls back to `torch_load`, so both are valid.
//!
//! The zip reader handles stored and deflated members (and zip64 records); the pickle reader
//! implements what `torch.save` of a state dict emits: an `OrderedDict` of
//! `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` calls whose storages
//! are persistent ids `('storage', torch.FloatStorage, key, location, numel)`.
//! Only float32 tensors are accepted.

use super::ModelError;
use std::collections::HashMap;
use std::io::Read;

/// One tensor of a state dict, row-major.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Which container a `model.pth` was; decides how entries are matched to layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Container {
    /// PyTorch zip: brainchop-cli matches entries to its layers by position (`convert_keys`).
    TorchZip,
    /// safetensors: brainchop-cli matches entries by name (`load_state_dict`).
    Safetensors,
}

pub(crate) struct StateDict {
    pub container: Container,
    /// In file order: pickle order for a torch zip, data-offset order for safetensors.
    pub tensors: Vec<NamedTensor>,
}

fn bad(file: &str, msg: impl std::fmt::Display) -> ModelError {
    ModelError::BadFormat(format!("{file}: {msg}"))
}

/// Reads a `model.pth` (PyTorch zip or safetensors); `file` names it in errors.
pub(crate) fn read_state_dict(bytes: &[u8], file: &str) -> Result<StateDict, ModelError> {
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        let tensors = read_torch_zip(bytes, file)?;
        return Ok(StateDict {
            container: Container::TorchZip,
            tensors,
        });
    }
    if bytes.len() >= 9 && bytes[8] == b'{' {
        let tensors = read_safetensors(bytes, file)?;
        return Ok(StateDict {
            container: Container::Safetensors,
            tensors,
        });
    }
    if bytes.first() == Some(&0x80) {
        return Err(bad(
            file,
            "legacy (pre-1.6, non-zip) torch.save format is not supported; re-save it with a current PyTorch",
        ));
    }
    Err(bad(
        file,
        "neither a PyTorch zip archive nor a safetensors file",
    ))
}

// ---------------------------------------------------------------------------------------
// safetensors

fn read_safetensors(bytes: &[u8], file: &str) -> Result<Vec<NamedTensor>, ModelError> {
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    let data_start = 8u64
        .checked_add(header_len)
        .filter(|&end| end <= bytes.len() as u64)
        .ok_or_else(|| {
            bad(
                file,
                format!("safetensors header of {header_len} bytes runs past the end of the file"),
            )
        })? as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..data_start]).map_err(|e| {
            bad(
                file,
                format!("safetensors header is not a JSON object: {e}"),
            )
        })?;
    let data = &bytes[data_start..];
    let mut tensors = Vec::new();
    for (name, info) in &header {
        if name == "__metadata__" {
            continue;
        }
        let dtype = info.get("dtype").and_then(|v| v.as_str()).unwrap_or("?");
        if dtype != "F32" {
            return Err(bad(
                file,
                format!("tensor '{name}' has dtype {dtype}; only float32 (F32) is supported"),
            ));
        }
        let shape: Vec<usize> = info
            .get("shape")
            .and_then(|v| v.as_array())
            .and_then(|a| a.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
            .ok_or_else(|| bad(file, format!("tensor '{name}' has no valid shape")))?;
        let offsets: Vec<usize> = info
            .get("data_offsets")
            .and_then(|v| v.as_array())
            .and_then(|a| a.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
            .filter(|o: &Vec<usize>| o.len() == 2 && o[0] <= o[1])
            .ok_or_else(|| bad(file, format!("tensor '{name}' has no valid data_offsets")))?;
        let numel: usize = shape.iter().product();
        if offsets[1] - offsets[0] != numel * 4 {
            return Err(bad(
                file,
                format!(
                    "tensor '{name}' of shape {shape:?} needs {} bytes, its data_offsets span {}",
                    numel * 4,
                    offsets[1] - offsets[0]
                ),
            ));
        }
        if offsets[1] > data.len() {
            return Err(bad(
                file,
                format!("tensor '{name}' ends at byte {} of the data, which has only {} (truncated file?)", offsets[1], data.len()),
            ));
        }
        tensors.push((
            offsets[0],
            NamedTensor {
                name: name.clone(),
                shape,
                data: f32s(&data[offsets[0]..offsets[1]]),
            },
        ));
    }
    tensors.sort_by_key(|(offset, _)| *offset);
    Ok(tensors.into_iter().map(|(_, t)| t).collect())
}

pub(crate) fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

// ---------------------------------------------------------------------------------------
// zip

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2).map(|s| u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8)
        .map(|s| u64::from_le_bytes(s.try_into().unwrap()))
}

/// The members of a zip archive by name, decompressed and CRC-checked.
pub(crate) fn read_zip(bytes: &[u8], file: &str) -> Result<Vec<(String, Vec<u8>)>, ModelError> {
    let truncated = || bad(file, "zip archive is truncated or corrupt");
    // End of central directory: 22 bytes + a comment of up to 65535 bytes.
    let search_from = bytes.len().saturating_sub(22 + 65535);
    let eocd = (search_from..=bytes.len().saturating_sub(22))
        .rev()
        .find(|&i| u32_at(bytes, i) == Some(0x0605_4b50))
        .ok_or_else(|| {
            bad(
                file,
                "zip end-of-central-directory record not found (truncated or not a zip)",
            )
        })?;
    let mut entries = u16_at(bytes, eocd + 10).ok_or_else(truncated)? as u64;
    let mut cd_size = u32_at(bytes, eocd + 12).ok_or_else(truncated)? as u64;
    let mut cd_offset = u32_at(bytes, eocd + 16).ok_or_else(truncated)? as u64;
    if entries == 0xFFFF || cd_size == 0xFFFF_FFFF || cd_offset == 0xFFFF_FFFF {
        // zip64: a locator sits just before the EOCD and points at the zip64 EOCD record.
        let locator = eocd.checked_sub(20).ok_or_else(truncated)?;
        if u32_at(bytes, locator) != Some(0x0706_4b50) {
            return Err(bad(
                file,
                "zip64 archive without a zip64 end-of-central-directory locator",
            ));
        }
        let rec = u64_at(bytes, locator + 8).ok_or_else(truncated)? as usize;
        if u32_at(bytes, rec) != Some(0x0606_4b50) {
            return Err(truncated());
        }
        entries = u64_at(bytes, rec + 32).ok_or_else(truncated)?;
        cd_size = u64_at(bytes, rec + 40).ok_or_else(truncated)?;
        cd_offset = u64_at(bytes, rec + 48).ok_or_else(truncated)?;
    }
    if cd_offset.saturating_add(cd_size) > bytes.len() as u64 {
        return Err(truncated());
    }
    let mut members = Vec::new();
    let mut at = cd_offset as usize;
    for _ in 0..entries {
        if u32_at(bytes, at) != Some(0x0201_4b50) {
            return Err(bad(file, "zip central directory is corrupt"));
        }
        let flags = u16_at(bytes, at + 8).ok_or_else(truncated)?;
        let method = u16_at(bytes, at + 10).ok_or_else(truncated)?;
        let crc = u32_at(bytes, at + 16).ok_or_else(truncated)?;
        let mut compressed = u32_at(bytes, at + 20).ok_or_else(truncated)? as u64;
        let mut uncompressed = u32_at(bytes, at + 24).ok_or_else(truncated)? as u64;
        let name_len = u16_at(bytes, at + 28).ok_or_else(truncated)? as usize;
        let extra_len = u16_at(bytes, at + 30).ok_or_else(truncated)? as usize;
        let comment_len = u16_at(bytes, at + 32).ok_or_else(truncated)? as usize;
        let mut local = u32_at(bytes, at + 42).ok_or_else(truncated)? as u64;
        let name_bytes = bytes
            .get(at + 46..at + 46 + name_len)
            .ok_or_else(truncated)?;
        let name = String::from_utf8_lossy(name_bytes).into_owned();
        let extra = bytes
            .get(at + 46 + name_len..at + 46 + name_len + extra_len)
            .ok_or_else(truncated)?;
        // zip64 extended information: the 64-bit values of the fields that read 0xFFFFFFFF.
        let mut e = 0;
        while e + 4 <= extra.len() {
            let id = u16_at(extra, e).unwrap();
            let len = u16_at(extra, e + 2).unwrap() as usize;
            if id == 0x0001 {
                let mut p = e + 4;
                for field in [&mut uncompressed, &mut compressed, &mut local] {
                    if *field == 0xFFFF_FFFF {
                        *field = u64_at(extra, p).ok_or_else(truncated)?;
                        p += 8;
                    }
                }
            }
            e += 4 + len;
        }
        at += 46 + name_len + extra_len + comment_len;

        if flags & 1 != 0 {
            return Err(bad(file, format!("zip member {name} is encrypted")));
        }
        let local = local as usize;
        if u32_at(bytes, local) != Some(0x0403_4b50) {
            return Err(bad(
                file,
                format!("zip member {name}: local header is corrupt"),
            ));
        }
        let local_name = u16_at(bytes, local + 26).ok_or_else(truncated)? as usize;
        let local_extra = u16_at(bytes, local + 28).ok_or_else(truncated)? as usize;
        let start = local + 30 + local_name + local_extra;
        let raw = start
            .checked_add(compressed as usize)
            .and_then(|end| bytes.get(start..end))
            .ok_or_else(|| {
                bad(
                    file,
                    format!("zip member {name} runs past the end of the archive (truncated?)"),
                )
            })?;
        let data = match method {
            0 => raw.to_vec(),
            8 => {
                let mut out = Vec::with_capacity(uncompressed as usize);
                flate2::read::DeflateDecoder::new(raw)
                    .read_to_end(&mut out)
                    .map_err(|e| bad(file, format!("zip member {name}: cannot inflate: {e}")))?;
                out
            }
            m => return Err(bad(file, format!("zip member {name} uses compression method {m}; only stored and deflate are supported"))),
        };
        if data.len() as u64 != uncompressed {
            return Err(bad(
                file,
                format!(
                    "zip member {name}: {} bytes, the directory says {uncompressed}",
                    data.len()
                ),
            ));
        }
        let mut hasher = flate2::Crc::new();
        hasher.update(&data);
        if hasher.sum() != crc {
            return Err(bad(
                file,
                format!("zip member {name} fails its CRC-32 check (corrupt file)"),
            ));
        }
        members.push((name, data));
    }
    Ok(members)
}

// ---------------------------------------------------------------------------------------
// PyTorch zip + pickle

fn read_torch_zip(bytes: &[u8], file: &str) -> Result<Vec<NamedTensor>, ModelError> {
    let members = read_zip(bytes, file)?;
    let (pkl_name, pkl) = members
        .iter()
        .find(|(n, _)| n == "data.pkl" || n.ends_with("/data.pkl"))
        .ok_or_else(|| bad(file, "PyTorch archive has no data.pkl"))?;
    let prefix = &pkl_name[..pkl_name.len() - "data.pkl".len()];
    let storages: HashMap<&str, &[u8]> = members
        .iter()
        .filter_map(|(n, d)| {
            n.strip_prefix(prefix)
                .and_then(|n| n.strip_prefix("data/"))
                .map(|key| (key, d.as_slice()))
        })
        .collect();

    let root = Unpickler::new(pkl, file).run()?;
    let items = match root {
        Value::Dict(items) => items,
        other => {
            return Err(bad(
                file,
                format!("data.pkl holds {}, not a state dict", other.kind()),
            ))
        }
    };
    let mut tensors = Vec::with_capacity(items.len());
    for (key, value) in items {
        let name = match key {
            Value::Str(s) => s,
            other => {
                return Err(bad(
                    file,
                    format!("state dict key is {}, not a string", other.kind()),
                ))
            }
        };
        let t = match value {
            Value::Tensor(t) => t,
            other => {
                return Err(bad(
                    file,
                    format!(
                        "state dict entry '{name}' is {}, not a tensor",
                        other.kind()
                    ),
                ))
            }
        };
        let element = match t.dtype.as_str() {
            "FloatStorage" => Element::F32,
            // counters and indices (BatchNorm's num_batches_tracked), converted exactly below
            "LongStorage" => Element::I64,
            other => {
                let dtype = other.trim_end_matches("Storage");
                return Err(bad(
                    file,
                    format!("tensor '{name}' has dtype {dtype}; only float32 (and int64 indices) are supported"),
                ));
            }
        };
        let storage = storages.get(t.key.as_str()).ok_or_else(|| {
            bad(
                file,
                format!(
                    "tensor '{name}': storage data/{} is missing from the archive",
                    t.key
                ),
            )
        })?;
        let data =
            gather(storage, &t, element).map_err(|m| bad(file, format!("tensor '{name}': {m}")))?;
        tensors.push(NamedTensor {
            name,
            shape: t.size,
            data,
        });
    }
    Ok(tensors)
}

/// A storage's element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Element {
    F32,
    /// int64, returned as f32 when every value is exact in f32 (|v| <= 2^24), an error otherwise.
    I64,
}

/// Materializes a strided view of a float32 (or int64) storage as a contiguous row-major array.
fn gather(storage: &[u8], t: &TensorRef, element: Element) -> Result<Vec<f32>, String> {
    let size = match element {
        Element::F32 => 4,
        Element::I64 => 8,
    };
    if t.size.len() != t.stride.len() {
        return Err(format!(
            "size {:?} and stride {:?} differ in rank",
            t.size, t.stride
        ));
    }
    let available = storage.len() / size;
    let numel: usize = t.size.iter().product();
    if numel == 0 {
        return Ok(Vec::new());
    }
    let last = t.offset
        + t.size
            .iter()
            .zip(&t.stride)
            .map(|(&n, &s)| (n - 1) * s)
            .sum::<usize>();
    if last >= available {
        return Err(format!(
            "view (offset {}, size {:?}, stride {:?}) reads element {last} of a storage with {available} (truncated?)",
            t.offset, t.size, t.stride
        ));
    }
    let read = |i: usize| -> Result<f32, String> {
        let b = &storage[i * size..i * size + size];
        match element {
            Element::F32 => Ok(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            Element::I64 => {
                let v = i64::from_le_bytes(b.try_into().unwrap());
                if v.unsigned_abs() > 1 << 24 {
                    return Err(format!("int64 value {v} is not exact as float32"));
                }
                Ok(v as f32)
            }
        }
    };
    let mut out = Vec::with_capacity(numel);
    let mut index = vec![0usize; t.size.len()];
    for _ in 0..numel {
        let at = t.offset
            + index
                .iter()
                .zip(&t.stride)
                .map(|(i, s)| i * s)
                .sum::<usize>();
        out.push(read(at)?);
        for d in (0..index.len()).rev() {
            index[d] += 1;
            if index[d] < t.size[d] {
                break;
            }
            index[d] = 0;
        }
    }
    Ok(out)
}

#[derive(Clone, Debug)]
struct TensorRef {
    dtype: String,
    key: String,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

#[derive(Clone, Debug)]
enum Value {
    None,
    Bool,
    Int(i64),
    Float,
    Str(String),
    Bytes,
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String, String),
    Storage {
        dtype: String,
        key: String,
    },
    Tensor(TensorRef),
    /// Anything else a REDUCE/NEWOBJ built (kept only by name).
    Object(String),
    Mark,
}

impl Value {
    fn kind(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool => "a bool".into(),
            Value::Int(_) => "an int".into(),
            Value::Float => "a float".into(),
            Value::Str(_) => "a string".into(),
            Value::Bytes => "bytes".into(),
            Value::Tuple(_) => "a tuple".into(),
            Value::List(_) => "a list".into(),
            Value::Dict(_) => "a dict".into(),
            Value::Global(m, n) => format!("{m}.{n}"),
            Value::Storage { .. } => "a storage".into(),
            Value::Tensor(_) => "a tensor".into(),
            Value::Object(n) => format!("a {n} object"),
            Value::Mark => "a mark".into(),
        }
    }

    fn as_usize(&self) -> Option<usize> {
        match self {
            Value::Int(i) if *i >= 0 => Some(*i as usize),
            _ => None,
        }
    }

    fn as_usizes(&self) -> Option<Vec<usize>> {
        match self {
            Value::Tuple(v) | Value::List(v) => v.iter().map(Value::as_usize).collect(),
            _ => None,
        }
    }
}

/// A pickle virtual machine for the subset of protocol 2-5 that `torch.save` emits.
struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    file: &'a str,
    stack: Vec<Value>,
    memo: HashMap<u64, Value>,
}

impl<'a> Unpickler<'a> {
    fn new(data: &'a [u8], file: &'a str) -> Self {
        Unpickler {
            data,
            pos: 0,
            file,
            stack: Vec::new(),
            memo: HashMap::new(),
        }
    }

    fn err(&self, msg: impl std::fmt::Display) -> ModelError {
        bad(self.file, format!("data.pkl at byte {}: {msg}", self.pos))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ModelError> {
        let s = self
            .pos
            .checked_add(n)
            .and_then(|end| self.data.get(self.pos..end))
            .ok_or_else(|| self.err("unexpected end"))?;
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, ModelError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, ModelError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }

    fn line(&mut self) -> Result<String, ModelError> {
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.err("unterminated line"))?;
        self.pos += end + 1;
        Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
    }

    fn pop(&mut self) -> Result<Value, ModelError> {
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }

    fn top(&mut self) -> Result<&mut Value, ModelError> {
        let pos = self.pos;
        self.stack
            .last_mut()
            .ok_or_else(|| bad(self.file, format!("data.pkl at byte {pos}: empty stack")))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, ModelError> {
        let mark = self
            .stack
            .iter()
            .rposition(|v| matches!(v, Value::Mark))
            .ok_or_else(|| self.err("no MARK on the stack"))?;
        let items = self.stack.split_off(mark + 1);
        self.stack.pop();
        Ok(items)
    }

    fn memo_put(&mut self, key: u64) -> Result<(), ModelError> {
        let v = self.top()?.clone();
        self.memo.insert(key, v);
        Ok(())
    }

    fn memo_get(&mut self, key: u64) -> Result<(), ModelError> {
        let v = self
            .memo
            .get(&key)
            .cloned()
            .ok_or_else(|| self.err(format!("memo key {key} is unset")))?;
        self.stack.push(v);
        Ok(())
    }

    fn set_items(&mut self, items: Vec<Value>) -> Result<(), ModelError> {
        if items.len() % 2 != 0 {
            return Err(self.err("SETITEMS with an odd number of values"));
        }
        let (pos, file) = (self.pos, self.file);
        match self.top()? {
            Value::Dict(d) => {
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    d.push((k, v));
                }
                Ok(())
            }
            // Items of opaque objects carry no weights.
            Value::Object(_) => Ok(()),
            other => Err(bad(
                file,
                format!("data.pkl at byte {pos}: SETITEM on {}", other.kind()),
            )),
        }
    }

    fn append(&mut self, items: Vec<Value>) -> Result<(), ModelError> {
        let (pos, file) = (self.pos, self.file);
        match self.top()? {
            Value::List(l) => {
                l.extend(items);
                Ok(())
            }
            // Appending to opaque objects (e.g. a set being built) carries no weights.
            Value::Object(_) => Ok(()),
            other => Err(bad(
                file,
                format!("data.pkl at byte {pos}: APPEND on {}", other.kind()),
            )),
        }
    }

    /// `callable(*args)` for the callables a state dict uses.
    fn reduce(&self, callable: Value, args: Value) -> Result<Value, ModelError> {
        let args = match args {
            Value::Tuple(a) => a,
            other => {
                return Err(self.err(format!(
                    "REDUCE arguments are {}, not a tuple",
                    other.kind()
                )))
            }
        };
        let (module, name) = match callable {
            Value::Global(m, n) => (m, n),
            other => return Err(self.err(format!("REDUCE on {}", other.kind()))),
        };
        match (module.as_str(), name.as_str()) {
            ("collections", "OrderedDict") | ("builtins", "dict") => {
                if args.is_empty() {
                    Ok(Value::Dict(Vec::new()))
                } else {
                    Ok(Value::Object(format!("{module}.{name}")))
                }
            }
            ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
                let storage = args.first().cloned();
                let (dtype, key) = match storage {
                    Some(Value::Storage { dtype, key }) => (dtype, key),
                    _ => return Err(self.err(format!("{name}: first argument is not a storage"))),
                };
                let offset = args
                    .get(1)
                    .and_then(Value::as_usize)
                    .ok_or_else(|| self.err(format!("{name}: bad storage offset")))?;
                let size = args
                    .get(2)
                    .and_then(Value::as_usizes)
                    .ok_or_else(|| self.err(format!("{name}: bad size")))?;
                let stride = args
                    .get(3)
                    .and_then(Value::as_usizes)
                    .ok_or_else(|| self.err(format!("{name}: bad stride")))?;
                Ok(Value::Tensor(TensorRef {
                    dtype,
                    key,
                    offset,
                    size,
                    stride,
                }))
            }
            ("torch._utils", "_rebuild_parameter")
            | ("torch._utils", "_rebuild_parameter_with_state") => match args.into_iter().next() {
                Some(t @ Value::Tensor(_)) => Ok(t),
                _ => Err(self.err(format!("{name}: first argument is not a tensor"))),
            },
            _ => Ok(Value::Object(format!("{module}.{name}"))),
        }
    }

    /// `persistent_load`: torch's storage references.
    fn persistent(&self, pid: Value) -> Result<Value, ModelError> {
        let parts = match pid {
            Value::Tuple(p) => p,
            other => {
                return Err(self.err(format!("persistent id is {}, not a tuple", other.kind())))
            }
        };
        match (parts.first(), parts.get(1), parts.get(2)) {
            (Some(Value::Str(tag)), Some(Value::Global(_, dtype)), Some(Value::Str(key)))
                if tag == "storage" =>
            {
                Ok(Value::Storage {
                    dtype: dtype.clone(),
                    key: key.clone(),
                })
            }
            _ => {
                Err(self
                    .err("persistent id is not a ('storage', type, key, location, numel) tuple"))
            }
        }
    }

    fn run(mut self) -> Result<Value, ModelError> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO
                }
                0x95 => {
                    self.take(8)?; // FRAME
                }
                b'.' => return self.pop(), // STOP
                b'(' => self.stack.push(Value::Mark),
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                b']' => self.stack.push(Value::List(Vec::new())),
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool),
                0x89 => self.stack.push(Value::Bool),
                b'K' => {
                    let v = self.u8()? as i64;
                    self.stack.push(Value::Int(v));
                }
                b'M' => {
                    let b = self.take(2)?;
                    self.stack
                        .push(Value::Int(u16::from_le_bytes([b[0], b[1]]) as i64));
                }
                b'J' => {
                    let b = self.take(4)?;
                    self.stack
                        .push(Value::Int(i32::from_le_bytes(b.try_into().unwrap()) as i64));
                }
                0x8a => {
                    // LONG1: little-endian two's complement of n bytes.
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    if n > 8 {
                        return Err(self.err("integer wider than 64 bits"));
                    }
                    let mut v: i64 = 0;
                    for (i, &byte) in b.iter().enumerate() {
                        v |= (byte as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.stack.push(Value::Int(v));
                }
                b'G' => {
                    self.take(8)?; // BINFLOAT: no weights in floats
                    self.stack.push(Value::Float);
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let s = String::from_utf8_lossy(self.take(n)?).into_owned();
                    self.stack.push(Value::Str(s));
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let s = String::from_utf8_lossy(self.take(n)?).into_owned();
                    self.stack.push(Value::Str(s));
                }
                0x8d => {
                    let b = self.take(8)?;
                    let n = u64::from_le_bytes(b.try_into().unwrap()) as usize;
                    let s = String::from_utf8_lossy(self.take(n)?).into_owned();
                    self.stack.push(Value::Str(s));
                }
                b'T' => {
                    let n = self.u32()? as usize;
                    let s = self.take(n)?.iter().map(|&b| b as char).collect();
                    self.stack.push(Value::Str(s));
                }
                b'U' => {
                    let n = self.u8()? as usize;
                    let s = self.take(n)?.iter().map(|&b| b as char).collect();
                    self.stack.push(Value::Str(s));
                }
                b'B' => {
                    let n = self.u32()? as usize;
                    self.take(n)?;
                    self.stack.push(Value::Bytes);
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    self.take(n)?;
                    self.stack.push(Value::Bytes);
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global(module, name));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.stack.push(Value::Global(m, n)),
                        _ => return Err(self.err("STACK_GLOBAL needs two strings")),
                    }
                }
                b'q' => {
                    let k = self.u8()? as u64;
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = self.u32()? as u64;
                    self.memo_put(k)?;
                }
                0x94 => {
                    let k = self.memo.len() as u64;
                    self.memo_put(k)?;
                }
                b'h' => {
                    let k = self.u8()? as u64;
                    self.memo_get(k)?;
                }
                b'j' => {
                    let k = self.u32()? as u64;
                    self.memo_get(k)?;
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err(self.err("stack underflow"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(items));
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(items));
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Dict(Vec::new()));
                    self.set_items(items)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent(pid)?;
                    self.stack.push(v);
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.reduce(callable, args)?;
                    self.stack.push(v);
                }
                0x81 => {
                    // NEWOBJ: cls.__new__(cls, *args)
                    let _args = self.pop()?;
                    let cls = self.pop()?;
                    self.stack.push(Value::Object(cls.kind()));
                }
                b'b' => {
                    // BUILD: sets state (e.g. a state dict's `_metadata`); no weights in it.
                    self.pop()?;
                    self.top()?;
                }
                0x8f => self.stack.push(Value::Object("set".into())), // EMPTY_SET
                0x90 => {
                    let _ = self.pop_mark()?; // ADDITEMS
                }
                b'0' => {
                    self.pop()?; // POP
                }
                b'2' => {
                    let v = self.top()?.clone(); // DUP
                    self.stack.push(v);
                }
                b'1' => {
                    self.pop_mark()?; // POP_MARK
                }
                other => return Err(self.err(format!("unsupported pickle opcode 0x{other:02x}"))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long1_sign() {
        // LONG1 with 2 bytes 0xff 0xff = -1, then STOP.
        let pkl = [0x80, 2, 0x8a, 2, 0xff, 0xff, b'.'];
        match Unpickler::new(&pkl, "t").run().unwrap() {
            Value::Int(v) => assert_eq!(v, -1),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn strided_gather() {
        // A 2x3 storage viewed transposed (3x2, stride (1, 3)).
        let storage: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let t = TensorRef {
            dtype: "FloatStorage".into(),
            key: "0".into(),
            offset: 0,
            size: vec![3, 2],
            stride: vec![1, 3],
        };
        assert_eq!(
            gather(&storage, &t, Element::F32).unwrap(),
            vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
        );
        let t = TensorRef {
            offset: 1,
            size: vec![5],
            stride: vec![1],
            ..t
        };
        assert_eq!(
            gather(&storage, &t, Element::F32).unwrap(),
            vec![1.0, 2.0, 3.0, 4.0, 5.0]
        );
        let t = TensorRef { offset: 2, ..t };
        assert!(gather(&storage, &t, Element::F32).is_err());
    }

    #[test]
    fn int64_gather_is_exact_or_refused() {
        let values: [i64; 3] = [0, -7, 1 << 24];
        let storage: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let t = TensorRef {
            dtype: "LongStorage".into(),
            key: "0".into(),
            offset: 0,
            size: vec![3],
            stride: vec![1],
        };
        assert_eq!(
            gather(&storage, &t, Element::I64).unwrap(),
            vec![0.0, -7.0, 16777216.0]
        );
        let big: Vec<u8> = ((1i64 << 24) + 1).to_le_bytes().to_vec();
        let t = TensorRef { size: vec![1], ..t };
        assert!(gather(&big, &t, Element::I64).is_err());
    }
}
