#![no_main]
use insitu::volume::dicom;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = dicom::read_dicom(data);
    // A folder of two files: the input, and the input cut in half.
    let files = vec![
        ("a.dcm".to_string(), data.to_vec()),
        (
            "b.dcm".to_string(),
            data.get(..data.len() / 2).unwrap_or_default().to_vec(),
        ),
    ];
    if let Ok(list) = dicom::list_series(&files) {
        if let Some(s) = list.series.first() {
            let _ = dicom::read_series(&files, &s.uid);
            let _ = dicom::read_series_volume(&files, &s.uid, Some(s.volumes.len()));
        }
    }
    // Listing from heads: the first half of the input as the head of a file of its full size.
    let heads = [dicom::FileHead {
        name: "a.dcm".to_string(),
        bytes: data.get(..data.len() / 2).unwrap_or_default().to_vec(),
        size: data.len() as u64,
    }];
    let _ = dicom::list_series_heads(&heads);
});
