#!/usr/bin/env bash
# Benchmarks insitu against its peer, the brainchop CLI (PyPI brainchop 0.2.5, tinygrad on the
# CPU: the implementation whose outputs our tests match), on the same input and model.
#
#   scripts/bench.sh [--model tissue_fast|subcortical|DKatlas|mindgrab] [--repeat N] [--input FILE]
#                    [--browser [--browser-args "--sizes 64 --gpu-sizes 32 --repeat 1 ..."]]
#
# --browser then runs the browser side by side, `node scripts/bench-browser.mjs` (insitu's page,
# CPU and WebGPU, against TensorFlow.js's webgl, wasm and webgpu backends in one headless
# Chromium; see that script), with --browser-args passed to it.
#
# Then the kernels alone: `insitu bench-kernels` (each layer on a 128³ cube, GFLOP/s) against the
# machine's measured peak, numpy's sgemm (OpenBLAS) on all cores.
#
# Rows: `insitu segment --space conformed` on the whole 256³ grid, the same with `--crop` (the
# head's bounding box only), and `brainchop -m MODEL --no-optimize` (BEAM off). Runs are
# interleaved (the order rotates each round) so background load hits every tool alike; each is
# timed by /usr/bin/time (wall, user+sys CPU, peak RSS), the table shows medians and the ratios
# brainchop / insitu, and the agreement of each insitu output with brainchop's (fraction of
# equal voxels, mean Dice from `insitu eval`).
#
# brainchop runs from a venv in target/bench-venv with HOME=target/bench-home: its model listing
# and model files are laid there from the mirror (${INSITU_MIRROR:-../shared}), so it never
# reaches the network (proxies point at a closed local port to make sure). tinygrad's compiled
# kernel cache lives there too and persists between invocations (the table says whether it was
# warm). Outputs and logs: target/bench/.
#
# Only PyPI (pip) and Debian (apt-get, for `time` and `clang` when missing) are contacted.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

model=tissue_fast
repeat=1
input=
browser=0
browser_args=
usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --model|-m) model=${2:?--model needs a value}; shift 2 ;;
    --model=*) model=${1#*=}; shift ;;
    --repeat|-n) repeat=${2:?--repeat needs a value}; shift 2 ;;
    --repeat=*) repeat=${1#*=}; shift ;;
    --input|-i) input=${2:?--input needs a value}; shift 2 ;;
    --input=*) input=${1#*=}; shift ;;
    --browser) browser=1; shift ;;
    --browser-args) browser_args=${2?--browser-args needs a value}; shift 2 ;;
    --browser-args=*) browser_args=${1#*=}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "bench: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }
log() { printf '== %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

case "$model" in
  tissue_fast|subcortical|DKatlas|mindgrab) ;;
  *) die "--model $model: choose one both tools run: tissue_fast, subcortical, DKatlas, mindgrab" ;;
esac
[[ "$repeat" =~ ^[1-9][0-9]*$ ]] || die "--repeat $repeat: expected a positive integer"

mirror=${INSITU_MIRROR:-../shared}
[ -d "$mirror" ] || die "mirror $mirror not found (set INSITU_MIRROR)"
mirror=$(cd "$mirror" && pwd)
export INSITU_MIRROR=$mirror
input=${input:-$mirror/data/t1_crop.nii.gz}
[ -f "$input" ] || die "input $input not found"
input=$(cd "$(dirname "$input")" && pwd)/$(basename "$input")

# --- system tools ------------------------------------------------------------------------------
apt_packages=()
[ -x /usr/bin/time ] || apt_packages+=(time)
command -v clang >/dev/null 2>&1 || apt_packages+=(clang)   # tinygrad's CPU backend compiles with clang
if [ ${#apt_packages[@]} -gt 0 ]; then
  log "apt-get install ${apt_packages[*]}"
  as_root apt-get update -q || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q "${apt_packages[@]}" \
    || die "apt-get install ${apt_packages[*]} failed"
fi

# --- insitu ------------------------------------------------------------------------------------
insitu=${INSITU_BIN:-target/debug/insitu}
if [ ! -x "$insitu" ]; then
  log "cargo build --bin insitu"
  cargo build --bin insitu || die "cargo build --bin insitu failed"
fi
[ -x "$insitu" ] || die "$insitu not found after the build"
insitu=$(cd "$(dirname "$insitu")" && pwd)/$(basename "$insitu")

# --- brainchop venv ----------------------------------------------------------------------------
# tinygrad and niimath pinned to the versions the reference outputs in the mirror were made with.
venv=$root/target/bench-venv
py=$venv/bin/python
pip_specs=(brainchop==0.2.5 tinygrad==0.14.0 niimath==1.0.20261016 nibabel)
have_version() { "$py" -c "import importlib.metadata as m, sys; sys.exit(m.version('$1') != '$2')" 2>/dev/null; }
if ! { [ -x "$py" ] && have_version brainchop 0.2.5 && have_version tinygrad 0.14.0 \
       && have_version niimath 1.0.20261016 && "$py" -c 'import nibabel' 2>/dev/null; }; then
  log "venv $venv: pip install ${pip_specs[*]}"
  [ -x "$py" ] || python3 -m venv "$venv" || die "python3 -m venv $venv failed"
  "$py" -m pip install -q --disable-pip-version-check "${pip_specs[@]}" || die "pip install ${pip_specs[*]} failed"
fi
# brainchop runs `niimath` from PATH; the wheel ships the binary inside the package.
niimath_bin=$("$py" -c 'import niimath; print(niimath.bin_path)' 2>/dev/null) || die "the niimath wheel is not importable"
[ -x "$niimath_bin" ] || die "the niimath wheel has no executable binary at $niimath_bin"
"$niimath_bin" 2>&1 | grep -q niimath || die "$niimath_bin does not run"

# --- brainchop's model cache, from the mirror --------------------------------------------------
bench_home=$root/target/bench-home
cache=$bench_home/.cache/brainchop
folder=$("$py" - "$mirror/models/brainchop/cli-models.json" "$cache/models.json" "$model" <<'EOF'
import json, sys, os
src, dst, model = sys.argv[1:]
listing = json.load(open(src))
# The mirror's listing names tissue_fast, subcortical and DKatlas; brainchop's own listing also
# has mindgrab (what --skull-strip selects), whose files the mirror keeps in meshnet/mindgrab.
listing.setdefault("mindgrab", {"folder": "mindgrab", "description": "brain extraction",
                                "considerations": "", "parameter_name": "mindgrab"})
if model not in listing:
    sys.exit(f"{model} is not in {src}")
os.makedirs(os.path.dirname(dst), exist_ok=True)
json.dump(listing, open(dst, "w"), indent=2)
print(listing[model]["folder"])
EOF
) || die "cannot build brainchop's models.json from $mirror/models/brainchop/cli-models.json"
src_dir=$mirror/models/brainchop/meshnet/$folder
dst_dir=$cache/models/$folder
[ -f "$src_dir/model.json" ] || die "$src_dir/model.json missing in the mirror"
rm -rf "$dst_dir" && mkdir -p "$dst_dir"
cp "$src_dir/model.json" "$dst_dir/"
if [ -f "$src_dir/model.pth" ]; then cp "$src_dir/model.pth" "$dst_dir/"
elif [ -f "$src_dir/model.bin" ]; then cp "$src_dir/model.bin" "$dst_dir/"
else die "$src_dir has neither model.pth nor model.bin"; fi
chmod -R u+w "$dst_dir"
tinygrad_cache=$bench_home/.cache/tinygrad/cache.db
if [ -s "$tinygrad_cache" ]; then kernels="warm (compiled kernels cached by an earlier run)"
else kernels="cold (the first brainchop run compiles its kernels)"; fi

# --- runs --------------------------------------------------------------------------------------
work=$root/target/bench
rm -rf "$work" && mkdir -p "$work"
results=$work/results.tsv
# A private copy: a parallel `cargo build` may replace target/debug/insitu while we run.
insitu_label=${insitu#"$root"/}
cp "$insitu" "$work/insitu-bin" && insitu=$work/insitu-bin
: >"$results"

insitu_cmd() {  # name extra-args...: the insitu argv
  local name=$1; shift
  cmd=("$insitu" segment --model "$model" "$input" -o "$work/$name.nii.gz" --space conformed "$@")
}
brainchop_cmd() {  # the brainchop argv, environment included
  local out=$work/brainchop.nii.gz extra=()
  if [ "$model" = mindgrab ]; then  # labels: the mask; -o gets the masked head
    out=$work/brainchop_brain.nii.gz
    extra=(--mask "$work/brainchop.nii.gz")
  fi
  cmd=(env -u BEAM -u XDG_CACHE_HOME HOME="$bench_home" PATH="$(dirname "$niimath_bin"):$venv/bin:$PATH"
    DEV=CPU http_proxy=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9
    HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 no_proxy= NO_PROXY=
    "$venv/bin/brainchop" "$input" -m "$model" -o "$out" --no-optimize "${extra[@]}")
}
timed() {  # tool round cmd...
  local tool=$1 round=$2; shift 2
  local logf=$work/$tool.$round.log tf=$work/$tool.$round.time
  log "round $round/$repeat: $tool"
  if ! (cd "$work" && /usr/bin/time -f '%e %U %S %M' -o "$tf" "$@" </dev/null >"$logf" 2>&1); then
    tail -n 30 "$logf" >&2
    die "$tool failed (round $round); log: $logf"
  fi
  printf '%s\t%s\n' "$tool" "$(tail -n 1 "$tf")" >>"$results"
}
tools=(insitu insitu_crop brainchop)
for ((r = 1; r <= repeat; r++)); do
  for ((i = 0; i < ${#tools[@]}; i++)); do
    tool=${tools[(i + r - 1) % ${#tools[@]}]}
    case "$tool" in
      insitu) insitu_cmd insitu ;;
      insitu_crop) insitu_cmd insitu_crop --crop ;;
      brainchop) brainchop_cmd ;;
    esac
    timed "$tool" "$r" "${cmd[@]}"
  done
done

# --- agreement ---------------------------------------------------------------------------------
for name in insitu insitu_crop; do
  "$insitu" eval --pred "$work/$name.nii.gz" --ref "$work/brainchop.nii.gz" --json >"$work/$name.eval.json" \
    2>"$work/$name.eval.log" || { cat "$work/$name.eval.log" >&2; die "insitu eval $name vs brainchop failed"; }
done

# --- table -------------------------------------------------------------------------------------
"$py" - "$work" "$model" "$repeat" "$input" "$kernels" "$insitu_label" <<'EOF' || die "could not summarize $work"
import json, os, statistics, sys
import nibabel as nib, numpy as np
work, model, repeat, input_path, kernels, insitu_bin = sys.argv[1:]
rows = {}
for line in open(os.path.join(work, "results.tsv")):
    tool, fields = line.rstrip("\n").split("\t")
    wall, user, system, rss_kib = (float(x) for x in fields.split())
    rows.setdefault(tool, []).append((wall, user + system, rss_kib / 1024))
med = {t: tuple(statistics.median(r[i] for r in runs) for i in range(3)) for t, runs in rows.items()}

ref = np.asarray(nib.load(os.path.join(work, "brainchop.nii.gz")).dataobj)
def agreement(name):
    ours = np.asarray(nib.load(os.path.join(work, name + ".nii.gz")).dataobj)
    if ours.shape != ref.shape:
        sys.exit(f"{name}: shape {ours.shape} differs from brainchop's {ref.shape}")
    differ = int(np.count_nonzero(ours.astype(np.int64) != ref.astype(np.int64)))
    dice = json.load(open(os.path.join(work, name + ".eval.json")))["mean"]["dice"]
    return 1 - differ / ref.size, differ, dice

labels = {"insitu": "insitu", "insitu_crop": "insitu --crop", "brainchop": "brainchop 0.2.5"}
b = med["brainchop"]
print()
print(f"model {model}, input {os.path.basename(input_path)}, {repeat} run(s) per tool, interleaved; "
      f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end")
print(f"insitu: {insitu_bin} (insitu's CPU kernels)")
print(f"brainchop: tinygrad 0.14.0 CPU (clang), --no-optimize (BEAM=0); tinygrad kernel cache {kernels}")
print(f"{'tool':<16} {'model':<12} {'wall s':>7} {'cpu s':>7} {'RSS MiB':>8} "
      f"{'bc/x wall':>10} {'bc/x cpu':>9} {'bc/x RSS':>9} {'voxels = bc':>12} {'voxels != bc':>12} {'mean Dice':>10}")
for tool in ("insitu", "insitu_crop", "brainchop"):
    wall, cpu, rss = med[tool]
    if tool == "brainchop":
        extra = f"{'1.00x':>10} {'1.00x':>9} {'1.00x':>9} {'-':>12} {'-':>12} {'-':>10}"
    else:
        equal, differ, dice = agreement(tool)
        extra = (f"{b[0] / wall:>9.2f}x {b[1] / cpu:>8.2f}x {b[2] / rss:>8.2f}x {100 * equal:>11.4f}% {differ:>12} "
                 f"{dice if dice is not None else float('nan'):>10.5f}")
    print(f"{labels[tool]:<16} {model:<12} {wall:>7.1f} {cpu:>7.1f} {rss:>8.0f} {extra}")
print("wall s, cpu s (user+sys), RSS MiB (peak): medians of /usr/bin/time; bc/x = brainchop's median / "
      "that row's (>1: insitu faster or smaller); voxels = bc: share of voxels whose label equals brainchop's")
print(f"outputs and logs: {work}")
EOF

# --- kernels against the machine's peak --------------------------------------------------------
log "kernels: insitu bench-kernels --model $model --size 128 --repeat 3; peak: numpy sgemm"
"$insitu" bench-kernels --model "$model" --size 128 --repeat 3 >"$work/kernels.txt" \
  || die "insitu bench-kernels failed"
"$py" - "$work/kernels.txt" <<'EOF' || die "could not measure the sgemm peak"
import sys, time
import numpy as np
n = 2048
a = np.random.default_rng(0).random((n, n), dtype=np.float32)
b = np.random.default_rng(1).random((n, n), dtype=np.float32)
a @ b
runs = []
for _ in range(5):
    t = time.perf_counter(); a @ b; runs.append(time.perf_counter() - t)
peak = 2 * n**3 / sorted(runs)[len(runs) // 2] / 1e9
lines = open(sys.argv[1]).read().splitlines()
print()
print("\n".join(lines))
total = float(lines[-1].split()[-1])
print(f"peak: numpy {np.__version__} sgemm {n}x{n} (OpenBLAS, all cores) {peak:.1f} GFLOP/s; "
      f"insitu's layers together {total:.1f} GFLOP/s = {100 * total / peak:.0f} % of it")
EOF

# --- the browser, side by side with TF.js ------------------------------------------------------
if [ "$browser" = 1 ]; then
  log "browser: node scripts/bench-browser.mjs $browser_args"
  # shellcheck disable=SC2086 # browser_args is a list of options
  node scripts/bench-browser.mjs $browser_args || die "the browser benchmark failed"
fi
