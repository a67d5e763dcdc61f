#!/usr/bin/env bash
# GPU check, at most 5 minutes: a short MoE LM simulation with 4 client workers sharing one GPU
# (0.25 each) and the parameter server on the GPU; prints throughput and peak GPU memory. First
# runs tests/test_gpu.py (GPU results equal CPU ones to float rounding), skipped on CPU runs.
#
# Needs a CUDA build of torch in the environment (`make test` installs the CPU build; a GPU
# user installs CUDA torch over it). Usage: bash scripts/gpu_check.sh [extra fedray overrides]
set -euo pipefail
cd "$(dirname "$0")/.."
FEDRAY=${FEDRAY:-.venv/bin/fedray}
PYTHON=${PYTHON:-.venv/bin/python}
OUT=$(mktemp -d)
trap 'kill "$SMI" 2>/dev/null || true; rm -rf "$OUT"' EXIT

"$PYTHON" -c 'import torch, sys; ok = torch.cuda.is_available(); print("cuda:", ok, torch.__version__, torch.cuda.get_device_name(0) if ok else ""); sys.exit(0 if ok else 1)'

# The GPU paths against the CPU's results (server on the device, client training on it).
"$PYTHON" -m pytest -q -p no:cacheprovider tests/test_gpu.py

nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 250 > "$OUT/memory.csv" &
SMI=$!

timeout 270 "$FEDRAY" experiment=moe_lm rounds=20 participation.cohort_size=64 \
  cluster.num_workers=4 cluster.gpus_per_worker=0.25 cluster.server_gpu=true \
  tracking.mode=disabled tracking.progress=false hydra.run.dir="$OUT/run" "$@" | tail -1

kill "$SMI" 2>/dev/null || true
"$PYTHON" - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
summary = json.load(open(f"{out}/run/summary.json"))
memory = [int(line) for line in open(f"{out}/memory.csv") if line.strip().isdigit()]
print(json.dumps({
    "check": "gpu",
    "workers": 4,
    "gpus_per_worker": 0.25,
    "client_updates_per_s": summary["system/client_updates_per_s"],
    "total_s": summary["system/total_s"],
    "eval_perplexity_final": summary.get("final/eval_perplexity"),
    "peak_gpu_memory_mib": max(memory, default=None),
}))
PY
