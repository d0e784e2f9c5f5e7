#!/usr/bin/env bash
# The GPU check as one call on a lent GPU machine (see bench/README.md, "On a GPU").
#
# That machine has python3 with torch (CUDA), onnxruntime (CPU build), nvidia-ml-py, numpy,
# psutil and httpx, and no internet: the platform's other packages travel as wheels in .whl/
# (bench/README.md lists how they are fetched). Everything it prints also goes to $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1
out="${OUT:-/tmp/berth-gpu-out}"
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "the carried wheels did not install" >&2; exit 1; }
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
{
  nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv
  python3 --version
  # The device tests take the real NVML branch there (no GPU here: the other branch).
  timeout 120 python3 -m pytest -q -p no:cacheprovider tests/inference_workers/test_devices.py
  BERTH_GPU_CHECK_LOGS="$out" timeout "${GPU_CHECK_TIMEOUT_S:-420}" python3 -m bench.gpu_check --format "${GPU_CHECK_FORMAT:-torch_export}" ${GPU_CHECK_ARGS:-}
  echo "gpu_check exit: $?"
} 2>&1 | tee "$out/gpu_check.log"
for log in /tmp/berth-bench-gateway-*/platform.log /tmp/berth-bench-gateway-*/second-worker.log; do
  [ -f "$log" ] && tail -c 200000 "$log" > "$out/$(basename "$log")"
done
exit 0
