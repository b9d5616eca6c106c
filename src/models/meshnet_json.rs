//! brainchop-cli's MeshNet format: `model.json` =
//! `{header, bnorm, gelu|elu, bias, dropout_p, affine?, layers: [{in_channels, out_channels,
//! kernel_size, padding, stride, dilation, bias?}]}` plus weights in `model.pth` (a PyTorch zip
//! or a safetensors file, see [`super::pth`]) or, failing that, `model.bin`.
//!
//! Mirrors brainchop 0.2.5's `tiny_meshnet.py` (`load_meshnet`, `set_channel_num`,
//! `MeshNet.__init__`, `construct_layer`):
//! - channel counts: a config "uses placeholders" when `layers[0].in_channels == -1` or
//!   `layers[-1].out_channels == -1`; then in = 1, channels = 15, classes = 2, else they are
//!   read from the first and last layer. `set_channel_num` is applied either way: the first
//!   layer is `in -> channels`, every hidden layer `channels -> channels`, the last
//!   `channels -> classes`.
//! - every layer but the last is conv -> [GroupNorm(C groups, C channels, affine) if bnorm]
//!   -> elu if `elu` else gelu if `gelu` else relu -> [dropout, ignored at inference];
//!   the last is a bare conv. `bias` per layer overrides the global `bias` (default false).
//! - GroupNorm with one channel per group is per-channel normalization over the whole volume;
//!   tinygrad's default eps is 1e-5 (biased variance).
//! - weights: a safetensors `model.pth` is matched by name against tinygrad's state-dict keys
//!   (`model.<i>.weight` / `.bias`, `<i>` counting list entries: conv, norm, activation,
//!   dropout). A PyTorch zip is matched by position (`convert_keys`: `zip` of the file's keys
//!   with the model's), so surplus trailing entries are ignored, exactly as the CLI does; e.g.
//!   mindgrab's `model.pth` carries a bias for its last conv that its config (no `bias`) does
//!   not have, and the CLI drops it.
//! - `model.bin` (the CLI itself cannot read it) holds, in brainchop-models, the same weights in
//!   TF.js layout: per layer the kernel as `[kd, kh, kw, in, out]`, then the bias (then
//!   GroupNorm weight and bias when affine). Verified: for model5_gw_ae, model18cls,
//!   model21_104class and model30chan50cls it equals `model.pth` under that transpose.

use super::pth::{self, Container, NamedTensor};
use super::tfjs::kernel_to_oidhw;
use super::{Activation, AxisOrder, ConvLayer, ModelError, ModelFiles, Network, Normalization};
use serde_json::Value;

/// brainchop-cli's `load_meshnet` defaults for placeholder (-1) configs.
const DEFAULT_IN_CHANNELS: i64 = 1;
const DEFAULT_CHANNELS: i64 = 15;
const DEFAULT_CLASSES: i64 = 2;
/// tinygrad's `nn.GroupNorm` default.
const GROUP_NORM_EPS: f32 = 1e-5;

fn bad(msg: impl Into<String>) -> ModelError {
    ModelError::BadFormat(msg.into())
}

/// One layer's hyper-parameters after `set_channel_num`.
#[derive(Clone, Debug)]
struct LayerSpec {
    in_channels: usize,
    out_channels: usize,
    kernel_size: usize,
    dilation: usize,
    padding: usize,
    bias: bool,
}

/// The tensors brainchop-cli's model expects, in its state-dict order.
struct Expected {
    /// tinygrad key, e.g. `model.3.weight`.
    key: String,
    shape: Vec<usize>,
    layer: usize,
    kind: Param,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Param {
    ConvWeight,
    ConvBias,
    NormWeight,
    NormBias,
}

fn int(layer: &Value, key: &str, index: usize, default: Option<i64>) -> Result<i64, ModelError> {
    match layer.get(key) {
        Some(v) => v.as_i64().ok_or_else(|| {
            bad(format!(
                "model.json: layers[{index}].{key} is {v}, not an integer"
            ))
        }),
        None => default.ok_or_else(|| bad(format!("model.json: layers[{index}] has no {key}"))),
    }
}

fn flag(config: &Value, key: &str) -> bool {
    config.get(key).is_some_and(|v| {
        v.as_bool()
            .unwrap_or_else(|| v.as_i64().is_some_and(|n| n != 0))
    })
}

fn specs(config: &Value) -> Result<Vec<LayerSpec>, ModelError> {
    let layers = config
        .get("layers")
        .and_then(Value::as_array)
        .filter(|l| !l.is_empty())
        .ok_or_else(|| bad("model.json: 'layers' must be a non-empty list"))?;
    let n = layers.len();
    let first_in = int(&layers[0], "in_channels", 0, None)?;
    let last_out = int(&layers[n - 1], "out_channels", n - 1, None)?;
    let (in_channels, channels, classes) = if first_in == -1 || last_out == -1 {
        (DEFAULT_IN_CHANNELS, DEFAULT_CHANNELS, DEFAULT_CLASSES)
    } else {
        (
            first_in,
            int(&layers[0], "out_channels", 0, None)?,
            last_out,
        )
    };
    if in_channels <= 0 || channels <= 0 || classes <= 0 {
        return Err(bad(format!(
            "model.json: channel counts must be positive (in {in_channels}, hidden {channels}, classes {classes})"
        )));
    }
    let global_bias = flag(config, "bias");
    let mut out = Vec::with_capacity(n);
    for (i, layer) in layers.iter().enumerate() {
        // set_channel_num: first layer, then last (a one-layer config ends as channels -> classes).
        let (mut cin, mut cout) = (channels, channels);
        if i == 0 {
            cin = in_channels;
        }
        if i == n - 1 {
            cin = if n == 1 { channels } else { cin };
            cout = classes;
        }
        let unsupported =
            |what: String| ModelError::UnsupportedLayer(format!("model.json layers[{i}]: {what}"));
        let k = int(layer, "kernel_size", i, None)?;
        if k < 1 || k % 2 == 0 {
            return Err(unsupported(format!(
                "kernel_size {k} (only odd cubic kernels are supported)"
            )));
        }
        let stride = int(layer, "stride", i, Some(1))?;
        if stride != 1 {
            return Err(unsupported(format!(
                "stride {stride} (only 1 is supported)"
            )));
        }
        let groups = int(layer, "groups", i, Some(1))?;
        if groups != 1 {
            return Err(unsupported(format!(
                "groups {groups} (only 1 is supported)"
            )));
        }
        let dilation = int(layer, "dilation", i, Some(1))?;
        if dilation < 1 {
            return Err(unsupported(format!("dilation {dilation}")));
        }
        let padding = int(layer, "padding", i, Some(0))?;
        let same = dilation * (k - 1) / 2;
        if padding != same {
            return Err(unsupported(format!(
                "padding {padding} with kernel {k} and dilation {dilation} (only 'same' padding, {same}, is supported)"
            )));
        }
        let bias = match layer.get("bias") {
            Some(v) => v
                .as_bool()
                .ok_or_else(|| bad(format!("model.json: layers[{i}].bias is {v}, not a bool")))?,
            None => global_bias,
        };
        out.push(LayerSpec {
            in_channels: cin as usize,
            out_channels: cout as usize,
            kernel_size: k as usize,
            dilation: dilation as usize,
            padding: padding as usize,
            bias,
        });
    }
    Ok(out)
}

fn expected_tensors(
    specs: &[LayerSpec],
    bnorm: bool,
    affine: bool,
    dropout: bool,
) -> Vec<Expected> {
    let mut out = Vec::new();
    let mut index = 0; // position in tinygrad's `self.model` list
    for (l, s) in specs.iter().enumerate() {
        let k = s.kernel_size;
        let last = l + 1 == specs.len();
        out.push(Expected {
            key: format!("model.{index}.weight"),
            shape: vec![s.out_channels, s.in_channels, k, k, k],
            layer: l,
            kind: Param::ConvWeight,
        });
        if s.bias {
            out.push(Expected {
                key: format!("model.{index}.bias"),
                shape: vec![s.out_channels],
                layer: l,
                kind: Param::ConvBias,
            });
        }
        if last {
            break;
        }
        index += 1;
        if bnorm {
            if affine {
                for (param, kind) in [("weight", Param::NormWeight), ("bias", Param::NormBias)] {
                    out.push(Expected {
                        key: format!("model.{index}.{param}"),
                        shape: vec![s.out_channels],
                        layer: l,
                        kind,
                    });
                }
            }
            index += 1;
        }
        index += 1; // activation
        if dropout {
            index += 1;
        }
    }
    out
}

/// Tensors for `expected`, from whichever weight file the model has.
fn weights(files: &ModelFiles, expected: &[Expected]) -> Result<Vec<Vec<f32>>, ModelError> {
    if let Some(bytes) = files.get("model.pth") {
        let dict = pth::read_state_dict(bytes, "model.pth")?;
        return match dict.container {
            Container::Safetensors => by_name(dict.tensors, expected),
            Container::TorchZip => by_position(dict.tensors, expected),
        };
    }
    if let Some(bytes) = files.get("model.bin") {
        return from_tfjs_bin(bytes, expected);
    }
    Err(ModelError::MissingFile(
        "model.pth or model.bin (the weights of model.json)".into(),
    ))
}

fn check_shape(t: &NamedTensor, e: &Expected) -> Result<(), ModelError> {
    if t.shape != e.shape {
        return Err(bad(format!(
            "model.pth: tensor '{}' has shape {:?}, model.json layer {} needs {:?} for {}",
            t.name, t.shape, e.layer, e.shape, e.key
        )));
    }
    Ok(())
}

fn by_name(
    mut tensors: Vec<NamedTensor>,
    expected: &[Expected],
) -> Result<Vec<Vec<f32>>, ModelError> {
    expected
        .iter()
        .map(|e| {
            let t = tensors
                .iter_mut()
                .find(|t| t.name == e.key)
                .ok_or_else(|| {
                    bad(format!(
                        "model.pth: no tensor '{}' (shape {:?}, layer {})",
                        e.key, e.shape, e.layer
                    ))
                })?;
            check_shape(t, e)?;
            Ok(std::mem::take(&mut t.data))
        })
        .collect()
}

fn by_position(
    tensors: Vec<NamedTensor>,
    expected: &[Expected],
) -> Result<Vec<Vec<f32>>, ModelError> {
    if tensors.len() < expected.len() {
        return Err(bad(format!(
            "model.pth: {} tensors, model.json needs {} ({})",
            tensors.len(),
            expected.len(),
            expected
                .iter()
                .map(|e| format!("{} {:?}", e.key, e.shape))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    // Surplus trailing tensors are ignored, as brainchop-cli's convert_keys does.
    tensors
        .into_iter()
        .zip(expected)
        .map(|(t, e)| {
            check_shape(&t, e)?;
            Ok(t.data)
        })
        .collect()
}

fn from_tfjs_bin(bytes: &[u8], expected: &[Expected]) -> Result<Vec<Vec<f32>>, ModelError> {
    let need: usize = expected
        .iter()
        .map(|e| e.shape.iter().product::<usize>())
        .sum::<usize>()
        * 4;
    if bytes.len() != need {
        return Err(bad(format!(
            "model.bin: {} bytes, model.json needs {need} ({} float32 values){}",
            bytes.len(),
            need / 4,
            if bytes.len() < need {
                " (truncated?)"
            } else {
                ""
            }
        )));
    }
    let values = pth::f32s(bytes);
    let mut at = 0;
    Ok(expected
        .iter()
        .map(|e| {
            let n: usize = e.shape.iter().product();
            let raw = &values[at..at + n];
            at += n;
            if e.kind == Param::ConvWeight {
                kernel_to_oidhw(raw, e.shape[2], e.shape[1], e.shape[0])
            } else {
                raw.to_vec()
            }
        })
        .collect())
}

/// Builds a [`Network`] from a brainchop-cli `model.json` and its weights.
pub(crate) fn load(config: &Value, files: &ModelFiles) -> Result<Network, ModelError> {
    let specs = specs(config)?;
    let bnorm = flag(config, "bnorm");
    let affine = flag(config, "affine");
    let dropout = config
        .get("dropout_p")
        .and_then(Value::as_f64)
        .unwrap_or(0.0)
        > 0.0;
    let activation = if flag(config, "elu") {
        Activation::Elu
    } else if flag(config, "gelu") {
        Activation::Gelu
    } else {
        Activation::Relu
    };
    let expected = expected_tensors(&specs, bnorm, affine, dropout);
    let mut tensors = weights(files, &expected)?.into_iter();

    let mut layers: Vec<ConvLayer> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let last = i + 1 == specs.len();
            ConvLayer {
                in_channels: s.in_channels,
                out_channels: s.out_channels,
                kernel_size: s.kernel_size,
                dilation: s.dilation,
                padding: s.padding,
                weight: Vec::new(),
                bias: None,
                normalization: if bnorm && !last {
                    Normalization::Instance {
                        eps: GROUP_NORM_EPS,
                        weight: None,
                        bias: None,
                    }
                } else {
                    Normalization::None
                },
                activation: if last { Activation::None } else { activation },
            }
        })
        .collect();
    for e in &expected {
        let data = tensors.next().expect("one tensor per expected entry");
        let layer = &mut layers[e.layer];
        match (e.kind, &mut layer.normalization) {
            (Param::ConvWeight, _) => layer.weight = data,
            (Param::ConvBias, _) => layer.bias = Some(data),
            (Param::NormWeight, Normalization::Instance { weight, .. }) => *weight = Some(data),
            (Param::NormBias, Normalization::Instance { bias, .. }) => *bias = Some(data),
            _ => unreachable!("norm parameters only exist for normalized layers"),
        }
    }
    Ok(Network {
        layers,
        axis_order: AxisOrder::Ijk,
    })
}
