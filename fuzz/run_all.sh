#!/bin/sh
# Runs every fuzz target for RUNS executions (default 1000000), two at a time, seeding the
# corpora from the test fixtures first. Needs `cargo install cargo-fuzz`; the stable toolchain
# is enough with RUSTC_BOOTSTRAP=1. Crashing inputs land in fuzz/artifacts/<target>/.
set -e
cd "$(dirname "$0")"
RUNS=${RUNS:-1000000}
./seed.sh
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O
mkdir -p logs
run() {
  cargo fuzz run -O "$1" -- -runs="$RUNS" -max_len=65536 -timeout=20 >"logs/$1.log" 2>&1 \
    && echo "$1: $(grep -E '^Done [0-9]+ runs' "logs/$1.log")" \
    || { echo "$1: FAILED, see fuzz/logs/$1.log"; return 1; }
}
status=0
for pair in "nifti nrrd" "mgh metaimage" "dicom read"; do
  set -- $pair
  run "$1" & a=$!
  run "$2" & b=$!
  wait $a || status=1
  wait $b || status=1
done
exit $status
