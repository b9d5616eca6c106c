#![no_main]
use insitu::volume::{self, LabelMap};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks a file name hint; the rest is the file.
    let Some((&hint, bytes)) = data.split_first() else {
        return;
    };
    let names = [
        "x", "x.mgz", "x.mgh", "x.nii", "x.nii.gz", "x.nrrd", "x.mha", "x.dcm",
    ];
    let name = names[usize::from(hint) % names.len()];
    if let Ok((v, format)) = volume::read_with_format(Some(name), bytes) {
        if let Ok(labels) = LabelMap::from_volume(&v) {
            let _ = volume::write_labels_like(format, &labels);
        }
    }
    let _ = volume::read(bytes);
    // One file opened as its second volume, and the memory its header says it needs.
    let _ = volume::open_files(&[(name.to_string(), bytes.to_vec())], None, Some(1));
    let _ = volume::memory_need(Some(name), bytes, bytes.len() as u64);
});
