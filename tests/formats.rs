//! NRRD, MGH, MetaImage and DICOM reading and writing, and the format dispatch.
//!
//! Every expected value comes from `tests/fixtures/formats/expected.json`, written by
//! `tests/fixtures/formats/make_expected.py` with nibabel (MGH), pynrrd (NRRD), SimpleITK
//! (MetaImage) and pydicom + numpy (DICOM); the Siemens series is also compared with dcm2niix's
//! reference conversion. Bad inputs are built here from good files.

mod common;

use std::path::{Path, PathBuf};

use insitu::volume::{
    self, detect_format, dicom, metaimage, mgh, nifti, nrrd, open_files, read, read_named,
    write_labels_like, Format, LabelMap, Opened, OpenedVolume, Volume, VolumeError,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/formats")
}

fn fixture(name: &str) -> Vec<u8> {
    let path = fixture_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn shared_file(rel: &str) -> Vec<u8> {
    let path = common::data(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// All files of a folder of the data mirror, as (name, bytes), sorted by name.
fn shared_folder(rel: &str) -> Vec<(String, Vec<u8>)> {
    let dir = common::data(rel);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixture_dir().join("expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("expected.json parses")
}

fn sha256_f32(data: &[f32]) -> String {
    let mut h = Sha256::new();
    for v in data {
        h.update(v.to_le_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares a volume with an expected.json entry: shape, affine (within `tol` mm), every voxel
/// (sha256 of the float32 values), with sums and samples first for readable failures.
fn check(name: &str, v: &Volume, exp: &Value, tol: f64) {
    let shape: Vec<usize> = exp["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(v.geometry.dims.to_vec(), shape, "{name}: shape");
    for r in 0..4 {
        for c in 0..4 {
            let e = exp["affine"][r][c].as_f64().unwrap();
            let a = v.geometry.affine[r][c];
            assert!(
                (a - e).abs() <= tol,
                "{name}: affine[{r}][{c}] = {a} but expected {e}\n{:?}",
                v.geometry.affine
            );
        }
    }
    assert_eq!(
        v.data.len(),
        v.geometry.voxel_count(),
        "{name}: data length"
    );
    let d = v.geometry.dims;
    for s in exp["samples"].as_array().unwrap() {
        let idx: Vec<usize> = (0..3).map(|k| s[k].as_u64().unwrap() as usize).collect();
        let e = s[3].as_f64().unwrap() as f32;
        let a = v.data[idx[0] + d[0] * (idx[1] + d[1] * idx[2])];
        assert_eq!(a, e, "{name}: voxel {idx:?}");
    }
    let sum: f64 = v.data.iter().map(|&x| f64::from(x)).sum();
    let esum = exp["sum"].as_f64().unwrap();
    assert!(
        (sum - esum).abs() <= 1e-6 * esum.abs().max(1.0),
        "{name}: sum {sum} != {esum}"
    );
    assert_eq!(
        sha256_f32(&v.data),
        exp["sha256"].as_str().unwrap(),
        "{name}: voxel values differ"
    );
}

fn entry<'a>(all: &'a Value, key: &str) -> &'a Value {
    let e = &all[key];
    assert!(e.is_object(), "expected.json has no entry {key}");
    e
}

// ---------------------------------------------------------------------------------------------
// MGH against nibabel

#[test]
fn mgh_fixtures_match_nibabel() {
    let all = expected();
    for name in [
        "labels_int32.mgz",
        "uchar_coronal.mgh",
        "float_oblique.mgh",
        "short.mgz",
    ] {
        let bytes = fixture(name);
        let v = mgh::read_mgh(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        check(name, &v, entry(&all, name), 1e-4);
        // The dispatch finds MGH by content, without the name.
        assert_eq!(read(&bytes).unwrap().data, v.data, "{name} via read");
        let hinted = read_named(name, &bytes).unwrap();
        assert_eq!(hinted.geometry, v.geometry);
    }
}

#[test]
fn mgh_four_d_shared_file_frames_match_nibabel() {
    let all = expected();
    let bytes = shared_file("nibabel_testfiles/test.mgz");
    assert_eq!(mgh::frame_count(&bytes).unwrap(), 2);
    for frame in 0..2 {
        let key = format!("shared:nibabel_testfiles/test.mgz frame {frame}");
        let v = mgh::read_mgh_frame(&bytes, frame).unwrap();
        check(&key, &v, entry(&all, &key), 1e-4);
    }
    match mgh::read_mgh(&bytes) {
        Err(VolumeError::BadHeader(m)) => assert!(m.contains("2 frames"), "{m}"),
        other => panic!("4-D MGH read as one volume: {other:?}"),
    }
    assert!(mgh::read_mgh_frame(&bytes, 2).is_err());
}

#[test]
fn mgh_label_volume_converts_to_labels() {
    let v = mgh::read_mgh(&fixture("labels_int32.mgz")).unwrap();
    let labels = LabelMap::from_volume(&v).unwrap();
    assert_eq!(labels.max_label(), 2023);
}

// ---------------------------------------------------------------------------------------------
// NRRD against pynrrd

#[test]
fn nrrd_fixtures_match_pynrrd() {
    let all = expected();
    for name in [
        "lps_raw_int16.nrrd",
        "ras_gzip_float.nrrd",
        "lps_gzip_bigendian_uint16.nrrd",
    ] {
        let bytes = fixture(name);
        let v = nrrd::read_nrrd(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        check(name, &v, entry(&all, name), 1e-9);
        assert_eq!(read(&bytes).unwrap().data, v.data);
    }
    // The RAS file describes the same grid as the LPS one: the same affine.
    let lps = nrrd::read_nrrd(&fixture("lps_raw_int16.nrrd")).unwrap();
    let ras = nrrd::read_nrrd(&fixture("ras_gzip_float.nrrd")).unwrap();
    for r in 0..3 {
        for c in 0..4 {
            assert!((lps.geometry.affine[r][c] - ras.geometry.affine[r][c]).abs() < 1e-9);
        }
    }
}

#[test]
fn nrrd_detached_header_with_its_data_file() {
    let all = expected();
    let files = vec![
        ("detached.nhdr".to_string(), fixture("detached.nhdr")),
        ("detached.raw".to_string(), fixture("detached.raw")),
        ("notes.txt".to_string(), b"hello".to_vec()),
    ];
    assert_eq!(
        nrrd::data_file_name(&files[0].1).unwrap().as_deref(),
        Some("detached.raw")
    );
    match open_files(&files, None, None).unwrap() {
        Opened::Volume(OpenedVolume {
            volume,
            format,
            skipped,
            ..
        }) => {
            assert_eq!(format, Format::Nrrd);
            check("detached.nhdr", &volume, entry(&all, "detached.nhdr"), 1e-9);
            assert_eq!(skipped.len(), 1);
        }
        other => panic!("{other:?}"),
    }
    // Without its data file: an error naming the missing file.
    let err = open_files(
        &files[..1]
            .iter()
            .cloned()
            .chain([files[2].clone()])
            .collect::<Vec<_>>(),
        None,
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("detached.raw"), "{err}");
    // Alone, the header says where its data is.
    let err = nrrd::read_nrrd(&files[0].1).unwrap_err();
    assert!(err.to_string().contains("detached.raw"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// MetaImage against SimpleITK

#[test]
fn metaimage_fixtures_match_simpleitk() {
    let all = expected();
    for name in ["oblique_int16.mha", "compressed_float.mha"] {
        let bytes = fixture(name);
        let v = metaimage::read_mha(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        check(name, &v, entry(&all, name), 1e-9);
        assert_eq!(read(&bytes).unwrap().data, v.data);
    }
    let files = vec![
        (
            "dir/oblique_uint8.mhd".to_string(),
            fixture("oblique_uint8.mhd"),
        ),
        (
            "dir/oblique_uint8.raw".to_string(),
            fixture("oblique_uint8.raw"),
        ),
    ];
    match open_files(&files, None, None).unwrap() {
        Opened::Volume(OpenedVolume { volume, format, .. }) => {
            assert_eq!(format, Format::MetaImage);
            check(
                "oblique_uint8.mhd",
                &volume,
                entry(&all, "oblique_uint8.mhd"),
                1e-9,
            );
        }
        other => panic!("{other:?}"),
    }
    let err = metaimage::read_mha(&files[0].1).unwrap_err();
    assert!(err.to_string().contains("oblique_uint8.raw"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// DICOM against pydicom and dcm2niix

use common::canonical::canonical;

#[test]
fn dicom_sagittal_series_matches_dcm2niix_and_pydicom() {
    let all = expected();
    let files = shared_folder("dicom/siemens_prisma_sagittal_gre_series2/dicom");
    assert_eq!(files.len(), 5);
    let v = match open_files(&files, None, None).unwrap() {
        Opened::Volume(OpenedVolume {
            volume,
            format,
            skipped,
            ..
        }) => {
            assert_eq!(format, Format::Dicom);
            assert!(skipped.is_empty());
            volume
        }
        other => panic!("{other:?}"),
    };
    check(
        "siemens series (pydicom)",
        &v,
        entry(
            &all,
            "shared:dicom/siemens_prisma_sagittal_gre_series2/dicom",
        ),
        1e-4,
    );
    assert_eq!(v.geometry.orientation_code(), "PIR");
    assert!(
        (v.geometry.spacing[2] - 5.0).abs() < 1e-4,
        "{:?}",
        v.geometry.spacing
    );
    // dcm2niix's conversion, compared in canonical orientation: equal voxels, affine to 1e-3.
    let reference = nifti::read_nifti(&shared_file(
        "dicom/siemens_prisma_sagittal_gre_series2/ref/2_gre_field_mapping_PMUlog.nii",
    ))
    .unwrap();
    let (md, ma, mv) = canonical(&v);
    let (rd, ra, rv) = canonical(&reference);
    assert_eq!(md, rd);
    assert_eq!(mv, rv, "voxels differ from dcm2niix");
    let exp = entry(
        &all,
        "shared:dicom/siemens_prisma_sagittal_gre_series2/ref (canonical)",
    );
    for r in 0..4 {
        for c in 0..4 {
            assert!(
                (ma[r][c] - ra[r][c]).abs() < 1e-3,
                "affine {ma:?} vs dcm2niix {ra:?}"
            );
            let e = exp["affine"][r][c].as_f64().unwrap();
            assert!(
                (ma[r][c] - e).abs() < 1e-3,
                "affine {ma:?} vs nibabel canonical"
            );
        }
    }
    // Order of the files does not matter; the slices are sorted by position.
    let mut reversed = files.clone();
    reversed.reverse();
    match open_files(&reversed, None, None).unwrap() {
        Opened::Volume(OpenedVolume { volume, .. }) => {
            assert_eq!(volume.data, v.data);
            assert_eq!(volume.geometry, v.geometry);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn dicom_jpeg2000_ct_series_matches_pydicom() {
    let all = expected();
    let exp = entry(&all, "shared:totalsegmentator/example_ct_dicom");
    assert_eq!(exp["transfer_syntax"], "1.2.840.10008.1.2.4.90");
    let files = shared_folder("totalsegmentator/example_ct_dicom");
    let list = dicom::list_series(&files).unwrap();
    assert_eq!(list.series.len(), 1);
    assert_eq!(list.series[0].dims, [512, 512, 20]);
    assert_eq!(list.series[0].description, "CT Body 3.0");
    let v = match open_files(&files, None, None).unwrap() {
        Opened::Volume(OpenedVolume { volume, .. }) => volume,
        other => panic!("{other:?}"),
    };
    check("example_ct_dicom", &v, exp, 1e-4);
    // Spacing from positions (2 mm), not SliceThickness (3 mm).
    assert!(
        (v.geometry.spacing[2] - 2.0).abs() < 1e-6,
        "{:?}",
        v.geometry.spacing
    );
}

#[test]
fn dicom_single_files_match_pydicom() {
    let all = expected();
    for name in ["CT_small.dcm", "MR_small.dcm", "liver_1frame.dcm"] {
        let key = format!("shared:pydicom_testfiles/{name}");
        let bytes = shared_file(&format!("pydicom_testfiles/{name}"));
        assert_eq!(detect_format(None, &bytes).unwrap(), Format::Dicom);
        let v = read(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        check(&key, &v, entry(&all, &key), 1e-4);
    }
    for name in ["MR_small_rle.dcm", "multiframe3.dcm"] {
        let v = read(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        check(name, &v, entry(&all, name), 1e-4);
    }
    // RLE decodes to the same voxels as the uncompressed original.
    let rle = read(&fixture("MR_small_rle.dcm")).unwrap();
    let raw = read(&shared_file("pydicom_testfiles/MR_small.dcm")).unwrap();
    assert_eq!(rle.data, raw.data);
}

#[test]
fn dicom_mixed_series_are_listed_separately() {
    let mut files = shared_folder("dicom/siemens_prisma_sagittal_gre_series2/dicom");
    files.push((
        "CT_small.dcm".into(),
        shared_file("pydicom_testfiles/CT_small.dcm"),
    ));
    files.push(("series.json".into(), b"{\"a\": 1}".to_vec()));
    files.push(("DICOMDIR".into(), vec![0u8; 10]));
    let list = match open_files(&files, None, None).unwrap() {
        Opened::Series(list) => list,
        other => panic!("two series read as one volume: {other:?}"),
    };
    assert_eq!(list.series.len(), 2, "{list:?}");
    assert_eq!(list.skipped.len(), 2, "{list:?}");
    let sag = list
        .series
        .iter()
        .find(|s| s.description == "gre_field_mapping_PMUlog")
        .unwrap();
    assert_eq!((sag.files.len(), sag.dims), (5, [42, 64, 5]));
    assert!(sag
        .files
        .iter()
        .all(|n| n.ends_with(".dcm") && n != "CT_small.dcm"));
    assert_eq!(sag.number, Some(2));
    assert_eq!(sag.modality, "MR");
    let ct = list.series.iter().find(|s| s.modality == "CT").unwrap();
    assert_eq!(ct.dims, [128, 128, 1]);
    let v = dicom::read_series(&files, &sag.uid).unwrap();
    assert_eq!(v.geometry.dims, [42, 64, 5]);
    let ct_v = dicom::read_series(&files, &ct.uid).unwrap();
    assert_eq!(ct_v.geometry.dims, [128, 128, 1]);
    assert!(dicom::read_series(&files, "1.2.3").is_err());
    // Choosing a series reads it; the page and the CLI go through this.
    match open_files(&files, Some(&ct.uid), None).unwrap() {
        Opened::Volume(OpenedVolume {
            volume,
            format,
            skipped,
            ..
        }) => {
            assert_eq!(format, Format::Dicom);
            assert_eq!(volume.data, ct_v.data);
            // Everything but the CT file is reported unused: the other series' five slices too.
            let mut unused: Vec<&str> = skipped.iter().map(|(n, _)| n.as_str()).collect();
            unused.sort();
            let mut want: Vec<&str> = sag.files.iter().map(String::as_str).collect();
            want.extend(["DICOMDIR", "series.json"]);
            want.sort();
            assert_eq!(unused, want);
        }
        other => panic!("{other:?}"),
    }
    let err = open_files(&files, Some("1.2.3"), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"1.2.3\"") && err.contains(&sag.uid), "{err}");
}

#[test]
fn dicom_file_in_the_wrong_series_is_an_error_naming_it() {
    let mut files = shared_folder("dicom/siemens_prisma_sagittal_gre_series2/dicom");
    files.push((
        "intruder.dcm".into(),
        fixture("CT_small_in_sagittal_series.dcm"),
    ));
    let err = open_files(&files, None, None).unwrap_err();
    let m = err.to_string();
    assert!(
        m.contains("intruder.dcm") && m.contains("not one series"),
        "{m}"
    );
}

#[test]
fn dicom_two_slices_at_one_position_is_an_error() {
    let mut files = shared_folder("dicom/siemens_prisma_sagittal_gre_series2/dicom");
    let copy = files[0].1.clone();
    files.push(("copy_of_1.dcm".into(), copy));
    let m = open_files(&files, None, None).unwrap_err().to_string();
    assert!(m.contains("same position"), "{m}");
}

#[test]
fn dicom_unsupported_compression_names_the_syntax() {
    let m = read(&fixture("MR_small_as_jpegls.dcm"))
        .unwrap_err()
        .to_string();
    assert!(
        m.contains("JPEG-LS Lossless") && m.contains("1.2.840.10008.1.2.4.80"),
        "{m}"
    );
}

#[test]
fn dicom_broken_pixel_data_is_an_error() {
    match read(&fixture("MR_small_short_pixeldata.dcm")) {
        Err(VolumeError::Truncated(m)) => assert!(m.contains("PixelData holds 1000 bytes"), "{m}"),
        other => panic!("{other:?}"),
    }
    // A file cut inside its pixel data.
    let bytes = shared_file("pydicom_testfiles/MR_small.dcm");
    let m = read(&bytes[..bytes.len() - 3000]).unwrap_err().to_string();
    assert!(m.contains("claims") || m.contains("truncated"), "{m}");
}

/// Position of the explicit-VR header of PixelData (7FE0,0010) in a little-endian DICOM file.
fn pixel_data_header(bytes: &[u8]) -> usize {
    bytes
        .windows(6)
        .rposition(|w| {
            w == [0xE0, 0x7F, 0x10, 0x00, b'O', b'W'] || w == [0xE0, 0x7F, 0x10, 0x00, b'O', b'B']
        })
        .expect("PixelData header")
}

#[test]
fn dicom_element_length_beyond_the_file_is_refused_before_allocating() {
    let mut bytes = shared_file("pydicom_testfiles/MR_small.dcm");
    let at = pixel_data_header(&bytes);
    bytes[at + 8..at + 12].copy_from_slice(&0xF000_0000u32.to_le_bytes());
    match read(&bytes) {
        Err(VolumeError::Truncated(m)) => assert!(m.contains("(7FE0,0010)"), "{m}"),
        other => panic!("{other:?}"),
    }
}

/// Replaces the value of a 2-byte-length explicit VR LE element (e.g. US) in place.
fn patch_us(bytes: &mut [u8], group: u16, element: u16, value: u16) {
    let mut pat = Vec::new();
    pat.extend_from_slice(&group.to_le_bytes());
    pat.extend_from_slice(&element.to_le_bytes());
    pat.extend_from_slice(b"US");
    let at = bytes.windows(6).position(|w| w == pat).expect("element");
    bytes[at + 8..at + 10].copy_from_slice(&value.to_le_bytes());
}

#[test]
fn dicom_absurd_dimensions_and_unknown_sample_format() {
    let good = shared_file("pydicom_testfiles/MR_small.dcm");
    let mut big = good.clone();
    patch_us(&mut big, 0x0028, 0x0010, 65535); // Rows
    patch_us(&mut big, 0x0028, 0x0011, 65535); // Columns
    match read(&big) {
        Err(VolumeError::TooLarge(m)) => assert!(m.contains("65535 rows"), "{m}"),
        other => panic!("{other:?}"),
    }
    let mut tall = good.clone();
    patch_us(&mut tall, 0x0028, 0x0010, 4096); // Rows: more than PixelData holds
    match read(&tall) {
        Err(VolumeError::Truncated(m)) => assert!(m.contains("PixelData holds"), "{m}"),
        other => panic!("{other:?}"),
    }
    let mut bits = good.clone();
    patch_us(&mut bits, 0x0028, 0x0100, 12); // BitsAllocated
    match read(&bits) {
        Err(VolumeError::BadHeader(m)) => assert!(m.contains("BitsAllocated is 12"), "{m}"),
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Writers: labels in each format, read back with the (reference-checked) readers

fn sample_labels() -> LabelMap {
    let v = mgh::read_mgh(&fixture("labels_int32.mgz")).unwrap();
    LabelMap::from_volume(&v).unwrap()
}

fn small_labels(max: u16) -> LabelMap {
    let v = nrrd::read_nrrd(&fixture("lps_raw_int16.nrrd")).unwrap();
    let labels = v
        .data
        .iter()
        .map(|&x| (x.abs() as u32 % (u32::from(max) + 1)) as u16)
        .collect();
    LabelMap {
        geometry: v.geometry,
        labels,
    }
}

fn assert_same_grid(a: &LabelMap, b: &Volume, tol: f64, what: &str) {
    assert_eq!(a.geometry.dims, b.geometry.dims, "{what}: dims");
    for r in 0..4 {
        for c in 0..4 {
            assert!(
                (a.geometry.affine[r][c] - b.geometry.affine[r][c]).abs() <= tol,
                "{what}: affine {:?} vs {:?}",
                a.geometry.affine,
                b.geometry.affine
            );
        }
    }
    let back = LabelMap::from_volume(b).unwrap();
    assert_eq!(back.labels, a.labels, "{what}: labels");
}

#[test]
fn label_writers_round_trip_with_the_input_geometry() {
    for labels in [sample_labels(), small_labels(200), small_labels(40000)] {
        for gz in [false, true] {
            let m = mgh::write_labels(&labels, gz);
            assert_same_grid(&labels, &mgh::read_mgh(&m).unwrap(), 1e-4, "mgh");
            let n = nrrd::write_labels(&labels, gz);
            assert_same_grid(&labels, &nrrd::read_nrrd(&n).unwrap(), 1e-9, "nrrd");
            let h = metaimage::write_mha_labels(&labels, gz);
            assert_same_grid(&labels, &metaimage::read_mha(&h).unwrap(), 1e-9, "mha");
        }
        for format in [
            Format::Nifti,
            Format::NiftiGz,
            Format::Nrrd,
            Format::Mgh,
            Format::Mgz,
            Format::MetaImage,
            Format::Dicom,
        ] {
            let bytes = write_labels_like(format, &labels);
            let name = format!("seg{}", format.label_extension());
            let (v, got) = volume::read_with_format(Some(&name), &bytes).unwrap();
            let expect = if format == Format::Dicom {
                Format::NiftiGz
            } else {
                format
            };
            assert_eq!(got, expect, "{format:?}");
            // Also found without the name.
            assert_eq!(detect_format(None, &bytes).unwrap(), expect, "{format:?}");
            assert_same_grid(&labels, &v, 1e-4, &name);
        }
    }
}

#[test]
fn volume_writers_round_trip() {
    let v = metaimage::read_mha(&fixture("compressed_float.mha")).unwrap();
    for gz in [false, true] {
        let back = nrrd::read_nrrd(&nrrd::write_volume(&v, gz)).unwrap();
        assert_eq!(
            (back.data.clone(), back.geometry.dims),
            (v.data.clone(), v.geometry.dims)
        );
        let back = mgh::read_mgh(&mgh::write_volume(&v, gz)).unwrap();
        assert_eq!(back.data, v.data);
        let back = metaimage::read_mha(&metaimage::write_mha_volume(&v, gz)).unwrap();
        assert_eq!(back.data, v.data);
        assert_eq!(back.geometry, v.geometry);
    }
}

// ---------------------------------------------------------------------------------------------
// Detection and dispatch

#[test]
fn formats_are_detected_from_content() {
    let cases = [
        ("labels_int32.mgz", Format::Mgz),
        ("uchar_coronal.mgh", Format::Mgh),
        ("lps_raw_int16.nrrd", Format::Nrrd),
        ("ras_gzip_float.nrrd", Format::Nrrd),
        ("oblique_int16.mha", Format::MetaImage),
        ("oblique_uint8.mhd", Format::MetaImage),
        ("MR_small_rle.dcm", Format::Dicom),
    ];
    for (name, format) in cases {
        assert_eq!(
            detect_format(None, &fixture(name)).unwrap(),
            format,
            "{name}"
        );
        assert_eq!(
            Format::from_name(name).map(|f| f.name()),
            Some(format.name())
        );
    }
    let t1 = shared_file("t1_crop.nii.gz");
    assert_eq!(detect_format(None, &t1).unwrap(), Format::NiftiGz);
    assert_eq!(read(&t1).unwrap().geometry.dims, [256, 256, 256]);
    let anat = shared_file("nibabel_testfiles/anatomical.nii");
    assert_eq!(detect_format(None, &anat).unwrap(), Format::Nifti);
}

// ---------------------------------------------------------------------------------------------
// Bad input: a specific error, no panic, no large allocation

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn empty_files_are_refused_by_every_reader() {
    for (what, r) in [
        ("read", read(&[])),
        ("nrrd", nrrd::read_nrrd(&[])),
        ("mgh", mgh::read_mgh(&[])),
        ("mha", metaimage::read_mha(&[])),
        ("dicom", dicom::read_dicom(&[])),
        ("nifti", nifti::read_nifti(&[])),
        ("named mgz", read_named("x.mgz", &[])),
    ] {
        match r {
            Err(VolumeError::NotRecognized(m)) => assert!(m.contains("empty"), "{what}: {m}"),
            other => panic!("{what}: {other:?}"),
        }
    }
    assert!(open_files(&[], None, None).is_err());
}

#[test]
fn random_bytes_are_not_recognized() {
    for seed in 1..20u64 {
        let bytes = random_bytes(2000, seed);
        match read(&bytes) {
            Err(VolumeError::NotRecognized(_)) => {}
            other => panic!("seed {seed}: {other:?}"),
        }
        for name in ["x.nrrd", "x.mgh", "x.mgz", "x.mha", "x.dcm", "x.nii"] {
            assert!(read_named(name, &bytes).is_err(), "{name}");
        }
        assert!(nrrd::read_nrrd(&bytes).is_err());
        assert!(mgh::read_mgh(&bytes).is_err());
        assert!(metaimage::read_mha(&bytes).is_err());
        assert!(dicom::read_dicom(&bytes).is_err());
    }
    // Random bytes after a DICOM preamble and marker.
    let mut fake = vec![0u8; 128];
    fake.extend_from_slice(b"DICM");
    fake.extend(random_bytes(3000, 7));
    assert!(read(&fake).is_err());
}

fn expect_err(r: Result<Volume, VolumeError>, kind: fn(&VolumeError) -> bool, words: &[&str]) {
    match r {
        Err(e) if kind(&e) => {
            let m = e.to_string();
            for w in words {
                assert!(m.contains(w), "{m:?} lacks {w:?}");
            }
        }
        other => panic!("expected an error with {words:?}, got {other:?}"),
    }
}

fn truncated(e: &VolumeError) -> bool {
    matches!(e, VolumeError::Truncated(_))
}
fn bad_header(e: &VolumeError) -> bool {
    matches!(e, VolumeError::BadHeader(_))
}
fn too_large(e: &VolumeError) -> bool {
    matches!(e, VolumeError::TooLarge(_))
}
fn truncated_or_decompress(e: &VolumeError) -> bool {
    matches!(e, VolumeError::Truncated(_) | VolumeError::Decompress(_))
}

/// Replaces `from` by `to` once in a text header.
fn edit(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
    let at = bytes
        .windows(from.len())
        .position(|w| w == from.as_bytes())
        .unwrap_or_else(|| panic!("{from:?} not in header"));
    let mut out = bytes[..at].to_vec();
    out.extend_from_slice(to.as_bytes());
    out.extend_from_slice(&bytes[at + from.len()..]);
    out
}

#[test]
fn nrrd_bad_inputs() {
    let raw = fixture("lps_raw_int16.nrrd");
    let gz = fixture("ras_gzip_float.nrrd");
    // Truncated gzip.
    expect_err(
        nrrd::read_nrrd(&gz[..gz.len() - 40]),
        truncated_or_decompress,
        &["gzip"],
    );
    // More voxels promised than the file holds.
    expect_err(
        nrrd::read_nrrd(&raw[..raw.len() - 10]),
        truncated,
        &["6x5x4", "int16"],
    );
    // Absurd dimensions.
    expect_err(
        nrrd::read_nrrd(&edit(&raw, "sizes: 6 5 4", "sizes: 100000 100000 100000")),
        too_large,
        &["100000x100000x100000"],
    );
    expect_err(
        nrrd::read_nrrd(&edit(&raw, "sizes: 6 5 4", "sizes: 6 -5 4")),
        bad_header,
        &["-5"],
    );
    // Unknown data type.
    expect_err(
        nrrd::read_nrrd(&edit(&raw, "type: int16", "type: block")),
        bad_header,
        &["\"block\""],
    );
    // Unsupported encoding.
    expect_err(
        nrrd::read_nrrd(&edit(&raw, "encoding: raw", "encoding: bzip2")),
        bad_header,
        &["bzip2"],
    );
    // Header never ends.
    let endless = raw[..raw.iter().position(|&b| b == b'\n').unwrap() + 1].repeat(3);
    assert!(nrrd::read_nrrd(&endless).is_err());
    // A gzip bomb: 4 GiB of zeros claimed, little given; decompression stops at the header's size.
    let bomb = edit(&gz, "sizes: 5 6 3", "sizes: 5 6 300");
    expect_err(nrrd::read_nrrd(&bomb), truncated_or_decompress, &[]);
}

#[test]
fn mgh_bad_inputs() {
    let mgz = fixture("labels_int32.mgz");
    let mgh_raw = fixture("float_oblique.mgh");
    expect_err(
        mgh::read_mgh(&mgz[..mgz.len() / 2]),
        truncated_or_decompress,
        &[],
    );
    // Header cut short (wrong header size).
    expect_err(mgh::read_mgh(&mgh_raw[..200]), truncated, &["284 bytes"]);
    // More voxels promised than present.
    expect_err(
        mgh::read_mgh(&mgh_raw[..400]),
        truncated,
        &["5x4x6", "float32"],
    );
    // Absurd dimensions.
    let mut big = mgh_raw.clone();
    for k in 0..3 {
        big[4 + 4 * k..8 + 4 * k].copy_from_slice(&1_000_000i32.to_be_bytes());
    }
    expect_err(mgh::read_mgh(&big), too_large, &["1000000x1000000x1000000"]);
    // Unknown data type.
    let mut t = mgh_raw.clone();
    t[20..24].copy_from_slice(&7i32.to_be_bytes());
    expect_err(
        mgh::read_mgh(&t),
        bad_header,
        &["type 7", "MRI_FLOAT_COMPLEX"],
    );
    // Wrong version.
    let mut v = mgh_raw.clone();
    v[0..4].copy_from_slice(&2i32.to_be_bytes());
    assert!(matches!(
        mgh::read_mgh(&v),
        Err(VolumeError::NotRecognized(_))
    ));
    // Zero voxel size.
    let mut z = mgh_raw.clone();
    z[30..34].copy_from_slice(&0f32.to_be_bytes());
    expect_err(mgh::read_mgh(&z), bad_header, &["delta"]);
}

#[test]
fn metaimage_bad_inputs() {
    let mha = fixture("oblique_int16.mha");
    let zmha = fixture("compressed_float.mha");
    expect_err(
        metaimage::read_mha(&mha[..mha.len() - 7]),
        truncated,
        &["7x5x4", "int16"],
    );
    expect_err(
        metaimage::read_mha(&zmha[..zmha.len() - 30]),
        truncated_or_decompress,
        &[],
    );
    expect_err(
        metaimage::read_mha(&edit(
            &mha,
            "DimSize = 7 5 4",
            "DimSize = 70000 70000 70000",
        )),
        too_large,
        &["70000x70000x70000"],
    );
    expect_err(
        metaimage::read_mha(&edit(
            &mha,
            "ElementType = MET_SHORT",
            "ElementType = MET_FOO",
        )),
        bad_header,
        &["MET_FOO"],
    );
    expect_err(
        metaimage::read_mha(&edit(&mha, "NDims = 3", "NDims = 4")),
        bad_header,
        &["NDims"],
    );
    // .mhd whose HeaderSize skips past the end of its data file.
    let hdr = edit(
        &fixture("oblique_uint8.mhd"),
        "ElementDataFile",
        "HeaderSize = 1000\nElementDataFile",
    );
    expect_err(
        metaimage::read_mhd(&hdr, &fixture("oblique_uint8.raw")),
        truncated,
        &["HeaderSize 1000"],
    );
}

#[test]
fn regression_inputs_do_not_panic() {
    let dir = fixture_dir().join("regressions");
    let entries = std::fs::read_dir(&dir).unwrap();
    let mut n = 0;
    for e in entries {
        let path = e.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let _ = read(&bytes);
        let _ = nrrd::read_nrrd(&bytes);
        let _ = mgh::read_mgh(&bytes);
        let _ = metaimage::read_mha(&bytes);
        let _ = dicom::read_dicom(&bytes);
        let _ = nifti::read_nifti(&bytes);
        let _ = open_files(
            &[
                ("a.dcm".to_string(), bytes.clone()),
                ("b.dcm".to_string(), bytes.clone()),
            ],
            None,
            None,
        );
        n += 1;
    }
    assert!(n >= 2, "regression inputs missing from {}", dir.display());
}

/// Fuzzing found a DICOM whose SamplesPerPixel is an SL of 2 bytes: dicom-parser then reads
/// value bytes as the next header and reserves 1.3 GB. The structure check must stop it first.
#[test]
fn dicom_ragged_binary_length_is_refused_before_parsing() {
    let bytes = std::fs::read(fixture_dir().join("regressions/dicom-ragged-sl-length")).unwrap();
    let err = dicom::read_dicom(&bytes).unwrap_err().to_string();
    assert!(
        err.contains("(0028,0002)") && err.contains("not a multiple of 4"),
        "{err}"
    );
}
