//! Mapping reference label codes onto a model's labels.
//!
//! A reference segmentation often uses another label scheme than the model (FreeSurfer's aseg
//! codes against brainchop's 3 tissue classes, say). A [`LabelMapping`] groups reference codes
//! onto model labels; reference codes that no pair names become background (0).
//!
//! JSON form:
//! `{"name": "...", "pairs": [{"model": 1, "reference": [2, 41], "name": "White Matter"}, ...]}`
//!
//! # Presets
//!
//! [`presets`] maps FreeSurfer `aseg.mgz` / `aparc+aseg.mgz` (and `aparc.a2009s+aseg`) codes onto
//! two brainchop models. aseg and aparc+aseg share one preset per model: their codes do not
//! collide, aparc+aseg only replaces the cortex codes 3/42 by parcel codes.
//!
//! - `freesurfer_to_tissue_fast` (model5_gw_ae: 0 background, 1 white matter, 2 grey matter).
//!   brainchop documents no FreeSurfer grouping for this model, so the grouping was read off
//!   brainchop's own outputs: on the sample `t1_crop`, the voxels its DKatlas model
//!   (FreeSurfer-named structures) gives each structure were cross-tabulated with tissue_fast's
//!   labels. Cerebral and cerebellar white matter, the brain stem (80 % WM) and the corpus
//!   callosum came out white matter; cortex, cerebellar cortex and the subcortical grey nuclei
//!   (thalamus, caudate, putamen, pallidum, hippocampus, amygdala, accumbens, ventral DC) grey
//!   matter; ventricles and CSF background. So: white matter = 2, 41 (cerebral WM), 7, 46
//!   (cerebellar WM), 16 (brain stem), 77–79 (WM hypointensities), 251–255 (corpus callosum);
//!   grey matter = 3, 42 (cortex), 8, 47 (cerebellar cortex), 10, 49, 11, 50, 12, 51, 13, 52,
//!   17, 53, 18, 54, 26, 58, 28, 60, and the cortical parcels 1000–1035, 2000–2035
//!   (Desikan-Killiany / DKT) and 11100–11175, 12100–12175 (Destrieux). Everything else
//!   (ventricles, CSF, vessels, choroid plexus, optic chiasm, ...) is background.
//! - `freesurfer_to_subcortical` (model30chan18cls, the brainchop CLI's `subcortical`): the 17
//!   structure names of the model's colormap.json are matched to FreeSurfer's colour-table names
//!   with the hemisphere prefix (`Left-`/`Right-`) removed, so `Left-Putamen` (12) and
//!   `Right-Putamen` (51) both map to `Putamen`. Two FreeSurfer names differ from the
//!   model's and are aliased: `Inf-Lat-Vent` → `Inferior-Lateral-Ventricle` and the older
//!   `Thalamus-Proper` → `Thalamus` (same codes 10/49). Beyond names, the cortical parcels of
//!   aparc+aseg (ranges as above) count as `Cerebral-Cortex`, and the corpus callosum
//!   (251–255) and WM hypointensities (77–79) as `Cerebral-White-Matter`, which is where aseg
//!   itself puts them before the corpus callosum is segmented. Unnamed codes are background.

use serde::{Deserialize, Serialize};

use super::MetricsError;

/// One model label and the reference codes grouped onto it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelPair {
    pub model: u16,
    pub reference: Vec<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Reference codes grouped onto model labels (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelMapping {
    #[serde(default)]
    pub name: String,
    pub pairs: Vec<LabelPair>,
}

impl LabelMapping {
    /// Parses and validates the JSON form.
    pub fn from_json(json: &str) -> Result<LabelMapping, MetricsError> {
        let mapping: LabelMapping = serde_json::from_str(json)
            .map_err(|e| MetricsError::InvalidMapping(format!("cannot parse mapping JSON: {e}")))?;
        mapping.validate()?;
        Ok(mapping)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a mapping always serializes")
    }

    /// Checks that no model label and no reference code appears twice.
    pub fn validate(&self) -> Result<(), MetricsError> {
        let mut model_seen = std::collections::BTreeSet::new();
        let mut ref_owner = std::collections::BTreeMap::new();
        for pair in &self.pairs {
            if !model_seen.insert(pair.model) {
                return Err(MetricsError::InvalidMapping(format!(
                    "model label {} appears in more than one pair",
                    pair.model
                )));
            }
            for &r in &pair.reference {
                if let Some(prev) = ref_owner.insert(r, pair.model) {
                    return Err(MetricsError::InvalidMapping(format!(
                        "reference label {r} is mapped to both model labels {prev} and {}",
                        pair.model
                    )));
                }
            }
        }
        Ok(())
    }

    /// Lookup table reference code → model label (65536 entries; unmapped codes → 0).
    pub fn reference_lut(&self) -> Vec<u16> {
        let mut lut = vec![0u16; 1 << 16];
        for pair in &self.pairs {
            for &r in &pair.reference {
                lut[r as usize] = pair.model;
            }
        }
        lut
    }

    /// The model labels, in pair order.
    pub fn model_labels(&self) -> Vec<u16> {
        self.pairs.iter().map(|p| p.model).collect()
    }

    /// The display name of a model label, if the mapping gives one.
    pub fn name_of(&self, model: u16) -> Option<&str> {
        self.pairs
            .iter()
            .find(|p| p.model == model)
            .and_then(|p| p.name.as_deref())
    }
}

/// FreeSurfer colour-table entries used by the presets (FreeSurferColorLUT.txt).
const FREESURFER_ASEG: &[(u16, &str)] = &[
    (2, "Left-Cerebral-White-Matter"),
    (3, "Left-Cerebral-Cortex"),
    (4, "Left-Lateral-Ventricle"),
    (5, "Left-Inf-Lat-Vent"),
    (7, "Left-Cerebellum-White-Matter"),
    (8, "Left-Cerebellum-Cortex"),
    (10, "Left-Thalamus-Proper"),
    (11, "Left-Caudate"),
    (12, "Left-Putamen"),
    (13, "Left-Pallidum"),
    (14, "3rd-Ventricle"),
    (15, "4th-Ventricle"),
    (16, "Brain-Stem"),
    (17, "Left-Hippocampus"),
    (18, "Left-Amygdala"),
    (24, "CSF"),
    (26, "Left-Accumbens-area"),
    (28, "Left-VentralDC"),
    (30, "Left-vessel"),
    (31, "Left-choroid-plexus"),
    (41, "Right-Cerebral-White-Matter"),
    (42, "Right-Cerebral-Cortex"),
    (43, "Right-Lateral-Ventricle"),
    (44, "Right-Inf-Lat-Vent"),
    (46, "Right-Cerebellum-White-Matter"),
    (47, "Right-Cerebellum-Cortex"),
    (49, "Right-Thalamus-Proper"),
    (50, "Right-Caudate"),
    (51, "Right-Putamen"),
    (52, "Right-Pallidum"),
    (53, "Right-Hippocampus"),
    (54, "Right-Amygdala"),
    (58, "Right-Accumbens-area"),
    (60, "Right-VentralDC"),
    (62, "Right-vessel"),
    (63, "Right-choroid-plexus"),
    (72, "5th-Ventricle"),
    (77, "WM-hypointensities"),
    (78, "Left-WM-hypointensities"),
    (79, "Right-WM-hypointensities"),
    (80, "non-WM-hypointensities"),
    (85, "Optic-Chiasm"),
    (251, "CC_Posterior"),
    (252, "CC_Mid_Posterior"),
    (253, "CC_Central"),
    (254, "CC_Mid_Anterior"),
    (255, "CC_Anterior"),
];

/// Cortical parcel codes of aparc+aseg (DK/DKT) and aparc.a2009s+aseg (Destrieux).
fn cortical_parcels() -> impl Iterator<Item = u16> {
    (1000..=1035)
        .chain(2000..=2035)
        .chain(11100..=11175)
        .chain(12100..=12175)
}

/// The label names of brainchop's model30chan18cls (its colormap.json, label 0 "Unknown" omitted).
pub const SUBCORTICAL_LABELS: [&str; 17] = [
    "Cerebral-White-Matter",
    "Cerebral-Cortex",
    "Lateral-Ventricle",
    "Inferior-Lateral-Ventricle",
    "Cerebellum-White-Matter",
    "Cerebellum-Cortex",
    "Thalamus",
    "Caudate",
    "Putamen",
    "Pallidum",
    "3rd-Ventricle",
    "4th-Ventricle",
    "Brain-Stem",
    "Hippocampus",
    "Amygdala",
    "Accumbens-area",
    "VentralDC",
];

/// A FreeSurfer name as the subcortical model names it: hemisphere prefix removed, aliases applied.
fn subcortical_name(freesurfer: &str) -> &str {
    let bare = freesurfer
        .strip_prefix("Left-")
        .or_else(|| freesurfer.strip_prefix("Right-"))
        .unwrap_or(freesurfer);
    match bare {
        "Inf-Lat-Vent" => "Inferior-Lateral-Ventricle",
        "Thalamus-Proper" | "Thalamus" => "Thalamus",
        other => other,
    }
}

fn freesurfer_to_subcortical() -> LabelMapping {
    let pairs = SUBCORTICAL_LABELS
        .iter()
        .enumerate()
        .map(|(i, &name)| {
            let mut reference: Vec<u16> = FREESURFER_ASEG
                .iter()
                .filter(|(_, fs)| subcortical_name(fs) == name)
                .map(|&(code, _)| code)
                .collect();
            match name {
                "Cerebral-Cortex" => reference.extend(cortical_parcels()),
                "Cerebral-White-Matter" => reference.extend([77, 78, 79, 251, 252, 253, 254, 255]),
                _ => {}
            }
            reference.sort_unstable();
            LabelPair {
                model: i as u16 + 1,
                reference,
                name: Some(name.to_string()),
            }
        })
        .collect();
    LabelMapping {
        name: "FreeSurfer aseg/aparc+aseg → brainchop subcortical (model30chan18cls)".into(),
        pairs,
    }
}

fn freesurfer_to_tissue_fast() -> LabelMapping {
    let white = vec![2, 7, 16, 41, 46, 77, 78, 79, 251, 252, 253, 254, 255];
    let mut grey: Vec<u16> = vec![
        3, 8, 10, 11, 12, 13, 17, 18, 26, 28, 42, 47, 49, 50, 51, 52, 53, 54, 58, 60,
    ];
    grey.extend(cortical_parcels());
    LabelMapping {
        name: "FreeSurfer aseg/aparc+aseg → brainchop tissue_fast (model5_gw_ae)".into(),
        pairs: vec![
            LabelPair {
                model: 1,
                reference: white,
                name: Some("White-Matter".into()),
            },
            LabelPair {
                model: 2,
                reference: grey,
                name: Some("Grey-Matter".into()),
            },
        ],
    }
}

/// Built-in mappings, by key (see the module docs for how each was derived).
pub fn presets() -> Vec<(&'static str, LabelMapping)> {
    vec![
        ("freesurfer_to_tissue_fast", freesurfer_to_tissue_fast()),
        ("freesurfer_to_subcortical", freesurfer_to_subcortical()),
    ]
}

/// One preset by key.
pub fn preset(key: &str) -> Option<LabelMapping> {
    presets()
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, m)| m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_complete() {
        for (key, m) in presets() {
            m.validate().unwrap_or_else(|e| panic!("{key}: {e}"));
            assert!(
                m.pairs.iter().all(|p| !p.reference.is_empty()),
                "{key}: empty pair"
            );
        }
        let sub = preset("freesurfer_to_subcortical").unwrap();
        let lut = sub.reference_lut();
        assert_eq!(lut[12], 9); // Left-Putamen → Putamen
        assert_eq!(lut[51], 9);
        assert_eq!(lut[44], 4); // Right-Inf-Lat-Vent
        assert_eq!(lut[49], 7); // Right-Thalamus(-Proper)
        assert_eq!(lut[1024], 2); // ctx-lh-precentral → Cerebral-Cortex
        assert_eq!(lut[24], 0); // CSF → background
        let tissue = preset("freesurfer_to_tissue_fast").unwrap().reference_lut();
        assert_eq!(
            (tissue[2], tissue[3], tissue[16], tissue[4], tissue[2035]),
            (1, 2, 1, 0, 2)
        );
    }

    #[test]
    fn json_round_trip_and_validation() {
        let m = LabelMapping::from_json(
            r#"{"name": "wm", "pairs": [{"model": 1, "reference": [2, 41], "name": "White Matter"}]}"#,
        )
        .unwrap();
        assert_eq!(m.pairs[0].reference, vec![2, 41]);
        assert_eq!(LabelMapping::from_json(&m.to_json()).unwrap(), m);
        let dup = r#"{"pairs": [{"model": 1, "reference": [2]}, {"model": 2, "reference": [2]}]}"#;
        assert!(matches!(
            LabelMapping::from_json(dup),
            Err(MetricsError::InvalidMapping(_))
        ));
    }
}
