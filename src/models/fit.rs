//! Does an input fit a model? The model card's `accepts` rules checked against a volume, as
//! warnings the CLI prints and the page shows before a run; the user may go on regardless.

use super::ModelEntry;
use crate::volume::modality::guess_modality;
use crate::volume::Volume;

/// Plain-words warnings, one per rule `volume` (named `file`) breaks; empty when it fits.
pub fn warnings(entry: &ModelEntry, volume: &Volume, file: &str) -> Vec<String> {
    let card = &entry.card;
    let accepts = &card.accepts;
    let made_for = format!(
        "{} was made for {} of the {}",
        entry.name, card.modality, card.body_region
    );
    let mut out = Vec::new();
    let (modality, why) = guess_modality(volume);
    if !accepts.modalities.is_empty() && !accepts.modalities.contains(&modality) {
        out.push(format!(
            "{file} looks like {} ({why}); {made_for}: its labels may mean nothing here.",
            modality.name()
        ));
    }
    let g = &volume.geometry;
    let extent = [0, 1, 2].map(|a| g.dims[a] as f64 * g.spacing[a]);
    if let Some(limit) = accepts.max_extent_mm {
        if extent.iter().any(|&e| e > limit) {
            out.push(format!(
                "{file} covers {:.0} x {:.0} x {:.0} mm, more than the {limit:.0} mm {made_for} \
                 fits in: crop it to that region first, or expect labels outside it.",
                extent[0], extent[1], extent[2]
            ));
        }
    }
    if let Some(axis) = (0..3).find(|&a| g.dims[a] < accepts.min_voxels_per_axis) {
        out.push(format!(
            "{file} has only {} voxel(s) along axis {axis} ({} x {} x {}); {made_for} and needs \
             at least {} along each axis (a volume, not a slice).",
            g.dims[axis], g.dims[0], g.dims[1], g.dims[2], accepts.min_voxels_per_axis
        ));
    }
    out
}
