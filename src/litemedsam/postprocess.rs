//! The reference's post-processing (`CVPR24_LiteMedSAM_infer.py`, `medsam_inference`): the
//! 256x256 low-res logits cropped to the resized image, bilinearly upsampled to the slice
//! (`F.interpolate(..., mode="bilinear", align_corners=False)`, as PyTorch computes it in
//! f32), and `sigmoid > 0.5`, i.e. logit > 0.

/// PyTorch's bilinear source taps for one axis (align_corners=False, no explicit scale):
/// for each output index, `(i0, i1, weight of i1)`.
fn taps(input: usize, output: usize) -> Vec<(usize, usize, f32)> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|o| {
            let real = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
            let i0 = real as usize;
            let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
            (i0, i1, real - i0 as f32)
        })
        .collect()
}

/// The final mask (`height x width`, row-major, 0/1) from the low-res logits (`side x side`,
/// row-major) of an image that was resized to `resized_height x resized_width`.
pub fn mask_from_low_res(
    logits: &[f32],
    side: usize,
    resized_height: usize,
    resized_width: usize,
    height: usize,
    width: usize,
) -> Vec<u8> {
    assert_eq!(logits.len(), side * side);
    assert!(resized_height <= side && resized_width <= side);
    let ys = taps(resized_height, height);
    let xs = taps(resized_width, width);
    let mut mask = vec![0u8; height * width];
    for (r, &(y0, y1, ly)) in ys.iter().enumerate() {
        let (row0, row1) = (&logits[y0 * side..], &logits[y1 * side..]);
        for (c, &(x0, x1, lx)) in xs.iter().enumerate() {
            let top = (1.0 - lx) * row0[x0] + lx * row0[x1];
            let bottom = (1.0 - lx) * row1[x0] + lx * row1[x1];
            let v = (1.0 - ly) * top + ly * bottom;
            mask[r * width + c] = u8::from(v > 0.0);
        }
    }
    mask
}
