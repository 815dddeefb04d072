#!/usr/bin/env bash
# One script for a lent GPU: ends well inside 9 minutes and writes everything under one folder.
#   bash bench/gpu_check.sh [OUT]              (OUT defaults to $OUT, then ./gpu-check)
#   DRY_RUN=1 bash bench/gpu_check.sh /tmp/x   (on a CPU machine: tiny budgets, checks the script runs)
# Steps: 1. the gpu-marked tests; 2. bench/bench_gpu.py (ImageNet-LC rules x fp32/bf16: images/s,
# peak memory against the planner's estimate; LC vs Conv2d vs naive LC on the ImageNet-LC shapes;
# per-step overhead: Adam kernels and a CUDA graph); 3. one MNIST-FC BP run alone, then every
# MNIST cell of Table 1 (19 presets, seed 0) in flight together for the time left, then
# `bioprop report` on them and the aggregate throughput of the runs sharing the GPU.
# It needs only torch, tqdm, matplotlib and pytest: the project runs from src/ on PYTHONPATH.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu-check}}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
python="${PYTHON:-python3}"
data="${BIOPROP_DATA:-$PWD/../shared/data}"
started=$(date +%s)
elapsed() { echo $(( $(date +%s) - started )); }
if [ "${DRY_RUN:-0}" = 1 ]; then
    device=cpu; tests_budget=60; bench_flags="--device cpu --tiny"; bench_budget=120
    alone_flags="--limit-batches 20"; cells="mnist-fc-bp mnist-fc-dtp-alternating mnist-lc-bp"
    cell_flags="--limit-batches 10"; total=420; jobs=2
else
    device=cuda; tests_budget=120; bench_flags="--batch 64 --steps 5"; bench_budget=150
    alone_flags=""; cells="mnist"; cell_flags=""; total=500; jobs=19
fi
{
    echo "# GPU check, $(date -u '+%Y-%m-%d %H:%M UTC')"
    "$python" -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA')"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
} | tee "$out/summary.txt"

echo "## 1. gpu tests ($(elapsed) s)" | tee -a "$out/summary.txt"
timeout "$tests_budget" "$python" -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tail -25 > "$out/gpu-tests.txt"
tail -3 "$out/gpu-tests.txt" | tee -a "$out/summary.txt"

echo "## 2. bench_gpu ($(elapsed) s)" | tee -a "$out/summary.txt"
timeout "$bench_budget" "$python" bench/bench_gpu.py --out "$out" $bench_flags > "$out/bench_gpu.log" 2>&1
tail -3 "$out/bench_gpu.log" | cut -c1-200 | tee -a "$out/summary.txt"

echo "## 3. MNIST cells ($(elapsed) s)" | tee -a "$out/summary.txt"
timeout 60 "$python" -m bioprop train --preset mnist-fc-bp --epochs 3 --device "$device" --data-dir "$data" \
    --no-progress --out "$out/alone/mnist-fc-bp" $alone_flags > "$out/alone.log" 2>&1
left=$(( total - $(elapsed) ))
echo "running the cells for ${left} s" | tee -a "$out/summary.txt"
# stopped (TERM, then KILL 5 s later) when the time is up; reproduce stops its run processes with it
timeout -k 5 "$left" "$python" -m bioprop reproduce $cells --seeds 1 --epochs 100 --device "$device" \
    --jobs "$jobs" --threads 1 --data-dir "$data" --out "$out/mnist" --no-report --no-progress $cell_flags \
    > "$out/reproduce.log" 2>&1
"$python" -m bioprop report "$out/mnist" --out "$out/report" > /dev/null 2>&1 && echo "report: $out/report/report.md" | tee -a "$out/summary.txt"
"$python" - "$out" <<'PY' | tee -a "$out/summary.txt"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def per_epoch(path):
    rows = [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []
    return sorted(r["seconds"] + r.get("eval_seconds", 0) for r in rows)[len(rows) // 2] if rows else None
alone = per_epoch(out / "alone/mnist-fc-bp/metrics.jsonl")
shared = {p.parent.parent.name: per_epoch(p) for p in (out / "mnist").glob("*/seed0/metrics.jsonl")}
shared = {k: v for k, v in shared.items() if v}
print(f"alone: mnist-fc-bp {alone} s/epoch; in flight together: {len(shared)} runs")
if alone and "mnist-fc-bp" in shared:
    print(f"mnist-fc-bp shared the GPU at {shared['mnist-fc-bp']:.2f} s/epoch: each run {shared['mnist-fc-bp'] / alone:.2f}x "
          f"slower, so {len(shared)} runs do {len(shared) * alone / shared['mnist-fc-bp']:.1f}x the epochs per second of one")
print("epochs done:", {k: len((out / 'mnist' / k / 'seed0/metrics.jsonl').read_text().splitlines()) for k in sorted(shared)})
PY
echo "done in $(elapsed) s" | tee -a "$out/summary.txt"
