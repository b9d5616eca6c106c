//! TF.js "layers-model" loader: `model.json` (Keras topology + `weightsManifest`) and the
//! binary weight shards it names (float32, little-endian, concatenated in manifest order).
//!
//! Supported Keras classes: `InputLayer`, `Conv3D` (channels_last, cubic odd kernel, stride 1,
//! "same" padding, groups 1, any `activation` of relu/elu/gelu/linear), `BatchNormalization`
//! (folded into the preceding convolution), `Activation`, and `Dropout`/`SpatialDropout3D`
//! (identity at inference). brainchop's own TF.js files (model11_gw_ae, model20chan3cls,
//! model30chan18cls) contain only `InputLayer`, `Conv3D` and `Activation`. A `Conv3D` whose name
//! ends in `_gn` gets a per-channel whole-volume normalization after it, as the brainchop web
//! app does (`LayerNormInPlace`, eps 1e-5, in `inference-logic.js`; used by its mindgrab export).
//!
//! Axis order: the brainchop web app (github neuroneural/brainchop, `tensor-utils.js`
//! `getAllSlicesDataAsTF3D`) stacks the NIfTI slices into a `[k][j][i]` tensor (slice, row,
//! column in file order) and, for every model in `brainchop-parameters.js`
//! (`enableTranspose: true`), calls `tensor.transpose()`, which reverses all axes, before the
//! first layer (`inference-logic.js` `runFullVolumeInference`): the model sees `(i, j, k)`.
//! brainchop-cli agrees: `convert_tfjs_to_pth.py` turns these kernels into PyTorch layout with
//! a plain `transpose(4, 3, 0, 1, 2)` (no spatial flip or swap), and the CLI feeds
//! `data.permute(2, 1, 0)` of the `(k, j, i)` array, i.e. `(i, j, k)`. The `subcortical/`
//! safetensors weights equal `model30chan18cls/model.bin` under exactly that transpose.
//! Hence [`AxisOrder::Ijk`].

use super::{Activation, AxisOrder, ConvLayer, ModelError, ModelFiles, Network, Normalization};
use serde_json::Value;

/// TF.js's conv kernel layout `[kd, kh, kw, in, out]` → `[out, in, kd, kh, kw]`.
pub(crate) fn kernel_to_oidhw(data: &[f32], k: usize, cin: usize, cout: usize) -> Vec<f32> {
    let k3 = k * k * k;
    debug_assert_eq!(data.len(), k3 * cin * cout);
    let mut out = vec![0.0; data.len()];
    for s in 0..k3 {
        for i in 0..cin {
            for o in 0..cout {
                out[(o * cin + i) * k3 + s] = data[(s * cin + i) * cout + o];
            }
        }
    }
    out
}

/// A weight from the manifest.
struct Weight {
    name: String,
    shape: Vec<usize>,
    data: Vec<f32>,
    used: bool,
}

fn bad(msg: impl Into<String>) -> ModelError {
    ModelError::BadFormat(msg.into())
}

fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Reads every weight group of the manifest from `files`.
fn read_weights(model: &Value, files: &ModelFiles) -> Result<Vec<Weight>, ModelError> {
    let groups = model
        .get("weightsManifest")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("model.json: TF.js model has no weightsManifest"))?;
    let single_file = groups.len() == 1
        && groups[0]
            .get("paths")
            .and_then(Value::as_array)
            .is_some_and(|p| p.len() == 1);
    let mut weights = Vec::new();
    for group in groups {
        let paths: Vec<&str> = group
            .get("paths")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("model.json: weightsManifest group without paths"))?
            .iter()
            .map(|p| {
                p.as_str()
                    .ok_or_else(|| bad("model.json: weightsManifest path is not a string"))
            })
            .collect::<Result<_, _>>()?;
        let mut data = Vec::new();
        let mut shown = Vec::new();
        for path in &paths {
            // The manifest's own name; else its file name; else, for a one-file model,
            // model.bin (brainchop-models renames model11_gw_ae's group1-shard1of1.bin so).
            let found = [*path, base_name(path)]
                .into_iter()
                .chain(single_file.then_some("model.bin"))
                .find_map(|name| files.get(name).map(|bytes| (name, bytes)));
            let (name, bytes) = found.ok_or_else(|| {
                ModelError::MissingFile(if single_file {
                    format!("{path} (or model.bin), named by model.json's weightsManifest")
                } else {
                    format!("{path}, named by model.json's weightsManifest")
                })
            })?;
            data.extend_from_slice(bytes);
            shown.push(name);
        }
        let shown = shown.join(" + ");
        let mut offset = 0usize;
        for w in group
            .get("weights")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = w
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("model.json: weightsManifest entry without a name"))?;
            let dtype = w.get("dtype").and_then(Value::as_str).unwrap_or("float32");
            if dtype != "float32" {
                return Err(bad(format!(
                    "model.json: weight '{name}' has dtype {dtype}; only float32 is supported"
                )));
            }
            if w.get("quantization").is_some() {
                return Err(bad(format!("model.json: weight '{name}' is quantized; quantized TF.js weights are not supported")));
            }
            let shape: Vec<usize> = w
                .get("shape")
                .and_then(Value::as_array)
                .and_then(|s| s.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
                .ok_or_else(|| bad(format!("model.json: weight '{name}' has no valid shape")))?;
            let bytes = shape.iter().product::<usize>() * 4;
            let end = offset + bytes;
            if end > data.len() {
                return Err(bad(format!(
                    "{shown}: truncated: weight '{name}' {shape:?} needs bytes {offset}..{end}, the file has {}",
                    data.len()
                )));
            }
            weights.push(Weight {
                name: name.to_string(),
                shape,
                data: super::pth::f32s(&data[offset..end]),
                used: false,
            });
            offset = end;
        }
        if offset != data.len() {
            return Err(bad(format!(
                "{shown}: {} bytes, but model.json's weightsManifest describes {offset}",
                data.len()
            )));
        }
    }
    Ok(weights)
}

/// The weight `<layer>/<param>` (names may carry prefixes: `.../<layer>/<param>`).
fn take_weight(
    weights: &mut [Weight],
    layer: &str,
    param: &str,
    shape: &[usize],
) -> Result<Vec<f32>, ModelError> {
    let exact = format!("{layer}/{param}");
    let suffix = format!("/{exact}");
    let mut matches = weights
        .iter_mut()
        .filter(|w| w.name == exact || w.name.ends_with(&suffix));
    let w = matches.next().ok_or_else(|| {
        bad(format!(
            "model.json: no weight '{exact}' in the weightsManifest (layer '{layer}')"
        ))
    })?;
    if w.shape != shape {
        return Err(bad(format!(
            "model.json: weight '{}' has shape {:?}, layer '{layer}' needs {shape:?}",
            w.name, w.shape
        )));
    }
    w.used = true;
    Ok(std::mem::take(&mut w.data))
}

fn activation(name: &str, layer: &str) -> Result<Option<Activation>, ModelError> {
    Ok(match name {
        "linear" => None,
        "relu" => Some(Activation::Relu),
        "elu" => Some(Activation::Elu),
        // TF.js's "gelu" is the exact (erf) form and "gelu_new" the tanh form; the engine's
        // Gelu is the tanh form (what brainchop-cli runs). The two differ by < 1e-3.
        "gelu" | "gelu_new" => Some(Activation::Gelu),
        other => {
            return Err(ModelError::UnsupportedLayer(format!(
                "activation '{other}' (layer '{layer}')"
            )));
        }
    })
}

/// Names of the layers feeding `layer` (Keras 2 and Keras 3 `inbound_nodes`), if readable.
fn inbound_names(layer: &Value) -> Option<Vec<String>> {
    let nodes = layer.get("inbound_nodes")?.as_array()?;
    let mut names = Vec::new();
    for node in nodes {
        if let Some(inputs) = node.as_array() {
            // Keras 2: [[name, node_index, tensor_index, kwargs], ...]
            for input in inputs {
                names.push(input.as_array()?.first()?.as_str()?.to_string());
            }
        } else {
            // Keras 3: {"args": [{"config": {"keras_history": [name, i, j]}}], ...}
            for arg in node.get("args")?.as_array()? {
                let history = arg.get("config")?.get("keras_history")?.as_array()?;
                names.push(history.first()?.as_str()?.to_string());
            }
        }
    }
    Some(names)
}

fn usize_list(v: Option<&Value>) -> Option<Vec<usize>> {
    match v? {
        Value::Array(a) => a.iter().map(|d| d.as_u64().map(|d| d as usize)).collect(),
        Value::Number(n) => n.as_u64().map(|d| vec![d as usize; 3]),
        _ => None,
    }
}

/// Builds a [`Network`] from a TF.js layers-model.
pub(crate) fn load(model: &Value, files: &ModelFiles) -> Result<Network, ModelError> {
    if let Some(format) = model.get("format").and_then(Value::as_str) {
        if format != "layers-model" {
            return Err(ModelError::UnsupportedLayer(format!(
                "TF.js format '{format}' (only layers-model is supported)"
            )));
        }
    }
    let topology = model
        .get("modelTopology")
        .ok_or_else(|| bad("model.json: no modelTopology"))?;
    let model_config = topology.get("model_config").unwrap_or(topology);
    let config = model_config
        .get("config")
        .ok_or_else(|| bad("model.json: modelTopology has no config"))?;
    let layer_list = config
        .get("layers")
        .or(Some(config).filter(|c| c.is_array()))
        .and_then(Value::as_array)
        .ok_or_else(|| bad("model.json: modelTopology has no layer list"))?;

    let mut weights = read_weights(model, files)?;
    let mut layers: Vec<ConvLayer> = Vec::new();
    let mut channels: Option<usize> = None;
    let mut previous: Option<String> = None;
    // Set after a final softmax/sigmoid: harmless before argmax, but nothing may follow.
    let mut finished_by: Option<String> = None;

    for (index, layer) in layer_list.iter().enumerate() {
        let class = layer
            .get("class_name")
            .and_then(Value::as_str)
            .unwrap_or("?");
        let cfg = layer.get("config").unwrap_or(&Value::Null);
        let name = cfg
            .get("name")
            .or_else(|| layer.get("name"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("#{index}"));
        let unsupported = |what: String| {
            ModelError::UnsupportedLayer(format!("{what} (layer '{name}', class {class})"))
        };

        if let Some(after) = &finished_by {
            return Err(unsupported(format!(
                "a layer after the final '{after}' activation"
            )));
        }
        // Only a plain chain of layers is supported.
        if let (Some(prev), Some(inputs)) = (&previous, inbound_names(layer)) {
            if inputs.len() != 1 || &inputs[0] != prev {
                return Err(unsupported(format!(
                    "non-sequential topology: inputs {inputs:?}, expected ['{prev}']"
                )));
            }
        }
        if channels.is_none() && class != "InputLayer" {
            // Sequential models carry the input shape on their first layer.
            if let Some(shape) = cfg.get("batch_input_shape").and_then(Value::as_array) {
                channels = shape.last().and_then(Value::as_u64).map(|c| c as usize);
            }
        }

        match class {
            "InputLayer" => {
                let shape = cfg
                    .get("batch_input_shape")
                    .or_else(|| cfg.get("batch_shape"))
                    .and_then(Value::as_array)
                    .ok_or_else(|| {
                        bad(format!(
                            "model.json: InputLayer '{name}' has no batch_input_shape"
                        ))
                    })?;
                if shape.len() != 5 {
                    return Err(unsupported(format!(
                        "input of rank {} (a 3-D volume needs 5: batch, d, h, w, channels)",
                        shape.len()
                    )));
                }
                channels = Some(shape[4].as_u64().ok_or_else(|| {
                    bad(format!(
                        "model.json: InputLayer '{name}' has no channel count"
                    ))
                })? as usize);
            }
            "Conv3D" => {
                let cin = *channels.get_or_insert(1);
                let filters = cfg
                    .get("filters")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| bad(format!("model.json: Conv3D '{name}' has no filters")))?
                    as usize;
                let kernel = usize_list(cfg.get("kernel_size")).ok_or_else(|| {
                    bad(format!("model.json: Conv3D '{name}' has no kernel_size"))
                })?;
                let k = kernel[0];
                if kernel.len() != 3 || kernel.iter().any(|&d| d != k) || k % 2 == 0 {
                    return Err(unsupported(format!(
                        "kernel size {kernel:?} (only odd cubic kernels are supported)"
                    )));
                }
                let strides = usize_list(cfg.get("strides")).unwrap_or(vec![1; 3]);
                if strides.iter().any(|&s| s != 1) {
                    return Err(unsupported(format!(
                        "strides {strides:?} (only 1 is supported)"
                    )));
                }
                let dilation = usize_list(cfg.get("dilation_rate")).unwrap_or(vec![1; 3]);
                if dilation.len() != 3
                    || dilation.iter().any(|&d| d != dilation[0])
                    || dilation[0] == 0
                {
                    return Err(unsupported(format!(
                        "dilation_rate {dilation:?} (only equal rates are supported)"
                    )));
                }
                let padding = cfg
                    .get("padding")
                    .and_then(Value::as_str)
                    .unwrap_or("valid");
                if padding != "same" && k != 1 {
                    return Err(unsupported(format!(
                        "padding '{padding}' (only 'same' is supported)"
                    )));
                }
                let format = cfg
                    .get("data_format")
                    .and_then(Value::as_str)
                    .unwrap_or("channels_last");
                if format != "channels_last" {
                    return Err(unsupported(format!(
                        "data_format '{format}' (only channels_last is supported)"
                    )));
                }
                let groups = cfg.get("groups").and_then(Value::as_u64).unwrap_or(1);
                if groups != 1 {
                    return Err(unsupported(format!(
                        "groups {groups} (only 1 is supported)"
                    )));
                }
                let act_name = cfg
                    .get("activation")
                    .and_then(Value::as_str)
                    .unwrap_or("linear");
                let act = activation(act_name, &name)?;
                let group_norm = name.ends_with("_gn");
                if group_norm && act.is_some() {
                    // The web app would apply the activation *before* its normalization.
                    return Err(unsupported(format!(
                        "activation '{act_name}' on a '_gn' convolution"
                    )));
                }
                let weight = take_weight(&mut weights, &name, "kernel", &[k, k, k, cin, filters])?;
                let use_bias = cfg.get("use_bias").and_then(Value::as_bool).unwrap_or(true);
                let bias = if use_bias {
                    Some(take_weight(&mut weights, &name, "bias", &[filters])?)
                } else {
                    None
                };
                layers.push(ConvLayer {
                    in_channels: cin,
                    out_channels: filters,
                    kernel_size: k,
                    dilation: dilation[0],
                    padding: dilation[0] * (k - 1) / 2,
                    weight: kernel_to_oidhw(&weight, k, cin, filters),
                    bias,
                    normalization: if group_norm {
                        Normalization::Instance {
                            eps: 1e-5,
                            weight: None,
                            bias: None,
                        }
                    } else {
                        Normalization::None
                    },
                    activation: act.unwrap_or(Activation::None),
                });
                channels = Some(filters);
            }
            "BatchNormalization" => {
                let conv = match layers.last_mut() {
                    Some(c)
                        if c.activation == Activation::None
                            && c.normalization == Normalization::None =>
                    {
                        c
                    }
                    _ => {
                        return Err(unsupported(
                            "batch normalization that does not directly follow a convolution"
                                .to_string(),
                        ))
                    }
                };
                let axis = cfg.get("axis").map(|a| match a {
                    Value::Array(v) if v.len() == 1 => v[0].as_i64(),
                    v => v.as_i64(),
                });
                if !matches!(axis, None | Some(Some(-1)) | Some(Some(4))) {
                    return Err(unsupported(format!(
                        "normalization axis {:?} (only the channel axis is supported)",
                        cfg.get("axis")
                    )));
                }
                let c = conv.out_channels;
                let eps = cfg.get("epsilon").and_then(Value::as_f64).unwrap_or(1e-3);
                let scale = cfg.get("scale").and_then(Value::as_bool).unwrap_or(true);
                let center = cfg.get("center").and_then(Value::as_bool).unwrap_or(true);
                let gamma = if scale {
                    Some(take_weight(&mut weights, &name, "gamma", &[c])?)
                } else {
                    None
                };
                let beta = if center {
                    Some(take_weight(&mut weights, &name, "beta", &[c])?)
                } else {
                    None
                };
                let mean = take_weight(&mut weights, &name, "moving_mean", &[c])?;
                let var = take_weight(&mut weights, &name, "moving_variance", &[c])?;
                fold_batch_norm(conv, gamma.as_deref(), beta.as_deref(), &mean, &var, eps);
            }
            "Activation" => {
                let act_name = cfg
                    .get("activation")
                    .and_then(Value::as_str)
                    .unwrap_or("linear");
                if matches!(act_name, "softmax" | "sigmoid") {
                    // Monotonic per voxel: the argmax that follows is unchanged.
                    if layers.is_empty() {
                        return Err(unsupported(format!(
                            "activation '{act_name}' before any convolution"
                        )));
                    }
                    finished_by = Some(act_name.to_string());
                } else if let Some(act) = activation(act_name, &name)? {
                    match layers.last_mut() {
                        Some(c) if c.activation == Activation::None => c.activation = act,
                        Some(_) => return Err(unsupported("two activations in a row".to_string())),
                        None => {
                            return Err(unsupported(
                                "an activation before any convolution".to_string(),
                            ))
                        }
                    }
                }
            }
            "Dropout" | "SpatialDropout3D" => {}
            other => {
                return Err(ModelError::UnsupportedLayer(format!(
                    "Keras class {other} (layer '{name}'); supported: InputLayer, Conv3D, BatchNormalization, Activation, Dropout"
                )));
            }
        }
        previous = Some(name);
    }

    if layers.is_empty() {
        return Err(bad("model.json: the TF.js model has no Conv3D layer"));
    }
    let unused: Vec<&str> = weights
        .iter()
        .filter(|w| !w.used)
        .map(|w| w.name.as_str())
        .collect();
    if !unused.is_empty() {
        return Err(bad(format!(
            "model.json: weightsManifest has weights no layer uses: {unused:?}"
        )));
    }
    Ok(Network {
        layers,
        axis_order: AxisOrder::Ijk,
    })
}

/// Folds inference batch norm into the convolution before it:
/// `w' = w * g / sqrt(var + eps)`, `b' = (b - mean) * g / sqrt(var + eps) + beta`.
fn fold_batch_norm(
    conv: &mut ConvLayer,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    mean: &[f32],
    var: &[f32],
    eps: f64,
) {
    let c = conv.out_channels;
    let per_out = conv.weight.len() / c;
    let mut bias = conv.bias.take().unwrap_or_else(|| vec![0.0; c]);
    for o in 0..c {
        let g = gamma.map_or(1.0, |g| g[o] as f64);
        let scale = g / (var[o] as f64 + eps).sqrt();
        for w in &mut conv.weight[o * per_out..(o + 1) * per_out] {
            *w = (*w as f64 * scale) as f32;
        }
        let b = (bias[o] as f64 - mean[o] as f64) * scale + beta.map_or(0.0, |b| b[o] as f64);
        bias[o] = b as f32;
    }
    conv.bias = Some(bias);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_transpose() {
        // k = 1, cin = 2, cout = 3: [1,1,1,2,3] -> [3,2,1,1,1]
        let data = [0.0, 1.0, 2.0, 10.0, 11.0, 12.0];
        assert_eq!(
            kernel_to_oidhw(&data, 1, 2, 3),
            vec![0.0, 10.0, 1.0, 11.0, 2.0, 12.0]
        );
    }
}
