#![no_main]
use insitu::volume::nrrd;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = nrrd::read_nrrd(data) {
        // What was read can be written and read back.
        let _ = nrrd::read_nrrd(&nrrd::write_volume(&v, false));
    }
    // The same bytes as the data file of a detached header.
    let _ = nrrd::data_file_name(data);
    let header = b"NRRD0004\ntype: short\ndimension: 3\nsizes: 4 3 2\nendian: little\nencoding: gzip\ndata file: x.raw.gz\n\n";
    let _ = nrrd::read_nrrd_detached(header, data);
});
