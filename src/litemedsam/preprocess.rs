//! The reference's pre-processing, bit for bit: `pre_CT_MR.py` (whole volume to uint8) and
//! `CVPR24_LiteMedSAM_infer.py` (slice to the 3x256x256 encoder input, box to the 256 frame,
//! the propagated box of the 3-D mode).
//!
//! numpy's arithmetic is reproduced for integer-typed scans (every file in the test data):
//! numpy promotes them to float64 for the window / percentile steps, and so does this port.
//! OpenCV's `cv2.resize(..., INTER_AREA)` on uint8 is reproduced with its own integer and
//! float32 arithmetic (see [`resize_area`]); a float or plain bilinear resize would move the
//! model's logits by up to ~8 and flip mask pixels.

/// Side of the square image the encoder takes.
pub const IMAGE_SIZE: usize = 256;

/// How a scan's intensities become uint8 (`pre_CT_MR.py`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Intensity {
    /// CT: clip to `level ± width / 2` (Hounsfield units), then min-max over the volume.
    Ct { level: f64, width: f64 },
    /// MR: clip to the 0.5 % and 99.5 % percentiles of the non-zero voxels, min-max, and keep
    /// zero voxels at zero.
    Mr,
}

impl Intensity {
    /// The reference's default CT window (soft tissue: level 40, width 400).
    pub const CT_SOFT_TISSUE: Intensity = Intensity::Ct {
        level: 40.0,
        width: 400.0,
    };
}

/// `pre_CT_MR.py`: the whole volume as uint8, in the order of `data`.
///
/// The min-max runs over the whole clipped volume, as the reference does (a volume whose
/// values never reach the window's lower bound is stretched). An MR volume without positive
/// voxels (where numpy's percentile would fail) gives zeros; so does a constant volume.
pub fn volume_to_u8(data: &[f32], intensity: Intensity) -> Vec<u8> {
    let (lower, upper) = match intensity {
        Intensity::Ct { level, width } => (level - width / 2.0, level + width / 2.0),
        Intensity::Mr => {
            let mut positive: Vec<f32> = data.iter().copied().filter(|&v| v > 0.0).collect();
            if positive.is_empty() {
                return vec![0; data.len()];
            }
            let lower = numpy_percentile(&mut positive, 0.5);
            let upper = numpy_percentile(&mut positive, 99.5);
            (lower, upper)
        }
    };
    // np.clip(x, lo, hi) = minimum(maximum(x, lo), hi)
    let clip = |v: f32| (v as f64).max(lower).min(upper);
    let (min, max) = data
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            let c = clip(v);
            (lo.min(c), hi.max(c))
        });
    data.iter()
        .map(|&v| {
            if intensity == Intensity::Mr && v == 0.0 {
                return 0;
            }
            // np.uint8 of a float64 truncates; a NaN (constant volume) casts to 0 here
            ((clip(v) - min) / (max - min) * 255.0) as u8
        })
        .collect()
}

/// `np.percentile(values, q)` (method 'linear') of an integer-valued array, in float64 as numpy
/// computes it: `virtual = (n - 1) * (q / 100)`, then numpy's two-sided `_lerp`. Reorders
/// `values`; `values` must not be empty.
fn numpy_percentile(values: &mut [f32], q: f64) -> f64 {
    let n = values.len();
    let virtual_index = (n - 1) as f64 * (q / 100.0);
    let previous = (virtual_index.floor() as usize).min(n - 1);
    let next = (previous + 1).min(n - 1);
    let gamma = virtual_index - previous as f64;
    let (_, &mut a, right) = values.select_nth_unstable_by(previous, f32::total_cmp);
    let b = if next == previous {
        a
    } else {
        // the next order statistic is the smallest value right of `previous`
        right.iter().copied().fold(f32::INFINITY, f32::min)
    };
    let (a, b) = (a as f64, b as f64);
    let diff = b - a;
    if gamma >= 0.5 {
        b - diff * (1.0 - gamma)
    } else {
        a + diff * gamma
    }
}

/// A volume's k-th plane as a row-major image: rows along j, columns along i (the
/// reference's axes). `data` is x fastest, as [`crate::volume::Volume`] holds it.
pub fn plane<T: Copy>(data: &[T], dims: [usize; 3], k: usize) -> &[T] {
    let n = dims[0] * dims[1];
    &data[k * n..(k + 1) * n]
}

/// `resize_longest_side`: the (height, width) after scaling the longest side to 256, rounded
/// as the reference does (`int(x + 0.5)`).
pub fn resized_size(height: usize, width: usize) -> (usize, usize) {
    let scale = IMAGE_SIZE as f64 / height.max(width) as f64;
    let h = height as f64 * scale;
    let w = width as f64 * scale;
    ((h + 0.5) as usize, (w + 0.5) as usize)
}

/// `cv2.resize(src, (dst_width, dst_height), interpolation=cv2.INTER_AREA)` on a uint8
/// image of `channels` interleaved channels, with OpenCV's arithmetic (checked against
/// opencv-python 5.0):
///
/// - same size: a copy;
/// - both scales integer (`1 / (dst / src)` within f64::EPSILON of an integer): block means;
///   2x2 blocks as `(sum + 2) >> 2`, other blocks as `round(sum * (1.0f32 / area))`;
/// - both scales >= 1 otherwise: area weights in float32 (`computeResizeAreaTab`), rows
///   accumulated in float32, rounded half to even;
/// - any axis enlarged: OpenCV's "area" variant of bilinear interpolation, weights in 11-bit
///   fixed point, rows combined with the SIMD kernel's rounding
///   (`((s0 >> 4) * b0 >> 16) + ((s1 >> 4) * b1 >> 16) + 2) >> 2`, which opencv-python
///   applies to every pixel, not the scalar `(s0 * b0 + s1 * b1 + 2^21) >> 22`.
pub fn resize_area(
    src: &[u8],
    src_height: usize,
    src_width: usize,
    channels: usize,
    dst_height: usize,
    dst_width: usize,
) -> Vec<u8> {
    assert_eq!(src.len(), src_height * src_width * channels, "image size");
    assert!(src_height > 0 && src_width > 0 && dst_height > 0 && dst_width > 0);
    if (src_height, src_width) == (dst_height, dst_width) {
        return src.to_vec();
    }
    let inv_scale_x = dst_width as f64 / src_width as f64;
    let inv_scale_y = dst_height as f64 / src_height as f64;
    let scale_x = 1.0 / inv_scale_x;
    let scale_y = 1.0 / inv_scale_y;
    let image = Image {
        pixels: src,
        height: src_height,
        width: src_width,
        channels,
    };
    if scale_x >= 1.0 && scale_y >= 1.0 {
        let iscale_x = scale_x.round_ties_even();
        let iscale_y = scale_y.round_ties_even();
        if (scale_x - iscale_x).abs() < f64::EPSILON && (scale_y - iscale_y).abs() < f64::EPSILON {
            return block_mean(
                &image,
                iscale_y as usize,
                iscale_x as usize,
                dst_height,
                dst_width,
            );
        }
        return area_weighted(&image, scale_y, scale_x, dst_height, dst_width);
    }
    area_bilinear(&image, dst_height, dst_width)
}

struct Image<'a> {
    pixels: &'a [u8],
    height: usize,
    width: usize,
    channels: usize,
}

impl Image<'_> {
    fn at(&self, y: usize, x: usize, c: usize) -> u8 {
        self.pixels[(y * self.width + x) * self.channels + c]
    }
}

/// `cvRound` of a float into uint8 (`saturate_cast<uchar>(float)`): half to even, clamped.
fn saturate_u8(v: f32) -> u8 {
    v.round_ties_even().clamp(0.0, 255.0) as u8
}

/// OpenCV's `resizeAreaFast_`: every output pixel is the mean of a `sy` x `sx` block.
fn block_mean(image: &Image, sy: usize, sx: usize, dst_height: usize, dst_width: usize) -> Vec<u8> {
    let cn = image.channels;
    let two_by_two = sx == 2 && sy == 2 && matches!(cn, 1 | 3 | 4);
    let scale = 1.0f32 / (sx * sy) as f32;
    let mut out = Vec::with_capacity(dst_height * dst_width * cn);
    for dy in 0..dst_height {
        for dx in 0..dst_width {
            for c in 0..cn {
                let mut sum = 0u32;
                for y in dy * sy..(dy + 1) * sy {
                    for x in dx * sx..(dx + 1) * sx {
                        sum += u32::from(image.at(y, x, c));
                    }
                }
                out.push(if two_by_two {
                    ((sum + 2) >> 2) as u8
                } else {
                    saturate_u8(sum as f32 * scale)
                });
            }
        }
    }
    out
}

/// One source pixel's share of one output pixel along an axis (`DecimateAlpha`).
struct Share {
    dst: usize,
    src: usize,
    weight: f32,
}

/// OpenCV's `computeResizeAreaTab`: which source pixels cover each output pixel, and how much.
fn area_shares(src_size: usize, dst_size: usize, scale: f64) -> Vec<Share> {
    let mut shares = Vec::new();
    for d in 0..dst_size {
        let fs1 = d as f64 * scale;
        let fs2 = fs1 + scale;
        let cell = scale.min(src_size as f64 - fs1);
        let mut s1 = fs1.ceil() as usize;
        let s2 = (fs2.floor() as usize).min(src_size - 1);
        s1 = s1.min(s2);
        if s1 as f64 - fs1 > 1e-3 {
            shares.push(Share {
                dst: d,
                src: s1 - 1,
                weight: ((s1 as f64 - fs1) / cell) as f32,
            });
        }
        for s in s1..s2 {
            shares.push(Share {
                dst: d,
                src: s,
                weight: (1.0 / cell) as f32,
            });
        }
        if fs2 - s2 as f64 > 1e-3 {
            shares.push(Share {
                dst: d,
                src: s2,
                weight: ((fs2 - s2 as f64).min(1.0).min(cell) / cell) as f32,
            });
        }
    }
    shares
}

/// OpenCV's `ResizeArea_Invoker` (float32 accumulation, in its order of operations).
fn area_weighted(
    image: &Image,
    scale_y: f64,
    scale_x: f64,
    dst_height: usize,
    dst_width: usize,
) -> Vec<u8> {
    let cn = image.channels;
    let xshares = area_shares(image.width, dst_width, scale_x);
    let yshares = area_shares(image.height, dst_height, scale_y);
    let row_len = dst_width * cn;
    let mut out = vec![0u8; dst_height * row_len];
    let mut sum = vec![0f32; row_len];
    let mut buf = vec![0f32; row_len];
    let mut prev_dy = yshares[0].dst;
    for ys in &yshares {
        buf.fill(0.0);
        for xs in &xshares {
            for c in 0..cn {
                let i = xs.dst * cn + c;
                buf[i] += f32::from(image.at(ys.src, xs.src, c)) * xs.weight;
            }
        }
        if ys.dst != prev_dy {
            let row = &mut out[prev_dy * row_len..(prev_dy + 1) * row_len];
            for ((o, s), b) in row.iter_mut().zip(sum.iter_mut()).zip(&buf) {
                *o = saturate_u8(*s);
                *s = ys.weight * b;
            }
            prev_dy = ys.dst;
        } else {
            for (s, b) in sum.iter_mut().zip(&buf) {
                *s += ys.weight * b;
            }
        }
    }
    let row = &mut out[prev_dy * row_len..(prev_dy + 1) * row_len];
    for (o, s) in row.iter_mut().zip(&sum) {
        *o = saturate_u8(*s);
    }
    out
}

/// Per output pixel along one axis: the first of the two source pixels and their 11-bit
/// weights (OpenCV's area-mode coefficients of `resize`'s generic path).
struct Taps {
    src: Vec<usize>,
    weights: Vec<[i32; 2]>,
    /// From here on the second source pixel would be outside: the first one counts fully.
    interior_end: usize,
}

const COEF_SCALE: f32 = 2048.0; // INTER_RESIZE_COEF_SCALE

fn area_bilinear_taps(src_size: usize, dst_size: usize, clamp_edge: bool) -> Taps {
    let inv_scale = dst_size as f64 / src_size as f64;
    let scale = 1.0 / inv_scale;
    let mut taps = Taps {
        src: Vec::with_capacity(dst_size),
        weights: Vec::with_capacity(dst_size),
        interior_end: dst_size,
    };
    for d in 0..dst_size {
        let mut s = (d as f64 * scale).floor() as usize;
        let f = ((d + 1) as f64 - (s + 1) as f64 * inv_scale) as f32;
        let mut f = if f <= 0.0 { 0.0 } else { f - f.floor() };
        if clamp_edge && s + 1 >= src_size {
            taps.interior_end = taps.interior_end.min(d);
            if s >= src_size - 1 {
                f = 0.0;
                s = src_size - 1;
            }
        }
        taps.src.push(s);
        let w0 = ((1.0 - f) * COEF_SCALE).round_ties_even() as i32;
        let w1 = (f * COEF_SCALE).round_ties_even() as i32;
        taps.weights.push([w0, w1]);
    }
    taps
}

/// OpenCV's generic resize with INTER_AREA coefficients (used when either axis enlarges).
fn area_bilinear(image: &Image, dst_height: usize, dst_width: usize) -> Vec<u8> {
    let cn = image.channels;
    let xt = area_bilinear_taps(image.width, dst_width, true);
    let yt = area_bilinear_taps(image.height, dst_height, false);
    let row_len = dst_width * cn;
    // horizontal pass of one source row, in 11-bit fixed point
    let horizontal = |y: usize| -> Vec<i32> {
        let mut row = Vec::with_capacity(row_len);
        for dx in 0..dst_width {
            let sx = xt.src[dx];
            let [w0, w1] = xt.weights[dx];
            for c in 0..cn {
                let p0 = i32::from(image.at(y, sx, c));
                row.push(if dx < xt.interior_end {
                    p0 * w0 + i32::from(image.at(y, sx + 1, c)) * w1
                } else {
                    p0 * COEF_SCALE as i32
                });
            }
        }
        row
    };
    let last_row = image.height - 1;
    let mut out = Vec::with_capacity(dst_height * row_len);
    for dy in 0..dst_height {
        let sy = yt.src[dy];
        let r0 = horizontal(sy.min(last_row));
        let r1 = horizontal((sy + 1).min(last_row));
        let [b0, b1] = yt.weights[dy];
        for (&s0, &s1) in r0.iter().zip(&r1) {
            // VResizeLinearVec_32s8u: 16-bit high products of the rows shifted by 4
            let t = (((s0 >> 4) * b0) >> 16) + (((s1 >> 4) * b1) >> 16);
            out.push(((t + 2) >> 2).clamp(0, 255) as u8);
        }
    }
    out
}

/// The encoder's input for one slice, and what the post-processing needs to undo it.
#[derive(Clone, Debug)]
pub struct EncoderInput {
    /// 1x3x256x256, channels first (the three channels are equal).
    pub tensor: Vec<f32>,
    /// The uint8 slice after the resize, `resized_height` x `resized_width`, before min-max.
    pub resized: Vec<u8>,
    pub resized_height: usize,
    pub resized_width: usize,
}

/// The reference's pre-processing of a uint8 slice (`height` rows x `width` columns): three
/// equal channels, [`resize_area`] of the longest side to 256, min-max to [0, 1] in float64,
/// zero padding at the bottom and right, cast to float32.
///
/// The slice is resized as one channel: OpenCV resizes channels independently with the same
/// arithmetic, so the reference's three equal channels stay equal (the 3-channel resize
/// fixtures check that the arithmetic does not depend on the channel count).
pub fn encoder_input(slice: &[u8], height: usize, width: usize) -> EncoderInput {
    let (rh, rw) = resized_size(height, width);
    let resized = resize_area(slice, height, width, 1, rh, rw);
    let min = resized.iter().copied().min().unwrap_or(0);
    let max = resized.iter().copied().max().unwrap_or(0);
    // np.clip(max - min, a_min=1e-8): a constant slice becomes all zeros
    let range = f64::from(max - min).max(1e-8);
    let plane_len = IMAGE_SIZE * IMAGE_SIZE;
    let mut tensor = vec![0f32; 3 * plane_len];
    for y in 0..rh {
        for x in 0..rw {
            let v = (f64::from(resized[y * rw + x] - min) / range) as f32;
            for c in 0..3 {
                tensor[c * plane_len + y * IMAGE_SIZE + x] = v;
            }
        }
    }
    EncoderInput {
        tensor,
        resized,
        resized_height: rh,
        resized_width: rw,
    }
}

/// A box `[x_min, y_min, x_max, y_max]` (columns, rows).
pub type BoxXyxy = [i64; 4];

/// `resize_box_to_256`: a box on a `height` x `width` slice in the 256 frame, each coordinate
/// `int(c * 256 / max(height, width))` (truncated toward zero).
pub fn box_to_256(b: BoxXyxy, height: usize, width: usize) -> BoxXyxy {
    let ratio = IMAGE_SIZE as f64 / height.max(width) as f64;
    b.map(|c| (c as f64 * ratio) as i64)
}

/// How far `get_bbox256` grows a propagated box on each side.
pub const PROPAGATION_MARGIN: i64 = 3;

/// The 3-D mode's box for a slice from its neighbour's mask (`height` x `width`, non-zero =
/// object): the mask resized like an image ([`resize_area`], one channel) and padded to
/// 256x256, its bounding box grown by 3 px and clipped to `[0, 256]` (the reference clips the
/// maxima to 256, not 255). None when the resized mask is empty; the reference then falls
/// back to the first box.
pub fn box_from_neighbour_mask(mask: &[u8], height: usize, width: usize) -> Option<BoxXyxy> {
    let (rh, rw) = resized_size(height, width);
    let resized = resize_area(mask, height, width, 1, rh, rw);
    let mut bounds: Option<BoxXyxy> = None;
    for y in 0..rh {
        for x in 0..rw {
            if resized[y * rw + x] > 0 {
                let (x, y) = (x as i64, y as i64);
                bounds = Some(match bounds {
                    None => [x, y, x, y],
                    Some([x0, y0, x1, y1]) => [x0.min(x), y0.min(y), x1.max(x), y1.max(y)],
                });
            }
        }
    }
    let size = IMAGE_SIZE as i64;
    bounds.map(|[x0, y0, x1, y1]| {
        [
            (x0 - PROPAGATION_MARGIN).max(0),
            (y0 - PROPAGATION_MARGIN).max(0),
            (x1 + PROPAGATION_MARGIN).min(size),
            (y1 + PROPAGATION_MARGIN).min(size),
        ]
    })
}

/// The slices the reference's 3-D mode visits for a box spanning `k_min..=k_max`, in order:
/// the middle `int((k_max - k_min) / 2 + k_min)` up to `k_max - 1`, then down to `k_min + 1`.
/// The reference leaves out both end slices of the box (its loops are `range(mid, z_max)` and
/// `range(mid - 1, z_min, -1)`), so they stay empty.
pub fn propagation_order(k_min: usize, k_max: usize) -> Vec<usize> {
    assert!(k_min < k_max, "the reference requires z_min < z_max");
    let middle = ((k_max - k_min) as f64 / 2.0 + k_min as f64) as usize;
    (middle..k_max).chain((k_min + 1..middle).rev()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resized_size_rounds_like_the_reference() {
        // 122 wide, 101 high: 101 * 256 / 122 = 211.93 -> 212
        assert_eq!(resized_size(101, 122), (212, 256));
        assert_eq!(resized_size(233, 197), (256, 216));
        assert_eq!(resized_size(512, 512), (256, 256));
    }

    #[test]
    fn propagation_skips_both_end_slices() {
        assert_eq!(propagation_order(2, 6), vec![4, 5, 3]);
        assert_eq!(propagation_order(0, 1), vec![0]);
    }

    #[test]
    fn box_truncates_toward_zero() {
        // 45 * 256 / 122 = 94.43, 104 * 256 / 122 = 218.2
        assert_eq!(box_to_256([45, 26, 104, 84], 101, 122), [94, 54, 218, 176]);
    }

    #[test]
    fn percentile_matches_numpy_linear() {
        // np.percentile([1, 2, 3, 4, 10], 99.5) = 9.88 ; 0.5 -> 1.02
        let mut v = [10.0f32, 3.0, 1.0, 4.0, 2.0];
        assert!((numpy_percentile(&mut v, 99.5) - 9.88).abs() < 1e-12);
        assert!((numpy_percentile(&mut v, 0.5) - 1.02).abs() < 1e-12);
    }
}
