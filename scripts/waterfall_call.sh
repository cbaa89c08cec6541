#!/usr/bin/env bash
# Issue 30's device calls: the throughput waterfall beside nanoGPT, and fp8 against bf16 through the
# trainer's own loop on real text. Stages named on the command line, each logged under $OUT.
#
#   bash scripts/waterfall_call.sh waterfall        # call 1 (PARALLEL=3 on an H200's 141 GB)
#   bash scripts/waterfall_call.sh fp8loss          # call 2
#
# Carried beside the tracked tree (ignored by git): .nanogpt/model.py (karpathy/nanoGPT's, fetched,
# never committed) and .whl/torchao-*.whl (torchao's float8 training; the device has no registry).
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/device_env.sh
status=0
for what in "$@"; do
  t0=$SECONDS
  case $what in
    waterfall)
      python3 -c "import torch, torchao; print(torch.__version__, torchao.__version__, torch.cuda.get_device_name())"
      timeout ${WATERFALL_TIMEOUT:-540} python3 -m nanigpt.bench.throughput --waterfall --preset gpu \
        --nanogpt-dir .nanogpt --out "$OUT/waterfall.json" --parallel ${PARALLEL:-2} --steps 10 --windows 3 --warmup 5 \
        --profile-steps 3 2>&1 | tee "$OUT/waterfall.log" | grep -v "^  " || status=1 ;;
    fp8loss)
      timeout ${FP8LOSS_TIMEOUT:-540} python3 -m nanigpt.bench.fp8_loss --out "$OUT/fp8_loss.json" \
        --work /tmp/fp8loss --steps ${FP8LOSS_STEPS:-1000} 2>&1 | tee "$OUT/fp8_loss.log" || status=1 ;;
    *)
      echo "unknown stage $what"; status=2 ;;
  esac
  echo "=== $what: $((SECONDS - t0)) s"
done
ls -la "$OUT"
exit $status
