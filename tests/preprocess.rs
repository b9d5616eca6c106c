//! brainchop-compatible preprocessing against the tools brainchop runs.
//!
//! The expected results come from `tests/fixtures/preprocess/make_expected.sh`, which runs the
//! niimath binary the brainchop CLI installs (PyPI niimath 1.0.20261016, x86-64) and numpy:
//! `-conform ... -odt char` (conform), `-reslice_nn` (labels back on the input's grid),
//! `-bwlabel 26` plus brainchop's largest-cluster selection, and brainchop's `qnormalize`.
//! The reference conformed t1_crop of the shared data set is checked too.

mod common;

use std::path::{Path, PathBuf};

use insitu::preprocess::{
    conform, keep_largest_component, labels_to_native, niimath_affine, numpy_quantile,
    quantile_normalize, Conformed,
};
use insitu::volume::nifti::read_nifti;
use insitu::volume::{Geometry, LabelMap, Volume};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/preprocess")
}

fn read(path: &Path) -> Volume {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    read_nifti(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn fixture(name: &str) -> Volume {
    read(&fixture_dir().join(name))
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixture_dir().join("expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("expected.json parses")
}

fn matrix(v: &Value) -> [[f64; 4]; 4] {
    std::array::from_fn(|r| std::array::from_fn(|c| v[r][c].as_f64().expect("matrix element")))
}

fn as_u8(data: &[f32]) -> Vec<u8> {
    data.iter().map(|&v| v as u8).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn count_differences(a: &[u8], b: &[u8]) -> usize {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).filter(|(x, y)| x != y).count()
}

fn assert_affine_close(actual: &[[f64; 4]; 4], expected: &[[f64; 4]; 4], what: &str) {
    for r in 0..4 {
        for c in 0..4 {
            assert!(
                (actual[r][c] - expected[r][c]).abs() < 1e-4,
                "{what}: affine[{r}][{c}] is {} (niimath: {})\n{actual:?}",
                actual[r][c],
                expected[r][c]
            );
        }
    }
}

/// Compares a 256^3 uint8 volume against a summary of niimath's (sha256, histogram, sums of
/// each k-slice); on a mismatch the message says how far off it is.
fn assert_matches_summary(actual: &[u8], dims: [usize; 3], summary: &Value, what: &str) {
    let sha = sha256_hex(actual);
    if sha == summary["sha256"].as_str().unwrap() {
        return;
    }
    let mut hist = [0i64; 256];
    actual.iter().for_each(|&v| hist[v as usize] += 1);
    let hist_off: i64 = (0..256)
        .map(|v| (hist[v] - summary["histogram"][v].as_i64().unwrap()).abs())
        .sum::<i64>()
        / 2;
    let slice = dims[0] * dims[1];
    let slices_off: Vec<usize> = (0..dims[2])
        .filter(|&k| {
            let sum: i64 = actual[k * slice..(k + 1) * slice]
                .iter()
                .map(|&v| v as i64)
                .sum();
            sum != summary["slice_sums"][k].as_i64().unwrap()
        })
        .collect();
    panic!(
        "{what}: differs from niimath (at least {hist_off} voxels by histogram; k-slices with \
         other sums: {slices_off:?})"
    );
}

fn labels_from_conformed(conformed: &Conformed, step: u16) -> LabelMap {
    LabelMap {
        geometry: conformed.volume.geometry.clone(),
        labels: conformed
            .volume
            .data
            .iter()
            .map(|&v| v as u16 / step)
            .collect(),
    }
}

#[test]
fn conform_t1_crop_matches_niimath_reference() {
    let input = read(&common::data("t1_crop.nii.gz"));
    let reference = read(&common::data(
        "reference/t1_crop_conformed_by_niimath.nii.gz",
    ));
    let conformed = conform(&input).expect("conform");
    let geometry = &conformed.volume.geometry;
    assert_eq!(geometry.dims, [256; 3]);
    assert_eq!(geometry.spacing, [1.0; 3]);
    assert_eq!(geometry.orientation_code(), "LIA");
    assert_eq!((geometry.sform_code, geometry.qform_code), (2, 2));
    assert_affine_close(&geometry.affine, &reference.geometry.affine, "t1_crop");
    let differing = count_differences(&as_u8(&conformed.volume.data), &as_u8(&reference.data));
    assert_eq!(
        differing, 0,
        "t1_crop: {differing} voxels differ from niimath's conform"
    );
    // already 256^3 LIA 1 mm and centred: conformed voxel = native voxel
    let m = conformed.vox2vox_native_from_conformed;
    for (r, row) in m.iter().enumerate() {
        for (c, &v) in row.iter().enumerate() {
            assert!(
                (v - if r == c { 1.0 } else { 0.0 }).abs() < 1e-4,
                "vox2vox {m:?}"
            );
        }
    }
}

#[test]
fn conform_matches_niimath_on_synthetic_inputs() {
    // oblique, anisotropic, negative values, scl_slope, float64, qform-only, 2 mm, 0.5 mm, ...
    let expected = expected();
    let mut checked = 0;
    for (name, entry) in expected["conform"].as_object().unwrap() {
        if !name.starts_with("syn_") {
            continue;
        }
        let mut input = fixture(&format!("{name}.nii.gz"));
        if let Some(qform) = entry.get("niimath_input_affine") {
            // qform_code 2 > sform_code 1: niimath conforms with the qform, where the reader
            // (following nibabel) reports the sform
            let qform = matrix(qform);
            let (sform, sform_code) = (input.geometry.affine, input.geometry.sform_code);
            assert_eq!(niimath_affine(&sform, sform_code, &qform, 2), Some(qform));
            input.geometry.affine = qform;
        }
        let reference = fixture(&format!("{name}.conformed.nii.gz"));
        let conformed = conform(&input).unwrap_or_else(|e| panic!("{name}: {e}"));
        let geometry = &conformed.volume.geometry;
        assert_eq!(geometry.dims, [256; 3], "{name}");
        assert_eq!(geometry.orientation_code(), "LIA", "{name}");
        assert_affine_close(&geometry.affine, &matrix(&entry["affine"]), name);
        let codes = (
            entry["sform_code"].as_i64().unwrap(),
            entry["qform_code"].as_i64().unwrap(),
        );
        assert_eq!(
            (geometry.sform_code as i64, geometry.qform_code as i64),
            codes,
            "{name}"
        );
        let differing = count_differences(&as_u8(&conformed.volume.data), &as_u8(&reference.data));
        assert_eq!(
            differing, 0,
            "{name}: {differing} voxels differ from niimath's conform"
        );
        checked += 1;
    }
    assert_eq!(checked, 7);
}

#[test]
fn conform_matches_niimath_on_real_scans() {
    let expected = expected();
    for (name, path) in [
        (
            "mni",
            "nilearn_mni152_2009a/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
        ),
        ("flair", "niivue_flair_lesion/FLAIR.nii.gz"),
    ] {
        let entry = &expected["conform"][name];
        let conformed = conform(&read(&common::data(path))).expect("conform");
        assert_affine_close(
            &conformed.volume.geometry.affine,
            &matrix(&entry["affine"]),
            name,
        );
        assert_matches_summary(&as_u8(&conformed.volume.data), [256; 3], entry, name);
    }
}

#[test]
fn labels_to_native_matches_niimath_reslice_nn() {
    let expected = expected();
    let step = expected["label_step"].as_u64().unwrap() as u16;
    let mut checked = 0;
    for name in expected["conform"].as_object().unwrap().keys() {
        let native_file = fixture_dir().join(format!("{name}.native.nii.gz"));
        if !native_file.exists() {
            continue; // qform-only inputs: niimath's -reslice_nn uses the (absent) sform
        }
        let input = fixture(&format!("{name}.nii.gz"));
        let conformed = conform(&input).unwrap();
        let labels = labels_from_conformed(&conformed, step);
        let native = labels_to_native(
            &labels,
            &input.geometry,
            &conformed.vox2vox_native_from_conformed,
        );
        assert_eq!(native.geometry, input.geometry);
        let reference = read(&native_file);
        let ours: Vec<u8> = native.labels.iter().map(|&l| l as u8).collect();
        let differing = count_differences(&ours, &as_u8(&reference.data));
        assert_eq!(
            differing, 0,
            "{name}: {differing} native voxels differ from niimath -reslice_nn"
        );
        checked += 1;
    }
    assert_eq!(checked, 5);
    for (name, path) in [
        (
            "mni",
            "nilearn_mni152_2009a/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
        ),
        ("flair", "niivue_flair_lesion/FLAIR.nii.gz"),
    ] {
        let input = read(&common::data(path));
        let conformed = conform(&input).unwrap();
        let labels = labels_from_conformed(&conformed, step);
        let native = labels_to_native(
            &labels,
            &input.geometry,
            &conformed.vox2vox_native_from_conformed,
        );
        let ours: Vec<u8> = native.labels.iter().map(|&l| l as u8).collect();
        assert_matches_summary(&ours, input.geometry.dims, &expected["native"][name], name);
    }
}

#[test]
fn labels_to_native_is_identity_for_conformed_input() {
    let input = read(&common::data("t1_crop.nii.gz"));
    let conformed = conform(&input).unwrap();
    let labels = labels_from_conformed(&conformed, 1);
    let native = labels_to_native(
        &labels,
        &input.geometry,
        &conformed.vox2vox_native_from_conformed,
    );
    assert_eq!(native.labels, labels.labels);
}

/// Nearest-neighbour image of native labels on the conformed grid (through the vox2vox).
fn native_to_conformed(
    native: &LabelMap,
    conformed: &Geometry,
    vox2vox: &[[f64; 4]; 4],
) -> LabelMap {
    let n = conformed.dims;
    let d = native.geometry.dims;
    let mut labels = vec![0u16; n[0] * n[1] * n[2]];
    for k in 0..n[2] {
        for j in 0..n[1] {
            for i in 0..n[0] {
                let p = [i as f64, j as f64, k as f64];
                let q: [f64; 3] = std::array::from_fn(|r| {
                    (vox2vox[r][0] * p[0]
                        + vox2vox[r][1] * p[1]
                        + vox2vox[r][2] * p[2]
                        + vox2vox[r][3])
                        .round()
                });
                if (0..3).all(|a| q[a] >= 0.0 && (q[a] as usize) < d[a]) {
                    let src = q[0] as usize + d[0] * (q[1] as usize + d[1] * q[2] as usize);
                    labels[i + n[0] * (j + n[1] * k)] = native.labels[src];
                }
            }
        }
    }
    LabelMap {
        geometry: conformed.clone(),
        labels,
    }
}

#[test]
fn blocky_labels_survive_a_round_trip_through_an_oblique_anisotropic_grid() {
    // 1.2 x 0.9 x 2.5 mm voxels, rotated 20 degrees about x and 10 about z
    let (a, b) = (20f64.to_radians(), 10f64.to_radians());
    let rx = [
        [1.0, 0.0, 0.0],
        [0.0, a.cos(), -a.sin()],
        [0.0, a.sin(), a.cos()],
    ];
    let rz = [
        [b.cos(), -b.sin(), 0.0],
        [b.sin(), b.cos(), 0.0],
        [0.0, 0.0, 1.0],
    ];
    let zooms = [1.2, 0.9, 2.5];
    let dims = [90usize, 110, 40];
    let mut affine = [[0.0; 4]; 4];
    for r in 0..3 {
        for c in 0..3 {
            affine[r][c] = (0..3).map(|k| rx[r][k] * rz[k][c]).sum::<f64>() * zooms[c];
        }
        affine[r][3] = [-50.0, -40.0, -45.0][r];
    }
    affine[3][3] = 1.0;
    let geometry = Geometry {
        dims,
        spacing: zooms,
        affine,
        sform_code: 1,
        qform_code: 1,
    };
    // blocks of 16 x 16 x 6 voxels (19 x 14 x 15 mm), labels 1..=9
    let labels: Vec<u16> = (0..dims[0] * dims[1] * dims[2])
        .map(|i| {
            let (x, y, z) = (
                i % dims[0],
                (i / dims[0]) % dims[1],
                i / (dims[0] * dims[1]),
            );
            ((x / 16 + 3 * (y / 16) + 5 * (z / 6)) % 9 + 1) as u16
        })
        .collect();
    let volume = Volume {
        geometry: geometry.clone(),
        data: labels.iter().map(|&l| l as f32).collect(),
    };
    let conformed = conform(&volume).unwrap();
    let native = LabelMap {
        geometry: geometry.clone(),
        labels,
    };
    let on_conformed = native_to_conformed(
        &native,
        &conformed.volume.geometry,
        &conformed.vox2vox_native_from_conformed,
    );
    let back = labels_to_native(
        &on_conformed,
        &geometry,
        &conformed.vox2vox_native_from_conformed,
    );
    let same = back
        .labels
        .iter()
        .zip(&native.labels)
        .filter(|(a, b)| a == b)
        .count();
    let fraction = same as f64 / native.labels.len() as f64;
    assert!(
        fraction >= 0.99,
        "only {:.3} % of the labels survive the round trip",
        100.0 * fraction
    );
}

#[test]
fn keep_largest_component_matches_niimath_bwlabel() {
    // speckle: ~300 clusters (ids from 255 on pooled, as brainchop's uint8 ids do)
    let input = fixture("speckle.labels.nii.gz");
    let reference = fixture("speckle.largest.nii.gz");
    let mut labels: Vec<u16> = input.data.iter().map(|&v| v as u16).collect();
    keep_largest_component(&mut labels, input.geometry.dims);
    let ours: Vec<u8> = labels.iter().map(|&l| l as u8).collect();
    assert_eq!(
        count_differences(&ours, &as_u8(&reference.data)),
        0,
        "speckle"
    );

    // tissue-like classes on the reference conformed t1_crop (cavities filled, 74 clusters)
    let expected = expected();
    let entry = &expected["largest"]["t1_thresholds"];
    let t1 = read(&common::data(
        "reference/t1_crop_conformed_by_niimath.nii.gz",
    ));
    let thresholds: Vec<f32> = entry["thresholds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let mut labels: Vec<u16> = t1
        .data
        .iter()
        .map(|&v| thresholds.iter().filter(|&&t| v >= t).count() as u16)
        .collect();
    keep_largest_component(&mut labels, t1.geometry.dims);
    let kept = labels.iter().filter(|&&l| l != 0).count();
    assert_eq!(kept as u64, entry["kept"].as_u64().unwrap());
    let bytes: Vec<u8> = labels.iter().map(|&l| l as u8).collect();
    assert_eq!(sha256_hex(&bytes), entry["sha256"].as_str().unwrap());
}

#[test]
fn keep_largest_component_synthetic_cases() {
    let dims = [12, 12, 12];
    let at = |x: usize, y: usize, z: usize| x + 12 * (y + 12 * z);
    // two blobs: the larger one (later in scan order) wins
    let mut labels = vec![0u16; 12 * 12 * 12];
    labels[at(1, 1, 1)] = 4;
    labels[at(2, 1, 1)] = 4;
    for z in 5..8 {
        for y in 5..8 {
            for x in 5..8 {
                labels[at(x, y, z)] = 1 + (x % 2) as u16;
            }
        }
    }
    let mut kept = labels.clone();
    keep_largest_component(&mut kept, dims);
    assert_eq!(kept.iter().filter(|&&l| l != 0).count(), 27);
    assert_eq!(kept[at(1, 1, 1)], 0);
    assert_eq!(kept[at(5, 5, 5)], labels[at(5, 5, 5)]);
    // a corner-to-corner (26-connected) chain is one cluster
    let mut chain = vec![0u16; 12 * 12 * 12];
    for t in 0..6 {
        chain[at(t, t, t)] = 2;
    }
    chain[at(10, 0, 0)] = 3;
    chain[at(11, 0, 0)] = 3;
    keep_largest_component(&mut chain, dims);
    assert_eq!(chain.iter().filter(|&&l| l != 0).count(), 6);
    // nothing to keep
    let mut empty = vec![0u16; 12 * 12 * 12];
    keep_largest_component(&mut empty, dims);
    assert!(empty.iter().all(|&l| l == 0));
}

#[test]
fn quantile_normalize_matches_numpy() {
    let expected = expected();
    let t1 = read(&common::data(
        "reference/t1_crop_conformed_by_niimath.nii.gz",
    ));
    let mut cases = vec![("t1_conformed", t1.data)];
    for name in ["syn_oblique_f32", "syn_negative_f32", "syn_half_u16"] {
        cases.push((name, fixture(&format!("{name}.nii.gz")).data));
    }
    for (name, values) in cases {
        let entry = &expected["quantile"][name];
        let qlow = numpy_quantile(&values, 0.02);
        let qhigh = numpy_quantile(&values, 0.98);
        assert_eq!(
            qlow.to_bits() as u64,
            entry["qlow_bits"].as_u64().unwrap(),
            "{name}: qlow {qlow}"
        );
        assert_eq!(
            qhigh.to_bits() as u64,
            entry["qhigh_bits"].as_u64().unwrap(),
            "{name}: qhigh {qhigh}"
        );
        let normalized = quantile_normalize(&values, 0.02, 0.98, 1e-3);
        let bytes: Vec<u8> = normalized.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(
            sha256_hex(&bytes),
            entry["sha256"].as_str().unwrap(),
            "{name}: normalized values"
        );
    }
}

#[test]
fn conform_rejects_unusable_input() {
    let geometry = Geometry {
        dims: [4, 4, 4],
        spacing: [1.0; 3],
        affine: [
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ],
        sform_code: 1,
        qform_code: 0,
    };
    let singular = Volume {
        geometry: geometry.clone(),
        data: vec![1.0; 64],
    };
    let error = conform(&singular).unwrap_err();
    assert!(error.to_string().contains("sform and qform"), "{error}");
    let mut empty_geometry = geometry;
    empty_geometry.dims = [0, 4, 4];
    let empty = Volume {
        geometry: empty_geometry,
        data: vec![],
    };
    assert!(conform(&empty).unwrap_err().to_string().contains("empty"));
    // NaN voxels behave as the minimum intensity
    let mut data: Vec<f32> = (0..64).map(|i| i as f32).collect();
    data[20] = f32::NAN;
    let mut ok = singular.clone();
    ok.geometry.affine[2][2] = 1.0;
    ok.data = data;
    let conformed = conform(&ok).unwrap();
    assert!(conformed
        .volume
        .data
        .iter()
        .all(|v| v.is_finite() && (0.0..=255.0).contains(v)));
}
