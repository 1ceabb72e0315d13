#!/usr/bin/env bash
# One prepared GPU benchmark for a lent H100 / H200 (about 6-8 minutes; the device tool allows 10 per call).
#
# How to call it (from the session that holds the device tool; the repository root is the working dir):
#
#     run(command="bash experiments/gpu_bench.sh", timeout_s=560)
#
# (leave `kind` out: an H100 is enough; name nvidia-h200 only if the H100s are refused.)  Everything
# lands in $OUT, which comes back under the reply's files_at: copy it to
# experiments/results/gpu_<date>/ afterwards.  Then call give_back unless you rerun at once.
#
# The device machine has jax with CUDA, flax, optax, orbax, torch and torchvision, but no
# tensorflow-datasets, grain or internet: nothing is installed (no pip), the package runs from the
# working tree through PYTHONPATH, and `alexnet-jax bench` never imports alexnet_jax.data.
#
# What it measures (each step in its own process, with its own time limit, skipped when the overall
# budget is spent; the table of each is at the end of the output, the JSON in $OUT):
#   1. ours: alexnet (227, two-column) and alexnet_owt (224), batch 512, bfloat16, 30 steps, mesh 1x1,
#      plus the PyTorch peer ../shared/peers/torch_alexnet.py (eager and torch.compile, bf16 autocast)
#      run first in the same invocation, and ours/peer per matching model.
#   2. ours: the same two nets in float32 (TF32 at XLA's default precision) at batch 512.
#   3. ours: alexnet_cifar (the CIFAR-size paper AlexNet) batch 512 bf16, vs the in-repo torch mirror.
#   The column split over two devices (mesh model=2) is NOT measured: one GPU is lent.  The split's
#   overhead can only be measured on two GPUs; the CPU numbers with virtual devices are in
#   experiments/results/bench_cpu_*.md and say nothing about NVLink/PCIe exchange cost.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-experiments/results/gpu_local}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TF_CPP_MIN_LOG_LEVEL=2
BUDGET=${BUDGET:-500}            # seconds for the whole script
START=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - START) )); }

{
  echo "date: $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit,driver_version --format=csv 2>&1
  python - <<'EOF' 2>&1
import importlib
for m in ("jax", "jaxlib", "flax", "optax", "torch", "torchvision", "tensorflow_datasets", "grain"):
    try:
        print(m, importlib.import_module(m).__version__)
    except Exception as e:  # noqa: BLE001
        print(m, "absent:", type(e).__name__)
import jax
print("devices:", jax.devices())
EOF
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

step() {  # name, limit (s), args...
  local name=$1 limit=$2; shift 2
  local l; l=$(left)
  if (( l < 60 )); then echo "== $name: skipped, $l s left of the budget" | tee -a "$OUT/summary.txt"; return; fi
  (( limit > l )) && limit=$l
  echo "== $name (limit ${limit}s): alexnet-jax $*" | tee -a "$OUT/summary.txt"
  local t0; t0=$(date +%s)
  timeout "$limit" python -m alexnet_jax.cli "$@" --out "$OUT/$name.json" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "   rc=$rc, $(( $(date +%s) - t0 )) s" | tee -a "$OUT/summary.txt"
  grep -v '^{' "$OUT/$name.log" | grep -v -i 'warning\|^I0000\|^W0000' | tail -n 25 >> "$OUT/summary.txt"
}

if [[ "${SMOKE:-0}" == 1 ]]; then  # plumbing check on a CPU: tiny nets, no GPU needed
  SIZE=(--input-size 32 --width 0.0625 --num-classes 10); B=8; S=2
else
  SIZE=(); B=512; S=30
fi
step bf16_peer 330 bench --model alexnet alexnet_owt "${SIZE[@]}" --batch $B --dtype bfloat16 --steps $S --peer
step fp32 150 bench --model alexnet alexnet_owt "${SIZE[@]}" --batch $B --dtype float32 --steps $S
step cifar_bf16_peer 120 bench --model alexnet_cifar --batch $B --dtype bfloat16 --steps $S --peer \
  --peer-no-compile

echo "== two GPUs were not available: mesh model=2 (the 2012 column split) not measured" >> "$OUT/summary.txt"
echo "total $(( $(date +%s) - START )) s" >> "$OUT/summary.txt"
echo
echo "================ summary ================"
cat "$OUT/summary.txt"
