//! NIfTI reading and writing, checked against nibabel.
//!
//! Every expected number comes from `tests/fixtures/nifti/expected.json`, which
//! `tests/fixtures/nifti/make_expected.py` wrote with nibabel (for the sample files of the data
//! mirror and for the small synthetic fixtures beside it).

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use insitu::volume::nifti::{
    read_nifti, read_nifti_header, write_labels, write_volume, NIFTI_INTENT_LABEL,
};
use insitu::volume::{Geometry, LabelMap, Volume, VolumeError};
use serde_json::Value;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nifti")
}

fn fixture(name: &str) -> Vec<u8> {
    let path = fixture_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixture_dir().join("expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("expected.json parses")
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn close(actual: f64, expected: f64, rel: f64, abs: f64) -> bool {
    (actual - expected).abs() <= abs + rel * expected.abs()
}

/// Compares insitu's view of `bytes` with nibabel's (`exp`, one entry of expected.json).
fn check_against_nibabel(name: &str, bytes: &[u8], exp: &Value) {
    let info = read_nifti_header(bytes).unwrap_or_else(|e| panic!("{name}: header: {e}"));
    let g = &info.geometry;
    assert_eq!(
        u64::from(info.version),
        exp["version"].as_u64().unwrap(),
        "{name}: version"
    );
    assert_eq!(
        info.datatype,
        exp["datatype"].as_str().unwrap(),
        "{name}: datatype"
    );
    let shape: Vec<usize> = exp["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(g.dims.to_vec(), shape, "{name}: shape");
    assert_eq!(
        info.frames as u64,
        exp["frames"].as_u64().unwrap(),
        "{name}: frames"
    );
    for r in 0..4 {
        for c in 0..4 {
            let e = f(&exp["affine"][r][c]);
            assert!(
                (g.affine[r][c] - e).abs() <= 1e-5,
                "{name}: affine[{r}][{c}] = {} but nibabel says {e}\n{:?}",
                g.affine[r][c],
                g.affine
            );
        }
    }
    assert_eq!(
        i64::from(g.sform_code),
        exp["sform_code"].as_i64().unwrap(),
        "{name}: sform_code"
    );
    assert_eq!(
        i64::from(g.qform_code),
        exp["qform_code"].as_i64().unwrap(),
        "{name}: qform_code"
    );
    for i in 0..3 {
        let e = f(&exp["spacing"][i]);
        assert!(
            close(g.spacing[i], e, 1e-6, 0.0),
            "{name}: spacing {:?}",
            g.spacing
        );
    }
    for (field, value) in [("scl_slope", info.scl_slope), ("scl_inter", info.scl_inter)] {
        match exp[field].as_f64() {
            Some(e) => assert!(close(value, e, 1e-7, 0.0), "{name}: {field} {value} != {e}"),
            None => assert!(
                !value.is_finite(),
                "{name}: {field} should be non-finite, is {value}"
            ),
        }
    }

    let frames = exp["frames"].as_u64().unwrap();
    if frames != 1 {
        match read_nifti(bytes) {
            Err(VolumeError::BadHeader(m)) => assert!(
                m.contains(&format!("4-D volume with {frames} frames"))
                    && m.contains("single 3-D volume"),
                "{name}: {m}"
            ),
            other => panic!("{name}: a {frames}-frame file must be refused, got {other:?}"),
        }
        return;
    }

    let volume = read_nifti(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(
        volume.geometry, info.geometry,
        "{name}: read_nifti and read_nifti_header disagree"
    );
    assert_eq!(
        volume.data.len(),
        shape.iter().product::<usize>(),
        "{name}: voxel count"
    );
    let at = |ijk: &Value| {
        let [i, j, k] = [0, 1, 2].map(|a| ijk[a].as_u64().unwrap() as usize);
        volume.data[i + shape[0] * (j + shape[1] * k)]
    };
    for s in exp["samples"].as_array().unwrap() {
        let (v, e) = (f64::from(at(&s["ijk"])), f(&s["value"]));
        assert!(
            close(v, e, 1e-6, 1e-6),
            "{name}: voxel {} = {v}, nibabel says {e}",
            s["ijk"]
        );
    }
    let sum: f64 = volume.data.iter().map(|&v| f64::from(v)).sum();
    let (e_sum, e_abs) = (f(&exp["sum"]), f(&exp["abs_sum"]));
    assert!(
        close(sum, e_sum, 0.0, 1e-6 * e_abs + 1e-6),
        "{name}: sum {sum} != {e_sum}"
    );
    let min = volume.data.iter().copied().fold(f32::INFINITY, f32::min);
    let max = volume
        .data
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    assert!(
        close(f64::from(min), f(&exp["min"]), 1e-6, 1e-6),
        "{name}: min {min} != {}",
        exp["min"]
    );
    assert!(
        close(f64::from(max), f(&exp["max"]), 1e-6, 1e-6),
        "{name}: max {max} != {}",
        exp["max"]
    );
}

#[test]
fn sample_files_match_nibabel() {
    let exp = expected();
    let shared = exp["shared"].as_object().unwrap();
    assert_eq!(shared.len(), 7);
    for (rel, e) in shared {
        let path = common::data(rel);
        let bytes = std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        check_against_nibabel(rel, &bytes, e);
    }
}

#[test]
fn synthetic_fixtures_match_nibabel() {
    let exp = expected();
    let fixtures = exp["fixtures"].as_object().unwrap();
    assert!(fixtures.len() >= 30);
    for (name, e) in fixtures {
        check_against_nibabel(name, &fixture(name), e);
    }
}

#[test]
fn datatypes_named_in_the_header_peek() {
    for dt in [
        "uint8", "int8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32",
        "float64",
    ] {
        let info = read_nifti_header(&fixture(&format!("dt_{dt}.nii"))).unwrap();
        assert_eq!(info.datatype, dt);
    }
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[test]
fn gzip_is_detected_by_content() {
    for name in ["scaled_int16.nii.gz", "nifti2_be_qform.nii.gz"] {
        let gz = fixture(name);
        let plain = gunzip(&gz);
        let a = read_nifti(&gz).unwrap();
        let b = read_nifti(&plain).unwrap();
        assert_eq!(a.geometry, b.geometry);
        assert_eq!(a.data, b.data);
    }
    // Concatenated gzip members are one stream.
    let plain = fixture("dt_int16.nii");
    let (head, tail) = plain.split_at(500);
    let mut two = gzip(head);
    two.extend(gzip(tail));
    assert_eq!(
        read_nifti(&two).unwrap().data,
        read_nifti(&plain).unwrap().data
    );
}

#[test]
fn header_peek_needs_only_the_header() {
    // Uncompressed: the header alone (no voxels) is enough for the peek, not for reading.
    let plain = fixture("qform_only.nii");
    let info = read_nifti_header(&plain[..352]).unwrap();
    assert_eq!(info.geometry, read_nifti(&plain).unwrap().geometry);
    assert!(matches!(
        read_nifti(&plain[..352]),
        Err(VolumeError::Truncated(_))
    ));
    // Compressed: the first few KB of a 16 MB .nii.gz.
    let gz = std::fs::read(common::data("t1_crop.nii.gz")).unwrap();
    let info = read_nifti_header(&gz[..4096]).unwrap();
    assert_eq!(info.geometry.dims, [256, 256, 256]);
    assert_eq!(info.datatype, "uint8");
    assert!(matches!(
        read_nifti(&gz[..4096]),
        Err(VolumeError::Decompress(_))
    ));
}

#[test]
fn reads_a_256_cubed_gzip_quickly() {
    let gz = std::fs::read(common::data("t1_crop.nii.gz")).unwrap();
    let start = std::time::Instant::now();
    let v = read_nifti(&gz).unwrap();
    let elapsed = start.elapsed();
    assert_eq!(v.data.len(), 256 * 256 * 256);
    eprintln!("t1_crop.nii.gz (256^3 uint8) read in {elapsed:?}");
    // Generous for an unoptimized test build on a busy machine; release is well under a second.
    assert!(elapsed.as_secs_f64() < 10.0, "{elapsed:?}");
}

// ---------------------------------------------------------------------------------------------
// Bad input

fn put(bytes: &mut [u8], offset: usize, value: &[u8]) {
    bytes[offset..offset + value.len()].copy_from_slice(value);
}

fn expect_err(result: Result<Volume, VolumeError>) -> VolumeError {
    match result {
        Ok(v) => panic!("expected an error, read {:?}", v.geometry),
        Err(e) => e,
    }
}

#[test]
fn empty_and_random_bytes_are_not_recognized() {
    match expect_err(read_nifti(&[])) {
        VolumeError::NotRecognized(m) => assert!(m.contains("empty"), "{m}"),
        e => panic!("{e:?}"),
    }
    assert!(matches!(
        read_nifti_header(&[]),
        Err(VolumeError::NotRecognized(_))
    ));
    assert!(matches!(
        read_nifti(&[1, 2]),
        Err(VolumeError::NotRecognized(_))
    ));
    let mut state = 0x2545F4914F6CDD1Du64;
    let random: Vec<u8> = (0..4000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    assert_ne!(&random[..2], &[0x1f, 0x8b]);
    match expect_err(read_nifti(&random)) {
        VolumeError::NotRecognized(m) => assert!(m.contains("sizeof_hdr"), "{m}"),
        e => panic!("{e:?}"),
    }
    // gzip magic followed by garbage.
    let mut fake_gz = vec![0x1f, 0x8b];
    fake_gz.extend_from_slice(&random);
    assert!(matches!(
        read_nifti(&fake_gz),
        Err(VolumeError::Decompress(_))
    ));
    // A valid gzip of something else.
    assert!(matches!(
        read_nifti(&gzip(b"hello, world")),
        Err(VolumeError::NotRecognized(_))
    ));
    // An ANALYZE 7.5 header (sizeof_hdr 348, no NIfTI magic).
    let mut analyze = fixture("dt_int16.nii");
    put(&mut analyze, 344, b"\0\0\0\0");
    match expect_err(read_nifti(&analyze)) {
        VolumeError::NotRecognized(m) => assert!(m.contains("n+1"), "{m}"),
        e => panic!("{e:?}"),
    }
}

#[test]
fn truncated_gzip_is_a_decompression_error() {
    let gz = std::fs::read(common::data("t1_crop.nii.gz")).unwrap();
    match expect_err(read_nifti(&gz[..gz.len() / 2])) {
        VolumeError::Decompress(m) => assert!(m.contains("corrupt or truncated"), "{m}"),
        e => panic!("{e:?}"),
    }
    let small = fixture("scaled_int16.nii.gz");
    assert!(matches!(
        read_nifti(&small[..small.len() - 20]),
        Err(VolumeError::Decompress(_))
    ));
    // A corrupted byte in the middle of the deflate stream.
    let mut corrupt = gz.clone();
    for b in &mut corrupt[1000..1100] {
        *b = !*b;
    }
    assert!(matches!(
        read_nifti(&corrupt),
        Err(VolumeError::Decompress(_))
    ));
}

#[test]
fn header_promising_more_voxels_than_present_is_truncated() {
    let full = fixture("dt_int16.nii"); // 7x6x5 int16 = 420 bytes at 352
    assert_eq!(full.len(), 772);
    for bytes in [full[..700].to_vec(), gzip(&full[..700])] {
        match expect_err(read_nifti(&bytes)) {
            VolumeError::Truncated(m) => {
                assert!(
                    m.contains("420 bytes") && m.contains("only 348 bytes"),
                    "{m}"
                );
                assert!(m.contains("7x6x5") && m.contains("int16"), "{m}");
            }
            e => panic!("{e:?}"),
        }
    }
    // A header that is cut short.
    match expect_err(read_nifti(&full[..200])) {
        VolumeError::Truncated(m) => assert!(m.contains("348") && m.contains("200"), "{m}"),
        e => panic!("{e:?}"),
    }
    // A header claiming 10^9 voxels over a few bytes of gzip: refused without allocating them.
    let mut huge = full[..772].to_vec();
    for (i, d) in [1000i16, 1000, 1000].iter().enumerate() {
        put(&mut huge, 42 + 2 * i, &d.to_le_bytes());
    }
    put(&mut huge, 70, &2i16.to_le_bytes()); // uint8
    assert!(matches!(
        read_nifti(&gzip(&huge)),
        Err(VolumeError::Truncated(_))
    ));
}

#[test]
fn absurd_dims_are_too_large() {
    let mut bytes = fixture("dt_uint8.nii");
    for i in 0..3 {
        put(&mut bytes, 42 + 2 * i, &30000i16.to_le_bytes());
    }
    for result in [
        read_nifti(&bytes),
        read_nifti_header(&bytes).map(|_| unreachable!()),
    ] {
        match expect_err(result) {
            VolumeError::TooLarge(m) => assert!(m.contains("30000x30000x30000"), "{m}"),
            e => panic!("{e:?}"),
        }
    }
    // NIfTI-2 dims whose product overflows 64 bits.
    let mut n2 = fixture("nifti2.nii");
    for i in 0..3 {
        put(&mut n2, 24 + 8 * i, &(1i64 << 40).to_le_bytes());
    }
    assert!(matches!(read_nifti(&n2), Err(VolumeError::TooLarge(_))));
    // Within the voxel cap but more than the decompression cap (1000^3 float64 = 8 GB).
    let mut big = fixture("dt_float64.nii");
    for i in 0..3 {
        put(&mut big, 42 + 2 * i, &1000i16.to_le_bytes());
    }
    match expect_err(read_nifti(&gzip(&big))) {
        VolumeError::TooLarge(m) => assert!(m.contains("8000000000"), "{m}"),
        e => panic!("{e:?}"),
    }
    assert!(matches!(read_nifti(&big), Err(VolumeError::Truncated(_))));
}

#[test]
fn gzip_bomb_stops_at_the_header_implied_size() {
    // 8x8x8 uint8 followed by 64 MB of zeros: only the promised bytes are decompressed.
    let mut plain = fixture("dt_uint8.nii");
    for i in 0..3 {
        put(&mut plain, 42 + 2 * i, &8i16.to_le_bytes());
    }
    plain.truncate(352);
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(&plain).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..64 {
        e.write_all(&zeros).unwrap();
    }
    let bomb = e.finish().unwrap();
    assert!(bomb.len() < 200_000);
    let start = std::time::Instant::now();
    let v = read_nifti(&bomb).unwrap();
    assert_eq!(v.data.len(), 512);
    assert!(v.data.capacity() < 4096);
    assert!(start.elapsed().as_secs_f64() < 1.0);
}

#[test]
fn unsupported_datatypes_are_named() {
    for (code, name) in [
        (128i16, "rgb24"),
        (32, "complex64"),
        (1792, "complex128"),
        (2304, "rgba32"),
        (1, "binary"),
        (0, "unknown"),
        (9999, "not a NIfTI datatype"),
    ] {
        let mut bytes = fixture("dt_int16.nii");
        put(&mut bytes, 70, &code.to_le_bytes());
        for result in [
            read_nifti(&bytes),
            read_nifti_header(&bytes).map(|_| unreachable!()),
        ] {
            match expect_err(result) {
                VolumeError::BadHeader(m) => {
                    assert!(m.contains(&format!("datatype {code} ({name})")), "{m}")
                }
                e => panic!("{e:?}"),
            }
        }
    }
}

#[test]
fn wrong_sizeof_hdr_is_a_bad_header() {
    let mut bytes = fixture("dt_int16.nii");
    put(&mut bytes, 0, &349i32.to_le_bytes());
    match expect_err(read_nifti(&bytes)) {
        VolumeError::BadHeader(m) => {
            assert!(m.contains("sizeof_hdr is 349") && m.contains("348"), "{m}")
        }
        e => panic!("{e:?}"),
    }
    let mut n2 = fixture("nifti2.nii");
    put(&mut n2, 0, &0i32.to_le_bytes());
    match expect_err(read_nifti(&n2)) {
        VolumeError::BadHeader(m) => assert!(m.contains("540"), "{m}"),
        e => panic!("{e:?}"),
    }
}

#[test]
fn bad_vox_offsets() {
    // Beyond the end of the file, plain and compressed.
    let mut bytes = fixture("dt_int16.nii");
    put(&mut bytes, 108, &1.0e6f32.to_le_bytes());
    for input in [bytes.clone(), gzip(&bytes)] {
        match expect_err(read_nifti(&input)) {
            VolumeError::BadHeader(m) => {
                assert!(
                    m.contains("vox_offset 1000000 is beyond the end") && m.contains("772 bytes"),
                    "{m}"
                )
            }
            e => panic!("{e:?}"),
        }
    }
    // Inside the header.
    put(&mut bytes, 108, &100.0f32.to_le_bytes());
    match expect_err(read_nifti(&bytes)) {
        VolumeError::BadHeader(m) => {
            assert!(m.contains("vox_offset 100") && m.contains("352"), "{m}")
        }
        e => panic!("{e:?}"),
    }
    for bad in [f32::NAN, f32::INFINITY, -400.0] {
        put(&mut bytes, 108, &bad.to_le_bytes());
        assert!(
            matches!(read_nifti(&bytes), Err(VolumeError::BadHeader(_))),
            "{bad}"
        );
    }
    let mut n2 = fixture("nifti2.nii");
    put(&mut n2, 168, &(-5i64).to_le_bytes());
    assert!(matches!(read_nifti(&n2), Err(VolumeError::BadHeader(_))));
}

#[test]
fn bad_dims_and_magic() {
    let base = fixture("dt_int16.nii");
    let patched = |offset: usize, value: &[u8]| {
        let mut b = base.clone();
        put(&mut b, offset, value);
        b
    };
    for dim0 in [0i16, 8, -1] {
        match expect_err(read_nifti(&patched(40, &dim0.to_le_bytes()))) {
            VolumeError::BadHeader(m) => assert!(m.contains(&format!("dim[0] = {dim0}")), "{m}"),
            e => panic!("{e:?}"),
        }
    }
    for d in [0i16, -3] {
        match expect_err(read_nifti(&patched(44, &d.to_le_bytes()))) {
            VolumeError::BadHeader(m) => assert!(m.contains(&format!("dim[2] = {d}")), "{m}"),
            e => panic!("{e:?}"),
        }
    }
    // 4-D with several frames, and 5-D vector data.
    let mut four = patched(40, &4i16.to_le_bytes());
    put(&mut four, 48, &7i16.to_le_bytes());
    match expect_err(read_nifti(&four)) {
        VolumeError::BadHeader(m) => {
            assert_eq!(
                m,
                "4-D volume with 7 frames: insitu needs a single 3-D volume"
            )
        }
        e => panic!("{e:?}"),
    }
    assert_eq!(read_nifti_header(&four).unwrap().frames, 7);
    let mut five = patched(40, &5i16.to_le_bytes());
    put(&mut five, 48, &1i16.to_le_bytes());
    put(&mut five, 50, &3i16.to_le_bytes());
    match expect_err(read_nifti(&five)) {
        VolumeError::BadHeader(m) => {
            assert!(m.contains("5-D volume with 3 values per voxel"), "{m}")
        }
        e => panic!("{e:?}"),
    }
    // dims beyond dim[0] are ignored.
    let ignored = patched(48, &9i16.to_le_bytes());
    assert_eq!(
        read_nifti(&ignored).unwrap().data,
        read_nifti(&base).unwrap().data
    );
    // Header of a .hdr/.img pair.
    match expect_err(read_nifti(&patched(344, b"ni1\0"))) {
        VolumeError::BadHeader(m) => assert!(
            m.contains(".hdr/.img") && m.contains("not supported")
                || m.contains("only single-file"),
            "{m}"
        ),
        e => panic!("{e:?}"),
    }
    // Valid slope with a non-finite intercept (nibabel refuses it too).
    let mut bad_inter = patched(112, &2.0f32.to_le_bytes());
    put(&mut bad_inter, 116, &f32::NAN.to_le_bytes());
    assert!(matches!(
        read_nifti(&bad_inter),
        Err(VolumeError::BadHeader(_))
    ));
    // A NaN in the sform.
    let nan_sform = patched(280, &f32::NAN.to_le_bytes());
    match expect_err(read_nifti(&nan_sform)) {
        VolumeError::BadHeader(m) => assert!(m.contains("sform"), "{m}"),
        e => panic!("{e:?}"),
    }
    // NIfTI-2 end-of-line check bytes mangled by a text-mode transfer.
    let mut n2 = fixture("nifti2.nii");
    put(&mut n2, 8, b"\n\x1a\n\0");
    match expect_err(read_nifti(&n2)) {
        VolumeError::BadHeader(m) => assert!(m.contains("text mode"), "{m}"),
        e => panic!("{e:?}"),
    }
}

#[test]
fn no_panics_on_mutated_or_truncated_input() {
    let mut state = 0x9E3779B97F4A7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let names = [
        "dt_int16.nii",
        "dt_float64.nii",
        "nifti2.nii",
        "extension.nii",
        "big_endian_float64.nii",
        "qform_only.nii",
    ];
    for name in names {
        let original = fixture(name);
        for cut in 0..original.len() {
            let _ = read_nifti(&original[..cut]);
            let _ = read_nifti_header(&original[..cut]);
        }
        for _ in 0..3000 {
            let mut bytes = original.clone();
            for _ in 0..1 + next() % 6 {
                // Mostly the header, where the interesting fields are.
                let pos = (next() % 600) as usize % bytes.len();
                bytes[pos] = next() as u8;
            }
            let _ = read_nifti(&bytes);
            let _ = read_nifti_header(&bytes);
        }
    }
    let gz = fixture("nifti2_be_qform.nii.gz");
    for cut in 0..gz.len() {
        let _ = read_nifti(&gz[..cut]);
    }
    for _ in 0..2000 {
        let mut bytes = gz.clone();
        let pos = (next() as usize) % bytes.len();
        bytes[pos] = next() as u8;
        let _ = read_nifti(&bytes);
    }
}

// ---------------------------------------------------------------------------------------------
// Writing

fn rotation(degrees: [f64; 3]) -> [[f64; 3]; 3] {
    let mut m = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    for (axis, deg) in degrees.iter().enumerate() {
        let (s, c) = deg.to_radians().sin_cos();
        let (i, j) = [(1, 2), (0, 2), (0, 1)][axis];
        let mut r = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
        r[i][i] = c;
        r[i][j] = -s;
        r[j][i] = s;
        r[j][j] = c;
        let prev = m;
        for a in 0..3 {
            for b in 0..3 {
                m[a][b] = (0..3).map(|k| r[a][k] * prev[k][b]).sum();
            }
        }
    }
    m
}

/// An oblique geometry; `left` flips the last axis (a left-handed affine, qfac -1).
fn geometry(dims: [usize; 3], left: bool, sform_code: i16, qform_code: i16) -> Geometry {
    let spacing = [1.2, 0.9, 2.5];
    let r = rotation([12.0, -25.0, 40.0]);
    let mut affine = [[0.0; 4]; 4];
    for i in 0..3 {
        for j in 0..3 {
            let flip = if left && j == 2 { -1.0 } else { 1.0 };
            affine[i][j] = r[i][j] * spacing[j] * flip;
        }
    }
    affine[0][3] = -87.25;
    affine[1][3] = 101.5;
    affine[2][3] = -33.0;
    affine[3][3] = 1.0;
    Geometry {
        dims,
        spacing,
        affine,
        sform_code,
        qform_code,
    }
}

fn labels_on(geometry: Geometry, max: u16) -> LabelMap {
    let n = geometry.voxel_count();
    let mut labels: Vec<u16> = (0..n)
        .map(|i| ((i * 7919 + i / 13) % (max as usize + 1)) as u16)
        .collect();
    labels[n / 2] = max;
    LabelMap { geometry, labels }
}

fn assert_affine_close(a: &[[f64; 4]; 4], b: &[[f64; 4]; 4], tol: f64, what: &str) {
    for r in 0..4 {
        for c in 0..4 {
            assert!((a[r][c] - b[r][c]).abs() <= tol, "{what}: {a:?} != {b:?}");
        }
    }
}

fn i16_at(bytes: &[u8], offset: usize) -> i16 {
    i16::from_le_bytes([bytes[offset], bytes[offset + 1]])
}

#[test]
fn write_labels_round_trips() {
    for (max, datatype, code) in [
        (3u16, "uint8", 2i16),
        (255, "uint8", 2),
        (256, "uint16", 512),
        (1000, "uint16", 512),
    ] {
        for left in [false, true] {
            let labels = labels_on(geometry([9, 7, 5], left, 2, 1), max);
            assert_eq!(labels.max_label(), max);
            for gz in [false, true] {
                let bytes = write_labels(&labels, gz);
                assert_eq!(bytes.starts_with(&[0x1f, 0x8b]), gz);
                let plain = if gz { gunzip(&bytes) } else { bytes.clone() };
                assert_eq!(plain.len(), 352 + 9 * 7 * 5 * if max < 256 { 1 } else { 2 });
                assert_eq!(i16_at(&plain, 68), NIFTI_INTENT_LABEL);
                assert_eq!(i16_at(&plain, 70), code);
                assert_eq!(
                    f32::from_le_bytes(plain[108..112].try_into().unwrap()),
                    352.0
                );
                assert_eq!(plain[123], 10, "xyzt_units");
                assert_eq!(&plain[344..348], b"n+1\0");
                assert_eq!(&plain[348..352], &[0, 0, 0, 0]);
                assert_eq!(
                    f32::from_le_bytes(plain[76..80].try_into().unwrap()),
                    if left { -1.0 } else { 1.0 },
                    "qfac"
                );

                let info = read_nifti_header(&bytes).unwrap();
                assert_eq!(info.datatype, datatype);
                let back = read_nifti(&bytes).unwrap();
                let back = LabelMap::from_volume(&back).unwrap();
                assert_eq!(back.labels, labels.labels);
                assert_eq!(back.geometry.dims, labels.geometry.dims);
                assert_eq!((back.geometry.sform_code, back.geometry.qform_code), (2, 1));
                assert_affine_close(
                    &back.geometry.affine,
                    &labels.geometry.affine,
                    1e-5,
                    "sform",
                );
                for i in 0..3 {
                    assert!((back.geometry.spacing[i] - labels.geometry.spacing[i]).abs() < 1e-6);
                }
                // The qform alone (sform_code set to 0) gives the same affine.
                let mut qonly = plain.clone();
                put(&mut qonly, 254, &0i16.to_le_bytes());
                let q = read_nifti_header(&qonly).unwrap();
                assert_eq!(q.geometry.sform_code, 0);
                assert_affine_close(&q.geometry.affine, &labels.geometry.affine, 1e-5, "qform");
            }
        }
    }
}

#[test]
fn write_keeps_codes_but_never_loses_the_affine() {
    // qform only: the qform carries the affine.
    let labels = labels_on(geometry([4, 5, 6], true, 0, 1), 5);
    let back = read_nifti(&write_labels(&labels, false)).unwrap().geometry;
    assert_eq!((back.sform_code, back.qform_code), (0, 1));
    assert_affine_close(&back.affine, &labels.geometry.affine, 1e-5, "qform only");

    // No transform and the ANALYZE fallback affine: stays without codes.
    let fallback = read_nifti(&fixture("no_xform.nii")).unwrap();
    let labels = LabelMap {
        geometry: fallback.geometry.clone(),
        labels: vec![1; fallback.data.len()],
    };
    let back = read_nifti(&write_labels(&labels, true)).unwrap().geometry;
    assert_eq!(back, fallback.geometry);

    // No codes but some other affine: written as an aligned sform.
    let labels = labels_on(geometry([4, 5, 6], false, 0, 0), 5);
    let back = read_nifti(&write_labels(&labels, false)).unwrap().geometry;
    assert_eq!((back.sform_code, back.qform_code), (2, 0));
    assert_affine_close(&back.affine, &labels.geometry.affine, 1e-5, "no codes");

    // A sheared affine with only a qform code: the qform cannot hold it, so the sform is set.
    let mut sheared = geometry([4, 5, 6], false, 0, 1);
    sheared.affine[0][1] += 0.3;
    let labels = labels_on(sheared, 5);
    let back = read_nifti(&write_labels(&labels, false)).unwrap().geometry;
    assert_eq!((back.sform_code, back.qform_code), (1, 1));
    assert_affine_close(&back.affine, &labels.geometry.affine, 1e-5, "sheared");
}

#[test]
fn write_volume_round_trips() {
    let g = geometry([6, 5, 4], true, 4, 4);
    let data: Vec<f32> = (0..g.voxel_count())
        .map(|i| (i as f32 - 40.0) * 1.37e-3 + if i == 7 { 3.4e38 } else { 0.0 })
        .collect();
    let volume = Volume { geometry: g, data };
    for gz in [false, true] {
        let bytes = write_volume(&volume, gz);
        let info = read_nifti_header(&bytes).unwrap();
        assert_eq!(info.datatype, "float32");
        let back = read_nifti(&bytes).unwrap();
        assert_eq!(back.data, volume.data);
        assert_eq!((back.geometry.sform_code, back.geometry.qform_code), (4, 4));
        assert_affine_close(
            &back.geometry.affine,
            &volume.geometry.affine,
            1e-5,
            "write_volume",
        );
    }
    // The sample T1 survives a write/read cycle unchanged.
    let t1 = read_nifti(&std::fs::read(common::data("t1_crop.nii.gz")).unwrap()).unwrap();
    let back = read_nifti(&write_volume(&t1, true)).unwrap();
    assert_eq!(back.data, t1.data);
    assert_eq!(back.geometry.dims, t1.geometry.dims);
    assert_affine_close(&back.geometry.affine, &t1.geometry.affine, 1e-4, "t1");
}

const NIBABEL_DUMP: &str = r#"
import json, sys
import nibabel as nib, numpy as np
img = nib.load(sys.argv[1])
h = img.header
print(json.dumps({
    "shape": [int(s) for s in img.shape],
    "dtype": img.get_data_dtype().name,
    "affine": img.affine.tolist(),
    "qform": img.get_qform().tolist(),
    "sform_code": int(h["sform_code"]),
    "qform_code": int(h["qform_code"]),
    "intent_code": int(h["intent_code"]),
    "xyzt_units": int(h["xyzt_units"]),
    "zooms": [float(z) for z in h.get_zooms()],
    "data": np.asarray(img.dataobj).ravel(order="F").tolist(),
}))
"#;

fn nibabel_available() -> bool {
    Command::new("python3")
        .args(["-c", "import nibabel"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn written_labels_load_in_nibabel() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("nifti");
    std::fs::create_dir_all(&dir).unwrap();
    let have_nibabel = nibabel_available();
    if !have_nibabel {
        eprintln!(
            "python3 with nibabel not found: checking the written files with read_nifti only"
        );
    }
    for (max, left, gz) in [(4u16, true, true), (300, false, false), (17, false, true)] {
        let labels = labels_on(geometry([11, 8, 6], left, 2, 1), max);
        let bytes = write_labels(&labels, gz);
        let path = dir.join(format!(
            "labels_{max}_{left}.nii{}",
            if gz { ".gz" } else { "" }
        ));
        std::fs::write(&path, &bytes).unwrap();

        // Always: read back what was written.
        let back = read_nifti(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(LabelMap::from_volume(&back).unwrap().labels, labels.labels);
        assert_affine_close(
            &back.geometry.affine,
            &labels.geometry.affine,
            1e-5,
            "read back",
        );

        if !have_nibabel {
            continue;
        }
        let out = Command::new("python3")
            .args(["-c", NIBABEL_DUMP])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nibabel failed on {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let nib: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(nib["shape"], serde_json::json!([11, 8, 6]));
        assert_eq!(nib["dtype"], if max < 256 { "uint8" } else { "uint16" });
        assert_eq!(nib["sform_code"], 2);
        assert_eq!(nib["qform_code"], 1);
        assert_eq!(nib["intent_code"], 1002);
        assert_eq!(nib["xyzt_units"], 10);
        for key in ["affine", "qform"] {
            for r in 0..4 {
                for c in 0..4 {
                    let e = f(&nib[key][r][c]);
                    assert!(
                        (e - labels.geometry.affine[r][c]).abs() < 1e-5,
                        "nibabel {key} {}",
                        nib[key]
                    );
                }
            }
        }
        for i in 0..3 {
            assert!((f(&nib["zooms"][i]) - labels.geometry.spacing[i]).abs() < 1e-6);
        }
        let data: Vec<u16> = nib["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u16)
            .collect();
        assert_eq!(data, labels.labels);
    }
}
