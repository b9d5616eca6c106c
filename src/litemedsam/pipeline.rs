//! LiteMedSAM on a whole volume: box prompts in, a label map on the volume's own grid out, as
//! the reference (`CVPR24_LiteMedSAM_infer.py`, `MedSAM_infer_npz_2D` / `_3D`, after
//! `pre_CT_MR.py`) computes it.
//!
//! Conventions (the reference's, which reads NIfTI arrays without reorientation):
//!
//! - voxel indices are 0-based and **inclusive**: `i` along the volume's first array axis, `j`
//!   the second, `k` the third; slices are the planes of constant `k`;
//! - a 2-D prompt is a box `[i0, j0, i1, j1]` on slice `k` (the reference's
//!   `[x_min, y_min, x_max, y_max]`: columns are `i`, rows are `j`);
//! - a 3-D prompt is a box `[i0, j0, k0, i1, j1, k1]` with `k0 < k1`, propagated through the
//!   slices as the reference does (see [`Prompt::Box3d`]);
//! - every prompt carries its label; prompts are overlaid in order, so where masks overlap
//!   **the later prompt wins** (the reference's `segs[mask > 0] = idx`).
//!
//! The intensities become uint8 over the whole volume first ([`preprocess::volume_to_u8`]: a
//! CT window, or the MR percentiles), as `pre_CT_MR.py` does. A [`PromptCache`], which the
//! caller keeps for one volume and one model on one device, holds that uint8 volume, the image
//! embeddings (4 MiB per slice) and the decoded masks: a slice is encoded once however many
//! boxes it gets in one call or the next, and a box already decoded on a slice is not decoded
//! again, so re-running a prompt list with one box more costs one decoder call. The results
//! are the same as without a cache (the model is deterministic). The core prints nothing:
//! progress comes through a callback per decoded slice.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;

use burn::tensor::{Tensor, TensorData};

use super::decoder::read_f32;
use super::postprocess::mask_from_low_res;
use super::preprocess::{
    box_from_neighbour_mask, box_to_256, encoder_input, plane, propagation_order, volume_to_u8,
    BoxXyxy, Intensity, IMAGE_SIZE,
};
use super::LiteMedSam;
use crate::volume::{LabelMap, Volume};

// How the scan's intensities are read (`pre_CT_MR.py`'s two branches): the volume's guess.
pub use crate::volume::modality::{guess_modality, Modality, CT_MINIMUM_BELOW};

/// One box prompt and the label its mask gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prompt {
    /// `[i0, j0, i1, j1]` on slice `k` (`MedSAM_infer_npz_2D`).
    Box2d {
        ij: [usize; 4],
        k: usize,
        label: u16,
    },
    /// `[i0, j0, k0, i1, j1, k1]` (`MedSAM_infer_npz_3D`), exactly as the reference:
    ///
    /// - the middle slice `int((k1 - k0) / 2 + k0)` first, with the box's `[i0, j0, i1, j1]`;
    /// - then up to `k1 - 1`, then down from the middle - 1 to `k0 + 1`, each slice's box the
    ///   bounding box of the neighbouring slice's mask (towards the middle) resized to the 256
    ///   frame, grown by 3 px ([`box_from_neighbour_mask`]); the first box again when that
    ///   resized mask is empty;
    /// - quirks kept: **the end slices `k0` and `k1` are left out** (the reference's loops are
    ///   `range(mid, k1)` and `range(mid - 1, k0, -1)`; only when `k1 = k0 + 1` is `k0`, the
    ///   middle, segmented); the neighbour's mask is resized holding the prompt's label as its
    ///   value (the reference's mask holds the box's index), which can grow the propagated box
    ///   by a pixel for labels above 1; labels above 255 are capped at 255 there (its uint8).
    Box3d { ijk: [usize; 6], label: u16 },
}

impl Prompt {
    pub fn label(&self) -> u16 {
        match *self {
            Prompt::Box2d { label, .. } | Prompt::Box3d { label, .. } => label,
        }
    }
}

/// How prompts are made from reference labels, as the CVPR 2024 MedSAM-on-laptop challenge
/// prompts its test cases: the bounding box of each label, with that label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoxProtocol {
    /// A 2-D box on every slice the label is on: each slice is encoded.
    PerSlice,
    /// The label's 3-D bounding box, propagated as the reference does ([`Prompt::Box3d`]: its
    /// end slices stay empty); a label on one slice only gets a 2-D box there.
    Box3d,
}

impl BoxProtocol {
    pub fn name(self) -> &'static str {
        match self {
            BoxProtocol::PerSlice => "2-D box per slice from the reference",
            BoxProtocol::Box3d => "3-D box from the reference",
        }
    }
}

/// The prompts `protocol` makes from `reference` (labels on the input's grid): for every
/// label above 0, in increasing order, its bounding box(es) labelled with its own value, so
/// that the result can be evaluated against `reference` without a mapping.
pub fn boxes_from_reference(reference: &LabelMap, protocol: BoxProtocol) -> Vec<Prompt> {
    let [ni, nj, _] = reference.geometry.dims;
    // (label, k) -> [i0, j0, i1, j1]
    let mut per_slice: std::collections::BTreeMap<(u16, usize), [usize; 4]> = Default::default();
    for (n, &label) in reference.labels.iter().enumerate() {
        if label == 0 {
            continue;
        }
        let (i, j, k) = (n % ni, (n / ni) % nj, n / (ni * nj));
        per_slice
            .entry((label, k))
            .and_modify(|b| *b = [b[0].min(i), b[1].min(j), b[2].max(i), b[3].max(j)])
            .or_insert([i, j, i, j]);
    }
    let box2d = |(label, k): (u16, usize), ij: [usize; 4]| Prompt::Box2d { ij, k, label };
    match protocol {
        BoxProtocol::PerSlice => per_slice
            .into_iter()
            .map(|(key, ij)| box2d(key, ij))
            .collect(),
        BoxProtocol::Box3d => {
            // label -> [i0, j0, k0, i1, j1, k1]
            let mut whole: std::collections::BTreeMap<u16, [usize; 6]> = Default::default();
            for (&(label, k), b) in &per_slice {
                whole
                    .entry(label)
                    .and_modify(|w| {
                        *w = [
                            w[0].min(b[0]),
                            w[1].min(b[1]),
                            w[2].min(k),
                            w[3].max(b[2]),
                            w[4].max(b[3]),
                            w[5].max(k),
                        ]
                    })
                    .or_insert([b[0], b[1], k, b[2], b[3], k]);
            }
            whole
                .into_iter()
                .map(|(label, w)| {
                    if w[2] == w[5] {
                        box2d((label, w[2]), [w[0], w[1], w[3], w[4]])
                    } else {
                        Prompt::Box3d { ijk: w, label }
                    }
                })
                .collect()
        }
    }
}

/// The reference's default CT window (soft tissue).
pub const DEFAULT_CT_WINDOW: CtWindow = CtWindow {
    level: 40.0,
    width: 400.0,
};

/// A CT window in Hounsfield units.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CtWindow {
    pub level: f64,
    pub width: f64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PromptOptions {
    /// None: guessed from the intensities ([`guess_modality`]).
    pub modality: Option<Modality>,
    /// Used for CT only.
    pub ct_window: CtWindow,
}

impl PromptOptions {
    /// How `volume`'s intensities become uint8 under these options: the setting, the modality,
    /// and why it was guessed (None when given).
    pub fn intensity(&self, volume: &Volume) -> (Intensity, Modality, Option<String>) {
        let (modality, guess) = match self.modality {
            Some(m) => (m, None),
            None => {
                let (m, why) = guess_modality(volume);
                (m, Some(why))
            }
        };
        let intensity = match modality {
            Modality::Ct => Intensity::Ct {
                level: self.ct_window.level,
                width: self.ct_window.width,
            },
            Modality::Mr => Intensity::Mr,
        };
        (intensity, modality, guess)
    }
}

impl Default for PromptOptions {
    fn default() -> Self {
        PromptOptions {
            modality: None,
            ct_window: DEFAULT_CT_WINDOW,
        }
    }
}

/// Where a slice's box (in the 256 frame) came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoxSource {
    /// The prompt's own box, scaled (`resize_box_to_256`).
    Prompt,
    /// The bounding box of slice `k`'s mask (3-D propagation).
    Neighbour(usize),
    /// The prompt's box again: the neighbour's resized mask was empty.
    PromptAfterEmptyNeighbour(usize),
}

/// One decoded slice.
#[derive(Clone, Debug, PartialEq)]
pub struct SliceReport {
    /// Index of the prompt in the call's list.
    pub prompt: usize,
    pub k: usize,
    /// Encoder time in ms; None when the slice's embedding was cached.
    pub encoder_ms: Option<f64>,
    /// Prompt encoder + mask decoder + post-processing, in ms; None when the cache held this
    /// box's mask on this slice.
    pub decoder_ms: Option<f64>,
    /// The box the decoder saw, `[x0, y0, x1, y1]` in the 256 frame.
    pub box_256: BoxXyxy,
    pub box_from: BoxSource,
    /// Pixels of this slice's mask.
    pub mask_pixels: usize,
}

/// Times of one call (ms) and what it did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PromptStats {
    /// The whole volume to uint8 (window / percentiles).
    pub intensity_ms: f64,
    /// Sum over encoded slices.
    pub encoder_ms: f64,
    /// Sum over decoded boxes.
    pub decoder_ms: f64,
    /// Slices encoded (each at most once while the cache holds it).
    pub encoded_slices: usize,
    /// Boxes decoded (one per prompt and slice, less those whose mask the cache held).
    pub decoded_boxes: usize,
    /// In the order they ran.
    pub slices: Vec<SliceReport>,
}

/// Floating-point operations of one encoder pass (one slice) and of one prompt encoder +
/// mask decoder call, in GFLOP: the figures the project's issue 8 gives for LiteMedSAM (a
/// multiply-add counts as two); not counted by insitu itself.
pub const ENCODER_GFLOP: f64 = 75.0;
pub const DECODER_GFLOP: f64 = 3.6;

/// The GFLOP a call computed: its encoder passes and decoder calls.
pub fn call_gflops(stats: &PromptStats) -> f64 {
    stats.encoded_slices as f64 * ENCODER_GFLOP + stats.decoded_boxes as f64 * DECODER_GFLOP
}

/// What [`segment`] returns.
#[derive(Clone, Debug)]
pub struct PromptSegmentation {
    /// On the input's grid (same geometry), 0 where no prompt's mask is.
    pub labels: LabelMap,
    pub modality: Modality,
    /// Whether `modality` was guessed (and why), or given.
    pub modality_guess: Option<String>,
    pub stats: PromptStats,
}

/// Per decoded slice: the report, how many slices the prompt has done of how many, and the
/// prompt's index of how many prompts.
#[derive(Clone, Copy, Debug)]
pub struct Progress<'a> {
    pub slice: &'a SliceReport,
    pub done: usize,
    pub total: usize,
    pub prompts: usize,
}

/// Why prompts cannot run. Prompts are numbered from 1 in messages.
#[derive(Clone, Debug, PartialEq)]
pub enum PromptError {
    NoPrompts,
    /// The volume has no voxels along some axis.
    EmptyVolume([usize; 3]),
    /// A minimum above its maximum.
    EmptyBox {
        prompt: usize,
        detail: String,
    },
    /// A box coordinate outside the volume.
    OutsideVolume {
        prompt: usize,
        detail: String,
    },
    /// A 2-D prompt's slice beyond the volume's last one.
    SliceOutOfRange {
        prompt: usize,
        k: usize,
        depth: usize,
    },
    /// A 3-D box must span at least two slices (`k0 < k1`), as the reference requires.
    FlatBox3d {
        prompt: usize,
        k: usize,
    },
    BadWindow(String),
    /// The model's device failed.
    Device(String),
}

impl fmt::Display for PromptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PromptError::NoPrompts => write!(f, "no prompts: give at least one box"),
            PromptError::EmptyVolume(d) => {
                write!(f, "the volume is empty ({} x {} x {})", d[0], d[1], d[2])
            }
            PromptError::EmptyBox { prompt, detail } => {
                write!(f, "prompt {prompt}: empty box: {detail}")
            }
            PromptError::OutsideVolume { prompt, detail } => {
                write!(f, "prompt {prompt}: box outside the volume: {detail}")
            }
            PromptError::SliceOutOfRange { prompt, k, depth } => write!(
                f,
                "prompt {prompt}: slice {k} is out of range (the volume has slices 0..={})",
                depth - 1
            ),
            PromptError::FlatBox3d { prompt, k } => write!(
                f,
                "prompt {prompt}: a 3-D box must span at least two slices (k0 < k1), got k0 = k1 = {k}; \
                 use a 2-D box on slice {k}"
            ),
            PromptError::BadWindow(m) => write!(f, "CT window: {m}"),
            PromptError::Device(m) => write!(f, "LiteMedSAM on its device: {m}"),
        }
    }
}

impl std::error::Error for PromptError {}

/// Checks prompts against a volume of `dims` (i, j, k) without running anything.
pub fn check_prompts(dims: [usize; 3], prompts: &[Prompt]) -> Result<(), PromptError> {
    if prompts.is_empty() {
        return Err(PromptError::NoPrompts);
    }
    if dims.contains(&0) {
        return Err(PromptError::EmptyVolume(dims));
    }
    let axes = ["i", "j", "k"];
    for (n, p) in prompts.iter().enumerate() {
        let prompt = n + 1;
        // (axis, min, max) per boxed axis
        let spans: Vec<(usize, usize, usize)> = match *p {
            Prompt::Box2d { ij, k, .. } => {
                if k >= dims[2] {
                    return Err(PromptError::SliceOutOfRange {
                        prompt,
                        k,
                        depth: dims[2],
                    });
                }
                vec![(0, ij[0], ij[2]), (1, ij[1], ij[3])]
            }
            Prompt::Box3d { ijk, .. } => (0..3).map(|a| (a, ijk[a], ijk[a + 3])).collect(),
        };
        for &(axis, lo, hi) in &spans {
            let name = axes[axis];
            if lo > hi {
                return Err(PromptError::EmptyBox {
                    prompt,
                    detail: format!("{name}0 = {lo} > {name}1 = {hi} (indices are inclusive)"),
                });
            }
            if hi >= dims[axis] {
                return Err(PromptError::OutsideVolume {
                    prompt,
                    detail: format!(
                        "{name}1 = {hi}, but the volume has {name} = 0..={} ({} x {} x {} voxels)",
                        dims[axis] - 1,
                        dims[0],
                        dims[1],
                        dims[2]
                    ),
                });
            }
        }
        if let Prompt::Box3d { ijk, .. } = *p {
            if ijk[2] == ijk[5] {
                return Err(PromptError::FlatBox3d { prompt, k: ijk[2] });
            }
        }
    }
    Ok(())
}

/// Runs `prompts` on `volume` with `model` (any device) and overlays their masks into one
/// label map on the volume's grid. `cache` must have been used with this volume and model
/// only (or be new); `now` is a clock in ms (the core has none of its own on the web);
/// `progress` hears of every decoded slice.
pub async fn segment(
    model: &LiteMedSam,
    volume: &Volume,
    prompts: &[Prompt],
    options: &PromptOptions,
    cache: &mut PromptCache,
    now: &dyn Fn() -> f64,
    progress: &mut dyn FnMut(Progress),
) -> Result<PromptSegmentation, PromptError> {
    let dims = volume.geometry.dims;
    check_prompts(dims, prompts)?;
    let CtWindow { level, width } = options.ct_window;
    if !(level.is_finite() && width.is_finite() && width > 0.0) {
        return Err(PromptError::BadWindow(format!(
            "level {level}, width {width}: the width must be positive"
        )));
    }
    let (intensity, modality, modality_guess) = options.intensity(volume);
    let mut stats = PromptStats::default();
    let started = now();
    let volume_u8 = cache.volume_u8(volume, intensity);
    stats.intensity_ms = now() - started;

    // A slice is `height` rows (j) of `width` columns (i).
    let (width, height) = (dims[0], dims[1]);
    let mut labels = vec![0u16; volume.data.len()];
    let mut session = Session {
        model,
        cache,
        volume_u8: &volume_u8,
        dims,
        now,
    };
    for (n, prompt) in prompts.iter().enumerate() {
        let label = prompt.label();
        match *prompt {
            Prompt::Box2d { ij, k, .. } => {
                let b = [ij[0], ij[1], ij[2], ij[3]].map(|v| v as i64);
                let box_256 = box_to_256(b, height, width);
                let (mask, report) = session
                    .decode(n, k, box_256, BoxSource::Prompt, &mut stats)
                    .await?;
                overlay(&mut labels, dims, k, &mask, label);
                progress(Progress {
                    slice: &report,
                    done: 1,
                    total: 1,
                    prompts: prompts.len(),
                });
                stats.slices.push(report);
            }
            Prompt::Box3d { ijk, .. } => {
                let first = [ijk[0], ijk[1], ijk[3], ijk[4]].map(|v| v as i64);
                let first_256 = box_to_256(first, height, width);
                let order = propagation_order(ijk[2], ijk[5]);
                let middle = order[0];
                // this prompt's masks so far (the reference's segs_3d_temp), by slice
                let mut masks: HashMap<usize, Vec<u8>> = HashMap::new();
                let mask_value = label.min(255) as u8;
                for (done, &k) in order.iter().enumerate() {
                    let (box_256, from) = if k == middle {
                        (first_256, BoxSource::Prompt)
                    } else {
                        let neighbour = if k > middle { k - 1 } else { k + 1 };
                        let previous = &masks[&neighbour];
                        match box_from_neighbour_mask(previous, height, width) {
                            Some(b) => (b, BoxSource::Neighbour(neighbour)),
                            None => (first_256, BoxSource::PromptAfterEmptyNeighbour(neighbour)),
                        }
                    };
                    let (mask, report) = session.decode(n, k, box_256, from, &mut stats).await?;
                    overlay(&mut labels, dims, k, &mask, label);
                    masks.insert(k, mask.iter().map(|&v| v * mask_value).collect());
                    progress(Progress {
                        slice: &report,
                        done: done + 1,
                        total: order.len(),
                        prompts: prompts.len(),
                    });
                    stats.slices.push(report);
                }
            }
        }
    }
    Ok(PromptSegmentation {
        labels: LabelMap {
            geometry: volume.geometry.clone(),
            labels,
        },
        modality,
        modality_guess,
        stats,
    })
}

/// Writes `label` where `mask` (one slice, rows j, columns i) is set: later prompts win.
fn overlay(labels: &mut [u16], dims: [usize; 3], k: usize, mask: &[u8], label: u16) {
    let n = dims[0] * dims[1];
    for (l, &m) in labels[k * n..(k + 1) * n].iter_mut().zip(mask) {
        if m > 0 {
            *l = label;
        }
    }
}

/// What a caller keeps between [`segment`] calls on one volume with one model on one device.
pub struct PromptCache {
    /// The volume as uint8, and the intensity setting it was made with.
    volume_u8: Option<(Intensity, Arc<[u8]>)>,
    /// Slice k -> (embedding, resized height, resized width), at most `max_embeddings`.
    embeddings: HashMap<usize, (Tensor<4>, usize, usize)>,
    /// Slices in the order they were encoded: the oldest is dropped first.
    encoded: VecDeque<usize>,
    max_embeddings: usize,
    /// (slice, box in the 256 frame) -> mask, at most `max_mask_bytes` in all.
    masks: HashMap<(usize, BoxXyxy), Vec<u8>>,
    mask_bytes: usize,
    max_mask_bytes: usize,
}

/// Embeddings a cache keeps by default: 64 slices, 256 MiB.
pub const DEFAULT_MAX_EMBEDDINGS: usize = 64;

/// Decoded masks a cache keeps by default, in bytes.
pub const DEFAULT_MAX_MASK_BYTES: usize = 128 << 20;

impl Default for PromptCache {
    fn default() -> Self {
        PromptCache::new(DEFAULT_MAX_EMBEDDINGS, DEFAULT_MAX_MASK_BYTES)
    }
}

impl PromptCache {
    pub fn new(max_embeddings: usize, max_mask_bytes: usize) -> PromptCache {
        PromptCache {
            volume_u8: None,
            embeddings: HashMap::new(),
            encoded: VecDeque::new(),
            max_embeddings: max_embeddings.max(1),
            masks: HashMap::new(),
            mask_bytes: 0,
            max_mask_bytes,
        }
    }

    /// Slices whose embedding the cache holds.
    pub fn embedded_slices(&self) -> usize {
        self.embeddings.len()
    }

    /// The uint8 volume for `intensity`, made unless the cache has it; a new one drops every
    /// embedding and mask made from the old.
    fn volume_u8(&mut self, volume: &Volume, intensity: Intensity) -> Arc<[u8]> {
        match &self.volume_u8 {
            Some((had, volume_u8)) if *had == intensity => volume_u8.clone(),
            _ => {
                *self = PromptCache::new(self.max_embeddings, self.max_mask_bytes);
                let volume_u8: Arc<[u8]> = volume_to_u8(&volume.data, intensity).into();
                self.volume_u8 = Some((intensity, volume_u8.clone()));
                volume_u8
            }
        }
    }

    fn keep_embedding(&mut self, k: usize, embedded: (Tensor<4>, usize, usize)) {
        while self.encoded.len() >= self.max_embeddings {
            if let Some(old) = self.encoded.pop_front() {
                self.embeddings.remove(&old);
            }
        }
        self.encoded.push_back(k);
        self.embeddings.insert(k, embedded);
    }

    fn keep_mask(&mut self, key: (usize, BoxXyxy), mask: &[u8]) {
        if self.mask_bytes + mask.len() > self.max_mask_bytes {
            self.masks.clear();
            self.mask_bytes = 0;
        }
        if mask.len() <= self.max_mask_bytes {
            self.mask_bytes += mask.len();
            self.masks.insert(key, mask.to_vec());
        }
    }
}

/// One call's model, clock and cache.
struct Session<'a> {
    model: &'a LiteMedSam,
    cache: &'a mut PromptCache,
    volume_u8: &'a [u8],
    dims: [usize; 3],
    now: &'a dyn Fn() -> f64,
}

impl Session<'_> {
    /// Slice `k`'s mask (0/1, rows j, columns i) for `box_256`, from the cache or by decoding
    /// (and encoding the slice unless the cache holds its embedding).
    async fn decode(
        &mut self,
        prompt: usize,
        k: usize,
        box_256: BoxXyxy,
        box_from: BoxSource,
        stats: &mut PromptStats,
    ) -> Result<(Vec<u8>, SliceReport), PromptError> {
        let report = |mask: &[u8], encoder_ms, decoder_ms| SliceReport {
            prompt,
            k,
            encoder_ms,
            decoder_ms,
            box_256,
            box_from,
            mask_pixels: mask.iter().map(|&v| v as usize).sum(),
        };
        if let Some(mask) = self.cache.masks.get(&(k, box_256)) {
            return Ok((mask.clone(), report(mask, None, None)));
        }
        let device = self.model.decoder.device().clone();
        let (width, height) = (self.dims[0], self.dims[1]);
        let mut encoder_ms = None;
        if !self.cache.embeddings.contains_key(&k) {
            let started = (self.now)();
            let input = encoder_input(plane(self.volume_u8, self.dims, k), height, width);
            let image = Tensor::<4>::from_data(
                TensorData::new(input.tensor, [1, 3, IMAGE_SIZE, IMAGE_SIZE]),
                &device,
            );
            let embedding = self.model.encoder.forward(image);
            // wait for the device (a 4-byte read) so that the time is the encoder's
            read_f32(embedding.clone().sum())
                .await
                .map_err(PromptError::Device)?;
            let ms = (self.now)() - started;
            encoder_ms = Some(ms);
            stats.encoder_ms += ms;
            stats.encoded_slices += 1;
            self.cache
                .keep_embedding(k, (embedding, input.resized_height, input.resized_width));
        }
        let (embedding, resized_height, resized_width) = &self.cache.embeddings[&k];
        let started = (self.now)();
        let (logits, _iou) = self
            .model
            .decoder
            .decode_to_host(embedding, box_256.map(|v| v as f32))
            .await
            .map_err(PromptError::Device)?;
        let mask = mask_from_low_res(
            &logits,
            IMAGE_SIZE,
            *resized_height,
            *resized_width,
            height,
            width,
        );
        let decoder_ms = (self.now)() - started;
        stats.decoder_ms += decoder_ms;
        stats.decoded_boxes += 1;
        self.cache.keep_mask((k, box_256), &mask);
        let report = report(&mask, encoder_ms, Some(decoder_ms));
        Ok((mask, report))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_are_checked_against_the_volume() {
        let dims = [10, 8, 5];
        let ok = Prompt::Box2d {
            ij: [0, 0, 9, 7],
            k: 4,
            label: 1,
        };
        assert_eq!(check_prompts(dims, &[ok]), Ok(()));
        assert_eq!(check_prompts(dims, &[]), Err(PromptError::NoPrompts));
        let slice = Prompt::Box2d {
            ij: [0, 0, 9, 7],
            k: 5,
            label: 1,
        };
        let e = check_prompts(dims, &[ok, slice]).unwrap_err();
        assert!(matches!(
            e,
            PromptError::SliceOutOfRange {
                prompt: 2,
                k: 5,
                depth: 5
            }
        ));
        assert!(e.to_string().contains("0..=4"), "{e}");
        let outside = Prompt::Box2d {
            ij: [0, 0, 10, 7],
            k: 0,
            label: 1,
        };
        let e = check_prompts(dims, &[outside]).unwrap_err();
        assert!(e.to_string().contains("i1 = 10"), "{e}");
        let empty = Prompt::Box2d {
            ij: [3, 5, 4, 4],
            k: 0,
            label: 1,
        };
        let e = check_prompts(dims, &[empty]).unwrap_err();
        assert!(e.to_string().contains("j0 = 5 > j1 = 4"), "{e}");
        let flat = Prompt::Box3d {
            ijk: [0, 0, 2, 3, 3, 2],
            label: 1,
        };
        assert!(matches!(
            check_prompts(dims, &[flat]),
            Err(PromptError::FlatBox3d { prompt: 1, k: 2 })
        ));
        let deep = Prompt::Box3d {
            ijk: [0, 0, 2, 3, 3, 5],
            label: 1,
        };
        assert!(matches!(
            check_prompts(dims, &[deep]),
            Err(PromptError::OutsideVolume { .. })
        ));
    }

    /// A grid of 1 mm voxels at the origin.
    fn unit_grid(dims: [usize; 3]) -> crate::volume::Geometry {
        crate::volume::Geometry {
            dims,
            spacing: [1.0; 3],
            affine: [
                [1.0, 0.0, 0.0, 0.0],
                [0.0, 1.0, 0.0, 0.0],
                [0.0, 0.0, 1.0, 0.0],
                [0.0, 0.0, 0.0, 1.0],
            ],
            sform_code: 1,
            qform_code: 0,
        }
    }

    #[test]
    fn boxes_from_reference_are_each_labels_bounding_boxes() {
        let geometry = unit_grid([4, 3, 3]);
        let mut labels = vec![0u16; 36];
        let at = |i: usize, j: usize, k: usize| i + 4 * (j + 3 * k);
        labels[at(1, 0, 0)] = 2;
        labels[at(3, 2, 0)] = 2;
        labels[at(2, 1, 2)] = 2;
        labels[at(0, 1, 1)] = 5;
        let reference = LabelMap { geometry, labels };
        assert_eq!(
            boxes_from_reference(&reference, BoxProtocol::PerSlice),
            vec![
                Prompt::Box2d {
                    ij: [1, 0, 3, 2],
                    k: 0,
                    label: 2
                },
                Prompt::Box2d {
                    ij: [2, 1, 2, 1],
                    k: 2,
                    label: 2
                },
                Prompt::Box2d {
                    ij: [0, 1, 0, 1],
                    k: 1,
                    label: 5
                },
            ]
        );
        assert_eq!(
            boxes_from_reference(&reference, BoxProtocol::Box3d),
            vec![
                Prompt::Box3d {
                    ijk: [1, 0, 0, 3, 2, 2],
                    label: 2
                },
                Prompt::Box2d {
                    ij: [0, 1, 0, 1],
                    k: 1,
                    label: 5
                },
            ]
        );
        let prompts = boxes_from_reference(&reference, BoxProtocol::Box3d);
        assert_eq!(check_prompts([4, 3, 3], &prompts), Ok(()));
    }

    #[test]
    fn modality_is_guessed_from_hounsfield_units() {
        let geometry = unit_grid([2, 1, 1]);
        let ct = Volume {
            geometry: geometry.clone(),
            data: vec![-1024.0, 300.0],
        };
        assert_eq!(guess_modality(&ct).0, Modality::Ct);
        let mr = Volume {
            geometry,
            data: vec![-47.0, 833.0],
        };
        let (m, why) = guess_modality(&mr);
        assert_eq!(m, Modality::Mr);
        assert!(why.contains("-47"), "{why}");
    }
}
