#![no_main]
use insitu::volume::nifti;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = nifti::read_nifti_header(data);
    let _ = nifti::read_nifti(data);
    let _ = nifti::read_nifti_volume(data, 1);
});
