#!/usr/bin/env bash
# GPU check, at most 6 minutes. First tests/test_gpu.py (GPU results equal CPU ones to float
# rounding); then scripts/bench_gpu_loop.py (client updates per second of fedray's loop and
# vectorised paths against a hand-written pure-torch loop, same clients, same GPU); then three
# short runs with the parameter server on the GPU, each printing client updates per second and
# peak GPU memory as one JSON line: the vectorised FEMNIST-like CNN with one worker and the
# server (0.5 GPU each), then with 4 workers and the server at 0.2 each; last the MoE LM with 4
# workers and the server at 0.2 each. A failing step does not stop the later ones; the exit
# status is 1 if any failed.
#
# Needs a CUDA build of torch in the environment (`make test` installs the CPU build; a GPU
# user installs CUDA torch over it). Usage: bash scripts/gpu_check.sh [extra fedray overrides]
set -euo pipefail
cd "$(dirname "$0")/.."
FEDRAY=${FEDRAY:-.venv/bin/fedray}
PYTHON=${PYTHON:-.venv/bin/python}
OUT=$(mktemp -d)
SMI=
trap 'kill "$SMI" 2>/dev/null || true; rm -rf "$OUT"' EXIT

"$PYTHON" -c 'import torch, sys; ok = torch.cuda.is_available(); print("cuda:", ok, torch.__version__, torch.cuda.get_device_name(0) if ok else ""); sys.exit(0 if ok else 1)'

FAILED=()
# step NAME command...: runs one step, remembering a failure instead of stopping.
step() {
  local name=$1
  shift
  echo "== $name"
  "$@" || FAILED+=("$name")
}

# The GPU paths against the CPU's results (server on the device, client training on it).
step tests "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_gpu.py
# fedray's training paths against a pure-torch loop on the same GPU (no Ray).
step torch_loop "$PYTHON" scripts/bench_gpu_loop.py --clients 200 --repeats 3

# One case: a fedray run with its own nvidia-smi sampler; prints one JSON line.
#   check NAME WORKERS GPUS_PER_WORKER TIMEOUT_S overrides...
check() {
  local name=$1 workers=$2 fraction=$3 limit=$4
  shift 4
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 250 > "$OUT/$name.csv" &
  SMI=$!
  timeout "$limit" "$FEDRAY" cluster.num_workers="$workers" \
    cluster.gpus_per_worker="$fraction" cluster.server_gpu=true \
    tracking.mode=disabled tracking.progress=false "$@" hydra.run.dir="$OUT/$name" | tail -1 || true
  kill "$SMI" 2>/dev/null || true
  if [[ ! -f "$OUT/$name/summary.json" ]]; then
    tail -n 30 "$OUT/$name"/*.log 2>/dev/null || true
    return 1
  fi
  "$PYTHON" - "$OUT" "$name" "$workers" "$fraction" <<'PY'
import json, sys
out, name, workers, fraction = sys.argv[1:]
summary = json.load(open(f"{out}/{name}/summary.json"))
memory = [int(line) for line in open(f"{out}/{name}.csv") if line.strip().isdigit()]
print(json.dumps({
    "check": "gpu",
    "case": name,
    "workers": int(workers),
    "gpus_per_worker": float(fraction),
    "client_updates_per_s": summary["system/client_updates_per_s"],
    "total_s": summary["system/total_s"],
    "eval_accuracy_final": summary.get("final/eval_accuracy"),
    "eval_perplexity_final": summary.get("final/eval_perplexity"),
    "peak_gpu_memory_mib": max(memory, default=None),
}))
PY
}

# The vectorised CNN (FEMNIST-like): one worker and the server, then 4 workers and the server.
CNN=(population=femnist model=cnn training.vectorise=on training.lr=0.05 rounds=20
  participation.cohort_size=200 eval.num_clients=200)
step cnn_w1 check cnn_w1 1 0.5 90 "${CNN[@]}" "$@"
step cnn_w4 check cnn_w4 4 0.2 90 "${CNN[@]}" "$@"
# The MoE LM last (its small batches make it the slowest on a GPU): 4 workers sharing the GPU
# with the server, its progress bar on stderr so that a slow run shows its round times.
step moe_lm check moe_lm 4 0.2 150 experiment=moe_lm rounds=10 participation.cohort_size=64 \
  tracking.progress=true "$@"

if ((${#FAILED[@]})); then
  echo "gpu_check: failed: ${FAILED[*]}"
  exit 1
fi
echo "gpu_check: all steps passed"
