//! CT or MR, guessed from a volume's intensities.

use super::Volume;

/// What kind of intensities a volume holds: LiteMedSAM reads them by it (`pre_CT_MR.py`'s two
/// branches), and model cards say which a model was trained on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Modality {
    /// Hounsfield units, windowed.
    Ct,
    /// Anything else: 0.5 / 99.5 % percentiles of the non-zero voxels.
    Mr,
}

impl Modality {
    pub fn name(self) -> &'static str {
        match self {
            Modality::Ct => "CT",
            Modality::Mr => "MR",
        }
    }
}

/// Below this minimum a volume is taken for CT: air is about -1000 HU and scanners pad with
/// -1024 or lower; MR intensities are non-negative (or barely negative after resampling).
pub const CT_MINIMUM_BELOW: f32 = -500.0;

/// The modality guessed from the intensities, and why (for the caller to say): CT when the
/// minimum is below [`CT_MINIMUM_BELOW`] (Hounsfield units), else MR.
pub fn guess_modality(volume: &Volume) -> (Modality, String) {
    let (min, max) = volume
        .data
        .iter()
        .filter(|v| v.is_finite())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    if min < CT_MINIMUM_BELOW {
        (
            Modality::Ct,
            format!("intensities {min} .. {max}: below {CT_MINIMUM_BELOW}, Hounsfield units (CT)"),
        )
    } else {
        (
            Modality::Mr,
            format!("intensities {min} .. {max}: none below {CT_MINIMUM_BELOW}, not Hounsfield units (MR)"),
        )
    }
}
