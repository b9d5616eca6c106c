//! Segmentation quality against reference labels, per label, in physical units.
//!
//! [`evaluate`] compares a predicted [`LabelMap`] with a reference on the same grid and reports,
//! for each label: Dice, IoU (Jaccard), HD95, ASSD, NSD (surface Dice at a tolerance τ, default
//! 2 mm), and the predicted and reference volumes in mL with their difference.
//!
//! # Definitions
//!
//! The surface metrics follow DeepMind's `surface-distance` package (Nikolov et al. 2018,
//! <https://arxiv.org/abs/1809.04430>; PyPI `surface-distance` 0.1, which is the
//! google-deepmind/surface-distance code); `surface.rs` is a port of its algorithm and
//! `tables.rs` carries its marching-cubes surfel table. Surfaces are made of surface elements
//! (surfels) at voxel *corners*: a corner whose 2x2x2 neighbourhood is neither all inside nor
//! all outside the mask is on the surface, and its area (mm², from the neighbourhood code and
//! the voxel spacing) weights it. Distances between corners are exact Euclidean distances in mm
//! (`edt.rs`, a separable Felzenszwalb–Huttenlocher transform with anisotropic spacing).
//!
//! - **Dice** `2|P∩R| / (|P|+|R|)` and **IoU** `|P∩R| / |P∪R|`, over voxels.
//! - **HD95** (`compute_robust_hausdorff(·, 95)`): for each direction (reference→prediction and
//!   prediction→reference) the area-weighted 95th percentile of the surfel distances, i.e. the
//!   smallest sorted distance whose cumulative area fraction reaches 0.95; the larger of the two.
//! - **ASSD**: the area-weighted mean distance over the surfels of *both* surfaces,
//!   `(Σ_R a·d(·,P) + Σ_P a·d(·,R)) / (Σ_R a + Σ_P a)` — the pooled "average symmetric surface
//!   distance" of Heimann et al. 2009 and Metrics Reloaded (which calls the mean of the two
//!   directed means "MASD"). DeepMind's `compute_average_surface_distance` returns the two
//!   directed means; ASSD is their area-weighted combination.
//! - **NSD** (`compute_surface_dice_at_tolerance(·, τ)`): the surfel area of both surfaces lying
//!   within τ mm of the other surface, over the total surfel area of both.
//! - **Volumes**: voxel count × voxel volume (product of the voxel spacing) / 1000, in mL;
//!   `vol_diff_ml = vol_pred_ml − vol_ref_ml` (signed: positive means over-segmentation).
//!
//! Distances use the grid's voxel spacing (NIfTI pixdim) along the voxel axes; a rotation in the
//! affine does not change them.
//!
//! # Edge cases (Metrics Reloaded, Maier-Hein et al. 2024, discusses these)
//!
//! | case | Dice | IoU | NSD | HD95 | ASSD |
//! |---|---|---|---|---|---|
//! | both empty | 1 | 1 | 1 | 0 | 0 |
//! | exactly one empty | 0 | 0 | 0 | +∞ | +∞ |
//!
//! *Both empty* means the label is in neither map (it was asked for through
//! [`EvalOptions::labels`] or a mapping). Nothing was to be found and nothing was predicted, so
//! the prediction is reported as perfect rather than NaN: a NaN would poison any later
//! arithmetic and tells the user nothing more. Such labels are still *excluded* from
//! [`Report::mean`] (the mean runs over the labels present in either map), so the convention
//! never inflates a summary. DeepMind's package returns NaN Dice, NaN NSD, NaN average distance
//! (0/0) and +∞ Hausdorff here.
//!
//! *One empty* (a missed structure or a hallucinated one): no surface to measure a distance to,
//! so HD95 and ASSD are +∞ — as DeepMind's package returns for the Hausdorff distance (its
//! directed average is +∞ one way and 0/0 = NaN the other; we report +∞). NSD is 0 (DeepMind:
//! 0 too). In JSON an infinite distance is written as `null` and the label carries
//! `"infinite_distance": true` and `"empty": "reference"` or `"prediction"`; in CSV it is `inf`.
//! The mean HD95/ASSD runs over the labels with finite distances only (their count is
//! `labels_with_distances` in the mean), while a miss still counts as 0 in the mean Dice, IoU
//! and NSD.
//!
//! # Grids
//!
//! Both maps must be on the same grid: the same dimensions, voxel spacing within 1e-3 mm, and
//! affines that place every corner of the volume within 1e-3 mm of each other. Otherwise
//! [`evaluate`] fails with a [`MetricsError`] that says what differs; resample first.
//!
//! # Cost
//!
//! One pass over the volume counts voxels and finds each label's bounding box. The surface
//! work for a label then runs on the corner grid of the bounding box of (prediction ∪ reference)
//! padded by one voxel — DeepMind's own crop, which is exact (every surfel lies inside) — so a
//! 104-label atlas costs about as much as the sum of its labels' boxes, not 104 full volumes.
//! Each direction needs one distance transform over that box: O(box voxels).

mod edt;
mod mapping;
mod surface;
mod tables;

use std::borrow::Cow;
use std::fmt::Write as _;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use crate::volume::LabelMap;

pub use mapping::{preset, presets, LabelMapping, LabelPair, SUBCORTICAL_LABELS};

use surface::BBox;

/// The percentile of the robust Hausdorff distance reported as `hd95`.
pub const HD_PERCENT: f64 = 95.0;
/// Default NSD tolerance (mm).
pub const DEFAULT_TOLERANCE_MM: f64 = 2.0;
/// How far apart (mm) the two grids may place a voxel and still count as the same grid.
pub const GRID_TOLERANCE_MM: f64 = 1e-3;

/// What to compute.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalOptions {
    /// NSD tolerance τ in mm.
    pub tolerance_mm: f64,
    /// Labels to report. `None`: the mapping's model labels when a mapping is given, else every
    /// label present in either map except background 0.
    pub labels: Option<Vec<u16>>,
}

impl Default for EvalOptions {
    fn default() -> EvalOptions {
        EvalOptions {
            tolerance_mm: DEFAULT_TOLERANCE_MM,
            labels: None,
        }
    }
}

/// Which of the two masks of a label is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Empty {
    /// Both have voxels: every metric is finite.
    None,
    /// The reference has no voxel of this label (a hallucinated structure).
    Reference,
    /// The prediction has no voxel of this label (a missed structure).
    Prediction,
    /// Neither has: reported as perfect, excluded from the mean.
    Both,
}

/// The metrics of one label (see the module docs for definitions and edge cases).
#[derive(Debug, Clone, PartialEq)]
pub struct LabelMetrics {
    pub label: u16,
    pub name: Option<String>,
    pub dice: f64,
    pub iou: f64,
    /// mm; +∞ when exactly one mask is empty.
    pub hd95: f64,
    /// mm; +∞ when exactly one mask is empty.
    pub assd: f64,
    pub nsd: f64,
    pub vol_pred_ml: f64,
    pub vol_ref_ml: f64,
    /// `vol_pred_ml - vol_ref_ml`.
    pub vol_diff_ml: f64,
    pub voxels_pred: u64,
    pub voxels_ref: u64,
    pub empty: Empty,
}

/// Means over the labels present in either map (background 0 and both-empty labels excluded).
/// `None` when there is nothing to average.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MeanMetrics {
    pub dice: Option<f64>,
    pub iou: Option<f64>,
    /// Over the `labels_with_distances` labels whose distances are finite.
    pub hd95: Option<f64>,
    /// Over the `labels_with_distances` labels whose distances are finite.
    pub assd: Option<f64>,
    pub nsd: Option<f64>,
    pub vol_pred_ml: Option<f64>,
    pub vol_ref_ml: Option<f64>,
    pub vol_diff_ml: Option<f64>,
    /// How many labels the mean runs over.
    pub labels: usize,
    /// How many of those have finite HD95/ASSD (both masks non-empty).
    pub labels_with_distances: usize,
}

/// The result of [`evaluate`]; serializes to the JSON shape described on [`Report::to_json`].
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// One entry per evaluated label, ascending.
    pub labels: Vec<LabelMetrics>,
    pub mean: MeanMetrics,
    pub tolerance_mm: f64,
    pub spacing_mm: [f64; 3],
    /// The mapping's name, when one was applied.
    pub mapping: Option<String>,
}

/// Why two label maps could not be compared.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricsError {
    #[error(
        "grids differ: dimensions {pred:?} (prediction) vs {reference:?} (reference); resample the prediction onto the reference grid first"
    )]
    DimsMismatch {
        pred: [usize; 3],
        reference: [usize; 3],
    },
    #[error(
        "grids differ: voxel spacing {pred:?} mm (prediction) vs {reference:?} mm (reference); resample the prediction onto the reference grid first"
    )]
    SpacingMismatch { pred: [f64; 3], reference: [f64; 3] },
    #[error(
        "grids differ: the affines place voxel {voxel:?} {offset_mm:.4} mm apart (tolerance {GRID_TOLERANCE_MM} mm); resample the prediction onto the reference grid first"
    )]
    AffineMismatch { voxel: [usize; 3], offset_mm: f64 },
    #[error("{which} label map has {got} voxels, its dimensions say {expected}")]
    BadLabelMap {
        which: &'static str,
        got: usize,
        expected: usize,
    },
    #[error("invalid label mapping: {0}")]
    InvalidMapping(String),
    #[error("invalid options: {0}")]
    InvalidOptions(String),
}

/// Compares `pred` with `reference` label by label (see the module docs).
///
/// `mapping` regroups the reference's codes onto the model's labels first (unmapped codes become
/// background); the prediction is taken as is.
pub fn evaluate(
    pred: &LabelMap,
    reference: &LabelMap,
    mapping: Option<&LabelMapping>,
    options: &EvalOptions,
) -> Result<Report, MetricsError> {
    check_grids(pred, reference)?;
    if !options.tolerance_mm.is_finite() || options.tolerance_mm < 0.0 {
        return Err(MetricsError::InvalidOptions(format!(
            "NSD tolerance must be a finite number of mm ≥ 0, got {}",
            options.tolerance_mm
        )));
    }
    if let Some(m) = mapping {
        m.validate()?;
    }

    let ref_labels = mapped_reference(reference, mapping);
    let dims = reference.geometry.dims;
    let stats = Stats::gather(&pred.labels, &ref_labels, dims);

    let mut labels: Vec<u16> = match (&options.labels, mapping) {
        (Some(l), _) => l.clone(),
        (None, Some(m)) => m.model_labels(),
        (None, None) => stats.present().filter(|&l| l != 0).collect(),
    };
    labels.sort_unstable();
    labels.dedup();

    let spacing = reference.geometry.spacing;
    let voxel_ml = spacing[0] * spacing[1] * spacing[2] / 1000.0;
    let area_table = tables::surface_area_table(spacing);

    let mut out = Vec::with_capacity(labels.len());
    for label in labels {
        let s = stats.get(label);
        let name = mapping.and_then(|m| m.name_of(label)).map(str::to_string);
        let (n_pred, n_ref, inter) = (s.n_pred, s.n_ref, s.inter);
        let empty = match (n_pred == 0, n_ref == 0) {
            (false, false) => Empty::None,
            (false, true) => Empty::Reference,
            (true, false) => Empty::Prediction,
            (true, true) => Empty::Both,
        };
        let (dice, iou, hd95, assd, nsd) = match empty {
            Empty::Both => (1.0, 1.0, 0.0, 0.0, 1.0),
            Empty::Reference | Empty::Prediction => (0.0, 0.0, f64::INFINITY, f64::INFINITY, 0.0),
            Empty::None => {
                let dice = 2.0 * inter as f64 / (n_pred + n_ref) as f64;
                let iou = inter as f64 / (n_pred + n_ref - inter) as f64;
                let bbox = union(s.bbox_pred, s.bbox_ref).expect("non-empty masks have boxes");
                let sd = surface::surface_distances(
                    &ref_labels,
                    &pred.labels,
                    label,
                    dims,
                    bbox,
                    spacing,
                    &area_table,
                );
                (
                    dice,
                    iou,
                    sd.robust_hausdorff(HD_PERCENT),
                    sd.assd(),
                    sd.surface_dice(options.tolerance_mm),
                )
            }
        };
        let vol_pred_ml = n_pred as f64 * voxel_ml;
        let vol_ref_ml = n_ref as f64 * voxel_ml;
        out.push(LabelMetrics {
            label,
            name,
            dice,
            iou,
            hd95,
            assd,
            nsd,
            vol_pred_ml,
            vol_ref_ml,
            vol_diff_ml: vol_pred_ml - vol_ref_ml,
            voxels_pred: n_pred,
            voxels_ref: n_ref,
            empty,
        });
    }

    let mean = mean_of(&out);
    Ok(Report {
        labels: out,
        mean,
        tolerance_mm: options.tolerance_mm,
        spacing_mm: spacing,
        mapping: mapping.map(|m| m.name.clone()),
    })
}

/// The reference's labels with `mapping` applied (unmapped codes become background).
fn mapped_reference<'a>(reference: &'a LabelMap, mapping: Option<&LabelMapping>) -> Cow<'a, [u16]> {
    match mapping {
        Some(m) => {
            let lut = m.reference_lut();
            Cow::Owned(reference.labels.iter().map(|&r| lut[r as usize]).collect())
        }
        None => Cow::Borrowed(&reference.labels),
    }
}

/// Error-map value of a voxel the prediction labels wrongly (it is not that label in the reference).
pub const FALSE_POSITIVE: u16 = 1;
/// Error-map value of a reference voxel the prediction misses (labels it background).
pub const FALSE_NEGATIVE: u16 = 2;

/// Where the prediction is wrong, on the reference grid: [`FALSE_POSITIVE`] where it assigns a
/// label the reference does not have there (including a wrong foreground label),
/// [`FALSE_NEGATIVE`] where it leaves a reference structure as background, 0 elsewhere.
pub fn error_map(
    pred: &LabelMap,
    reference: &LabelMap,
    mapping: Option<&LabelMapping>,
) -> Result<LabelMap, MetricsError> {
    check_grids(pred, reference)?;
    if let Some(m) = mapping {
        m.validate()?;
    }
    let ref_labels = mapped_reference(reference, mapping);
    let labels = pred
        .labels
        .iter()
        .zip(ref_labels.iter())
        .map(|(&p, &r)| match (p, r) {
            (p, r) if p == r => 0,
            (0, _) => FALSE_NEGATIVE,
            _ => FALSE_POSITIVE,
        })
        .collect();
    Ok(LabelMap {
        geometry: reference.geometry.clone(),
        labels,
    })
}

fn check_grids(pred: &LabelMap, reference: &LabelMap) -> Result<(), MetricsError> {
    for (which, map) in [("predicted", pred), ("reference", reference)] {
        let expected = map.geometry.voxel_count();
        if map.labels.len() != expected {
            return Err(MetricsError::BadLabelMap {
                which,
                got: map.labels.len(),
                expected,
            });
        }
    }
    let (gp, gr) = (&pred.geometry, &reference.geometry);
    if gp.dims != gr.dims {
        return Err(MetricsError::DimsMismatch {
            pred: gp.dims,
            reference: gr.dims,
        });
    }
    // (NaN counts as a mismatch: `within` is false for it.)
    let within = |x: f64| x <= GRID_TOLERANCE_MM;
    if (0..3).any(|a| !within((gp.spacing[a] - gr.spacing[a]).abs())) {
        return Err(MetricsError::SpacingMismatch {
            pred: gp.spacing,
            reference: gr.spacing,
        });
    }
    // The affines agree on the whole grid when they agree on its 8 corner voxels.
    let mut worst = ([0usize; 3], 0.0f64);
    for corner in 0..8 {
        let voxel = [0, 1, 2].map(|a| {
            if corner >> a & 1 == 1 {
                gr.dims[a].saturating_sub(1)
            } else {
                0
            }
        });
        let ijk = voxel.map(|v| v as f64);
        let (wp, wr) = (gp.voxel_to_world(ijk), gr.voxel_to_world(ijk));
        let d =
            ((wp[0] - wr[0]).powi(2) + (wp[1] - wr[1]).powi(2) + (wp[2] - wr[2]).powi(2)).sqrt();
        if d > worst.1 || d.is_nan() {
            worst = (voxel, d);
        }
    }
    if !within(worst.1) {
        return Err(MetricsError::AffineMismatch {
            voxel: worst.0,
            offset_mm: worst.1,
        });
    }
    Ok(())
}

/// Voxel counts and bounding boxes per label, gathered in one pass.
struct Stats {
    per_label: Vec<LabelStats>,
}

#[derive(Debug, Clone, Copy, Default)]
struct LabelStats {
    n_pred: u64,
    n_ref: u64,
    inter: u64,
    bbox_pred: Option<BBox>,
    bbox_ref: Option<BBox>,
}

fn include(b: &mut Option<BBox>, i0: usize, i1: usize, j: usize, k: usize) {
    match b {
        None => {
            *b = Some(BBox {
                lo: [i0, j, k],
                hi: [i1, j, k],
            })
        }
        Some(b) => {
            b.lo[0] = b.lo[0].min(i0);
            b.hi[0] = b.hi[0].max(i1);
            b.lo[1] = b.lo[1].min(j);
            b.hi[1] = b.hi[1].max(j);
            b.lo[2] = b.lo[2].min(k);
            b.hi[2] = b.hi[2].max(k);
        }
    }
}

fn union(a: Option<BBox>, b: Option<BBox>) -> Option<BBox> {
    match (a, b) {
        (Some(a), Some(b)) => Some(BBox {
            lo: [0, 1, 2].map(|x| a.lo[x].min(b.lo[x])),
            hi: [0, 1, 2].map(|x| a.hi[x].max(b.hi[x])),
        }),
        (a, None) => a,
        (None, b) => b,
    }
}

/// Calls `f(label, first, last)` for each run of equal labels in a row.
fn runs(row: &[u16], mut f: impl FnMut(u16, usize, usize)) {
    let mut start = 0;
    while start < row.len() {
        let label = row[start];
        let mut end = start + 1;
        while end < row.len() && row[end] == label {
            end += 1;
        }
        f(label, start, end - 1);
        start = end;
    }
}

impl Stats {
    fn gather(pred: &[u16], reference: &[u16], dims: [usize; 3]) -> Stats {
        let max = pred.iter().chain(reference).copied().max().unwrap_or(0) as usize;
        let mut per_label = vec![LabelStats::default(); max + 1];
        let nx = dims[0];
        if nx == 0 {
            return Stats { per_label };
        }
        for (row_index, (prow, rrow)) in pred
            .chunks_exact(nx)
            .zip(reference.chunks_exact(nx))
            .enumerate()
        {
            let (j, k) = (row_index % dims[1], row_index / dims[1]);
            runs(prow, |l, i0, i1| {
                let s = &mut per_label[l as usize];
                s.n_pred += (i1 - i0 + 1) as u64;
                include(&mut s.bbox_pred, i0, i1, j, k);
            });
            runs(rrow, |l, i0, i1| {
                let s = &mut per_label[l as usize];
                s.n_ref += (i1 - i0 + 1) as u64;
                include(&mut s.bbox_ref, i0, i1, j, k);
            });
            for (&p, &r) in prow.iter().zip(rrow) {
                if p == r {
                    per_label[p as usize].inter += 1;
                }
            }
        }
        Stats { per_label }
    }

    fn get(&self, label: u16) -> LabelStats {
        self.per_label
            .get(label as usize)
            .copied()
            .unwrap_or_default()
    }

    /// Labels with a voxel in either map, ascending.
    fn present(&self) -> impl Iterator<Item = u16> + '_ {
        self.per_label
            .iter()
            .enumerate()
            .filter(|(_, s)| s.n_pred + s.n_ref > 0)
            .map(|(l, _)| l as u16)
    }
}

fn mean_of(labels: &[LabelMetrics]) -> MeanMetrics {
    let counted: Vec<&LabelMetrics> = labels
        .iter()
        .filter(|m| m.label != 0 && m.empty != Empty::Both)
        .collect();
    let with_distances: Vec<&LabelMetrics> = counted
        .iter()
        .copied()
        .filter(|m| m.empty == Empty::None)
        .collect();
    let avg = |set: &[&LabelMetrics], f: fn(&LabelMetrics) -> f64| -> Option<f64> {
        (!set.is_empty()).then(|| set.iter().map(|m| f(m)).sum::<f64>() / set.len() as f64)
    };
    MeanMetrics {
        dice: avg(&counted, |m| m.dice),
        iou: avg(&counted, |m| m.iou),
        hd95: avg(&with_distances, |m| m.hd95),
        assd: avg(&with_distances, |m| m.assd),
        nsd: avg(&counted, |m| m.nsd),
        vol_pred_ml: avg(&counted, |m| m.vol_pred_ml),
        vol_ref_ml: avg(&counted, |m| m.vol_ref_ml),
        vol_diff_ml: avg(&counted, |m| m.vol_diff_ml),
        labels: counted.len(),
        labels_with_distances: with_distances.len(),
    }
}

/// `Some(x)` for finite `x`, `None` (JSON null) for ±∞ and NaN.
fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// The JSON object of one label.
#[derive(Serialize)]
struct LabelJson<'a> {
    name: Option<&'a str>,
    dice: f64,
    iou: f64,
    hd95: Option<f64>,
    assd: Option<f64>,
    nsd: f64,
    vol_pred_ml: f64,
    vol_ref_ml: f64,
    vol_diff_ml: f64,
    voxels_pred: u64,
    voxels_ref: u64,
    empty: Empty,
    infinite_distance: bool,
}

impl<'a> From<&'a LabelMetrics> for LabelJson<'a> {
    fn from(m: &'a LabelMetrics) -> LabelJson<'a> {
        LabelJson {
            name: m.name.as_deref(),
            dice: m.dice,
            iou: m.iou,
            hd95: finite(m.hd95),
            assd: finite(m.assd),
            nsd: m.nsd,
            vol_pred_ml: m.vol_pred_ml,
            vol_ref_ml: m.vol_ref_ml,
            vol_diff_ml: m.vol_diff_ml,
            voxels_pred: m.voxels_pred,
            voxels_ref: m.voxels_ref,
            empty: m.empty,
            infinite_distance: !(m.hd95.is_finite() && m.assd.is_finite()),
        }
    }
}

struct LabelsJson<'a>(&'a [LabelMetrics]);

impl Serialize for LabelsJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for m in self.0 {
            map.serialize_entry(&m.label.to_string(), &LabelJson::from(m))?;
        }
        map.end()
    }
}

impl Serialize for Report {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(6))?;
        map.serialize_entry("labels", &LabelsJson(&self.labels))?;
        map.serialize_entry("mean", &self.mean)?;
        map.serialize_entry("tolerance_mm", &self.tolerance_mm)?;
        map.serialize_entry("hd_percentile", &HD_PERCENT)?;
        map.serialize_entry("spacing_mm", &self.spacing_mm)?;
        map.serialize_entry("mapping", &self.mapping)?;
        map.end()
    }
}

impl Report {
    /// The metrics of one label, if it was evaluated.
    pub fn label(&self, label: u16) -> Option<&LabelMetrics> {
        self.labels.iter().find(|m| m.label == label)
    }

    /// JSON:
    /// `{"labels": {"<label>": {"name", "dice", "iou", "hd95", "assd", "nsd", "vol_pred_ml",
    /// "vol_ref_ml", "vol_diff_ml", "voxels_pred", "voxels_ref", "empty", "infinite_distance"}},
    /// "mean": {..., "labels", "labels_with_distances"}, "tolerance_mm", "hd_percentile",
    /// "spacing_mm", "mapping"}`. Infinite distances are `null` with `"infinite_distance": true`.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serializes")
    }

    /// CSV with a header row, one row per label and a last row `mean`. Infinite distances are
    /// written `inf`; a mean that has nothing to average is left empty.
    pub fn to_csv(&self) -> String {
        let mut s = String::from(
            "label,name,dice,iou,hd95,assd,nsd,vol_pred_ml,vol_ref_ml,vol_diff_ml,voxels_pred,voxels_ref,empty\n",
        );
        for m in &self.labels {
            let empty = match m.empty {
                Empty::None => "none",
                Empty::Reference => "reference",
                Empty::Prediction => "prediction",
                Empty::Both => "both",
            };
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{},{},{},{},{},{},{}",
                m.label,
                csv_field(m.name.as_deref().unwrap_or("")),
                m.dice,
                m.iou,
                m.hd95,
                m.assd,
                m.nsd,
                m.vol_pred_ml,
                m.vol_ref_ml,
                m.vol_diff_ml,
                m.voxels_pred,
                m.voxels_ref,
                empty
            );
        }
        let o = |x: Option<f64>| x.map(|v| v.to_string()).unwrap_or_default();
        let mm = &self.mean;
        let _ = writeln!(
            s,
            "mean,,{},{},{},{},{},{},{},{},,,",
            o(mm.dice),
            o(mm.iou),
            o(mm.hd95),
            o(mm.assd),
            o(mm.nsd),
            o(mm.vol_pred_ml),
            o(mm.vol_ref_ml),
            o(mm.vol_diff_ml)
        );
        s
    }
}

/// Quotes a CSV field when it needs it.
fn csv_field(v: &str) -> Cow<'_, str> {
    if v.contains([',', '"', '\n', '\r']) {
        Cow::Owned(format!("\"{}\"", v.replace('"', "\"\"")))
    } else {
        Cow::Borrowed(v)
    }
}
