//! The `insitu` command line, run as a user would.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

fn insitu(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_insitu"))
        .args(args)
        .output()
        .expect("insitu runs")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("insitu-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn models_lists_the_registry_with_the_default_marked() {
    let out = insitu(&["models"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for id in ["tissue_fast", "subcortical", "DKatlas", "mindgrab"] {
        assert!(text.contains(id), "{id} missing from:\n{text}");
    }
    assert!(text
        .lines()
        .any(|l| l.starts_with("tissue_fast") && l.contains("(default)")));
}

/// `insitu models | head -0`: the reader is gone before the output is written. Rust's
/// `println!` would panic on the broken pipe; the CLI exits quietly instead.
#[test]
fn a_closed_stdout_is_not_a_crash() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_insitu"))
        .arg("models")
        .stdout(writer)
        .output()
        .expect("insitu runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(stderr.is_empty(), "{stderr}");
}

#[test]
fn segment_help_documents_both_output_spaces() {
    let out = insitu(&["segment", "--help"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("native") && text.contains("conformed"),
        "{text}"
    );
}

#[test]
fn bad_input_fails_with_one_line_naming_the_file() {
    let bad = scratch("bad.nii.gz");
    std::fs::write(&bad, b"\x1f\x8b\x08\x00 definitely not a volume").unwrap();
    let out_path = scratch("never.nii.gz");
    let out = insitu(&[
        "segment",
        "--model",
        "tissue_fast",
        bad.to_str().unwrap(),
        "-o",
        out_path.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "expected one line, got:\n{err}"
    );
    assert!(err.contains("bad.nii.gz"), "{err}");
    assert!(!out_path.exists());

    let out = insitu(&[
        "segment",
        "--model",
        "no_such_model",
        bad.to_str().unwrap(),
        "-o",
        out_path.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("no_such_model"));
}

#[test]
fn segment_writes_native_and_conformed_grids_and_eval_reads_them() {
    let small = scratch("small.nii.gz");
    let t1 = common::data("t1_crop.nii.gz");
    let out = insitu(&[
        "convert",
        t1.to_str().unwrap(),
        "-o",
        small.to_str().unwrap(),
        "--crop",
        "100,100,100,48,48,48",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let native = scratch("native.nii.gz");
    let conformed = scratch("conformed.nii.gz");
    for (path, space) in [(&native, "native"), (&conformed, "conformed")] {
        let out = insitu(&[
            "segment",
            "--model",
            "tissue_fast",
            "--crop",
            small.to_str().unwrap(),
            "-o",
            path.to_str().unwrap(),
            "--space",
            space,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dims = |path: &PathBuf| {
        let out = insitu(&["info", "--json", path.to_str().unwrap()]);
        assert!(out.status.success());
        let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        info["dims"].clone()
    };
    assert_eq!(dims(&native), serde_json::json!([48, 48, 48]));
    assert_eq!(dims(&conformed), serde_json::json!([256, 256, 256]));

    // A segmentation compared with itself is perfect, and the JSON has the documented shape.
    let out = insitu(&[
        "eval",
        "--pred",
        native.to_str().unwrap(),
        "--ref",
        native.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for label in ["1", "2"] {
        assert_eq!(report["labels"][label]["dice"], 1.0);
        assert_eq!(report["labels"][label]["hd95"], 0.0);
    }
    assert_eq!(report["mean"]["nsd"], 1.0);

    // Different grids are refused with a reason, not compared voxel by voxel.
    let out = insitu(&[
        "eval",
        "--pred",
        native.to_str().unwrap(),
        "--ref",
        conformed.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("grids differ"));
}

#[test]
fn cohort_eval_segments_each_case_and_writes_one_csv() {
    let images = scratch("cohort-images");
    let labels = scratch("cohort-labels");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::create_dir_all(&labels).unwrap();
    let t1 = common::data("t1_crop.nii.gz");
    let reference = common::data("reference/t1_crop_tissue_fast.nii.gz");
    for (case, start) in [("case_a", "100,100,100"), ("case_b", "96,104,100")] {
        let crop = format!("{start},48,48,48");
        let image = images.join(format!("{case}.nii.gz"));
        let label = labels.join(format!("{case}.nii.gz"));
        for (src, dst) in [(&t1, &image), (&reference, &label)] {
            let out = insitu(&[
                "convert",
                src.to_str().unwrap(),
                "-o",
                dst.to_str().unwrap(),
                "--crop",
                &crop,
            ]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let report = scratch("cohort.csv");
    let out = insitu(&[
        "eval",
        "--model",
        "tissue_fast",
        "--crop",
        "--images",
        images.to_str().unwrap(),
        "--labels",
        labels.to_str().unwrap(),
        "-o",
        report.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let progress = String::from_utf8(out.stderr).unwrap();
    assert!(
        progress.contains("[1/2] case_a") && progress.contains("[2/2] case_b"),
        "{progress}"
    );
    let csv = std::fs::read_to_string(&report).unwrap();
    let mut lines = csv.lines();
    assert!(lines
        .next()
        .unwrap()
        .starts_with("case,model,runtime_ms,label,name,dice,"));
    let rows: Vec<&str> = lines.collect();
    for case in ["case_a", "case_b"] {
        // labels 1 and 2, then the mean row
        assert_eq!(
            rows.iter()
                .filter(|r| r.starts_with(&format!("{case},tissue_fast,")))
                .count(),
            3,
            "{csv}"
        );
    }
    assert!(rows.iter().any(|r| r.contains(",White Matter,")), "{csv}");
}

#[test]
fn models_shows_cards_and_the_promptable_litemedsam() {
    let out = insitu(&["models"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.lines().any(|l| l.starts_with("litemedsam")), "{text}");
    assert!(text.contains("promptable: CT and MR"), "{text}");
    assert!(text.contains("dense: MR (T1-weighted), brain"), "{text}");
}

#[test]
fn segment_refuses_a_promptable_model() {
    let t1 = common::data("t1_crop.nii.gz");
    let out = insitu(&[
        "segment",
        "--model",
        "litemedsam",
        t1.to_str().unwrap(),
        "-o",
        scratch("never.nii.gz").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("litemedsam is promptable: use insitu prompt"),
        "{stderr}"
    );
    let out = insitu(&[
        "prompt",
        "--model",
        "tissue_fast",
        t1.to_str().unwrap(),
        "--box",
        "1,1,2,2@0",
        "-o",
        scratch("never.nii.gz").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("use insitu segment"), "{stderr}");
}

#[test]
fn prompt_help_documents_the_conventions() {
    let out = insitu(&["prompt", "--help"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for phrase in [
        "inclusive",
        "first array axis",
        "I0,J0,I1,J1@K",
        "I0,J0,K0,I1,J1,K1",
        "later prompt wins",
        "below -500",
        "end slices",
        "--label",
    ] {
        assert!(text.contains(phrase), "{phrase:?} missing from:\n{text}");
    }
}

/// Bad prompts are refused with one line naming the problem, before the model loads.
#[test]
fn prompt_refuses_bad_boxes_clearly() {
    let ct = common::data("totalsegmentator/example_ct_sm.nii.gz"); // 122 x 101 x 30
    let cases: [(&[&str], &str); 5] = [
        (
            &["--box", "70,29,122,45@12"],
            "box outside the volume: i1 = 122",
        ),
        (&["--box", "70,29,87,45@30"], "slice 30 is out of range"),
        (&["--box", "70,46,87,45@12"], "empty box: j0 = 46 > j1 = 45"),
        (&["--box3d", "23,27,5,44,49,5"], "k0 < k1"),
        (
            &["--box", "70,29,87,45@12", "--label", "1", "--label", "2"],
            "2 --label value(s) for 1 prompt(s)",
        ),
    ];
    for (args, want) in cases {
        let output = scratch("bad.nii.gz");
        let mut all = vec![
            "prompt",
            ct.to_str().unwrap(),
            "-o",
            output.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        let out = insitu(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {want:?} not in {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// `insitu prompt` on one 2-D fixture case (the CT kidney box on slice 12, label 7): the
/// output is on the input's grid and its labels equal the library pipeline's.
#[test]
fn prompt_writes_the_pipelines_labels_on_the_input_grid() {
    use insitu::litemedsam::pipeline::{self, Prompt, PromptCache, PromptOptions};
    let ct = common::data("totalsegmentator/example_ct_sm.nii.gz");
    let output = scratch("kidney.nii.gz");
    let out = insitu(&[
        "prompt",
        "--model",
        "litemedsam",
        ct.to_str().unwrap(),
        "--box",
        "70,29,87,45@12",
        "--label",
        "7",
        "-o",
        output.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    println!("{stderr}");
    assert!(stderr.contains("modality CT (guessed"), "{stderr}");
    assert!(
        stderr.contains("slice 12") && stderr.contains("encoder") && stderr.contains("decoder"),
        "{stderr}"
    );

    let input = insitu::volume::read(&std::fs::read(&ct).unwrap()).unwrap();
    let written = insitu::volume::read(&std::fs::read(&output).unwrap()).unwrap();
    assert_eq!(written.geometry.dims, input.geometry.dims);
    assert_eq!(written.geometry.affine, input.geometry.affine);

    let bytes = std::fs::read(common::shared().join("models/litemedsam/lite_medsam.pth")).unwrap();
    let model =
        insitu::litemedsam::LiteMedSam::from_pth(&bytes, &burn::tensor::Device::flex()).unwrap();
    let prompt = Prompt::Box2d {
        ij: [70, 29, 87, 45],
        k: 12,
        label: 7,
    };
    let expected = pollster::block_on(pipeline::segment(
        &model,
        &input,
        &[prompt],
        &PromptOptions::default(),
        &mut PromptCache::default(),
        &|| 0.0,
        &mut |_| {},
    ))
    .unwrap();
    let labels: Vec<u16> = written.data.iter().map(|&v| v as u16).collect();
    assert_eq!(labels, expected.labels.labels);
    let voxels = labels.iter().filter(|&&l| l == 7).count();
    assert!(voxels > 100, "{voxels} voxels of label 7");
    assert!(labels.iter().all(|&l| l == 0 || l == 7));
}

/// `insitu prompt --boxes-from`: reference labels holding only the liver (label 5) on slice 15
/// of the TotalSegmentator CT give the fixture's box there (make_expected.py's ct_liver_k15
/// is the bounding box of that label on that slice), so the output's label 5 matches
/// PyTorch's mask; `insitu eval` then compares output and reference label for label.
#[test]
fn prompt_boxes_from_reference_labels_match_pytorch_and_evaluate() {
    use common::litemedsam::{dice, expected, gunzip, unpack_bits};
    use insitu::volume::{nifti, LabelMap};
    let ct = common::data("totalsegmentator/example_ct_sm.nii.gz");
    let seg = insitu::volume::read(
        &std::fs::read(common::data("totalsegmentator/example_seg.nii.gz")).unwrap(),
    )
    .unwrap();
    let [w, h, _] = seg.geometry.dims;
    let k = 15;
    let labels: Vec<u16> = seg
        .data
        .iter()
        .enumerate()
        .map(|(n, &v)| {
            if n / (w * h) == k && v as u16 == 5 {
                5
            } else {
                0
            }
        })
        .collect();
    let reference = scratch("liver_k15.nii.gz");
    let map = LabelMap {
        geometry: seg.geometry.clone(),
        labels,
    };
    std::fs::write(&reference, nifti::write_labels(&map, true)).unwrap();
    let output = scratch("liver_from_reference.nii.gz");
    let out = insitu(&[
        "prompt",
        ct.to_str().unwrap(),
        "--boxes-from",
        reference.to_str().unwrap(),
        "-o",
        output.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stderr}");
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("1 prompt(s) from") && stderr.contains("2-D box per slice"),
        "{stderr}"
    );

    let expected = expected();
    let case = expected["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "ct_liver_k15")
        .expect("fixture case ct_liver_k15");
    let written = insitu::volume::read(&std::fs::read(&output).unwrap()).unwrap();
    assert_eq!(written.geometry.dims, seg.geometry.dims);
    let mask: Vec<u8> = written.data[k * w * h..(k + 1) * w * h]
        .iter()
        .map(|&v| u8::from(v as u16 == 5))
        .collect();
    let torch = unpack_bits(&gunzip(case["mask_bits"].as_str().unwrap()), w * h);
    let d = dice(&mask, &torch);
    assert!(d >= 0.995, "Dice {d} against PyTorch's ct_liver_k15 mask");
    assert!(
        written.data.iter().all(|&v| v == 0.0 || v == 5.0),
        "only the reference's label, with its own value"
    );

    let eval = insitu(&[
        "eval",
        "--pred",
        output.to_str().unwrap(),
        "--ref",
        reference.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        eval.status.success(),
        "{}",
        String::from_utf8_lossy(&eval.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&eval.stdout).expect("eval --json");
    let text = report.to_string();
    assert!(text.contains("\"dice\""), "{text}");
    // the same Dice as computed here against the reference's own slice
    let ours = dice(
        &mask,
        &map.labels[k * w * h..(k + 1) * w * h]
            .iter()
            .map(|&l| u8::from(l == 5))
            .collect::<Vec<u8>>(),
    );
    println!("Dice against the reference labels: {ours:.4}; eval: {text}");
    assert!(
        ours > 0.8,
        "LiteMedSAM's liver against the reference: Dice {ours}"
    );

    // a reference on another grid is refused with both grids named
    let small = scratch("small_ref.nii.gz");
    let tiny = LabelMap {
        geometry: insitu::volume::Geometry {
            dims: [2, 2, 2],
            ..seg.geometry.clone()
        },
        labels: vec![1; 8],
    };
    std::fs::write(&small, nifti::write_labels(&tiny, true)).unwrap();
    let out = insitu(&[
        "prompt",
        ct.to_str().unwrap(),
        "--boxes-from",
        small.to_str().unwrap(),
        "-o",
        output.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("2 x 2 x 2") && stderr.contains("input's own grid"),
        "{stderr}"
    );
}

/// An abdominal CT given to a T1-brain model: the CLI says why it does not fit, and runs anyway.
/// `auto` on a machine whose only GPU is a software adapter (or none) says it took the CPU.
#[test]
fn segment_warns_when_the_input_does_not_fit_the_model_and_goes_on() {
    let ct = common::data("totalsegmentator/example_ct_sm.nii.gz");
    let output = scratch("ct_tissue_fast.nii.gz");
    let out = insitu(&[
        "segment",
        "--model",
        "tissue_fast",
        "--crop",
        ct.to_str().unwrap(),
        "-o",
        output.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: ") && stderr.contains("looks like CT"),
        "{stderr}"
    );
    assert!(stderr.contains("more than the 350 mm"), "{stderr}");
    assert!(
        stderr.contains("auto: "),
        "auto says what it chose: {stderr}"
    );
    assert!(output.exists(), "the labels were written anyway");
}
