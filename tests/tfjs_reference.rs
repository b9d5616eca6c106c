//! The TF.js-format models against TF.js itself: labels made by TensorFlow.js (npm
//! @tensorflow/tfjs 4.22.0, wasm backend, `tf.loadLayersModel` on the mirror's model.json/bin,
//! argmax) on exactly the normalized 256³ tensor insitu feeds its network, compared with insitu's
//! own argmax over the whole conformed grid.
//!
//! TF.js at 256³ takes many minutes on a CPU (see `seconds` in the manifest), so its labels are
//! committed fixtures: `tests/fixtures/tfjs/references.json` lists each file with its sha256, the
//! sha256 of the input tensor TF.js was given and the command that made it
//! (`scripts/tfjs-reference.mjs`). Each test checks, in order: the fixture's bytes (sha256), that
//! insitu's conform + normalization of t1_crop.nii.gz gives that very tensor (sha256 of its f32
//! bytes), then the labels over all 256³ voxels.
//!
//! The comparison is of the raw argmax (before brainchop's largest-component clean-up, which is
//! tested against the brainchop CLI in tests/pipeline.rs).

mod common;

use insitu::engine::{OutputBox, PreparedNetwork};
use insitu::models::Registry;
use insitu::pipeline;
use insitu::volume::{nifti, LabelMap};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::time::Instant;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tfjs")
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn manifest_entry(model_id: &str) -> Value {
    let text = std::fs::read_to_string(fixture_dir().join("references.json"))
        .expect("tests/fixtures/tfjs/references.json");
    let manifest: Value = serde_json::from_str(&text).expect("references.json parses");
    manifest["references"]
        .as_array()
        .expect("references.json: references is a list")
        .iter()
        .find(|r| r["model"] == model_id)
        .unwrap_or_else(|| panic!("references.json has no entry for {model_id}"))
        .clone()
}

/// insitu's labels (raw argmax on the whole conformed grid) against TF.js's fixture.
fn assert_equals_tfjs(model_id: &str, minimum: f64) {
    let entry = manifest_entry(model_id);
    let file = fixture_dir().join(entry["file"].as_str().unwrap());
    let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert_eq!(
        sha256_hex(&bytes),
        entry["sha256"].as_str().unwrap(),
        "{}: the fixture's bytes changed",
        file.display()
    );
    let reference =
        LabelMap::from_volume(&nifti::read_nifti(&bytes).expect("fixture reads")).unwrap();

    // The very tensor TF.js was given.
    let registry = Registry::builtin();
    let model = registry.get(model_id).expect("model in registry");
    let volume =
        nifti::read_nifti(&std::fs::read(common::data("t1_crop.nii.gz")).unwrap()).unwrap();
    let conformed = insitu::preprocess::conform(&volume).unwrap();
    let dims = conformed.volume.geometry.dims;
    assert_eq!(reference.geometry.dims, dims);
    let input = pipeline::normalize(&conformed.volume.data, model.input.normalization);
    let input_bytes: Vec<u8> = input.iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(
        sha256_hex(&input_bytes),
        entry["input_sha256"].as_str().unwrap(),
        "{model_id}: insitu's normalized input is not the tensor TF.js was given"
    );

    let network = common::network(model_id).expect("model loads");
    let prepared = PreparedNetwork::cpu(&network);
    let clock = Instant::now();
    let (labels, _) = pollster::block_on(prepared.segment(
        &input,
        dims,
        OutputBox::whole(dims),
        None,
        &mut |_| {},
    ))
    .expect("segmentation runs");
    let seconds = clock.elapsed().as_secs_f64();

    let n = labels.len();
    assert_eq!(n, reference.labels.len());
    let classes = 1 + labels
        .iter()
        .chain(&reference.labels)
        .copied()
        .max()
        .unwrap_or(0) as usize;
    // confusion[ours][tfjs]
    let mut confusion = vec![vec![0u64; classes]; classes];
    for (&a, &b) in labels.iter().zip(&reference.labels) {
        confusion[a as usize][b as usize] += 1;
    }
    let same: u64 = (0..classes).map(|l| confusion[l][l]).sum();
    let agree = same as f64 / n as f64;
    let dice: Vec<String> = (0..classes)
        .map(|l| {
            let ours: u64 = confusion[l].iter().sum();
            let theirs: u64 = (0..classes).map(|o| confusion[o][l]).sum();
            let d = 2.0 * confusion[l][l] as f64 / (ours + theirs).max(1) as f64;
            format!("{l}: {d:.5}")
        })
        .collect();
    eprintln!(
        "{model_id}: {:.4} % of {n} voxels equal TF.js {} ({}), {} differ; Dice per label {}; insitu {seconds:.1} s",
        100.0 * agree,
        entry["tfjs"].as_str().unwrap_or("?"),
        entry["backend"].as_str().unwrap_or("?"),
        n as u64 - same,
        dice.join(", ")
    );
    assert!(
        agree >= minimum,
        "{model_id}: only {:.4} % of voxels equal TF.js's labels (confusion ours x tfjs: {confusion:?})",
        100.0 * agree
    );
}

#[test]
fn tissue_gw_tfjs_equals_tfjs() {
    assert_equals_tfjs("tissue_gw_tfjs", 0.999);
}

/// Writes the inputs of the browser benchmark (`scripts/bench-browser.mjs`), which runs insitu's
/// page and TF.js side by side: for each size S, a S³ crop of t1_crop.nii.gz centred on the
/// grid's centre (`t1_S.nii.gz`, what the page is given); the normalized tensor insitu's network
/// reads for it: the crop grown by the receptive radius on the conformed grid
/// (`t1_S_MODEL_grown.f32`, float32 little-endian, i fastest: what TF.js is given) and the crop
/// alone (`t1_S_MODEL_crop.f32`); insitu's raw argmax on the crop (`t1_S_MODEL_insitu_raw.u8`);
/// and `t1_S_MODEL.json` describing them. The crop lies on the 1 mm LIA grid, so conformed and
/// native voxels differ by a whole-voxel shift (checked).
///
/// `INSITU_BENCH_DIR=DIR INSITU_BENCH_SIZES=64,128 INSITU_BENCH_MODEL=tissue_gw_tfjs
///  cargo test --features gpu --test tfjs_reference -- --ignored --exact write_bench_inputs`
#[test]
#[ignore]
fn write_bench_inputs() {
    let dir = PathBuf::from(std::env::var("INSITU_BENCH_DIR").expect("set INSITU_BENCH_DIR"));
    let sizes: Vec<usize> = std::env::var("INSITU_BENCH_SIZES")
        .unwrap_or_else(|_| "64".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("INSITU_BENCH_SIZES: comma-separated sizes")
        })
        .collect();
    let model_id = std::env::var("INSITU_BENCH_MODEL").unwrap_or_else(|_| "tissue_gw_tfjs".into());
    let registry = Registry::builtin();
    let model = registry.get(&model_id).expect("model in registry");
    std::fs::create_dir_all(&dir).unwrap();
    let whole =
        insitu::volume::read(&std::fs::read(common::data("t1_crop.nii.gz")).unwrap()).unwrap();
    for size in sizes {
        let dims = whole.geometry.dims;
        assert!(
            (1..=dims[0].min(dims[1]).min(dims[2])).contains(&size),
            "size {size}"
        );
        let start = dims.map(|d| (d - size) / 2);
        let crop = insitu::volume::crop(&whole, start, [size; 3]).unwrap();
        let path = dir.join(format!("t1_{size}.nii.gz"));
        std::fs::write(&path, nifti::write_volume(&crop, true)).unwrap();
        // What the page will read from that file.
        let crop = insitu::volume::read(&std::fs::read(&path).unwrap()).unwrap();
        let conformed = insitu::preprocess::conform(&crop).unwrap();
        let normalized = pipeline::normalize(&conformed.volume.data, model.input.normalization);
        let m = conformed.vox2vox_native_from_conformed;
        let mut shift = [0i64; 3];
        for r in 0..3 {
            for c in 0..3 {
                let want = if r == c { 1.0 } else { 0.0 };
                assert!(
                    (m[r][c] - want).abs() < 1e-9,
                    "t1_{size}: conformed -> native is not a shift: {m:?}"
                );
            }
            assert!(
                (m[r][3] - m[r][3].round()).abs() < 1e-9,
                "t1_{size}: not a whole-voxel shift: {m:?}"
            );
            shift[r] = m[r][3].round() as i64;
        }
        // native (i, j, k) = conformed (i, j, k) + shift
        let cd = conformed.volume.geometry.dims;
        let mut values = Vec::with_capacity(size * size * size);
        let mut zeros = 0usize;
        for k in 0..size {
            for j in 0..size {
                for i in 0..size {
                    let c = [
                        i as i64 - shift[0],
                        j as i64 - shift[1],
                        k as i64 - shift[2],
                    ];
                    assert!((0..3).all(|a| (0..cd[a] as i64).contains(&c[a])));
                    let at = (c[2] as usize * cd[1] + c[1] as usize) * cd[0] + c[0] as usize;
                    zeros += (conformed.volume.data[at] == 0.0) as usize;
                    values.push(normalized[at]);
                }
            }
        }
        // Outside the crop the conformed grid is 0 and normalizes to what TF.js pads with.
        let outside: Vec<f32> = conformed
            .volume
            .data
            .iter()
            .zip(&normalized)
            .filter(|(&v, _)| v == 0.0)
            .map(|(_, &n)| n)
            .take(1)
            .collect();
        // insitu's raw argmax there (before the clean-up), on the crop's grid: what TF.js's
        // argmax must equal.
        let network = common::network(&model_id).expect("model loads");
        let native_box = OutputBox {
            start: [0, 1, 2].map(|a| (-shift[a]) as usize),
            size: [size; 3],
        };
        let (raw, _) = pollster::block_on(PreparedNetwork::cpu(&network).segment(
            &normalized,
            cd,
            native_box,
            None,
            &mut |_| {},
        ))
        .expect("segmentation runs");
        let raw: Vec<u8> = raw.iter().map(|&l| l as u8).collect();
        // What insitu's network reads for that box: the box grown by the receptive radius
        // (clipped to the conformed grid), zeros of the conformed grid around the crop included.
        // Zero padding applies at every layer, so TF.js must get this margin too to compute what
        // insitu computes (on the bare crop it pads each layer's input at the crop's faces).
        let r = network.receptive_radius();
        let lo = native_box.start.map(|s| s.saturating_sub(r));
        let hi = [0, 1, 2].map(|a| (native_box.start[a] + size + r).min(cd[a]));
        let input_dims = [0, 1, 2].map(|a| hi[a] - lo[a]);
        let mut grown = Vec::with_capacity(input_dims.iter().product());
        for k in lo[2]..hi[2] {
            for j in lo[1]..hi[1] {
                let row = (k * cd[1] + j) * cd[0];
                grown.extend_from_slice(&normalized[row + lo[0]..row + hi[0]]);
            }
        }
        let grown_bytes: Vec<u8> = grown.iter().flat_map(|v| v.to_le_bytes()).collect();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let stem = format!("t1_{size}_{model_id}");
        std::fs::write(dir.join(format!("{stem}_insitu_raw.u8")), &raw).unwrap();
        std::fs::write(dir.join(format!("{stem}_grown.f32")), &grown_bytes).unwrap();
        std::fs::write(dir.join(format!("{stem}_crop.f32")), &bytes).unwrap();
        let crop_in_grown = [0, 1, 2].map(|a| native_box.start[a] - lo[a]);
        let info = serde_json::json!({
            "model": model_id,
            "volume": format!("t1_{size}.nii.gz"),
            "crop_start": start,
            "dims": [size, size, size],
            "grown_dims": input_dims,
            "crop_in_grown": crop_in_grown,
            "receptive_radius": r,
            "normalization": model.input.normalization,
            "native_minus_conformed": shift,
            "zero_voxels_in_crop": zeros,
            "normalized_zero": outside.first(),
            "min": values.iter().copied().fold(f32::INFINITY, f32::min),
            "max": values.iter().copied().fold(f32::NEG_INFINITY, f32::max),
            "crop_sha256": sha256_hex(&bytes),
            "grown_sha256": sha256_hex(&grown_bytes),
        });
        std::fs::write(
            dir.join(format!("{stem}.json")),
            serde_json::to_string_pretty(&info).unwrap(),
        )
        .unwrap();
        eprintln!("{}: {info}", dir.join(&stem).display());
    }
}
