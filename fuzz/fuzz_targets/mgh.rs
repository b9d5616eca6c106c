#![no_main]
use insitu::volume::mgh;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if mgh::read_mgh(data).is_err() {
        if let Ok(n) = mgh::frame_count(data) {
            let _ = mgh::read_mgh_frame(data, n.saturating_sub(1));
        }
    }
});
