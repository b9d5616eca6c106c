#![no_main]
use insitu::volume::metaimage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = metaimage::read_mha(data);
    // The same bytes as the data file of a detached header (.mhd + .zraw).
    let _ = metaimage::data_file_name(data);
    let header = b"ObjectType = Image\nNDims = 3\nDimSize = 4 3 2\nElementType = MET_SHORT\nCompressedData = True\nElementDataFile = x.zraw\n";
    let _ = metaimage::read_mhd(header, data);
});
