#![no_main]
use insitu::volume::dicom;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = dicom::read_dicom(data);
    // A folder of two files: the input, and the input cut in half.
    let files = vec![
        ("a.dcm".to_string(), data.to_vec()),
        ("b.dcm".to_string(), data.get(..data.len() / 2).unwrap_or_default().to_vec()),
    ];
    if let Ok(list) = dicom::list_series(&files) {
        if let Some(s) = list.series.first() {
            let _ = dicom::read_series(&files, &s.uid);
        }
    }
});
