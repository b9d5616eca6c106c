//! Readers of LiteMedSAM's reference fixtures (tests/fixtures/litemedsam, written by
//! make_expected.py).

use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};

pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/litemedsam")
}

/// The cases and their provenance.
pub fn expected() -> Value {
    let text = std::fs::read_to_string(fixture_dir().join("expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("expected.json parses")
}

/// The cases of `kind` ("2d" or "3d"), in the fixture's order.
pub fn cases<'a>(expected: &'a Value, kind: &str) -> Vec<&'a Value> {
    expected["cases"]
        .as_array()
        .expect("expected.json has cases")
        .iter()
        .filter(|c| c["kind"] == kind)
        .collect()
}

/// A gzipped fixture file's bytes.
pub fn gunzip(name: &str) -> Vec<u8> {
    let path = fixture_dir().join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&bytes[..])
        .read_to_end(&mut out)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    out
}

/// `np.packbits` (most significant bit first) undone, `len` values of 0/1.
pub fn unpack_bits(packed: &[u8], len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (packed[i / 8] >> (7 - i % 8)) & 1)
        .collect()
}

/// Dice of two 0/1 masks (1 when both are empty).
pub fn dice(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let both = a.iter().zip(b).filter(|(x, y)| **x > 0 && **y > 0).count();
    let total = a.iter().filter(|v| **v > 0).count() + b.iter().filter(|v| **v > 0).count();
    if total == 0 {
        1.0
    } else {
        2.0 * both as f64 / total as f64
    }
}
