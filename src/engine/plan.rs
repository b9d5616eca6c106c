//! Splitting a volume into slabs that fit a memory budget.

/// A run over slices `input_start..input_end` (along the slowest axis) whose results are
/// kept for `output_start..output_end`; the rest is halo, computed only to be exact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slab {
    pub input_start: usize,
    pub input_end: usize,
    pub output_start: usize,
    pub output_end: usize,
}

/// Splits `depth` slices of `plane` voxels into slabs of at most `max_voxels` voxels each,
/// with a halo of `radius` slices on each inner side. None when not even one slice fits.
pub fn plan_slabs(
    depth: usize,
    plane: usize,
    radius: usize,
    max_voxels: usize,
) -> Option<Vec<Slab>> {
    let max_slices = max_voxels / plane.max(1);
    if max_slices >= depth {
        return Some(vec![Slab {
            input_start: 0,
            input_end: depth,
            output_start: 0,
            output_end: depth,
        }]);
    }
    let interior = max_slices.checked_sub(2 * radius).filter(|&n| n > 0)?;
    let mut slabs = Vec::new();
    let mut start = 0;
    while start < depth {
        let end = (start + interior).min(depth);
        slabs.push(Slab {
            input_start: start.saturating_sub(radius),
            input_end: (end + radius).min(depth),
            output_start: start,
            output_end: end,
        });
        start = end;
    }
    Some(slabs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slabs_cover_every_slice_once_and_respect_the_budget() {
        let slabs = plan_slabs(100, 10, 5, 300).unwrap();
        let mut next = 0;
        for s in &slabs {
            assert_eq!(s.output_start, next);
            next = s.output_end;
            assert!((s.input_end - s.input_start) * 10 <= 300);
            assert!(s.input_start + 5 <= s.output_start || s.input_start == 0);
            assert!(s.output_end + 5 <= s.input_end || s.input_end == 100);
        }
        assert_eq!(next, 100);
    }

    #[test]
    fn whole_volume_when_it_fits_and_none_when_a_halo_alone_is_too_big() {
        assert_eq!(plan_slabs(8, 10, 5, 80).unwrap().len(), 1);
        assert!(plan_slabs(100, 10, 5, 100).is_none());
    }
}
