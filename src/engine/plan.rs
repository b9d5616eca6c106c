//! Splitting a volume into slabs that fit a memory budget.

use std::ops::Range;

/// A run over slices `input_start..input_end` (along the slowest axis) whose results are
/// kept for `output_start..output_end`; the rest is halo, computed only to be exact.
/// Slice indices are the volume's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slab {
    pub input_start: usize,
    pub input_end: usize,
    pub output_start: usize,
    pub output_end: usize,
}

/// Splits the output slices `out` of a volume `depth` slices deep (`plane` voxels each) into
/// slabs whose input, the output grown by `radius` slices on each side and clipped to the
/// volume, holds at most `max_voxels` voxels. None when not even one output slice fits.
pub fn plan_slabs(
    out: Range<usize>,
    depth: usize,
    plane: usize,
    radius: usize,
    max_voxels: usize,
) -> Option<Vec<Slab>> {
    let max_slices = max_voxels / plane.max(1);
    let mut slabs = Vec::new();
    let mut start = out.start;
    while start < out.end {
        let input_start = start.saturating_sub(radius);
        let room = input_start + max_slices; // the input may end here at the latest
        let end = if (out.end + radius).min(depth) <= room {
            out.end
        } else {
            room.checked_sub(radius)?.min(out.end)
        };
        if end <= start {
            return None;
        }
        slabs.push(Slab {
            input_start,
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

    fn check(slabs: &[Slab], out: Range<usize>, depth: usize, radius: usize, max_slices: usize) {
        let mut next = out.start;
        for s in slabs {
            assert_eq!(s.output_start, next, "{slabs:?}");
            next = s.output_end;
            assert!(s.input_end - s.input_start <= max_slices, "{s:?}");
            assert_eq!(
                s.input_start,
                s.output_start.saturating_sub(radius),
                "{s:?}"
            );
            assert_eq!(s.input_end, (s.output_end + radius).min(depth), "{s:?}");
        }
        assert_eq!(next, out.end);
    }

    #[test]
    fn slabs_cover_every_slice_once_and_respect_the_budget() {
        let slabs = plan_slabs(0..100, 100, 10, 5, 300).unwrap();
        assert!(slabs.len() > 1);
        check(&slabs, 0..100, 100, 5, 30);
    }

    #[test]
    fn a_box_inside_the_volume_counts_its_halo_beyond_the_box() {
        // Output 50..60 of 200 slices reads 45..65: 20 slices, more than the 15 allowed.
        let slabs = plan_slabs(50..60, 200, 10, 5, 150).unwrap();
        assert_eq!(slabs.len(), 2, "{slabs:?}");
        check(&slabs, 50..60, 200, 5, 15);
        // At the volume's edges the halo is clipped: 0..10 reads 0..15.
        assert_eq!(plan_slabs(0..10, 200, 10, 5, 150).unwrap().len(), 1);
    }

    #[test]
    fn whole_volume_when_it_fits_and_none_when_a_halo_alone_is_too_big() {
        assert_eq!(plan_slabs(0..8, 8, 10, 5, 80).unwrap().len(), 1);
        assert!(plan_slabs(0..100, 100, 10, 5, 100).is_none());
        assert!(plan_slabs(40..60, 100, 10, 5, 100).is_none());
    }
}
