#!/usr/bin/env bash
# Every GPU measurement of the project in one call on one GPU host (sized for one H100/H200 and ~9 min):
#
#   1. the train step, bf16, batch 512: the two-column `alexnet` (227) and the one-column `alexnet_owt`
#      (224) against the PyTorch peers and exact twins (eager and torch.compile) in the same invocation,
#      and a profile of the two-column step (top ops, LRN's share);
#   2. K12 §3.2 / Figure 3 at full width on CIFAR-10 (experiments/alexnet_columns_cifar10.py: a pilot of
#      2 seeds sets the seed count by the pre-registered rule (at most $MAXSEEDS), then 3 nets x that many
#      seeds, $EPOCHS epochs, input 32, float32, $JOBS runs at a time) and one seed of each net in bfloat16;
#   3. the input pipeline end to end: both nets trained from imagenet2012/raw256 records built from the
#      100 sample photos, against the same step on a batch already on the device.
#
# Run from the repository root on a GPU host with this package's dependencies:
#
#     bash experiments/gpu_run.sh                      # writes $OUT (default runs/gpu_run)
#
# Inputs: the CIFAR-10 tarball and the sample photos, from ../shared/data, or from $GPU_DATA (a folder
# holding cifar10_train_jpeg.tar.gz and imagenet_samples_100.tar) on a host without ../shared.  A host
# without tensorflow-datasets / simplejpeg installs them first from wheels in $WHEELS, if set.
# Each part has its own time limit and is skipped when the overall budget ($BUDGET s) is spent; the
# summary is at the end of the output, every JSON in $OUT.  SMOKE=1 runs the same plumbing on a CPU at
# tiny sizes (tests/test_experiments.py does).
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/gpu_run}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
BUDGET=${BUDGET:-540}
START=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
DATA="${GPU_DATA:-../shared/data}"
CIFAR="$DATA/cifar10_train_jpeg.tar.gz"; [[ -f $CIFAR ]] || CIFAR="$DATA/cifar10/cifar10_train_jpeg.tar.gz"
PHOTOS="$DATA/imagenet_samples_100.tar"; [[ -f $PHOTOS ]] || PHOTOS="$DATA/imagenet_samples/imagenet_samples_100.tar"
if [[ -n "${WHEELS:-}" ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$WHEELS"/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

{
  echo "date: $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi"
  python - <<'EOF' 2>&1
import importlib
for m in ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "torch", "tensorflow_datasets", "simplejpeg"):
    try:
        print(m, getattr(importlib.import_module(m), "__version__", "?"))
    except Exception as e:  # noqa: BLE001
        print(m, "absent:", type(e).__name__)
import jax
print("devices:", jax.devices())
EOF
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

part() {  # name, limit (s), command...
  local name=$1 limit=$2; shift 2
  limit=$(( limit * SCALE ))
  local l; l=$(left)
  if (( l < 45 )); then echo "== $name: skipped, $l s left of the budget" | tee -a "$OUT/summary.txt"; return; fi
  (( limit > l )) && limit=$l
  echo "== $name (limit ${limit}s): $*" | tee -a "$OUT/summary.txt"
  local t0; t0=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "   rc=$?, $(( $(date +%s) - t0 )) s" | tee -a "$OUT/summary.txt"
  grep -v '^{' "$OUT/$name.log" | grep -v -i 'warning\|^I0000\|^W0000' | tail -n 20 >> "$OUT/summary.txt"
}
bench=(python -m alexnet_jax.cli bench)   # an array, not a function: `timeout` runs programs only

if [[ "${SMOKE:-0}" == 1 ]]; then   # plumbing on a CPU: tiny nets and runs
  SIZE=(--input-size 32 --width 0.0625 --num-classes 10); B=8; S=2; W=0.0625; EPOCHS=0.02; JOBS=2; MAXSEEDS=3
  SCALE=4   # a 2-core CPU pays JAX start-up and compiles that a GPU host's 16 cores hide: limits x4
  E2E=(--input-size 64 --width 0.0625 --batch 8 --steps 2 --records 64)
else
  SCALE=1; SIZE=(); B=512; S=30; W=1.0; EPOCHS=${EPOCHS:-8}; JOBS=${JOBS:-3}; MAXSEEDS=${MAXSEEDS:-6}
  E2E=(--batch 512 --steps 20 --records 3000)
fi

# 1. the step against the torch peers and twins (bf16), then the two-column step's profile
part step_bf16_peers 240 "${bench[@]}" --model alexnet alexnet_owt "${SIZE[@]}" --batch $B --dtype bfloat16 \
  --steps $S --peer --out "$OUT/step_bf16_peers.json"
part step_profile 90 "${bench[@]}" --model alexnet "${SIZE[@]}" --batch $B --dtype bfloat16 --steps $S --profile \
  --out "$OUT/step_profile.json"

# 2. the columns experiment at full width, float32, then one seed of each net in bfloat16
export TFDS_DATA_DIR="$OUT/tfds"
COLS=(python experiments/alexnet_columns_cifar10.py --out "$OUT/columns" --cifar-source "$CIFAR" --width $W
      --epochs $EPOCHS)
part columns_pilot 150 "${COLS[@]}" --jobs $JOBS --max-seeds $MAXSEEDS pilot --seeds 0,1
N=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['seeds_for_main'])" "$OUT/columns/pilot.json" \
    2>/dev/null || echo 3)
part columns_main 240 "${COLS[@]}" --jobs $JOBS main --seeds "$(seq -s, 0 $((N - 1)))"
part columns_report 60 "${COLS[@]}" report   # rebuilds each seed's net at init (one compile per seed)
part columns_bf16 90 python experiments/alexnet_columns_cifar10.py --out "$OUT/columns_bf16" \
  --cifar-source "$CIFAR" --width $W --epochs $EPOCHS --dtype bfloat16 --jobs $JOBS main --seeds 0

# 3. the input pipeline end to end (raw256 records from the sample photos, every host core reading)
for m in alexnet alexnet_owt; do
  part "e2e_$m" 60 "${bench[@]}" --input-pipeline --end-to-end --store raw256 --images "$PHOTOS" --model $m \
    "${E2E[@]}" --dtype bfloat16 --out "$OUT/e2e_$m.json"
done

echo "total $(( $(date +%s) - START )) s" >> "$OUT/summary.txt"
echo; echo "================ summary ================"; cat "$OUT/summary.txt"
