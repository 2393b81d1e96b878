#!/usr/bin/env bash
# The detection, phone-photo and grouping benchmarks on a GPU host with no network: x86-64, an
# NVIDIA driver, Python 3.12. Installs the wheels carried beside this script (benchmarks/wheels/,
# filled as benchmarks/gpu-requirements.txt says) into a fresh venv, checks that onnxruntime sees
# the GPU, runs `bench_detect.py`, `bench_phone.py` (12-MP JPEG, grid HEIC, PNG, WebP made from
# the shared photos: the device's own images/s beside the decode rates, the figures the instance
# throughput table anchors until then) and `bench_group.py` on it and prints their RESULT lines,
# in under 10 minutes (each step has its own time limit; the first TensorRT engine build is part
# of it, and the engines are cached in FACEFLEET_TRT_CACHE for the next run).
#
#   benchmarks/gpu_check.sh              # install (if needed), check, benchmark
#   benchmarks/gpu_check.sh --dry-run    # say what would run; install and run nothing
#
# Environment: PYTHON (python3.12), WHEELS (benchmarks/wheels), VENV (.venv-gpu),
# FACEFLEET_SHARED (../shared: models and photos), FACEFLEET_TRT_CACHE (.trt-cache).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
python=${PYTHON:-python3.12}
wheels=${WHEELS:-$here/wheels}
venv=${VENV:-$root/.venv-gpu}
shared=${FACEFLEET_SHARED:-$(dirname "$root")/shared}
export FACEFLEET_SHARED=$shared
export FACEFLEET_TRT_CACHE=${FACEFLEET_TRT_CACHE:-$root/.trt-cache}
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
src=$root/packages
export PYTHONPATH=$src/common/src:$src/control/src:$src/worker/src:$src/infra/src:$src/embedded/src
dry_run=0

case "${1:-}" in
  --dry-run) dry_run=1 ;;
  "") ;;
  -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
  *) echo "unknown argument: $1 (use --dry-run or nothing)" >&2; exit 2 ;;
esac

run() {  # run "$@", or only show it under --dry-run
  if [ "$dry_run" = 1 ]; then
    printf 'would run:'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

started=$SECONDS
cores=$(nproc)

# 1. What must be here before anything runs.
problems=()
command -v "$python" >/dev/null || problems+=("no $python on PATH (set PYTHON)")
[ -d "$shared/models/facefleet-dev" ] || problems+=("no model pack at $shared/models/facefleet-dev")
[ -d "$shared/faces/gallery" ] || problems+=("no photos at $shared/faces (set FACEFLEET_SHARED)")
if [ ! -x "$venv/bin/python" ]; then
  if ! compgen -G "$wheels/onnxruntime_gpu-*.whl" >/dev/null; then
    problems+=("no onnxruntime-gpu wheel in $wheels (see benchmarks/gpu-requirements.txt)")
  fi
fi
command -v nvidia-smi >/dev/null || problems+=("no nvidia-smi: is this a GPU host with a driver?")
if [ "${#problems[@]}" -gt 0 ]; then
  printf 'gpu_check: %s\n' "${problems[@]}" >&2
  [ "$dry_run" = 1 ] || exit 1
fi

# 2. The environment, from the carried wheels only (no index is ever contacted).
if [ ! -x "$venv/bin/python" ] || [ "$dry_run" = 1 ]; then
  run "$python" -m venv "$venv"
  run timeout 120 "$venv/bin/pip" install --quiet --no-index --find-links "$wheels" \
    -r "$here/gpu-requirements.txt"
  run timeout 30 "$venv/bin/pip" install --quiet --no-index --find-links "$wheels" --no-deps \
    insightface
fi

# 3. The GPU must be what onnxruntime uses, not a silent CPU fallback.
run timeout 60 "$venv/bin/python" - <<'PY'
import onnxruntime as ort
try:
    ort.preload_dlls()  # CUDA/cuDNN from the nvidia-* wheels, when the host has no system copy
except AttributeError:
    pass
providers = ort.get_available_providers()
print("onnxruntime", ort.__version__, providers)
if "CUDAExecutionProvider" not in providers:
    raise SystemExit("gpu_check: onnxruntime has no CUDAExecutionProvider on this host")
import faiss
print("faiss", faiss.__version__, "GPUs:", faiss.get_num_gpus())
PY

# 4. The benchmarks, each with a time limit that keeps the whole check under 5 minutes.
detect_log=$(mktemp) phone_log=$(mktemp) group_log=$(mktemp)
trap 'rm -f "$detect_log" "$phone_log" "$group_log"' EXIT
run timeout 150 "$venv/bin/python" "$here/bench_detect.py" --rounds 2 --workers "$cores" \
  | tee "$detect_log"
# The phone set is encoded on the first run (x265 on every core) and cached under out/.
run timeout 300 "$venv/bin/python" "$here/bench_phone.py" --per-format 10 --rounds 2 \
  --workers "$cores" | tee "$phone_log"
run timeout 100 "$venv/bin/python" "$here/bench_group.py" --sizes 10000 100000 --new 2000 \
  | tee "$group_log"

echo "gpu_check: done in $((SECONDS - started)) s"
grep -h '^RESULT' "$detect_log" "$phone_log" "$group_log" || true
