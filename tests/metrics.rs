//! Segmentation metrics against DeepMind's `surface-distance` (and edge cases, grids, mappings).
//!
//! The fixtures and `expected.json` come from tests/fixtures/metrics/make_expected.py, which
//! builds pairs of label maps from the shared data and runs the reference implementation on them.

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use insitu::metrics::{
    evaluate, preset, presets, Empty, EvalOptions, LabelMapping, MetricsError, Report,
    SUBCORTICAL_LABELS,
};
use insitu::volume::nifti::read_nifti;
use insitu::volume::{Geometry, LabelMap};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/metrics")
        .join(name)
}

fn load(path: &Path) -> LabelMap {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let volume = read_nifti(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    LabelMap::from_volume(&volume).unwrap()
}

/// Relative difference, absolute near zero.
fn rel(actual: f64, expected: f64) -> f64 {
    (actual - expected).abs() / expected.abs().max(1.0)
}

#[derive(Default)]
struct Worst {
    dice_iou: f64,
    hd95: f64,
    assd: f64,
    nsd: f64,
}

#[test]
fn agrees_with_deepmind_surface_distance() {
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap();
    let mut failures = Vec::new();
    let mut worst = Worst::default();
    let mut compared = 0;
    for case in expected["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let pred = load(&fixture(case["pred"].as_str().unwrap()));
        let reference = load(&fixture(case["reference"].as_str().unwrap()));
        let mapping = case["mapping"].as_str().map(|f| {
            LabelMapping::from_json(&std::fs::read_to_string(fixture(f)).unwrap()).unwrap()
        });
        let want_labels: Vec<u16> = case["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u16)
            .collect();
        // Cases whose labels are the default selection run with `labels: None`, which checks
        // that selection too; the others ask for their labels.
        let default_selection = name != "tissue_missing_extra";
        for tol in case["tolerances"].as_array().unwrap() {
            let tol = tol.as_f64().unwrap();
            let options = EvalOptions {
                tolerance_mm: tol,
                labels: (!default_selection).then(|| want_labels.clone()),
            };
            let report = evaluate(&pred, &reference, mapping.as_ref(), &options)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let got_labels: Vec<u16> = report.labels.iter().map(|m| m.label).collect();
            assert_eq!(got_labels, want_labels, "{name}: evaluated labels");
            let spacing: Vec<f64> = case["spacing"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert_eq!(report.spacing_mm.to_vec(), spacing, "{name}: spacing");
            for m in &report.labels {
                let e = &case["metrics"][m.label.to_string()];
                let at = format!("{name} label {} τ={tol}", m.label);
                compared += 1;
                let empty = match m.empty {
                    Empty::None => "none",
                    Empty::Reference => "reference",
                    Empty::Prediction => "prediction",
                    Empty::Both => "both",
                };
                if empty != e["empty"].as_str().unwrap() {
                    failures.push(format!("{at}: empty {empty} vs {}", e["empty"]));
                }
                if m.voxels_pred != e["voxels_pred"].as_u64().unwrap()
                    || m.voxels_ref != e["voxels_ref"].as_u64().unwrap()
                {
                    failures.push(format!(
                        "{at}: voxel counts {} {} vs {e}",
                        m.voxels_pred, m.voxels_ref
                    ));
                }
                for (v, key) in [(m.vol_pred_ml, "vol_pred_ml"), (m.vol_ref_ml, "vol_ref_ml")] {
                    if rel(v, e[key].as_f64().unwrap()) > 1e-12 {
                        failures.push(format!("{at}: {key} {v} vs {}", e[key]));
                    }
                }
                for (v, key) in [(m.dice, "dice"), (m.iou, "iou")] {
                    let d = (v - e[key].as_f64().unwrap()).abs();
                    worst.dice_iou = worst.dice_iou.max(d);
                    if d > 1e-9 {
                        failures.push(format!("{at}: {key} {v} vs {}", e[key]));
                    }
                }
                let nsd_want = e["nsd"][format!("{tol:?}")].as_f64().unwrap();
                let r = rel(m.nsd, nsd_want);
                worst.nsd = worst.nsd.max(r);
                if r > 1e-6 {
                    failures.push(format!("{at}: nsd {} vs {nsd_want}", m.nsd));
                }
                for (v, key, w) in [
                    (m.hd95, "hd95", &mut worst.hd95),
                    (m.assd, "assd", &mut worst.assd),
                ] {
                    match e[key].as_f64() {
                        // null: infinite (exactly one mask empty)
                        None => {
                            if v != f64::INFINITY {
                                failures.push(format!("{at}: {key} {v} vs +inf"));
                            }
                        }
                        Some(want) => {
                            let r = rel(v, want);
                            *w = w.max(r);
                            if r > 1e-6 {
                                failures.push(format!("{at}: {key} {v} vs {want}"));
                            }
                        }
                    }
                }
            }
        }
    }
    println!(
        "compared {compared} label results; largest deviations from surface-distance: \
         dice/iou {:.1e} abs, hd95 {:.1e} rel, assd {:.1e} rel, nsd {:.1e} rel",
        worst.dice_iou, worst.hd95, worst.assd, worst.nsd
    );
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(compared > 100);
}

fn grid(dims: [usize; 3], spacing: [f64; 3]) -> Geometry {
    Geometry {
        dims,
        spacing,
        affine: [
            [spacing[0], 0.0, 0.0, -10.0],
            [0.0, spacing[1], 0.0, 5.0],
            [0.0, 0.0, spacing[2], 2.0],
            [0.0, 0.0, 0.0, 1.0],
        ],
        sform_code: 1,
        qform_code: 1,
    }
}

/// A map with boxes of labels: (label, lo, hi inclusive).
fn boxes(dims: [usize; 3], spacing: [f64; 3], items: &[(u16, [usize; 3], [usize; 3])]) -> LabelMap {
    let mut labels = vec![0u16; dims[0] * dims[1] * dims[2]];
    for &(l, lo, hi) in items {
        for k in lo[2]..=hi[2] {
            for j in lo[1]..=hi[1] {
                for i in lo[0]..=hi[0] {
                    labels[i + dims[0] * (j + dims[1] * k)] = l;
                }
            }
        }
    }
    LabelMap {
        geometry: grid(dims, spacing),
        labels,
    }
}

#[test]
fn edge_cases_follow_the_documented_convention() {
    let dims = [12, 10, 8];
    let s = [1.0, 1.0, 2.0];
    let reference = boxes(
        dims,
        s,
        &[(1, [2, 2, 2], [5, 5, 4]), (2, [7, 2, 2], [9, 6, 5])],
    );
    // Label 1 moved by one voxel along i, label 2 missed, label 3 hallucinated.
    let pred = boxes(
        dims,
        s,
        &[(1, [3, 2, 2], [6, 5, 4]), (3, [1, 7, 1], [3, 8, 2])],
    );
    let options = EvalOptions {
        labels: Some(vec![1, 2, 3, 4]),
        ..EvalOptions::default()
    };
    let report = evaluate(&pred, &reference, None, &options).unwrap();

    let l1 = report.label(1).unwrap();
    assert_eq!(l1.empty, Empty::None);
    // 48 voxels each, 36 shared.
    assert!((l1.dice - 0.75).abs() < 1e-12, "{}", l1.dice);
    assert!((l1.iou - 0.6).abs() < 1e-12);
    // Every corner of one surface is within the 1 mm shift of the other.
    assert!(
        l1.hd95 > 0.0 && l1.hd95 <= 1.0 && l1.assd > 0.0 && l1.assd < 1.0,
        "{l1:?}"
    );
    assert_eq!(l1.nsd, 1.0);

    let missed = report.label(2).unwrap();
    assert_eq!(missed.empty, Empty::Prediction);
    assert_eq!((missed.dice, missed.iou, missed.nsd), (0.0, 0.0, 0.0));
    assert_eq!((missed.hd95, missed.assd), (f64::INFINITY, f64::INFINITY));
    assert_eq!(missed.vol_pred_ml, 0.0);
    assert!((missed.vol_ref_ml - 3.0 * 5.0 * 4.0 * 2.0 / 1000.0).abs() < 1e-15);
    assert!((missed.vol_diff_ml + missed.vol_ref_ml).abs() < 1e-15);

    let extra = report.label(3).unwrap();
    assert_eq!(extra.empty, Empty::Reference);
    assert_eq!((extra.dice, extra.hd95), (0.0, f64::INFINITY));

    let absent = report.label(4).unwrap();
    assert_eq!(absent.empty, Empty::Both);
    assert_eq!(
        (
            absent.dice,
            absent.iou,
            absent.nsd,
            absent.hd95,
            absent.assd
        ),
        (1.0, 1.0, 1.0, 0.0, 0.0)
    );

    // The mean runs over labels 1-3 (present somewhere), distances over label 1 only.
    assert_eq!(
        (report.mean.labels, report.mean.labels_with_distances),
        (3, 1)
    );
    assert!((report.mean.dice.unwrap() - l1.dice / 3.0).abs() < 1e-12);
    assert_eq!(report.mean.hd95, Some(l1.hd95));

    // JSON: infinite distances are null with a flag.
    let json: Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["labels"]["2"]["hd95"], Value::Null);
    assert_eq!(json["labels"]["2"]["assd"], Value::Null);
    assert_eq!(json["labels"]["2"]["infinite_distance"], Value::Bool(true));
    assert_eq!(json["labels"]["2"]["empty"], "prediction");
    assert_eq!(json["labels"]["3"]["empty"], "reference");
    assert_eq!(json["labels"]["4"]["empty"], "both");
    assert_eq!(json["labels"]["4"]["hd95"], 0.0);
    assert_eq!(json["labels"]["1"]["infinite_distance"], Value::Bool(false));
    assert_eq!(json["tolerance_mm"], 2.0);
    assert_eq!(json["spacing_mm"], serde_json::json!([1.0, 1.0, 2.0]));
    assert_eq!(json["mean"]["labels"], 3);
    for key in [
        "dice",
        "iou",
        "hd95",
        "assd",
        "nsd",
        "vol_pred_ml",
        "vol_ref_ml",
        "vol_diff_ml",
    ] {
        assert!(json["labels"]["1"][key].is_number(), "{key}");
        assert!(json["mean"].get(key).is_some(), "mean {key}");
    }

    // Default label selection: labels present in either map, background excluded.
    let default = evaluate(&pred, &reference, None, &EvalOptions::default()).unwrap();
    assert_eq!(
        default.labels.iter().map(|m| m.label).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );

    // Both maps empty: nothing to report, nothing to average.
    let empty = boxes(dims, s, &[]);
    let none = evaluate(&empty, &empty, None, &EvalOptions::default()).unwrap();
    assert!(none.labels.is_empty() && none.mean.dice.is_none() && none.mean.labels == 0);
}

#[test]
fn csv_has_a_row_per_label_and_the_mean() {
    let dims = [8, 8, 8];
    let reference = boxes(
        dims,
        [1.0; 3],
        &[(1, [1, 1, 1], [4, 4, 4]), (2, [5, 5, 5], [6, 6, 6])],
    );
    let pred = boxes(dims, [1.0; 3], &[(1, [1, 1, 1], [4, 4, 3])]);
    let mapping = LabelMapping::from_json(
        r#"{"name": "m", "pairs": [{"model": 1, "reference": [1], "name": "Box, big"},
                                  {"model": 2, "reference": [2], "name": "small"}]}"#,
    )
    .unwrap();
    let report = evaluate(&pred, &reference, Some(&mapping), &EvalOptions::default()).unwrap();
    let csv = report.to_csv();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 4, "{csv}");
    assert!(lines[0]
        .starts_with("label,name,dice,iou,hd95,assd,nsd,vol_pred_ml,vol_ref_ml,vol_diff_ml"));
    assert!(
        lines[1].starts_with("1,\"Box, big\",0.857142857142857"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].starts_with("2,small,0,0,inf,inf,0,"),
        "{}",
        lines[2]
    );
    assert!(lines[3].starts_with("mean,,"), "{}", lines[3]);
    assert_eq!(report.mapping.as_deref(), Some("m"));
    assert_eq!(report.label(1).unwrap().name.as_deref(), Some("Box, big"));
}

#[test]
fn mismatched_grids_are_refused_with_the_reason() {
    let a = boxes([8, 8, 8], [1.0; 3], &[(1, [1, 1, 1], [3, 3, 3])]);
    let opts = EvalOptions::default();

    let other_dims = boxes([8, 8, 9], [1.0; 3], &[(1, [1, 1, 1], [3, 3, 3])]);
    let err = evaluate(&other_dims, &a, None, &opts).unwrap_err();
    assert!(matches!(err, MetricsError::DimsMismatch { .. }), "{err}");
    assert!(err.to_string().contains("dimensions"), "{err}");

    let other_spacing = boxes([8, 8, 8], [1.0, 1.0, 1.2], &[(1, [1, 1, 1], [3, 3, 3])]);
    let err = evaluate(&other_spacing, &a, None, &opts).unwrap_err();
    assert!(matches!(err, MetricsError::SpacingMismatch { .. }), "{err}");
    assert!(err.to_string().contains("spacing"), "{err}");

    let mut shifted = a.clone();
    shifted.geometry.affine[1][3] += 0.01;
    let err = evaluate(&shifted, &a, None, &opts).unwrap_err();
    assert!(matches!(err, MetricsError::AffineMismatch { .. }), "{err}");
    assert!(err.to_string().contains("affines"), "{err}");

    // A rotation that moves the far corner by more than 1e-3 mm is refused too.
    let mut rotated = a.clone();
    rotated.geometry.affine[0][1] = 2e-4;
    assert!(matches!(
        evaluate(&rotated, &a, None, &opts),
        Err(MetricsError::AffineMismatch { .. })
    ));

    // Within tolerance: accepted.
    let mut nudged = a.clone();
    nudged.geometry.affine[2][3] += 5e-4;
    assert!(evaluate(&nudged, &a, None, &opts).is_ok());

    let mut short = a.clone();
    short.labels.pop();
    assert!(matches!(
        evaluate(&short, &a, None, &opts),
        Err(MetricsError::BadLabelMap { .. })
    ));

    let bad_tol = EvalOptions {
        tolerance_mm: f64::NAN,
        ..EvalOptions::default()
    };
    assert!(matches!(
        evaluate(&a, &a, None, &bad_tol),
        Err(MetricsError::InvalidOptions(_))
    ));
}

#[test]
fn presets_match_the_brainchop_colormaps() {
    let keys: Vec<&str> = presets().iter().map(|(k, _)| *k).collect();
    assert_eq!(
        keys,
        vec!["freesurfer_to_tissue_fast", "freesurfer_to_subcortical"]
    );

    let colormap: Value = serde_json::from_str(
        &std::fs::read_to_string(common::model_dir("model30chan18cls").join("colormap.json"))
            .unwrap(),
    )
    .unwrap();
    let names: Vec<&str> = colormap["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 18);
    assert_eq!(&names[1..], &SUBCORTICAL_LABELS[..]);
    let sub = preset("freesurfer_to_subcortical").unwrap();
    for (i, name) in names.iter().enumerate().skip(1) {
        let pair = sub.pairs.iter().find(|p| p.model == i as u16).unwrap();
        assert_eq!(pair.name.as_deref(), Some(*name));
        assert!(!pair.reference.is_empty(), "{name} has no FreeSurfer code");
    }
    // Left and right structures fold together.
    let lut = sub.reference_lut();
    assert_eq!((lut[17], lut[53]), (14, 14)); // hippocampus
    assert_eq!((lut[28], lut[60]), (17, 17)); // ventral DC
    assert_eq!((lut[14], lut[15], lut[16]), (11, 12, 13));

    // A preset round-trips through its JSON form.
    let tissue = preset("freesurfer_to_tissue_fast").unwrap();
    assert_eq!(LabelMapping::from_json(&tissue.to_json()).unwrap(), tissue);
}

/// The content of `map` moved by `shift` voxels (what leaves the grid is dropped, background
/// fills in).
fn shifted(map: &LabelMap, shift: [isize; 3]) -> LabelMap {
    let d = map.geometry.dims;
    let mut labels = vec![0u16; map.labels.len()];
    for k in 0..d[2] {
        for j in 0..d[1] {
            for i in 0..d[0] {
                let src = [
                    i as isize - shift[0],
                    j as isize - shift[1],
                    k as isize - shift[2],
                ];
                if (0..3).all(|a| src[a] >= 0 && (src[a] as usize) < d[a]) {
                    let s = src[0] as usize + d[0] * (src[1] as usize + d[1] * src[2] as usize);
                    labels[i + d[0] * (j + d[1] * k)] = map.labels[s];
                }
            }
        }
    }
    LabelMap {
        geometry: map.geometry.clone(),
        labels,
    }
}

fn print_report(what: &str, report: &Report, seconds: f64) {
    println!(
        "{what}: {} labels in {seconds:.2} s; mean dice {:.4}, hd95 {:?} mm, assd {:?} mm, nsd {:.4}",
        report.labels.len(),
        report.mean.dice.unwrap_or(f64::NAN),
        report.mean.hd95,
        report.mean.assd,
        report.mean.nsd.unwrap_or(f64::NAN),
    );
}

/// Timing on full 256³ volumes (printed, not asserted).
#[test]
fn full_volume_timing() {
    let reference = load(&common::data("reference/t1_crop_tissue_fast.nii.gz"));
    assert_eq!(reference.geometry.dims, [256, 256, 256]);
    let pred = shifted(&reference, [1, 2, 0]);
    let t = Instant::now();
    let report = evaluate(&pred, &reference, None, &EvalOptions::default()).unwrap();
    print_report(
        "tissue_fast 256³ vs shifted copy",
        &report,
        t.elapsed().as_secs_f64(),
    );
    assert_eq!(report.labels.len(), 2);
    assert!(report
        .labels
        .iter()
        .all(|m| m.empty == Empty::None && m.hd95 >= 1.0));

    let atlas = load(&common::data("reference/t1_crop_DKatlas.nii.gz"));
    let pred = shifted(&atlas, [1, 0, -1]);
    let t = Instant::now();
    let report = evaluate(&pred, &atlas, None, &EvalOptions::default()).unwrap();
    print_report(
        "DKatlas 256³ (104 labels) vs shifted copy",
        &report,
        t.elapsed().as_secs_f64(),
    );
    assert!(report.labels.len() > 90);
}
