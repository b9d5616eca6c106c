#!/usr/bin/env bash
# One command: set up, build, and run every test (Rust, then the browser).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

printf '\n== Rust tests\n' >&2
# One feature set for every test (the CLI was built with it too), so dependencies build once.
# tests/gpu.rs runs the native GPU path (wgpu; Mesa lavapipe where there is no GPU).
cargo test --features gpu --no-fail-fast

printf '\n== browser tests\n' >&2
mirror="${INSITU_MIRROR:-../shared}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# A small crop keeps the WebGPU run fast on software adapters.
target/debug/insitu convert dist/assets/data/t1_crop.nii.gz -o "$work/small.nii.gz" --crop 100,100,100,48,48,48
target/debug/insitu segment --model tissue_fast --crop "$work/small.nii.gz" -o "$work/expected.nii.gz"
# A reference on the same grid, and the CLI's metrics the page must reproduce.
target/debug/insitu convert "$mirror/data/reference/t1_crop_tissue_fast.nii.gz" -o "$work/reference.nii.gz" --crop 100,100,100,48,48,48
target/debug/insitu eval --pred "$work/expected.nii.gz" --ref "$work/reference.nii.gz" --json > "$work/eval.json"
# LiteMedSAM on the CPU: two boxes on one slice of the TotalSegmentator CT, then the second
# propagated through slices 14..17, as the page's box panel draws them.
ct="$mirror/data/totalsegmentator/example_ct_sm.nii.gz"
target/debug/insitu prompt "$ct" --device cpu --box 45,26,104,84@15 --box 11,23,27,54@15 -o "$work/prompt2d.nii.gz"
target/debug/insitu prompt "$ct" --device cpu --box 45,26,104,84@15 --box3d 11,23,14,27,54,17 -o "$work/prompt3d.nii.gz"
INSITU_TEST_PROMPT_2D="$work/prompt2d.nii.gz" INSITU_TEST_PROMPT_3D="$work/prompt3d.nii.gz" \
  INSITU_TEST_VOLUME="$work/small.nii.gz" INSITU_TEST_EXPECTED="$work/expected.nii.gz" \
  INSITU_TEST_REFERENCE="$work/reference.nii.gz" INSITU_TEST_EVAL_JSON="$work/eval.json" \
  INSITU_TEST_DATA="$mirror/data" node --test tests/browser/
